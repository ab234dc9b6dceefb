"""The paper's ogbn-proteins sampling: DGL-style per-layer blocks with fan-outs [5, 10, 15, 1]."""
import torch

from magnn.core.graph import Graph
from magnn.data.sampling import PAPER_BLOCK_FANOUTS, sample_blocks


def test_each_layer_has_its_own_block_drawn_from_the_seeds_outward():
    # a chain 3 -> 2 -> 1 -> 0 and a hub: 20 nodes (4..23) all pointing at node 0, and 2 nodes at node 1
    src = [3, 2, 1] + list(range(4, 24)) + [24, 25]
    dst = [2, 1, 0] + [0] * 20 + [1, 1]
    edge_index = torch.tensor([src, dst])
    graph = Graph(edge_index, 26, validate=False)
    blocks = sample_blocks(graph, torch.tensor([0]), PAPER_BLOCK_FANOUTS, torch.Generator().manual_seed(1))
    assert len(blocks) == 4
    last_dst, last_edges = blocks[3]
    assert last_dst.tolist() == [0] and last_edges.numel() == 1  # fan-out 1 at the last layer
    assert int(edge_index[1, last_edges]) == 0
    for (dst_nodes, edges), fanout in zip(blocks, PAPER_BLOCK_FANOUTS):
        heads = edge_index[1, edges]
        assert torch.isin(heads, dst_nodes).all()  # a block's edges end at its own destinations
        for node in dst_nodes.tolist():
            ends = edges[heads == node]
            degree = int((edge_index[1] == node).sum())
            assert ends.numel() == min(fanout, degree)  # its layer's fan-out, without replacement
            assert ends.unique().numel() == ends.numel()
    # each earlier block's destinations: the later block's, then that block's new sources
    for (earlier, _), (later, later_edges) in zip(blocks[:-1], blocks[1:]):
        assert earlier[: later.numel()].tolist() == later.tolist()
        new = set(edge_index[0, later_edges].tolist()) - set(later.tolist())
        assert set(earlier[later.numel():].tolist()) == new
    # the third block (fan-out 15) of node 0 draws 15 of its 21 in-edges; the first (fan-out 5) 5
    assert (edge_index[1, blocks[2][1]] == 0).sum() == 15 and (edge_index[1, blocks[0][1]] == 0).sum() == 5
