"""magnn.detect.run: detection on a user's own (PyG) model, base vs trained, as `magnn detect` reports it."""
import json

import pytest
import torch

pyg_nn = pytest.importorskip("torch_geometric.nn")

import magnn.detect  # noqa: E402
from magnn.core.errors import UserError  # noqa: E402
from edge_cases import all_nan_stats, filled  # noqa: E402
from magnn.stats import collect  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = pyg_nn.TransformerConv(8, 4, heads=2, edge_dim=3)
        self.conv2 = pyg_nn.GINEConv(torch.nn.Linear(8, 8), edge_dim=3)

    def forward(self, x, edge_index, edge_attr):
        return self.conv2(torch.relu(self.conv1(x, edge_index, edge_attr)), edge_index, edge_attr)


def _graphs(count=5):
    from torch_geometric.data import Data

    g = torch.Generator().manual_seed(1)
    return [Data(x=torch.randn(12, 8, generator=g), edge_index=torch.randint(0, 12, (2, 40), generator=g),
                 edge_attr=torch.randn(40, 3, generator=g), edge_type=torch.randint(0, 3, (40,), generator=g))
            for _ in range(count)]


def forward(model, batch):
    return model(batch.x, batch.edge_index, batch.edge_attr)


def test_run_reports_base_and_trained_like_magnn_detect(tmp_path):
    torch.manual_seed(0)
    model, graphs = Net(), _graphs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = magnn.detect.run(model, graphs, base="reset", forward=forward, out=tmp_path / "out",
                              edge_type_attr="edge_type")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # "reset" works on a copy
    report = json.loads((tmp_path / "out" / "detect.json").read_text())
    assert set(report["detection"]) == {"base", "trained"}
    trained = report["detection"]["trained"]["layers"]
    assert [layer["name"] for layer in trained] == ["conv1", "conv2"]
    # the keys of magnn detect's detect.json layers
    from magnn.analysis.detect import LayerReport

    assert set(trained[0]) == set(LayerReport("x").to_dict())
    # numbers: each graph is a batch; max over batches of each batch's own largest r_e
    per_batch = {"conv1": [], "conv2": []}
    for graph in graphs:
        with torch.no_grad(), collect(model) as stats:
            forward(model, graph)
        for name in per_batch:
            per_batch[name].append(stats[name].max_ratio("edge"))
    for layer in trained:
        assert layer["batches"] == len(graphs)
        assert layer["max_ratio_edge"] == pytest.approx(max(per_batch[layer["name"]]), rel=1e-6)
        assert layer["stats"]["rows"] == 40 * len(graphs)
        assert sum(entry["edges"] for entry in layer["edge_types"].values()) == 40 * len(graphs)
        assert layer["gamma"] is not None and 0 <= layer["gamma"]["ks"] <= 1
    base = report["detection"]["base"]["layers"]
    assert base[0]["max_ratio_edge"] != trained[0]["max_ratio_edge"]  # another model: re-initialised weights
    for figure in ("sorted_max_ratios.png", "neg_log10_ratio_hist_base.png", "neg_log10_ratio_hist_trained.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000
    assert len(result.summary()) == 4


def test_run_takes_a_loader_a_base_model_and_says_what_is_wrong():
    from torch_geometric.loader import DataLoader

    model, base, graphs = Net(), Net(), _graphs(4)
    result = magnn.detect.run(model, DataLoader(graphs, batch_size=2), base=base, forward=forward, max_batches=1,
                              fit=False)
    layer = result.reports["trained"].layers[0]
    assert layer.batch_max_ratio_edge and len(layer.batch_max_ratio_edge) == 1 and layer.stats.rows == 80
    assert result.out is None and result.reports["base"].layers[0].gamma is None
    with pytest.raises(UserError, match="base must be"):
        magnn.detect.run(model, graphs, base="xavier", forward=forward)
    with pytest.raises(UserError, match="no graphs"):
        magnn.detect.run(model, [], forward=forward)
    with pytest.raises(UserError, match="no 'kind' attribute"):
        magnn.detect.run(model, graphs, forward=forward, edge_type_attr="kind")


def test_report_json_and_cells_say_a_layer_was_all_nan(tmp_path):
    from magnn.analysis.detect import DetectionReport, LayerReport
    from magnn.analysis.figures import plot_layer_histograms, plot_sorted_ratios
    from magnn.study.report import layer_cell, report_json

    nan_layer = LayerReport("layers.0.attention", [float("nan")], [float("nan")], all_nan_stats())
    fine_stats = filled(torch.randn(6, 4))
    fine_layer = LayerReport("layers.1.attention", [fine_stats.max_ratio()], [fine_stats.max_ratio("layer")],
                             fine_stats)
    detection = DetectionReport([nan_layer, fine_layer])
    report = {"threshold": float("inf"), "detection": {"trained no_ebt": detection.to_dict()}, "path": tmp_path}
    text = report_json(report)
    loaded = json.loads(text)
    assert loaded["threshold"] is None and loaded["path"] == str(tmp_path)
    layers = loaded["detection"]["trained no_ebt"]["layers"]
    assert layers[0]["max_ratio_edge"] is None and layers[0]["stats"]["all_nan"] is True
    assert layer_cell(layers[0]) == "all NaN (20 values)"
    assert layer_cell(detection.to_dict()["layers"][0]) == "all NaN (20 values)"
    assert layer_cell(layers[1]) == f"{fine_stats.max_ratio():.4g}"
    plot_sorted_ratios({"trained no_ebt": detection}, tmp_path / "sorted.png")
    plot_layer_histograms(detection, tmp_path / "hist.png")
