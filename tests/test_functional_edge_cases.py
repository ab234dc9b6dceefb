"""Robustness of the edge attention operator on every backend (SPEC §3, "Masked edges").

- a -inf logit masks its edge wherever it falls in the node's edge order (the
  cpu backend's online softmax used to return NaN when it came first);
- a (node, head) whose logits are all -inf is an isolated node: node_out 0,
  no gradient through its softmax, the EBT slot still attended;
- logits of any finite size (biases of +-1e30) keep the exact softmax (the
  compiled backends used to save m + log(sum), which rounds the sum away);
- +inf / NaN biases give NaN where they enter, never a crash;
- an unvalidated Graph with an index out of range raises a ValueError before
  a compiled kernel reads out of bounds;
- a hypothesis property test: every usable backend is finite wherever the torch
  backend is, and agrees with it (values, gradients, in-kernel statistics).

Backends that cannot run here are skipped, unless MAGNN_REQUIRE_BACKENDS names
them (then the test fails), as in tests/test_backend_parity.py. The Triton
backend runs in the interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import magnn.core.graph
from helpers import backend_unusable_reason, random_graph, random_inputs, require_backend
from magnn import Graph
from magnn.functional import BACKENDS, edge_attention
from magnn.stats import reduce_rows

BACKEND_NAMES = ["torch", "cpu", "triton"]
MODES = ["gt", "additive"]
EBTS = [None, "edge", "slot"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INF = math.inf


def unusable_reason(backend: str):
    """None if `backend` runs here on float32; else why not (failing if it is required)."""
    return backend_unusable_reason(backend, DEVICE)


def usable(backend: str) -> None:
    require_backend(backend, DEVICE)


def leaves(q, k, v, e, bias=None, params=None, dtype=torch.float32):
    """Fresh float32 leaves on DEVICE (requires_grad) from any inputs."""
    make = lambda t: t.detach().to(DEVICE, dtype).requires_grad_()
    return (
        [make(t) for t in (q, k, v, e)],
        None if bias is None else make(bias),
        None if params is None else tuple(make(p) for p in params),
    )


def run(backend, tensors, bias, params, graph, *, up_node=None, up_edge=None, edge_mask=None, **options):
    """(node_out, edge_out, gradients of every leaf) under upstream gradients up_node / up_edge;
    edge_mask keeps only those edges' edge_out in the loss."""
    node_out, edge_out = edge_attention(*tensors, graph, bias=bias, ebt_params=params, backend=backend, **options)
    gen = torch.Generator().manual_seed(7)
    if up_node is None:
        up_node = torch.randn(node_out.shape, generator=gen).to(DEVICE)
    if up_edge is None:
        up_edge = torch.randn(edge_out.shape, generator=gen).to(DEVICE)
    if edge_mask is not None:
        up_edge = up_edge * edge_mask.to(DEVICE).reshape(-1, 1, 1)
    loss = (node_out * up_node).sum() + (edge_out * up_edge).sum()
    all_leaves = list(tensors) + ([bias] if bias is not None else []) + list(params or ())
    grads = torch.autograd.grad(loss, all_leaves)
    return node_out.detach(), edge_out.detach(), list(grads)


def assert_same(got, want, *, rtol=1e-5, atol=1e-5, grad_rtol=1e-4, grad_atol=1e-4):
    (node, edge, grads), (want_node, want_edge, want_grads) = got, want
    torch.testing.assert_close(node, want_node, rtol=rtol, atol=atol)
    torch.testing.assert_close(edge, want_edge, rtol=rtol, atol=atol)
    assert len(grads) == len(want_grads)
    for index, (g, w) in enumerate(zip(grads, want_grads)):
        torch.testing.assert_close(g, w, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"gradient {index}: {m}")


def all_finite(result) -> bool:
    node, edge, grads = result
    return all(bool(torch.isfinite(t).all()) for t in [node, edge, *grads])


