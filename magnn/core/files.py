"""Writing result files safely: inside the output folder, atomically, with a clear error on a full disk.

Every file magnn writes into an output folder (metrics.json, checkpoints, report.json,
report.md, detect.json, the study's stage files, figures) goes through `write_atomically`:

- the target is resolved and must stay inside the output folder: a symlink planted in
  `--out` (or a linked sub-folder) that points elsewhere is refused with a UserError
  naming it, so a file outside the folder is never overwritten;
- the bytes go to a temporary file beside the target (created exclusively, so never
  through a link), are flushed to disk (fsync) and renamed over the target (os.replace):
  a reader, a kill or a crash sees the old file or the new one, never half of one;
- on any failure the temporary file is deleted; a full disk (ENOSPC, EDQUOT) raises one
  UserError naming the file, the bytes it needs and the bytes free.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional, Union

from .errors import UserError

__all__ = ["write_atomically", "check_inside", "temp_name", "remove_stale_temps", "TEMP_MARK"]

TEMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" beside their target
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temp_name(path: Path) -> Path:
    """The temporary file `write_atomically` writes before renaming it to `path`."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def check_inside(path, folder, option: str = "--out") -> Path:
    """`path` (absolute, its folder resolved) when it stays inside `folder`; UserError otherwise.

    Refused: `path` itself a symlink (wherever it points: the file is replaced, never written
    through), or a folder on the way a symlink leading out of `folder`.
    """
    path, folder = Path(path).expanduser(), Path(folder).expanduser()
    root = folder.resolve()
    parent = path.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UserError(f"{option} {folder}: refusing to write {path}: its folder leads to {parent}, outside the "
                        "output folder (a symlink?); remove the link or pass another output folder")
    if path.is_symlink():
        target = os.readlink(path)
        raise UserError(f"{option} {folder}: refusing to write {path}: it is a symlink (to {target}), and magnn "
                        "writes results only as plain files inside the output folder; remove the link or pass "
                        "another output folder")
    return parent / path.name


def write_atomically(path, data: Union[bytes, str], *, folder=None, option: str = "--out",
                     durable: bool = True) -> Path:
    """Write `data` (str: UTF-8) to `path` atomically, inside `folder` (default: path's own folder).

    Returns the path written. UserError when the target leaves the folder (check_inside) or the
    disk is full (naming the file, the bytes needed and free); any other OSError propagates
    after the temporary file is removed.
    """
    path = Path(path).expanduser()
    target = check_inside(path, path.parent if folder is None else folder, option)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as error:
        _remove(tmp)
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise UserError(_no_space_message(target, len(payload))) from None
        raise
    return target


def _remove(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _no_space_message(path: Path, needed: int) -> str:
    free: Optional[int]
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    have = f"{_size(free)} free" if free is not None else "free space unknown"
    return (f"cannot write {path}: no space left on the device (it needs {_size(needed)}, {have}); "
            "free some space or pass an output folder on another disk (nothing half-written was left behind)")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


def remove_stale_temps(folder) -> list:
    """Delete the temporary files of writers that are gone (a process killed mid-write leaves its
    ".<name>.tmp-<pid>"): they would eat the space the next write needs. Returns the paths removed."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
        pid = tmp.name.rsplit(TEMP_MARK, 1)[-1]
        if not pid.isdigit() or _alive(int(pid)) or tmp.is_symlink() or not tmp.is_file():
            continue
        _remove(tmp)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
