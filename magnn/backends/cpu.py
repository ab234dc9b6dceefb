"""The C++ CPU backend (csrc/): JIT build, op registration, backend entry point.

The kernels are compiled on first use with `torch.utils.cpp_extension.load`
(no network, no isolated build env) and cached in torch's extension directory
(`$TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`); `build()`
prebuilds them (the `magnn build-ext` command). They define the torch ops
`torch.ops.magnn_cpu.edge_attention_fwd` / `edge_attention_bwd` with the
compiled-op contract of `magnn.core.contract` (the Triton ops' arguments,
order and results); this module attaches their fake kernels and autograd
formula with `torch.library.register_fake` / `register_autograd`, as the
Triton backend does. A third op, `torch.ops.magnn_cpu.reduce_rows` (outside
the contract, CPU only), reduces a materialised [rows, C] tensor with the same
row-statistics code as the forward (`reduce_rows_cpu`; what
`magnn.stats.reduce_tensor` uses for the PyG message hooks).

The sources ship inside the installed package (`magnn/_csrc`, which
pyproject.toml maps onto the repository's top-level `csrc/`); a source
checkout or an editable install uses `csrc/` beside the package.

Backend contract (see `magnn.functional`)::

    run_cpu_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params,
                    mantissa_bits, tap, return_lse=False, dropout=0.0, seed=0,
                    need_edge_out=True, edge_proj=None, sink=None, gate=None)
        -> (node_out, edge_out | None, RawStats | None[, lse [N, H]])
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..core import contract
from ..core.binning import RawStats, reduce_rows
from ..core.dropout import op_seed
from ..core.contract import (
    BackwardResult,
    ForwardResult,
    ebt_name,
    logsumexp,
)

EXTENSION_NAME = "magnn_cpu_ops"
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SOURCES = ("registration.cpp", "edge_attention.cpp", "row_stats.h")
# where the sources are looked for, in order: shipped in the installed package
# (a wheel install), then csrc/ beside the package (a source checkout, an editable install)
INSTALLED_CSRC_DIR = Path(__file__).resolve().parents[1] / "_csrc"
CHECKOUT_CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"

_lock = threading.Lock()
_library_path: Optional[str] = None
_build_error: Optional[str] = None
_python_impls_registered = False


def csrc_dir() -> Optional[Path]:
    """The folder holding the C++ sources: the installed copy first, else the checkout's; None if neither."""
    for candidate in (INSTALLED_CSRC_DIR, CHECKOUT_CSRC_DIR):
        if all((candidate / name).is_file() for name in SOURCES):
            return candidate
    return None


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
        _register_python_impls()
        return _library_path


def _register_python_impls() -> None:
    """The fake kernels and autograd formula of the C++-defined ops (magnn.core.contract's,
    shared with the Triton ops), once per process."""
    global _python_impls_registered
    if _python_impls_registered:
        return
    contract.register_fakes_and_autograd(contract.OP_NAMESPACES["cpu"])
    contract.register_proj_fakes_and_autograd(contract.OP_NAMESPACES["cpu"])
    torch.library.register_fake("magnn_cpu::reduce_rows")(_reduce_rows_fake)
    _python_impls_registered = True


def _reduce_rows_fake(rows, mantissa_bits):
    bins = 1 << (8 + mantissa_bits)
    i64, f32 = dict(dtype=torch.int64, device=rows.device), dict(dtype=torch.float32, device=rows.device)
    return (rows.new_empty(bins, **i64), rows.new_empty(bins, **i64), rows.new_empty(rows.shape[0], **f32),
            rows.new_empty(rows.shape[0], **f32), rows.new_empty((), **i64), rows.new_empty((), **f32),
            rows.new_empty((), **i64))


def is_loaded() -> bool:
    """True once the extension is built and loaded in this process (never builds it)."""
    return _library_path is not None


def summarize_ratios_cpu(row_ratio: torch.Tensor, mantissa_bits: int, threshold: float,
                         row_max_abs: Optional[torch.Tensor] = None, min_abs: Optional[float] = None):
    """What `EdgeStats.add` derives from a call's float32 per-row ratios, in one serial C++ pass
    (`magnn_cpu::summarize_ratios`): (histogram counts of the non-NaN ratios, how many there are,
    their max as a float (-inf if none), bool mask of the rows with ratio > threshold and, when
    min_abs is given, row_max_abs > min_abs, how many rows that mask holds)."""
    if _library_path is None:
        _load()
    counts, valid, largest, massive, massive_count = torch.ops.magnn_cpu.summarize_ratios(
        row_ratio, mantissa_bits, float(threshold), row_max_abs, None if min_abs is None else float(min_abs))
    return counts, int(valid), float(largest), massive, int(massive_count)


