"""What the learned sink and the attention gate cost inside the fused kernels (issue 26), timed in-process.

    python benchmarks/sink_gate_overhead.py [--backend cpu] [--workload molecules|proteins] [--mode gt]
                                            [--rounds 200]

One process times both variants of `edge_attention` (no sink or gate; sink [H] and gate [N, H])
alternately, round by round (the order flips every round), so that a machine whose speed drifts
affects both alike: per round the forward, and the backward (torch.autograd.grad of q, k, v, e and,
with them, sink and gate). The first tenth of the rounds is dropped; it prints each variant's
median forward and backward in ms and the ratio with / without of the medians of forward +
backward. Workloads: `molecules` a batch of 128 random molecule-like graphs of 20-30 nodes with
~2.2 edges per node (N ~ 3,200, E ~ 7,200); `proteins` `synthetic_proteins_graph` (20k nodes,
600k directed edges). H = 8, D = 8, float32, clamp 5. Thread count: OMP_NUM_THREADS / torch's.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

HEADS, HEAD_DIM = 8, 8


def molecules(gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """edge_index [2, E] of 128 disjoint random graphs of 20-30 nodes (a ring plus random chords)."""
    parts, offset = [], 0
    for _ in range(128):
        n = int(torch.randint(20, 31, (), generator=gen))
        ring = torch.arange(n)
        chords = torch.randint(0, n, (2, n // 5), generator=gen)
        src = torch.cat([ring, (ring + 1) % n, chords[0]])
        dst = torch.cat([(ring + 1) % n, ring, chords[1]])
        parts.append(torch.stack([src, dst]) + offset)
        offset += n
    return torch.cat(parts, 1), offset


def problem(workload: str, seed: int = 0):
    from magnn import Graph
    from magnn.data import synthetic_proteins_graph

    gen = torch.Generator().manual_seed(seed)
    if workload == "molecules":
        edge_index, nodes = molecules(gen)
    else:
        data = synthetic_proteins_graph(num_nodes=20_000, num_edges_undirected=300_000, seed=seed)
        edge_index, nodes = data.edge_index, data.num_nodes
    graph = Graph(edge_index, nodes).prepare()
    inputs = [torch.randn(nodes, HEADS, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3)]
    inputs.append(torch.randn(graph.num_edges, HEADS, HEAD_DIM, generator=gen).requires_grad_())
    sink = torch.randn(HEADS, generator=gen).requires_grad_()
    gate = torch.randn(nodes, HEADS, generator=gen).requires_grad_()
    return graph, inputs, sink, gate


def one_round(graph, inputs, sink, gate, *, backend: str, mode: str) -> tuple[float, float]:
    from magnn.functional import edge_attention

    wrt = inputs + [t for t in (sink, gate) if t is not None]
    start = time.perf_counter()
    node_out, edge_out = edge_attention(*inputs, graph, mode=mode, clamp=5.0, sink=sink, gate=gate, backend=backend)
    middle = time.perf_counter()
    torch.autograd.grad(node_out.square().sum() + edge_out.sum(), wrt)
    return middle - start, time.perf_counter() - middle


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu", choices=("cpu", "triton", "torch"))
    parser.add_argument("--workload", default="molecules", choices=("molecules", "proteins"))
    parser.add_argument("--mode", default="gt", choices=("gt", "additive"))
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    graph, inputs, sink, gate = problem(args.workload)
    times = {"none": [], "sink+gate": []}
    for index in range(args.rounds):
        order = ("none", "sink+gate") if index % 2 else ("sink+gate", "none")
        for variant in order:
            extra = (sink, gate) if variant == "sink+gate" else (None, None)
            times[variant].append(one_round(graph, inputs, *extra, backend=args.backend, mode=args.mode))
    skip = args.rounds // 10
    medians = {}
    for variant, rows in times.items():
        fwd, bwd = (statistics.median(row[j] for row in rows[skip:]) * 1e3 for j in (0, 1))
        medians[variant] = fwd + bwd
        print(f"{variant:10s} forward {fwd:8.3f} ms  backward {bwd:8.3f} ms")
    print(f"{args.backend} {args.workload} {args.mode} (N={inputs[0].shape[0]}, E={graph.num_edges}, "
          f"{torch.get_num_threads()} threads): sink+gate / none = {medians['sink+gate'] / medians['none']:.3f}")


if __name__ == "__main__":
    main()
