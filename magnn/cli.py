"""`magnn` command line: info, build-ext, train, detect, study.

Argument parsing only: each subcommand's options are declared here (one
function per subcommand), parsed into the library's typed config
(magnn.train.TrainConfig, magnn.study.DetectConfig, magnn.study.StudyConfig)
and handed to its entry point (train, run_detect, run_study), which validates
the config and raises UserError for what the user can fix. Defaults come from
the configs. The entry points are imported only when their command runs, so
`magnn --help` and `magnn info` stay fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import math
import os
import platform
import sys
from pathlib import Path

from .core.constants import BACKEND_NAMES, DATASETS, EBT_VARIANTS, MODEL_NAMES, SPLITS
from .core.errors import MAX_SEED

TRAIN_DESCRIPTION = """magnn train: train GraphTransformer / GraphiT / SAN on TOX21, ZINC or ogbn-proteins.

Writes DIR/metrics.json (config, per-epoch metrics, best validation epoch,
test metrics of the best checkpoint), DIR/last.pt (every epoch, atomically)
and DIR/best.pt. `--resume` continues from DIR/last.pt and reaches the same
weights as an uninterrupted run with the same seed: shuffling is seeded per
epoch and every RNG state travels in the checkpoint. Under `torchrun`
(WORLD_SIZE > 1) molecule batches shard across ranks with DistributedDataParallel.
"""

DETECT_DESCRIPTION = "`magnn detect`: MA detection on a split from a saved checkpoint (detect.json + figures)."

STUDY_DESCRIPTION = """magnn study: train without and with EBT, detect MAs, ablate, attack, report.

Writes DIR/report.json (every number), DIR/report.md (tables shaped like the
paper's Table 1 and 2, the paper's values beside ours, and an honest line on
whether each qualitative finding reproduced) and PNG figures:
sorted_max_ratios.png (Fig. 2/4), edge_ratios.png (Fig. 1),
hist_<model>.png (Fig. 3), heatmap_<model>.png and ablation.png.
"""


# -- option types: a bad value fails at parse time, before any data is loaded ----------------

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


def _default(config_class, name: str):
    """A config field's default: the command line's defaults are the library's."""
    return config_class.__dataclass_fields__[name].default


def _from_args(config_class, args):
    """A config from the parsed options named like its fields (the rest of `args` is left out)."""
    return config_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)})


# -- info, build-ext -----------------------------------------------------------------------------

def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a broken install should still be reported, not crash info
        return f"not importable ({type(error).__name__}: {error})"
    return getattr(module, "__version__", "installed")


