"""The sub-layers every model's transformer layer shares (SPEC §5).

After attention, each stream (nodes; for GraphTransformer also edges) runs
dropout -> output projection (O_h or O_e) -> residual + norm -> FFN
(Linear(d, 2d) -> ReLU -> dropout -> Linear(2d, d)) -> residual + norm,
post-norm as in Dwivedi & Bresson's reference code.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NORMS", "make_norm", "BatchNorm", "FeedForward", "ResidualStream"]

NORMS = ("batch", "layer", "none")


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that also trains on batches of 0 or 1 rows (PyG's ``allow_single_element``).

    A batch with one graph of one atom (TOX21 has 16 such molecules) or without
    edges gives the node or edge stream 1 or 0 rows, whose batch variance does
    not exist: such a batch is normalised with the running statistics, as in
    eval mode, and leaves them unchanged. Same parameters and buffers as
    nn.BatchNorm1d, so checkpoints load either way.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and input.shape[0] <= 1 and self.running_mean is not None:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
            )
        return super().forward(input)


def make_norm(norm: Optional[str], dim: int) -> nn.Module:
    if norm == "batch":
        return BatchNorm(dim)
    if norm == "layer":
        return nn.LayerNorm(dim)
    if norm in ("none", None):
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.lin1 = nn.Linear(dim, 2 * dim)
        self.lin2 = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.dropout(torch.relu(self.lin1(x))))


class ResidualStream(nn.Module):
    """Updates one stream from its attention output: O, residual + norm, FFN, residual + norm."""

    def __init__(self, dim: int, *, norm: Optional[str], residual: bool, dropout: float):
        super().__init__()
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, dim)
        self.norm1 = make_norm(norm, dim)
        self.ffn = FeedForward(dim, dropout)
        self.norm2 = make_norm(norm, dim)

    def forward(self, stream_in: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        y = self.out(self.dropout(attended))
        if self.residual:
            y = stream_in + y
        y = self.norm1(y)
        z = self.ffn(y)
        if self.residual:
            z = y + z
        return self.norm2(z)