# ---------------------------------------------------------------------------
# a -inf logit first in its node's edge order
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias_shape", ["edge", "edge_head"])
def test_leading_minus_inf_logit_masks_its_edge(backend, mode, bias_shape):
    """Edges 0 and 1 point into node 0 (the CSR keeps that order); edge 0 carries -inf."""
    usable(backend)
    gen = torch.Generator().manual_seed(1)
    edge_index = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 2]])
    q, k, v, e, _, _ = random_inputs(3, edge_index, 2, 3, generator=gen)
    bias = torch.zeros(4) if bias_shape == "edge" else torch.zeros(4, 2)
    bias[0] = -INF
    tensors, bias, _ = leaves(q, k, v, e, bias)
    graph = Graph(edge_index.to(DEVICE), 3)
    got = run(backend, tensors, bias, None, graph, mode=mode)
    assert all_finite(got)
    node_out, edge_out, grads = got
    # node 0 attends only to edge 1: its message, with weight 1
    message = tensors[2][2] if mode == "gt" else tensors[2][2] + tensors[3][1]
    torch.testing.assert_close(node_out[0], message.detach(), rtol=1e-5, atol=1e-6)
    if mode == "additive":
        assert torch.equal(edge_out[0], torch.zeros_like(edge_out[0]))
    assert torch.equal(grads[4][0], torch.zeros_like(grads[4][0]))  # no gradient into the masked bias
    if backend != "torch":
        assert_same(got, run("torch", tensors, bias, None, graph, mode=mode))


# ---------------------------------------------------------------------------
# a node whose logits are all -inf is isolated
# ---------------------------------------------------------------------------


