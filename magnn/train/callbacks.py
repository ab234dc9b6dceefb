"""Callbacks of the Trainer: the MA probe ("ma_over_epochs") and TensorBoard.

The hooks are Lightning's (`lightning.pytorch.Callback`): the same names, called at the same
points with (trainer, module), where module is the model itself (not its DDP wrapper), and
`state_dict` / `load_state_dict` for what travels in last.pt. magnn's Lightning callback
(magnn.integrations.lightning.MACallback) measures the same figures through the same hooks.
"""
from __future__ import annotations

import contextlib
from typing import Optional

from ..stats import collect
from ..telemetry import MACurves, log_ma, log_scalars, open_summary_writer


class Callback:
    """Hooks a Trainer calls; each does nothing unless overridden."""

    def on_train_start(self, trainer, module) -> None: ...

    def on_validation_epoch_start(self, trainer, module) -> None: ...

    def on_validation_epoch_end(self, trainer, module) -> None: ...

    def on_train_epoch_end(self, trainer, module) -> None: ...

    def on_train_end(self, trainer, module) -> None: ...

    def state_dict(self) -> dict:
        """Entries this callback adds to last.pt (and reads back on --resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def ma_probe(config, splits) -> tuple[Optional[str], object]:
    """(description, probe) of the fixed probe "ma_over_epochs" measures after every epoch:
    one batch of the first `ma_probe_graphs` validation graphs (molecules), or the validation
    forward itself on a single graph (node tasks: statistics of the pass the epoch runs anyway).
    (None, None) when off (ma_probe_graphs 0) or the validation split is empty."""
    from torch_geometric.data import Batch, Data

    part = splits.get("val")
    if not config.ma_probe_graphs or part is None:
        return None, None
    if isinstance(part, Data):
        return "the validation forward of the full graph (val_mask nodes' loss; every edge's statistics)", "val"
    graphs = list(part[: config.ma_probe_graphs])
    if not graphs:
        return None, None
    return f"the first {len(graphs)} validation graphs, one batch, eval mode", Batch.from_data_list(graphs)


def probe_stats(model, probe, *, device="cpu", bf16=False) -> dict:
    """Per-layer EdgeStats of one eval-mode forward of `model` on the probe batch (no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    try:
        with torch.no_grad(), autocast, collect(model) as stats:
            model(probe.to(device))
    finally:
        model.train(was_training)
    return stats


class MAProbe(Callback):
    """Per-layer MA figures after every epoch on a fixed probe (metrics.json "ma_over_epochs").

    Inactive (curves None) when the config turns it off, the validation split is empty, or on
    ranks other than 0 (their models are the same). `last_stats` holds the latest epoch's
    EdgeStats for the callbacks after it (TensorBoard).
    """

    key = "ma_over_epochs"

    def __init__(self, config, splits, rank: int = 0):
        self.config = config
        self.description, self.probe = ma_probe(config, splits) if rank == 0 else (None, None)
        self.curves: Optional[MACurves] = None
        self.last_stats = None
        self._stack: Optional[contextlib.ExitStack] = None
        self._val_stats = None

    @property
    def active(self) -> bool:
        return self.description is not None

    def load_state_dict(self, state: dict) -> None:
        if self.active:
            self.curves = MACurves.from_dict(state.get(self.key), self.description).truncate(state["epoch"] + 1)

    def on_train_start(self, trainer, module) -> None:
        if self.active and self.curves is None:
            self.curves = MACurves.from_dict(None, self.description).truncate(0)

    def on_validation_epoch_start(self, trainer, module) -> None:
        if self.probe == "val":  # node tasks: the statistics of the validation forward itself
            self._stack = contextlib.ExitStack()
            self._val_stats = self._stack.enter_context(collect(module))

    def on_validation_epoch_end(self, trainer, module) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.curves is None:
            return
        if self.probe == "val":
            self.last_stats = self._val_stats
        else:
            self.last_stats = probe_stats(module, self.probe, device=self.config.device, bf16=self.config.bf16)
        self.curves.add(trainer.history[-1]["epoch"] + 1, self.last_stats)

    def state_dict(self) -> dict:
        return {self.key: self.to_dict()}

    def to_dict(self) -> Optional[dict]:
        return self.curves.to_dict() if self.curves is not None else None


class TensorBoard(Callback):
    """--tensorboard DIR: loss, metric and lr every epoch, and the MA probe's per-layer figures."""

    def __init__(self, logdir: str, probe: MAProbe, metric: str):
        self.logdir, self.probe, self.metric = logdir, probe, metric
        self.writer = None

    def on_train_start(self, trainer, module) -> None:
        self.writer = open_summary_writer(self.logdir)

    def on_train_epoch_end(self, trainer, module) -> None:
        row, name = trainer.history[-1], self.metric
        step = row["epoch"] + 1
        log_scalars(self.writer, {"loss/train": row["train_loss"], "loss/val": row["val_loss"],
                                  f"{name}/train": row[f"train_{name}"], f"{name}/val": row[f"val_{name}"],
                                  "lr": row["lr"]}, step)
        if self.probe.curves is not None and self.probe.last_stats is not None:
            log_ma(self.writer, self.probe.last_stats, step)
        self.writer.flush()

    def on_train_end(self, trainer, module) -> None:
        self.writer.close()
