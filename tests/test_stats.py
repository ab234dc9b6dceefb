"""EdgeStats and the reference reduction (SPEC §4)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import random_graph, random_inputs
from magnn import EdgeStats, collect
from magnn.functional import edge_attention
from magnn.layers import FusedEdgeAttention
from magnn.stats import SMALLEST_NORMAL, LogHistogram, bin_index, bin_lower_bound, reduce_rows


def _fill(tapped: torch.Tensor, **kwargs) -> EdgeStats:
    stats = EdgeStats(**kwargs)
    stats.add(reduce_rows(tapped), heads=1)
    return stats


def test_edge_ratios_and_max_ratio_equal_direct_computation():
    torch.manual_seed(0)
    tapped = torch.randn(200, 24) * torch.rand(200, 1) * 10
    stats = _fill(tapped, keep_edge_ratio=True)
    direct = tapped.abs().amax(1) / tapped.abs().median(1).values  # torch.median = lower median
    torch.testing.assert_close(stats.edge_ratio, direct, rtol=0, atol=0)
    assert stats.max_ratio("edge") == pytest.approx(float(direct.max()), rel=1e-7)
    assert stats.max_abs == float(tapped.abs().max())
    assert stats.count == 200 * 24 and stats.nan_count == 0


def test_bins_cover_values_with_relative_width():
    values = torch.tensor([1e-30, 0.3, 1.0, 1.0078125, 7.5, 1e4, 3e38])
    index = bin_index(values, 7)
    low, high = bin_lower_bound(index, 7), bin_lower_bound(index + 1, 7)
    assert (low <= values).all() and (values < high).all()
    # width is 2^-7 of the power of two that starts the value's binade
    binade = torch.exp2(torch.floor(torch.log2(low.double())))
    assert torch.equal((high.double() - low.double()) / binade, torch.full_like(binade, 2.0**-7))
    assert int(bin_index(torch.tensor([0.0]), 7)) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=1, max_size=300),
    st.integers(min_value=0, max_value=10),
)
def test_true_lower_median_lies_within_one_bin(values, mantissa_bits):
    tapped = torch.tensor(values, dtype=torch.float32).reshape(-1, 1)
    stats = EdgeStats(mantissa_bits=mantissa_bits)
    stats.add(reduce_rows(tapped, mantissa_bits), heads=1)
    estimate, low, high = stats.median_abs()
    true_median = float(tapped.abs().reshape(-1).median())
    assert low <= true_median < high
    assert low <= estimate <= high
    # one bin apart: high is the lower bound of the next bin
    assert int(bin_index(torch.tensor([high]), mantissa_bits)) == int(bin_index(torch.tensor([low]), mantissa_bits)) + 1


def test_nans_are_counted_not_propagated():
    tapped = torch.tensor([[1.0, 2.0, float("nan"), 4.0], [float("nan")] * 4, [1.5, 0.0, 0.0, 0.5]])
    stats = _fill(tapped, keep_edge_ratio=True)
    assert stats.nan_count == 5
    assert stats.hist_abs.total == 7 and stats.hist_ratio.total == 7
    estimate, low, high = stats.median_abs()
    assert low <= 1.0 < high  # lower median of the 7 non-NaN values
    ratio = stats.edge_ratio
    assert ratio[0] == 2.0  # median of (1, 2, 4) is 2, max 4
    assert math.isnan(ratio[1])
    assert ratio[2] == pytest.approx(1.5 / SMALLEST_NORMAL)  # median 0 -> smallest normal, ratio finite
    assert math.isfinite(stats.max_ratio("edge")) and math.isfinite(stats.max_ratio("layer"))
    assert stats.hist_edge_ratio.total == 2


def test_argmax_reports_edge_head_channel():
    tapped = torch.randn(10, 3, 4) * 0.1
    tapped[6, 2, 1] = -50.0
    stats = EdgeStats()
    stats.add(reduce_rows(tapped.reshape(10, 12)), heads=3)
    assert stats.argmax == (6, 2, 1) and stats.max_abs == 50.0


def test_merge_of_two_halves_equals_one_call():
    torch.manual_seed(1)
    # two disjoint graphs: running them together or apart gives the same edge_out
    first = random_graph(12, 40)
    second = random_graph(9, 30) + 12
    both = torch.cat([first, second], 1)
    q, k, v, e, _, params = random_inputs(21, both, 2, 4, dtype=torch.float32, ebt="edge")
    types = torch.randint(0, 3, (70,))
    whole = EdgeStats(keep_edge_ratio=True, edge_types=types, threshold=3.0)
    edge_attention(q, k, v, e, both, ebt="edge", ebt_params=params, stats=whole, backend="torch")
    halves = []
    for nodes, edges, offset in ((slice(0, 12), slice(0, 40), 0), (slice(12, 21), slice(40, 70), 12)):
        part = EdgeStats(keep_edge_ratio=True, edge_types=types[edges], threshold=3.0)
        edge_attention(q[nodes], k[nodes], v[nodes], e[edges], both[:, edges] - offset, ebt="edge", ebt_params=params, stats=part, backend="torch")
        halves.append(part)
    merged = halves[0].merge(halves[1])
    for name in ("hist_abs", "hist_ratio", "hist_edge_ratio"):
        assert torch.equal(getattr(merged, name).counts, getattr(whole, name).counts), name
    assert torch.equal(merged.edge_ratio, whole.edge_ratio)
    merged_numbers, whole_numbers = merged.to_dict(), whole.to_dict()
    assert merged_numbers.pop("calls") == 2 and whole_numbers.pop("calls") == 1
    assert merged_numbers == whole_numbers
    assert sum(whole.type_edges.values()) == 70


def test_planted_massive_edges_are_found_by_type():
    torch.manual_seed(2)
    tapped = torch.randn(50, 16)
    planted = torch.tensor([3, 17, 41])
    tapped[planted, 5] = 1e5
    types = torch.zeros(50, dtype=torch.long)
    types[planted] = 2
    stats = _fill(tapped, keep_edge_ratio=True, edge_types=types)
    assert torch.equal(torch.nonzero(stats.edge_ratio > 1000).reshape(-1), planted)
    assert stats.ma_edges == 3
    assert stats.type_ma_edges == {2: 3} and stats.type_edges == {0: 47, 2: 3}
    ratio_bins = stats.hist_ratio.nonzero()[0]
    assert float(ratio_bins.max()) > 1000


def test_min_abs_option_needs_large_values():
    tapped = torch.full((4, 8), 1e-6)
    tapped[1, 0] = 1.0  # ratio 1e6 but |a| small
    tapped[2, 0] = 1e3
    tapped[2, 1:] = 1e-3
    assert _fill(tapped).ma_edges == 2
    assert _fill(tapped, min_abs=100.0).ma_edges == 1


def test_log_histogram_merge_adds_counts_and_checks_resolution():
    a = LogHistogram.of(torch.tensor([1.0, 2.0, 2.0]))
    b = LogHistogram.of(torch.tensor([2.0, 4.0]))
    a.merge(b)
    assert a.total == 5
    with pytest.raises(ValueError):
        a.merge(LogHistogram(mantissa_bits=3))


class _TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
        self.second = FusedEdgeAttention(8, 2, 4, 3, ebt="slot", backend="torch")

    def forward(self, x, edge_index, edge_attr):
        x, _ = self.first(x, edge_index, edge_attr)
        return self.second(x, edge_index, edge_attr)[0]


def test_collect_attaches_one_collector_per_layer():
    torch.manual_seed(3)
    model = _TwoLayers()
    edge_index = random_graph(10, 30, isolated=2)
    x, edge_attr = torch.randn(10, 8), torch.randn(30, 3)
    with collect(model) as stats:
        model(x, edge_index, edge_attr)
    assert set(stats) == {"first", "second"}
    assert all(s.calls == 1 and s.count == 30 * 8 for s in stats.values())
    assert model.first.collectors == ()  # detached after the block
    model(x, edge_index, edge_attr)
    assert stats["first"].calls == 1
    with pytest.raises(ValueError, match="no magnn attention layer"):
        with collect(nn.Linear(2, 2)):
            pass


def test_node_tap_reduces_node_out():
    torch.manual_seed(4)
    edge_index = random_graph(9, 20)
    q, k, v, e, _, _ = random_inputs(9, edge_index, 2, 3, dtype=torch.float32)
    stats = EdgeStats(tap="node", keep_edge_ratio=True)
    node_out, _ = edge_attention(q, k, v, e, edge_index, stats=stats, backend="torch")
    assert stats.rows == 9 and stats.count == 9 * 6
    want = reduce_rows(node_out.reshape(9, 6))
    assert torch.equal(stats.hist_abs.counts, want.hist_abs)


def test_edge_ratio_summary_equals_masked_computation():
    # EdgeStats.add bins the per-edge ratios and takes their max on the bit patterns, without
    # boolean indexing: the same numbers as LogHistogram.of and a max over the non-NaN ratios
    from magnn.core.binning import RawStats

    gen = torch.Generator().manual_seed(4)
    ratio = (torch.randn(500, generator=gen) * 10).exp()
    ratio[::7] = float("nan")
    ratio[3], ratio[5], ratio[9] = float("inf"), 0.0, -float("nan")  # inf / inf can carry the sign bit
    for values, expect_max in ((ratio, float("inf")), (torch.full((4,), float("nan")), None),
                               (torch.empty(0), None)):
        raw = RawStats(hist_abs=torch.zeros(2 ** 11, dtype=torch.long), hist_ratio=torch.zeros(2 ** 11, dtype=torch.long),
                       row_ratio=values, nan_count=torch.tensor(0), max_abs=torch.tensor(-1.0),
                       argmax=torch.tensor(-1), count=values.numel() * 4, channels=4)
        stats = EdgeStats(mantissa_bits=3, threshold=50.0)
        stats.add(raw, 2)
        assert torch.equal(stats.hist_edge_ratio.counts, LogHistogram.of(values, 3).counts)
        valid = values[~values.isnan()]
        assert stats.ma_edges == int((valid > 50.0).sum())
        if expect_max is None:
            assert math.isnan(stats.max_edge_ratio)
        else:
            assert stats.max_edge_ratio == float(valid.max()) == expect_max
    finite = ratio.nan_to_num(nan=float("nan"), posinf=7.0)
    stats = EdgeStats(mantissa_bits=3)
    stats.add(RawStats(hist_abs=torch.zeros(2 ** 11, dtype=torch.long), hist_ratio=torch.zeros(2 ** 11, dtype=torch.long),
                       row_ratio=finite, nan_count=torch.tensor(0), max_abs=torch.tensor(-1.0), argmax=torch.tensor(-1),
                       count=2000, channels=4), 2)
    assert stats.max_edge_ratio == float(finite[~finite.isnan()].max())


def test_reduce_tensor_torch_path_reduces_in_chunks():
    from magnn.stats import reduce_tensor

    gen = torch.Generator().manual_seed(7)
    a = torch.randn(101, 3, 5, generator=gen) * torch.rand(101, 1, 1, generator=gen) * 100
    a[17, 1, 2] = float("nan")
    a[60, 0, 0] = 1e4  # the maximum, in a later chunk
    whole, chunked = reduce_rows(a.reshape(101, 15), 7), reduce_tensor(a, 7, chunk_values=15 * 8, backend="torch")
    for field in ("hist_abs", "hist_ratio", "row_ratio", "row_max_abs", "nan_count", "max_abs", "argmax"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field), equal_nan=True)
    assert int(chunked.argmax) == 60 * 15


def test_reduce_rows_bins_inf_over_inf_like_a_positive_nan():
    """A row whose median is inf gives inf / inf ratios: NaN, whose sign bit the division may
    set; they fall in the same bin as a positive NaN (the C++ reduction clears the sign bit too)."""
    from magnn.core.binning import bin_index, reduce_rows

    rows = torch.tensor([[float("inf"), float("inf"), 1.0], [1.0, 2.0, 3.0]])
    raw = reduce_rows(rows, 5)
    nan_bin = int(bin_index(torch.tensor([float("nan")]), 5)[0])
    assert raw.hist_ratio[nan_bin] == 2  # the two inf / inf ratios of row 0
    assert int(raw.hist_ratio.sum()) == 6
    assert torch.isnan(raw.row_ratio[0]) and raw.row_ratio[1] == 3.0 / 2.0
