"""The learned sink logit and the attention gate inside the Triton kernels (SPEC §3, "Sink and gate").

The fused `magnn_triton::` ops (run in Triton's interpreter here) against the pure-PyTorch reference
in float64, values and gradients (q, k, v, e, bias, EBT parameters, sink, gate): sink only, gate only,
both; gt and additive; no EBT, EBT edge, EBT slot; on each forward kernel (the packed short-row
kernel, the row kernel, and rows split into chunks merged afterwards); isolated nodes, self loops and
duplicate edges in every graph, an empty graph, huge logits, dropout, the in-kernel projection,
statistics, half precision; and the op itself against the closed form of the sink's softmax, so the
sink is known to be inside the kernel (the op has no epilogue to hide behind)."""
import math

import pytest
import torch

from helpers import assert_compiles_like_eager, random_graph, random_inputs, require_backend
from magnn import EdgeStats, Graph
from magnn.functional import edge_attention

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE = torch.device("cpu")  # the interpreter runs the kernels on CPU tensors
HEADS, HEAD_DIM, NODES = 2, 4, 9
WHICH = ("sink", "gate", "both")


@pytest.fixture(autouse=True)
def _triton_available():
    require_backend("triton", DEVICE)


class _Launches:
    """Counts the launches of a Triton kernel (or calls of a launcher function) it wraps."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def __getitem__(self, grid):
        launch = self.target[grid]

        def run(*args, **kwargs):
            self.calls += 1
            return launch(*args, **kwargs)

        return run

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.target(*args, **kwargs)


@pytest.fixture
def kernel_path(monkeypatch):
    """Select the forward kernel: 'packed' (short rows several to a tile), 'row' (one row per work
    item) or 'split' (rows cut into 2-edge chunks, merged). Returns a check that the path ran."""
    import magnn_kernels.edge_attention_fwd as fwd
    from magnn_kernels import edge_attention_packed as packing
    from magnn_kernels import utils

    def select(path: str):
        packed = _Launches(packing.launch_packed)
        merged = _Launches(fwd._edge_attention_fwd_merge_kernel)
        monkeypatch.setattr(packing, "launch_packed", packed)
        monkeypatch.setattr(fwd, "_edge_attention_fwd_merge_kernel", merged)
        if path != "packed":
            monkeypatch.setattr(packing, "PACK_MEAN_DEGREE", 0.0)
        if path == "split":
            monkeypatch.setattr(utils, "ROW_SPLIT", 2)

        def ran() -> bool:
            return {"packed": packed.calls > 0, "row": packed.calls == 0 and merged.calls == 0,
                    "split": merged.calls > 0}[path]

        return ran

    return select


def _case(seed, *, nodes=NODES, edges=18, ebt=None, bias="edge_head", scale=1.0, sink_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    edge_index = random_graph(nodes, edges, generator=gen, isolated=2, self_loops=2, duplicates=3)
    q, k, v, e, b, params = random_inputs(nodes, edge_index, HEADS, HEAD_DIM, generator=gen, bias=bias, ebt=ebt,
                                          scale=scale)
    sink = torch.randn(HEADS, generator=gen, dtype=torch.float64) * sink_scale
    gate = torch.randn(nodes, HEADS, generator=gen, dtype=torch.float64)
    return edge_index, [q, k, v, e], b, params, sink, gate


def _run(backend, dtype, case, which, *, extra=None, **options):
    """(node_out, edge_out, lse) and the gradients of a fixed random loss of all three with respect
    to every input (q, k, v, e, bias, EBT parameters, extra tensors by name, sink, gate)."""
    edge_index, tensors, b, params, sink, gate = case
    leaf = lambda t: None if t is None else t.detach().to(dtype).requires_grad_()  # noqa: E731
    tensors = [leaf(t) for t in tensors]
    b = leaf(b)
    params = None if params is None else tuple(leaf(p) for p in params)
    extra = {name: leaf(t) for name, t in (extra or {}).items()}
    s = leaf(sink) if which in ("sink", "both") else None
    g = leaf(gate) if which in ("gate", "both") else None
    graph = Graph(edge_index, tensors[0].shape[0])
    node_out, edge_out, lse = edge_attention(*tensors, graph, bias=b, ebt_params=params, sink=s, gate=g,
                                             return_lse=True, backend=backend, **extra, **options)
    gen = torch.Generator().manual_seed(7)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
               for t in (node_out, edge_out, finite_lse))
    leaves = [t for t in (*tensors, b, *(params or ()), *extra.values(), s, g) if t is not None]
    return (node_out, edge_out, lse), torch.autograd.grad(loss, leaves)


def _assert_close(got, want, values=2e-5, grads=1e-4):
    (outs, grads_got), (outs_want, grads_want) = got, want
    for a, b in zip(outs, outs_want):
        torch.testing.assert_close(a.double(), b.double(), rtol=values, atol=values)
    assert len(grads_got) == len(grads_want)
    for a, b in zip(grads_got, grads_want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), rtol=grads, atol=grads)


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("ebt,path", [(None, "packed"), ("edge", "row"), ("slot", "row"), (None, "split"),
                                      ("slot", "split")])
def test_fused_sink_and_gate_match_the_reference(kernel_path, which, mode, ebt, path):
    case = _case(1, ebt=ebt)
    options = dict(mode=mode, ebt=ebt, clamp=2.5 if ebt == "slot" else None)
    ran = kernel_path(path)
    got = _run("triton", torch.float32, case, which, **options)
    assert ran()
    _assert_close(got, _run("torch", torch.float64, case, which, **options))


def _plain_op(q, k, v, e, graph, **kwargs):
    from magnn_kernels.edge_attention import edge_attention as op
    return op(q, k, v, e, graph.rowptr, graph.col, graph.perm, **kwargs)


@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("path", ["packed", "row", "split"])
def test_op_applies_the_sink_softmax_and_the_gate_in_the_kernel(kernel_path, mode, path):
    """torch.ops.magnn_triton.edge_attention_fwd itself (no functional epilogue): lse is
    logaddexp(lse_own, c) with its row max >= c, node_out = own node_out * sigmoid(lse_own - c) *
    sigmoid(gate) (the closed form of a softmax with one more term of value 0, gated), and a node
    without edges stores lse = (c, 0) and node_out 0 exactly."""
    edge_index, tensors, _, _, sink, gate = _case(2)
    graph = Graph(edge_index, NODES)
    q, k, v, e = (t.detach().float() for t in tensors)
    sink, gate = sink.float(), gate.float()
    ran = kernel_path(path)
    plain = _plain_op(q, k, v, e, graph, mode=mode)
    fused = torch.ops.magnn_triton.edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None,
                                                      None, None, None, None, None, sink, gate, mode, "none", None,
                                                      0.0, 0, -1)
    assert ran()
    node_out, edge_out, lse = fused[:3]
    own = (plain.lse[:, 0] + plain.lse[:, 1]).double()
    own = torch.where(plain.lse[:, 0] == math.inf, torch.full_like(own, -math.inf), own)
    want_lse = torch.logaddexp(own, sink.double().expand_as(own))
    torch.testing.assert_close((lse[:, 0] + lse[:, 1]).double(), want_lse, rtol=1e-6, atol=1e-6)
    assert (lse[:, 0] >= sink).all()
    factor = torch.sigmoid(own - sink.double()) * torch.sigmoid(gate.double())
    torch.testing.assert_close(node_out.double(), plain.node_out.double() * factor.unsqueeze(-1), rtol=1e-5,
                               atol=1e-6)
    isolated = torch.arange(NODES - 2, NODES)
    assert torch.equal(lse[isolated, 0], sink.expand(2, HEADS)) and torch.equal(lse[isolated, 1],
                                                                                 torch.zeros(2, HEADS))
    assert torch.equal(node_out[isolated], torch.zeros_like(node_out[isolated]))
    if mode == "additive":  # the message with the sink-inclusive weight
        scale = torch.exp(own - want_lse)[graph.dst].unsqueeze(-1)
        torch.testing.assert_close(edge_out.double(), plain.edge_out.double() * scale, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(edge_out, plain.edge_out)  # the score: no sink, no gate


@pytest.mark.parametrize("path", ["packed", "row", "split"])
def test_neutral_sink_and_gate_leave_the_kernels_bits_unchanged(kernel_path, path):
    """A sink of -inf (no share) and a gate of sigmoid 1 give the very bits of the call without them:
    the sink's term and the gate touch nothing else in the kernels."""
    edge_index, tensors, b, params, _, _ = _case(3, ebt="edge")
    graph = Graph(edge_index, NODES)
    q, k, v, e = (t.detach().float() for t in tensors)
    kwargs = dict(mode="additive", bias=b.detach().float(), mantissa_bits=7)
    ran = kernel_path(path)
    plain = _plain_op(q, k, v, e, graph, **kwargs)
    neutral = _plain_op(q, k, v, e, graph, sink=torch.full((HEADS,), -math.inf),
                        gate=torch.full((NODES, HEADS), 200.0), **kwargs)
    assert ran()
    for name, a, b in zip(plain._fields, plain, neutral):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a[~a.isnan()], b[~b.isnan()])), name


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_empty_graph_attends_only_to_the_sink(mode):
    q = torch.randn(3, HEADS, HEAD_DIM, requires_grad=True)
    k, v = (torch.randn(3, HEADS, HEAD_DIM, requires_grad=True) for _ in range(2))
    e = torch.randn(0, HEADS, HEAD_DIM, requires_grad=True)
    sink = torch.randn(HEADS, requires_grad=True)
    gate = torch.randn(3, HEADS, requires_grad=True)
    empty = torch.zeros(2, 0, dtype=torch.long)
    node_out, edge_out, lse = edge_attention(q, k, v, e, empty, mode=mode, sink=sink, gate=gate, return_lse=True,
                                             backend="triton")
    assert torch.equal(node_out, torch.zeros_like(node_out)) and edge_out.shape == (0, HEADS, HEAD_DIM)
    assert torch.equal(lse, sink.detach().expand(3, HEADS))
    grads = torch.autograd.grad(node_out.square().sum() + (lse * torch.arange(3.0)[:, None]).sum(),
                                (q, k, v, sink, gate))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[:3] + grads[4:])
    assert torch.equal(grads[3], torch.full((HEADS,), 3.0))  # d lse_i / d c = 1 per node: 0 + 1 + 2


