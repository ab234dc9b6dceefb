"""Input encoders chosen by `DatasetInfo.node_features` / `edge_features`.

* "ogb_atom" / "ogb_bond": OGB's AtomEncoder / BondEncoder (one embedding per
  smiles2graph feature column, summed).
* "zinc_atom": Embedding(28, h) of the atom type; "zinc_bond": Embedding(4, h)
  of the bond type (1..3; 0 is free for "no bond").
* "proteins": nodes embed their species (Embedding(num_species, h)), plus a
  Linear(8, h) of the aggregated edge features for node_input="species+edge_mean"
  (node_input="species", the MA paper's ogbn-proteins input, is the species
  embedding only); edges use Linear(8, h).

How the attention layers get their edge features is one `EdgeInput`, chosen once
by `edge_input(...)`: one encoder shared by every layer (`SharedEdgeInput`), one
encoder per layer (`PerLayerEdgeInput`), or the raw features into layers whose
edge projection includes the shared encoder (`FusedEdgeInput`).

`ComposedEdgeProjection` folds a shared edge encoder Linear(8, h) into an
attention layer's edge projection (one Linear of the raw 8 features), so the
[E, h] shared embedding is never materialised (see the models' `fused_edge_projection`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..core.errors import missing_extra

try:  # the study's extras
    from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
except ImportError as _error:
    raise missing_extra(_error, "magnn.models (OGB atom and bond encoders)") from _error

from ..data.info import DatasetInfo
from .inputs import add_noise

__all__ = ["NodeEncoder", "EdgeEncoder", "ComposedEdgeProjection", "fuse_edge_projections", "NODE_FEATURES", "EDGE_FEATURES",
           "unfuse_edge_projections", "PROTEINS_NODE_INPUTS", "EdgeInput", "SharedEdgeInput", "PerLayerEdgeInput", "FusedEdgeInput", "edge_input",
           "FUSED_EDGE_NOISE"]

NODE_FEATURES = ("ogb_atom", "zinc_atom", "proteins")
EDGE_FEATURES = ("ogb_bond", "zinc_bond", "proteins")
ZINC_ATOM_TYPES = 28
ZINC_BOND_TYPES = 4
PROTEINS_FEATURES = 8
# ogbn-proteins node inputs: the paper's (species only) and species plus the mean incoming edge features
PROTEINS_NODE_INPUTS = ("species", "species+edge_mean")


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
    """Maps a Data's node inputs to [N, hidden].

    node_input (edge_features="proteins" only): "species+edge_mean" adds a Linear(8, hidden)
    of data.x (the mean incoming edge features) to the species embedding; "species" keeps the
    embedding alone. Its Linear is initialised either way, so the parameters built after the
    encoder get the same initial values whichever input is chosen.
    """

    def __init__(self, info: DatasetInfo, hidden: int, *, node_input: str = "species+edge_mean"):
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
            if node_input == "species":
                self.features = None
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
        embedded = self.species(_as_index_column(species, "species"))
        return embedded if self.features is None else embedded + self.features(x.float())


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


class ComposedEdgeProjection(nn.Linear):
    """An attention layer's edge projection W_l e + b_l applied to e = W_s a + b_s (a shared
    Linear(8, h) of the raw edge features a) as ONE Linear of a: weight W_l W_s, bias W_l b_s + b_l.

    Same parameters (it takes over the layer's own `weight` and `bias`, so state_dict keys
    and initialisation do not change) and the same function up to rounding, but neither the
    [E, h] shared embedding nor its gradient is ever materialised: autograd keeps the raw
    [E, 8] features. `shared` is the model's encoder Linear, held by reference (not a submodule).
    """

    def __init__(self, own: nn.Linear, shared: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = shared.in_features, own.out_features
        self.weight = own.weight
        self.bias = own.bias
        self._shared = (shared,)

    def reset_parameters(self) -> None:  # nn.Linear's rule on the layer's own (h x h) weight
        fan_in = self.weight.shape[1]
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / fan_in ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def composed_parameters(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(W_l W_s [out, 8], W_l b_s + b_l): the one Linear this projection computes, differentiable
        in both Linears' parameters; `FusedEdgeAttention` hands them to the operator, which forms
        e per edge inside its kernels (magnn.layers.projects_in_kernel)."""
        shared = self._shared[0]
        weight = self.weight @ shared.weight
        bias = self.weight @ shared.bias if shared.bias is not None else None
        if self.bias is not None:
            bias = self.bias if bias is None else bias + self.bias
        return weight, bias

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        weight, bias = self.composed_parameters()
        return nn.functional.linear(raw.to(weight.dtype), weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features} (raw, through the shared encoder), out_features={self.out_features}"


