"""One configuration of the statistics-cost comparison (issue 15), timed in-process; prints one line.

    python benchmarks/stats_overhead.py IMPL [--reps 3] [--edges 300000] [--nodes 20000]

IMPL: cpu (edge_attention, backend="cpu", no statistics), cpu-stats (the same with an
`EdgeStats` collector), pyg (PyG's softmax + scatter pipeline, no statistics), tconv-pyg
(torch_geometric.nn.TransformerConv), tconv-magnn (magnn.layers.TransformerConv, cpu backend).
Op level: gt mode, H = 8, D = 8, float32, on `synthetic_proteins_graph` (the edge attention
suite's proteins-cpu workload: 20k nodes, 600k directed edges); layer level: 64 features, edge_dim
64, root_weight=False, PyG's weights loaded into magnn's drop-in. After one untimed step, `--reps`
steps of forward alone and of forward + backward (torch.autograd.grad of the inputs) alternate;
the line printed is `IMPL fwd_ms fwdbwd_ms` (medians). Thread count: OMP_NUM_THREADS / torch's.

Meant to be run as a whole process, twice in turn (A B A B ...), so that two
implementations are compared pair by pair on a machine whose speed drifts:

    python benchmarks/stats_overhead.py --pair A B [--pairs 3]

does that and prints the medians and the per-pair ratio B / A (median [min-max]).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from peers import pyg_gt_attention  # benchmarks/peers.py, beside this script

HEADS, HEAD_DIM = 8, 8
IMPLS = ("cpu", "cpu-stats", "pyg", "tconv-pyg", "tconv-magnn")


def make_step(impl: str, nodes: int, edges: int):
    """A function step(backward: bool) running one forward (and backward)."""
    from magnn import Graph
    from magnn.data import synthetic_proteins_graph

    data = synthetic_proteins_graph(num_nodes=nodes, num_edges_undirected=edges, seed=0)
    edge_index, num_nodes = data.edge_index, data.num_nodes
    graph = Graph(edge_index, num_nodes).prepare()  # a static graph: its CSR is built outside the timing
    gen = torch.Generator().manual_seed(0)
    if impl in ("cpu", "cpu-stats", "pyg"):
        from magnn.functional import edge_attention
        from magnn.stats import EdgeStats

        def rand(*shape):
            return torch.randn(*shape, generator=gen).requires_grad_()

        inputs = [rand(num_nodes, HEADS, HEAD_DIM) for _ in range(3)] + [rand(edge_index.shape[1], HEADS, HEAD_DIM)]

        def forward():
            if impl == "pyg":
                return pyg_gt_attention(*inputs, edge_index, num_nodes)
            collector = EdgeStats() if impl == "cpu-stats" else None
            return edge_attention(*inputs, graph, mode="gt", stats=collector, backend="cpu")
    else:
        from torch_geometric.nn import TransformerConv as PygTransformerConv

        from magnn.layers import TransformerConv

        features = HEADS * HEAD_DIM
        x = torch.randn(num_nodes, features, generator=gen).requires_grad_()
        edge_attr = torch.randn(edge_index.shape[1], features, generator=gen)
        torch.manual_seed(0)
        conv = PygTransformerConv(features, HEAD_DIM, heads=HEADS, edge_dim=features, root_weight=False)
        if impl == "tconv-magnn":
            ours = TransformerConv(features, HEAD_DIM, heads=HEADS, edge_dim=features, root_weight=False, backend="cpu")
            ours.load_state_dict(conv.state_dict())
        inputs = [x]

        def forward():
            return [conv(x, edge_index, edge_attr) if impl == "tconv-pyg" else ours(x, graph, edge_attr)]

    def step(backward: bool):
        outputs = forward()
        if backward:
            torch.autograd.grad([o.float().sum() for o in outputs], inputs)

    return step


def run_once(impl: str, args) -> tuple[float, float]:
    """One whole process of this script for `impl`: its (fwd_ms, fwdbwd_ms)."""
    command = [sys.executable, __file__, impl, "--reps", str(args.reps), "--nodes", str(args.nodes),
               "--edges", str(args.edges)]
    fields = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    return float(fields[1]), float(fields[2])


def compare(first: str, second: str, args) -> None:
    """`--pair A B`: A B A B ... as whole processes, --pairs times; prints each pair and, per pass,
    both medians and the ratio B / A taken pair by pair: median [min-max]."""
    rows = []
    for _ in range(args.pairs):
        rows.append((run_once(first, args), run_once(second, args)))
        print(f"  {first} {rows[-1][0][0]:.1f} {rows[-1][0][1]:.1f} | {second} {rows[-1][1][0]:.1f} "
              f"{rows[-1][1][1]:.1f}", flush=True)
    for index, name in enumerate(("fwd", "fwd+bwd")):
        a = [row[0][index] for row in rows]
        b = [row[1][index] for row in rows]
        ratios = [y / x for x, y in zip(a, b)]
        print(f"{name}: {first} {statistics.median(a):.1f} ms, {second} {statistics.median(b):.1f} ms, "
              f"{second}/{first} {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=IMPLS, nargs="?")
    parser.add_argument("--pair", nargs=2, choices=IMPLS, metavar=("A", "B"),
                        help="compare two implementations, alternated as whole processes")
    parser.add_argument("--pairs", type=int, default=3, help="with --pair: how many A B rounds")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--edges", type=int, default=300_000, help="undirected edges (directed: twice as many)")
    args = parser.parse_args(argv)
    if (args.impl is None) == (args.pair is None):
        parser.error("give one IMPL or --pair A B")
    if args.pair:
        return compare(*args.pair, args)
    step = make_step(args.impl, args.nodes, args.edges)
    step(True)  # warm-up: extension load, allocator, first-call paths
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.reps):
        for backward in (False, True):
            start = time.perf_counter()
            step(backward)
            times[backward].append((time.perf_counter() - start) * 1e3)
    print(f"{args.impl} {statistics.median(times[False]):.1f} {statistics.median(times[True]):.1f}", flush=True)


if __name__ == "__main__":
    main()
