"""GraphTransformer (Dwivedi & Bresson, 2021) on `FusedEdgeAttention`.

Each layer: FusedEdgeAttention(mode="gt", clamp=5) over the real edges, then
a node stream (O_h, residual + norm, FFN, residual + norm) and an edge stream
that takes the layer's edge_out, i.e. the score ``w_ij = q_i * k_j * e_ij /
sqrt(D)`` (with ebt="edge" it includes the bias ``b_e,i``), through O_e,
residual + norm, FFN, residual + norm, as the reference code does. The
reference's ``exp(clamp(l, -5, 5))`` without max subtraction equals a softmax
over clamped logits, which the kernel computes.

ogbn-proteins-like inputs (``edge_features="proteins"``) have named variants:
``edge_stream=False`` (the MA paper's code) gives every layer the same
embedding of the raw edge features (one shared Linear(8, hidden)) and keeps
no edge stream (the layer's edge_out only feeds the statistics);
``edge_stream=True`` (the class default, and Dwivedi & Bresson's design) carries
the edge stream across layers. ``node_input`` is "species" (the paper's) or
"species+edge_mean" (adds a Linear of the mean incoming edge features).
``fused_edge_projection=True`` (needs edge_stream=False) folds the shared
Linear into each layer's edge projection: the same function, without the
[E, hidden] shared embedding in memory.

Optional Laplacian positional encodings (``pe="lap"``, data.lap_pe from
`positional.LaplacianPE`): Linear(k, hidden) added to the node embedding,
with each eigenvector's sign flipped at random per graph while training.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data.info import DatasetInfo
from ..core.graph import Graph
from .base import GraphModel
from .block import ResidualStream
from .config import GraphTransformerConfig
from .positional import LaplacianEncoding

__all__ = ["GraphTransformer", "GraphTransformerLayer"]


class GraphTransformerLayer(nn.Module):
    """One layer: attention over the real edges, then the node stream and (edge_stream) the edge stream.

    forward(h [N, hidden], e [E, edge_dim], graph) -> (h', e'): e' is the edge stream's update of
    the layer's edge_out, or e itself without an edge stream (edge_out is then never written).
    """

    def __init__(self, attention, hidden: int, *, norm, residual: bool, dropout: float, edge_stream: bool = True):
        super().__init__()
        self.attention = attention
        self.node = ResidualStream(hidden, norm=norm, residual=residual, dropout=dropout)
        self.edge = ResidualStream(hidden, norm=norm, residual=residual, dropout=dropout) if edge_stream else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, graph: Graph):
        node_out, edge_out = self.attention(h, graph, e, need_edge_out=self.edge is not None)
        if self.edge is None:
            return self.node(h, node_out), e
        return self.node(h, node_out), self.edge(e, edge_out)


class GraphTransformer(GraphModel):
    """Dwivedi & Bresson's GraphTransformer with node and edge streams.

    ``forward(data)`` takes a PyG Data/Batch (x, edge_index, edge_attr, batch,
    lap_pe when pe="lap") and returns [num_graphs, num_tasks] for graph tasks,
    [N, num_tasks] for node tasks. Defaults follow the original paper (ZINC:
    10 layers, hidden 64, 8 heads, BatchNorm, LapPE k = 8); see
    `magnn.models.build_model(..., preset=...)` for the MA paper's settings.

    Arguments: `GraphModel`'s common ones (pe: None or "lap"), plus
      edge_stream: carry the edge stream across layers (False: every layer takes the same
        edge embedding, the MA paper's ogbn-proteins code; see the module docstring).

    Parts: ``node_encoder``, ``lap_pe`` (`LaplacianEncoding` or None), ``edge_encoder``
    (shared by every layer) and its `EdgeInput` ``edge_input``, ``layers``
    (`GraphTransformerLayer`), ``head``.
    """

    model_name = "gt"
    PE_CHOICES = (None, "lap")
    DEFAULT_PE = "lap"

    def __init__(
        self,
        info: DatasetInfo,
        *,
        num_layers: Optional[int] = None,
        hidden: int = 64,
        heads: int = 8,
        norm: Optional[str] = "batch",
        residual: bool = True,
        dropout: float = 0.0,
        ebt: Optional[str] = None,
        ebt_init: str = "normal_0.02",
        pe: Optional[str] = "auto",
        pe_dim: int = 8,
        readout: Optional[str] = "mean",
        clamp: Optional[float] = 5.0,
        backend: str = "auto",
        checkpoint: bool = False,
        edge_stream: bool = True,
        node_input: str = "species+edge_mean",
        fused_edge_projection: bool = False,
        mitigation: str = "none",
    ):
        config = self.make_config(info, GraphTransformerConfig.from_arguments(locals()))
        super().__init__(info, config)
        self.edge_stream = config.edge_stream
        self.make_edge_encoder(shared=True)
        self.lap_pe = LaplacianEncoding(config.pe_dim, config.hidden, "GraphTransformer") if config.pe == "lap" else None
        self.layers = nn.ModuleList(
            GraphTransformerLayer(self.make_attention(), config.hidden, norm=config.norm, residual=config.residual,
                                  dropout=config.dropout, edge_stream=config.edge_stream)
            for _ in range(config.num_layers)
        )
        self.fuse_edge_projections()

    @property
    def positional_encoding(self) -> Optional[nn.Module]:
        return self.lap_pe

    def block_refusal(self) -> Optional[str]:
        if self.edge_stream:
            return "edge_stream=True carries edge states from one layer's edges to the next's"
        return super().block_refusal()

    def embed(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Input node and edge embeddings ([N, hidden], [E, hidden]), positional encoding included."""
        return self.embed_nodes(data), self.edge_input.shared(data, None)

    def forward(self, data, *, node_noise: Optional[torch.Tensor] = None, edge_noise: Optional[torch.Tensor] = None):
        """Predictions; node_noise / edge_noise are added to the input embeddings (for attacks)."""
        h = self.add_noise(self.embed_nodes(data), node_noise, "node_noise")
        e = self.edge_input.shared(data, edge_noise)
        blocks = self.layer_blocks(data)
        if blocks is not None:  # layer l over block l; the same edge embedding's rows for each (no edge stream)
            for layer, (block, rows, num_dst) in zip(self.layers, blocks):
                h = self.run_block_layer(layer, rows, num_dst, h, e[rows], block)
            return self.predict(h, data)
        graph = Graph(data.edge_index, num_nodes=h.shape[0])
        for layer in self.layers:
            h, e = self.run_layer(layer, h, e, graph)
        return self.predict(h, data)
