"""`FusedEdgeAttention`: projections + EBT parameters around `edge_attention`;
`TransformerConv`: a drop-in for PyG's TransformerConv on the same operator."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .core import hugepages
from .core.errors import ArgumentError, LayerInputError  # noqa: F401  (LayerInputError importable here)
from .core.graph import Graph
from .core.validation import (  # noqa: F401  (check_ebt_init, check_positive_int re-exported)
    check_clamp, check_dropout, check_ebt, check_ebt_init, check_mode, check_positive_int,
)
from .functional import check_backend_name, edge_attention
from .stats import EdgeStats, StatsTap

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
    return linear.in_features < width and not (linear._forward_hooks or linear._forward_pre_hooks)


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
                    # randn * std (normal_(0, std) would draw other numbers from the same generator):
                    # this draw defines the EBT parameters' initial values for a seed
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
        )
        # explicit widths: reshape(0, -1) is ambiguous for a graph without edges (or nodes)
        width = self.heads * self.head_dim
        edge_out = None if edge_out is None else edge_out.reshape(edge_attr.shape[0], width)
        return node_out.reshape(x.shape[0], width), edge_out

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
        )


def _channel_pair(in_channels) -> tuple[int, int]:
    """PyG's in_channels: one int for both sides, or (source, destination) ints."""
    pair = (in_channels, in_channels) if not isinstance(in_channels, (tuple, list)) else tuple(in_channels)
    if len(pair) != 2:
        raise LayerInputError(f"in_channels must be an int or a pair (source, destination), got {in_channels!r}")
    for name, value in zip(("in_channels[0] (source)", "in_channels[1] (destination)"), pair):
        check_positive_int(name, value)
    return pair


