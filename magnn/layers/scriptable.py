"""`ScriptableTransformerConv`: what `torch.jit.script` compiles for `magnn.layers.TransformerConv`.

The fused operator (Python dispatch, Graph objects, statistics) is not TorchScript, so scripting
the layer scripts this twin holding the same parameters and computing the same function
through PyG's message/aggregate path, or, where the eager layer runs the cpu backend, through
that backend's operator (`scripted_fused`: the same numbers as eager). Inside a model the layer
scripts as `OverloadedScriptableTransformerConv`, with PyG's forward signatures
(return_attention_weights included); scripted on its own, as `ScriptableTransformerConv`, forward(x,
edge_index, edge_attr) -> out. The edge features travel as `edge_features` (PyG's scripted collect
demands a non-None `edge_attr`); a SparseTensor's 2-D values stand in for a missing edge_attr, as
on the eager layer (PyG's TorchScript path takes no torch.sparse adjacency).
"""
# no `from __future__ import annotations`: TorchScript reads the class attribute `_alpha`'s
# annotation as an object, not a string

import math
import typing
from typing import Final, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, NoneType, OptTensor, SparseTensor
from torch_geometric.utils import softmax

from .scripted_fused import fused_attend, kernel_dtype

if typing.TYPE_CHECKING:
    from typing import overload
else:  # TorchScript resolves a call against the signatures declared with this decorator
    from torch.jit import _overload_method as overload


def add_projections(module, source: int, destination: int, heads: int, out_channels: int,
                    edge_dim: Optional[int], bias: bool, concat: bool, beta: bool) -> None:
    """PyG TransformerConv's projections, with its names and shapes (lin_key, lin_query, lin_value
    [H*C, in], lin_edge [H*C, edge_dim] without bias, lin_skip, lin_beta [1, 3*skip]), in its
    order, so state_dicts match PyG's and a seed draws the same initial weights."""
    width = heads * out_channels
    module.lin_key = Linear(source, width, bias=bias)
    module.lin_query = Linear(destination, width, bias=bias)
    module.lin_value = Linear(source, width, bias=bias)
    module.lin_edge = Linear(edge_dim, width, bias=False) if edge_dim is not None else None
    skip_width = width if concat else out_channels
    module.lin_skip = Linear(destination, skip_width, bias=bias)
    module.lin_beta = Linear(3 * skip_width, 1, bias=False) if beta else None


