"""Triton edge attention (magnn_kernels/, through magnn/backends/triton.py) against the torch reference.

Without a GPU these run in the Triton interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1); the interpreter costs milliseconds per program, so the
graphs are small and the block / row-split sizes are shrunk where a test needs the
multi-block or split-row paths. TestCompiledGPU repeats the parity checks with
compiled kernels at a larger size when CUDA is present.
"""
from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

import magnn
import magnn.backends.triton as triton_backend
import magnn_kernels.utils as ku
from magnn import EdgeStats, Graph
from magnn.backends.reference import edge_attention_reference
from magnn.core.contract import ForwardResult
from magnn.functional import edge_attention
from magnn.stats import reduce_rows
from magnn_kernels.edge_attention import edge_attention as edge_attention_kernels

from helpers import random_graph

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODES = ["gt", "additive"]
EBTS = [None, "edge", "slot"]


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def seeded(*key) -> torch.Generator:
    """A generator seeded from the test's parameters: fresh data per case, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))




def make_inputs(gen, edge_index, num_nodes, heads, head_dim, *, bias=None, ebt=None, dtype=torch.float32,
                q_scale=1.0):
    """Leaves on DEVICE, all requiring grad: [q, k, v, e], bias, ebt_params."""
    num_edges = edge_index.shape[1]

    def rand(*shape, scale=1.0):
        values = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return values.to(DEVICE, dtype).requires_grad_()

    tensors = [rand(num_nodes, heads, head_dim, scale=q_scale)] + [rand(num_nodes, heads, head_dim) for _ in range(2)]
    tensors.append(rand(num_edges, heads, head_dim))
    bias_tensor = None
    if bias == "edge":
        bias_tensor = rand(num_edges)
    elif bias == "edge_head":
        bias_tensor = rand(num_edges, heads)
    params = tuple(rand(heads, head_dim) for _ in range(3)) if ebt is not None else None
    return tensors, bias_tensor, params


def leaves_of(tensors, bias, params):
    return list(tensors) + ([bias] if bias is not None else []) + list(params or ())


def run_triton(tensors, graph, *, mantissa_bits=None, tap="edge", **kwargs):
    return triton_backend.run_triton_backend(*tensors, graph, mantissa_bits=mantissa_bits, tap=tap, **kwargs)


def forward_backward(fn, tensors, bias, params, gen):
    """Outputs and the gradients of every leaf under random upstream gradients for both outputs."""
    node_out, edge_out, *rest = fn()
    up_node = torch.randn(node_out.shape, generator=gen, dtype=torch.float64).to(DEVICE, node_out.dtype)
    up_edge = torch.randn(edge_out.shape, generator=gen, dtype=torch.float64).to(DEVICE, edge_out.dtype)
    loss = (node_out * up_node).sum() + (edge_out * up_edge).sum()
    grads = torch.autograd.grad(loss, leaves_of(tensors, bias, params))
    return node_out.detach(), edge_out.detach(), grads, rest


def compare_with_reference(graph, tensors, bias, params, gen, *, mode, ebt, clamp, atol=1e-5, rtol=1e-5,
                           grad_atol=1e-4, grad_rtol=1e-4):
    kwargs = dict(mode=mode, clamp=clamp, bias=bias, ebt=ebt, ebt_params=params)
    state = gen.get_state()
    got_node, got_edge, got_grads, _ = forward_backward(
        lambda: run_triton(tensors, graph, **kwargs), tensors, bias, params, gen)
    gen.set_state(state)  # the same upstream gradients for the reference
    want_node, want_edge, want_grads, _ = forward_backward(
        lambda: edge_attention_reference(*tensors, graph, **kwargs), tensors, bias, params, gen)
    torch.testing.assert_close(got_node, want_node, atol=atol, rtol=rtol)
    torch.testing.assert_close(got_edge, want_edge, atol=atol, rtol=rtol)
    names = ["q", "k", "v", "e"] + (["bias"] if bias is not None else []) + (["k_b", "e_b", "v_b"] if params else [])
    for name, got, want in zip(names, got_grads, want_grads):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=grad_atol, rtol=grad_rtol, msg=lambda m: f"grad {name}: {m}")
    return got_node, got_edge, got_grads


def assert_raw_equal(got, want):
    """Bin for bin, value for value: the in-kernel reduction equals reduce_rows."""
    assert torch.equal(got.hist_abs.cpu(), want.hist_abs.cpu())
    assert torch.equal(got.hist_ratio.cpu(), want.hist_ratio.cpu())
    torch.testing.assert_close(got.row_ratio.cpu(), want.row_ratio.cpu(), atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.row_max_abs.cpu(), want.row_max_abs.cpu(), atol=0, rtol=0, equal_nan=True)
    assert int(got.nan_count) == int(want.nan_count)
    assert int(got.argmax) == int(want.argmax)
    assert float(got.max_abs) == float(want.max_abs)
    assert got.count == want.count and got.channels == want.channels


def own_reduction(tapped, mantissa_bits=7):
    return reduce_rows(tapped.detach().reshape(tapped.shape[0], -1).cpu(), mantissa_bits)


# ---------------------------------------------------------------------------
# values and gradients
# ---------------------------------------------------------------------------

# The mode x EBT x clamp x bias matrix is tests/test_backend_parity.py's, shared by every
# backend; here: what only these kernels have (long and split rows, tiles, the op itself).


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ebt", EBTS)
def test_hub_rows_longer_than_a_block_and_split_rows(monkeypatch, mode, ebt):
    """A hub longer than a tile (looped), then rows cut into chunks (merged), both directions."""
    gen = seeded("hub", mode, ebt)
    num_nodes = 9
    edge_index = random_graph(num_nodes, 12, generator=gen, isolated=1, self_loops=1, duplicates=1, hub=37, hub_out=29)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 3, 4, bias="edge_head", ebt=ebt)
    monkeypatch.setattr(ku, "MAX_BLOCK_E", 8)
    assert int(graph.in_degree.max()) > 8 and int(graph.out_degree.max()) > 8
    looped = compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt, clamp=1.5)

    monkeypatch.setattr(ku, "ROW_SPLIT", 10)  # hubs become 3-4 chunks, in the forward and both backward passes
    assert ku.row_plan(graph.rowptr, 10).num_chunks > 0 and ku.row_plan(graph.rev_rowptr, 10).num_chunks > 0
    split = compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt, clamp=1.5)
    torch.testing.assert_close(split[0], looped[0], atol=1e-6, rtol=1e-6)

    # statistics in the split path, and determinism: a second run is bitwise identical
    first = run_triton(tensors, graph, mode=mode, clamp=1.5, bias=b, ebt=ebt, ebt_params=params, mantissa_bits=7)
    second = run_triton(tensors, graph, mode=mode, clamp=1.5, bias=b, ebt=ebt, ebt_params=params, mantissa_bits=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert_raw_equal(first[2], own_reduction(first[1]))
    assert_raw_equal(second[2], first[2])


@pytest.mark.parametrize("heads,head_dim", [(3, 5), (1, 128), (5, 1)])
def test_head_shapes_any_h_and_d_up_to_128(heads, head_dim):
    gen = seeded("shape", heads, head_dim)
    num_nodes = 7
    edge_index = random_graph(num_nodes, 14, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    for mode, ebt in (("gt", "edge"), ("additive", "slot")):
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, heads, head_dim, bias="edge", ebt=ebt)
        compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt, clamp=None)
        node_out, edge_out, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=b, ebt=ebt,
                                             ebt_params=params, mantissa_bits=7)
        assert_raw_equal(raw, own_reduction(edge_out))


@pytest.mark.parametrize("num_nodes", [1, 5])
@pytest.mark.parametrize("ebt", [None, "slot", "edge"])
def test_empty_edge_set(num_nodes, ebt):
    gen = seeded("empty", num_nodes, ebt)
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    for mode in MODES:
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, ebt=ebt)
        node_out, edge_out, grads = compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt,
                                                           clamp=None)
        assert edge_out.shape == (0, 2, 3)
        if ebt != "slot":
            assert torch.equal(node_out, torch.zeros_like(node_out))
            assert torch.equal(grads[1], torch.zeros_like(grads[1]))  # dk: no edge reads k
        _, _, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=b, ebt=ebt, ebt_params=params,
                               mantissa_bits=7)
        assert raw.count == 0 and int(raw.argmax) == -1 and int(raw.hist_abs.sum()) == 0


def test_single_node_with_self_loops():
    gen = seeded("single")
    edge_index = torch.zeros(2, 3, dtype=torch.long)  # three parallel self loops on node 0
    graph = Graph(edge_index.to(DEVICE), 1)
    for mode, ebt in itertools.product(MODES, EBTS):
        tensors, b, params = make_inputs(gen, edge_index, 1, 2, 4, bias="edge", ebt=ebt)
        compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt, clamp=0.5)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision(dtype, tolerance, mode):
    """fp32 accumulation inside, outputs and gradients in the input dtype (METHOD.md: relative norm error)."""
    gen = seeded("half", dtype, mode)
    num_nodes = 12
    edge_index = random_graph(num_nodes, 30, generator=gen, isolated=1, self_loops=2, duplicates=2, hub=12)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 8, bias="edge_head", ebt="edge", dtype=dtype)
    state = gen.get_state()
    kwargs = dict(mode=mode, clamp=2.0, bias=b, ebt="edge", ebt_params=params)
    got = forward_backward(lambda: run_triton(tensors, graph, **kwargs), tensors, b, params, gen)
    gen.set_state(state)
    want = forward_backward(lambda: edge_attention_reference(*tensors, graph, **kwargs), tensors, b, params, gen)
    pairs = [(got[0], want[0]), (got[1], want[1])] + list(zip(got[2], want[2]))
    for got_t, want_t in pairs:
        assert got_t.dtype == want_t.dtype == dtype
        assert not torch.isnan(got_t).any()
        error = (got_t.double() - want_t.double()).norm() / want_t.double().norm().clamp_min(1e-12)
        assert error < tolerance, float(error)


def test_outputs_written_everywhere(monkeypatch):
    """Every output and scratch buffer is poisoned with NaN before the kernels run; none survives."""
    def poisoned(shape, dtype, device):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, -7, dtype=dtype, device=device)

    monkeypatch.setattr(ku, "empty", poisoned)
    monkeypatch.setattr(ku, "MAX_BLOCK_E", 8)
    monkeypatch.setattr(ku, "ROW_SPLIT", 12)
    gen = seeded("poison")
    num_nodes = 11
    edge_index = random_graph(num_nodes, 20, generator=gen, isolated=2, self_loops=1, duplicates=2, hub=25, hub_out=20)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    for mode, ebt in (("gt", "slot"), ("additive", "edge"), ("additive", None)):
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, bias="edge", ebt=ebt)
        node_out, edge_out, grads = compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt=ebt,
                                                           clamp=None)
        assert not torch.isnan(node_out).any() and not torch.isnan(edge_out).any()
        assert all(not torch.isnan(g).any() for g in grads)
        _, edge_out, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=b, ebt=ebt, ebt_params=params,
                                      mantissa_bits=7)
        assert not torch.isnan(raw.row_ratio).any() and (raw.row_max_abs >= 0).all()
        assert_raw_equal(raw, own_reduction(edge_out))


def test_only_node_output_used_and_no_grad_call():
    """A gradient that reaches only node_out (edge_out unused), and a call under no_grad."""
    gen = seeded("partial-grad")
    num_nodes = 8
    edge_index = random_graph(num_nodes, 18, generator=gen, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, bias="edge_head", ebt="slot")
    kwargs = dict(mode="additive", clamp=None, bias=b, ebt="slot", ebt_params=params)
    leaves = leaves_of(tensors, b, params)
    got = torch.autograd.grad(run_triton(tensors, graph, **kwargs)[0].square().sum(), leaves)
    want = torch.autograd.grad(edge_attention_reference(*tensors, graph, **kwargs)[0].square().sum(), leaves)
    for got_g, want_g in zip(got, want):
        torch.testing.assert_close(got_g, want_g, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        node_out, edge_out, _ = run_triton(tensors, graph, **kwargs)
    assert not node_out.requires_grad and not edge_out.requires_grad


# ---------------------------------------------------------------------------
# log-sum-exp output (return_lse)
# ---------------------------------------------------------------------------


def logsumexp_of_logits(tensors, graph, bias, params, *, mode, ebt, clamp):
    """[N, H] torch.logsumexp over each node's logits (SPEC §3 formulas, the EBT slot's included),
    node by node; -inf for a node with nothing to attend to. Differentiable."""
    q, k, _, e = tensors
    head_dim = q.shape[2]
    scale = 1.0 / math.sqrt(head_dim)
    src, dst = graph.src, graph.dst
    shift = torch.zeros_like(e)
    if ebt == "edge":
        shift = ((q * params[0]).sum(-1, keepdim=True) * scale * params[1])[dst]
    if mode == "gt":
        logits = (q[dst] * k[src] * e * scale + shift).sum(-1)
    else:
        logits = (q[dst] * (k[src] + e + shift)).sum(-1) * scale
    if bias is not None:
        logits = logits + (bias.unsqueeze(-1) if bias.dim() == 1 else bias)
    slot = None
    if ebt == "slot":
        k_b, e_b, _ = params
        slot = (q * (k_b * e_b if mode == "gt" else k_b + e_b)).sum(-1) * scale
    if clamp is not None:
        logits = logits.clamp(-clamp, clamp)
        slot = slot.clamp(-clamp, clamp) if slot is not None else None
    rows = []
    for node in range(q.shape[0]):
        row = torch.cat([logits[dst == node]] + ([slot[node:node + 1]] if slot is not None else []))
        rows.append(torch.logsumexp(row, dim=0) if row.shape[0] else torch.full_like(q[0, :, 0], float("-inf")))
    return torch.stack(rows)


LSE_CASES = [("gt", None, None), ("gt", "slot", 0.7), ("additive", "edge", None), ("additive", "slot", 1.5)]


@pytest.mark.parametrize("split", [False, True], ids=["whole-rows", "split-rows"])
@pytest.mark.parametrize("mode,ebt,clamp", LSE_CASES)
def test_return_lse_is_the_logsumexp_of_the_logits_and_differentiable(monkeypatch, mode, ebt, clamp, split):
    """lse = logsumexp over a node's logits (slot included, -inf with nothing attended), and its
    gradient (alone, and with both other outputs') is the torch reference's, in whole and split rows."""
    gen = seeded("lse", mode, ebt, clamp, split)
    num_nodes = 9
    edge_index = random_graph(num_nodes, 14, generator=gen, isolated=2, self_loops=1, duplicates=1, hub=21,
                              hub_out=17)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, bias="edge_head", ebt=ebt)
    if split:
        monkeypatch.setattr(ku, "MAX_BLOCK_E", 4)
        monkeypatch.setattr(ku, "ROW_SPLIT", 8)
        assert ku.row_plan(graph.rowptr, 8).num_chunks > 0 and ku.row_plan(graph.rev_rowptr, 8).num_chunks > 0
    kwargs = dict(mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=params)
    leaves = leaves_of(tensors, b, params)

    node_out, edge_out, raw, lse = run_triton(tensors, graph, return_lse=True, **kwargs)
    assert raw is None and lse.shape == (num_nodes, 2) and lse.dtype == torch.float32
    want = logsumexp_of_logits(tensors, graph, b, params, mode=mode, ebt=ebt, clamp=clamp)
    torch.testing.assert_close(lse, want, atol=1e-5, rtol=1e-5)
    if ebt != "slot":
        assert torch.equal(lse[-2:], torch.full_like(lse[-2:], float("-inf")))  # no incoming edge
    finite = torch.isfinite(want)
    assert finite.any()

    # the gradient of lse alone (no gradient reaches node_out or edge_out)
    up = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
    got = torch.autograd.grad(torch.where(finite, lse * up, 0.0).sum(), leaves, allow_unused=True)
    expected = torch.autograd.grad(torch.where(finite, want * up, 0.0).sum(), leaves, allow_unused=True)
    for got_g, want_g in zip(got, expected):
        want_g = torch.zeros_like(got_g) if want_g is None else want_g  # v gets none: messages do not enter lse
        torch.testing.assert_close(got_g, want_g, atol=1e-4, rtol=1e-4)

    # with both other outputs' gradients, against the torch reference through magnn.functional
    def loss(outputs):
        node, edge, lse_ = outputs
        return (node * up_node).sum() + (edge * up_edge).sum() + torch.where(finite, lse_ * up, 0.0).sum()

    up_node = torch.randn(node_out.shape, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
    up_edge = torch.randn(edge_out.shape, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
    got_out = edge_attention(*tensors, graph, backend="triton", return_lse=True, **kwargs)
    want_out = edge_attention(*tensors, graph, backend="torch", return_lse=True, **kwargs)
    for got_t, want_t in zip(got_out, want_out):
        torch.testing.assert_close(got_t, want_t, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(loss(got_out), leaves)
    expected = torch.autograd.grad(loss(want_out), leaves)
    for got_g, want_g in zip(got, expected):
        assert torch.isfinite(got_g).all()
        torch.testing.assert_close(got_g, want_g, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # |a| / 2**-126 is inf, as in torch
@pytest.mark.parametrize("mode", MODES)
def test_stats_equal_reduce_rows_with_nan_ties_and_huge_logits(mode):
    gen = seeded("stats", mode)
    num_nodes = 14
    edge_index = random_graph(num_nodes, 30, generator=gen, isolated=2, self_loops=2)
    # two copies of one edge with the same features and a large scale: the row maximum ties across rows
    edge_index = torch.cat([edge_index, edge_index[:, :1], edge_index[:, :1]], dim=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 4, bias="edge", ebt="edge", q_scale=1e4)
    with torch.no_grad():
        e = tensors[3]
        e[-2:] = e[0] * 50.0
        e[3, 1, 2] = float("nan")  # a NaN channel
        e[5] = float("nan")  # an all-NaN row (gt: edge_out row all NaN)
        e[7, 0, 0] = 0.0
    node_out, edge_out, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=b, ebt="edge",
                                         ebt_params=params, mantissa_bits=7)
    want = own_reduction(edge_out)
    assert_raw_equal(raw, want)
    assert int(raw.nan_count) > 0
    if mode == "gt":
        assert torch.isnan(raw.row_ratio[5])
        # the two scaled copies hold the maximum: a tie, resolved to the first as torch.argmax does
        assert int(raw.argmax) // raw.channels == edge_index.shape[1] - 2
    # huge logits (q scaled 1e4, no clamp): the online softmax stays finite where the inputs are
    ref_node, ref_edge = edge_attention_reference(*tensors, graph, mode=mode, bias=b, ebt="edge",
                                                  ebt_params=params)
    torch.testing.assert_close(edge_out, ref_edge, atol=1e-3, rtol=1e-4, equal_nan=True)
    clean = ~torch.isnan(ref_node).flatten(1).any(1)
    assert clean.sum() > num_nodes // 2
    torch.testing.assert_close(node_out[clean], ref_node[clean], atol=1e-3, rtol=1e-4)


def test_stats_huge_logits_gradients_finite():
    gen = seeded("huge-grad")
    num_nodes = 9
    edge_index = random_graph(num_nodes, 24, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    for mode in MODES:
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 4, ebt="slot", q_scale=1e4)
        _, _, grads = compare_with_reference(graph, tensors, b, params, gen, mode=mode, ebt="slot", clamp=None,
                                             atol=1e-3, rtol=1e-4, grad_atol=1e-2, grad_rtol=1e-3)
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mantissa_bits,window", [(0, 2048), (3, 2048), (7, 16), (12, 2048)])
def test_stats_resolutions_and_out_of_window_counts(monkeypatch, mantissa_bits, window):
    """Other M, and a tiny register window so most counts go through the direct atomics."""
    monkeypatch.setattr(ku, "HIST_WINDOW", window)
    gen = seeded("bits", mantissa_bits, window)
    num_nodes = 10
    edge_index = random_graph(num_nodes, 26, generator=gen, self_loops=1, duplicates=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 6, q_scale=30.0)
    for mode in MODES:
        _, edge_out, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=None, ebt=None, ebt_params=None,
                                      mantissa_bits=mantissa_bits)
        assert_raw_equal(raw, own_reduction(edge_out, mantissa_bits))


def test_stats_half_precision_match_reduce_rows():
    """bf16/fp16 taps: statistics of the stored (rounded) values, viewed as float32."""
    gen = seeded("stats-half")
    num_nodes = 10
    edge_index = random_graph(num_nodes, 24, generator=gen, self_loops=1, duplicates=2)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    for dtype, mode in ((torch.bfloat16, "gt"), (torch.float16, "additive")):
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 8, dtype=dtype, ebt="slot")
        _, edge_out, raw = run_triton(tensors, graph, mode=mode, clamp=None, bias=None, ebt="slot",
                                      ebt_params=params, mantissa_bits=7)
        assert_raw_equal(raw, own_reduction(edge_out))


def test_stats_node_tap_and_functional_entry_point():
    gen = seeded("functional")
    num_nodes = 9
    edge_index = random_graph(num_nodes, 20, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 4, bias="edge_head", ebt="edge")
    kwargs = dict(mode="gt", clamp=None, bias=b, ebt="edge", ebt_params=params)
    node_out, _, raw = run_triton(tensors, graph, mantissa_bits=7, tap="node", **kwargs)
    assert_raw_equal(raw, own_reduction(node_out))

    stats = EdgeStats(keep_edge_ratio=True)
    node_out, edge_out = edge_attention(*tensors, graph, stats=stats, backend="triton", **kwargs)
    expected = EdgeStats(keep_edge_ratio=True)
    expected.add(own_reduction(edge_out), heads=2)
    assert stats.to_dict() == expected.to_dict()
    assert torch.equal(stats.edge_ratio, expected.edge_ratio)


# ---------------------------------------------------------------------------
# custom op, torch.compile, availability
# ---------------------------------------------------------------------------


def test_opcheck_custom_op():
    gen = seeded("opcheck")
    num_nodes = 6
    edge_index = random_graph(num_nodes, 12, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, bias="edge_head", ebt="slot")
    args = (*tensors, graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm,
            b, *params, None, None, "additive", "slot", 1.0, 0.25, 2**40 + 7, 7)  # with attention dropout
    result = torch.library.opcheck(torch.ops.magnn_triton.edge_attention_fwd.default, args)
    assert all(outcome == "SUCCESS" for outcome in result.values()), result

    # the backward op on its own, with a gradient for each differentiable output (lse's included)
    out = ForwardResult(*torch.ops.magnn_triton.edge_attention_fwd(*[a.detach() if torch.is_tensor(a) else a
                                                                     for a in args]))
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE, t.dtype)
             for t in (out.node_out, out.edge_out, out.lse)]
    bwd_args = (*grads, *[t.detach() for t in tensors], out.lse, out.node_out, graph.rowptr, graph.col, graph.perm,
                graph.rev_rowptr, graph.rev_col, graph.rev_perm, b.detach(), *[p.detach() for p in params],
                None, None, "additive", "slot", 1.0, 0.25, 2**40 + 7)
    result = torch.library.opcheck(torch.ops.magnn_triton.edge_attention_bwd.default, bwd_args,
                                   test_utils=("test_schema", "test_faketensor"))
    assert all(outcome == "SUCCESS" for outcome in result.values()), result


def test_torch_compile_full_graph_matches_eager():
    gen = seeded("compile")
    num_nodes = 7
    edge_index = random_graph(num_nodes, 14, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    # the graph's sorted views are cached properties: build them eagerly, as a first eager call would
    _ = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 3, bias="edge", ebt="edge")

    def layer(q, k, v, e, bias, kb, eb, vb):
        node_out, edge_out, raw, lse = triton_backend.run_triton_backend(
            q, k, v, e, graph, mode="gt", clamp=2.0, bias=bias, ebt="edge", ebt_params=(kb, eb, vb),
            mantissa_bits=7, tap="edge", return_lse=True)
        lse_sum = torch.where(torch.isfinite(lse), lse, 0.0).sum()
        return node_out.square().sum() + edge_out.sum() + lse_sum, raw.hist_abs, raw.argmax, raw.max_abs

    leaves = leaves_of(tensors, b, params)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break allowed
    got, want = compiled(*leaves), layer(*leaves)
    for got_t, want_t in zip(got, want):
        assert torch.equal(got_t, want_t)
    for got_g, want_g in zip(torch.autograd.grad(got[0], leaves), torch.autograd.grad(want[0], leaves)):
        assert torch.equal(got_g, want_g)


def test_op_outputs_follow_the_contract():
    """The op's named outputs (ForwardResult): max_abs / argmax reduced on the device, and
    without statistics empty per-bin / per-edge outputs and -1 for both."""
    gen = seeded("contract")
    num_nodes = 6
    edge_index = random_graph(num_nodes, 12, generator=gen, isolated=1, self_loops=1)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, _, _ = make_inputs(gen, edge_index, num_nodes, 2, 3)
    args = [t.detach() for t in tensors] + [graph.rowptr, graph.col, graph.perm]
    with_stats = edge_attention_kernels(*args, mode="additive", mantissa_bits=7)
    assert isinstance(with_stats, ForwardResult)
    assert with_stats.lse.shape == (num_nodes, 2, 2) and with_stats.row_max_abs.shape == (graph.num_edges,)
    want = own_reduction(with_stats.edge_out)
    assert float(with_stats.max_abs) == float(want.max_abs) and int(with_stats.argmax) == int(want.argmax)
    without = edge_attention_kernels(*args, mode="additive", mantissa_bits=-1)
    assert torch.equal(without.edge_out, with_stats.edge_out)
    assert all(t.numel() == 0 for t in (without.hist_abs, without.hist_ratio, without.row_ratio, without.row_max_abs))
    assert int(without.nan_count) == 0 and float(without.max_abs) == -1.0 and int(without.argmax) == -1
    assert [a.name for a in torch.ops.magnn_triton.edge_attention_fwd.default._schema.arguments[-2:]] == [
        "mantissa_bits", "need_edge_out"]


def test_additive_forward_is_one_pass_without_edge_out_and_statistics(monkeypatch):
    """SPEC §3: additive mode skips the pass that forms edge_out when edge_out is not stored and no
    statistics are asked: every forward launch runs without MESSAGE_PASS (whole rows and chunks of
    split rows), and node_out and lse are the bits of the two-pass calls (edge_out kept, or only
    reduced for the statistics), which do launch it."""
    import magnn_kernels.edge_attention_fwd as fwd_module

    monkeypatch.setattr(ku, "ROW_SPLIT", 4)  # hub rows split into chunks: the merge path too
    kernel = fwd_module._edge_attention_fwd_kernel
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            def launch(**kwargs):
                launches.append({name: kwargs[name] for name in ("MESSAGE_PASS", "PARTIAL", "LSE_GIVEN")})
                return kernel[grid](**kwargs)
            return launch

    monkeypatch.setattr(fwd_module, "_edge_attention_fwd_kernel", Recorder())
    gen = seeded("one-pass")
    num_nodes = 9
    edge_index = random_graph(num_nodes, 40, generator=gen, isolated=1, self_loops=2, hub=12)
    graph = Graph(edge_index.to(DEVICE), num_nodes)
    tensors, b, params = make_inputs(gen, edge_index, num_nodes, 2, 8, bias="edge_head", ebt="slot")
    args = [t.detach() for t in tensors] + [graph.rowptr, graph.col, graph.perm]
    kwargs = dict(mode="additive", bias=b.detach(), ebt="slot", ebt_k=params[0].detach(), ebt_e=params[1].detach(),
                  ebt_v=params[2].detach(), clamp=3.0, dropout=0.25, seed=7)
    one_pass = edge_attention_kernels(*args, **kwargs, mantissa_bits=-1, need_edge_out=False)
    assert launches and any(launch["PARTIAL"] for launch in launches)
    assert not any(launch["MESSAGE_PASS"] or launch["LSE_GIVEN"] for launch in launches)
    for need_edge_out, mantissa_bits in ((True, -1), (False, 7)):
        launches.clear()
        two_pass = edge_attention_kernels(*args, **kwargs, mantissa_bits=mantissa_bits, need_edge_out=need_edge_out)
        assert any(launch["MESSAGE_PASS"] for launch in launches)
        assert torch.equal(one_pass.node_out, two_pass.node_out) and torch.equal(one_pass.lse, two_pass.lse)
    want = edge_attention_reference(*tensors, graph, mode="additive", clamp=3.0, bias=b, ebt="slot",
                                    ebt_params=params, dropout=0.25, seed=7)[0]
    torch.testing.assert_close(one_pass.node_out, want.detach(), rtol=1e-5, atol=1e-5)


def test_row_plan_lives_with_the_graph(monkeypatch):
    """The row plan (whose construction syncs with the device) is built once per CSR tensor and
    kept while it lives: a graph seen again plans nothing, however many graphs came between, and
    the plan goes when the graph does."""
    import gc

    built = []
    build = ku._build_plan
    monkeypatch.setattr(ku, "_build_plan", lambda rowptr, chunk: built.append(id(rowptr)) or build(rowptr, chunk))
    gen = seeded("plan-cache")

    def call(graph):
        tensors, _, _ = make_inputs(gen, graph.edge_index.cpu(), graph.num_nodes, 2, 4)
        return edge_attention_kernels(*[t.detach() for t in tensors], graph.rowptr, graph.col, graph.perm)

    first = Graph(random_graph(7, 20, generator=gen).to(DEVICE), 7)
    want = call(first).node_out
    assert built == [id(first.rowptr)]
    others = [Graph(random_graph(5, 9, generator=gen).to(DEVICE), 5) for _ in range(20)]
    for graph in others:
        call(graph)
    built.clear()
    again = call(first)
    assert built == []
    assert again.node_out.shape == want.shape
    key = id(first.rowptr)
    assert key in ku._PLANS_BY_CSR
    del first
    gc.collect()
    assert key not in ku._PLANS_BY_CSR
    assert len(ku._PLANS_BY_CSR) >= len(others)


def test_unavailable_reason():
    assert triton_backend.unavailable_reason(DEVICE, torch.float32) is None
    assert triton_backend.unavailable_reason(DEVICE, torch.bfloat16) is None
    assert triton_backend.unavailable_reason(DEVICE, torch.float16) is None
    assert "float64" in triton_backend.unavailable_reason(DEVICE, torch.float64)
    assert triton_backend.unavailable_reason(torch.device("meta"), torch.float32) is not None
    assert magnn.functional.select_backend("triton", DEVICE, torch.float32).name == "triton"


# The interpreter runs the kernels as Python: it cannot see what only the compiler
# rejects (non-constexpr globals, loop-carried type changes, lowering limits of
# tl.histogram). Compiling for sm_90 needs no GPU: Triton's bundled ptxas runs here.
_COMPILE_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import magnn_kernels.edge_attention_bwd as bwd
import magnn_kernels.edge_attention_common as common
import magnn_kernels.edge_attention_fwd as fwd
import magnn_kernels.edge_attention_packed as packed
import magnn_kernels.utils as ku

assert not ku.INTERPRETED
INDEX = {"rowptr_ptr", "col_ptr", "perm_ptr", "rev_rowptr_ptr", "rev_col_ptr", "rev_perm_ptr", "item_node_ptr",
         "item_start_ptr", "item_end_ptr", "seg_node_ptr", "seg_ptr_ptr", "hist_abs_ptr", "hist_ratio_ptr",
         "nan_count_ptr", "pack_nodes_ptr"}
DATA = {"q_ptr", "k_ptr", "v_ptr", "e_ptr", "node_out_ptr", "edge_out_ptr", "grad_node_ptr", "grad_edge_ptr",
        "dq_ptr", "dk_ptr", "dv_ptr", "de_ptr", "da_ptr", "out_ptr"}

def compile_for_sm90(kernel, constexprs, data="bf16"):
    signature = {}
    for name, param in zip(kernel.arg_names, kernel.params):
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name in INDEX:
            signature[name] = "*i64"
        elif name == "row_argc_ptr":
            signature[name] = "*i32"
        elif name in DATA:
            signature[name] = "*" + data
        elif name.endswith("_ptr"):
            signature[name] = "*fp32"
        elif name in ("scale", "clamp_val", "keep_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    missing = set(constexprs) ^ {n for n, p in zip(kernel.arg_names, kernel.params) if p.is_constexpr}
    assert not missing, missing
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})

GT, ADD = common.MODE_GT.value, common.MODE_ADDITIVE.value
NONE, EDGE, SLOT = common.EBT_NONE.value, common.EBT_EDGE.value, common.EBT_SLOT.value
# generic (H, D runtime) and specialised (HEADS, HEAD_DIM constexprs: utils.SHAPE_*) builds, alternately
TILES = [dict(HEADS=0, HEAD_DIM=0, BLOCK_E=16, BLOCK_H=8, BLOCK_D=8),
         dict(HEADS=8, HEAD_DIM=8, BLOCK_E=16, BLOCK_H=8, BLOCK_D=8)]
# the dropout variants (uint32 hash arithmetic) next to the unchanged no-dropout ones; edge_out
# stored or not (need_edge_out), with and without statistics on the rows
FWD_VARIANTS = [(GT, EDGE, 1, 0, 0, 1, 1), (ADD, SLOT, 1, 1, 1, 1, 0), (ADD, NONE, 0, 0, 0, 0, 0),
                (GT, SLOT, 0, 1, 0, 0, 1), (GT, NONE, 1, 0, 0, 0, 0), (ADD, NONE, 1, 0, 0, 0, 1)]
# the in-operator edge projection (EDGE_FEATURES = F, e_ptr the raw [E, F] features) on some of each
PROJ = dict(EDGE_FEATURES=8, HAS_EDGE_BIAS=True)
NO_PROJ = dict(EDGE_FEATURES=0, HAS_EDGE_BIAS=False)
for i, (mode, ebt, stats, partial, lse_given, drop, store) in enumerate(FWD_VARIANTS):
    compile_for_sm90(fwd._edge_attention_fwd_kernel, dict(
        MODE=mode, EBT=ebt, HAS_BIAS=True, BIAS_PER_HEAD=mode == ADD, HAS_CLAMP=True, DROPOUT=bool(drop),
        HAS_SINK=i in (1, 3), HAS_GATE=i in (1, 4),  # the learned sink and the gate on some variants
        PARTIAL=bool(partial), LSE_GIVEN=bool(lse_given),
        MESSAGE_PASS=mode == ADD and (stats or store) and (not partial or lse_given),
        STORE_EDGE=bool(store), STATS=bool(stats),
        MBITS=7, WINDOW=2048 if stats else 1, RATIO_BASE=ku.hist_layout(7)[1], LOW_BIT=16, **TILES[i % 2],
        **(PROJ if i in (0, 1, 3) else NO_PROJ)))
compile_for_sm90(fwd._edge_attention_fwd_kernel, dict(
    MODE=GT, EBT=NONE, HAS_BIAS=False, BIAS_PER_HEAD=False, HAS_CLAMP=False, DROPOUT=False, HAS_SINK=False,
    HAS_GATE=False, PARTIAL=False, LSE_GIVEN=False, MESSAGE_PASS=False, STORE_EDGE=True, STATS=True, MBITS=7, WINDOW=2048,
    RATIO_BASE=ku.hist_layout(7)[1], LOW_BIT=16, HEADS=4, HEAD_DIM=64, BLOCK_E=4, BLOCK_H=4, BLOCK_D=64, **PROJ))
for i, (mode, ebt, partial, delta, grad_lse, drop) in enumerate([(GT, EDGE, False, common.DELTA_GIVEN, True, True),
                                                  (ADD, SLOT, False, common.DELTA_ROW, True, True),
                                                  (ADD, EDGE, True, common.DELTA_CHUNK, True, True),
                                                  (GT, NONE, True, common.DELTA_GIVEN, False, False)]):
    compile_for_sm90(bwd._edge_attention_bwd_dst_kernel, dict(
        MODE=mode, EBT=ebt, HAS_BIAS=True, BIAS_PER_HEAD=partial, HAS_CLAMP=True, DROPOUT=drop, HAS_GRAD_NODE=True,
        HAS_GRAD_EDGE=True, HAS_GRAD_LSE=grad_lse, PARTIAL=partial, DELTA=delta.value, **TILES[i % 2],
        **(PROJ if i in (0, 2) else NO_PROJ)))
for i, (mode, ebt, partial, drop) in enumerate([(GT, EDGE, False, True), (ADD, SLOT, True, True),
                                               (ADD, NONE, False, False)]):
    compile_for_sm90(bwd._edge_attention_bwd_src_kernel, dict(
        MODE=mode, EBT=ebt, HAS_BIAS=True, BIAS_PER_HEAD=True, HAS_CLAMP=True, DROPOUT=drop, HAS_GRAD_NODE=True,
        HAS_GRAD_EDGE=partial, PARTIAL=partial, **TILES[i % 2], **(PROJ if i < 2 else NO_PROJ),
        NEED_GRAD_A=i == 0, BLOCK_F=16 if i == 0 else 8 if i == 1 else 1,
        DW_DOT=bwd.DW_DOT_HALF.value if i == 0 else bwd.DW_DOT_OFF.value))
# dW as per-tile products with fp32 operands (fp32 features)
compile_for_sm90(bwd._edge_attention_bwd_src_kernel, dict(
    MODE=ADD, EBT=NONE, HAS_BIAS=False, BIAS_PER_HEAD=False, HAS_CLAMP=False, DROPOUT=False, HAS_GRAD_NODE=True,
    HAS_GRAD_EDGE=False, PARTIAL=False, **TILES[1], **PROJ, NEED_GRAD_A=True, BLOCK_F=16,
    DW_DOT=bwd.DW_DOT_IEEE.value), data="fp32")
# short rows packed ROWS x SLOTS to a tile (molecule batches)
for i, (mode, ebt, stats, drop, store, rows) in enumerate([(GT, EDGE, 1, 1, 1, 16), (ADD, NONE, 0, 0, 1, 8),
                                                           (ADD, EDGE, 1, 0, 0, 4), (GT, NONE, 0, 0, 0, 2)]):
    tile = dict(TILES[i % 2])
    tile.pop("BLOCK_E")
    compile_for_sm90(packed._edge_attention_fwd_packed_kernel, dict(
        MODE=mode, EBT=ebt, HAS_BIAS=True, BIAS_PER_HEAD=mode == ADD, HAS_CLAMP=True, DROPOUT=bool(drop),
        HAS_SINK=i in (0, 2), HAS_GATE=i in (0, 1),
        STORE_EDGE=bool(store), STATS=bool(stats), MBITS=7, WINDOW=2048 if stats else 1,
        RATIO_BASE=ku.hist_layout(7)[1], LOW_BIT=16, ROWS=rows, SLOTS=16 // rows, **tile,
        **(PROJ if i == 1 else NO_PROJ)))
for gate in (False, True):
    compile_for_sm90(fwd._edge_attention_fwd_merge_kernel, dict(WITH_ACC=True, HAS_GATE=gate, BLOCK_H=8, BLOCK_D=8))
compile_for_sm90(common._segment_sum_kernel, dict(BLOCK_R=64))
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(ku.__file__))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]


# ---------------------------------------------------------------------------
# compiled kernels on a GPU
# ---------------------------------------------------------------------------


@pytest.mark.gpu
class TestCompiledGPU:
    """The same parity checks with compiled kernels, at a size with real hubs (rows split into chunks)."""

    @staticmethod
    def relative_error(got, want):
        return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-12))

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("ebt", EBTS)
    @pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
    def test_parity_large(self, mode, ebt, dtype, tolerance):
        assert not ku.INTERPRETED
        gen = seeded("gpu", mode, ebt, dtype)
        num_nodes = 4000
        edge_index = random_graph(num_nodes, 120_000, generator=gen, isolated=50, self_loops=100, duplicates=100,
                                hub=9000, hub_out=7000)
        graph = Graph(edge_index.to(DEVICE), num_nodes)
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 8, 8, bias="edge_head", ebt=ebt, dtype=dtype)
        kwargs = dict(mode=mode, clamp=5.0, bias=b, ebt=ebt, ebt_params=params)
        state = gen.get_state()
        got = forward_backward(lambda: run_triton(tensors, graph, **kwargs), tensors, b, params, gen)
        gen.set_state(state)
        want = forward_backward(lambda: edge_attention_reference(*tensors, graph, **kwargs), tensors, b, params, gen)
        for got_t, want_t in [(got[0], want[0]), (got[1], want[1])] + list(zip(got[2], want[2])):
            assert not torch.isnan(got_t).any()
            assert self.relative_error(got_t, want_t) < tolerance
        _, edge_out, raw = run_triton(tensors, graph, mantissa_bits=7, **kwargs)
        assert_raw_equal(raw, own_reduction(edge_out))

    def test_compiled_layer_on_gpu(self):
        gen = seeded("gpu-compile")
        num_nodes = 500
        edge_index = random_graph(num_nodes, 5000, generator=gen, self_loops=10, hub=3000)
        graph = Graph(edge_index.to(DEVICE), num_nodes)
        _ = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)
        tensors, b, params = make_inputs(gen, edge_index, num_nodes, 8, 8, bias="edge", ebt="slot",
                                         dtype=torch.bfloat16)

        def layer(q, k, v, e, bias, kb, eb, vb):
            node_out, edge_out, _ = triton_backend.run_triton_backend(
                q, k, v, e, graph, mode="additive", clamp=None, bias=bias, ebt="slot", ebt_params=(kb, eb, vb),
                mantissa_bits=None, tap="edge")
            return node_out.float().square().sum() + edge_out.float().sum()

        leaves = leaves_of(tensors, b, params)
        compiled = torch.compile(layer, fullgraph=True)
        got, want = compiled(*leaves), layer(*leaves)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

    @pytest.mark.slow
    def test_offsets_beyond_int32(self):
        """E*H*D > 2**31: the last edges' rows (element offsets past 2**31) are right, forward and backward."""
        heads, head_dim = 8, 8
        num_nodes = 2000
        num_edges = (2**31) // (heads * head_dim) + 2_000_000
        gen = torch.Generator(device=DEVICE).manual_seed(5)
        src = torch.randint(0, num_nodes, (num_edges,), device=DEVICE, generator=gen)
        dst = torch.randint(0, num_nodes, (num_edges,), device=DEVICE, generator=gen)
        graph = Graph(torch.stack([src, dst]), num_nodes)

        def rand(*shape):
            return torch.randn(*shape, device=DEVICE, generator=gen).to(torch.bfloat16)

        q, k, v = (rand(num_nodes, heads, head_dim).requires_grad_() for _ in range(3))
        e = rand(num_edges, heads, head_dim).requires_grad_()
        node_out, edge_out, _ = triton_backend.run_triton_backend(
            q, k, v, e, graph, mode="gt", clamp=None, bias=None, ebt=None, ebt_params=None, mantissa_bits=None,
            tap="edge")
        up_node, up_edge = rand(*node_out.shape), rand(*edge_out.shape)
        dq, dk, dv, de = torch.autograd.grad((node_out * up_node).sum() + (edge_out * up_edge).sum(), [q, k, v, e])

        # node i = dst of the last edge: everything about its incoming edges, in float32 torch
        i = int(dst[-1])
        incoming = torch.nonzero(dst == i).reshape(-1)
        assert int(incoming.max()) * heads * head_dim > 2**31
        scale = 1.0 / math.sqrt(head_dim)
        qi, kj, vj, ej = q[i].float(), k[src[incoming]].float(), v[src[incoming]].float(), e[incoming].float()
        with torch.no_grad():
            w = qi * kj * ej * scale
            attn = torch.softmax(w.sum(-1), dim=0)
            out = (attn.unsqueeze(-1) * vj).sum(0)
            gn, ge = up_node[i].float(), up_edge[incoming].float()
            d_attn = (gn * vj).sum(-1)
            d_logit = attn * (d_attn - (attn * d_attn).sum(0))
            de_want = (ge + d_logit.unsqueeze(-1)) * qi * kj * scale
        assert self.relative_error(edge_out[incoming], w) < 1e-2
        assert self.relative_error(node_out[i], out) < 1e-2
        assert self.relative_error(de[incoming], de_want) < 2e-2
