"""`magnn.stats.collect` counts each forward once, however autograd recomputes it (issue 28 item 4).

Activation checkpointing re-runs a checkpointed forward inside backward (use_reentrant=True from
CheckpointFunction.backward, use_reentrant=False from the saved-tensor unpack hook); that rerun
must add nothing. Each case compares the statistics and gradients of a checkpointed run with those
of a plain one: the same calls, rows and histograms, the same gradients.
"""
from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch.utils.checkpoint import checkpoint

from helpers import require_backend
from magnn.data import DatasetInfo
from magnn.layers import FusedEdgeAttention, TransformerConv
from magnn.stats import EdgeStats, collect, recomputing

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]

NUM_NODES, NUM_EDGES, IN, EDGE_DIM = 12, 40, 8, 4


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_NODES, IN, generator=generator)
    edge_index = torch.randint(0, NUM_NODES, (2, NUM_EDGES), generator=generator)
    edge_attr = torch.randn(NUM_EDGES, EDGE_DIM, generator=generator)
    return x, edge_index, edge_attr


def _layer(kind: str, backend: str):
    torch.manual_seed(1)
    if kind == "fused":
        layer = FusedEdgeAttention(IN, 2, 4, EDGE_DIM, backend=backend)
        return layer, lambda x, ei, ea: layer(x, ei, ea)[0]
    if kind == "magnn_transformer_conv":
        layer = TransformerConv(IN, 4, heads=2, edge_dim=EDGE_DIM, backend=backend)
    elif kind == "pyg_transformer_conv":
        layer = pyg_nn.TransformerConv(IN, 4, heads=2, edge_dim=EDGE_DIM)
    else:  # a PyG layer tapped at its messages, with no edge_attr and its own self-loops removed
        layer = pyg_nn.GATConv(IN, 4, heads=2, add_self_loops=False)
        return layer, lambda x, ei, ea: layer(x, ei)
    return layer, lambda x, ei, ea: layer(x, ei, ea)


def _run(layer, call, how: str):
    """(stats of the one layer, gradients of x and the parameters) of one forward + backward."""
    x, edge_index, edge_attr = _inputs()
    x.requires_grad_()
    layer.zero_grad()
    with collect(layer) as collected:
        if how == "plain":
            out = call(x, edge_index, edge_attr)
        else:
            out = checkpoint(call, x, edge_index, edge_attr, use_reentrant=how == "reentrant")
        out.square().sum().backward()
    (stats,) = collected.values()
    return stats, [x.grad] + [p.grad for p in layer.parameters()]


def _assert_same_stats(got: EdgeStats, want: EdgeStats):
    assert want.calls == 1
    assert (got.calls, got.rows, got.count) == (want.calls, want.rows, want.count)
    assert torch.equal(got.hist_abs.counts, want.hist_abs.counts)
    assert torch.equal(got.hist_ratio.counts, want.hist_ratio.counts)
    assert torch.equal(got.hist_edge_ratio.counts, want.hist_edge_ratio.counts)
    assert got.max_abs == want.max_abs


CASES = [("fused", "torch"), ("fused", "cpu"), ("magnn_transformer_conv", "torch"), ("magnn_transformer_conv", "cpu"),
         ("pyg_transformer_conv", None), ("pyg_gat", None)]


