"""Robustness of layers, models and statistics: graphs without edges, constructor checks,
nested collectors, comparable merges, all-or-nothing adds, valid JSON for all-NaN layers."""
from __future__ import annotations

import contextlib
import copy
import json
import math

import pandas as pd
import pytest
import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

import magnn.models as models
from helpers import random_graph, random_inputs
from magnn.data import DatasetInfo
from magnn.functional import BACKENDS, edge_attention
from magnn.core.graph import Graph
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats, RawStats, add_to_all, coarsen_counts, collect, reduce_rows

pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]

TOX21 = DatasetInfo("ogbg-moltox21", "graph_multilabel", 12, "ogb_atom", "ogb_bond")
MODEL_NAMES = ("gt", "graphit", "san")
EBTS = (None, "edge", "slot")
MODES = ("gt", "additive")
SMALL = dict(num_layers=2, hidden=16, heads=4, backend="torch")
# the class defaults (each model's positional encoding, SAN's fake edges) and the paper protocol
CONFIGS = {"default": dict(pe_dim=4), "paper": dict(preset="paper")}


def _molecule(num_nodes: int, bonds, generator) -> Data:
    """A TOX21-shaped graph (OGB atom and bond features, both edge directions)."""
    if bonds:
        src, dst = zip(*bonds)
        edge_index = torch.tensor([src + dst, dst + src], dtype=torch.long)
    else:
        edge_index = torch.empty(2, 0, dtype=torch.long)
    atoms = [torch.randint(0, min(d, 3), (num_nodes,), generator=generator) for d in get_atom_feature_dims()]
    edge_attr = torch.stack(
        [torch.randint(0, min(d, 3), (edge_index.shape[1],), generator=generator) for d in get_bond_feature_dims()], 1
    )
    data = Data(x=torch.stack(atoms, 1), edge_index=edge_index, edge_attr=edge_attr, num_nodes=num_nodes,
                y=torch.randint(0, 2, (1, 12), generator=generator).float())
    data.edge_type = edge_attr[:, 0].clone()
    return data


def _batches(transform, seed: int = 0) -> dict[str, Batch]:
    generator = torch.Generator().manual_seed(seed)
    salt = _molecule(2, [], generator)  # like [I-].[K+]
    ion = _molecule(1, [], generator)  # like [Hg+2]
    chain = _molecule(4, [(0, 1), (1, 2), (2, 3)], generator)
    graphs = {"no_edges": [salt], "one_atom": [ion], "mixed": [salt, chain, ion, _molecule(3, [], generator)]}
    if transform is not None:
        graphs = {key: [transform(g) for g in value] for key, value in graphs.items()}
    return {key: Batch.from_data_list(value) for key, value in graphs.items()}


def _loss(out: torch.Tensor, batch) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(out, batch.y)


def _build(name: str, ebt, config: str, **extra):
    kwargs = {**SMALL, **CONFIGS[config], **extra}
    transform = models.transforms_for(name, TOX21, **kwargs)
    return models.build_model(name, TOX21, ebt=ebt, **kwargs), transform


def _train_step_and_detect(model, batch):
    """One training step's forward + backward, then an eval pass with statistics collected."""
    model.train()
    model.zero_grad()
    out = model(batch)
    assert out.shape == (batch.num_graphs, 12) and torch.isfinite(out).all()
    _loss(out, batch).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), collect(model, edge_types=batch.edge_type, keep_edge_ratio=True) as stats:
        out = model(batch)
    assert torch.isfinite(out).all()
    fake = model.build_fake_edges(batch, batch.num_nodes) if isinstance(model, models.SAN) else None
    calls = 2 if fake is not None and fake.num_edges else 1  # SAN's union: a real-edge and a fake-edge call
    assert len(stats) == model.num_layers and all(s.calls == calls for s in stats.values())
    return stats


def _snapshot(stats: EdgeStats) -> dict:
    state = {}
    for key, value in vars(stats).items():
        if hasattr(value, "counts"):
            value = value.counts
        state[key] = copy.deepcopy(value)
    return state


def _assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), key
        elif isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), key
        else:
            assert a == b, key


def _stats_equal(got: EdgeStats, want: EdgeStats) -> None:
    assert got.to_dict() == want.to_dict()
    for name in ("hist_abs", "hist_ratio", "hist_edge_ratio"):
        assert torch.equal(getattr(got, name).counts, getattr(want, name).counts), name
    if want.keep_edge_ratio:
        assert torch.equal(got.edge_ratio, want.edge_ratio)


# -- item 3: graphs without edges ------------------------------------------------------------

