"""`AttentionStats`: the attention-sink mass and the edge entropy of each (node, head) (SPEC §4).

Per call and per (destination node i, head h), from the call's softmax:

- sink mass: the share of node i's attention that no edge takes, i.e. the EBT slot's
  weight plus the learned sink's (`edge_attention(sink=)`): exp(l_slot - lse_i) +
  exp(sink_h - lse_i); 0 without either; undefined (NaN, not binned) where nothing
  is attended;
- edge entropy: -sum_j p_ij log p_ij in nats over node i's incoming edges, with p the
  attention weights renormalised over the edges (p_ij = a_ij / sum_j a_ij), so it
  measures how spread the edge part is whatever the sink takes; 0 for one edge,
  log(deg) for uniform weights; undefined where no edge is attended.

Both are reduced like `EdgeStats`: exact log-binned integer histograms (a float32 value's
bin is its bit pattern shifted right, M mantissa bits kept) that add across calls, layers,
batches and processes, with counts, sums and maxima, also per in-degree bucket (0, 1, 2-3,
4-7, ...: `by_degree()`); optionally the per-row values (`keep_rows`) with each node's
in-degree, for relating them to MA edges and edge types (`magnn.analysis.sinks`). A
collector's histograms are exactly `LogHistogram.of` of the rows it was given.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core.constants import DEFAULT_MANTISSA_BITS
from .types import LogHistogram

__all__ = ["AttentionStats", "union_rows", "degree_bucket"]


class AttentionStats:
    """Collector of per-(node, head) sink mass and edge entropy for one attention layer.

    Pass it in `edge_attention(stats=...)` (alone or beside EdgeStats collectors) or attach
    it to every magnn attention layer with `magnn.stats.collect_attention(model)`.

    Args:
      mantissa_bits: histogram resolution M (bins of relative width 2^-M).
      keep_rows: keep every call's [N, H] sink mass and entropy and [N] in-degree.
    """

    tap = "attention"
    edge_types = None  # it counts by no edge type (the layers ask every collector)

    def __init__(self, mantissa_bits: int = DEFAULT_MANTISSA_BITS, keep_rows: bool = False):
        if not 0 <= mantissa_bits <= 23:
            raise ValueError(f"mantissa_bits must be in [0, 23], got {mantissa_bits}")
        self.mantissa_bits, self.keep_rows = mantissa_bits, bool(keep_rows)
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.heads: Optional[int] = None
        self.hist_sink_mass = LogHistogram(self.mantissa_bits)
        self.hist_entropy = LogHistogram(self.mantissa_bits)
        self.sink_rows = self.entropy_rows = 0  # (node, head) pairs where each is defined
        self.sink_mass_sum = self.entropy_sum = 0.0
        self.max_sink_mass = self.max_entropy = float("nan")
        # per in-degree bucket b (`degree_bucket`): [sink rows, sink sum, entropy rows, entropy sum]
        self.degree_buckets: dict[int, list] = {}
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, sink_mass: torch.Tensor, entropy: torch.Tensor, degree: torch.Tensor) -> None:
        """Folds one call in: sink_mass and entropy [N, H] (NaN where undefined), degree [N]
        (`magnn.functional` calls this). All or nothing: the checks run first."""
        if sink_mass.dim() != 2 or entropy.shape != sink_mass.shape or degree.shape != sink_mass.shape[:1]:
            raise ValueError(f"sink_mass and entropy must be [N, H] and degree [N], got {list(sink_mass.shape)}, "
                             f"{list(entropy.shape)} and {list(degree.shape)}")
        if self.heads is not None and sink_mass.shape[0] and sink_mass.shape[1] != self.heads:
            raise ValueError(f"stats collected {self.heads} heads before, got {sink_mass.shape[1]}")
        part = AttentionStats(self.mantissa_bits, self.keep_rows)
        rows = [t.detach().to("cpu", torch.float32) for t in (sink_mass, entropy)]
        for name, values in zip(("sink", "entropy"), rows):
            valid = values[~torch.isnan(values)]
            setattr(part, f"{name}_rows", int(valid.numel()))
            setattr(part, f"{name}_mass_sum" if name == "sink" else "entropy_sum", float(valid.double().sum()))
            setattr(part, "max_sink_mass" if name == "sink" else "max_entropy",
                    float(valid.max()) if valid.numel() else float("nan"))
            histogram = LogHistogram.of(valid, self.mantissa_bits)
            setattr(part, "hist_sink_mass" if name == "sink" else "hist_entropy", histogram)
        part.degree_buckets = _bucket_sums(rows[0], rows[1], degree.detach().to("cpu", torch.int64))
        part.heads = sink_mass.shape[1] if sink_mass.shape[0] else None
        part.calls = 1
        if self.keep_rows:
            part._parts.append((rows[0], rows[1], degree.detach().to("cpu", torch.int64)))
        self._absorb(part)

    def merge(self, other: "AttentionStats") -> "AttentionStats":
        """Adds `other`'s numbers (the same mantissa_bits; rows kept on both sides if kept here)."""
        if not isinstance(other, AttentionStats):
            raise TypeError(f"can only merge another AttentionStats, got {type(other).__name__}")
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError(f"mantissa_bits differs ({self.mantissa_bits} here, {other.mantissa_bits} in the other)")
        if self.keep_rows and not other.keep_rows and other.calls:
            raise ValueError("keep_rows differs (True here, False in the other): the rows would be missing")
        if self.heads is not None and other.heads is not None and self.heads != other.heads:
            raise ValueError(f"heads differs ({self.heads} here, {other.heads} in the other)")
        self._absorb(other)
        return self

    def _absorb(self, other: "AttentionStats") -> None:
        self.hist_sink_mass = LogHistogram(self.mantissa_bits, self.hist_sink_mass.counts + other.hist_sink_mass.counts)
        self.hist_entropy = LogHistogram(self.mantissa_bits, self.hist_entropy.counts + other.hist_entropy.counts)
        self.sink_rows += other.sink_rows
        self.entropy_rows += other.entropy_rows
        self.sink_mass_sum += other.sink_mass_sum
        self.entropy_sum += other.entropy_sum
        self.max_sink_mass = _nanmax(self.max_sink_mass, other.max_sink_mass)
        self.max_entropy = _nanmax(self.max_entropy, other.max_entropy)
        for bucket, sums in other.degree_buckets.items():
            mine = self.degree_buckets.setdefault(bucket, [0, 0.0, 0, 0.0])
            self.degree_buckets[bucket] = [a + b for a, b in zip(mine, sums)]
        if self.keep_rows:
            self._parts.extend(other._parts)
        self.heads = self.heads if self.heads is not None else other.heads
        self.calls += other.calls

    def rows(self) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(sink_mass [R, H], entropy [R, H], in-degree [R]) of every call, concatenated (keep_rows), else None."""
        if not self.keep_rows:
            return None
        if not self._parts:
            empty = torch.empty(0, self.heads or 0)
            return empty, empty.clone(), torch.empty(0, dtype=torch.int64)
        return tuple(torch.cat(column) for column in zip(*self._parts))

    def by_degree(self) -> list[dict]:
        """Per in-degree bucket, ascending: its degree range [low, high], the defined rows and the
        mean sink mass and edge entropy over them (None where a bucket has no defined row)."""
        table = []
        for bucket in sorted(self.degree_buckets):
            sink_rows, sink_sum, entropy_rows, entropy_sum = self.degree_buckets[bucket]
            low, high = (0, 0) if bucket == 0 else (1 << (bucket - 1), (1 << bucket) - 1)
            table.append({"degree_low": low, "degree_high": high, "sink_rows": sink_rows,
                          "mean_sink_mass": sink_sum / sink_rows if sink_rows else None,
                          "entropy_rows": entropy_rows,
                          "mean_entropy": entropy_sum / entropy_rows if entropy_rows else None})
        return table

    def to_dict(self) -> dict:
        """The numbers as plain JSON values: means over the defined rows, maxima, counts, and the
        lower medians (bin estimates) from the histograms."""
        def mean(total, count):
            return total / count if count else None

        def finite(value):
            return value if value == value and math.isfinite(value) else None

        return {
            "calls": self.calls, "heads": self.heads, "mantissa_bits": self.mantissa_bits,
            "sink_rows": self.sink_rows, "entropy_rows": self.entropy_rows,
            "mean_sink_mass": mean(self.sink_mass_sum, self.sink_rows),
            "max_sink_mass": finite(self.max_sink_mass),
            "median_sink_mass": finite(self.hist_sink_mass.lower_median()[0]),
            "mean_entropy": mean(self.entropy_sum, self.entropy_rows),
            "max_entropy": finite(self.max_entropy),
            "median_entropy": finite(self.hist_entropy.lower_median()[0]),
            "by_degree": self.by_degree(),
        }

    def __repr__(self) -> str:
        info = self.to_dict()
        return (f"AttentionStats(calls={self.calls}, mean_sink_mass={info['mean_sink_mass']}, "
                f"mean_entropy={info['mean_entropy']})")


def degree_bucket(degree: torch.Tensor) -> torch.Tensor:
    """The in-degree bucket of each node: 0 for degree 0, else floor(log2(degree)) + 1 (1, 2-3, 4-7, ...)."""
    bits = torch.zeros_like(degree)
    remaining = degree.clone()
    while bool((remaining > 0).any()):
        bits += (remaining > 0).to(bits.dtype)
        remaining >>= 1
    return bits


def _bucket_sums(sink_mass: torch.Tensor, entropy: torch.Tensor, degree: torch.Tensor) -> dict[int, list]:
    """{bucket: [sink rows, sink sum, entropy rows, entropy sum]} of one call's rows (NaN rows left out)."""
    buckets = degree_bucket(degree).unsqueeze(-1).expand_as(sink_mass)
    sums = {}
    for bucket in torch.unique(buckets).tolist():
        row = []
        for values in (sink_mass, entropy):
            chosen = values[(buckets == bucket) & ~torch.isnan(values)]
            row += [int(chosen.numel()), float(chosen.double().sum())]
        sums[bucket] = row
    return sums


