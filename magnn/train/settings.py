"""What a TrainConfig resolves to: the model keywords and the optimisation settings of a run.

A config names a preset and overrides; `model_overrides` and `training_settings` resolve
them in one order: the paper's row (SPEC §10), then the quick preset (magnn.models.presets,
its own section), then what the config sets. `run_settings` lists every resolved setting
that shapes a run's trajectory, by CLI name: what a --resume must keep.
"""
from __future__ import annotations

from ..models.presets import QUICK_DATASET_MODEL, QUICK_MODEL, QUICK_TRAINING

SCHEDULES = ("plateau", "cosine")  # the lr schedules make_scheduler builds
# CLI option -> model keyword (the models' own argument names)
MODEL_OPTIONS = {"layers": "num_layers", "hidden": "hidden", "heads": "heads"}
# settings that may differ between a run and its --resume; everything else must match the checkpoint
RESUMABLE_SETTINGS = ("epochs", "out", "data_root", "device", "backend", "activation_checkpointing", "tensorboard")


def ebt_option(ebt) -> str:
    """An EBT variant as --ebt spells it (None is "none")."""
    return "none" if ebt is None else str(ebt)


def model_overrides(config) -> dict:
    """The model keywords on top of the paper's row: the quick preset's, then the config's own."""
    quick = config.preset == "quick" and config.dataset != "ogbn-proteins"
    overrides = dict(QUICK_MODEL, **QUICK_DATASET_MODEL.get(config.dataset, {})) if quick else {}
    overrides.update(config.overrides)
    overrides.setdefault("backend", config.backend)
    if config.activation_checkpointing:
        overrides["checkpoint"] = True
    return overrides


def training_settings(config) -> dict:
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


def run_settings(config, info) -> dict:
    """Every setting that shapes a run's trajectory, resolved (preset values filled in), by CLI name."""
    from ..models import model_config

    model = model_config(config.model, info, preset="paper", ebt=config.ebt, **model_overrides(config))
    model.pop("backend", None)
    model.pop("checkpoint", None)
    settings = training_settings(config)
    resolved = {"--dataset": config.dataset, "--model": config.model, "--seed": config.seed,
                "--max-graphs": config.max_graphs, "--lr": settings["lr"], "--batch-size": settings["batch_size"],
                "--bf16": config.bf16, "--sampled": config.sampled, "schedule": settings["schedule"],
                "--tox21-csv": getattr(config, "tox21_csv", None)}
    if settings["schedule"] != "plateau":
        resolved["warmup_epochs"] = settings["warmup_epochs"]
    if config.sampled:
        resolved["--fanouts"] = ",".join(str(f) for f in config.fanouts)
    options = {keyword: f"--{option}" for option, keyword in MODEL_OPTIONS.items()}
    options["ebt"] = "--ebt"
    for keyword, value in model.items():
        resolved[options.get(keyword, keyword)] = value
    return resolved
