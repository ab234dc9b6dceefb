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


# -- the models run layer l on block l; the paper-form detection feeds them the blocks ------------------

import pytest  # noqa: E402

from magnn.analysis.detect import detect_seed_subgraphs, seed_generator  # noqa: E402
from magnn.data import proteins_info, synthetic_proteins_graph  # noqa: E402
from magnn.data.sampling import block_batch  # noqa: E402
from magnn.models import build_model  # noqa: E402
from magnn.models.presets import proteins_architecture  # noqa: E402
from magnn.stats import collect  # noqa: E402


@pytest.fixture(scope="module")
def proteins():
    data = synthetic_proteins_graph(num_nodes=120, num_edges_undirected=700, seed=4)
    return data, proteins_info(int(data.species.max()) + 1)


def _paper_model(name, info, architecture="paper"):
    torch.manual_seed(0)
    return build_model(name, info, preset="paper", backend="torch", **proteins_architecture(name, architecture)).eval()


def _blocks(data, seeds, seed=3):
    graph = Graph(data.edge_index, data.num_nodes, validate=False)
    return sample_blocks(graph, torch.as_tensor(seeds), PAPER_BLOCK_FANOUTS, torch.Generator().manual_seed(seed))


def test_block_batch_lays_the_blocks_out_as_dgl_does(proteins):
    data, _ = proteins
    blocks = _blocks(data, [5, 9])
    batch = block_batch(data, blocks)
    ptr, num_dst = batch.block_ptr.tolist(), batch.block_num_dst.tolist()
    assert ptr == [0] + torch.cumsum(torch.tensor([e.numel() for _, e in blocks]), 0).tolist()
    assert num_dst == [d.numel() for d, _ in blocks] and batch.num_seeds == 2
    assert batch.node_ids[:2].tolist() == [5, 9]
    for (dst, edges), lo, hi, count in zip(blocks, ptr[:-1], ptr[1:], num_dst):
        assert batch.node_ids[:count].tolist() == dst.tolist()  # destinations: a prefix of the nodes
        assert torch.equal(batch.node_ids[batch.edge_index[:, lo:hi]], data.edge_index[:, edges])  # exactly block l
        assert torch.equal(batch.edge_attr[lo:hi], data.edge_attr[edges])
    # layer l's sources are the previous block's destinations (every node for the first)
    for later, earlier_count in zip(range(1, len(blocks)), num_dst):
        assert int(batch.edge_index[0, ptr[later]:ptr[later + 1]].max()) < earlier_count
    assert torch.equal(batch.edge_type, data.edge_type[torch.cat([edges for _, edges in blocks])])


def _attended(model):
    """Per attention layer, the (edge_index, node count) of each call, recorded by forward pre-hooks."""
    seen = {}

    def hook(name):
        def record(module, args):
            h, graph = args[0], args[1]
            seen.setdefault(name, []).append((graph.edge_index.clone(), h.shape[0]))
        return record

    handles = [layer.attention.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.layers)]
    return seen, handles


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_each_layer_attends_over_its_own_block_only(proteins, name):
    data, info = proteins
    model = _paper_model(name, info)
    blocks = _blocks(data, [7])
    batch = block_batch(data, blocks)
    seen, handles = _attended(model)
    with torch.no_grad():
        out = model(batch)
    for handle in handles:
        handle.remove()
    num_layers = len(model.layers)
    assert num_layers == 3 and len(blocks) == 4  # the 4th block (fan-out 1) feeds no layer
    sources = [batch.num_nodes] + batch.block_num_dst.tolist()
    for layer in range(num_layers):
        (edge_index, rows), = seen[layer]
        assert torch.equal(batch.node_ids[edge_index], data.edge_index[:, blocks[layer][1]])
        assert rows == sources[layer]
    assert out.shape[0] == batch.block_num_dst[num_layers - 1]  # the third block's destinations
    # the same as each layer over its block's edges among all nodes, no rows dropped: the kept rows agree
    with torch.no_grad():
        reference = _unpruned_forward(model, batch)
    assert torch.allclose(out, reference[: out.shape[0]], atol=1e-5)


def _unpruned_forward(model, batch):
    """Layer l over block l's edges with every node kept (nothing dropped between layers)."""
    h = model.embed_nodes(batch)
    shared = model.edge_input.shared(batch, None)
    ptr = batch.block_ptr.tolist()
    for index, layer in enumerate(model.layers):
        rows = slice(ptr[index], ptr[index + 1])
        graph = Graph(batch.edge_index[:, rows], num_nodes=batch.num_nodes)
        if model.model_name == "gt":  # the paper's GT: no edge stream, the shared embedding's rows
            h = layer(h, shared[rows], graph)[0]
        else:  # GraphiT (bias, edge types) and SAN (fake edges, their embedding): none here
            h = layer(h, model.edge_input.for_layer(layer, batch, shared, None)[rows], graph, None, None)
    return model.predict(h, batch)


def test_paper_form_detection_runs_the_blocks(proteins):
    data, info = proteins
    model = _paper_model("gt", info)
    seeds = torch.nonzero(data.test_mask).reshape(-1)[:3]
    report = detect_seed_subgraphs(model, data, data.test_mask, max_seeds=3, progress=False, fit=False)
    assert report.form == "per-layer blocks, fan-outs [5, 10, 15, 1]"
    graph = Graph(data.edge_index, data.num_nodes, validate=False)
    drawn = [sample_blocks(graph, s.view(1), PAPER_BLOCK_FANOUTS, seed_generator(0, int(s))) for s in seeds]
    for index, layer in enumerate(report.layers):
        assert layer.stats.rows == sum(blocks[index][1].numel() for blocks in drawn)  # block l's edges, per seed
        counts = torch.bincount(torch.cat([data.edge_type[blocks[index][1]] for blocks in drawn]))
        assert layer.stats.type_edges == {t: int(n) for t, n in enumerate(counts.tolist()) if n}  # block l's types
        with torch.no_grad():
            expected = []
            for blocks in drawn:
                with collect(model) as stats:
                    model(block_batch(data, blocks))
                expected.append(stats[layer.name].max_ratio("edge"))
        assert layer.batch_max_ratio_edge == expected


def test_models_that_cannot_run_blocks_fall_back_or_refuse(proteins):
    data, info = proteins
    model = _paper_model("gt", info, architecture="magnn")  # edge stream across layers
    report = detect_seed_subgraphs(model, data, data.test_mask, max_seeds=2, progress=False, fit=False)
    assert report.form == "union subgraph, fan-outs [5, 10, 15]"
    with pytest.raises(ValueError, match="blocks=True: edge_stream=True"):
        detect_seed_subgraphs(model, data, data.test_mask, max_seeds=2, blocks=True, progress=False, fit=False)
    with pytest.raises(ValueError, match="paper's ogbn-proteins architecture: edge_stream=True"):
        model(block_batch(data, _blocks(data, [3])))
    short = block_batch(data, _blocks(data, [3])[:2])  # two blocks for three layers
    with pytest.raises(ValueError, match="2 blocks for 3 layers"):
        _paper_model("gt", info)(short)
