"""`magnn study` (and the grid run, `--dataset all` / `--model all`): options parsed into a StudyConfig."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from pathlib import Path

from ..core.constants import DATASETS
from ..models.registry import MODELS
from .common import add_run_options, add_trust_options, add_variants, option_default, description_of

# -- study -----------------------------------------------------------------------------------------

def add_study(commands) -> None:
    from ..study import StudyConfig, pipeline
    from ..train import TrainConfig
    from ..train.validation import ANALYSED, FIG4_BASES, STUDY_EBTS, nonnegative_int, positive_float, positive_int

    parser = commands.add_parser(
        "study", description=description_of(pipeline),
        help="the main job: train (no EBT / EBT), detect MAs base vs trained, ablation, attack, report + figures")
    default, train_default = functools.partial(option_default, StudyConfig), functools.partial(option_default, TrainConfig)
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default=train_default("dataset"),
                        help="'all' (or --model all): the grid run, one study per pair into OUT/<dataset>_<model>, "
                             "finished pairs skipped, Table 1 and the Fig. 2/4 grids in OUT/grid.md")
    parser.add_argument("--model", choices=tuple(MODELS) + ("all",), default=train_default("model"))
    parser.add_argument("--out", default=default("out"), help="output folder")
    add_run_options(parser)
    parser.add_argument("--quick", action="store_true", help="minutes on a CPU (the default is the full protocol)")
    parser.add_argument("--ebt", choices=STUDY_EBTS, default=default("ebt"), help="EBT variant compared with no EBT")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the profile's epochs (>= 1)")
    parser.add_argument("--ckpt-no-ebt", default=default("ckpt_no_ebt"),
                        help="use this trained checkpoint instead of training")
    parser.add_argument("--ckpt-ebt", default=default("ckpt_ebt"),
                        help="use this trained EBT checkpoint instead of training")
    parser.add_argument("--ablation-fraction", type=positive_float, default=default("ablation_fraction"),
                        help="meaningless edges added, per real edge (> 0)")
    parser.add_argument("--xavier-base", action="store_true", help="base model Xavier-initialised (the paper's text)")
    parser.add_argument("--threshold", type=positive_float, default=default("threshold"))
    parser.add_argument("--mechanics-threshold", type=positive_float, default=default("mechanics_threshold"),
                        help="the r_ec above which the mechanics stage's MA intervention sets entries to zero / to "
                             "their mean (default: --threshold); detection, growth and onset keep --threshold")
    parser.add_argument("--attack-steps", type=nonnegative_int, default=default("attack_steps"),
                        help="the attack's epoch cap, one Adam step per validation batch per epoch (default: the "
                             "profile's; 0: random noise only); the protocol (lr 7e-4, plateau halving, stop at lr < 1e-6) "
                             "stays the paper's")
    parser.add_argument("--attack-node-only", action="store_true",
                        help="attack noise on the node embedding only (default: node and edge embeddings)")
    parser.add_argument("--attack-shared-noise", action="store_true",
                        help="one attack noise vector per embedding, shared by every node / edge and batch")
    parser.add_argument("--fig4-base", choices=FIG4_BASES, default=default("fig4_base"),
                        help="Fig. 4's base band: the EBT model's own base (default) or the no-EBT base")
    parser.add_argument("--seeds", type=positive_int, default=default("seeds"),
                        help="run the pair this many times (seeds --seed, --seed+1, ...) into OUT/seed_<s>; "
                             "OUT/seeds.md: each finding as mean and 95%% interval over seeds with the per-seed values")
    parser.add_argument("--abs-threshold", type=positive_float, default=default("abs_threshold"),
                        help="the absolute MA criterion shown beside the ratio: max |a| above it (the LLM definition: 100)")
    parser.add_argument("--analyse", choices=ANALYSED, default=default("analyse"),
                        help="the model detection, ablation and attack analyse: the final epoch's (default, as the "
                             "paper's code) or the best-validation checkpoint")
    parser.add_argument("--max-seeds", type=positive_int, default=default("max_seeds"),
                        help="ogbn-proteins: test seed nodes of the paper's detection (default: the profile's; "
                             "full profile: all)")
    parser.add_argument("--compare-mitigations", action="store_true",
                        help="train each mitigation (none, ebt-edge, ebt-slot, sink, gate) on the same data and "
                             "seeds (with --seeds N) into OUT/seed_<s>/<tag>, each against its own untrained base; "
                             "OUT/compare.md / .json / .png: MA growth, sink mass, test loss, attack gain and what "
                             "the MAs do (intervention, int8, onset: the mechanics stage) with intervals "
                             "(magnn.study.compare)")
    add_variants(parser)
    add_trust_options(parser)
    parser.set_defaults(func=cmd_study, recorded=study_defaults)


def study_defaults(raw: dict) -> dict:
    """The option defaults that reproduce a recorded StudyConfig (report.json "config"): the
    study's own settings and its training template's, flat, as the options name them."""
    from ..study import StudyConfig

    config = StudyConfig.from_dict(raw)
    defaults = dataclasses.asdict(config.train)
    defaults.update({name: value for name, value in dataclasses.asdict(config).items() if name != "train"})
    defaults["fanouts"] = tuple(config.train.fanouts)
    return defaults


def study_config(args):
    """The StudyConfig that `magnn study`'s parsed options describe."""
    from ..study import StudyConfig
    from ..study.config import VARIANT_OPTIONS
    from ..train import TrainConfig

    names = set(StudyConfig.__dataclass_fields__) | set(TrainConfig.__dataclass_fields__) | set(VARIANT_OPTIONS)
    names -= {"train", "func", "recorded"}
    return StudyConfig.from_options(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def cmd_study(args) -> int:
    from ..study import run_study

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "compare_mitigations", False):
        return cmd_compare(args)
    if "all" in (args.dataset, args.model):
        return cmd_grid(args)
    config = study_config(args)
    report = run_study(config)
    written = ("seeds.md", "seeds.json") if config.seeds > 1 else ("report.md", "report.json")
    print(f"wrote {Path(config.out) / written[0]} and {Path(config.out) / written[1]}")
    for line in report["findings"]:
        print(" - " + line)
    return 0


