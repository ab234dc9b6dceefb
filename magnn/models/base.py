"""Scaffolding shared by the three models: config checks, encoders, PE, head, checkpointing."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch_geometric.transforms import Compose

from ..core.constants import check_ebt
from ..data.info import DatasetInfo
from ..functional import check_backend_name, check_clamp
from ..layers import FusedEdgeAttention, check_ebt_init, check_positive_int
from .block import NORMS
from .encoders import PROTEINS_NODE_INPUTS, EdgeEncoder, NodeEncoder
from .heads import build_head
from .positional import LaplacianPE, RandomWalkKernel

__all__ = ["GraphModel", "NON_EDGE_TYPE", "graph_batch"]

# edge type of attention rows that are not real edges (GraphiT's kernel pairs, SAN's fake edges)
NON_EDGE_TYPE = -1


def graph_batch(data) -> tuple[Optional[torch.Tensor], int]:
    """(batch vector or None, number of graphs) of a PyG Data or Batch."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return None, 1
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
    return batch, int(num_graphs)


FUSED_EDGE_NOISE = "edge_noise needs the edge embedding, which fused_edge_projection=True never builds"


class GraphModel(nn.Module):
    """Base class: subclasses build `self.layers` (one attention layer each) and `forward`.

    Common arguments:
      info: the dataset's `DatasetInfo` (encoders and head follow from it).
      num_layers, hidden, heads: depth (None: 10, or 3 for node-level datasets),
        width (hidden = heads * head_dim), heads.
      norm: "batch", "layer" or "none" (post-norm); residual: residual connections.
      dropout: after attention and inside the FFN.
      ebt: None, "edge" or "slot" (SPEC §3); ebt_init: "normal_0.02" or "standard_normal".
      pe: positional encoding (model specific; None turns it off; "auto": the
        class's default, none of the eigenvector ones on node-level datasets); pe_dim: its k.
      readout: "mean" or "sum" for graph tasks (ignored for node tasks).
      clamp: logit clamp of the attention (None or a number > 0); backend: edge_attention
        backend ("auto" or a key of magnn.functional.BACKENDS). Bad values fail here.
      checkpoint: recompute each layer in backward (activation checkpointing)
        while training; the recomputation adds no statistics.
    """

    PE_CHOICES: tuple = (None,)
    DEFAULT_PE: Optional[str] = None

    @classmethod
    def resolve_defaults(cls, info: DatasetInfo, num_layers: Optional[int], pe) -> tuple[int, Optional[str]]:
        """num_layers=None and pe="auto" by dataset: node-level datasets (one large graph, as
        ogbn-proteins) get 3 layers and no eigenvector encoding (an eigsh on the full graph is
        costly and no paper defines it there); graph datasets get 10 layers and the class's PE."""
        large = info.task == "node_multilabel"
        if num_layers is None:
            num_layers = 3 if large else 10
        if pe == "auto":
            pe = None if large and cls.DEFAULT_PE == "lap" else cls.DEFAULT_PE
        return num_layers, pe

    def __init__(
        self,
        info: DatasetInfo,
        *,
        num_layers: Optional[int],
        hidden: int,
        heads: int,
        norm: Optional[str],
        residual: bool,
        dropout: float,
        ebt: Optional[str],
        ebt_init: str,
        pe: Optional[str],
        pe_dim: int,
        readout: Optional[str],
        clamp: Optional[float],
        backend: str,
        checkpoint: bool,
    ):
        super().__init__()
        if not isinstance(info, DatasetInfo):
            raise TypeError(f"info must be a magnn.data.DatasetInfo, got {type(info).__name__}")
        num_layers, pe = self.resolve_defaults(info, num_layers, pe)
        check_positive_int("num_layers", num_layers)
        check_positive_int("heads", heads)
        check_positive_int("hidden", hidden)
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a positive multiple of heads ({heads})")
        check_clamp(clamp)
        check_backend_name(backend)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if norm not in NORMS and norm is not None:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        check_ebt(ebt)
        check_ebt_init(ebt_init)
        if pe not in self.PE_CHOICES:
            raise ValueError(f"{type(self).__name__} supports pe in {self.PE_CHOICES}, got {pe!r}")
        if pe is not None and pe_dim < 1:
            raise ValueError(f"pe_dim must be >= 1, got {pe_dim}")
        self.info = info
        self.num_layers, self.hidden, self.heads = num_layers, hidden, heads
        self.head_dim = hidden // heads
        self.norm, self.residual, self.dropout = norm, residual, dropout
        self.ebt, self.ebt_init = ebt, ebt_init
        self.pe, self.pe_dim = pe, pe_dim
        self.clamp, self.backend, self.checkpoint = clamp, backend, checkpoint
        self.node_encoder = NodeEncoder(info, hidden)
        self.head = build_head(info, hidden, readout)
        self.readout = getattr(self.head, "readout", None)

    # -- pieces the subclasses use ---------------------------------------------
    def make_attention(self) -> FusedEdgeAttention:
        """A gt-mode attention layer with this model's width, EBT, clamp and backend."""
        return FusedEdgeAttention(
            self.hidden, self.heads, self.head_dim, self.hidden,
            mode="gt", ebt=self.ebt, clamp=self.clamp, backend=self.backend, ebt_init=self.ebt_init,
        )

    def random_signs(self, vectors: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: int) -> torch.Tensor:
        """Flips each eigenvector column's sign at random per graph while training."""
        if not self.training:
            return vectors
        signs = torch.randint(0, 2, (num_graphs, vectors.shape[1]), device=vectors.device).to(vectors.dtype) * 2 - 1
        return vectors * (signs[batch] if batch is not None else signs[0])

    @staticmethod
    def require(data, name: str, why: str) -> torch.Tensor:
        value = getattr(data, name, None)
        if value is None:
            raise ValueError(
                f"data.{name} is missing: {why}; add magnn.models.transforms_for(...) as the dataset's "
                "pre_transform (or build the model with pe=None)"
            )
        return value

    @staticmethod
    def support_edge_types(attention: nn.Module, num_real: int, num_extra: int) -> Optional[torch.Tensor]:
        """Per-edge types of a call over the real edges followed by `num_extra` other rows
        (GraphiT's kernel pairs), for `edge_attention(edge_types=...)`: the real edges' types
        that the layer's active collectors hold, then NON_EDGE_TYPE for the other rows.

        None (the collectors use their own types) when there are no other rows, when no
        collector counts by edge type, or when their types do not cover the real edges.
        """
        if not num_extra:
            return None
        held = [c.edge_types for c in getattr(attention, "collectors", ()) if c.edge_types is not None and c.tap == "edge"]
        if not held:
            return None
        types = held[0]
        for other in held[1:]:
            if other is not types and not (other.shape == types.shape and torch.equal(other.cpu(), types.cpu())):
                raise ValueError("the layer's active collectors hold different edge_types for the same edges")
        if types.shape[0] != num_real:
            return None  # the collectors' own length check reports it
        extra = torch.full((num_extra,), NON_EDGE_TYPE, dtype=torch.int64)
        return torch.cat([types.detach().to("cpu", torch.int64), extra])

    def run_layer(self, layer: nn.Module, *args, **kwargs):
        if not (self.checkpoint and self.training and torch.is_grad_enabled()):
            return layer(*args, **kwargs)
        # the backward pass recomputes the layer; magnn.stats skips a recomputation's statistics itself
        return activation_checkpoint(layer, *args, use_reentrant=False, **kwargs)

    def use_node_input(self, node_input: str) -> None:
        """The node input (PROTEINS_NODE_INPUTS): "species" is the MA paper's ogbn-proteins input
        (the species embedding alone), "species+edge_mean" adds the mean incident edge features."""
        if node_input not in PROTEINS_NODE_INPUTS:
            raise ValueError(f"node_input must be one of {PROTEINS_NODE_INPUTS}, got {node_input!r}")
        if node_input == "species":
            self.node_encoder.drop_edge_mean()
        self.node_input = node_input

    def use_edge_encoders(self, layer_edge_encoders: Optional[bool], fused_edge_projection: bool) -> bool:
        """GraphiT's and SAN's edge input: one EdgeEncoder shared by every layer (self.edge_encoder)
        or one per layer (layer_edge_encoders; None: per layer only for edge_features="proteins"),
        and whether the shared encoder's Linear is folded into the layers' edge projections (then
        built by the caller, `fuse_edge_projections`). Returns the resolved layer_edge_encoders."""
        if layer_edge_encoders is None:
            layer_edge_encoders = self.info.edge_features == "proteins"
        if fused_edge_projection and (layer_edge_encoders or self.info.edge_features != "proteins"):
            raise ValueError("fused_edge_projection=True needs one shared Linear edge encoder "
                             "(edge_features='proteins' and layer_edge_encoders=False)")
        self.layer_edge_encoders, self.fused_edge_projection = layer_edge_encoders, fused_edge_projection
        self.edge_encoder = None if layer_edge_encoders else EdgeEncoder(self.info, self.hidden)
        return layer_edge_encoders

    def shared_edge_input(self, data, edge_noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The edge input every layer takes (see use_edge_encoders): the raw features when the
        projection is fused, else the shared encoder's embedding plus edge_noise; None when each
        layer encodes the features itself (`layer_edge_input`)."""
        if self.fused_edge_projection:  # each layer's edge projection embeds the raw features itself
            if edge_noise is not None:
                raise ValueError(FUSED_EDGE_NOISE)
            return data.edge_attr.float()
        if self.edge_encoder is None:
            return None
        return self.add_noise(self.edge_encoder(data.edge_attr), edge_noise, "edge_noise")

    def layer_edge_input(self, layer: nn.Module, data, shared: Optional[torch.Tensor],
                         edge_noise: Optional[torch.Tensor]) -> torch.Tensor:
        """One layer's edge input: the shared one, or the layer's own encoding plus edge_noise."""
        if shared is not None:
            return shared
        return self.add_noise(layer.edge_encoder(data.edge_attr), edge_noise, "edge_noise")

    @staticmethod
    def add_noise(tensor: torch.Tensor, noise: Optional[torch.Tensor], name: str) -> torch.Tensor:
        if noise is None:
            return tensor
        if noise.shape != tensor.shape:
            raise ValueError(f"{name} must have shape {list(tensor.shape)}, got {list(noise.shape)}")
        return tensor + noise

    def predict(self, h: torch.Tensor, data) -> torch.Tensor:
        batch, num_graphs = graph_batch(data)
        return self.head(h, batch, num_graphs)

    def pre_transforms(self):
        """The pre-transforms this model's `forward` needs (a Compose, or None)."""
        return self.transforms(self.info, self.transform_config())

    LAP_PE = LaplacianPE  # the eigenvector transform pe="lap" reads (SAN: SANEigenPE)

    @classmethod
    def transforms(cls, info: DatasetInfo, config: dict, *, dense_max_nodes: int = 1000) -> Optional[Compose]:
        """The pre-transforms (a Compose, or None) a model of this class built with `config`
        (its constructor arguments, defaults filled in) reads in `forward`. GraphiT's kernel
        uses p = 1 (edges plus self loops) on node-level datasets (one large graph), SPEC §5."""
        _, pe = cls.resolve_defaults(info, config.get("num_layers"), config["pe"])
        if pe not in cls.PE_CHOICES:
            raise ValueError(f"{cls.__name__} supports pe in {cls.PE_CHOICES}, got {pe!r}")
        transforms = []
        if pe == "lap":
            transforms.append(cls.LAP_PE(config["pe_dim"], dense_max_nodes=dense_max_nodes))
        elif pe == "rw":
            p = 1 if info.task == "node_multilabel" else config["kernel_p"]
            transforms.append(RandomWalkKernel(p, config["kernel_gamma"]))
        return Compose(transforms) if transforms else None

    def transform_config(self) -> dict:
        return {"pe": self.pe, "pe_dim": self.pe_dim}
