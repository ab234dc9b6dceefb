"""Massive-activation statistics (SPEC §4): `EdgeStats`, `LogHistogram`, `collect`.

A tapped tensor A ([rows, C] with C = H*D; rows are edges for the default tap
`edge_out`) is reduced to a `RawStats`: plain integer histograms, a per-row
ratio vector and a few scalars. Every backend produces the same `RawStats`;
the reference computes it from the materialised tensor (`reduce_rows`), fast
backends reduce it inside their kernels. `EdgeStats` owns the accumulated
numbers and derives the rest (medians, max ratios, per-type counts).

Binning: a non-negative float32's bin is its bit pattern shifted right by
23 - M (M mantissa bits kept), so each bin spans a relative width of 2^-M and
histograms are exact integer counts that add across calls and processes.
NaNs are counted, never binned. Per-row medians are lower medians
(torch.median's convention) over the row's non-NaN values; a median of 0 is
replaced by the smallest positive normal float32 so every ratio is finite.
Statistics are taken on the values as stored (rounded to the output dtype),
converted to float32.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

SMALLEST_NORMAL = float(torch.finfo(torch.float32).tiny)  # 2**-126


def num_bins(mantissa_bits: int) -> int:
    # sign bit is 0 for |x|; 8 exponent bits + M mantissa bits index the bins
    return 1 << (8 + mantissa_bits)


def bin_index(values: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Bin of each non-negative float32 value (NaNs must be removed first)."""
    bits = values.contiguous().to(torch.float32).view(torch.int32).to(torch.int64)
    return bits >> (23 - mantissa_bits)


