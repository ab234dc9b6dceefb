"""Edge attention: every usable backend next to the peers a user would otherwise pick.

    pytest benchmarks/test_bench_edge_attention.py --benchmark-only

Groups put each comparison side by side in one run:
  op-<workload>-<pass>      magnn.functional.edge_attention (gt mode) per backend,
                            stats on and off, vs PyG's utils.softmax + scatter
                            pipeline (and torch-scatter's when installed)
  layer-<workload>-<pass>   FusedEdgeAttention(mode="additive") per backend and
                            magnn.layers.TransformerConv (the drop-in, when present)
                            vs torch_geometric.nn.TransformerConv with the same weights
Workloads: a molecule batch (128 bundled ZINC graphs), a proteins-like
synthetic graph at CPU size, and full ogbn-proteins scale (CUDA only).
Peak memory (CUDA max_memory_allocated, or the peak RSS increase sampled
during the call on CPU) goes into extra_info.
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache

import pytest
import torch

from magnn import EdgeStats, Graph
from magnn.functional import BACKENDS, edge_attention
from peers import pyg_gt_attention, torch_scatter_gt_attention  # benchmarks/peers.py

HEADS, HEAD_DIM = 8, 8
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PASSES = ("fwd", "fwd+bwd")


# -- workloads ------------------------------------------------------------------------

@lru_cache(maxsize=None)
def workload(name: str):
    """(edge_index, num_nodes) of a named workload, on DEVICE."""
    if name == "molecules":
        from torch_geometric.loader import DataLoader

        from magnn.data import load_zinc

        graphs = load_zinc(source="bundled")["train"]
        batch = next(iter(DataLoader(graphs, batch_size=128)))
        return batch.edge_index.to(DEVICE), batch.num_nodes
    if name == "proteins-cpu":
        from magnn.data import synthetic_proteins_graph

        data = synthetic_proteins_graph(num_nodes=20_000, num_edges_undirected=300_000, seed=0)
        return data.edge_index.to(DEVICE), data.num_nodes
    if name == "proteins-full":
        if DEVICE.type != "cuda":
            pytest.skip("full ogbn-proteins scale (79M edges) needs a GPU")
        from magnn.data import synthetic_proteins_graph

        data = synthetic_proteins_graph(seed=0)
        return data.edge_index.to(DEVICE), data.num_nodes
    raise ValueError(name)


WORKLOADS = ["molecules", "proteins-cpu", "proteins-full"]


def dtype_for(name: str) -> torch.dtype:
    return torch.bfloat16 if (name == "proteins-full" and DEVICE.type == "cuda") else torch.float32


def node_edge_inputs(name: str, seed: int = 0):
    edge_index, num_nodes = workload(name)
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype_for(name)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_()

    q, k, v = (rand(num_nodes, HEADS, HEAD_DIM) for _ in range(3))
    e = rand(edge_index.shape[1], HEADS, HEAD_DIM)
    return edge_index, num_nodes, (q, k, v, e)


# -- measurement ----------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn) -> int:
    """Bytes the call needed at its peak: CUDA allocator peak, or sampled RSS increase on CPU."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_bytes()) - before


def run_benchmark(benchmark, fn, rounds: int):
    def synced():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info["peak_memory_bytes"] = peak_memory(synced)
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    benchmark.extra_info["torch"] = torch.__version__
    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)


def rounds_for(name: str) -> int:
    return 10 if name == "molecules" else 3


def usable_backends():
    names = []
    for name, backend in BACKENDS.items():
        if name == "triton" and DEVICE.type != "cuda":
            continue  # the interpreter is a correctness tool, not a benchmark
        if backend.reason_unavailable(DEVICE, torch.float32) is None:
            names.append(name)
    return names


def _step(outputs, inputs, backward: bool):
    if backward:
        torch.autograd.grad([o.float().sum() for o in outputs], inputs)


# -- op level: edge_attention per backend vs PyG pipelines ------------------------------

