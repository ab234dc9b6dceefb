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
import os
import sys

from .common import read_recorded_config, trusting, with_recorded_defaults
from .info import add_build_ext, add_info, cmd_build_ext, cmd_info
from .run import add_detect, add_train, cmd_detect, cmd_train, detect_config, train_config, train_defaults
from .study import add_study, cmd_grid, cmd_study, study_config, study_defaults

__all__ = ["main", "build_parser", "Parser", "train_config", "detect_config", "study_config", "train_defaults",
           "study_defaults", "read_recorded_config", "cmd_info", "cmd_build_ext", "cmd_train", "cmd_detect",
           "cmd_study", "cmd_grid"]


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
    parser.commands = commands  # the subcommands' parsers, by name (--config sets their defaults)
    return parser


def main(argv=None) -> int:
    """Run the `magnn` command line; returns the exit code.

    Errors the user can fix (magnn.core.errors.UserError, which the data loaders'
    MissingDataError and CorruptDataError are) print one line on stderr,
    `magnn <command>: error: ...`, and return their exit code (2 for bad input,
    1 for a run that failed); no traceback unless MAGNN_DEBUG is set.
    """
    from ..core.errors import UserError, one_line

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2, its one line already printed)
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    try:
        if getattr(args, "config", None):
            args = with_recorded_defaults(parser, argv, args)
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
