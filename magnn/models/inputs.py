"""Reading a PyG Data/Batch inside a model's forward: graph membership, cached
inputs the pre-transforms wrote, input noise (attacks) and random eigenvector signs."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["graph_batch", "require", "add_noise", "random_signs"]


def graph_batch(data) -> tuple[Optional[torch.Tensor], int]:
    """(batch vector or None, number of graphs) of a PyG Data or Batch."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return None, 1
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
    return batch, int(num_graphs)


def require(data, name: str, why: str) -> torch.Tensor:
    """data.<name>, which a pre-transform computes; ValueError saying which transform to add if absent."""
    value = getattr(data, name, None)
    if value is None:
        raise ValueError(
            f"data.{name} is missing: {why}; add magnn.models.transforms_for(...) as the dataset's "
            "pre_transform (or build the model with pe=None)"
        )
    return value


def add_noise(tensor: torch.Tensor, noise: Optional[torch.Tensor], name: str) -> torch.Tensor:
    """tensor + noise (noise None: tensor); ValueError naming `name` when the shapes differ."""
    if noise is None:
        return tensor
    if noise.shape != tensor.shape:
        raise ValueError(f"{name} must have shape {list(tensor.shape)}, got {list(noise.shape)}")
    return tensor + noise


def random_signs(vectors: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: int, training: bool) -> torch.Tensor:
    """vectors [N, k] with each column's sign flipped at random per graph while training
    (eigenvectors are defined up to sign); unchanged in eval mode."""
    if not training:
        return vectors
    signs = torch.randint(0, 2, (num_graphs, vectors.shape[1]), device=vectors.device).to(vectors.dtype) * 2 - 1
    return vectors * (signs[batch] if batch is not None else signs[0])
