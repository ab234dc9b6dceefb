"""Pure-PyTorch edge attention (SPEC §3): the oracle for every fast backend.

Vectorised over edges in the caller's order with gathers and scatters;
autograd comes from PyTorch. The softmax subtracts a per-(node, head) segment
max, so no finite logit overflows, and a node without incoming edges (and
without an EBT slot) gets exactly 0, as does a (node, head) whose logits are
all -inf (SPEC §3, masked edges). Half-precision inputs are computed in
float32 and the outputs rounded back to the input dtype; the optional
log-sum-exp stays in that working dtype (float32, or float64 for float64).

Bipartite graphs: q has the graph's num_nodes (destination) rows, k and v its
num_src_nodes rows. Attention dropout multiplies each real edge's weight by
`magnn.core.dropout.keep_mask(seed, edge id, head) / (1 - p)` after the softmax
(lse stays the one before dropout); the EBT slot is never dropped (SPEC §3).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core.dropout import keep_mask, keep_scale
from ..core.graph import Graph
from ..core.binning import RawStats, reduce_rows


def _segment_softmax_parts(logits, dst, num_nodes, slot_logits):
    """exp(l - m) of the edges and of the slot, the softmax denominator (1 where nothing is
    attended) and the [N, H] log-sum-exp (-inf where nothing is attended), per (node, head)."""
    heads = logits.shape[1] if logits.dim() == 2 else slot_logits.shape[1]
    seg_max = torch.full((num_nodes, heads), -math.inf, dtype=logits.dtype, device=logits.device)
    seg_max = seg_max.scatter_reduce(0, dst.unsqueeze(-1).expand_as(logits), logits, "amax", include_self=True)
    if slot_logits is not None:
        seg_max = torch.maximum(seg_max, slot_logits)
    # softmax is shift invariant: the max carries no gradient; empty rows shift by 0
    seg_max = torch.where(torch.isinf(seg_max), torch.zeros_like(seg_max), seg_max).detach()
    exp_edges = torch.exp(logits - seg_max[dst])
    denom = torch.zeros_like(seg_max).index_add(0, dst, exp_edges)
    exp_slot = None
    if slot_logits is not None:
        exp_slot = torch.exp(slot_logits - seg_max)
        denom = denom + exp_slot
    # nothing to attend to (no edges, or every logit -inf, and no slot): the sum is 0
    # and so is every exp; dividing by 1 keeps node_out exactly 0 and its gradients 0
    empty = denom == 0
    denom = torch.where(empty, torch.ones_like(denom), denom)
    # lse = m + log(sum exp(l - m)): d lse / d l_ij = a_ij (m carries no gradient); an
    # empty row takes the -inf branch, so log(1) there sends no NaN back through the sum
    lse = torch.where(empty, torch.full_like(denom, -math.inf), seg_max + torch.log(denom))
    return exp_edges, exp_slot, denom, lse


def edge_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    e: torch.Tensor,
    graph: Graph,
    *,
    mode: str = "gt",
    clamp: Optional[float] = None,
    bias: Optional[torch.Tensor] = None,
    ebt: Optional[str] = None,
    ebt_params=None,
    return_lse: bool = False,
    dropout: float = 0.0,
    seed: int = 0,
):
    """Returns (node_out [N_dst, H, D], edge_out [E, H, D]) in the input dtype, and with
    return_lse the [N, H] log-sum-exp of each softmax (the slot's logit included) in the
    working dtype: (node_out, edge_out, lse)."""
    out_dtype = q.dtype
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    q, k, v, e = (t.to(work) for t in (q, k, v, e))
    num_nodes, heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    src, dst = graph.src, graph.dst

    if ebt is not None:
        k_bias, e_bias, v_bias = (p.to(work) for p in ebt_params)
    edge_shift = None  # b_e,i = beta_i * e' for ebt="edge", [N, H, D]
    if ebt == "edge":
        beta = (q * k_bias).sum(-1, keepdim=True) * scale
        edge_shift = beta * e_bias

    q_dst, k_src, v_src = q[dst], k[src], v[src]
    if mode == "gt":
        score = q_dst * k_src * e * scale
        if edge_shift is not None:
            score = score + edge_shift[dst]
            v_src = v_src + v_bias
        logits = score.sum(-1)
        message = v_src
    else:  # additive
        if edge_shift is not None:
            e = e + edge_shift[dst]
            v_src = v_src + v_bias
        logits = (q_dst * (k_src + e)).sum(-1) * scale
        message = v_src + e

    if bias is not None:
        bias = bias.to(work)
        logits = logits + (bias.unsqueeze(-1) if bias.dim() == 1 else bias)

    slot_logits = slot_message = None
    if ebt == "slot":
        if mode == "gt":
            slot_logits = (q * (k_bias * e_bias)).sum(-1) * scale
            slot_message = v_bias
        else:
            slot_logits = (q * (k_bias + e_bias)).sum(-1) * scale
            slot_message = v_bias + e_bias
    if clamp is not None:
        logits = logits.clamp(-clamp, clamp)
        if slot_logits is not None:
            slot_logits = slot_logits.clamp(-clamp, clamp)

    exp_edges, exp_slot, denom, lse = _segment_softmax_parts(logits, dst, num_nodes, slot_logits)
    attention = exp_edges / denom[dst]
    if dropout > 0:  # after the softmax: lse keeps the statistics before dropout
        kept = keep_mask(seed, torch.arange(graph.num_edges, device=q.device), heads, dropout)
        attention = attention * kept.to(work) * keep_scale(dropout)
    weighted = attention.unsqueeze(-1) * message
    node_out = torch.zeros_like(q).index_add(0, dst, weighted)
    if exp_slot is not None:
        node_out = node_out + (exp_slot / denom).unsqueeze(-1) * slot_message
    edge_out = score if mode == "gt" else weighted
    if return_lse:
        return node_out.to(out_dtype), edge_out.to(out_dtype), lse
    return node_out.to(out_dtype), edge_out.to(out_dtype)


def run_torch_backend(
    q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params, mantissa_bits, tap, return_lse: bool = False,
    dropout: float = 0.0, seed: int = 0, need_edge_out: bool = True, edge_proj=None,
):
    """Backend entry point: outputs plus the reference reduction of the tap, and with
    return_lse the [N, H] log-sum-exp: (node_out, edge_out, raw, lse); edge_out is None with
    need_edge_out=False (the reference still computes it, for the statistics)."""
    graph.check_index_bounds()  # torch indexing would wrap a negative index around silently
    if edge_proj is not None:  # the oracle materialises e = a W^T + b (in the working dtype)
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        weight, proj_bias = edge_proj
        e = torch.nn.functional.linear(e.to(work), weight.to(work), None if proj_bias is None else proj_bias.to(work))
        e = e.view(e.shape[0], q.shape[1], q.shape[2])
    node_out, edge_out, *lse = edge_attention_reference(
        q, k, v, e, graph, mode=mode, clamp=clamp, bias=bias, ebt=ebt, ebt_params=ebt_params, return_lse=return_lse,
        dropout=dropout, seed=seed,
    )
    raw: Optional[RawStats] = None
    if mantissa_bits is not None:
        tapped = edge_out if tap == "edge" else node_out
        channels = q.shape[1] * q.shape[2]  # explicit: reshape(-1) cannot infer it for zero rows
        raw = reduce_rows(tapped.reshape(tapped.shape[0], channels), mantissa_bits)
    if not need_edge_out:
        edge_out = None
    if return_lse:
        return node_out, edge_out, raw, lse[0]
    return node_out, edge_out, raw
