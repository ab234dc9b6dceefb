"""The statistics' data types (SPEC §4): `LogHistogram` and `EdgeStats`.

`EdgeStats` owns the accumulated numbers and derives the rest (medians, max ratios,
per-type counts). Statistics are taken on the values as stored (rounded to the output
dtype), converted to float32.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from ..core.binning import SMALLEST_NORMAL, RawStats, bin_index, bin_lower_bound, coarsen_counts, finite_or_none, num_bins
from ..core.constants import DEFAULT_MANTISSA_BITS, MA_THRESHOLD, TAPS
from . import reduction

__all__ = ["LogHistogram", "EdgeStats"]


@dataclass
class LogHistogram:
    """Integer counts over log-spaced float32 bins; `merge` adds counts."""

    mantissa_bits: int = DEFAULT_MANTISSA_BITS
    counts: torch.Tensor = None  # int64 [num_bins]

    def __post_init__(self):
        if self.counts is None:
            self.counts = torch.zeros(num_bins(self.mantissa_bits), dtype=torch.int64)
        if self.counts.shape != (num_bins(self.mantissa_bits),):
            raise ValueError(
                f"counts must have {num_bins(self.mantissa_bits)} bins for mantissa_bits={self.mantissa_bits}"
            )

    @classmethod
    def of(cls, values: torch.Tensor, mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> "LogHistogram":
        values = values.detach().reshape(-1).to(torch.float32).abs()
        values = values[~torch.isnan(values)]
        counts = torch.bincount(bin_index(values, mantissa_bits), minlength=num_bins(mantissa_bits))
        return cls(mantissa_bits, counts.cpu())

    def merge(self, other: "LogHistogram") -> "LogHistogram":
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError(
                f"cannot merge histograms with different mantissa_bits ({self.mantissa_bits} and {other.mantissa_bits})"
            )
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


def _histogram_and_nan_mask(values: torch.Tensor, mantissa_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`LogHistogram.of(values).counts` of a float32 [n] tensor and its NaN mask, in a few passes over
    the bit patterns and without boolean indexing (which dominated `EdgeStats.add` on [E] tensors)."""
    keys = values.contiguous().view(torch.int32) & 0x7FFFFFFF  # |v| as bits; a NaN is above +inf
    nan = keys > 0x7F800000
    bins = num_bins(mantissa_bits)
    index = torch.where(nan, bins, keys >> (23 - mantissa_bits))  # NaNs go to one extra bin, dropped
    return torch.bincount(index, minlength=bins + 1)[:bins], nan


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
      edge_types: int64 [E] edge types of the next call(s), for per-type counts (a call's
        own `edge_attention(..., edge_types=...)` replaces them for that call).
      threshold: ratio above which an activation (or an edge's r_e) is massive.
      min_abs: optionally also require |a| > min_abs (the LLM definition uses 100);
        applied to edges through their max |A_e|.
      tap: "edge" (edge_out, the default) or "node" (node_out, rows are nodes).
    """

    def __init__(
        self,
        mantissa_bits: int = DEFAULT_MANTISSA_BITS,
        keep_edge_ratio: bool = False,
        edge_types: Optional[torch.Tensor] = None,
        threshold: float = MA_THRESHOLD,
        min_abs: Optional[float] = None,
        tap: str = "edge",
    ):
        if not 0 <= mantissa_bits <= 23:
            raise ValueError(f"mantissa_bits must be in [0, 23], got {mantissa_bits}")
        if tap not in TAPS:
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
    def add(self, raw: RawStats, heads: int, *, edge_types: Optional[torch.Tensor] = None) -> None:
        """Fold one call's `RawStats` in (`magnn.functional` calls this; users need not).

        All or nothing: every check runs before anything changes, so a call that
        raises leaves these stats exactly as they were. The histograms may be finer
        than `mantissa_bits` (they are coarsened exactly), never coarser. edge_types:
        this call's per-row types, used instead of `self.edge_types` when this
        collector counts by edge type (ignored when it does not).
        """
        self._absorb(self._from_raw(raw, heads, edge_types))

    def _from_raw(self, raw: RawStats, heads: int, edge_types: Optional[torch.Tensor] = None) -> "EdgeStats":
        """One call's numbers as a fresh EdgeStats with these settings; validates, changes nothing here."""
        if not isinstance(raw, RawStats):
            raise TypeError(f"raw must be a magnn.stats.RawStats, got {type(raw).__name__}")
        if isinstance(heads, bool) or not isinstance(heads, numbers.Integral) or heads < 1:
            raise ValueError(f"heads must be a positive integer, got {heads!r}")
        if raw.count and raw.channels % heads:
            raise ValueError(f"the call's {raw.channels} channels do not split into {heads} heads")
        if self.channels is not None and raw.count and raw.channels != self.channels:
            raise ValueError(f"stats collected {self.channels} channels before, got {raw.channels}")
        hist_abs = coarsen_counts(raw.hist_abs.detach().cpu().long(), self.mantissa_bits)
        hist_ratio = coarsen_counts(raw.hist_ratio.detach().cpu().long(), self.mantissa_bits)
        row_ratio = raw.row_ratio.detach().float().cpu()
        rows = row_ratio.shape[0]
        types = None
        if self.edge_types is not None and self.tap == "edge":
            types = (self.edge_types if edge_types is None else edge_types).detach().cpu().long()
            if types.shape[0] != rows:
                raise ValueError(f"edge_types has {types.shape[0]} entries but the call had {rows} edges")
        edge_ratio_counts, valid_rows, max_edge_ratio, massive, ma_edges = self._summarize_rows(row_ratio, raw)

        part = EdgeStats(self.mantissa_bits, self.keep_edge_ratio, None, self.threshold, self.min_abs, self.tap)
        part.hist_abs = LogHistogram(self.mantissa_bits, hist_abs)
        part.hist_ratio = LogHistogram(self.mantissa_bits, hist_ratio)
        part.hist_edge_ratio = LogHistogram(self.mantissa_bits, edge_ratio_counts)
        part.nan_count = int(raw.nan_count)
        flat = int(raw.argmax)
        if flat >= 0:
            head_dim = raw.channels // int(heads)
            row, channel = divmod(flat, raw.channels)
            part.max_abs = float(raw.max_abs)
            part.argmax = (row, channel // head_dim, channel % head_dim)
        if valid_rows:
            part.max_edge_ratio = max_edge_ratio
        part.ma_edges = ma_edges
        if types is not None:
            for t, n in zip(*torch.unique(types, return_counts=True)):
                part.type_edges[int(t)] = int(n)
                ratios = row_ratio[(types == t) & ~torch.isnan(row_ratio)]
                if ratios.numel():
                    part.type_max_ratio[int(t)] = max(0.0, float(ratios.max()))
            if ma_edges:
                for t, n in zip(*torch.unique(types[massive], return_counts=True)):
                    part.type_ma_edges[int(t)] = int(n)
        if self.keep_edge_ratio:
            part._edge_ratio_parts.append(row_ratio)
        part.calls = 1
        part.count = raw.count
        part.rows = rows
        part.channels = raw.channels if raw.count else None
        return part

    def _summarize_rows(self, row_ratio: torch.Tensor, raw: RawStats):
        """(histogram counts of the non-NaN r_e, their number, their max, the massive-row mask, its count) of a
        float32 CPU row_ratio: in one serial C++ pass when the cpu backend is usable, else in torch."""
        row_max_abs = None
        if self.min_abs is not None:
            if raw.row_max_abs is None:
                raise ValueError("EdgeStats(min_abs=...) needs a backend that reports row_max_abs")
            row_max_abs = raw.row_max_abs.detach().float().cpu()
            if row_max_abs.shape != row_ratio.shape:
                raise ValueError(f"row_max_abs has shape {list(row_max_abs.shape)}, row_ratio {list(row_ratio.shape)}")
        if reduction.cpu_reduction_usable(row_ratio, build=False):  # never builds the extension just for this pass
            from ..backends.cpu import summarize_ratios_cpu

            return summarize_ratios_cpu(row_ratio, self.mantissa_bits, self.threshold, row_max_abs, self.min_abs)
        counts, nan = _histogram_and_nan_mask(row_ratio, self.mantissa_bits)
        valid = row_ratio.shape[0] - int(nan.sum())
        largest = float(row_ratio.masked_fill(nan, -math.inf).max()) if valid else -math.inf
        massive = row_ratio > self.threshold  # NaN compares False
        if row_max_abs is not None:
            massive &= row_max_abs > self.min_abs
        return counts, valid, largest, massive, int(massive.sum())

    def merge(self, other: "EdgeStats") -> "EdgeStats":
        """Add `other`'s numbers to these (e.g. across batches or processes).

        Both must have been taken the same way: the same mantissa_bits, tap, threshold,
        min_abs and (once both have seen values) channel count; per-edge ratios kept on
        both sides if kept here, and per-edge-type counts on both sides or on neither.
        Otherwise ValueError names each setting that differs with its two values.
        Stats that have seen nothing yet (channels None) merge both ways.
        """
        if not isinstance(other, EdgeStats):
            raise TypeError(f"can only merge another EdgeStats, got {type(other).__name__}")
        differences = self.incompatibilities(other)
        if differences:
            raise ValueError("cannot merge EdgeStats taken differently: " + "; ".join(differences))
        self._absorb(copy.deepcopy(other) if other is self else other)
        return self

    def incompatibilities(self, other: "EdgeStats") -> list[str]:
        """Why `other` cannot be merged into these, one line per differing setting ([] if it can)."""
        differences = [
            f"{name} differs ({mine!r} here, {theirs!r} in the other)"
            for name, mine, theirs in (
                ("mantissa_bits", self.mantissa_bits, other.mantissa_bits),
                ("tap", self.tap, other.tap),
                ("threshold", self.threshold, other.threshold),
                ("min_abs", self.min_abs, other.min_abs),
            )
            if mine != theirs
        ]
        if self.channels is not None and other.channels is not None and self.channels != other.channels:
            differences.append(f"channels differs ({self.channels} here, {other.channels} in the other)")
        if self.keep_edge_ratio and not other.keep_edge_ratio and other.rows:
            differences.append(
                f"keep_edge_ratio differs (True here, False in the other): edge_ratio would miss its {other.rows} rows"
            )
        if self.rows and other.rows and bool(self.type_edges) != bool(other.type_edges):
            differences.append(
                f"per-edge-type counts differ ({'kept' if self.type_edges else 'none'} here, "
                f"{'kept' if other.type_edges else 'none'} in the other): edge_types was given to only one"
            )
        return differences

    def _absorb(self, other: "EdgeStats") -> None:
        """Adds `other`'s numbers (already checked compatible); cannot fail half-way."""
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
        if self.keep_edge_ratio:
            self._edge_ratio_parts.extend(other._edge_ratio_parts)
        self.calls += other.calls
        self.count += other.count
        self.rows += other.rows
        self.channels = self.channels if self.channels is not None else other.channels

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

    @property
    def all_nan(self) -> bool:
        """True when every value seen was NaN (there were some): no median, no ratio exists."""
        return self.count > 0 and self.nan_count == self.count

    def to_dict(self) -> dict:
        """The numbers as plain Python values, valid JSON: NaN / inf become None (`all_nan` says why)."""
        estimate, low, high = self.median_abs()
        return {
            "calls": self.calls,
            "count": self.count,
            "rows": self.rows,
            "channels": self.channels,
            "nan_count": self.nan_count,
            "all_nan": self.all_nan,
            "max_abs": finite_or_none(self.max_abs),
            "argmax": list(self.argmax) if self.argmax is not None else None,
            "median_abs": {
                "estimate": finite_or_none(estimate), "low": finite_or_none(low), "high": finite_or_none(high),
            },
            "max_ratio_edge": finite_or_none(self.max_ratio("edge")),
            "max_ratio_layer": finite_or_none(self.max_ratio("layer")),
            "threshold": finite_or_none(self.threshold),
            "min_abs": finite_or_none(self.min_abs),
            "tap": self.tap,
            "ma_edges": self.ma_edges,
            "mantissa_bits": self.mantissa_bits,
            "type_edges": {str(t): n for t, n in sorted(self.type_edges.items())},
            "type_ma_edges": {str(t): n for t, n in sorted(self.type_ma_edges.items())},
            "type_max_ratio": {str(t): finite_or_none(r) for t, r in sorted(self.type_max_ratio.items())},
        }

    def __repr__(self) -> str:
        return (
            f"EdgeStats(calls={self.calls}, count={self.count}, max_abs={self.max_abs:.4g}, "
            f"median_abs~{self.median_abs()[0]:.4g}, max_ratio(edge)={self.max_ratio('edge'):.4g})"
        )
