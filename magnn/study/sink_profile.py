"""The study's sink profile: for each trained model and attention layer, the attention-sink mass
and edge entropy measured in the kernels (`AttentionStats`, SPEC §4) on test graphs, and how they
relate to in-degree, to MA edges and to edge (bond) type (`magnn.analysis.sinks`).

A model without EBT slot or sink has sink mass 0 everywhere: the profile then says where its
attention concentrates only through the edge entropy. report.json "sinks" (docs/REPORT.md) and
OUT/sink_profile.png (mean sink mass and entropy per in-degree bucket, one line per model and layer).
The profile runs on the test graphs the detection reads; on ogbn-proteins it is not computed.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..core.constants import MA_THRESHOLD

log = logging.getLogger("magnn.study.sink_profile")

__all__ = ["sink_profile", "sinks_stage", "model_sink_mass"]


def sink_profile(model, graphs, *, device="cpu", threshold: float = MA_THRESHOLD, batch_size: int = 64,
                 desc: str = "sink profile") -> dict:
    """Per attention layer of `model` over `graphs` (PyG Data, in batches): {"summary":
    AttentionStats.to_dict() (with "by_degree"), "relations": sink_relations(...) or None,
    "relations_note": why relations is None (the layer attends over other edges than the graph's)}."""
    import torch
    from torch_geometric.loader import DataLoader
    from tqdm import tqdm

    from ..core.progress import progress_enabled
    from ..stats import collect, collect_attention

    model.eval().to(device)
    edges, types, offset = [], [], 0
    with torch.no_grad(), collect(model, threshold=threshold, keep_edge_ratio=True) as ratios, \
            collect_attention(model, keep_rows=True) as attention:
        for batch in tqdm(DataLoader(list(graphs), batch_size=batch_size), desc=desc, leave=False,
                          disable=not progress_enabled(True)):
            batch = batch.to(device)
            model(batch)
            edges.append(batch.edge_index.cpu() + offset)
            edge_type = getattr(batch, "edge_type", None)
            types.append(edge_type.cpu() if edge_type is not None else None)
            offset += int(batch.num_nodes)
    edge_index = torch.cat(edges, dim=1) if edges else torch.empty(2, 0, dtype=torch.long)
    edge_types = torch.cat(types) if types and all(t is not None for t in types) else None
    return {name: _layer_profile(stats, ratios.get(name), edge_index, edge_types, offset, threshold)
            for name, stats in attention.items()}


def _layer_profile(stats, edge_stats, edge_index, edge_types, nodes: int, threshold: float) -> dict:
    """One layer's summary and, where its rows are the graph's nodes and edges, its relations."""
    from ..analysis.sinks import sink_relations

    profile = {"summary": stats.to_dict(), "relations": None}
    mass, entropy, degree = stats.rows()
    edge_ratio = edge_stats.edge_ratio if edge_stats is not None else None
    if edge_ratio is None or edge_ratio.shape[0] != edge_index.shape[1] or mass.shape[0] != nodes:
        profile["relations_note"] = ("the layer's attention rows are not the graph's nodes and edges "
                                     "(added or other edges, e.g. SAN's fake edges): no per-edge relations")
        return profile
    profile["relations"] = sink_relations(mass, entropy, degree, edge_index, edge_ratio, threshold=threshold,
                                          edge_types=edge_types)
    return profile


def model_sink_mass(profile: dict) -> dict:
    """A model's mean sink mass and edge entropy over all its layers' defined (node, head) rows."""
    summaries = [layer["summary"] for layer in profile.values()]
    out = {}
    for key, rows in (("sink_mass", "sink_rows"), ("entropy", "entropy_rows")):
        total = sum(s[rows] for s in summaries)
        weighted = sum(s[f"mean_{key}"] * s[rows] for s in summaries if s[f"mean_{key}"] is not None)
        out[f"mean_{key}"] = weighted / total if total else None
    return out


def sinks_stage(data, task, trained, out: Path) -> tuple[dict, dict]:
    """(report.json "sinks": per trained model {"layers": {layer: profile}, "overall": model_sink_mass},
    the figures: {"sink_profile": OUT/sink_profile.png}); ({}, {}) where the task has no test graphs for it."""
    from ..analysis.sinks import plot_sink_profile

    graphs = task.sink_inputs(data)
    if not graphs:
        return {}, {}
    config = data.config
    sinks = {}
    for tag, model in trained.models.items():
        log.info(f"== sink profile: trained {tag}")
        layers = sink_profile(model, graphs, device=config.train.device, threshold=config.threshold,
                              desc=f"sink profile: trained {tag}")
        sinks[tag] = {"layers": layers, "overall": model_sink_mass(layers), "graphs": len(graphs)}
    lines = {f"{tag} {layer}": profile["summary"]["by_degree"]
             for tag, entry in sinks.items() for layer, profile in entry["layers"].items()}
    title = f"{config.model.upper()} on {config.dataset}: sink mass and edge entropy by in-degree"
    return sinks, {"sink_profile": plot_sink_profile(lines, Path(out) / "sink_profile.png", title=title)}
