"""The argument checks of the operators, layers and models, in one place.

Each check raises `ArgumentError` (a ValueError) or `ArgumentTypeError` (a TypeError)
from `magnn.core.errors`, with a message that names the argument, the value it got and
what to pass instead. `magnn.functional`, `magnn.core.graph`, `magnn.layers` and
`magnn.models` call them; the checks that need a registry above the core tier
(`magnn.functional.check_backend_name`) stay with the registry.
"""
from __future__ import annotations

import numbers

import torch

from .constants import EBT_INITS, EBT_VARIANTS, MODES
from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "FLOAT_DTYPES", "check_mode", "check_ebt", "check_ebt_init", "check_positive_int", "check_clamp",
    "check_dropout", "check_seed_argument", "check_edge_types", "check_count", "check_edge_index",
    "check_edge_index_one_set", "check_attention_inputs",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_mode(mode) -> None:
    """Raises ArgumentError unless `mode` is one of MODES (edge_attention's score forms)."""
    if mode not in MODES:
        raise ArgumentError(f"unknown mode {mode!r}; choose one of {', '.join(map(repr, MODES))}")


def check_ebt(ebt) -> None:
    """Raises ArgumentError unless `ebt` is one of EBT_VARIANTS."""
    if ebt not in EBT_VARIANTS:
        raise ArgumentError(f"unknown ebt {ebt!r}; choose None, 'edge' or 'slot'")


def check_ebt_init(ebt_init) -> None:
    """Raises ArgumentError unless `ebt_init` is one of EBT_INITS."""
    if ebt_init not in EBT_INITS:
        raise ArgumentError(f"unknown ebt_init {ebt_init!r}; choose one of {', '.join(map(repr, EBT_INITS))}")


