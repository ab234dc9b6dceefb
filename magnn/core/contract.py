"""The one op contract of the compiled backends (C++ `magnn_cpu::` and Triton `magnn_triton::`).

Both register two torch ops with the same argument names, order and types, and
both attach their autograd formula with `torch.library.register_autograd` and
their shape-only version with `torch.library.register_fake`, so torch.compile,
opcheck and autograd treat them alike. `tests/test_op_contract.py` compares the
two registered schemas with the names below.

Forward ``edge_attention_fwd``::

    q              [N_dst, H, D]  destination queries (one float dtype for q, k, v, e)
    k, v           [N_src, H, D]  source keys and values (N_src == N_dst unless bipartite)
    e              [E, H, D]   projected edge features, caller's edge order
    rowptr         [N_dst + 1] int64, CSR of the edges sorted by destination
    col            [E]         int64, source of each sorted edge
    perm           [E]         int64, sorted position -> caller's edge id
    rev_rowptr     [N_src + 1]?  int64, CSR sorted by source (None when no input needs a gradient)
    rev_col        [E]?        int64, destination of each source-sorted edge
    rev_perm       [E]?        int64, source-sorted position -> caller's edge id
    bias           [E] | [E, H]?  structural logit term
    ebt_k, ebt_e, ebt_v  [H, D]?  the Explicit Bias Term's k', e', v'
    sink           [H]?        learned sink logit c_h (accumulation dtype, already clipped to the
                               clamp by the caller): exp(c_h) joins every (node, head) softmax
                               denominator with value 0 (SPEC §3, "Sink and gate"); finite or
                               -inf (no term): callers take +inf at the dtype's largest finite
                               value (magnn.core.mitigation.clamped_sink); the cpu op refuses it
    gate           [N_dst, H]? gate logit g_ih (accumulation dtype): node_out_ih is multiplied by
                               sigmoid(g_ih) as it is stored; lse and the weights ignore it
    mode           str         "gt" | "additive"
    ebt            str         "none" | "edge" | "slot"
    clamp          float?      logit bound c of clip(l, -c, c)
    dropout        float       attention dropout probability p in [0, 1); 0: none
    seed           int         dropout seed as int64 (`magnn.core.dropout.op_seed`; ignored when
                               dropout == 0); the mask is
                               `magnn.core.dropout.keep_mask(seed, perm value, head)`
    mantissa_bits  int         histogram resolution M; < 0: no statistics
    need_edge_out  bool        False: edge_out is not written (returned as an empty [0, H, D]); the
                               statistics, if asked for, are still reduced from its rows as the
                               kernel computes them, and additive mode skips its edge_out pass
                               when they are not

returns the fields of `ForwardResult`, in that order.

Backward ``edge_attention_bwd``: the arguments `BACKWARD_ARGS` (gradients of the
three differentiable outputs, each None when unused, then the saved tensors and
the forward's options), returning the fields of `BackwardResult`; a gradient of
an absent optional input is an empty tensor. The backward requires the reverse
CSR (rev_rowptr, rev_col, rev_perm are plain Tensors there). With a gate, grad_node is
the gradient of the gated node_out and the saved node_out is the gated one; the edge
terms see sigmoid(g) * grad_node, and the softmax's row term is unchanged
(delta_i = grad_node_i . node_out_i, gated on both sides). dsink_h = sum_i w_ih
(grad_lse_i - delta_i) with w = exp(c_h - lse_i) the sink's weight and delta_i the row
term of the softmax backward (in additive mode it includes the edge_out gradient's
share); dgate_ih = (1 - sigmoid(g_ih)) grad_node_ih . node_out_ih.

Dropout (SPEC §3): a kept weight is multiplied by 1 / (1 - p), a dropped one is 0; the
EBT slot is never dropped; lse is the softmax state before dropout; the backward
regenerates the mask from (seed, edge id, head).

The softmax state ``lse`` is [N_dst, 2, H] in the accumulation dtype (float64 for
float64 inputs, else float32): per (node, head) the row max m and log(sum exp(l - m)),
kept apart so logits of any finite size keep the exact softmax. A (node, head)
with no attended edge (none, or all masked by -inf, and no EBT slot or sink) has
m = +inf, log-sum 0. With a sink, lse includes its term (every row attends at least to
the sink: m >= c_h), the weights are exp(l - lse) and sum to 1 - exp(c_h - lse), and a
row with no edge has node_out 0. Its gradient is that of the log-sum-exp m + log-sum: the
backward reads ``grad_lse[:, 1, :]`` only (the row max is a shift that carries
no gradient), so callers differentiate through ``lse[:, 0].detach() + lse[:, 1]``
(`logsumexp` below).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .binning import num_bins
from .errors import DoubleBackwardError  # noqa: F401  (importable here)

Tensor = torch.Tensor

OP_NAMESPACES = {"cpu": "magnn_cpu", "triton": "magnn_triton"}

FORWARD_ARGS = (
    "q", "k", "v", "e",
    "rowptr", "col", "perm", "rev_rowptr", "rev_col", "rev_perm",
    "bias", "ebt_k", "ebt_e", "ebt_v", "sink", "gate",
    "mode", "ebt", "clamp", "dropout", "seed", "mantissa_bits", "need_edge_out",
)


class ForwardResult(NamedTuple):
    node_out: Tensor     # [N, H, D] input dtype (differentiable)
    edge_out: Tensor     # [E, H, D] input dtype, caller's order (differentiable); [0, H, D] unless need_edge_out
    lse: Tensor          # [N, 2, H] accumulation dtype: row max, log-sum (differentiable, see above)
    hist_abs: Tensor     # int64 [num_bins(M)]: |edge_out|; empty without statistics
    hist_ratio: Tensor   # int64 [num_bins(M)]: |A_ec| / med_e
    row_ratio: Tensor    # float32 [E]: r_e = max_c |A_ec| / med_e (NaN for an all-NaN row)
    row_max_abs: Tensor  # float32 [E]: max_c |A_ec| (-1 for an all-NaN row)
    nan_count: Tensor    # int64 []: NaN values of edge_out
    max_abs: Tensor      # float32 []: largest |A| (-1 if none)
    argmax: Tensor       # int64 []: flat index e * C + c of max_abs, caller's order (-1 if none)


NUM_DIFFERENTIABLE_OUTPUTS = 3  # node_out, edge_out, lse

BACKWARD_ARGS = (
    "grad_node", "grad_edge", "grad_lse",
    "q", "k", "v", "e", "lse", "node_out",
    "rowptr", "col", "perm", "rev_rowptr", "rev_col", "rev_perm",
    "bias", "ebt_k", "ebt_e", "ebt_v", "sink", "gate",
    "mode", "ebt", "clamp", "dropout", "seed",
)


class BackwardResult(NamedTuple):
    dq: Tensor       # [N, H, D] input dtype
    dk: Tensor
    dv: Tensor
    de: Tensor       # [E, H, D]
    dbias: Tensor    # like bias, accumulation dtype (empty when bias is None)
    debt_k: Tensor   # [H, D], accumulation dtype (empty without EBT)
    debt_e: Tensor
    debt_v: Tensor
    dsink: Tensor    # [H], accumulation dtype (empty without sink)
    dgate: Tensor    # [N, H], accumulation dtype (empty without gate)


def ebt_name(ebt: Optional[str]) -> str:
    """The op's spelling of the EBT variant (None -> "none")."""
    return "none" if ebt is None else ebt