class TransformerConv(StatsTap, nn.Module):
    r"""A drop-in for `torch_geometric.nn.TransformerConv` on magnn's fused kernels.

    The same constructor, parameter names (`lin_key`, `lin_query`, `lin_value`,
    `lin_edge`, `lin_skip`, `lin_beta`, so ``load_state_dict(pyg_layer.state_dict())``
    works strictly) and forward, computed by one `magnn.functional.edge_attention`
    call in "additive" mode: the softmax, the attention dropout (inside the kernels,
    SPEC §3) and the aggregation never materialise a per-edge message that the layer
    does not return, and the statistics of the messages reach `magnn.stats.collect`
    like those of any magnn layer (it is a `StatsTap`; the tap is the per-edge
    message a'_ij (v_j + e_ij)).

    With H heads of C = out_channels channels, for each edge j -> i and head h::

        q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j,  e_ij = W_e edge_attr_ij  (0 without edge_dim)

    With edge_dim < heads * out_channels, e_ij = W_e edge_attr_ij is formed per edge inside the
    operator (SPEC §3, the edge projection): no [E, H*C] tensor of e or of its gradient.
        alpha_ij = softmax_j( q_i . (k_j + e_ij) / sqrt(C) )       over the in-edges of i
        out_i    = sum_j dropout(alpha_ij) (v_j + e_ij)            [H, C]; 0 with no in-edge
        out_i    = concat_h out_i  (concat=True)  or  mean_h out_i  (concat=False)
        root_weight:  r_i = W_skip x_i;  out_i += r_i, or with beta:
                      b_i = sigmoid(w_beta . [out_i, r_i, out_i - r_i]);  out_i = b_i r_i + (1 - b_i) out_i

    Shapes::

        x           [N, F] or (x_src [N_src, F_src], x_dst [N_dst, F_dst])  (bipartite)
        edge_index  [2, E] int64 (row 0 source, row 1 destination) or a magnn.Graph
        edge_attr   [E, edge_dim]  (required iff edge_dim is set)
        out         [N_dst, H * C] (concat) or [N_dst, C]
        alpha       [E, H]  (return_attention_weights: caller's edge order, before dropout)

    Args (PyG's): in_channels (int or (source, destination) pair), out_channels, heads,
    concat, beta (used only with root_weight, as in PyG), dropout (attention dropout
    probability, applied in training), edge_dim, bias, root_weight. magnn's own,
    keyword-only: backend ("auto", "torch", "cpu", "triton").

    Differences from PyG: edge_index must be a dense [2, E] tensor or a magnn.Graph
    (no SparseTensor); edge_attr given to a layer built without edge_dim raises
    (PyG would add it to the values unprojected); the dropout mask comes from magnn's
    counter-based generator (SPEC §3), seeded from torch's generator, so it differs
    from PyG's draws while having the same distribution.
    """

    def __init__(
        self,
        in_channels: Union[int, tuple],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        beta: bool = False,
        dropout: float = 0.0,
        edge_dim: Optional[int] = None,
        bias: bool = True,
        root_weight: bool = True,
        *,
        backend: str = "auto",
    ):
        super().__init__()
        source, destination = _channel_pair(in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("heads", heads)
        if edge_dim is not None:
            check_positive_int("edge_dim", edge_dim)
        check_dropout(dropout)
        check_backend_name(backend)
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.beta = bool(beta and root_weight)
        self.root_weight, self.concat, self.dropout, self.edge_dim = root_weight, concat, float(dropout), edge_dim
        self.backend = backend
        width = heads * out_channels
        # constructed (and so drawn) in PyG's order, then reset once more as PyG does
        self.lin_key = nn.Linear(source, width, bias=bias)
        self.lin_query = nn.Linear(destination, width, bias=bias)
        self.lin_value = nn.Linear(source, width, bias=bias)
        if edge_dim is not None:
            self.lin_edge = nn.Linear(edge_dim, width, bias=False)
        else:
            self.register_parameter("lin_edge", None)
        skip_width = width if concat else out_channels
        self.lin_skip = nn.Linear(destination, skip_width, bias=bias)
        if self.beta:
            self.lin_beta = nn.Linear(3 * skip_width, 1, bias=False)
        else:
            self.register_parameter("lin_beta", None)
        self.init_stats_tap()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draws every projection with nn.Linear's rule (PyG's Linear uses the same)."""
        for linear in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip, self.lin_beta):
            if linear is not None:
                linear.reset_parameters()

    def forward(
        self,
        x,
        edge_index,
        edge_attr: Optional[torch.Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        *,
        stats: Union[EdgeStats, Sequence[EdgeStats], None] = None,
    ):
        """out [N_dst, H*C] (or [N_dst, C]); with return_attention_weights set to a bool
        (True or False, as in PyG), (out, (edge_index, alpha [E, H]))."""
        heads, channels = self.heads, self.out_channels
        if isinstance(x, torch.Tensor):
            x_src = x_dst = x
        elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, torch.Tensor) for t in x):
            x_src, x_dst = x
        else:
            raise LayerInputError("x must be a tensor [N, F] or a pair of tensors (x_src, x_dst)")
        for name, tensor in (("x (source side)", x_src), ("x (destination side)", x_dst)):
            if tensor.dim() != 2:
                raise LayerInputError(f"{name} must be 2-D [N, F], got shape {list(tensor.shape)}")
        query = self.lin_query(x_dst).view(-1, heads, channels)
        key = self.lin_key(x_src).view(-1, heads, channels)
        value = self.lin_value(x_src).view(-1, heads, channels)
        if isinstance(edge_index, Graph):
            graph = edge_index
        elif isinstance(edge_index, torch.Tensor):
            graph = Graph(edge_index, x_dst.shape[0],
                          num_src_nodes=None if x_src is x_dst else x_src.shape[0])
        else:
            raise LayerInputError(
                f"edge_index must be a [2, E] int64 tensor or a magnn.Graph, got {type(edge_index).__name__} "
                "(convert a SparseTensor with .coo())"
            )
        projection = {}
        if self.lin_edge is not None:
            if edge_attr is None:
                raise LayerInputError(f"this layer was built with edge_dim={self.edge_dim}: pass edge_attr [E, {self.edge_dim}]")
            if projects_in_kernel(self.lin_edge, heads * channels):
                edge, projection = edge_attr.to(query.dtype), {"e_weight": self.lin_edge.weight}
            else:
                edge = hugepages.project(self.lin_edge, edge_attr).view(-1, heads, channels)
        else:
            if edge_attr is not None:
                raise LayerInputError("edge_attr given, but the layer was built without edge_dim; pass edge_dim= to use it")
            # no edge term: e = 0 (one [E, H, C] buffer of zeros; the kernels take a dense e)
            edge = query.new_zeros((graph.num_edges, heads, channels))
        want_alpha = isinstance(return_attention_weights, bool)
        targets = self.stats_targets(stats)
        node_out, _, *alpha = edge_attention(
            query, key, value, edge, graph, mode="additive",
            dropout=self.dropout if self.training else 0.0,
            stats=targets or None, return_alpha=want_alpha, need_edge_out=False, backend=self.backend, **projection,
        )  # PyG's layer has no edge output: edge_out is never written (collectors still see its rows)
        out = node_out.reshape(-1, heads * channels) if self.concat else node_out.mean(dim=1)
        if self.root_weight:
            root = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                gate = self.lin_beta(torch.cat([out, root, out - root], dim=-1)).sigmoid()
                out = gate * root + (1 - gate) * out
            else:
                out = out + root
        if want_alpha:
            return out, (graph.edge_index, alpha[0].to(out.dtype))
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"
