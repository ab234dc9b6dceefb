"""Processes under torchrun: who this process is, joining the group, merged statistics.

The one place that reads the process group: training (magnn.train), the detections
(magnn.analysis.detect) and the statistics merge below all ask it here.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .stats import EdgeStats


def is_distributed() -> bool:
    """True inside an initialised process group (torchrun, WORLD_SIZE > 1)."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str = "auto") -> str:
    """The device this process runs on. "auto": cuda when a CUDA device is visible, else cpu. Under
    torchrun (LOCAL_RANK set), a bare "cuda" becomes cuda:LOCAL_RANK, so the ranks of one machine
    with several GPUs each take their own (torchrun numbers them 0..nproc_per_node-1 per machine);
    an explicit index ("cuda:1") is kept as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{int(local_rank)}"
    return device


def init_from_env(device: str) -> bool:
    """Join the process group torchrun set up (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA.
    Returns whether a process group is initialised."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def all_reduce_stats(stats: dict[str, EdgeStats]) -> dict[str, EdgeStats]:
    """Merge per-layer `EdgeStats` of all ranks, in rank order, on every rank.

    Histograms and counts add exactly, so the result equals one process that
    saw rank 0's batches, then rank 1's, and so on. Without an initialised
    process group this returns `stats` unchanged.
    """
    if not is_distributed() or dist.get_world_size() == 1:
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
