"""The in-operator edge projection on Triton (`magnn_triton::edge_attention_proj_fwd` / `_bwd`,
SPEC §3 "Edge projection inside the operator") against the torch reference, under the
interpreter: fresh random inputs (isolated nodes, self loops, duplicate edges), values and
every gradient (q, k, v, a, W, b, the logit bias, the EBT parameters), both modes, the EBT
variants, dropout, bipartite and empty graphs, float32 and half dtypes, split rows; the
statistics equal the C++ backend's bit for bit; dW and db are the same bits on every run."""
from __future__ import annotations

import itertools
import sys
import warnings

import pytest
import torch

import magnn_kernels.utils as ku
from helpers import random_graph, require_backend
from magnn import EdgeStats, Graph
from magnn.functional import edge_attention
from magnn.stats import reduce_rows

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEADS, HEAD_DIM, FEATS = 2, 4, 3


def _problem(seed, dtype=torch.float32, *, num_nodes=9, num_src=None, num_edges=40, ebt=None, bias=None,
             with_b=True, a_grad=True, feats=FEATS):
    gen = torch.Generator().manual_seed(seed)
    num_src = num_nodes if num_src is None else num_src
    if num_src == num_nodes:
        edge_index = random_graph(num_nodes, num_edges, generator=gen, isolated=2, self_loops=3 if num_edges else 0,
                                  duplicates=4 if num_edges else 0)
    else:  # bipartite: sources < num_src, destinations < num_nodes (some destinations isolated)
        edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen),
                                  torch.randint(0, max(num_nodes - 2, 1), (num_edges,), generator=gen)])
    E = edge_index.shape[1]

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_(grad)

    q = rand(num_nodes, HEADS, HEAD_DIM)
    k, v = rand(num_src, HEADS, HEAD_DIM), rand(num_src, HEADS, HEAD_DIM)
    a = rand(E, feats, grad=a_grad)
    weight = (torch.randn(HEADS * HEAD_DIM, feats, generator=gen) / feats ** 0.5).to(DEVICE, dtype).requires_grad_()
    b = rand(HEADS * HEAD_DIM) if with_b else None
    logit_bias = None if bias is None else rand(*((E,) if bias == "edge" else (E, HEADS)))
    ebt_params = None if ebt is None else tuple(rand(HEADS, HEAD_DIM) for _ in range(3))
    graph = Graph(edge_index.to(DEVICE), num_nodes, num_src_nodes=num_src if num_src != num_nodes else None)
    return graph, q, k, v, a, weight, b, logit_bias, ebt_params


def _leaves(problem):
    _, q, k, v, a, weight, b, logit_bias, ebt_params = problem
    flat = [q, k, v, a, weight, b, logit_bias, *(ebt_params or ())]
    return [t for t in flat if t is not None and t.requires_grad]


def _run(backend, problem, work=None, grad_seed=0, **kwargs):
    """Outputs and gradients of a random linear loss of node_out, edge_out and lse; `work`
    (float64) runs the reference on upcast copies of the inputs."""
    graph, q, k, v, a, weight, b, logit_bias, ebt_params = problem
    cast = (lambda t: t) if work is None else (lambda t: None if t is None else t.detach().to(work).requires_grad_(
        t.requires_grad))
    args = [cast(t) for t in (q, k, v, a, weight, b, logit_bias)]
    ebt = None if ebt_params is None else tuple(cast(t) for t in ebt_params)
    q, k, v, a, weight, b, logit_bias = args
    node_out, edge_out, lse = edge_attention(q, k, v, a, graph, bias=logit_bias, ebt_params=ebt, e_weight=weight,
                                             e_bias=b, backend=backend, return_lse=True, **kwargs)
    gen = torch.Generator().manual_seed(grad_seed + 101)
    loss = (node_out.double() * torch.randn(node_out.shape, generator=gen, dtype=torch.float64).to(DEVICE)).sum()
    loss = loss + (edge_out.double() * torch.randn(edge_out.shape, generator=gen,
                                                   dtype=torch.float64).to(DEVICE)).sum()
    loss = loss + (lse[torch.isfinite(lse)].double() * 0.3).sum()
    leaves = [t for t in (q, k, v, a, weight, b, logit_bias, *(ebt or ())) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, leaves) if leaves and loss.requires_grad else ()
    return (node_out, edge_out, lse), grads


