#!/usr/bin/env python3
"""Every GPU check of magnn in stages, each sized to finish inside 9 minutes on one H100.

    python benchmarks/gpu/run.py STAGE [STAGE ...] --out DIR [options]
    python benchmarks/gpu/run.py check --wheels DIR --target DIR --out DIR     # the one-call check

`check` is the four stages cut to what one call of at most 7 minutes holds (CHECK_BUDGETS, 345 s
in all): install (when --wheels is given), a CUDA parity subset, the bench rows that matter
(bf16; the molecule batch, the 600k-edge graph and the full ogbn-proteins size, built on the
device; stats on and off; the static model's estimate, benchmarks/gpu/static_estimates.json,
beside each magnn[triton] op row) and one full-batch proteins step per model.

Stages (`all` runs them in this order):
  install   install magnn on a machine without network from a wheel folder (--wheels DIR)
  tests     `pytest -m gpu` and the compiled-kernel parity tests on CUDA
  bench     the edge attention suite: magnn backends (stats off/on) vs PyG's TransformerConv,
            PyG's softmax + scatter pipeline and anemoi-models' Triton kernel (when importable);
            fp32 and bf16; a molecule batch, proteins-like graphs, the full ogbn-proteins size;
            the HBM roofline share of the forward against a measured device-to-device copy
  proteins  benchmarks/proteins_fullbatch.py per model (bf16, with and without checkpointing):
            measured peak memory and step time next to the --plan prediction

Each stage writes DIR/<stage>.json (schema below) and DIR/<stage>.log (the output of every
command it ran). A stage never raises: a failure is recorded as its status and the next stage
runs. `--dry-run` records the commands and cases without running them; `--cpu-smoke` runs the
bench stage on a tiny graph on CPU (what the CPU tests use).

<stage>.json: {"schema": 1, "stage", "status": "ok" | "failed" | "dry-run" | "running", "command",
"started" (UTC ISO), "seconds", "environment": {python, platform, torch, cuda, triton,
torch_geometric, device, magnn, commit}, "steps": [{"command", "returncode", "seconds",
"timed_out"}], "figures": {...}, "error": str | null}. The file is rewritten after every
command and every bench row, with status "running" until the stage ends: a run stopped from
outside still leaves what it measured.

The stages import magnn lazily (the install stage runs before it is installed).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
STAGES = ("install", "tests", "bench", "proteins")
SCHEMA = 1
STAGE_BUDGET_S = 510.0  # every stage stops starting new work after this (9 min less a margin)
# import name -> distribution, for everything magnn imports at run time
RUNTIME_MODULES = {
    "torch": "torch", "triton": "triton", "torch_geometric": "torch-geometric", "numpy": "numpy",
    "scipy": "scipy", "ogb": "ogb", "rdkit": "rdkit", "matplotlib": "matplotlib", "tqdm": "tqdm",
    "ninja": "ninja", "magnn": "magnn",
}
PROTEINS_MODELS = ("gt", "graphit", "san")
# `check`: seconds after which each stage starts no new work (345 s in all; with start-up and
# the last case's overrun the call ends inside 6.5 minutes)
CHECK_BUDGETS = {"install": 45.0, "tests": 110.0, "bench": 130.0, "proteins": 60.0}
CHECK_WORKLOADS = ("molecules", "proteins-20k", "proteins-full")
STATIC_ESTIMATES = REPO / "benchmarks" / "gpu" / "static_estimates.json"
# bench workload -> the static model's
STATIC_WORKLOAD = {"molecules": "molecules", "proteins-20k": "proteins-600k", "proteins-full": "proteins-full"}
BENCH_WORKLOADS = ("molecules", "proteins-20k", "proteins-132k-8M", "proteins-full")


class HarnessError(Exception):
    """A user error in the harness's arguments: exit status 2 with the message."""


