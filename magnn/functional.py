"""`edge_attention`: input validation and the one place that picks a backend.

Backends share one contract::

    impl(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params,
         mantissa_bits, tap) -> (node_out, edge_out, RawStats | None)

with `mantissa_bits=None` meaning "no statistics" (a backend then does no
statistics work). Layers and models never import a backend directly.

Statistics reach their `EdgeStats` here, in `edge_attention`: `stats=` takes
one collector or several (e.g. nested `magnn.stats.collect` blocks). The
backend reduces once per distinct tap, at the finest mantissa_bits asked for;
each collector folds that in with `EdgeStats.add`, which coarsens the
histograms exactly to its own resolution and applies its own threshold,
min_abs, edge types and keep_edge_ratio.
"""
from __future__ import annotations

import importlib
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .core.graph import Graph, as_graph
from .stats import EdgeStats, StatsArg, add_to_all, stats_targets

MODES = ("gt", "additive")
EBT_VARIANTS = (None, "edge", "slot")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """A backend: `module:function` to run, and `module:function` saying why it can't."""

    name: str
    entry: str
    unavailable: str  # callable(device, dtype) -> None if usable, else a reason

    def _resolve(self, spec: str) -> Callable:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)

    def reason_unavailable(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        try:
            return self._resolve(self.unavailable)(device, dtype)
        except ImportError as error:
            return f"cannot import the {self.name} backend ({error})"

    def implementation(self) -> Callable:
        return self._resolve(self.entry)


def _torch_unavailable(device, dtype):
    return None


BACKENDS = {
    "torch": Backend("torch", "magnn.backends.reference:run_torch_backend", "magnn.functional:_torch_unavailable"),
    "triton": Backend(
        "triton", "magnn.backends.triton:run_triton_backend", "magnn.backends.triton:unavailable_reason"
    ),
    "cpu": Backend("cpu", "magnn.backends.cpu:run_cpu_backend", "magnn.backends.cpu:unavailable_reason"),
}
# fastest first, per device type
AUTO_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpu", "torch")}

_warned: set[str] = set()



def backend_choices() -> tuple[str, ...]:
    """Every accepted backend name: "auto" and the keys of BACKENDS."""
    return ("auto", *BACKENDS)


def check_backend_name(name) -> None:
    """Raises ValueError unless `name` is "auto" or a key of BACKENDS (availability is checked at run time)."""
    if not isinstance(name, str) or name not in backend_choices():
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, backend_choices()))}")


def check_clamp(clamp) -> None:
    """Raises ValueError unless `clamp` is None or a number > 0 (the logit bound c of clip(l, -c, c))."""
    if clamp is None:
        return
    if isinstance(clamp, bool) or not isinstance(clamp, numbers.Real):
        raise ValueError(f"clamp must be None (no clamp) or a positive number, got {clamp!r}")
    if not float(clamp) > 0:  # also rejects NaN
        raise ValueError(f"clamp must be None (no clamp) or a positive number, got {clamp!r}")


def _implementation(name: str) -> Callable:
    # a plain module-level dict: torch.compile looks it up like a constant
    if name not in _IMPLEMENTATIONS:
        _IMPLEMENTATIONS[name] = BACKENDS[name].implementation()
    return _IMPLEMENTATIONS[name]


_IMPLEMENTATIONS: dict[str, Callable] = {}


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@torch.compiler.assume_constant_result
def _backend_name(name: str, device_type: str, dtype: torch.dtype) -> str:
    """select_backend reduced to a name: torch.compile runs it once while tracing and keeps
    the answer as a constant, so the imports and checks behind it never enter the graph."""
    chosen = select_backend(name, torch.device(device_type), dtype).name
    _implementation(chosen)  # resolved here, eagerly, so the traced lookup below finds it
    return chosen


