"""magnn.analysis's mechanics: the MA intervention (zero vs mean), int8 quantisation sensitivity, MA onset."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from magnn import models
from magnn.analysis import intervention, onset, quantise
from magnn.core.errors import UserError
from magnn.data import DatasetInfo

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]

ZINC = DatasetInfo("zinc", "graph_regression", 1, "zinc_atom", "zinc_bond")
SMALL = dict(num_layers=2, hidden=16, heads=4, pe=None, backend="torch")
CHANNEL = 5  # the planted bias channel (head 1, channel 1 of D = 4)


def _graphs(count: int = 12, seed: int = 0) -> list[Data]:
    generator = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(3, 8, (1,), generator=generator))
        ring = torch.arange(n)
        src, dst = torch.cat([ring, (ring + 1) % n]), torch.cat([(ring + 1) % n, ring])
        edge_index = torch.stack([src, dst])
        data = Data(x=torch.randint(0, 28, (n, 1), generator=generator), edge_index=edge_index,
                    edge_attr=torch.randint(1, 4, (edge_index.shape[1], 1), generator=generator), num_nodes=n)
        data.edge_type = data.edge_attr.reshape(-1) - 1
        data.y = torch.zeros(1, 1)
        graphs.append(data)
    return graphs


def _with_bias(linear: nn.Linear, value: float) -> nn.Linear:
    """A copy of `linear` with a bias; channel CHANNEL's output is the constant `value`."""
    planted = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        planted.weight.copy_(linear.weight)
        planted.weight[CHANNEL] = 0.0
        planted.bias.zero_()
        planted.bias[CHANNEL] = value
    return planted


def planted_model(strength: float = 100.0):
    """A small GraphTransformer whose first layer's score w_ij has a constant channel of
    10 * 10 * strength / sqrt(D) on every edge: a massive activation that is a pure bias."""
    torch.manual_seed(0)
    model = models.build_model("gt", ZINC, **SMALL).eval()
    layer = model.layers[0].attention
    layer.lin_q, layer.lin_k = _with_bias(layer.lin_q, 10.0), _with_bias(layer.lin_k, 10.0)
    layer.lin_e = _with_bias(layer.lin_e, strength)
    return model


def _own_targets(model, graphs):
    """The graphs with y = the clean model's own prediction: a loss of 0 unedited."""
    with torch.no_grad():
        out = model(Batch.from_data_list(graphs))
    for index, data in enumerate(graphs):
        data.y = out[index:index + 1].clone()
    return graphs


def mse(out, y):
    return ((out - y) ** 2).mean()


def test_planted_bias_channel_zeroing_hurts_and_mean_does_not():
    model = planted_model()
    graphs = _own_targets(model, _graphs())
    result = intervention.run(model, graphs, mse, threshold=1000.0, batch_size=5, progress=False)
    first, second = result.layers
    assert first["name"] == "layers.0.attention"
    assert first["channels"] == {CHANNEL: first["edges"]}  # every edge, the planted channel only
    assert first["ma_edges"] == first["edges"] > 0
    assert first["max_ratio"] > 1000.0 > second["max_ratio"] > 0
    assert result.loss_clean == pytest.approx(0.0, abs=1e-12)
    spread = float(torch.cat([g.y for g in graphs]).var())  # the predictions' own variance
    assert first["delta_zero"] > 0.01 * spread  # zeroing the bias moves the predictions
    assert abs(first["delta_mean"]) < 1e-6 * first["delta_zero"]  # its mean keeps them
    assert second["ma_entries"] == 0 and second["delta_zero"] == 0.0 and second["delta_mean"] == 0.0
    assert result.all_layers["delta_zero"] > 0.01 * spread
    # the entries each edit changed: the planted channel of every edge, in the first layer only
    assert first["edited_zero"] == first["edited_mean"] == first["ma_entries"] == first["edges"]
    assert second["edited_zero"] == second["edited_mean"] == 0
    assert result.all_layers["edited_zero"] == result.all_layers["edited_mean"] == first["edges"]
    assert not model.layers[0].attention._forward_hooks  # hooks removed


def test_zero_edit_equals_removing_the_channel_from_the_score():
    """The hook's edit (logit shift through the bias, edge_out replaced) is the model whose planted
    channel of w_ij is 0: the same model with e's channel constant 0 instead of 100."""
    model, reference = planted_model(), planted_model()
    with torch.no_grad():
        reference.layers[0].attention.lin_e.bias[CHANNEL] = 0.0
    batch = Batch.from_data_list(_graphs())
    layers = {"layers.0.attention": model.layers[0].attention}
    with intervention._hooks(layers, lambda name: intervention._Edit(1000.0, None)) as hooks, torch.no_grad():
        edited = model(batch)
    assert hooks["layers.0.attention"].edited == batch.edge_index.shape[1]
    with torch.no_grad():
        expected = reference(batch)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


