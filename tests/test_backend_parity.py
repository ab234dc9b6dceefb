"""Every fast backend against the pure-PyTorch reference: one shared test.

Adding a backend adds one entry to FAST_BACKENDS. A backend that cannot run
here is skipped with its reason, unless MAGNN_REQUIRE_BACKENDS names it (CI
sets it), in which case the test fails: a compiled path must not silently
turn into a skip.
"""
import itertools

import pytest
import torch

from helpers import random_graph, random_inputs, require_backend
from magnn import EdgeStats, Graph
from magnn.functional import edge_attention
from magnn.stats import reduce_rows

FAST_BACKENDS = ["cpu", "triton"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _usable(backend: str, dtype=torch.float32):
    require_backend(backend, DEVICE, dtype)


def _inputs(seed, mode, ebt, bias, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    num_nodes = 24
    edge_index = random_graph(num_nodes, 70, generator=gen, isolated=3, self_loops=3, duplicates=4, hub=40)
    q, k, v, e, b, params = random_inputs(num_nodes, edge_index, 2, 5, dtype=dtype, generator=gen, bias=bias, ebt=ebt, scale=scale)
    moved = [t.detach().to(DEVICE).requires_grad_() for t in (q, k, v, e)]
    b = None if b is None else b.detach().to(DEVICE).requires_grad_()
    params = None if params is None else tuple(p.detach().to(DEVICE).requires_grad_() for p in params)
    return moved, b, params, Graph(edge_index.to(DEVICE), num_nodes)


def _run(backend, tensors, b, params, graph, **kwargs):
    leaves = list(tensors) + ([b] if b is not None else []) + list(params or ())
    stats = EdgeStats(keep_edge_ratio=True)
    node_out, edge_out = edge_attention(*tensors, graph, bias=b, ebt_params=params, stats=stats, backend=backend, **kwargs)
    gen = torch.Generator().manual_seed(99)
    up_node = torch.randn(node_out.shape, generator=gen).to(DEVICE, node_out.dtype)
    up_edge = torch.randn(edge_out.shape, generator=gen).to(DEVICE, edge_out.dtype)
    grads = torch.autograd.grad((node_out * up_node).sum() + (edge_out * up_edge).sum(), leaves)
    return node_out, edge_out, grads, stats


# (backend, dtype) pairs the matrix runs: every fast backend in float32, and float64 where the
# backend takes it (the Triton kernels take float16/bfloat16/float32 by design)
MATRIX_DTYPES = [("cpu", torch.float32), ("cpu", torch.float64), ("triton", torch.float32)]
TOLERANCES = {torch.float32: dict(values=1e-5, grads=1e-4), torch.float64: dict(values=1e-9, grads=1e-9)}
ISOLATED = 3  # _inputs' last nodes have no incoming edge


@pytest.mark.parametrize("backend,dtype", MATRIX_DTYPES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize(
    "mode,ebt,clamp,bias",
    list(itertools.product(["gt", "additive"], [None, "edge", "slot"], [None, 2.0], [None, "edge", "edge_head"])),
)
def test_values_gradients_and_stats_match_reference(backend, dtype, mode, ebt, clamp, bias):
    """The one parity matrix: 2 modes x 3 EBT variants x clamp on/off x 3 bias forms, every
    fast backend against the torch reference (values, gradients, statistics)."""
    _usable(backend, dtype)
    tensors, b, params, graph = _inputs(11, mode, ebt, bias, dtype=dtype)
    kwargs = dict(mode=mode, ebt=ebt, clamp=clamp)
    node_out, edge_out, grads, stats = _run(backend, tensors, b, params, graph, **kwargs)
    want_node, want_edge, want_grads, want_stats = _run("torch", tensors, b, params, graph, **kwargs)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(node_out, want_node, rtol=tol["values"], atol=tol["values"])
    torch.testing.assert_close(edge_out, want_edge, rtol=tol["values"], atol=tol["values"])
    for got, want in zip(grads, want_grads):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol["grads"], atol=tol["grads"])
        assert torch.isfinite(got).all()
    if ebt != "slot":  # no incoming edge and no slot: exactly zero
        isolated = node_out[-ISOLATED:]
        assert torch.equal(isolated, torch.zeros_like(isolated))
    # the in-kernel reduction equals the reference reduction of what the backend stored
    own = reduce_rows(edge_out.detach().reshape(edge_out.shape[0], -1).cpu())
    assert torch.equal(stats.hist_abs.counts, own.hist_abs.cpu())
    assert torch.equal(stats.hist_ratio.counts, own.hist_ratio.cpu())
    assert torch.equal(stats.edge_ratio, own.row_ratio.cpu())
    assert stats.max_abs == float(own.max_abs)
    assert stats.nan_count == 0
    torch.testing.assert_close(stats.edge_ratio, want_stats.edge_ratio, rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_huge_logits_and_nan_inputs(backend, mode):
    _usable(backend)
    tensors, _, _, graph = _inputs(12, mode, None, None, scale=30.0)
    node_out, _, grads, _ = _run(backend, tensors, None, None, graph, mode=mode)
    want_node, _, want_grads, _ = _run("torch", tensors, None, None, graph, mode=mode)
    assert torch.isfinite(node_out).all()
    torch.testing.assert_close(node_out, want_node, rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        tensors[3][5, 1, 2] = float("nan")  # one NaN edge feature
    stats = EdgeStats()
    _, edge_out = edge_attention(*tensors, graph, mode=mode, stats=stats, backend=backend)
    own = reduce_rows(edge_out.detach().reshape(edge_out.shape[0], -1).cpu())
    assert stats.nan_count == int(own.nan_count) > 0
    assert torch.equal(stats.hist_abs.counts, own.hist_abs.cpu())


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    _usable(backend, dtype)
    tensors, b, params, graph = _inputs(13, "gt", "edge", "edge", dtype=dtype)
    node_out, edge_out, grads, stats = _run(backend, tensors, b, params, graph, ebt="edge", clamp=5.0)
    want_node, want_edge, want_grads, _ = _run("torch", tensors, b, params, graph, ebt="edge", clamp=5.0)
    assert node_out.dtype == dtype and edge_out.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(node_out.float(), want_node.float(), **tol)
    torch.testing.assert_close(edge_out.float(), want_edge.float(), **tol)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)
    own = reduce_rows(edge_out.detach().reshape(edge_out.shape[0], -1).cpu())
    assert torch.equal(stats.hist_abs.counts, own.hist_abs.cpu())


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("ebt", [None, "slot"])
def test_empty_edge_set(backend, ebt):
    _usable(backend)
    gen = torch.Generator().manual_seed(5)
    edge_index = torch.empty(2, 0, dtype=torch.long)
    q, k, v, e, _, params = random_inputs(4, edge_index, 2, 3, dtype=torch.float32, generator=gen, ebt=ebt)
    tensors = [t.detach().to(DEVICE) for t in (q, k, v, e)]
    params = None if params is None else tuple(p.detach().to(DEVICE) for p in params)
    stats, want_stats = EdgeStats(), EdgeStats()
    node_out, edge_out = edge_attention(*tensors, edge_index.to(DEVICE), ebt=ebt, ebt_params=params, backend=backend, stats=stats)
    want, _ = edge_attention(*tensors, edge_index.to(DEVICE), ebt=ebt, ebt_params=params, backend="torch", stats=want_stats)
    assert edge_out.shape == (0, 2, 3)
    torch.testing.assert_close(node_out, want)
    assert stats.count == want_stats.count == 0 and stats.hist_abs.total == 0


# need_edge_out=False on every backend, the compiled ones in a half dtype too (their rows are
# reduced as stored, i.e. rounded, also when nothing is stored)
UNKEPT_CASES = [("torch", torch.float32), ("cpu", torch.float32), ("cpu", torch.bfloat16),
                ("triton", torch.float32), ("triton", torch.float16)]


def _stats_fields(stats: EdgeStats) -> tuple:
    return (stats.calls, stats.count, stats.nan_count, stats.max_abs, stats.argmax, stats.max_edge_ratio,
            stats.hist_abs.counts.tolist(), stats.hist_ratio.counts.tolist(), stats.hist_edge_ratio.counts.tolist(),
            stats.edge_ratio.tolist())


@pytest.mark.parametrize("backend,dtype", UNKEPT_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("mode,ebt,dropout", [("gt", "edge", 0.0), ("additive", None, 0.0), ("additive", "slot", 0.3)])
def test_unkept_edge_out_changes_nothing_else(backend, dtype, mode, ebt, dropout):
    """need_edge_out=False (what TransformerConv asks for): edge_out comes back None, and node_out,
    lse, alpha, every gradient and every statistic equal those of the same call that keeps it, bit
    for bit: on a graph with isolated nodes, self loops, duplicates and a hub row, a NaN row, with
    and without statistics (additive mode then skips its edge_out pass altogether)."""
    _usable(backend, dtype)
    tensors, _, params, graph = _inputs(21, mode, ebt, None, dtype=dtype)
    with torch.no_grad():
        tensors[3][7, 0, 1] = float("nan")  # one NaN edge feature: a NaN row for the statistics
    kwargs = dict(mode=mode, ebt=ebt, ebt_params=params, clamp=4.0, dropout=dropout, seed=12345,
                  return_lse=True, backend=backend)
    leaves = list(tensors) + list(params or ())
    gen = torch.Generator().manual_seed(3)
    up = [torch.randn(shape, generator=gen).to(DEVICE) for shape in
          (tensors[0].shape, (graph.num_nodes, tensors[0].shape[1]), (graph.num_edges, tensors[0].shape[1]))]

    def call(keep: bool, with_stats: bool, with_alpha: bool):
        stats = EdgeStats(keep_edge_ratio=True) if with_stats else None
        node_out, edge_out, lse, *alpha = edge_attention(*tensors, graph, stats=stats, need_edge_out=keep,
                                                         return_alpha=with_alpha, **kwargs)
        alpha = alpha[0] if with_alpha else torch.zeros(())
        finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        loss = ((node_out.float() * up[0]).nansum() + (finite_lse.float() * up[1]).sum()
                + (alpha.float() * (up[2] if with_alpha else 1.0)).nansum())
        grads = torch.autograd.grad(loss, leaves)
        return node_out, edge_out, lse, alpha, grads, stats

    # gt's alpha is read off edge_out, so only the calls without alpha leave gt's rows unstored
    for with_stats, with_alpha in itertools.product((True, False), (True, False)):
        kept = call(True, with_stats, with_alpha)
        unkept = call(False, with_stats, with_alpha)
        assert kept[1] is not None and kept[1].shape == tensors[3].shape and unkept[1] is None
        for got, want in zip((unkept[0], unkept[2], unkept[3], *unkept[4]), (kept[0], kept[2], kept[3], *kept[4])):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
        if with_stats:
            assert unkept[5].nan_count > 0 and unkept[5].count == graph.num_edges * tensors[0].shape[1] * tensors[0].shape[2]
            assert str(_stats_fields(unkept[5])) == str(_stats_fields(kept[5]))  # NaN == NaN as text
    if backend == "torch":
        with pytest.raises(TypeError, match="need_edge_out must be True or False"):
            edge_attention(*tensors, graph, mode=mode, ebt=ebt, ebt_params=params, need_edge_out=0)


def _bipartite_inputs(seed, ebt, bias, dtype=torch.float32):
    """A bipartite graph (more sources than destinations, isolated destinations, a hub) and inputs."""
    gen = torch.Generator().manual_seed(seed)
    num_dst, num_src = 16, 23
    edge_index = random_graph(num_dst, 60, generator=gen, isolated=ISOLATED, duplicates=3, hub=30)
    edge_index[0] = torch.randint(0, num_src, (edge_index.shape[1],), generator=gen)
    q, _, _, e, b, params = random_inputs(num_dst, edge_index, 2, 5, dtype=dtype, generator=gen, bias=bias, ebt=ebt)
    k, v = (torch.randn(num_src, 2, 5, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    moved = [t.detach().to(DEVICE).requires_grad_() for t in (q, k, v, e)]
    b = None if b is None else b.detach().to(DEVICE).requires_grad_()
    params = None if params is None else tuple(p.detach().to(DEVICE).requires_grad_() for p in params)
    return moved, b, params, Graph(edge_index.to(DEVICE), num_dst, num_src_nodes=num_src)


# the interpreted Triton kernels are slow: bipartite without dropout runs there through
# tests/test_transformer_conv.py and tests/kernels; here only with dropout
BIPARTITE_CASES = [(backend, dtype, dropout) for backend, dtype in MATRIX_DTYPES for dropout in (0.0, 0.3)
                   if not (backend == "triton" and dropout == 0.0)]


@pytest.mark.parametrize("backend,dtype,dropout", BIPARTITE_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("mode,ebt,bias", [("gt", "edge", "edge"), ("gt", "slot", "edge_head"),
                                           ("additive", None, None), ("additive", "edge", "edge_head")])
def test_bipartite_and_dropout_match_reference(backend, dtype, dropout, mode, ebt, bias):
    """Bipartite graphs (k, v over N_src != N_dst) with and without in-kernel dropout: values,
    gradients (dk, dv have N_src rows), statistics and the attention weights against the reference."""
    _usable(backend, dtype)
    tensors, b, params, graph = _bipartite_inputs(17, ebt, bias, dtype=dtype)
    kwargs = dict(mode=mode, ebt=ebt, clamp=3.0, dropout=dropout, seed=2**33 + 5)
    node_out, edge_out, grads, stats = _run(backend, tensors, b, params, graph, **kwargs)
    want_node, want_edge, want_grads, want_stats = _run("torch", tensors, b, params, graph, **kwargs)
    tol = TOLERANCES[dtype]
    assert node_out.shape[0] == graph.num_nodes and grads[1].shape[0] == grads[2].shape[0] == graph.num_src_nodes
    torch.testing.assert_close(node_out, want_node, rtol=tol["values"], atol=tol["values"])
    torch.testing.assert_close(edge_out, want_edge, rtol=tol["values"], atol=tol["values"])
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=tol["grads"], atol=tol["grads"])
        assert torch.isfinite(got).all()
    if ebt != "slot":
        assert torch.equal(node_out[-ISOLATED:], torch.zeros_like(node_out[-ISOLATED:]))
    own = reduce_rows(edge_out.detach().reshape(edge_out.shape[0], -1).cpu())
    assert torch.equal(stats.hist_abs.counts, own.hist_abs.cpu())
    assert torch.equal(stats.edge_ratio, own.row_ratio.cpu())
    # alpha from the saved lse: the same on both sides, and a softmax (rows sum to 1 without the slot)
    call = dict(bias=b, ebt_params=params, return_alpha=True, **kwargs)
    alpha = edge_attention(*tensors, graph, backend=backend, **call)[2]
    want_alpha = edge_attention(*tensors, graph, backend="torch", **call)[2]
    torch.testing.assert_close(alpha, want_alpha, rtol=tol["values"], atol=tol["values"])
    sums = torch.zeros(graph.num_nodes, alpha.shape[1], dtype=alpha.dtype, device=alpha.device).index_add(
        0, graph.dst, alpha.detach())
    attended = graph.in_degree > 0
    if ebt != "slot":
        torch.testing.assert_close(sums[attended], torch.ones_like(sums[attended]), rtol=1e-5, atol=1e-5)
    else:
        assert (sums[attended] < 1).all()


def test_bipartite_graph_checks_both_sides():
    edge_index = torch.tensor([[0, 6, 3], [1, 0, 2]])
    graph = Graph.from_edge_index(edge_index, size=(7, 3))
    assert (graph.num_src_nodes, graph.num_nodes, graph.is_bipartite) == (7, 3, True)
    assert graph.rowptr.shape == (4,) and graph.rev_rowptr.shape == (8,)
    assert torch.equal(graph.rev_rowptr.diff(), torch.bincount(edge_index[0], minlength=7))
    moved = graph.to("cpu")
    assert moved.size == (7, 3)
    with pytest.raises(ValueError, match="sources"):
        Graph(edge_index, 3, num_src_nodes=6)
    with pytest.raises(ValueError, match="destination"):
        Graph(edge_index, 2, num_src_nodes=7)
    with pytest.raises(ValueError, match="num_src_nodes=7"):  # an unvalidated graph, checked on first use
        Graph(edge_index, 3, num_src_nodes=6, validate=False).check_index_bounds()
    with pytest.raises(ValueError, match="either size"):
        Graph.from_edge_index(edge_index, 3, size=(7, 3))
    q = torch.randn(3, 2, 4)
    k = torch.randn(7, 2, 4)
    with pytest.raises(ValueError, match="num_src_nodes"):  # k rows disagree with the graph's sources
        edge_attention(q, k[:5], k[:5], torch.randn(3, 2, 4), graph, backend="torch")
    # an edge list infers N_dst from q and N_src from k
    node_out, _ = edge_attention(q, k, k, torch.randn(3, 2, 4), edge_index, backend="torch")
    assert node_out.shape == (3, 2, 4)
