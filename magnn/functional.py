"""`edge_attention`: input validation and the one place that picks a backend.

Backends share one contract::

    impl(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params,
         mantissa_bits, tap[, return_lse=True][, dropout=p, seed=s])
        -> (node_out, edge_out, RawStats | None[, lse])

with `mantissa_bits=None` meaning "no statistics" (a backend then does no
statistics work), `return_lse=True` (passed only when asked for) adding the
differentiable [N, H] log-sum-exp of each softmax, and `dropout`, `seed` (passed
only when dropout > 0) the in-kernel attention dropout of SPEC §3. The graph may
be bipartite (k, v over its num_src_nodes rows). Layers and models never import
a backend directly.

Statistics reach their `EdgeStats` here, in `edge_attention` (and, for the
node tap of attention merged from several calls, in `merge_attention`):
`stats=` takes one collector or several (e.g. nested `magnn.stats.collect`
blocks). The backend reduces edge_out in its kernels (node_out, small, is
reduced here when both taps are asked for), at the finest mantissa_bits asked for; each collector folds that in with `EdgeStats.add`,
which coarsens the histograms exactly to its own resolution and applies its
own threshold, min_abs, edge types and keep_edge_ratio.
"""
from __future__ import annotations

import importlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .core.binning import reduce_rows
from .core.contract import accumulation_dtype
from .core.dropout import SEED_BOUND
from .core.constants import EBT_VARIANTS, MODES  # noqa: F401  (re-exported)
from .core.errors import ArgumentError, ArgumentTypeError, BackendSettingError  # noqa: F401  (BackendSettingError importable here)
from .core.graph import Graph, as_graph
from .core.mitigation import apply_sink_and_gate, check_sink_and_gate, clamped_sink, sink_share
from .core.validation import (  # noqa: F401  (check_clamp, check_dropout, FLOAT_DTYPES re-exported)
    FLOAT_DTYPES, check_attention_inputs, check_clamp, check_dropout, check_edge_types, check_seed_argument,
)
from .stats import AttentionStats, EdgeStats, StatsArg, add_to_all, recomputing, stats_targets



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


BACKEND_ENV = "MAGNN_BACKEND"


def preferred_backend() -> Optional[str]:
    """The backend $MAGNN_BACKEND asks backend="auto" to try first (None: unset, empty or "auto").

    It is a preference, not a demand: when that backend cannot run on a call's device or dtype,
    "auto" warns once and falls back as usual (an explicit backend= raises instead). A value that
    names no backend raises BackendSettingError listing the choices."""
    value = os.environ.get(BACKEND_ENV, "").strip()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise BackendSettingError(
            f"{BACKEND_ENV}={value!r} names no magnn backend; set it to one of "
            f"{', '.join(map(repr, backend_choices()))} (the backend that backend=\"auto\" tries first), or unset it")
    return value


def check_backend_name(name) -> None:
    """Raises ValueError unless `name` is "auto" or a key of BACKENDS (availability is checked at run time)."""
    if not isinstance(name, str) or name not in backend_choices():
        raise ArgumentError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, backend_choices()))}")


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


def _fused_sink_and_gate(q, sink, gate, chosen: str, clamp) -> dict:
    """The compiled backends' `sink` / `gate` arguments (contract.FORWARD_ARGS): the sink logit clipped
    like every logit and both in the accumulation dtype, differentiable back to the caller's tensors;
    {} for the reference, which applies them after its softmax (`apply_sink_and_gate`)."""
    if chosen == "torch":
        return {}
    work = accumulation_dtype(q.dtype)
    return {"sink": None if sink is None else clamped_sink(sink, None if clamp is None else float(clamp), work),
            "gate": None if gate is None else gate.to(work)}