def check_positive_int(name: str, value) -> None:
    """Raises ArgumentError unless `value` is an int >= 1 (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ArgumentError(f"{name} must be a positive integer (>= 1), got {value!r}")


def check_clamp(clamp) -> None:
    """Raises ArgumentError unless `clamp` is None or a number > 0 (the logit bound c of clip(l, -c, c))."""
    if clamp is None:
        return
    if isinstance(clamp, bool) or not isinstance(clamp, numbers.Real):
        raise ArgumentError(f"clamp must be None (no clamp) or a positive number, got {clamp!r}")
    if not float(clamp) > 0:  # also rejects NaN
        raise ArgumentError(f"clamp must be None (no clamp) or a positive number, got {clamp!r}")


def check_edge_types(edge_types, num_edges: int) -> None:
    """Raises ArgumentError unless `edge_types` is None, an int, or an integer tensor [E] of the call."""
    if edge_types is None or (isinstance(edge_types, numbers.Integral) and not isinstance(edge_types, bool)):
        return
    if not isinstance(edge_types, torch.Tensor) or edge_types.dtype.is_floating_point or edge_types.is_complex() \
            or edge_types.dtype == torch.bool or edge_types.dim() != 1:
        raise ArgumentError("edge_types must be an int (one type for every edge) or an integer tensor of shape [E]")
    if edge_types.shape[0] != num_edges:
        raise ArgumentError(f"edge_types has {edge_types.shape[0]} entries but the call has {num_edges} edges")


def check_count(name: str, value) -> int | None:
    """`value` as an int (None stays None); ArgumentError when it is negative."""
    if value is None:
        return None
    if int(value) < 0:
        raise ArgumentError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_edge_index(edge_index, num_nodes: int | None, num_src_nodes: int | None = None) -> tuple[int, int]:
    """(num_nodes, num_src_nodes) after checking edge_index: destinations (row 1) must lie in
    [0, num_nodes) and sources (row 0) in [0, num_src_nodes); a None count is inferred (the
    source count defaults to the destination count, one node set)."""
    if num_src_nodes is None:
        num_nodes = check_edge_index_one_set(edge_index, num_nodes)
        return num_nodes, num_nodes
    num_src_nodes = check_count("num_src_nodes", num_src_nodes)
    num_nodes = check_count("num_nodes", num_nodes)
    check_edge_index_one_set(edge_index, None)  # type and shape
    if edge_index.shape[1] == 0:
        return (0 if num_nodes is None else num_nodes), num_src_nodes
    low, high = torch.aminmax(edge_index, dim=1)
    (src_low, dst_low), (src_high, dst_high) = low.tolist(), high.tolist()
    if min(src_low, dst_low) < 0:
        raise ArgumentError(f"edge_index holds a negative node index ({min(src_low, dst_low)}); indices must be >= 0")
    if src_high >= num_src_nodes:
        raise ArgumentError(
            f"edge_index[0] (sources) refers to node {src_high}, but num_src_nodes is {num_src_nodes}; "
            f"source indices must be in [0, {num_src_nodes}) (pass the right size or fix the edges)"
        )
    if num_nodes is None:
        return dst_high + 1, num_src_nodes
    if dst_high >= num_nodes:
        raise ArgumentError(
            f"edge_index[1] (destinations) refers to node {dst_high}, but num_nodes is {num_nodes}; "
            f"destination indices must be in [0, {num_nodes}) (pass the right size or fix the edges)"
        )
    return num_nodes, num_src_nodes


def check_edge_index_one_set(edge_index, num_nodes: int | None) -> int:
    """num_nodes (inferred when None) after checking edge_index [2, E] over one node set."""
    if not isinstance(edge_index, torch.Tensor):
        raise ArgumentTypeError(
            f"edge_index must be a torch.Tensor of shape [2, E], got {type(edge_index).__name__}"
        )
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool or edge_index.is_complex():
        raise ArgumentTypeError(
            f"edge_index must hold integer node indices (torch.int64), got dtype {edge_index.dtype}; "
            "convert it with edge_index.long()"
        )
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        hint = ""
        if edge_index.dim() == 2 and edge_index.shape[1] == 2:
            hint = " (it looks like [E, 2]: pass edge_index.t().contiguous())"
        raise ArgumentError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}{hint}")
    num_edges = edge_index.shape[1]
    if num_nodes is not None:
        if int(num_nodes) < 0:
            raise ArgumentError(f"num_nodes must be >= 0, got {num_nodes}")
        num_nodes = int(num_nodes)
    if num_edges == 0:
        return 0 if num_nodes is None else num_nodes
    low = int(edge_index.min())
    high = int(edge_index.max())
    if low < 0:
        raise ArgumentError(f"edge_index holds a negative node index ({low}); indices must be in [0, num_nodes)")
    if num_nodes is None:
        return high + 1
    if high >= num_nodes:
        raise ArgumentError(
            f"edge_index refers to node {high}, but num_nodes is {num_nodes}; "
            f"indices must be in [0, {num_nodes}) (pass the right num_nodes or fix the edges)"
        )
    return num_nodes


def check_attention_inputs(q, k, v, e, graph, mode, clamp, bias, ebt, ebt_params) -> None:
    """The checks of `magnn.functional.edge_attention`'s inputs: types, dtypes, shapes against
    the `Graph` (num_nodes, num_src_nodes, num_edges, device), devices, and the mode / ebt / clamp / bias / ebt_params settings."""
    for name, tensor in (("q", q), ("k", k), ("v", v), ("e", e)):
        if not isinstance(tensor, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise ArgumentTypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
        if tensor.dim() != 3:
            raise ArgumentError(f"{name} must have shape [{'E' if name == 'e' else 'N'}, H, D], got {list(tensor.shape)}")
    if not (q.dtype == k.dtype == v.dtype == e.dtype):
        raise ArgumentTypeError(f"q, k, v, e must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}, {e.dtype}")
    devices = {t.device for t in (q, k, v, e)} | {graph.device}
    if len(devices) > 1:
        raise ArgumentError(f"q, k, v, e and the graph must be on one device, got {sorted(map(str, devices))}")
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ArgumentError(
            f"q must be [N_dst, H, D] and k, v [N_src, H, D] with the same H and D (k and v the same shape), "
            f"got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    num_nodes, heads, head_dim = q.shape
    if head_dim == 0 or heads == 0:
        raise ArgumentError(f"H and D must be positive, got H={heads}, D={head_dim}")
    if num_nodes != graph.num_nodes:
        raise ArgumentError(f"q has {num_nodes} nodes but the graph has num_nodes={graph.num_nodes}")
    if k.shape[0] != graph.num_src_nodes:
        raise ArgumentError(
            f"k and v have {k.shape[0]} rows but the graph has num_src_nodes={graph.num_src_nodes} source nodes; "
            "build the Graph with num_src_nodes= (or size=(N_src, N_dst)) for a bipartite graph"
        )
    if e.shape[0] != graph.num_edges:
        raise ArgumentError(f"e has {e.shape[0]} rows but edge_index has {graph.num_edges} edges")
    if e.shape[1:] != q.shape[1:]:
        raise ArgumentError(f"e must be [E, H={heads}, D={head_dim}] like q, got {list(e.shape)}")
    check_mode(mode)
    check_ebt(ebt)
    check_clamp(clamp)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise ArgumentTypeError("bias must be a floating-point tensor of shape [E] or [E, H]")
        if bias.shape not in (torch.Size([graph.num_edges]), torch.Size([graph.num_edges, heads])):
            raise ArgumentError(f"bias must have shape [E]={[graph.num_edges]} or [E, H]={[graph.num_edges, heads]}, got {list(bias.shape)}")
        if bias.device != q.device:
            raise ArgumentError(f"bias is on {bias.device} but q is on {q.device}")
    if ebt is not None:
        if ebt_params is None or len(ebt_params) != 3:
            raise ArgumentError("ebt needs ebt_params=(k_b, e_b, v_b), each of shape [H, D]")
        for name, param in zip(("k_b", "e_b", "v_b"), ebt_params):
            if not isinstance(param, torch.Tensor) or param.shape != (heads, head_dim):
                shape = list(param.shape) if isinstance(param, torch.Tensor) else type(param).__name__
                raise ArgumentError(f"ebt_params {name} must have shape [H, D]={[heads, head_dim]}, got {shape}")
            if param.device != q.device:
                raise ArgumentError(f"ebt_params {name} is on {param.device} but q is on {q.device}")
    elif ebt_params is not None:
        raise ArgumentError("ebt_params given but ebt is None; pass ebt='edge' or 'slot'")


def check_dropout(dropout) -> None:
    """Raises ArgumentError unless `dropout` is a number in [0, 1) (the attention dropout probability)."""
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
        raise ArgumentError(f"dropout must be a probability in [0, 1), got {dropout!r}")


def check_seed_argument(seed) -> None:
    """Raises ArgumentError unless `seed` is None or an int (the attention dropout's seed)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ArgumentError(f"seed must be None (drawn from torch's generator) or an int, got {seed!r}")
