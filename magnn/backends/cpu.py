"""The C++ CPU backend (csrc/): JIT build, autograd wrapper, backend entry point.

The kernels are compiled on first use with `torch.utils.cpp_extension.load`
(no network, no isolated build env) and cached in torch's extension directory
(`$TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`); `build()`
prebuilds them (the `magnn build-ext` command). They register the torch ops
`torch.ops.magnn_cpu.edge_attention_fwd` / `edge_attention_bwd`.

Backend contract (see `magnn.functional`)::

    run_cpu_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params,
                    mantissa_bits, tap) -> (node_out, edge_out, RawStats | None)
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ..core.graph import Graph
from ..core.binning import RawStats, reduce_rows

EXTENSION_NAME = "magnn_cpu_ops"
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# csrc/ sits next to the magnn/ package in the repository
CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ("registration.cpp", "edge_attention.cpp")

_lock = threading.Lock()
_library_path: Optional[str] = None
_build_error: Optional[str] = None


def _compiler() -> Optional[str]:
    # torch.utils.cpp_extension compiles with $CXX, else `c++`
    return shutil.which(os.environ.get("CXX", "c++"))


def _build_flags() -> tuple[list[str], list[str]]:
    cflags = ["-O3"]
    ldflags: list[str] = []
    # ATen's parallel_for only runs in parallel when compiled with OpenMP;
    # the process already has torch's libgomp loaded, so the symbols resolve to it
    if torch.backends.openmp.is_available():
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def _load(verbose: bool = False, retry: bool = False) -> str:
    """Build (if needed) and load the extension; returns the library path.

    A failure is remembered, so later calls in this process answer at once with
    the same short reason; `retry=True` tries again (what `build()` does).
    """
    global _library_path, _build_error
    with _lock:
        if _library_path is not None:
            return _library_path
        if _build_error is not None and not retry:
            raise RuntimeError(_build_error)
        try:
            _library_path = _compile_and_load(verbose)
        except Exception as error:
            _build_error = _describe_failure(error)
            raise
        _build_error = None
        _register_fakes()
        return _library_path


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_fakes() -> None:
    """Shape-only (meta) versions of the two ops, so torch.compile traces models using them."""
    from ..core.binning import num_bins

    @torch.library.register_fake("magnn_cpu::edge_attention_fwd")
    def _fwd_fake(q, k, v, e, rowptr, col, perm, src, dst, bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp, mantissa_bits):
        bins = num_bins(mantissa_bits) if mantissa_bits >= 0 else 0
        rows = e.shape[0] if mantissa_bits >= 0 else 0
        scalar = lambda dtype: q.new_empty((), dtype=dtype)
        return (
            torch.empty_like(q), torch.empty_like(e),
            q.new_empty((q.shape[0], 2, q.shape[1]), dtype=_accumulation_dtype(q.dtype)),  # lse: row max, log sum
            q.new_empty(bins, dtype=torch.int64), q.new_empty(bins, dtype=torch.int64),
            q.new_empty(rows, dtype=torch.float32), q.new_empty(rows, dtype=torch.float32),
            scalar(torch.int64), scalar(torch.float32), scalar(torch.int64),
        )

    @torch.library.register_fake("magnn_cpu::edge_attention_bwd")
    def _bwd_fake(grad_node, grad_edge, q, k, v, e, lse, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                  bias, ebt_k, ebt_e, ebt_v, mode, ebt, clamp):
        accumulation = _accumulation_dtype(q.dtype)
        optional = lambda t: q.new_empty(t.shape if t is not None else (0,), dtype=accumulation)
        return (
            torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(e),
            optional(bias), optional(ebt_k), optional(ebt_e), optional(ebt_v),
        )


def _compile_and_load(verbose: bool) -> str:
    from torch.utils import cpp_extension

    if _compiler() is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja, which torch.utils.cpp_extension needs, is not installed (pip install ninja)")
    sources = [CSRC_DIR / name for name in SOURCES]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise RuntimeError(f"C++ sources not found: {', '.join(missing)} (csrc/ must sit next to the magnn package)")
    cflags, ldflags = _build_flags()
    path = cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(path) for path in sources],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        extra_include_paths=[str(CSRC_DIR)],
        is_python_module=False,
        verbose=verbose,
    )
    if not hasattr(torch.ops.magnn_cpu, "edge_attention_fwd"):
        raise RuntimeError(f"{path} loaded but did not register torch.ops.magnn_cpu")
    return str(path)


def _describe_failure(error: Exception) -> str:
    """One line for warnings and `magnn info`; the full compiler output stays in build()'s error."""
    text = str(error).strip() or type(error).__name__
    if "Error building extension" in text:
        return "building the C++ extension failed; run `magnn build-ext` to see the compiler output"
    return text.splitlines()[0]