def reduce_rows_cpu(tapped: torch.Tensor, mantissa_bits: int = 7) -> RawStats:
    """`magnn.core.binning.reduce_rows` of a CPU tensor [rows, ...] (flattened to [rows, C]) by the C++ op
    `magnn_cpu::reduce_rows`: the same `RawStats`, from the row reduction the forward's in-kernel statistics
    use, on the intra-op threads and without float32 copies of the whole tensor. Builds the extension on
    first use (raises if it cannot; `unavailable_reason` says whether it can)."""
    if _library_path is None:
        _load()
    rows = tapped.shape[0] if tapped.dim() else 1
    channels = math.prod(tapped.shape[1:]) if tapped.dim() else 1
    flat = tapped.detach().reshape(rows, channels)
    hist_abs, hist_ratio, row_ratio, row_max_abs, nan_count, max_abs, argmax = torch.ops.magnn_cpu.reduce_rows(
        flat, mantissa_bits)
    return RawStats(hist_abs=hist_abs, hist_ratio=hist_ratio, row_ratio=row_ratio, nan_count=nan_count,
                    max_abs=max_abs, argmax=argmax, count=rows * channels, channels=channels,
                    row_max_abs=row_max_abs)


def edge_attention_fwd(q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v,
                       sink, gate, mode: str, ebt: str, clamp: Optional[float], dropout: float, seed: int,
                       mantissa_bits: int, need_edge_out: bool = True) -> ForwardResult:
    """`torch.ops.magnn_cpu.edge_attention_fwd` (arguments: `contract.FORWARD_ARGS`) as a `ForwardResult`."""
    return ForwardResult(*torch.ops.magnn_cpu.edge_attention_fwd(
        q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate,
        mode, ebt, clamp, dropout, seed, mantissa_bits, need_edge_out,
    ))


def edge_attention_bwd(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out, rowptr, col, perm,
                       rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink, gate,
                       mode: str, ebt: str, clamp: Optional[float], dropout: float = 0.0,
                       seed: int = 0) -> BackwardResult:
    """`torch.ops.magnn_cpu.edge_attention_bwd` (arguments: `contract.BACKWARD_ARGS`) as a `BackwardResult`."""
    return BackwardResult(*torch.ops.magnn_cpu.edge_attention_bwd(
        grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
        bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout, seed,
    ))


def _compile_and_load(verbose: bool) -> str:
    from torch.utils import cpp_extension

    folder = csrc_dir()
    if folder is None:
        raise RuntimeError(
            f"C++ sources ({', '.join(SOURCES)}) not found in {INSTALLED_CSRC_DIR} (installed package) "
            f"or {CHECKOUT_CSRC_DIR} (source checkout); reinstall magnn"
        )
    cflags, ldflags = _build_flags()
    directory = build_directory()
    missing = _missing_build_tool(cpp_extension)
    if missing is not None:
        prebuilt = prebuilt_library(folder, directory)
        if prebuilt is None:
            raise RuntimeError(f"{missing}, and no prebuilt extension of these sources is in {directory}")
        torch.ops.load_library(prebuilt)
        if not hasattr(torch.ops.magnn_cpu, "edge_attention_fwd"):
            raise RuntimeError(f"{prebuilt} loaded but did not register torch.ops.magnn_cpu")
        return prebuilt
    with build_guard(directory):
        path = cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(folder / name) for name in SOURCES if name.endswith(".cpp")],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            extra_include_paths=[str(folder)],
            build_directory=str(directory),
            is_python_module=False,
            verbose=verbose,
        )
    if not hasattr(torch.ops.magnn_cpu, "edge_attention_fwd"):
        raise RuntimeError(f"{path} loaded but did not register torch.ops.magnn_cpu")
    _write_stamp(directory / SOURCES_STAMP, sources_digest(folder))
    return str(path)


# -- a prebuilt extension serves without a compiler ---------------------------------------------
# Each successful build writes SOURCES_STAMP beside the library: the digest of the sources, the
# flags and torch's version it was built from. Without a compiler (or ninja), a library whose stamp
# matches the current digest is loaded as it is; any other is refused (it may be stale).
SOURCES_STAMP = "magnn-sources.sha256"


