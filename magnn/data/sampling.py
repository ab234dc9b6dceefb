"""Neighbour-sampled mini-batches of one large graph (the paper's ogbn-proteins mode).

PyG's NeighborLoader needs pyg-lib or torch-sparse; this sampler needs
neither. For each seed batch it walks `len(fanouts)` hops against the edge
direction (a node's incoming edges are what it attends over), drawing at
most `fanout` incoming edges per frontier node: all of them when the node has
that few, otherwise `fanout` uniform draws with replacement, duplicates
dropped (so a hub yields up to `fanout` distinct edges). The mini-batch is
the union of the drawn edges with their endpoints relabelled; its first
`num_seeds` nodes are the seeds, in order, which is where the loss goes.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch_geometric.data import Data

from ..core.graph import Graph

NODE_FIELDS = ("x", "species", "y")
EDGE_FIELDS = ("edge_attr", "edge_type")


def sample_edges(graph: Graph, seeds: torch.Tensor, fanouts: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Caller-order ids of the edges drawn for `seeds`, hop by hop."""
    rowptr, perm = graph.rowptr, graph.perm
    frontier, drawn = seeds, []
    seen = torch.zeros(graph.num_nodes, dtype=torch.bool, device=seeds.device)
    seen[seeds] = True
    for fanout in fanouts:
        start = rowptr[frontier]
        degree = rowptr[frontier + 1] - start
        small = degree <= fanout
        # nodes with few incoming edges keep them all
        counts = degree[small]
        offsets = torch.repeat_interleave(start[small], counts)
        position = torch.arange(int(counts.sum()), device=seeds.device)
        position = position - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        take_all = offsets + position
        # the others draw `fanout` times uniformly
        big_start, big_degree = start[~small], degree[~small]
        uniform = torch.rand((big_start.numel(), fanout), generator=generator).to(seeds.device)
        draws = (big_start.unsqueeze(1) + (uniform * big_degree.unsqueeze(1)).long()).reshape(-1)
        edges = perm[torch.unique(torch.cat([take_all, draws]))]
        drawn.append(edges)
        sources = graph.src[edges]
        frontier = torch.unique(sources[~seen[sources]])
        seen[frontier] = True
        if frontier.numel() == 0:
            break
    return torch.unique(torch.cat(drawn)) if drawn else seeds.new_empty(0)


def _copy_fields(batch: Data, data: Data, nodes: torch.Tensor, edge_ids: torch.Tensor) -> None:
    """Gives `batch` data's node fields at `nodes` and its edge fields at `edge_ids` (those data has)."""
    for name in NODE_FIELDS:
        if getattr(data, name, None) is not None:
            batch[name] = data[name][nodes]
    for name in EDGE_FIELDS:
        if getattr(data, name, None) is not None:
            batch[name] = data[name][edge_ids]


def subgraph(data: Data, seeds: torch.Tensor, edge_ids: torch.Tensor) -> Data:
    """The mini-batch Data: seeds first, then the other endpoints; node and edge fields sliced."""
    endpoints = data.edge_index[:, edge_ids]
    others = torch.unique(endpoints.reshape(-1))
    others = others[~torch.isin(others, seeds)]
    nodes = torch.cat([seeds, others])
    local = torch.full((data.num_nodes,), -1, dtype=torch.long, device=seeds.device)
    local[nodes] = torch.arange(nodes.numel(), device=seeds.device)
    batch = Data(edge_index=local[endpoints], num_nodes=nodes.numel())
    _copy_fields(batch, data, nodes, edge_ids)
    batch.num_seeds = seeds.numel()
    batch.node_ids = nodes
    return batch


def seed_rows(batch: Data):
    """The row indices of the seed nodes of a mini-batch from `subgraph` (its first `num_seeds` rows),
    or of a PyG-collated list of them (each subgraph's first `num_seeds` rows of its slice, `ptr`);
    None when `batch` carries no `num_seeds` (a batch of whole graphs). The seeds are the nodes a
    loss reads: the others are sampled neighbours, whose own neighbourhoods were cut off."""
    num_seeds = getattr(batch, "num_seeds", None)
    if num_seeds is None:
        return None
    counts = torch.as_tensor(num_seeds, dtype=torch.long).reshape(-1).cpu()
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        if counts.numel() != 1:
            raise ValueError(f"num_seeds has {counts.numel()} entries but the batch has no ptr to place them")
        starts = torch.zeros(1, dtype=torch.long)
    else:
        starts = torch.as_tensor(ptr, dtype=torch.long).cpu()[:-1]
        if starts.numel() != counts.numel():
            raise ValueError(f"num_seeds has {counts.numel()} entries for {starts.numel()} collated subgraphs")
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return torch.repeat_interleave(starts, counts) + offsets