def cmd_info(args) -> int:
    import torch

    from . import __version__
    from .functional import AUTO_ORDER, BACKENDS, select_backend

    print(f"magnn {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for name, module in (("torch", "torch"), ("triton", "triton"), ("torch_geometric", "torch_geometric"),
                         ("ogb", "ogb"), ("rdkit", "rdkit"), ("scipy", "scipy"), ("torch_scatter", "torch_scatter")):
        print(f"  {name:16s} {_version(module)}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            print(f"  cuda:{index}           {torch.cuda.get_device_name(index)}")
        devices.append(torch.device("cuda"))
    else:
        print("  cuda             no CUDA device visible (torch.cuda.is_available() is False)")
    print("backends:")
    for device in devices:
        for name, backend in BACKENDS.items():
            if name == "cpu" and device.type != "cpu":
                continue
            reason = backend.reason_unavailable(device, torch.float32)
            state = "usable" if reason is None else f"not usable: {reason}"
            print(f"  {device.type:5s} {name:7s} {state}")
        auto = select_backend("auto", device, torch.float32).name
        print(f"  {device.type:5s} auto -> {auto} (preference {' > '.join(AUTO_ORDER.get(device.type, ('torch',)))})")
    return 0


def cmd_build_ext(args) -> int:
    from .backends.cpu import build

    path = build(verbose=args.verbose)
    print(f"built the C++ CPU kernels: {path}")
    return 0


def add_info(commands) -> None:
    info = commands.add_parser("info", help="versions, devices and which backends run here (and why not)")
    info.set_defaults(func=cmd_info)


def add_build_ext(commands) -> None:
    build = commands.add_parser("build-ext", help="compile the C++ CPU kernels now instead of on first use")
    build.add_argument("--verbose", action="store_true")
    build.set_defaults(func=cmd_build_ext)


# -- train -----------------------------------------------------------------------------------------

def add_train(commands) -> None:
    from .models.presets import PRESET_NAMES
    from .train import TrainConfig, ebt_option

    parser = commands.add_parser("train", help="train a model (tqdm progress, metrics.json, atomic checkpoints, --resume)",
                                 description=TRAIN_DESCRIPTION)
    default = functools.partial(_default, TrainConfig)
    parser.add_argument("--dataset", choices=DATASETS, default=default("dataset"))
    parser.add_argument("--model", choices=MODEL_NAMES, default=default("model"))
    parser.add_argument("--ebt", choices=tuple(map(ebt_option, EBT_VARIANTS)), default=ebt_option(default("ebt")))
    parser.add_argument("--epochs", type=positive_int, default=default("epochs"),
                        help="train up to this many epochs in all (>= 1)")
    parser.add_argument("--out", default=default("out"), help="output folder (metrics.json, checkpoints)")
    parser.add_argument("--data-root", default=default("data_root"),
                        help="folder with the dataset files (default: bundled / cache)")
    parser.add_argument("--device", default=default("device"), help="cpu or cuda")
    parser.add_argument("--seed", type=seed_int, default=default("seed"))
    parser.add_argument("--max-graphs", type=positive_int, default=default("max_graphs"),
                        help="use the first N graphs of each split")
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
    parser.add_argument("--backend", default=default("backend"), choices=BACKEND_NAMES)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--sampled", action="store_true",
                        help="ogbn-proteins: the paper's neighbour-sampled training (evaluation stays full-batch)")
    parser.add_argument("--fanouts", type=positive_int_list, default=default("fanouts"),
                        help="neighbours drawn per hop with --sampled")
    parser.add_argument("--max-time", type=positive_float, default=default("max_time"),
                        help="stop after this many MINUTES of training (checked after each epoch, as the paper's code)")
    parser.add_argument("--ebt-compat", choices=("gnn-mas",), default=None,
                        help="SAN/GraphiT: compute EBT as the paper's published code does (see magnn study --help)")
    parser.add_argument("--architecture", choices=("paper", "magnn"), default=None,
                        help="ogbn-proteins: the paper's model inputs (species only, one shared edge Linear; the "
                             "default) or magnn's first form (mean edge features in the node input, GT edge stream, "
                             "per-layer edge Linears), as in magnn study")
    parser.add_argument("--tensorboard", metavar="DIR", default=default("tensorboard"),
                        help="write TensorBoard event files to DIR every epoch: loss, metrics, learning rate and "
                             "per-layer MA figures (max edge ratio, median |a|, log10 ratio histogram); "
                             "needs pip install tensorboard")
    parser.add_argument("--ma-probe-graphs", type=nonnegative_int, default=default("ma_probe_graphs"),
                        help="metrics.json ma_over_epochs: per-layer MA figures after every epoch on the first N "
                             "validation graphs (node tasks: the validation forward); 0: off")
    parser.set_defaults(func=cmd_train)


def train_config(args):
    """The TrainConfig that `magnn train`'s parsed options describe."""
    from .train import MODEL_OPTIONS, TrainConfig

    overrides = {keyword: getattr(args, option) for option, keyword in MODEL_OPTIONS.items()
                 if getattr(args, option, None) is not None}
    if getattr(args, "ebt_compat", None) and args.model != "gt":  # GT's paper code computes the formula
        overrides["ebt_compat"] = args.ebt_compat
    if getattr(args, "architecture", None) is not None:
        from .core.errors import UserError
        from .models.presets import proteins_architecture

        if args.dataset != "ogbn-proteins":
            raise UserError(f"--architecture chooses between ogbn-proteins' two model forms; drop it for "
                            f"--dataset {args.dataset}")
        overrides = {**proteins_architecture(args.model, args.architecture), **overrides}  # explicit sizes win
    return TrainConfig(
        dataset=args.dataset, model=args.model, ebt=None if args.ebt == "none" else args.ebt,
        epochs=args.epochs, out=args.out, data_root=args.data_root, device=args.device, seed=args.seed,
        max_graphs=args.max_graphs, batch_size=args.batch_size, lr=args.lr, preset=args.preset,
        overrides=overrides, bf16=args.bf16, activation_checkpointing=args.activation_checkpointing,
        backend=args.backend, sampled=args.sampled, fanouts=tuple(args.fanouts),
        tensorboard=args.tensorboard, ma_probe_graphs=args.ma_probe_graphs, max_time=args.max_time,
    )


