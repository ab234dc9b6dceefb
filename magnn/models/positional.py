"""Positional and structural encodings, computed once per graph (use as `pre_transform`).

* `LaplacianPE` (GraphTransformer, optional for GraphiT): the k eigenvectors of
  the symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` with the
  smallest non-trivial eigenvalues (the first eigenpair is skipped), zero
  padded to k columns for graphs with fewer than k + 1 nodes -> ``data.lap_pe``
  ``[N, k]``. Eigenvector signs are arbitrary; they are fixed here (largest
  |entry| positive) so the cache is reproducible, and the models flip them at
  random during training.
* `SANEigenPE` (SAN's learned LPE input): the k smallest eigenpairs including
  the trivial ones (as Kreuzer et al.) -> ``data.san_eigvec [N, k]``,
  ``data.san_eigval [N, k]`` (the eigenvalues repeated on every node, so PyG
  batching concatenates them along the node dimension) and
  ``data.san_eig_valid [N, k]`` (False on padded columns).
* `RandomWalkKernel` (GraphiT): ``kappa = (I - gamma L)^p`` restricted to its
  support (pairs within p hops, self pairs included), computed with sparse
  matrix powers and stored as log-weights aligned with the real edges
  (``data.kernel_log_edge [E]``) plus the support pairs that are not edges
  (``data.kernel_extra_index [2, X]``, ``data.kernel_log_extra [X]``). The
  "index" in the name makes PyG offset the pairs when batching.

The adjacency is symmetrised and binarised (duplicate edges and self loops
ignored). An isolated node gets ``L_ii = 1``. Graphs with more than
``dense_max_nodes`` nodes go through `scipy.sparse.linalg.eigsh`, never through
a dense N x N matrix; for `RandomWalkKernel` graphs with more than
``large_graph_nodes`` nodes use p = 1 (the edges plus self loops), since the
support of a high power fills in quadratically.

The models read those caches through their positional encoders, modules with
``add_to(h, data)`` that add the encoding to the node embedding h [N, hidden]:

* `LaplacianEncoding` (``pe="lap"`` in GraphTransformer and GraphiT):
  ``h + Linear(k, hidden)(lap_pe)``.
* `LearnedLaplacianPE` (SAN's ``pe="lap"``): per node, each of the k eigenpairs
  (eigenvector entry, eigenvalue) is a token; Linear(2, lpe_dim), a small
  transformer encoder over the k tokens (padding masked), a sum over the tokens
  and Linear(lpe_dim, hidden).

Both flip each eigenvector's sign at random per graph while training.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from .inputs import graph_batch, random_signs, require

__all__ = [
    "LaplacianPE",
    "SANEigenPE",
    "RandomWalkKernel",
    "laplacian_eigenpairs",
    "normalized_laplacian",
    "random_walk_kernel",
    "LaplacianEncoding",
    "LearnedLaplacianPE",
]


def symmetric_adjacency(edge_index: torch.Tensor, num_nodes: int) -> sp.csr_matrix:
    """Binary symmetric adjacency without self loops, float64 CSR."""
    src, dst = edge_index.detach().cpu().numpy().astype(np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    ones = np.ones(src.shape[0], dtype=np.float64)
    adjacency = sp.coo_matrix((ones, (dst, src)), shape=(num_nodes, num_nodes)).tocsr()
    adjacency = adjacency + adjacency.T
    adjacency.data[:] = 1.0  # duplicates and both directions collapse to one
    return adjacency.tocsr()


def _inverse_sqrt_degree(adjacency: sp.csr_matrix) -> np.ndarray:
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inverse = np.where(degree > 0, 1.0 / np.sqrt(degree), 0.0)
    return inverse


def normalized_laplacian(edge_index: torch.Tensor, num_nodes: int) -> sp.csr_matrix:
    """Sparse ``I - D^-1/2 A D^-1/2`` (an isolated node keeps ``L_ii = 1``)."""
    adjacency = symmetric_adjacency(edge_index, num_nodes)
    scaling = sp.diags(_inverse_sqrt_degree(adjacency))
    return (sp.identity(num_nodes, format="csr") - scaling @ adjacency @ scaling).tocsr()


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make each column's largest-|.| entry positive (a reproducible sign choice)."""
    if vectors.size == 0:
        return vectors
    rows = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def laplacian_eigenpairs(
    edge_index: torch.Tensor,
    num_nodes: int,
    k: int,
    *,
    dense_max_nodes: int = 1000,
    tol: float = 1e-6,
    maxiter: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The min(k, N) smallest eigenpairs of the normalised Laplacian, ascending.

    Returns (eigenvalues [m], eigenvectors [N, m]) with orthonormal columns.
    Up to `dense_max_nodes` nodes LAPACK's dense solver runs on the (small)
    dense Laplacian; above it ARPACK (`eigsh`) works on the sparse matrix only.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    count = min(k, num_nodes)
    if num_nodes == 0:
        return np.zeros(0), np.zeros((0, 0))
    laplacian = normalized_laplacian(edge_index, num_nodes)
    if num_nodes <= dense_max_nodes:
        values, vectors = np.linalg.eigh(laplacian.toarray())
        values, vectors = values[:count], vectors[:, :count]
    else:
        if count >= num_nodes - 1:
            raise ValueError(f"cannot compute {count} eigenpairs of a {num_nodes}-node graph with eigsh; lower k")
        # a fixed start vector keeps the cached encodings reproducible
        start = np.random.default_rng(0).uniform(0.5, 1.5, size=num_nodes)
        values, vectors = spla.eigsh(
            laplacian, k=count, which="SA", v0=start, tol=tol, maxiter=maxiter,
            ncv=min(num_nodes, max(2 * count + 1, 40)),
        )
        order = np.argsort(values)
        values, vectors = values[order], vectors[:, order]
    values = np.clip(values, 0.0, 2.0)  # round-off can leave tiny negatives
    return values, _fix_signs(vectors)


def _num_nodes(data: Data) -> int:
    if data.num_nodes is None:
        raise ValueError("the Data object has no num_nodes (set data.num_nodes or data.x)")
    return int(data.num_nodes)


class LaplacianPE(BaseTransform):
    """Adds ``data.lap_pe`` [N, k]: the k smallest non-trivial Laplacian eigenvectors, zero padded."""

    def __init__(self, k: int = 8, *, attr_name: str = "lap_pe", dense_max_nodes: int = 1000):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.attr_name, self.dense_max_nodes = k, attr_name, dense_max_nodes

    def forward(self, data: Data) -> Data:
        num_nodes = _num_nodes(data)
        encoding = np.zeros((num_nodes, self.k), dtype=np.float32)
        if num_nodes > 1:
            wanted = min(self.k + 1, num_nodes)
            _, vectors = laplacian_eigenpairs(
                data.edge_index, num_nodes, wanted, dense_max_nodes=self.dense_max_nodes
            )
            nontrivial = vectors[:, 1:]
            encoding[:, : nontrivial.shape[1]] = nontrivial
        data[self.attr_name] = torch.from_numpy(encoding)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"


class SANEigenPE(BaseTransform):
    """Adds SAN's LPE input: ``san_eigvec``, ``san_eigval``, ``san_eig_valid``, each [N, k]."""

    def __init__(self, k: int = 10, *, dense_max_nodes: int = 1000):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.dense_max_nodes = k, dense_max_nodes

    def forward(self, data: Data) -> Data:
        num_nodes = _num_nodes(data)
        eigvec = np.zeros((num_nodes, self.k), dtype=np.float32)
        eigval = np.zeros((num_nodes, self.k), dtype=np.float32)
        valid = np.zeros((num_nodes, self.k), dtype=bool)
        if num_nodes > 0:
            values, vectors = laplacian_eigenpairs(
                data.edge_index, num_nodes, self.k, dense_max_nodes=self.dense_max_nodes
            )
            count = values.shape[0]
            eigvec[:, :count] = vectors
            eigval[:, :count] = values[None, :]
            valid[:, :count] = True
        data.san_eigvec = torch.from_numpy(eigvec)
        data.san_eigval = torch.from_numpy(eigval)
        data.san_eig_valid = torch.from_numpy(valid)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"


def random_walk_kernel(edge_index: torch.Tensor, num_nodes: int, p: int, gamma: float) -> sp.csr_matrix:
    """Sparse ``(I - gamma L)^p`` by binary exponentiation of sparse products.

    With gamma <= 1/2 every entry of ``I - gamma L`` is non-negative, so the
    power's non-zeros are exactly the pairs joined by a walk of length <= p
    (no cancellation can drop a support pair).
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    if not 0 < gamma <= 0.5:
        raise ValueError(f"gamma must be in (0, 0.5] so the kernel stays positive, got {gamma}")
    step = (sp.identity(num_nodes, format="csr") - gamma * normalized_laplacian(edge_index, num_nodes)).tocsr()
    step.eliminate_zeros()
    result = None
    power = step
    remaining = p
    while remaining:
        if remaining & 1:
            result = power if result is None else (result @ power).tocsr()
        remaining >>= 1
        if remaining:
            power = (power @ power).tocsr()
    result.eliminate_zeros()
    return result


class RandomWalkKernel(BaseTransform):
    """Adds GraphiT's log random-walk kernel over its support (see the module docstring).

    Attributes written: ``kernel_log_edge [E]`` (log kappa_ij of each real edge
    j -> i, in edge order), ``kernel_extra_index [2, X]`` (support pairs j -> i
    that are not edges; self pairs included) and ``kernel_log_extra [X]``.
    """

    def __init__(self, p: int = 16, gamma: float = 0.25, *, large_graph_nodes: int = 5000):
        if p < 1:
            raise ValueError(f"p must be >= 1, got {p}")
        if not 0 < gamma <= 0.5:
            raise ValueError(f"gamma must be in (0, 0.5], got {gamma}")
        self.p, self.gamma, self.large_graph_nodes = p, gamma, large_graph_nodes

    def forward(self, data: Data) -> Data:
        num_nodes = _num_nodes(data)
        edge_index = data.edge_index.detach().cpu().long()
        p = self.p
        if p > 1 and num_nodes > self.large_graph_nodes:
            warnings.warn(
                f"RandomWalkKernel: graph with {num_nodes} nodes > large_graph_nodes={self.large_graph_nodes}; "
                "using p=1 (edges plus self loops) to keep the support sparse",
                RuntimeWarning,
                stacklevel=2,
            )
            p = 1
        if p == 1:
            log_edge, extra_index, log_extra = self._one_step(edge_index, num_nodes)
        else:
            log_edge, extra_index, log_extra = self._powered(edge_index, num_nodes, p)
        data.kernel_log_edge = torch.from_numpy(log_edge.astype(np.float32))
        data.kernel_extra_index = torch.from_numpy(extra_index.astype(np.int64))
        data.kernel_log_extra = torch.from_numpy(log_extra.astype(np.float32))
        return data

    def _one_step(self, edge_index, num_nodes):
        # closed form of I - gamma L: no sparse matrix over the edges is needed
        adjacency = symmetric_adjacency(edge_index, num_nodes)
        degree = np.asarray(adjacency.sum(axis=1)).ravel()
        src, dst = edge_index.numpy()
        log_degree = np.log(np.maximum(degree, 1.0))
        log_edge = np.log(self.gamma) - 0.5 * (log_degree[src] + log_degree[dst])
        # L_ii = 1 for every node (isolated ones included), so the diagonal is 1 - gamma
        diagonal = np.full(num_nodes, np.log1p(-self.gamma))
        is_loop = src == dst
        log_edge[is_loop] = diagonal[src[is_loop]]
        has_loop = np.zeros(num_nodes, dtype=bool)
        has_loop[src[is_loop]] = True
        nodes = np.nonzero(~has_loop)[0]
        extra_index = np.stack([nodes, nodes])
        return log_edge, extra_index, diagonal[nodes]

    def _powered(self, edge_index, num_nodes, p):
        kernel = random_walk_kernel(edge_index, num_nodes, p, self.gamma).tocoo()
        rows, cols, values = kernel.row.astype(np.int64), kernel.col.astype(np.int64), kernel.data
        log_values = np.log(values)
        src, dst = edge_index.numpy()
        # edge j -> i takes kappa[i, j]; look it up by the key i * N + j in the sorted support
        support_keys = rows * num_nodes + cols
        order = np.argsort(support_keys)
        support_keys, log_values_sorted = support_keys[order], log_values[order]
        edge_keys = dst * num_nodes + src
        position = np.searchsorted(support_keys, edge_keys)
        log_edge = log_values_sorted[np.minimum(position, support_keys.shape[0] - 1)]
        is_extra = ~np.isin(support_keys, edge_keys)
        extra_rows, extra_cols = np.divmod(support_keys[is_extra], num_nodes)
        extra_index = np.stack([extra_cols, extra_rows])  # [src = j, dst = i]
        return log_edge, extra_index, log_values_sorted[is_extra]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, gamma={self.gamma})"


class LaplacianEncoding(nn.Linear):
    """Linear(k, hidden) of data.lap_pe [N, k] (from `LaplacianPE`) added to the node embedding.

    `owner` names the model in the error raised when data.lap_pe is missing.
    """

    def __init__(self, k: int, hidden: int, owner: str):
        super().__init__(k, hidden)
        self.owner = owner

    def add_to(self, h: torch.Tensor, data) -> torch.Tensor:
        batch, num_graphs = graph_batch(data)
        vectors = require(data, "lap_pe", f"{self.owner}(pe='lap') adds Laplacian eigenvectors")
        return h + self(random_signs(vectors.to(h.dtype), batch, num_graphs, self.training))


class LearnedLaplacianPE(nn.Module):
    """SAN's LPE: a transformer over each node's k (eigenvector entry, eigenvalue) tokens, summed.

    forward(eigvec [N, k], eigval [N, k], valid [N, k] bool) -> [N, hidden]; `add_to(h, data)`
    reads them from data.san_eigvec / san_eigval / san_eig_valid (`SANEigenPE`).
    """

    def __init__(self, k: int, hidden: int, dim: int = 16, layers: int = 2, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"lpe_dim ({dim}) must be a multiple of lpe_heads ({heads})")
        self.k = k
        self.input = nn.Linear(2, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output = nn.Linear(dim, hidden)

    def forward(self, eigvec: torch.Tensor, eigval: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if eigvec.shape[1] != self.k:
            raise ValueError(f"LPE built for k={self.k} eigenpairs, data has {eigvec.shape[1]}")
        valid = valid.bool()
        tokens = self.input(torch.stack([eigvec, eigval], dim=-1))
        tokens = tokens.masked_fill(~valid.unsqueeze(-1), 0.0)
        tokens = self.encoder(tokens, src_key_padding_mask=~valid)
        return self.output(tokens.masked_fill(~valid.unsqueeze(-1), 0.0).sum(1))

    def add_to(self, h: torch.Tensor, data) -> torch.Tensor:
        why = "SAN(pe='lap') learns positional encodings from Laplacian eigenpairs"
        eigvec = require(data, "san_eigvec", why).to(h.dtype)
        eigval = require(data, "san_eigval", why).to(h.dtype)
        valid = require(data, "san_eig_valid", why)
        batch, num_graphs = graph_batch(data)
        return h + self(random_signs(eigvec, batch, num_graphs, self.training), eigval, valid)