def neighbor_batches(data: Data, seed_nodes: torch.Tensor, *, fanouts: Sequence[int] = (5, 10, 15),
                     batch_size: int = 512, seed: int = 0, shuffle: bool = True) -> Iterator[Data]:
    """Mini-batches over `seed_nodes` (shuffled with `seed` when asked)."""
    generator = torch.Generator().manual_seed(seed)
    graph = Graph(data.edge_index, data.num_nodes, validate=False)
    order = seed_nodes[torch.randperm(seed_nodes.numel(), generator=generator)] if shuffle else seed_nodes
    for begin in range(0, order.numel(), batch_size):
        seeds = order[begin:begin + batch_size]
        yield subgraph(data, seeds, sample_edges(graph, seeds, fanouts, generator))


PAPER_BLOCK_FANOUTS = (5, 10, 15, 1)  # the paper's ogbn-proteins detection: DGL per-layer blocks, first layer first


def _draw_in_edges(graph: Graph, nodes: torch.Tensor, fanout: int, generator: torch.Generator) -> torch.Tensor:
    """Caller-order ids of at most `fanout` distinct incoming edges per node of `nodes` (all of them
    when it has that few; otherwise `fanout` drawn without replacement, as DGL's replace=False)."""
    rowptr, perm = graph.rowptr, graph.perm
    start = rowptr[nodes]
    degree = rowptr[nodes + 1] - start
    first = torch.cumsum(degree, 0) - degree
    total = int(degree.sum())
    position = torch.arange(total) - torch.repeat_interleave(first, degree)
    slots = torch.repeat_interleave(start, degree) + position
    owner = torch.repeat_interleave(torch.arange(nodes.numel()), degree)
    keys = torch.rand(total, generator=generator, dtype=torch.float64)
    order = torch.argsort(owner.double() + keys)  # grouped by node, shuffled within each node
    keep = order[position < fanout]  # `position` is each sorted slot's rank within its node
    return perm[slots[keep]]


def sample_blocks(graph: Graph, seeds: torch.Tensor, fanouts: Sequence[int] = PAPER_BLOCK_FANOUTS,
                  generator: torch.Generator = None) -> list:
    """Per-layer blocks as DGL's MultiLayerNeighborSampler draws them: [(dst nodes, edge ids)], the
    first layer's block first. Sampling starts at the seeds with the last fan-out: the last layer's
    block holds up to fanouts[-1] incoming edges per seed; each earlier block's destination nodes are
    the later block's destinations followed by its new sources, each drawing its own layer's fan-out.
    Unlike `sample_edges` (one union subgraph used by every layer), every layer attends over its own
    block only."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    dst, blocks = seeds, []
    for fanout in reversed(tuple(fanouts)):
        edges = _draw_in_edges(graph, dst, int(fanout), generator)
        blocks.insert(0, (dst, edges))
        sources = graph.src[edges]
        dst = torch.cat([dst, torch.unique(sources[~torch.isin(sources, dst)])])
    return blocks


def block_batch(data: Data, blocks: list) -> Data:
    """The mini-batch Data of per-layer blocks (`sample_blocks`'s output), which a model runs layer by
    layer (magnn.models: layer l attends over block l only).

    Nodes are the first block's sources, ordered so that every block's destinations are a prefix
    (the seeds first, as in DGL's blocks): layer l reads the states of block l's sources and writes
    those of its destinations, the next block's sources. `edge_index` and the edge fields hold the
    blocks' edges one block after another (an edge drawn for two blocks appears in both);
    `block_ptr` [B + 1] gives each block's rows, `block_num_dst` [B] its destination count (magnn's
    models hand each layer its block's rows of the edge inputs and of the collectors' edge types).
    """
    first_dst, first_edges = blocks[0]
    sources = data.edge_index[0, first_edges]
    nodes = torch.cat([first_dst, torch.unique(sources[~torch.isin(sources, first_dst)])])
    local = torch.full((data.num_nodes,), -1, dtype=torch.long, device=nodes.device)
    local[nodes] = torch.arange(nodes.numel(), device=nodes.device)
    edge_ids = torch.cat([edges for _, edges in blocks])
    counts = torch.tensor([0] + [edges.numel() for _, edges in blocks])
    batch = Data(edge_index=local[data.edge_index[:, edge_ids]], num_nodes=nodes.numel())
    _copy_fields(batch, data, nodes, edge_ids)
    batch.block_ptr = torch.cumsum(counts, 0)
    batch.block_num_dst = torch.tensor([dst.numel() for dst, _ in blocks])
    batch.num_seeds = blocks[-1][0].numel()
    batch.node_ids = nodes
    return batch
