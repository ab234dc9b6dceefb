"""The edge projection inside the operator (SPEC §3, "Edge projection"): edge_attention(a,
e_weight=W, e_bias=b) with raw edge features a [E, F] is edge_attention((a W^T + b).view(E, H, D))
up to rounding, on every backend, for values, gradients and statistics; the C++ kernels form e
per edge and never allocate an [E, H*D] tensor."""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from helpers import random_graph, require_backend
from magnn import EdgeStats, Graph
from magnn.core import contract
from magnn.functional import edge_attention, project_edges

HEADS, HEAD_DIM, FEATS = 2, 4, 3


def _problem(seed, dtype=torch.float64, *, num_nodes=9, num_edges=40, ebt=None, bias=None, with_b=True,
             a_grad=True, feats=FEATS, isolated=2):
    gen = torch.Generator().manual_seed(seed)
    edge_index = random_graph(num_nodes, num_edges, generator=gen, isolated=isolated, self_loops=3,
                              duplicates=4 if num_edges else 0)
    E = edge_index.shape[1]

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)

    q, k, v = (rand(num_nodes, HEADS, HEAD_DIM) for _ in range(3))
    a = rand(E, feats, grad=a_grad)
    weight = (torch.randn(HEADS * HEAD_DIM, feats, generator=gen, dtype=torch.float64) / feats ** 0.5)
    weight = weight.to(dtype).requires_grad_()
    b = rand(HEADS * HEAD_DIM) if with_b else None
    logit_bias = None if bias is None else rand(*((E,) if bias == "edge" else (E, HEADS)))
    ebt_params = None if ebt is None else tuple(rand(HEADS, HEAD_DIM) for _ in range(3))
    return Graph(edge_index, num_nodes), q, k, v, a, weight, b, logit_bias, ebt_params


def _leaves(*tensors):
    flat = []
    for t in tensors:
        if isinstance(t, tuple):
            flat.extend(t)
        elif t is not None:
            flat.append(t)
    return [t for t in flat if t.requires_grad]


def _call(backend, graph, q, k, v, a, weight, b, logit_bias, ebt_params, *, fused=True, **kwargs):
    if fused:
        return edge_attention(q, k, v, a, graph, bias=logit_bias, ebt_params=ebt_params, e_weight=weight,
                              e_bias=b, backend=backend, **kwargs)
    e = project_edges(a, weight, b, q.shape[1], q.shape[2])
    return edge_attention(q, k, v, e, graph, bias=logit_bias, ebt_params=ebt_params, backend=backend, **kwargs)


def _outputs_and_grads(backend, problem, *, fused=True, grad_seed=0, **kwargs):
    graph, q, k, v, a, weight, b, logit_bias, ebt_params = problem
    node_out, edge_out, lse = _call(backend, *problem, fused=fused, return_lse=True, **kwargs)
    gen = torch.Generator().manual_seed(grad_seed + 101)
    loss = (node_out.double() * torch.randn(node_out.shape, generator=gen, dtype=torch.float64)).sum()
    loss = loss + (edge_out.double() * torch.randn(edge_out.shape, generator=gen, dtype=torch.float64)).sum()
    finite = torch.isfinite(lse)
    loss = loss + (lse[finite].double() * 0.3).sum()
    leaves = _leaves(q, k, v, a, weight, b, logit_bias, ebt_params)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return (node_out, edge_out, lse), grads


def _close(x, y, dtype, what):
    tol = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 4e-2}[dtype]
    x, y = x.detach().double(), y.detach().double()
    scale = max(1.0, float(y.detach().abs().max())) if y.numel() else 1.0
    assert torch.allclose(x, y, rtol=tol, atol=tol * scale, equal_nan=True), \
        f"{what}: max diff {float((x - y).abs().max()) if x.numel() else 0}"