def _nanmax(a: float, b: float) -> float:
    if a != a:
        return b
    return a if b != b else max(a, b)


def union_rows(parts, lses, log_weights, merged_lse):
    """(sink_mass, entropy, degree) of one softmax over disjoint edge sets, as `merge_attention` joins
    them (SAN's real + fake edges), from each part's own rows (`AttentionStats.rows()` of a collector
    that saw only that part's call), lse [N, H] and structural log-weight ([N], [N, H] or None).

    Part p holds the share W_p = exp(lse_p + s_p - lse) of the union; its edges take (1 - mass_p) W_p,
    its slot / sink mass_p W_p. The union's edge entropy is that of a mixture over disjoint supports:
    sum_p pi_p H_p - sum_p pi_p log pi_p, with pi_p the parts' edge shares renormalised."""
    work = torch.float64
    merged = merged_lse.detach().to(work)
    attended = torch.isfinite(merged)
    mass = torch.zeros_like(merged)
    edge_shares, entropies, degree = [], [], 0
    for (part_mass, part_entropy, part_degree), lse, weight in zip(parts, lses, log_weights):
        shifted = lse.detach().to(work) + (0 if weight is None else
                                           (weight.unsqueeze(-1) if weight.dim() == 1 else weight).to(work))
        share = torch.where(torch.isfinite(shifted) & attended, torch.exp(shifted - torch.where(
            attended, merged, torch.zeros_like(merged))), torch.zeros_like(merged))
        part_mass = torch.nan_to_num(part_mass.to(work), nan=0.0)
        mass = mass + part_mass * share
        edge_shares.append((1 - part_mass) * share)
        entropies.append(torch.nan_to_num(part_entropy.to(work), nan=0.0))
        degree = degree + part_degree
    total = sum(edge_shares)
    has_edges = total > 0
    entropy = torch.zeros_like(merged)
    for edge_share, part_entropy in zip(edge_shares, entropies):
        pi = edge_share / torch.where(has_edges, total, torch.ones_like(total))
        entropy = entropy + pi * part_entropy - torch.special.xlogy(pi, pi)
    nan = torch.full_like(merged, math.nan)
    return torch.where(attended, mass, nan), torch.where(has_edges, entropy, nan), degree