def bin_lower_bound(index: torch.Tensor | int, mantissa_bits: int) -> torch.Tensor:
    """Smallest float32 value that falls into bin `index` (inf for the inf bin)."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return (index << (23 - mantissa_bits)).to(torch.int32).view(torch.float32)


@dataclass
class LogHistogram:
    """Integer counts over log-spaced float32 bins; `merge` adds counts."""

    mantissa_bits: int = 7
    counts: torch.Tensor = None  # int64 [num_bins]

    def __post_init__(self):
        if self.counts is None:
            self.counts = torch.zeros(num_bins(self.mantissa_bits), dtype=torch.int64)
        if self.counts.shape != (num_bins(self.mantissa_bits),):
            raise ValueError(
                f"counts must have {num_bins(self.mantissa_bits)} bins for mantissa_bits={self.mantissa_bits}"
            )

    @classmethod
    def of(cls, values: torch.Tensor, mantissa_bits: int = 7) -> "LogHistogram":
        values = values.detach().reshape(-1).to(torch.float32).abs()
        values = values[~torch.isnan(values)]
        counts = torch.bincount(bin_index(values, mantissa_bits), minlength=num_bins(mantissa_bits))
        return cls(mantissa_bits, counts.cpu())

    def merge(self, other: "LogHistogram") -> "LogHistogram":
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError("cannot merge histograms with different mantissa_bits")
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def nonzero(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bin lower bounds, counts) of the occupied bins, ascending."""
        index = torch.nonzero(self.counts).reshape(-1)
        return bin_lower_bound(index, self.mantissa_bits), self.counts[index]

    def bin_edges(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bin_lower_bound(index, self.mantissa_bits), bin_lower_bound(index + 1, self.mantissa_bits)

    def quantile_bin(self, rank: int) -> int:
        """Index of the bin holding the value of 0-based rank `rank` (ascending)."""
        cumulative = torch.cumsum(self.counts, 0)
        return int(torch.searchsorted(cumulative, torch.tensor(rank, dtype=torch.int64), right=True))

    def lower_median(self) -> tuple[float, float, float]:
        """(estimate, low, high): the bin [low, high) that holds the lower median."""
        total = self.total
        if total == 0:
            nan = float("nan")
            return nan, nan, nan
        index = self.quantile_bin((total - 1) // 2)
        low, high = self.bin_edges(torch.tensor(index))
        low, high = float(low), float(high)
        return 0.5 * (low + high), low, high


@dataclass
class RawStats:
    """What one backend call reduces; all tensors may live on the call's device.

    hist_abs, hist_ratio: int64 [num_bins]: |A| and all per-row ratios |A_rc| / med_r.
    row_ratio: float32 [rows] in the caller's order: max_c ratio (NaN if the row is all NaN).
    nan_count: number of NaN values; max_abs: largest |A| (-1 if there is none);
    argmax: flat index row * C + c of max_abs in the caller's order (-1 if none).
    """

    hist_abs: torch.Tensor
    hist_ratio: torch.Tensor
    row_ratio: torch.Tensor
    nan_count: torch.Tensor
    max_abs: torch.Tensor
    argmax: torch.Tensor
    count: int
    channels: int
    row_max_abs: Optional[torch.Tensor] = None  # float32 [rows]; needed only for min_abs


def row_lower_median(abs_values: torch.Tensor) -> torch.Tensor:
    """Lower median over the last dim, NaNs excluded; 0 -> smallest normal; all-NaN -> NaN."""
    valid = (~torch.isnan(abs_values)).sum(-1)
    # NaN sorts last in torch.sort, so the k-th smallest non-NaN value is at k
    ordered = torch.sort(abs_values, dim=-1).values
    k = ((valid - 1).clamp_min(0) // 2).unsqueeze(-1)
    median = torch.gather(ordered, -1, k).squeeze(-1)
    median = torch.where(median == 0, torch.full_like(median, SMALLEST_NORMAL), median)
    return torch.where(valid == 0, torch.full_like(median, float("nan")), median)


def reduce_rows(tapped: torch.Tensor, mantissa_bits: int = 7) -> RawStats:
    """Reference reduction of a materialised tap A [rows, C] (any float dtype)."""
    rows = tapped.shape[0]
    channels = math.prod(tapped.shape[1:])  # explicit so zero rows keep their channel count
    flat = tapped.detach().reshape(rows, channels).to(torch.float32)
    channels = flat.shape[1]
    abs_values = flat.abs()
    nan_mask = torch.isnan(abs_values)
    bins = num_bins(mantissa_bits)

    valid_abs = abs_values[~nan_mask]
    hist_abs = torch.bincount(bin_index(valid_abs, mantissa_bits), minlength=bins)

    median = row_lower_median(abs_values) if rows else abs_values.new_empty(0)
    ratio = abs_values / median.unsqueeze(-1)
    valid_ratio = ratio[~nan_mask]
    hist_ratio = torch.bincount(bin_index(valid_ratio, mantissa_bits), minlength=bins)
    row_ratio = torch.where(nan_mask, torch.full_like(ratio, -1.0), ratio).amax(-1) if channels else median
    row_ratio = torch.where(torch.isnan(median), median, row_ratio)

    if valid_abs.numel():
        filled = torch.where(nan_mask, torch.full_like(abs_values, -1.0), abs_values).reshape(-1)
        argmax = torch.argmax(filled)  # first occurrence of the maximum
        max_abs = filled[argmax]
    else:
        argmax = torch.tensor(-1, dtype=torch.int64, device=flat.device)
        max_abs = torch.tensor(-1.0, device=flat.device)
    row_max_abs = torch.where(nan_mask, torch.full_like(abs_values, -1.0), abs_values).amax(-1) if channels else median
    return RawStats(
        row_max_abs=row_max_abs,
        hist_abs=hist_abs,
        hist_ratio=hist_ratio,
        row_ratio=row_ratio,
        nan_count=nan_mask.sum(),
        max_abs=max_abs,
        argmax=argmax,
        count=rows * channels,
        channels=channels,
    )


class EdgeStats:
    """Collector of massive-activation statistics for one attention layer.

    Pass it as ``stats=`` to `magnn.functional.edge_attention` (or let
    `collect` attach one to every layer of a model). Each call adds to it;
    `merge` adds another collector (histograms and counts add exactly, so the
    stats of two halves of a batch merged equal those of one call).

    Args:
      mantissa_bits: histogram resolution M (bins of relative width 2^-M).
      keep_edge_ratio: keep the per-edge max ratio r_e of every call
        (concatenated over calls, in the caller's edge order).
      edge_types: int64 [E] edge types of the next call(s), for per-type counts.
      threshold: ratio above which an activation (or an edge's r_e) is massive.
      min_abs: optionally also require |a| > min_abs (the LLM definition uses 100);
        applied to edges through their max |A_e|.
      tap: "edge" (edge_out, the default) or "node" (node_out, rows are nodes).
    """

    def __init__(
        self,
        mantissa_bits: int = 7,
        keep_edge_ratio: bool = False,
        edge_types: Optional[torch.Tensor] = None,
        threshold: float = 1000.0,
        min_abs: Optional[float] = None,
        tap: str = "edge",
    ):
        if not 0 <= mantissa_bits <= 23:
            raise ValueError(f"mantissa_bits must be in [0, 23], got {mantissa_bits}")
        if tap not in ("edge", "node"):
            raise ValueError(f"tap must be 'edge' or 'node', got {tap!r}")
        if edge_types is not None and (edge_types.dtype.is_floating_point or edge_types.dim() != 1):
            raise ValueError("edge_types must be an integer tensor of shape [E]")
        self.mantissa_bits = mantissa_bits
        self.keep_edge_ratio = keep_edge_ratio
        self.edge_types = edge_types
        self.threshold = float(threshold)
        self.min_abs = min_abs
        self.tap = tap
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.count = 0
        self.rows = 0
        self.channels = None
        self.nan_count = 0
        self.max_abs = float("nan")
        self.argmax: Optional[tuple[int, int, int]] = None
        self.max_edge_ratio = float("nan")
        self.ma_edges = 0
        self.hist_abs = LogHistogram(self.mantissa_bits)
        self.hist_ratio = LogHistogram(self.mantissa_bits)
        self.hist_edge_ratio = LogHistogram(self.mantissa_bits)
        self._edge_ratio_parts: list[torch.Tensor] = []
        self.type_edges: dict[int, int] = {}
        self.type_ma_edges: dict[int, int] = {}
        self.type_max_ratio: dict[int, float] = {}

    # -- filling --------------------------------------------------------------
    def add(self, raw: RawStats, heads: int) -> None:
        """Fold one call's `RawStats` in (backends call this; users need not)."""
        if self.channels is not None and raw.channels != self.channels and raw.count:
            raise ValueError(f"stats collected {self.channels} channels before, got {raw.channels}")
        rows = raw.row_ratio.shape[0]
        row_ratio = raw.row_ratio.detach().float().cpu()
        self.hist_abs.merge(LogHistogram(self.mantissa_bits, raw.hist_abs.detach().cpu().long()))
        self.hist_ratio.merge(LogHistogram(self.mantissa_bits, raw.hist_ratio.detach().cpu().long()))
        self.hist_edge_ratio.merge(LogHistogram.of(row_ratio, self.mantissa_bits))
        self.nan_count += int(raw.nan_count)
        flat = int(raw.argmax)
        if flat >= 0:
            value = float(raw.max_abs)
            if self.argmax is None or value > self.max_abs:
                channels = raw.channels
                head_dim = channels // heads
                row, channel = divmod(flat, channels)
                self.max_abs = value
                self.argmax = (self.rows + row, channel // head_dim, channel % head_dim)
        finite = row_ratio[~torch.isnan(row_ratio)]
        if finite.numel():
            call_max = float(finite.max())
            if not self.max_edge_ratio >= call_max:  # also replaces the initial NaN
                self.max_edge_ratio = call_max
        massive = self._massive_rows(row_ratio, raw)
        self.ma_edges += int(massive.sum())
        if self.edge_types is not None and self.tap == "edge":
            types = self.edge_types.detach().cpu().long()
            if types.shape[0] != rows:
                raise ValueError(f"edge_types has {types.shape[0]} entries but the call had {rows} edges")
            for t, n in zip(*torch.unique(types, return_counts=True)):
                self.type_edges[int(t)] = self.type_edges.get(int(t), 0) + int(n)
                ratios = row_ratio[(types == t) & ~torch.isnan(row_ratio)]
                if ratios.numel():
                    self.type_max_ratio[int(t)] = max(self.type_max_ratio.get(int(t), 0.0), float(ratios.max()))
            if massive.any():
                for t, n in zip(*torch.unique(types[massive], return_counts=True)):
                    self.type_ma_edges[int(t)] = self.type_ma_edges.get(int(t), 0) + int(n)
        if self.keep_edge_ratio:
            self._edge_ratio_parts.append(row_ratio)
        self.calls += 1
        self.count += raw.count
        self.rows += rows
        self.channels = raw.channels if raw.count else self.channels

    def _massive_rows(self, row_ratio: torch.Tensor, raw: RawStats) -> torch.Tensor:
        massive = row_ratio > self.threshold  # NaN compares False
        if self.min_abs is not None:
            if raw.row_max_abs is None:
                raise ValueError("EdgeStats(min_abs=...) needs a backend that reports row_max_abs")
            massive &= raw.row_max_abs.detach().float().cpu() > self.min_abs
        return massive

    def merge(self, other: "EdgeStats") -> "EdgeStats":
        """Add `other`'s numbers to these (e.g. across batches or processes)."""
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError("cannot merge EdgeStats with different mantissa_bits")
        self.hist_abs.merge(other.hist_abs)
        self.hist_ratio.merge(other.hist_ratio)
        self.hist_edge_ratio.merge(other.hist_edge_ratio)
        self.nan_count += other.nan_count
        if other.argmax is not None and (self.argmax is None or other.max_abs > self.max_abs):
            row, head, channel = other.argmax
            self.max_abs = other.max_abs
            self.argmax = (self.rows + row, head, channel)
        if not self.max_edge_ratio >= other.max_edge_ratio and other.max_edge_ratio == other.max_edge_ratio:
            self.max_edge_ratio = other.max_edge_ratio
        self.ma_edges += other.ma_edges
        for mine, theirs in ((self.type_edges, other.type_edges), (self.type_ma_edges, other.type_ma_edges)):
            for t, n in theirs.items():
                mine[t] = mine.get(t, 0) + n
        for t, ratio in other.type_max_ratio.items():
            self.type_max_ratio[t] = max(self.type_max_ratio.get(t, 0.0), ratio)
        self._edge_ratio_parts.extend(other._edge_ratio_parts)
        self.calls += other.calls
        self.count += other.count
        self.rows += other.rows
        self.channels = self.channels if self.channels is not None else other.channels
        return self

    # -- derived numbers --------------------------------------------------------
    @property
    def edge_ratio(self) -> Optional[torch.Tensor]:
        """r_e per edge (caller's order, all calls concatenated) if keep_edge_ratio."""
        if not self.keep_edge_ratio:
            return None
        if not self._edge_ratio_parts:
            return torch.empty(0)
        return torch.cat(self._edge_ratio_parts)

    def median_abs(self) -> tuple[float, float, float]:
        """(estimate, low, high): the lower median of |A| lies in [low, high)."""
        return self.hist_abs.lower_median()

    def max_ratio(self, norm: str = "edge") -> float:
        """Largest ratio: per-edge medians ("edge") or the layer median ("layer")."""
        if norm == "edge":
            return self.max_edge_ratio
        if norm == "layer":
            estimate = self.median_abs()[0]
            if estimate != estimate:
                return float("nan")
            return self.max_abs / max(estimate, SMALLEST_NORMAL)
        raise ValueError(f"norm must be 'edge' or 'layer', got {norm!r}")

    def to_dict(self) -> dict:
        estimate, low, high = self.median_abs()
        return {
            "calls": self.calls,
            "count": self.count,
            "rows": self.rows,
            "nan_count": self.nan_count,
            "max_abs": self.max_abs,
            "argmax": list(self.argmax) if self.argmax is not None else None,
            "median_abs": {"estimate": estimate, "low": low, "high": high},
            "max_ratio_edge": self.max_ratio("edge"),
            "max_ratio_layer": self.max_ratio("layer"),
            "threshold": self.threshold,
            "ma_edges": self.ma_edges,
            "mantissa_bits": self.mantissa_bits,
            "type_edges": {str(t): n for t, n in sorted(self.type_edges.items())},
            "type_ma_edges": {str(t): n for t, n in sorted(self.type_ma_edges.items())},
            "type_max_ratio": {str(t): r for t, r in sorted(self.type_max_ratio.items())},
        }

    def __repr__(self) -> str:
        return (
            f"EdgeStats(calls={self.calls}, count={self.count}, max_abs={self.max_abs:.4g}, "
            f"median_abs~{self.median_abs()[0]:.4g}, max_ratio(edge)={self.max_ratio('edge'):.4g})"
        )


@contextlib.contextmanager
def collect(model: torch.nn.Module, **stats_kwargs) -> Iterator[dict[str, EdgeStats]]:
    """Attach a fresh `EdgeStats` to every `FusedEdgeAttention` in `model`.

        with magnn.stats.collect(model) as stats:
            model(batch)
        print({name: s.max_ratio() for name, s in stats.items()})
    """
    from .layers import FusedEdgeAttention

    collected: dict[str, EdgeStats] = {}
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, FusedEdgeAttention)]
    if not layers:
        raise ValueError("collect(model): the model has no FusedEdgeAttention layer")
    for name, module in layers:
        collected[name] = EdgeStats(**stats_kwargs)
        module.collector = collected[name]
    try:
        yield collected
    finally:
        for _, module in layers:
            module.collector = None
