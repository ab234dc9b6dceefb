"""FusedEdgeAttention as a module: graphs without edges (forward, backward, statistics),
constructor checks, and one fullgraph trace under torch.compile."""
from __future__ import annotations

import json

import pytest
import torch

from edge_cases import EBTS, MODES, layer_inputs
from helpers import random_graph
from magnn.core.graph import Graph
from magnn.functional import BACKENDS
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats, collect

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_layer_forward_backward_without_edges(backend, mode, ebt):
    torch.manual_seed(0)
    layer = FusedEdgeAttention(8, 2, 4, 3, mode=mode, ebt=ebt, clamp=5.0, backend=backend)
    empty = torch.empty(2, 0, dtype=torch.long)
    for edge_index, num_nodes in ((empty, 3), (empty, 1), (random_graph(5, 6, isolated=2), 5)):
        x = torch.randn(num_nodes, 8, requires_grad=True)
        edge_attr = torch.randn(edge_index.shape[1], 3, requires_grad=True)
        explicit = EdgeStats(tap="node")
        with collect(layer, keep_edge_ratio=True) as stats:
            node_out, edge_out = layer(x, edge_index, edge_attr, stats=explicit)
        assert node_out.shape == (num_nodes, 8) and edge_out.shape == (edge_index.shape[1], 8)
        assert torch.isfinite(node_out).all()
        if ebt != "slot" and edge_index.shape[1] == 0:
            assert torch.equal(node_out, torch.zeros_like(node_out))  # no incoming edge: exactly 0
        (node_out.square().sum() + edge_out.sum()).backward()
        assert torch.isfinite(x.grad).all()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())
        edge_stats = stats[""]
        assert edge_stats.calls == 1 and edge_stats.rows == edge_index.shape[1]
        assert edge_stats.edge_ratio.shape == (edge_index.shape[1],)
        assert explicit.calls == 1 and explicit.rows == num_nodes
        json.dumps(edge_stats.to_dict(), allow_nan=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(heads=0), r"heads must be a positive integer \(>= 1\), got 0"),
    (dict(heads=2.0), r"heads must be a positive integer"),
    (dict(head_dim=-1), r"head_dim must be a positive integer \(>= 1\), got -1"),
    (dict(in_channels=0), r"in_channels must be a positive integer"),
    (dict(edge_dim=True), r"edge_dim must be a positive integer"),
    (dict(clamp=0), r"clamp must be None \(no clamp\) or a positive number, got 0"),
    (dict(clamp=-5.0), r"clamp must be None .* positive number, got -5.0"),
    (dict(clamp=float("nan")), r"clamp must be None .* positive number, got nan"),
    (dict(clamp="5"), r"clamp must be None .* positive number, got '5'"),
    (dict(backend="cuda-magic"), r"unknown backend 'cuda-magic'; choose one of 'auto', 'torch', 'triton', 'cpu'"),
])
def test_layer_constructor_rejects_bad_arguments(kwargs, message):
    arguments = {**dict(in_channels=8, heads=2, head_dim=4, edge_dim=3), **kwargs}
    with pytest.raises(ValueError, match=message):
        FusedEdgeAttention(**arguments)


def test_every_backend_name_is_accepted_at_construction():
    for backend in ("auto", *BACKENDS):  # availability is checked when the layer runs
        assert FusedEdgeAttention(8, 2, 4, 3, backend=backend, clamp=2).backend == backend

def test_compiled_layer_still_traces_as_one_graph():
    torch.manual_seed(10)
    layer = FusedEdgeAttention(8, 2, 4, 3, ebt="slot", clamp=5.0, backend="torch")
    x, edge_index, edge_attr, _ = layer_inputs(11)
    graph = Graph(edge_index, num_nodes=9).prepare()  # validated eagerly, as a first eager call would
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(x, graph, edge_attr), layer(x, graph, edge_attr)):
        torch.testing.assert_close(got, want)
