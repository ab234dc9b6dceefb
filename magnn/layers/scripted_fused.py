"""The cpu backend's fused operator as TorchScript functions, for `ScriptableTransformerConv`.

When `magnn.layers.TransformerConv`'s eager forward runs the C++ cpu operator (backend "auto" or
"cpu" with the extension loaded), its scripted twin calls `fused_attend`, which calls
`torch.ops.magnn_cpu.edge_attention_fwd` (or `edge_attention_proj_fwd`, the edge projection inside
the kernels, under the eager layer's rule) on the dst-sorted CSR the eager layer builds, so scripted
and eager outputs are the same numbers, not merely equal within rounding (PyG's own TransformerConv
tests compare them with `torch.allclose`'s defaults). TorchScript compiles these functions only
for a twin that uses them, so a twin without the extension never names its ops.

The ops carry their autograd formula (registered from Python), so the scripted module trains; it
needs the magnn_cpu library loaded where it runs (`magnn.backends.cpu.build()`). Attention dropout
uses the kernels' counter-based mask with a seed drawn per call from torch's generator (SPEC §3),
as the eager fused path does.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def kernel_dtype(dtype: torch.dtype) -> bool:
    """Whether the cpu kernels take `dtype` (float32, float64, bfloat16, float16)."""
    return dtype == torch.float32 or dtype == torch.float64 or dtype == torch.bfloat16 or dtype == torch.float16


def _csr(index: Tensor, other: Tensor, num_rows: int):
    """(rowptr [num_rows + 1], col [E], perm [E]) of the edges sorted stably by `index`, as
    `magnn.Graph` builds them (the kernels sum each row in this order)."""
    perm = torch.argsort(index, stable=True)
    counts = torch.zeros(num_rows, dtype=torch.long, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    rowptr = torch.zeros(num_rows + 1, dtype=torch.long, device=index.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, other[perm], perm


def _check_bounds(src: Tensor, dst: Tensor, n_src: int, n_dst: int) -> None:
    """The kernels trust the indices: an index out of range is refused here, as the eager layer does."""
    if src.numel() > 0 and (int(src.min()) < 0 or int(src.max()) >= n_src or int(dst.min()) < 0
                            or int(dst.max()) >= n_dst):
        raise ValueError(f"edge_index holds a node index outside [0, {n_src}) (sources) or [0, {n_dst}) "
                         f"(destinations)")


def fused_attend(query: Tensor, key: Tensor, value: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor],
                 edge_weight: Optional[Tensor], project_in_kernel: bool, dropout: float,
                 want_alpha: bool) -> tuple[Tensor, Optional[Tensor]]:
    """(attended values [N_dst, H, C], alpha [E, H] or None) through the cpu operator; edge_weight
    is lin_edge's [H*C, edge_dim] weight (None without edge features; lin_edge has no bias)."""
    edge_index = edge_index.long()
    src, dst = edge_index[0], edge_index[1]
    heads, channels = query.size(1), query.size(2)
    _check_bounds(src, dst, key.size(0), query.size(0))
    rowptr, col, perm = _csr(dst, src, query.size(0))
    rev_rowptr, rev_col, rev_perm = _csr(src, dst, key.size(0))
    # a dropout seed in [-2**62, 2**62), written out: TorchScript reads 2 ** 62 as a float
    seed = int(torch.randint(-4611686018427387904, 4611686018427387904, [1]).item()) if dropout > 0 else 0
    edge = query.new_zeros((edge_index.size(1), heads, channels))
    if edge_weight is not None:
        if edge_attr is None:
            raise ValueError("this layer was built with edge_dim: pass edge_attr [E, edge_dim]")
        if project_in_kernel:
            result = torch.ops.magnn_cpu.edge_attention_proj_fwd(
                query, key, value, edge_attr.to(query.dtype), edge_weight, None, rowptr, col, perm, rev_rowptr,
                rev_col, rev_perm, None, None, None, None, None, None, "additive", "none", None, dropout, seed, -1,
                False)
            alpha = _alpha(query, key, F.linear(edge_attr.to(query.dtype), edge_weight).view(-1, heads, channels),
                           src, dst, result[2]) if want_alpha else None
            return result[0], alpha
        edge = F.linear(edge_attr, edge_weight).view(-1, heads, channels)
    result = torch.ops.magnn_cpu.edge_attention_fwd(
        query, key, value, edge, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, None, None, None, None, None,
        None, "additive", "none", None, dropout, seed, -1, False)
    return result[0], _alpha(query, key, edge, src, dst, result[2]) if want_alpha else None


def _alpha(query: Tensor, key: Tensor, edge: Tensor, src: Tensor, dst: Tensor, lse: Tensor) -> Tensor:
    """alpha [E, H] before dropout from the op's softmax state lse [N_dst, 2, H] (row max, log-sum):
    exp(logit - row max - log-sum), as `magnn.functional.attention_weights` for additive mode."""
    work = lse.dtype
    scale = 1.0 / math.sqrt(query.size(2))
    logits = (query.to(work)[dst] * (key.to(work)[src] + edge.to(work))).sum(-1) * scale
    total = lse[:, 0].detach() + lse[:, 1]
    return torch.exp(logits - total[dst])
