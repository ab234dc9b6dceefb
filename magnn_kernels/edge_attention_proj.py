"""The in-operator edge projection in Triton (SPEC §3 "Edge projection inside the operator"):
`magnn_triton::edge_attention_proj_fwd` / `_bwd`.

The same kernels as `edge_attention.py`'s ops with the constexpr EDGE_FEATURES = F > 0: e is
not an input but formed per edge tile in registers, e_ij = W a_ij + b from the raw features
a [E, F] (`edge_attention_common.edge_rows`, fp32, in every pass), and the backward reduces
dW [H*D, F] and db [H*D] from per-program partial sums without any [E, H*D] tensor (da [E, F]
only when need_grad_a). Argument names and order are the C++ ops' (contract.PROJ_FORWARD_ARGS /
PROJ_BACKWARD_ARGS); the fakes and the autograd formula are contract's, shared with them.
"""
from __future__ import annotations

from typing import Optional

import torch

from magnn.core import contract
from magnn.core.contract import OP_NAMESPACES, ForwardResult
from magnn.core.dropout import op_seed

from .edge_attention import kernel_sink_and_gate
from .edge_attention_bwd import edge_attention_backward
from .edge_attention_fwd import edge_attention_forward

Tensor = torch.Tensor
NAMESPACE = OP_NAMESPACES["triton"]

# the C++ ops' schemas (csrc/registration.cpp), type for type
PROJ_FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor a, Tensor w_e, Tensor? b_e, Tensor rowptr, Tensor col, Tensor perm, "
    "Tensor? rev_rowptr, Tensor? rev_col, Tensor? rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
    "Tensor? ebt_v, Tensor? sink, Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, "
    "int mantissa_bits, bool need_edge_out=True) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