# -- arguments ----------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu/run.py", description=__doc__.splitlines()[0],
        epilog="stages: " + ", ".join(STAGES) + ", all",
    )
    parser.add_argument("stages", nargs="+", metavar="STAGE", help="install, tests, bench, proteins, all or check")
    parser.add_argument("--out", required=True, help="folder for the <stage>.json results and <stage>.log logs")
    parser.add_argument("--wheels", help="install: folder of wheels prepared beforehand (see README.md)")
    parser.add_argument("--target", help="install: install into this folder (pip --target) instead of the environment")
    parser.add_argument("--models", default=",".join(PROTEINS_MODELS),
                        help="proteins: comma-separated models (default: gt,graphit,san)")
    parser.add_argument("--workloads", default=None,
                        help="bench: comma-separated subset of molecules, proteins-20k, proteins-132k-8M, "
                             "proteins-full (default: all)")
    parser.add_argument("--budget", type=float, default=STAGE_BUDGET_S,
                        help=f"seconds after which a stage starts no new work (default {STAGE_BUDGET_S:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="record the commands and cases, run nothing")
    parser.add_argument("--cpu-smoke", action="store_true", help="bench: a tiny graph on CPU (harness self-test)")
    args = parser.parse_args(argv)
    try:
        args.check = "check" in args.stages
        if args.check:
            if len(args.stages) > 1:
                raise HarnessError("check runs alone (it is install, tests, bench and proteins cut to one call)")
            args.stages = (["install"] if args.wheels else []) + ["tests", "bench", "proteins"]
        args.stages = expand_stages(args.stages)
        if "install" in args.stages:
            if not args.wheels:
                raise HarnessError("the install stage needs --wheels DIR (a folder of .whl files; see "
                                   "benchmarks/gpu/README.md for how to prepare it)")
            if not Path(args.wheels).is_dir():
                raise HarnessError(f"--wheels {args.wheels}: no such folder")
        models = [m for m in args.models.split(",") if m]
        unknown = [m for m in models if m not in PROTEINS_MODELS]
        if unknown or not models:
            raise HarnessError(f"--models: unknown {unknown or 'empty list'}; choose from {', '.join(PROTEINS_MODELS)}")
        args.models = models
        if args.workloads is not None:
            args.workloads = [w for w in args.workloads.split(",") if w]
            bad = [w for w in args.workloads if w not in BENCH_WORKLOADS]
            if bad or not args.workloads:
                raise HarnessError(f"--workloads: unknown {bad or 'empty list'}; choose from {', '.join(BENCH_WORKLOADS)}")
        if args.budget <= 0:
            raise HarnessError("--budget must be a positive number of seconds")
    except HarnessError as error:
        parser.error(str(error))
    return args


def expand_stages(names: list[str]) -> list[str]:
    """The stages to run, in the harness's order, each once; HarnessError for an unknown name."""
    unknown = [name for name in names if name not in STAGES and name != "all"]
    if unknown:
        raise HarnessError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)} or all")
    wanted = set(STAGES) if "all" in names else set(names)
    return [stage for stage in STAGES if stage in wanted]


# -- records ------------------------------------------------------------------------------