def test_no_massive_entries_changes_nothing():
    torch.manual_seed(1)
    model = models.build_model("gt", ZINC, **SMALL).eval()
    graphs = _own_targets(model, _graphs())
    result = intervention.run(model, graphs, mse, threshold=1e30, progress=False)
    assert all(row["ma_entries"] == 0 and row["delta_zero"] == 0.0 for row in result.layers)
    assert all(row["edited_zero"] == row["edited_mean"] == 0 for row in result.layers)
    assert result.all_layers["edited_zero"] == result.all_layers["edited_mean"] == 0


@pytest.mark.parametrize("name", ["graphit", "san"])
def test_every_magnn_model_is_editable(name):
    torch.manual_seed(2)
    model = models.build_model(name, ZINC, **SMALL).eval()
    transform = models.transforms_for(name, ZINC, **SMALL)
    graphs = [transform(g) if transform is not None else g for g in _graphs(6)]
    graphs = _own_targets(model, graphs)
    result = intervention.run(model, graphs, mse, threshold=2.0, progress=False)  # a low threshold: entries to edit
    assert len(result.layers) == 2
    assert sum(row["ma_entries"] for row in result.layers) > 0
    assert all(math.isfinite(row["loss_zero"]) and math.isfinite(row["loss_mean"]) for row in result.layers)


def test_additive_layers_are_refused():
    from magnn.layers import FusedEdgeAttention

    model = nn.Sequential(FusedEdgeAttention(8, 2, 4, 8, mode="additive", backend="torch"))
    with pytest.raises(UserError, match="additive"):
        intervention.attention_layers(model)


# -- int8 sensitivity -------------------------------------------------------------------------

def test_fake_quantise_is_per_tensor_absmax_int8():
    x = torch.tensor([-2.0, 0.01, 1.0, 127.0])
    q = quantise.fake_quantise(x)
    assert q.tolist() == [-2.0, 0.0, 1.0, 127.0]  # scale 1: the small entry is lost to the outlier
    assert torch.equal(quantise.fake_quantise(torch.zeros(3)), torch.zeros(3))
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert (quantise.fake_quantise(values) - values).abs().max() <= values.abs().max() / 127 / 2 + 1e-7
    assert quantise.fake_quantise(values).unique().numel() <= 255


def test_quantisation_sensitivity_grows_with_an_outlier_channel():
    """A planted channel of e 1e4 times the others coarsens e's per-tensor int8 grid far beyond a typical
    entry, and the first layer's output error grows far above that of the same model without it."""
    plain = planted_model(strength=1.0)  # q, k channels of 10: moderate outliers
    strong = planted_model(strength=1e4)
    graphs = _own_targets(strong, _graphs())
    results = {label: quantise.run(model, graphs, mse, batch_size=5, progress=False)
               for label, model in (("plain", plain), ("strong", strong))}
    first = {label: result["layers"][0] for label, result in results.items()}
    assert set(first["strong"]["inputs"]) == {"q", "k", "v", "e"}
    assert first["strong"]["inputs"]["e"]["step_over_median"] > 100 * first["plain"]["inputs"]["e"]["step_over_median"]
    assert first["strong"]["output_rel_error"] > 5 * first["plain"]["output_rel_error"]
    for result in results.values():
        assert result["loss_clean"] >= 0 and all(math.isfinite(row["loss"]) for row in result["layers"])
        assert math.isfinite(result["all_layers"]["delta_loss"])
        assert all(0 <= row["output_rel_error"] < 1 for row in result["layers"])
    assert not any(module._forward_hooks for module in strong.modules())  # hooks removed



# -- onset --------------------------------------------------------------------------------------

def _metrics(ratios: list, lrs: list) -> dict:
    return {"history": [{"epoch": i, "lr": lr} for i, lr in enumerate(lrs)],
            "ma_over_epochs": {"probe": "p", "layers": ["a", "b"], "epochs": list(range(1, len(ratios) + 1)),
                               "max_ratio_edge": ratios, "median_abs": [[1.0, 1.0]] * len(ratios)}}


def test_onset_epochs_against_the_own_base_and_the_threshold():
    ratios = [[5.0, 50.0], [40.0, None], [60.0, 400.0], [2000.0, 600.0]]
    metrics = _metrics(ratios, [1e-3, 5e-4, 2.5e-4, 1e-4])
    result = onset.onset(metrics, base={"a": 5.0}, factor=10.0, threshold=1000.0)
    a, b = result["layers"]
    assert (a["base"], a["base_source"], a["onset_growth"], a["onset_threshold"]) == (5.0, "untrained model", 3, 4)
    assert (a["lr_at_onset_growth"], a["lr_at_onset_threshold"]) == (5e-4, 2.5e-4)  # set after epochs 2 and 3
    assert (b["base"], b["base_source"], b["onset_growth"], b["onset_threshold"]) == (50.0, "epoch 1", 4, None)  # 600 > 10 x 50
    assert b["peak"] == 600.0 and b["final"] == 600.0
    assert result["lr_after_epoch"] == [1e-3, 5e-4, 2.5e-4, 1e-4]
    assert onset.onset({"history": []}) is None


