"""`magnn train` and `magnn detect`: their options, parsed into TrainConfig / DetectConfig."""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

from ..core.constants import DATASETS, EBT_VARIANTS, SPLITS
from ..models.registry import MODELS
from .common import (DETECT_DESCRIPTION, DEVICE_HELP, add_run_options, add_trust_options, add_variants, config_from_args,
                     description_of, option_default)

# -- train -----------------------------------------------------------------------------------------

def add_train(commands) -> None:
    from .. import train as train_module
    from ..models.presets import PRESET_NAMES
    from ..train import TrainConfig, ebt_option
    from ..train.validation import nonnegative_int, positive_float, positive_int

    parser = commands.add_parser("train", help="train a model (tqdm progress, metrics.json, atomic checkpoints, --resume)",
                                 description=description_of(train_module))
    default = functools.partial(option_default, TrainConfig)
    parser.add_argument("--dataset", choices=DATASETS, default=default("dataset"))
    parser.add_argument("--model", choices=tuple(MODELS), default=default("model"))
    parser.add_argument("--ebt", choices=tuple(map(ebt_option, EBT_VARIANTS)), default=ebt_option(default("ebt")))
    parser.add_argument("--epochs", type=positive_int, default=default("epochs"),
                        help="train up to this many epochs in all (>= 1)")
    parser.add_argument("--out", default=default("out"), help="output folder (metrics.json, checkpoints)")
    add_run_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=default("batch_size"), help="default: the preset's")
    parser.add_argument("--lr", type=positive_float, default=default("lr"), help="default: the preset's")
    # the command line trains the quick preset unless told otherwise (TrainConfig's None: the paper's sizes)
    parser.add_argument("--preset", choices=PRESET_NAMES, default="quick",
                        help="paper: SPEC §10 sizes; quick: small CPU-sized models (default)")
    parser.add_argument("--layers", type=positive_int, default=None, help="attention layers (default: the preset's)")
    parser.add_argument("--hidden", type=positive_int, default=None, help="width, a multiple of --heads")
    parser.add_argument("--heads", type=positive_int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/last.pt; with the --epochs it already trained, re-evaluate it and "
                             "rewrite metrics.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (metrics.json, best.pt, last.pt); without it a new "
                             "run into such a folder is refused")
    add_trust_options(parser)
    add_variants(parser)
    parser.add_argument("--tensorboard", metavar="DIR", default=default("tensorboard"),
                        help="write TensorBoard event files to DIR every epoch: loss, metrics, learning rate and "
                             "per-layer MA figures (max edge ratio, median |a|, log10 ratio histogram); "
                             "needs pip install tensorboard")
    parser.add_argument("--ma-probe-graphs", type=nonnegative_int, default=default("ma_probe_graphs"),
                        help="metrics.json ma_over_epochs: per-layer MA figures after every epoch on the first N "
                             "validation graphs (node tasks: the validation forward); 0: off")
    parser.set_defaults(func=cmd_train, recorded=train_defaults)


def train_defaults(raw: dict) -> dict:
    """The option defaults that reproduce a recorded TrainConfig (metrics.json "config")."""
    from ..train import TrainConfig, ebt_option

    config = TrainConfig.from_dict(raw)
    defaults = dataclasses.asdict(config)
    defaults["ebt"] = ebt_option(config.ebt)
    defaults["fanouts"] = tuple(config.fanouts)
    return defaults


def train_config(args):
    """The TrainConfig that `magnn train`'s parsed options describe."""
    from ..models.presets import mitigation_ebt, variant_overrides
    from ..train import MODEL_OPTIONS, TrainConfig

    sizes = {keyword: getattr(args, option) for option, keyword in MODEL_OPTIONS.items()
             if getattr(args, option, None) is not None}
    variants = variant_overrides(args.model, args.dataset, architecture=args.architecture, ebt_compat=args.ebt_compat,
                                 mitigation=args.mitigation)
    fields = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if hasattr(args, name)}
    ebt = mitigation_ebt(args.mitigation, None if args.ebt == "none" else args.ebt)
    fields.update(ebt=ebt, fanouts=tuple(args.fanouts),
                  overrides={**args.overrides, **variants, **sizes})  # explicit sizes win
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    from ..train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(train_config(args), resume=args.resume, overwrite=args.overwrite)
    test = result["test"]
    print(f"best epoch {result['best_epoch'] + 1}: " + ", ".join(f"test {k} {v:.4f}" for k, v in test.items()))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


# -- detect ----------------------------------------------------------------------------------------

def add_detect(commands) -> None:
    from ..study.detect_run import DetectConfig
    from ..train.validation import positive_float, positive_int

    parser = commands.add_parser("detect", help="MA detection on a split from a saved checkpoint (report.json + figures)",
                                 description=DETECT_DESCRIPTION)
    default = functools.partial(option_default, DetectConfig)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by magnn train (best.pt or last.pt)")
    parser.add_argument("--split", default=default("split"), choices=SPLITS)
    parser.add_argument("--out", default=default("out"), help="output folder (default: next to the checkpoint)")
    parser.add_argument("--max-batches", type=positive_int, default=default("max_batches"),
                        help="first N batches only (>= 1)")
    parser.add_argument("--threshold", type=positive_float, default=default("threshold"))
    parser.add_argument("--without-bias", action="store_true",
                        help="statistics of each layer's score without EBT's bias term b_e,i (gt mode; molecule "
                             "splits): what the bias does not touch (magnn.analysis.unbiased)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--data-root", default=default("data_root"),
                        help="dataset folder (default: the one the checkpoint was trained with)")
    parser.add_argument("--tox21-csv", metavar="FILE", default=None,
                        help="TOX21: your own MoleculeNet-layout CSV (default: the one the checkpoint was trained with)")
    add_trust_options(parser)
    parser.set_defaults(func=cmd_detect)


def detect_config(args):
    """The DetectConfig that `magnn detect`'s parsed options describe."""
    from ..study.detect_run import DetectConfig

    return config_from_args(DetectConfig, args)


def cmd_detect(args) -> int:
    from ..study.detect_run import run_detect

    result = run_detect(detect_config(args))
    for line in result.summary():
        print(line)
    print(f"wrote {result.out}")
    return 0


