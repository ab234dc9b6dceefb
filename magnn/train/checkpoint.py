"""Checkpoints: writing best.pt / last.pt, reading and validating them, checking a --resume.

One module for everything that touches checkpoint files, so that the file format and its
safety rules live in one place. `save_atomically` writes through a temporary file and a
rename (a kill mid-write loses nothing); `load_checkpoint` turns every problem with a file
into one UserError that names it and says what to do. A checkpoint holds tensors and plain
data only (weights, optimizer and RNG states as tensors; the config as a JSON string) and is
read with torch.load(weights_only=True): nothing in it can run code. A file that needs more
(a checkpoint pickled by an older magnn, or a crafted one) is refused with UntrustedFileError
unless the user says they trust it (trust=True: --trust-checkpoint, or MAGNN_ALLOW_PICKLE=1); `check_resume_settings` refuses a
--resume whose settings would make the weights, the optimizer and metrics.json disagree.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..core.errors import MissingFileError, UntrustedFileError, UserError, one_line
from ..core.files import write_atomically
from .config import TrainConfig
from .settings import RESUMABLE_SETTINGS, run_settings
from .rng import rng_state, set_rng_state

BEST_KEYS = ("model", "config", "epoch")
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "best", "config")


TRUST_ENV = "MAGNN_ALLOW_PICKLE"  # the data side's opt-in (--allow-pickle); trusts checkpoints too
TRUST_CHECKPOINT_ENV = "MAGNN_TRUST_CHECKPOINT"  # checkpoints only (--trust-checkpoint)


def save_atomically(obj, path: Path) -> None:
    """torch.save into memory, then magnn.core.files.write_atomically (temp file, fsync, rename,
    inside the run folder): a kill mid-write loses nothing, a full disk leaves no temp file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, buffer.getvalue())


def config_record(config: TrainConfig) -> str:
    """The config as a checkpoint holds it: a JSON string (plain data, read back by TrainConfig.from_dict)."""
    return json.dumps(asdict(config), sort_keys=True)


def save_best(model, config: TrainConfig, epoch: int, path: Path) -> None:
    """best.pt: the weights of the best validation epoch, with the config that rebuilds the model."""
    save_atomically({"model": model.state_dict(), "config": config_record(config), "epoch": epoch}, path)


def save_last(path: Path, *, model, optimizer, scheduler, config: TrainConfig, epoch: int, history: list,
              best: dict, extras: dict) -> None:
    """last.pt: everything --resume needs to continue bit-exactly (weights, optimizer, scheduler,
    every RNG state, the history so far) and the callbacks' state (`extras`)."""
    save_atomically({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_state(), "epoch": epoch, "history": history, "best": best, "config": config_record(config),
        **extras,
    }, path)


@dataclass
class Checkpoint:
    """A validated checkpoint written by `magnn train` (see load_checkpoint)."""

    path: Path
    state: dict
    config: TrainConfig
    option: str = "--ckpt"

    def restore_model(self, model) -> None:
        """Load the weights into `model`; UserError naming the file when they do not fit it."""
        weights = self.state["model"]
        expected = model.state_dict()
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        reshaped = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or reshaped:
            parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                     (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)) if keys]
            raise UserError(f"{self.option} {self.path}: its weights do not fit the {self.config.model} model its "
                            f"config describes ({', '.join(parts)}); the file was altered or written by another "
                            "magnn version: retrain it")
        model.load_state_dict(weights)

    def restore_training(self, optimizer, scheduler) -> None:
        """Optimizer, scheduler and RNG states for --resume; UserError naming the file when they do not fit."""
        try:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            set_rng_state(self.state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise UserError(f"{self.option} {self.path}: its optimizer, scheduler or RNG state cannot be restored "
                            f"({type(error).__name__}: {one_line(error)[:200]}); start a new run without --resume") from None


def load_checkpoint(path, *, option: str = "--ckpt", resume: bool = False, hint: str = "",
                    trust: Optional[bool] = None) -> Checkpoint:
    """Read and validate a checkpoint `magnn train` wrote (DIR/best.pt, or DIR/last.pt with resume=True).

    Every problem (absent, a folder, empty, truncated or not a torch file, a
    foreign object or dict, a config with unknown or invalid settings) raises
    one UserError that names the file (as `option PATH`) and says what to do.
    The file is read with torch.load(weights_only=True); one that needs more
    raises UntrustedFileError unless trust=True or $MAGNN_ALLOW_PICKLE=1 (then
    it is unpickled in full: only for files you trust).
    """
    path = Path(path).expanduser()
    hint = hint or "train one with `magnn train --out DIR` and pass DIR/best.pt"
    state = _read(path, option, resume, hint, trusted(trust))
    where = f"{option} {path}"
    _check_keys(state, where, resume, hint)
    config = _recorded_config(state["config"], where, hint)
    _check_entries(state, where, resume, hint)
    return Checkpoint(path, state, config, option)


def trusted(trust: Optional[bool] = None) -> bool:
    """Whether the user opted in to unpickling checkpoints in full: trust=True, $MAGNN_TRUST_CHECKPOINT=1
    (what --trust-checkpoint sets) or $MAGNN_ALLOW_PICKLE=1 (--allow-pickle: every file)."""
    return bool(trust) or any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
                              for name in (TRUST_CHECKPOINT_ENV, TRUST_ENV))