def test_figures_are_written(tmp_path):
    from magnn.analysis import mechanics_figures as figures

    model = planted_model()
    graphs = _own_targets(model, _graphs(4))
    result = intervention.run(model, graphs, mse, progress=False).to_dict()
    sensitivity = quantise.run(model, graphs, mse, progress=False)
    metrics = _metrics([[5.0, 50.0], [60.0, 600.0]], [1e-3, 1e-3])
    paths = [figures.plot_intervention({"trained": result}, tmp_path / "i.png"),
             figures.plot_quantisation({"trained": sensitivity}, tmp_path / "q.png"),
             figures.plot_onset({"no_ebt": metrics["ma_over_epochs"]}, {"no_ebt": onset.onset(metrics)},
                                tmp_path / "o.png"),
             figures.plot_intervention({}, tmp_path / "empty.png")]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths)


# -- the study's mechanics stage --------------------------------------------------------------------

def test_study_reports_the_mechanics(tmp_path):
    import json

    from magnn.study import StudyConfig, run_study

    out = tmp_path / "study"
    config = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=2, max_graphs=8, attack_steps=0,
                                      backend="torch", overrides={"num_layers": 2, "hidden": 8, "heads": 2},
                                      out=str(out), threshold=5.0)  # a low threshold: entries to edit
    report = run_study(config)
    mechanics = report["mechanics"]
    assert mechanics["mitigation"] == {"no_ebt": "none", "ebt_edge": "edge"}
    for tag in ("no_ebt", "ebt_edge"):
        edited = mechanics["intervention"][tag]
        assert [row["name"] for row in edited["layers"]] == ["layers.0.attention", "layers.1.attention"]
        assert edited["graphs"] == mechanics["graphs"] > 0 and edited["threshold"] == 5.0
        assert sum(row["ma_entries"] for row in edited["layers"]) > 0
        assert len(mechanics["quantisation"][tag]["layers"]) == 2
        onsets = mechanics["onset"][tag]
        assert onsets["epochs"] == [1, 2] and all(row["base_source"] == "untrained model" for row in onsets["layers"])
    for name in ("intervention", "quantisation", "ma_onset"):
        assert (out / report["figures"][name]).is_file()
    text = (out / "report.md").read_text()
    assert "## Mechanics" in text and "MA intervention, no_ebt" in text and "int8 sensitivity, ebt_edge" in text
    assert json.loads((out / "report.json").read_text())["mechanics"]["graphs"] == mechanics["graphs"]


def test_the_loss_defaults_to_the_models_training_loss():
    """Without loss_fn a magnn model's own task loss is used (ZINC: L1); a model that does not say
    its task is refused with what to pass."""
    model = planted_model()
    graphs = _graphs(4)
    default = intervention.run(model, graphs, progress=False)
    l1 = intervention.run(model, graphs, lambda out, y: (out - y).abs().mean(), progress=False)
    assert default.loss_clean == pytest.approx(l1.loss_clean) and default.loss_clean > 0
    assert quantise.run(model, graphs, progress=False)["loss_clean"] == pytest.approx(l1.loss_clean)
    with pytest.raises(UserError, match="loss_fn"):
        intervention.task_loss(nn.Linear(2, 2), None)


def test_mitigation_names_follow_the_training_config():
    from types import SimpleNamespace

    from magnn.study.mechanics import mitigation_of

    assert mitigation_of(SimpleNamespace(ebt=None)) == "none"
    assert mitigation_of(SimpleNamespace(ebt="slot")) == "slot"
    assert mitigation_of(SimpleNamespace(ebt=None, mitigation="gate")) == "gate"  # a config that names it


def test_an_edited_forward_counts_its_statistics_once():
    from magnn.stats import collect

    model, batch = planted_model(), Batch.from_data_list(_graphs(4))
    with torch.no_grad(), collect(model) as plain:
        model(batch)
    layers = {"layers.0.attention": model.layers[0].attention}
    with torch.no_grad(), intervention._hooks(layers, lambda n: intervention._Edit(1000.0, None)), \
            collect(model) as edited:
        model(batch)
    first = "layers.0.attention"
    assert edited[first].to_dict()["calls"] == plain[first].to_dict()["calls"] == 1
    assert edited[first].to_dict()["count"] == plain[first].to_dict()["count"]
    assert edited[first].max_ratio("edge") == plain[first].max_ratio("edge")  # the unedited call's


def test_markdown_tables_and_notes():
    from magnn.study.mechanics import mechanics_markdown

    row = {"name": "l0", "max_ratio": 9.0, "ma_entries": 3, "ma_edges": 2, "edges": 5, "delta_zero": 0.1,
           "delta_mean": 0.0, "unreached_entries": 4}
    mechanics = {"intervention": {"no_ebt": {"threshold": 5.0, "loss_clean": 1.0, "graphs": 3, "layers": [row],
                                             "all_layers": {"delta_zero": 0.1, "delta_mean": 0.0}}},
                 "onset": {"no_ebt": None}, "quantisation": {}, "not_run_models": {"ebt_edge": "additive layers"}}
    text = "\n".join(mechanics_markdown(mechanics))
    assert "| l0 | 9 | 3 | 2 / 5 | 0.1 | 0 |" in text
    assert "4 massive entries on SAN's fake edges were not edited" in text
    assert "Not analysed, ebt_edge: additive layers" in text
    assert mechanics_markdown(None) == []
