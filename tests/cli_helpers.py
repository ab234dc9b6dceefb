"""What the tests that run `magnn.cli.main` in-process share: tiny training options, the one
error line a failure prints, and a tiny trained run (8 bundled ZINC graphs, 2 layers of width 8).

Test modules import the fixtures by name (pytest finds fixtures in a test module's namespace).
"""
from __future__ import annotations

import shutil

import pytest

from magnn.cli import main

TINY = ["--dataset", "zinc", "--max-graphs", "8", "--hidden", "8", "--heads", "2", "--batch-size", "8",
        "--backend", "torch"]


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, command: str, code: int, expected: int = 2) -> str:
    """The one error line of stderr (progress bars and log lines may precede it), checked for format."""
    assert "Traceback" not in err, err
    assert code == expected, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"magnn {command}: error: "), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # empty: ZINC falls back to the bundled subset


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A finished 1-epoch run with --layers 2 (the quick preset alone would give 4)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--layers", "2", "--epochs", "1", "--out", str(out), "--data-root", str(data_root)]) == 0
    return out


@pytest.fixture()
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


