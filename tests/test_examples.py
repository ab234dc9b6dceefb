"""Every script in examples/ runs (small sizes, seconds each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "pyg_one_import_swap.py": ["--nodes", "60", "--epochs", "3"],
    "collect_pyg_model.py": ["--nodes", "60"],
    "detect_checkpoint.py": ["--graphs", "4"],
    "proteins_like_full_batch.py": ["--nodes", "300", "--edges", "1500"],
}


def test_every_example_is_run():
    assert sorted(RUNS) == sorted(path.name for path in (ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script, tmp_path):
    extra = ["--out", str(tmp_path / "out")] if script == "detect_checkpoint.py" else []
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *RUNS[script], *extra],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