@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_layer_forward_backward_without_edges(backend, mode, ebt):
    torch.manual_seed(0)
    layer = FusedEdgeAttention(8, 2, 4, 3, mode=mode, ebt=ebt, clamp=5.0, backend=backend)
    empty = torch.empty(2, 0, dtype=torch.long)
    for edge_index, num_nodes in ((empty, 3), (empty, 1), (random_graph(5, 6, isolated=2), 5)):
        x = torch.randn(num_nodes, 8, requires_grad=True)
        edge_attr = torch.randn(edge_index.shape[1], 3, requires_grad=True)
        explicit = EdgeStats(tap="node")
        with collect(layer, keep_edge_ratio=True) as stats:
            node_out, edge_out = layer(x, edge_index, edge_attr, stats=explicit)
        assert node_out.shape == (num_nodes, 8) and edge_out.shape == (edge_index.shape[1], 8)
        assert torch.isfinite(node_out).all()
        if ebt != "slot" and edge_index.shape[1] == 0:
            assert torch.equal(node_out, torch.zeros_like(node_out))  # no incoming edge: exactly 0
        (node_out.square().sum() + edge_out.sum()).backward()
        assert torch.isfinite(x.grad).all()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())
        edge_stats = stats[""]
        assert edge_stats.calls == 1 and edge_stats.rows == edge_index.shape[1]
        assert edge_stats.edge_ratio.shape == (edge_index.shape[1],)
        assert explicit.calls == 1 and explicit.rows == num_nodes
        json.dumps(edge_stats.to_dict(), allow_nan=False)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_train_and_detect_on_graphs_without_edges(name, ebt, config):
    torch.manual_seed(1)
    model, transform = _build(name, ebt, config)
    for key, batch in _batches(transform).items():
        stats = _train_step_and_detect(model, batch)
        for layer_stats in stats.values():
            if key != "mixed" and not (name == "graphit" and model.pe == "rw"):
                # real rows only (SAN's fake edges of the 2-atom graph aside)
                assert sum(n for t, n in layer_stats.type_edges.items() if t >= 0) == 0
            assert layer_stats.nan_count == 0


def test_one_row_batch_norm_uses_running_statistics():
    torch.manual_seed(2)
    model, transform = _build("gt", None, "paper")  # BatchNorm on node and edge streams
    batch = _batches(transform)["one_atom"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    model.train()
    _loss(model(batch), batch).backward()
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
        model, transform = _build(name, ebt, config)
        graphs = [transform(g) if transform is not None else g for g in tox21_without_bonds]
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for batch in DataLoader(graphs, batch_size=1):
            optimiser.zero_grad()
            loss = _loss(model(batch), batch)
            loss.backward()
            optimiser.step()
            assert math.isfinite(loss.item())
        report = detect(model, graphs, batch_size=1, fit=False, progress=False)
        assert len(report.layers) == model.num_layers
        for layer in report.layers:
            assert len(layer.batch_max_ratio_edge) == len(graphs)
            json.dumps(layer.stats.to_dict(), allow_nan=False)


# -- item 5: constructor arguments -----------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(heads=0), r"heads must be a positive integer \(>= 1\), got 0"),
    (dict(heads=2.0), r"heads must be a positive integer"),
    (dict(head_dim=-1), r"head_dim must be a positive integer \(>= 1\), got -1"),
    (dict(in_channels=0), r"in_channels must be a positive integer"),
    (dict(edge_dim=True), r"edge_dim must be a positive integer"),
    (dict(clamp=0), r"clamp must be None \(no clamp\) or a positive number, got 0"),
    (dict(clamp=-5.0), r"clamp must be None .* positive number, got -5.0"),
    (dict(clamp=float("nan")), r"clamp must be None .* positive number, got nan"),
    (dict(clamp="5"), r"clamp must be None .* positive number, got '5'"),
    (dict(backend="cuda-magic"), r"unknown backend 'cuda-magic'; choose one of 'auto', 'torch', 'triton', 'cpu'"),
])
def test_layer_constructor_rejects_bad_arguments(kwargs, message):
    arguments = {**dict(in_channels=8, heads=2, head_dim=4, edge_dim=3), **kwargs}
    with pytest.raises(ValueError, match=message):
        FusedEdgeAttention(**arguments)


def test_every_backend_name_is_accepted_at_construction():
    for backend in ("auto", *BACKENDS):  # availability is checked when the layer runs
        assert FusedEdgeAttention(8, 2, 4, 3, backend=backend, clamp=2).backend == backend


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


# -- item 6: nested collectors -------------------------------------------------------------