def logsumexp(lse: Tensor) -> Tensor:
    """[N, H] log-sum-exp of each (node, head) from the two-part state: -inf where nothing
    is attended (the state's m = +inf), differentiable through the log-sum part."""
    row_max = lse[:, 0].detach()
    total = row_max + lse[:, 1]
    return torch.where(row_max == float("inf"), torch.full_like(total, float("-inf")), total)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of lse and of the bias / EBT gradients: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fake_forward(q: Tensor, num_edges: int, edge_dtype: torch.dtype, mantissa_bits: int,
                 need_edge_out: bool = True) -> tuple:
    """The forward's outputs as empty tensors of the right shapes and dtypes: the
    `register_fake` body of both compiled backends' ops, plain (edge_out in e's dtype) and
    with the projection inside (edge_out in q's dtype)."""
    stats = mantissa_bits >= 0
    bins = num_bins(mantissa_bits) if stats else 0
    rows = num_edges if stats else 0
    scalar = lambda dtype: q.new_empty((), dtype=dtype)  # noqa: E731
    return tuple(ForwardResult(
        node_out=torch.empty_like(q, memory_format=torch.contiguous_format),
        edge_out=q.new_empty((num_edges if need_edge_out else 0, *q.shape[1:]), dtype=edge_dtype),
        lse=q.new_empty((q.shape[0], 2, q.shape[1]), dtype=accumulation_dtype(q.dtype)),
        hist_abs=q.new_empty((bins,), dtype=torch.int64),
        hist_ratio=q.new_empty((bins,), dtype=torch.int64),
        row_ratio=q.new_empty((rows,), dtype=torch.float32),
        row_max_abs=q.new_empty((rows,), dtype=torch.float32),
        nan_count=scalar(torch.int64),
        max_abs=scalar(torch.float32),
        argmax=scalar(torch.int64),
    ))


