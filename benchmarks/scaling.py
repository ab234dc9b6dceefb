"""How the cost of edge attention grows with the edge count, on CPU.

    python benchmarks/scaling.py [--sizes 1e4,3e4,...] [--out benchmarks/scaling.png]
                                 [--json scaling.json] [--markdown scaling.md]

For each edge count E (directed edges) a proteins-like graph (`synthetic_proteins_graph`:
heavy-tailed degrees, N = E / 30 nodes, the average degree of the CPU benchmark's 20k-node
graph) and, per implementation, gt mode, H = 8, D = 8, float32, one training step's forward +
backward (torch.autograd.grad of q, k, v, e):
  cpu    magnn's C++ backend with an EdgeStats collector on
  torch  magnn's pure-PyTorch reference with an EdgeStats collector on
  pyg    PyG's utils.softmax + scatter pipeline (no statistics: PyG has none)
Each (E, implementation) runs in a fresh interpreter (--threads sets its intra-op threads): the step's own peak memory is the
process's peak RSS (VmHWM) after one step minus the RSS before it; the time is the median of
--reps steps after one warm-up (the table and the plot show the fastest step, the least
disturbed on a shared machine; the JSON has both). Sizes whose predicted peak exceeds --max-gb are
skipped for that implementation and marked so in the table (default 7.5 GB:
the torch reference from 2M edges on, PyG at 4M). Writes a markdown table, a JSON
file and a log-log plot (time and peak memory against E).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peers import pyg_gt_attention  # benchmarks/peers.py and procstatus.py, beside this script
from procstatus import status_kib

IMPLS = ("cpu", "torch", "pyg")
HEADS, HEAD_DIM, AVERAGE_DEGREE = 8, 8, 30
# step peak in bytes per edge, measured on the 600k-edge graph and rounded up: what --max-gb is checked against
PEAK_BYTES_PER_EDGE = {"cpu": 900, "torch": 4000, "pyg": 2200}
DEFAULT_SIZES = "1e4,3e4,1e5,3e5,1e6,2e6,4e6"


def measure_here(impl: str, num_edges: int, reps: int) -> dict:
    """One (implementation, size) in this process: step peak RSS, then timed steps."""
    import torch

    from magnn import EdgeStats, Graph
    from magnn.data import synthetic_proteins_graph
    from magnn.functional import edge_attention

    if impl == "cpu":
        from magnn.backends import cpu as cpu_backend

        cpu_backend.build()
    num_nodes = max(100, num_edges // AVERAGE_DEGREE)
    data = synthetic_proteins_graph(num_nodes=num_nodes, num_edges_undirected=num_edges // 2, seed=0)
    edge_index = data.edge_index
    del data
    graph = Graph(edge_index, num_nodes).prepare()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(num_nodes, HEADS, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3))
    e = torch.randn(edge_index.shape[1], HEADS, HEAD_DIM, generator=gen).requires_grad_()
    inputs = [q, k, v, e]

    def step():
        if impl == "pyg":
            outputs = pyg_gt_attention(q, k, v, e, edge_index, num_nodes)
        else:
            outputs = edge_attention(q, k, v, e, graph, mode="gt", stats=EdgeStats(), backend=impl)
        torch.autograd.grad([o.sum() for o in outputs], inputs)

    baseline = status_kib("VmRSS")
    step()  # also the warm-up
    peak = status_kib("VmHWM")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"impl": impl, "num_edges": int(edge_index.shape[1]), "num_nodes": num_nodes,
            "ms_median": 1e3 * times[len(times) // 2], "ms_min": 1e3 * times[0], "reps": reps,
            "step_peak_mb": (peak - baseline) / 1024, "threads": torch.get_num_threads()}


def measure(impl: str, num_edges: int, reps: int, timeout: float, threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", impl, str(num_edges), str(reps)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        return {"impl": impl, "num_edges": num_edges, "status": "failed: " + done.stderr.strip()[-300:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), status="ok")


def markdown(results: list[dict], sizes: list[int]) -> str:
    # the fastest of the timed steps: on a shared machine the least disturbed one
    lines = ["| E (directed edges) | N | " + " | ".join(f"{impl} ms (min)" for impl in IMPLS) + " | "
             + " | ".join(f"{impl} peak MB" for impl in IMPLS) + " | cpu ns / edge |",
             "|" + "---|" * (3 + 2 * len(IMPLS))]
    for size in sizes:
        by_impl = {r["impl"]: r for r in results if r["requested_edges"] == size}
        ok = [r for r in by_impl.values() if r.get("status") == "ok"]
        if not ok:
            continue
        nodes = ok[0]["num_nodes"]
        edges = ok[0]["num_edges"]

        def cell(impl, key, fmt):
            r = by_impl.get(impl)
            if r is None or r.get("status") != "ok":
                return "skipped" if r is None or r.get("status", "").startswith("skipped") else "failed"
            return fmt.format(r[key])

        cpu = by_impl.get("cpu", {})
        per_edge = f"{1e6 * cpu['ms_min'] / cpu['num_edges']:.0f}" if cpu.get("status") == "ok" else "-"
        lines.append(f"| {edges:,} | {nodes:,} | " + " | ".join(cell(i, "ms_min", "{:.1f}") for i in IMPLS)
                     + " | " + " | ".join(cell(i, "step_peak_mb", "{:.0f}") for i in IMPLS) + f" | {per_edge} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, label in (("cpu", "magnn cpu (stats on)"), ("torch", "magnn torch reference (stats on)"),
                        ("pyg", "PyG softmax + scatter")):
        ok = sorted((r for r in results if r["impl"] == impl and r.get("status") == "ok"), key=lambda r: r["num_edges"])
        if not ok:
            continue
        edges = [r["num_edges"] for r in ok]
        ax_time.plot(edges, [r["ms_min"] for r in ok], "o-", label=label)
        ax_mem.plot(edges, [max(r["step_peak_mb"], 1e-1) for r in ok], "o-", label=label)
    for axis, title in ((ax_time, "fwd+bwd time (ms, fastest of the timed steps)"), (ax_mem, "step peak memory (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("directed edges E")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    threads = {r.get("threads") for r in results if r.get("status") == "ok"}
    fig.suptitle("gt edge attention, H=8 D=8 float32, proteins-like graphs (N = E/30), CPU, "
                 f"{'/'.join(map(str, sorted(threads)))} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated directed edge counts")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=7.5, help="skip an implementation above this predicted peak")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per (size, implementation)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of each measuring process (default: torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("scaling.png")))
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    sizes = [int(float(size)) for size in args.sizes.split(",") if size]
    impls = [impl for impl in args.impls.split(",") if impl]
    if any(impl not in IMPLS for impl in impls):
        parser.error(f"--impls: choose from {', '.join(IMPLS)}")
    results = []
    for size in sizes:
        for impl in impls:
            if PEAK_BYTES_PER_EDGE[impl] * size > args.max_gb * 1e9:
                result = {"impl": impl, "num_edges": size, "status": f"skipped: predicted peak over {args.max_gb} GB"}
            else:
                result = measure(impl, size, args.reps, args.timeout, args.threads)
            result["requested_edges"] = size
            results.append(result)
            print(json.dumps(result), flush=True)
    table = markdown(results, sizes)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    plot(results, Path(args.out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(measure_here(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        sys.exit(main())
