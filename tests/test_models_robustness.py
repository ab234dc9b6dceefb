"""The three models on awkward inputs and arguments: graphs without edges (synthetic and real
TOX21 molecules), one-row batches under BatchNorm, constructor checks, and nested `collect`
blocks on whole models matching separate runs."""
from __future__ import annotations

import contextlib
import json
import math

import pandas as pd
import pytest
import torch
from torch_geometric.loader import DataLoader

import magnn.models as models
from edge_cases import (CONFIGS, EBTS, MODEL_NAMES, TOX21, batches, bce_loss, build, stats_equal,
                        train_step_and_detect)
from magnn.stats import collect

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_train_and_detect_on_graphs_without_edges(name, ebt, config):
    torch.manual_seed(1)
    model, transform = build(name, ebt, config)
    for key, batch in batches(transform).items():
        stats = train_step_and_detect(model, batch)
        for layer_stats in stats.values():
            if key != "mixed" and not (name == "graphit" and model.pe == "rw"):
                # real rows only (SAN's fake edges of the 2-atom graph aside)
                assert sum(n for t, n in layer_stats.type_edges.items() if t >= 0) == 0
            assert layer_stats.nan_count == 0


def test_one_row_batch_norm_uses_running_statistics():
    torch.manual_seed(2)
    model, transform = build("gt", None, "paper")  # BatchNorm on node and edge streams
    batch = batches(transform)["one_atom"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    model.train()
    bce_loss(model(batch), batch).backward()
    for m, (mean, var) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)  # untouched, not NaN


@pytest.fixture(scope="module")
def tox21_without_bonds(tmp_path_factory):
    """A few real TOX21 rows, edge-less molecules among them, through magnn's TOX21 featuriser."""
    from magnn.data.tox21 import TOX21 as TOX21Dataset, TOX21_TASKS

    folder = tmp_path_factory.mktemp("tox21_no_bonds")
    smiles = ["[I-].[K+]", "[Hg+2]", "CCO", "[Ca+2].[Cl-].[Cl-]", "c1ccccc1O", "[Br-].[Na+]"]
    frame = pd.DataFrame({task: [1.0, 0.0, 1.0, 0.0, 1.0, 0.0] for task in TOX21_TASKS})
    frame["mol_id"] = [f"TOX{i}" for i in range(len(smiles))]
    frame["smiles"] = smiles
    csv = folder / "tox21.csv"
    frame.to_csv(csv, index=False)
    dataset = TOX21Dataset(root=folder / "cache", csv_path=csv)
    graphs = [dataset[i] for i in range(len(dataset))]
    assert [g.smiles for g in graphs] == smiles
    assert graphs[0].edge_index.shape == (2, 0) and graphs[0].edge_attr.shape == (0, 3)
    return graphs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_real_tox21_molecules_without_bonds_train_and_detect(name, tox21_without_bonds):
    """What `magnn train --batch-size 1` and `magnn detect --split train` do on TOX21."""
    from magnn.analysis.detect import detect

    torch.manual_seed(3)
    for config, ebt in (("paper", "edge"), ("default", "slot")):
        model, transform = build(name, ebt, config)
        graphs = [transform(g) if transform is not None else g for g in tox21_without_bonds]
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for batch in DataLoader(graphs, batch_size=1):
            optimiser.zero_grad()
            loss = bce_loss(model(batch), batch)
            loss.backward()
            optimiser.step()
            assert math.isfinite(loss.item())
        report = detect(model, graphs, batch_size=1, fit=False, progress=False)
        assert len(report.layers) == model.num_layers
        for layer in report.layers:
            assert len(layer.batch_max_ratio_edge) == len(graphs)
            json.dumps(layer.stats.to_dict(), allow_nan=False)

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_constructors_reject_bad_arguments(name):
    base = dict(num_layers=1, hidden=16, heads=4, pe=None)
    for kwargs, message in (
        (dict(heads=0), "heads must be a positive integer"),
        (dict(hidden=16, heads=3), r"hidden \(16\) must be a positive multiple of heads \(3\)"),
        (dict(clamp=0), r"clamp must be .*positive number, got 0"),
        (dict(clamp=-1.0), r"clamp must be .*positive number"),
        (dict(backend="gpu"), r"unknown backend 'gpu'; choose one of 'auto', 'torch'"),
        (dict(num_layers=0), "num_layers must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            models.build_model(name, TOX21, **{**base, **kwargs})
    if name == "graphit":
        with pytest.raises(ValueError, match=r"clamp must be 'auto', None \(no clamp\) or a positive number"):
            models.build_model(name, TOX21, **base, clamp="none")
    if name == "san":
        with pytest.raises(ValueError, match=r"lpe_heads must be a positive integer \(>= 1\), got 0"):
            models.build_model(name, TOX21, **base, lpe_heads=0)

@pytest.mark.parametrize("name, ebt, extra", [
    ("gt", None, {}),
    ("graphit", "edge", {}),  # kernel support pairs: edge types extended for every collector
    ("san", "slot", {}),  # fake edges with the slot: two calls and a merged node tap
    ("san", None, {"checkpoint": True}),  # recomputation in backward adds nothing
])
def test_nested_collect_on_models_matches_separate_runs(name, ebt, extra):
    torch.manual_seed(7)
    model, transform = build(name, ebt, "default", **extra)
    batch = batches(transform)["mixed"]
    settings = [dict(edge_types=batch.edge_type, threshold=1.5),
                dict(edge_types=batch.edge_type, mantissa_bits=3, keep_edge_ratio=True, threshold=1.2),
                dict(tap="node", mantissa_bits=4)]
    model.train(bool(extra.get("checkpoint")))
    model.dropout = 0.0

    def forward():
        torch.manual_seed(8)  # the same LPE sign flips in every pass
        out = model(batch)
        if torch.is_grad_enabled():
            bce_loss(out, batch).backward()

    with contextlib.ExitStack() as stack:
        nested = [stack.enter_context(collect(model, **s)) for s in settings]
        forward()
        forward()
    for collected, setting in zip(nested, settings):
        with collect(model, **setting) as alone:
            forward()
            forward()
        # SAN's union makes two edge_attention calls (real, fake edges); its node tap is one merged output
        per_forward = 2 if name == "san" and setting.get("tap", "edge") == "edge" else 1
        for layer_name in alone:
            assert collected[layer_name].calls == 2 * per_forward
            stats_equal(collected[layer_name], alone[layer_name])
