"""Task heads: an MLP in -> in/2 -> in/4 -> out (ReLU), after a graph readout if needed."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch_geometric.utils import scatter

from ..data.info import DatasetInfo

__all__ = ["MLPReadout", "GraphHead", "NodeHead", "build_head", "READOUTS", "TASKS"]

READOUTS = ("mean", "sum")
TASKS = ("graph_regression", "graph_multilabel", "node_multilabel")


class MLPReadout(nn.Module):
    """Linear(in, in/2) -> ReLU -> Linear(in/2, in/4) -> ReLU -> Linear(in/4, out)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half, quarter = max(in_channels // 2, 1), max(in_channels // 4, 1)
        self.layers = nn.Sequential(
            nn.Linear(in_channels, half), nn.ReLU(),
            nn.Linear(half, quarter), nn.ReLU(),
            nn.Linear(quarter, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GraphHead(nn.Module):
    """Pools node states per graph (mean or sum) and applies the MLP -> [num_graphs, num_tasks]."""

    def __init__(self, hidden: int, num_tasks: int, readout: str):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose one of {READOUTS}")
        self.readout = readout
        self.mlp = MLPReadout(hidden, num_tasks)

    def forward(self, h: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: int) -> torch.Tensor:
        if batch is None:
            batch = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        pooled = scatter(h, batch, dim=0, dim_size=num_graphs, reduce=self.readout)
        return self.mlp(pooled)


class NodeHead(nn.Module):
    """Per-node MLP -> [N, num_tasks]."""

    def __init__(self, hidden: int, num_tasks: int):
        super().__init__()
        self.mlp = MLPReadout(hidden, num_tasks)

    def forward(self, h: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: int) -> torch.Tensor:
        return self.mlp(h)


def build_head(info: DatasetInfo, hidden: int, readout: Optional[str]) -> nn.Module:
    if info.task not in TASKS:
        raise ValueError(f"unknown task {info.task!r}; choose one of {TASKS}")
    if info.num_tasks < 1:
        raise ValueError(f"DatasetInfo.num_tasks must be >= 1, got {info.num_tasks}")
    if info.task == "node_multilabel":
        return NodeHead(hidden, info.num_tasks)
    if readout is None:
        raise ValueError(f"task {info.task!r} needs a readout: one of {READOUTS}")
    return GraphHead(hidden, info.num_tasks, readout)