def build(verbose: bool = False) -> str:
    """Compile the C++ kernels now (normally done on first use); returns the library path.

    Raises the build's own error, compiler output included, when it fails.
    """
    return _load(verbose=verbose, retry=True)


def unavailable_reason(device, dtype) -> Optional[str]:
    """None when the cpu backend can run on `device` tensors of `dtype`, else why not; never raises."""
    try:
        if torch.device(device).type != "cpu":
            return f"the cpu backend runs on CPU tensors only, not {torch.device(device).type}"
        if dtype not in SUPPORTED_DTYPES:
            return f"the cpu backend supports float32, float64, bfloat16 and float16, not {dtype}"
        _load()
        return None
    except Exception as error:
        return _build_error or _describe_failure(error)


class _EdgeAttentionCpu(torch.autograd.Function):
    """Wraps the two ops; backward recomputes scores from the saved lse [N, 2, H] (row max, log sum)."""

    @staticmethod
    def forward(ctx, q, k, v, e, bias, k_b, e_b, v_b, graph: Graph, mode, ebt, clamp, mantissa_bits):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no [E, H, D] zeros
        outputs = torch.ops.magnn_cpu.edge_attention_fwd(
            q, k, v, e, graph.rowptr, graph.col, graph.perm, graph.src.contiguous(), graph.dst.contiguous(),
            bias, k_b, e_b, v_b, mode, ebt, clamp,
            -1 if mantissa_bits is None else mantissa_bits,
        )
        node_out, edge_out, lse, *stats = outputs
        ctx.save_for_backward(q, k, v, e, lse, bias, k_b, e_b, v_b)
        ctx.graph, ctx.mode, ctx.ebt, ctx.clamp = graph, mode, ebt, clamp
        ctx.mark_non_differentiable(*stats)
        return (node_out, edge_out, *stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_node, grad_edge, *unused_stats_grads):
        q, k, v, e, lse, bias, k_b, e_b, v_b = ctx.saved_tensors
        no_grads = (None,) * 13
        if grad_node is None and grad_edge is None:
            return no_grads
        graph = ctx.graph
        dq, dk, dv, de, dbias, dk_b, de_b, dv_b = torch.ops.magnn_cpu.edge_attention_bwd(
            grad_node, grad_edge, q, k, v, e, lse,
            graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm,
            bias, k_b, e_b, v_b, ctx.mode, ctx.ebt, ctx.clamp,
        )
        need = ctx.needs_input_grad
        return (
            dq if need[0] else None,
            dk if need[1] else None,
            dv if need[2] else None,
            de if need[3] else None,
            dbias.to(bias.dtype) if need[4] else None,
            dk_b.to(k_b.dtype) if need[5] else None,
            de_b.to(e_b.dtype) if need[6] else None,
            dv_b.to(v_b.dtype) if need[7] else None,
        ) + (None,) * 5


def run_cpu_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params, mantissa_bits, tap):
    """Backend entry point: the same contract as `magnn._reference.run_torch_backend`."""
    if _library_path is None:  # checked first so torch.compile never traces the lock in _load
        _load()  # raises with the reason if the extension cannot be built
    graph.check_index_bounds()  # an unvalidated graph's indices, once: the kernels trust them
    k_b, e_b, v_b = ebt_params if ebt is not None else (None, None, None)
    in_kernel_stats = mantissa_bits is not None and tap == "edge"
    node_out, edge_out, hist_abs, hist_ratio, row_ratio, row_max_abs, nan_count, max_abs, argmax = (
        _EdgeAttentionCpu.apply(
            q, k, v, e, bias, k_b, e_b, v_b, graph, mode, ebt, clamp, mantissa_bits if in_kernel_stats else None
        )
    )
    raw: Optional[RawStats] = None
    if in_kernel_stats:
        channels = q.shape[1] * q.shape[2]
        raw = RawStats(
            hist_abs=hist_abs,
            hist_ratio=hist_ratio,
            row_ratio=row_ratio,
            nan_count=nan_count,
            max_abs=max_abs,
            argmax=argmax,
            count=edge_out.shape[0] * channels,
            channels=channels,
            row_max_abs=row_max_abs,
        )
    elif mantissa_bits is not None:  # tap="node": node_out is only [N, H, D]
        raw = reduce_rows(node_out.detach().reshape(node_out.shape[0], q.shape[1] * q.shape[2]), mantissa_bits)
    return node_out, edge_out, raw
