"""The pure-PyTorch reference against independent oracles (SPEC §3)."""
import itertools
import math

import pytest
import torch
from torch_geometric.nn import TransformerConv

from helpers import dense_edge_attention, random_graph, random_inputs
from magnn import Graph
from magnn.functional import edge_attention, merge_attention
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats

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


# -- return_lse and merge_attention ------------------------------------------------------------
def _dense_logits(q, k, e, edge_index, *, mode, clamp, bias, ebt, ebt_params):
    """Each node's attended logits (incoming edges in caller order, then the slot), per SPEC §3."""
    heads, head_dim = q.shape[1:]
    scale = head_dim ** -0.5
    src, dst = edge_index
    logits = []
    for i in range(q.shape[0]):
        rows = []
        for edge in (dst == i).nonzero().reshape(-1).tolist():
            j, e_ij = int(src[edge]), e[edge]
            shift = 0.0
            if ebt == "edge":
                shift = (q[i] * ebt_params[0]).sum(-1, keepdim=True) * scale * ebt_params[1]
            if mode == "gt":
                logit = (q[i] * k[j] * e_ij * scale + shift).sum(-1)
            else:
                logit = (q[i] * (k[j] + e_ij + shift)).sum(-1) * scale
            if bias is not None:
                logit = logit + bias[edge]
            rows.append(logit)
        if ebt == "slot":
            kb, eb, _ = ebt_params
            rows.append((q[i] * (kb * eb if mode == "gt" else kb + eb)).sum(-1) * scale)
        stacked = torch.stack(rows) if rows else q.new_empty(0, heads)
        logits.append(stacked if clamp is None else stacked.clamp(-clamp, clamp))
    return logits


@pytest.mark.parametrize("mode,ebt,clamp", list(itertools.product(MODES, EBTS, [None, 0.7])))
def test_return_lse_is_the_log_sum_exp_and_its_gradient_the_attention(mode, ebt, clamp):
    gen = torch.Generator().manual_seed(hash((mode, ebt, clamp)) % 2**31)
    num_nodes = 8
    edge_index = random_graph(num_nodes, 20, generator=gen, isolated=2, self_loops=1, duplicates=2)
    q, k, v, e, b, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, bias="edge_head", ebt=ebt)
    node_out, edge_out, lse = _reference(q, k, v, e, edge_index, mode=mode, clamp=clamp, bias=b, ebt=ebt,
                                         ebt_params=params, return_lse=True)
    plain = _reference(q, k, v, e, edge_index, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=params)
    assert torch.equal(node_out, plain[0]) and torch.equal(edge_out, plain[1])
    assert lse.shape == (num_nodes, 2) and lse.dtype == torch.float64
    logits = _dense_logits(q, k, e, edge_index, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=params)
    want = torch.stack([torch.logsumexp(rows, 0) for rows in logits])  # -inf for an empty row
    torch.testing.assert_close(lse, want, rtol=1e-12, atol=1e-12)
    # d lse_i / d l_ij = a_ij: the bias enters every edge's logit with slope 1 (0 where the clamp cuts)
    (grad_bias,) = torch.autograd.grad(lse[torch.isfinite(lse)].sum(), b)
    raw = _dense_logits(q, k, e, edge_index, mode=mode, clamp=None, bias=b, ebt=ebt, ebt_params=params)
    dst = edge_index[1]
    for i, rows in enumerate(logits):
        edges = (dst == i).nonzero().reshape(-1)
        attention = torch.softmax(rows, 0)[: edges.numel()]
        inside = raw[i][: edges.numel()].abs() < clamp if clamp else torch.ones_like(attention, dtype=torch.bool)
        torch.testing.assert_close(grad_bias[edges], attention * inside, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ebt", EBTS)
def test_return_lse_gradcheck_float64(ebt):
    gen = torch.Generator().manual_seed(17)
    edge_index = random_graph(6, 14, generator=gen, isolated=1, duplicates=2)
    q, k, v, e, b, params = random_inputs(6, edge_index, 2, 3, generator=gen, bias="edge", ebt=ebt)
    upstream = torch.randn(6, 2, dtype=torch.float64, generator=gen)

    def run(q, k, v, e, b, *params):
        node_out, _, lse = _reference(q, k, v, e, edge_index, clamp=1.5, bias=b, ebt=ebt, ebt_params=params or None,
                                      return_lse=True)
        finite = torch.isfinite(lse)
        return node_out, torch.where(finite, lse, torch.zeros_like(lse)) * upstream

    assert torch.autograd.gradcheck(run, (q, k, v, e, b) + (params or ()))


@pytest.mark.parametrize("ebt", [None, "edge"])
def test_return_lse_of_empty_and_masked_rows_is_minus_inf_without_nan_gradients(ebt):
    gen = torch.Generator().manual_seed(18)
    num_nodes = 6
    edge_index = random_graph(num_nodes, 16, generator=gen, isolated=2)
    q, k, v, e, b, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, bias="edge_head", ebt=ebt)
    masked = edge_index[1] == 0  # every edge into node 0 masked with a -inf bias
    b = torch.where(masked.unsqueeze(-1), torch.full_like(b, -math.inf), b).detach().requires_grad_()
    node_out, _, lse = _reference(q, k, v, e, edge_index, bias=b, ebt=ebt, ebt_params=params, return_lse=True)
    nobody = [0, num_nodes - 2, num_nodes - 1]
    assert torch.all(lse[nobody] == -math.inf) and torch.isfinite(lse[1:num_nodes - 2]).all()
    # a loss that sees every lse, -inf included, through exp: nothing attended contributes 0
    (node_out.sum() + lse.exp().sum()).backward()
    for tensor in (q, k, v, e, b) + (params or ()):
        assert torch.isfinite(tensor.grad).all()
    assert torch.all(b.grad[masked] == 0)


