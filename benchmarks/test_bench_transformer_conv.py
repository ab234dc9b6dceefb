"""Swapping the import: torch_geometric.nn.TransformerConv vs magnn.layers.TransformerConv.

    pytest benchmarks/test_bench_transformer_conv.py --benchmark-only

One group per workload and pass puts PyG's layer and magnn's (per usable backend)
side by side, with the same weights (magnn's loads PyG's state_dict). A step is
the layer's forward in training mode, and for "fwd+bwd" also torch.autograd.grad
of the input features and every parameter for a given output gradient.

Workloads (float32, CPU; CUDA when present):
  molecules      128 bundled ZINC graphs in one batch, 64 input features,
                 16 edge features, heads=8, out_channels=8, root_weight
  proteins-cpu   synthetic_proteins_graph(num_nodes=20_000, num_edges_undirected=300_000)
                 (600,000 directed edges), 64 input features, 8 edge features
                 (as ogbn-proteins), heads=8, out_channels=8, root_weight
Both with attention dropout 0 and 0.1 (PyG: F.dropout on alpha; magnn: in the kernels).

Peak memory is measured in a fresh interpreter per case on CPU (the RSS high-water
mark VmHWM after one step minus the RSS just before it: what the step itself
needed; tracemalloc does not see torch's allocator), or with the CUDA allocator's
peak on GPU; both land in extra_info["step_peak_mb"].
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache

import pytest
import torch

from procstatus import status_kib  # benchmarks/procstatus.py, beside this script

HEADS, OUT_CHANNELS, IN_FEATURES = 8, 8, 64
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORKLOADS = {"molecules": 16, "proteins-cpu": 8}  # name -> edge feature width
PASSES = ("fwd", "fwd+bwd")
DROPOUTS = (0.0, 0.1)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@lru_cache(maxsize=None)
def workload(name: str):
    """(edge_index, num_nodes) on DEVICE."""
    if name == "molecules":
        from torch_geometric.loader import DataLoader

        from magnn.data import load_zinc

        graphs = load_zinc(source="bundled")["train"]
        batch = next(iter(DataLoader(graphs, batch_size=128)))
        return batch.edge_index.to(DEVICE), int(batch.num_nodes)
    if name == "proteins-cpu":
        from magnn.data import synthetic_proteins_graph

        data = synthetic_proteins_graph(num_nodes=20_000, num_edges_undirected=300_000, seed=0)
        return data.edge_index.to(DEVICE), int(data.num_nodes)
    raise ValueError(name)


def implementations():
    from magnn.functional import BACKENDS

    names = ["pyg"]
    for backend in ("cpu", "torch", "triton"):
        if backend == "triton" and DEVICE.type != "cuda":
            continue  # the interpreter is a correctness tool, not a benchmark
        if BACKENDS[backend].reason_unavailable(DEVICE, torch.float32) is None:
            names.append(f"magnn[{backend}]")
    return names


def make_case(name: str, implementation: str, dropout: float):
    """(layer, x, edge_index, edge_attr, grad_out, leaves) for one case, same weights for every implementation."""
    from torch_geometric.nn import TransformerConv as PygTransformerConv

    from magnn import Graph
    from magnn.layers import TransformerConv

    edge_index, num_nodes = workload(name)
    edge_dim = WORKLOADS[name]
    torch.manual_seed(0)
    kwargs = dict(heads=HEADS, edge_dim=edge_dim, dropout=dropout)
    pyg = PygTransformerConv(IN_FEATURES, OUT_CHANNELS, **kwargs)
    if implementation == "pyg":
        layer, index = pyg, edge_index
    else:
        layer = TransformerConv(IN_FEATURES, OUT_CHANNELS, **kwargs, backend=implementation[len("magnn["):-1])
        layer.load_state_dict(pyg.state_dict(), strict=True)
        index = Graph(edge_index, num_nodes).prepare()  # a static graph: CSR built once, outside the timing
    layer = layer.to(DEVICE).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(num_nodes, IN_FEATURES, generator=gen).to(DEVICE).requires_grad_()
    edge_attr = torch.randn(edge_index.shape[1], edge_dim, generator=gen).to(DEVICE)
    grad_out = torch.randn(num_nodes, HEADS * OUT_CHANNELS, generator=gen).to(DEVICE)
    return layer, x, index, edge_attr, grad_out, [x, *layer.parameters()]


def step(case, backward: bool):
    layer, x, index, edge_attr, grad_out, leaves = case
    out = layer(x, index, edge_attr)
    if backward:
        return torch.autograd.grad(out, leaves, grad_out)
    return out


# -- memory: one step in a fresh interpreter ------------------------------------------

def _measure_here(name: str, implementation: str, dropout: float, pass_: str) -> dict:
    if implementation == "magnn[cpu]":
        from magnn.backends import cpu as cpu_backend

        cpu_backend.build()  # the library is not the step's memory
    case = make_case(name, implementation, dropout)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(case, pass_ == "fwd+bwd")
        torch.cuda.synchronize()
        return {"step_peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
    baseline = status_kib("VmRSS")
    step(case, pass_ == "fwd+bwd")
    peak = status_kib("VmHWM")
    return {"step_peak_mb": (peak - baseline) / 1024, "peak_rss_mb": peak / 1024}


def measure_peak_memory(name: str, implementation: str, dropout: float, pass_: str) -> dict:
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure-memory", name, implementation, str(dropout), pass_],
        check=True, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
             # the checkout's magnn, whatever the interpreter's site-packages point at
             "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the benchmark ----------------------------------------------------------------------

@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dropout", DROPOUTS, ids=lambda p: f"dropout{p}")
@pytest.mark.parametrize("implementation", implementations())
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_transformer_conv(benchmark, name, implementation, dropout, pass_):
    if implementation == "magnn[cpu]":
        from magnn.backends import cpu as cpu_backend

        cpu_backend.build()  # compile outside the timed region (a cached build just loads)
    case = make_case(name, implementation, dropout)
    benchmark.group = f"TransformerConv-{name}-dropout{dropout}-{pass_}"
    benchmark.name = implementation

    def call():
        result = step(case, pass_ == "fwd+bwd")
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return result

    rounds = 10 if name == "molecules" else 3
    result = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(t is None or torch.isfinite(t).all() for t in outputs)
    benchmark.extra_info.update(measure_peak_memory(name, implementation, dropout, pass_))
    edge_index, num_nodes = workload(name)
    benchmark.extra_info.update(
        implementation=implementation, num_nodes=num_nodes, num_edges=int(edge_index.shape[1]), heads=HEADS,
        out_channels=OUT_CHANNELS, dropout=dropout, threads=torch.get_num_threads(), torch=torch.__version__,
        device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
    )


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--measure-memory":
    print(json.dumps(_measure_here(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])))
