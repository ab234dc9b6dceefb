"""`magnn study --dataset ogbn-proteins` end to end on a generated ogb folder, and its pieces:
the paper's seed-subgraph detection, magnn's full-graph detection, the paper architecture."""
import json

import pytest
import torch

from magnn.analysis.detect import detect, detect_full_graph, detect_seed_subgraphs, seed_generator
from magnn.data import proteins_info, synthetic_proteins_graph, write_ogb_proteins_raw
from magnn.data.sampling import sample_edges, subgraph
from magnn.models import build_model
from magnn.models.presets import proteins_architecture
from magnn.core.graph import Graph
from magnn.study import StudyConfig, run_study


@pytest.fixture(scope="module")
def small_graph():
    data = synthetic_proteins_graph(num_nodes=150, num_edges_undirected=900, seed=4)
    return data, proteins_info(int(data.species.max()) + 1)


def _model(name, info, **overrides):
    torch.manual_seed(0)
    return build_model(name, info, preset="paper", backend="torch", **overrides).eval()


@pytest.mark.slow  # ~35 s idle, 2 min on the loaded 2-core box; most of it is report figures
def test_study_end_to_end_on_generated_proteins(tmp_path):
    root = tmp_path / "data"
    write_ogb_proteins_raw(root, num_nodes=160, num_edges_undirected=1000, seed=5)
    out = tmp_path / "study"
    report = run_study(StudyConfig.from_options(dataset="ogbn-proteins", quick=True, data_root=str(root), out=str(out),
                                   epochs=2, max_seeds=6, attack_steps=1, backend="torch"))
    saved = json.loads((out / "report.json").read_text())
    labels = {"base no_ebt", "trained no_ebt", "base ebt_edge", "trained ebt_edge"}
    assert set(saved["detection"]) == labels and set(saved["detection_full_graph"]) == labels
    layers = saved["detection"]["trained no_ebt"]["layers"]
    assert len(layers) == 3 and all(layer["batches"] == 6 for layer in layers)  # one per seed, per layer
    full = saved["detection_full_graph"]["trained no_ebt"]
    assert len(full["layers"]) == 3
    assert all(layer["stats"]["rows"] == saved["graph"]["directed_edges"] for layer in full["layers"])
    assert full["test_nodes"]["layers.0.attention"]["nodes"] <= saved["graph"]["test_nodes"]
    assert saved["architecture"]["name"] == "paper" and saved["training_mode"]["sampled"] is False
    assert "per-layer blocks, fan-outs [5, 10, 15, 1]" in saved["detection_forms"]["detection"]  # the paper's form
    assert set(saved["attack"]) == {"no_ebt", "ebt_edge"} and saved["ablation"]["with"]
    runs = [run for rows in saved["attack"].values() for run in rows]  # each says whether its gain was measured
    assert all(isinstance(run["measurable"], bool) and run["noise_effect"] >= 0 for run in runs)
    markdown = (out / "report.md").read_text()
    assert "two forms side by side" in markdown and "**paper**" in markdown
    for name in ("sorted_max_ratios.png", "sorted_node_max_ratios.png", "edge_ratios.png", "ablation.png"):
        assert (out / name).stat().st_size > 0
    assert report["findings"]


def test_seed_subgraph_detection_is_one_batch_per_seed(small_graph):
    data, info = small_graph
    model = _model("gt", info)
    seeds = torch.nonzero(data.test_mask).reshape(-1)[:5]
    report = detect_seed_subgraphs(model, data, data.test_mask, fanouts=(3, 4), blocks=False, max_seeds=5,
                                   progress=False, fit=False)  # the union form
    # the same subgraphs (same generator draws), one graph per batch through the molecule detector
    graph = Graph(data.edge_index, data.num_nodes, validate=False)
    graphs = [subgraph(data, s.view(1), sample_edges(graph, s.view(1), (3, 4), seed_generator(0, int(s))))
              for s in seeds]
    expected = detect(model, graphs, batch_size=1, progress=False, fit=False)
    for ours, theirs in zip(report.layers, expected.layers):
        assert ours.batch_max_ratio_edge == theirs.batch_max_ratio_edge
        assert torch.equal(ours.stats.hist_ratio.counts, theirs.stats.hist_ratio.counts)


