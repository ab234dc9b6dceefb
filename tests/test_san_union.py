"""SAN's real + fake union as two `edge_attention` calls merged by their log-sum-exp.

The oracle is the single-call union SANAttention ran before (kept here as
`_single_call_union`): one `edge_attention` over the real, fake (and, with
ebt="slot", virtual slot) edges, fed per-edge products q_i * k_j * e_ij with unit q
and k and a per-edge bias clip(l) + s - l. The one intended difference is ebt="edge"
on fake edges, whose bias b_e,i now uses the fake-edge query q2 (each edge set applies
the EBT with its own query); the oracle below does the same.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import require_backend
from magnn.core.graph import Graph
from magnn.functional import edge_attention
from magnn.models import NON_EDGE_TYPE
from magnn.models.san import (
    FakeEdges,
    SANAttention,
    full_fake_edges,
    sampled_fake_edges,
)
from magnn.stats import EdgeStats, reduce_rows

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]

EBTS = (None, "edge", "slot")


def _single_call_union(layer: SANAttention, x, graph: Graph, edge_attr, fake: FakeEdges, fake_attr, bias=None):
    """The union as one reference edge_attention call (SANAttention's former implementation)."""
    num_nodes, heads, head_dim = x.shape[0], layer.heads, layer.head_dim
    scale = 1.0 / math.sqrt(head_dim)
    shape = (num_nodes, heads, head_dim)
    q, k, v = (lin(x).view(shape) for lin in (layer.lin_q, layer.lin_k, layer.lin_v))
    q2, k2 = layer.lin_q2(x).view(shape), layer.lin_k2(x).view(shape)
    e = layer.lin_e(edge_attr).view(edge_attr.shape[0], heads, head_dim)
    e2 = layer.lin_e2(fake_attr).view(1, heads, head_dim)
    fake_src, fake_dst = fake.index
    product = torch.cat([q[graph.dst] * k[graph.src] * e, q2[fake_dst] * k2[fake_src] * e2])
    num_union = product.shape[0]
    structural = torch.cat([fake.log_weight.new_zeros(graph.num_edges), fake.log_weight])
    values = v
    if layer.ebt == "edge":  # w += beta_i e', beta from the edge set's own query (q real, q2 fake)
        beta = (q * layer.ebt_k).sum(-1, keepdim=True)
        beta2 = (q2 * layer.ebt_k).sum(-1, keepdim=True)
        product = product + torch.cat([beta[graph.dst], beta2[fake_dst]]) * layer.ebt_e
        values = v + layer.ebt_v
    slot = layer.ebt == "slot"
    parts = [graph.edge_index, fake.index]
    if slot:
        product = torch.cat([product, q * (layer.ebt_k * layer.ebt_e)])
        values = torch.cat([values, layer.ebt_v.unsqueeze(0).to(values.dtype)])
        structural = torch.cat([structural, structural.new_zeros(num_nodes)])
        nodes = torch.arange(num_nodes)
        parts.append(torch.stack([torch.full_like(nodes, num_nodes), nodes]))
    union = Graph(torch.cat(parts, 1), num_nodes + int(slot))
    raw = product.sum(-1, dtype=torch.float64 if product.dtype == torch.float64 else torch.float32) * scale
    pre_clamp = raw
    if bias is not None:  # a structural bias on the real edges enters before the clamp
        pre_clamp = raw + torch.cat([bias.to(raw.dtype), raw.new_zeros(raw.shape[0] - bias.shape[0], heads)])
    target = pre_clamp if layer.clamp is None else pre_clamp.clamp(-layer.clamp, layer.clamp)
    logit_bias = target + structural.to(raw.dtype).unsqueeze(-1) - raw
    ones = torch.ones_like(values)
    node_out, edge_out = edge_attention(ones, ones, values, product, union, bias=logit_bias, backend="torch")
    node_out, edge_out = node_out[:num_nodes], edge_out[:num_union]
    return node_out.reshape(num_nodes, -1), edge_out.reshape(num_union, -1)


# the Triton kernels take no float64: they run in float32
BACKEND_DTYPES = [pytest.param(name, torch.float32 if name == "triton" else torch.float64, id=name)
                  for name in ("torch", "cpu", "triton")]


def _inputs(dtype, seed=0):
    """Two graphs in a batch (5 nodes with an isolated one, 4 nodes) and a third of one node."""
    generator = torch.Generator().manual_seed(seed)

    def undirected(pairs, offset):
        src, dst = zip(*pairs)
        return torch.tensor([src + dst, dst + src]) + offset

    edge_index = torch.cat([undirected([(0, 1), (1, 2), (2, 3)], 0), undirected([(0, 1), (2, 3)], 5)], 1)
    batch = torch.tensor([0] * 5 + [1] * 4 + [2])
    x = (torch.randn(10, 6, generator=generator, dtype=torch.float64) * 2).to(dtype)  # some logits hit the clamp
    edge_attr = torch.randn(edge_index.shape[1], 4, generator=generator, dtype=torch.float64).to(dtype)
    fake_attr = torch.randn(1, 4, generator=generator, dtype=torch.float64).to(dtype)
    return edge_index, batch, x, edge_attr, fake_attr


def _close(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("fake_mode", ["full", "sampled"])
@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES)
def test_two_call_union_equals_the_single_call_union(backend, dtype, ebt, fake_mode):
    require_backend(backend, torch.device("cpu"), dtype)
    torch.manual_seed(3)
    edge_index, batch, x, edge_attr, fake_attr = _inputs(dtype)
    layer = SANAttention(6, 2, 3, 4, ebt=ebt, clamp=2.0, backend=backend, ebt_init="standard_normal").to(dtype)
    oracle = copy.deepcopy(layer)
    if fake_mode == "full":
        fake = full_fake_edges(edge_index, batch, 10, 0.3)
    else:  # per-node log-weights log(gamma * n_fake / kept) that differ between nodes
        fake = sampled_fake_edges(edge_index, batch, 10, 0.3, 3)
        assert fake.node_log_weight(10).unique().numel() > 2
    graph = Graph(edge_index, 10)
    inputs = [t.clone().requires_grad_() for t in (x, edge_attr, fake_attr)]
    oracle_inputs = [t.clone().requires_grad_() for t in (x, edge_attr, fake_attr)]
    node_out, edge_out = layer(inputs[0], graph, inputs[1], fake=fake, fake_attr=inputs[2])
    want_node, want_edge = _single_call_union(oracle, oracle_inputs[0], graph, oracle_inputs[1], fake, oracle_inputs[2])
    assert edge_out.shape == (edge_index.shape[1] + fake.num_edges, 6)
    torch.testing.assert_close(node_out, want_node, **_close(dtype))
    torch.testing.assert_close(edge_out, want_edge, **_close(dtype))
    assert torch.equal(node_out[9], torch.zeros_like(node_out[9])) or ebt == "slot"  # one node, nothing to attend

    generator = torch.Generator().manual_seed(4)
    up_node = torch.randn(node_out.shape, generator=generator, dtype=torch.float64).to(dtype)
    up_edge = torch.randn(edge_out.shape, generator=generator, dtype=torch.float64).to(dtype)
    ((node_out * up_node).sum() + (edge_out * up_edge).sum()).backward()
    ((want_node * up_node).sum() + (want_edge * up_edge).sum()).backward()
    for got, want in zip(inputs, oracle_inputs):
        torch.testing.assert_close(got.grad, want.grad, **_close(dtype))
    for (name, got), want in zip(layer.named_parameters(), oracle.parameters()):
        assert got.grad is not None, name
        torch.testing.assert_close(got.grad, want.grad, **_close(dtype), msg=name)


def test_structural_bias_applies_to_the_real_edges():
    torch.manual_seed(5)
    edge_index, batch, x, edge_attr, fake_attr = _inputs(torch.float64, seed=1)
    layer = SANAttention(6, 2, 3, 4, ebt="slot", clamp=1.0, backend="torch").double()
    fake = full_fake_edges(edge_index, batch, 10, 0.5)
    bias = torch.randn(edge_index.shape[1], 2, dtype=torch.float64)
    got = layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr, bias=bias)
    want = _single_call_union(layer, x, Graph(edge_index, 10), edge_attr, fake, fake_attr, bias=bias)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ebt", EBTS)
