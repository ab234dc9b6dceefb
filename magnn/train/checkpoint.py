"""Checkpoints: writing best.pt / last.pt, reading and validating them, checking a --resume.

One module for everything that touches checkpoint files, so that the file format and its
safety rules live in one place. `save_atomically` writes through a temporary file and a
rename (a kill mid-write loses nothing); `load_checkpoint` turns every problem with a file
into one UserError that names it and says what to do; `check_resume_settings` refuses a
--resume whose settings would make the weights, the optimizer and metrics.json disagree.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import MissingFileError, UserError, one_line
from .config import TrainConfig
from .settings import RESUMABLE_SETTINGS, run_settings
from .rng import rng_state, set_rng_state

BEST_KEYS = ("model", "config", "epoch")
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "best", "config")


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a kill mid-write loses nothing."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_best(model, config: TrainConfig, epoch: int, path: Path) -> None:
    """best.pt: the weights of the best validation epoch, with the config that rebuilds the model."""
    save_atomically({"model": model.state_dict(), "config": asdict(config), "epoch": epoch}, path)


def save_last(path: Path, *, model, optimizer, scheduler, config: TrainConfig, epoch: int, history: list,
              best: dict, extras: dict) -> None:
    """last.pt: everything --resume needs to continue bit-exactly (weights, optimizer, scheduler,
    every RNG state, the history so far) and the callbacks' state (`extras`)."""
    save_atomically({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_state(), "epoch": epoch, "history": history, "best": best, "config": asdict(config), **extras,
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


def load_checkpoint(path, *, option: str = "--ckpt", resume: bool = False, hint: str = "") -> Checkpoint:
    """Read and validate a checkpoint `magnn train` wrote (DIR/best.pt, or DIR/last.pt with resume=True).

    Every problem (absent, a folder, empty, truncated or not a torch file, a
    foreign object or dict, a config with unknown or invalid settings) raises
    one UserError that names the file (as `option PATH`) and says what to do.
    The file is unpickled (weights_only=False, as it holds RNG states): load
    only checkpoints you trust.
    """
    path = Path(path).expanduser()
    hint = hint or "train one with `magnn train --out DIR` and pass DIR/best.pt"
    state = _read(path, option, resume, hint)
    where = f"{option} {path}"
    _check_keys(state, where, resume, hint)
    config = _recorded_config(state["config"], where, hint)
    _check_entries(state, where, resume, hint)
    return Checkpoint(path, state, config, option)


def _read(path: Path, option: str, resume: bool, hint: str):
    """The unpickled file; UserError when it is absent, a folder, empty or unreadable."""
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
        return torch.load(path, map_location="cpu", weights_only=False)
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


def load_for_resume(config: TrainConfig) -> Checkpoint:
    """OUT/last.pt for `train(config, resume=True)`; UserError when it has nothing left to train."""
    last_path = Path(config.out) / "last.pt"
    checkpoint = load_checkpoint(last_path, option="--resume", resume=True,
                                 hint=f"run without --resume first (it writes {last_path})")
    if checkpoint.state["epoch"] + 1 >= config.epochs:
        raise UserError(f"--resume: {last_path} has already trained {checkpoint.state['epoch'] + 1} epoch(s) and "
                        f"--epochs is {config.epochs}; pass a larger --epochs to train further")
    return checkpoint


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