SETTINGS = (
    dict(),
    dict(mantissa_bits=4, threshold=2.0, keep_edge_ratio=True),
    dict(tap="node", mantissa_bits=3, min_abs=0.5, threshold=1.5),
)


def _layer_inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    edge_index = random_graph(9, 25, generator=generator, isolated=1)
    x = torch.randn(9, 8, generator=generator)
    edge_attr = torch.randn(25, 3, generator=generator)
    return x, edge_index, edge_attr, torch.randint(0, 3, (25,), generator=generator)


def test_nested_collect_on_a_layer_records_every_call_with_its_own_settings():
    torch.manual_seed(4)
    layer = FusedEdgeAttention(8, 2, 4, 3, ebt="edge", backend="torch")
    calls = [_layer_inputs(seed) for seed in range(3)]

    def run(inputs, stats=None):
        x, edge_index, edge_attr, _ = inputs
        return layer(x, edge_index, edge_attr, stats=stats)

    with collect(layer, **SETTINGS[0]) as outer:
        run(calls[0])
        with collect(layer, **SETTINGS[1]) as middle:
            with collect(layer, **SETTINGS[2]) as inner:
                run(calls[1])
                assert len(layer.collectors) == 3 and layer.collectors[-1] is inner[""]
            run(calls[2])
        assert layer.collectors == (outer[""],)
    assert layer.collectors == ()
    for got, settings, used in ((outer, SETTINGS[0], calls), (middle, SETTINGS[1], calls[1:]),
                                (inner, SETTINGS[2], calls[1:2])):
        want = EdgeStats(**settings)
        for inputs in used:
            run(inputs, stats=want)
        assert got[""].calls == len(used)
        _stats_equal(got[""], want)


def test_collect_blocks_may_end_in_any_order():
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    x, edge_index, edge_attr, _ = _layer_inputs(5)
    first, second = collect(layer), collect(layer, mantissa_bits=2)
    a, b = first.__enter__(), second.__enter__()
    first.__exit__(None, None, None)  # the outer block ends first
    layer(x, edge_index, edge_attr)
    second.__exit__(None, None, None)
    assert a[""].calls == 0 and b[""].calls == 1 and layer.collectors == ()


def test_edge_attention_accepts_several_stats_and_reduces_each_tap_once():
    torch.manual_seed(6)
    edge_index = random_graph(10, 30, isolated=2)
    q, k, v, e, bias, params = random_inputs(10, edge_index, 2, 4, dtype=torch.float32, bias="edge", ebt="slot")
    types = torch.randint(0, 4, (30,))
    settings = [dict(edge_types=types, threshold=3.0), dict(mantissa_bits=2, keep_edge_ratio=True),
                dict(tap="node", mantissa_bits=5), dict(tap="node", threshold=1.0, keep_edge_ratio=True)]
    together = [EdgeStats(**s) for s in settings]
    kwargs = dict(ebt="slot", ebt_params=params, bias=bias, clamp=4.0, backend="torch")
    node_out, edge_out = edge_attention(q, k, v, e, edge_index, stats=together + together[:1], **kwargs)
    for stats, setting in zip(together, settings):
        alone = EdgeStats(**setting)
        edge_attention(q, k, v, e, edge_index, stats=alone, **kwargs)
        assert stats.calls == 1  # a repeated collector is filled once
        _stats_equal(stats, alone)
    # gradients are those of one plain call
    (node_out.sum() + edge_out.sum()).backward()
    assert torch.isfinite(q.grad).all()


def test_histograms_coarsen_exactly():
    values = torch.randn(500, 16) * torch.logspace(-3, 3, 500).unsqueeze(1)
    fine = reduce_rows(values, 7)
    for bits in (0, 3, 7):
        assert torch.equal(coarsen_counts(fine.hist_abs, bits), reduce_rows(values, bits).hist_abs)
        assert torch.equal(coarsen_counts(fine.hist_ratio, bits), reduce_rows(values, bits).hist_ratio)
    with pytest.raises(ValueError, match="cannot refine"):
        coarsen_counts(reduce_rows(values, 2).hist_abs, 4)


@pytest.mark.parametrize("name, ebt, extra", [
    ("gt", None, {}),
    ("graphit", "edge", {}),  # kernel support pairs: edge types extended for every collector
    ("san", "slot", {}),  # fake edges with the slot: two calls and a merged node tap
    ("san", None, {"checkpoint": True}),  # recomputation in backward adds nothing
])
def test_nested_collect_on_models_matches_separate_runs(name, ebt, extra):
    torch.manual_seed(7)
    model, transform = _build(name, ebt, "default", **extra)
    batch = _batches(transform)["mixed"]
    settings = [dict(edge_types=batch.edge_type, threshold=1.5),
                dict(edge_types=batch.edge_type, mantissa_bits=3, keep_edge_ratio=True, threshold=1.2),
                dict(tap="node", mantissa_bits=4)]
    model.train(bool(extra.get("checkpoint")))
    model.dropout = 0.0

    def forward():
        torch.manual_seed(8)  # the same LPE sign flips in every pass
        out = model(batch)
        if torch.is_grad_enabled():
            _loss(out, batch).backward()

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
            _stats_equal(collected[layer_name], alone[layer_name])


