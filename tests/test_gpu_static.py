"""benchmarks/gpu/static.py, the compile-only performance model: its arithmetic (occupancy, SASS
loops), and properties of the main kernel variants compiled for sm_90 on this CPU (Triton's
bundled ptxas, cuobjdump and nvdisasm): vector width of the [E, H, D] edge loads and stores, no
spills, shared memory within an H100 SM, the one-pass additive forward."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "static.py"


def load_static():
    # importing it pops TRITON_INTERPRET from this process's environment: put it back
    saved = os.environ.get("TRITON_INTERPRET")
    spec = importlib.util.spec_from_file_location("magnn_gpu_static", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return module


static = load_static()


def test_occupancy_from_registers_shared_memory_and_warps():
    # 206 registers: 6,656 per warp, 2 warps per scheduler, 8 per SM: two 4-warp CTAs
    assert static.occupancy(206, 8192, 4)["ctas_per_sm"] == 2
    assert static.occupancy(206, 8192, 4)["limited_by"] == "registers"
    # 96 registers: 3,072 per warp, 5 per scheduler, 20 per SM: five CTAs, 31%
    got = static.occupancy(96, 512, 4)
    assert got["ctas_per_sm"] == 5 and abs(got["occupancy"] - 20 / 64) < 1e-12
    # 64 registers: 32 warps, 50%; 32 registers: the warp limit (16 CTAs of 4 warps) binds
    assert static.occupancy(64, 0, 4)["ctas_per_sm"] == 8
    assert static.occupancy(32, 0, 4)["ctas_per_sm"] == 16
    # 100 KB of shared memory: two CTAs fit in 228 KB
    assert static.occupancy(32, 100 * 1024, 4)["ctas_per_sm"] == 2


def test_tile_loops_are_the_innermost_loops_that_load():
    sass = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E.64 R2, desc[UR4][R4.64] ;
.L_x_1:
	//## File "/x/edge_attention_common.py", line 7
        /*0020*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0030*/                   FADD R8, R8, R9 ;
        /*0040*/               @P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0050*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0060*/               @P1 BRA `(.L_x_2) ;
        /*0070*/               @P2 BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
"""
    instrs, loops = static.parse_sass(sass)
    assert [i.op for i in instrs][:3] == ["LDC", "LDG.E.64", "LDG.E.128"]
    assert loops == [(2, 4)]  # not the outer loop, not the loop without a load
    mix = static.instruction_mix(instrs[2:5], {("edge_attention_common.py", 7)})
    assert mix["instructions"] == 3 and mix["global_loads"] == 1
    assert mix["edge_access"]["loads"] == {"LDG.E.128": 1}


# the subprocess scripts' prelude: benchmarks/gpu/static.py (argv[2]) loaded as `static`, the repo (argv[1])
# on the path
_LOAD_STATIC = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("static", sys.argv[2])
static = importlib.util.module_from_spec(spec)
sys.modules["static"] = static
spec.loader.exec_module(static)
"""

_MODEL_SCRIPT = _LOAD_STATIC + r"""
cases = [c for c in static.CASES if c[0] in ("gt fwd", "gt fwd +stats", "additive fwd no edge_out", "gt bwd",
                                             "gt fwd proj F=8", "gt bwd proj F=8")]