def fake_backward(q: Tensor, k: Tensor, v: Tensor, e: Tensor, bias: Optional[Tensor],
                  ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor], ebt: str,
                  sink: Optional[Tensor] = None, gate: Optional[Tensor] = None) -> tuple:
    """The backward's outputs as empty tensors (the `register_fake` body of both backends)."""
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    accumulation = lambda t: q.new_empty(t.shape if t is not None else (0,), dtype=accumulation_dtype(q.dtype))  # noqa: E731
    with_ebt = ebt != "none"
    return tuple(BackwardResult(
        dq=like(q), dk=like(k), dv=like(v), de=like(e),
        dbias=accumulation(bias),
        debt_k=accumulation(ebt_k if with_ebt else None),
        debt_e=accumulation(ebt_e if with_ebt else None),
        debt_v=accumulation(ebt_v if with_ebt else None),
        dsink=accumulation(sink),
        dgate=accumulation(gate),
    ))


# -- the registrations both backends share ----------------------------------------------

def _forward_fake(q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v,
                  sink, gate, mode, ebt, clamp, dropout, seed, mantissa_bits, need_edge_out=True):
    return fake_forward(q, e.shape[0], e.dtype, mantissa_bits, need_edge_out)


def _backward_fake(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out, rowptr, col, perm,
                   rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout,
                   seed):
    return fake_backward(q, k, v, e, bias, ebt_k, ebt_e, ebt_v, ebt, sink, gate)


def _setup_context(ctx, inputs, output):
    (q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout, seed, _mantissa_bits, *_need_edge_out) = inputs
    result = ForwardResult(*output)
    # the backward recomputes the scores from lse [N, 2, H]: nothing of size E x H x D is kept
    ctx.save_for_backward(q, k, v, e, result.lse, result.node_out, rowptr, col, perm, rev_rowptr, rev_col,
                          rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate)
    ctx.mode, ctx.ebt, ctx.clamp = mode, ebt, clamp
    ctx.dropout, ctx.seed = dropout, seed  # the backward regenerates the dropout mask from these
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no [E, H, D] zeros
    ctx.mark_non_differentiable(*output[NUM_DIFFERENTIABLE_OUTPUTS:])


def double_backward_message(namespace: str) -> str:
    backend = next((name for name, space in OP_NAMESPACES.items() if space == namespace), namespace)
    return (
        f"the {backend!r} backend of magnn's edge attention ({namespace}::edge_attention_fwd) has no double "
        "backward: its backward kernels are not differentiable, so a gradient taken with create_graph=True "
        "(a gradient penalty, a Hessian-vector product, MAML) would silently miss their second-order terms. "
        "Run the layers that this goes through with backend=\"torch\" (the pure-PyTorch reference, "
        "which supports it), e.g. FusedEdgeAttention(..., backend=\"torch\"), "
        "magnn.layers.TransformerConv(..., backend=\"torch\") or MAGNN_BACKEND=torch for backend=\"auto\""
    )


def refuse_double_backward(namespace: str, tensors) -> None:
    """DoubleBackwardError when a backward runs with create_graph=True (grad mode on) over inputs
    that require a gradient: the gradients would then be expected to carry a graph back to them,
    which the backward ops cannot give. Refused, never gradients whose own gradients are wrong."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise DoubleBackwardError(double_backward_message(namespace))


def _incoming_gradients(forward_op: str, grad_node, grad_edge, grad_lse, rev_rowptr) -> tuple:
    """(grad_edge, whether any gradient flows) for a backward formula: an edge_out of no rows
    (E = 0, or need_edge_out=False) carries no gradient; a forward run without the reverse CSR
    cannot be differentiated (RuntimeError naming what to pass)."""
    if grad_edge is not None and grad_edge.shape[0] == 0:
        grad_edge = None
    if grad_node is None and grad_edge is None and grad_lse is None:
        return grad_edge, False
    if rev_rowptr is None:
        raise RuntimeError(
            f"{forward_op} ran without the reverse CSR (no input required a gradient at call time); pass "
            "rev_rowptr, rev_col, rev_perm to differentiate it"
        )
    return grad_edge, True


def _returned_gradients(args: tuple, ctx, direct: dict, accumulated: dict) -> tuple:
    """An autograd formula's result, one entry per op argument in `args` order, None where the
    input needs no gradient. `direct` gradients are returned as the backward op gives them;
    `accumulated` ones (name -> (gradient, input)) come in the accumulation dtype and go back in
    their input's dtype, for inputs that were given; EBT gradients only when the call used EBT."""
    need = dict(zip(args, ctx.needs_input_grad))
    given = {name: grad for name, grad in direct.items() if need[name]}
    for name, (grad, like) in accumulated.items():
        if like is not None and need[name] and (ctx.ebt != "none" or not name.startswith("ebt_")):
            given[name] = grad.to(like.dtype)
    return tuple(given.get(name) for name in args)


