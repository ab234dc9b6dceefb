"""The C++ CPU backend (csrc/, magnn/backends/cpu.py) against the PyTorch reference.

The extension is compiled (or loaded from the cache) once per session; a
build failure fails these tests rather than skipping them.
"""
import itertools
import math

import pytest
import torch

import magnn
from magnn import functional
from magnn.backends import cpu as cpu_backend
from magnn.backends.reference import run_torch_backend
from magnn.core import contract
from magnn.functional import edge_attention
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats, RawStats, reduce_rows

MODES = ("gt", "additive")
EBTS = (None, "edge", "slot")
CLAMPS = (None, 0.5)
BIASES = (None, "edge", "edge_head")
STAT_FIELDS = ("hist_abs", "hist_ratio", "nan_count", "max_abs", "argmax", "row_ratio", "row_max_abs")


@pytest.fixture(scope="module", autouse=True)
def built_extension():
    # no skip: CI has a compiler, so a failed build is a failure
    return cpu_backend.build()


def tricky_graph(num_nodes=40, num_random=240, seed=0):
    """Random edges plus a hub in and out, duplicates, self loops, nodes without
    incoming edges and fully isolated nodes, in a shuffled caller order."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes - 4, (num_random,), generator=gen)
    dst = torch.randint(0, num_nodes - 6, (num_random,), generator=gen)  # N-6, N-5: out-edges only
    hub_in = torch.randint(0, num_nodes - 4, (30,), generator=gen)
    hub_out = torch.randint(0, num_nodes - 6, (30,), generator=gen)
    loops = torch.arange(2, 7)
    src = torch.cat([src, hub_in, torch.full((30,), 1), loops, src[:10]])
    dst = torch.cat([dst, torch.zeros(30, dtype=torch.long), hub_out, loops, dst[:10]])
    order = torch.randperm(src.numel(), generator=gen)
    return magnn.Graph(torch.stack([src[order], dst[order]]), num_nodes)


def make_inputs(graph, heads=3, head_dim=4, dtype=torch.float64, bias=None, ebt=None, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    n, m = graph.num_nodes, graph.num_edges

    def leaf(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    q, k, v = leaf(n, heads, head_dim), leaf(n, heads, head_dim), leaf(n, heads, head_dim)
    e = leaf(m, heads, head_dim)
    bias_tensor = None
    if bias == "edge":
        bias_tensor = torch.randn(m, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    elif bias == "edge_head":
        bias_tensor = torch.randn(m, heads, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    params = None
    if ebt is not None:
        params = tuple(
            (torch.randn(heads, head_dim, generator=gen, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()
            for _ in range(3)
        )
    return q, k, v, e, bias_tensor, params


def forward_backward(inputs, graph, backend, **options):
    """Outputs, then the gradients of every input that requires one."""
    q, k, v, e, bias, params = inputs
    node_out, edge_out = edge_attention(
        q, k, v, e, graph, bias=bias, ebt_params=params, backend=backend, **options
    )
    leaves = [t for t in (q, k, v, e, bias, *(params or ())) if t is not None]
    gen = torch.Generator().manual_seed(7)
    grad_node = torch.randn(node_out.shape, generator=gen, dtype=torch.float64).to(node_out.dtype)
    grad_edge = torch.randn(edge_out.shape, generator=gen, dtype=torch.float64).to(edge_out.dtype)
    grads = torch.autograd.grad([node_out, edge_out], leaves, [grad_node, grad_edge])
    return [node_out.detach(), edge_out.detach(), *grads]


def assert_all_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for index, (a, b) in enumerate(zip(actual, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        torch.testing.assert_close(a, b, msg=lambda text: f"tensor {index}: {text}", **tolerance)


def assert_stats_equal(raw: RawStats, expected: RawStats):
    for name in STAT_FIELDS:
        got, want = getattr(raw, name), getattr(expected, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want) or (got.is_floating_point() and torch.equal(got.nan_to_num(), want.nan_to_num())
                                          and torch.equal(got.isnan(), want.isnan())), name
    assert raw.count == expected.count and raw.channels == expected.channels


# -- availability -----------------------------------------------------------------
def test_available_on_cpu_and_picked_by_auto():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert cpu_backend.unavailable_reason(torch.device("cpu"), dtype) is None
    assert functional.select_backend("auto", torch.device("cpu"), torch.float32).name == "cpu"
    assert "CPU" in cpu_backend.unavailable_reason(torch.device("cuda"), torch.float32)
    assert "float32" in cpu_backend.unavailable_reason(torch.device("cpu"), torch.int32)
    assert hasattr(torch.ops.magnn_cpu, "edge_attention_fwd")


def test_missing_compiler_is_a_reason_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_backend, "_library_path", None)
    monkeypatch.setattr(cpu_backend, "_build_error", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    # and no prebuilt library of these sources (one would serve: tests/test_light_core.py)
    monkeypatch.setattr(cpu_backend, "prebuilt_library", lambda folder, directory: None)
    reason = cpu_backend.unavailable_reason(torch.device("cpu"), torch.float32)
    assert reason is not None and "no C++ compiler" in reason
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cpu_backend.build()
    monkeypatch.setattr(functional, "_warned", set())
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert functional.select_backend("auto", torch.device("cpu"), torch.float32).name == "torch"
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        functional.select_backend("cpu", torch.device("cpu"), torch.float32)


# -- parity with the reference ------------------------------------------------------
# The mode x EBT x clamp x bias matrix (float32 and float64) is tests/test_backend_parity.py's,
# shared by every backend; here: other shapes and the cpu backend's own cases.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ebt", EBTS)
def test_float32_matches_reference(mode, ebt):
    graph = tricky_graph(seed=3)
    inputs = make_inputs(graph, heads=4, head_dim=8, dtype=torch.float32, bias="edge_head", ebt=ebt, seed=4)
    options = dict(mode=mode, clamp=5.0, ebt=ebt)
    expected = forward_backward(inputs, graph, "torch", **options)
    actual = forward_backward(inputs, graph, "cpu", **options)
    assert_all_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mode,ebt,clamp,bias",
    [("gt", "edge", 0.7, "edge_head"), ("gt", "slot", None, "edge"), ("additive", "edge", None, "edge"),
     ("additive", "slot", 0.7, None), ("gt", None, None, None)],
)
def test_gradcheck_float64(mode, ebt, clamp, bias):
    graph = tricky_graph(num_nodes=9, num_random=12, seed=5)
    q, k, v, e, bias_tensor, params = make_inputs(graph, heads=2, head_dim=3, bias=bias, ebt=ebt, seed=6)
    leaves = [t for t in (q, k, v, e, bias_tensor, *(params or ())) if t is not None]
    count = 4 + (bias_tensor is not None)

    def call(*tensors):
        q, k, v, e = tensors[:4]
        b = tensors[4] if bias_tensor is not None else None
        p = tuple(tensors[count:]) if ebt is not None else None
        return edge_attention(q, k, v, e, graph, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=p, backend="cpu")

    assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ebt", (None, "slot"))
@pytest.mark.parametrize("mode", MODES)
def test_empty_edge_set(mode, ebt):
    graph = magnn.Graph(torch.empty(2, 0, dtype=torch.long), 5)
    inputs = make_inputs(graph, ebt=ebt)
    expected = forward_backward(inputs, graph, "torch", mode=mode, ebt=ebt)
    actual = forward_backward(inputs, graph, "cpu", mode=mode, ebt=ebt)
    assert_all_close(actual, expected, rtol=1e-9, atol=1e-11)
    assert actual[1].shape == (0, 3, 4)
    if ebt is None:
        assert torch.equal(actual[0], torch.zeros(5, 3, 4, dtype=torch.float64))
    stats = EdgeStats()
    edge_attention(*inputs[:4], graph, mode=mode, ebt=ebt, ebt_params=inputs[5], stats=stats, backend="cpu")
    assert stats.count == 0 and stats.argmax is None and stats.hist_abs.total == 0


@pytest.mark.parametrize("edges", ([[0], [0]], [[0, 0, 0], [0, 0, 0]], []))
@pytest.mark.parametrize("ebt", EBTS)
def test_single_node(edges, ebt):
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(2, -1)
    graph = magnn.Graph(edge_index, 1)
    inputs = make_inputs(graph, ebt=ebt, bias="edge")
    for mode in MODES:
        expected = forward_backward(inputs, graph, "torch", mode=mode, ebt=ebt, clamp=0.3)
        actual = forward_backward(inputs, graph, "cpu", mode=mode, ebt=ebt, clamp=0.3)
        assert_all_close(actual, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", MODES)
def test_huge_logits_without_clamp_stay_finite(mode):
    graph = tricky_graph(seed=8)
    # logits of order 1e4 to 1e5: exp() overflows in float32 without the running max
    inputs = make_inputs(graph, heads=2, head_dim=4, dtype=torch.float32, ebt="slot", seed=9, scale=30.0)
    expected = forward_backward(inputs, graph, "torch", mode=mode, ebt="slot")
    actual = forward_backward(inputs, graph, "cpu", mode=mode, ebt="slot")
    for tensor in actual:
        assert torch.isfinite(tensor).all()
    assert_all_close(actual[:2], expected[:2], rtol=1e-4, atol=1e-3)
    for got, want in zip(actual[2:], expected[2:]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_only_one_output_used():
    graph = tricky_graph(seed=10)
    for mode, pick in itertools.product(MODES, (0, 1)):
        grads = {}
        for backend in ("torch", "cpu"):
            q, k, v, e, _, params = make_inputs(graph, ebt="edge", seed=11)
            outputs = edge_attention(q, k, v, e, graph, mode=mode, ebt="edge", ebt_params=params, backend=backend)
            (outputs[pick] ** 2).sum().backward()
            # an input the used output does not depend on may get None (torch) or zeros (cpu)
            grads[backend] = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (q, k, v, e, *params)]
        assert_all_close(grads["cpu"], grads["torch"], rtol=1e-9, atol=1e-11)


def test_non_contiguous_inputs_and_mixed_bias_dtype():
    graph = tricky_graph(seed=12)
    gen = torch.Generator().manual_seed(13)
    n, m = graph.num_nodes, graph.num_edges
    q = torch.randn(3, n, 4, generator=gen).transpose(0, 1).requires_grad_()
    k, v = (torch.randn(n, 3, 4, generator=gen).requires_grad_() for _ in range(2))
    e = torch.randn(m, 4, 3, generator=gen).transpose(1, 2).requires_grad_()
    bias = torch.randn(m, 3, generator=gen, dtype=torch.float64).requires_grad_()
    results = {}
    for backend in ("torch", "cpu"):
        results[backend] = forward_backward((q, k, v, e, bias, None), graph, backend, mode="additive")
    assert_all_close(results["cpu"], results["torch"], rtol=1e-5, atol=1e-5)
    assert results["cpu"][6].dtype == torch.float64  # the bias gradient keeps the bias dtype


def output_gradient_layouts(shape, gen):
    """Gradients of one [rows, H, D] output in the layouts autograd hands the backward, each with
    its contiguous float32 copy: broadcast over rows (out.sum()), rows at a larger stride (a slice),
    transposed inner dims, another dtype, a single broadcast value."""
    rows, heads, dim = shape
    row = torch.randn(1, heads, dim, generator=gen)
    wide = torch.randn(rows, heads, dim + 3, generator=gen)
    swapped = torch.randn(rows, dim, heads, generator=gen).transpose(1, 2)
    layouts = {
        "broadcast": row.expand(rows, heads, dim),
        "strided_rows": wide[:, :, :dim],
        "every_other_row": torch.randn(2 * rows, heads, dim, generator=gen)[::2],
        "transposed": swapped,
        "float64": torch.randn(rows, heads, dim, generator=gen, dtype=torch.float64),
        "broadcast_float64": row.double().expand(rows, heads, dim),
        "scalar": torch.tensor(0.7).expand(rows, heads, dim),
    }
    return {name: (grad, grad.float().contiguous()) for name, grad in layouts.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ebt", EBTS)
def test_backward_reads_output_gradients_in_any_layout(mode, ebt):
    """The backward reads broadcast and strided output gradients where they lie (no [E, H, D]
    copy); every layout gives bit for bit the gradients of its contiguous copy."""
    graph = tricky_graph(seed=31)
    q, k, v, e, _, params = make_inputs(graph, dtype=torch.float32, ebt=ebt, seed=32)
    gen = torch.Generator().manual_seed(33)
    leaves = [q, k, v, e, *(params or ())]

    def grads(grad_node, grad_edge):
        node_out, edge_out = edge_attention(q, k, v, e, graph, mode=mode, ebt=ebt, ebt_params=params,
                                            backend="cpu")
        return torch.autograd.grad([node_out, edge_out], leaves, [grad_node, grad_edge])

    node_layouts = output_gradient_layouts(tuple(q.shape), gen)
    edge_layouts = output_gradient_layouts(tuple(e.shape), gen)
    for name in edge_layouts:
        (node_grad, node_copy), (edge_grad, edge_copy) = node_layouts[name], edge_layouts[name]
        if name not in ("float64", "broadcast_float64"):
            assert edge_grad.dtype == torch.float32 and not edge_grad.is_contiguous(), name
        got, want = grads(node_grad, edge_grad), grads(node_copy, edge_copy)
        for index, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), (name, index)
    # the out.sum() case end to end, against the reference backend
    reference = [t.detach().double().requires_grad_() for t in leaves]
    out_ref = edge_attention(*reference[:4], graph, mode=mode, ebt=ebt,
                             ebt_params=tuple(reference[4:]) or None, backend="torch")
    want = torch.autograd.grad([o.sum() for o in out_ref], reference)
    out = edge_attention(q, k, v, e, graph, mode=mode, ebt=ebt, ebt_params=params, backend="cpu")
    got = torch.autograd.grad([o.sum() for o in out], leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_inputs(dtype, mode):
    graph = tricky_graph(seed=14)
    inputs = make_inputs(graph, heads=4, head_dim=8, dtype=dtype, bias="edge", ebt="edge", seed=15)
    expected = forward_backward(inputs, graph, "torch", mode=mode, ebt="edge", clamp=5.0)
    actual = forward_backward(inputs, graph, "cpu", mode=mode, ebt="edge", clamp=5.0)
    assert all(t.dtype == dtype for t in actual[:6])  # outputs and q, k, v, e gradients
    # both accumulate in float32 and round once; a rounding may differ by one step
    assert_all_close(actual, expected, rtol=2e-2, atol=2e-2)
    stats = EdgeStats()
    edge_attention(*inputs[:4], graph, mode=mode, bias=inputs[4], ebt="edge", ebt_params=inputs[5], clamp=5.0,
                   stats=stats, backend="cpu")
    _, edge_out, raw = cpu_backend.run_cpu_backend(
        *inputs[:4], graph, mode=mode, clamp=5.0, bias=inputs[4], ebt="edge", ebt_params=inputs[5],
        mantissa_bits=7, tap="edge",
    )
    assert_stats_equal(raw, reduce_rows(edge_out.reshape(edge_out.shape[0], -1), 7))
    assert torch.equal(stats.hist_abs.counts, raw.hist_abs)


def test_deterministic_across_runs_and_thread_counts():
    gen = torch.Generator().manual_seed(16)
    num_nodes, num_edges = 3000, 24000  # several work blocks
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    edge_index[1, :2000] = 0  # a hub
    graph = magnn.Graph(edge_index, num_nodes)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            for mode, ebt in (("gt", "edge"), ("additive", "slot")):
                inputs = make_inputs(graph, heads=2, head_dim=8, dtype=torch.float32, ebt=ebt, bias="edge", seed=17)
                runs.append((count, mode, forward_backward(inputs, graph, "cpu", mode=mode, ebt=ebt)))
    finally:
        torch.set_num_threads(threads)
    for (_, mode, first), (_, other_mode, second) in zip(runs[:2], runs[2:4]):
        assert mode == other_mode and all(torch.equal(a, b) for a, b in zip(first, second))
    for (_, _, first), (_, _, second) in zip(runs[2:4], runs[4:6]):
        assert all(torch.equal(a, b) for a, b in zip(first, second))


# -- statistics ----------------------------------------------------------------------
def stats_inputs(dtype=torch.float32, seed=18, heads=8, head_dim=8):
    graph = tricky_graph(num_nodes=60, num_random=400, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    n, m = graph.num_nodes, graph.num_edges
    q, k, v = (torch.randn(n, heads, head_dim, generator=gen).to(dtype) for _ in range(3))
    e = torch.randn(m, heads, head_dim, generator=gen).to(dtype)
    return graph, q, k, v, e


@pytest.mark.parametrize("mantissa_bits", (7, 0, 3, 12))
def test_gt_stats_are_bitwise_the_references(mantissa_bits):
    # gt scores are products only, computed in the reference's order: equal bit for bit
    graph, q, k, v, e = stats_inputs()
    e[5] *= 1e4  # a massive edge
    options = dict(mode="gt", clamp=None, bias=None, ebt=None, ebt_params=None, mantissa_bits=mantissa_bits, tap="edge")
    _, edge_ref, raw_ref = run_torch_backend(q, k, v, e, graph, **options)
    _, edge_cpu, raw_cpu = cpu_backend.run_cpu_backend(q, k, v, e, graph, **options)
    assert torch.equal(edge_cpu, edge_ref)
    assert_stats_equal(raw_cpu, raw_ref)
    assert int(raw_cpu.argmax) // (8 * 8) == 5

    collected = {}
    for backend in ("torch", "cpu"):
        stats = EdgeStats(mantissa_bits=mantissa_bits, keep_edge_ratio=True)
        edge_attention(q, k, v, e, graph, mode="gt", stats=stats, backend=backend)
        collected[backend] = stats
    assert collected["cpu"].to_dict() == collected["torch"].to_dict()
    assert torch.equal(collected["cpu"].edge_ratio, collected["torch"].edge_ratio)


@pytest.mark.parametrize("mode,ebt,dtype", [
    ("gt", "edge", torch.float32), ("additive", None, torch.float32), ("additive", "slot", torch.float64),
    ("gt", "slot", torch.bfloat16), ("additive", "edge", torch.float16),
])
def test_stats_equal_reduce_rows_of_the_output(mode, ebt, dtype):
    graph, q, k, v, e = stats_inputs(dtype)
    params = tuple(torch.randn(8, 8).to(dtype) for _ in range(3)) if ebt else None
    _, edge_out, raw = cpu_backend.run_cpu_backend(
        q, k, v, e, graph, mode=mode, clamp=None, bias=None, ebt=ebt, ebt_params=params, mantissa_bits=7, tap="edge"
    )
    assert_stats_equal(raw, reduce_rows(edge_out.reshape(edge_out.shape[0], -1), 7))


def test_stats_with_nan_ties_and_zero_rows():
    graph, q, k, v, e = stats_inputs(heads=3, head_dim=5)
    e = e.round()  # many ties and zeros: exercises lower medians and first-occurrence argmax
    e[::9, 0, 0] = float("nan")  # some NaN channels
    e[4] = float("nan")  # an all-NaN row
    e[7] = 0.0  # an all-zero row: median 0 -> 2**-126
    e[11, 1, 2] = -50.0
    e[23, 2, 1] = 50.0  # the same |max| later in the caller's order
    k = k.abs() + 1
    q = q.abs() + 1
    for mode in MODES:
        options = dict(mode=mode, clamp=None, bias=None, ebt=None, ebt_params=None, mantissa_bits=7, tap="edge")
        node_cpu, edge_out, raw = cpu_backend.run_cpu_backend(q, k, v, e, graph, **options)
        node_ref, edge_ref, _ = run_torch_backend(q, k, v, e, graph, **options)
        torch.testing.assert_close(edge_out, edge_ref, equal_nan=True)
        torch.testing.assert_close(node_cpu, node_ref, equal_nan=True)
        expected = reduce_rows(edge_out.reshape(edge_out.shape[0], -1), 7)
        assert_stats_equal(raw, expected)
        assert int(raw.nan_count) > 0
        assert torch.isnan(raw.row_ratio[4]) and float(raw.row_max_abs[4]) == -1.0
    # gt: the two |50| products tie; the earlier edge wins
    _, edge_out, raw = cpu_backend.run_cpu_backend(q, k, v, e, graph, mode="gt", clamp=None, bias=None, ebt=None,
                                                   ebt_params=None, mantissa_bits=7, tap="edge")
    flat = edge_out.reshape(-1).float().abs().nan_to_num(-1.0)
    assert int(raw.argmax) == int(torch.argmax(flat))


def test_node_tap():
    graph, q, k, v, e = stats_inputs()
    stats = EdgeStats(tap="node")
    node_out, _ = edge_attention(q, k, v, e, graph, mode="additive", stats=stats, backend="cpu")
    expected = EdgeStats(tap="node")
    expected.add(reduce_rows(node_out.reshape(node_out.shape[0], -1), 7), heads=8)
    assert stats.to_dict() == expected.to_dict()
    assert stats.rows == graph.num_nodes


def test_statistics_do_not_change_outputs():
    graph, q, k, v, e = stats_inputs()
    for mode in MODES:
        plain = edge_attention(q, k, v, e, graph, mode=mode, backend="cpu")
        with_stats = edge_attention(q, k, v, e, graph, mode=mode, stats=EdgeStats(), backend="cpu")
        assert all(torch.equal(a, b) for a, b in zip(plain, with_stats))


def test_layer_uses_cpu_backend_end_to_end():
    layer = FusedEdgeAttention(6, heads=2, head_dim=4, edge_dim=3, mode="gt", ebt="slot", clamp=5.0,
                                            backend="cpu")
    graph = tricky_graph(seed=19)
    x = torch.randn(graph.num_nodes, 6)
    edge_attr = torch.randn(graph.num_edges, 3)
    x_out, e_out = layer(x, graph, edge_attr)
    (x_out.sum() + e_out.pow(2).sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert math.isfinite(float(x_out.detach().sum()))


def opcheck_inputs(seed=3, num_nodes=7, num_edges=20):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    graph = magnn.Graph(edge_index, num_nodes).prepare()
    q, k, v = (torch.randn(num_nodes, 2, 4, generator=gen) for _ in range(3))
    e = torch.randn(num_edges, 2, 4, generator=gen)
    bias = torch.randn(num_edges, 2, generator=gen)
    params = tuple(torch.randn(2, 4, generator=gen) for _ in range(3))
    return graph, q, k, v, e, bias, params


def test_ops_follow_the_contract():
    fwd, bwd = torch.ops.magnn_cpu.edge_attention_fwd.default, torch.ops.magnn_cpu.edge_attention_bwd.default
    assert [a.name for a in fwd._schema.arguments] == list(contract.FORWARD_ARGS)
    assert [a.name for a in bwd._schema.arguments] == list(contract.BACKWARD_ARGS)
    assert len(fwd._schema.returns) == len(contract.ForwardResult._fields)
    assert len(bwd._schema.returns) == len(contract.BackwardResult._fields)
    graph, q, k, v, e, bias, params = opcheck_inputs()
    result = cpu_backend.edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None,
                                            bias, *params, None, None, "additive", "edge", None, 0.0, 0, 7)
    assert isinstance(result, contract.ForwardResult)
    assert result.lse.shape == (7, 2, 2) and result.hist_abs.shape == (magnn.core.binning.num_bins(7),)
    assert result.row_ratio.shape == (20,) and result.argmax.dtype == torch.int64
    with pytest.raises(RuntimeError, match="unknown ebt"):
        cpu_backend.edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None,
                                       None, None, None, None, None, None, "gt", "bogus", None, 0.0,
                                       0, -1)
    # no reverse CSR at call time: the forward runs, a backward explains what is missing
    leaf = q.clone().requires_grad_()
    outputs = torch.ops.magnn_cpu.edge_attention_fwd(leaf, k, v, e, graph.rowptr, graph.col, graph.perm,
                                                     None, None, None, None, None, None, None, None, None, "gt", "none", None,
                                                     0.0, 0, -1)
    with pytest.raises(RuntimeError, match="reverse CSR"):
        outputs[0].sum().backward()


def test_fake_impls_match_and_torch_compile_traces_the_cpu_backend():
    """opcheck compares the fake impls with the real ops and checks the torch.library
    autograd registration; compile must equal eager."""

    graph, q, k, v, e, bias, params = opcheck_inputs()
    reverse = (graph.rev_rowptr, graph.rev_col, graph.rev_perm)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, e, bias, *params)]
    fwd_args = (*leaves[:4], graph.rowptr, graph.col, graph.perm, *reverse, *leaves[4:], None, None, "gt", "slot", 2.0, 0.0, 0,
                7)
    torch.library.opcheck(torch.ops.magnn_cpu.edge_attention_fwd.default, fwd_args)
    no_stats = (q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None, None, None, None, None,
                None, None, "additive", "none", None, 0.0, 0, -1)
    torch.library.opcheck(torch.ops.magnn_cpu.edge_attention_fwd.default, no_stats,
                          test_utils=("test_schema", "test_faketensor"))
    result = cpu_backend.edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, *reverse,
                                            bias, *params, None, None, "gt", "slot", 2.0, 0.0, 0, 7)
    bwd_args = (torch.randn_like(q), torch.randn_like(e), torch.randn_like(result.lse), q, k, v, e, result.lse,
                result.node_out, graph.rowptr, graph.col, graph.perm, *reverse, bias, *params, None, None, "gt", "slot", 2.0,
                0.0, 0)
    torch.library.opcheck(torch.ops.magnn_cpu.edge_attention_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))

    def layer(q, k, v, e):
        node_out, edge_out = edge_attention(q, k, v, e, graph, ebt="slot", ebt_params=params, bias=bias,
                                            clamp=2.0, backend="cpu")
        return node_out.square().sum() + edge_out.sum()

    def layer_lse(q, k, v, e):
        node_out, _, _, lse = cpu_backend.run_cpu_backend(
            q, k, v, e, graph, mode="additive", clamp=None, bias=bias, ebt="edge", ebt_params=params,
            mantissa_bits=None, tap="edge", return_lse=True)
        return node_out.sum() + lse.sum()

    for function in (layer, layer_lse):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, e)]
        eager = function(*leaves)
        eager_grads = torch.autograd.grad(eager, leaves)
        compiled = torch.compile(function, backend="aot_eager", fullgraph=True)
        traced = compiled(*leaves)
        traced_grads = torch.autograd.grad(traced, leaves)
        torch.testing.assert_close(traced, eager)
        for a, b in zip(traced_grads, eager_grads):
            torch.testing.assert_close(a, b)


# -- log-sum-exp (return_lse) ------------------------------------------------------------
def reference_lse(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params):
    """[N, H] log-sum-exp of each node's (clamped) logits, the EBT slot's included, with torch ops."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    src, dst = graph.src, graph.dst
    q_dst, k_src = q[dst], k[src]
    feat = e
    if ebt == "edge":
        k_b, e_b, _ = ebt_params
        beta = (q * k_b).sum(-1, keepdim=True) * scale  # [N, H, 1]
        shift = (beta * e_b)[dst]
    if mode == "gt":
        score = q_dst * k_src * feat * scale
        if ebt == "edge":
            score = score + shift
        logits = score.sum(-1)
    else:
        if ebt == "edge":
            feat = feat + shift
        logits = (q_dst * (k_src + feat)).sum(-1) * scale
    if bias is not None:
        logits = logits + (bias if bias.dim() == 2 else bias[:, None])
    slot = None
    if ebt == "slot":
        k_b, e_b, _ = ebt_params
        slot = ((q * (k_b * e_b)) if mode == "gt" else (q * (k_b + e_b))).sum(-1) * scale  # [N, H]
    if clamp is not None:
        logits = logits.clamp(-clamp, clamp)
        slot = None if slot is None else slot.clamp(-clamp, clamp)
    rows = []
    for node in range(graph.num_nodes):
        row = logits[dst == node]  # [deg, H]
        if slot is not None:
            row = torch.cat([row, slot[node][None]])
        rows.append(torch.logsumexp(row, dim=0))  # -inf for an empty row
    return torch.stack(rows)


