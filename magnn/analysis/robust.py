"""Statistics of the per-edge ratios r_e beyond the maximum, with bootstrap intervals over graphs.

A finding that rests on one extreme value (the largest r_e over a split) can flip with one
graph. This module gives, per layer, the high quantiles of r_e (99.9 %, 99.99 %), the fraction
of edges above the MA threshold and the max, each with a percentile-bootstrap interval whose
resampling unit is the batch (one test graph, or one seed subgraph on ogbn-proteins): every
batch keeps its own exact log-binned r_e histogram (only its occupied bins), so a resample's
histogram is the exact sum of its batches' and its quantiles are exact to the bin width
(relative 2^-M, M = the stats' mantissa_bits). The resampling uses a fixed seed, so a report
is reproducible. Under torchrun the bootstrap sees the batches of this process only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..stats import bin_lower_bound

__all__ = ["BatchRatios", "QUANTILES", "RESAMPLES", "CONFIDENCE", "robust_summary"]

QUANTILES = (0.999, 0.9999)  # the high quantiles of r_e reported per layer
RESAMPLES = 200  # bootstrap resamples (percentile intervals)
CONFIDENCE = 0.95


@dataclass
class BatchRatios:
    """Per batch of one layer: its r_e histogram (occupied bin ids and counts), its edges above the
    threshold and its largest r_e."""

    mantissa_bits: int
    bins: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    above: list = field(default_factory=list)
    maxima: list = field(default_factory=list)

    def add(self, stats) -> None:
        """One batch's EdgeStats (as `collect` yields it, before any merge)."""
        hist = stats.hist_edge_ratio.counts
        index = torch.nonzero(hist).reshape(-1)
        self.bins.append(index)
        self.counts.append(hist[index])
        self.above.append(int(stats.ma_edges))
        self.maxima.append(float(stats.max_ratio("edge")))


def _quantile_values(weights: np.ndarray, dense: np.ndarray, bins: np.ndarray, q: float, mantissa_bits: int):
    """Per row of `weights` (batch multiplicities), the q-quantile of the summed histograms: the
    midpoint of the bin holding the value of rank ceil(q * n) - 1 (NaN for an empty histogram)."""
    counts = np.asarray((dense.T @ weights.T).T)  # [resamples, bins]; dense: a sparse [batches, bins] matrix
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    rank = np.maximum(np.ceil(q * total) - 1, 0)
    position = np.array([np.searchsorted(c, r, side="right") for c, r in zip(cumulative, rank)])
    position = np.minimum(position, len(bins) - 1)
    index = torch.as_tensor(bins[position])
    low = bin_lower_bound(index, mantissa_bits).double().numpy()
    high = bin_lower_bound(index + 1, mantissa_bits).double().numpy()
    return np.where(total > 0, 0.5 * (low + high), np.nan)


def _interval(point: float, draws: np.ndarray) -> dict:
    draws = draws[~np.isnan(draws)]
    if not draws.size:
        return {"value": point, "low": float("nan"), "high": float("nan")}
    tail = (1 - CONFIDENCE) / 2 * 100
    return {"value": point, "low": float(np.percentile(draws, tail)), "high": float(np.percentile(draws, 100 - tail))}


def robust_summary(batches: BatchRatios, threshold: float, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Per layer: {"q99.9", "q99.99", "fraction_above_threshold", "max"}, each {"value", "low", "high"}
    (the whole split's number and its bootstrap interval over batches), plus "batches", "edges",
    "resamples", "confidence" and "threshold"."""
    n = len(batches.counts)
    summary = {"batches": n, "resamples": resamples, "confidence": CONFIDENCE, "threshold": float(threshold)}
    if n == 0:
        return summary
    from scipy.sparse import csr_matrix

    bins = torch.unique(torch.cat(batches.bins)).numpy()
    rows = np.concatenate([np.full(len(index), row) for row, index in enumerate(batches.bins)])
    columns = np.searchsorted(bins, torch.cat(batches.bins).numpy())
    values = torch.cat(batches.counts).double().numpy()
    dense = csr_matrix((values, (rows, columns)), shape=(n, max(len(bins), 1)))  # one row per batch (sparse)
    bins = bins if len(bins) else np.zeros(1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)]).astype(float)
    everything = np.ones((1, n))
    for q in QUANTILES:
        point = float(_quantile_values(everything, dense, bins, q, batches.mantissa_bits)[0])
        summary[f"q{q * 100:g}"] = _interval(point, _quantile_values(weights, dense, bins, q, batches.mantissa_bits))
    edges, above = np.asarray(dense.sum(axis=1)).ravel(), np.asarray(batches.above, dtype=np.float64)
    summary["edges"] = int(edges.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        summary["fraction_above_threshold"] = _interval(float(above.sum() / edges.sum()) if edges.sum() else float("nan"),
                                                        (weights @ above) / (weights @ edges))
    maxima = np.asarray(batches.maxima, dtype=np.float64)
    maxima = np.where(np.isnan(maxima), -np.inf, maxima)
    resampled_max = np.where(weights > 0, maxima[None, :], -np.inf).max(axis=1)
    point_max = float(maxima.max())
    summary["max"] = _interval(point_max if np.isfinite(point_max) else float("nan"),
                               np.where(np.isfinite(resampled_max), resampled_max, np.nan))
    return summary
