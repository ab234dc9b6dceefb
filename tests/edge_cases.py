"""Small inputs the layer, model and statistics tests share: TOX21-shaped molecules with and
without bonds, small builds of the three models, one training step with detection, and
EdgeStats built from a tensor, snapshotted and compared."""
from __future__ import annotations

import copy
import math

import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch_geometric.data import Batch, Data

import magnn.models as models
from helpers import random_graph
from magnn.data import DatasetInfo
from magnn.stats import EdgeStats, collect, reduce_rows

TOX21 = DatasetInfo("ogbg-moltox21", "graph_multilabel", 12, "ogb_atom", "ogb_bond")
MODEL_NAMES = ("gt", "graphit", "san")
EBTS = (None, "edge", "slot")
MODES = ("gt", "additive")
SMALL = dict(num_layers=2, hidden=16, heads=4, backend="torch")
# the class defaults (each model's positional encoding, SAN's fake edges) and the paper protocol
CONFIGS = {"default": dict(pe_dim=4), "paper": dict(preset="paper")}


def molecule(num_nodes: int, bonds, generator) -> Data:
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


def batches(transform, seed: int = 0) -> dict[str, Batch]:
    generator = torch.Generator().manual_seed(seed)
    salt = molecule(2, [], generator)  # like [I-].[K+]
    ion = molecule(1, [], generator)  # like [Hg+2]
    chain = molecule(4, [(0, 1), (1, 2), (2, 3)], generator)
    graphs = {"no_edges": [salt], "one_atom": [ion], "mixed": [salt, chain, ion, molecule(3, [], generator)]}
    if transform is not None:
        graphs = {key: [transform(g) for g in value] for key, value in graphs.items()}
    return {key: Batch.from_data_list(value) for key, value in graphs.items()}


def bce_loss(out: torch.Tensor, batch) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(out, batch.y)


def build(name: str, ebt, config: str, **extra):
    kwargs = {**SMALL, **CONFIGS[config], **extra}
    transform = models.transforms_for(name, TOX21, **kwargs)
    return models.build_model(name, TOX21, ebt=ebt, **kwargs), transform


def train_step_and_detect(model, batch):
    """One training step's forward + backward, then an eval pass with statistics collected."""
    model.train()
    model.zero_grad()
    out = model(batch)
    assert out.shape == (batch.num_graphs, 12) and torch.isfinite(out).all()
    bce_loss(out, batch).backward()
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

def snapshot(stats: EdgeStats) -> dict:
    state = {}
    for key, value in vars(stats).items():
        if hasattr(value, "counts"):
            value = value.counts
        state[key] = copy.deepcopy(value)
    return state


def assert_same_state(before: dict, after: dict) -> None:
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


def stats_equal(got: EdgeStats, want: EdgeStats) -> None:
    assert got.to_dict() == want.to_dict()
    for name in ("hist_abs", "hist_ratio", "hist_edge_ratio"):
        assert torch.equal(getattr(got, name).counts, getattr(want, name).counts), name
    if want.keep_edge_ratio:
        assert torch.equal(got.edge_ratio, want.edge_ratio)

def filled(tapped: torch.Tensor, **settings) -> EdgeStats:
    stats = EdgeStats(**settings)
    stats.add(reduce_rows(tapped, stats.mantissa_bits), heads=1)
    return stats


def all_nan_stats() -> EdgeStats:
    return filled(torch.full((5, 4), float("nan")), keep_edge_ratio=True)

SETTINGS = (
    dict(),
    dict(mantissa_bits=4, threshold=2.0, keep_edge_ratio=True),
    dict(tap="node", mantissa_bits=3, min_abs=0.5, threshold=1.5),
)


def layer_inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    edge_index = random_graph(9, 25, generator=generator, isolated=1)
    x = torch.randn(9, 8, generator=generator)
    edge_attr = torch.randn(25, 3, generator=generator)
    return x, edge_index, edge_attr, torch.randint(0, 3, (25,), generator=generator)
