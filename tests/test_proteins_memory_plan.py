"""The full-batch memory plan of benchmarks/proteins_fullbatch.py: its arithmetic, and (slow) one
measured CPU step against it within 15%."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from helpers import require_backend

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "proteins_fullbatch.py"


@pytest.fixture(scope="module")
def bench():
    # the script imports its sibling benchmarks/procstatus.py, as it does when run directly
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("proteins_fullbatch", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["proteins_fullbatch"] = module
    spec.loader.exec_module(module)
    return module


def test_parameter_count_matches_the_built_models(bench):
    from magnn.data import proteins_info
    from magnn.models import build_model

    info = proteins_info(8)
    for name in ("gt", "graphit", "san"):
        model = build_model(name, info, preset="paper", backend="torch")
        assert bench.parameter_count(name, bench.HIDDEN[name]) == sum(p.numel() for p in model.parameters())


def test_plan_parts_add_up_and_every_model_fits_80gb_somehow(bench, capsys):
    rows = bench.print_plan()
    assert "graphit" in capsys.readouterr().out
    for row in rows:
        assert sum(row["parts_bytes"].values()) == row["peak_bytes"]
    for name in ("gt", "graphit", "san"):
        mine = {(r["fused_edge_projection"], r.get("in_kernel_projection", False), r["checkpointing"]): r["peak_bytes"]
                for r in rows if r["model"] == name}
        assert len(mine) == 6 and min(mine.values()) <= 80e9
        # fusing the edge projection and checkpointing each lower the peak
        assert mine[(True, False, False)] < mine[(False, False, False)]
        assert mine[(True, False, True)] < mine[(True, False, False)]
        # the in-kernel projection (issue 24) lowers it further, with or without checkpointing
        assert mine[(True, True, False)] < mine[(True, False, True)] and mine[(True, True, True)] <= mine[(True, True, False)]


def test_plan_scales_with_edges_and_width(bench):
    small = bench.plan_step("gt", 10_000, 1_000_000, dtype="fp32")
    double = bench.plan_step("gt", 10_000, 2_000_000, dtype="fp32")
    wide = bench.plan_step("gt", 10_000, 1_000_000, dtype="fp32", hidden=128)
    bf16 = bench.plan_step("gt", 10_000, 1_000_000, dtype="bf16")
    assert 1.8 < double["step_increment_bytes"] / small["step_increment_bytes"] < 2.05
    assert wide["peak_bytes"] > small["peak_bytes"] > bf16["peak_bytes"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_one_measured_cpu_step_is_within_15_percent_of_the_plan(bench):
    import torch

    require_backend("cpu", torch.device("cpu"))  # the fused kernels the plan models; a failure when CI requires them
    # degree 400 (1.2M edges): with the in-kernel edge projection (issue 24) no [E, hidden] tensor is
    # left, and at 300k edges the plan's coarse node terms outweighed the per-edge ones it models
    result = bench.measure_in_subprocess(model_name="gt", device="cpu", dtype="fp32", checkpointing=True,
                                         fused=True, nodes=3000, degree=400, backend="cpu")
    assert abs(result["plan_error"]) <= 0.15, result