@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("sink_scale", [2.0, 40.0])
def test_huge_logits(kernel_path, mode, sink_scale):
    """clamp None with large q . k (inputs x 6, logits in the hundreds) and a sink that is either
    negligible beside them or (x 40) far above a node's own logits: still the reference's softmax."""
    case = _case(4, scale=6.0, sink_scale=sink_scale, bias=None)
    kernel_path("row")
    got = _run("triton", torch.float32, case, "both", mode=mode)
    want = _run("torch", torch.float64, case, "both", mode=mode)
    # float32 logits of size ~300 carry absolute errors ~3e-5: relative tolerances
    _assert_close(got, want, values=2e-4, grads=2e-3)


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_dropout_with_the_same_seed(kernel_path, mode):
    case = _case(5, ebt="edge")
    kernel_path("packed")
    options = dict(mode=mode, ebt="edge", dropout=0.3, seed=11)
    _assert_close(_run("triton", torch.float32, case, "both", **options),
                  _run("torch", torch.float64, case, "both", **options))


@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("path", ["packed", "split"])
def test_in_kernel_projection(kernel_path, mode, path):
    """e_weight= (e = W a + b formed in the kernels): values and gradients of a, W, b, sink, gate."""
    edge_index, tensors, b, params, sink, gate = _case(6, ebt=None)
    gen = torch.Generator().manual_seed(60)
    features = 3
    raw = torch.randn(edge_index.shape[1], features, generator=gen, dtype=torch.float64)
    case = (edge_index, [*tensors[:3], raw], b, params, sink, gate)
    weight = torch.randn(HEADS * HEAD_DIM, features, generator=gen, dtype=torch.float64)
    e_bias = torch.randn(HEADS * HEAD_DIM, generator=gen, dtype=torch.float64)
    ran = kernel_path(path)
    extra = {"e_weight": weight, "e_bias": e_bias}
    got = _run("triton", torch.float32, case, "both", extra=extra, mode=mode)
    assert ran()
    _assert_close(got, _run("torch", torch.float64, case, "both", extra=extra, mode=mode))


