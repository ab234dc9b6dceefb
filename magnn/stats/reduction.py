"""The reduction dispatch: a materialised tensor to `RawStats` (`reduce_tensor`), on the cpu
backend's C++ row reduction when it is usable, else with `magnn.core.binning.reduce_rows`
in bounded row chunks. The kernels reduce their own outputs; this is for what `collect`
taps outside them (PyG messages, module outputs) and for `EdgeStats`' per-row pass.
"""
from __future__ import annotations

import math

import torch

from ..core.binning import RawStats, reduce_rows
from ..core.constants import DEFAULT_MANTISSA_BITS

__all__ = ["REDUCE_CHUNK_VALUES", "reduce_tensor", "cpu_reduction_usable"]


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
    if backend == "auto" and cpu_reduction_usable(tapped):
        from ..backends.cpu import reduce_rows_cpu

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


def cpu_reduction_usable(tapped: torch.Tensor, build: bool = True) -> bool:
    """True when `tapped` can be reduced by the cpu backend's C++ ops (the fastest here): a floating
    CPU tensor, and the extension builds (a failed build is remembered: torch path then); with
    build=False only when this process has already loaded it."""
    if tapped.device.type != "cpu" or not tapped.is_floating_point():
        return False
    from ..backends import cpu

    if not build:
        return cpu.is_loaded()
    return cpu.unavailable_reason(tapped.device, tapped.dtype) is None