def masked_problem(seed, ebt, bias_shape, num_nodes=9):
    """A random graph whose nodes 0 and 1 have all their incoming edges masked (for
    bias [E, H]: node 0 in every head, node 1 in head 0 only), node 2 one of two."""
    gen = torch.Generator().manual_seed(seed)
    edge_index = random_graph(num_nodes, 24, generator=gen, isolated=1, self_loops=2, duplicates=2)
    extra = torch.tensor([[3, 4, 5, 1, 6, 2], [0, 0, 1, 1, 2, 2]])  # every masked node has in-edges
    edge_index = torch.cat([edge_index, extra], 1)
    q, k, v, e, _, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, ebt=ebt)
    dst = edge_index[1]
    heads = 1 if bias_shape == "edge" else 2
    bias = torch.randn(edge_index.shape[1], heads, generator=gen, dtype=torch.float64)
    bias[dst == 0] = -INF
    bias[dst == 1, 0] = -INF
    into_2 = (dst == 2).nonzero().reshape(-1)
    bias[into_2[0]] = -INF
    if bias_shape == "edge":
        bias = bias[:, 0]
        bias[dst == 1] = -INF
    tensors, bias, params = leaves(q, k, v, e, bias, params)
    return tensors, bias, params, edge_index


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("bias_shape", ["edge", "edge_head"])
def test_fully_masked_node_is_an_isolated_node(backend, mode, ebt, bias_shape):
    """Nodes whose logits are all -inf give exactly what they give without those edges:
    node_out 0 (or the slot alone), no gradient through their softmax. The loss leaves out
    the edge_out of the removed edges (in "gt" it is w_ij, which no softmax touches; the
    property test below compares it, and its gradient, with the torch backend)."""
    usable(backend)
    tensors, bias, params, edge_index = masked_problem(2, ebt, bias_shape)
    graph = Graph(edge_index.to(DEVICE), tensors[0].shape[0])
    dst = edge_index[1]
    masked_edges = torch.isinf(bias).reshape(len(dst), -1).all(1).cpu()  # masked in every head
    keep = ~masked_edges
    gen = torch.Generator().manual_seed(3)
    up_node = torch.randn(tensors[0].shape, generator=gen).to(DEVICE)
    up_edge = torch.randn(tensors[3].shape, generator=gen).to(DEVICE)
    got = run(backend, tensors, bias, params, graph, up_node=up_node, up_edge=up_edge, edge_mask=keep,
              mode=mode, ebt=ebt)
    assert all_finite(got)
    node_out, edge_out, grads = got
    if ebt != "slot":
        assert torch.equal(node_out[0], torch.zeros_like(node_out[0]))
        assert torch.equal(node_out[1, 0], torch.zeros_like(node_out[1, 0]))  # head 0 (or both) masked
    if mode == "additive":
        assert torch.equal(edge_out[masked_edges], torch.zeros_like(edge_out[masked_edges]))
    dbias = grads[4].reshape(len(dst), -1)
    assert torch.equal(dbias[dst == 0], torch.zeros_like(dbias[dst == 0]))
    assert torch.equal(dbias[dst == 1, 0], torch.zeros_like(dbias[dst == 1, 0]))
    assert torch.equal(grads[3][masked_edges], torch.zeros_like(grads[3][masked_edges]))  # de

    # the same graph without the edges masked in every head
    kept_tensors = [t.detach().clone().requires_grad_() for t in tensors[:3]]
    kept_e = tensors[3].detach()[keep].clone().requires_grad_()
    kept_bias = bias.detach()[keep].clone().requires_grad_()
    kept_params = None if params is None else tuple(p.detach().clone().requires_grad_() for p in params)
    kept_graph = Graph(edge_index[:, keep].to(DEVICE), graph.num_nodes)
    kept_node, kept_edge, kept_grads = run(backend, kept_tensors + [kept_e], kept_bias, kept_params, kept_graph,
                                           up_node=up_node, up_edge=up_edge[keep.to(DEVICE)], mode=mode, ebt=ebt)
    torch.testing.assert_close(node_out, kept_node, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(edge_out[keep], kept_edge, rtol=1e-5, atol=1e-6)
    for index in (0, 1, 2):  # q, k, v
        torch.testing.assert_close(grads[index], kept_grads[index], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[3][keep], kept_grads[3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[4][keep], kept_grads[4], rtol=1e-4, atol=1e-5)
    for got_param, want_param in zip(grads[5:], kept_grads[5:]):
        torch.testing.assert_close(got_param, want_param, rtol=1e-4, atol=1e-5)

    if backend != "torch":
        assert_same(got, run("torch", tensors, bias, params, graph, up_node=up_node, up_edge=up_edge,
                             edge_mask=keep, mode=mode, ebt=ebt))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_masked_nodes_statistics_match(backend, mode):
    """The in-kernel statistics of edge_out with masked rows: equal to the reduction of
    what the backend stored; a masked additive row (all 0) has ratio 0."""
    usable(backend)
    tensors, bias, params, edge_index = masked_problem(4, None, "edge")
    graph = Graph(edge_index.to(DEVICE), tensors[0].shape[0])
    masked_edges = torch.isinf(bias).cpu()
    implementation = BACKENDS[backend].implementation()
    options = dict(mode=mode, clamp=None, bias=bias, ebt=None, ebt_params=None, mantissa_bits=7, tap="edge")
    with torch.no_grad():
        _, edge_out, raw = implementation(*tensors, graph, **options)
        _, want_edge, want_raw = BACKENDS["torch"].implementation()(*tensors, graph, **options)
    torch.testing.assert_close(edge_out, want_edge, rtol=1e-5, atol=1e-5)
    own = reduce_rows(edge_out.flatten(1).cpu())
    assert torch.equal(raw.hist_abs.cpu(), own.hist_abs)
    assert torch.equal(raw.hist_ratio.cpu(), own.hist_ratio)
    assert torch.equal(raw.row_ratio.cpu(), own.row_ratio)
    assert int(raw.nan_count) == int(want_raw.nan_count) == 0
    assert float(raw.max_abs) == pytest.approx(float(want_raw.max_abs), rel=1e-5)
    torch.testing.assert_close(raw.row_ratio.cpu(), want_raw.row_ratio.cpu(), rtol=1e-3, atol=0)
    if mode == "additive":
        assert torch.equal(raw.row_ratio.cpu()[masked_edges], torch.zeros(int(masked_edges.sum())))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ebt", [None, "slot"])
def test_triton_fully_masked_hub_in_split_rows(monkeypatch, mode, ebt):
    """A masked hub longer than a tile and cut into chunks: the merge saves (+inf, 0) too."""
    usable("triton")
    import magnn_kernels.utils as ek

    gen = torch.Generator().manual_seed(5)
    num_nodes = 8
    edge_index = random_graph(num_nodes, 12, generator=gen, isolated=1, self_loops=1, hub=30, hub_out=20)
    q, k, v, e, _, params = random_inputs(num_nodes, edge_index, 2, 3, generator=gen, ebt=ebt)
    bias = torch.randn(edge_index.shape[1], 2, generator=gen, dtype=torch.float64)
    bias[edge_index[1] == 0] = -INF  # the hub: every edge, every head
    bias[edge_index[1] == 1, 1] = -INF
    tensors, bias, params = leaves(q, k, v, e, bias, params)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    monkeypatch.setattr(ek, "MAX_BLOCK_E", 8)
    monkeypatch.setattr(ek, "ROW_SPLIT", 10)
    assert ek.row_plan(graph.rowptr, 10).num_chunks > 0 and ek.row_plan(graph.rev_rowptr, 10).num_chunks > 0
    got = run("triton", tensors, bias, params, graph, mode=mode, ebt=ebt)
    assert all_finite(got)
    if ebt is None:
        assert torch.equal(got[0][0], torch.zeros_like(got[0][0]))
    assert_same(got, run("torch", tensors, bias, params, graph, mode=mode, ebt=ebt))


# ---------------------------------------------------------------------------
# huge finite and non-finite biases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("magnitude", [1e5, 1e30])
def test_huge_finite_bias_keeps_the_exact_softmax(backend, mode, magnitude):
    """Two edges into node 0 share a bias of 1e30: each gets attention 1/2 exactly
    (lse = m + log 2 rounds to m, which used to give each attention 1)."""
    usable(backend)
    gen = torch.Generator().manual_seed(6)
    edge_index = torch.tensor([[1, 2, 0, 3, 1], [0, 0, 1, 1, 2]])
    q, k, v, e, _, _ = random_inputs(4, edge_index, 2, 3, generator=gen)
    bias = torch.tensor([magnitude, magnitude, -magnitude, 0.5, magnitude])
    tensors, bias, _ = leaves(q, k, v, e, bias)
    graph = Graph(edge_index.to(DEVICE), 4)
    got = run(backend, tensors, bias, None, graph, mode=mode)
    assert all_finite(got)
    assert_same(got, run("torch", tensors, bias, None, graph, mode=mode), rtol=1e-4, atol=1e-4,
                grad_rtol=1e-3, grad_atol=1e-3)
    if magnitude == 1e30:  # the raw logits vanish next to the bias: an exact tie
        message = tensors[2][[1, 2]] if mode == "gt" else tensors[2][[1, 2]] + tensors[3][[0, 1]]
        torch.testing.assert_close(got[0][0], message.detach().mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [INF, math.nan])
def test_plus_inf_or_nan_bias_gives_nan_where_it_enters(backend, mode, value):
    """No clamp: node 0 (the bias's node) turns NaN, other nodes keep their values; with
    a clamp, +inf becomes the logit c and everything stays finite (NaN stays NaN)."""
    usable(backend)
    gen = torch.Generator().manual_seed(8)
    edge_index = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 2]])
    q, k, v, e, _, _ = random_inputs(3, edge_index, 2, 3, generator=gen)
    bias = torch.tensor([value, 0.0, 0.0, 0.0])
    tensors, bias, _ = leaves(q, k, v, e, bias)
    graph = Graph(edge_index.to(DEVICE), 3)
    node_out, edge_out, _ = run(backend, tensors, bias, None, graph, mode=mode)
    want_node, want_edge, _ = run("torch", tensors, bias, None, graph, mode=mode)
    assert torch.isnan(node_out[0]).all()
    torch.testing.assert_close(node_out[1:], want_node[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edge_out[2:], want_edge[2:], rtol=1e-5, atol=1e-5)
    if mode == "gt":  # edge_out = w_ij: the bias does not enter it
        torch.testing.assert_close(edge_out, want_edge, rtol=1e-5, atol=1e-5)
    else:
        assert torch.isnan(edge_out[0]).all()
    clamped = run(backend, tensors, bias, None, graph, mode=mode, clamp=2.0)
    if value == INF:
        assert all_finite(clamped)
        assert_same(clamped, run("torch", tensors, bias, None, graph, mode=mode, clamp=2.0))
    else:
        assert torch.isnan(clamped[0][0]).all() and torch.isfinite(clamped[0][1:]).all()


# ---------------------------------------------------------------------------
# unvalidated graphs with an index out of range
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize(
    "edges,message",
    [
        ([[0, 1, 2], [1, 2, 7]], r"edge_index\[1\] \(dst\) holds 7 but num_nodes=5; pass num_nodes=8"),
        ([[0, 6, 2], [1, 2, 3]], r"edge_index\[0\] \(src\) holds 6 but num_nodes=5; pass num_nodes=7"),
        ([[0, -1, 2], [1, 2, 3]], r"edge_index\[0\] \(src\) holds -1, but node indices must be in \[0, num_nodes=5\)"),
        ([[0, 1, 2], [1, -2, 3]], r"edge_index\[1\] \(dst\) holds -2"),
    ],
)
def test_unvalidated_graph_with_an_index_out_of_range_raises(backend, edges, message):
    usable(backend)
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(5, 2, 3, generator=gen).to(DEVICE) for _ in range(3))
    e = torch.randn(3, 2, 3, generator=gen).to(DEVICE)
    graph = Graph(torch.tensor(edges, device=DEVICE), 5, validate=False)
    with pytest.raises(ValueError, match=message) as error:
        edge_attention(q, k, v, e, graph, backend=backend)
    assert "validate=True" in str(error.value)
    with pytest.raises(ValueError, match=message):  # still raises: only success is remembered
        edge_attention(q, k, v, e, graph, backend=backend)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_bounds_check_runs_once_and_never_for_validated_graphs(monkeypatch, backend):
    usable(backend)
    calls = []
    check = magnn.core.graph._check_index_bounds_once
    monkeypatch.setattr(magnn.core.graph, "_check_index_bounds_once", lambda graph: calls.append(graph) or check(graph))
    gen = torch.Generator().manual_seed(10)
    edge_index = random_graph(6, 14, generator=gen, isolated=1, self_loops=1).to(DEVICE)
    q, k, v = (torch.randn(6, 2, 3, generator=gen).to(DEVICE) for _ in range(3))
    e = torch.randn(edge_index.shape[1], 2, 3, generator=gen).to(DEVICE)
    validated = Graph(edge_index, 6)
    unvalidated = Graph(edge_index, 6, validate=False)
    want = edge_attention(q, k, v, e, validated, backend=backend)
    assert calls == []
    for _ in range(2):
        got = edge_attention(q, k, v, e, unvalidated, backend=backend)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert calls == [unvalidated]
    moved = unvalidated.to(DEVICE)  # a copy of a checked graph is checked
    edge_attention(q, k, v, e, moved, backend=backend)
    assert calls == [unvalidated]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bounds_check_under_torch_compile_full_graph(backend):
    """The check runs once while tracing (no graph break); a bad index raises its message."""
    usable(backend)
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(5, 2, 3, generator=gen) for _ in range(3))
    e = torch.randn(3, 2, 3, generator=gen)
    for edges, bad in (([[0, 1, 2], [1, 2, 4]], False), ([[0, 1, 2], [1, 2, 7]], True)):
        torch._dynamo.reset()
        graph = Graph(torch.tensor(edges), 5, validate=False)
        for name in ("rowptr", "col", "perm", "rev_rowptr", "rev_col", "rev_perm"):
            getattr(graph, name)  # views built eagerly (as Graph.prepare would), bounds left unchecked

        def layer(q, k, v, e):
            node_out, edge_out = edge_attention(q, k, v, e, graph, backend=backend)
            return node_out.square().sum() + edge_out.sum()

        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        if bad:
            with pytest.raises(Exception, match=r"edge_index\[1\] \(dst\) holds 7 but num_nodes=5"):
                compiled(q, k, v, e)
        else:
            torch.testing.assert_close(compiled(q, k, v, e), layer(q, k, v, e))
            assert graph._index_bounds_checked
    torch._dynamo.reset()