def test_merge_attention_of_a_split_edge_set_equals_the_whole():
    gen = torch.Generator().manual_seed(19)
    num_nodes = 9
    edge_index = random_graph(num_nodes, 30, generator=gen, isolated=2, duplicates=2)
    q, k, v, e, b, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, bias="edge_head", ebt="edge")
    kwargs = dict(mode="gt", clamp=1.2, ebt="edge", ebt_params=params, return_lse=True)
    whole_out, _, whole_lse = _reference(q, k, v, e, edge_index, bias=b, **kwargs)
    part = torch.rand(edge_index.shape[1], generator=gen) < 0.5
    part[edge_index[1] == 0] = True  # node 0 attends only in the first part
    outs, lses = [], []
    for chosen in (part, ~part):
        out, _, lse = _reference(q, k, v, e[chosen], edge_index[:, chosen], bias=b[chosen], **kwargs)
        outs.append(out)
        lses.append(lse)
    merged, merged_lse = merge_attention(outs, lses)
    torch.testing.assert_close(merged, whole_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged_lse, whole_lse, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(whole_out.shape, dtype=torch.float64, generator=gen)
    grads = [torch.autograd.grad((out * upstream).sum(), (q, k, v, e, b) + params) for out in (whole_out, merged)]
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # a log-weight s_i on one part's node i = s_i added to that part's logits (no clamp here)
    weight = torch.randn(num_nodes, dtype=torch.float64, generator=gen)
    unclamped = dict(kwargs, clamp=None)
    parts = [_reference(q, k, v, e[chosen], edge_index[:, chosen], bias=b[chosen], **unclamped) for chosen in (part, ~part)]
    weighted, weighted_lse = merge_attention([p[0] for p in parts], [p[2] for p in parts], [None, weight])
    shifted_bias = b + torch.where(part, 0.0, weight[edge_index[1]]).unsqueeze(-1)
    want, _, want_lse = _reference(q, k, v, e, edge_index, bias=shifted_bias, **unclamped)
    torch.testing.assert_close(weighted, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weighted_lse, want_lse, rtol=1e-12, atol=1e-12)


def test_merge_attention_of_nothing_attended_is_zero_with_finite_gradients():
    lse = torch.tensor([[-math.inf, 0.5], [-math.inf, -math.inf]], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([[1.0, -math.inf], [-math.inf, -math.inf]], dtype=torch.float64, requires_grad=True)
    outs = [torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    node_out, merged = merge_attention(outs, [lse, other], [torch.zeros(2, dtype=torch.float64), None])
    assert torch.equal(node_out[1], torch.zeros(2, 3, dtype=torch.float64))
    assert merged[1].eq(-math.inf).all() and torch.isfinite(merged[0]).all()
    torch.testing.assert_close(node_out[0, 0], outs[1][0, 0].detach())  # only part 2 attends (node 0, head 0)
    (node_out.sum() + merged.exp().sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in [lse, other, *outs])
    with pytest.raises(ValueError, match="tap='node'"):
        merge_attention(outs, [lse, other], stats=EdgeStats())
    with pytest.raises(ValueError, match="one node_out"):
        merge_attention(outs, [lse])


def test_edge_types_argument_overrides_the_collectors_types_for_one_call():
    gen = torch.Generator().manual_seed(20)
    edge_index = random_graph(7, 12, generator=gen)
    q, k, v, e, _, _ = random_inputs(7, edge_index, 2, 3, generator=gen, dtype=torch.float32)
    own = torch.zeros(12, dtype=torch.long)
    typed, untyped = EdgeStats(edge_types=own), EdgeStats()
    _reference(q, k, v, e, edge_index, stats=[typed, untyped])
    _reference(q, k, v, e, edge_index, stats=[typed, untyped], edge_types=torch.arange(12) % 3)
    _reference(q, k, v, e, edge_index, stats=[typed, untyped], edge_types=-1)
    assert typed.type_edges == {0: 12 + 4, 1: 4, 2: 4, -1: 12}
    assert torch.equal(typed.edge_types, own)  # the collector's own types are untouched
    assert untyped.type_edges == {} and untyped.rows == 36  # collectors without types ignore it
    with pytest.raises(ValueError, match="edge_types has 5 entries but the call has 12 edges"):
        _reference(q, k, v, e, edge_index, stats=typed, edge_types=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        _reference(q, k, v, e, edge_index, stats=typed, edge_types=torch.zeros(12))
    assert typed.calls == 3
