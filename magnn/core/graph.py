"""`Graph`: a validated edge list with the sorted views that kernels need.

Edges are `j -> i` with `edge_index[0] = src = j` and `edge_index[1] = dst = i`
(PyG's source_to_target). Node i attends over its incoming edges, so the
forward kernels walk a CSR sorted by destination; the backward passes for k, v
and e walk a reverse CSR sorted by source. Both views are built lazily and
cached, so the pure-PyTorch reference (which scatters in the caller's order)
pays only for validation.

A Graph built with `validate=False` skips every check. The backends call
`check_index_bounds()` before they index with it: one min/max pass over
edge_index, done once per Graph (validated graphs skip it), so a bad index
raises a ValueError instead of crashing a compiled kernel or reading out of
bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ArgumentError, ArgumentTypeError
from .validation import check_edge_index


class cached_view:
    """A lock-free cached property: functools.cached_property takes a lock on
    Python < 3.12, which torch.compile cannot trace on first access."""

    def __init__(self, compute):
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, graph, owner=None):
        if graph is None:
            return self
        value = self.compute(graph)
        graph.__dict__[self.name] = value  # the instance attribute now shadows this descriptor
        return value


VIEWS = ("perm", "rowptr", "col", "rev_perm", "rev_rowptr", "rev_col", "rev_to_csr", "in_degree", "out_degree")


@dataclass(frozen=True)
class DegreeStats:
    max_in: int
    max_out: int
    mean: float
    isolated: int  # nodes with no incoming edge


class Graph:
    """A directed graph with `num_nodes` nodes and `num_edges` edges `src -> dst`.

    Bipartite graphs (SPEC §3): `num_src_nodes` source nodes (keys, values) and
    `num_nodes` destination nodes (queries, outputs); `num_src_nodes` defaults to
    `num_nodes` (one node set). `Graph.from_edge_index(edge_index, size=(N_src, N_dst))`
    spells the sizes as PyG does.

    Build it once per static graph and pass it instead of `edge_index` to skip
    validation and sorting on every call::

        graph = magnn.Graph(edge_index, num_nodes=x.shape[0])
        node_out, edge_out = edge_attention(q, k, v, e, graph)

    Attributes (built on first use, then cached):
      rowptr [N+1], col [E] (= src), perm [E]: dst-sorted CSR; position p of the
        CSR holds the caller's edge perm[p].
      rev_rowptr [N_src+1], rev_col [E] (= dst), rev_perm [E]: the same sorted by src.
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int | None = None, *, num_src_nodes: int | None = None,
                 validate: bool = True):
        if validate:
            num_nodes, num_src_nodes = check_edge_index(edge_index, num_nodes, num_src_nodes)
            edge_index = edge_index.long()
        else:
            if num_nodes is None:
                if num_src_nodes is None:
                    num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
                else:
                    num_nodes = int(edge_index[1].max()) + 1 if edge_index.numel() else 0
            if num_src_nodes is None:
                num_src_nodes = num_nodes
        self.edge_index = edge_index
        self.num_nodes = int(num_nodes)
        self._num_src_nodes = int(num_src_nodes)
        # validation already bounds every index; an unvalidated graph is checked on first use
        self._index_bounds_checked = bool(validate)

    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_nodes: int | None = None, *,
                        num_src_nodes: int | None = None, size=None, validate: bool = True) -> "Graph":
        """A Graph from an edge list; `size=(N_src, N_dst)` (PyG's spelling) or the counts
        `num_nodes` (destinations) and `num_src_nodes` (sources, default: num_nodes)."""
        if size is not None:
            if num_nodes is not None or num_src_nodes is not None:
                raise ArgumentError("pass either size=(N_src, N_dst) or num_nodes / num_src_nodes, not both")
            if not isinstance(size, (tuple, list)) or len(size) != 2:
                raise ArgumentError(f"size must be a pair (N_src, N_dst), got {size!r}")
            num_src_nodes, num_nodes = size
        return cls(edge_index, num_nodes, num_src_nodes=num_src_nodes, validate=validate)

    @property
    def num_src_nodes(self) -> int:
        """The number of source nodes (rows of k and v); num_nodes unless bipartite."""
        return self._num_src_nodes

    @property
    def is_bipartite(self) -> bool:
        return self.num_src_nodes != self.num_nodes

    @property
    def size(self) -> tuple[int, int]:
        """(num_src_nodes, num_nodes), PyG's (N_src, N_dst)."""
        return self.num_src_nodes, self.num_nodes

    def check_index_bounds(self) -> "Graph":
        """Raise a ValueError unless every source index lies in [0, num_src_nodes) and every
        destination index in [0, num_nodes); returns self.

        The backends call this before indexing with the graph. A validated Graph
        (and a copy of a checked one) returns at once; otherwise one min/max
        pass runs on the first call and its success is remembered. Under
        torch.compile the pass runs once at trace time on the real tensors, so
        it adds nothing to the compiled graph.
        """
        if not self._index_bounds_checked:
            _check_index_bounds_once(self)
        return self

    # -- basic views -------------------------------------------------------
    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def src(self) -> torch.Tensor:
        return self.edge_index[0]

    @property
    def dst(self) -> torch.Tensor:
        return self.edge_index[1]

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    # -- dst-sorted CSR (forward) ------------------------------------------
    @cached_view
    def perm(self) -> torch.Tensor:
        return torch.argsort(self.dst, stable=True)

    @cached_view
    def rowptr(self) -> torch.Tensor:
        return _rowptr(self.in_degree, self.num_nodes)

    @cached_view
    def col(self) -> torch.Tensor:
        return self.src[self.perm]

    # -- src-sorted reverse CSR (backward for k, v, e) ---------------------
    @cached_view
    def rev_perm(self) -> torch.Tensor:
        return torch.argsort(self.src, stable=True)

    @cached_view
    def rev_rowptr(self) -> torch.Tensor:
        return _rowptr(self.out_degree, self.num_src_nodes)

    @cached_view
    def rev_col(self) -> torch.Tensor:
        return self.dst[self.rev_perm]

    @cached_view
    def rev_to_csr(self) -> torch.Tensor:
        """For each position of the reverse CSR, its position in the dst-sorted CSR."""
        inverse = torch.empty_like(self.perm)
        inverse[self.perm] = torch.arange(self.num_edges, device=self.device)
        return inverse[self.rev_perm]

    # -- degrees ------------------------------------------------------------
    @cached_view
    def in_degree(self) -> torch.Tensor:
        return _degree(self.dst, self.num_nodes)

    @cached_view
    def out_degree(self) -> torch.Tensor:
        return _degree(self.src, self.num_src_nodes)

    def degree_stats(self) -> DegreeStats:
        if self.num_nodes == 0:
            return DegreeStats(0, 0, 0.0, 0)
        return DegreeStats(
            max_in=int(self.in_degree.max()),
            max_out=int(self.out_degree.max()),
            mean=self.num_edges / self.num_nodes,
            isolated=int((self.in_degree == 0).sum()),
        )

    def prepare(self) -> "Graph":
        """Check the index bounds and build every sorted view now (outside timed or
        compiled regions); returns self."""
        self.check_index_bounds()
        for name in VIEWS:
            getattr(self, name)
        return self

    # -- movement -----------------------------------------------------------
    def to(self, device) -> "Graph":
        """A copy on `device`, with every view built so far moved along."""
        moved = Graph(self.edge_index.to(device), self.num_nodes, num_src_nodes=self.num_src_nodes, validate=False)
        moved._index_bounds_checked = self._index_bounds_checked  # the same indices
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and name != "edge_index":
                moved.__dict__[name] = value.to(device)
        return moved

    def __repr__(self) -> str:
        sources = f", num_src_nodes={self.num_src_nodes}" if self.is_bipartite else ""
        return f"Graph(num_nodes={self.num_nodes}{sources}, num_edges={self.num_edges}, device={self.device})"


