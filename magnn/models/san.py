"""SAN (Kreuzer et al., 2021): real and fake edges under one softmax, plus learned LPE.

Attention (`SANAttention`). Real edges j -> i score with (Q, K, E), fake edges
(non-adjacent pairs of the same graph) with (Q2, K2, E2) and one learned
fake-edge embedding; V is shared. Both use the gt score
``w_ij = q_i * k_j * e_ij / sqrt(D)`` and the clamped logit
``l_ij = clip(sum_d w_ij, -5, 5)``; the weights are ``exp(l)/(1+gamma)`` for
real and ``gamma exp(l)/(1+gamma)`` for fake edges, divided by one shared
denominator. The common factor 1/(1+gamma) cancels in that ratio, so this is
a softmax over the union of real and fake edges with a structural term of
0 on real and s_i = log(gamma) on fake edges, added after the clamp as in
SAN's code. It runs as two fused `edge_attention` calls, each returning its
softmax's log-sum-exp: real edges (Q, K, V, E) and fake edges (Q2, K2, V and
E2 broadcast to every fake edge without a copy). s_i is the same for every
fake edge into node i (sampled mode adds a per-node log(n_fake / kept)), so
it factors out of the fake softmax, and `magnn.functional.merge_attention`
combines the two outputs exactly:

    node_out_i = (exp(lse_r,i - m) out_r,i + exp(lse_f,i + s_i - m) out_f,i)
                 / (exp(lse_r,i - m) + exp(lse_f,i + s_i - m)),   m the larger exponent

(0 for a node attending to nothing), which is the single softmax over the
union. Only the node stream is updated. An optional structural ``bias=``
applies to the real edges' logits (before the clamp, as in
`FusedEdgeAttention`).

EBT (SPEC §3) in the union: each edge set applies it with its own query.
ebt="edge" adds ``b_e,i = (q_i . k') / sqrt(D) * e'`` to every real edge's
score and ``(q2_i . k') / sqrt(D) * e'`` to every fake edge's (the fake
edges' own query q2), and
``v'`` to every message; ebt="slot" gives every node one slot (logit
``q_i . (k' * e') / sqrt(D)``, clamped, structural term 0 like a real edge,
message ``v'``), attended once, in the real-edge call, with no edge_out row.
Without fake edges (``full_graph=False``, the MA paper's protocol, or graphs
that are complete) the layer is exactly `FusedEdgeAttention` over the real
edges.

Statistics reach the collectors through the two calls' ``stats=``: the
edge tap (edge_out) holds the real edges in input order, then the fake
edges (two operator calls, so a collector counts two `calls` per layer
forward); the fake call counts its edges as `NON_EDGE_TYPE` (-1) for the
collectors that count by edge type. The node tap reduces the merged
node_out (one call, in `merge_attention`).

Fake edges, built once per forward and shared by all layers:

* exact ("full"): for a batch of small graphs, every ordered pair (j, i) of
  distinct nodes of the same graph that is not adjacent (in either
  direction), generated per graph without Python loops; memory is
  sum_g n_g^2, so it is used when every graph has at most ``max_fake_nodes``
  nodes (``fake_edges="auto"``).
* sampled (large graphs): each node draws ``fake_samples`` sources uniformly
  from its own graph, re-sampled on every forward; draws that hit the node
  itself or a neighbour are dropped. The kept draws are uniform over the
  node's n_fake non-neighbours, so giving each kept draw the extra log-weight
  log(n_fake / kept) makes the fake part of the numerator and of the
  denominator unbiased estimates of the exact sums. Memory is
  O((E + N * fake_samples) * H * D), never N^2.

Learned Laplacian positional encodings (``pe="lap"``, data from
`positional.SANEigenPE`): per node, each of the k eigenpairs
(eigenvector entry, eigenvalue) is a token; Linear(2, lpe_dim), a small
transformer encoder over the k tokens (padding masked), a sum over the
tokens and Linear(lpe_dim, hidden), added to the node embedding.
Eigenvector signs are flipped at random per graph while training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..core.graph import Graph
from ..core.mitigation import apply_sink_and_gate
from ..data.info import DatasetInfo
from ..functional import edge_attention, merge_attention
from ..layers import FusedEdgeAttention, projection, reset_projection
from ..stats import AttentionStats, EdgeStats, add_to_all, recomputing, reduce_rows
from ..stats.attention import union_rows
from .base import NON_EDGE_TYPE, GraphModel
from .block import ResidualStream
from .compat import gnn_mas_node_out, gnn_mas_san_proteins
from .config import FAKE_EDGE_MODES, SANConfig  # noqa: F401  (FAKE_EDGE_MODES importable here)
from .encoders import EdgeEncoder
from .positional import LearnedLaplacianPE, SANEigenPE

__all__ = ["SAN", "SANAttention", "SANLayer", "FakeEdges", "LearnedLaplacianPE", "full_fake_edges", "sampled_fake_edges"]

@dataclass(eq=False)
class FakeEdges:
    """Fake edges j -> i (``index[0] = src``) with their structural log-weights [F] (float64).

    The log-weight is a property of the destination node: every fake edge into node i
    carries the same s_i (what `node_log_weight` returns and SANAttention relies on).
    """

    index: torch.Tensor
    log_weight: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_edges(self) -> int:
        return self.index.shape[1]

    def graph(self, num_nodes: int) -> Graph:
        """The fake edges as a Graph over the layer's `num_nodes` nodes (built once, shared by the layers)."""
        key = ("graph", num_nodes)
        if key not in self._cache:
            self._cache[key] = Graph(self.index, num_nodes, validate=False)
        return self._cache[key]

    def node_log_weight(self, num_nodes: int) -> torch.Tensor:
        """[N] float64: s_i of node i's fake edges (0 for a node without any).

        ValueError when the fake edges into one node carry different log-weights: the
        union softmax needs s_i constant per node to merge the two calls exactly.
        """
        key = ("node_log_weight", num_nodes)
        if key not in self._cache:
            dst, weight = self.index[1], self.log_weight.to(torch.float64)
            high = weight.new_full((num_nodes,), -math.inf).scatter_reduce(0, dst, weight, "amax")
            low = weight.new_full((num_nodes,), math.inf).scatter_reduce(0, dst, weight, "amin")
            has_fake = torch.bincount(dst, minlength=num_nodes) > 0
            if not torch.equal(high[has_fake], low[has_fake]):
                raise ValueError("FakeEdges.log_weight must be the same for every fake edge into a node")
            self._cache[key] = torch.where(has_fake, high, torch.zeros_like(high))
        return self._cache[key]


