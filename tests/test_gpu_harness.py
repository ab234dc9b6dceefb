"""benchmarks/gpu/run.py, the GPU harness, on what a CPU can check: its arguments, the install
stage against a local wheel folder (no network), and the format of the result files (every
stage in --dry-run, the bench stage for real in --cpu-smoke on a tiny graph)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "run.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("magnn_gpu_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load_harness()


def run_script(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def assert_valid_record(record: dict, stage: str) -> None:
    """The <stage>.json schema of the harness's docstring."""
    assert record["schema"] == harness.SCHEMA
    assert record["stage"] == stage
    assert record["status"] in ("ok", "failed", "dry-run")
    assert isinstance(record["command"], str) and "run.py" in record["command"]
    assert isinstance(record["seconds"], (int, float)) and record["seconds"] >= 0
    assert record["started"].endswith("+00:00")
    env = record["environment"]
    for key in ("python", "platform", "torch", "cuda", "triton", "torch_geometric", "device", "magnn", "commit"):
        assert key in env, key
    assert env["python"] and env["torch"]
    assert isinstance(record["steps"], list)
    for step in record["steps"]:
        assert set(step) >= {"command", "returncode", "seconds", "timed_out"}
    assert isinstance(record["figures"], dict)
    assert record["error"] is None or isinstance(record["error"], str)