print(json.dumps(static.model(["proteins-600k"], "bf16", 8, 8, cases)))
"""


@pytest.fixture(scope="module")
def modelled():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", _MODEL_SCRIPT, str(REPO), str(SCRIPT)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tile_kernels(row):
    return [m for m in row["launches"] if m["tiles"] and m["kernel"].startswith("_edge_attention_")
            and "merge" not in m["kernel"]]


def test_model_covers_the_cases_and_labels_its_estimates(modelled):
    assert "ESTIMATES" in modelled["label"]
    assert modelled["constants"]["hbm_bytes_per_s"] == 3.35e12
    work = modelled["workloads"]["proteins-600k"]
    assert work["num_edges"] == 600_000 and work["num_nodes"] == 20_000
    for row in work["cases"].values():
        assert row["issue_ms"] > 0 and row["roofline_ms"] > 0
        assert 0 < row["roofline_share_at_best"] <= 1
        # the compiled loops stream at least the minimal edge bytes (every edge row is loaded)
        assert row["stream_ms"] >= 0.999 * row["roofline_ms"]
        assert row["estimate_ms"] == max(row["issue_ms"], row["stream_ms"], row["roofline_ms"])
        assert sum(m["edges"] for m in _tile_kernels(row)) >= work["num_edges"]


def test_main_variants_compile_without_spills_within_the_sm(modelled):
    limit = modelled["constants"]["smem_per_cta_max"]
    for case, row in modelled["workloads"]["proteins-600k"]["cases"].items():
        for launch in row["launches"]:
            assert launch["spill_bytes"] == 0, (case, launch["kernel"], launch["spill_bytes"])
            assert launch["shared_bytes"] <= limit, (case, launch["kernel"])
            assert launch["ctas_per_sm"] >= 1, (case, launch["kernel"])


def test_edge_rows_move_as_128_bit_vectors(modelled):
    """H = 8, D = 8 in bf16 (a specialised shape): every load and store of an [E, H, D] edge tensor
    in the tile loops is one 16-byte access (LDG.E.128 / STG.E.128), none element by element."""
    for case, row in modelled["workloads"]["proteins-600k"]["cases"].items():
        for launch in _tile_kernels(row):
            assert launch["constexprs"]["HEADS"] == 8 and launch["constexprs"]["HEAD_DIM"] == 8
            edge = launch["tile_loop"]["edge_access"]
            assert edge["loads"] or row["edge_features"], (case, launch["kernel"])
            for side in ("loads", "stores"):
                assert set(edge[side]) <= {"LDG.E.128", "STG.E.128"}, (case, launch["kernel"], edge)
    stores = modelled["workloads"]["proteins-600k"]["cases"]["gt fwd"]["launches"][0]["tile_loop"]["edge_access"]
    assert stores["stores"] == {"STG.E.128": 1}  # edge_out: 8 bf16 per thread per tile


def test_additive_forward_without_edge_out_is_one_pass(modelled):
    """additive, need_edge_out=False, no statistics: one forward launch per row kind, one tile loop
    (no message pass), and about the tile-loop length of gt's."""
    cases = modelled["workloads"]["proteins-600k"]["cases"]
    additive = [m for m in _tile_kernels(cases["additive fwd no edge_out"]) if m["kernel"].endswith("fwd_kernel")]
    assert additive and all(not m["constexprs"]["MESSAGE_PASS"] and m["tile_loops"] == 1 for m in additive)
    gt = cases["gt fwd"]["launches"][0]
    assert additive[0]["tile_loop"]["instructions"] <= 1.2 * gt["tile_loop"]["instructions"]


def test_persistent_grid_is_sized_from_the_build_occupancy(modelled):
    """The statistics forward's persistent grid holds as many programs as fit on the SMs at once
    (resident CTAs from the build's registers and shared memory), not a fixed 8 per SM."""
    from magnn_kernels.utils import resident_ctas

    for regs, shared, warps in ((206, 8192, 4), (96, 512, 4), (32, 0, 4), (128, 100 * 1024, 8), (255, 0, 8)):
        assert resident_ctas(regs, shared, warps) == static.occupancy(regs, shared, warps)["ctas_per_sm"]
    row = modelled["workloads"]["proteins-600k"]["cases"]["gt fwd +stats"]
    launch = next(m for m in _tile_kernels(row) if m["constexprs"]["STATS"] and not m["constexprs"]["PARTIAL"])
    assert launch["items"] > launch["grid"][0]
    assert launch["grid"][0] == modelled["constants"]["sms"] * launch["ctas_per_sm"]


