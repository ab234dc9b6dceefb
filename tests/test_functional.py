"""The pure-PyTorch reference against independent oracles (SPEC §3)."""
import itertools

import pytest
import torch
from torch_geometric.nn import TransformerConv

from helpers import dense_edge_attention, random_graph, random_inputs
from magnn import Graph
from magnn.functional import edge_attention
from magnn.layers import FusedEdgeAttention

MODES = ["gt", "additive"]
EBTS = [None, "edge", "slot"]


def _reference(*args, **kwargs):
    return edge_attention(*args, backend="torch", **kwargs)


@pytest.mark.parametrize("mode,ebt,clamp,bias", list(itertools.product(MODES, EBTS, [None, 0.7], [None, "edge", "edge_head"])))
def test_matches_dense_per_node_oracle(mode, ebt, clamp, bias):
    gen = torch.Generator().manual_seed(hash((mode, ebt, clamp, bias)) % 2**31)
    num_nodes = 9
    edge_index = random_graph(num_nodes, 25, generator=gen, isolated=2, self_loops=2, duplicates=3)
    q, k, v, e, b, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, bias=bias, ebt=ebt)
    node_out, edge_out = _reference(q, k, v, e, edge_index, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=params)
    want_node, want_edge = dense_edge_attention(q, k, v, e, edge_index, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=params)
    torch.testing.assert_close(node_out, want_node, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(edge_out, want_edge, rtol=1e-10, atol=1e-12)
    if ebt != "slot":
        isolated = slice(num_nodes - 2, num_nodes)
        assert torch.equal(node_out[isolated], torch.zeros_like(node_out[isolated]))


@pytest.mark.parametrize("mode,ebt", list(itertools.product(MODES, EBTS)))
def test_gradcheck_float64(mode, ebt):
    gen = torch.Generator().manual_seed(7)
    edge_index = random_graph(6, 14, generator=gen, isolated=1, self_loops=1, duplicates=2)
    q, k, v, e, b, params = random_inputs(6, edge_index, 2, 3, generator=gen, bias="edge_head", ebt=ebt)
    inputs = (q, k, v, e, b) + (params or ())

    def run(q, k, v, e, b, *params):
        return _reference(q, k, v, e, edge_index, mode=mode, clamp=1.5, bias=b, ebt=ebt, ebt_params=params or None)

    assert torch.autograd.gradcheck(run, inputs)


def test_additive_equals_transformer_conv_values_and_gradients():
    torch.manual_seed(3)
    num_nodes, in_channels, edge_dim, heads, head_dim = 30, 12, 5, 4, 6
    edge_index = random_graph(num_nodes, 120, isolated=3, self_loops=4, duplicates=5)
    x = torch.randn(num_nodes, in_channels)
    edge_attr = torch.randn(edge_index.shape[1], edge_dim)
    conv = TransformerConv(in_channels, head_dim, heads=heads, edge_dim=edge_dim, root_weight=False)
    layer = FusedEdgeAttention(in_channels, heads, head_dim, edge_dim, mode="additive", bias=True, backend="torch")
    with torch.no_grad():
        for mine, theirs in ((layer.lin_q, conv.lin_query), (layer.lin_k, conv.lin_key), (layer.lin_v, conv.lin_value)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        layer.lin_e.weight.copy_(conv.lin_edge.weight)
        layer.lin_e.bias.zero_()  # TransformerConv's lin_edge has no bias
    x_mine, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, _ = layer(x_mine, edge_index, edge_attr)
    expected = conv(x_theirs, edge_index, edge_attr)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_mine.grad, x_theirs.grad, rtol=1e-5, atol=1e-6)
    for mine, theirs in ((layer.lin_q, conv.lin_query), (layer.lin_k, conv.lin_key), (layer.lin_v, conv.lin_value), (layer.lin_e, conv.lin_edge)):
        torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-6)


