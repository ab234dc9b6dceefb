"""`magnn` command line: info, build-ext, train, detect, study.

Each subcommand lives in its own module and is imported only when run, so
`magnn info` stays fast and works even where optional pieces are missing.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys


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


def _run_module(module_name: str):
    def run(args):
        return importlib.import_module(module_name).main(args)

    return run


class Parser(argparse.ArgumentParser):
    """argparse with magnn's error format: one line on stderr, exit code 2 (subcommands inherit it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="magnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, devices and which backends run here (and why not)")
    info.set_defaults(func=cmd_info)

    build = commands.add_parser("build-ext", help="compile the C++ CPU kernels now instead of on first use")
    build.add_argument("--verbose", action="store_true")
    build.set_defaults(func=cmd_build_ext)

    for module_name in ("magnn.train", "magnn.study.detect_run", "magnn.study.pipeline"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(func=_run_module(module_name))
    return parser


def main(argv=None) -> int:
    """Run the `magnn` command line; returns the exit code.

    Errors the user can fix (magnn.errors.UserError, which the data loaders'
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
