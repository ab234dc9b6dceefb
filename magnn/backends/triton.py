"""The Triton backend: magnn.functional's backend contract over the `magnn_triton::` ops (magnn_kernels/).

    run_triton_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params,
                       mantissa_bits, tap, return_lse=False, dropout=0.0, seed=0, need_edge_out=True,
                       edge_proj=None, sink=None, gate=None)
        -> (node_out, edge_out | None, RawStats | None) [+ lse with return_lse]

Bipartite graphs: q over graph.num_nodes destinations, k and v over graph.num_src_nodes
sources. Attention dropout (dropout > 0) draws magnn.core.dropout's mask inside the kernels.
sink [H] (clipped) and gate [N_dst, H] (SPEC §3 "Sink and gate") go into the kernels: the sink's
term in every softmax (lse includes it), node_out gated as it is stored, in the row and the packed
forward alike.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from magnn_kernels import INTERPRETED
from magnn_kernels.edge_attention import edge_attention
from magnn_kernels.edge_attention_proj import edge_attention_projected

from ..core.binning import RawStats, reduce_rows
from ..core.contract import ForwardResult, ebt_name, logsumexp


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the Triton kernels can run on `device` tensors of `dtype`, else why not."""
    device = torch.device(device)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take float16, bfloat16 or float32, not {dtype} (the torch backend covers float64)"
    if device.type == "cuda":
        if INTERPRETED:
            return None  # the interpreter runs CUDA tensors too (slowly)
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] < 8:
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
        return None
    if device.type == "cpu":
        if INTERPRETED:
            return None
        if os.environ.get("TRITON_INTERPRET") == "1":
            return "TRITON_INTERPRET=1 was set after magnn_kernels was imported; set it before importing"
        return "the Triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    return f"the Triton kernels run on CUDA tensors, got {device.type} tensors"


def _raw_stats(result: ForwardResult, num_edges: int, channels: int) -> RawStats:
    """The edge_out tap's statistics, as the kernels reduced them."""
    return RawStats(
        hist_abs=result.hist_abs, hist_ratio=result.hist_ratio, row_ratio=result.row_ratio,
        nan_count=result.nan_count, max_abs=result.max_abs, argmax=result.argmax,
        count=num_edges * channels, channels=channels, row_max_abs=result.row_max_abs,
    )


def run_triton_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params, mantissa_bits, tap,
                       return_lse: bool = False, dropout: float = 0.0, seed: int = 0, need_edge_out: bool = True,
                       edge_proj=None, sink=None, gate=None):
    """Backend entry point: (node_out, edge_out, RawStats | None), same contract as the torch reference;
    with return_lse, also the [N_dst, H] log-sum-exp of each (node, head)'s softmax before dropout
    (-inf where nothing is attended), differentiable. need_edge_out=False: edge_out is None (not
    stored; its rows still reduced for the statistics). edge_proj = (W [H*D, F], b [H*D] or None):
    e is the raw features a [E, F] and e = W a + b is formed inside the kernels
    (`magnn_triton::edge_attention_proj_fwd`). sink [H] (already clipped to the clamp) and gate
    [N_dst, H], float32 and differentiable: the learned sink logit and the gate logit, applied in the
    kernels (contract.FORWARD_ARGS)."""
    graph.check_index_bounds()  # an unvalidated graph's indices, once: the kernels do not bound-check them
    ebt_k = ebt_e = ebt_v = None
    if ebt is not None:
        ebt_k, ebt_e, ebt_v = ebt_params
    w_e, b_e = edge_proj if edge_proj is not None else (None, None)
    tensors = [q, k, v, e, w_e, b_e, bias, sink, gate] + ([ebt_k, ebt_e, ebt_v] if ebt else [])
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    reverse = (graph.rev_rowptr, graph.rev_col, graph.rev_perm) if needs_grad else (None, None, None)
    edge_stats = mantissa_bits is not None and tap == "edge"
    options = dict(bias=bias, ebt_k=ebt_k, ebt_e=ebt_e, ebt_v=ebt_v, sink=sink, gate=gate, mode=mode,
                   ebt=ebt_name(ebt), clamp=clamp,
                   dropout=dropout, seed=seed, mantissa_bits=mantissa_bits if edge_stats else -1,
                   need_edge_out=need_edge_out)
    if edge_proj is None:
        result = edge_attention(q, k, v, e, graph.rowptr, graph.col, graph.perm, *reverse, **options)
    else:
        result = edge_attention_projected(q, k, v, e, w_e, b_e, graph.rowptr, graph.col, graph.perm, *reverse,
                                          **options)
    raw = None
    if mantissa_bits is not None:
        if tap == "node":
            # node_out is small and written anyway; its rows are nodes
            raw = reduce_rows(result.node_out.reshape(result.node_out.shape[0], -1), mantissa_bits)
        else:
            raw = _raw_stats(result, graph.num_edges, q.shape[1] * q.shape[2])
    edge_out = result.edge_out if need_edge_out else None
    if return_lse:
        return result.node_out, edge_out, raw, logsumexp(result.lse)
    return result.node_out, edge_out, raw