def test_explicit_stats_and_collectors_both_receive_the_call():
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    x, edge_index, edge_attr, _ = _layer_inputs(9)
    explicit = EdgeStats()
    with collect(layer) as collected:
        layer(x, edge_index, edge_attr, stats=explicit)
    _stats_equal(explicit, collected[""])
    with pytest.raises(AttributeError):
        layer.collectors = (EdgeStats(),)  # read-only: use collect() or attach_collector()


def test_compiled_layer_still_traces_as_one_graph():
    torch.manual_seed(10)
    layer = FusedEdgeAttention(8, 2, 4, 3, ebt="slot", clamp=5.0, backend="torch")
    x, edge_index, edge_attr, _ = _layer_inputs(11)
    graph = Graph(edge_index, num_nodes=9).prepare()  # validated eagerly, as a first eager call would
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(x, graph, edge_attr), layer(x, graph, edge_attr)):
        torch.testing.assert_close(got, want)


# -- item 7: merge only what is comparable -----------------------------------------------------

def _filled(tapped: torch.Tensor, **settings) -> EdgeStats:
    stats = EdgeStats(**settings)
    stats.add(reduce_rows(tapped, stats.mantissa_bits), heads=1)
    return stats


@pytest.mark.parametrize("setting, mine, theirs", [
    ("mantissa_bits", 7, 4),
    ("threshold", 1000.0, 10.0),
    ("min_abs", None, 100.0),
    ("tap", "edge", "node"),
])
def test_merge_rejects_stats_taken_differently(setting, mine, theirs):
    tapped = torch.randn(20, 8)
    a, b = _filled(tapped, **{setting: mine}), _filled(tapped, **{setting: theirs})
    before = _snapshot(a)
    with pytest.raises(ValueError, match=rf"{setting} differs \({mine!r} here, {theirs!r} in the other\)"):
        a.merge(b)
    _assert_same_state(before, _snapshot(a))


def test_merge_rejects_different_channels_edge_ratios_and_type_counts():
    a = _filled(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"channels differs \(8 here, 3 in the other\)"):
        a.merge(_filled(torch.randn(10, 3)))
    kept = _filled(torch.randn(10, 8), keep_edge_ratio=True)
    with pytest.raises(ValueError, match=r"keep_edge_ratio differs \(True here, False in the other\)"):
        kept.merge(_filled(torch.randn(10, 8)))
    typed = _filled(torch.randn(10, 8), edge_types=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="per-edge-type counts differ"):
        typed.merge(_filled(torch.randn(10, 8)))
    with pytest.raises(ValueError, match="threshold differs.*; min_abs differs"):
        a.merge(_filled(torch.randn(10, 8), threshold=5.0, min_abs=1.0))  # every difference is named


def test_merge_into_and_from_empty_stats():
    full = _filled(torch.randn(12, 8), keep_edge_ratio=True, threshold=2.0)
    empty = EdgeStats(keep_edge_ratio=True, threshold=2.0)
    assert empty.channels is None
    empty.merge(full)
    _stats_equal(empty, full)
    again = copy.deepcopy(full)
    again.merge(EdgeStats(keep_edge_ratio=True, threshold=2.0))
    _stats_equal(again, full)
    # zero-row calls leave channels unknown and merge with anything of the same settings
    no_rows = EdgeStats(threshold=2.0)
    no_rows.add(reduce_rows(torch.empty(0, 3)), heads=1)
    assert no_rows.channels is None and no_rows.calls == 1
    no_rows.merge(_filled(torch.randn(4, 8), threshold=2.0))
    assert no_rows.channels == 8 and no_rows.calls == 2


def test_distributed_style_merge_of_ranks_equals_one_process():
    from magnn.distributed import all_reduce_stats

    tapped = torch.randn(40, 8)
    types = torch.randint(0, 3, (40,))
    whole = _filled(tapped, edge_types=types, keep_edge_ratio=True)
    ranks = [_filled(tapped[:25], edge_types=types[:25], keep_edge_ratio=True),
             _filled(tapped[25:], edge_types=types[25:], keep_edge_ratio=True)]
    total = EdgeStats(keep_edge_ratio=True)  # as all_reduce_stats builds it
    for part in ranks:
        total.merge(part)
    merged, reference = total.to_dict(), whole.to_dict()
    assert merged.pop("calls") == 2 and reference.pop("calls") == 1
    assert merged == reference
    assert all_reduce_stats({"layer": whole})["layer"] is whole  # no process group: unchanged


