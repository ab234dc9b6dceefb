"""Fused edge attention in Triton as torch ops (SPEC §3-§4): `magnn_triton::edge_attention_fwd` / `_bwd`.

One operator in five files (Liger-Kernel style):
  utils.py                   launch helpers: tiles, row-split plans, grids, devices, buffers
  edge_attention_common.py   constexpr flags and the @triton.jit helpers of both directions
  edge_attention_fwd.py      forward kernels and their launch wrapper (+ in-kernel statistics)
  edge_attention_bwd.py      backward kernels and their launch wrapper
  edge_attention.py          this file: the custom ops, their fake (shape-only) versions,
                             the autograd formula, and `edge_attention`, the Python entry

The ops follow the contract of magnn/core/contract.py, shared with the C++
backend: argument names and order `FORWARD_ARGS` / `BACKWARD_ARGS`, outputs in
`ForwardResult` / `BackwardResult` order. The first NUM_DIFFERENTIABLE_OUTPUTS
outputs (node_out, edge_out, lse) are differentiable; lse's gradient is that
of the log-sum-exp (see `contract.logsumexp`). The statistics outputs are not.
"""
from __future__ import annotations

from typing import Optional

import torch

from magnn.core import contract
from magnn.core.contract import (
    NUM_DIFFERENTIABLE_OUTPUTS, OP_NAMESPACES, BackwardResult, ForwardResult,
)

from .edge_attention_bwd import edge_attention_backward
from .edge_attention_fwd import edge_attention_forward

Tensor = torch.Tensor
NAMESPACE = OP_NAMESPACES["triton"]

# Written out rather than inferred from the annotations (which would make mantissa_bits a
# SymInt): the same schemas, type for type, as the C++ ops of csrc/registration.cpp.
FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor e, Tensor rowptr, Tensor col, Tensor perm, "
    "Tensor? rev_rowptr, Tensor? rev_col, Tensor? rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
    "Tensor? ebt_v, str mode, str ebt, float? clamp, int mantissa_bits) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor? grad_node, Tensor? grad_edge, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor e, "
    "Tensor lse, Tensor node_out, Tensor rowptr, Tensor col, Tensor perm, Tensor rev_rowptr, Tensor rev_col, "
    "Tensor rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, Tensor? ebt_v, str mode, str ebt, "
    "float? clamp) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


# ---------------------------------------------------------------------------
# forward op
# ---------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_fwd", mutates_args=(), schema=FORWARD_SCHEMA)
def edge_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, e: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor,
    rev_rowptr: Optional[Tensor], rev_col: Optional[Tensor], rev_perm: Optional[Tensor],
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float], mantissa_bits: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `ForwardResult`. The reverse CSR is only carried for the backward;
    mantissa_bits < 0: no statistics (the per-bin and per-edge outputs are empty,
    nan_count 0, max_abs and argmax -1). Edge order is the caller's."""
    return tuple(edge_attention_forward(q, k, v, e, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v,
                                        mode, ebt, clamp, mantissa_bits))


@edge_attention_fwd.register_fake
def _edge_attention_fwd_fake(q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                             bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp, mantissa_bits):
    return contract.fake_forward(q, e, mantissa_bits)


# ---------------------------------------------------------------------------
# backward op
# ---------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_bwd", mutates_args=(), schema=BACKWARD_SCHEMA)
def edge_attention_bwd(
    grad_node: Optional[Tensor], grad_edge: Optional[Tensor], grad_lse: Optional[Tensor],
    q: Tensor, k: Tensor, v: Tensor, e: Tensor, lse: Tensor, node_out: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor, rev_rowptr: Tensor, rev_col: Tensor, rev_perm: Tensor,
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `BackwardResult`; absent optional inputs get empty gradients."""
    return tuple(edge_attention_backward(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out,
                                         rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                                         bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp))


@edge_attention_bwd.register_fake
def _edge_attention_bwd_fake(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out,
                             rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                             bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp):
    return contract.fake_backward(q, k, v, e, bias, ebt_k, ebt_e, ebt_v, ebt)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    (q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp, _) = inputs
    result = ForwardResult(*output)
    ctx.save_for_backward(q, k, v, e, result.lse, result.node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                          bias, ebt_k, ebt_e, ebt_v)
    ctx.mode, ctx.ebt, ctx.clamp = mode, ebt, clamp
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero tensor is read
    ctx.mark_non_differentiable(*output[NUM_DIFFERENTIABLE_OUTPUTS:])


def _backward_formula(ctx, grad_node, grad_edge, grad_lse, *_stats_grads):
    (q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, ebt_k, ebt_e, ebt_v) = ctx.saved_tensors
    no_grads = (None,) * 18
    if grad_node is None and grad_edge is None and grad_lse is None:
        return no_grads
    if rev_rowptr is None:
        raise RuntimeError(
            f"{NAMESPACE}::edge_attention_fwd ran without the reverse CSR (no input required grad at call time); "
            "call it with rev_rowptr/rev_col/rev_perm to differentiate it"
        )
    grads = BackwardResult(*edge_attention_bwd(
        grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out,
        rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, ctx.mode, ctx.ebt, ctx.clamp,
    ))
    has_ebt = ctx.ebt != "none"

    def like(grad: Tensor, t: Optional[Tensor], present: bool) -> Optional[Tensor]:
        return grad.to(t.dtype) if present and t is not None else None  # accumulation -> the input's dtype

    return (
        grads.dq, grads.dk, grads.dv, grads.de, None, None, None, None, None, None,
        like(grads.dbias, bias, True), like(grads.debt_k, ebt_k, has_ebt), like(grads.debt_e, ebt_e, has_ebt),
        like(grads.debt_v, ebt_v, has_ebt),
        None, None, None, None,
    )


edge_attention_fwd.register_autograd(_backward_formula, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Python entry
# ---------------------------------------------------------------------------


def edge_attention(q: Tensor, k: Tensor, v: Tensor, e: Tensor, rowptr: Tensor, col: Tensor, perm: Tensor,
                   rev_rowptr: Optional[Tensor] = None, rev_col: Optional[Tensor] = None,
                   rev_perm: Optional[Tensor] = None, *, bias: Optional[Tensor] = None,
                   ebt_k: Optional[Tensor] = None, ebt_e: Optional[Tensor] = None, ebt_v: Optional[Tensor] = None,
                   mode: str = "gt", ebt: str = "none", clamp: Optional[float] = None,
                   mantissa_bits: int = -1) -> ForwardResult:
    """Run `magnn_triton::edge_attention_fwd` on contiguous copies of the inputs; the named outputs.

    Differentiable when given the reverse CSR (rev_*); without it a backward raises.
    """
    def contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    return ForwardResult(*edge_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), e.contiguous(), rowptr, col, perm, rev_rowptr, rev_col,
        rev_perm, contiguous(bias), contiguous(ebt_k), contiguous(ebt_e), contiguous(ebt_v),
        mode, ebt, clamp, mantissa_bits,
    ))
