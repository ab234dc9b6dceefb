"""AttentionStats (SPEC §4): the sink mass and the edge entropy of each (node, head), against
the reference softmax, on every backend, merged, and collected from models."""
import math

import pytest
import torch

from helpers import random_graph, random_inputs, require_backend
from magnn.functional import edge_attention
from magnn.stats import AttentionStats, LogHistogram, collect, collect_attention

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, HEAD_DIM, NODES, ISOLATED = 2, 4, 12, 2


def _case(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    edge_index = random_graph(NODES, 30, generator=gen, isolated=ISOLATED, self_loops=2, duplicates=3)
    q, k, v, e, _, params = random_inputs(NODES, edge_index, HEADS, HEAD_DIM, dtype=dtype, generator=gen, ebt="slot")
    sink = (torch.randn(HEADS, generator=gen, dtype=torch.float64) * 2).to(dtype)
    return edge_index, (q, k, v, e), params, sink


def dense_shares(q, k, e, edge_index, *, mode, clamp, ebt_params, sink):
    """Per node, from one torch.softmax over [edges..., slot, sink] (float64): the share that no
    edge takes, and the entropy of the edge weights renormalised over the edges."""
    q, k, e = (t.double() for t in (q, k, e))
    scale = 1.0 / math.sqrt(q.shape[2])
    src, dst = edge_index
    mass = torch.full((q.shape[0], q.shape[1]), math.nan, dtype=torch.float64)
    entropy = mass.clone()
    for i in range(q.shape[0]):
        edges = (dst == i).nonzero().reshape(-1).tolist()
        logits = []
        for edge in edges:
            j = int(src[edge])
            logits.append((q[i] * k[j] * e[edge]).sum(-1) * scale if mode == "gt"
                          else (q[i] * (k[j] + e[edge])).sum(-1) * scale)
        extra = []
        if ebt_params is not None:
            kb, eb = ebt_params[0].double(), ebt_params[1].double()
            extra.append((q[i] * (kb * eb if mode == "gt" else kb + eb)).sum(-1) * scale)
        if sink is not None:
            extra.append(sink.double())
        if not logits and not extra:
            continue
        stacked = torch.stack(logits + extra)
        if clamp is not None:
            stacked = stacked.clamp(-clamp, clamp)
        weights = torch.softmax(stacked, 0)
        mass[i] = weights[len(logits):].sum(0)
        if logits:
            edge_weights = weights[:len(logits)] / weights[:len(logits)].sum(0)
            entropy[i] = -(edge_weights * torch.log(edge_weights)).sum(0)
    return mass, entropy


@pytest.mark.parametrize("mode,clamp,slot,with_sink", [
    ("gt", None, True, True), ("gt", 1.5, True, False), ("additive", None, False, True), ("gt", None, False, False),
])
def test_sink_mass_and_entropy_equal_the_reference_softmax(mode, clamp, slot, with_sink):
    edge_index, (q, k, v, e), params, sink = _case(1)
    stats = AttentionStats(keep_rows=True)
    edge_attention(q, k, v, e, edge_index, mode=mode, clamp=clamp, ebt="slot" if slot else None,
                   ebt_params=params if slot else None, sink=sink if with_sink else None, stats=stats,
                   backend="torch")
    mass, entropy, degree = stats.rows()
    want_mass, want_entropy = dense_shares(q, k, e, edge_index, mode=mode, clamp=clamp,
                                           ebt_params=params if slot else None, sink=sink if with_sink else None)
    torch.testing.assert_close(mass.double(), want_mass, rtol=1e-6, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(entropy.double(), want_entropy, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.equal(degree, torch.bincount(edge_index[1], minlength=NODES))
    if not slot and not with_sink:
        attended = ~torch.isnan(mass)
        assert torch.equal(mass[attended], torch.zeros_like(mass[attended]))  # nothing but edges: no sink mass
    # the histograms are exactly the binning of the rows; the counts are the defined rows
    assert torch.equal(stats.hist_sink_mass.counts, LogHistogram.of(mass[~torch.isnan(mass)]).counts)
    assert torch.equal(stats.hist_entropy.counts, LogHistogram.of(entropy[~torch.isnan(entropy)]).counts)
    assert stats.sink_rows == int((~torch.isnan(mass)).sum()) and stats.entropy_rows == int((~torch.isnan(entropy)).sum())


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("cpu", torch.float64), ("triton", torch.float32)],
                         ids=lambda x: str(x).replace("torch.", ""))
def test_every_backend_gives_the_reference_numbers(backend, dtype):
    require_backend(backend, torch.device("cpu"), dtype)
    edge_index, tensors, params, sink = _case(2, dtype)
    collected = {}
    for name in (backend, "torch"):
        stats = AttentionStats(keep_rows=True)
        edge_attention(*tensors, edge_index, ebt="slot", ebt_params=params, sink=sink, clamp=5.0, stats=stats,
                       backend=name)
        collected[name] = stats
    got, want = collected[backend].rows(), collected["torch"].rows()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=tolerance, atol=tolerance, equal_nan=True)
    if dtype == torch.float64:  # the same float32-rounded values, so the same bins, bit for bit
        assert torch.equal(collected[backend].hist_sink_mass.counts, collected["torch"].hist_sink_mass.counts)
        assert torch.equal(collected[backend].hist_entropy.counts, collected["torch"].hist_entropy.counts)


