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