@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("stats", [False, True], ids=["stats-off", "stats-on"])
@pytest.mark.parametrize("backend", usable_backends())
@pytest.mark.parametrize("name", WORKLOADS)
def test_op_magnn(benchmark, name, backend, stats, pass_):
    edge_index, num_nodes, inputs = node_edge_inputs(name)
    graph = Graph(edge_index, num_nodes).prepare()  # a static graph: CSR built once, outside the timing
    benchmark.group = f"op-{name}-{pass_}"
    benchmark.name = f"magnn[{backend}, {'stats' if stats else 'no stats'}]"

    def call():
        collector = EdgeStats() if stats else None
        outputs = edge_attention(*inputs, graph, mode="gt", stats=collector, backend=backend)
        _step(outputs, inputs, pass_ == "fwd+bwd")

    run_benchmark(benchmark, call, rounds_for(name))


PEERS = {"pyg-softmax-scatter": pyg_gt_attention}
try:
    import torch_scatter  # noqa: F401

    PEERS["torch-scatter"] = torch_scatter_gt_attention
except ImportError:
    pass


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("name", WORKLOADS)
def test_op_peer(benchmark, name, peer, pass_):
    edge_index, num_nodes, inputs = node_edge_inputs(name)
    benchmark.group = f"op-{name}-{pass_}"
    benchmark.name = f"peer[{peer}]"

    def call():
        outputs = PEERS[peer](*inputs, edge_index, num_nodes)
        _step(outputs, inputs, pass_ == "fwd+bwd")

    run_benchmark(benchmark, call, rounds_for(name))


# -- layer level: additive mode vs TransformerConv --------------------------------------

def _layers(num_features: int, dtype):
    from torch_geometric.nn import TransformerConv

    from magnn.layers import FusedEdgeAttention

    torch.manual_seed(0)
    conv = TransformerConv(num_features, HEAD_DIM, heads=HEADS, edge_dim=num_features, root_weight=False)
    ours = FusedEdgeAttention(num_features, HEADS, HEAD_DIM, num_features, mode="additive", bias=True)
    with torch.no_grad():
        for mine, theirs in ((ours.lin_q, conv.lin_query), (ours.lin_k, conv.lin_key), (ours.lin_v, conv.lin_value)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        ours.lin_e.weight.copy_(conv.lin_edge.weight)
        ours.lin_e.bias.zero_()
    return conv.to(DEVICE, dtype), ours.to(DEVICE, dtype)


def _layer_implementations():
    names = ["TransformerConv"] + [f"magnn[{b}]" for b in usable_backends()]
    from magnn import layers

    if hasattr(layers, "TransformerConv"):  # the drop-in: PyG's constructor and state_dict
        names += [f"magnn.TransformerConv[{b}]" for b in usable_backends()]
    return names


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("implementation", _layer_implementations())
@pytest.mark.parametrize("name", WORKLOADS)
def test_layer_additive(benchmark, name, implementation, pass_):
    edge_index, num_nodes = workload(name)
    dtype = dtype_for(name)
    features = HEADS * HEAD_DIM
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(num_nodes, features, generator=gen).to(DEVICE, dtype).requires_grad_()
    edge_attr = torch.randn(edge_index.shape[1], features, generator=gen).to(DEVICE, dtype)
    conv, ours = _layers(features, dtype)
    if implementation.startswith("magnn.TransformerConv["):
        from magnn.layers import TransformerConv

        backend = implementation[len("magnn.TransformerConv["):-1]
        drop_in = TransformerConv(features, HEAD_DIM, heads=HEADS, edge_dim=features, root_weight=False, backend=backend)
        drop_in.load_state_dict(conv.state_dict())  # the same weights as PyG's layer
        ours = drop_in.to(DEVICE, dtype)
    elif implementation != "TransformerConv":
        ours.backend = implementation[len("magnn["):-1]
    graph = Graph(edge_index, num_nodes).prepare()
    benchmark.group = f"layer-{name}-{pass_}"
    benchmark.name = implementation

    def call():
        if implementation == "TransformerConv":
            out = conv(x, edge_index, edge_attr)
        elif implementation.startswith("magnn.TransformerConv["):
            out = ours(x, graph, edge_attr)
        else:
            out = ours(x, graph, edge_attr)[0]
        _step([out], [x], pass_ == "fwd+bwd")

    run_benchmark(benchmark, call, rounds_for(name))
