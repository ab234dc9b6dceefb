"""A regular (wheel) install ships the C++ sources and keeps the cpu backend usable; in a fresh venv
it runs magnn.layers on the cpu backend without the study's extras, which its metadata lists only
under the `study` extra.

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
from test_light_core import BLOCKER, EXTRAS  # the import blocker of the study's extras

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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (no network: the installed setuptools)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels)],
        cwd=source, check=True, capture_output=True, text=True,
    )
    (built,) = wheels.glob("magnn-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_the_csrc_and_the_installed_cpu_backend_works(tmp_path, wheel):
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


# what `pip install magnn` must bring and what only `magnn[study]` may
CORE = ("torch", "torch-geometric", "numpy", "scipy", "tqdm", "ninja")

CHECK_LIGHT = textwrap.dedent("""
    import json, sys
    import torch
    import magnn.layers
    from magnn.backends import cpu
    torch.manual_seed(0)
    conv = magnn.layers.TransformerConv(4, 3, heads=2, edge_dim=2, backend="cpu")
    edge_index = torch.tensor([[0, 1, 2, 3, 3], [1, 2, 3, 0, 1]])
    x, edge_attr = torch.randn(4, 4), torch.randn(5, 2)
    fused = conv(x, edge_index, edge_attr)
    conv.register_message_forward_hook(lambda *args: None)  # PyG's message path: the same function
    json.dump({"magnn": magnn.__file__, "loaded": cpu.is_loaded(),
               "match": torch.allclose(fused, conv(x, edge_index, edge_attr), atol=1e-6),
               "extras": sorted(n for n in sys.modules if n.split(".")[0] in EXTRAS)}, sys.stdout)
""")


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def test_wheel_metadata_keeps_the_study_extras_out_of_the_core(wheel):
    requires = _requires_dist(wheel)
    for name in CORE:
        assert any(spec.startswith(name) and "extra ==" not in spec for spec in requires), (name, requires)
    assert any(spec.startswith("triton") and "platform_system" in spec and "extra" not in spec for spec in requires)
    for name in EXTRAS:
        naming = [spec for spec in requires if spec.startswith(name)]
        assert naming and all('extra == "study"' in spec for spec in naming), (name, requires)


@pytest.mark.slow
def test_a_fresh_venv_with_the_wheel_runs_the_layers_without_the_study_extras(tmp_path, wheel):
    """`pip install magnn` (the wheel, --no-deps: torch and PyG come from the system site through
    --system-site-packages, no network) in a new venv; ogb, rdkit, matplotlib and pandas are made
    unimportable (the system site has them); magnn.layers and the cpu backend run. The cpu extension
    is the one this checkout built (same sources: its stamp matches) and no compiler is offered, so
    the installed copy loads it as a prebuilt library instead of compiling for minutes."""
    from magnn.backends import cpu

    cpu.build()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, text=True)
    extensions = tmp_path / "extensions"
    shutil.copytree(cpu.build_directory(), extensions / cpu.build_directory().name,
                    ignore=shutil.ignore_patterns("*.o", "*.ninja*", "lock", "*.lock", "*.tmp"))
    workdir = tmp_path / "elsewhere"  # not the checkout: only the installed magnn is importable
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(TORCH_EXTENSIONS_DIR=str(extensions), CXX="/nonexistent/c++", PYTHONNOUSERSITE="1")
    run = subprocess.run([str(python), "-c", BLOCKER + f"EXTRAS = {EXTRAS!r}\n" + CHECK_LIGHT], cwd=workdir,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert Path(report["magnn"]).is_relative_to(venv), report
    assert report["loaded"] and report["match"] and report["extras"] == [], report