def environment() -> dict:
    """What the figures were taken on; every field None when it cannot be read."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": None, "cuda": None,
            "triton": None, "torch_geometric": None, "device": None, "magnn": None, "commit": None}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor()})"
    except Exception:  # noqa: BLE001 - a missing package is a fact to record, not an error
        pass
    for module in ("triton", "torch_geometric", "magnn"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        pass
    return info


class Stage:
    """One stage's record, log and time budget."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.out = Path(args.out)
        self.log_path = self.out / f"{name}.log"
        self.t0 = time.monotonic()
        self.record = {
            "schema": SCHEMA, "stage": name, "status": "ok", "command": shlex.join([sys.executable, *sys.argv]),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": None,
            "environment": {}, "steps": [], "figures": {}, "error": None,
        }

    @property
    def dry_run(self) -> bool:
        return self.args.dry_run

    @property
    def budget(self) -> float:
        return min(CHECK_BUDGETS[self.name], self.args.budget) if getattr(self.args, "check", False) \
            else self.args.budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as log:
            log.write(text.rstrip("\n") + "\n")
        print(f"[{self.name}] {text.rstrip()}", flush=True)
        self.save()

    def save(self) -> None:
        """Write the record as it stands (status "running"): a stop from outside keeps what ran."""
        partial = dict(self.record, seconds=round(time.monotonic() - self.t0, 2))
        if partial["status"] == "ok":
            partial["status"] = "running"
        (self.out / f"{self.name}.json").write_text(json.dumps(partial, indent=2, default=str) + "\n")

    def run(self, command: list[str], *, env: Optional[dict] = None, cwd: Optional[Path] = None,
            timeout: Optional[float] = None) -> dict:
        """Runs a command (or records it under --dry-run), its output appended to the log."""
        step = {"command": shlex.join(command), "returncode": None, "seconds": 0.0, "timed_out": False}
        self.record["steps"].append(step)
        self.log(f"$ {step['command']}")
        if self.dry_run:
            step["dry_run"] = True
            return step
        limit = max(1.0, min(timeout or self.left(), self.left()))
        t0 = time.monotonic()
        with open(self.log_path, "a") as log:
            try:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      timeout=limit)
                step["returncode"] = done.returncode
            except subprocess.TimeoutExpired:
                step["timed_out"] = True
                log.write(f"\n[harness] stopped after {limit:.0f} s\n")
        step["seconds"] = round(time.monotonic() - t0, 2)
        if step["returncode"] != 0:
            self.record["status"] = "failed"
        return step

    def finish(self) -> dict:
        if self.dry_run and self.record["status"] == "ok":
            self.record["status"] = "dry-run"
        self.record["seconds"] = round(time.monotonic() - self.t0, 2)
        self.record["environment"] = environment()
        path = self.out / f"{self.name}.json"
        path.write_text(json.dumps(self.record, indent=2, default=str) + "\n")
        return self.record


def run_stages(args: argparse.Namespace) -> list[dict]:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.stages:
        stage = Stage(name, args)
        try:
            STAGE_FUNCTIONS[name](stage)
        except Exception as error:  # noqa: BLE001 - recorded; the next stage still runs
            stage.record["status"] = "failed"
            stage.record["error"] = f"{type(error).__name__}: {error}"
            stage.log(traceback.format_exc())
        records.append(stage.finish())
        if name == "install" and args.target and not args.dry_run:
            # later stages (their subprocesses too) import from the target folder
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.target).resolve()),
                                                                     os.environ.get("PYTHONPATH")]))
            sys.path.insert(0, str(Path(args.target).resolve()))
    return records


# -- install ------------------------------------------------------------------------------

VERIFY_IMPORTS = """
import importlib, json, sys
found, missing = {}, []
for module in %r:
    try:
        found[module] = getattr(importlib.import_module(module), "__version__", "?")
    except Exception as error:
        missing.append(f"{module}: {type(error).__name__}: {error}")
import magnn
print(json.dumps({"found": found, "missing": missing, "magnn_file": magnn.__file__}))
"""


def pip_install_commands(wheels: Path, target: Optional[str]) -> list[list[str]]:
    """pip commands that install every wheel in `wheels`, then magnn itself, without network.

    Each wheel is named (--no-deps): nothing is resolved against an index, and the packages the
    machine already has (torch, triton, PyG, ...) stay as they are. magnn comes from a magnn wheel
    in the folder when there is one, else from this checkout (setuptools from the machine).
    """
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps",
            "--no-cache-dir", "--disable-pip-version-check"]
    if target:
        base += ["--target", str(target), "--upgrade"]
    files = sorted(str(path) for path in Path(wheels).glob("*.whl"))
    commands = [base + files] if files else []
    if not any(Path(name).name.startswith("magnn-") for name in files):
        commands.append(base + ["--no-build-isolation", str(REPO)])
    return commands


