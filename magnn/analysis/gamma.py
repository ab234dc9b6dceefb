"""The gamma fit of a layer's edge ratios (SPEC §6) and the exact ratios it sees.

A gamma distribution is fitted to -log10(ratio + eps) and measured with a one-sample
Kolmogorov-Smirnov statistic: from the exact ratios of a layer's first `fit_edges` edges
(`ExactRatioSampler`, `fit_gamma_exact`, as the paper's code) or from the merged histogram
(`fit_gamma`). `GammaFit.source` says which ("exact" or "histogram").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..stats import LogHistogram, bin_lower_bound

# -log10(ratio + eps) keeps zero ratios finite; the paper's code adds numpy's float64 eps
# (np.finfo(float).eps = 2.22e-16), not 1e-8
EPS = float(np.finfo(np.float64).eps)
FIT_EDGES = 50_000  # the paper's code fits the ratios of a layer's first 50,000 edges


# -- gamma fit from a histogram -------------------------------------------------------

@dataclass
class GammaFit:
    shape: float
    loc: float
    scale: float
    ks: float  # sup |F_empirical - F_fit| (exact: scipy.stats.kstest; histogram: over the bin edges)
    samples: int  # values the fit saw
    source: str = "histogram"  # "exact": the ratios of the first FIT_EDGES edges; "histogram": the merged histogram
    edges: int = 0  # exact: edges whose ratios were fitted

    def pdf(self, x):
        from scipy import stats

        return stats.gamma.pdf(x, self.shape, loc=self.loc, scale=self.scale)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "loc": self.loc, "scale": self.scale, "ks": self.ks, "samples": self.samples,
                "source": self.source, "edges": self.edges}


def fit_gamma_exact(ratios, edges: int = 0) -> Optional[GammaFit]:
    """The paper code's fit: `scipy.stats.gamma.fit` (free loc and scale) of -log10(ratio + eps)
    over the given exact ratios, and `scipy.stats.kstest` against the fitted cdf."""
    from scipy import stats

    x = -np.log10(np.asarray(ratios, dtype=np.float64).reshape(-1) + EPS)
    x = x[np.isfinite(x)]
    if x.size < 3:
        return None
    shape, loc, scale = stats.gamma.fit(x)
    ks = stats.kstest(x, "gamma", args=(shape, loc, scale)).statistic
    return GammaFit(float(shape), float(loc), float(scale), float(ks), int(x.size), "exact", int(edges))


class ExactRatioSampler:
    """Forward hooks keeping the exact ratios |a_ec| / med_e of the first `limit` edge rows of every
    attention layer's edge output (the statistics' edge tap), by the names `collect` uses."""

    def __init__(self, model: torch.nn.Module, limit: int = FIT_EDGES):
        from ..stats import StatsTap

        self.limit, self.parts, self.rows, self.handles = limit, {}, {}, []
        if limit <= 0:
            return
        for name, module in model.named_modules():
            if isinstance(module, StatsTap):
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def keep(module, inputs, output):
            if not isinstance(output, tuple) or len(output) < 2 or self.rows.get(name, 0) >= self.limit:
                return None
            edge_out = output[1]
            if not isinstance(edge_out, torch.Tensor) or edge_out.dim() < 2:
                return None
            rows = edge_out.detach()[: self.limit - self.rows.get(name, 0)]
            rows = rows.reshape(rows.shape[0], -1).abs().float()
            if rows.shape[0] == 0 or rows.shape[1] == 0:
                return None
            median = rows.median(dim=1, keepdim=True).values.clamp_min(torch.finfo(torch.float32).tiny)
            self.parts.setdefault(name, []).append((rows / median).cpu().numpy())
            self.rows[name] = self.rows.get(name, 0) + rows.shape[0]
            return None

        return keep

    def ratios(self, name: str):
        parts = self.parts.get(name)
        return np.concatenate(parts, axis=0) if parts else None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def neg_log10_edges(hist: LogHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, counts) of -log10(ratio + eps) for the occupied bins, ascending in x."""
    index = torch.nonzero(hist.counts).reshape(-1)
    counts = hist.counts[index].double().numpy()
    ratio_low = bin_lower_bound(index, hist.mantissa_bits).double().numpy()
    ratio_high = bin_lower_bound(index + 1, hist.mantissa_bits).double().numpy()
    finite = np.isfinite(ratio_high)
    ratio_low, ratio_high, counts = ratio_low[finite], ratio_high[finite], counts[finite]
    x_low = -np.log10(ratio_high + EPS)  # the transform reverses the order
    x_high = -np.log10(ratio_low + EPS)
    order = np.argsort(x_low)
    return x_low[order], x_high[order], counts[order]


def fit_gamma(hist: LogHistogram, max_samples: int = 50_000, seed: int = 0) -> Optional[GammaFit]:
    """MLE gamma fit (free loc and scale) of -log10(ratio) from a ratio histogram.

    The fit sees up to `max_samples` values drawn from the histogram (bin
    chosen by its count, position uniform inside the bin), which keeps
    scipy.stats.gamma.fit fast on billions of counted values; the KS statistic
    then compares the fitted cdf with the full histogram's cdf at every bin edge.
    """
    from scipy import stats

    x_low, x_high, counts = neg_log10_edges(hist)
    total = counts.sum()
    if total < 3:
        return None
    rng = np.random.default_rng(seed)
    draws = min(int(total), max_samples)
    chosen = rng.choice(len(counts), size=draws, p=counts / total)
    samples = x_low[chosen] + rng.random(draws) * (x_high[chosen] - x_low[chosen])
    shape, loc, scale = stats.gamma.fit(samples)
    empirical = np.cumsum(counts) / total  # cdf at each bin's upper edge
    fitted = stats.gamma.cdf(x_high, shape, loc=loc, scale=scale)
    fitted_below = stats.gamma.cdf(x_low, shape, loc=loc, scale=scale)
    empirical_below = np.concatenate([[0.0], empirical[:-1]])
    ks = float(max(np.abs(empirical - fitted).max(), np.abs(empirical_below - fitted_below).max()))
    return GammaFit(float(shape), float(loc), float(scale), ks, draws)


