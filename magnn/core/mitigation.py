"""The learned sink logit and the attention gate of `edge_attention` (SPEC §3, "Sink and gate").

Both are per-(node, head) scales of node_out. The compiled backends (cpu, triton) apply them
inside their kernels (the sink's term opens each row's online softmax; the gate multiplies
node_out as it is stored; magnn.core.contract). The pure-PyTorch reference applies the same
math here, after its softmax, as a few node-sized torch ops on its differentiable
log-sum-exp (`apply_sink_and_gate`), so its lse backward carries the sink's gradient
(grad_lse_i += dL/dz_i * o_i * s(1 - s)) and no [E, ...] tensor is formed; it is the oracle
the kernels are tested against:

- sink [H]: one extra term exp(sink_h) in every softmax denominator, with value 0
  (gpt-oss's attention sinks). With lse_i the log-sum-exp of node i's own logits
  (edges, and the EBT slot), the softmax over edges + sink gives
  node_out_i * sigmoid(lse_i - sink_h) and the log-sum-exp logaddexp(lse_i, sink_h).
  The sink logit is clamped like every other logit. A node that attends to nothing
  (lse -inf) attends only to the sink: node_out 0, lse = sink_h.
- gate [N_dst, H]: node_out_i,h * sigmoid(gate_i,h) (Qiu et al. 2025, gated attention);
  it changes no attention weight, so lse and alpha ignore it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import ArgumentError, ArgumentTypeError

MITIGATIONS = ("none", "ebt-edge", "ebt-slot", "sink", "gate")
# the mitigations that are an EBT variant: the model's `ebt` setting
MITIGATION_EBT = {"ebt-edge": "edge", "ebt-slot": "slot"}


def check_mitigation(mitigation) -> None:
    """ArgumentError unless `mitigation` is one of MITIGATIONS."""
    if mitigation not in MITIGATIONS:
        raise ArgumentError(f"unknown mitigation {mitigation!r}; choose one of {', '.join(map(repr, MITIGATIONS))}")


def check_sink_and_gate(q, sink, gate) -> None:
    """Raises unless sink is None or a float tensor [H] and gate None or a float tensor [N_dst, H],
    both on q's device."""
    heads = q.shape[1]
    for name, value, shape in (("sink", sink, (heads,)), ("gate", gate, (q.shape[0], heads))):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ArgumentTypeError(f"{name} must be a floating-point tensor {list(shape)}, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ArgumentError(f"{name} must have shape {list(shape)} ([H] for sink, [N_dst, H] for gate), "
                                f"got {list(value.shape)}")
        if value.device != q.device:
            raise ArgumentError(f"{name} must be on q's device {q.device}, got {value.device}")


def clamped_sink(sink: torch.Tensor, clamp: Optional[float], dtype: torch.dtype) -> torch.Tensor:
    """The sink logit [H] in `dtype`, clipped to [-clamp, clamp] like every other logit; without a
    clamp, a +inf logit is taken at `dtype`'s largest finite value (the sink then takes all the
    attention: node_out 0, a huge but finite lse, the same on every backend; -inf is no term)."""
    sink = sink.to(dtype)
    if clamp is not None:
        return sink.clamp(-clamp, clamp)
    return torch.nan_to_num(sink, nan=float("nan"), posinf=torch.finfo(dtype).max, neginf=float("-inf"))


def _neither(lse: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """[N, H] bool: no edge attended (lse -inf) and no sink term (sink -inf), where the formulas below
    would meet -inf - -inf; there they give what an empty softmax gives, and a zero gradient."""
    return torch.isneginf(lse) & torch.isneginf(sink).expand_as(lse)


def sink_scale(lse: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """[N, H]: sigmoid(lse_i - sink_h), the share of node i's softmax that its own logits keep
    (0 where lse is -inf: nothing attended; 1 where the sink is -inf, no term; no NaN in value or
    gradient)."""
    neither = _neither(lse, sink)
    scale = torch.sigmoid(torch.where(neither, torch.zeros_like(lse), lse - sink))
    return torch.where(neither, torch.ones_like(scale), scale)


def _lse_with_sink(lse: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """[N, H]: logaddexp(lse_i, sink_h), -inf where neither term exists (no NaN in the gradient)."""
    neither = _neither(lse, sink)
    zero = torch.zeros_like(lse)
    total = torch.logaddexp(torch.where(neither, zero, lse), torch.where(neither, zero, sink.expand_as(lse)))
    return torch.where(neither, lse, total)


def apply_sink_and_gate(node_out, lse, sink, gate, clamp):
    """(node_out, lse, scale): node_out [N, H, D] scaled by sigmoid(lse - sink) and sigmoid(gate),
    in lse's dtype and rounded back to node_out's; lse with the sink's term (logaddexp); `scale`
    [N, H] the sink's factor (None without a sink) for additive edge_out."""
    work = lse.dtype
    factor, scale = None, None
    if sink is not None:
        sink = clamped_sink(sink, clamp, work)
        scale = sink_scale(lse, sink)
        factor = scale
        lse = _lse_with_sink(lse, sink)
    if gate is not None:
        gate_factor = torch.sigmoid(gate.to(work))
        factor = gate_factor if factor is None else factor * gate_factor
    if factor is not None:
        node_out = (node_out.to(work) * factor.unsqueeze(-1)).to(node_out.dtype)
    return node_out, lse, scale


def sink_share(lse_with_sink: torch.Tensor, sink: torch.Tensor, clamp: Optional[float]) -> torch.Tensor:
    """[N, H]: the attention share exp(sink_h - lse_i) the sink takes (1 where nothing else is attended)."""
    sink = clamped_sink(sink, clamp, lse_with_sink.dtype)
    return torch.exp(sink - lse_with_sink)


__all__ = ["MITIGATIONS", "MITIGATION_EBT", "check_mitigation", "check_sink_and_gate", "clamped_sink",
           "sink_scale", "apply_sink_and_gate", "sink_share"]