def test_isolated_nodes_and_a_sink_alone():
    edge_index, (q, k, v, e), _, sink = _case(3)
    stats = AttentionStats(keep_rows=True)
    edge_attention(q, k, v, e, edge_index, sink=sink, stats=stats, backend="torch")
    mass, entropy, _ = stats.rows()
    isolated = slice(NODES - ISOLATED, NODES)
    assert torch.equal(mass[isolated], torch.ones_like(mass[isolated]))  # only the sink is attended
    assert torch.isnan(entropy[isolated]).all()  # no edge: no entropy, not binned
    stats = AttentionStats(keep_rows=True)
    edge_attention(q, k, v, e, edge_index, stats=stats, backend="torch")
    receiving = int((torch.bincount(edge_index[1], minlength=NODES) > 0).sum())
    assert torch.isnan(stats.rows()[0][isolated]).all() and stats.sink_rows == receiving * HEADS


def test_collectors_merge_exactly():
    edge_index, (q, k, v, e), params, sink = _case(4)
    both, first, second = (AttentionStats(mantissa_bits=5, keep_rows=True) for _ in range(3))
    for target in (both, first):
        edge_attention(q, k, v, e, edge_index, ebt="slot", ebt_params=params, stats=target, backend="torch")
    for target in (both, second):
        edge_attention(q, k, v, e, edge_index, sink=sink, stats=target, backend="torch")
    merged = first.merge(second)
    assert torch.equal(merged.hist_sink_mass.counts, both.hist_sink_mass.counts)
    assert torch.equal(merged.hist_entropy.counts, both.hist_entropy.counts)
    assert merged.to_dict() == both.to_dict() and merged.calls == 2
    with pytest.raises(ValueError, match="mantissa_bits"):
        merged.merge(AttentionStats(mantissa_bits=7))


def test_collect_attention_on_models_beside_edge_stats():
    from edge_cases import batches, build

    for name, extra in (("gt", {"mitigation": "sink"}), ("graphit", {}), ("san", {"full_graph": False})):
        model, transform = build(name, "slot", "default", **extra)
        model.eval()
        batch = batches(transform)["mixed"]
        with torch.no_grad(), collect(model) as edge_stats, collect_attention(model, keep_rows=True) as attention:
            model(batch)
        assert set(attention) == set(edge_stats)
        for layer_stats in attention.values():
            mass, entropy, degree = layer_stats.rows()
            assert layer_stats.calls == 1 and mass.shape == (batch.num_nodes, 4)
            assert torch.all((mass > 0) & (mass <= 1))  # the slot is always attended
        assert all(s.calls == 1 for s in edge_stats.values())


