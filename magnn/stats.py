"""Massive-activation statistics (SPEC §4): `EdgeStats`, `LogHistogram`, `collect`.

Every backend reduces a tapped tensor A ([rows, C], C = H*D) to a `RawStats`
(`magnn.core.binning`: the binning, per-row lower medians and the reference
reduction `reduce_rows` are defined there). `EdgeStats` owns the accumulated
numbers and derives the rest (medians, max ratios, per-type counts); statistics
reach it through `magnn.functional.edge_attention(stats=...)`, to which every
`StatsTap` layer hands the collectors `collect` attached.

Statistics are taken on the values as stored (rounded to the output dtype),
converted to float32.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence, Union

import torch

from .core.binning import (  # noqa: F401  (re-exported: magnn.stats is where users look)
    SMALLEST_NORMAL, RawStats, bin_index, bin_lower_bound, coarsen_counts, finite_or_none, json_safe,
    mantissa_bits_of, num_bins, reduce_rows, row_lower_median,
)
from .core.constants import DEFAULT_MANTISSA_BITS, MA_THRESHOLD, TAPS
from .core.errors import NothingToCollect, UserError


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
        if _cpu_reduction_usable(row_ratio, build=False):  # never builds the extension just for this pass
            from .backends.cpu import summarize_ratios_cpu

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


def add_to_all(
    targets: Sequence[EdgeStats],
    raw: Union[RawStats, Mapping[str, RawStats]],
    heads: int,
    *,
    edge_types: Optional[torch.Tensor] = None,
) -> None:
    """Folds one call's statistics into every EdgeStats of `targets`, all or nothing: every
    target checks the call first (settings, channels, edge_types length), then all add.

    raw: the call's `RawStats`, or a dict tap -> RawStats when the targets tap different
    tensors (each target takes its own tap's; histograms may be finer than it keeps).
    edge_types: the call's per-edge types, for the targets that count by edge type
    (instead of their own `edge_types`).
    """
    def raw_for(target: EdgeStats) -> RawStats:
        if isinstance(raw, RawStats):
            return raw
        if target.tap not in raw:
            raise ValueError(f"no statistics for tap {target.tap!r} (have {sorted(raw)})")
        return raw[target.tap]

    parts = [target._from_raw(raw_for(target), heads, edge_types) for target in targets]
    for target, part in zip(targets, parts):
        target._absorb(part)


StatsArg = Union["EdgeStats", Sequence["EdgeStats"], None]


def stats_targets(stats: StatsArg) -> tuple[EdgeStats, ...]:
    """`stats=` as a tuple of distinct EdgeStats (None -> (); one -> (one,); duplicates dropped).

    Always () while autograd recomputes a forward (`recomputing()`: activation checkpointing in
    either mode): that call's statistics were taken when it first ran. Every call that fills
    statistics (`edge_attention`, `merge_attention`, each `StatsTap` layer's collectors) goes
    through here, so a recomputation adds nothing whoever asked for the statistics."""
    if stats is None:
        return ()
    if isinstance(stats, EdgeStats):
        return () if recomputing() else (stats,)
    if isinstance(stats, (list, tuple)):
        targets: list[EdgeStats] = []
        for item in stats:
            if not isinstance(item, EdgeStats):
                raise TypeError(f"stats must hold magnn.stats.EdgeStats objects, got {type(item).__name__}")
            if not any(item is seen for seen in targets):
                targets.append(item)
        return () if recomputing() else tuple(targets)
    raise TypeError(f"stats must be a magnn.stats.EdgeStats, a list/tuple of them or None, got {type(stats).__name__}")


class StatsTap:
    """What `collect` attaches to: a module whose calls fill the active collectors.

    `FusedEdgeAttention` (and every layer built on it) mixes this in; the layer
    passes `stats_targets(...)` to `edge_attention`'s ``stats=``, the one path
    by which statistics reach an `EdgeStats`.
    """

    def init_stats_tap(self) -> None:
        self._collectors: list[EdgeStats] = []  # attached by collect blocks, outermost first
        self._collection_paused = 0  # > 0 while a recomputation must not add statistics

    def attach_collector(self, stats: "EdgeStats") -> None:
        """Adds `stats` to the collectors every call of this layer fills (what `collect` does)."""
        if not isinstance(stats, EdgeStats):
            raise TypeError(f"a collector must be a magnn.stats.EdgeStats, got {type(stats).__name__}")
        if not any(stats is active for active in self._collectors):
            self._collectors.append(stats)

    def detach_collector(self, stats: "EdgeStats") -> None:
        """Removes `stats` (by identity) from the active collectors; the others stay."""
        self._collectors = [active for active in self._collectors if active is not stats]

    @contextlib.contextmanager
    def paused_collection(self):
        """No statistics from this layer while inside (a recomputation in backward needs no pause:
        `stats_targets` skips it whatever asked for the statistics, see `recomputing`)."""
        self._collection_paused += 1
        try:
            yield
        finally:
            self._collection_paused -= 1

    @property
    def collectors(self) -> tuple["EdgeStats", ...]:
        """The collectors the next call fills (none while paused for a recomputation)."""
        return () if self._collection_paused else tuple(self._collectors)

    def stats_targets(self, stats: StatsArg = None) -> tuple["EdgeStats", ...]:
        """Everything one call fills: `stats` (one EdgeStats or a sequence), then the active collectors."""
        return stats_targets([*stats_targets(stats), *self.collectors])


# rows of a PyG message reduced at once: bounds the transient float32 copies of the reduction
# (a few times chunk x C floats) whatever E is; the message itself is never kept
REDUCE_CHUNK_VALUES = 1 << 24


def reduce_tensor(tapped: torch.Tensor, mantissa_bits: int = DEFAULT_MANTISSA_BITS, *,
                  chunk_values: int = REDUCE_CHUNK_VALUES, backend: str = "auto") -> RawStats:
    """`RawStats` of a materialised tensor [rows, ...] (flattened to [rows, C]).

    What `collect` uses for the PyG messages and module outputs it taps: the same numbers as
    `magnn.core.binning.reduce_rows` on the whole tensor. backend="auto" reduces a floating CPU
    tensor with the cpu backend's C++ row reduction when that backend is usable (row by row,
    no transient copies), anything else as backend="torch" does: `reduce_rows` in row chunks
    (histograms add, per-row ratios concatenate, the first largest |a| wins), with at most
    `chunk_values` values in flight.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    if backend == "auto" and _cpu_reduction_usable(tapped):
        from .backends.cpu import reduce_rows_cpu

        return reduce_rows_cpu(tapped, mantissa_bits)  # row by row in C++: no transient copies to bound
    rows = tapped.shape[0] if tapped.dim() else 1
    channels = math.prod(tapped.shape[1:]) if tapped.dim() else 1
    flat = tapped.detach().reshape(rows, channels)
    step = max(1, chunk_values // max(channels, 1))
    if rows <= step:
        return reduce_rows(flat, mantissa_bits)
    parts = [(start, reduce_rows(flat[start:start + step], mantissa_bits)) for start in range(0, rows, step)]
    best_start, best = None, None
    for start, part in parts:
        if int(part.argmax) >= 0 and (best is None or float(part.max_abs) > float(best.max_abs)):
            best_start, best = start, part
    first = parts[0][1]
    return RawStats(
        hist_abs=sum((part.hist_abs for _, part in parts[1:]), first.hist_abs),
        hist_ratio=sum((part.hist_ratio for _, part in parts[1:]), first.hist_ratio),
        row_ratio=torch.cat([part.row_ratio for _, part in parts]),
        row_max_abs=torch.cat([part.row_max_abs for _, part in parts]),
        nan_count=sum((part.nan_count for _, part in parts[1:]), first.nan_count),
        max_abs=best.max_abs if best is not None else first.max_abs,
        argmax=(best.argmax + best_start * channels) if best is not None else first.argmax,
        count=rows * channels,
        channels=channels,
    )


def _cpu_reduction_usable(tapped: torch.Tensor, build: bool = True) -> bool:
    """True when `tapped` can be reduced by the cpu backend's C++ ops (the fastest here): a floating
    CPU tensor, and the extension builds (a failed build is remembered: torch path then); with
    build=False only when this process has already loaded it."""
    if tapped.device.type != "cpu" or not tapped.is_floating_point():
        return False
    from .backends import cpu

    if not build:
        return cpu.is_loaded()
    return cpu.unavailable_reason(tapped.device, tapped.dtype) is None


def recomputing() -> bool:
    """True while the autograd engine runs a backward pass on this thread: a forward that runs then is
    a recomputation (`torch.utils.checkpoint` re-runs the checkpointed forward inside backward, from
    `CheckpointFunction.backward` with use_reentrant=True, from the saved-tensor unpack hook with
    use_reentrant=False) whose statistics were taken when it first ran, so collection skips it.

    The signal is the engine's own (the graph task being executed, thread-local), not a guess from
    grad mode: the reentrant recomputation runs with grad enabled, and a forward under no_grad (an
    evaluation) is a real forward that must count. torch.func transforms and torch.compile run the
    forward once (AOTAutograd's recomputation happens inside the compiled backward, without Python
    side effects), so nothing needs skipping there."""
    try:
        return torch._C._current_graph_task_id() != -1
    except AttributeError:  # an older torch without the query: never skip
        return False


def _first_tensor(output) -> Optional[torch.Tensor]:
    """A module's output tensor: itself, or the first tensor of a tuple/list (e.g. MultiheadAttention's)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def _message_passing_class():
    try:
        from torch_geometric.nn.conv import MessagePassing
    except ImportError:  # PyG is a dependency, but collect must not need it for magnn-only models
        return None
    return MessagePassing


def _fill(target: EdgeStats, tensor: torch.Tensor, heads: int) -> None:
    """One tapped tensor into `target` (reduced at its resolution); PyG-tapped calls only."""
    if tensor.dim() == 0 or not tensor.is_floating_point():
        return
    rows = tensor.shape[0]
    edge_types = target.edge_types if target.tap == "edge" else None
    if edge_types is not None and edge_types.shape[0] != rows:
        raise UserError(
            f"collect(edge_types=...): a layer's messages have {rows} rows but edge_types has "
            f"{edge_types.shape[0]} entries (the layer adds or removes edges, e.g. GATConv's self-loops); "
            "collect without edge_types, or build the layer so that it keeps the graph's edges (add_self_loops=False)")
    target.add(reduce_tensor(tensor, target.mantissa_bits), heads)


def _message_hook(target: EdgeStats):
    """PyG message-forward hook: reduce the per-edge messages [E, ...] (heads = dim 1 of [E, H, D])."""
    def hook(module, inputs, message):
        if isinstance(message, torch.Tensor) and message.dim() >= 1 and not recomputing():
            _fill(target, message, message.shape[1] if message.dim() == 3 else 1)
    return hook


def _output_hook(target: EdgeStats):
    """Forward hook on a module: its output as rows [-1, last dim] (node-level statistics)."""
    def hook(module, inputs, output):
        tensor = _first_tensor(output)
        if tensor is not None and tensor.dim() >= 1 and not recomputing():
            _fill(target, tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(-1, 1), 1)
    return hook


@contextlib.contextmanager
def collect(model: torch.nn.Module, *, modules: Sequence[str] = (), **stats_kwargs) -> Iterator[dict[str, EdgeStats]]:
    """Attach a fresh `EdgeStats` to every attention layer of `model`, named by module path.

        with magnn.stats.collect(model) as stats:
            model(batch)
        print({name: s.max_ratio() for name, s in stats.items()})

    Attention layers are magnn's (`FusedEdgeAttention` and every other `StatsTap`: the
    statistics come out of the kernels) and every PyG `MessagePassing` module that is not
    one of magnn's (TransformerConv, GATConv, GINEConv, the convs inside GPSConv, ...).
    A PyG layer is tapped through its message-forward hook: each call's messages [E, ...]
    (flattened to [E, C]; heads from [E, H, D]) are reduced to the same statistics right
    away and not kept. PyG layers that run fused (`message_and_aggregate`, e.g. on a
    SparseTensor adjacency) never call `message` and report no calls. With
    ``tap="node"`` a PyG layer's output (its aggregated node features) is tapped instead.

    modules: extra module paths whose *output* is tapped (e.g. ``["gps.attn"]``, a dense
    MultiheadAttention): node-level statistics (rows = the output's leading dims, C = its
    last dim; the first tensor of a tuple output), under the same name, or ``name:output``
    when that module is already collected as an attention layer.

    Blocks nest: each layer keeps a list of its active collectors, and every
    call of the layer is added to each of them (with each one's own settings);
    leaving a block detaches only that block's collectors. Calls made while autograd
    recomputes a forward add nothing (activation checkpointing, use_reentrant True or False,
    around magnn layers, PyG layers or whole models: see `recomputing`), so a checkpointed
    model reports the statistics of an uncheckpointed one.
    """
    message_passing = _message_passing_class()
    named = list(model.named_modules())
    taps = [(name, m) for name, m in named if isinstance(m, StatsTap)]
    inside_tap = {id(child) for _, m in taps for child in m.modules()}
    pyg = [(name, m) for name, m in named if message_passing is not None and isinstance(m, message_passing)
           and id(m) not in inside_tap]
    modules = [modules] if isinstance(modules, str) else list(modules)
    outputs = []
    for name in modules:
        try:
            outputs.append((name, model.get_submodule(name)))
        except AttributeError:
            known = [n for n, _ in named if n]
            raise NothingToCollect(
                f"collect(modules=[{name!r}]): the model has no module {name!r}; pass a path from "
                f"model.named_modules() (e.g. {', '.join(known[:6])}{', ...' if len(known) > 6 else ''})") from None
    if not taps and not pyg and not outputs:
        raise NothingToCollect(
            "collect(model): the model has no magnn attention layer (FusedEdgeAttention or another StatsTap) and "
            "no PyG MessagePassing layer; pass modules=[...] to tap other modules' outputs")
    collected = {name: EdgeStats(**stats_kwargs) for name, _ in taps + pyg}
    node_kwargs = {**stats_kwargs, "tap": "node"}
    node_kwargs.pop("edge_types", None)
    output_names = []
    for name, _ in outputs:
        key = name if name not in collected else f"{name}:output"
        collected[key] = EdgeStats(**node_kwargs)
        output_names.append(key)
    handles = []
    try:
        for name, module in taps:
            module.attach_collector(collected[name])
        for name, module in pyg:
            stats = collected[name]
            if stats.tap == "node":
                handles.append(module.register_forward_hook(_output_hook(stats)))
            else:
                handles.append(module.register_message_forward_hook(_message_hook(stats)))
        for key, (_, module) in zip(output_names, outputs):
            handles.append(module.register_forward_hook(_output_hook(collected[key])))
        yield collected
    finally:
        for handle in handles:
            handle.remove()
        for name, module in taps:
            module.detach_collector(collected[name])