TOL = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _close(x, y, dtype, what):
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    tol = TOL[dtype]
    scale = max(1.0, float(y.abs().max())) if y.numel() else 1.0
    assert x.shape == y.shape, f"{what}: shape {list(x.shape)} != {list(y.shape)}"
    assert torch.allclose(x, y, rtol=tol, atol=tol * scale, equal_nan=True), \
        f"{what}: max diff {float((x - y).abs().max()) if x.numel() else 0}"


def _check_against_reference(problem, dtype, grad_seed=0, **kwargs):
    out, grads = _run("triton", problem, grad_seed=grad_seed, **kwargs)
    ref_out, ref_grads = _run("torch", problem, work=torch.float64, grad_seed=grad_seed, **kwargs)
    for x, y, name in zip(out, ref_out, ("node_out", "edge_out", "lse")):
        _close(x, y, dtype, name)
    assert len(grads) == len(ref_grads) == len(_leaves(problem))
    names = ["q", "k", "v", "a", "W", "b", "bias", "ebt_k", "ebt_e", "ebt_v"]
    for x, y, name in zip(grads, ref_grads, names):
        assert x.dtype == next(t for t in _leaves(problem) if t.shape == x.shape).dtype
        _close(x, y, dtype, f"d{name}")


CASES = [(mode, ebt, bias) for mode, ebt, bias in itertools.product(["gt", "additive"], [None, "edge", "slot"],
                                                                    [None, "edge_head"])
         if (ebt is None) == (bias is None) or ebt == "slot"]


@pytest.fixture(autouse=True)
def _triton():
    require_backend("triton", DEVICE, torch.float32)


@pytest.mark.parametrize("mode,ebt,bias", CASES)
def test_values_and_every_gradient_match_the_reference(mode, ebt, bias):
    """float32, with clamp when a logit bias is given, and dropout on the EBT cases."""
    seed = CASES.index((mode, ebt, bias))
    problem = _problem(seed, ebt=ebt, bias=bias)
    _check_against_reference(problem, torch.float32, seed, mode=mode, ebt=ebt, clamp=2.5 if bias else None,
                             dropout=0.3 if ebt else 0.0, seed=17)


@pytest.mark.parametrize("dtype,mode", [(torch.float16, "gt"), (torch.bfloat16, "additive")])
def test_half_dtypes_match_the_reference(dtype, mode):
    require_backend("triton", DEVICE, dtype)
    problem = _problem(11, dtype, ebt="edge", bias="edge")
    _check_against_reference(problem, dtype, 11, mode=mode, ebt="edge")


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_bipartite_with_dropout_and_no_projection_bias(mode):
    problem = _problem(21, num_nodes=7, num_src=5, num_edges=30, with_b=False)
    _check_against_reference(problem, torch.float32, 21, mode=mode, dropout=0.25, seed=5)


def test_split_rows_and_several_tiles_per_row(monkeypatch):
    """Rows longer than a tile and rows split into chunks (the partial launches of both
    directions): the per-program dW / db partials of every launch are summed."""
    monkeypatch.setattr(ku, "ROW_SPLIT", 8)
    monkeypatch.setattr(ku, "MAX_BLOCK_E", 4)
    monkeypatch.setattr(ku, "row_split", lambda num_edges, device, tile: 8)
    gen = torch.Generator().manual_seed(3)
    num_nodes = 6
    hub = torch.stack([torch.randint(0, num_nodes, (40,), generator=gen), torch.zeros(40, dtype=torch.long)])
    rest = random_graph(num_nodes, 20, generator=gen)
    problem = list(_problem(31, num_nodes=num_nodes, num_edges=0))
    edge_index = torch.cat([hub, rest], dim=1)
    E = edge_index.shape[1]
    problem[0] = Graph(edge_index.to(DEVICE), num_nodes)
    problem[4] = torch.randn(E, FEATS, generator=gen).to(DEVICE).requires_grad_()
    for mode in ("gt", "additive"):
        _check_against_reference(tuple(problem), torch.float32, 31, mode=mode)


def test_empty_graph_and_no_grad_of_a():
    problem = _problem(41, num_edges=0, a_grad=False)
    assert problem[0].num_edges == 0
    out, grads = _run("triton", problem, mode="gt")
    assert out[0].abs().max() == 0 and out[1].shape == (0, HEADS, HEAD_DIM)
    ref_out, ref_grads = _run("torch", problem, work=torch.float64, mode="gt")
    for x, y in zip(grads, ref_grads):
        _close(x, y, torch.float32, "gradient")
    problem = _problem(42, a_grad=False, ebt="slot")
    _check_against_reference(problem, torch.float32, 42, mode="additive", ebt="slot")