def stage_install(stage: Stage) -> None:
    args = stage.args
    wheels = Path(args.wheels)
    stage.record["figures"]["wheels"] = sorted(path.name for path in wheels.glob("*.whl"))
    for command in pip_install_commands(wheels, args.target):
        if stage.run(command)["returncode"] not in (0, None):
            return
    env = dict(os.environ)
    if args.target:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.target).resolve()), env.get("PYTHONPATH")]))
    verify = [sys.executable, "-c", VERIFY_IMPORTS % (list(RUNTIME_MODULES),)]
    step = stage.run(verify, env=env, cwd=Path(args.out).resolve())  # not the checkout: import what was installed
    if stage.dry_run or step["returncode"] != 0:
        return
    lines = Path(stage.log_path).read_text().strip().splitlines()
    result = json.loads(lines[-1])
    stage.record["figures"].update(modules=result["found"], missing=result["missing"], magnn_file=result["magnn_file"])
    if result["missing"]:
        stage.record["status"] = "failed"
        stage.record["error"] = "missing after install: " + "; ".join(result["missing"])


# -- tests --------------------------------------------------------------------------------

def junit_counts(path: Path) -> Optional[dict]:
    """tests / failures / errors / skipped totals of a pytest --junitxml file (None if absent)."""
    if not path.is_file():
        return None
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}


def stage_tests(stage: Stage) -> None:
    out = Path(stage.args.out).resolve()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter
    env["MAGNN_REQUIRE_BACKENDS"] = "triton"  # on CUDA a triton skip is a failure
    suites = {
        "gpu_marked": ["-m", "gpu", "tests"],
        "parity": ["tests/test_backend_parity.py", "tests/kernels", "-m", "not slow"],
    }
    if stage.args.check:  # the CUDA parity subset: compiled kernels against the reference, <= 2 minutes
        suites = {
            "gpu_marked": ["-m", "gpu and not slow", "tests/kernels", "-x"],
            "parity": ["tests/test_backend_parity.py", "-m", "not slow", "-k", "triton", "-x"],
        }
    for name, selection in suites.items():
        xml = out / f"tests_{name}.xml"
        command = [sys.executable, "-m", "pytest", *selection, "-q", "-rfEs", "-p", "no:cacheprovider",
                   f"--junitxml={xml}"]
        share = (0.6 if stage.args.check else 0.4) if name == "gpu_marked" else 1.0
        step = stage.run(command, env=env, cwd=REPO, timeout=stage.left() * share)
        if step["returncode"] == 5:  # pytest: nothing collected under the marker
            step["returncode"] = 0
            step["note"] = "no test selected"
            stage.record["status"] = "ok" if all(s.get("returncode") in (0, None) for s in stage.record["steps"]) \
                else "failed"
        stage.record["figures"][name] = junit_counts(xml)