def lse_and_node_grads(inputs, graph, backend, *, seed=21, **options):
    """lse, node_out and the gradients of every input of sum(g_lse * lse) + sum(g_node * node_out)."""
    q, k, v, e, bias, params = inputs
    leaves = [t for t in (q, k, v, e, bias, *(params or ())) if t is not None]
    if backend == "cpu":
        node_out, _, _, lse = cpu_backend.run_cpu_backend(
            q, k, v, e, graph, bias=bias, ebt_params=params, mantissa_bits=None, tap="edge", return_lse=True,
            **options)
    else:
        node_out, _, _ = run_torch_backend(q, k, v, e, graph, bias=bias, ebt_params=params, mantissa_bits=None,
                                           tap="edge", **options)
        lse = reference_lse(q, k, v, e, graph, bias=bias, ebt_params=params, **options)
    gen = torch.Generator().manual_seed(seed)
    grad_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(lse.dtype)
    grad_node = torch.randn(node_out.shape, generator=gen, dtype=torch.float64).to(node_out.dtype)
    finite = torch.isfinite(lse)  # an empty row's -inf is a constant
    loss = (lse[finite] * grad_lse[finite]).sum() + (node_out * grad_node).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return [lse.detach(), node_out.detach(), *grads]


@pytest.mark.parametrize("mode,ebt,clamp,bias", list(itertools.product(MODES, EBTS, CLAMPS, ("edge_head",))) + [
    ("gt", None, None, "edge"), ("additive", "slot", None, None)])
