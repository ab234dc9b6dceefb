"""TrainConfig (everything `magnn train` takes) and the settings it resolves to.

A config names a preset and overrides; `model_overrides` and `training_settings` resolve
them into the model keywords and the optimisation settings of a run, in one order: the
paper's row (SPEC §10), then the quick preset (magnn.models.presets, its own section),
then what the config sets. `run_settings` lists every resolved setting that shapes a run's
trajectory, by CLI name: what a --resume must keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..models.presets import QUICK_DATASET_MODEL, QUICK_MODEL, QUICK_TRAINING

SCHEDULES = ("plateau", "cosine")  # the lr schedules make_scheduler builds
# CLI option -> model keyword (the models' own argument names)
MODEL_OPTIONS = {"layers": "num_layers", "hidden": "hidden", "heads": "heads"}
# settings that may differ between a run and its --resume; everything else must match the checkpoint
RESUMABLE_SETTINGS = ("epochs", "out", "data_root", "device", "backend", "activation_checkpointing", "tensorboard")


def ebt_option(ebt) -> str:
    """An EBT variant as --ebt spells it (None is "none")."""
    return "none" if ebt is None else str(ebt)


@dataclass
class TrainConfig:
    """Everything `magnn train` takes, except --resume (an action, `train(config, resume=True)`,
    not a setting: it is not saved in checkpoints). --layers, --hidden and --heads are model
    keywords and travel in `overrides` (num_layers, hidden, heads; any other model keyword too),
    as do the named variants (--architecture, --ebt-compat: magnn.models.presets.variant_overrides).

    `validate()` raises the command line's UserError for a bad setting; `train()` calls it.
    """

    dataset: str = "tox21"
    model: str = "gt"
    ebt: Optional[str] = None
    epochs: int = 10
    out: str = "runs/train"
    data_root: Optional[str] = None
    device: str = "cpu"
    seed: int = 41
    max_graphs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    preset: Optional[str] = None  # "paper" (SPEC §10) or "quick" (CPU-sized); None is the paper's sizes
    overrides: dict = field(default_factory=dict)  # model keyword overrides (num_layers, hidden, heads, ...)
    bf16: bool = False
    activation_checkpointing: bool = False
    backend: str = "auto"
    sampled: bool = False  # ogbn-proteins: neighbour-sampled training instead of full batch
    fanouts: tuple = (5, 10, 15)
    schedule: Optional[str] = None  # "plateau" (the paper's) or "cosine" (warmup, then cosine decay); None: the preset's
    warmup_epochs: Optional[int] = None  # linear lr warmup epochs of the cosine schedule; None: the preset's
    max_time: Optional[float] = None  # --max-time: stop after this many MINUTES of training epochs (the paper's max_time)
    tensorboard: Optional[str] = None  # --tensorboard DIR: loss, metrics, lr and per-layer MA figures every epoch
    ma_probe_graphs: int = 32  # "ma_over_epochs": MA figures on the first N validation graphs after every epoch; 0: off

    def validate(self, *, environment: bool = True) -> TrainConfig:
        """UserError naming the option when a setting is out of range (magnn.train.validation); returns self."""
        from .validation import check_train_config

        check_train_config(self, environment=environment)
        return self

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """The config a JSON record holds (metrics.json "config", a checkpoint's "config")."""
        config = cls(**raw)
        if isinstance(config.fanouts, list):
            config.fanouts = tuple(config.fanouts)
        return config


def model_overrides(config: TrainConfig) -> dict:
    """The model keywords on top of the paper's row: the quick preset's, then the config's own."""
    quick = config.preset == "quick" and config.dataset != "ogbn-proteins"
    overrides = dict(QUICK_MODEL, **QUICK_DATASET_MODEL.get(config.dataset, {})) if quick else {}
    overrides.update(config.overrides)
    overrides.setdefault("backend", config.backend)
    if config.activation_checkpointing:
        overrides["checkpoint"] = True
    return overrides


def training_settings(config: TrainConfig) -> dict:
    """lr, patience, min_lr, batch size, lr schedule: the paper's row (SPEC §10; plateau schedule),
    then the quick preset's per-dataset settings (QUICK_TRAINING), then what the config sets."""
    from ..models import get_preset

    row = get_preset(config.model, config.dataset)
    settings = {"lr": row.lr, "patience": row.patience, "min_lr": row.min_lr, "batch_size": row.batch_size,
                "schedule": "plateau", "warmup_epochs": 0}
    if config.preset == "quick":
        settings.update(QUICK_TRAINING.get(config.dataset, {}))
    given = {"lr": config.lr, "batch_size": config.batch_size, "schedule": config.schedule,
             "warmup_epochs": config.warmup_epochs}
    settings.update({key: value for key, value in given.items() if value is not None})
    return settings


def run_settings(config: TrainConfig, info) -> dict:
    """Every setting that shapes a run's trajectory, resolved (preset values filled in), by CLI name."""
    from ..models import model_config

    model = model_config(config.model, info, preset="paper", ebt=config.ebt, **model_overrides(config))
    model.pop("backend", None)
    model.pop("checkpoint", None)
    settings = training_settings(config)
    resolved = {"--dataset": config.dataset, "--model": config.model, "--seed": config.seed,
                "--max-graphs": config.max_graphs, "--lr": settings["lr"], "--batch-size": settings["batch_size"],
                "--bf16": config.bf16, "--sampled": config.sampled, "schedule": settings["schedule"]}
    if settings["schedule"] != "plateau":
        resolved["warmup_epochs"] = settings["warmup_epochs"]
    if config.sampled:
        resolved["--fanouts"] = ",".join(str(f) for f in config.fanouts)
    options = {keyword: f"--{option}" for option, keyword in MODEL_OPTIONS.items()}
    options["ebt"] = "--ebt"
    for keyword, value in model.items():
        resolved[options.get(keyword, keyword)] = value
    return resolved