def select_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend `name` resolves to for tensors on `device` of `dtype`."""
    if name == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        preferred = preferred_backend()
        if preferred is not None:
            order = (preferred,) + order
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


def attention_weights(q, k, e, graph: Graph, lse, edge_out, *, mode, clamp, bias, ebt, ebt_params,
                      edges: slice = slice(None)):
    """alpha [E, H] (caller's order, before dropout) from the saved log-sum-exp: alpha_ij =
    exp(l_ij - lse_i) with the clamped logit l_ij recomputed per edge in torch (gt: from
    edge_out, which is the score w_ij); 0 where node i attends to nothing. Differentiable.
    edges: only these rows of the caller's edges (e, edge_out hold just those rows; bias all E)."""
    work = lse.dtype
    head_dim = q.shape[2]
    src, dst = graph.src[edges], graph.dst[edges]
    bias = None if bias is None else bias[edges]
    if mode == "gt" and edge_out is not None and edge_out.dtype in (torch.float32, torch.float64):
        logits = edge_out.to(work).sum(-1)
    else:
        scale = 1.0 / math.sqrt(head_dim)
        q_w, k_w, e_w = (t.to(work) for t in (q, k, e))
        shift = None  # ebt="edge": b_e,i = beta_i e'
        if ebt == "edge":
            k_bias, e_bias = ebt_params[0].to(work), ebt_params[1].to(work)
            shift = (q_w * k_bias).sum(-1, keepdim=True) * scale * e_bias
        q_dst = q_w[dst]
        if mode == "gt":
            logits = (q_dst * k_w[src] * e_w).sum(-1) * scale
            if shift is not None:
                logits = logits + shift.sum(-1)[dst]
        else:
            shifted = e_w if shift is None else e_w + shift[dst]
            logits = (q_dst * (k_w[src] + shifted)).sum(-1) * scale
    if bias is not None:
        bias = bias.to(work)
        logits = logits + (bias.unsqueeze(-1) if bias.dim() == 1 else bias)
    if clamp is not None:
        logits = logits.clamp(-clamp, clamp)
    lse_dst = lse[dst]
    empty = torch.isinf(lse_dst) & (lse_dst < 0)  # nothing attended: no exp(-inf - -inf) NaN
    safe = torch.where(empty, torch.zeros_like(lse_dst), lse_dst)
    return torch.where(empty, torch.zeros_like(logits), torch.exp(logits - safe))


def _call_edge_types(edge_types, num_edges: int) -> Optional[torch.Tensor]:
    """A checked `edge_types=` as an int64 CPU tensor of the call's E rows (None stays None)."""
    if edge_types is None or isinstance(edge_types, torch.Tensor):
        return None if edge_types is None else edge_types.detach().to("cpu", torch.int64)
    return torch.full((num_edges,), int(edge_types), dtype=torch.int64)


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
    edge_types=None,
    return_lse: bool = False,
    dropout: float = 0.0,
    seed: Optional[int] = None,
    return_alpha: bool = False,
    need_edge_out: bool = True,
    e_weight: Optional[torch.Tensor] = None,
    e_bias: Optional[torch.Tensor] = None,
    sink: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    backend: str = "auto",
):
    """Fused edge attention over incoming edges (SPEC §3).

    Args:
      q: [N_dst, H, D] queries; k, v: [N_src, H, D] keys, values (N_src == N_dst unless
        the graph is bipartite); e: [E, H, D] projected edge features.
      edge_index_or_graph: `[2, E]` int64 (row 0 = source j < N_src, row 1 = destination
        i < N_dst; N_dst comes from q, N_src from k) or a prebuilt `magnn.Graph`.
      mode: "gt" (multiplicative edge gating, edge_out = score w_ij) or
        "additive" (TransformerConv, edge_out = a_ij (v_j + e_ij)).
      clamp: clip logits to [-clamp, clamp]; bias: [E] or [E, H] added to logits.
      ebt: None, "edge" or "slot"; ebt_params: (k', e', v'), each [H, D].
      stats: an `EdgeStats` to fill with this call's massive-activation statistics, or a
        list/tuple of them (each gets this call once, with its own settings). Collectors
        with tap="edge" and tap="node" together cost one reduction of node_out ([N, H*D]);
        different mantissa_bits cost nothing extra.
      edge_types: per-edge types of this call for the per-type counts: an integer tensor
        [E] (caller's edge order) or one int for every edge. Collectors that count by
        edge type (those with `edge_types` set) use it for this call instead of their
        own; the others ignore it. E.g. a call over edges that are not the batch's real
        edges passes `magnn.models.NON_EDGE_TYPE`.
      return_lse: also return the [N, H] log-sum-exp of each (node, head)'s softmax,
        lse_i = log(sum_j exp(l_ij)) over the attended logits (after the clamp, the EBT
        slot's included): float32, or float64 for float64 inputs; -inf where nothing is
        attended. It is differentiable (d lse_i / d l_ij = a_ij), so attention over
        disjoint edge sets can be merged exactly (`merge_attention`).
      dropout: attention dropout probability p in [0, 1) (0: none; layers pass it only in
        training): every real edge's weight is multiplied by keep(seed, edge id, head) /
        (1 - p) inside the kernels, the same mask on every backend (SPEC §3); lse and
        alpha are those before dropout; the EBT slot is never dropped.
      seed: the dropout mask's seed (an int); None draws one from torch's default CPU
        generator when dropout > 0, so `torch.manual_seed` makes runs repeatable.
      return_alpha: also return the attention weights alpha [E, H] (caller's edge order,
        before dropout) from the saved log-sum-exp (no second softmax pass); differentiable.
      need_edge_out: False when the caller discards edge_out (PyG's TransformerConv does):
        it is then not written and None is returned in its place; the statistics of the
        edge tap are still reduced from its rows as the kernels compute them, and without
        them additive mode skips its edge_out pass. node_out, lse and alpha are unchanged.
      e_weight, e_bias: the edge projection inside the operator (SPEC §3, "Edge projection").
        With e_weight [H*D, F] (and optionally e_bias [H*D]), `e` is the raw edge features
        a [E, F] and the operator uses e_ij = e_weight @ a_ij + e_bias (viewed as [H, D]),
        formed per edge inside the kernels: no [E, H*D] tensor is built, in the forward or
        the backward, which accumulates the gradients of e_weight and e_bias directly (and of
        a only when a requires one). The same function as passing
        `(a @ e_weight.T + e_bias).view(E, H, D)` as e, up to rounding (e is formed in the
        accumulation dtype, float32 for half inputs, and not rounded to the input dtype).
        Where it runs in the kernels: cpu and triton (every mode, EBT, bias, dropout and the
        statistics). The torch reference forms e unfused (it is the oracle); a backend that
        could not would be named by `projection_fallback_reason`, with a RuntimeWarning once.
      sink: a learned per-head sink logit [H] (gpt-oss): exp(sink_h) joins every softmax
        denominator with value 0, so node_out_i is scaled by sigmoid(lse_i - sink_h) (the sink
        clamped like every logit). lse includes the sink's term and alpha sums to 1 minus its
        share; dropout never drops it; edge_out in "gt" mode (the score) is unchanged, in
        "additive" mode it is the message with the sink-inclusive weight (SPEC §3).
      gate: a per-(node, head) gate logit [N_dst, H] (gated attention, Qiu et al. 2025):
        node_out_i,h is multiplied by sigmoid(gate_i,h); lse, alpha and edge_out are unchanged.
        cpu and triton apply both inside their kernels (the sink's term opens each row's
        softmax, the gate multiplies node_out as it is stored); the torch reference applies the
        same math after its softmax. Gradients for sink and gate on every backend.
      backend: "auto", "torch", "cpu" or "triton".

    Returns (node_out [N_dst, H, D], edge_out [E, H, D] or None) in the caller's edge order;
    return_lse appends lse [N_dst, H], return_alpha appends alpha [E, H]:
    (node_out, edge_out[, lse][, alpha]).
    """
    num_src_nodes = None
    if not isinstance(edge_index_or_graph, Graph):
        if num_nodes is None and isinstance(q, torch.Tensor) and q.dim() == 3:
            num_nodes = q.shape[0]  # an edge list's node count comes from q
        if isinstance(k, torch.Tensor) and k.dim() == 3 and isinstance(q, torch.Tensor) and q.dim() == 3 \
                and k.shape[0] != q.shape[0]:
            num_src_nodes = k.shape[0]  # bipartite: the source count comes from k
    graph = as_graph(edge_index_or_graph, num_nodes, num_src_nodes)
    raw_features = None
    if e_weight is not None:
        _check_projection(q, e, e_weight, e_bias, graph)
        raw_features = e
        # only for the input checks: a zero-stride view of the right shape, no memory
        e = q.new_zeros(()).expand(graph.num_edges, q.shape[1], q.shape[2])
    elif e_bias is not None:
        raise ArgumentError("e_bias given without e_weight; pass e_weight [H*D, F] with raw edge features as e")
    check_attention_inputs(q, k, v, e, graph, mode, clamp, bias, ebt, ebt_params)
    check_edge_types(edge_types, graph.num_edges)
    check_dropout(dropout)
    check_seed_argument(seed)
    if not isinstance(need_edge_out, bool):
        raise ArgumentTypeError(f"need_edge_out must be True or False, got {need_edge_out!r}")
    dropout = float(dropout)
    if dropout > 0 and seed is None:
        seed = int(torch.randint(SEED_BOUND, (), dtype=torch.int64))
    targets = stats_targets(stats)
    attention_targets = tuple(t for t in targets if isinstance(t, AttentionStats))
    targets = tuple(t for t in targets if not isinstance(t, AttentionStats))
    epilogue = sink is not None or gate is not None
    if epilogue:
        check_sink_and_gate(q, sink, gate)
    chosen = _backend_name(backend, q.device.type, q.dtype)
    implementation = _implementation(chosen)
    # the compiled backends take the sink and the gate into their kernels; the reference applies them
    # after its softmax, with the same node-sized ops (magnn.core.mitigation)
    fused = _fused_sink_and_gate(q, sink, gate, chosen, clamp) if epilogue else {}
    projection = {}
    if raw_features is not None:
        reason = projection_fallback_reason(chosen)
        if reason is None:  # cpu, triton: in the kernels; torch: the oracle materialises e itself, unrounded
            e = raw_features
            projection = {"edge_proj": (e_weight, e_bias)}
        else:
            _warn_once(f"projection:{chosen}", f"magnn: {reason}")
            e = project_edges(raw_features, e_weight, e_bias, q.shape[1], q.shape[2])
    options = dict(
        mode=mode,
        clamp=None if clamp is None else float(clamp),
        bias=bias,
        ebt=ebt,
        ebt_params=None if ebt is None else tuple(ebt_params),
    )
    # one reduction per tap, at the finest resolution any collector of that tap asks for: the
    # backend reduces edge_out inside its kernels; node_out ([N, C], written anyway) is reduced
    # here when edge-tap collectors take the backend's one in-kernel reduction
    edge_bits, node_bits = _finest(targets, "edge"), _finest(targets, "node")
    kernel_tap = "node" if edge_bits is None and node_bits is not None else "edge"
    if epilogue and not fused and kernel_tap == "node":  # the reference's node_out is not the final one
        kernel_tap = "edge"
    # the reference rescales additive edge_out (the message) by the sink's share after its softmax: that
    # tap is reduced here, from the final edge_out (the compiled kernels reduce it as they write it)
    late_edge_tap = bool(epilogue and not fused and sink is not None and mode == "additive" and edge_bits is not None)
    # return_lse and dropout go to the backend only when asked for: the default call is the plain contract
    want_lse = return_lse or return_alpha or (epilogue and not fused) or bool(attention_targets)
    node_out, edge_out, raw, *lse = implementation(
        q, k, v, e, graph, **options,
        mantissa_bits=None if late_edge_tap else edge_bits if kernel_tap == "edge" else node_bits, tap=kernel_tap,
        **({"return_lse": True} if want_lse else {}),
        **({"dropout": dropout, "seed": int(seed)} if dropout > 0 else {}),
        # gt's alpha is read off edge_out (the score), so it is kept for that
        **({} if need_edge_out or late_edge_tap or (return_alpha and mode == "gt") else {"need_edge_out": False}),
        **projection,
        **fused,
    )
    if epilogue and not fused:
        node_out, lse[0], scale = apply_sink_and_gate(node_out, lse[0], sink, gate, options["clamp"])
        if scale is not None and mode == "additive" and edge_out is not None:
            edge_out = (edge_out.to(scale.dtype) * scale[graph.dst].unsqueeze(-1)).to(edge_out.dtype)
        if late_edge_tap:
            raw = reduce_rows(edge_out.detach().reshape(edge_out.shape[0], q.shape[1] * q.shape[2]), edge_bits)
    if targets:
        raws = {kernel_tap: raw}
        if kernel_tap == "edge" and node_bits is not None:
            raws["node"] = reduce_rows(node_out.detach().reshape(node_out.shape[0], q.shape[1] * q.shape[2]), node_bits)
        call_types = _call_edge_types(edge_types, graph.num_edges)
        add_to_all(targets, raws, heads=q.shape[1], edge_types=call_types)  # all collectors or none
    result = (node_out, edge_out if need_edge_out else None)
    if return_lse:
        result += (lse[0],)
    if attention_targets and not recomputing():  # a recomputed forward's statistics were taken when it first ran
        def edge_rows(rows: slice) -> torch.Tensor:  # e's rows (formed per chunk under the projection)
            if not projection:
                return e[rows]
            return project_edges(raw_features[rows], e_weight, e_bias, q.shape[1], q.shape[2])

        summary = attention_summary(q, k, edge_rows, graph, lse[0], edge_out, sink=sink, **options)
        for target in attention_targets:
            target.add(*summary)
    if return_alpha:
        if projection:  # alpha needs e itself (unless gt reads the logits off a float32 edge_out)
            e = project_edges(raw_features, e_weight, e_bias, q.shape[1], q.shape[2])
        result += (attention_weights(q, k, e, graph, lse[0], edge_out, **options),)
    return result