CASES = list(itertools.product(["gt", "additive"], [None, "edge", "slot"], [None, "edge_head"]))


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("mode,ebt,bias", CASES)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cpu_in_kernel_projection_matches_the_reference(backend, mode, ebt, bias, dropout):
    """Fresh random inputs (isolated nodes, self loops, duplicate edges), float64: values and
    the gradients of every input (W, b, a included) equal the reference's."""
    require_backend(backend, torch.device("cpu"), torch.float64)
    seed = CASES.index((mode, ebt, bias)) * 2 + int(dropout > 0)
    problem = _problem(seed, ebt=ebt, bias=bias)
    kwargs = dict(mode=mode, ebt=ebt, clamp=2.5 if bias else None, dropout=dropout, seed=17)
    ref_out, ref_grads = _outputs_and_grads("torch", problem, grad_seed=seed, **kwargs)
    out, grads = _outputs_and_grads(backend, problem, grad_seed=seed, **kwargs)
    for x, y, name in zip(out, ref_out, ("node_out", "edge_out", "lse")):
        _close(x, y, torch.float64, name)
    assert len(grads) == len(ref_grads)
    for x, y in zip(grads, ref_grads):
        assert x is not None and y is not None
        _close(x, y, torch.float64, "gradient")


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_fused_equals_unfused_up_to_rounding(backend, dtype, mode):
    """The in-operator projection is the same function as projecting first: values and
    gradients of q, k, v, a, W, b agree within the dtype's rounding."""
    require_backend(backend, torch.device("cpu"), dtype)
    problem = _problem(5, dtype, num_nodes=30, num_edges=300, ebt="edge", bias="edge")
    kwargs = dict(mode=mode, ebt="edge")
    fused, fused_grads = _outputs_and_grads(backend, problem, **kwargs)
    unfused, unfused_grads = _outputs_and_grads(backend, problem, fused=False, **kwargs)
    for x, y, name in zip(fused, unfused, ("node_out", "edge_out", "lse")):
        _close(x, y, dtype, name)
    for x, y in zip(fused_grads, unfused_grads):
        _close(x, y, dtype, "gradient")
    # the in-kernel form rounds e to nothing: in float32 it is the float32 unfused function exactly
    # up to summation order, so the two must not be identical by accident of a wrong dispatch
    if backend == "cpu" and dtype == torch.float32:
        assert fused[0].dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_float64_gradcheck(backend):
    require_backend(backend, torch.device("cpu"), torch.float64)
    for mode, ebt in (("gt", "edge"), ("additive", "slot"), ("gt", None)):
        graph, q, k, v, a, weight, b, logit_bias, ebt_params = _problem(3, num_nodes=5, num_edges=12, ebt=ebt,
                                                                      bias="edge")
        leaves = [q, k, v, a, weight, b, logit_bias] + ([] if ebt_params is None else list(ebt_params))

        def fn(q, k, v, a, weight, b, logit_bias, *params):
            node_out, edge_out, lse = edge_attention(
                q, k, v, a, graph, mode=mode, ebt=ebt, ebt_params=params or None, bias=logit_bias,
                clamp=3.0, e_weight=weight, e_bias=b, return_lse=True, backend=backend, dropout=0.25, seed=3)
            return node_out, edge_out, torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_grad_of_a_only_when_it_requires_one(backend):
    require_backend(backend, torch.device("cpu"))
    graph, q, k, v, a, weight, b, _, _ = _problem(8, torch.float32, a_grad=False, with_b=False)
    node_out, edge_out = edge_attention(q, k, v, a, graph, e_weight=weight, backend=backend)
    (node_out.sum() + edge_out.square().sum()).backward()
    assert a.grad is None and weight.grad is not None and weight.grad.shape == weight.shape
    assert torch.isfinite(weight.grad).all() and float(weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_empty_graph(backend, mode):
    require_backend(backend, torch.device("cpu"))
    graph, q, k, v, a, weight, b, _, _ = _problem(2, torch.float32, num_edges=0, isolated=0)
    graph = Graph(torch.zeros(2, 0, dtype=torch.long), q.shape[0])
    a = torch.zeros(0, FEATS, requires_grad=True)
    node_out, edge_out = edge_attention(q, k, v, a, graph, mode=mode, e_weight=weight, e_bias=b, backend=backend)
    assert node_out.shape == q.shape and edge_out.shape == (0, HEADS, HEAD_DIM)
    assert torch.equal(node_out, torch.zeros_like(node_out))
    node_out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_statistics_equal_unfused(backend):
    """The in-kernel statistics of edge_out see the same rows (float64: the same values up to
    the last bits, so the same counts and, to rounding, the same ratios)."""
    require_backend(backend, torch.device("cpu"), torch.float64)
    problem = _problem(11, num_nodes=40, num_edges=500)
    fused, unfused = EdgeStats(), EdgeStats()
    with torch.no_grad():
        _call(backend, *problem, stats=fused, need_edge_out=False)
        _call(backend, *problem, fused=False, stats=unfused, need_edge_out=False)
    assert fused.rows == unfused.rows == problem[0].num_edges and fused.count == unfused.count
    assert abs(fused.max_ratio() - unfused.max_ratio()) <= 1e-6 * max(1.0, abs(unfused.max_ratio()))
    assert abs(fused.max_abs - unfused.max_abs) <= 1e-9 * max(1.0, abs(unfused.max_abs))
    assert fused.ma_edges == unfused.ma_edges and fused.argmax == unfused.argmax


def test_bad_projection_arguments_are_refused():
    graph, q, k, v, a, weight, b, _, _ = _problem(1, torch.float32)
    with pytest.raises(ValueError, match="e_weight must be"):
        edge_attention(q, k, v, a, graph, e_weight=weight[:, :2])
    with pytest.raises(ValueError, match="e_bias must be"):
        edge_attention(q, k, v, a, graph, e_weight=weight, e_bias=b[:3])
    with pytest.raises(ValueError, match="raw edge features"):
        edge_attention(q, k, v, a.unsqueeze(1), graph, e_weight=weight)
    with pytest.raises(ValueError, match="without e_weight"):
        edge_attention(q, k, v, a, graph, e_bias=b)
    with pytest.raises(TypeError, match="share q's dtype"):
        edge_attention(q, k, v, a.double(), graph, e_weight=weight)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_projection_ops_pass_opcheck(backend):
    require_backend(backend, torch.device("cpu"))
    ns = getattr(torch.ops, contract.OP_NAMESPACES[backend])
    fwd, bwd = ns.edge_attention_proj_fwd.default, ns.edge_attention_proj_bwd.default
    assert [x.name for x in fwd._schema.arguments] == list(contract.PROJ_FORWARD_ARGS)
    assert [x.name for x in bwd._schema.arguments] == list(contract.PROJ_BACKWARD_ARGS)
    assert len(fwd._schema.returns) == len(contract.ForwardResult._fields)
    assert len(bwd._schema.returns) == len(contract.ProjBackwardResult._fields)
    graph, q, k, v, a, weight, b, logit_bias, ebt_params = _problem(6, torch.float32, bias="edge", ebt="slot")
    csr = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)
    for mantissa_bits, keep in ((7, True), (-1, False)):
        args = (q, k, v, a, weight, b, *csr, logit_bias, *ebt_params, None, None, "gt", "slot", 3.0, 0.2, 99,
                mantissa_bits, keep)
        torch.library.opcheck(fwd, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    detached = [x.detach() if torch.is_tensor(x) else x for x in args]
    result = contract.ForwardResult(*fwd(*detached))
    for need_a in (True, False):
        bwd_args = (torch.randn_like(q), None, None, *detached[:6], result.lse, result.node_out, *csr,
                    *detached[12:18], "gt", "slot", 3.0, 0.2, 99, need_a)
        torch.library.opcheck(bwd, bwd_args, test_utils=("test_schema", "test_faketensor"))
        grads = contract.ProjBackwardResult(*bwd(*bwd_args))
        assert grads.da.shape == ((a.shape[0] if need_a else 0), FEATS)
        assert grads.dw_e.shape == weight.shape and grads.db_e.shape == b.shape


def test_cpu_dw_is_deterministic_across_thread_counts():
    require_backend("cpu", torch.device("cpu"))
    graph, q, k, v, a, weight, b, _, _ = _problem(9, torch.float32, num_nodes=3000, num_edges=40000)
    grads = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            node_out, _ = edge_attention(q, k, v, a, graph, mode="additive", e_weight=weight, e_bias=b,
                                         need_edge_out=False, backend="cpu")
            grads.append(torch.autograd.grad(node_out.square().sum(), [weight, b]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


_PEAK_SCRIPT = r"""
import json, sys
import torch
from magnn import EdgeStats, Graph
from magnn.functional import edge_attention, project_edges

mode, fused = sys.argv[1], sys.argv[2] == "fused"
torch.set_num_threads(1)
heads, head_dim, feats, num_nodes, num_edges = 4, 32, 8, 2000, 120_000
gen = torch.Generator().manual_seed(0)
graph = Graph(torch.stack([torch.randint(0, num_nodes, (num_edges,), generator=gen),
                           torch.randint(0, num_nodes, (num_edges,), generator=gen)]), num_nodes)
graph.rev_rowptr  # the CSRs are built before the measured step
q, k, v = (torch.randn(num_nodes, heads, head_dim, generator=gen).requires_grad_() for _ in range(3))
a = torch.randn(num_edges, feats, generator=gen)
weight = torch.randn(heads * head_dim, feats, generator=gen).requires_grad_()
b = torch.randn(heads * head_dim, generator=gen).requires_grad_()

def step():
    stats = EdgeStats()
    if fused:
        node_out, _ = edge_attention(q, k, v, a, graph, mode=mode, e_weight=weight, e_bias=b,
                                     need_edge_out=False, stats=stats, backend="cpu")
    else:
        e = project_edges(a, weight, b, heads, head_dim)
        node_out, _ = edge_attention(q, k, v, e, graph, mode=mode, need_edge_out=False, stats=stats, backend="cpu")
    node_out.square().sum().backward()

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

step()  # warm-up: libraries, thread pools, the gradients' .grad buffers
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
base = status("VmRSS")
step()
print(json.dumps({"peak_increase": status("VmHWM") - base, "edge_by_hidden": num_edges * heads * head_dim * 4}))
"""


def _peak_increase(mode: str, variant: str) -> dict:
    """Peak RSS increase (bytes) of one forward (with edge statistics) + backward step, in a fresh
    process whose large allocations are all mmap'ed (returned to the OS when freed), so RSS
    follows the live buffers; VmHWM is reset just before the step (/proc/self/clear_refs)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode, variant], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["gt", "additive"])
def test_cpu_fused_step_allocates_no_edge_by_hidden_buffer(mode):
    """A forward (with edge statistics) + backward step at a size where an [E, H*D] float32 buffer
    (512 B per edge) dwarfs everything else the operator needs per edge (logits, endpoints,
    [E, 2, H] attention gradients, row statistics: under 100 B per edge): the fused step's peak
    memory grows by well under one [E, H*D] buffer, while the unfused step (the control, same
    measurement) grows by at least one."""
    require_backend("cpu", torch.device("cpu"))
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    control = _peak_increase(mode, "unfused")
    fused = _peak_increase(mode, "fused")
    assert control["peak_increase"] >= control["edge_by_hidden"]
    assert fused["peak_increase"] <= fused["edge_by_hidden"] // 3, (fused, control)


# -- the layers and models that use it ------------------------------------------------------

def _unfused_by_hook(linear):
    """A forward hook on the projection module makes the layer run it as a module (unfused)."""
    return linear.register_forward_hook(lambda module, args, out: None)


def _compare_fused_unfused(run, linear, params, dtype=torch.float32):
    fused_out = run()
    fused_grads = torch.autograd.grad(fused_out.square().sum(), params)
    handle = _unfused_by_hook(linear)
    try:
        unfused_out = run()
        unfused_grads = torch.autograd.grad(unfused_out.square().sum(), params)
    finally:
        handle.remove()
    _close(fused_out, unfused_out, dtype, "output")
    for x, y in zip(fused_grads, unfused_grads):
        _close(x, y, dtype, "gradient")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("mode,ebt", [("gt", "edge"), ("additive", "slot"), ("gt", None)])
def test_fused_edge_attention_projects_narrow_edge_inputs_in_the_operator(backend, mode, ebt, monkeypatch):
    """edge_dim < heads * head_dim: the layer hands the raw edge_attr and lin_e's parameters to
    the operator (never an [E, H*D] e); same outputs and gradients as running lin_e, up to rounding."""
    from magnn import layers
    from magnn.layers import FusedEdgeAttention

    require_backend(backend, torch.device("cpu"))
    torch.manual_seed(0)
    layer = FusedEdgeAttention(12, 2, 8, 5, mode=mode, ebt=ebt, clamp=5.0, backend=backend)
    wide = FusedEdgeAttention(12, 2, 2, 5, mode=mode, ebt=ebt, backend=backend)  # edge_dim 5 > 4 channels
    assert layers.projects_in_kernel(layer.lin_e, 16) and not layers.projects_in_kernel(wide.lin_e, 4)
    gen = torch.Generator().manual_seed(1)
    edge_index = random_graph(20, 90, generator=gen, isolated=3, self_loops=2, duplicates=3)
    x = torch.randn(20, 12, generator=gen)
    edge_attr = torch.randn(edge_index.shape[1], 5, generator=gen)
    seen = []
    real = layers.attention.edge_attention
    monkeypatch.setattr(layers.attention, "edge_attention", lambda *a, **kw: seen.append(a[3].shape) or real(*a, **kw))
    _compare_fused_unfused(lambda: layer(x, edge_index, edge_attr)[0], layer.lin_e, list(layer.parameters()))
    assert seen[0] == (edge_index.shape[1], 5) and seen[1] == (edge_index.shape[1], 2, 8)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_transformer_conv_projects_edge_attr_in_the_operator(backend, monkeypatch):
    from magnn import layers
    from magnn.layers import TransformerConv

    require_backend(backend, torch.device("cpu"))
    torch.manual_seed(0)
    conv = TransformerConv(10, 6, heads=3, edge_dim=4, beta=True, backend=backend).train()
    conv.dropout = 0.2
    gen = torch.Generator().manual_seed(2)
    edge_index = random_graph(25, 120, generator=gen, isolated=2, self_loops=2, duplicates=2)
    x = torch.randn(25, 10, generator=gen)
    edge_attr = torch.randn(edge_index.shape[1], 4, generator=gen)
    seen = []
    real = layers.transformer_conv.edge_attention
    monkeypatch.setattr(layers.transformer_conv, "edge_attention", lambda *a, **kw: seen.append(a[3].shape) or real(*a, **kw))

    def run():
        torch.manual_seed(5)  # the dropout seed
        return conv(x, edge_index, edge_attr)

    _compare_fused_unfused(run, conv.lin_edge, list(conv.parameters()))
    assert seen[0] == (edge_index.shape[1], 4) and seen[1] == (edge_index.shape[1], 3, 6)
    assert set(conv.state_dict()) >= {"lin_edge.weight", "lin_key.weight", "lin_query.weight"}


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_proteins_paper_models_project_in_the_operator(name, monkeypatch):
    """The ogbn-proteins paper architecture with fused_edge_projection=True: every layer hands
    the raw [E, 8] features and its composed [H*D, 8] matrix to the cpu kernels; values and
    gradients equal the unfused model's (fused_edge_projection=False, same state_dict keys and
    values) up to rounding, in training mode (dropout on)."""
    from magnn import layers
    from magnn.data import proteins_info, synthetic_proteins_graph
    from magnn.models import build_model

    require_backend("cpu", torch.device("cpu"))
    data = synthetic_proteins_graph(num_nodes=150, num_edges_undirected=900, seed=4)
    info = proteins_info(int(data.species.max()) + 1)
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        models.append(build_model(name, info, preset="paper", backend="cpu", fused_edge_projection=fused).train())
    plain, fused = models
    assert set(fused.state_dict()) == set(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    seen = []
    real = layers.attention.edge_attention
    monkeypatch.setattr(layers.attention, "edge_attention", lambda *a, **kw: seen.append(a[3].shape) or real(*a, **kw))
    outputs, grads = [], []
    for model in (plain, fused):
        seen.clear()
        torch.manual_seed(1)
        out = model(data)
        out.square().mean().backward()
        outputs.append(out)
        grads.append({key: p.grad for key, p in model.named_parameters()})
    assert seen and all(shape == (data.edge_index.shape[1], 8) for shape in seen)  # the fused model's calls
    _close(outputs[1], outputs[0], torch.float32, "model output")
    for key, grad in grads[0].items():
        if grad is not None:
            _close(grads[1][key], grad, torch.float32, key)


@pytest.mark.parametrize("mode", ["gt", "additive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_bipartite_projection_matches_the_reference(mode, dtype):
    """q over N_dst, k and v over N_src; edge_out, node_out and every gradient (a, W, b included)
    as the reference's, with dropout and the edge EBT."""
    require_backend("cpu", torch.device("cpu"), dtype)
    gen = torch.Generator().manual_seed(21)
    num_dst, num_src, num_edges = 7, 11, 50
    edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen),
                              torch.randint(0, num_dst - 2, (num_edges,), generator=gen)])
    graph = Graph(edge_index, num_dst, num_src_nodes=num_src)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    q = rand(num_dst, HEADS, HEAD_DIM)
    k, v = rand(num_src, HEADS, HEAD_DIM), rand(num_src, HEADS, HEAD_DIM)
    a, weight, b = rand(num_edges, FEATS), rand(HEADS * HEAD_DIM, FEATS), rand(HEADS * HEAD_DIM)
    params = tuple(rand(HEADS, HEAD_DIM) for _ in range(3))
    problem = (graph, q, k, v, a, weight, b, None, params)
    kwargs = dict(mode=mode, ebt="edge", dropout=0.2, seed=9)
    ref_out, ref_grads = _outputs_and_grads("torch", problem, **kwargs)
    out, grads = _outputs_and_grads("cpu", problem, **kwargs)
    tolerance_dtype = torch.float64 if dtype == torch.float64 else torch.bfloat16
    for x, y in zip(out, ref_out):
        _close(x, y, tolerance_dtype, "output")
    for x, y in zip(grads, ref_grads):
        _close(x, y, tolerance_dtype, "gradient")
