"""cpu vs torch backend: edge attention forward + backward with statistics on.

N = 50,000 nodes, E = 1,000,000 random edges, H = 8, D = 8, float32, gt mode,
an EdgeStats collector on (the edge_out tap). One step is the forward call
plus torch.autograd.grad of q, k, v, e for given output gradients, on a Graph
whose CSR views are built beforehand (a static graph is built once).

    pytest benchmarks/test_bench_cpu_backend.py --benchmark-only

Both backends share one benchmark group. Peak memory is measured in a fresh
interpreter per backend (tracemalloc does not see torch's allocations): the
process's peak RSS after one step (VmHWM of /proc/self/status, which starts
afresh at exec; getrusage's ru_maxrss would report the forking parent's RSS),
and that peak minus the RSS just before the step (inputs, graph and
interpreter already resident), i.e. what the step itself needed. Both land in
extra_info.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from procstatus import status_kib  # benchmarks/procstatus.py, beside this script

NUM_NODES, NUM_EDGES, HEADS, HEAD_DIM = 50_000, 1_000_000, 8, 8
BACKENDS = ("torch", "cpu")


def make_problem(seed: int = 0):
    import magnn

    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, NUM_NODES, (2, NUM_EDGES), generator=gen)
    graph = magnn.Graph(edge_index, NUM_NODES).prepare()
    q, k, v = (torch.randn(NUM_NODES, HEADS, HEAD_DIM, generator=gen).requires_grad_() for _ in range(3))
    e = torch.randn(NUM_EDGES, HEADS, HEAD_DIM, generator=gen).requires_grad_()
    grad_node = torch.randn(NUM_NODES, HEADS, HEAD_DIM, generator=gen)
    grad_edge = torch.randn(NUM_EDGES, HEADS, HEAD_DIM, generator=gen)
    return graph, (q, k, v, e), (grad_node, grad_edge)


def step(problem, backend: str):
    from magnn.functional import edge_attention
    from magnn.stats import EdgeStats

    graph, (q, k, v, e), (grad_node, grad_edge) = problem
    stats = EdgeStats()
    node_out, edge_out = edge_attention(q, k, v, e, graph, mode="gt", stats=stats, backend=backend)
    grads = torch.autograd.grad([node_out, edge_out], [q, k, v, e], [grad_node, grad_edge])
    return stats, grads


def _measure_memory_in_this_process(backend: str) -> dict:
    if backend == "cpu":
        from magnn.backends import cpu as cpu_backend

        cpu_backend.build()  # load the library before the baseline: it is not the step's memory
    problem = make_problem()
    baseline = status_kib("VmRSS")
    step(problem, backend)
    peak = status_kib("VmHWM")
    return {"peak_rss_mb": peak / 1024, "baseline_rss_mb": baseline / 1024, "step_peak_mb": (peak - baseline) / 1024}


def measure_peak_memory(backend: str) -> dict:
    """Peak RSS of one step of `backend` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure-memory", backend],
        check=True, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.mark.benchmark(group="edge_attention fwd+bwd, stats on: N=50k E=1M H=8 D=8 float32")
@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_attention_forward_backward(benchmark, problem, backend):
    if backend == "cpu":
        from magnn.backends import cpu as cpu_backend

        cpu_backend.build()  # compile outside the timed region (a cached build just loads)
    stats, grads = benchmark.pedantic(step, args=(problem, backend), rounds=3, iterations=1, warmup_rounds=1)
    assert stats.count == NUM_EDGES * HEADS * HEAD_DIM
    assert all(torch.isfinite(g).all() for g in grads)
    benchmark.extra_info.update(measure_peak_memory(backend))
    benchmark.extra_info.update(
        backend=backend, num_nodes=NUM_NODES, num_edges=NUM_EDGES, heads=HEADS, head_dim=HEAD_DIM,
        dtype="float32", threads=torch.get_num_threads(), torch=torch.__version__,
    )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--measure-memory":
    print(json.dumps(_measure_memory_in_this_process(sys.argv[2])))