# -- bench --------------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def time_call(fn: Callable[[], None], device, reps: int, warmup: int = 1) -> tuple[float, float, Optional[int]]:
    """(median ms, min ms, peak bytes above the start) of fn; CUDA events on a GPU."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated() - before
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return _median(times), min(times), peak


def static_estimates() -> Optional[dict]:
    """benchmarks/gpu/static_estimates.json (the static model's times), or None."""
    try:
        return json.loads(STATIC_ESTIMATES.read_text())
    except Exception:  # noqa: BLE001 - the bench runs without it
        return None


def static_estimate(estimates: Optional[dict], row: dict) -> Optional[float]:
    """The static model's estimate (ms, max of issue-bound and roofline) of a magnn[triton] op row:
    the forward's case, plus the backward's for fwd+bwd; None for other rows."""
    if not estimates or row.get("impl") != "magnn[triton]" or row.get("dtype") != estimates.get("dtype", "bf16") \
            .replace("bf16", "bfloat16"):
        return None
    cases = estimates["workloads"].get(STATIC_WORKLOAD.get(row.get("workload"), ""), {})
    if row.get("level") == "op-gt":
        names = ["gt fwd +stats" if row.get("stats") else "gt fwd", "gt bwd"]
    elif row.get("level") == "op-additive":
        names = ["additive fwd", "additive bwd"]
    else:
        return None
    names = names if row.get("pass") == "fwd+bwd" else names[:1]
    if not all(name in cases for name in names):
        return None
    return round(sum(cases[name]["estimate_ms"] for name in names), 4)


def device_proteins_graph(num_nodes: int, num_edges: int, device):
    """A graph of the size given with the synthetic proteins degrees (the static model's), drawn on
    the device in a second: every node's in-edges from uniformly drawn sources."""
    import torch

    spec = importlib.util.spec_from_file_location("magnn_gpu_static", REPO / "benchmarks" / "gpu" / "static.py")
    static = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = static
    spec.loader.exec_module(static)
    degree = torch.from_numpy(static._proteins_degrees(num_nodes, num_edges)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    dst = torch.repeat_interleave(torch.arange(num_nodes, device=device), degree, output_size=num_edges)
    src = torch.randint(0, num_nodes, (num_edges,), device=device, generator=gen)
    order = torch.randperm(num_edges, device=device, generator=gen)  # the caller's edge order, unsorted
    return torch.stack([src[order], dst[order]]), num_nodes


def bench_workloads(smoke: bool, on_device=None) -> list[tuple[str, Callable[[], tuple]]]:
    """(name, loader) pairs; a loader returns (edge_index, num_nodes) on the CPU (on_device: the
    proteins-like graphs are drawn there instead, from the synthetic degrees)."""
    from magnn.data import synthetic_proteins_graph

    def proteins(nodes, undirected):
        def load():
            if on_device is not None:
                return device_proteins_graph(nodes, 2 * undirected, on_device)
            data = synthetic_proteins_graph(num_nodes=nodes, num_edges_undirected=undirected, seed=0)
            return data.edge_index, data.num_nodes
        return load

    if smoke:
        return [("tiny-proteins", proteins(300, 1_500))]

    def molecules():
        from torch_geometric.loader import DataLoader

        from magnn.data import load_zinc

        batch = next(iter(DataLoader(load_zinc(source="bundled")["train"], batch_size=128)))
        return batch.edge_index, batch.num_nodes

    from magnn.data.synthetic import PROTEINS_FULL_NUM_EDGES, PROTEINS_FULL_NUM_NODES

    return [
        ("molecules", molecules),
        ("proteins-20k", proteins(20_000, 300_000)),
        ("proteins-132k-8M", proteins(PROTEINS_FULL_NUM_NODES, 4_000_000)),
        ("proteins-full", proteins(PROTEINS_FULL_NUM_NODES, PROTEINS_FULL_NUM_EDGES)),
    ]


def pyg_pipeline(q, k, v, e, edge_index, num_nodes):
    """gt-mode attention as a PyG user writes it: gather, utils.softmax, scatter."""
    from torch_geometric.utils import scatter, softmax

    src, dst = edge_index
    score = q[dst] * k[src] * e / math.sqrt(q.shape[-1])
    attention = softmax(score.float().sum(-1), dst, num_nodes=num_nodes).to(q.dtype)
    return scatter(attention.unsqueeze(-1) * v[src], dst, dim=0, dim_size=num_nodes, reduce="sum"), score


def anemoi_attention():
    """anemoi-models' Triton graph transformer function, or None when it cannot be imported."""
    try:
        from anemoi.models.triton.gt import GraphTransformerFunction
    except Exception:  # noqa: BLE001 - optional peer
        return None
    return GraphTransformerFunction


def anemoi_inputs(edge_index, num_nodes):
    """anemoi's graph arguments: edges sorted by destination (csc: row = source, colptr) and the
    reverse view (rowptr over sources, the edge ids in csc order, their destinations)."""
    import torch

    src, dst = edge_index
    order = torch.argsort(dst * num_nodes + src)
    row = src[order].contiguous()
    colptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=src.device)
    colptr[1:] = torch.cumsum(torch.bincount(dst, minlength=num_nodes), 0)
    by_src = torch.argsort(row, stable=True)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=src.device)
    rowptr[1:] = torch.cumsum(torch.bincount(row, minlength=num_nodes), 0)
    edge_dst = dst[order][by_src].contiguous()
    return order, (row, colptr), (rowptr, by_src.contiguous(), edge_dst)


