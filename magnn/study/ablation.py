"""The meaningless-edge ablation's parts: a new edge type, random edges of it, per-type summaries.

The ablation adds round(fraction * E) random directed edges of an edge type the data never
uses to the test graphs and asks where the MAs go (SPEC §7): `type_summary` reports, per edge
type over all layers, the MA edge frequency and the largest r_e.
"""
from __future__ import annotations

import copy


def new_edge_type(info) -> int:
    """Edge type id (and edge_attr value) for meaningless edges: one the data never uses."""
    return {"ogb_bond": 4, "zinc_bond": 0}.get(info.edge_features, 1)  # OGB bond type 4 = "misc"


def add_meaningless_edges(data, fraction: float, edge_type: int, generator):
    """A copy of `data` with round(fraction * E) random directed edges of a new type added."""
    import torch

    data = copy.copy(data)
    count = max(1, round(fraction * data.edge_index.shape[1])) if data.num_nodes > 1 else 0
    if count == 0:
        return data
    src = torch.randint(0, data.num_nodes, (count,), generator=generator)
    dst = torch.randint(0, data.num_nodes, (count,), generator=generator)
    data.edge_index = torch.cat([data.edge_index, torch.stack([src, dst])], 1)
    attr = data.edge_attr
    extra = torch.zeros((count,) + tuple(attr.shape[1:]), dtype=attr.dtype)
    if attr.dim() == 1:
        extra[:] = edge_type
    else:
        extra[:, 0] = edge_type
    data.edge_attr = torch.cat([attr, extra], 0)
    data.edge_type = torch.cat([data.edge_type, torch.full((count,), edge_type, dtype=data.edge_type.dtype)])
    return data


def type_summary(report, names) -> dict:
    """Per edge type over all layers: MA edge frequency (MA edges / edges) and the largest r_e."""
    edges, massive, largest = {}, {}, {}
    for layer in report.to_dict()["layers"]:
        for t, counts in layer["edge_types"].items():
            edges[t] = edges.get(t, 0) + counts["edges"]
            massive[t] = massive.get(t, 0) + counts["ma_edges"]
            if counts.get("max_ratio") == counts.get("max_ratio"):  # skip NaN
                largest[t] = max(largest.get(t, 0.0), counts["max_ratio"])
    label = lambda t: names[int(t)] if 0 <= int(t) < len(names) and names[int(t)] else f"type {t}"
    return {label(t): {"ma_frequency": massive[t] / edges[t], "max_ratio": largest.get(t, float("nan"))}
            for t in sorted(edges, key=int) if edges[t]}


def subset(part, count: int | None):
    """The first `count` graphs of a split (a list or dataset); the single graph of a node task as it is."""
    from torch_geometric.data import Data

    if count is None or isinstance(part, Data) or isinstance(part, list) and len(part) <= count:
        return part
    return part[:count]
