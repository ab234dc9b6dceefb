"""ogbn-proteins training on a generated ogb raw folder: full batch and neighbour-sampled."""
import json

import pytest
import torch

from magnn import Graph
from magnn.cli import main
from magnn.data import synthetic_proteins_graph, write_ogb_proteins_raw
from magnn.data.sampling import neighbor_batches, sample_edges


@pytest.fixture(scope="module")
def proteins_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("proteins")
    write_ogb_proteins_raw(root, num_nodes=300, num_edges_undirected=3000, seed=0)
    return root


@pytest.mark.parametrize("mode", [[], ["--activation-checkpointing"], ["--sampled", "--batch-size", "64"]],
                         ids=["full-batch", "full-batch-checkpointed", "sampled"])
def test_train_cli_on_generated_proteins(tmp_path, proteins_root, mode):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ogbn-proteins", "--model", "gt", "--epochs", "2", "--data-root",
                 str(proteins_root), "--out", str(out), "--backend", "torch", *mode]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and 0.0 <= metrics["test"]["rocauc"] <= 1.0


def test_sampler_respects_fanouts_and_keeps_small_neighbourhoods_whole():
    data = synthetic_proteins_graph(num_nodes=400, num_edges_undirected=6000, seed=1)
    graph = Graph(data.edge_index, data.num_nodes)
    seeds = torch.arange(0, 40)
    edges = sample_edges(graph, seeds, [5], torch.Generator().manual_seed(0))
    into = torch.bincount(data.edge_index[1, edges], minlength=data.num_nodes)[seeds]
    degree = graph.in_degree[seeds]
    assert (into <= torch.clamp(degree, max=5)).all()
    assert torch.equal(into[degree <= 5], degree[degree <= 5])  # all kept when few
    assert (into[degree > 5] >= 1).all()
    assert torch.equal(torch.unique(edges), edges.sort().values)  # no duplicates


def test_subgraph_relabels_consistently_with_seeds_first():
    data = synthetic_proteins_graph(num_nodes=300, num_edges_undirected=3000, seed=2)
    seeds = torch.tensor([7, 3, 250])
    batch = next(neighbor_batches(data, seeds, fanouts=(3, 4), batch_size=3, shuffle=False))
    assert batch.num_seeds == 3 and torch.equal(batch.node_ids[:3], seeds)
    original = batch.node_ids[batch.edge_index]
    pairs = set(map(tuple, data.edge_index.t().tolist()))
    assert all(tuple(p) in pairs for p in original.t().tolist())
    assert torch.equal(batch.y, data.y[batch.node_ids]) and batch.edge_attr.shape[0] == batch.edge_index.shape[1]
    # two hops reach beyond the seeds' direct neighbours
    assert batch.num_nodes > 3
