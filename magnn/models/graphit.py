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
(``edge_features="proteins"``) one shared Linear(8, hidden) re-embeds the raw
8-dim edge features for every layer (``layer_edge_encoders=False``, the MA
paper's code and the `paper` preset), or each layer has its own
Linear(8, hidden) (``layer_edge_encoders=True``, the class default there). ``node_input`` ("species", the
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
from .base import GraphModel
from .block import ResidualStream
from .compat import gnn_mas_node_out
from .config import DEFAULT_CLAMP, GraphiTConfig
from .encoders import EdgeEncoder
from .inputs import require
from .positional import LaplacianEncoding

__all__ = ["GraphiT", "GraphiTLayer", "KernelSupport", "DEFAULT_CLAMP"]


def attend(attention, h: torch.Tensor, graph: Graph, e: torch.Tensor, **inputs):
    """(node_out, None): the attention layer's formula, without writing edge_out."""
    return attention(h, graph, e, need_edge_out=False, **inputs)


class GraphiTLayer(nn.Module):
    """One layer: attention over the kernel's support (or the real edges), then the node stream.

    forward(h [N, hidden], e [S, hidden], graph, bias [S] or None, edge_types) -> h'.
    paper_code: node_out as the MA paper's published code computes it (`compat.gnn_mas_node_out`).
    edge_encoder: this layer's own EdgeEncoder of the raw edge features (per-layer edge input), or None.
    """

    def __init__(self, attention, hidden: int, *, norm, residual: bool, dropout: float, edge_encoder=None,
                 paper_code: bool = False):
        super().__init__()
        self.attention = attention
        self.node = ResidualStream(hidden, norm=norm, residual=residual, dropout=dropout)
        self.edge_encoder = edge_encoder
        self.node_attention = gnn_mas_node_out if paper_code else attend

    def forward(self, h: torch.Tensor, e: torch.Tensor, graph: Graph, bias: Optional[torch.Tensor],
                edge_types: Optional[torch.Tensor] = None):
        node_out, _ = self.node_attention(self.attention, h, graph, e, bias=bias, edge_types=edge_types)
        return self.node(h, node_out)


class KernelSupport(nn.Embedding):
    """The random-walk kernel's support (pe="rw"): the real edges, then the pairs within p hops
    that are not edges, with a learned embedding for those (row 0: self pair, row 1: other pair).

    `support(data, num_nodes)` -> (Graph over the support, log-kernel bias [S] float32,
    non-edge embeddings [S - E, hidden]), read from the `RandomWalkKernel` cache.
    """

    def __init__(self, hidden: int):
        super().__init__(2, hidden)

    def support(self, data, num_nodes: int):
        why = "GraphiT(pe='rw') attends over the random-walk kernel's support"
        extra_index = require(data, "kernel_extra_index", why)
        log_edge = require(data, "kernel_log_edge", why)
        log_extra = require(data, "kernel_log_extra", why)
        if log_edge.shape[0] != data.edge_index.shape[1]:
            raise ValueError(
                f"data.kernel_log_edge has {log_edge.shape[0]} entries for {data.edge_index.shape[1]} edges; "
                "recompute the kernel after changing the edges"
            )
        index = torch.cat([data.edge_index, extra_index], dim=1)
        bias = torch.cat([log_edge, log_extra]).float()
        kind = (extra_index[0] != extra_index[1]).long()
        return Graph(index, num_nodes=num_nodes), bias, self(kind)


class GraphiT(GraphModel):
    """Sparse GraphiT-GT. Arguments: `GraphModel`'s common ones (pe: None, "rw" or "lap";
    clamp: also "auto"), plus (see the module docstring):

      kernel_p, kernel_gamma: the random-walk kernel's p and gamma (used by
        `pre_transforms()` / `transforms_for`; the model reads the cached kernel).
      layer_edge_encoders: each layer re-embeds the raw edge features with its own
        Linear (None: only for edge_features="proteins"; False with proteins inputs is the
        MA paper's one shared Linear, the `paper` preset).
      ebt_compat: None (the formula) or "gnn-mas": the paper's published code, in which the
        bias weight overwrites every real edge's attention weight (magnn.models.compat).

    Parts: ``node_encoder``, ``lap_pe`` (`LaplacianEncoding` or None), ``edge_encoder``
    (shared, or None with per-layer encoders) and the `EdgeInput` ``edge_input``,
    ``non_edge`` (`KernelSupport` with pe="rw", else None), ``layers`` (`GraphiTLayer`), ``head``.
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
        mitigation: str = "none",
        ebt_compat: Optional[str] = None,
    ):
        config = self.make_config(info, GraphiTConfig.from_arguments(locals()))
        super().__init__(info, config)
        self.kernel_p, self.kernel_gamma = config.kernel_p, config.kernel_gamma
        self.layer_edge_encoders, self.ebt_compat = config.layer_edge_encoders, config.ebt_compat
        self.make_edge_encoder(shared=not config.layer_edge_encoders)
        self.lap_pe = LaplacianEncoding(config.pe_dim, config.hidden, "GraphiT") if config.pe == "lap" else None
        self.non_edge = KernelSupport(config.hidden) if config.pe == "rw" else None
        paper_code = config.paper_code(None)  # GraphiT: only with EBT
        self.layers = nn.ModuleList(
            GraphiTLayer(
                self.make_attention(), config.hidden, norm=config.norm, residual=config.residual,
                dropout=config.dropout, paper_code=paper_code,
                edge_encoder=EdgeEncoder(info, config.hidden) if config.layer_edge_encoders else None,
            )
            for _ in range(config.num_layers)
        )
        self.fuse_edge_projections()

    @property
    def positional_encoding(self) -> Optional[nn.Module]:
        return self.lap_pe

    def block_refusal(self) -> Optional[str]:
        if self.non_edge is not None:
            return "pe='rw' attends over the random-walk kernel's support of the whole graph"
        return super().block_refusal()

    def attention_support(self, data, num_nodes: int):
        """(Graph, bias or None, extra-row embeddings or None) the layers attend over."""
        if self.non_edge is None:
            return Graph(data.edge_index, num_nodes=num_nodes), None, None
        return self.non_edge.support(data, num_nodes)

    def forward(self, data, *, node_noise: Optional[torch.Tensor] = None, edge_noise: Optional[torch.Tensor] = None):
        """Predictions; node_noise / edge_noise are added to the input embeddings (for attacks)."""
        h = self.add_noise(self.embed_nodes(data), node_noise, "node_noise")
        blocks = self.layer_blocks(data)
        graph, bias, extra_embedding = self.attention_support(data, h.shape[0]) if blocks is None else (None, None, None)
        shared_edges = self.edge_input.shared(data, edge_noise)
        for index, layer in enumerate(self.layers):
            e = self.edge_input.for_layer(layer, data, shared_edges, edge_noise)
            if blocks is not None:  # layer `index` over its own block (magnn.data.sampling.block_batch)
                graph, rows, num_dst = blocks[index]
                h = self.run_block_layer(layer, rows, num_dst, h, e[rows], graph, None, None)
                continue
            num_real = e.shape[0]
            if extra_embedding is not None:
                e = torch.cat([e, extra_embedding.to(e.dtype)])
            edge_types = self.support_edge_types(layer.attention, num_real, e.shape[0] - num_real)
            h = self.run_layer(layer, h, e, graph, bias, edge_types)
        return self.predict(h, data)
