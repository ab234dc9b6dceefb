"""The adjacency forms PyG layers accept, as a `magnn.Graph` for the fused operator.

PyG passes a sparse adjacency transposed (`adj_t` [N_dst, N_src]: row = destination,
column = source); its stored entries are the edges, in storage order (a CSC adjacency's in
row-major order), and its values
stand in for edge_attr when they are 2-D (PyG's `MessagePassing._collect` rule).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.errors import LayerInputError
from ..core.graph import Graph

SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)


def _sparse_tensor_class():
    try:
        from torch_geometric.typing import SparseTensor, WITH_TORCH_SPARSE
    except ImportError:
        return None
    return SparseTensor if WITH_TORCH_SPARSE else None


def _edge_index_class():
    try:
        from torch_geometric import EdgeIndex
    except ImportError:
        return None
    return EdgeIndex


def _from_torch_sparse(adj_t: torch.Tensor, edge_attr):
    """(edge_index [2, E] source-first, edge_attr) from a torch.sparse adj_t [N_dst, N_src]."""
    from torch_geometric.utils import to_edge_index

    if adj_t.layout == torch.sparse_csc:  # to_edge_index reads COO and CSR: the same entries, row-major
        adj_t = adj_t.to_sparse_coo().coalesce()
    indices, values = to_edge_index(adj_t)
    if edge_attr is None and values.dim() > 1:
        edge_attr = values
    return indices.flip(0), edge_attr


def _graph_from_edge_index(edge_index, size) -> Graph:
    """A Graph over (N_src, N_dst) = size; an EdgeIndex's cached CSC (destination-sorted) seeds
    the Graph's CSR so that it is not sorted again."""
    num_src, num_dst = size
    edge_index_class = _edge_index_class()
    cached = None
    if edge_index_class is not None and isinstance(edge_index, edge_index_class):
        if edge_index.is_sorted_by_col or getattr(edge_index, "_T_indptr", None) is not None:
            cached = edge_index.get_csc()
        edge_index = edge_index.as_tensor()
    if torch.compiler.is_compiling():
        graph = _traced_graph(edge_index.long(), num_src, num_dst)
    else:
        graph = Graph(edge_index, num_dst, num_src_nodes=num_src)
    if cached is not None:
        (colptr, row), perm = cached
        graph.__dict__["rowptr"] = colptr.long()
        graph.__dict__["col"] = row.long()
        graph.__dict__["perm"] = (torch.arange(graph.num_edges, device=graph.device) if perm is None
                                  else perm.long())
    return graph


def _traced_graph(edge_index: torch.Tensor, num_src: int, num_dst: int) -> Graph:
    """The Graph inside torch.compile: the index bounds are checked by an asynchronous assert
    in the compiled code (no host sync, no data-dependent branch, no graph break) instead of
    Graph's eager validation, which raises with a message naming the bad index."""
    graph = Graph(edge_index, num_dst, num_src_nodes=num_src, validate=False)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise LayerInputError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.shape[1] > 0:
        low, high = torch.aminmax(edge_index, dim=1)
        inside = (low.min() >= 0) & (high[0] < num_src) & (high[1] < num_dst)
        torch._assert_async(inside, "magnn TransformerConv: edge_index holds a node index outside [0, N_src) x [0, N_dst)")
    graph._index_bounds_checked = True
    return graph


def as_fused_graph(edge_index, size, edge_attr: Optional[torch.Tensor]):
    """(Graph, edge_attr) for any accepted edge_index form; size = (N_src, N_dst) from x."""
    if isinstance(edge_index, Graph):
        return edge_index, edge_attr
    sparse_tensor = _sparse_tensor_class()
    if sparse_tensor is not None and isinstance(edge_index, sparse_tensor):
        if tuple(edge_index.sparse_sizes()) != (size[1], size[0]):
            raise LayerInputError(f"a SparseTensor adjacency must be adj_t [N_dst, N_src] = [{size[1]}, {size[0]}], "
                                  f"got {list(edge_index.sparse_sizes())}")
        row, col, value = edge_index.coo()  # row-major: the edges in storage order, row = destination
        if edge_attr is None and value is not None and value.dim() > 1:
            edge_attr = value
        edge_index = torch.stack([col, row])
    elif isinstance(edge_index, torch.Tensor) and edge_index.layout in SPARSE_LAYOUTS:
        if tuple(edge_index.shape[:2]) != (size[1], size[0]):
            raise LayerInputError(
                f"a sparse adjacency must be adj_t [N_dst, N_src] = [{size[1]}, {size[0]}], got {list(edge_index.shape)}")
        edge_index, edge_attr = _from_torch_sparse(edge_index, edge_attr)
    elif not isinstance(edge_index, torch.Tensor):
        raise LayerInputError(
            f"edge_index must be a [2, E] integer tensor, an EdgeIndex, a torch.sparse or SparseTensor adjacency "
            f"or a magnn.Graph, got {type(edge_index).__name__}")
    return _graph_from_edge_index(edge_index, size), edge_attr


def holds_edge_features(edge_index) -> bool:
    """Whether `edge_index` is a sparse adjacency (SparseTensor or torch.sparse) whose values are
    2-D, so that they stand in for a missing edge_attr."""
    sparse_tensor = _sparse_tensor_class()
    if sparse_tensor is not None and isinstance(edge_index, sparse_tensor):
        value = edge_index.storage.value()
        return value is not None and value.dim() > 1
    if isinstance(edge_index, torch.Tensor) and edge_index.layout in SPARSE_LAYOUTS:
        return edge_index.values().dim() > 1
    return False


def attention_result(edge_index, alpha: torch.Tensor):
    """PyG's second return value with return_attention_weights: (edge_index, alpha), or for a
    SparseTensor the adjacency with alpha as its values."""
    sparse_tensor = _sparse_tensor_class()
    if sparse_tensor is not None and isinstance(edge_index, sparse_tensor):
        return edge_index.set_value(alpha, layout="coo")
    if isinstance(edge_index, Graph):
        return edge_index.edge_index, alpha
    return edge_index, alpha
