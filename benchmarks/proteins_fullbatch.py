"""One full-batch training step on an ogbn-proteins-sized graph: time, peak memory, stats overhead.

    python benchmarks/proteins_fullbatch.py --model gt --device cuda --bf16 [--checkpoint]
    python benchmarks/proteins_fullbatch.py --model gt --device cpu --nodes 20000 --edges 300000

The graph is `magnn.data.synthetic_proteins_graph` (proteins-like heavy-tailed
degrees; default: the real size, N = 132,534 and 39,561,252 undirected =
79,122,504 directed edges). The model is the paper's ogbn-proteins preset
(GT: 3 layers, hidden 64, 8 heads, edge stream). A step is forward, BCE on the
train nodes, backward and an Adam update. "stats" repeats the step with
`magnn.stats.collect` on every attention layer; the overhead is the ratio of
the two medians. Prints one JSON line (also written to --json if given).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gt", "graphit", "san"), default="gt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nodes", type=int, default=132_534)
    parser.add_argument("--edges", type=int, default=39_561_252, help="undirected edges (each becomes two)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--checkpoint", action="store_true", help="activation checkpointing per layer")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from magnn.data import proteins_info, synthetic_proteins_graph
    from magnn.models import build_model
    from magnn.stats import collect

    args = parse_args(argv)
    device = torch.device(args.device)
    began = time.perf_counter()
    data = synthetic_proteins_graph(num_nodes=args.nodes, num_edges_undirected=args.edges, seed=0)
    build_seconds = time.perf_counter() - began
    info = proteins_info(int(data.species.max()) + 1)
    torch.manual_seed(0)
    model = build_model(args.model, info, preset="ogbn-proteins", backend=args.backend, checkpoint=args.checkpoint).to(device)
    data = data.to(device)
    mask = data.train_mask
    optimizer = torch.optim.Adam(model.parameters(), lr=7e-4)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(with_stats: bool) -> float:
        model.train()
        sync()
        start = time.perf_counter()
        if with_stats:
            with collect(model) as stats, autocast:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data)[mask].float(), data.y[mask])
        else:
            with autocast:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data)[mask].float(), data.y[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(False)  # warm-up: kernel compilation, allocator growth
    plain = [step(False) for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    with_stats = [step(True) for _ in range(args.steps)]
    result = {
        "model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "nodes": data.num_nodes, "directed_edges": int(data.edge_index.shape[1]),
        "bf16": args.bf16, "checkpoint": args.checkpoint, "backend": args.backend,
        "graph_build_seconds": round(build_seconds, 1),
        "step_seconds_median": statistics.median(plain),
        "step_seconds_with_stats_median": statistics.median(with_stats),
        "stats_overhead": statistics.median(with_stats) / statistics.median(plain) - 1.0,
        "peak_memory_gib": None if peak is None else peak / 2**30,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