# -- item 8: add is all or nothing -----------------------------------------------------------------

def test_failed_add_leaves_the_stats_exactly_as_before():
    stats = EdgeStats(keep_edge_ratio=True, edge_types=torch.zeros(6, dtype=torch.long), threshold=1.5)
    stats.add(reduce_rows(torch.randn(6, 4) * torch.arange(1, 7).unsqueeze(1) ** 3), heads=2)
    before = _snapshot(stats)
    wrong_rows = reduce_rows(torch.randn(5, 4))
    with pytest.raises(ValueError, match="edge_types has 6 entries but the call had 5 edges"):
        stats.add(wrong_rows, heads=2)
    _assert_same_state(before, _snapshot(stats))
    with pytest.raises(ValueError, match="collected 4 channels before, got 3"):
        stats.add(reduce_rows(torch.randn(6, 3)), heads=1)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        stats.add(reduce_rows(torch.randn(6, 4)), heads=3)
    coarse = reduce_rows(torch.randn(6, 4), mantissa_bits=2)
    with pytest.raises(ValueError, match="cannot refine"):
        stats.add(coarse, heads=2)
    no_row_max = RawStats(**{**vars(reduce_rows(torch.randn(6, 4))), "row_max_abs": None})
    with pytest.raises(ValueError, match="row_max_abs"):
        EdgeStats(min_abs=1.0).add(no_row_max, heads=1)
    _assert_same_state(before, _snapshot(stats))


def test_failed_call_leaves_every_collector_unchanged():
    x, edge_index, edge_attr, types = _layer_inputs(12)
    layer = FusedEdgeAttention(8, 2, 4, 3, backend="torch")
    good = EdgeStats(edge_types=types)
    bad = EdgeStats(edge_types=types[:-1])
    good_before, bad_before = _snapshot(good), _snapshot(bad)
    with pytest.raises(ValueError, match="edge_types has 24 entries"):
        layer(x, edge_index, edge_attr, stats=[good, bad])
    _assert_same_state(good_before, _snapshot(good))
    _assert_same_state(bad_before, _snapshot(bad))
    with pytest.raises(ValueError, match="edge_types has 24 entries"):
        add_to_all([good, bad], reduce_rows(torch.randn(25, 8)), heads=2)
    _assert_same_state(good_before, _snapshot(good))
    # a node-tap collector that fails after the extra pass: the edge-tap one is left alone too
    node_three_channels = _filled(torch.randn(4, 3), tap="node")
    node_before = _snapshot(node_three_channels)
    with pytest.raises(ValueError, match="collected 3 channels before, got 8"):
        layer(x, edge_index, edge_attr, stats=[good, node_three_channels])
    _assert_same_state(good_before, _snapshot(good))
    _assert_same_state(node_before, _snapshot(node_three_channels))


# -- item 9: valid JSON, all-NaN layers said so ----------------------------------------------------

def _all_nan_stats() -> EdgeStats:
    return _filled(torch.full((5, 4), float("nan")), keep_edge_ratio=True)


def test_to_dict_is_valid_json_for_all_nan_empty_and_infinite_layers():
    all_nan = _all_nan_stats()
    infinite = _filled(torch.tensor([[float("inf"), 1.0, 2.0], [1.0, 1.0, 1.0]]))
    for stats in (all_nan, EdgeStats(), infinite):
        d = stats.to_dict()
        assert json.loads(json.dumps(d, allow_nan=False)) == d
    d = all_nan.to_dict()
    assert d["all_nan"] is True and d["nan_count"] == d["count"] == 20
    assert d["max_abs"] is None and d["max_ratio_edge"] is None and d["median_abs"]["estimate"] is None
    assert EdgeStats().to_dict()["all_nan"] is False
    assert infinite.to_dict()["max_abs"] is None  # inf has no JSON form either


def test_report_json_and_cells_say_a_layer_was_all_nan(tmp_path):
    from magnn.analysis.detect import DetectionReport, LayerReport
    from magnn.analysis.figures import plot_layer_histograms, plot_sorted_ratios
    from magnn.study.report import layer_cell, report_json

    nan_layer = LayerReport("layers.0.attention", [float("nan")], [float("nan")], _all_nan_stats())
    fine_stats = _filled(torch.randn(6, 4))
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