def cmd_compare(args) -> int:
    """`magnn study --compare-mitigations`: every mitigation on one (dataset, model) (magnn.study.compare)."""
    from ..core.errors import UserError
    from ..study.compare import run_comparison

    if "all" in (args.dataset, args.model):
        raise UserError("--compare-mitigations compares on one dataset and model: pass --dataset and --model "
                        "(not 'all')")
    if args.mitigation is not None:
        raise UserError(f"--compare-mitigations trains every mitigation itself: drop --mitigation {args.mitigation}")
    for name in ("ckpt_no_ebt", "ckpt_ebt"):
        if getattr(args, name, None):
            raise UserError(f"--compare-mitigations trains its own models: drop --{name.replace('_', '-')}")
    summary = run_comparison(study_config(args))
    print(f"wrote {Path(args.out) / 'compare.md'} and {Path(args.out) / 'compare.json'}")
    for row in summary["rows"]:
        growth = row["growth"]["mean"]
        print(f" - {row['mitigation']}: growth over own base {growth:.4g}" if growth == growth
              else f" - {row['mitigation']}: growth not measured")
    return 0


def cmd_grid(args) -> int:
    """`magnn study --dataset all` / `--model all`: the grid run (magnn.study.grid)."""
    from ..study.grid import GridConfig, run_grid

    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    models = tuple(MODELS) if args.model == "all" else (args.model,)
    template = study_config(argparse.Namespace(**{**vars(args), "dataset": datasets[0], "model": models[0]}))
    summary = run_grid(GridConfig(datasets=datasets, models=models, out=args.out, study=template))
    print(f"wrote {Path(args.out) / 'grid.md'} and {Path(args.out) / 'grid.json'}")
    failed = [key for key, state in summary["pairs"].items() if state["status"] == "failed"]
    for key, state in summary["pairs"].items():
        print(f" - {key}: {state['status']}" + (f" ({state['error']})" if state.get("error") else ""))
    return 1 if failed else 0