def test_no_fallback_warning_and_no_edge_by_hidden_input(monkeypatch):
    """The dispatch reaches the projection op (no RuntimeWarning, no unfused e): the plain
    op is never called."""
    import magnn_kernels.edge_attention as plain
    problem = _problem(51)
    called = []
    monkeypatch.setattr("magnn.backends.triton.edge_attention", lambda *a, **k: called.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run("triton", problem, mode="gt")
    assert not called and plain is not None


def test_statistics_are_the_reduction_of_the_stored_rows_and_match_the_cpu_backend():
    """The in-kernel statistics of the projected call equal the reference reduction of the
    edge_out rows Triton stored, bit for bit, and the C++ backend's within rounding (both form
    e = b + sum_f W[:, f] a_f in float32, f ascending)."""
    require_backend("cpu", torch.device("cpu"), torch.float32)
    problem = _problem(61, num_nodes=12, num_edges=80, ebt="edge", bias="edge")
    graph, q, k, v, a, weight, b, logit_bias, ebt_params = problem
    stats, outs = {}, {}
    for backend in ("cpu", "triton"):
        st = EdgeStats(mantissa_bits=3, keep_edge_ratio=True)
        with torch.no_grad():
            outs[backend] = edge_attention(q, k, v, a, graph, bias=logit_bias, ebt="edge", ebt_params=ebt_params,
                                           e_weight=weight, e_bias=b, mode="gt", stats=st, backend=backend)[1]
        stats[backend] = st
    tri, cpu = stats["triton"], stats["cpu"]
    own = reduce_rows(outs["triton"].reshape(graph.num_edges, -1).cpu(), 3)
    assert torch.equal(tri.hist_abs.counts, own.hist_abs.cpu())
    assert torch.equal(tri.hist_ratio.counts, own.hist_ratio.cpu())
    assert torch.equal(tri.edge_ratio, own.row_ratio.cpu()) and tri.max_abs == float(own.max_abs)
    assert tri.count == cpu.count and tri.rows == cpu.rows == graph.num_edges
    torch.testing.assert_close(tri.edge_ratio, cpu.edge_ratio, rtol=1e-4, atol=0)
    assert abs(tri.max_abs - cpu.max_abs) <= 1e-5 * max(1.0, abs(cpu.max_abs))
    if torch.equal(outs["triton"].cpu(), outs["cpu"]):  # the same rows: the same statistics, bit for bit
        assert torch.equal(tri.hist_abs.counts, cpu.hist_abs.counts)
        assert torch.equal(tri.hist_ratio.counts, cpu.hist_ratio.counts)


def test_weight_gradients_are_the_same_bits_every_run():
    problem = _problem(71, num_nodes=10, num_edges=60, ebt="edge")
    first = _run("triton", problem, mode="additive", ebt="edge")[1]
    second = _run("triton", problem, mode="additive", ebt="edge")[1]
    for x, y in zip(first, second):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype,with_b,mode", [(torch.float32, True, "gt"), (torch.float32, False, "additive"),
                                               (torch.float16, True, "additive"), (torch.bfloat16, True, "gt")])
def test_weight_gradients_as_per_tile_matrix_products(monkeypatch, dtype, with_b, mode):
    """H * D = 16 channels, tiles of 64 edges: the src backward sums dW, db (the ones feature at f = F)
    and da by per-tile `tl.dot`s (projection_grads_dot); the values and every gradient match the
    reference, and dW / db / da those of the per-feature reductions within rounding. float16 runs the
    tensor-core form (d_e rounded to the feature dtype); the interpreter takes fp32 products for bfloat16."""
    import magnn_kernels.edge_attention_bwd as kb

    require_backend("triton", DEVICE, dtype)
    monkeypatch.setattr(sys.modules[__name__], "HEAD_DIM", 8)
    assert kb.dw_dot(ku.tiles(HEADS, 8), FEATS)
    problem = _problem(81, dtype, num_nodes=14, num_edges=150, with_b=with_b, ebt="edge", bias="edge")
    _check_against_reference(problem, dtype, 81, mode=mode, ebt="edge", dropout=0.2, seed=3)
    dot_grads = _run("triton", problem, mode=mode, ebt="edge")[1]
    monkeypatch.setattr(kb, "PROJECTION_DOT", False)
    assert not kb.dw_dot(ku.tiles(HEADS, 8), FEATS)
    for x, y in zip(dot_grads, _run("triton", problem, mode=mode, ebt="edge")[1]):
        _close(x, y, dtype, "dot vs per-feature")
