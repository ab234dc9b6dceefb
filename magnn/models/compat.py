"""`ebt_compat="gnn-mas"`: what the MA paper's published SAN and GraphiT code computes (SPEC §10).

In that code the EBT bias weight overwrites the attention weight of every real
edge: each edge j -> i gets the same weight, the one of the bias logit
``beta_i = (q_i . k') / sqrt(D)`` (per head), so the softmax over a node's
incoming edges is uniform and the layer's output is the mean of the messages
``v_j + v'``. The score ``w_ij = q_i * k_j * e_ij / sqrt(D) + b_e,i`` (the MA
tap, SPEC §10) is still computed, and the statistics are taken on it, but
nothing the loss sees depends on it: K, E (the edge projection) and e' get no
gradient, and the tap's ratios stay where the initialisation put them. (q and
k' enter only through weights that are equal per node: their gradient is 0.)

The paper's SAN code on ogbn-proteins (san_gt_layer_proteins.py) is different
again: its layer never receives `explicit_bias`, so its "EBT" run has no EBT at
all, only Q, K, V and E projections with a bias term, and its no-EBT run's
softmax is the ordinary one. Under the switch magnn's SAN on ogbn-proteins
inputs does exactly that (`gnn_mas_san_proteins`): the paper's SAN-proteins
Table 1 pair compares two models without EBT, which the study's report says.
Elsewhere without EBT (GT always, SAN and GraphiT on molecules) the switch
changes nothing.

magnn implements the formula by default; this module exists so that Table 1
and Fig. 4 can be compared with the paper's numbers like for like
(`magnn study --ebt-compat gnn-mas`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.graph import Graph
from ..functional import edge_attention

__all__ = ["EBT_COMPAT_CHOICES", "GNN_MAS", "check_ebt_compat", "gnn_mas_active", "gnn_mas_node_out",
           "gnn_mas_san_proteins"]

GNN_MAS = "gnn-mas"
EBT_COMPAT_CHOICES = (None, GNN_MAS)


def check_ebt_compat(ebt_compat, ebt) -> None:
    if ebt_compat not in EBT_COMPAT_CHOICES:
        raise ValueError(f"ebt_compat must be one of {EBT_COMPAT_CHOICES}, got {ebt_compat!r}")
    if ebt_compat == GNN_MAS and ebt == "slot":
        raise ValueError("ebt_compat='gnn-mas' reproduces the paper's code for ebt='edge' (or no EBT); "
                         "ebt='slot' has no such code: drop ebt_compat or use ebt='edge'")


def gnn_mas_active(ebt_compat, ebt, edge_features: str) -> bool:
    """Whether the switch replaces this SAN / GraphiT model's softmax by the bias weight: with EBT,
    except for SAN on ogbn-proteins inputs (the caller says so through `edge_features`), whose
    paper code is `gnn_mas_san_proteins`'s."""
    return ebt_compat == GNN_MAS and ebt == "edge" and edge_features != "proteins"


def gnn_mas_san_proteins(ebt_compat, edge_features: Optional[str]) -> bool:
    """Whether SAN follows the paper's ogbn-proteins layer: no EBT parameters whatever the run, an
    ordinary softmax, and (in the "EBT" run) projections with a bias term."""
    return ebt_compat == GNN_MAS and edge_features == "proteins"


def gnn_mas_node_out(attention, x: torch.Tensor, graph, edge_attr: torch.Tensor, *,
                     bias: Optional[torch.Tensor] = None, edge_types=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(node_out [N, H*D], edge_out [E, H*D]) of a `FusedEdgeAttention` layer as the paper's code computes it.

    edge_out is the layer's own score (statistics collected on it as usual), computed without
    autograd; node_out is the uniform mean over each node's incoming real edges of v_j (+ v' with
    EBT), weighted by the bias logit (equal per node), through the same operator and backend.
    """
    with torch.no_grad():  # the tap: the layer's own call; nothing flows back through it
        _, edge_out = attention(x, graph, edge_attr, bias=bias, edge_types=edge_types)
    num_nodes, heads, head_dim = x.shape[0], attention.heads, attention.head_dim
    shape = (num_nodes, heads, head_dim)
    q = attention.lin_q(x).view(shape)
    v = attention.lin_v(x).view(shape)
    if attention.ebt is not None:
        key = attention.ebt_k.unsqueeze(0).expand(shape).contiguous()  # k' for every source: logit beta_i
        v = v + attention.ebt_v.unsqueeze(0)
    else:
        key = q.new_zeros(shape)  # logit 0 for every edge
    ones = q.new_ones(1, heads, head_dim).expand(edge_attr.shape[0], heads, head_dim)
    node_out, _ = edge_attention(q, key, v, ones, graph, num_nodes=None if isinstance(graph, Graph) else num_nodes,
                                 mode="gt", clamp=attention.clamp, bias=bias, backend=attention.backend)
    return node_out.reshape(num_nodes, heads * head_dim), edge_out
