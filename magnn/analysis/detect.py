"""magnn detect: massive-activation detection over a dataset split (SPEC §6).

For each attention layer and batch, `magnn.stats.collect` reduces the tapped
edge activations inside the attention call; this module keeps each batch's
max ratio (edge and layer normalisation), merges the histograms, fits a gamma
distribution to -log10(ratio) from the merged histogram and measures the fit
with a one-sample Kolmogorov-Smirnov statistic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..core.constants import MA_THRESHOLD
from ..stats import EdgeStats, LogHistogram, bin_lower_bound, collect

EPS = 1e-8  # -log10(ratio + eps), as the paper's code does, keeps zero ratios finite


# -- gamma fit from a histogram -------------------------------------------------------

@dataclass
class GammaFit:
    shape: float
    loc: float
    scale: float
    ks: float  # sup |F_empirical - F_fit| over the histogram's bin edges
    samples: int  # values the fit saw

    def pdf(self, x):
        from scipy import stats

        return stats.gamma.pdf(x, self.shape, loc=self.loc, scale=self.scale)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "loc": self.loc, "scale": self.scale, "ks": self.ks, "samples": self.samples}


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


# -- detection over a split -----------------------------------------------------------

@dataclass
class LayerReport:
    name: str
    batch_max_ratio_edge: list = field(default_factory=list)
    batch_max_ratio_layer: list = field(default_factory=list)
    stats: Optional[EdgeStats] = None
    gamma: Optional[GammaFit] = None

    def sorted_ratios(self) -> list:
        return sorted((r for r in self.batch_max_ratio_edge if r == r), reverse=True)

    def to_dict(self) -> dict:
        ratios = [r for r in self.batch_max_ratio_edge if r == r]
        types = {}
        if self.stats is not None:
            for t, n in self.stats.type_edges.items():
                massive = self.stats.type_ma_edges.get(t, 0)
                types[str(t)] = {"edges": n, "ma_edges": massive, "ma_frequency": massive / n if n else 0.0,
                                 "max_ratio": self.stats.type_max_ratio.get(t, float("nan"))}
        return {
            "name": self.name,
            "max_ratio_edge": max(ratios) if ratios else float("nan"),
            "median_batch_max_ratio_edge": float(np.median(ratios)) if ratios else float("nan"),
            "max_ratio_layer": max((r for r in self.batch_max_ratio_layer if r == r), default=float("nan")),
            "batches_with_ma": int(sum(r > (self.stats.threshold if self.stats else MA_THRESHOLD) for r in ratios)),
            "batches": len(self.batch_max_ratio_edge),
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "gamma": self.gamma.to_dict() if self.gamma is not None else None,
            "edge_types": types,
        }


@dataclass
class DetectionReport:
    layers: list

    def to_dict(self) -> dict:
        return {"layers": [layer.to_dict() for layer in self.layers]}

    def max_ratio(self) -> float:
        return max((l.to_dict()["max_ratio_edge"] for l in self.layers), default=float("nan"))


@torch.no_grad()
def detect(model, graphs, *, batch_size: int = 1, device="cpu", threshold: float = MA_THRESHOLD,
           max_batches: Optional[int] = None, fit: bool = True, progress: bool = True,
           desc: str = "detect") -> DetectionReport:
    """Run `model` in eval mode over `graphs` (a list/dataset of PyG Data) collecting MA stats.

    One graph per batch follows the paper's protocol (each batch contributes
    its maximum edge ratio per layer). Edge types come from `data.edge_type`.
    """
    from torch_geometric.loader import DataLoader
    from tqdm import tqdm

    from ..distributed import all_reduce_stats

    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 (or None for all batches), got {max_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval().to(device)
    reports: dict[str, LayerReport] = {}
    loader = DataLoader(graphs, batch_size=batch_size, shuffle=False)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    for position, batch in enumerate(tqdm(loader, total=total, desc=desc, disable=not progress, leave=False)):
        if max_batches is not None and position >= max_batches:
            break
        batch = batch.to(device)
        kwargs = {"threshold": threshold}
        if getattr(batch, "edge_type", None) is not None:
            kwargs["edge_types"] = batch.edge_type
        with collect(model, **kwargs) as stats:
            model(batch)
        for name, layer_stats in stats.items():
            report = reports.setdefault(name, LayerReport(name))
            report.batch_max_ratio_edge.append(layer_stats.max_ratio("edge"))
            report.batch_max_ratio_layer.append(layer_stats.max_ratio("layer"))
            if report.stats is None:
                report.stats = layer_stats
            else:
                report.stats.merge(layer_stats)
    merged = all_reduce_stats({name: r.stats for name, r in reports.items()})
    for name, report in reports.items():
        report.stats = merged[name]
        if fit:
            report.gamma = fit_gamma(report.stats.hist_ratio)
    return DetectionReport(list(reports.values()))


def xavier_reset(model: torch.nn.Module) -> torch.nn.Module:
    """Xavier-uniform every Linear weight and zero its bias (the paper text's base model).

    Attention layers re-initialise their own projections (`reset_parameters(init="xavier")`,
    which leaves the EBT parameters as they are); every other Linear is reset here. Modules
    are visited in `model.modules()` order, so the draws are those of one Xavier loop over
    all Linear layers.
    """
    from ..layers import FusedEdgeAttention

    done: set[int] = set()  # the projections an attention layer has reset
    for module in model.modules():
        if id(module) in done:
            continue
        if isinstance(module, FusedEdgeAttention):
            module.reset_parameters(init="xavier")
            done.update(id(child) for child in module.modules())
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    return model
