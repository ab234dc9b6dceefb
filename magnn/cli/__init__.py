"""`magnn` command line: info, build-ext, train, detect, study.

Argument parsing only: each subcommand's options are declared here (one
function per subcommand), parsed into the library's typed config
(magnn.train.TrainConfig, magnn.study.DetectConfig, magnn.study.StudyConfig)
and handed to its entry point (train, run_detect, run_study), which validates
the config and raises UserError for what the user can fix. Defaults come from
the configs; choice lists from the registries (magnn.core.constants,
magnn.models.presets); option types from magnn.train.validation.

`magnn train --config FILE` and `magnn study --config FILE` start from the config a
run recorded (metrics.json or report.json, under "config"; or a file holding just
that config): its settings become the defaults, so the run repeats to the same
numbers, and options given beside --config change them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

__all__ = ["main", "build_parser", "Parser", "train_config", "detect_config", "study_config", "train_defaults",
           "study_defaults", "read_recorded_config", "cmd_info", "cmd_build_ext", "cmd_train", "cmd_detect",
           "cmd_study", "cmd_grid"]

# name: (module of magnn.cli, the function adding its parser, its one line in `magnn --help`). A
# subcommand's module (and what it imports: configs, model registry, torch_geometric) loads only
# when that subcommand is parsed, so `magnn --help` and `magnn --version` start in well under a second.
SUBCOMMANDS = {
    "info": ("info", "add_info", "versions, devices and which backends run here (and why not)"),
    "build-ext": ("info", "add_build_ext", "compile the C++ CPU kernels now instead of on first use"),
    "train": ("run", "add_train", "train a model (tqdm progress, metrics.json, atomic checkpoints, --resume)"),
    "detect": ("run", "add_detect", "MA detection on a split from a saved checkpoint (report.json + figures)"),
    "study": ("study", "add_study",
              "the main job: train (no EBT / EBT), detect MAs base vs trained, ablation, attack, report + figures"),
}
# re-exported names, each loaded from its module on first access (PEP 562)
_LAZY = {"train_config": "run", "detect_config": "run", "train_defaults": "run", "cmd_train": "run",
         "cmd_detect": "run", "study_config": "study", "study_defaults": "study", "cmd_study": "study",
         "cmd_grid": "study", "cmd_info": "info", "cmd_build_ext": "info", "read_recorded_config": "common",
         "with_recorded_defaults": "common"}
LOG_LEVELS = ("debug", "info", "warning", "error")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the parser and main ---------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help; descriptions keep their line breaks."""


class Parser(argparse.ArgumentParser):
    """argparse with magnn's error format: one line on stderr, exit code 2 (subcommands inherit it),
    and the defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_global_options(parser) -> None:
    """--version, --quiet, --log-level, --no-progress: before the subcommand (`magnn --quiet train ...`)."""
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"magnn {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="what magnn's log shows")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="warnings and errors only, no progress bars (as --log-level warning --no-progress)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (also: TQDM_DISABLE=1 in the environment)")


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The `magnn` parser. With argv, only the subcommand it names gets its options (the others
    just their line in --help), so parsing loads only that subcommand's module."""
    parser = Parser(prog="magnn", description=__doc__.splitlines()[0])
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = None if argv is None else next((word for word in argv if word in SUBCOMMANDS), "")
    for name, (module, adder, summary) in SUBCOMMANDS.items():
        if chosen is None or name == chosen:
            getattr(importlib.import_module(f".{module}", __name__), adder)(commands)
        else:
            commands.add_parser(name, help=summary)
    parser.commands = commands  # the subcommands' parsers, by name (--config sets their defaults)
    return parser


def apply_global_options(args) -> None:
    """Logging level and progress bars for this run; `--device auto` (and a bare `cuda` under
    torchrun) resolved to the device this process uses (magnn.distributed.resolve_device)."""
    level = "warning" if args.quiet and args.log_level == "info" else args.log_level
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(message)s")
    logging.getLogger("magnn").setLevel(getattr(logging, level.upper()))
    if args.quiet or args.no_progress:
        os.environ["TQDM_DISABLE"] = "1"
    if isinstance(getattr(args, "device", None), str):
        from ..distributed import resolve_device

        args.device = resolve_device(args.device)


def main(argv=None) -> int:
    """Run the `magnn` command line; returns the exit code.

    Errors the user can fix (magnn.core.errors.UserError, which the data loaders'
    MissingDataError and CorruptDataError are) print one line on stderr,
    `magnn <command>: error: ...`, and return their exit code (2 for bad input,
    1 for a run that failed); no traceback unless MAGNN_DEBUG is set.
    """
    from ..core.errors import UserError, one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, its one line already printed)
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    try:
        apply_global_options(args)
        if getattr(args, "config", None):
            from .common import with_recorded_defaults

            args = with_recorded_defaults(parser, argv, args)
            apply_global_options(args)
        from .common import trusting

        with trusting(args):
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
