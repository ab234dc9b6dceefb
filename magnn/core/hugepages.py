"""Transparent huge pages for the large per-edge tensors on CPU (Linux).

The edge attention kernels read [E, H, D] rows in an order that jumps over the whole tensor
(every pass that walks edges grouped by node). With 4 kB pages nearly every such row is a TLB
miss, and every fresh 4 kB of a new tensor costs a page fault. Linux backs memory with 2 MB
pages where a program asks for them (`madvise(MADV_HUGEPAGE)`; "madvise" is the usual
setting of /sys/kernel/mm/transparent_hugepage/enabled), before the memory is first touched.
The C++ backend asks for the tensors it allocates (edge_out, de and its per-edge buffers);
`linear` does the same for the edge projection that produces e, so the kernels' random reads
of e hit huge pages too.

Everything here is advice: where the platform, the kernel setting or the allocator does not
follow it, the tensors are ordinary ones and the values are the same. MAGNN_NO_HUGEPAGES=1
turns it off, here and in the C++ backend: with THP's defrag setting "madvise" a page fault in
an advised region may first compact memory, which can stall a step when memory is fragmented.
(For all of torch's allocations at once, PyTorch itself reads THP_MEM_ALLOC_ENABLE=1 at
start-up.)
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F

HUGE_PAGE = 1 << 21
MADV_HUGEPAGE = 14  # linux/mman.h
MIN_BYTES = 2 * HUGE_PAGE  # below this no whole aligned huge page fits reliably

_madvise = None
_looked_up = False


def _libc_madvise():
    """libc's madvise, or None where there is none (not Linux, no libc symbol)."""
    global _madvise, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None, use_errno=True).madvise
                function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                function.restype = ctypes.c_int
                _madvise = function
            except (OSError, AttributeError):
                _madvise = None
    return _madvise


def disabled() -> bool:
    """MAGNN_NO_HUGEPAGES set to anything but "" or "0"."""
    return os.environ.get("MAGNN_NO_HUGEPAGES", "0") not in ("", "0")


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask for huge pages under the 2 MB-aligned part of a CPU tensor's memory; True if asked.

    Only memory not yet touched is affected (call it on a fresh `torch.empty`). Never changes
    values; a refusal by the kernel is ignored.
    """
    if tensor.device.type != "cpu" or tensor.nbytes < MIN_BYTES or disabled():
        return False
    madvise = _libc_madvise()
    if madvise is None:
        return False
    begin = tensor.data_ptr()
    first = (begin + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    last = (begin + tensor.nbytes) & ~(HUGE_PAGE - 1)
    if last <= first:
        return False
    madvise(first, last - first, MADV_HUGEPAGE)
    return True


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_cpu_enabled()


class _HugePageLinear(torch.autograd.Function):
    """x @ weight.T into a fresh huge-page tensor; the backward makes the calls torch's own
    mm backward makes for F.linear's layout (grad @ weight; grad.T @ x, as weight.T is
    column-major), so values and gradients are F.linear's bit for bit."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
        advise_huge_pages(out)
        torch.mm(x, weight.t(), out=out)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def _under_functorch(*tensors: torch.Tensor) -> bool:
    """True inside torch.func transforms (vmap, grad, jvp, ...), which autograd.Functions without
    their own transform rules cannot run under; unknown (an older or newer torch): assume yes."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:
        return True
    return any(is_functorch_wrapped_tensor(t) for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` whose [rows, out] result asks for huge pages: the edge
    projections feeding the kernels. Falls back to F.linear wherever that would not be the same
    computation or does not pay: a bias, another device, not 2-D, a non-contiguous x, mixed
    dtypes, autocast, torch.compile tracing, torch.func transforms, results under 4 MB."""
    if (bias is not None or x.device.type != "cpu" or x.dim() != 2 or weight.dim() != 2 or not x.is_contiguous()
            or x.dtype != weight.dtype or x.shape[0] * weight.shape[0] * x.element_size() < MIN_BYTES
            or torch.compiler.is_compiling() or _autocast_on() or _libc_madvise() is None or disabled()
            or _under_functorch(x, weight)):
        return F.linear(x, weight, bias)
    return _HugePageLinear.apply(x, weight)


def _plain_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear itself (no subclass or wrapper) with no hook anywhere that calling the module
    would run."""
    from torch.nn.modules import module as module_hooks

    if type(module) is not torch.nn.Linear:
        return False
    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
           getattr(module, "_backward_pre_hooks", {}))
    shared = (module_hooks._global_forward_hooks, module_hooks._global_forward_pre_hooks,
              module_hooks._global_backward_hooks, getattr(module_hooks, "_global_backward_pre_hooks", {}))
    return not any(own) and not any(shared)


def project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) for an edge projection, through `linear` when calling the module would do
    nothing more than F.linear (a plain nn.Linear without hooks); otherwise the module's own
    call, so hooks, subclasses and wrappers (LoRA, quantised layers) behave as usual."""
    if _plain_linear(module):
        return linear(x, module.weight, module.bias)
    return module(x)