# edges per chunk of `attention_summary`: its [chunk, H, D] temporaries stay small on any graph
SUMMARY_CHUNK_EDGES = 1 << 18


def attention_summary(q, k, edge_rows, graph: Graph, lse, edge_out, *, sink=None, mode, clamp, bias, ebt,
                      ebt_params):
    """(sink_mass [N, H], edge_entropy [N, H], in-degree [N]) of one call for `AttentionStats` (SPEC §4),
    without gradients, in lse's dtype: the EBT slot's weight plus the sink's, exp(l - lse_i) (NaN where
    nothing is attended), and -sum_j p log p over the edges with p the weights alpha renormalised over
    the node's edges (NaN where no edge is attended). The weights are recomputed as `return_alpha`
    forms them, in chunks of edges (`edge_rows(slice)` gives e's rows): two passes, the edge totals
    and then the entropy, with O(chunk * H * D) temporaries."""
    options = dict(mode=mode, clamp=clamp, bias=bias, ebt=ebt, ebt_params=ebt_params)
    with torch.no_grad():
        lse = lse.detach()
        num_nodes, heads, head_dim = q.shape
        attended = torch.isfinite(lse)
        safe = torch.where(attended, lse, torch.zeros_like(lse))
        mass = torch.zeros_like(lse)
        if ebt == "slot":
            q_w, k_slot, e_slot = (t.detach().to(lse.dtype) for t in (q, ebt_params[0], ebt_params[1]))
            slot = (q_w * (k_slot * e_slot if mode == "gt" else k_slot + e_slot)).sum(-1) / math.sqrt(head_dim)
            mass = mass + torch.exp((slot if clamp is None else slot.clamp(-clamp, clamp)) - safe)
        if sink is not None:
            mass = mass + sink_share(safe, sink.detach(), clamp)
        mass = torch.where(attended, mass, torch.full_like(mass, math.nan))
        dst = graph.dst
        chunks = [slice(start, start + SUMMARY_CHUNK_EDGES) for start in range(0, graph.num_edges, SUMMARY_CHUNK_EDGES)]

        def weights(rows: slice) -> torch.Tensor:
            rows_out = None if edge_out is None else edge_out[rows]
            return attention_weights(q, k, edge_rows(rows), graph, lse, rows_out, edges=rows, **options).to(lse.dtype)

        total = torch.zeros_like(lse)
        for rows in chunks:
            total.index_add_(0, dst[rows], weights(rows))
        divisor = torch.where(total > 0, total, torch.ones_like(total))
        entropy = torch.zeros_like(lse)
        for rows in chunks:
            share = weights(rows) / divisor[dst[rows]]
            entropy.index_add_(0, dst[rows], -torch.special.xlogy(share, share))
        entropy = torch.where(total > 0, entropy, torch.full_like(entropy, math.nan))
        degree = torch.bincount(dst, minlength=num_nodes)
    return mass, entropy, degree