def _backward_formula(namespace: str):
    def formula(ctx, grad_node, grad_edge, grad_lse, *_stats_grads):
        (q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
         bias, ebt_k, ebt_e, ebt_v, sink, gate) = ctx.saved_tensors
        refuse_double_backward(namespace, (grad_node, grad_edge, grad_lse, q, k, v, e, bias, ebt_k, ebt_e, ebt_v,
                                           sink, gate))
        grad_edge, flows = _incoming_gradients(f"{namespace}::edge_attention_fwd", grad_node, grad_edge, grad_lse,
                                               rev_rowptr)
        if not flows:
            return (None,) * len(FORWARD_ARGS)
        grads = BackwardResult(*getattr(torch.ops, namespace).edge_attention_bwd(
            grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out, rowptr, col, perm,
            rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, ctx.mode, ctx.ebt, ctx.clamp,
            ctx.dropout, ctx.seed,
        ))
        return _returned_gradients(
            FORWARD_ARGS, ctx, {"q": grads.dq, "k": grads.dk, "v": grads.dv, "e": grads.de},
            {"bias": (grads.dbias, bias), "ebt_k": (grads.debt_k, ebt_k), "ebt_e": (grads.debt_e, ebt_e),
             "ebt_v": (grads.debt_v, ebt_v), "sink": (grads.dsink, sink), "gate": (grads.dgate, gate)},
        )

    return formula


def register_fakes_and_autograd(namespace: str) -> None:
    """The shape-only kernels and the autograd formula of `namespace`'s two ops, registered
    through torch.library the same way for both compiled backends, so torch.compile,
    opcheck and autograd treat them alike. Call once per process, after the ops exist."""
    forward, backward = f"{namespace}::edge_attention_fwd", f"{namespace}::edge_attention_bwd"
    torch.library.register_fake(forward, _forward_fake)
    torch.library.register_fake(backward, _backward_fake)
    torch.library.register_autograd(forward, _backward_formula(namespace), setup_context=_setup_context)


# -- the in-operator edge projection ----------------------------------------------------
#
# ``edge_attention_proj_fwd`` takes the arguments `PROJ_FORWARD_ARGS`: those of the forward
# with ``e`` replaced by
#
#     a              [E, F]      raw edge features (q's dtype), caller's edge order
#     w_e            [H*D, F]    projection weight (any float dtype; used in the accumulation dtype)
#     b_e            [H*D]?      projection bias
#
# and forms e_ij = w_e a_ij + b_e (viewed as [H, D]) per edge inside the kernels; no
# [E, H*D] tensor exists, in the forward or the backward. It returns `ForwardResult`.
# ``edge_attention_proj_bwd`` takes `PROJ_BACKWARD_ARGS` (the backward's, e replaced likewise,
# plus ``need_grad_a``) and returns `ProjBackwardResult`: da only when need_grad_a (else
# [0, F]), dw_e and db_e in the accumulation dtype (db_e empty without b_e), reduced from the
# per-edge gradient of e without storing it. Registered by both compiled backends.

PROJ_FORWARD_ARGS = (
    "q", "k", "v", "a", "w_e", "b_e",
    *FORWARD_ARGS[4:],
)

PROJ_BACKWARD_ARGS = (
    "grad_node", "grad_edge", "grad_lse",
    "q", "k", "v", "a", "w_e", "b_e", "lse", "node_out",
    *BACKWARD_ARGS[9:],
    "need_grad_a",
)


class ProjBackwardResult(NamedTuple):
    dq: Tensor       # [N, H, D] input dtype
    dk: Tensor
    dv: Tensor
    da: Tensor       # [E, F] input dtype when need_grad_a, else [0, F]
    dw_e: Tensor     # [H*D, F] accumulation dtype
    db_e: Tensor     # [H*D] accumulation dtype (empty without b_e)
    dbias: Tensor    # like bias, accumulation dtype (empty when bias is None)
    debt_k: Tensor   # [H, D], accumulation dtype (empty without EBT)
    debt_e: Tensor
    debt_v: Tensor
    dsink: Tensor    # [H], accumulation dtype (empty without sink)
    dgate: Tensor    # [N, H], accumulation dtype (empty without gate)


