"""Statistics across processes: every rank ends with the same merged numbers."""
from __future__ import annotations

import torch.distributed as dist

from .stats import EdgeStats


def all_reduce_stats(stats: dict[str, EdgeStats]) -> dict[str, EdgeStats]:
    """Merge per-layer `EdgeStats` of all ranks, in rank order, on every rank.

    Histograms and counts add exactly, so the result equals one process that
    saw rank 0's batches, then rank 1's, and so on. Without an initialised
    process group this returns `stats` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, stats)
    merged = {}
    for name in stats:
        total = EdgeStats(
            mantissa_bits=stats[name].mantissa_bits, keep_edge_ratio=stats[name].keep_edge_ratio,
            threshold=stats[name].threshold, min_abs=stats[name].min_abs, tap=stats[name].tap,
        )
        for rank_stats in gathered:
            total.merge(rank_stats[name])
        merged[name] = total
    return merged
