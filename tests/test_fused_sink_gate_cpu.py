"""The sink logit and the gate inside the C++ kernels (SPEC §3, "Sink and gate"): the cpu ops
take `sink` [H] and `gate` [N_dst, H] and compute the sink-inclusive softmax and the gated store
themselves. Checked against the pure-PyTorch reference (which applies the same math after its
softmax) in values and gradients of every input, over modes, EBT variants, dropout, the in-kernel
projection, statistics, edge cases and half precision; against a closed form on the op itself;
and by float64 gradcheck of the op."""
import math

import pytest
import torch

from helpers import random_graph, random_inputs, require_backend, sink_gate_case
from magnn import EdgeStats, Graph
from magnn.core import contract
from magnn.core.binning import reduce_rows
from magnn.functional import edge_attention

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, HEAD_DIM, NODES, ISOLATED = 2, 4, 12, 2
WHICH = ("sink", "gate", "both")


@pytest.fixture(autouse=True)
def _cpu_backend():
    require_backend("cpu", torch.device("cpu"))


def _case(seed, dtype=torch.float64, **options):
    """Graph with isolated nodes, self loops and duplicate edges; inputs, sink [H], gate [N, H]."""
    return sink_gate_case(seed, dtype, heads=HEADS, head_dim=HEAD_DIM, nodes=options.pop("nodes", NODES),
                          isolated=ISOLATED, **options)


def _fresh(t, dtype=None):
    return None if t is None else t.detach().to(dtype or t.dtype).requires_grad_()


def _run(backend, case, which, dtype=None, **options):
    """(outputs, gradients of every given input) of one edge_attention call with a fixed random loss
    over node_out, edge_out and the finite part of lse."""
    edge_index, tensors, b, params, sink, gate = case
    tensors = [_fresh(t, dtype) for t in tensors]
    b, sink, gate = _fresh(b, dtype), _fresh(sink, dtype), _fresh(gate, dtype)
    params = None if params is None else tuple(_fresh(p, dtype) for p in params)
    sink = sink if which in ("sink", "both") else None
    gate = gate if which in ("gate", "both") else None
    node_out, edge_out, lse = edge_attention(*tensors, Graph(edge_index, tensors[0].shape[0]), bias=b,
                                             ebt_params=params, sink=sink, gate=gate, return_lse=True,
                                             backend=backend, **options)
    gen = torch.Generator().manual_seed(7)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
               for t in (node_out, edge_out, finite_lse))
    leaves = [t for t in (*tensors, b, *(params or ()), sink, gate) if t is not None]
    return (node_out, edge_out, lse), torch.autograd.grad(loss, leaves)


def _assert_match(got, want, tolerance):
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a.double(), b.double(), rtol=tolerance, atol=tolerance, equal_nan=True)
    assert len(got[1]) == len(want[1])
    for a, b in zip(*(got[1], want[1])):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("ebt", [None, "edge", "slot"])
@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_fused_matches_the_reference(mode, ebt, which):
    """Values and the gradients of q, k, v, e, the bias, the EBT parameters, sink and gate."""
    case = _case(20, ebt=ebt, bias="edge_head")
    options = dict(mode=mode, ebt=ebt, clamp=2.0 if ebt == "slot" else None)
    _assert_match(_run("cpu", case, which, **options), _run("torch", case, which, **options), 1e-10)


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_dropout_with_the_same_seed_matches_the_reference(mode):
    case = _case(21, ebt="slot", bias="edge")
    options = dict(mode=mode, ebt="slot", clamp=3.0, dropout=0.3, seed=11)
    got = _run("cpu", case, "both", **options)
    _assert_match(got, _run("torch", case, "both", **options), 1e-10)
    other = _run("cpu", case, "both", **{**options, "seed": 12})
    assert not torch.equal(got[0][0], other[0][0])  # the mask follows the seed