def _proj_forward_fake(q, k, v, a, w_e, b_e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e,
                       ebt_v, sink, gate, mode, ebt, clamp, dropout, seed, mantissa_bits, need_edge_out=True):
    return fake_forward(q, a.shape[0], q.dtype, mantissa_bits, need_edge_out)


def _proj_backward_fake(grad_node, grad_edge, grad_lse, q, k, v, a, w_e, b_e, lse, node_out, rowptr, col, perm,
                        rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp,
                        dropout, seed, need_grad_a):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    acc = accumulation_dtype(q.dtype)
    accumulation = lambda t: q.new_empty(t.shape if t is not None else (0,), dtype=acc)  # noqa: E731
    with_ebt = ebt != "none"
    return tuple(ProjBackwardResult(
        dq=like(q), dk=like(k), dv=like(v),
        da=q.new_empty((a.shape[0] if need_grad_a else 0, a.shape[1])),
        dw_e=q.new_empty(w_e.shape, dtype=acc),
        db_e=accumulation(b_e),
        dbias=accumulation(bias),
        debt_k=accumulation(ebt_k if with_ebt else None),
        debt_e=accumulation(ebt_e if with_ebt else None),
        debt_v=accumulation(ebt_v if with_ebt else None),
        dsink=accumulation(sink),
        dgate=accumulation(gate),
    ))


def _proj_setup_context(ctx, inputs, output):
    (q, k, v, a, w_e, b_e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout, seed, _mantissa_bits, *_need_edge_out) = inputs
    result = ForwardResult(*output)
    # nothing of size E x H x D is kept: the backward re-forms e from a [E, F]
    ctx.save_for_backward(q, k, v, a, w_e, b_e, result.lse, result.node_out, rowptr, col, perm, rev_rowptr, rev_col,
                          rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate)
    ctx.mode, ctx.ebt, ctx.clamp = mode, ebt, clamp
    ctx.dropout, ctx.seed = dropout, seed
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[NUM_DIFFERENTIABLE_OUTPUTS:])


def _proj_backward_formula(namespace: str):
    def formula(ctx, grad_node, grad_edge, grad_lse, *_stats_grads):
        (q, k, v, a, w_e, b_e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
         bias, ebt_k, ebt_e, ebt_v, sink, gate) = ctx.saved_tensors
        refuse_double_backward(namespace, (grad_node, grad_edge, grad_lse, q, k, v, a, w_e, b_e, bias, ebt_k, ebt_e,
                                           ebt_v, sink, gate))
        grad_edge, flows = _incoming_gradients(f"{namespace}::edge_attention_proj_fwd", grad_node, grad_edge,
                                               grad_lse, rev_rowptr)
        if not flows:
            return (None,) * len(PROJ_FORWARD_ARGS)
        need = dict(zip(PROJ_FORWARD_ARGS, ctx.needs_input_grad))
        grads = ProjBackwardResult(*getattr(torch.ops, namespace).edge_attention_proj_bwd(
            grad_node, grad_edge, grad_lse, q, k, v, a, w_e, b_e, lse, node_out, rowptr, col, perm,
            rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, ctx.mode, ctx.ebt, ctx.clamp,
            ctx.dropout, ctx.seed, bool(need["a"]),
        ))
        return _returned_gradients(
            PROJ_FORWARD_ARGS, ctx, {"q": grads.dq, "k": grads.dk, "v": grads.dv, "a": grads.da},
            {"w_e": (grads.dw_e, w_e), "b_e": (grads.db_e, b_e), "bias": (grads.dbias, bias),
             "ebt_k": (grads.debt_k, ebt_k), "ebt_e": (grads.debt_e, ebt_e), "ebt_v": (grads.debt_v, ebt_v),
             "sink": (grads.dsink, sink), "gate": (grads.dgate, gate)},
        )

    return formula


def register_proj_fakes_and_autograd(namespace: str) -> None:
    """`register_fakes_and_autograd` for `namespace`'s in-operator projection ops
    (edge_attention_proj_fwd / _bwd). Call once per process, after the ops exist."""
    forward, backward = f"{namespace}::edge_attention_proj_fwd", f"{namespace}::edge_attention_proj_bwd"
    torch.library.register_fake(forward, _proj_forward_fake)
    torch.library.register_fake(backward, _proj_backward_fake)
    torch.library.register_autograd(forward, _proj_backward_formula(namespace), setup_context=_proj_setup_context)
