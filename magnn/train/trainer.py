"""The Trainer: a run of `magnn train`, composed of its parts.

    Trainer(config, resume=False).fit() -> metrics (also written to OUT/metrics.json)

Set-up (data, model, DDP, optimizer, schedule: magnn.train.setup, magnn.distributed),
checkpoints (magnn.train.checkpoint), one epoch (magnn.train.epoch) and the callbacks
(magnn.train.callbacks: the MA probe, TensorBoard) are parts of their own; this module is
the loop that orders them: per epoch, train, validate, step the schedule, let the callbacks
measure, save best.pt and last.pt, check the stopping rules; at the end, test the final
epoch's model and the best validation epoch's.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from ..core.errors import RunFailed, output_folder
from ..distributed import init_from_env, rank_world
from ..stats import json_safe
from .callbacks import MAProbe, TensorBoard
from ..core.files import remove_stale_temps, write_atomically
from .checkpoint import (check_fresh_folder, check_resume_settings, load_checkpoint, load_for_resume, save_best,
                         save_last)
from .config import TrainConfig
from .settings import training_settings
from .epoch import EpochResult, NonFiniteLoss, loss_function, metric_name, run_epoch
from .rng import seed_everything
from .setup import build, make_scheduler, prepare

log = logging.getLogger("magnn.train")


class Trainer:
    """One training run per `config`; `resume=True` continues from OUT/last.pt bit-exactly (with
    nothing left to train, it re-evaluates). A fresh run into a folder holding a run is refused
    unless `overwrite`; `trust` opts in to unpickling older checkpoints (load_checkpoint)."""

    def __init__(self, config: TrainConfig, resume: bool = False, *, overwrite: bool = False, trust=None,
                 data=None):
        """data: (splits, info) as `prepare(config)` gives them, loaded by the caller (the study's
        ogbn-proteins graph is loaded once, not again per run: a second copy is ~4 GB at full
        size); None loads them here."""
        config.validate()
        self.config, self.trust = config, trust
        self.out = Path(config.out)
        output_folder(self.out, "--out")
        if not resume:
            check_fresh_folder(self.out, overwrite)
        self.checkpoint = load_for_resume(config, trust) if resume else None
        self.distributed = init_from_env(config.device)
        self.rank, self.world = rank_world()
        if self.rank == 0:  # the only writer; its own temp files are never stale
            for stale in remove_stale_temps(self.out):
                log.info(f"removed {stale}, left by a run killed while writing")
        seed_everything(config.seed)
        self.splits, self.info, model = prepare(config) if data is None else (*data, build(config, data[1]))
        if self.checkpoint is not None:
            check_resume_settings(self.checkpoint, config, self.info)
        self._set_up_model(model)
        self.loss_fn = loss_function(self.info.task)
        self.metric = metric_name(self.info.task)
        self.history, self.best, self.start_epoch = [], {"epoch": -1, "val_loss": math.inf}, 0
        self.probe = MAProbe(config, self.splits, self.rank)
        self.callbacks = [self.probe]
        if config.tensorboard and self.rank == 0:
            self.callbacks.append(TensorBoard(config.tensorboard, self.probe, self.metric))
        if self.checkpoint is not None:
            self._restore()

    def _set_up_model(self, model) -> None:
        """The model on its device (`core`), wrapped for DDP under torchrun (`model`), its optimizer and schedule."""
        import torch

        self.core = model.to(torch.device(self.config.device))
        self.model = self.core
        if self.distributed and self.world > 1:
            # the last layer's edge stream feeds no loss: let DDP skip those parameters
            self.model = torch.nn.parallel.DistributedDataParallel(self.core, find_unused_parameters=True)
        self.settings = training_settings(self.config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings["lr"])
        self.scheduler = make_scheduler(self.optimizer, self.settings, self.config.epochs)

    def _restore(self) -> None:
        """Weights, optimizer, schedule, RNG, history and the callbacks' state from last.pt."""
        self.checkpoint.restore_model(self.core)
        self.checkpoint.restore_training(self.optimizer, self.scheduler)
        state = self.checkpoint.state
        self.history, self.best, self.start_epoch = state["history"], state["best"], state["epoch"] + 1
        for callback in self.callbacks:
            callback.load_state_dict(state)
        log.info(f"resuming at epoch {self.start_epoch} from {self.checkpoint.path}")

    # -- the loop ---------------------------------------------------------------------

    def fit(self) -> dict:
        """Train, test and write metrics.json; returns the metrics."""
        self._call("on_train_start")
        stopped = {"reason": "epochs", "epoch": self.config.epochs - 1}
        for epoch in range(self.start_epoch, self.config.epochs):
            train_result, val_result = self._epoch(epoch)
            self._call("on_train_epoch_end")
            self._log_epoch(epoch, val_result)
            self._save(epoch, val_result)
            reason = self._stop_reason()
            if reason is not None:
                stopped = {"reason": reason, "epoch": epoch}
                break
        if self.distributed and self.world > 1:
            import torch

            torch.distributed.barrier()
        result = self._test(stopped)
        self._call("on_train_end")
        return result

    def _call(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, self.core)

    def _common(self) -> dict:
        return dict(batch_size=self.settings["batch_size"], device=self.config.device, bf16=self.config.bf16)

    def _epoch(self, epoch: int) -> tuple[EpochResult, EpochResult]:
        """Train one epoch, validate, step the schedule and append the epoch's row to the history."""
        config, began, diverged = self.config, time.perf_counter(), None
        try:
            train_result = run_epoch(self.model, self.splits["train"], self.info, self.loss_fn,
                                     optimizer=self.optimizer, seed=config.seed * 1000 + epoch,
                                     desc=f"epoch {epoch + 1}/{config.epochs}", node_mask_key="train_mask",
                                     fanouts=config.fanouts if config.sampled else None, **self._common())
            val_result = self._validate()
        except NonFiniteLoss as error:
            diverged = ("training" if error.training else "validation", error.loss)
        if diverged is not None:  # outside the except: the epoch's frames (and progress bar) are gone first
            self._diverged(epoch, *diverged)
        if self.settings["schedule"] == "plateau":
            self.scheduler.step(val_result.loss)
        else:
            self.scheduler.step()
        name = self.metric
        self.history.append({
            "epoch": epoch, "train_loss": train_result.loss, f"train_{name}": train_result.metric,
            "val_loss": val_result.loss, f"val_{name}": val_result.metric,
            "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began,
        })
        return train_result, val_result

    def _validate(self) -> EpochResult:
        import torch

        with torch.no_grad():
            self._call("on_validation_epoch_start")
            try:
                return run_epoch(self.model, self.splits["val"], self.info, self.loss_fn, node_mask_key="val_mask",
                                 **self._common())
            finally:
                self._call("on_validation_epoch_end")

    def _diverged(self, epoch: int, kind: str, loss: float) -> None:
        """Write the history so far and raise RunFailed with what to change."""
        self._write(self._metrics(None, {"reason": "diverged", "epoch": epoch, "detail": f"{kind} loss {loss}"}))
        lr = self.optimizer.param_groups[0]["lr"]
        raise RunFailed(f"training diverged at epoch {epoch + 1}: the {kind} loss became {loss}; lower the "
                        f"learning rate (--lr is {lr:g}; try {lr / 10:g} or less) and train again without --resume; "
                        f"the history so far is in {self.out / 'metrics.json'}")

    def _log_epoch(self, epoch: int, val_result: EpochResult) -> None:
        if self.rank == 0:
            row = self.history[-1]
            log.info(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} | val loss {val_result.loss:.4f} "
                     f"val {self.metric} {val_result.metric:.4f}")

    def _save(self, epoch: int, val_result: EpochResult) -> None:
        """best.pt when validation improved; last.pt every epoch (rank 0)."""
        if val_result.loss < self.best["val_loss"]:
            self.best = {"epoch": epoch, "val_loss": val_result.loss, f"val_{self.metric}": val_result.metric}
            if self.rank == 0:
                save_best(self.core, self.config, epoch, self.out / "best.pt")
        if self.rank == 0:
            extras = {}
            for callback in self.callbacks:
                extras.update(callback.state_dict())
            save_last(self.out / "last.pt", model=self.core, optimizer=self.optimizer, scheduler=self.scheduler,
                      config=self.config, epoch=epoch, history=self.history, best=self.best, extras=extras)

    def _stop_reason(self):
        """"min_lr" (the paper's stopping rule, plateau schedule), "max_time", or None to go on."""
        if self.settings["schedule"] == "plateau" and self.optimizer.param_groups[0]["lr"] < self.settings["min_lr"]:
            log.info(f"stopping: lr fell below min_lr={self.settings['min_lr']:g}")
            return "min_lr"
        max_time = self.config.max_time
        if max_time is not None and sum(r["seconds"] for r in self.history) >= 60 * max_time:
            log.info(f"stopping: training time reached --max-time {max_time:g} minutes")  # per epoch, as the paper's code
            return "max_time"
        return None

    # -- testing and metrics.json -----------------------------------------------------

    def _test(self, stopped: dict) -> dict:
        """Test the final epoch's model ("test_final": the paper's Table 1) and the best epoch's ("test")."""
        final_test = self._final_test()
        load_checkpoint(self.out / "best.pt", option="--out", trust=self.trust).restore_model(self.core)
        try:
            test_result = self._run_test()
        except NonFiniteLoss as error:
            self._write(self._metrics(None, {"reason": "non-finite test loss", "epoch": self.best["epoch"],
                                             "detail": f"test loss {error.loss}"}))
            raise RunFailed(f"the best epoch's model ({self.out / 'best.pt'}) gives a non-finite test loss "
                            f"({error.loss}); lower the learning rate (--lr) and train again") from None
        result = self._metrics({"loss": test_result.loss, self.metric: test_result.metric}, stopped)
        result["test_final"] = final_test  # "test" is the best-validation checkpoint's
        self._write(result)
        return result

    def _final_test(self):
        if not self.history:
            return None
        epoch = self.history[-1]["epoch"]
        try:
            result = self._run_test()
        except NonFiniteLoss as error:
            return {"loss": error.loss, self.metric: None, "epoch": epoch}
        return {"loss": result.loss, self.metric: result.metric, "epoch": epoch}

    def _run_test(self) -> EpochResult:
        import torch

        with torch.no_grad():
            return run_epoch(self.core, self.splits["test"], self.info, self.loss_fn, node_mask_key="test_mask",
                             **self._common())

    def _metrics(self, test, stopped) -> dict:
        trained = self.best["epoch"] >= 0
        return {
            "config": asdict(self.config),
            "dataset_info": asdict(self.info),
            "history": self.history,
            "best_epoch": self.best["epoch"] if trained else None,
            "best": self.best if trained else None,
            "test": test,
            "stopped": stopped,
            "resumed_at_epoch": self.start_epoch if self.checkpoint is not None else None,
            "world_size": self.world,
            "ma_over_epochs": self.probe.to_dict(),
        }

    def _write(self, result: dict) -> None:
        if self.rank == 0:
            write_atomically(self.out / "metrics.json",
                             json.dumps(json_safe(result), indent=2, default=str, allow_nan=False))


def train(config: TrainConfig, resume: bool = False, *, overwrite: bool = False, trust=None, data=None) -> dict:
    """Train per `config` (`magnn train`); returns (and writes) the metrics dictionary.

    resume=True (--resume) continues from config.out/last.pt; when it has trained
    config.epochs already, the run is re-evaluated and metrics.json rewritten.
    A fresh run into a folder holding metrics.json, best.pt or last.pt raises
    UserError unless overwrite=True (--overwrite). trust=True (--trust-checkpoint)
    loads checkpoints that need full unpickling (older magnn): only files you trust.
    data=(splits, info), already loaded by `prepare(config)`, saves loading them again.

    Raises UserError for bad settings, bad checkpoints and a --resume whose
    settings differ from its checkpoint's; RunFailed (after writing
    metrics.json with the history so far) when the loss stops being finite.
    """
    return Trainer(config, resume=resume, overwrite=overwrite, trust=trust, data=data).fit()