# -- arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["bogus", "--out", "x"], "unknown stage(s) bogus"),
    (["bench", "nope", "--out", "x"], "unknown stage(s) nope"),
    (["bench"], "--out"),
    (["install", "--out", "x"], "needs --wheels"),
    (["install", "--out", "x", "--wheels", "/no/such/folder"], "no such folder"),
    (["proteins", "--out", "x", "--models", "gt,bert"], "unknown ['bert']"),
    (["bench", "--out", "x", "--budget", "0"], "positive"),
    (["bench", "--out", "x", "--workloads", "molecules,galaxy"], "unknown ['galaxy']"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_stages_run_in_order_once_and_all_expands(tmp_path):
    assert harness.expand_stages(["bench", "tests", "bench"]) == ["tests", "bench"]
    assert harness.expand_stages(["all"]) == list(harness.STAGES)
    args = harness.parse_args(["proteins", "bench", "--out", str(tmp_path), "--models", "san"])
    assert args.stages == ["bench", "proteins"] and args.models == ["san"]


def test_pip_commands_install_offline_from_the_folder(tmp_path):
    (tmp_path / "ogb-1.3.6-py3-none-any.whl").touch()
    (tmp_path / "rdkit-2024.3.1-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    commands = harness.pip_install_commands(tmp_path, target=None)
    assert len(commands) == 2  # the folder's wheels, then magnn from the checkout
    for command in commands:
        assert command[1:4] == ["-m", "pip", "install"]
        assert "--no-index" in command and "--no-deps" in command
        assert command[command.index("--find-links") + 1] == str(tmp_path)
        assert "--target" not in command
    assert sorted(Path(c).name for c in commands[0] if c.endswith(".whl")) == sorted(
        p.name for p in tmp_path.glob("*.whl"))
    assert commands[1][-1] == str(harness.REPO) and "--no-build-isolation" in commands[1]
    (tmp_path / "magnn-0.1.0-py3-none-any.whl").touch()
    with_wheel = harness.pip_install_commands(tmp_path, target=str(tmp_path / "site"))
    assert len(with_wheel) == 1  # magnn's own wheel is in the folder: nothing is built
    assert with_wheel[0][with_wheel[0].index("--target") + 1] == str(tmp_path / "site")


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/>'
                   '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>')
    assert harness.junit_counts(xml) == {"tests": 8, "failures": 1, "errors": 1, "skipped": 2}
    assert harness.junit_counts(tmp_path / "absent.xml") is None


def test_forward_bytes_counts_each_tensor_once():
    # N = 10, E = 100, C = 64, bf16: q, k, v, node_out (4 N C) + e, edge_out (2 E C), lse, CSR
    assert harness.forward_bytes(10, 100, 64, 2) == (4 * 10 * 64 + 2 * 100 * 64) * 2 + 10 * 16 * 4 + (11 + 200) * 8


# -- result files -----------------------------------------------------------------------------

def test_dry_run_of_every_stage_writes_valid_records(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ogb-1.3.6-py3-none-any.whl").touch()
    out = tmp_path / "out"
    done = run_script("all", "--out", out, "--wheels", wheels, "--dry-run", "--models", "gt,san")
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in harness.STAGES:
        record = json.loads((out / f"{stage}.json").read_text())
        assert_valid_record(record, stage)
        assert record["status"] == "dry-run"
        assert all(step.get("dry_run") and step["returncode"] is None for step in record["steps"])
        assert (out / f"{stage}.log").is_file()
    install = json.loads((out / "install.json").read_text())
    assert all("--no-index" in step["command"] for step in install["steps"][:2])
    tests = json.loads((out / "tests.json").read_text())
    assert any("-m gpu" in step["command"] for step in tests["steps"])
    proteins = json.loads((out / "proteins.json").read_text())
    measured = [step["command"] for step in proteins["steps"] if "--measure" in step["command"]]
    assert len(measured) == 4  # two models, with and without checkpointing
    for command in measured:
        assert "--device cuda" in command and "--dtype bf16" in command and "--json" in command
    assert sum("--checkpointing" in command for command in measured) == 2
    assert any(step["command"].endswith("--plan") for step in proteins["steps"])


def test_bench_without_a_gpu_fails_cleanly_unless_cpu_smoke(tmp_path):
    # no GPU for the harness even on a machine that has one
    done = run_script("bench", "--out", tmp_path, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 1
    record = json.loads((tmp_path / "bench.json").read_text())
    assert_valid_record(record, "bench")
    assert record["status"] == "failed" and "--cpu-smoke" in record["error"]


@pytest.mark.slow
def test_bench_cpu_smoke_rows(tmp_path):
    done = run_script("bench", "--cpu-smoke", "--out", tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "bench.json").read_text())
    assert_valid_record(record, "bench")
    rows = record["figures"]["rows"]
    assert record["status"] == "ok"
    impls = {row["impl"] for row in rows}
    assert {"magnn[torch]", "pyg-softmax-scatter", "pyg-TransformerConv"} <= impls
    for row in rows:
        assert row["status"] == "ok", row
        assert row["pass"] in ("fwd", "fwd+bwd") and row["dtype"] in ("float32", "bfloat16")
        assert row["num_edges"] > 0 and row["ms_median"] >= row["ms_min"] > 0 and row["reps"] >= 1
    op_rows = [row for row in rows if row["level"] == "op-gt" and row["impl"].startswith("magnn")]
    assert {row["stats"] for row in op_rows} == {False, True}


# -- install against a local wheel folder -------------------------------------------------------

IGNORED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks",
           ".venv", "runs", "out", "tests", "benchmarks", "docs")


@pytest.mark.slow
def test_install_stage_installs_magnn_from_the_wheel_folder_offline(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED))
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    assert [p.name for p in wheels.glob("magnn-*.whl")]
    target, out = tmp_path / "site", tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = run_script("install", "--wheels", wheels, "--target", target, "--out", out, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "install.json").read_text())
    assert_valid_record(record, "install")
    assert record["status"] == "ok" and record["figures"]["missing"] == []
    pip_steps = [step for step in record["steps"] if " pip install " in step["command"]]
    assert len(pip_steps) == 1 and "--no-index" in pip_steps[0]["command"]
    assert pip_steps[0]["returncode"] == 0
    # magnn was imported from the target folder, not from the checkout or an editable install
    assert Path(record["figures"]["magnn_file"]).resolve().is_relative_to(target.resolve())
    assert (target / "magnn" / "_csrc" / "row_stats.h").is_file()


# -- the one-call check -------------------------------------------------------------------------