@pytest.mark.parametrize("which", WHICH)
def test_huge_logits_and_fully_masked_rows(which):
    """clamp None with q.k in the thousands (the sink's term underflows to 0 beside them) and a node
    whose every edge is masked by a -inf bias (it attends only to the sink: node_out 0, lse = sink)."""
    edge_index, tensors, _, _, sink, gate = _case(22, scale=12.0)
    bias = torch.randn(edge_index.shape[1], HEADS, dtype=torch.float64)
    bias[edge_index[1] == 0] = -math.inf
    case = (edge_index, tensors, bias.requires_grad_(), None, sink, gate)
    got = _run("cpu", case, which, mode="gt")
    assert got[0][0][0].abs().max() == 0
    if which != "gate":
        torch.testing.assert_close(got[0][2][0], sink.detach())
    _assert_match(got, _run("torch", case, which, mode="gt"), 1e-9)


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_empty_graph(mode):
    """E = 0: every row attends only to the sink: node_out 0, lse = sink, dsink = the sum of lse's
    gradients, dgate 0 (node_out is 0 whatever the gate)."""
    q = torch.randn(3, HEADS, HEAD_DIM, dtype=torch.float64, requires_grad=True)
    e = torch.randn(0, HEADS, HEAD_DIM, dtype=torch.float64, requires_grad=True)
    sink = torch.randn(HEADS, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(3, HEADS, dtype=torch.float64, requires_grad=True)
    empty = torch.zeros(2, 0, dtype=torch.long)
    node_out, edge_out, lse = edge_attention(q, q, q, e, empty, mode=mode, sink=sink, gate=gate, return_lse=True,
                                             backend="cpu")
    assert torch.equal(node_out, torch.zeros_like(node_out)) and edge_out.shape == (0, HEADS, HEAD_DIM)
    assert torch.equal(lse, sink.detach().expand(3, HEADS))
    weights = torch.arange(6, dtype=torch.float64).reshape(3, HEADS)
    dq, dsink, dgate = torch.autograd.grad(node_out.sum() + (lse * weights).sum(), (q, sink, gate))
    assert torch.equal(dsink, weights.sum(0)) and torch.equal(dgate, torch.zeros_like(gate))
    assert torch.equal(dq, torch.zeros_like(dq))


def _op_inputs(seed, num_nodes=5, num_edges=9):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([torch.randint(0, num_nodes, (num_edges,), generator=gen),
                              torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)])  # last: isolated
    graph = Graph(edge_index, num_nodes)
    q, k, v = (torch.randn(num_nodes, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(3))
    e = torch.randn(num_edges, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    sink = torch.randn(HEADS, generator=gen, dtype=torch.float64)
    gate = torch.randn(num_nodes, HEADS, generator=gen, dtype=torch.float64)
    return edge_index, graph, q, k, v, e, sink, gate


def test_the_sink_softmax_is_inside_the_op():
    """torch.ops.magnn_cpu.edge_attention_fwd itself (no functional epilogue) returns the
    sink-inclusive lse and the gated node_out of the closed form; an isolated row's state is
    exactly the sink's (row max c_h, log-sum 0)."""
    edge_index, graph, q, k, v, e, sink, gate = _op_inputs(23)
    result = contract.ForwardResult(*torch.ops.magnn_cpu.edge_attention_fwd(
        q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None, None, None, None, None, sink, gate,
        "gt", "none", None, 0.0, 0, -1))
    src, dst = edge_index
    logits = (q[dst] * k[src] * e).sum(-1) / math.sqrt(HEAD_DIM)  # [E, H]
    for i in range(q.shape[0]):
        mine = logits[dst == i]
        terms = torch.cat([mine, sink.unsqueeze(0)])  # the sink: one more logit, value 0
        lse = torch.logsumexp(terms, 0)
        weights = torch.exp(mine - lse)
        want = torch.sigmoid(gate[i]).unsqueeze(-1) * (weights.unsqueeze(-1) * v[src[dst == i]]).sum(0)
        torch.testing.assert_close(result.node_out[i], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(contract.logsumexp(result.lse)[i], lse, rtol=1e-12, atol=1e-12)
        assert (result.lse[i, 0] >= sink).all()  # the running max starts at the sink
    isolated = q.shape[0] - 1
    assert torch.equal(result.lse[isolated, 0], sink) and torch.equal(result.lse[isolated, 1], torch.zeros(HEADS))
    assert torch.equal(result.node_out[isolated], torch.zeros(HEADS, HEAD_DIM))


def test_a_minus_inf_sink_and_an_open_gate_are_exactly_none():
    """sink -inf (no term) and gate +inf (sigmoid 1) give bit for bit what no sink and no gate give,
    in both modes and with the slot (the sink path folds the slot into the sink's state)."""
    edge_index, graph, q, k, v, e, _, _ = _op_inputs(24)
    params = [torch.randn(HEADS, HEAD_DIM, dtype=torch.float64) for _ in range(3)]
    no_sink = torch.full((HEADS,), -math.inf, dtype=torch.float64)
    open_gate = torch.full((q.shape[0], HEADS), math.inf, dtype=torch.float64)
    csr = (graph.rowptr, graph.col, graph.perm, None, None, None, None)
    for mode in ("gt", "additive"):
        for ebt, ebt_params in (("none", [None] * 3), ("slot", params)):
            plain = torch.ops.magnn_cpu.edge_attention_fwd(q, k, v, e, *csr, *ebt_params, None, None, mode, ebt,
                                                           None, 0.0, 0, 7)
            neutral = torch.ops.magnn_cpu.edge_attention_fwd(q, k, v, e, *csr, *ebt_params, no_sink, open_gate,
                                                             mode, ebt, None, 0.0, 0, 7)
            for a, b in zip(plain, neutral):
                assert torch.equal(a, b)


def test_the_projection_inside_the_op():
    """e_weight= (e = W a + b formed in the kernels) with sink and gate: values and the gradients of
    a, W, b, sink and gate against the reference."""
    edge_index, (q, k, v, _), _, _, sink, gate = _case(25)
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(edge_index.shape[1], 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(HEADS * HEAD_DIM, 5, generator=gen, dtype=torch.float64)
    bias = torch.randn(HEADS * HEAD_DIM, generator=gen, dtype=torch.float64)
    results = []
    for backend in ("cpu", "torch"):
        leaves = [_fresh(t) for t in (q, k, v, raw, weight, bias, sink, gate)]
        node_out, edge_out, lse = edge_attention(*leaves[:4], edge_index, mode="additive", e_weight=leaves[4],
                                                 e_bias=leaves[5], sink=leaves[6], gate=leaves[7], return_lse=True,
                                                 backend=backend)
        finite = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        loss = (node_out * torch.linspace(-1, 1, node_out.numel(), dtype=torch.float64).view_as(node_out)).sum()
        loss = loss + edge_out.square().sum() + (finite * 0.3).sum()
        results.append(((node_out, edge_out, lse), torch.autograd.grad(loss, leaves)))
    _assert_match(*results, 1e-10)


def test_statistics_are_those_of_what_is_written():
    """Edge tap (gt: the score; additive with a gate: the message) and node tap (the gated node_out)
    with sink and gate: the collected statistics equal those of the tensors the call returned."""
    edge_index, tensors, _, _, sink, gate = _case(26, torch.float32)
    for mode, tap, with_sink in (("gt", "edge", True), ("additive", "edge", False), ("gt", "node", True),
                                 ("additive", "node", True)):
        stats = EdgeStats(tap=tap, mantissa_bits=7)
        node_out, edge_out = edge_attention(*tensors, edge_index, mode=mode, sink=sink if with_sink else None,
                                            gate=gate, stats=stats, backend="cpu")
        reference = EdgeStats(tap=tap, mantissa_bits=7)
        reference.add(reduce_rows((edge_out if tap == "edge" else node_out).detach(), 7), heads=HEADS)
        assert stats.to_dict() == reference.to_dict()
        want = edge_attention(*tensors, edge_index, mode=mode, sink=sink if with_sink else None, gate=gate,
                              backend="torch")
        torch.testing.assert_close(node_out, want[0])


def test_additive_edge_out_statistics_in_the_op_use_the_sink_inclusive_weights():
    """The op's in-kernel statistics of additive edge_out with a sink (the message with the
    sink-inclusive weight) are those of the edge_out it returns, which matches the reference."""
    edge_index, graph, q, k, v, e, sink, gate = _op_inputs(27, num_nodes=8, num_edges=30)
    result = contract.ForwardResult(*torch.ops.magnn_cpu.edge_attention_fwd(
        q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None, None, None, None, None, sink, gate,
        "additive", "none", None, 0.0, 0, 7))
    raw = reduce_rows(result.edge_out, 7)
    for field in ("hist_abs", "hist_ratio", "row_ratio", "nan_count", "max_abs", "argmax"):
        assert torch.equal(getattr(result, field), getattr(raw, field)), field
    _, want, _ = edge_attention(q, k, v, e, edge_index, mode="additive", sink=sink, gate=gate, return_lse=True,
                                backend="torch")
    torch.testing.assert_close(result.edge_out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,ebt", [("gt", "slot"), ("additive", "edge"), ("additive", "none")])
def test_float64_gradcheck_of_the_op(mode, ebt):
    edge_index, graph, q, k, v, e, sink, gate = _op_inputs(28, num_nodes=5, num_edges=10)
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(HEADS, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(3)]
    bias = torch.randn(e.shape[0], HEADS, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, e, bias, *(params if ebt != "none" else ()), sink, gate)]
    csr = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)

    def op(q, k, v, e, bias, *rest):
        ebt_params = list(rest[:3]) if ebt != "none" else [None] * 3
        result = contract.ForwardResult(*torch.ops.magnn_cpu.edge_attention_fwd(
            q, k, v, e, *csr, bias, *ebt_params, rest[-2], rest[-1], mode, ebt, 2.5, 0.0, 0, -1))
        return result.node_out, result.edge_out, result.lse[:, 0].detach() + result.lse[:, 1]

    assert torch.autograd.gradcheck(op, leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_half_precision_forward_is_close_to_float32(dtype, mode):
    case = _case(29, ebt="slot")
    (node_out, edge_out, lse), _ = _run("cpu", case, "both", dtype=dtype, mode=mode, ebt="slot", clamp=5.0)
    (want_node, want_edge, want_lse), _ = _run("torch", case, "both", dtype=torch.float32, mode=mode, ebt="slot",
                                               clamp=5.0)
    assert node_out.dtype == dtype and lse.dtype == torch.float32
    tolerance = 2e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(node_out.float(), want_node, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(edge_out.float(), want_edge, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(lse, want_lse, rtol=tolerance, atol=tolerance)


def test_dsink_is_the_same_for_any_thread_count():
    """dsink is reduced per block of nodes and added in block order (no float atomics)."""
    gen = torch.Generator().manual_seed(30)
    edge_index = random_graph(3000, 40000, generator=gen, isolated=10)
    q, k, v, e, _, _ = random_inputs(3000, edge_index, HEADS, HEAD_DIM, dtype=torch.float32, generator=gen)
    sink = torch.randn(HEADS, requires_grad=True)
    gate = torch.randn(3000, HEADS, requires_grad=True)
    graph = Graph(edge_index, 3000)
    before, grads = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            node_out, _, lse = edge_attention(q, k, v, e, graph, sink=sink, gate=gate, return_lse=True,
                                              need_edge_out=False, backend="cpu")
            grads.append(torch.autograd.grad(node_out.square().sum() + lse.sum(), [sink, gate]))
    finally:
        torch.set_num_threads(before)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_a_plus_inf_sink_is_refused_by_the_op():
    """A +inf sink would take every row's whole softmax and leave no finite lse: refused, naming the fix."""
    _, graph, q, k, v, e, sink, gate = _op_inputs(31)
    sink[1] = math.inf
    with pytest.raises(RuntimeError, match=r"\+inf .*clamp"):
        torch.ops.magnn_cpu.edge_attention_fwd(q, k, v, e, graph.rowptr, graph.col, graph.perm, None, None, None,
                                               None, None, None, None, sink, gate, "gt", "none", None, 0.0, 0, -1)