def test_statistics_with_a_sink_and_a_gate(kernel_path):
    """gt's edge tap reduces the scores (no sink, no gate in them): the same statistics as without;
    the node tap reduces the gated, sink-scaled node_out that comes back; the op's additive
    statistics are those of the sink-inclusive edge_out it writes."""
    from magnn.core.binning import reduce_rows

    edge_index, tensors, _, _, sink, gate = _case(7)
    tensors = [t.detach().float() for t in tensors]
    sink, gate = sink.float(), gate.float()
    kernel_path("packed")
    plain, fused = EdgeStats(tap="edge"), EdgeStats(tap="edge")
    edge_attention(*tensors, edge_index, stats=plain, backend="triton")
    edge_attention(*tensors, edge_index, sink=sink, gate=gate, stats=fused, backend="triton")
    assert plain.to_dict() == fused.to_dict() and plain.calls == fused.calls == 1
    node_tap = EdgeStats(tap="node")
    node_out, _ = edge_attention(*tensors, edge_index, mode="additive", sink=sink, gate=gate, stats=node_tap,
                                 backend="triton")
    own = reduce_rows(node_out.reshape(NODES, HEADS * HEAD_DIM), 7)
    assert torch.equal(node_tap.hist_abs.counts, own.hist_abs) and node_tap.max_abs == float(own.max_abs)
    graph = Graph(edge_index, NODES)
    result = _plain_op(*tensors, graph, mode="additive", sink=sink, gate=gate, mantissa_bits=7)
    want = reduce_rows(result.edge_out.reshape(graph.num_edges, HEADS * HEAD_DIM), 7)
    assert torch.equal(result.hist_abs, want.hist_abs) and torch.equal(result.hist_ratio, want.hist_ratio)
    assert float(result.max_abs) == float(want.max_abs)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # float32 inputs: the kernels take no float64