def test_full_graph_detection_reduces_per_destination_node(small_graph):
    data, info = small_graph
    model = _model("graphit", info)
    full = detect_full_graph(model, data, fit=False)
    from magnn.stats import collect

    with torch.no_grad(), collect(model, keep_edge_ratio=True) as stats:
        model(data)
    dst = data.edge_index[1]
    for name, layer_stats in stats.items():
        ratio = layer_stats.edge_ratio
        per_node = full.node_max_ratio[name]
        for node in (0, 7, 42, 120):
            incoming = ratio[dst == node]
            if incoming.numel():
                assert per_node[node].item() == pytest.approx(incoming.max().item())
            else:
                assert torch.isnan(per_node[node])
        assert full.report.layers[0].stats.rows == data.edge_index.shape[1]
        assert float(torch.nan_to_num(per_node, nan=0).max()) == pytest.approx(layer_stats.max_ratio("edge"))
    summary = full.node_summary(data.test_mask)
    assert summary[next(iter(summary))]["nodes"] <= int(data.test_mask.sum())


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_paper_architecture_shares_one_edge_linear_and_species_only_input(small_graph, name):
    data, info = small_graph
    model = _model(name, info)
    assert model.node_encoder.features is None  # species embedding only
    assert isinstance(model.edge_encoder.features, torch.nn.Linear) and model.edge_encoder.features.in_features == 8
    assert not any(getattr(layer, "edge_encoder", None) is not None for layer in model.layers)
    if name == "gt":
        assert all(layer.edge is None for layer in model.layers)
    # changing x (the mean edge features) changes nothing: the paper's node input ignores it
    other = data.clone()
    other.x = torch.randn_like(data.x)
    with torch.no_grad():
        assert torch.equal(model(data), model(other))
    magnn_variant = _model(name, info, **proteins_architecture(name, "magnn"))
    assert magnn_variant.node_encoder.features is not None


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_fused_edge_projection_matches_values_and_gradients(small_graph, name):
    data, info = small_graph
    plain = _model(name, info).train()
    fused = _model(name, info, fused_edge_projection=True).train()
    fused.load_state_dict(plain.state_dict())
    assert set(fused.state_dict()) == set(plain.state_dict())
    outputs = []
    for model in (plain, fused):
        torch.manual_seed(1)  # dropout draws
        out = model(data)
        out.square().mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    grads = dict(fused.named_parameters())
    for key, parameter in plain.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[key].grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("kwargs, option", [(dict(dataset="zinc", sampled=True), "--sampled"),
                                            (dict(dataset="zinc", max_seeds=3), "--max-seeds"),
                                            (dict(dataset="ogbn-proteins", fanouts=(5, 0)), "--fanouts"),
                                            (dict(dataset="ogbn-proteins", architecture="mine"), "--architecture")])
def test_study_refuses_node_options_it_cannot_use(tmp_path, kwargs, option):
    from magnn.core.errors import UserError

    with pytest.raises(UserError, match=option):
        StudyConfig.from_options(out=str(tmp_path / "out"), **kwargs).validate()


def test_detect_on_one_graph_split_uses_its_mask_as_seeds(small_graph):
    import copy

    data, info = small_graph
    view = copy.copy(data)
    view.mask = data.val_mask  # as load_dataset's split views carry it
    model = _model("gt", info)
    ours = detect(model, view, max_batches=3, progress=False, fit=False)
    expected = detect_seed_subgraphs(model, data, data.val_mask, max_seeds=3, progress=False, fit=False)
    assert [l.batch_max_ratio_edge for l in ours.layers] == [l.batch_max_ratio_edge for l in expected.layers]
