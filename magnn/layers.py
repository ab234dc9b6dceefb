"""`FusedEdgeAttention`: projections + EBT parameters around `edge_attention`."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .core.constants import EBT_INITS, check_ebt, check_mode
from .core.graph import Graph
from .functional import check_backend_name, check_clamp, edge_attention
from .stats import EdgeStats, StatsTap

# reset_parameters(init=...): "default" is each parameter's own rule (nn.Linear's, the EBT's
# ebt_init); "xavier" is SPEC §6's base model: Xavier-uniform projection weights, zero biases
RESET_INITS = ("default", "xavier")
EBT_INIT_STD = {"normal_0.02": 0.02, "standard_normal": 1.0}


def check_ebt_init(ebt_init) -> None:
    """Raises ValueError unless `ebt_init` is one of EBT_INITS."""
    if ebt_init not in EBT_INITS:
        raise ValueError(f"unknown ebt_init {ebt_init!r}; choose one of {', '.join(map(repr, EBT_INITS))}")


def projection(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An nn.Linear whose parameters are allocated but not drawn: the layer's
    `reset_parameters` draws them (once, in the order the layer defines)."""
    return torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)


def reset_projection(linear: nn.Linear, init: str = "default") -> None:
    """Re-initialises one projection: nn.Linear's own rule, or Xavier-uniform weight and zero bias."""
    if init not in RESET_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(map(repr, RESET_INITS))}")
    if init == "default":
        linear.reset_parameters()
        return
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def check_positive_int(name: str, value) -> None:
    """Raises ValueError unless `value` is an int >= 1 (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")


class FusedEdgeAttention(StatsTap, nn.Module):
    """Multi-head attention of each node over its incoming edges, with edge features.

    PyG-style: ``x_out, e_out = layer(x, edge_index, edge_attr)`` with
    x [N, in_channels], edge_attr [E, edge_dim]; returns x_out [N, H*D] and
    e_out [E, H*D] (the score w_ij in "gt" mode, the message a_ij (v_j + e_ij)
    in "additive" mode). N = 0 or E = 0 (a graph without edges) are fine.

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

    Parameters are drawn by `reset_parameters()` (PyG's convention), which the
    constructor calls last; it re-initialises them at any time.
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
        self.init_stats_tap()
        FusedEdgeAttention.reset_parameters(self)  # this class's parameters (subclasses draw theirs after)

    def reset_parameters(self, init: str = "default") -> None:
        """Re-initialises the parameters with the layer's init rules (PyG's convention).

        init="default": the projections with nn.Linear's own rule, the EBT parameters
        k', e', v' from N(0, std) with std 0.02 or 1 by `ebt_init`, drawn in that order
        (q, k, v, e, then k', e', v'). init="xavier" (SPEC §6's base model, as
        `magnn.analysis.detect.xavier_reset`): Xavier-uniform projection weights and zero
        biases; the EBT parameters, which are not projections, keep their values.
        """
        for linear in (self.lin_q, self.lin_k, self.lin_v, self.lin_e):
            reset_projection(linear, init)
        if self.ebt is not None and init == "default":
            std = EBT_INIT_STD[self.ebt_init]
            with torch.no_grad():
                for parameter in (self.ebt_k, self.ebt_e, self.ebt_v):
                    # randn * std, not normal_(0, std): the same numbers as before reset_parameters existed
                    parameter.copy_(torch.randn(parameter.shape, dtype=parameter.dtype, device=parameter.device) * std)

    def forward(
        self,
        x: torch.Tensor,
        edge_index,
        edge_attr: torch.Tensor,
        *,
        bias: Optional[torch.Tensor] = None,
        stats: Union[EdgeStats, Sequence[EdgeStats], None] = None,
        edge_types=None,
    ):
        """(x_out [N, H*D], e_out [E, H*D]); edge_types: this call's per-edge types for
        the statistics (see `magnn.functional.edge_attention`), e.g. when the edges
        attended are more than the batch's real edges."""
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}], got {list(x.shape)}")
        if edge_attr.dim() != 2 or edge_attr.shape[1] != self.edge_dim:
            raise ValueError(f"edge_attr must be [E, {self.edge_dim}], got {list(edge_attr.shape)}")
        shape = (x.shape[0], self.heads, self.head_dim)
        q = self.lin_q(x).view(shape)
        k = self.lin_k(x).view(shape)
        v = self.lin_v(x).view(shape)
        e = self.lin_e(edge_attr).view(edge_attr.shape[0], self.heads, self.head_dim)
        ebt_params = None if self.ebt is None else (self.ebt_k, self.ebt_e, self.ebt_v)
        targets = self.stats_targets(stats)
        num_nodes = None if isinstance(edge_index, Graph) else x.shape[0]
        node_out, edge_out = edge_attention(
            q, k, v, e, edge_index,
            num_nodes=num_nodes, mode=self.mode, clamp=self.clamp, bias=bias,
            ebt=self.ebt, ebt_params=ebt_params, stats=targets or None, edge_types=edge_types,
            backend=self.backend,
        )
        # explicit widths: reshape(0, -1) is ambiguous for a graph without edges (or nodes)
        width = self.heads * self.head_dim
        return node_out.reshape(x.shape[0], width), edge_out.reshape(edge_attr.shape[0], width)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, heads={self.heads}, head_dim={self.head_dim}, edge_dim={self.edge_dim}, "
            f"mode={self.mode!r}, ebt={self.ebt!r}, clamp={self.clamp}, backend={self.backend!r}"
        )
