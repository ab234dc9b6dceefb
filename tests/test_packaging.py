"""A regular (wheel) install ships the C++ sources and keeps the cpu backend usable.

Builds the wheel from a copy of the checkout (no network: --no-build-isolation
uses the installed setuptools), installs it into a temporary folder and runs
magnn from there in a fresh interpreter whose working directory is elsewhere,
so the checkout cannot be imported. The cpu backend JIT-builds its kernels
from the shipped sources into an empty extension folder: that build makes this
test slow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a build never needs; the rest of the checkout is copied as it is
IGNORED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks",
           ".venv", "runs", "out", "tests", "benchmarks")

CHECK_INSTALLED = textwrap.dedent("""
    import json, sys
    import torch
    import magnn
    from magnn.backends import cpu
    from magnn.functional import edge_attention

    gen = torch.Generator().manual_seed(0)
    graph = magnn.Graph(torch.randint(0, 12, (2, 50), generator=gen), 12)
    q, k, v = (torch.randn(12, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    e = torch.randn(50, 2, 4, generator=gen, dtype=torch.float64)
    options = dict(mode="additive", ebt="slot", ebt_params=tuple(torch.randn(2, 4, dtype=torch.float64)
                                                                 for _ in range(3)))
    with_cpu = edge_attention(q, k, v, e, graph, backend="cpu", **options)
    with_torch = edge_attention(q, k, v, e, graph, backend="torch", **options)
    json.dump({
        "magnn": magnn.__file__,
        "csrc": str(cpu.csrc_dir()),
        "library": cpu._library_path,
        "match": all(torch.allclose(a, b, rtol=1e-9, atol=1e-11) for a, b in zip(with_cpu, with_torch)),
    }, sys.stdout)
""")


def _module_files(root: Path, package: str) -> set[str]:
    return {path.relative_to(root).as_posix() for path in (root / package).rglob("*.py")
            if "__pycache__" not in path.parts}


@pytest.mark.slow
def test_wheel_ships_the_csrc_and_the_installed_cpu_backend_works(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels)],
        cwd=source, check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("magnn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # the C++ sources, inside the package, where magnn.backends.cpu looks first
    for name in ("registration.cpp", "edge_attention.cpp", "row_stats.h"):
        assert f"magnn/_csrc/{name}" in names
    # every module of the checkout (the pyproject's package list is explicit) and the bundled data
    for package in ("magnn", "magnn_kernels"):
        missing = _module_files(REPO, package) - names
        assert not missing, f"modules missing from the wheel (add their package to [tool.setuptools] packages): {missing}"
    assert "magnn/data/bundled/tox21.csv.gz" in names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    workdir = tmp_path / "elsewhere"  # not the checkout: only the installed magnn is importable
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(site), TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"), PYTHONNOUSERSITE="1")

    info = subprocess.run([sys.executable, "-m", "magnn", "info"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    assert info.returncode == 0, info.stderr
    cpu_lines = [line.split() for line in info.stdout.splitlines() if line.split()[:2] == ["cpu", "cpu"]]
    assert cpu_lines == [["cpu", "cpu", "usable"]], info.stdout

    run = subprocess.run([sys.executable, "-c", CHECK_INSTALLED], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert Path(report["magnn"]).is_relative_to(site)
    assert Path(report["csrc"]) == site / "magnn" / "_csrc"
    assert Path(report["library"]).is_relative_to(tmp_path / "extensions")
    assert report["match"]