@torch.compiler.assume_constant_result
def _check_index_bounds_once(graph: Graph) -> bool:
    """The bounds check behind Graph.check_index_bounds; marks the graph as checked.

    torch.compile calls it once while tracing, with the real Graph (guarded by
    identity), and keeps the answer as a constant: no data-dependent branch
    and no graph break enter the compiled code.
    """
    edge_index = graph.edge_index
    num_nodes = graph.num_nodes
    limits = (graph.num_src_nodes, num_nodes)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ArgumentError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool or edge_index.is_complex():
        raise ArgumentTypeError(
            f"edge_index must hold integer node indices (torch.int64), got dtype {edge_index.dtype}; "
            "convert it with edge_index.long()"
        )
    if edge_index.shape[1]:
        # one pass: per row (src, dst), its min and max
        low, high = torch.aminmax(edge_index, dim=1)
        low, high = low.tolist(), high.tolist()
        for row in (0, 1):
            name = f"edge_index[{row}] ({'src' if row == 0 else 'dst'})"
            count = "num_src_nodes" if row == 0 and graph.is_bipartite else "num_nodes"
            if low[row] < 0:
                raise ArgumentError(
                    f"{name} holds {low[row]}, but node indices must be in [0, {count}={limits[row]}); "
                    "fix the edges, or build the Graph with validate=True to have them checked when it is built"
                )
            if high[row] >= limits[row]:
                wanted = high[row] + 1 if graph.is_bipartite else max(high) + 1
                raise ArgumentError(
                    f"{name} holds {high[row]} but {count}={limits[row]}; pass {count}={wanted} "
                    "(or more) or fix the edges, or build the Graph with validate=True to have them checked "
                    "when it is built"
                )
    graph._index_bounds_checked = True
    return True


def _degree(index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """How often each of num_nodes nodes occurs in `index` (in-bounds indices): a scatter-add into
    [num_nodes] zeros, whose shape, unlike bincount's, does not depend on the data (torch.compile
    traces it without a graph break). An index outside [0, num_nodes) is counted in a spare last
    bin (negative ones in the first) rather than raising here: the graph's bounds check names it."""
    counts = torch.zeros(num_nodes + 1, dtype=torch.long, device=index.device)
    counts.index_add_(0, index.long().clamp(0, num_nodes), torch.ones_like(index, dtype=torch.long))
    return counts[:num_nodes]


def _rowptr(degree: torch.Tensor, num_nodes: int) -> torch.Tensor:
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=degree.device)
    torch.cumsum(degree, 0, out=rowptr[1:])
    return rowptr


def as_graph(edge_index_or_graph, num_nodes: int | None, num_src_nodes: int | None = None) -> Graph:
    """Accept a `Graph` or an `edge_index` tensor; check num_nodes (and num_src_nodes) agree."""
    if isinstance(edge_index_or_graph, Graph):
        graph = edge_index_or_graph
        if num_nodes is not None and int(num_nodes) != graph.num_nodes:
            raise ArgumentError(f"num_nodes={num_nodes} disagrees with the Graph's num_nodes={graph.num_nodes}")
        if num_src_nodes is not None and int(num_src_nodes) != graph.num_src_nodes:
            raise ArgumentError(
                f"num_src_nodes={num_src_nodes} disagrees with the Graph's num_src_nodes={graph.num_src_nodes}"
            )
        return graph
    return Graph(edge_index_or_graph, num_nodes, num_src_nodes=num_src_nodes)
