"""The edge score without EBT's bias term: statistics of what the bias does not touch.

With ebt="edge" in gt mode every edge into node i carries `b_e,i = beta_i * e'` (beta_i =
q_i . k' / sqrt(D)) in its score, `edge_out_ij = w_ij + b_e,i` (SPEC §3). EBT's N(0, 1)
initialisation raises each edge's median through that term alone, so an EBT model's per-edge
ratios are lower before any training. `collect_without_bias` measures `w_ij = q_i k_j e_ij /
sqrt(D)` instead, the part of the score the bias does not enter, for every gt-mode magnn
attention layer: with and without EBT alike, so a pair's ratios can be compared on it.

It taps each layer's edge_out through a forward hook, subtracts b_e,i per edge (nothing for a
layer without EBT, or with ebt="slot", whose bias has no edge_out row) and reduces the result to
the same statistics `magnn.stats.collect` keeps, under the same names. Layers whose edge_out is
not the pre-softmax score (mode="additive": post-softmax messages) or has rows that are not the
graph's edges (SAN's fake edges) are refused with ValueError.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from ..core.graph import Graph
from ..layers import FusedEdgeAttention
from ..stats import EdgeStats, add_to_all, reduce_tensor

__all__ = ["collect_without_bias", "score_without_bias"]


def score_without_bias(attention: FusedEdgeAttention, x: torch.Tensor, graph, edge_out: torch.Tensor) -> torch.Tensor:
    """[E, H, D]: one call's edge_out (the score, [E, H*D] or [E, H, D]) less EBT's b_e,i per edge."""
    heads, head_dim = attention.heads, attention.head_dim
    dst = graph.dst if isinstance(graph, Graph) else graph[1]
    if edge_out.shape[0] != dst.shape[0]:
        raise ValueError(f"{type(attention).__name__}'s edge_out has {edge_out.shape[0]} rows for {dst.shape[0]} "
                         "edges (fake edges?): the score without the bias is measured on the graph's edges only")
    score = edge_out.detach().reshape(edge_out.shape[0], heads, head_dim)
    if attention.ebt != "edge":
        return score
    q = attention.lin_q(x.detach()).view(x.shape[0], heads, head_dim).to(score.dtype)
    beta = (q * attention.ebt_k.to(score.dtype)).sum(-1, keepdim=True) / math.sqrt(head_dim)
    return score - (beta * attention.ebt_e.to(score.dtype))[dst]


def _hook(stats: EdgeStats):
    def record(module, args, kwargs, output) -> None:
        x = args[0] if args else kwargs["x"]
        graph = args[1] if len(args) > 1 else kwargs["edge_index"]
        edge_out = output[1]
        if edge_out is None:
            raise ValueError(f"{type(module).__name__} returned no edge_out to measure")
        score = score_without_bias(module, x, graph, edge_out)
        with torch.no_grad():
            add_to_all((stats,), reduce_tensor(score.reshape(score.shape[0], -1), stats.mantissa_bits), module.heads)
    return record


@contextlib.contextmanager
def collect_without_bias(model: torch.nn.Module, **stats_kwargs) -> Iterator[dict[str, EdgeStats]]:
    """Like `magnn.stats.collect(model)` for magnn's attention layers, but each layer's statistics are
    of its score without EBT's bias term (module docstring); `stats_kwargs` go to each EdgeStats."""
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, FusedEdgeAttention)]
    if not layers:
        raise ValueError("collect_without_bias: the model has no magnn attention layer (FusedEdgeAttention)")
    additive = [name for name, module in layers if module.mode != "gt"]
    if additive:
        raise ValueError(f"collect_without_bias: {additive} tap post-softmax messages (mode='additive'), in which "
                         "the bias also enters the message; the score without the bias needs mode='gt'")
    collected = {name: EdgeStats(**stats_kwargs) for name, _ in layers}
    handles = [module.register_forward_hook(_hook(collected[name]), with_kwargs=True) for name, module in layers]
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()