def sources_digest(folder: Path) -> str:
    """sha256 of the C++ sources (names and contents), the build flags and torch's version."""
    digest = hashlib.sha256()
    for name in sorted(SOURCES):
        digest.update(name.encode() + b"\0" + (Path(folder) / name).read_bytes() + b"\0")
    digest.update(repr(_build_flags()).encode() + torch.__version__.encode())
    return digest.hexdigest()


def prebuilt_library(folder: Path, directory: Path) -> Optional[str]:
    """The built library in `directory` when its stamp matches the sources in `folder`, else None."""
    library, stamp = Path(directory) / f"{EXTENSION_NAME}.so", Path(directory) / SOURCES_STAMP
    if library.is_file() and stamp.is_file() and stamp.read_text().strip() == sources_digest(folder):
        return str(library)
    return None


def _missing_build_tool(cpp_extension) -> Optional[str]:
    if _compiler() is None:
        return "no C++ compiler found (install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja, which torch.utils.cpp_extension needs, is not installed (pip install ninja)"
    return None


def _write_stamp(path: Path, digest: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(digest + "\n")
    os.replace(temporary, path)  # atomic: a reader sees the old stamp or the new one


# -- an interrupted build must not block every later one ------------------------------------
# torch.utils.cpp_extension serialises builds with a FileBaton: an empty file "lock" in the build
# folder, created with O_EXCL and removed when the build ends. A build killed (kill -9, OOM, a
# closed terminal) leaves it behind and every later load waits for it forever, silently. magnn
# therefore holds its own lock around the whole build: an flock on OWNER_LOCK, which the kernel
# releases when its process dies however it dies, with the holder's pid written inside. Holding
# it means no magnn build is running, so a FileBaton lock found then is stale: it is removed (with
# a warning naming it). A build that is really running is waited for, and named within seconds.
TORCH_BUILD_LOCK = "lock"
OWNER_LOCK = "magnn-build.lock"
OWNER_WAIT_REPORT_S = 2.0  # a wait for another process's build is reported after this long
# without flock (Windows): a FileBaton lock older than this is taken for stale (a build takes minutes)
STALE_LOCK_AGE_S = 30 * 60


class BuildLockWarning(RuntimeWarning):
    """The C++ build found a stale lock and removed it, or waits for another process's build."""


def build_directory() -> Path:
    """The folder the extension is built in: torch's own choice for it ($TORCH_EXTENSIONS_DIR/<name>,
    else torch's default root), created if missing."""
    from torch.utils import cpp_extension

    find = getattr(cpp_extension, "_get_build_directory", None)
    if find is not None:
        return Path(find(EXTENSION_NAME, False))
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    directory = Path(root) / EXTENSION_NAME
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _owner_of(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    if "pid" not in owner:
        return "another process"
    started = owner.get("started")
    since = f", started {time.time() - started:.0f} s ago" if isinstance(started, (int, float)) else ""
    return f"process {owner['pid']}{' on ' + owner['host'] if owner.get('host') else ''}{since}"


@contextlib.contextmanager
def build_guard(directory: Path, *, report_after: float = OWNER_WAIT_REPORT_S):
    """Held around `cpp_extension.load`: waits for a live build by another process (saying so after
    `report_after` seconds, with its pid and the lock's path), then removes a stale FileBaton lock."""
    try:
        import fcntl
    except ImportError:  # no flock here: judge the FileBaton lock by its age alone
        _clear_stale_lock(Path(directory), None, max_age=STALE_LOCK_AGE_S)
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    owner_path = directory / OWNER_LOCK
    with open(owner_path, "a+") as handle:
        started, reported = time.monotonic(), False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not reported and time.monotonic() - started >= report_after:
                    warnings.warn(
                        f"magnn: waiting for the C++ extension build of {_owner_of(owner_path)} to finish "
                        f"(it holds {owner_path}); it continues on its own when that build ends. If that "
                        "process is stuck, end it: the lock goes with it", BuildLockWarning, stacklevel=4)
                    reported = True
                time.sleep(0.1)
        try:
            _clear_stale_lock(directory, owner_path)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": os.uname().nodename if hasattr(os, "uname") else "",
                                     "started": time.time()}))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_stale_lock(directory: Path, owner_path: Optional[Path], max_age: Optional[float] = None) -> None:
    """Removes torch's FileBaton lock in `directory`: always when we hold `owner_path` (no magnn build
    runs), else (no flock) only when it is older than `max_age` seconds."""
    lock = Path(directory) / TORCH_BUILD_LOCK
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if owner_path is None and (max_age is None or age < max_age):
        warnings.warn(
            f"magnn: the C++ extension build lock {lock} exists ({age:.0f} s old): a build is running, or one "
            f"was interrupted; the build waits for it. If no build is running, delete {lock}",
            BuildLockWarning, stacklevel=4)
        return
    try:
        lock.unlink()
    except FileNotFoundError:
        return
    why = f"no build holds {owner_path}" if owner_path is not None else f"older than {max_age:.0f} s"
    warnings.warn(
        f"magnn: removed the stale C++ extension build lock {lock} ({age:.0f} s old; {why}): an earlier "
        "build was interrupted (e.g. killed) and left it, which would make every build wait forever",
        BuildLockWarning, stacklevel=4)


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


