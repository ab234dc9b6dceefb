"""Input encoders chosen by `DatasetInfo.node_features` / `edge_features`.

* "ogb_atom" / "ogb_bond": OGB's AtomEncoder / BondEncoder (one embedding per
  smiles2graph feature column, summed).
* "zinc_atom": Embedding(28, h) of the atom type; "zinc_bond": Embedding(4, h)
  of the bond type (1..3; 0 is free for "no bond").
* "proteins": nodes embed their species (Embedding(num_species, h)) plus a
  Linear(8, h) of the aggregated edge features; edges use Linear(8, h).
"""
from __future__ import annotations

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import nn

from ..data.info import DatasetInfo

__all__ = ["NodeEncoder", "EdgeEncoder", "NODE_FEATURES", "EDGE_FEATURES"]

NODE_FEATURES = ("ogb_atom", "zinc_atom", "proteins")
EDGE_FEATURES = ("ogb_bond", "zinc_bond", "proteins")
ZINC_ATOM_TYPES = 28
ZINC_BOND_TYPES = 4
PROTEINS_FEATURES = 8


def _as_index_column(values: torch.Tensor, name: str) -> torch.Tensor:
    """[N] or [N, 1] integer tensor -> [N] long (PyG's ZINC stores edge_attr as [E])."""
    if values.is_floating_point():
        raise TypeError(f"{name} must hold integer type ids, got {values.dtype}")
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() != 1:
        raise ValueError(f"{name} must have shape [n] or [n, 1], got {list(values.shape)}")
    return values.long()


class NodeEncoder(nn.Module):
    """Maps a Data's node inputs to [N, hidden]."""

    def __init__(self, info: DatasetInfo, hidden: int):
        super().__init__()
        self.kind = info.node_features
        if self.kind == "ogb_atom":
            self.atom = AtomEncoder(hidden)
        elif self.kind == "zinc_atom":
            self.atom = nn.Embedding(ZINC_ATOM_TYPES, hidden)
        elif self.kind == "proteins":
            if info.num_species < 1:
                raise ValueError("DatasetInfo.num_species must be >= 1 for node_features='proteins'")
            self.species = nn.Embedding(info.num_species, hidden)
            self.features = nn.Linear(PROTEINS_FEATURES, hidden)
        else:
            raise ValueError(f"unknown node_features {self.kind!r}; choose one of {NODE_FEATURES}")

    def forward(self, data) -> torch.Tensor:
        x = data.x
        if self.kind == "ogb_atom":
            return self.atom(x.long())
        if self.kind == "zinc_atom":
            return self.atom(_as_index_column(x, "x"))
        species = getattr(data, "species", None)
        if species is None:
            raise ValueError("node_features='proteins' needs data.species (long [N])")
        return self.species(_as_index_column(species, "species")) + self.features(x.float())


class EdgeEncoder(nn.Module):
    """Maps a Data's edge_attr to [E, hidden]."""

    def __init__(self, info: DatasetInfo, hidden: int):
        super().__init__()
        self.kind = info.edge_features
        if self.kind == "ogb_bond":
            self.bond = BondEncoder(hidden)
        elif self.kind == "zinc_bond":
            self.bond = nn.Embedding(ZINC_BOND_TYPES, hidden)
        elif self.kind == "proteins":
            self.features = nn.Linear(PROTEINS_FEATURES, hidden)
        else:
            raise ValueError(f"unknown edge_features {self.kind!r}; choose one of {EDGE_FEATURES}")

    def forward(self, edge_attr: torch.Tensor) -> torch.Tensor:
        if self.kind == "ogb_bond":
            return self.bond(edge_attr.long())
        if self.kind == "zinc_bond":
            return self.bond(_as_index_column(edge_attr, "edge_attr"))
        return self.features(edge_attr.float())
