"""Fused edge attention in Triton as torch ops (SPEC §3-§4): `magnn_triton::edge_attention_fwd` / `_bwd`.

One operator in six files (Liger-Kernel style):
  utils.py                   launch helpers: tiles, row-split plans, grids, devices, buffers
  edge_attention_common.py   constexpr flags and the @triton.jit helpers of both directions
  edge_attention_fwd.py      forward kernels and their launch wrapper (+ in-kernel statistics)
  edge_attention_bwd.py      backward kernels and their launch wrapper
  edge_attention.py          this file: the custom ops, their fake (shape-only) versions,
                             the autograd formula, and `edge_attention`, the Python entry
  edge_attention_proj.py     the in-operator edge projection's ops (e = W a + b formed in the
                             same kernels, constexpr EDGE_FEATURES) and their Python entry

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
    OP_NAMESPACES, ForwardResult,
)
from magnn.core.dropout import op_seed

from .edge_attention_bwd import edge_attention_backward
from .edge_attention_fwd import edge_attention_forward

Tensor = torch.Tensor
NAMESPACE = OP_NAMESPACES["triton"]

# Written out rather than inferred from the annotations (which would make mantissa_bits a
# SymInt): the same schemas, type for type, as the C++ ops of csrc/registration.cpp.
FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor e, Tensor rowptr, Tensor col, Tensor perm, "
    "Tensor? rev_rowptr, Tensor? rev_col, Tensor? rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
    "Tensor? ebt_v, Tensor? sink, Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, "
    "int mantissa_bits, bool need_edge_out=True) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor? grad_node, Tensor? grad_edge, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor e, "
    "Tensor lse, Tensor node_out, Tensor rowptr, Tensor col, Tensor perm, Tensor rev_rowptr, Tensor rev_col, "
    "Tensor rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, Tensor? ebt_v, Tensor? sink, Tensor? gate, "
    "str mode, str ebt, float? clamp, float dropout, int seed) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def kernel_sink_and_gate(q: Tensor, sink: Optional[Tensor], gate: Optional[Tensor]) -> tuple:
    """sink [H] and gate [N_dst, H] as the kernels read them (float32, contiguous), checked: a
    wrong shape would be read out of bounds."""
    heads = q.shape[1]
    for name, value, shape in (("sink", sink, (heads,)), ("gate", gate, (q.shape[0], heads))):
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"{NAMESPACE}: {name} must be {list(shape)}, got {list(value.shape)}")
    as_kernel = lambda t: None if t is None else t.to(torch.float32).contiguous()  # noqa: E731
    return as_kernel(sink), as_kernel(gate)


# ---------------------------------------------------------------------------
# forward op
# ---------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_fwd", mutates_args=(), schema=FORWARD_SCHEMA)
def edge_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, e: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor,
    rev_rowptr: Optional[Tensor], rev_col: Optional[Tensor], rev_perm: Optional[Tensor],
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    sink: Optional[Tensor], gate: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float], dropout: float, seed: int, mantissa_bits: int,
    need_edge_out: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `ForwardResult`. The reverse CSR is only carried for the backward;
    mantissa_bits < 0: no statistics (the per-bin and per-edge outputs are empty,
    nan_count 0, max_abs and argmax -1). Edge order is the caller's. Bipartite: q and the
    outputs over N_dst nodes, k and v over N_src. dropout > 0 drops attention weights
    with the mask of `magnn.core.dropout.keep_mask(seed, edge id, head)`. need_edge_out False:
    edge_out is not stored (an empty [0, H, D]); the statistics still see its rows. sink [H] and
    gate [N_dst, H] (float32): the sink's term in every softmax and the gate of node_out, in the kernels."""
    sink, gate = kernel_sink_and_gate(q, sink, gate)
    return tuple(edge_attention_forward(q, k, v, e, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v,
                                        mode, ebt, clamp, dropout, seed, mantissa_bits, need_edge_out,
                                        sink=sink, gate=gate))


# ---------------------------------------------------------------------------
# backward op
# ---------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_bwd", mutates_args=(), schema=BACKWARD_SCHEMA)
def edge_attention_bwd(
    grad_node: Optional[Tensor], grad_edge: Optional[Tensor], grad_lse: Optional[Tensor],
    q: Tensor, k: Tensor, v: Tensor, e: Tensor, lse: Tensor, node_out: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor, rev_rowptr: Tensor, rev_col: Tensor, rev_perm: Tensor,
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    sink: Optional[Tensor], gate: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float], dropout: float, seed: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `BackwardResult`; absent optional inputs get empty gradients."""
    sink, gate = kernel_sink_and_gate(q, sink, gate)
    return tuple(edge_attention_backward(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out,
                                         rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                                         bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp, dropout, seed,
                                         sink=sink, gate=gate))


# the fake kernels and the autograd formula: magnn.core.contract's, shared with the C++ ops
contract.register_fakes_and_autograd(NAMESPACE)


# ---------------------------------------------------------------------------
# Python entry
# ---------------------------------------------------------------------------


def edge_attention(q: Tensor, k: Tensor, v: Tensor, e: Tensor, rowptr: Tensor, col: Tensor, perm: Tensor,
                   rev_rowptr: Optional[Tensor] = None, rev_col: Optional[Tensor] = None,
                   rev_perm: Optional[Tensor] = None, *, bias: Optional[Tensor] = None,
                   ebt_k: Optional[Tensor] = None, ebt_e: Optional[Tensor] = None, ebt_v: Optional[Tensor] = None,
                   mode: str = "gt", ebt: str = "none", clamp: Optional[float] = None,
                   dropout: float = 0.0, seed: int = 0, mantissa_bits: int = -1,
                   need_edge_out: bool = True, sink: Optional[Tensor] = None,
                   gate: Optional[Tensor] = None) -> ForwardResult:
    """Run `magnn_triton::edge_attention_fwd` on contiguous copies of the inputs; the named outputs.

    Differentiable when given the reverse CSR (rev_*); without it a backward raises.
    Bipartite when k, v ([N_src, H, D]) and q ([N_dst, H, D]) differ in length.
    The seed is taken mod 2**64 (`magnn.core.dropout.op_seed`: the op takes an int64).
    sink [H] / gate [N_dst, H]: the learned sink logit and the gate logit (contract.FORWARD_ARGS).
    """
    def contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    return ForwardResult(*edge_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), e.contiguous(), rowptr, col, perm, rev_rowptr, rev_col,
        rev_perm, contiguous(bias), contiguous(ebt_k), contiguous(ebt_e), contiguous(ebt_v),
        contiguous(sink), contiguous(gate), mode, ebt, clamp, float(dropout), op_seed(seed), mantissa_bits,
        bool(need_edge_out),
    ))