def test_statistics_come_from_the_two_calls_and_the_merged_node_out(ebt):
    torch.manual_seed(6)
    edge_index, batch, x, edge_attr, fake_attr = _inputs(torch.float32, seed=2)
    layer = SANAttention(6, 2, 3, 4, ebt=ebt, backend="torch")
    fake = full_fake_edges(edge_index, batch, 10, 0.3)
    types = torch.arange(edge_index.shape[1]) % 3
    edge_stats = EdgeStats(keep_edge_ratio=True, edge_types=types, threshold=2.0)
    node_stats = EdgeStats(tap="node", mantissa_bits=4)
    untyped = EdgeStats()
    with torch.no_grad():
        node_out, edge_out = layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr,
                                   stats=[edge_stats, node_stats, untyped])
    num_real = edge_index.shape[1]
    # the edge tap: real rows, then fake rows, as one reduction over the union would count them
    whole = EdgeStats(keep_edge_ratio=True, edge_types=torch.cat([types, torch.full((fake.num_edges,), NON_EDGE_TYPE)]),
                      threshold=2.0)
    whole.add(reduce_rows(edge_out), heads=2)
    got, want = edge_stats.to_dict(), whole.to_dict()
    assert got.pop("calls") == 2 and want.pop("calls") == 1  # the real-edge call and the fake-edge call
    assert got == want and edge_stats.rows == num_real + fake.num_edges
    assert edge_stats.type_edges[NON_EDGE_TYPE] == fake.num_edges
    assert torch.equal(edge_stats.edge_ratio, whole.edge_ratio)
    assert torch.equal(edge_stats.hist_ratio.counts, whole.hist_ratio.counts)
    assert untyped.type_edges == {} and untyped.rows == num_real + fake.num_edges
    # the node tap: the merged node_out, once
    merged = EdgeStats(tap="node", mantissa_bits=4)
    merged.add(reduce_rows(node_out), heads=2)
    assert node_stats.to_dict() == merged.to_dict() and node_stats.calls == 1


def test_fake_edges_need_one_log_weight_per_node():
    index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    fake = FakeEdges(index, torch.tensor([0.1, 0.1, -0.5], dtype=torch.float64))
    assert torch.equal(fake.node_log_weight(3), torch.tensor([0.1, -0.5, 0.0], dtype=torch.float64))
    bad = FakeEdges(index, torch.tensor([0.1, 0.2, -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="same for every fake edge into a node"):
        bad.node_log_weight(3)


def test_fake_edge_embedding_is_broadcast_not_copied(monkeypatch):
    from magnn.models import san

    seen = []

    def spy(q, k, v, e, graph, **kwargs):
        seen.append(e)
        return edge_attention(q, k, v, e, graph, **kwargs)

    monkeypatch.setattr(san, "edge_attention", spy)
    edge_index, batch, x, edge_attr, fake_attr = _inputs(torch.float32)
    layer = SANAttention(6, 2, 3, 4, backend="torch")
    fake = full_fake_edges(edge_index, batch, 10, 0.3)
    layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr)
    _, fake_e = seen
    assert fake_e.shape == (fake.num_edges, 2, 3) and fake_e.stride(0) == 0