def test_lse_matches_logsumexp_of_the_logits(mode, ebt, clamp, bias):
    graph = tricky_graph(seed=20)
    inputs = make_inputs(graph, bias=bias, ebt=ebt, seed=22)
    options = dict(mode=mode, clamp=clamp, ebt=ebt)
    expected = lse_and_node_grads(inputs, graph, "torch", **options)
    actual = lse_and_node_grads(inputs, graph, "cpu", **options)
    assert actual[0].shape == (graph.num_nodes, 3) and actual[0].dtype == torch.float64
    assert_all_close(actual, expected, rtol=1e-9, atol=1e-11)
    empty = graph.in_degree == 0
    assert empty.any()
    if ebt == "slot":
        assert torch.isfinite(actual[0]).all()
    else:
        assert torch.equal(actual[0][empty], torch.full_like(actual[0][empty], float("-inf")))
        assert torch.isfinite(actual[0][~empty]).all()
    assert all(not torch.isnan(t).any() for t in actual[1:])


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_lse_dtype_and_float32_values(dtype):
    graph = tricky_graph(seed=23)
    inputs = make_inputs(graph, heads=4, head_dim=8, dtype=dtype, bias="edge", ebt="slot", seed=24)
    options = dict(mode="gt", clamp=5.0, ebt="slot")
    actual = lse_and_node_grads(inputs, graph, "cpu", **options)
    assert actual[0].dtype == torch.float32  # the accumulation dtype
    as64 = tuple(None if t is None else (tuple(p.detach().double().requires_grad_() for p in t)
                                          if isinstance(t, tuple) else t.detach().double().requires_grad_())
                 for t in inputs)
    expected = lse_and_node_grads(as64, graph, "torch", **options)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(actual[0].double(), expected[0], rtol=tolerance, atol=tolerance)
    for got, want in zip(actual[2:], expected[2:]):
        torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * (1 + float(want.abs().max())))


