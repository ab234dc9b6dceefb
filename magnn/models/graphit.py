"""GraphiT (Mialon et al., 2021) in its sparse "GraphiT-GT" form, on `FusedEdgeAttention`.

Attention is Dwivedi & Bresson's gt score; GraphiT multiplies each attention
weight by the random-walk kernel ``kappa_ij = [(I - gamma L)^p]_ij``, which
is the structural bias ``s_ij = log kappa_ij`` on the logit, passed to the
layer as ``bias=``. Attention then runs over the kernel's support: the real
edges plus the pairs within p hops that are not edges (self pairs included).
Those extra pairs get a learned "non-edge" edge embedding (one vector for
self pairs, one for the other pairs). Kernel values come from
`positional.RandomWalkKernel` (``pe="rw"``); on large graphs it uses p = 1,
i.e. the edges plus self loops.

With ``pe=None`` (the MA paper's protocol: sparse graphs, SPEC §10) the
kernel weighting is inactive and attention runs over the real edges only.
``pe="lap"`` adds Laplacian eigenvectors to the node embedding instead, as
in GraphTransformer.

The statistics tap holds the real edges, then the extra support pairs; the
call's per-edge types (`edge_attention(edge_types=...)`) are the collectors'
types of the real edges followed by `NON_EDGE_TYPE` (-1) for the extra pairs.

The edge embedding is not updated between layers (no edge stream): every
layer reuses the input edge embedding. On ogbn-proteins-like inputs
(``edge_features="proteins"``) that is the MA paper's code: one shared
Linear(8, hidden) re-embeds the raw 8-dim edge features for every layer
(``layer_edge_encoders=False``, the `paper` preset). magnn's other variant,
each layer with its own Linear(8, hidden) (``layer_edge_encoders=True``, the
class default there), is not the paper's. ``node_input`` ("species", the
paper's, or "species+edge_mean") and ``fused_edge_projection`` are as in
GraphTransformer.

Clamp: ``clamp="auto"`` uses 5 (the GT code's clamp) without kernel and no
clamp with it. The kernel clips the logit *after* adding the bias (SPEC §3),
so a clamp would flatten log-kernel values below -5 and undo GraphiT's
"weight times kappa"; the running-max softmax needs no clamp to stay finite.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..data.info import DatasetInfo
from ..core.graph import Graph
from .base import GraphModel, graph_batch
from .block import ResidualStream
from .compat import check_ebt_compat, gnn_mas_active, gnn_mas_node_out
from .encoders import EdgeEncoder, fuse_edge_projections

__all__ = ["GraphiT", "GraphiTLayer"]

DEFAULT_CLAMP = 5.0


class GraphiTLayer(nn.Module):
    gnn_mas = False  # ebt_compat="gnn-mas": node_out as the paper's code computes it (models/compat.py)

    def __init__(self, attention, hidden: int, *, norm, residual: bool, dropout: float, edge_encoder=None):
        super().__init__()
        self.attention = attention
        self.node = ResidualStream(hidden, norm=norm, residual=residual, dropout=dropout)
        self.edge_encoder = edge_encoder  # per-layer re-embedding of raw edge features, or None

    def forward(self, h: torch.Tensor, e: torch.Tensor, graph: Graph, bias: Optional[torch.Tensor],
                edge_types: Optional[torch.Tensor] = None):
        if self.gnn_mas:
            node_out, _ = gnn_mas_node_out(self.attention, h, graph, e, bias=bias, edge_types=edge_types)
        else:
            node_out, _ = self.attention(h, graph, e, bias=bias, edge_types=edge_types, need_edge_out=False)
        return self.node(h, node_out)


class GraphiT(GraphModel):
    """Sparse GraphiT-GT. Extra arguments (see the module docstring):

      kernel_p, kernel_gamma: the random-walk kernel's p and gamma (used by
        `pre_transforms()` / `transforms_for`; the model reads the cached kernel).
      layer_edge_encoders: each layer re-embeds the raw edge features with its own
        Linear (None: only for edge_features="proteins"; False with proteins inputs is the
        MA paper's one shared Linear, the `paper` preset).
      node_input: "species" (the paper's ogbn-proteins node input) or "species+edge_mean".
      fused_edge_projection: fold the shared edge Linear into each layer's edge projection
        (same function, no [E, hidden] shared embedding in memory).
      ebt_compat: None (the formula) or "gnn-mas": the paper's published code, in which the
        bias weight overwrites every real edge's attention weight (magnn.models.compat).
    """

    model_name = "graphit"
    PE_CHOICES = (None, "rw", "lap")
    DEFAULT_PE = "rw"

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
        kernel_p: int = 16,
        kernel_gamma: float = 0.25,
        readout: Optional[str] = "sum",
        clamp: Union[float, None, str] = "auto",
        layer_edge_encoders: Optional[bool] = None,
        backend: str = "auto",
        checkpoint: bool = False,
        node_input: str = "species+edge_mean",
        fused_edge_projection: bool = False,
        ebt_compat: Optional[str] = None,
    ):
        num_layers, pe = self.resolve_defaults(info, num_layers, pe)
        if isinstance(clamp, str) and clamp != "auto":
            raise ValueError(f"clamp must be 'auto', None (no clamp) or a positive number, got {clamp!r}")
        if isinstance(clamp, str):
            clamp = None if pe == "rw" else DEFAULT_CLAMP
        super().__init__(
            info, num_layers=num_layers, hidden=hidden, heads=heads, norm=norm, residual=residual,
            dropout=dropout, ebt=ebt, ebt_init=ebt_init, pe=pe, pe_dim=pe_dim, readout=readout,
            clamp=clamp, backend=backend, checkpoint=checkpoint,
        )
        self.kernel_p, self.kernel_gamma = kernel_p, kernel_gamma
        self.use_node_input(node_input)
        layer_edge_encoders = self.use_edge_encoders(layer_edge_encoders, fused_edge_projection)
        self.lap_pe = nn.Linear(pe_dim, hidden) if pe == "lap" else None
        # row 0: self pair, row 1: another pair within p hops that is not an edge
        self.non_edge = nn.Embedding(2, hidden) if pe == "rw" else None
        self.layers = nn.ModuleList(
            GraphiTLayer(
                self.make_attention(), hidden, norm=norm, residual=residual, dropout=dropout,
                edge_encoder=EdgeEncoder(info, hidden) if layer_edge_encoders else None,
            )
            for _ in range(num_layers)
        )
        if fused_edge_projection:
            if pe == "rw":
                raise ValueError("fused_edge_projection=True attends over the real edges only: use pe=None")
            fuse_edge_projections([layer.attention for layer in self.layers], self.edge_encoder)
        check_ebt_compat(ebt_compat, ebt)
        self.ebt_compat = ebt_compat
        if gnn_mas_active(ebt_compat, ebt, None):  # GraphiT: only with EBT
            for layer in self.layers:
                layer.gnn_mas = True

    def transform_config(self) -> dict:
        return {"pe": self.pe, "pe_dim": self.pe_dim, "kernel_p": self.kernel_p, "kernel_gamma": self.kernel_gamma}

    def embed_nodes(self, data) -> torch.Tensor:
        h = self.node_encoder(data)
        if self.lap_pe is not None:
            batch, num_graphs = graph_batch(data)
            vectors = self.require(data, "lap_pe", "GraphiT(pe='lap') adds Laplacian eigenvectors")
            h = h + self.lap_pe(self.random_signs(vectors.to(h.dtype), batch, num_graphs))
        return h

    def _kernel_support(self, data, num_nodes: int):
        """(attention edge_index, log-kernel bias, non-edge embeddings) over the kernel's support."""
        why = "GraphiT(pe='rw') attends over the random-walk kernel's support"
        extra_index = self.require(data, "kernel_extra_index", why)
        log_edge = self.require(data, "kernel_log_edge", why)
        log_extra = self.require(data, "kernel_log_extra", why)
        if log_edge.shape[0] != data.edge_index.shape[1]:
            raise ValueError(
                f"data.kernel_log_edge has {log_edge.shape[0]} entries for {data.edge_index.shape[1]} edges; "
                "recompute the kernel after changing the edges"
            )
        index = torch.cat([data.edge_index, extra_index], dim=1)
        bias = torch.cat([log_edge, log_extra]).float()
        kind = (extra_index[0] != extra_index[1]).long()
        return Graph(index, num_nodes=num_nodes), bias, self.non_edge(kind)

    def forward(self, data, *, node_noise: Optional[torch.Tensor] = None, edge_noise: Optional[torch.Tensor] = None):
        """Predictions; node_noise / edge_noise are added to the input embeddings (for attacks)."""
        h = self.add_noise(self.embed_nodes(data), node_noise, "node_noise")
        num_nodes = h.shape[0]
        if self.pe == "rw":
            graph, bias, extra_embedding = self._kernel_support(data, num_nodes)
        else:
            graph, bias, extra_embedding = Graph(data.edge_index, num_nodes=num_nodes), None, None
        shared_edges = self.shared_edge_input(data, edge_noise)
        for layer in self.layers:
            e = self.layer_edge_input(layer, data, shared_edges, edge_noise)
            num_real = e.shape[0]
            if extra_embedding is not None:
                e = torch.cat([e, extra_embedding.to(e.dtype)])
            edge_types = self.support_edge_types(layer.attention, num_real, e.shape[0] - num_real)
            h = self.run_layer(layer, h, e, graph, bias, edge_types)
        return self.predict(h, data)