def fuse_edge_projections(attentions, edge_encoder: "EdgeEncoder") -> None:
    """Give each attention layer a ComposedEdgeProjection through `edge_encoder` (a "proteins"
    EdgeEncoder, whose Linear(8, h) is shared by all layers); the layers then take raw [E, 8]
    edge features. ValueError for other edge encoders."""
    if edge_encoder is None or edge_encoder.kind != "proteins":
        raise ValueError("fused_edge_projection needs one shared Linear edge encoder (edge_features='proteins', "
                         "edge input 'shared')")
    for attention in attentions:
        attention.lin_e = ComposedEdgeProjection(attention.lin_e, edge_encoder.features)
        attention.edge_dim = PROTEINS_FEATURES


def unfuse_edge_projections(attentions) -> None:
    """The inverse of `fuse_edge_projections`: each layer's ComposedEdgeProjection becomes a plain
    Linear(h, h) holding the same weight and bias Parameters (shared, not copied), so the layers
    take the [E, h] shared embedding again."""
    for attention in attentions:
        composed = attention.lin_e
        if isinstance(composed, ComposedEdgeProjection):
            own = nn.Linear(composed.weight.shape[1], composed.out_features, bias=composed.bias is not None,
                            device=composed.weight.device, dtype=composed.weight.dtype)
            own.weight, own.bias = composed.weight, composed.bias
            attention.lin_e, attention.edge_dim = own, composed.weight.shape[1]


FUSED_EDGE_NOISE = "edge_noise needs the edge embedding, which fused_edge_projection=True never builds"


class EdgeInput:
    """How a model's layers get their edge features [E, ...] in one forward.

    ``shared(data, edge_noise)`` runs once per forward (the input every layer takes, or None);
    ``for_layer(layer, data, shared, edge_noise)`` gives one layer its input. edge_noise
    [E, hidden] is added to the edge embedding (adversarial attacks).
    """

    def shared(self, data, edge_noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def for_layer(self, layer: nn.Module, data, shared: Optional[torch.Tensor],
                  edge_noise: Optional[torch.Tensor]) -> torch.Tensor:
        return shared


class SharedEdgeInput(EdgeInput):
    """One EdgeEncoder (the model's ``edge_encoder``) embeds the edges once for every layer."""

    def __init__(self, encoder: "EdgeEncoder"):
        self.encoder = encoder

    def shared(self, data, edge_noise):
        return add_noise(self.encoder(data.edge_attr), edge_noise, "edge_noise")


class PerLayerEdgeInput(EdgeInput):
    """Each layer embeds the raw edge features with its own EdgeEncoder (``layer.edge_encoder``)."""

    def shared(self, data, edge_noise):
        return None

    def for_layer(self, layer, data, shared, edge_noise):
        return add_noise(layer.edge_encoder(data.edge_attr), edge_noise, "edge_noise")


class FusedEdgeInput(EdgeInput):
    """The raw [E, 8] features into every layer, whose edge projection includes the shared
    encoder's Linear (`fuse_edge_projections`): no [E, hidden] embedding, hence no edge_noise."""

    def shared(self, data, edge_noise):
        if edge_noise is not None:
            raise ValueError(FUSED_EDGE_NOISE)
        return data.edge_attr.float()


def edge_input(encoder: Optional["EdgeEncoder"], *, fused: bool) -> EdgeInput:
    """The EdgeInput of a model with the shared `encoder` (None: one encoder per layer);
    fused: the layers' edge projections include the encoder (`fuse_edge_projections`)."""
    if encoder is None:
        return PerLayerEdgeInput()
    return FusedEdgeInput() if fused else SharedEdgeInput(encoder)