def test_projection_variants_read_no_edge_by_hidden_input(modelled):
    """The in-operator projection (F = 8, ogbn-proteins' edge features): the forward's tile loop
    loads no [E, H, D] tensor (e is formed from a [E, 8]) and stores edge_out as 128-bit rows; the
    backward stores no [E, H, D] gradient; the minimal traffic is below the unfused pass's."""
    cases = modelled["workloads"]["proteins-600k"]["cases"]
    fwd, bwd = cases["gt fwd proj F=8"], cases["gt bwd proj F=8"]
    assert fwd["edge_features"] == bwd["edge_features"] == 8
    for launch in _tile_kernels(fwd):
        assert launch["constexprs"]["EDGE_FEATURES"] == 8
        assert not launch["tile_loop"]["edge_access"]["loads"]
        assert set(launch["tile_loop"]["edge_access"]["stores"]) == {"STG.E.128"}
    for launch in _tile_kernels(bwd):
        assert not launch["tile_loop"]["edge_access"]["stores"], launch["kernel"]
    assert fwd["min_bytes"] < cases["gt fwd"]["min_bytes"] and bwd["min_bytes"] < cases["gt bwd"]["min_bytes"]


_MOLECULE_SCRIPT = _LOAD_STATIC + r"""
import torch
work = static.workload("molecules")
out = {"num_edges": work.num_edges}
for direction in ("fwd", "bwd"):
    launches = static.capture_case(work, direction, "gt", False, True, torch.bfloat16, 8, 8)
    out[direction] = [dict(static._work(launch), name=launch.name, constexprs={
        k: v for k, v in launch.constexpr_values().items() if k in ("SLOTS", "ROWS", "BLOCK_E")})
        for launch in launches]
print(json.dumps(out))
"""


def test_molecule_batch_packs_short_rows_into_busy_tiles():
    """The 128-molecule ZINC batch (rows of 1-4 edges): the forward packs its rows several to a
    tile (edge_attention_packed, one launch per SLOTS bucket) and at least half of the tiles' lanes
    hold an edge (13% with one row per 16-edge tile), and the backward's tiles are cut to the
    longest row; launches are captured (compiled kernels, so in a fresh interpreter), none run."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _MOLECULE_SCRIPT, str(REPO), str(SCRIPT)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    fwd = got["fwd"]
    assert fwd and all(w["name"] == "_edge_attention_fwd_packed_kernel" for w in fwd)  # no row kernel
    assert sum(w["edges"] for w in fwd) == got["num_edges"]
    assert sum(w["edges"] for w in fwd) / sum(w["lanes"] for w in fwd) >= 0.5
    assert {w["constexprs"]["SLOTS"] for w in fwd} == {1, 2, 4}
    bwd = [w for w in got["bwd"] if "_bwd_" in w["name"]]
    assert len(bwd) == 2 and all(w["constexprs"]["BLOCK_E"] == 4 for w in bwd)
    assert all(w["edges"] == got["num_edges"] and w["edges"] / w["lanes"] >= 0.5 for w in bwd)


def test_projection_backward_sums_weight_gradients_by_tile_products(modelled):
    """bf16 features: the src backward's dW / db are per-tile tensor-core products (DW_DOT_HALF), so
    its tile loop has no per-feature reductions across warps (few barriers) and 2+ CTAs fit per SM."""
    row = modelled["workloads"]["proteins-600k"]["cases"]["gt bwd proj F=8"]
    src = [m for m in _tile_kernels(row) if "src" in m["kernel"]]
    assert src and all(m["constexprs"]["DW_DOT"] == 2 for m in src)
    for launch in src:
        assert launch["tile_loop"]["barriers"] <= 16 and launch["ctas_per_sm"] >= 2, launch["tile_loop"]
        assert launch["tile_loop"]["instructions"] < 800  # 1,312 with the per-feature reductions