def stage_bench(stage: Stage) -> None:
    import torch

    from magnn import EdgeStats, Graph
    from magnn.functional import BACKENDS, edge_attention

    smoke = stage.args.cpu_smoke
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    check = getattr(stage.args, "check", False) and not smoke
    if stage.dry_run:
        stage.record["figures"]["cases"] = [name for name, _ in bench_workloads(smoke)
                                            if not check or name in CHECK_WORKLOADS]
        stage.log("dry run: cases " + ", ".join(stage.record["figures"]["cases"]))
        return
    if device.type != "cuda" and not smoke:
        raise RuntimeError("the bench stage needs a CUDA device (use --cpu-smoke for the CPU self-test)")
    heads, head_dim = 8, 8
    dtypes = [torch.bfloat16] if check else [torch.float32, torch.bfloat16]
    reps = 3 if smoke else (5 if check else 10)
    estimates = static_estimates()
    rows: list[dict] = []
    figures = stage.record["figures"]
    figures.update(rows=rows, device=str(device), heads=heads, head_dim=head_dim,
                   static_estimates={k: estimates.get(k) for k in ("label", "commit", "triton")} if estimates else None)

    backends = [name for name, backend in BACKENDS.items()
                if backend.reason_unavailable(device, torch.float32) is None
                and not (name == "triton" and device.type != "cuda")]
    if check:  # the compiled kernels only: the torch reference's rows are not what the check is for
        backends = [name for name in backends if name == "triton"] or backends
    anemoi = anemoi_attention() if device.type == "cuda" else None
    figures["anemoi"] = "importable" if anemoi is not None else "not importable (wheel absent or CPU run)"

    if device.type == "cuda":
        figures["copy_bandwidth_GBps"] = copy_bandwidth(device)

    for name, load in bench_workloads(smoke, on_device=device if check else None):
        if stage.args.workloads and name not in stage.args.workloads:
            continue
        if check and not stage.args.workloads and name not in CHECK_WORKLOADS:
            continue
        if stage.left() < 30:
            rows.append({"workload": name, "status": "skipped: stage budget"})
            continue
        edge_index_cpu, num_nodes = load()
        edge_index = edge_index_cpu.to(device)
        num_edges = edge_index.shape[1]
        graph = Graph(edge_index, num_nodes).prepare()
        for dtype in dtypes:
            if name == "proteins-full" and dtype == torch.float32:
                continue  # bf16 is the configuration that fits; fp32 rows come from the smaller graphs
            gen = torch.Generator(device=device).manual_seed(0)

            def leaf(*shape):  # drawn on the device: at full size e alone is 10 GB in bf16
                return torch.randn(*shape, generator=gen, device=device, dtype=dtype).requires_grad_()

            q, k, v = (leaf(num_nodes, heads, head_dim) for _ in range(3))
            e = leaf(num_edges, heads, head_dim)
            inputs = [q, k, v, e]
            base = {"workload": name, "num_nodes": num_nodes, "num_edges": num_edges,
                    "dtype": str(dtype).replace("torch.", "")}

            def measure(impl, level, fn, stats=None, grad_inputs=None):
                wrt = inputs if grad_inputs is None else grad_inputs
                for pass_ in ("fwd", "fwd+bwd"):
                    row = dict(base, impl=impl, level=level, stats=stats, **{"pass": pass_})
                    rows.append(row)
                    if stage.left() < 20:
                        row["status"] = "skipped: stage budget"
                        continue

                    def call(fn=fn, pass_=pass_, wrt=wrt):
                        outputs = fn()
                        if pass_ == "fwd+bwd":
                            torch.autograd.grad([o.float().sum() for o in outputs], wrt, allow_unused=True)

                    estimate = static_estimate(estimates, row)
                    if estimate is not None:
                        row["static_estimate_ms"] = estimate  # an ESTIMATE from compiled code, not measured
                    try:
                        ms, ms_min, peak = time_call(call, device, reps)
                        row.update(status="ok", ms_median=round(ms, 4), ms_min=round(ms_min, 4), reps=reps,
                                   peak_bytes=peak)
                    except torch.cuda.OutOfMemoryError:
                        row["status"] = "out of memory"
                        torch.cuda.empty_cache()
                    except Exception as error:  # noqa: BLE001 - one failing peer must not stop the suite
                        row["status"] = f"failed: {type(error).__name__}: {str(error)[:200]}"
                    stage.log(json.dumps(row))

            for backend in backends:
                if backend == "torch" and num_edges > 20_000_000:
                    continue  # the reference's [E, H, D] temporaries do not fit at full size
                for stats in (False, True):
                    measure(f"magnn[{backend}]", "op-gt", lambda b=backend, s=stats: edge_attention(
                        q, k, v, e, graph, mode="gt", stats=EdgeStats() if s else None, backend=b), stats=stats)
            if num_edges <= 20_000_000:
                measure("pyg-softmax-scatter", "op-gt", lambda: pyg_pipeline(q, k, v, e, edge_index, num_nodes))
            if anemoi is not None:
                order, csc, reverse = anemoi_inputs(edge_index, num_nodes)
                measure("anemoi-triton", "op-additive", lambda: (anemoi.apply(q, k, v, e[order], csc, reverse),))
                for backend in backends:
                    if backend != "torch" or num_edges <= 20_000_000:
                        measure(f"magnn[{backend}]", "op-additive", lambda b=backend: edge_attention(
                            q, k, v, e, graph, mode="additive", backend=b), stats=False)
            bench_layers(stage, measure, base, device, dtype, edge_index, graph, num_nodes, backends)
            if device.type == "cuda" and "triton" in backends:
                roofline(figures, rows, base, num_nodes, num_edges, heads * head_dim, dtype)
            q = k = v = e = inputs = None  # free the tensors before the next dtype or graph
        graph = edge_index = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    failed = [row for row in rows if str(row.get("status", "")).startswith("failed")]
    if failed:
        stage.record["status"] = "failed"
        stage.record["error"] = f"{len(failed)} bench case(s) failed (see rows)"