def untrusted_checkpoint(where: str) -> str:
    return (f"{where} holds more than tensors and plain data (a checkpoint pickled by an older magnn, or a crafted "
            "file); magnn does not unpickle it, because unpickling runs whatever code the file names. magnn reads "
            "checkpoints as tensors and plain data only. If you trust this file (you wrote it with magnn train), "
            f"opt in with --trust-checkpoint (load_checkpoint(..., trust=True)) or {TRUST_ENV}=1 in the environment; "
            "otherwise retrain")


def _read(path: Path, option: str, resume: bool, hint: str, trust: bool = False):
    """The loaded file (tensors and plain data unless `trust`); UserError when it is absent, a folder,
    empty or unreadable, UntrustedFileError when it needs unpickling beyond tensors and plain data."""
    import torch

    where = f"{option} {path}"
    if not path.exists():
        raise MissingFileError(f"{option}: no checkpoint at {path}; {hint}")
    if path.is_dir():
        raise UserError(f"{where} is a folder; pass the checkpoint file in it "
                        f"({'last.pt' if resume else 'best.pt or last.pt'})")
    if path.stat().st_size == 0:
        raise UserError(f"{where} is empty (0 bytes), not a checkpoint; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # it names a class or function to call: more than tensors and data
            raise UntrustedFileError(untrusted_checkpoint(where)) from None
        raise UserError(f"{where} cannot be read as a checkpoint ({type(error).__name__}: {one_line(error)[:160]}): "
                        f"the file is truncated, damaged or not written by magnn train; {hint}") from None
    except Exception as error:  # truncated zip, text, another pickle: every failure has the same remedy
        raise UserError(f"{where} cannot be read as a checkpoint ({type(error).__name__}: {one_line(error)[:160]}): "
                        f"the file is truncated, damaged or not written by magnn train; {hint}") from None


def _check_keys(state, where: str, resume: bool, hint: str) -> None:
    """UserError unless `state` is a dict with the entries a best.pt (or, resuming, a last.pt) holds."""
    if not isinstance(state, dict):
        raise UserError(f"{where} holds a {type(state).__name__}, not a magnn checkpoint "
                        f"(a dict with {', '.join(BEST_KEYS)}, as magnn train writes); {hint}")
    missing = [key for key in (RESUME_KEYS if resume else BEST_KEYS) if key not in state]
    if not missing:
        return
    if _looks_like_state_dict(state):
        what = "a bare state_dict (weights without the config magnn needs to rebuild the model)"
    elif resume and all(key in state for key in BEST_KEYS):
        what = f"a weights-only checkpoint (best.pt?) without {', '.join(missing)}; --resume needs DIR/last.pt"
    else:
        what = f"not a magnn checkpoint: it lacks {', '.join(repr(k) for k in missing)}"
    raise UserError(f"{where} is {what}; {hint}")


def _looks_like_state_dict(obj) -> bool:
    import torch

    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _recorded_config(raw, where: str, hint: str) -> TrainConfig:
    """The TrainConfig a checkpoint records; UserError when it is not one this magnn accepts."""
    from .validation import check_train_config

    if isinstance(raw, str):  # as written since checkpoints hold plain data only (config_record)
        try:
            raw = json.loads(raw)
        except ValueError:
            raise UserError(f"{where}: its 'config' is not JSON; {hint}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: its 'config' is a {type(raw).__name__}, not a dict of settings; {hint}")
    unknown = sorted(str(key) for key in raw if key not in TrainConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"{where}: its config has settings this magnn does not know ({', '.join(unknown)}); "
                        "it was written by another magnn version or edited; retrain with this version")
    config = TrainConfig.from_dict(raw)
    try:
        check_train_config(config, environment=False)
    except UserError as error:
        raise UserError(f"{where}: its config is invalid ({error})") from None
    return config


def _check_entries(state: dict, where: str, resume: bool, hint: str) -> None:
    """UserError when the weights, the epoch or (resuming) the history are not what magnn train writes."""
    import torch

    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise UserError(f"{where}: its 'model' entry is not a state_dict of tensors; {hint}")
    if isinstance(state["epoch"], bool) or not isinstance(state["epoch"], int) or state["epoch"] < 0:
        raise UserError(f"{where}: its 'epoch' entry is {state['epoch']!r}, not an epoch number; {hint}")
    if resume and (not isinstance(state["history"], list) or not isinstance(state["best"], dict)
                   or "val_loss" not in state["best"] or len(state["history"]) != state["epoch"] + 1):
        raise UserError(f"{where}: its history or best-epoch record is inconsistent; {hint}")


def load_for_resume(config: TrainConfig, trust: Optional[bool] = None) -> Checkpoint:
    """OUT/last.pt for `train(config, resume=True)`. A run that trained exactly --epochs resumes
    with nothing left to train: it re-evaluates and rewrites metrics.json. UserError when the
    checkpoint has trained more epochs than --epochs."""
    last_path = Path(config.out) / "last.pt"
    checkpoint = load_checkpoint(last_path, option="--resume", resume=True, trust=trust,
                                 hint=f"run without --resume first (it writes {last_path})")
    if checkpoint.state["epoch"] + 1 > config.epochs:
        raise UserError(f"--resume: {last_path} has already trained {checkpoint.state['epoch'] + 1} epoch(s) and "
                        f"--epochs is {config.epochs}; pass --epochs {checkpoint.state['epoch'] + 1} to re-evaluate "
                        "it (rewrites metrics.json) or a larger --epochs to train further")
    return checkpoint


FINISHED_FILES = ("metrics.json", "best.pt", "last.pt")


def check_fresh_folder(out: Path, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that holds a run's results, unless overwrite."""
    present = [name for name in FINISHED_FILES if (Path(out) / name).exists()]
    if present and not overwrite:
        raise UserError(f"--out {out} already holds a run ({', '.join(present)}); a new run would replace it. "
                        "Continue it (or re-evaluate it, with the same --epochs) with --resume, pass a new --out, "
                        "or --overwrite to replace it")


def check_resume_settings(checkpoint: Checkpoint, config: TrainConfig, info) -> None:
    """Refuse to --resume with settings other than the checkpoint's (except RESUMABLE_SETTINGS),
    so that the weights, the optimizer and metrics.json never disagree."""
    before, now = run_settings(checkpoint.config, info), run_settings(config, info)
    differing = [f"{name} {before.get(name)!r} in the checkpoint vs {now.get(name)!r} now"
                 for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    if differing:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUMABLE_SETTINGS if name != "out")
        raise UserError(f"--resume: {checkpoint.path} was trained with other settings: {'; '.join(differing)}. "
                        f"Resume with the checkpoint's settings (only {allowed} may change), "
                        "or start a new run in another --out folder")
