"""`FusedEdgeAttention`: projections + EBT parameters around `edge_attention`, and the
projection helpers that `magnn.layers.transformer_conv` shares."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..core import hugepages
from ..core.errors import ArgumentError, LayerInputError  # noqa: F401  (LayerInputError importable here)
from ..core.graph import Graph
from ..core.validation import (  # noqa: F401  (check_ebt_init, check_positive_int re-exported)
    check_clamp, check_dropout, check_ebt, check_ebt_init, check_mode, check_positive_int,
)
from ..functional import check_backend_name, edge_attention
from ..stats import EdgeStats, StatsTap

# reset_parameters(init=...): "default" is each parameter's own rule (nn.Linear's, the EBT's
# ebt_init); "xavier" is SPEC §6's base model: Xavier-uniform projection weights, zero biases
RESET_INITS = ("default", "xavier")
EBT_INIT_STD = {"normal_0.02": 0.02, "standard_normal": 1.0}


def projection(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An nn.Linear whose parameters are allocated but not drawn: the layer's
    `reset_parameters` draws them (once, in the order the layer defines)."""
    return torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)


def reset_projection(linear: nn.Linear, init: str = "default") -> None:
    """Re-initialises one projection: nn.Linear's own rule, or Xavier-uniform weight and zero bias."""
    if init not in RESET_INITS:
        raise ArgumentError(f"unknown init {init!r}; choose one of {', '.join(map(repr, RESET_INITS))}")
    if init == "default":
        linear.reset_parameters()
        return
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def linear_parameters(linear: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight [out, in], bias [out] or None) of the function a Linear-like projection computes:
    its own parameters, or for a composed one (`magnn.models.ComposedEdgeProjection`) the
    composed weight and bias (differentiable in every parameter they come from)."""
    composed = getattr(linear, "composed_parameters", None)
    return composed() if composed is not None else (linear.weight, linear.bias)


def projects_in_kernel(linear: nn.Module, width: int) -> bool:
    """The rule for the edge projection inside the operator (SPEC §3): the edge input is
    narrower than the H*D channels the kernels attend over (in_features < width), so forming
    e_ij per edge inside the kernels saves an [E, H*D] tensor and its gradient, unless a hook
    on the projection module itself would observe its output (then it runs as a module)."""
    in_features = getattr(linear, "in_features", None)
    if in_features is None:  # a PyG Linear (in_channels; -1 while lazy)
        in_features = linear.in_channels
    return 0 < in_features < width and not (linear._forward_hooks or linear._forward_pre_hooks)


class FusedEdgeAttention(StatsTap, nn.Module):
    """Multi-head attention of each node over its incoming edges, with edge features.

    PyG-style: ``x_out, e_out = layer(x, edge_index, edge_attr)`` with
    x [N, in_channels], edge_attr [E, edge_dim]; returns x_out [N, H*D] and
    e_out [E, H*D] (the score w_ij in "gt" mode, the message a_ij (v_j + e_ij)
    in "additive" mode). N = 0 or E = 0 (a graph without edges) are fine.

    Edge projection: when the edge input is narrower than the attention's width
    (`lin_e.in_features < heads * head_dim`, e.g. ogbn-proteins' 8 raw features through
    a `ComposedEdgeProjection`), e = lin_e(edge_attr) is formed per edge inside the
    operator (`edge_attention(e_weight=, e_bias=)`, SPEC §3) and no [E, H*D] tensor or
    gradient exists; otherwise (or when a hook sits on lin_e) lin_e runs as a module and
    its [E, H*D] output goes to the kernels. Same function up to rounding, same parameters.

    Statistics: every call is added to ``stats=`` (one `EdgeStats` or a list)
    and to each collector attached by an active `magnn.stats.collect` block
    (blocks nest; `collectors` lists the active ones); all of them reach
    `edge_attention`'s ``stats=``, which fills them.

    Args:
      in_channels, heads, head_dim, edge_dim: positive integers (width = heads * head_dim).
      mode: "gt" or "additive" (SPEC §3).
      ebt: None, "edge" or "slot" (SPEC §3); turns on bias=True in the projections.
      clamp: None (no clamp) or a positive number c: logits are clipped to [-c, c].
      backend: "auto" or a key of `magnn.functional.BACKENDS` ("torch", "triton", "cpu").
      ebt_init: "normal_0.02" (Sun et al.) or "standard_normal" (the GNN paper's code).
      sink: a learned per-head sink logit ``sink_logit`` [H] (initialised 0), an extra
        softmax term with value 0 (SPEC §3, "Sink and gate").
      gate: gated attention: ``lin_gate`` = Linear(in_channels, H) of the destination node's
        input gives each (node, head) the gate logit; node_out is multiplied by its sigmoid.

    Parameters are drawn by `reset_parameters()` (PyG's convention), which the
    constructor calls last; it re-initialises them at any time.

    Not a PyG `MessagePassing` (the layer for PyG's tools is `magnn.layers.TransformerConv`):
    its result is a pair (x_out, e_out) with an edge stream that the next layer reads, while
    PyG's machinery around a MessagePassing (to_hetero, HeteroConv, explainers, jit) expects one
    node tensor from message -> aggregate -> update; the EBT slot is attended beside the edges,
    so an edge mask over the messages would not cover it; and in "gt" mode e_out is the
    per-edge score w_ij, not a message. A subclass would either break those tools or drop
    the edge output the models are built on.
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        head_dim: int,
        edge_dim: int,
        mode: str = "gt",
        ebt: Optional[str] = None,
        clamp: Optional[float] = None,
        bias: bool = False,
        backend: str = "auto",
        ebt_init: str = "normal_0.02",
        sink: bool = False,
        gate: bool = False,
    ):
        super().__init__()
        for name, value in zip(("in_channels", "heads", "head_dim", "edge_dim"), (in_channels, heads, head_dim, edge_dim)):
            check_positive_int(name, value)
        check_mode(mode)
        check_ebt(ebt)
        check_ebt_init(ebt_init)
        check_clamp(clamp)
        check_backend_name(backend)
        self.in_channels, self.heads, self.head_dim, self.edge_dim = in_channels, heads, head_dim, edge_dim
        self.mode, self.ebt, self.clamp, self.backend, self.ebt_init = mode, ebt, clamp, backend, ebt_init
        width = heads * head_dim
        use_bias = bias or ebt is not None
        self.lin_q = projection(in_channels, width, use_bias)
        self.lin_k = projection(in_channels, width, use_bias)
        self.lin_v = projection(in_channels, width, use_bias)
        self.lin_e = projection(edge_dim, width, use_bias)
        if ebt is not None:
            self.ebt_k = nn.Parameter(torch.empty(heads, head_dim))
            self.ebt_e = nn.Parameter(torch.empty(heads, head_dim))
            self.ebt_v = nn.Parameter(torch.empty(heads, head_dim))
        else:
            self.register_parameter("ebt_k", None)
            self.register_parameter("ebt_e", None)
            self.register_parameter("ebt_v", None)
        # only when asked for: a layer without them keeps its parameters, their order and their draws
        if sink:
            self.sink_logit = nn.Parameter(torch.zeros(heads))
        else:
            self.register_parameter("sink_logit", None)
        self.lin_gate = projection(in_channels, heads, True) if gate else None
        self.init_stats_tap()
        FusedEdgeAttention.reset_parameters(self)  # this class's parameters (subclasses draw theirs after)

    def reset_parameters(self, init: str = "default") -> None:
        """Re-initialises the parameters with the layer's init rules (PyG's convention).

        init="default": the projections with nn.Linear's own rule, the EBT parameters
        k', e', v' from N(0, std) with std 0.02 or 1 by `ebt_init`, drawn in that order
        (q, k, v, e, then k', e', v'). init="xavier" (SPEC §6's base model, as
        `magnn.analysis.detect.xavier_reset`): Xavier-uniform projection weights and zero
        biases; the EBT parameters, which are not projections, keep their values. Then the
        gate's projection (its init rule) and the sink logit (0, with init="default").
        """
        for linear in (self.lin_q, self.lin_k, self.lin_v, self.lin_e):
            reset_projection(linear, init)
        if self.ebt is not None and init == "default":
            std = EBT_INIT_STD[self.ebt_init]
            with torch.no_grad():
                for parameter in (self.ebt_k, self.ebt_e, self.ebt_v):
                    # randn * std (normal_(0, std) would draw other numbers from the same generator):
                    # this draw defines the EBT parameters' initial values for a seed
                    parameter.copy_(torch.randn(parameter.shape, dtype=parameter.dtype, device=parameter.device) * std)
        if self.lin_gate is not None:
            reset_projection(self.lin_gate, init)
        if self.sink_logit is not None and init == "default":
            with torch.no_grad():
                self.sink_logit.zero_()

    def forward(
        self,
        x: torch.Tensor,
        edge_index,
        edge_attr: torch.Tensor,
        *,
        bias: Optional[torch.Tensor] = None,
        stats: Union[EdgeStats, Sequence[EdgeStats], None] = None,
        edge_types=None,
        need_edge_out: bool = True,
    ):
        """(x_out [N, H*D], e_out [E, H*D]); edge_types: this call's per-edge types for
        the statistics (see `magnn.functional.edge_attention`), e.g. when the edges
        attended are more than the batch's real edges. need_edge_out=False: the caller
        drops e_out (a model without an edge stream), so the kernels do not write it and
        None comes back, unless a forward hook may read this layer's output (then e_out
        is kept for it); the statistics are the same either way."""
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ArgumentError(f"x must be [N, {self.in_channels}], got {list(x.shape)}")
        if edge_attr.dim() != 2 or edge_attr.shape[1] != self.edge_dim:
            raise ArgumentError(f"edge_attr must be [E, {self.edge_dim}], got {list(edge_attr.shape)}")
        shape = (x.shape[0], self.heads, self.head_dim)
        q = self.lin_q(x).view(shape)
        k = self.lin_k(x).view(shape)
        v = self.lin_v(x).view(shape)
        e, projection = self.edge_input(edge_attr, q.dtype)
        ebt_params = None if self.ebt is None else (self.ebt_k, self.ebt_e, self.ebt_v)
        targets = self.stats_targets(stats)
        num_nodes = None if isinstance(edge_index, Graph) else x.shape[0]
        node_out, edge_out = edge_attention(
            q, k, v, e, edge_index,
            num_nodes=num_nodes, mode=self.mode, clamp=self.clamp, bias=bias,
            ebt=self.ebt, ebt_params=ebt_params, stats=targets or None, edge_types=edge_types,
            need_edge_out=need_edge_out or self.output_observed(), backend=self.backend, **projection,
            **self.mitigation_inputs(x),
        )
        # explicit widths: reshape(0, -1) is ambiguous for a graph without edges (or nodes)
        width = self.heads * self.head_dim
        edge_out = None if edge_out is None else edge_out.reshape(edge_attr.shape[0], width)
        return node_out.reshape(x.shape[0], width), edge_out

    def mitigation_inputs(self, x: torch.Tensor) -> dict:
        """`edge_attention`'s sink= and gate= for this layer's input x (empty without them)."""
        inputs = {}
        if self.sink_logit is not None:
            inputs["sink"] = self.sink_logit
        if self.lin_gate is not None:
            inputs["gate"] = self.lin_gate(x)
        return inputs

    def edge_input(self, edge_attr: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
        """What `edge_attention` gets for the edges: (raw edge_attr [E, F], {e_weight, e_bias})
        when the projection runs inside the operator (`projects_in_kernel`, see the class
        docstring), else (lin_e(edge_attr) as [E, H, D], {})."""
        if projects_in_kernel(self.lin_e, self.heads * self.head_dim):
            weight, bias = linear_parameters(self.lin_e)
            return edge_attr.to(dtype), {"e_weight": weight, "e_bias": bias}
        e = hugepages.project(self.lin_e, edge_attr).view(edge_attr.shape[0], self.heads, self.head_dim)
        return e, {}

    def output_observed(self) -> bool:
        """Whether a forward hook (this module's or a global one) may read this call's output,
        e.g. `magnn.analysis.detect.ExactRatioSampler` taking edge rows from it."""
        from torch.nn.modules import module as module_hooks

        return bool(self._forward_hooks) or bool(module_hooks._global_forward_hooks)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, heads={self.heads}, head_dim={self.head_dim}, edge_dim={self.edge_dim}, "
            f"mode={self.mode!r}, ebt={self.ebt!r}, clamp={self.clamp}, backend={self.backend!r}"
            + (", sink=True" if self.sink_logit is not None else "") + (", gate=True" if self.lin_gate is not None else "")
        )