def _graph_layout(batch: Optional[torch.Tensor], num_nodes: int, device):
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    sizes = torch.bincount(batch, minlength=int(batch.max()) + 1 if num_nodes else 0)
    starts = torch.cumsum(sizes, 0) - sizes
    return batch, sizes, starts


def _adjacent_keys(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sorted unique keys dst * N + src of the symmetric adjacency, self loops excluded."""
    src, dst = edge_index
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return torch.unique(torch.cat([dst * num_nodes + src, src * num_nodes + dst]))


def full_fake_edges(edge_index: torch.Tensor, batch: Optional[torch.Tensor], num_nodes: int, gamma: float) -> FakeEdges:
    """Every non-adjacent ordered pair of distinct nodes of the same graph (exact complement)."""
    device = edge_index.device
    batch, sizes, starts = _graph_layout(batch, num_nodes, device)
    per_node = sizes[batch]  # each node i pairs with every node of its graph
    dst = torch.repeat_interleave(torch.arange(num_nodes, device=device), per_node)
    first_pair = torch.cumsum(per_node, 0) - per_node
    offset = torch.arange(dst.shape[0], device=device) - torch.repeat_interleave(first_pair, per_node)
    src = starts[batch[dst]] + offset
    keys = dst * num_nodes + src
    keep = (src != dst) & ~torch.isin(keys, _adjacent_keys(edge_index, num_nodes))
    index = torch.stack([src[keep], dst[keep]])
    log_weight = torch.full((index.shape[1],), math.log(gamma), dtype=torch.float64, device=device)
    return FakeEdges(index, log_weight)


def sampled_fake_edges(
    edge_index: torch.Tensor, batch: Optional[torch.Tensor], num_nodes: int, gamma: float, samples: int
) -> FakeEdges:
    """`samples` uniform non-neighbour draws per node with importance log-weights (module docstring)."""
    device = edge_index.device
    batch, sizes, starts = _graph_layout(batch, num_nodes, device)
    adjacent = _adjacent_keys(edge_index, num_nodes)
    neighbours = torch.bincount(adjacent // num_nodes, minlength=num_nodes)
    non_neighbours = sizes[batch] - 1 - neighbours
    dst = torch.arange(num_nodes, device=device).repeat_interleave(samples)
    graph_size = sizes[batch[dst]]
    draw = (torch.rand(dst.shape[0], device=device) * graph_size).long()
    src = starts[batch[dst]] + torch.minimum(draw, graph_size - 1)
    keep = (src != dst) & ~torch.isin(dst * num_nodes + src, adjacent)
    src, dst = src[keep], dst[keep]
    kept = torch.bincount(dst, minlength=num_nodes)
    log_weight = math.log(gamma) + torch.log(non_neighbours[dst].double() / kept[dst].double())
    return FakeEdges(torch.stack([src, dst]), log_weight)


class SANAttention(FusedEdgeAttention):
    """`FusedEdgeAttention` with SAN's second (fake-edge) projections Q2, K2, E2.

    ``forward(x, edge_index, edge_attr, fake=None, fake_attr=None)``: without
    fake edges it is the parent layer; with them it runs the shared-denominator
    union attention described in the module docstring (fake_attr [1, edge_dim]:
    the learned fake-edge embedding) as two `edge_attention` calls merged by
    their log-sum-exp.
    """

    def __init__(
        self, in_channels: int, heads: int, head_dim: int, edge_dim: int, *,
        ebt: Optional[str] = None, clamp: Optional[float] = 5.0, backend: str = "auto", ebt_init: str = "normal_0.02",
        bias: bool = False, sink: bool = False, gate: bool = False,
    ):
        super().__init__(
            in_channels, heads, head_dim, edge_dim, mode="gt", ebt=ebt, clamp=clamp, backend=backend, ebt_init=ebt_init,
            bias=bias, sink=sink, gate=gate,
        )
        width, use_bias = heads * head_dim, bias or ebt is not None
        self.lin_q2 = projection(in_channels, width, use_bias)
        self.lin_k2 = projection(in_channels, width, use_bias)
        self.lin_e2 = projection(edge_dim, width, use_bias)
        self._reset_fake_projections()

    def reset_parameters(self, init: str = "default") -> None:
        """`FusedEdgeAttention.reset_parameters`, then the fake-edge projections Q2, K2, E2."""
        super().reset_parameters(init)
        self._reset_fake_projections(init)

    def _reset_fake_projections(self, init: str = "default") -> None:
        for linear in (self.lin_q2, self.lin_k2, self.lin_e2):
            reset_projection(linear, init)

    def forward(
        self,
        x: torch.Tensor,
        edge_index,
        edge_attr: torch.Tensor,
        *,
        fake: Optional[FakeEdges] = None,
        fake_attr: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        stats: Union[EdgeStats, Sequence[EdgeStats], None] = None,
        edge_types=None,
        need_edge_out: bool = True,
    ):
        if fake is None or fake.num_edges == 0:
            return super().forward(x, edge_index, edge_attr, bias=bias, stats=stats, edge_types=edge_types,
                                   need_edge_out=need_edge_out)
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}], got {list(x.shape)}")
        if edge_attr.dim() != 2 or edge_attr.shape[1] != self.edge_dim:
            raise ValueError(f"edge_attr must be [E, {self.edge_dim}], got {list(edge_attr.shape)}")
        if fake_attr is None or fake_attr.shape != (1, self.edge_dim):
            raise ValueError(f"fake_attr must be the [1, {self.edge_dim}] fake-edge embedding")
        graph = edge_index if isinstance(edge_index, Graph) else Graph(edge_index, num_nodes=x.shape[0])
        return self._union_forward(x, graph, edge_attr, fake, fake_attr, bias, stats, edge_types,
                                   need_edge_out or self.output_observed())

    def _union_forward(self, x, graph: Graph, edge_attr, fake: FakeEdges, fake_attr, bias, stats, edge_types,
                       need_edge_out: bool = True):
        num_nodes, heads, head_dim = x.shape[0], self.heads, self.head_dim
        shape = (num_nodes, heads, head_dim)
        q, k, v = (lin(x).view(shape) for lin in (self.lin_q, self.lin_k, self.lin_v))
        q2, k2 = self.lin_q2(x).view(shape), self.lin_k2(x).view(shape)
        e, projection = self.edge_input(edge_attr, q.dtype)  # raw features when projected in the kernels
        # the one learned fake-edge embedding, broadcast to every fake edge (a view, no copy)
        e2 = self.lin_e2(fake_attr).view(1, heads, head_dim).expand(fake.num_edges, heads, head_dim)
        ebt_params = None if self.ebt is None else (self.ebt_k, self.ebt_e, self.ebt_v)
        fake_ebt = "edge" if self.ebt == "edge" else None  # the slot is attended once, with the real edges
        # edge rows go through each call's stats=; the node tap sees the merged node_out
        targets = self.stats_targets(stats)
        edge_targets = tuple(t for t in targets if t.tap == "edge") or None
        node_targets = tuple(t for t in targets if t.tap == "node") or None
        # sink mass and entropy of the union: each call's own rows (a private collector), joined below
        attention_targets = tuple(t for t in targets if isinstance(t, AttentionStats))
        part_stats = [AttentionStats(keep_rows=True) for _ in range(2)] if attention_targets else [None, None]
        common = dict(mode="gt", clamp=self.clamp, return_lse=True, need_edge_out=need_edge_out, backend=self.backend)
        # the sink, like the slot, is attended once (real-edge call); the gate scales the merged node_out
        mitigation = self.mitigation_inputs(x)
        real_out, real_edge_out, real_lse = edge_attention(
            q, k, v, e, graph, bias=bias, ebt=self.ebt, ebt_params=ebt_params,
            stats=_with(edge_targets, part_stats[0]), edge_types=edge_types, sink=mitigation.get("sink"), **common,
            **projection,
        )
        fake_out, fake_edge_out, fake_lse = edge_attention(
            q2, k2, v, e2, fake.graph(num_nodes), ebt=fake_ebt, ebt_params=ebt_params if fake_ebt else None,
            stats=_with(edge_targets, part_stats[1]), edge_types=NON_EDGE_TYPE, **common,
        )
        node_out, merged_lse = merge_attention(
            (real_out, fake_out), (real_lse, fake_lse), (None, fake.node_log_weight(num_nodes)),
            stats=None if "gate" in mitigation else node_targets,
        )
        if "gate" in mitigation:
            node_out = gate_node_out(node_out, merged_lse, mitigation["gate"], node_targets)
        if attention_targets and not recomputing():
            rows = union_rows([part.rows() for part in part_stats], (real_lse, fake_lse),
                              (None, fake.node_log_weight(num_nodes)), merged_lse)
            for target in attention_targets:
                target.add(*rows)
        width = heads * head_dim
        if not need_edge_out:  # neither edge_out is written, and nothing is concatenated
            return node_out.reshape(num_nodes, width), None
        edge_out = torch.cat([real_edge_out, fake_edge_out])
        return node_out.reshape(num_nodes, width), edge_out.reshape(edge_out.shape[0], width)


def _with(targets, extra):
    """`targets` (a tuple or None) with one more collector (None: unchanged)."""
    if extra is None:
        return targets
    return (*(targets or ()), extra)


def gate_node_out(node_out, lse, gate, node_targets):
    """The merged node_out gated (SPEC §3, `magnn.core.mitigation`); node-tap collectors get the gated one."""
    node_out, _, _ = apply_sink_and_gate(node_out, lse, None, gate, None)
    if node_targets:
        num_nodes, heads, head_dim = node_out.shape
        raw = reduce_rows(node_out.detach().reshape(num_nodes, heads * head_dim),
                          max(t.mantissa_bits for t in node_targets))
        add_to_all(node_targets, {"node": raw}, heads=heads)
    return node_out


def attend_union(attention: "SANAttention", h, graph: Graph, e, *, fake: Optional[FakeEdges], fake_attr):
    """(node_out, None): SAN's union attention over the real and the fake edges."""
    return attention(h, graph, e, fake=fake, fake_attr=fake_attr, need_edge_out=False)


def attend_paper_code(attention: "SANAttention", h, graph: Graph, e, *, fake: Optional[FakeEdges], fake_attr):
    """(node_out, edge_out) as the MA paper's published code computes it (`compat.gnn_mas_node_out`),
    which attends over the real edges only."""
    if fake is not None and fake.num_edges:
        raise ValueError("ebt_compat='gnn-mas' reproduces the paper's sparse protocol: use full_graph=False")
    return gnn_mas_node_out(attention, h, graph, e)


class SANLayer(nn.Module):
    """One layer: union attention (`SANAttention`), then the node stream.

    forward(h [N, hidden], e [E, hidden], graph, fake, fake_attr [1, hidden]) -> h'.
    paper_code: node_out as the MA paper's published code computes it (`attend_paper_code`).
    edge_encoder: this layer's own EdgeEncoder of the raw edge features (per-layer edge input), or None.
    """

    def __init__(self, attention: SANAttention, hidden: int, *, norm, residual: bool, dropout: float, edge_encoder=None,
                 paper_code: bool = False):
        super().__init__()
        self.attention = attention
        self.node = ResidualStream(hidden, norm=norm, residual=residual, dropout=dropout)
        self.edge_encoder = edge_encoder
        self.node_attention = attend_paper_code if paper_code else attend_union

    def forward(self, h, e, graph: Graph, fake: Optional[FakeEdges], fake_attr: torch.Tensor):
        node_out, _ = self.node_attention(self.attention, h, graph, e, fake=fake, fake_attr=fake_attr)
        return self.node(h, node_out)


class SAN(GraphModel):
    """Spectral Attention Network. Arguments: `GraphModel`'s common ones (pe: None or "lap"),
    plus (see the module docstring):

      full_graph: attend over fake edges too (False: real edges only, the MA
        paper's protocol, where gamma is inactive); gamma: fake-edge weight.
      fake_edges: "auto" (exact complement while every graph has at most
        max_fake_nodes nodes, else sampled), "full" or "sampled";
        fake_samples: draws per node in sampled mode.
      pe="lap": learned LPE over pe_dim eigenpairs (lpe_dim, lpe_layers, lpe_heads).
      layer_edge_encoders: each layer re-embeds the raw edge features with its own
        Linear (None: only for edge_features="proteins"; False with proteins inputs is the
        MA paper's one shared Linear, the `paper` preset).
      ebt_compat: None (the formula) or "gnn-mas": the paper's published code, in which the
        bias weight overwrites every real edge's attention weight (magnn.models.compat).

    Parts: ``node_encoder``, ``lpe`` (`LearnedLaplacianPE` or None), ``edge_encoder``
    (shared, or None with per-layer encoders) and the `EdgeInput` ``edge_input``,
    ``fake_edge`` (the fake-edge embedding with full_graph, else None), ``layers``
    (`SANLayer`), ``head``.
    """

    model_name = "san"
    LAP_PE = SANEigenPE
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
        pe_dim: int = 10,
        lpe_dim: int = 16,
        lpe_layers: int = 2,
        lpe_heads: int = 4,
        readout: Optional[str] = "sum",
        clamp: Optional[float] = 5.0,
        full_graph: bool = True,
        gamma: float = 0.1,
        fake_edges: str = "auto",
        max_fake_nodes: int = 1000,
        fake_samples: int = 16,
        layer_edge_encoders: Optional[bool] = None,
        backend: str = "auto",
        checkpoint: bool = False,
        node_input: str = "species+edge_mean",
        fused_edge_projection: bool = False,
        mitigation: str = "none",
        ebt_compat: Optional[str] = None,
    ):
        config = self.make_config(info, SANConfig.from_arguments(locals()))
        super().__init__(info, config)
        self.full_graph, self.gamma = config.full_graph, config.gamma
        self.fake_edges, self.max_fake_nodes, self.fake_samples = config.fake_edges, config.max_fake_nodes, config.fake_samples
        self.layer_edge_encoders, self.ebt_compat = config.layer_edge_encoders, config.ebt_compat
        self.make_edge_encoder(shared=not config.layer_edge_encoders)
        self.lpe = (LearnedLaplacianPE(config.pe_dim, config.hidden, config.lpe_dim, config.lpe_layers, config.lpe_heads)
                    if config.pe == "lap" else None)
        self.fake_edge = nn.Embedding(1, config.hidden) if config.full_graph else None
        self.layers = nn.ModuleList(self._make_layer(config) for _ in range(config.num_layers))
        self.fuse_edge_projections()

    def _make_layer(self, config) -> SANLayer:
        proteins_code = gnn_mas_san_proteins(config.ebt_compat, self.info.edge_features)
        ebt = None if proteins_code else config.ebt  # the paper's proteins layer never receives its EBT
        attention = SANAttention(config.hidden, config.heads, self.head_dim, config.hidden, ebt=ebt,
                                 clamp=config.clamp, backend=config.backend, ebt_init=config.ebt_init,
                                 bias=proteins_code and config.ebt is not None, **config.mitigation_layers())
        return SANLayer(
            attention, config.hidden, norm=config.norm, residual=config.residual, dropout=config.dropout,
            edge_encoder=EdgeEncoder(self.info, config.hidden) if config.layer_edge_encoders else None,
            paper_code=not proteins_code and config.paper_code(self.info.edge_features),  # EBT on molecules
        )

    @property
    def positional_encoding(self) -> Optional[nn.Module]:
        return self.lpe

    def block_refusal(self) -> Optional[str]:
        if self.full_graph and self.gamma != 0:
            return "full_graph=True attends over fake edges of the whole graph"
        return super().block_refusal()

    def build_fake_edges(self, data, num_nodes: int) -> Optional[FakeEdges]:
        """This forward's fake edges (None when full_graph is off or gamma is 0)."""
        if not self.full_graph or self.gamma == 0 or num_nodes == 0:
            return None
        batch = getattr(data, "batch", None)
        mode = self.fake_edges
        if mode == "auto":
            largest = num_nodes if batch is None else int(torch.bincount(batch).max())
            mode = "full" if largest <= self.max_fake_nodes else "sampled"
        if mode == "full":
            return full_fake_edges(data.edge_index, batch, num_nodes, self.gamma)
        return sampled_fake_edges(data.edge_index, batch, num_nodes, self.gamma, self.fake_samples)

    def forward(self, data, *, node_noise: Optional[torch.Tensor] = None, edge_noise: Optional[torch.Tensor] = None):
        """Predictions; node_noise / edge_noise are added to the input embeddings (for attacks)."""
        h = self.add_noise(self.embed_nodes(data), node_noise, "node_noise")
        num_nodes = h.shape[0]
        blocks = self.layer_blocks(data)
        graph = Graph(data.edge_index, num_nodes=num_nodes) if blocks is None else None
        fake = self.build_fake_edges(data, num_nodes) if blocks is None else None
        fake_attr = self.fake_edge.weight if self.fake_edge is not None else None
        shared_edges = self.edge_input.shared(data, edge_noise)
        for index, layer in enumerate(self.layers):
            e = self.edge_input.for_layer(layer, data, shared_edges, edge_noise)
            if blocks is not None:  # layer `index` over its own block (magnn.data.sampling.block_batch)
                block, rows, num_dst = blocks[index]
                h = self.run_block_layer(layer, rows, num_dst, h, e[rows], block, None, fake_attr)
                continue
            h = self.run_layer(layer, h, e, graph, fake, fake_attr)
        return self.predict(h, data)