def cmd_train(args) -> int:
    from .train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(train_config(args), resume=args.resume)
    test = result["test"]
    print(f"best epoch {result['best_epoch'] + 1}: " + ", ".join(f"test {k} {v:.4f}" for k, v in test.items()))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


# -- detect ----------------------------------------------------------------------------------------

def add_detect(commands) -> None:
    from .study.detect_run import DetectConfig

    parser = commands.add_parser("detect", help="MA detection on a split from a saved checkpoint (report.json + figures)",
                                 description=DETECT_DESCRIPTION)
    default = functools.partial(_default, DetectConfig)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by magnn train (best.pt or last.pt)")
    parser.add_argument("--split", default=default("split"), choices=SPLITS)
    parser.add_argument("--out", default=default("out"), help="output folder (default: next to the checkpoint)")
    parser.add_argument("--max-batches", type=positive_int, default=default("max_batches"),
                        help="first N batches only (>= 1)")
    parser.add_argument("--threshold", type=positive_float, default=default("threshold"))
    parser.add_argument("--device", default=default("device"))
    parser.add_argument("--data-root", default=default("data_root"),
                        help="dataset folder (default: the one the checkpoint was trained with)")
    parser.set_defaults(func=cmd_detect)


def detect_config(args):
    """The DetectConfig that `magnn detect`'s parsed options describe."""
    from .study.detect_run import DetectConfig

    return _from_args(DetectConfig, args)


def cmd_detect(args) -> int:
    from .study.detect_run import run_detect

    result = run_detect(detect_config(args))
    for line in result.summary():
        print(line)
    print(f"wrote {result.out}")
    return 0


# -- study -----------------------------------------------------------------------------------------

