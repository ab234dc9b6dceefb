"""`TransformerConv`: a PyG `MessagePassing` layer, drop-in for `torch_geometric.nn.TransformerConv`,
whose `propagate` runs magnn's fused operator when nothing needs the per-edge messages."""
from __future__ import annotations

import math
import sys
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax

from ..core import hugepages
from ..core.errors import LayerInputError
from ..core.graph import Graph
from ..core.validation import check_dropout, check_positive_int
from ..functional import check_backend_name, edge_attention, select_backend
from ..stats import EdgeStats, StatsTap
from ..stats.collection import _fill
from .adjacency import as_fused_graph, attention_result, holds_edge_features
from .attention import projects_in_kernel
from .scriptable import OverloadedScriptableTransformerConv, ScriptableTransformerConv, add_projections

# the hooks through which PyG lets a caller see or change the per-message tensors: with any
# of them registered, `propagate` runs PyG's message/aggregate path so that they fire
HOOK_DICTS = (
    "_propagate_forward_pre_hooks", "_propagate_forward_hooks", "_message_forward_pre_hooks",
    "_message_forward_hooks", "_aggregate_forward_pre_hooks", "_aggregate_forward_hooks",
    "_message_and_aggregate_forward_pre_hooks", "_message_and_aggregate_forward_hooks",
)


def _channel_pair(in_channels) -> tuple[int, int]:
    """PyG's in_channels: one int for both sides, or (source, destination); -1 is lazy (inferred)."""
    pair = (in_channels, in_channels) if not isinstance(in_channels, (tuple, list)) else tuple(in_channels)
    if len(pair) != 2:
        raise LayerInputError(f"in_channels must be an int or a pair (source, destination), got {in_channels!r}")
    for name, value in zip(("in_channels[0] (source)", "in_channels[1] (destination)"), pair):
        if value != -1:
            check_positive_int(name, value)
    return pair


