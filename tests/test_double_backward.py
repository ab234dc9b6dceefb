"""Double backward (create_graph=True) through the edge attention (issue 28 item 3).

The reference backend differentiates its own gradients (torch autograd end to end): gradgradcheck in
float64. The compiled backends' backward ops are not differentiable, so both (cpu, triton) refuse a
create_graph backward with a `DoubleBackwardError` naming backend="torch", never return gradients
whose gradients are silently wrong; first-order gradients are unchanged. `magnn.layers.TransformerConv`
on the reference matches PyG's layer under a gradient penalty.
"""
from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch.utils.checkpoint import checkpoint

from helpers import random_graph, random_inputs, require_backend
from magnn.core.contract import DoubleBackwardError
from magnn.core.errors import UserError
from magnn.core.graph import Graph
from magnn.functional import edge_attention
from magnn.layers import FusedEdgeAttention, TransformerConv

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("mode,ebt,bias,dropout", [
    ("gt", None, None, 0.0), ("gt", "edge", "edge_head", 0.0), ("additive", "slot", "edge", 0.0),
    ("additive", None, None, 0.0), ("additive", "edge", None, 0.4), ("gt", "slot", "edge", 0.4),
])
def test_reference_gradgradcheck_float64(mode, ebt, bias, dropout):
    gen = torch.Generator().manual_seed(11)
    edge_index = random_graph(5, 12, generator=gen, isolated=1, self_loops=1, duplicates=1)
    q, k, v, e, b, params = random_inputs(5, edge_index, 2, 2, generator=gen, bias=bias, ebt=ebt)
    leaves = [t for t in (q, k, v, e, b, *(params or ())) if t is not None]
    has_bias = b is not None

    def run(q, k, v, e, *rest):
        b = rest[0] if has_bias else None
        p = tuple(rest[1 if has_bias else 0:]) or None
        node_out, edge_out, lse = edge_attention(q, k, v, e, edge_index, mode=mode, clamp=4.0, bias=b, ebt=ebt,
                                                 ebt_params=p, dropout=dropout, seed=5, return_lse=True,
                                                 backend="torch")
        return node_out, edge_out, torch.where(torch.isinf(lse), 0, lse)

    assert torch.autograd.gradgradcheck(run, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def _gradient_penalty(backend: str, dtype=torch.float32):
    """A FusedEdgeAttention's input-gradient norm, differentiated again (create_graph=True)."""
    torch.manual_seed(0)
    layer = FusedEdgeAttention(6, 2, 3, 4, backend=backend).to(dtype)
    edge_index = random_graph(7, 20, generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, 6, dtype=dtype, requires_grad=True)
    edge_attr = torch.randn(20, 4, dtype=dtype)
    out = layer(x, edge_index, edge_attr)[0]
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    return layer, x


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compiled_backends_refuse_double_backward_naming_the_fix(backend):
    require_backend(backend, torch.device("cpu"))
    with pytest.raises(DoubleBackwardError, match=r'backend="torch"') as caught:
        _gradient_penalty(backend)
    assert isinstance(caught.value, UserError)  # the CLI prints it as one line
    assert "create_graph=True" in str(caught.value) and f"'{backend}' backend" in str(caught.value)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compiled_backends_refuse_on_the_functional_entry_and_for_every_input(backend):
    require_backend(backend, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    edge_index = random_graph(5, 12, generator=gen)
    q, k, v, e, _, _ = random_inputs(5, edge_index, 2, 2, generator=gen, dtype=torch.float32)
    for leaf in (q, k, v, e):  # a penalty on any one input's gradient
        node_out, _ = edge_attention(q, k, v, e, edge_index, mode="additive", backend=backend)
        with pytest.raises(DoubleBackwardError):
            torch.autograd.grad(node_out.square().sum(), leaf, create_graph=True)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("use_reentrant", [None, True, False])
def test_first_order_gradients_still_work_on_compiled_backends(backend, use_reentrant):
    # the refusal is for create_graph only: plain backward, inside checkpointing of either mode too
    require_backend(backend, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    edge_index = random_graph(5, 12, generator=gen)
    q, k, v, e, _, _ = random_inputs(5, edge_index, 2, 2, generator=gen, dtype=torch.float32)

    def run(q, k, v, e, backend):
        return edge_attention(q, k, v, e, edge_index, mode="gt", backend=backend)[0]

    grads = []
    for name in (backend, "torch"):
        out = run(q, k, v, e, name) if use_reentrant is None else \
            checkpoint(run, q, k, v, e, name, use_reentrant=use_reentrant)
        out.square().sum().backward()  # (reentrant checkpointing takes .backward(), not .grad())
        grads.append([t.grad.clone() for t in (q, k, v, e)])
        for t in (q, k, v, e):
            t.grad = None
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_edge_attention_gradient_penalty_on_the_reference_reaches_every_parameter():
    layer, x = _gradient_penalty("torch", torch.float64)
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name  # lin_e included
    assert x.grad is not None


def _transformer_convs(**kwargs):
    torch.manual_seed(4)
    theirs = pyg_nn.TransformerConv(6, 3, **kwargs).double()
    ours = TransformerConv(6, 3, **kwargs, backend="torch").double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("kwargs", [dict(heads=2, edge_dim=4), dict(heads=2, edge_dim=4, beta=True, concat=False),
                                    dict(heads=1)])
def test_transformer_conv_matches_pyg_under_a_gradient_penalty(kwargs):
    ours, theirs = _transformer_convs(**kwargs)
    edge_index = random_graph(8, 24, generator=torch.Generator().manual_seed(5))
    edge_attr = torch.randn(24, 4, dtype=torch.float64) if "edge_dim" in kwargs else None
    x0 = torch.randn(8, 6, dtype=torch.float64)
    results = []
    for layer in (ours, theirs):
        x = x0.clone().requires_grad_()
        out = layer(x, edge_index, edge_attr)
        (grad_x,) = torch.autograd.grad(out.sin().sum(), x, create_graph=True)
        penalty = (grad_x.norm(dim=1) - 1).square().mean()
        (out.square().mean() + penalty).backward()
        results.append([x.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_transformer_conv_on_a_compiled_backend_refuses_a_gradient_penalty(backend):
    require_backend(backend, torch.device("cpu"))
    torch.manual_seed(4)
    layer = TransformerConv(6, 3, heads=2, edge_dim=4, backend=backend)
    edge_index = random_graph(8, 24, generator=torch.Generator().manual_seed(5))
    x = torch.randn(8, 6, requires_grad=True)
    out = layer(x, edge_index, torch.randn(24, 4))
    with pytest.raises(DoubleBackwardError, match=r'TransformerConv\(\.\.\., backend="torch"\)'):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_bipartite_graph_gradgradcheck_on_the_reference():
    gen = torch.Generator().manual_seed(6)
    edge_index = random_graph(4, 10, generator=gen)
    edge_index[0] = torch.randint(0, 6, (10,), generator=gen)
    graph = Graph(edge_index, 4, num_src_nodes=6)
    q = torch.randn(4, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    k, v = (torch.randn(6, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    e = torch.randn(10, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)

    def run(q, k, v, e):
        return edge_attention(q, k, v, e, graph, mode="additive", backend="torch")

    assert torch.autograd.gradgradcheck(run, (q, k, v, e), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compiled_backends_refuse_double_backward_through_the_edge_projection(backend):
    # the in-operator edge projection (e_weight) has its own backward formula: refused there too
    require_backend(backend, torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    edge_index = random_graph(5, 12, generator=gen)
    q, k, v, _, _, _ = random_inputs(5, edge_index, 2, 2, generator=gen, dtype=torch.float32)
    a = torch.randn(12, 3, generator=gen, requires_grad=True)
    weight = torch.randn(4, 3, generator=gen, requires_grad=True)
    for leaf in (q, a, weight):
        node_out, _ = edge_attention(q, k, v, a, edge_index, mode="gt", e_weight=weight, backend=backend)
        with pytest.raises(DoubleBackwardError):
            torch.autograd.grad(node_out.square().sum(), leaf, create_graph=True)