class ScriptableTransformerConv(MessagePassing):
    """PyG's TransformerConv computation with magnn's TransformerConv's parameter names; with
    fused_cpu, a tensor edge_index on CPU runs the cpu operator (`scripted_fused.fused_attend`)."""

    fused_cpu: Final[bool]  # constants: TorchScript compiles no branch they rule out
    project_in_kernel: Final[bool]

    def __init__(self, source: int, destination: int, out_channels: int, heads: int, concat: bool, beta: bool,
                 dropout: float, edge_dim: Optional[int], bias: bool, root_weight: bool, aggr, flow: str,
                 fused_cpu: bool = False, project_in_kernel: bool = False):
        super().__init__(aggr=aggr, flow=flow, node_dim=0)
        self.fused_cpu, self.project_in_kernel = fused_cpu, project_in_kernel
        self.out_channels, self.heads, self.concat, self.dropout = out_channels, heads, concat, dropout
        self.root_weight, self.beta = root_weight, beta
        self._alpha = None
        add_projections(self, source, destination, heads, out_channels, edge_dim, bias, concat, beta)

    _alpha: Optional[Tensor]

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Adj,
                edge_attr: OptTensor = None) -> Tensor:
        """out [N_dst, H*C] (or [N_dst, C])."""
        return self.node_output(x, edge_index, edge_attr, False)[0]

    def node_output(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Adj, edge_attr: OptTensor,
                    want_alpha: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """(out, alpha [E, H] when want_alpha else None): PyG TransformerConv's forward."""
        if isinstance(x, Tensor):
            x = (x, x)
        query = self.lin_query(x[1]).view(-1, self.heads, self.out_channels)
        key = self.lin_key(x[0]).view(-1, self.heads, self.out_channels)
        value = self.lin_value(x[0]).view(-1, self.heads, self.out_channels)
        out = self.attend(query, key, value, edge_index, edge_attr, want_alpha)
        alpha = self._alpha
        self._alpha = None
        out = out.view(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        if self.root_weight:
            root = self.lin_skip(x[1])
            if self.lin_beta is not None:
                gate = self.lin_beta(torch.cat([out, root, out - root], dim=-1)).sigmoid()
                out = gate * root + (1 - gate) * out
            else:
                out = out + root
        return out, alpha

    def attend(self, query: Tensor, key: Tensor, value: Tensor, edge_index: Adj, edge_attr: OptTensor,
               want_alpha: bool) -> Tensor:
        """The attended values [N_dst, H, C]; sets `_alpha`. The cpu operator when fused_cpu applies
        (a dense [2, E] edge_index, CPU tensors of a kernel dtype, no edge_attr without edge_dim, which
        PyG adds to the values on its path, as the eager layer does), else PyG's message path."""
        if edge_attr is None and isinstance(edge_index, SparseTensor):
            stored = edge_index.coo()[2]  # 2-D values stand in for edge_attr, as on the eager layer
            if stored is not None and stored.dim() > 1:
                edge_attr = stored
        if self.fused_cpu:
            lin_edge = self.lin_edge
            if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided and query.device.type == "cpu" \
                    and kernel_dtype(query.dtype) and (edge_attr is None or lin_edge is not None):
                out, alpha = fused_attend(query, key, value, edge_index, edge_attr,
                                          None if lin_edge is None else lin_edge.weight, self.project_in_kernel,
                                          self.dropout if self.training else 0.0, want_alpha)
                self._alpha = alpha
                return out
        # propagate_type: (query: Tensor, key: Tensor, value: Tensor, edge_features: OptTensor)
        return self.propagate(edge_index, query=query, key=key, value=value, edge_features=edge_attr)

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, edge_features: OptTensor, index: Tensor,
                ptr: OptTensor, size_i: Optional[int]) -> Tensor:
        edge_attr = edge_features
        if self.lin_edge is not None:
            assert edge_attr is not None
            edge_attr = self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
            key_j = key_j + edge_attr
        alpha = (query_i * key_j).sum(dim=-1) / math.sqrt(self.out_channels)
        alpha = softmax(alpha, index, ptr, size_i)
        self._alpha = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = value_j if edge_attr is None else value_j + edge_attr
        return out * alpha.view(-1, self.heads, 1)


class OverloadedScriptableTransformerConv(ScriptableTransformerConv):
    """`ScriptableTransformerConv` with PyG's three forward signatures, declared with
    `torch.jit._overload_method`, for a layer scripted inside a model: the model's code types
    `return_attention_weights` as with PyG's layer (out; (out, (edge_index, alpha)) for a tensor
    edge_index; (out, SparseTensor holding alpha)). TorchScript compiles an overloaded forward
    into one method per signature and none named `forward`, so a layer scripted on its own (not
    inside a model) gets the base class, whose single forward returns out (PyG's own layer does
    not script on its own at all)."""

    fused_cpu: Final[bool]  # TorchScript reads a class's own annotations, not its bases'
    project_in_kernel: Final[bool]
    _alpha: Optional[Tensor]

    @overload
    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Adj, edge_attr: OptTensor = None,
                return_attention_weights: NoneType = None) -> Tensor:
        pass

    @overload
    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,  # noqa: F811
                edge_attr: OptTensor = None,
                return_attention_weights: bool = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @overload
    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: SparseTensor,  # noqa: F811
                edge_attr: OptTensor = None, return_attention_weights: bool = None) -> Tuple[Tensor, SparseTensor]:
        pass

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Adj,  # noqa: F811
                edge_attr: OptTensor = None, return_attention_weights: Optional[bool] = None
                ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]], Tuple[Tensor, SparseTensor]]:
        """out, or with return_attention_weights a bool, (out, (edge_index, alpha)) — for a
        SparseTensor, the adjacency holding alpha — as magnn's and PyG's TransformerConv."""
        out, alpha = self.node_output(x, edge_index, edge_attr, isinstance(return_attention_weights, bool))
        # the isinstance test itself, not a variable holding it: TorchScript then drops this branch
        # from the signature whose return_attention_weights is None
        if isinstance(return_attention_weights, bool):
            assert alpha is not None
            if isinstance(edge_index, Tensor):
                return out, (edge_index, alpha)
            elif isinstance(edge_index, SparseTensor):
                return out, edge_index.set_value(alpha, layout="coo")
        return out
