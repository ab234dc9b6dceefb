"""Massive-activation statistics (SPEC §4): `EdgeStats`, `LogHistogram`, `collect`.

Every backend reduces a tapped tensor A ([rows, C], C = H*D) to a `RawStats`
(`magnn.core.binning`: the binning, per-row lower medians and the reference
reduction `reduce_rows` are defined there). Four modules, bottom up:

* `reduction`: `reduce_tensor`, a materialised tensor to `RawStats` (C++ or torch).
* `types`: `LogHistogram`, `EdgeStats` (the accumulated numbers and what derives
  from them).
* `attention`: `AttentionStats`, the sink mass and edge entropy of each (node, head).
* `collection`: how statistics reach an EdgeStats (`add_to_all`, which skips a
  forward that autograd recomputes): through
  `magnn.functional.edge_attention(stats=...)`, to which every `StatsTap` layer
  hands the collectors `collect` attached, or through PyG's hooks.

Every public name is importable from `magnn.stats`.
"""
from __future__ import annotations

from ..core.binning import (  # noqa: F401  (re-exported: magnn.stats is where users look)
    SMALLEST_NORMAL, RawStats, bin_index, bin_lower_bound, coarsen_counts, finite_or_none, json_safe,
    mantissa_bits_of, num_bins, reduce_rows, row_lower_median,
)
from ..core.errors import NothingToCollect  # noqa: F401
from .attention import AttentionStats  # noqa: F401
from .collection import (  # noqa: F401
    StatsArg, StatsTap, add_to_all, collect, collect_attention, recomputing, stats_targets,
)
from .reduction import REDUCE_CHUNK_VALUES, reduce_tensor  # noqa: F401
from .types import EdgeStats, LogHistogram  # noqa: F401

__all__ = [
    "EdgeStats", "LogHistogram", "AttentionStats", "add_to_all", "collect", "collect_attention", "StatsTap", "StatsArg", "stats_targets", "recomputing",
    "reduce_tensor", "REDUCE_CHUNK_VALUES", "NothingToCollect", "RawStats", "SMALLEST_NORMAL", "bin_index",
    "bin_lower_bound", "coarsen_counts", "finite_or_none", "json_safe", "mantissa_bits_of", "num_bins",
    "reduce_rows", "row_lower_median",
]