PROJ_BACKWARD_SCHEMA = (
    "(Tensor? grad_node, Tensor? grad_edge, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor a, "
    "Tensor w_e, Tensor? b_e, Tensor lse, Tensor node_out, Tensor rowptr, Tensor col, Tensor perm, "
    "Tensor rev_rowptr, Tensor rev_col, Tensor rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
    "Tensor? ebt_v, Tensor? sink, Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, "
    "bool need_grad_a) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def kernel_projection(q: Tensor, a: Tensor, w_e: Tensor, b_e: Optional[Tensor]) -> tuple[Tensor, tuple]:
    """(a, (W^T [F, H*D], b [H*D] or None)) as the kernels take them: contiguous, W and b in fp32.
    F == 0 (e = b on every edge) becomes one zero feature, as the kernels' F is at least 1."""
    channels = q.shape[1] * q.shape[2]
    if a.dim() != 2 or w_e.dim() != 2 or tuple(w_e.shape) != (channels, a.shape[1]):
        raise ValueError(f"{NAMESPACE}: the projection weight must be [H*D, F] = [{channels}, "
                         f"{a.shape[1] if a.dim() == 2 else '?'}] for raw features a [E, F], got {list(w_e.shape)} "
                         f"and {list(a.shape)}")
    if b_e is not None and tuple(b_e.shape) != (channels,):
        raise ValueError(f"{NAMESPACE}: the projection bias must be [H*D] = [{channels}], got {list(b_e.shape)}")
    w_t = w_e.detach().to(torch.float32).t().contiguous()
    a = a.contiguous()
    if a.shape[1] == 0:
        a = a.new_zeros((a.shape[0], 1))
        w_t = w_t.new_zeros((1, channels))
    bias = None if b_e is None else b_e.detach().to(torch.float32).contiguous()
    return a, (w_t, bias)


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_proj_fwd", mutates_args=(), schema=PROJ_FORWARD_SCHEMA)
def edge_attention_proj_fwd(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, w_e: Tensor, b_e: Optional[Tensor],
    rowptr: Tensor, col: Tensor, perm: Tensor,
    rev_rowptr: Optional[Tensor], rev_col: Optional[Tensor], rev_perm: Optional[Tensor],
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    sink: Optional[Tensor], gate: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float], dropout: float, seed: int, mantissa_bits: int,
    need_edge_out: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `ForwardResult`, as `edge_attention_fwd` with e_ij = w_e a_ij + b_e formed in the kernels."""
    a_k, proj = kernel_projection(q, a, w_e, b_e)
    sink, gate = kernel_sink_and_gate(q, sink, gate)
    return tuple(edge_attention_forward(q, k, v, a_k, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v,
                                        mode, ebt, clamp, dropout, seed, mantissa_bits, need_edge_out, proj=proj,
                                        sink=sink, gate=gate))


@torch.library.custom_op(f"{NAMESPACE}::edge_attention_proj_bwd", mutates_args=(), schema=PROJ_BACKWARD_SCHEMA)
def edge_attention_proj_bwd(
    grad_node: Optional[Tensor], grad_edge: Optional[Tensor], grad_lse: Optional[Tensor],
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, w_e: Tensor, b_e: Optional[Tensor], lse: Tensor, node_out: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor, rev_rowptr: Tensor, rev_col: Tensor, rev_perm: Tensor,
    bias: Optional[Tensor], ebt_k: Optional[Tensor], ebt_e: Optional[Tensor], ebt_v: Optional[Tensor],
    sink: Optional[Tensor], gate: Optional[Tensor],
    mode: str, ebt: str, clamp: Optional[float], dropout: float, seed: int, need_grad_a: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fields of `ProjBackwardResult`: da only when need_grad_a (else [0, F]), dW and db in fp32."""
    a_k, proj = kernel_projection(q, a, w_e, b_e)
    sink, gate = kernel_sink_and_gate(q, sink, gate)
    grads = edge_attention_backward(grad_node, grad_edge, grad_lse, q, k, v, a_k, lse, node_out,
                                    rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v,
                                    mode, ebt, clamp, dropout, seed, proj=proj, need_grad_a=need_grad_a,
                                    sink=sink, gate=gate)
    if a.shape[1] == 0:  # the zero feature stood in for F == 0
        grads = grads._replace(da=a.new_empty((grads.da.shape[0], 0)), dw_e=grads.dw_e[:, :0].contiguous())
    return tuple(grads)


# the fake kernels and the autograd formula: magnn.core.contract's, shared with the C++ ops
contract.register_proj_fakes_and_autograd(NAMESPACE)


def edge_attention_projected(q: Tensor, k: Tensor, v: Tensor, a: Tensor, w_e: Tensor, b_e: Optional[Tensor],
                             rowptr: Tensor, col: Tensor, perm: Tensor, rev_rowptr: Optional[Tensor] = None,
                             rev_col: Optional[Tensor] = None, rev_perm: Optional[Tensor] = None, *,
                             bias: Optional[Tensor] = None, ebt_k: Optional[Tensor] = None,
                             ebt_e: Optional[Tensor] = None, ebt_v: Optional[Tensor] = None, mode: str = "gt",
                             ebt: str = "none", clamp: Optional[float] = None, dropout: float = 0.0, seed: int = 0,
                             mantissa_bits: int = -1, need_edge_out: bool = True, sink: Optional[Tensor] = None,
                             gate: Optional[Tensor] = None) -> ForwardResult:
    """`magnn_kernels.edge_attention.edge_attention` with the raw features a [E, F] and the projection
    w_e [H*D, F], b_e [H*D] (or None) in place of e: `magnn_triton::edge_attention_proj_fwd` on
    contiguous inputs; differentiable in every input (w_e and b_e included) given the reverse CSR."""
    def contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    return ForwardResult(*edge_attention_proj_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), a.contiguous(), w_e, b_e, rowptr, col, perm, rev_rowptr,
        rev_col, rev_perm, contiguous(bias), contiguous(ebt_k), contiguous(ebt_e), contiguous(ebt_v),
        contiguous(sink), contiguous(gate), mode, ebt, clamp, float(dropout), op_seed(seed), mantissa_bits,
        bool(need_edge_out),
    ))
