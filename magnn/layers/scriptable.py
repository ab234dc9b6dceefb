"""`ScriptableTransformerConv`: what `torch.jit.script` compiles for `magnn.layers.TransformerConv`.

The fused operator (Python dispatch, Graph objects, statistics) is not TorchScript, so scripting
the layer scripts this PyG-only twin holding the same parameters and computing the same function
through PyG's message/aggregate path. Its forward has one signature (no `return_attention_weights`:
TorchScript cannot type PyG's overloaded forward, which is also why PyG's own TransformerConv does
not script on recent torch). The edge features travel as `edge_features` (PyG's scripted collect
demands a non-None `edge_attr`), so a sparse adjacency's values do not stand in for them here.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.utils import softmax


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
    """PyG's TransformerConv computation with magnn's TransformerConv's parameter names."""

    def __init__(self, source: int, destination: int, out_channels: int, heads: int, concat: bool, beta: bool,
                 dropout: float, edge_dim: Optional[int], bias: bool, root_weight: bool, aggr, flow: str):
        super().__init__(aggr=aggr, flow=flow, node_dim=0)
        self.out_channels, self.heads, self.concat, self.dropout = out_channels, heads, concat, dropout
        self.root_weight, self.beta = root_weight, beta
        add_projections(self, source, destination, heads, out_channels, edge_dim, bias, concat, beta)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Adj,
                edge_attr: OptTensor = None) -> Tensor:
        if isinstance(x, Tensor):
            x = (x, x)
        query = self.lin_query(x[1]).view(-1, self.heads, self.out_channels)
        key = self.lin_key(x[0]).view(-1, self.heads, self.out_channels)
        value = self.lin_value(x[0]).view(-1, self.heads, self.out_channels)
        # propagate_type: (query: Tensor, key: Tensor, value: Tensor, edge_features: OptTensor)
        out = self.propagate(edge_index, query=query, key=key, value=value, edge_features=edge_attr)
        out = out.view(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        if self.root_weight:
            root = self.lin_skip(x[1])
            if self.lin_beta is not None:
                gate = self.lin_beta(torch.cat([out, root, out - root], dim=-1)).sigmoid()
                out = gate * root + (1 - gate) * out
            else:
                out = out + root
        return out

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, edge_features: OptTensor, index: Tensor,
                ptr: OptTensor, size_i: Optional[int]) -> Tensor:
        edge_attr = edge_features
        if self.lin_edge is not None:
            assert edge_attr is not None
            edge_attr = self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
            key_j = key_j + edge_attr
        alpha = (query_i * key_j).sum(dim=-1) / math.sqrt(self.out_channels)
        alpha = softmax(alpha, index, ptr, size_i)
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = value_j if edge_attr is None else value_j + edge_attr
        return out * alpha.view(-1, self.heads, 1)