def bench_layers(stage, measure, base, device, dtype, edge_index, graph, num_nodes, backends) -> None:
    """Layer level: PyG's TransformerConv vs magnn's drop-in (or FusedEdgeAttention set up like it)."""
    import torch
    from torch_geometric.nn import TransformerConv as PygTransformerConv

    from magnn import layers

    heads, head_dim = 8, 8
    features = heads * head_dim
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(num_nodes, features, generator=gen, device=device, dtype=dtype).requires_grad_()
    edge_attr = torch.randn(edge_index.shape[1], features, generator=gen, device=device, dtype=dtype)
    torch.manual_seed(0)
    theirs = PygTransformerConv(features, head_dim, heads=heads, edge_dim=features, root_weight=False).to(device, dtype)
    if edge_index.shape[1] <= 20_000_000:
        measure("pyg-TransformerConv", "layer", lambda: (theirs(x, edge_index, edge_attr),), grad_inputs=[x])
    for backend in backends:
        if backend == "torch" and edge_index.shape[1] > 20_000_000:
            continue
        if hasattr(layers, "TransformerConv"):  # the drop-in, same weights; a prepared Graph like the op rows
            ours = layers.TransformerConv(features, head_dim, heads=heads, edge_dim=features, root_weight=False,
                                          backend=backend)
            ours.load_state_dict(theirs.state_dict())
            ours = ours.to(device, dtype)
            measure(f"magnn[{backend}] TransformerConv", "layer", lambda o=ours: (o(x, graph, edge_attr),),
                    grad_inputs=[x])
        else:
            ours = layers.FusedEdgeAttention(features, heads, head_dim, features, mode="additive", bias=True)
            ours = ours.to(device, dtype)
            ours.backend = backend
            measure(f"magnn[{backend}] FusedEdgeAttention(additive)", "layer",
                    lambda o=ours: (o(x, graph, edge_attr)[0],), grad_inputs=[x])