# ---------------------------------------------------------------------------
# property test: every backend is finite where torch is, and agrees with it
# ---------------------------------------------------------------------------

BIAS_KINDS = {"normal": None, "-inf": -INF, "-big": -1e30, "+big": 1e30}


@st.composite
def problems(draw):
    num_nodes = draw(st.integers(1, 8))
    node = st.integers(0, num_nodes - 1)
    edges = draw(st.lists(st.tuples(node, node), max_size=16))  # duplicates, self loops, empty rows
    heads = draw(st.integers(1, 2))
    bias_shape = draw(st.sampled_from([None, "edge", "edge_head"]))
    kinds = []
    if bias_shape is not None:
        width = 1 if bias_shape == "edge" else heads
        kind = st.sampled_from(list(BIAS_KINDS))
        kinds = draw(st.lists(st.lists(kind, min_size=width, max_size=width), min_size=len(edges),
                              max_size=len(edges)))
    return dict(
        num_nodes=num_nodes,
        edges=edges,
        heads=heads,
        head_dim=draw(st.integers(1, 4)),
        mode=draw(st.sampled_from(MODES)),
        ebt=draw(st.sampled_from(EBTS)),
        clamp=draw(st.sampled_from([None, None, 2.0])),  # a clamp turns -inf into -c: no mask
        bias_shape=bias_shape,
        bias_kinds=kinds,
        # every logit into these nodes -inf (isolated nodes), in about half the biased draws
        masked_nodes=draw(st.sets(node, min_size=1, max_size=2)) if bias_shape and draw(st.booleans()) else set(),
        seed=draw(st.integers(0, 2**16)),
    )