def test_ebt_slot_is_an_extra_virtual_edge():
    """ebt='slot' equals a graph with one extra edge per node from a node holding k', v' with e'."""
    torch.manual_seed(0)
    num_nodes, heads, head_dim = 7, 2, 4
    edge_index = random_graph(num_nodes, 15, isolated=2)
    q, k, v, e, _, params = random_inputs(num_nodes, edge_index, heads, head_dim, ebt="slot")
    kb, eb, vb = params
    for mode in MODES:
        node_out, _ = _reference(q, k, v, e, edge_index, mode=mode, ebt="slot", ebt_params=params)
        virtual = num_nodes  # extra source node carrying the slot's key and value
        slot_edges = torch.stack([torch.full((num_nodes,), virtual), torch.arange(num_nodes)])
        q2 = torch.cat([q, torch.zeros(1, heads, head_dim, dtype=q.dtype)])
        k2 = torch.cat([k, kb.unsqueeze(0)])
        v2 = torch.cat([v, vb.unsqueeze(0)])
        e2 = torch.cat([e, eb.expand(num_nodes, heads, head_dim)])
        expected, _ = _reference(q2, k2, v2, e2, torch.cat([edge_index, slot_edges], 1), mode=mode)
        torch.testing.assert_close(node_out, expected[:num_nodes])


def test_ebt_edge_formula_gt():
    """gt with ebt='edge': w_ij + beta_i e' in edge_out, message v_j + v'."""
    torch.manual_seed(1)
    num_nodes, heads, head_dim = 6, 3, 2
    edge_index = random_graph(num_nodes, 12)
    q, k, v, e, _, params = random_inputs(num_nodes, edge_index, heads, head_dim, ebt="edge")
    kb, eb, vb = params
    _, plain_edge = _reference(q, k, v, e, edge_index)
    node_out, edge_out = _reference(q, k, v, e, edge_index, ebt="edge", ebt_params=params)
    beta = (q * kb).sum(-1, keepdim=True) / head_dim**0.5
    torch.testing.assert_close(edge_out, plain_edge + (beta * eb)[edge_index[1]])
    # the same softmax weights over (v_j + v') as plain attention with those logits
    logits = edge_out.sum(-1)
    shifted, _ = _reference(q, k, v + vb, e, edge_index, bias=logits - plain_edge.sum(-1))
    torch.testing.assert_close(node_out, shifted)


