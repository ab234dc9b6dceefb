"""The learned sink logit and the attention gate of `edge_attention` (SPEC §3, "Sink and gate"):
an independent per-node oracle, every backend against the reference in values and gradients
(isolated and masked nodes, self loops, duplicate edges, empty graphs, huge logits, half
precision, dropout), float64 gradcheck, merging, torch.compile and the argument checks."""
import math

import pytest
import torch

from helpers import assert_compiles_like_eager, require_backend, sink_gate_case
from magnn import Graph
from magnn.core.errors import ArgumentError, ArgumentTypeError
from magnn.functional import edge_attention, merge_attention

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS, HEAD_DIM, NODES = 2, 4, 12
ISOLATED = 2


def _case(seed, dtype=torch.float64, **options):
    return sink_gate_case(seed, dtype, heads=HEADS, head_dim=HEAD_DIM, nodes=options.pop("nodes", NODES),
                          isolated=ISOLATED, **options)


def dense_oracle(q, k, v, e, edge_index, *, mode, clamp, bias, sink, gate):
    """Per node, straight from SPEC §3 in float64: softmax over the node's logits and the sink
    logit (value 0), node_out gated; lse over the same terms."""
    num_nodes = q.shape[0]
    q, k, v, e = (t.double() for t in (q, k, v, e))
    src, dst = edge_index
    node_out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((num_nodes, q.shape[1]), -math.inf, dtype=torch.float64)
    for i in range(num_nodes):
        incoming = (dst == i).nonzero().reshape(-1).tolist()
        logits, messages = [], []
        for edge in incoming:
            j = int(src[edge])
            if mode == "gt":
                logit, message = (q[i] * k[j] * e[edge]).sum(-1) / math.sqrt(q.shape[2]), v[j]
            else:
                logit, message = (q[i] * (k[j] + e[edge])).sum(-1) / math.sqrt(q.shape[2]), v[j] + e[edge]
            if bias is not None:
                logit = logit + bias[edge].double()
            logits.append(logit)
            messages.append(message)
        if sink is not None:
            logits.append(sink.double())
            messages.append(torch.zeros_like(q[i]))
        if not logits:
            continue
        stacked = torch.stack(logits)
        if clamp is not None:
            stacked = stacked.clamp(-clamp, clamp)
        weights = torch.softmax(stacked, 0)
        for position, message in enumerate(messages):
            node_out[i] += weights[position].unsqueeze(-1) * message
        lse[i] = torch.logsumexp(stacked, 0)
    if gate is not None:
        node_out = node_out * torch.sigmoid(gate.double()).unsqueeze(-1)
    return node_out, lse


@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("clamp", [None, 1.5])
@pytest.mark.parametrize("which", ["sink", "gate", "both"])
def test_reference_matches_the_dense_oracle(mode, clamp, which):
    edge_index, (q, k, v, e), _, _, sink, gate = _case(1)
    sink_arg = sink if which in ("sink", "both") else None
    gate_arg = gate if which in ("gate", "both") else None
    node_out, _, lse, alpha = edge_attention(q, k, v, e, edge_index, mode=mode, clamp=clamp, sink=sink_arg,
                                             gate=gate_arg, return_lse=True, return_alpha=True, backend="torch")
    want_out, want_lse = dense_oracle(q, k, v, e, edge_index, mode=mode, clamp=clamp, bias=None,
                                      sink=sink_arg, gate=gate_arg)
    torch.testing.assert_close(node_out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)
    isolated = torch.arange(NODES - ISOLATED, NODES)
    assert torch.equal(node_out[isolated], torch.zeros_like(node_out[isolated]))  # no edge: 0, not NaN
    # alpha leaves the sink its share: 1 - sum_j alpha_ij = exp(sink - lse)
    total = torch.zeros(NODES, HEADS, dtype=torch.float64).index_add(0, edge_index[1], alpha)
    if sink_arg is not None:
        clamped = sink_arg if clamp is None else sink_arg.clamp(-clamp, clamp)
        torch.testing.assert_close(1 - total, torch.exp(clamped - lse), rtol=1e-10, atol=1e-12)
    else:
        attended = torch.isfinite(lse)
        torch.testing.assert_close(total[attended], torch.ones_like(total[attended]))


