"""magnn.layers.TransformerConv against torch_geometric.nn.TransformerConv with the same state_dict.

Outputs, attention weights and gradients (inputs and parameters) must match PyG's
to float tolerance for every constructor combination, bipartite inputs and
isolated destination nodes included, on every backend that runs here.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from helpers import random_graph, require_backend
from magnn import Graph
from magnn.layers import LayerInputError, TransformerConv
from magnn.stats import collect

pyg_nn = pytest.importorskip("torch_geometric.nn")

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ["torch", "cpu", "triton"]
# (bipartite, heads, concat, beta, edge_dim, bias, root_weight): all 128 combinations
COMBINATIONS = list(itertools.product([False, True], [1, 3], [True, False], [False, True], [None, 4],
                                      [True, False], [True, False]))
# the interpreted Triton kernels are slow: every 11th combination (a stride prime to every
# argument's period, so each argument still takes both values, in varied company)
TRITON_COMBINATIONS = COMBINATIONS[::11]
NUM_SRC, NUM_DST, ISOLATED = 9, 7, 2  # bipartite sizes; the last ISOLATED destinations get no edge
FEATURES_SRC, FEATURES_DST, OUT = 5, 3, 4


def _case_id(case):
    bipartite, heads, concat, beta, edge_dim, bias, root = case
    return (f"{'bip' if bipartite else 'one'}-h{heads}-{'cat' if concat else 'mean'}-beta{int(beta)}-"
            f"e{edge_dim or 0}-bias{int(bias)}-root{int(root)}")


def _dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _layers(case, backend, dtype, seed=0, dropout=0.0):
    bipartite, heads, concat, beta, edge_dim, bias, root = case
    in_channels = (FEATURES_SRC, FEATURES_DST) if bipartite else FEATURES_DST
    kwargs = dict(heads=heads, concat=concat, beta=beta, dropout=dropout, edge_dim=edge_dim, bias=bias,
                  root_weight=root)
    torch.manual_seed(seed)
    theirs = pyg_nn.TransformerConv(in_channels, OUT, **kwargs).to(dtype)
    ours = TransformerConv(in_channels, OUT, **kwargs, backend=backend).to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _inputs(case, dtype, seed=1):
    bipartite, _, _, _, edge_dim, _, _ = case
    gen = torch.Generator().manual_seed(seed)
    num_src = NUM_SRC if bipartite else NUM_DST
    edge_index = random_graph(NUM_DST, 30, generator=gen, isolated=ISOLATED, self_loops=0 if bipartite else 2,
                              duplicates=2)
    if bipartite:  # sources over the larger source set
        edge_index[0] = torch.randint(0, num_src, (edge_index.shape[1],), generator=gen)
    x_dst = torch.randn(NUM_DST, FEATURES_DST, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    x = x_dst
    if bipartite:
        x_src = torch.randn(num_src, FEATURES_SRC, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        x = (x_src, x_dst)
    edge_attr = None
    if edge_dim is not None:
        edge_attr = torch.randn(edge_index.shape[1], edge_dim, generator=gen, dtype=torch.float64).to(dtype)
        edge_attr.requires_grad_()
    return x, edge_index, edge_attr


def _leaves(x, edge_attr):
    leaves = list(x) if isinstance(x, tuple) else [x]
    return leaves + ([edge_attr] if edge_attr is not None else [])


def _forward_backward(layer, x, edge_index, edge_attr):
    out, (returned_index, alpha) = layer(x, edge_index, edge_attr, return_attention_weights=True)
    gen = torch.Generator().manual_seed(7)
    up_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    up_alpha = torch.randn(alpha.shape, generator=gen, dtype=torch.float64).to(alpha.dtype)
    params = [p for _, p in sorted(layer.named_parameters())]
    # unused parameters (lin_skip without root_weight) get None on both sides
    grads = torch.autograd.grad((out * up_out).sum() + (alpha * up_alpha).sum(), _leaves(x, edge_attr) + params,
                                allow_unused=True)
    return out, returned_index, alpha, grads


def _check_against_pyg(case, backend):
    dtype = _dtype(backend)
    require_backend(backend, torch.device("cpu"), dtype)
    theirs, ours = _layers(case, backend, dtype)
    x, edge_index, edge_attr = _inputs(case, dtype)
    want_out, want_index, want_alpha, want_grads = _forward_backward(theirs, x, edge_index, edge_attr)
    out, index, alpha, grads = _forward_backward(ours, x, edge_index, edge_attr)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert out.shape == want_out.shape and alpha.shape == want_alpha.shape
    assert torch.equal(index, want_index)
    torch.testing.assert_close(out, want_out, **tol)
    torch.testing.assert_close(alpha, want_alpha, **tol)
    assert len(grads) == len(want_grads)
    for got, want in zip(grads, want_grads):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, **tol)
    # the isolated destinations attend to nothing: their output is the root term (or 0)
    heads = case[1]
    if not case[6]:
        assert torch.equal(out[-ISOLATED:], torch.zeros_like(out[-ISOLATED:]))
    assert alpha.shape[1] == heads


@pytest.mark.parametrize("case", COMBINATIONS, ids=_case_id)
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_matches_pyg(backend, case):
    _check_against_pyg(case, backend)


@pytest.mark.parametrize("case", TRITON_COMBINATIONS, ids=_case_id)
def test_matches_pyg_triton(case):
    _check_against_pyg(case, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_call_returns_only_the_output_and_eval_ignores_dropout(backend):
    case = (True, 2, True, True, 4, True, True)
    dtype = _dtype(backend)
    require_backend(backend, torch.device("cpu"), dtype)
    theirs, ours = _layers(case, backend, dtype, dropout=0.5)
    theirs.eval()
    ours.eval()
    x, edge_index, edge_attr = _inputs(case, dtype)
    out = ours(x, edge_index, edge_attr)
    assert isinstance(out, torch.Tensor)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, theirs(x, edge_index, edge_attr), **tol)
    # return_attention_weights=False also returns the weights, as PyG does
    _, (_, alpha) = ours(x, edge_index, edge_attr, return_attention_weights=False)
    assert alpha.shape == (edge_index.shape[1], 2)


def test_training_dropout_is_seeded_by_torch_and_alpha_is_before_dropout():
    case = (False, 2, True, False, 4, True, False)
    _, ours = _layers(case, "torch", torch.float64, dropout=0.4)
    ours.train()
    x, edge_index, edge_attr = _inputs(case, torch.float64)
    torch.manual_seed(3)
    first, (_, alpha_first) = ours(x, edge_index, edge_attr, return_attention_weights=True)
    torch.manual_seed(3)
    again = ours(x, edge_index, edge_attr)
    torch.manual_seed(4)
    other = ours(x, edge_index, edge_attr)
    ours.eval()
    plain, (_, alpha_eval) = ours(x, edge_index, edge_attr, return_attention_weights=True)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, plain)
    torch.testing.assert_close(alpha_first, alpha_eval)  # the weights returned are those before dropout


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_statistics_equal_those_of_pyg_messages(backend):
    """collect() sees the layer like any magnn layer: its kernel statistics equal PyG's
    per-edge messages reduced by an independent hook."""
    require_backend(backend, torch.device("cpu"), torch.float32)
    case = (True, 2, True, False, 4, True, True)
    theirs, ours = _layers(case, backend, torch.float32)
    x, edge_index, edge_attr = _inputs(case, torch.float32)
    messages = []
    handle = theirs.register_message_forward_hook(lambda module, inputs, output: messages.append(output.detach()))
    theirs(x, edge_index, edge_attr)
    handle.remove()
    (message,) = messages
    flat = message.reshape(message.shape[0], -1).abs()
    with collect(ours, keep_edge_ratio=True) as stats:
        ours(x, edge_index, edge_attr)
    (layer_stats,) = stats.values()
    assert layer_stats.count == flat.numel()
    torch.testing.assert_close(torch.tensor(layer_stats.max_abs), flat.max().to(torch.float32), rtol=1e-5, atol=1e-6)
    median = flat.sort(dim=1).values[:, (flat.shape[1] - 1) // 2].clamp_min(torch.finfo(torch.float32).tiny)
    torch.testing.assert_close(layer_stats.edge_ratio, (flat.max(dim=1).values / median), rtol=1e-4, atol=1e-5)


def test_graph_input_and_user_errors():
    case = (True, 1, True, False, 4, True, True)
    _, ours = _layers(case, "torch", torch.float64)
    x, edge_index, edge_attr = _inputs(case, torch.float64)
    graph = Graph.from_edge_index(edge_index, size=(NUM_SRC, NUM_DST))
    torch.testing.assert_close(ours(x, graph, edge_attr), ours(x, edge_index, edge_attr))
    with pytest.raises(LayerInputError, match="edge_attr"):
        ours(x, edge_index)
    with pytest.raises(ValueError, match="num_src_nodes"):  # a source index beyond x_src
        ours((x[0][:3], x[1]), edge_index, edge_attr)
    # edge_attr without edge_dim: PyG adds it to the values unprojected (PyG's message path runs)
    torch.manual_seed(0)
    pyg_plain = pyg_nn.TransformerConv(3, 2)
    no_edges = TransformerConv(3, 2)
    no_edges.load_state_dict(pyg_plain.state_dict())
    args = (torch.randn(4, 3), torch.tensor([[0, 2], [1, 1]]), torch.randn(2, 1, 2))  # [E, H, C]
    torch.testing.assert_close(no_edges(*args), pyg_plain(*args))
    with pytest.raises(ValueError, match="dropout"):
        TransformerConv(3, 2, dropout=1.0)
    with pytest.raises(ValueError, match="in_channels"):
        TransformerConv((3, 4, 5), 2)