def test_san_union_rows_equal_one_softmax_over_real_and_fake_edges():
    """SAN's two calls joined (`union_rows`) give the sink mass and entropy of the softmax over the
    union with the slot, as the dense reference computes them."""
    from magnn.models.san import SANAttention, full_fake_edges

    torch.manual_seed(5)
    layer = SANAttention(8, 2, 4, 8, ebt="slot", clamp=None, backend="torch", sink=True).double()
    with torch.no_grad():
        layer.sink_logit.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(5, 8, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 4, 4]])
    fake = full_fake_edges(edge_index, None, 5, 0.5)
    edge_attr = torch.randn(5, 8, dtype=torch.float64)
    fake_attr = torch.randn(1, 8, dtype=torch.float64)
    stats = AttentionStats(keep_rows=True)
    with torch.no_grad():
        layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr, stats=stats)
        shape = (5, 2, 4)
        q, k = layer.lin_q(x).view(shape), layer.lin_k(x).view(shape)
        q2, k2 = layer.lin_q2(x).view(shape), layer.lin_k2(x).view(shape)
        e = layer.lin_e(edge_attr).view(5, 2, 4)
        e2 = layer.lin_e2(fake_attr).view(1, 2, 4).expand(fake.num_edges, 2, 4)
    # every edge as its own source node (key = q_i k_j e_ij, q = 1, e = 1), the fake log-weight in the
    # key's first channel (sqrt(D) * log gamma, so the logit gains log gamma); slot: q_i (k' e') with q_i
    src = torch.cat([edge_index[0], fake.index[0]])
    dst = torch.cat([edge_index[1], fake.index[1]])
    keys = torch.cat([q[edge_index[1]] * k[edge_index[0]] * e, q2[fake.index[1]] * k2[fake.index[0]] * e2])
    keys[edge_index.shape[1]:, :, 0] += 2.0 * math.log(0.5)
    total = src.shape[0]
    queries = torch.cat([torch.ones(5, 2, 4, dtype=torch.float64), torch.zeros(total - 5, 2, 4, dtype=torch.float64)])
    # the slot's logit q_i . (k' * e') / sqrt(D) with the oracle's q_i = 1: k' times q_i, one node at a time
    mass, entropy, _ = stats.rows()
    for i in range(5):
        slot_key = (q[i] * layer.ebt_k * layer.ebt_e).detach()
        want_mass, want_entropy = dense_shares(
            queries, keys, torch.ones(total, 2, 4, dtype=torch.float64), torch.stack([torch.arange(total), dst]),
            mode="gt", clamp=None, ebt_params=(slot_key, torch.ones(2, 4, dtype=torch.float64)),
            sink=layer.sink_logit.detach())
        torch.testing.assert_close(mass[i].double(), want_mass[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(entropy[i].double(), want_entropy[i], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_chunks_and_the_edge_projection_give_the_same_rows(monkeypatch):
    """The summary's passes over chunks of edges (small here) and with e formed per chunk from the raw
    features (the in-operator projection) give the rows of one pass over the materialised e."""
    import magnn.functional as functional

    edge_index, (q, k, v, _), params, sink = _case(6)
    gen = torch.Generator().manual_seed(6)
    raw = torch.randn(edge_index.shape[1], 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(HEADS * HEAD_DIM, 3, generator=gen, dtype=torch.float64)
    e = (raw @ weight.T).view(-1, HEADS, HEAD_DIM)
    whole = AttentionStats(keep_rows=True)
    edge_attention(q, k, v, e, edge_index, mode="additive", ebt="slot", ebt_params=params, stats=whole,
                   backend="torch")
    monkeypatch.setattr(functional, "SUMMARY_CHUNK_EDGES", 7)
    for backend in ("torch", "cpu"):
        require_backend(backend, torch.device("cpu"), torch.float64)
        chunked = AttentionStats(keep_rows=True)
        edge_attention(q, k, v, raw, edge_index, mode="additive", ebt="slot", ebt_params=params, e_weight=weight,
                       stats=chunked, backend=backend)
        for a, b in zip(chunked.rows(), whole.rows()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_degree_buckets_add_up_and_merge():
    from magnn.stats.attention import degree_bucket

    assert degree_bucket(torch.tensor([0, 1, 2, 3, 4, 7, 8, 1000])).tolist() == [0, 1, 2, 2, 3, 3, 4, 10]
    edge_index, (q, k, v, e), params, sink = _case(7)
    first, second, both = (AttentionStats(keep_rows=True) for _ in range(3))
    for target in (first, both):
        edge_attention(q, k, v, e, edge_index, sink=sink, stats=target, backend="torch")
    for target in (second, both):
        edge_attention(q, k, v, e, edge_index, ebt="slot", ebt_params=params, stats=target, backend="torch")
    mass, entropy, degree = both.rows()
    for row in both.by_degree():
        members = (degree >= row["degree_low"]) & (degree <= row["degree_high"])
        chosen = mass[members][~torch.isnan(mass[members])]
        assert row["sink_rows"] == chosen.numel()
        if chosen.numel():
            assert math.isclose(row["mean_sink_mass"], float(chosen.double().mean()), rel_tol=1e-12)
    assert first.merge(second).by_degree() == both.by_degree()
    assert both.by_degree()[0]["degree_low"] == 0 and both.by_degree()[0]["mean_entropy"] is None  # isolated nodes


def test_sink_relations_on_planted_rows(tmp_path):
    """Nodes 0 and 1 receive an MA edge and carry the large sink mass; the relations say so."""
    from magnn.analysis.sinks import plot_sink_profile, sink_relations

    edge_index = torch.tensor([[1, 2, 3, 0, 0, 1], [0, 0, 1, 2, 3, 3]])
    edge_ratio = torch.tensor([5000.0, 2.0, 3000.0, 1.0, 4.0, 2.0])
    edge_types = torch.tensor([1, 0, 1, 0, 0, 2])
    mass = torch.tensor([[0.9, 0.7], [0.8, 0.8], [0.1, 0.1], [0.2, 0.0], [math.nan, math.nan]])
    entropy = torch.tensor([[0.1, 0.2], [0.0, 0.0], [0.0, 0.0], [0.6, 0.4], [math.nan, math.nan]])
    degree = torch.tensor([2, 1, 1, 2, 0])
    relations = sink_relations(mass, entropy, degree, edge_index, edge_ratio, edge_types=edge_types)
    assert relations["by_ma"]["with_ma_edge"] == {"nodes": 2, "mean_sink_mass": pytest.approx(0.8),
                                                  "mean_entropy": pytest.approx(0.075)}
    assert relations["by_ma"]["without_ma_edge"]["nodes"] == 2
    assert relations["by_ma"]["without_ma_edge"]["mean_sink_mass"] == pytest.approx(0.1)
    assert relations["by_edge_type"]["1"] == {"edges": 2, "ma_edges": 2, "mean_destination_sink_mass": pytest.approx(0.8)}
    assert relations["by_edge_type"]["2"]["mean_destination_sink_mass"] == pytest.approx(0.1)
    assert relations["degree_correlation"] is not None
    with pytest.raises(ValueError, match="edge_ratio"):
        sink_relations(mass, entropy, degree, edge_index, edge_ratio[:3])
    stats = AttentionStats()
    stats.add(mass, entropy, degree)
    path = plot_sink_profile({"layer 0": stats.by_degree()}, tmp_path / "sinks.png", title="planted")
    assert path.stat().st_size > 0
