"""magnn's exceptions, and the checks of command-line options and files that raise them.

One hierarchy, every class a `MagnnError`::

    MagnnError
    ├── UserError                 an option, file or setting the user must fix (exit code 2)
    │   ├── RunFailed             the inputs were fine but the run could not finish (exit code 1)
    │   ├── MissingFileError      (also FileNotFoundError) a file the user named is absent
    │   ├── MissingDataError      (also FileNotFoundError) dataset files are absent
    │   ├── CorruptDataError      (also ValueError) dataset files are unreadable or inconsistent
    │   │   └── UntrustedFileError    a data file would need unpickling beyond tensors and plain data
    │   ├── BackendSettingError   (also ValueError) $MAGNN_BACKEND names no backend
    │   ├── NothingToCollect      (also ValueError) `magnn.stats.collect` found nothing to attach to
    │   ├── DoubleBackwardError   (also RuntimeError) a compiled backend was asked for a double backward
    │   ├── LayerInputError       (also ArgumentError) a layer got inputs that do not fit how it was built
    │   └── MissingExtraError     (also ImportError) a feature needs an optional extra that is not installed
    ├── ArgumentError             (also ValueError) a call's argument is outside its domain
    └── ArgumentTypeError         (also TypeError) a call's argument has the wrong type

The built-in mix-ins keep ``except ValueError`` / ``except FileNotFoundError``
callers working. `UserError` is what the command line turns into a single line
on stderr (`magnn <command>: error: ...`) and its `exit_code`, without a
traceback (`magnn.cli.main` is the only place that catches it); the message
names the option or file at fault and says what to do. `ArgumentError` and
`ArgumentTypeError` come from the operator, layer and model argument checks
(`magnn.core.validation`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = [
    "MagnnError",
    "UserError",
    "RunFailed",
    "MissingFileError",
    "MissingDataError",
    "CorruptDataError",
    "NothingToCollect",
    "LayerInputError",
    "UntrustedFileError",
    "BackendSettingError",
    "DoubleBackwardError",
    "ArgumentError",
    "ArgumentTypeError",
    "check_positive",
    "check_choice",
    "check_seed",
    "check_device",
    "input_folder",
    "check_output_folder",
    "output_folder",
    "one_line",
    "MAX_SEED",
]

MAX_SEED = 2**32 - 1  # numpy's limit; seed * 1000 + epoch still fits torch's 64-bit generator seed


class MagnnError(Exception):
    """Base of every exception magnn raises on purpose."""


class UserError(MagnnError):
    """A bad option, file or setting: the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 2


class ArgumentError(MagnnError, ValueError):
    """An argument of an operator, layer or model is outside its domain; the message says what to pass."""


class ArgumentTypeError(MagnnError, TypeError):
    """An argument of an operator, layer or model has the wrong type; the message says what to pass."""


class RunFailed(UserError):
    """The inputs were fine but the run could not finish (e.g. training diverged); exit code 1."""

    exit_code = 1


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named (or that a previous step should have written) does not exist."""


class MissingDataError(UserError, FileNotFoundError):
    """Dataset files are absent (and magnn never downloads them)."""


class CorruptDataError(UserError, ValueError):
    """Dataset files exist but are unreadable, truncated or inconsistent."""


class UntrustedFileError(CorruptDataError):
    """A data file would have to be unpickled beyond tensors and plain data to be read: refused."""


class BackendSettingError(UserError, ValueError):
    """$MAGNN_BACKEND names no backend."""


class NothingToCollect(UserError, ValueError):
    """`collect` found nothing to attach to, or a `modules=` name is not in the model."""


class DoubleBackwardError(UserError, RuntimeError):
    """A gradient of a compiled backend's gradient was asked for (create_graph=True): refused."""


class LayerInputError(UserError, ArgumentError):
    """A layer got inputs that do not fit how it was built; the message says what to pass."""


def check_positive(value, option: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise UserError unless `value` is a finite number > 0 (>= 0 with allow_zero); None passes."""
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or (integer and not isinstance(value, int)):
        raise UserError(f"{option} must be {kind} {bound}, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{option} must be {kind} {bound}, got {value!r}")


def check_choice(value, choices, option: str, *, spell=str) -> None:
    """Raise UserError unless `value` is one of `choices` ("--model 'x' is not one of gt, graphit, san").

    `spell` writes each choice as the user types it (e.g. None as "none" for --ebt).
    """
    if value not in choices:
        raise UserError(f"{option} {value!r} is not one of {', '.join(spell(choice) for choice in choices)}")


def check_seed(value, option: str = "--seed") -> None:
    """Raise UserError unless `value` is an integer in [0, MAX_SEED]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UserError(f"{option} must be an integer in [0, {MAX_SEED}], got {value!r}")


def check_device(device: str, option: str = "--device") -> str:
    """The device string if torch can use it here; UserError otherwise (e.g. cuda without CUDA)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"{option} {device!r} is not a device torch knows ({_first_line(error)}); use cpu or cuda") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {device}: no CUDA device is visible here (torch.cuda.is_available() is False); "
                            "use --device cpu, or run where a GPU is visible (`magnn info` lists the devices)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type != "cpu":
        raise UserError(f"{option} {device}: magnn runs on cpu or cuda, not {parsed.type}")
    return device


def input_folder(path, option: str) -> None:
    """A folder option (e.g. --data-root) may be absent (it is created or falls back), but never a file."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; point {option} at the folder that holds the dataset files")
    for parent in path.parents:  # a file somewhere up the path makes every use fail later
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a folder")
            break


def check_output_folder(path, option: str = "--out") -> None:
    """UserError (the one `output_folder` would raise) when `path` cannot become the output folder:
    it is a file, a file sits on its path, or the folder (or the nearest existing parent) is not
    writable. Creates nothing: configs check this before any work."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pass a folder for the outputs (it is created if absent)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: the folder is not writable; pass a writable folder")
        return
    for parent in path.parents:  # the nearest existing ancestor decides whether mkdir can work
        if parent.exists():
            reason = ("Not a directory" if not parent.is_dir()
                      else None if os.access(parent, os.W_OK | os.X_OK) else "Permission denied")
            if reason:
                raise UserError(f"{option} {path}: cannot create the output folder ({reason}); pass a writable folder")
            break


def check_environment(device: str, data_root, out) -> None:
    """What a run's config depends on this machine for: the device exists, --data-root is
    not a file, --out (when given) can become the output folder. Creates nothing."""
    check_device(device)
    input_folder(data_root, "--data-root")
    if out is not None:
        check_output_folder(out, "--out")


def output_folder(path, option: str = "--out") -> Path:
    """Create the output folder `path` (and parents); UserError naming it when that is impossible."""
    check_output_folder(path, option)
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(f"{option} {path}: cannot create the output folder ({reason}); pass a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder is not writable; pass a writable folder")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """An exception's message folded onto one line (torch's messages often span many)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


class MissingExtraError(UserError, ImportError):
    """A feature needs a package of an optional extra (`pip install 'magnn[study]'`)."""


def missing_extra(error: ImportError, feature: str, extra: str = "study") -> MissingExtraError:
    """The MissingExtraError to raise (from `error`) when `feature` cannot import its package."""
    package = error.name or str(error)
    return MissingExtraError(
        f"{feature} needs {package}, which comes with magnn's '{extra}' extra: pip install 'magnn[{extra}]'",
        name=error.name)