def copy_bandwidth(device, size_bytes: int = 2 << 30) -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus bytes written."""
    import torch

    src = torch.empty(size_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms, _, _ = time_call(lambda: dst.copy_(src), device, reps=10, warmup=3)
    src = dst = None
    torch.cuda.empty_cache()
    return round(2 * size_bytes / (ms * 1e-3) / 1e9, 1)


def forward_bytes(num_nodes: int, num_edges: int, channels: int, itemsize: int, heads: int = 8) -> int:
    """The fewest bytes a gt-mode forward moves: q, k, v, e read once, edge_out and node_out written
    once, lse [N, 2, H] float32 written, the CSR (rowptr, col, perm: int64) read once."""
    return (3 * num_nodes * channels + 2 * num_edges * channels + num_nodes * channels) * itemsize \
        + num_nodes * 2 * heads * 4 + (num_nodes + 1 + 2 * num_edges) * 8


def roofline(figures, rows, base, num_nodes, num_edges, channels, dtype) -> None:
    bandwidth = figures.get("copy_bandwidth_GBps")
    for row in rows:
        if (row.get("workload"), row.get("dtype"), row.get("impl"), row.get("pass"), row.get("level")) == (
                base["workload"], base["dtype"], "magnn[triton]", "fwd", "op-gt") and row.get("status") == "ok":
            moved = forward_bytes(num_nodes, num_edges, channels, 2 if base["dtype"] == "bfloat16" else 4)
            achieved = moved / (row["ms_median"] * 1e-3) / 1e9
            row["bytes_moved"] = moved
            row["achieved_GBps"] = round(achieved, 1)
            if bandwidth:
                row["roofline_share"] = round(achieved / bandwidth, 3)


# -- proteins -----------------------------------------------------------------------------

def stage_proteins(stage: Stage) -> None:
    import tempfile

    # each run's JSON is folded into proteins.json: the per-run files stay out of --out, which keeps
    # the folder within what a lent machine sends back (8 files)
    out = Path(tempfile.mkdtemp(prefix="magnn-proteins-"))
    script = REPO / "benchmarks" / "proteins_fullbatch.py"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    results = {}
    stage.record["figures"]["runs"] = results
    check = getattr(stage.args, "check", False)
    if not check:  # (the check's time goes to the measured steps; --plan is a CPU computation)
        plan_step = stage.run([sys.executable, str(script), "--plan"], env=env, cwd=REPO, timeout=60)
        stage.record["figures"]["plan_step_returncode"] = plan_step["returncode"]
    settings = [(model, ckpt) for model in stage.args.models for ckpt in ((False,) if check else (False, True))]
    for index, (model, ckpt) in enumerate(settings):
        key = f"{model}{'-checkpointing' if ckpt else ''}"
        path = out / f"proteins_{key}.json"
        # real size (the script's default nodes and degree), the composed edge projection formed inside
        # the Triton kernels (--fused: one [H*D, 8] matrix per layer, no [E, hidden] tensor)
        command = [sys.executable, str(script), "--measure", "--device", "cuda", "--model", model, "--dtype", "bf16",
                   "--fused", "--json", str(path)] + (["--checkpointing"] if ckpt else []) \
            + (["--steps", "1"] if check else [])
        if not stage.dry_run and stage.left() < 30:
            results[key] = {"status": "skipped: stage budget"}
            continue
        # an even share of what is left, so one slow model cannot starve the others
        step = stage.run(command, env=env, cwd=REPO, timeout=stage.left() / (len(settings) - index))
        if stage.dry_run:
            continue
        entry = {"returncode": step["returncode"], "timed_out": step["timed_out"]}
        if path.is_file():
            entry["result"] = json.loads(path.read_text())
        results[key] = entry


STAGE_FUNCTIONS = {"install": stage_install, "tests": stage_tests, "bench": stage_bench, "proteins": stage_proteins}


def main(argv=None) -> int:
    args = parse_args(argv)
    records = run_stages(args)
    width = max(len(record["stage"]) for record in records)
    print("\nstage".ljust(width + 2) + "  status    seconds")
    for record in records:
        print(f"{record['stage']:<{width}}  {record['status']:<8}  {record['seconds']:>7}")
    return 0 if all(record["status"] in ("ok", "dry-run") for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
