"""File handling shared by the loaders: errors, bundled files, cache root, gzip checks."""
from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import threading
import zlib
from pathlib import Path
from typing import Any, Optional

import torch

from ..core.errors import CorruptDataError, MissingDataError, UntrustedFileError  # noqa: F401  (defined there; importable here)

__all__ = [
    "MissingDataError",
    "CorruptDataError",
    "BUNDLED_SHA256",
    "bundled_path",
    "default_root",
    "sha256_file",
    "scan_gzip_csv",
    "ALLOW_PICKLE_ENV",
    "UntrustedFileError",
    "pickle_allowed",
    "load_tensor_pickle",
    "weights_only_loads",
]


# -- no code from data files -------------------------------------------------------------------
# Unpickling runs whatever callables a file names, so magnn reads dataset files and caches as
# tensors and plain data only: torch.load with weights_only=True, and ZINC's raw pickles through an
# unpickler that knows tensors and nothing else. Anything more is refused, naming the file, unless
# the user says they trust it (allow_pickle=True, or this variable set to 1).
ALLOW_PICKLE_ENV = "MAGNN_ALLOW_PICKLE"


def pickle_allowed(allow_pickle: Optional[bool] = None) -> bool:
    """Whether the user opted in to full unpickling: allow_pickle=True, or $MAGNN_ALLOW_PICKLE=1."""
    if allow_pickle:
        return True
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def untrusted_message(path, what: str) -> str:
    return (
        f"{path} {what}; magnn does not unpickle it, because unpickling runs whatever code the file names. "
        "magnn reads dataset files and caches as tensors and plain data only. If you trust this file (you made "
        "it, or it comes from the dataset's official source), opt in with allow_pickle=True "
        f"(magnn.data.load_dataset / load_zinc / TOX21), --allow-pickle (magnn train / detect / study) or "
        f"{ALLOW_PICKLE_ENV}=1 in the environment; otherwise "
        "delete it (a processed cache is rebuilt from the raw files)")


def _storage_from_bytes(data: bytes):
    # what a pickled tensor's storage holds: torch.save bytes, read as weights only
    return torch.load(io.BytesIO(data), weights_only=True)


_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _TensorUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and torch tensors; any other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _TENSOR_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


class _Refused(Exception):
    pass


def load_tensor_pickle(path: str | os.PathLike, allow_pickle: Optional[bool] = None) -> Any:
    """A pickle file of tensors and plain data (lists, dicts, numbers, strings), read without running
    code: UntrustedFileError names the file and what it asked for when it holds anything else, unless
    `pickle_allowed(allow_pickle)` (then it is read with plain pickle)."""
    with open(path, "rb") as f:
        if pickle_allowed(allow_pickle):
            return pickle.load(f)
        try:
            return _TensorUnpickler(f).load()
        except _Refused as refused:
            raise UntrustedFileError(untrusted_message(path, f"is a Python pickle that asks for {refused}, "
                                                               "not only tensors and plain data")) from None


_guard_lock = threading.Lock()
_guard_depth = 0
_unguarded_load = None


def _file_name(f) -> str:
    if isinstance(f, (str, os.PathLike)):
        return str(f)
    return str(getattr(f, "path", None) or getattr(f, "name", None) or "a file")


def _weights_only_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **_pickle_args):
    try:
        return _unguarded_load(f, map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # a file that names callables weights-only loading does not allow: refused; anything else
        # (garbage, truncation) stays the unreadable file its caller reports
        asks = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
        if asks is None and "safe_globals" not in str(error):
            raise
        what = "holds pickled objects beyond tensors and plain data" + (f" ({asks})" if asks else "")
        raise UntrustedFileError(untrusted_message(_file_name(f), what)) from None


@contextlib.contextmanager
def weights_only_loads(allow_pickle: Optional[bool] = None):
    """While inside, every torch.load reads weights only (tensors and plain data), whatever its caller
    asked for: what PyG's and ogb's dataset classes load from a processed folder (their caches, and
    the pre_transform.pt / pre_filter.pt that PyG reads with weights_only=False) cannot run code. A
    file that needs more raises UntrustedFileError naming it. A no-op when `pickle_allowed(allow_pickle)`.
    Process-wide while active (torch.load is one function): a torch.load elsewhere meanwhile is held
    to weights only too, never the reverse."""
    global _guard_depth, _unguarded_load
    if pickle_allowed(allow_pickle):
        yield
        return
    with _guard_lock:
        if _guard_depth == 0:
            _unguarded_load = torch.load
            torch.load = _weights_only_load
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                torch.load = _unguarded_load


BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

# Checked on every use: a damaged install must fail loudly rather than train on garbage.
BUNDLED_SHA256 = {
    "tox21.csv.gz": "b0712b58280c1c87660d6abc23e199389372979a9d85f850cb27cdec6aa7c2af",
    "zinc_subset/val_graphs.npz": "203bca9b1f00bf0d3025c90933a19969ec5377a3763037ddccf856ac8e16b828",
    "zinc_subset/test_graphs.npz": "7c44d305cbb11bc5554c0686df96922a14d218fd7ac6e9354055e1a5afe42aba",
    "zinc_subset/atom_types.json": "a7876ef6ddd542b68276ed837f365f4611a097efbf4c472f6b753c5460107503",
}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_path(name: str) -> Path:
    """Path of a file shipped in magnn/data/bundled, after checking its sha256."""
    if name not in BUNDLED_SHA256:
        raise KeyError(f"unknown bundled file {name!r}; known: {sorted(BUNDLED_SHA256)}")
    path = BUNDLED_DIR / name
    if not path.is_file():
        raise MissingDataError(
            f"bundled file {path} is missing: the magnn installation is incomplete "
            "(reinstall magnn; the file ships as package data)")
    actual = sha256_file(path)
    if actual != BUNDLED_SHA256[name]:
        raise CorruptDataError(
            f"bundled file {path} is corrupt: sha256 {actual}, expected "
            f"{BUNDLED_SHA256[name]} (reinstall magnn)")
    return path


def default_root() -> Path:
    """Root folder for processed caches and local dataset copies.

    `$MAGNN_DATA_ROOT` if set, else `$XDG_CACHE_HOME/magnn` (default ~/.cache/magnn).
    """
    env = os.environ.get("MAGNN_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "magnn"


def scan_gzip_csv(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> tuple[int, int]:
    """Decompress a headerless .csv.gz to its end; return (rows, columns of the first row).

    Raises CorruptDataError when the gzip stream is damaged or truncated, so a
    cut download cannot turn into a silently shorter dataset.
    """
    rows = 0
    columns = 0
    last_byte = b"\n"
    try:
        with gzip.open(path, "rb") as f:
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    break
                if columns == 0:
                    first_line = chunk.split(b"\n", 1)[0]
                    if first_line.strip():
                        columns = first_line.count(b",") + 1
                rows += chunk.count(b"\n")
                last_byte = chunk[-1:]
    except (EOFError, OSError, zlib.error) as exc:
        raise CorruptDataError(
            f"{path} is not a complete gzip file ({type(exc).__name__}: {exc}); "
            "the file is truncated or damaged, replace it with a fresh copy") from exc
    if last_byte != b"\n":
        rows += 1  # last row without a trailing newline
    return rows, columns