# Backends whose entry point takes the projection (edge_proj=(W, b)): cpu and triton form e = W a + b
# inside their kernels, the torch reference materialises it (it is the oracle). A backend listed
# here would get e formed unfused before its kernels, with the reason; none is today.
_PROJECTION_FALLBACK: dict = {}


def projection_fallback_reason(backend: str) -> Optional[str]:
    """None when `backend` takes the edge projection itself (cpu, triton: inside its kernels; torch: the
    oracle, which materialises e), else why not: then `edge_attention(e_weight=...)` forms
    e = a @ e_weight.T + e_bias unfused before calling it, with a RuntimeWarning once."""
    return _PROJECTION_FALLBACK.get(backend)


def project_edges(a: torch.Tensor, e_weight: torch.Tensor, e_bias: Optional[torch.Tensor],
                  heads: int, head_dim: int) -> torch.Tensor:
    """The unfused edge projection: (a @ e_weight.T + e_bias) as [E, H, D] in a's dtype,
    computed in the accumulation dtype (float32 for half inputs) like the in-kernel form."""
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    e = torch.nn.functional.linear(a.to(work), e_weight.to(work), None if e_bias is None else e_bias.to(work))
    return e.to(a.dtype).view(a.shape[0], heads, head_dim)


def _check_projection(q, a, e_weight, e_bias, graph: Graph) -> None:
    """Raises unless a [E, F] (q's dtype and device), e_weight [H*D, F] and e_bias [H*D] or None fit."""
    for name, tensor in (("e (the raw edge features with e_weight)", a), ("e_weight", e_weight)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 tensor")
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError("q must have shape [N, H, D]")
    channels = q.shape[1] * q.shape[2]
    if a.dim() != 2:
        raise ValueError(f"with e_weight, e must be the raw edge features [E, F], got {list(a.shape)}")
    if a.shape[0] != graph.num_edges:
        raise ValueError(f"e has {a.shape[0]} rows but edge_index has {graph.num_edges} edges")
    if a.dtype != q.dtype:
        raise TypeError(f"the raw edge features must share q's dtype {q.dtype}, got {a.dtype}")
    if e_weight.shape != (channels, a.shape[1]):
        raise ValueError(f"e_weight must be [H*D, F]={[channels, a.shape[1]]}, got {list(e_weight.shape)}")
    if e_bias is not None:
        if not isinstance(e_bias, torch.Tensor) or not e_bias.is_floating_point() or e_bias.shape != (channels,):
            shape = list(e_bias.shape) if isinstance(e_bias, torch.Tensor) else type(e_bias).__name__
            raise ValueError(f"e_bias must be a floating-point tensor [H*D]={[channels]}, got {shape}")
    devices = {t.device for t in (q, a, e_weight) + (() if e_bias is None else (e_bias,))}
    if len(devices) > 1:
        raise ValueError(f"q, the raw edge features, e_weight and e_bias must be on one device, got {sorted(map(str, devices))}")


def merge_attention(
    node_outs: Sequence[torch.Tensor],
    lses: Sequence[torch.Tensor],
    log_weights: Optional[Sequence[Optional[torch.Tensor]]] = None,
    *,
    stats: StatsArg = None,
):
    """One softmax over the union of disjoint edge sets, from each set's own attention.

    Part p is one `edge_attention(..., return_lse=True)` call: its node_out o_p [N, H, D]
    and log-sum-exp lse_p [N, H]. With an optional structural log-weight s_p per
    destination node ([N] or [N, H], added to every logit of that part after any clamp,
    i.e. each of its attention weights multiplied by exp(s_p)) the union's output is

        node_out = sum_p exp(lse_p + s_p - m) o_p / sum_p exp(lse_p + s_p - m),
        lse      = m + log(sum_p exp(lse_p + s_p - m)),   m = max_p (lse_p + s_p)

    exactly the softmax over all parts' logits together, and differentiable through the
    parts' lse. A (node, head) that no part attends to gets node_out 0 and lse -inf, with
    zero (never NaN) gradients. Computed in the lse dtype, node_out rounded back to the
    parts' dtype.

    stats: collectors with tap="node" get the merged node_out (one call); the parts'
    edge rows reach edge-tap collectors through each part's own `edge_attention(stats=)`.

    Returns (node_out [N, H, D], lse [N, H]).
    """
    node_outs, lses = list(node_outs), list(lses)
    weights = [None] * len(node_outs) if log_weights is None else list(log_weights)
    if not node_outs or not (len(node_outs) == len(lses) == len(weights)):
        raise ArgumentError("merge_attention needs one node_out, one lse (and one log_weight or None) per part")
    shape = node_outs[0].shape
    for out, lse, weight in zip(node_outs, lses, weights):
        if out.dim() != 3 or out.shape != shape or lse.shape != shape[:2]:
            raise ArgumentError(
                f"every part needs node_out [N, H, D]={list(shape)} and lse [N, H]={list(shape[:2])}, "
                f"got {list(out.shape)} and {list(lse.shape)}"
            )
        if weight is not None and weight.shape not in (shape[:1], shape[:2]):
            raise ArgumentError(f"a log_weight must be [N]={list(shape[:1])} or [N, H]={list(shape[:2])}, got {list(weight.shape)}")
    targets = stats_targets(stats)
    if any(target.tap != "node" for target in targets):
        raise ArgumentError("merge_attention fills tap='node' collectors only; edge rows come from each part's edge_attention")
    work = lses[0].dtype
    shifted = torch.stack([
        lse.to(work) if weight is None else lse.to(work) + (weight.unsqueeze(-1) if weight.dim() == 1 else weight).to(work)
        for lse, weight in zip(lses, weights)
    ])  # [P, N, H]
    row_max = shifted.amax(0)
    # a shift that carries no gradient; rows nobody attends to (all -inf) shift by 0
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max).detach()
    scaled = torch.exp(shifted - row_max)
    total = scaled.sum(0)
    empty = total == 0
    total = torch.where(empty, torch.ones_like(total), total)
    share = scaled / total  # [P, N, H]
    node_out = sum(part.unsqueeze(-1) * out.to(work) for part, out in zip(share, node_outs)).to(node_outs[0].dtype)
    lse = torch.where(empty, torch.full_like(total, -math.inf), row_max + torch.log(total))
    if targets:
        num_nodes, heads, head_dim = shape
        raw = reduce_rows(node_out.detach().reshape(num_nodes, heads * head_dim), max(t.mantissa_bits for t in targets))
        add_to_all(targets, {"node": raw}, heads=heads)
    return node_out, lse


def _finest(targets: tuple[EdgeStats, ...], tap: str) -> Optional[int]:
    bits = [t.mantissa_bits for t in targets if t.tap == tap]
    return max(bits) if bits else None