def test_check_is_one_call_within_its_budget(tmp_path):
    """`check` = install (with --wheels), tests, bench, proteins cut to one call: budgets that add up
    to under 6 minutes, the CUDA parity subset, the bench workloads that matter, one proteins step
    per model without the checkpointing variants."""
    assert sum(harness.CHECK_BUDGETS.values()) <= 360
    assert harness.CHECK_BUDGETS["tests"] <= 120
    args = harness.parse_args(["check", "--out", str(tmp_path)])
    assert args.check and args.stages == ["tests", "bench", "proteins"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ogb-1.3.6-py3-none-any.whl").touch()
    out = tmp_path / "out"
    done = run_script("check", "--out", out, "--wheels", wheels, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in harness.STAGES:
        assert_valid_record(json.loads((out / f"{stage}.json").read_text()), stage)
    tests = json.loads((out / "tests.json").read_text())
    assert any("gpu and not slow" in step["command"] for step in tests["steps"])
    assert any("-k triton" in step["command"] for step in tests["steps"])
    bench = json.loads((out / "bench.json").read_text())
    assert bench["figures"]["cases"] == list(harness.CHECK_WORKLOADS)
    proteins = json.loads((out / "proteins.json").read_text())
    measured = [step["command"] for step in proteins["steps"]]
    assert len(measured) == len(harness.PROTEINS_MODELS)
    assert all("--steps 1" in c and "--checkpointing" not in c and "--measure" in c for c in measured)
    # the real-size full-batch step of every model (GT, GraphiT, SAN) with the in-kernel edge projection
    assert sorted(c.split("--model ")[1].split()[0] for c in measured) == sorted(harness.PROTEINS_MODELS)
    assert sorted(harness.PROTEINS_MODELS) == ["graphit", "gt", "san"]
    assert all("--fused" in c and "--nodes" not in c and "--degree" not in c for c in measured)


def test_check_runs_alone():
    with pytest.raises(SystemExit) as exit_info:
        harness.parse_args(["check", "bench", "--out", "x"])
    assert exit_info.value.code == 2


def test_stage_record_is_written_as_it_goes(tmp_path):
    """Every log line rewrites <stage>.json with status running: a call stopped from outside still
    returns the rows that were measured."""
    args = harness.parse_args(["bench", "--out", str(tmp_path)])
    stage = harness.Stage("bench", args)
    stage.record["figures"]["rows"] = [{"workload": "molecules", "ms_median": 1.0}]
    stage.log("a row")
    partial = json.loads((tmp_path / "bench.json").read_text())
    assert partial["status"] == "running" and partial["figures"]["rows"][0]["ms_median"] == 1.0
    assert stage.finish()["status"] == "ok"
    assert json.loads((tmp_path / "bench.json").read_text())["status"] == "ok"


def test_static_estimates_sit_beside_the_triton_op_rows():
    estimates = json.loads(harness.STATIC_ESTIMATES.read_text())
    assert "ESTIMATES" in estimates["label"]
    assert set(harness.STATIC_WORKLOAD.values()) <= set(estimates["workloads"])
    cases = estimates["workloads"]["proteins-full"]
    row = {"impl": "magnn[triton]", "level": "op-gt", "workload": "proteins-full", "dtype": "bfloat16",
           "stats": True, "pass": "fwd+bwd"}
    want = cases["gt fwd +stats"]["estimate_ms"] + cases["gt bwd"]["estimate_ms"]
    assert harness.static_estimate(estimates, row) == round(want, 4)
    assert harness.static_estimate(estimates, dict(row, **{"pass": "fwd", "stats": False})) == \
        cases["gt fwd"]["estimate_ms"]
    assert harness.static_estimate(estimates, dict(row, impl="pyg-softmax-scatter")) is None
    assert harness.static_estimate(estimates, dict(row, dtype="float32")) is None


def test_device_proteins_graph_has_the_synthetic_degrees():
    import numpy as np
    import torch

    edge_index, num_nodes = harness.device_proteins_graph(500, 12_000, torch.device("cpu"))
    assert edge_index.shape == (2, 12_000) and num_nodes == 500
    assert int(edge_index.min()) >= 0 and int(edge_index.max()) < 500
    static = sys.modules["magnn_gpu_static"]
    want = static._proteins_degrees(500, 12_000)
    assert np.array_equal(torch.bincount(edge_index[1], minlength=500).numpy(), want)