def select_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend `name` resolves to for tensors on `device` of `dtype`."""
    if name == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        if os.environ.get("MAGNN_BACKEND"):
            order = (os.environ["MAGNN_BACKEND"],) + order
        for candidate in order:
            backend = BACKENDS[candidate]
            reason = backend.reason_unavailable(device, dtype)
            if reason is None:
                return backend
            if candidate != "torch":
                _warn_once(
                    f"{candidate}:{device.type}:{dtype}",
                    f"magnn: the {candidate} backend is not usable here ({reason}); "
                    "falling back to a slower backend. `magnn info` lists what runs here.",
                )
        return BACKENDS["torch"]
    check_backend_name(name)
    backend = BACKENDS[name]
    reason = backend.reason_unavailable(device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} cannot run on {device.type} tensors of {dtype}: {reason}")
    return backend


def _check_inputs(q, k, v, e, graph: Graph, mode, clamp, bias, ebt, ebt_params):
    for name, tensor in (("q", q), ("k", k), ("v", v), ("e", e)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
        if tensor.dim() != 3:
            raise ValueError(f"{name} must have shape [{'E' if name == 'e' else 'N'}, H, D], got {list(tensor.shape)}")
    if not (q.dtype == k.dtype == v.dtype == e.dtype):
        raise TypeError(f"q, k, v, e must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}, {e.dtype}")
    devices = {t.device for t in (q, k, v, e)} | {graph.device}
    if len(devices) > 1:
        raise ValueError(f"q, k, v, e and the graph must be on one device, got {sorted(map(str, devices))}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape [N, H, D], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    num_nodes, heads, head_dim = q.shape
    if head_dim == 0 or heads == 0:
        raise ValueError(f"H and D must be positive, got H={heads}, D={head_dim}")
    if num_nodes != graph.num_nodes:
        raise ValueError(f"q has {num_nodes} nodes but the graph has num_nodes={graph.num_nodes}")
    if e.shape[0] != graph.num_edges:
        raise ValueError(f"e has {e.shape[0]} rows but edge_index has {graph.num_edges} edges")
    if e.shape[1:] != q.shape[1:]:
        raise ValueError(f"e must be [E, H={heads}, D={head_dim}] like q, got {list(e.shape)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose 'gt' or 'additive'")
    if ebt not in EBT_VARIANTS:
        raise ValueError(f"unknown ebt {ebt!r}; choose None, 'edge' or 'slot'")
    check_clamp(clamp)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("bias must be a floating-point tensor of shape [E] or [E, H]")
        if bias.shape not in (torch.Size([graph.num_edges]), torch.Size([graph.num_edges, heads])):
            raise ValueError(f"bias must have shape [E]={[graph.num_edges]} or [E, H]={[graph.num_edges, heads]}, got {list(bias.shape)}")
        if bias.device != q.device:
            raise ValueError(f"bias is on {bias.device} but q is on {q.device}")
    if ebt is not None:
        if ebt_params is None or len(ebt_params) != 3:
            raise ValueError("ebt needs ebt_params=(k_b, e_b, v_b), each of shape [H, D]")
        for name, param in zip(("k_b", "e_b", "v_b"), ebt_params):
            if not isinstance(param, torch.Tensor) or param.shape != (heads, head_dim):
                shape = list(param.shape) if isinstance(param, torch.Tensor) else type(param).__name__
                raise ValueError(f"ebt_params {name} must have shape [H, D]={[heads, head_dim]}, got {shape}")
            if param.device != q.device:
                raise ValueError(f"ebt_params {name} is on {param.device} but q is on {q.device}")
    elif ebt_params is not None:
        raise ValueError("ebt_params given but ebt is None; pass ebt='edge' or 'slot'")


def edge_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    e: torch.Tensor,
    edge_index_or_graph,
    *,
    num_nodes: Optional[int] = None,
    mode: str = "gt",
    clamp: Optional[float] = None,
    bias: Optional[torch.Tensor] = None,
    ebt: Optional[str] = None,
    ebt_params=None,
    stats: StatsArg = None,
    backend: str = "auto",
):
    """Fused edge attention over incoming edges (SPEC §3).

    Args:
      q, k, v: [N, H, D] node queries, keys, values; e: [E, H, D] projected edge features.
      edge_index_or_graph: `[2, E]` int64 (row 0 = source j, row 1 = destination i)
        or a prebuilt `magnn.Graph`.
      mode: "gt" (multiplicative edge gating, edge_out = score w_ij) or
        "additive" (TransformerConv, edge_out = a_ij (v_j + e_ij)).
      clamp: clip logits to [-clamp, clamp]; bias: [E] or [E, H] added to logits.
      ebt: None, "edge" or "slot"; ebt_params: (k', e', v'), each [H, D].
      stats: an `EdgeStats` to fill with this call's massive-activation statistics, or a
        list/tuple of them (each gets this call once, with its own settings). Collectors
        with tap="edge" and tap="node" together cost one extra forward pass without
        autograd for the second tap; different mantissa_bits cost nothing extra.
      backend: "auto", "torch", "cpu" or "triton".

    Returns (node_out [N, H, D], edge_out [E, H, D]) in the caller's edge order.
    """
    if num_nodes is None and not isinstance(edge_index_or_graph, Graph) and isinstance(q, torch.Tensor) and q.dim() == 3:
        num_nodes = q.shape[0]  # an edge list's node count comes from q
    graph = as_graph(edge_index_or_graph, num_nodes)
    _check_inputs(q, k, v, e, graph, mode, clamp, bias, ebt, ebt_params)
    targets = stats_targets(stats)
    implementation = _implementation(_backend_name(backend, q.device.type, q.dtype))
    options = dict(
        mode=mode,
        clamp=None if clamp is None else float(clamp),
        bias=bias,
        ebt=ebt,
        ebt_params=None if ebt is None else tuple(ebt_params),
    )
    # one reduction per distinct tap, at the finest resolution any collector of that tap asks for
    taps = []
    for target in targets:
        if target.tap not in taps:
            taps.append(target.tap)
    first_tap = taps[0] if taps else "edge"
    node_out, edge_out, raw = implementation(
        q, k, v, e, graph, **options,
        mantissa_bits=_finest(targets, first_tap), tap=first_tap,
    )
    if targets:
        raws = {first_tap: raw}
        for tap in taps[1:]:
            # the backend reduces one tap per pass: the other tap comes from a pass without autograd
            with torch.no_grad():
                detached = dict(options, bias=None if bias is None else bias.detach(),
                                ebt_params=None if ebt is None else tuple(p.detach() for p in ebt_params))
                _, _, raws[tap] = implementation(
                    q.detach(), k.detach(), v.detach(), e.detach(), graph, **detached,
                    mantissa_bits=_finest(targets, tap), tap=tap,
                )
        add_to_all(targets, raws, heads=q.shape[1])  # all collectors or none
    return node_out, edge_out


def _finest(targets: tuple[EdgeStats, ...], tap: str) -> Optional[int]:
    bits = [t.mantissa_bits for t in targets if t.tap == tap]
    return max(bits) if bits else None