def test_default_none_changes_nothing():
    edge_index, (q, k, v, e), _, _, _, _ = _case(2)
    plain = edge_attention(q, k, v, e, edge_index, return_lse=True, backend="torch")
    explicit = edge_attention(q, k, v, e, edge_index, return_lse=True, sink=None, gate=None, backend="torch")
    for a, b in zip(plain, explicit):
        assert torch.equal(a, b)


def test_float64_gradcheck_of_the_reference():
    edge_index, (q, k, v, e), b, params, sink, gate = _case(3, nodes=6, edges=10, bias="edge_head", ebt="slot")
    graph = Graph(edge_index, 6)

    def function(q, k, v, e, b, sink, gate):
        node_out, edge_out, lse = edge_attention(q, k, v, e, graph, bias=b, ebt="slot", ebt_params=params,
                                                 clamp=3.0, sink=sink, gate=gate, return_lse=True, backend="torch")
        return node_out, edge_out, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)

    assert torch.autograd.gradcheck(function, (q, k, v, e, b, sink, gate))


def _backend_run(backend, tensors, graph, *, b=None, params=None, ebt=None, sink=None, gate=None, mode="gt",
                 **kwargs):
    leaves = [t for t in (*tensors, b, *(params or ()), sink, gate) if t is not None]
    node_out, edge_out, lse, alpha = edge_attention(
        *tensors, graph, mode=mode, bias=b, ebt=ebt, ebt_params=params, sink=sink, gate=gate, return_lse=True,
        return_alpha=True, backend=backend, **kwargs)
    gen = torch.Generator().manual_seed(7)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    loss = sum((t.float() * torch.randn(t.shape, generator=gen)).sum() for t in (node_out, edge_out, finite_lse, alpha))
    return (node_out, edge_out, lse, alpha), torch.autograd.grad(loss, leaves, allow_unused=True)


def _detached(case, dtype):
    edge_index, tensors, b, params, sink, gate = case
    fresh = lambda t: None if t is None else t.detach().to(dtype).requires_grad_()  # noqa: E731
    return (Graph(edge_index, tensors[0].shape[0]), [fresh(t) for t in tensors], fresh(b),
            None if params is None else tuple(fresh(p) for p in params), fresh(sink), fresh(gate))


def _assert_match(got, want, values, grads):
    (outs, grads_got), (outs_want, grads_want) = got, want
    for a, b in zip(outs, outs_want):
        torch.testing.assert_close(a.double(), b.double(), rtol=values, atol=values)
    for a, b in zip(grads_got, grads_want):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.double(), b.double(), rtol=grads, atol=grads)


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float32), ("cpu", torch.float64), ("triton", torch.float32)],
                         ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("mode,ebt,clamp,bias,dropout", [
    ("gt", None, None, None, 0.0), ("gt", "slot", 2.0, "edge_head", 0.0), ("additive", "edge", None, "edge", 0.0),
    ("gt", "edge", 5.0, None, 0.3), ("additive", None, 1.0, "edge_head", 0.0),
])
def test_backends_match_the_reference(backend, dtype, mode, ebt, clamp, bias, dropout):
    require_backend(backend, torch.device("cpu"), dtype)
    case = _case(10, ebt=ebt, bias=bias)
    tolerance = dict(values=1e-5, grads=1e-4) if dtype == torch.float32 else dict(values=1e-9, grads=1e-9)
    options = dict(mode=mode, ebt=ebt, clamp=clamp, **({"dropout": dropout, "seed": 5} if dropout else {}))
    graph, tensors, b, params, sink, gate = _detached(case, dtype)
    got = _backend_run(backend, tensors, graph, b=b, params=params, sink=sink, gate=gate, **options)
    graph, tensors, b, params, sink, gate = _detached(case, dtype)
    want = _backend_run("torch", tensors, graph, b=b, params=params, sink=sink, gate=gate, **options)
    _assert_match(got, want, **tolerance)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_masked_nodes_huge_logits_and_empty_graphs(backend):
    require_backend(backend, torch.device("cpu"))
    edge_index, tensors, _, _, sink, gate = _case(11, torch.float32)
    bias = torch.randn(edge_index.shape[1], HEADS) * 1e30  # huge logits, finite
    bias[edge_index[1] == 0] = -math.inf  # node 0: every edge masked (an isolated node for both heads)
    case = (edge_index, tensors, bias, None, sink, gate)
    for which in ({"sink": True}, {"gate": True}, {"sink": True, "gate": True}):
        graph, ts, b, _, s, g = _detached(case, torch.float32)
        kw = dict(sink=s if "sink" in which else None, gate=g if "gate" in which else None)
        got = _backend_run(backend, ts, graph, b=b, **kw)
        assert torch.equal(got[0][0][0], torch.zeros_like(got[0][0][0]))
        graph, ts, b, _, s, g = _detached(case, torch.float32)
        want = _backend_run("torch", ts, graph, b=b, sink=s if "sink" in which else None,
                            gate=g if "gate" in which else None)
        _assert_match(got, want, values=1e-5, grads=1e-4)
    empty = torch.zeros(2, 0, dtype=torch.long)
    q = torch.randn(3, HEADS, HEAD_DIM, requires_grad=True)
    e = torch.randn(0, HEADS, HEAD_DIM)
    s = torch.randn(HEADS, requires_grad=True)
    g = torch.randn(3, HEADS, requires_grad=True)
    node_out, _, lse = edge_attention(q, q, q, e, empty, sink=s, gate=g, return_lse=True, backend=backend)
    assert torch.equal(node_out, torch.zeros_like(node_out))
    assert torch.equal(lse, s.detach().expand(3, HEADS))  # only the sink is attended
    grads = torch.autograd.grad(node_out.sum() + lse.sum(), (q, s, g))
    assert torch.equal(grads[1], torch.full((HEADS,), 3.0)) and torch.equal(grads[2], torch.zeros_like(g))


