"""Command-line conventions: --version, --quiet / --log-level, --no-progress and TQDM_DISABLE,
defaults in --help, --device auto, a `magnn --help` that loads no subcommand's heavy imports,
and each torchrun rank on its LOCAL_RANK GPU (the device choice, tested on CPU)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import magnn
from magnn.cli import main
from magnn.core.progress import progress_enabled
from magnn.distributed import resolve_device

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch_geometric", "ogb", "rdkit", "matplotlib", "pandas")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"magnn {magnn.__version__}"


def test_top_level_help_imports_no_heavy_package():
    result = _python("import sys\nfrom magnn.cli import main\ncode = main(['--help'])\n"
                     f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], code)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED [] 0" in result.stdout
    for name in ("info", "build-ext", "train", "detect", "study"):
        assert name in result.stdout


def test_help_and_version_import_no_torch():
    """`import magnn` / `magnn.cli` and `magnn --help` / `--version` leave torch unloaded (what keeps
    `magnn --help` fast: torch's import alone takes seconds); the package's names still load on use."""
    code = ("import sys\nimport magnn, magnn.cli\nfrom magnn.cli import main\n"
            "codes = [main([flag]) for flag in ('--help', '--version')]\n"
            "print('TORCH', 'torch' in sys.modules, codes)\n"
            "print('NAMES', magnn.Graph.__module__, magnn.collect.__module__, magnn.functional.__name__, "
            "'torch' in sys.modules)")
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TORCH False [0, 0]" in result.stdout
    assert "NAMES magnn.core.graph magnn.stats.collection magnn.functional True" in result.stdout
    assert set(magnn.__all__) <= set(dir(magnn))


def test_subcommand_help_shows_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "rank's cuda:LOCAL_RANK (default: auto)" in text


def test_quiet_log_level_and_no_progress(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(True)
    assert main(["--quiet", "info"]) == 0
    assert logging.getLogger("magnn").level == logging.WARNING
    assert os.environ.get("TQDM_DISABLE") == "1" and not progress_enabled(True)
    monkeypatch.delenv("TQDM_DISABLE")
    assert main(["--log-level", "debug", "--no-progress", "info"]) == 0
    assert logging.getLogger("magnn").level == logging.DEBUG and not progress_enabled(True)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_enabled(True) and not progress_enabled(False)


def test_device_auto_and_local_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun, fourth process of this machine
    assert resolve_device("auto") == "cuda:3" and resolve_device("cuda") == "cuda:3"
    assert resolve_device("cuda:1") == "cuda:1"  # an explicit index is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"  # CPU ranks (gloo) stay on cpu


def test_cli_resolves_auto_before_the_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import magnn.cli.run as run

    monkeypatch.setattr(run, "cmd_train", lambda args: seen.setdefault("device", args.device) and 0)
    from magnn.cli import build_parser

    parser = build_parser(["train"])
    args = parser.parse_args(["train"])
    assert args.device == "auto"
    from magnn.cli import apply_global_options

    apply_global_options(args)
    assert args.device == "cpu"
