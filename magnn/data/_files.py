"""File handling shared by the loaders: errors, bundled files, cache root, gzip checks."""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from ..core.errors import CorruptDataError, MissingDataError  # noqa: F401  (defined there; importable here)

__all__ = [
    "MissingDataError",
    "CorruptDataError",
    "BUNDLED_SHA256",
    "bundled_path",
    "default_root",
    "sha256_file",
    "scan_gzip_csv",
]


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