def build(problem):
    gen = torch.Generator().manual_seed(problem["seed"])
    edge_index = torch.tensor(problem["edges"], dtype=torch.long).reshape(-1, 2).t().contiguous()
    q, k, v, e, _, params = random_inputs(problem["num_nodes"], edge_index, problem["heads"], problem["head_dim"],
                                          generator=gen, ebt=problem["ebt"])
    bias = None
    if problem["bias_shape"] is not None:
        width = 1 if problem["bias_shape"] == "edge" else problem["heads"]
        values = torch.randn(len(problem["edges"]), width, generator=gen, dtype=torch.float64)
        for row, kinds in enumerate(problem["bias_kinds"]):
            for column, kind in enumerate(kinds):
                if BIAS_KINDS[kind] is not None:
                    values[row, column] = BIAS_KINDS[kind]
        for masked in problem["masked_nodes"]:  # every logit into these nodes -inf: isolated nodes
            values[edge_index[1] == masked] = -INF
        bias = values[:, 0] if problem["bias_shape"] == "edge" else values
    tensors, bias, params = leaves(q, k, v, e, bias, params)
    up_gen = torch.Generator().manual_seed(problem["seed"] + 1)
    up_node = torch.randn(q.shape, generator=up_gen).to(DEVICE)
    up_edge = torch.randn(e.shape, generator=up_gen).to(DEVICE)
    return tensors, bias, params, Graph(edge_index.to(DEVICE), problem["num_nodes"]), up_node, up_edge


