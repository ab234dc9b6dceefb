"""EdgeStats and `collect` under composition: nested collect blocks on one layer (each with its
own settings, ending in any order), several `stats=` per call, exact histogram coarsening,
merges only of comparable statistics, all-or-nothing adds, and valid JSON for all-NaN layers."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from edge_cases import SETTINGS, all_nan_stats, assert_same_state, filled, layer_inputs, snapshot, stats_equal
from helpers import random_graph, random_inputs
from magnn.functional import edge_attention
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats, RawStats, add_to_all, coarsen_counts, collect, reduce_rows

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]


def test_nested_collect_on_a_layer_records_every_call_with_its_own_settings():
    torch.manual_seed(4)
    layer = FusedEdgeAttention(8, 2, 4, 3, ebt="edge", backend="torch")
    calls = [layer_inputs(seed) for seed in range(3)]

    def run(inputs, stats=None):
        x, edge_index, edge_attr, _ = inputs
        return layer(x, edge_index, edge_attr, stats=stats)

    with collect(layer, **SETTINGS[0]) as outer:
        run(calls[0])
        with collect(layer, **SETTINGS[1]) as middle:
            with collect(layer, **SETTINGS[2]) as inner:
                run(calls[1])
                assert len(layer.collectors) == 3 and layer.collectors[-1] is inner[""]
            run(calls[2])
        assert layer.collectors == (outer[""],)
    assert layer.collectors == ()
    for got, settings, used in ((outer, SETTINGS[0], calls), (middle, SETTINGS[1], calls[1:]),
                                (inner, SETTINGS[2], calls[1:2])):
        want = EdgeStats(**settings)
        for inputs in used:
            run(inputs, stats=want)
        assert got[""].calls == len(used)
        stats_equal(got[""], want)


def test_collect_blocks_may_end_in_any_order():
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    x, edge_index, edge_attr, _ = layer_inputs(5)
    first, second = collect(layer), collect(layer, mantissa_bits=2)
    a, b = first.__enter__(), second.__enter__()
    first.__exit__(None, None, None)  # the outer block ends first
    layer(x, edge_index, edge_attr)
    second.__exit__(None, None, None)
    assert a[""].calls == 0 and b[""].calls == 1 and layer.collectors == ()


def test_edge_attention_accepts_several_stats_and_reduces_each_tap_once():
    torch.manual_seed(6)
    edge_index = random_graph(10, 30, isolated=2)
    q, k, v, e, bias, params = random_inputs(10, edge_index, 2, 4, dtype=torch.float32, bias="edge", ebt="slot")
    types = torch.randint(0, 4, (30,))
    settings = [dict(edge_types=types, threshold=3.0), dict(mantissa_bits=2, keep_edge_ratio=True),
                dict(tap="node", mantissa_bits=5), dict(tap="node", threshold=1.0, keep_edge_ratio=True)]
    together = [EdgeStats(**s) for s in settings]
    kwargs = dict(ebt="slot", ebt_params=params, bias=bias, clamp=4.0, backend="torch")
    node_out, edge_out = edge_attention(q, k, v, e, edge_index, stats=together + together[:1], **kwargs)
    for stats, setting in zip(together, settings):
        alone = EdgeStats(**setting)
        edge_attention(q, k, v, e, edge_index, stats=alone, **kwargs)
        assert stats.calls == 1  # a repeated collector is filled once
        stats_equal(stats, alone)
    # gradients are those of one plain call
    (node_out.sum() + edge_out.sum()).backward()
    assert torch.isfinite(q.grad).all()


def test_histograms_coarsen_exactly():
    values = torch.randn(500, 16) * torch.logspace(-3, 3, 500).unsqueeze(1)
    fine = reduce_rows(values, 7)
    for bits in (0, 3, 7):
        assert torch.equal(coarsen_counts(fine.hist_abs, bits), reduce_rows(values, bits).hist_abs)
        assert torch.equal(coarsen_counts(fine.hist_ratio, bits), reduce_rows(values, bits).hist_ratio)
    with pytest.raises(ValueError, match="cannot refine"):
        coarsen_counts(reduce_rows(values, 2).hist_abs, 4)

def test_explicit_stats_and_collectors_both_receive_the_call():
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    x, edge_index, edge_attr, _ = layer_inputs(9)
    explicit = EdgeStats()
    with collect(layer) as collected:
        layer(x, edge_index, edge_attr, stats=explicit)
    stats_equal(explicit, collected[""])
    with pytest.raises(AttributeError):
        layer.collectors = (EdgeStats(),)  # read-only: use collect() or attach_collector()


# -- merge only what is comparable ------------------------------------------------------------

@pytest.mark.parametrize("setting, mine, theirs", [
    ("mantissa_bits", 7, 4),
    ("threshold", 1000.0, 10.0),
    ("min_abs", None, 100.0),
    ("tap", "edge", "node"),
])
def test_merge_rejects_stats_taken_differently(setting, mine, theirs):
    tapped = torch.randn(20, 8)
    a, b = filled(tapped, **{setting: mine}), filled(tapped, **{setting: theirs})
    before = snapshot(a)
    with pytest.raises(ValueError, match=rf"{setting} differs \({mine!r} here, {theirs!r} in the other\)"):
        a.merge(b)
    assert_same_state(before, snapshot(a))


def test_merge_rejects_different_channels_edge_ratios_and_type_counts():
    a = filled(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"channels differs \(8 here, 3 in the other\)"):
        a.merge(filled(torch.randn(10, 3)))
    kept = filled(torch.randn(10, 8), keep_edge_ratio=True)
    with pytest.raises(ValueError, match=r"keep_edge_ratio differs \(True here, False in the other\)"):
        kept.merge(filled(torch.randn(10, 8)))
    typed = filled(torch.randn(10, 8), edge_types=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="per-edge-type counts differ"):
        typed.merge(filled(torch.randn(10, 8)))
    with pytest.raises(ValueError, match="threshold differs.*; min_abs differs"):
        a.merge(filled(torch.randn(10, 8), threshold=5.0, min_abs=1.0))  # every difference is named


def test_merge_into_and_from_empty_stats():
    full = filled(torch.randn(12, 8), keep_edge_ratio=True, threshold=2.0)
    empty = EdgeStats(keep_edge_ratio=True, threshold=2.0)
    assert empty.channels is None
    empty.merge(full)
    stats_equal(empty, full)
    again = copy.deepcopy(full)
    again.merge(EdgeStats(keep_edge_ratio=True, threshold=2.0))
    stats_equal(again, full)
    # zero-row calls leave channels unknown and merge with anything of the same settings
    no_rows = EdgeStats(threshold=2.0)
    no_rows.add(reduce_rows(torch.empty(0, 3)), heads=1)
    assert no_rows.channels is None and no_rows.calls == 1
    no_rows.merge(filled(torch.randn(4, 8), threshold=2.0))
    assert no_rows.channels == 8 and no_rows.calls == 2


def test_distributed_style_merge_of_ranks_equals_one_process():
    from magnn.distributed import all_reduce_stats

    tapped = torch.randn(40, 8)
    types = torch.randint(0, 3, (40,))
    whole = filled(tapped, edge_types=types, keep_edge_ratio=True)
    ranks = [filled(tapped[:25], edge_types=types[:25], keep_edge_ratio=True),
             filled(tapped[25:], edge_types=types[25:], keep_edge_ratio=True)]
    total = EdgeStats(keep_edge_ratio=True)  # as all_reduce_stats builds it
    for part in ranks:
        total.merge(part)
    merged, reference = total.to_dict(), whole.to_dict()
    assert merged.pop("calls") == 2 and reference.pop("calls") == 1
    assert merged == reference
    assert all_reduce_stats({"layer": whole})["layer"] is whole  # no process group: unchanged

# -- add is all or nothing -------------------------------------------------------------------

def test_failed_add_leaves_the_stats_exactly_as_before():
    stats = EdgeStats(keep_edge_ratio=True, edge_types=torch.zeros(6, dtype=torch.long), threshold=1.5)
    stats.add(reduce_rows(torch.randn(6, 4) * torch.arange(1, 7).unsqueeze(1) ** 3), heads=2)
    before = snapshot(stats)
    wrong_rows = reduce_rows(torch.randn(5, 4))
    with pytest.raises(ValueError, match="edge_types has 6 entries but the call had 5 edges"):
        stats.add(wrong_rows, heads=2)
    assert_same_state(before, snapshot(stats))
    with pytest.raises(ValueError, match="collected 4 channels before, got 3"):
        stats.add(reduce_rows(torch.randn(6, 3)), heads=1)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        stats.add(reduce_rows(torch.randn(6, 4)), heads=3)
    coarse = reduce_rows(torch.randn(6, 4), mantissa_bits=2)
    with pytest.raises(ValueError, match="cannot refine"):
        stats.add(coarse, heads=2)
    no_row_max = RawStats(**{**vars(reduce_rows(torch.randn(6, 4))), "row_max_abs": None})
    with pytest.raises(ValueError, match="row_max_abs"):
        EdgeStats(min_abs=1.0).add(no_row_max, heads=1)
    assert_same_state(before, snapshot(stats))


def test_failed_call_leaves_every_collector_unchanged():
    x, edge_index, edge_attr, types = layer_inputs(12)
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    good = EdgeStats(edge_types=types)
    bad = EdgeStats(edge_types=types[:-1])
    good_before, bad_before = snapshot(good), snapshot(bad)
    with pytest.raises(ValueError, match="edge_types has 24 entries"):
        layer(x, edge_index, edge_attr, stats=[good, bad])
    assert_same_state(good_before, snapshot(good))
    assert_same_state(bad_before, snapshot(bad))
    with pytest.raises(ValueError, match="edge_types has 24 entries"):
        add_to_all([good, bad], reduce_rows(torch.randn(25, 8)), heads=2)
    assert_same_state(good_before, snapshot(good))
    # a node-tap collector that fails after the extra pass: the edge-tap one is left alone too
    node_three_channels = filled(torch.randn(4, 3), tap="node")
    node_before = snapshot(node_three_channels)
    with pytest.raises(ValueError, match="collected 3 channels before, got 8"):
        layer(x, edge_index, edge_attr, stats=[good, node_three_channels])
    assert_same_state(good_before, snapshot(good))
    assert_same_state(node_before, snapshot(node_three_channels))

# -- valid JSON, all-NaN layers said so ------------------------------------------------------

def test_to_dict_is_valid_json_for_all_nan_empty_and_infinite_layers():
    all_nan = all_nan_stats()
    infinite = filled(torch.tensor([[float("inf"), 1.0, 2.0], [1.0, 1.0, 1.0]]))
    for stats in (all_nan, EdgeStats(), infinite):
        d = stats.to_dict()
        assert json.loads(json.dumps(d, allow_nan=False)) == d
    d = all_nan.to_dict()
    assert d["all_nan"] is True and d["nan_count"] == d["count"] == 20
    assert d["max_abs"] is None and d["max_ratio_edge"] is None and d["median_abs"]["estimate"] is None
    assert EdgeStats().to_dict()["all_nan"] is False
    assert infinite.to_dict()["max_abs"] is None  # inf has no JSON form either