@pytest.mark.parametrize("backend,dtype", [("cpu", torch.float16), ("cpu", torch.bfloat16),
                                           ("triton", torch.float16), ("triton", torch.bfloat16)],
                         ids=lambda x: str(x).replace("torch.", ""))
def test_half_precision(backend, dtype):
    require_backend(backend, torch.device("cpu"), dtype)
    case = _case(12, ebt="slot")
    graph, tensors, b, params, sink, gate = _detached(case, dtype)
    got = _backend_run(backend, tensors, graph, params=params, ebt="slot", sink=sink, gate=gate, clamp=5.0)
    graph, tensors, b, params, sink, gate = _detached(case, torch.float64)
    want = _backend_run("torch", tensors, graph, params=params, ebt="slot", sink=sink, gate=gate, clamp=5.0)
    assert got[0][0].dtype == dtype
    _assert_match(got, want, values=3e-2, grads=6e-2)


def test_sink_merges_like_one_softmax():
    """SAN's union: a sink attended in one part merges exactly into the softmax over both parts."""
    edge_index, (q, k, v, e), _, _, sink, _ = _case(13)
    half = edge_index.shape[1] // 2
    parts = [edge_index[:, :half], edge_index[:, half:]]
    first, _, lse_first = edge_attention(q, k, v, e[:half], parts[0], sink=sink, return_lse=True, backend="torch")
    second, _, lse_second = edge_attention(q, k, v, e[half:], parts[1], return_lse=True, backend="torch")
    merged, merged_lse = merge_attention((first, second), (lse_first, lse_second))
    whole, _, whole_lse = edge_attention(q, k, v, e, edge_index, sink=sink, return_lse=True, backend="torch")
    torch.testing.assert_close(merged, whole)
    torch.testing.assert_close(merged_lse, whole_lse)


def test_torch_compile_traces_sink_and_gate():
    require_backend("cpu", torch.device("cpu"))
    edge_index, tensors, _, _, sink, gate = _case(14, torch.float32)
    graph = Graph(edge_index, NODES)

    def function(q, k, v, e, sink, gate):
        node_out, edge_out = edge_attention(q, k, v, e, graph, clamp=2.0, sink=sink, gate=gate, backend="cpu")
        return node_out.square().sum() + edge_out.sum()

    assert_compiles_like_eager(function, [t.detach().requires_grad_() for t in (*tensors, sink, gate)])


def test_bad_sink_and_gate_are_refused():
    edge_index, (q, k, v, e), _, _, sink, gate = _case(15)
    with pytest.raises(ArgumentError, match="sink must have shape"):
        edge_attention(q, k, v, e, edge_index, sink=sink[:1], backend="torch")
    with pytest.raises(ArgumentError, match="gate must have shape"):
        edge_attention(q, k, v, e, edge_index, gate=gate[1:], backend="torch")
    with pytest.raises(ArgumentTypeError, match="sink must be a floating-point tensor"):
        edge_attention(q, k, v, e, edge_index, sink=[0.0, 1.0], backend="torch")