def test_float32_gradcheck_of_the_op_with_sink_and_gate():
    """The Triton kernels take no float64 (the reference's float64 gradcheck is in test_mitigation):
    the fused op's gradients of sink, gate, q and e against central differences in float32."""
    gen = torch.Generator().manual_seed(8)
    edge_index = random_graph(4, 5, generator=gen, isolated=1, self_loops=1, duplicates=1)
    graph = Graph(edge_index, 4)
    q, k, v = (torch.randn(4, 1, 2, generator=gen) for _ in range(3))
    e = torch.randn(edge_index.shape[1], 1, 2, generator=gen)
    sink, gate = torch.randn(1, generator=gen), torch.randn(4, 1, generator=gen)
    leaves = [t.requires_grad_() for t in (q, e, sink, gate)]

    def function(q, e, sink, gate):
        node_out, edge_out, lse = edge_attention(q, k, v, e, graph, mode="additive", sink=sink, gate=gate,
                                                 return_lse=True, backend="triton")
        return node_out, edge_out, lse

    assert torch.autograd.gradcheck(function, leaves, eps=1e-2, atol=2e-3, rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_forward(kernel_path, dtype):
    case = _case(9, ebt="slot")
    kernel_path("row")
    options = dict(mode="gt", ebt="slot", clamp=5.0)
    got = _run("triton", dtype, case, "both", **options)
    assert got[0][0].dtype == dtype
    want = _run("torch", torch.float32, case, "both", **options)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)


def test_bipartite_gate_per_destination_node(kernel_path):
    """k, v over N_src sources, q, the gate and the outputs over N_dst destinations (the last one
    without an edge): the reference's values and gradients."""
    gen = torch.Generator().manual_seed(10)
    num_src, num_dst, num_edges = 7, 5, 16
    edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen),
                              torch.randint(0, num_dst - 1, (num_edges,), generator=gen)])
    q = torch.randn(num_dst, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(num_src, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    e = torch.randn(num_edges, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    sink, gate = torch.randn(HEADS, generator=gen, dtype=torch.float64), torch.randn(num_dst, HEADS, generator=gen,
                                                                                     dtype=torch.float64)
    kernel_path("split")
    results = []
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, e, sink, gate)]
        graph = Graph(edge_index, num_dst, num_src_nodes=num_src)
        node_out, edge_out, lse = edge_attention(*leaves[:4], graph, mode="additive", sink=leaves[4], gate=leaves[5],
                                                 return_lse=True, backend=backend)
        assert torch.equal(node_out[-1], torch.zeros_like(node_out[-1]))
        loss = node_out.square().sum() + (edge_out * torch.arange(num_edges)[:, None, None]).sum() + lse.sum()
        results.append((node_out, lse, *torch.autograd.grad(loss, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_op_refuses_sink_and_gate_of_the_wrong_shape():
    """The kernels index sink by head and gate by (destination, head): other shapes are refused
    before any launch, never read out of bounds."""
    edge_index, tensors, _, _, sink, gate = _case(11)
    graph = Graph(edge_index, NODES)
    q, k, v, e = (t.detach().float() for t in tensors)
    with pytest.raises(ValueError, match="sink must be"):
        _plain_op(q, k, v, e, graph, sink=sink.float()[:1])
    with pytest.raises(ValueError, match="gate must be"):
        _plain_op(q, k, v, e, graph, gate=gate.float()[1:])


def test_torch_compile_traces_the_fused_sink_and_gate():
    """torch.compile (fullgraph) through the Triton ops with sink and gate: the fake kernels and the
    autograd formula carry the two new inputs and their gradients, the same values as eager."""
    edge_index, tensors, _, _, sink, gate = _case(12)
    graph = Graph(edge_index, NODES)
    _ = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)  # built eagerly

    def function(q, k, v, e, sink, gate):
        node_out, edge_out = edge_attention(q, k, v, e, graph, mode="additive", clamp=2.0, sink=sink, gate=gate,
                                            backend="triton")
        return node_out.square().sum() + edge_out.sum()

    assert_compiles_like_eager(function, [t.detach().float().requires_grad_() for t in (*tensors, sink, gate)])