def run_with_stats(backend, tensors, bias, params, graph, up_node, up_edge, problem):
    """Through the backend entry point: (node_out, edge_out, gradients), RawStats of edge_out."""
    implementation = BACKENDS[backend].implementation()
    node_out, edge_out, raw = implementation(
        *tensors, graph, mode=problem["mode"], clamp=problem["clamp"], bias=bias, ebt=problem["ebt"],
        ebt_params=params, mantissa_bits=7, tap="edge")
    all_leaves = list(tensors) + ([bias] if bias is not None else []) + list(params or ())
    loss = (node_out * up_node).sum() + (edge_out * up_edge).sum()
    grads = torch.autograd.grad(loss, all_leaves)
    return (node_out.detach(), edge_out.detach(), list(grads)), raw


@pytest.fixture(scope="module")
def fast_backends():
    """The compiled backends that run here (fails if a required one does not)."""
    return [name for name in ("cpu", "triton") if unusable_reason(name) is None]


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_property_backends_finite_where_torch_is_and_agree(fast_backends, problem):
    tensors, bias, params, graph, up_node, up_edge = build(problem)
    want, want_raw = run_with_stats("torch", tensors, bias, params, graph, up_node, up_edge, problem)
    # -inf and +-1e30 biases are all SPEC defines: the torch backend itself stays finite
    assert all_finite(want), problem
    for backend in fast_backends:
        got, raw = run_with_stats(backend, tensors, bias, params, graph, up_node, up_edge, problem)
        for got_t, want_t in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
            assert bool((torch.isfinite(got_t) | ~torch.isfinite(want_t)).all()), (backend, problem)
        assert_same(got, want, rtol=1e-4, atol=1e-5, grad_rtol=1e-3, grad_atol=1e-4)
        edge_out = got[1]
        own = reduce_rows(edge_out.flatten(1).cpu())
        assert torch.equal(raw.hist_abs.cpu(), own.hist_abs), backend
        assert torch.equal(raw.hist_ratio.cpu(), own.hist_ratio), backend
        assert torch.equal(raw.row_ratio.cpu(), own.row_ratio), backend
        assert int(raw.nan_count) == int(want_raw.nan_count) == 0
        assert float(raw.max_abs) == pytest.approx(float(want_raw.max_abs), rel=1e-4, abs=1e-6)