def test_lse_of_masked_rows_is_minus_inf_with_zero_gradients():
    graph = tricky_graph(seed=25)
    for ebt in (None, "slot"):
        q, k, v, e, bias, params = make_inputs(graph, bias="edge_head", ebt=ebt, seed=26)
        masked = graph.dst == 3  # every edge into node 3, all heads
        with torch.no_grad():
            bias[masked] = float("-inf")
            bias[graph.dst == 4, 1] = float("-inf")  # node 4: head 1 only
        _, _, _, lse = cpu_backend.run_cpu_backend(q, k, v, e, graph, mode="gt", clamp=None, bias=bias, ebt=ebt,
                                                   ebt_params=params, mantissa_bits=None, tap="edge", return_lse=True)
        expected = reference_lse(q, k, v, e, graph, mode="gt", clamp=None, bias=bias, ebt=ebt, ebt_params=params)
        torch.testing.assert_close(lse, expected, rtol=1e-12, atol=1e-12)
        if ebt is None:
            assert torch.isinf(lse[3]).all() and lse[4, 1] == float("-inf") and torch.isfinite(lse[4, 0])
        lse[torch.isfinite(lse)].sum().backward()
        for tensor in (q, k, v, e, bias, *(params or ())):
            assert not torch.isnan(tensor.grad).any()
        assert torch.equal(bias.grad[masked], torch.zeros_like(bias.grad[masked]))
        if ebt is None:
            assert torch.equal(q.grad[3], torch.zeros_like(q.grad[3]))


