"""Errors the user can fix, and the checks that raise them.

`UserError` is the one exception type the command line turns into a single
line on stderr (`magnn <command>: error: ...`) and an exit code, without a
traceback (`magnn.cli.main` is the only place that catches it). The message
names the option or file at fault and says what to do. Library code raises it
(or a subclass: the data loaders' MissingDataError and CorruptDataError) where
the cause is the input, not a bug.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = [
    "UserError",
    "RunFailed",
    "MissingFileError",
    "check_positive",
    "check_device",
    "input_folder",
    "output_folder",
    "one_line",
    "positive_int",
    "nonnegative_int",
    "positive_float",
    "positive_int_list",
    "seed_int",
    "MAX_SEED",
]

MAX_SEED = 2**32 - 1  # numpy's limit; seed * 1000 + epoch still fits torch's 64-bit generator seed


class UserError(Exception):
    """A bad option, file or setting: the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 2


class RunFailed(UserError):
    """The inputs were fine but the run could not finish (e.g. training diverged); exit code 1."""

    exit_code = 1


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named (or that a previous step should have written) does not exist."""


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


def output_folder(path, option: str = "--out") -> Path:
    """Create the output folder `path` (and parents); UserError naming it when that is impossible."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pass a folder for the outputs (it is created if absent)")
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


# -- argparse option types: a bad value fails at parse time, before any data is loaded --

def _number(text: str, integer: bool):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 would otherwise be silently replaced or divide by zero)."""
    value = _number(text, True)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, True)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, False)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def positive_int_list(text: str) -> tuple:
    """argparse type: comma-separated integers >= 1, e.g. "5,10,15"."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 5,10,15, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every entry must be an integer >= 1, got {text!r}")
    return values


def seed_int(text: str) -> int:
    value = _number(text, True)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value
