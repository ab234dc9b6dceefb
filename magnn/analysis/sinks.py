"""Attention sinks in graph models: how a layer's sink mass and edge entropy (`AttentionStats`,
SPEC §4) relate to in-degree, to MA edges and to edge (bond) type, for report.json and a figure.

Inputs are one layer's kept rows (`AttentionStats(keep_rows=True).rows()`: sink mass and entropy
[N, H], in-degree [N]) and the same forward calls' edge rows (`EdgeStats(keep_edge_ratio=True)
.edge_ratio` [E], and optionally the edge types [E]) with `edge_index` [2, E] numbering the rows'
nodes (over several batches: each batch's node ids offset by the nodes of the batches before it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from ..core.constants import MA_THRESHOLD

__all__ = ["sink_relations", "plot_sink_profile"]


def _mean(values: torch.Tensor) -> Optional[float]:
    values = values[~torch.isnan(values)]
    return float(values.double().mean()) if values.numel() else None


def sink_relations(mass: torch.Tensor, entropy: torch.Tensor, degree: torch.Tensor, edge_index: torch.Tensor,
                   edge_ratio: torch.Tensor, *, threshold: float = MA_THRESHOLD,
                   edge_types: Optional[torch.Tensor] = None) -> dict:
    """{"by_ma": nodes with an incoming MA edge (r_e > threshold) vs the other receiving nodes: their
    count, mean sink mass and mean edge entropy (over nodes and heads); "by_edge_type": per type, its
    edges, the MA edges among them and the mean sink mass of their destination nodes (edge-weighted);
    "degree_correlation": Pearson correlation of a node's head-mean sink mass with log2(1 + in-degree)
    (None when either is constant)}. NaN rows (nothing attended) are left out of every mean."""
    mass, entropy = mass.detach().double().cpu(), entropy.detach().double().cpu()
    dst = edge_index[1].cpu()
    if dst.shape[0] != edge_ratio.shape[0]:
        raise ValueError(f"edge_index has {dst.shape[0]} edges but edge_ratio {edge_ratio.shape[0]} rows")
    if mass.shape[0] != degree.shape[0] or (dst.numel() and int(dst.max()) >= mass.shape[0]):
        raise ValueError("edge_index must number the rows' nodes (offset each batch's ids by the nodes before it)")
    massive = edge_ratio.detach().cpu() > threshold
    has_ma = torch.zeros(mass.shape[0], dtype=torch.bool).index_fill(0, dst[massive], True)
    receiving = degree.cpu() > 0
    by_ma = {}
    for name, chosen in (("with_ma_edge", has_ma), ("without_ma_edge", receiving & ~has_ma)):
        by_ma[name] = {"nodes": int(chosen.sum()), "mean_sink_mass": _mean(mass[chosen]),
                       "mean_entropy": _mean(entropy[chosen])}
    node_mass = torch.nanmean(mass, dim=1)  # a node's mean over heads
    by_type = {}
    if edge_types is not None:
        types = edge_types.detach().cpu().long()
        for edge_type in torch.unique(types).tolist():
            chosen = types == edge_type
            by_type[str(edge_type)] = {"edges": int(chosen.sum()), "ma_edges": int((massive & chosen).sum()),
                                       "mean_destination_sink_mass": _mean(node_mass[dst[chosen]])}
    return {"threshold": threshold, "by_ma": by_ma, "by_edge_type": by_type,
            "degree_correlation": _correlation(node_mass, torch.log2(1 + degree.cpu().double()))}


def _correlation(x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    keep = ~torch.isnan(x)
    x, y = x[keep], y[keep]
    if x.numel() < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    scale = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / scale if scale > 0 else None


def plot_sink_profile(by_degree_by_label: dict, path, *, title: str = "") -> Path:
    """Mean sink mass and mean edge entropy per in-degree bucket (`AttentionStats.by_degree()`), one
    line per label (e.g. per layer or per mitigation), with log2(degree), uniform attention's entropy."""
    from .figures import _save, _subplots

    fig, (left, right) = _subplots(1, 2, figsize=(10, 4))
    for label, table in by_degree_by_label.items():
        rows = [row for row in table if row["degree_low"] > 0]
        centres = [math.sqrt(row["degree_low"] * row["degree_high"]) for row in rows]
        left.plot(centres, [row["mean_sink_mass"] for row in rows], marker="o", label=str(label))
        right.plot(centres, [row["mean_entropy"] for row in rows], marker="o", label=str(label))
    degrees = sorted({math.sqrt(r["degree_low"] * r["degree_high"]) for t in by_degree_by_label.values()
                      for r in t if r["degree_low"] > 0})
    if degrees:
        right.plot(degrees, [math.log(d) for d in degrees], color="grey", linestyle=":", label="uniform (log deg)")
    for axis, name in ((left, "mean sink mass"), (right, "mean edge entropy (nats)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("in-degree")
        axis.set_ylabel(name)
        axis.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