def add_study(commands) -> None:
    from .study.pipeline import STUDY_EBTS, StudyConfig

    parser = commands.add_parser(
        "study", description=STUDY_DESCRIPTION,
        help="the main job: train (no EBT / EBT), detect MAs base vs trained, ablation, attack, report + figures")
    default = functools.partial(_default, StudyConfig)
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default=default("dataset"),
                        help="'all' (or --model all): the grid run, one study per pair into OUT/<dataset>_<model>, "
                             "finished pairs skipped, Table 1 and the Fig. 2/4 grids in OUT/grid.md")
    parser.add_argument("--model", choices=MODEL_NAMES + ("all",), default=default("model"))
    parser.add_argument("--out", default=default("out"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="minutes on a CPU (the default is the full protocol)")
    parser.add_argument("--ebt", choices=STUDY_EBTS, default=default("ebt"), help="EBT variant compared with no EBT")
    parser.add_argument("--epochs", type=positive_int, default=default("epochs"),
                        help="override the profile's epochs (>= 1)")
    parser.add_argument("--data-root", default=default("data_root"))
    parser.add_argument("--device", default=default("device"))
    parser.add_argument("--seed", type=seed_int, default=default("seed"))
    parser.add_argument("--max-graphs", type=positive_int, default=default("max_graphs"),
                        help="first N graphs of each split")
    parser.add_argument("--ckpt-no-ebt", default=default("ckpt_no_ebt"),
                        help="use this trained checkpoint instead of training")
    parser.add_argument("--ckpt-ebt", default=default("ckpt_ebt"),
                        help="use this trained EBT checkpoint instead of training")
    parser.add_argument("--ablation-fraction", type=positive_float, default=default("ablation_fraction"),
                        help="meaningless edges added, per real edge (> 0)")
    parser.add_argument("--xavier-base", action="store_true", help="base model Xavier-initialised (the paper's text)")
    parser.add_argument("--threshold", type=positive_float, default=default("threshold"))
    parser.add_argument("--attack-steps", type=nonnegative_int, default=default("attack_steps"),
                        help="the attack's epoch cap, one Adam step per validation batch per epoch (default: the "
                             "profile's; 0: random noise only); the protocol (lr 7e-4, plateau halving, stop at lr < 1e-6) "
                             "stays the paper's")
    parser.add_argument("--attack-node-only", action="store_true",
                        help="attack noise on the node embedding only (default: node and edge embeddings)")
    parser.add_argument("--attack-shared-noise", action="store_true",
                        help="one attack noise vector per embedding, shared by every node / edge and batch")
    parser.add_argument("--ebt-compat", choices=("gnn-mas",), default=default("ebt_compat"),
                        help="gnn-mas: SAN and GraphiT as the paper's published code computes them (the EBT bias "
                             "weight overwrites every real edge's attention weight; SAN on ogbn-proteins alike without "
                             "EBT), for a like-for-like Table 1 / Fig. 4; GT is unaffected")
    parser.add_argument("--max-time", type=positive_float, default=default("max_time"),
                        help="stop each training run after this many MINUTES of epochs (checked after each epoch)")
    parser.add_argument("--fig4-base", choices=("own", "no_ebt"), default=default("fig4_base"),
                        help="Fig. 4's base band: the EBT model's own base (default) or the no-EBT base")
    parser.add_argument("--backend", default=default("backend"), choices=BACKEND_NAMES)
    parser.add_argument("--sampled", action="store_true",
                        help="ogbn-proteins: train the paper's way (neighbour-sampled seed batches; default: full batch)")
    parser.add_argument("--fanouts", type=positive_int_list, default=default("fanouts"),
                        help="ogbn-proteins: neighbours per hop for --sampled training and the seed-subgraph detection")
    parser.add_argument("--max-seeds", type=positive_int, default=default("max_seeds"),
                        help="ogbn-proteins: test seed nodes of the paper's detection (default: the profile's; "
                             "full profile: all)")
    parser.add_argument("--architecture", choices=("paper", "magnn"), default=default("architecture"),
                        help="ogbn-proteins: the paper's model inputs (species only, one shared edge Linear) or magnn's "
                             "first form (mean edge features in the node input, GT edge stream, per-layer edge Linears)")
    parser.set_defaults(func=cmd_study)


def study_config(args):
    """The StudyConfig that `magnn study`'s parsed options describe."""
    from .study.pipeline import StudyConfig

    return _from_args(StudyConfig, args)


def cmd_study(args) -> int:
    from .study.pipeline import run_study

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "all" in (args.dataset, args.model):
        return cmd_grid(args)
    config = study_config(args)
    report = run_study(config)
    print(f"wrote {Path(config.out) / 'report.md'} and {Path(config.out) / 'report.json'}")
    for line in report["findings"]:
        print(" - " + line)
    return 0


def cmd_grid(args) -> int:
    """`magnn study --dataset all` / `--model all`: the grid run (magnn.study.grid)."""
    from .study.grid import GridConfig, run_grid

    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    models = MODEL_NAMES if args.model == "all" else (args.model,)
    template = dataclasses.replace(study_config(args), dataset=datasets[0], model=models[0])
    summary = run_grid(GridConfig(datasets=datasets, models=models, out=args.out, study=template))
    print(f"wrote {Path(args.out) / 'grid.md'} and {Path(args.out) / 'grid.json'}")
    failed = [key for key, state in summary["pairs"].items() if state["status"] == "failed"]
    for key, state in summary["pairs"].items():
        print(f" - {key}: {state['status']}" + (f" ({state['error']})" if state.get("error") else ""))
    return 1 if failed else 0


# -- the parser and main ---------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with magnn's error format: one line on stderr, exit code 2 (subcommands inherit it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="magnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_info, add_build_ext, add_train, add_detect, add_study):
        add(commands)
    return parser


def main(argv=None) -> int:
    """Run the `magnn` command line; returns the exit code.

    Errors the user can fix (magnn.core.errors.UserError, which the data loaders'
    MissingDataError and CorruptDataError are) print one line on stderr,
    `magnn <command>: error: ...`, and return their exit code (2 for bad input,
    1 for a run that failed); no traceback unless MAGNN_DEBUG is set.
    """
    from .core.errors import UserError, one_line

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, its one line already printed)
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        if os.environ.get("MAGNN_DEBUG"):
            raise
        print(f"magnn {args.command}: error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        # other failures that usually come from the input (a model's own argument checks, ...)
        if os.environ.get("MAGNN_DEBUG"):
            raise
        print(f"magnn {args.command}: error: {one_line(error)} (set MAGNN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
