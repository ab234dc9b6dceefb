"""What the three models share: the common settings, input encoders, head and layer execution.

A model is composed of parts chosen once, when it is built, from its config
(`magnn.models.config`): the node encoder and positional encoding that embed
the nodes, an `EdgeInput` that gives each layer its edge features, the
attention layers, and the task head. `forward` runs them in that order.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch_geometric.transforms import Compose

from ..core.errors import ArgumentTypeError
from ..core.graph import Graph
from ..data.info import DatasetInfo
from ..layers import FusedEdgeAttention
from .config import ModelConfig, resolve_depth_and_pe
from .encoders import FUSED_EDGE_NOISE, EdgeEncoder, NodeEncoder, edge_input, fuse_edge_projections, unfuse_edge_projections
from .heads import build_head
from .inputs import add_noise, graph_batch, random_signs, require
from .positional import LaplacianPE, RandomWalkKernel

__all__ = ["GraphModel", "NON_EDGE_TYPE", "graph_batch", "FUSED_EDGE_NOISE"]

# edge type of attention rows that are not real edges (GraphiT's kernel pairs, SAN's fake edges)
NON_EDGE_TYPE = -1


def reset_children(module: nn.Module) -> None:
    """Calls `reset_parameters()` on each child that has one (it resets what it holds) and
    recurses into the others; a child with torch's private `_reset_parameters()` instead
    (MultiheadAttention: its own weights, not its out_proj's draw) gets its children reset
    first, then its own rule."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
            continue
        reset_children(child)
        if hasattr(child, "_reset_parameters"):
            child._reset_parameters()


class GraphModel(nn.Module):
    """Base class: a subclass builds its parts from its config and runs them in `forward`.

    Common arguments (fields of `ModelConfig`):
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
      node_input: on ogbn-proteins-like inputs, "species" (the MA paper's: the species
        embedding alone) or "species+edge_mean" (adds a Linear of the mean incoming edge features).
      fused_edge_projection: fold the one shared edge Linear into each layer's edge
        projection (same function, no [E, hidden] shared embedding in memory).
      mitigation: "none" (the default: the model as configured), "ebt-edge" / "ebt-slot" (the
        same as ebt="edge" / "slot"), "sink" (a learned per-head sink logit in every layer) or
        "gate" (gated attention: each layer's node_out times sigmoid(Linear(h_i) -> [H]));
        SPEC §3, "Sink and gate".
    """

    PE_CHOICES: tuple = (None,)
    DEFAULT_PE: Optional[str] = None
    LAP_PE = LaplacianPE  # the eigenvector transform pe="lap" reads (SAN: SANEigenPE)

    @classmethod
    def resolve_defaults(cls, info: DatasetInfo, num_layers: Optional[int], pe) -> tuple[int, Optional[str]]:
        """(num_layers, pe) with None / "auto" filled in for `info` (`config.resolve_depth_and_pe`)."""
        return resolve_depth_and_pe(info, num_layers, pe, cls.DEFAULT_PE)

    @classmethod
    def make_config(cls, info: DatasetInfo, config: ModelConfig) -> ModelConfig:
        """`config` with its dataset-dependent defaults resolved, checked for this class."""
        if not isinstance(info, DatasetInfo):
            raise ArgumentTypeError(f"info must be a magnn.data.DatasetInfo, got {type(info).__name__}")
        config = config.resolve(info, cls.DEFAULT_PE)
        config.check(cls.__name__, cls.PE_CHOICES, info)
        return config

    def __init__(self, info: DatasetInfo, config: ModelConfig):
        """Builds the node encoder and the head; `config` is resolved and checked (`make_config`)."""
        super().__init__()
        self.info, self.config = info, config
        self.num_layers, self.hidden, self.heads = config.num_layers, config.hidden, config.heads
        self.head_dim = config.hidden // config.heads
        self.norm, self.residual, self.dropout = config.norm, config.residual, config.dropout
        self.ebt, self.ebt_init = config.ebt, config.ebt_init
        self.pe, self.pe_dim = config.pe, config.pe_dim
        self.clamp, self.backend, self.checkpoint = config.clamp, config.backend, config.checkpoint
        self.node_input, self.fused_edge_projection = config.node_input, config.fused_edge_projection
        self.mitigation = config.mitigation
        self.node_encoder = NodeEncoder(info, config.hidden, node_input=config.node_input)
        self.head = build_head(info, config.hidden, config.readout)
        self.readout = getattr(self.head, "readout", None)

    def reset_parameters(self) -> None:
        """Re-draws every parameter with its part's own initialisation, PyG's way: each child that
        has `reset_parameters()` resets itself and what it holds; other children are walked into.
        (The values differ from a fresh build's with the same seed: the order of the draws does.)"""
        reset_children(self)

    # -- parts the subclasses build --------------------------------------------
    def make_attention(self) -> FusedEdgeAttention:
        """A gt-mode attention layer with this model's width, EBT, clamp and backend."""
        return FusedEdgeAttention(
            self.hidden, self.heads, self.head_dim, self.hidden,
            mode="gt", ebt=self.ebt, clamp=self.clamp, backend=self.backend, ebt_init=self.ebt_init,
            **self.config.mitigation_layers(),
        )

    def make_edge_encoder(self, shared: bool) -> Optional[EdgeEncoder]:
        """Sets the shared edge encoder (`edge_encoder`, None unless `shared`) and the `EdgeInput`."""
        self.edge_encoder = EdgeEncoder(self.info, self.hidden) if shared else None
        self.edge_input = edge_input(self.edge_encoder, fused=self.fused_edge_projection)
        return self.edge_encoder

    def fuse_edge_projections(self) -> None:
        """With fused_edge_projection: each layer's edge projection takes over the shared encoder."""
        if self.fused_edge_projection:
            fuse_edge_projections([layer.attention for layer in self.layers], self.edge_encoder)

    def unfused(self) -> "GraphModel":
        """This model, or with fused_edge_projection a deep copy whose layers take the [E, hidden]
        shared edge embedding again: the same parameter values and function, for what needs that
        embedding (edge_noise of the explicit bias attack). Build it on small inputs only: at
        ogbn-proteins' full size the embedding alone is 20 GB."""
        if not self.fused_edge_projection:
            return self
        import copy

        model = copy.deepcopy(self)
        unfuse_edge_projections([layer.attention for layer in model.layers])
        model.fused_edge_projection = False
        model.config = replace(model.config, fused_edge_projection=False)
        model.edge_input = edge_input(model.edge_encoder, fused=False)
        return model

    @property
    def positional_encoding(self) -> Optional[nn.Module]:
        """The part that adds the positional encoding to the node embedding (`add_to`), or None."""
        return None

    # -- what forward runs -----------------------------------------------------
    def embed_nodes(self, data) -> torch.Tensor:
        """[N, hidden]: the node encoder, plus the positional encoding if any."""
        h = self.node_encoder(data)
        encoding = self.positional_encoding
        return h if encoding is None else encoding.add_to(h, data)

    def random_signs(self, vectors: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: int) -> torch.Tensor:
        """Flips each eigenvector column's sign at random per graph while training."""
        return random_signs(vectors, batch, num_graphs, self.training)

    require = staticmethod(require)
    add_noise = staticmethod(add_noise)

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
        """layer(*args, **kwargs), under activation checkpointing when `checkpoint` is set and training."""
        if not (self.checkpoint and self.training and torch.is_grad_enabled()):
            return layer(*args, **kwargs)
        # the backward pass recomputes the layer; magnn.stats skips a recomputation's statistics itself
        return activation_checkpoint(layer, *args, use_reentrant=False, **kwargs)

    def block_refusal(self) -> Optional[str]:
        """Why this model cannot run layer by layer over per-layer blocks (`layer_blocks`), or None when
        it can: the node input must not pool edges (node_input "species+edge_mean" would average every
        block's edges); subclasses add their own reasons."""
        if self.node_input != "species":
            return f"node_input={self.node_input!r} averages the edge features of every block"
        return None

    def layer_blocks(self, data) -> Optional[list]:
        """Per layer, (Graph over its block's edges, the block's rows of the edge inputs, its number of
        destination nodes) when `data` carries DGL-style per-layer blocks (`block_ptr`, `block_num_dst`:
        magnn.data.sampling.block_batch), else None: one graph serves every layer.

        With blocks, layer l attends over block l only, reads the states of its sources (the
        previous block's destinations; every node for the first layer) and keeps those of its
        destinations, a prefix of its sources, as DGL's blocks do. Blocks after the last layer
        shape the earlier blocks' destinations but no layer attends over them (the paper's
        fan-outs [5, 10, 15, 1] for its 3 layers). ValueError when the model cannot run blocks
        (`block_refusal`) or there are fewer blocks than layers."""
        ptr = getattr(data, "block_ptr", None)
        if ptr is None:
            return None
        refusal = self.block_refusal()
        if refusal is not None:
            raise ValueError(f"per-layer blocks need the paper's ogbn-proteins architecture: {refusal}; "
                             "build the model with magnn.models.presets.proteins_architecture(model, 'paper')")
        ptr, num_dst = [int(v) for v in ptr], [int(v) for v in data.block_num_dst]
        if len(num_dst) < self.num_layers:
            raise ValueError(f"{len(num_dst)} blocks for {self.num_layers} layers: sample one block per layer at least")
        sources = [int(data.num_nodes)] + num_dst
        return [(Graph(data.edge_index[:, ptr[i]:ptr[i + 1]], num_nodes=sources[i]), slice(ptr[i], ptr[i + 1]),
                 num_dst[i]) for i in range(self.num_layers)]

    def run_block_layer(self, layer: nn.Module, rows: slice, num_dst: int, *args) -> torch.Tensor:
        """The node states of one layer run over its block (`layer_blocks`): layer(*args)'s node output
        (the first of a tuple) cut to the block's destinations. While it runs, the layer's active
        collectors that count by edge type see only this block's rows of the types they hold
        (collect(edge_types=...) holds every block's rows, one block after another)."""
        held = [c for c in getattr(layer.attention, "collectors", ()) if c.edge_types is not None and c.tap == "edge"]
        saved = [c.edge_types for c in held]
        for collector in held:
            collector.edge_types = collector.edge_types[rows]
        try:
            out = self.run_layer(layer, *args)
        finally:
            for collector, types in zip(held, saved):
                collector.edge_types = types
        return (out[0] if isinstance(out, tuple) else out)[:num_dst]

    def predict(self, h: torch.Tensor, data) -> torch.Tensor:
        """The head on the last node states: [num_graphs, num_tasks] or [N, num_tasks]."""
        batch, num_graphs = graph_batch(data)
        return self.head(h, batch, num_graphs)

    def pre_transforms(self):
        """The pre-transforms this model's `forward` needs (a Compose, or None)."""
        return self.transforms(self.info, self.transform_config())

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
        """The settings `transforms` reads: this model's resolved config."""
        return asdict(self.config)