# -- layers and models: mitigation="sink" / "gate" ------------------------------------------------
from edge_cases import MODEL_NAMES, batches, build, train_step_and_detect  # noqa: E402


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("mitigation", ["sink", "gate"])
def test_models_train_with_a_sink_or_a_gate(name, mitigation):
    model, transform = build(name, None, "default", mitigation=mitigation)
    layers = [layer.attention for layer in model.layers]
    if mitigation == "sink":
        assert all(layer.sink_logit.shape == (4,) for layer in layers)
    else:
        assert all(layer.lin_gate.out_features == 4 for layer in layers)
    for batch in batches(transform).values():
        train_step_and_detect(model, batch)
    # the new parameters learn: they get a gradient from the loss
    model.train()
    model.zero_grad()
    batch = batches(transform)["mixed"]
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.y).backward()
    new = [layer.sink_logit if mitigation == "sink" else layer.lin_gate.weight for layer in layers]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mitigation_none_and_ebt_names_build_the_same_models(name):
    torch.manual_seed(0)
    plain, _ = build(name, None, "default")
    torch.manual_seed(0)
    none, _ = build(name, None, "default", mitigation="none")
    torch.manual_seed(0)
    slot, _ = build(name, "slot", "default")
    torch.manual_seed(0)
    named, _ = build(name, None, "default", mitigation="ebt-slot")
    for a, b in ((plain, none), (slot, named)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[key], sb[key]) for key in sa)
    assert named.ebt == "slot"
    with pytest.raises(ArgumentError, match="drop one of them"):
        build(name, "edge", "default", mitigation="ebt-slot")
    with pytest.raises(ArgumentError, match="unknown mitigation"):
        build(name, None, "default", mitigation="sinks")


def test_san_union_with_a_sink_and_a_gate_matches_the_layer_formula():
    """SAN's two calls + merge: the sink attended once and the gate on the merged node_out equal one
    softmax over real + fake edges with the sink, gated (the dense oracle over the union)."""
    from magnn.models.san import SANAttention, full_fake_edges

    torch.manual_seed(3)
    layer = SANAttention(8, 2, 4, 8, clamp=None, backend="torch", sink=True, gate=True).double()
    with torch.no_grad():
        layer.sink_logit.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(5, 8, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    fake = full_fake_edges(edge_index, None, 5, 1.0)  # gamma 1: log-weight 0, a plain union softmax
    edge_attr = torch.randn(4, 8, dtype=torch.float64)
    fake_attr = torch.randn(1, 8, dtype=torch.float64)
    node_out, _ = layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr, need_edge_out=False)
    shape = (5, 2, 4)
    q, k, v = (lin(x).view(shape) for lin in (layer.lin_q, layer.lin_k, layer.lin_v))
    q2, k2 = layer.lin_q2(x).view(shape), layer.lin_k2(x).view(shape)
    e = layer.lin_e(edge_attr).view(4, 2, 4)
    e2 = layer.lin_e2(fake_attr).view(1, 2, 4).expand(fake.num_edges, 2, 4)
    # the union as one softmax for the dense oracle: every edge (real or fake) gets its own source
    # node whose key is the edge's product q_i * k_j * e_ij (q = 1, e = 1), so the oracle's logit is
    # sum_d(q_i k_j e_ij) / sqrt(D) with the edge set's own q, k, e, and its value is v_j
    src = torch.cat([edge_index[0], fake.index[0]])
    dst = torch.cat([edge_index[1], fake.index[1]])
    total = src.shape[0]
    q_edge = torch.cat([q[edge_index[1]], q2[fake.index[1]]])
    k_edge = torch.cat([k[edge_index[0]], k2[fake.index[0]]])
    ones = torch.ones(total, 2, 4, dtype=torch.float64)
    e_all = torch.cat([e, e2])
    per_edge_k = q_edge * k_edge * e_all  # [S, H, D], S = total > 5 nodes
    node_ids = torch.arange(total)
    edge_graph = torch.stack([node_ids, dst])
    v_src = v[src]
    queries = torch.cat([ones[:5], torch.zeros(total - 5, 2, 4, dtype=torch.float64)])
    want, _ = dense_oracle(queries, per_edge_k, v_src, ones,
                           edge_graph, mode="gt", clamp=None, bias=None, sink=layer.sink_logit.detach(),
                           gate=None)
    gate = torch.sigmoid(layer.lin_gate(x)).unsqueeze(-1)
    torch.testing.assert_close(node_out.view(shape), (want[:5] * gate).detach())