@pytest.mark.parametrize("how", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize("kind,backend", CASES)
def test_checkpointed_layer_counts_once(kind, backend, how):
    if backend == "cpu":
        require_backend("cpu", torch.device("cpu"))
    layer, call = _layer(kind, backend)
    want, want_grads = _run(layer, call, "plain")
    got, got_grads = _run(layer, call, how)
    _assert_same_stats(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("how", ["reentrant", "non_reentrant"])
def test_explicit_stats_argument_counts_once_under_checkpointing(how):
    # not only collect's collectors: a stats= handed to the call is filled once too
    layer, _ = _layer("magnn_transformer_conv", "torch")
    x, edge_index, edge_attr = _inputs()
    x.requires_grad_()
    mine = EdgeStats()
    checkpoint(lambda x: layer(x, edge_index, edge_attr, stats=mine), x,
               use_reentrant=how == "reentrant").sum().backward()
    assert (mine.calls, mine.rows) == (1, NUM_EDGES)


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_models_layers_checkpointed_by_the_user_count_once(name, use_reentrant):
    # each block of a magnn model run under the user's own checkpoint (either mode), not checkpoint=True
    from torch_geometric.data import Batch, Data

    import magnn.models as models

    info = DatasetInfo("zinc", "graph_regression", 1, "zinc_atom", "zinc_bond")
    settings = dict(num_layers=2, hidden=16, heads=4, pe_dim=4, backend="torch")
    transform = models.transforms_for(name, info, **settings)
    graphs = []
    for n in (5, 4):
        ring = torch.arange(n)
        edge_index = torch.cat([torch.stack([ring, (ring + 1) % n]), torch.stack([(ring + 1) % n, ring])], 1)
        graph = Data(x=torch.randint(0, 3, (n, 1)), edge_index=edge_index,
                     edge_attr=torch.randint(0, 3, (edge_index.shape[1],)), y=torch.randn(1))
        graphs.append(transform(graph) if transform is not None else graph)
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(3)
    model = models.build_model(name, info, **settings)
    model.train()
    results = []
    for wrapped in (False, True):
        if wrapped:  # the layer's tensors require grad, so both modes backpropagate through it
            model.run_layer = lambda layer, *args: checkpoint(layer, *args, use_reentrant=use_reentrant)
        model.zero_grad()
        torch.manual_seed(4)  # SAN's LPE sign flip draws random numbers
        with collect(model) as stats:
            model(batch).square().sum().backward()
        results.append(({key: (s.calls, s.rows, s.hist_abs.counts.tolist()) for key, s in stats.items()},
                        # the reentrant backward gives zeros where the plain one leaves None (unused outputs)
                        [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]))
    (plain_stats, plain_grads), (wrapped_stats, wrapped_grads) = results
    assert plain_stats and all(calls >= 1 for calls, _, _ in plain_stats.values())  # SAN: real + fake edges
    assert wrapped_stats == plain_stats
    for g, w in zip(wrapped_grads, plain_grads):
        torch.testing.assert_close(g, w)


def test_forwards_outside_backward_all_count():
    # the skip is for recomputation only: forwards under no_grad (evaluation) and with grad both count
    layer, call = _layer("magnn_transformer_conv", "torch")
    x, edge_index, edge_attr = _inputs()
    assert not recomputing()
    with collect(layer) as collected:
        with torch.no_grad():
            call(x, edge_index, edge_attr)
        call(x.requires_grad_(), edge_index, edge_attr).sum().backward()
        call(x, edge_index, edge_attr)
    (stats,) = collected.values()
    assert (stats.calls, stats.rows) == (3, 3 * NUM_EDGES)


def test_recomputing_is_true_exactly_inside_backward():
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", recomputing()))
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("backward", recomputing()))
            return grad

    Probe.apply(torch.ones(2, requires_grad=True)).sum().backward()
    assert seen == [("forward", False), ("backward", True)]


@pytest.mark.parametrize("kind", ["fused", "magnn_transformer_conv", "pyg_transformer_conv"])
def test_torch_func_grad_counts_once(kind):
    layer, call = _layer(kind, "torch")
    x, edge_index, edge_attr = _inputs()
    params = dict(layer.named_parameters())

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x, edge_index, edge_attr)).square().sum() \
            if kind != "fused" else torch.func.functional_call(layer, params, (x, edge_index, edge_attr))[0].square().sum()

    with collect(layer) as collected:
        grads = torch.func.grad(loss)(params, x)
    (stats,) = collected.values()
    assert (stats.calls, stats.rows) == (1, NUM_EDGES)
    layer.zero_grad()
    call(x, edge_index, edge_attr).square().sum().backward()
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["plain", "non_reentrant"])
def test_torch_compile_counts_once(how):
    # dynamo runs the layer's statistics eagerly (graph breaks), AOTAutograd recomputes inside the compiled backward
    layer, call = _layer("magnn_transformer_conv", "torch")
    want, want_grads = _run(layer, call, how)
    torch._dynamo.reset()
    compiled = torch.compile(call)
    got, got_grads = _run(layer, compiled, how)
    _assert_same_stats(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
