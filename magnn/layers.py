"""`FusedEdgeAttention`: projections + EBT parameters around `edge_attention`."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .functional import EBT_VARIANTS, MODES, check_backend_name, check_clamp, edge_attention
from .core.graph import Graph
from .stats import EdgeStats, StatsTap


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
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose 'gt' or 'additive'")
        if ebt not in EBT_VARIANTS:
            raise ValueError(f"unknown ebt {ebt!r}; choose None, 'edge' or 'slot'")
        if ebt_init not in ("normal_0.02", "standard_normal"):
            raise ValueError(f"unknown ebt_init {ebt_init!r}; choose 'normal_0.02' or 'standard_normal'")
        check_clamp(clamp)
        check_backend_name(backend)
        self.in_channels, self.heads, self.head_dim, self.edge_dim = in_channels, heads, head_dim, edge_dim
        self.mode, self.ebt, self.clamp, self.backend = mode, ebt, clamp, backend
        width = heads * head_dim
        use_bias = bias or ebt is not None
        self.lin_q = nn.Linear(in_channels, width, bias=use_bias)
        self.lin_k = nn.Linear(in_channels, width, bias=use_bias)
        self.lin_v = nn.Linear(in_channels, width, bias=use_bias)
        self.lin_e = nn.Linear(edge_dim, width, bias=use_bias)
        if ebt is not None:
            std = 0.02 if ebt_init == "normal_0.02" else 1.0
            self.ebt_k = nn.Parameter(torch.randn(heads, head_dim) * std)
            self.ebt_e = nn.Parameter(torch.randn(heads, head_dim) * std)
            self.ebt_v = nn.Parameter(torch.randn(heads, head_dim) * std)
        else:
            self.register_parameter("ebt_k", None)
            self.register_parameter("ebt_e", None)
            self.register_parameter("ebt_v", None)
        self.init_stats_tap()

    def forward(
        self,
        x: torch.Tensor,
        edge_index,
        edge_attr: torch.Tensor,
        *,
        bias: Optional[torch.Tensor] = None,
        stats: Union[EdgeStats, Sequence[EdgeStats], None] = None,
    ):
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
            ebt=self.ebt, ebt_params=ebt_params, stats=targets or None, backend=self.backend,
        )
        # explicit widths: reshape(0, -1) is ambiguous for a graph without edges (or nodes)
        width = self.heads * self.head_dim
        return node_out.reshape(x.shape[0], width), edge_out.reshape(edge_attr.shape[0], width)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, heads={self.heads}, head_dim={self.head_dim}, edge_dim={self.edge_dim}, "
            f"mode={self.mode!r}, ebt={self.ebt!r}, clamp={self.clamp}, backend={self.backend!r}"
        )