def test_huge_logits_without_clamp_stay_finite():
    torch.manual_seed(2)
    edge_index = random_graph(10, 40, isolated=1)
    q, k, v, e, _, _ = random_inputs(10, edge_index, 2, 4, dtype=torch.float32, scale=40.0)
    for mode in MODES:
        node_out, edge_out = _reference(q, k, v, e, edge_index, mode=mode)
        assert torch.isfinite(node_out).all()
        node_out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v, e))
        q.grad = k.grad = v.grad = e.grad = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_follow_float32(dtype):
    torch.manual_seed(4)
    edge_index = random_graph(12, 50, isolated=1)
    q, k, v, e, _, params = random_inputs(12, edge_index, 2, 8, dtype=dtype, ebt="slot")
    node_out, edge_out = _reference(q, k, v, e, edge_index, ebt="slot", ebt_params=params)
    assert node_out.dtype == dtype and edge_out.dtype == dtype
    want, want_edge = _reference(*(t.float() for t in (q, k, v, e)), edge_index, ebt="slot", ebt_params=tuple(p.float() for p in params))
    torch.testing.assert_close(node_out.float(), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(edge_out.float(), want_edge, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("ebt", EBTS)
def test_empty_edge_set_and_single_node(ebt):
    empty = torch.empty(2, 0, dtype=torch.long)
    for num_nodes, edge_index in ((5, empty), (1, empty), (1, torch.zeros(2, 1, dtype=torch.long))):
        q, k, v, e, _, params = random_inputs(num_nodes, edge_index, 2, 3, ebt=ebt)
        node_out, edge_out = _reference(q, k, v, e, edge_index, ebt=ebt, ebt_params=params)
        assert node_out.shape == (num_nodes, 2, 3) and edge_out.shape == (edge_index.shape[1], 2, 3)
        assert torch.isfinite(node_out).all()
        if ebt != "slot" and edge_index.shape[1] == 0:
            assert torch.equal(node_out, torch.zeros_like(node_out))
        node_out.sum().backward()
        assert torch.isfinite(q.grad).all()


def test_graph_handle_equals_edge_index_and_orders_edges():
    torch.manual_seed(5)
    edge_index = random_graph(8, 30, duplicates=3)
    graph = Graph(edge_index, num_nodes=8)
    q, k, v, e, _, _ = random_inputs(8, edge_index, 2, 2)
    a = _reference(q, k, v, e, edge_index)
    b = _reference(q, k, v, e, graph)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    # CSR: rows sorted by dst, perm maps back to the caller's edges
    assert torch.equal(graph.col, edge_index[0, graph.perm])
    assert torch.equal(graph.rowptr[1:] - graph.rowptr[:-1], torch.bincount(edge_index[1], minlength=8))
    assert (edge_index[1, graph.perm].diff() >= 0).all()
    assert (edge_index[0, graph.rev_perm].diff() >= 0).all()
    assert torch.equal(graph.perm[graph.rev_to_csr], graph.rev_perm)
    stats = graph.degree_stats()
    assert stats.max_in == int(torch.bincount(edge_index[1]).max())


def test_bad_inputs_raise_clear_errors():
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    q, k, v, e, _, _ = random_inputs(3, edge_index, 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="node 5"):
        edge_attention(q, k, v, e, torch.tensor([[0, 1, 5], [1, 2, 0]]))
    with pytest.raises(ValueError, match="negative"):
        edge_attention(q, k, v, e, torch.tensor([[0, -1, 2], [1, 2, 0]]))
    with pytest.raises(ValueError, match=r"\[E, 2\]"):
        edge_attention(q, k, v, e, edge_index.t().contiguous())
    with pytest.raises(TypeError, match="int64"):
        edge_attention(q, k, v, e, edge_index.float())
    with pytest.raises(ValueError, match="e has 2 rows but edge_index has 3 edges"):
        edge_attention(q, k, v, e[:2], edge_index)
    with pytest.raises(ValueError, match="H=2, D=4"):
        edge_attention(q, k, v, e.reshape(3, 4, 2), edge_index)
    with pytest.raises(ValueError, match="same shape"):
        edge_attention(q, k[:, :1], v, e, edge_index)
    with pytest.raises(TypeError, match="share one dtype"):
        edge_attention(q, k.double(), v, e, edge_index)
    with pytest.raises(TypeError, match="float16"):
        edge_attention(q.int(), k, v, e, edge_index)
    with pytest.raises(ValueError, match="unknown mode"):
        edge_attention(q, k, v, e, edge_index, mode="dot")
    with pytest.raises(ValueError, match="unknown ebt"):
        edge_attention(q, k, v, e, edge_index, ebt="bias")
    with pytest.raises(ValueError, match="ebt_params"):
        edge_attention(q, k, v, e, edge_index, ebt="edge")
    with pytest.raises(ValueError, match="unknown backend"):
        edge_attention(q, k, v, e, edge_index, backend="cuda-magic")
    with pytest.raises(ValueError, match="bias must have shape"):
        edge_attention(q, k, v, e, edge_index, bias=torch.zeros(4))
    with pytest.raises(ValueError, match="num_nodes"):
        Graph(edge_index, num_nodes=2)
    with pytest.raises(ValueError, match="disagrees"):
        edge_attention(q, k, v, e, Graph(edge_index, num_nodes=4), num_nodes=3)
    with pytest.raises(ValueError, match="num_nodes=4"):
        edge_attention(q, k, v, e, Graph(edge_index, num_nodes=4))