def run_cpu_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params, mantissa_bits, tap,
                    return_lse: bool = False, dropout: float = 0.0, seed: int = 0, need_edge_out: bool = True,
                    edge_proj=None, sink=None, gate=None):
    """Backend entry point: the same contract as `magnn.backends.reference.run_torch_backend`.

    Returns (node_out, edge_out, RawStats | None) (edge_out None with need_edge_out=False: not
    written, its rows still reduced for the statistics), and with `return_lse=True` also the
    [N, H] log-sum-exp of each (node, head)'s softmax (-inf where nothing is attended),
    differentiable. `dropout` > 0 drops attention weights with the counter-based mask of
    (seed, edge id, head) (SPEC §3); the graph may be bipartite (k, v over its num_src_nodes).
    `sink` [H] (the sink logit, already clipped to the clamp) and `gate` [N_dst, H] (gate logits), both
    in the accumulation dtype, go into the kernels (SPEC §3, "Sink and gate"): node_out comes back gated,
    lse sink-inclusive, with gradients for both.
    """
    if _library_path is None:  # checked first so torch.compile never traces the lock in _load
        _load()  # raises with the reason if the extension cannot be built
    graph.check_index_bounds()  # an unvalidated graph's indices, once: the kernels trust them
    ebt_k, ebt_e, ebt_v = ebt_params if ebt is not None else (None, None, None)
    w_e, b_e = edge_proj if edge_proj is not None else (None, None)
    differentiable = [q, k, v, e, w_e, b_e, bias, ebt_k, ebt_e, ebt_v, sink, gate]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)
    # the reverse CSR is only built and carried when a backward can follow
    reverse = (graph.rev_rowptr, graph.rev_col, graph.rev_perm) if needs_grad else (None, None, None)
    in_kernel_stats = mantissa_bits is not None and tap == "edge"
    options = (bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt_name(ebt), clamp, float(dropout),
               op_seed(seed) if dropout > 0 else 0, mantissa_bits if in_kernel_stats else -1, need_edge_out)
    if edge_proj is None:
        result = edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, *reverse, *options)
    else:  # e is the raw [E, F] features: e = W a + b is formed per edge inside the kernels
        result = ForwardResult(*torch.ops.magnn_cpu.edge_attention_proj_fwd(
            q, k, v, e, w_e, b_e, graph.rowptr, graph.col, graph.perm, *reverse, *options))
    node_out, edge_out = result.node_out, result.edge_out if need_edge_out else None
    raw: Optional[RawStats] = None
    if in_kernel_stats:
        channels = q.shape[1] * q.shape[2]
        raw = RawStats(
            hist_abs=result.hist_abs,
            hist_ratio=result.hist_ratio,
            row_ratio=result.row_ratio,
            nan_count=result.nan_count,
            max_abs=result.max_abs,
            argmax=result.argmax,
            count=graph.num_edges * channels,
            channels=channels,
            row_max_abs=result.row_max_abs,
        )
    elif mantissa_bits is not None:  # tap="node": node_out is only [N, H, D]
        raw = reduce_rows(node_out.detach().reshape(node_out.shape[0], q.shape[1] * q.shape[2]), mantissa_bits)
    if return_lse:
        return node_out, edge_out, raw, logsumexp(result.lse)
    return node_out, edge_out, raw
