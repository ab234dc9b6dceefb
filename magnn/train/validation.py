"""The checks of every run config: TrainConfig, StudyConfig, DetectConfig.

Each check raises the command line's `UserError` (magnn.core.errors) naming the option
and what to pass instead; a value of 0 is never replaced by a default. Choice lists come
from the registries (magnn.core.constants, magnn.models.presets). `environment=True` also
checks what depends on this machine: the device exists, --data-root is not a file and
--out can be the output folder (nothing is created).

The command line's option types (positive_int, seed_int, ...) are here too: a bad value
fails at parse time, before any data is loaded, with the same ranges as the config checks.
"""
from __future__ import annotations

import argparse
import math

from ..core.constants import DATASETS, EBT_VARIANTS, SPLITS
from ..core.errors import MAX_SEED, UserError, check_choice, check_environment, check_positive, check_seed
from ..functional import backend_choices
from ..models.presets import EBT_COMPAT_MODES, PRESET_NAMES, PROTEINS_ARCHITECTURES
from ..models.registry import MODELS
from .settings import MODEL_OPTIONS, SCHEDULES, ebt_option, model_overrides

STUDY_EBTS = tuple(variant for variant in EBT_VARIANTS if variant is not None)  # compared with no EBT
FIG4_BASES = ("own", "no_ebt")
ANALYSED = ("final", "best")  # magnn study --analyse


def check_train_config(config, *, environment: bool = True) -> None:
    """A TrainConfig's settings: choices, ranges, the model keywords, the ogbn-proteins options."""
    check_choice(config.dataset, DATASETS, "--dataset")
    check_choice(config.model, tuple(MODELS), "--model")
    check_choice(config.ebt, EBT_VARIANTS, "--ebt", spell=ebt_option)
    if config.preset is not None:
        check_choice(config.preset, PRESET_NAMES, "--preset")
    if config.epochs is not None:  # None only in a study's template: the profile's
        check_positive(config.epochs, "--epochs", integer=True)
    check_positive(config.batch_size, "--batch-size", integer=True)
    check_positive(config.lr, "--lr")
    check_positive(config.max_graphs, "--max-graphs", integer=True)
    if config.schedule is not None:
        check_choice(config.schedule, SCHEDULES, "schedule")
    check_positive(config.warmup_epochs, "warmup_epochs", integer=True, allow_zero=True)
    check_positive(config.max_time, "--max-time")
    check_positive(config.ma_probe_graphs, "--ma-probe-graphs", integer=True, allow_zero=True)
    check_seed(config.seed)
    check_choice(config.backend, backend_choices(), "--backend")
    check_model_overrides(config)
    if config.tox21_csv is not None and config.dataset != "tox21":
        raise UserError(f"--tox21-csv applies to --dataset tox21 only (not {config.dataset})")
    if config.sampled:
        if config.dataset != "ogbn-proteins":
            raise UserError("--sampled applies to ogbn-proteins only (molecule datasets train on batches of graphs)")
        check_fanouts(config.fanouts)
    if environment:
        from ..telemetry import check_tensorboard

        check_environment(config.device, config.data_root, config.out)
        if config.tensorboard is not None:
            check_tensorboard(config.tensorboard)


def check_model_overrides(config) -> None:
    """The model keywords a config overrides: positive sizes, hidden a multiple of heads, dropout in [0, 1)."""
    if not isinstance(config.overrides, dict):
        raise UserError(f"model overrides must be a dict of model arguments, got {type(config.overrides).__name__}")
    options = {keyword: f"--{option}" for option, keyword in MODEL_OPTIONS.items()}
    for keyword in ("num_layers", "hidden", "heads", "pe_dim"):
        check_positive(config.overrides.get(keyword), options.get(keyword, keyword), integer=True)
    sizes = resolved_sizes(config)
    if sizes["hidden"] % sizes["heads"]:
        raise UserError(f"--hidden {sizes['hidden']} must be a multiple of --heads {sizes['heads']} "
                        "(hidden = heads x channels per head)")
    dropout = config.overrides.get("dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= dropout < 1.0):
        raise UserError(f"dropout must be in [0, 1), got {dropout!r}")  # 0 is legitimate: no dropout


def check_fanouts(fanouts) -> None:
    if not fanouts or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in fanouts):
        raise UserError(f"--fanouts must be integers >= 1, got {fanouts!r}")


def resolved_sizes(config) -> dict:
    """hidden and heads as the model will get them: overrides, else the quick preset, else the paper's row."""
    from ..models import get_preset

    row = get_preset(config.model, config.dataset)
    sizes = {"hidden": row.hidden, "heads": row.heads}
    sizes.update({k: v for k, v in model_overrides(config).items() if k in sizes})
    return sizes


def check_study_config(config) -> None:
    """A StudyConfig: its training template (as check_train_config, without the machine) and the study's own."""
    node_only = [name for name, given in (("--sampled", config.train.sampled),
                                          ("--max-seeds", config.max_seeds is not None)) if given]
    if node_only and config.train.dataset != "ogbn-proteins":
        raise UserError(f"{', '.join(node_only)}: ogbn-proteins options (one large graph); pass --dataset "
                        "ogbn-proteins or leave them out")
    check_train_config(config.train, environment=False)
    check_choice(config.ebt, STUDY_EBTS, "--ebt")
    check_positive(config.ablation_fraction, "--ablation-fraction")
    check_positive(config.threshold, "--threshold")
    check_positive(config.mechanics_threshold, "--mechanics-threshold")
    check_positive(config.attack_steps, "--attack-steps", integer=True, allow_zero=True)
    check_positive(config.max_seeds, "--max-seeds", integer=True)
    check_choice(config.fig4_base, FIG4_BASES, "--fig4-base")
    check_choice(config.analyse, ANALYSED, "--analyse")
    if isinstance(config.seeds, bool) or not isinstance(config.seeds, int) or config.seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {config.seeds!r}")
    if not config.abs_threshold > 0:
        raise UserError(f"--abs-threshold must be > 0, got {config.abs_threshold!r}")
    check_fanouts(config.train.fanouts)  # the seed-subgraph detection samples with them, trained --sampled or not
    check_environment(config.train.device, config.train.data_root, config.out)


def check_detect_config(config) -> None:
    """A DetectConfig (the checkpoint itself is read, and checked, by run_detect)."""
    if config.ckpt is None or str(config.ckpt) == "":
        raise UserError("--ckpt is required: pass a checkpoint written by magnn train (best.pt or last.pt)")
    check_choice(config.split, SPLITS, "--split")
    check_positive(config.max_batches, "--max-batches", integer=True)
    check_positive(config.threshold, "--threshold")
    check_environment(config.device, config.data_root, config.out)


def check_variant_choices(architecture, ebt_compat, mitigation=None) -> None:
    """--architecture, --ebt-compat and --mitigation name entries of the registries in magnn.models.presets
    and magnn.core.mitigation."""
    from ..core.mitigation import MITIGATIONS

    check_choice(architecture, (None,) + tuple(PROTEINS_ARCHITECTURES), "--architecture")
    check_choice(ebt_compat, (None,) + EBT_COMPAT_MODES, "--ebt-compat")
    check_choice(mitigation, (None,) + MITIGATIONS, "--mitigation")


# -- the command line's option types ---------------------------------------------------------

def _number(text: str, integer: bool):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (0 would otherwise be silently replaced or divide by zero)."""
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
    """Comma-separated integers >= 1, e.g. "5,10,15"."""
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