class TransformerConv(StatsTap, MessagePassing):
    r"""A drop-in for `torch_geometric.nn.TransformerConv` on magnn's fused kernels.

    A `torch_geometric.nn.MessagePassing` layer with PyG's constructor, parameter names
    (`lin_key`, `lin_query`, `lin_value`, `lin_edge`, `lin_skip`, `lin_beta`, PyG `Linear`s, so
    ``load_state_dict(pyg_layer.state_dict())`` works strictly), forward, `message` and `_alpha`.
    Its `propagate` runs one `magnn.functional.edge_attention` call in "additive" mode (the
    fused path: softmax, attention dropout and aggregation in the kernels, no per-edge message
    materialised) unless something needs PyG's per-message path, which then runs instead:
    an explainer (`explain=True`, edge masks), a propagate/message/aggregate hook (e.g.
    AttentionExplainer reading `_alpha`), `aggr` other than "add", `flow="target_to_source"`,
    `decomposed_layers > 1`, or edge_attr given without edge_dim (PyG adds it to the values).
    Both paths compute the same function; the statistics of the messages reach
    `magnn.stats.collect` from either (the tap is the message a'_ij (v_j + e_ij)).

    For each edge j -> i and head h (C = out_channels)::

        alpha_ij = softmax_j( q_i . (k_j + e_ij) / sqrt(C) ),  out_i = sum_j dropout(alpha_ij) (v_j + e_ij)

    then concat (or mean) over heads and the root/beta skip, as PyG. With edge_dim <
    heads * out_channels, e_ij is formed per edge inside the operator (SPEC §3).

    edge_index: a [2, E] int64/int32 tensor, a `torch_geometric.EdgeIndex` (its cached CSC
    is reused), a `torch.sparse` COO/CSR/CSC adjacency `adj_t` [N_dst, N_src], a
    `torch_sparse.SparseTensor` `adj_t` (when torch-sparse is installed), or a `magnn.Graph`.
    For a sparse adjacency the edges are its stored entries in storage order and, without
    edge_attr, its values serve as edge_attr when they are 2-D (PyG's rule).

    in_channels may be -1 or (-1, -1) (lazy, inferred on the first call). ``torch.jit.script``
    scripts a twin holding this layer's parameters (`__prepare_scriptable__`) with PyG's forward
    signatures (return_attention_weights included): on the cpu backend it calls the same C++
    operator (same numbers as eager), elsewhere PyG's message path (equal within rounding). The
    dropout mask comes from magnn's counter-based generator on the fused path (SPEC §3): same
    distribution as PyG's draws, other numbers.
    """

    _alpha: Optional[torch.Tensor]

    def __init__(self, in_channels: Union[int, tuple], out_channels: int, heads: int = 1, concat: bool = True,
                 beta: bool = False, dropout: float = 0.0, edge_dim: Optional[int] = None, bias: bool = True,
                 root_weight: bool = True, *, backend: str = "auto", **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
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
        self._alpha = None
        add_projections(self, source, destination, heads, out_channels, edge_dim, bias, concat, self.beta)
        self.init_stats_tap()
        self._call_targets: tuple = ()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draws every projection with PyG Linear's rule (that of nn.Linear)."""
        super().reset_parameters()
        for linear in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip, self.lin_beta):
            if linear is not None:
                linear.reset_parameters()

    def forward(self, x, edge_index, edge_attr: Optional[torch.Tensor] = None,
                return_attention_weights: Optional[bool] = None, *,
                stats: Union[EdgeStats, Sequence[EdgeStats], None] = None):
        """out [N_dst, H*C] (or [N_dst, C]); with return_attention_weights set to a bool (True or
        False, as in PyG), (out, (edge_index, alpha [E, H])) — for a SparseTensor, the adjacency
        with alpha as its values."""
        heads, channels = self.heads, self.out_channels
        x_src, x_dst = _node_pair(x)
        query = self.lin_query(x_dst).view(-1, heads, channels)
        key = self.lin_key(x_src).view(-1, heads, channels)
        value = self.lin_value(x_src).view(-1, heads, channels)
        size = (x_src.shape[0], x_dst.shape[0])
        want_alpha = isinstance(return_attention_weights, bool)
        self._call_targets = self.stats_targets(stats)
        try:
            out = self.propagate(edge_index, query=query, key=key, value=value, edge_attr=edge_attr,
                                 size=size, return_alpha=want_alpha)
        finally:
            self._call_targets = ()
        alpha, self._alpha = self._alpha, None
        out = out.reshape(-1, heads * channels) if self.concat else out.mean(dim=1)
        if self.root_weight:
            root = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                gate = self.lin_beta(torch.cat([out, root, out - root], dim=-1)).sigmoid()
                out = gate * root + (1 - gate) * out
            else:
                out = out + root
        if want_alpha:
            return out, attention_result(edge_index, alpha.to(out.dtype))
        return out

    def fused_applies(self, edge_attr) -> bool:
        """Whether `propagate` may run the fused operator (see the class docstring)."""
        return (not self.explain and self.decomposed_layers == 1 and self.aggr == "add"
                and self.flow == "source_to_target" and not (edge_attr is not None and self.lin_edge is None)
                and not any(getattr(self, name) for name in HOOK_DICTS))

    def propagate(self, edge_index, size=None, **kwargs):
        """The fused operator when `fused_applies`, else PyG's message/aggregate path."""
        edge_attr = kwargs.get("edge_attr")
        if edge_attr is None and holds_edge_features(edge_index):
            edge_attr = True  # the adjacency's values serve as edge_attr (only whether there is one matters)
        if not self.fused_applies(edge_attr):
            kwargs.pop("return_alpha", None)
            if isinstance(edge_index, Graph):
                edge_index, size = edge_index.edge_index, edge_index.size
            return super().propagate(edge_index, size=size, **kwargs)
        return self.fused_propagate(edge_index, size, **kwargs)

    def fused_propagate(self, edge_index, size, query, key, value, edge_attr=None, return_alpha=False):
        graph, edge_attr = as_fused_graph(edge_index, size, edge_attr)
        heads, channels = self.heads, self.out_channels
        projection = {}
        if self.lin_edge is not None:
            if edge_attr is None:
                raise LayerInputError(f"this layer was built with edge_dim={self.edge_dim}: pass edge_attr [E, {self.edge_dim}]")
            if not isinstance(self.lin_edge.weight, torch.nn.parameter.UninitializedParameter) and \
                    projects_in_kernel(self.lin_edge, heads * channels):
                edge, projection = edge_attr.to(query.dtype), {"e_weight": self.lin_edge.weight}
            else:
                edge = hugepages.project(self.lin_edge, edge_attr).view(-1, heads, channels)
        else:
            edge = query.new_zeros((graph.num_edges, heads, channels))  # no edge term: e = 0
        node_out, _, *alpha = edge_attention(
            query, key, value, edge, graph, mode="additive", dropout=self.dropout if self.training else 0.0,
            stats=self._call_targets or None, return_alpha=return_alpha, need_edge_out=False,
            backend=self.backend, **projection,
        )
        self._alpha = alpha[0] if return_alpha else None
        return node_out

    def message(self, query_i: torch.Tensor, key_j: torch.Tensor, value_j: torch.Tensor,
                edge_attr: Optional[torch.Tensor], index: torch.Tensor, ptr: Optional[torch.Tensor],
                size_i: Optional[int]) -> torch.Tensor:
        """PyG's per-edge message a'_ij (v_j + e_ij) (the non-fused path); sets `_alpha`."""
        if self.lin_edge is not None:
            if edge_attr is None:
                raise LayerInputError(f"this layer was built with edge_dim={self.edge_dim}: pass edge_attr [E, {self.edge_dim}]")
            edge_attr = self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
            key_j = key_j + edge_attr
        alpha = (query_i * key_j).sum(dim=-1) / math.sqrt(self.out_channels)
        alpha = softmax(alpha, index, ptr, size_i)
        self._alpha = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = value_j if edge_attr is None else value_j + edge_attr
        out = out * alpha.view(-1, self.heads, 1)
        for target in self._call_targets:
            _fill(target, out, self.heads)
        return out

    def __prepare_scriptable__(self):
        """What `torch.jit.script` compiles: a twin holding this layer's parameters (the Python
        dispatch around the fused operator is not TorchScript). When this layer's eager forward
        runs the C++ cpu operator, the twin calls that operator itself (fused_cpu: the same
        numbers as eager); otherwise PyG's path (the same function within float rounding)."""
        if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in self.parameters()):
            raise LayerInputError("torch.jit.script needs initialised parameters: run the lazy layer once first")
        weight = self.lin_key.weight
        arguments = (self.lin_key.in_channels, self.lin_query.in_channels, self.out_channels, self.heads,
                     self.concat, self.beta, self.dropout, self.edge_dim, self.lin_key.bias is not None,
                     self.root_weight, self.aggr, self.flow)
        fused_cpu = self.fused_applies(None) and self._runs_cpu_operator(weight)
        in_kernel = fused_cpu and self.lin_edge is not None and \
            projects_in_kernel(self.lin_edge, self.heads * self.out_channels)
        twin_class = ScriptableTransformerConv if _scripted_on_its_own() else OverloadedScriptableTransformerConv
        twin = twin_class(*arguments, fused_cpu=fused_cpu, project_in_kernel=in_kernel)
        twin.load_state_dict(self.state_dict())
        # torch's preparation walk records modules by id() and puts the twin in this layer's place in
        # its parent, which may free this layer mid-walk; a later module allocated at the same address
        # would then be taken for this layer and replaced by the twin. The twin keeps it alive (in a
        # tuple, which neither the walk nor TorchScript treats as a submodule).
        twin._prepared_from = (self,)
        return twin.to(weight.device).train(self.training)

    def _runs_cpu_operator(self, weight: torch.Tensor) -> bool:
        """Whether the fused path runs the C++ cpu operator for parameters like `weight`."""
        if weight.device.type != "cpu" or self.backend not in ("auto", "cpu"):
            return False
        try:
            return select_backend(self.backend, weight.device, weight.dtype).name == "cpu"
        except RuntimeError:  # backend="cpu" that cannot run here: the scripted twin takes PyG's path
            return False

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"


def _scripted_on_its_own() -> bool:
    """Whether `torch.jit.script` was called on this layer itself rather than on a model holding it:
    torch's preparation walk (`call_prepare_scriptable_func_impl`) has then recorded no module yet.
    Anything else, a changed torch included, answers False (the overloaded twin, PyG's behaviour)."""
    try:
        caller = sys._getframe(2)  # _scripted_on_its_own <- __prepare_scriptable__ <- torch's walk
    except ValueError:  # a shallower stack: not torch's walk
        return False
    memo = caller.f_locals.get("memo")
    return caller.f_code.co_name == "call_prepare_scriptable_func_impl" and isinstance(memo, dict) and not memo


def _node_pair(x) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, torch.Tensor):
        pair = (x, x)
    elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, torch.Tensor) for t in x):
        pair = tuple(x)
    else:
        raise LayerInputError("x must be a tensor [N, F] or a pair of tensors (x_src, x_dst)")
    for name, tensor in zip(("x (source side)", "x (destination side)"), pair):
        if tensor.dim() != 2:
            raise LayerInputError(f"{name} must be 2-D [N, F], got shape {list(tensor.shape)}")
    return pair
