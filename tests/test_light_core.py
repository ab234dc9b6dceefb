"""The light core: `import magnn.layers` and the cpu backend need none of the study's extras
(ogb, rdkit, matplotlib, pandas); what needs them names `pip install 'magnn[study]'`; the package
metadata declares exactly that; a prebuilt cpu extension serves without a compiler; writing
figures never switches matplotlib's backend."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("ogb", "rdkit", "matplotlib", "pandas")

# importing a blocked package fails as a missing one does (ModuleNotFoundError naming it); find_spec
# still answers (torch._dynamo probes some of these names with importlib.util.find_spec)
BLOCKER = f"""
import importlib.abc, importlib.machinery, sys
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked)", name=spec.name)
    def exec_module(self, module):
        pass
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            return importlib.machinery.ModuleSpec(name, Refuse())
        return None
sys.meta_path.insert(0, Blocker())
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=600)


def test_layers_and_cpu_backend_run_without_the_study_extras():
    result = _run("""
        import torch
        import magnn.layers
        from magnn.functional import edge_attention
        torch.manual_seed(0)
        conv = magnn.layers.TransformerConv(4, 3, heads=2, edge_dim=2, backend="cpu")
        edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
        out = conv(torch.randn(4, 4), edge_index, torch.randn(4, 2))
        q = k = v = torch.randn(4, 2, 3)
        node, edge = edge_attention(q, k, v, torch.randn(4, 2, 3), edge_index, backend="cpu")
        assert out.shape == (4, 6) and node.shape == (4, 2, 3)
        assert not any(name.split(".")[0] in {extras!r} for name in sys.modules), sorted(sys.modules)
        print("ok")
    """.format(extras=EXTRAS))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("module", ["magnn.data", "magnn.models", "magnn.study"])
def test_what_needs_the_extras_names_the_extra(module):
    result = _run(f"""
        from magnn.core.errors import MissingExtraError
        try:
            import {module}
        except MissingExtraError as error:
            print("MESSAGE", error)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install 'magnn[study]'" in result.stdout


def test_figures_name_the_extra_when_matplotlib_is_missing(tmp_path):
    result = _run(f"""
        from magnn.core.errors import MissingExtraError
        import magnn.analysis.figures as figures
        try:
            figures._subplots(1, 1)
        except MissingExtraError as error:
            print("MESSAGE", error)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matplotlib" in result.stdout and "pip install 'magnn[study]'" in result.stdout


def test_writing_a_figure_leaves_the_matplotlib_backend_alone(tmp_path):
    code = f"""
        import matplotlib
        matplotlib.use("svg")  # a user's choice (a notebook's inline backend, say)
        import magnn.analysis.figures as figures
        fig, ax = figures._subplots(1, 1, figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        figures._save(fig, {str(tmp_path / "f.png")!r})
        print("BACKEND", matplotlib.get_backend())
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BACKEND svg" in result.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_metadata_core_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("torch", "torch-geometric", "numpy", "scipy", "tqdm", "ninja", "triton"):
        assert name in core
    for name in EXTRAS:
        assert name not in core
        assert any(spec.startswith(name) for spec in project["optional-dependencies"]["study"])
    assert any("study" in spec for spec in project["optional-dependencies"]["test"])
    assert "scatter" not in project["optional-dependencies"]
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert "MIT License" in (ROOT / "LICENSE").read_text() and "the magnn developers" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "magnn" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["magnn"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[study]' && magnn study" in readme


def test_a_prebuilt_extension_serves_without_a_compiler():
    from magnn.backends import cpu

    cpu.build()  # builds (or finds built) the library and writes its sources stamp
    folder, directory = cpu.csrc_dir(), cpu.build_directory()
    assert cpu.prebuilt_library(folder, directory) is not None
    result = _run("""
        import torch
        from magnn.backends import cpu
        from magnn.functional import edge_attention
        assert cpu._compiler() is None
        q = torch.randn(3, 1, 2)
        edge_attention(q, q, q, q[:2], torch.tensor([[0, 1], [1, 2]]), backend="cpu")
        print("loaded", cpu.is_loaded())
    """, CXX="/nonexistent/c++")
    assert result.returncode == 0 and "loaded True" in result.stdout, result.stderr[-3000:]
