"""Both compiled backends register one op contract (magnn/core/contract.py)."""
from __future__ import annotations


import pytest
import torch

from helpers import require_backend
from magnn.core import contract

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _ops(backend: str):
    device = DEVICE if backend == "triton" else torch.device("cpu")
    require_backend(backend, device)
    namespace = getattr(torch.ops, contract.OP_NAMESPACES[backend])
    return namespace.edge_attention_fwd.default, namespace.edge_attention_bwd.default


def _signature(op):
    schema = op._schema
    arguments = [(a.name, str(a.type)) for a in schema.arguments]
    return arguments, len(schema.returns)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_schema_follows_the_contract(backend):
    fwd, bwd = _ops(backend)
    fwd_args, fwd_returns = _signature(fwd)
    bwd_args, bwd_returns = _signature(bwd)
    assert [name for name, _ in fwd_args] == list(contract.FORWARD_ARGS)
    assert [name for name, _ in bwd_args] == list(contract.BACKWARD_ARGS)
    assert fwd_returns == len(contract.ForwardResult._fields)
    assert bwd_returns == len(contract.BackwardResult._fields)


def test_both_backends_register_the_same_schema():
    cpu, triton = _ops("cpu"), _ops("triton")
    for cpu_op, triton_op in zip(cpu, triton):
        assert _signature(cpu_op) == _signature(triton_op)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_autograd_and_fake_registered_through_torch_library(backend):
    fwd, _ = _ops(backend)
    # register_autograd installs an Autograd kernel through torch.library; no autograd.Function wraps the op
    assert torch._C._dispatch_has_kernel_for_dispatch_key(fwd.name(), "Autograd") or \
        torch._C._dispatch_has_kernel_for_dispatch_key(fwd.name(), "AutogradCPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(fwd.name(), "Meta") or \
        torch._library.simple_registry.singleton.find(fwd.name()).fake_impl.kernel is not None


def test_dropout_and_seed_follow_clamp_in_both_argument_lists():
    for args in (contract.FORWARD_ARGS, contract.BACKWARD_ARGS):
        at = args.index("clamp")
        assert args[at + 1:at + 3] == ("dropout", "seed")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_bipartite_dropout_ops_pass_opcheck(backend):
    """The fake kernels give the real ops' shapes for a bipartite graph (node_out and lse over
    N_dst, dk and dv over N_src) with dropout on, and the autograd registration holds."""
    from magnn import Graph

    device = DEVICE if backend == "triton" else torch.device("cpu")
    require_backend(backend, device)
    fwd, bwd = _ops(backend)
    gen = torch.Generator().manual_seed(4)
    num_dst, num_src, num_edges = 5, 8, 19
    edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen),
                              torch.randint(0, num_dst - 1, (num_edges,), generator=gen)])
    graph = Graph(edge_index, num_dst, num_src_nodes=num_src).to(device)
    q = torch.randn(num_dst, 2, 4, generator=gen).to(device).requires_grad_()
    k, v = (torch.randn(num_src, 2, 4, generator=gen).to(device).requires_grad_() for _ in range(2))
    e = torch.randn(num_edges, 2, 4, generator=gen).to(device).requires_grad_()
    csr = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)
    args = (q, k, v, e, *csr, None, None, None, None, None, None, "additive", "none", None, 0.35, 2**35 + 3, 7)
    torch.library.opcheck(fwd, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    result = contract.ForwardResult(*fwd(*[a.detach() if torch.is_tensor(a) else a for a in args]))
    assert result.node_out.shape == (num_dst, 2, 4) and result.lse.shape == (num_dst, 2, 2)
    grad_node = torch.randn(num_dst, 2, 4, generator=gen).to(device)
    bwd_args = (grad_node, None, None, q.detach(), k.detach(), v.detach(), e.detach(), result.lse, result.node_out,
                *csr, None, None, None, None, None, None, "additive", "none", None, 0.35, 2**35 + 3)
    torch.library.opcheck(bwd, bwd_args, test_utils=("test_schema", "test_faketensor"))
    grads = contract.BackwardResult(*bwd(*bwd_args))
    assert grads.dq.shape == q.shape and grads.dk.shape == grads.dv.shape == (num_src, 2, 4)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode,mantissa_bits", [("gt", 7), ("additive", -1), ("additive", 7)])
def test_unkept_edge_out_is_empty_in_both_ops_and_their_fakes(backend, mode, mantissa_bits):
    """need_edge_out=False (the schema's last argument, default True): edge_out comes back as
    [0, H, D] from the real op and from its fake kernel alike, the autograd registration holds,
    and the statistics still count every edge's row."""
    from magnn import Graph

    device = DEVICE if backend == "triton" else torch.device("cpu")
    fwd, _ = _ops(backend)
    default = fwd._schema.arguments[-1]
    assert default.name == "need_edge_out" and default.default_value is True
    gen = torch.Generator().manual_seed(8)
    num_nodes, num_edges = 6, 17
    graph = Graph(torch.randint(0, num_nodes, (2, num_edges), generator=gen), num_nodes).to(device)
    q, k, v = (torch.randn(num_nodes, 2, 4, generator=gen).to(device).requires_grad_() for _ in range(3))
    e = torch.randn(num_edges, 2, 4, generator=gen).to(device).requires_grad_()
    csr = (graph.rowptr, graph.col, graph.perm, graph.rev_rowptr, graph.rev_col, graph.rev_perm)
    args = (q, k, v, e, *csr, None, None, None, None, None, None, mode, "none", None, 0.0, 0, mantissa_bits, False)
    torch.library.opcheck(fwd, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    result = contract.ForwardResult(*fwd(*[a.detach() if torch.is_tensor(a) else a for a in args]))
    kept = contract.ForwardResult(*fwd(*[a.detach() if torch.is_tensor(a) else a for a in args[:-1]]))
    assert result.edge_out.shape == (0, 2, 4) and kept.edge_out.shape == (num_edges, 2, 4)
    assert torch.equal(result.node_out, kept.node_out) and torch.equal(result.lse, kept.lse)
    if mantissa_bits >= 0:
        assert int(result.hist_abs.sum()) == num_edges * 8 and torch.equal(result.hist_abs, kept.hist_abs)
        assert torch.equal(result.row_ratio, kept.row_ratio) and torch.equal(result.hist_ratio, kept.hist_ratio)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_projection_ops_follow_the_contract(backend):
    """The in-operator edge projection's ops (contract.PROJ_FORWARD_ARGS / PROJ_BACKWARD_ARGS) are
    registered by both compiled backends with the contract's schema, and magnn.functional
    dispatches the projection to them (no unfused fallback)."""
    from magnn.functional import projection_fallback_reason

    device = DEVICE if backend == "triton" else torch.device("cpu")
    require_backend(backend, device)
    namespace = getattr(torch.ops, contract.OP_NAMESPACES[backend])
    assert projection_fallback_reason(backend) is None
    fwd, bwd = namespace.edge_attention_proj_fwd.default, namespace.edge_attention_proj_bwd.default
    assert [name for name, _ in _signature(fwd)[0]] == list(contract.PROJ_FORWARD_ARGS)
    assert [name for name, _ in _signature(bwd)[0]] == list(contract.PROJ_BACKWARD_ARGS)
    assert _signature(fwd)[1] == len(contract.ForwardResult._fields)
    assert _signature(bwd)[1] == len(contract.ProjBackwardResult._fields)
    plain = dict(_signature(namespace.edge_attention_fwd.default)[0])
    for name, kind in _signature(fwd)[0]:
        if name in plain:
            assert plain[name] == kind, name


def test_both_backends_register_the_same_projection_schema():
    require_backend("cpu", torch.device("cpu"))
    require_backend("triton", DEVICE)
    for name in ("edge_attention_proj_fwd", "edge_attention_proj_bwd"):
        cpu = getattr(torch.ops.magnn_cpu, name).default
        triton = getattr(torch.ops.magnn_triton, name).default
        assert _signature(cpu) == _signature(triton)
        assert str(cpu._schema).split("(", 1)[1] == str(triton._schema).split("(", 1)[1]