@pytest.mark.parametrize("mode,ebt,clamp,bias", [
    ("gt", "slot", 0.7, "edge_head"), ("additive", "slot", None, "edge"), ("gt", "edge", None, None),
    ("additive", "edge", 0.7, "edge_head"), ("gt", None, None, "edge")])
def test_lse_gradcheck_float64(mode, ebt, clamp, bias):
    graph = tricky_graph(num_nodes=9, num_random=12, seed=27)
    q, k, v, e, bias_tensor, params = make_inputs(graph, heads=2, head_dim=3, bias=bias, ebt=ebt, seed=28)
    leaves = [t for t in (q, k, v, e, bias_tensor, *(params or ())) if t is not None]
    count = 4 + (bias_tensor is not None)
    attended = (graph.in_degree > 0) if ebt != "slot" else torch.ones(graph.num_nodes, dtype=torch.bool)

    def call(*tensors):
        b = tensors[4] if bias_tensor is not None else None
        p = tuple(tensors[count:]) if ebt is not None else None
        node_out, _, _, lse = cpu_backend.run_cpu_backend(
            *tensors[:4], graph, mode=mode, clamp=clamp, bias=b, ebt=ebt, ebt_params=p, mantissa_bits=None,
            tap="edge", return_lse=True)
        return lse[attended], node_out

    assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def median_edge_case_rows(num_rows: int, channels: int, seed: int = 3) -> torch.Tensor:
    """[num_rows, channels] float32 rows that stress the per-row median: heavy-tailed values, ties,
    +-0, denormals, NaN (some, most, all), +-inf, all-equal rows, a single outlier."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(num_rows, channels, generator=gen) * torch.randn(num_rows, channels, generator=gen).exp()
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -3e-42, 1.0, -1.0, 2.0**-126])
    for row in range(num_rows):
        kind = row % 10
        if kind == 1:  # ties: few distinct magnitudes, both signs
            rows[row] = torch.randint(-3, 4, (channels,), generator=gen).float() * 0.25
        elif kind == 2:  # all equal
            rows[row] = -1.5
        elif kind == 3:  # +-0 and denormals around a few normals
            rows[row] = specials[torch.tensor([0, 1, 5, 6, 9])[torch.randint(0, 5, (channels,), generator=gen)]]
            rows[row, :3] = torch.tensor([1.0, -2.0, 3.0])
        elif kind == 4:  # some NaN and infinities
            picks = torch.randint(0, channels, (max(1, channels // 4),), generator=gen)
            rows[row, picks] = specials[torch.randint(2, 5, (picks.numel(),), generator=gen)]
        elif kind == 5:  # all NaN but one
            rows[row] = float("nan")
            rows[row, channels // 2] = -7.0
        elif kind == 6:  # all NaN
            rows[row] = float("nan")
        elif kind == 7:  # one massive value over an all-zero row
            rows[row] = 0.0
            rows[row, -1] = 1e6
        elif kind == 8:  # all zero (median 0 -> 2**-126) with +-0 mixed
            rows[row] = specials[torch.randint(0, 2, (channels,), generator=gen)]
    return rows


@pytest.mark.parametrize("portable", (False, True), ids=("native", "portable"))
@pytest.mark.parametrize("heads", (1, 4, 5, 16, 22))
def test_row_median_edge_cases_match_reduce_rows(heads, portable, monkeypatch):
    # head_dim 4: channels 4 (scalar path), 16, 20, 64, 88 (the AVX-512 selection where the CPU has it);
    # MAGNN_CPU_NO_AVX512=1 forces the portable code, read when each forward starts
    if portable:
        monkeypatch.setenv("MAGNN_CPU_NO_AVX512", "1")
    head_dim = 4
    channels = heads * head_dim
    rows = median_edge_case_rows(200, channels)
    num_nodes = 7
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, num_nodes, (2, rows.shape[0]), generator=gen)
    graph = magnn.Graph(edge_index, num_nodes)
    q = torch.ones(num_nodes, heads, head_dim)
    k = torch.ones(num_nodes, heads, head_dim)
    v = torch.randn(num_nodes, heads, head_dim, generator=gen)
    e = rows.reshape(-1, heads, head_dim)  # gt: edge_out = q * k * e / sqrt(4) = e / 2, special values kept
    for mantissa_bits in (7, 2):
        _, edge_out, raw = cpu_backend.run_cpu_backend(
            q, k, v, e, graph, mode="gt", clamp=None, bias=None, ebt=None, ebt_params=None,
            mantissa_bits=mantissa_bits, tap="edge",
        )
        flat = edge_out.reshape(edge_out.shape[0], -1)
        assert torch.equal(flat.isnan(), rows.isnan())  # the special values reached the statistics
        assert_stats_equal(raw, reduce_rows(flat, mantissa_bits))


# -- the standalone row reduction (magnn_cpu::reduce_rows, what collect's PyG hooks use) --------------

@pytest.mark.parametrize("portable", (False, True), ids=("native", "portable"))
@pytest.mark.parametrize("channels", (1, 4, 20, 64, 88))
def test_reduce_rows_op_equals_torch_reduce_rows(channels, portable, monkeypatch):
    if portable:
        monkeypatch.setenv("MAGNN_CPU_NO_AVX512", "1")
    def edge_case_rows(count, seed):
        rows = median_edge_case_rows(200, max(count, 4), seed=seed)[:, :count]
        # under 4 channels a row's median can be inf, whose inf / inf ratio the torch reference cannot bin
        return rows.nan_to_num(nan=float("nan"), posinf=6e4, neginf=-6e4) if count < 4 else rows

    rows = edge_case_rows(channels, channels).contiguous()
    for mantissa_bits in (7, 0, 10):
        assert_stats_equal(cpu_backend.reduce_rows_cpu(rows, mantissa_bits), reduce_rows(rows, mantissa_bits))
    # dtypes are read as stored and converted to float32 row by row, like reduce_rows' .to(float32)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        typed = rows.to(dtype)
        assert_stats_equal(cpu_backend.reduce_rows_cpu(typed, 7), reduce_rows(typed, 7))
    # a non-contiguous view and a [rows, H, D] tensor (flattened)
    wide = edge_case_rows(2 * channels, 1)[:, ::2]
    assert_stats_equal(cpu_backend.reduce_rows_cpu(wide, 5), reduce_rows(wide, 5))
    assert_stats_equal(cpu_backend.reduce_rows_cpu(rows.reshape(200, 1, channels), 7), reduce_rows(rows, 7))


@pytest.mark.parametrize("channels", (32, 64))
def test_batched_rows_equal_the_row_by_row_path(channels, monkeypatch):
    # Rows of exactly 32 or 64 channels without NaN are reduced 16 at a time by a transposed
    # sorting network (AVX-512 CPUs); rows with NaN, the last partial batch and other widths go
    # row by row. Both must give the same bits as the portable code and as the torch reference.
    gen = torch.Generator().manual_seed(11)
    count, half = 16 * 13 + 5, channels // 2  # a partial batch left at the end
    rows = torch.randn(count, channels, generator=gen) * torch.randn(count, channels, generator=gen).exp()
    rows[3] = 0.0  # median 0 -> 2**-126, ratios up to 1e38 / 2**-126 = inf
    rows[3, :5] = torch.tensor([1e38, -3e38, 1.0, 1e-40, -1e-45])
    rows[17, half + 8:] = float("nan")  # NaN rows between batched ones
    rows[18, 7] = float("nan")
    rows[50] = torch.randint(-2, 3, (channels,), generator=gen).float()  # ties and +-0
    rows[51] = 3.4e38 * torch.rand(channels, generator=gen)  # near float32's max: ratios overflow to inf
    rows[52, 1::3] = -float("inf")  # some infinities, no NaN
    rows[count - 2] = float("nan")
    # the network sorts the two halves of the channels apart: rows where the lower median is the
    # top of one half, or the only value of the other half among the smallest half
    ascending = torch.arange(float(channels))
    rows[70], rows[71], rows[72], rows[73] = ascending, ascending.flip(0), ascending, ascending.flip(0)
    rows[72, half + 8] = 0.5
    rows[73, 10] = -0.25
    # the maximum tied between a batched row and a later row with a NaN, which is reduced first
    rows[20, 5] = rows[25, 2] = float("inf")
    rows[25, 9] = float("nan")
    native = cpu_backend.reduce_rows_cpu(rows, 7)
    assert int(native.argmax) == 20 * channels + 5  # the first one wins
    assert_stats_equal(native, reduce_rows(rows, 7))
    for mantissa_bits in (7, 0, 12):
        monkeypatch.delenv("MAGNN_CPU_NO_AVX512", raising=False)
        native = cpu_backend.reduce_rows_cpu(rows, mantissa_bits)
        monkeypatch.setenv("MAGNN_CPU_NO_AVX512", "1")
        assert_stats_equal(native, cpu_backend.reduce_rows_cpu(rows, mantissa_bits))
    # more than half the row infinite: the median is inf and inf / inf is NaN (binned with its sign
    # cleared), which the torch reference cannot bin; the two C++ paths must still agree
    rows[60:90, :half + 8] = float("inf")
    monkeypatch.delenv("MAGNN_CPU_NO_AVX512")
    native = cpu_backend.reduce_rows_cpu(rows, 7)
    assert native.row_ratio[60:90].isnan().all()
    monkeypatch.setenv("MAGNN_CPU_NO_AVX512", "1")
    assert_stats_equal(native, cpu_backend.reduce_rows_cpu(rows, 7))


def test_reduce_rows_op_empty_shapes_and_thread_counts():
    for shape in ((0, 8), (0, 0)):
        rows = torch.empty(shape)
        assert_stats_equal(cpu_backend.reduce_rows_cpu(rows, 7), reduce_rows(rows, 7))
    no_channels = cpu_backend.reduce_rows_cpu(torch.empty(5, 0), 7)  # rows without values: all-NaN rows
    assert no_channels.row_ratio.isnan().all() and no_channels.row_ratio.shape == (5,)
    assert int(no_channels.hist_abs.sum()) == int(no_channels.hist_ratio.sum()) == 0 == no_channels.count
    assert int(no_channels.argmax) == -1 and float(no_channels.max_abs) == -1.0
    # several row chunks, the maximum tied across chunks (the first one wins), on 1 and 2 threads
    rows = median_edge_case_rows(9000, 8, seed=5).nan_to_num(nan=float("nan"), posinf=2.0, neginf=-2.0)
    rows[8500, 3] = rows[100, 6] = 1e30
    expected = reduce_rows(rows, 7)
    assert int(expected.argmax) == 100 * 8 + 6
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            assert_stats_equal(cpu_backend.reduce_rows_cpu(rows, 7), expected)
    finally:
        torch.set_num_threads(threads)


def test_reduce_tensor_uses_the_cpu_reduction(monkeypatch):
    from magnn import stats as stats_module

    calls = []
    original = cpu_backend.reduce_rows_cpu
    monkeypatch.setattr(cpu_backend, "reduce_rows_cpu", lambda *args: calls.append(1) or original(*args))
    rows = median_edge_case_rows(50, 12)
    raw = stats_module.reduce_tensor(rows.reshape(50, 3, 4), 7)
    assert calls == [1]
    assert_stats_equal(raw, reduce_rows(rows, 7))
    assert_stats_equal(stats_module.reduce_tensor(rows, 7, backend="torch", chunk_values=12 * 7), raw)
    assert calls == [1]  # backend="torch" never calls it
    with pytest.raises(ValueError, match="backend"):
        stats_module.reduce_tensor(rows, 7, backend="cpu")


def test_edge_stats_add_summarizes_ratios_like_the_torch_path(monkeypatch):
    # EdgeStats.add derives hist_edge_ratio, max_edge_ratio and the massive edges from row_ratio with
    # magnn_cpu::summarize_ratios when the cpu backend is usable: the same numbers as its torch path
    from magnn.stats import reduction as stats_module

    gen = torch.Generator().manual_seed(9)
    rows = 3000
    ratio = (torch.randn(rows, generator=gen) * 3).exp()
    ratio[::11] = float("nan")
    ratio[4], ratio[8] = float("inf"), -float("nan")
    row_max_abs = torch.randn(rows, generator=gen).abs() * 200
    types = torch.randint(0, 4, (rows,), generator=gen)

    usable = stats_module.cpu_reduction_usable
    cpu_path = [True]
    monkeypatch.setattr(stats_module, "cpu_reduction_usable",
                        lambda tensor, build=True: cpu_path[0] and usable(tensor, build))

    def collected(fast: bool, values, **options):
        cpu_path[0] = fast
        raw = RawStats(hist_abs=torch.zeros(2 ** 15, dtype=torch.long), hist_ratio=torch.zeros(2 ** 15, dtype=torch.long),
                       row_ratio=values, nan_count=torch.tensor(0), max_abs=torch.tensor(-1.0),
                       argmax=torch.tensor(-1), count=values.numel() * 4, channels=4,
                       row_max_abs=row_max_abs[:values.numel()])
        stats = EdgeStats(threshold=20.0, **options)
        stats.add(raw, 2)
        return stats

    calls = []
    original = cpu_backend.summarize_ratios_cpu
    monkeypatch.setattr(cpu_backend, "summarize_ratios_cpu", lambda *args: calls.append(1) or original(*args))
    for values in (ratio, ratio[:0], torch.full((5,), float("nan"))):
        for options in ({}, {"min_abs": 100.0}, {"edge_types": types[:values.numel()], "mantissa_bits": 3}):
            fast, slow = collected(True, values, **options), collected(False, values, **options)
            assert torch.equal(fast.hist_edge_ratio.counts, slow.hist_edge_ratio.counts)
            assert fast.ma_edges == slow.ma_edges and fast.type_ma_edges == slow.type_ma_edges
            assert fast.max_edge_ratio == slow.max_edge_ratio or (
                math.isnan(fast.max_edge_ratio) and math.isnan(slow.max_edge_ratio))
    assert len(calls) == 9  # the cpu path ran for every fast collector
    assert collected(True, ratio).ma_edges == int((ratio > 20.0).sum()) > 0
    with_min_abs = collected(True, ratio, min_abs=100.0)
    assert with_min_abs.ma_edges == int(((ratio > 20.0) & (row_max_abs > 100.0)).sum()) < int((ratio > 20.0).sum())
