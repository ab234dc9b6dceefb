"""PyG's own TransformerConv test file, run against magnn's layer with only the import swapped.

The file is PyG's, so it is not part of this repository: point $MAGNN_PYG_TESTS at a checkout of
PyG's sources (the folder holding test/nn/conv/test_transformer_conv.py), at its test/ folder,
or at the file itself, ideally at the tag of the installed torch_geometric version::

    python -c "import torch_geometric; print(torch_geometric.__version__)"      # e.g. 2.8.1
    git clone --depth 1 --branch 2.8.0 https://github.com/pyg-team/pytorch_geometric /tmp/pyg
    MAGNN_PYG_TESTS=/tmp/pyg python -m pytest tests/test_pyg_upstream.py

(PyG's sdist on PyPI does not ship its tests; its test file for TransformerConv has not changed
between 2.5 and 2.8.) Without $MAGNN_PYG_TESTS the test is skipped, saying so. The copy runs in a
fresh pytest process with FULL_TEST=1 (PyG's switch for its TorchScript checks), so every check
of the file applies: the torch.sparse adjacency, return_attention_weights, torch.jit.script of
models holding the layer (outputs compared with `torch.allclose`'s default tolerances), the
bipartite form. With torch-sparse installed the file also checks SparseTensor adjacencies; the
result says which was the case.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELATIVE = Path("test") / "nn" / "conv" / "test_transformer_conv.py"
THEIR_IMPORT = "from torch_geometric.nn import TransformerConv\n"
OUR_IMPORT = "from magnn.layers import TransformerConv\n"


def _pyg_test_file() -> Path | None:
    """PyG's test file under $MAGNN_PYG_TESTS (a source checkout, its test/ folder or the file)."""
    given = os.environ.get("MAGNN_PYG_TESTS")
    if not given:
        return None
    base = Path(given).expanduser()
    for candidate in (base, base / RELATIVE, base / RELATIVE.relative_to("test")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MAGNN_PYG_TESTS={given!r} holds no {RELATIVE} (nor is it that file)")


def test_pyg_transformer_conv_tests_pass_with_the_import_swapped(tmp_path):
    source = _pyg_test_file()
    if source is None:
        pytest.skip("PyG's test file is not here: set MAGNN_PYG_TESTS to a checkout of PyG's sources "
                    "(see this module's docstring)")
    text = source.read_text()
    assert text.count(THEIR_IMPORT) == 1, f"{source} no longer imports TransformerConv as {THEIR_IMPORT!r}"
    swapped = tmp_path / "test_transformer_conv_magnn.py"
    swapped.write_text(text.replace(THEIR_IMPORT, OUR_IMPORT))
    env = {**os.environ, "FULL_TEST": "1", "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                                                      os.environ.get("PYTHONPATH"))))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(swapped),
         "--rootdir", str(tmp_path), "-c", os.devnull],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import torch_geometric.typing as t; print(t.WITH_TORCH_SPARSE)"],
                           env=env, capture_output=True, text=True, timeout=300)
    print(f"PyG's {RELATIVE.name}: passed with torch-sparse {'installed' if 'True' in probe.stdout else 'absent'}")