# -- the command line: --mitigation in magnn train and magnn study --------------------------------
def test_mitigation_option_parses_into_the_configs():
    from magnn.cli import build_parser, study_config, train_config
    from magnn.core.errors import UserError

    parser = build_parser()
    sink = train_config(parser.parse_args(["train", "--mitigation", "sink", "--layers", "3"]))
    assert sink.ebt is None and sink.overrides == {"mitigation": "sink", "num_layers": 3}
    slot = train_config(parser.parse_args(["train", "--mitigation", "ebt-slot"]))
    assert slot.ebt == "slot" and slot.overrides == {}
    assert train_config(parser.parse_args(["train", "--mitigation", "none"])).overrides == {}
    with pytest.raises(UserError, match="drop one of them"):
        train_config(parser.parse_args(["train", "--mitigation", "ebt-slot", "--ebt", "edge"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--mitigation", "sinks"])
    studied = study_config(parser.parse_args(["study", "--model", "san", "--mitigation", "gate"]))
    assert studied.train.overrides == {"mitigation": "gate"} and studied.ebt == "edge"
    studied = study_config(parser.parse_args(["study", "--mitigation", "ebt-slot"]))
    assert studied.ebt == "slot" and studied.train.overrides == {}


def test_train_builds_the_mitigated_model():
    from magnn.models.registry import build_model
    from edge_cases import TOX21

    model = build_model("gt", TOX21, num_layers=1, hidden=8, heads=2, mitigation="gate", backend="torch")
    assert model.layers[0].attention.lin_gate is not None and model.mitigation == "gate"
    with pytest.raises(ArgumentError, match="paper's code"):
        build_model("san", TOX21, num_layers=1, hidden=8, heads=2, ebt="edge", ebt_compat="gnn-mas",
                    mitigation="sink", backend="torch")


def test_magnn_train_with_a_sink_resumes_and_reruns_from_its_config(tmp_path):
    """`magnn train --mitigation sink`: the checkpoint holds the sink logits, --resume continues
    the same model, and --config metrics.json re-builds it (the mitigation travels in overrides)."""
    import json

    from cli_helpers import TINY
    from magnn.cli import main
    from magnn.train import load_checkpoint

    out = tmp_path / "sink"
    common = [*TINY, "--layers", "2", "--out", str(out), "--data-root", str(tmp_path / "data"),
              "--ma-probe-graphs", "0"]
    assert main(["train", *common, "--mitigation", "sink", "--epochs", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["overrides"]["mitigation"] == "sink" and metrics["config"]["ebt"] is None
    state = load_checkpoint(out / "last.pt").state["model"]
    assert sorted(k for k in state if k.endswith("sink_logit")) == [f"layers.{i}.attention.sink_logit" for i in range(2)]
    assert main(["train", *common, "--mitigation", "sink", "--epochs", "2", "--resume"]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "metrics.json"), "--out", str(again), "--epochs", "1"]) == 0
    assert json.loads((again / "metrics.json").read_text())["config"]["overrides"]["mitigation"] == "sink"


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_node_tap_statistics_reduce_the_final_node_out(backend):
    """A node-tap collector (alone, or beside an edge-tap one) reduces the sink-scaled, gated node_out
    that the call returns, not the kernels' own node_out."""
    from magnn import EdgeStats
    from magnn.stats import reduce_rows

    require_backend(backend, torch.device("cpu"))
    edge_index, tensors, _, _, sink, gate = _case(16, torch.float32)
    for taps in (("node",), ("node", "edge")):
        collectors = [EdgeStats(tap=tap) for tap in taps]
        node_out, _ = edge_attention(*tensors, edge_index, sink=sink, gate=gate, stats=collectors, backend=backend)
        own = reduce_rows(node_out.detach().reshape(NODES, HEADS * HEAD_DIM))
        assert torch.equal(collectors[0].hist_abs.counts, own.hist_abs.cpu())
        assert collectors[0].max_abs == float(own.max_abs)


def test_bipartite_graphs_take_a_gate_per_destination_node():
    require_backend("cpu", torch.device("cpu"), torch.float64)
    gen = torch.Generator().manual_seed(17)
    num_src, num_dst = 7, 5
    edge_index = torch.stack([torch.randint(0, num_src, (20,), generator=gen), torch.randint(0, num_dst - 1, (20,),
                                                                                             generator=gen)])
    q = torch.randn(num_dst, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(num_src, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    e = torch.randn(20, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    sink = torch.randn(HEADS, generator=gen, dtype=torch.float64)
    gate = torch.randn(num_dst, HEADS, generator=gen, dtype=torch.float64)
    results = []
    for backend in ("cpu", "torch"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, e, sink, gate)]
        node_out, _, lse = edge_attention(*leaves[:4], edge_index, sink=leaves[4], gate=leaves[5], return_lse=True,
                                          backend=backend)
        assert node_out.shape == (num_dst, HEADS, HEAD_DIM) and torch.equal(node_out[-1], torch.zeros_like(node_out[-1]))
        grads = torch.autograd.grad(node_out.square().sum() + lse.sum(), leaves)
        results.append((node_out, lse, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ArgumentError, match="gate must have shape"):
        edge_attention(q, k, v, e, edge_index, gate=torch.zeros(num_src, HEADS, dtype=torch.float64), backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("need_edge_out", [True, False])
def test_additive_edge_tap_reduces_the_sink_inclusive_message(backend, need_edge_out):
    """mode="additive" with a sink: the edge-tap statistics are those of the message with the
    sink-inclusive weight, the edge_out the call returns (the kernels reduce it as they write it, the
    reference after its epilogue rescales it), whether or not the caller keeps edge_out."""
    from magnn import EdgeStats
    from magnn.stats import reduce_rows

    require_backend(backend, torch.device("cpu"))
    edge_index, tensors, _, _, sink, gate = _case(17, torch.float32)
    _, message = edge_attention(*tensors, edge_index, mode="additive", sink=sink, gate=gate, backend="torch")
    stats = EdgeStats(keep_edge_ratio=True)
    _, edge_out = edge_attention(*tensors, edge_index, mode="additive", sink=sink, gate=gate, stats=stats,
                                 backend=backend, need_edge_out=need_edge_out)
    assert (edge_out is None) == (not need_edge_out) and stats.calls == 1
    if edge_out is not None:
        torch.testing.assert_close(edge_out, message, rtol=1e-5, atol=1e-6)
    own = reduce_rows(message.detach().reshape(message.shape[0], HEADS * HEAD_DIM))
    torch.testing.assert_close(stats.edge_ratio, own.row_ratio, rtol=1e-4, atol=0.0)
    assert abs(stats.max_abs - float(own.max_abs)) <= 1e-5 * float(own.max_abs)
    if backend == "torch":  # the reference reduces the very tensor it returns: the same bins, bit for bit
        assert torch.equal(stats.hist_abs.counts, own.hist_abs.cpu())


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_infinite_sinks_without_a_clamp(backend):
    """clamp=None: a +inf sink logit takes all the attention (node_out 0, lse the dtype's largest finite
    value, finite gradients), a -inf one is no term (the plain softmax) - the same on every backend."""
    require_backend(backend, torch.device("cpu"))
    edge_index, tensors, _, _, _, _ = _case(18, torch.float32)
    plain, _, plain_lse = edge_attention(*tensors, edge_index, return_lse=True, backend="torch")
    sink = torch.tensor([math.inf, -math.inf] + [0.5] * (HEADS - 2), requires_grad=True)
    inputs = [t.detach().requires_grad_() for t in tensors]
    node_out, _, lse = edge_attention(*inputs, edge_index, sink=sink, return_lse=True, backend=backend)
    assert torch.equal(node_out[:, 0], torch.zeros_like(node_out[:, 0]))
    assert torch.all(lse[:, 0] == torch.finfo(torch.float32).max)
    torch.testing.assert_close(node_out[:, 1], plain[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse[:, 1], plain_lse[:, 1], rtol=1e-5, atol=1e-6)
    (node_out.sum() + lse[:, 1:].sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs) and torch.isfinite(sink.grad[2:]).all()
