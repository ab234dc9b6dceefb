"""Robust per-layer statistics of r_e: exact-per-graph histograms, high quantiles, bootstrap intervals."""
import numpy as np
import torch

from magnn.analysis.robust import BatchRatios, robust_summary
from magnn.stats import LogHistogram


class _Batch:
    """What BatchRatios reads from one batch's EdgeStats."""

    def __init__(self, ratios, threshold):
        self.hist_edge_ratio = LogHistogram(7).merge(LogHistogram.of(torch.tensor(ratios, dtype=torch.float32)))
        self.ma_edges = int((np.asarray(ratios) > threshold).sum())
        self._max = float(np.max(ratios))

    def max_ratio(self, norm="edge"):
        return self._max


def _batches(rng, graphs=200, edges=50, outlier=None):
    batches = BatchRatios(7)
    values = []
    for g in range(graphs):
        ratios = rng.lognormal(1.0, 0.5, size=edges)
        if outlier is not None and g == 0:
            ratios[0] = outlier
        values.append(ratios)
        batches.add(_Batch(ratios, 1000.0))
    return batches, np.concatenate(values)


def test_quantiles_match_the_exact_values_to_the_bin_width():
    batches, values = _batches(np.random.default_rng(0))
    summary = robust_summary(batches, 1000.0)
    for q, key in ((0.999, "q99.9"), (0.9999, "q99.99")):
        exact = np.sort(values)[int(np.ceil(q * values.size)) - 1]
        assert abs(summary[key]["value"] / exact - 1) < 2 ** -7, key
        assert summary[key]["low"] <= summary[key]["value"] * (1 + 2 ** -7)
        assert summary[key]["high"] >= summary[key]["value"] * (1 - 2 ** -7)
    assert summary["batches"] == 200 and summary["edges"] == values.size
    assert summary["max"]["value"] == np.float32(values.max())


def test_one_extreme_graph_moves_the_max_not_the_quantile():
    rng = np.random.default_rng(1)
    batches, _ = _batches(rng, outlier=1e5)
    summary = robust_summary(batches, 1000.0)
    assert summary["max"]["value"] > 9e4
    assert summary["max"]["low"] < 1e3 < 9e4 < summary["max"]["high"]  # resamples without graph 0 exist
    assert summary["q99.9"]["value"] < 100  # the 99.9 % quantile does not see one edge in 10,000
    assert summary["fraction_above_threshold"]["value"] == 1 / 10_000
    assert summary["fraction_above_threshold"]["low"] == 0.0


def test_bootstrap_is_reproducible():
    batches, _ = _batches(np.random.default_rng(2), graphs=30)
    assert robust_summary(batches, 10.0) == robust_summary(batches, 10.0)
