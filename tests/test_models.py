"""magnn.models: the three graph transformers, their encodings, heads and presets."""
from __future__ import annotations

import copy
import math
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch_geometric.data import Batch, Data

import magnn.models as models
from magnn.data import DatasetInfo
from magnn.core.graph import Graph
from magnn.models import positional
from magnn.models.base import NON_EDGE_TYPE
from magnn.models.san import SANAttention, full_fake_edges, sampled_fake_edges
from magnn.stats import EdgeStats, collect

# without the C++ CPU backend, backend="auto" falls back to the reference with a warning
pytestmark = [pytest.mark.filterwarnings("ignore:magnn. the cpu backend:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]


INFOS = {
    "tox21": DatasetInfo("ogbg-moltox21", "graph_multilabel", 12, "ogb_atom", "ogb_bond"),
    "zinc": DatasetInfo("zinc", "graph_regression", 1, "zinc_atom", "zinc_bond"),
    "proteins": DatasetInfo("ogbn-proteins", "node_multilabel", 5, "proteins", "proteins", num_species=3),
}
MODEL_NAMES = ("gt", "graphit", "san")
EBTS = (None, "edge", "slot")
# the reference backend keeps these tests independent of compiled backends (tested elsewhere)
SMALL = dict(num_layers=2, hidden=16, heads=4, pe_dim=4, backend="torch")


def _undirected(pairs, num_nodes):
    if not pairs:
        return torch.empty(2, 0, dtype=torch.long)
    src, dst = zip(*pairs)
    return torch.tensor([src + dst, dst + src], dtype=torch.long)


# graph shapes: a path with an isolated node, a single node, a cycle with a chord, a triangle
SHAPES = [
    (6, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    (1, []),
    (5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2)]),
    (3, [(0, 1), (1, 2), (2, 0)]),
]


def _features(kind: str, num_nodes: int, num_edges: int, generator) -> dict:
    if kind == "tox21":
        atom_dims, bond_dims = get_atom_feature_dims(), get_bond_feature_dims()
        x = torch.stack([torch.randint(0, min(d, 3), (num_nodes,), generator=generator) for d in atom_dims], 1)
        edge_attr = torch.stack([torch.randint(0, min(d, 3), (num_edges,), generator=generator) for d in bond_dims], 1)
        return dict(x=x, edge_attr=edge_attr)
    if kind == "zinc":
        return dict(
            x=torch.randint(0, 28, (num_nodes, 1), generator=generator),
            edge_attr=torch.randint(1, 4, (num_edges, 1), generator=generator),
        )
    return dict(
        x=torch.rand(num_nodes, 8, generator=generator),
        species=torch.randint(0, 3, (num_nodes,), generator=generator),
        edge_attr=torch.rand(num_edges, 8, generator=generator),
    )


def make_graphs(kind: str, seed: int = 0) -> list[Data]:
    generator = torch.Generator().manual_seed(seed)
    graphs = []
    for num_nodes, pairs in SHAPES:
        edge_index = _undirected(pairs, num_nodes)
        data = Data(edge_index=edge_index, num_nodes=num_nodes, **_features(kind, num_nodes, edge_index.shape[1], generator))
        data.edge_type = torch.zeros(edge_index.shape[1], dtype=torch.long)
        task = INFOS[kind]
        if task.task == "graph_regression":
            data.y = torch.randn(1, generator=generator)
        elif task.task == "graph_multilabel":
            y = torch.randint(0, 2, (1, task.num_tasks), generator=generator).float()
            y[0, 0] = float("nan")  # a missing label
            data.y = y
        else:
            data.y = torch.randint(0, 2, (num_nodes, task.num_tasks), generator=generator).float()
        graphs.append(data)
    return graphs


def make_batch(name: str, kind: str, seed: int = 0, **overrides) -> Batch:
    transform = models.transforms_for(name, INFOS[kind], **{**SMALL, **overrides})
    graphs = make_graphs(kind, seed)
    if transform is not None:
        graphs = [transform(g) for g in graphs]
    return Batch.from_data_list(graphs)


def task_loss(out: torch.Tensor, batch: Batch, info: DatasetInfo) -> torch.Tensor:
    if info.task == "graph_regression":
        return (out.view(-1) - batch.y.view(-1)).abs().mean()
    target = batch.y
    labelled = ~torch.isnan(target)
    return torch.nn.functional.binary_cross_entropy_with_logits(out[labelled], target[labelled])


def num_graphs_or_nodes(batch: Batch, info: DatasetInfo) -> int:
    return batch.num_nodes if info.task == "node_multilabel" else batch.num_graphs


# -- every model x ebt x input kind ---------------------------------------------------
@pytest.mark.parametrize("kind", list(INFOS))
@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_stats(name, ebt, kind):
    torch.manual_seed(0)
    info = INFOS[kind]
    batch = make_batch(name, kind)
    model = models.build_model(name, info, ebt=ebt, **SMALL)
    model.train()
    out = model(batch)
    assert out.shape == (num_graphs_or_nodes(batch, info), info.num_tasks)
    assert torch.isfinite(out).all()
    task_loss(out, batch, info).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if ebt is not None:  # the bias parameters take part in the computation
        attention = model.layers[0].attention
        assert attention.ebt_k.grad is not None and attention.ebt_k.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad(), collect(model) as stats:
        model(batch)
    assert len(stats) == model.num_layers
    for layer_stats in stats.values():
        assert isinstance(layer_stats, EdgeStats)
        assert layer_stats.count > 0 and layer_stats.nan_count == 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_edge_type_counts_cover_the_attention_rows(name):
    torch.manual_seed(12)
    batch = make_batch(name, "zinc")
    batch.edge_type = batch.edge_attr.view(-1)  # bond type
    model = models.build_model(name, INFOS["zinc"], **SMALL).eval()
    with torch.no_grad(), collect(model, edge_types=batch.edge_type) as stats:
        model(batch)
    real = {int(t): int(n) for t, n in zip(*torch.unique(batch.edge_type, return_counts=True))}
    for layer_stats in stats.values():
        counts = dict(layer_stats.type_edges)
        extra = counts.pop(NON_EDGE_TYPE, 0)
        assert counts == real
        assert layer_stats.rows == batch.num_edges + extra
        assert (extra > 0) == (name != "gt")  # GraphiT's kernel pairs, SAN's fake edges


@pytest.mark.parametrize("ebt", EBTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_optimisation_decreases_loss(name, ebt):
    torch.manual_seed(1)
    info = INFOS["zinc"]
    batch = make_batch(name, "zinc")
    model = models.build_model(name, info, ebt=ebt, **SMALL)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = task_loss(model(batch), batch, info)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def test_eval_is_deterministic_and_training_flips_signs():
    torch.manual_seed(2)
    info = INFOS["zinc"]
    batch = make_batch("gt", "zinc")
    model = models.build_model("gt", info, **SMALL).eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
    assert torch.equal(model.random_signs(batch.lap_pe, batch.batch, batch.num_graphs), batch.lap_pe)
    model.train()
    torch.manual_seed(3)
    flipped = model.random_signs(batch.lap_pe, batch.batch, batch.num_graphs)
    ratio = flipped / torch.where(batch.lap_pe == 0, torch.ones_like(batch.lap_pe), batch.lap_pe)
    nonzero = batch.lap_pe != 0
    assert torch.all(ratio[nonzero].abs() == 1)
    # one sign per (graph, eigenvector): constant within each graph's column
    for g in range(batch.num_graphs):
        rows = batch.batch == g
        for c in range(batch.lap_pe.shape[1]):
            values = ratio[rows, c][nonzero[rows, c]]
            assert values.numel() == 0 or torch.all(values == values[0])


def test_missing_positional_encoding_is_a_clear_error():
    info = INFOS["zinc"]
    batch = Batch.from_data_list(make_graphs("zinc"))
    for name, field in (("gt", "lap_pe"), ("graphit", "kernel_extra_index"), ("san", "san_eigvec")):
        model = models.build_model(name, info, **SMALL)
        with pytest.raises(ValueError, match=field):
            model(batch)


def test_attack_noise_enters_the_embeddings():
    torch.manual_seed(4)
    info = INFOS["tox21"]
    batch = make_batch("gt", "tox21")
    model = models.build_model("gt", info, **SMALL).eval()
    noise = torch.zeros(batch.num_nodes, SMALL["hidden"], requires_grad=True)
    out = model(batch, node_noise=noise)
    out.sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(model(batch, node_noise=torch.randn(batch.num_nodes, SMALL["hidden"])), out)
    with pytest.raises(ValueError, match="node_noise"):
        model(batch, node_noise=torch.zeros(3, 3))


def test_activation_checkpointing_matches_plain_gradients():
    torch.manual_seed(5)
    info = INFOS["zinc"]
    batch = make_batch("san", "zinc")
    model = models.build_model("san", info, **SMALL, norm="layer")
    layer_calls, first_forward = [], model.layers[0].forward

    def counted_forward(*args, **kwargs):
        layer_calls.append(1)
        return first_forward(*args, **kwargs)

    model.layers[0].forward = counted_forward
    grads, counts, calls = [], [], []
    for use_checkpoint in (False, True):
        model.checkpoint = use_checkpoint
        model.zero_grad()
        layer_calls.clear()
        torch.manual_seed(6)  # the LPE sign flip draws random numbers
        with collect(model, edge_types=batch.edge_type) as stats:
            task_loss(model(batch), batch, info).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        counts.append([(s.calls, s.count) for s in stats.values()])
        calls.append(len(layer_calls))
    assert calls == [1, 2]  # checkpointing recomputes the layer in backward
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)
    assert counts[0] == counts[1]  # the recomputation in backward adds no statistics


# -- SAN attention against a dense per-graph computation ---------------------------------
def _dense_san(layer: SANAttention, x, edge_index, edge_attr, fake_attr, gamma):
    """SAN's weighting written densely: exp(clip(l))/(1+gamma) real, gamma*exp(clip(l))/(1+gamma) fake."""
    n, heads, dim = x.shape[0], layer.heads, layer.head_dim
    shape = (n, heads, dim)
    q, k, v = layer.lin_q(x).view(shape), layer.lin_k(x).view(shape), layer.lin_v(x).view(shape)
    q2, k2 = layer.lin_q2(x).view(shape), layer.lin_k2(x).view(shape)
    e_dense = x.new_zeros(n, n, heads, dim)
    adjacency = torch.zeros(n, n, dtype=torch.bool)
    e_dense[edge_index[1], edge_index[0]] = layer.lin_e(edge_attr).view(-1, heads, dim)
    adjacency[edge_index[1], edge_index[0]] = True
    adjacency = adjacency | adjacency.T
    e2 = layer.lin_e2(fake_attr).view(heads, dim)
    scale = dim ** -0.5
    real_logit = (q[:, None] * k[None, :] * e_dense).sum(-1) * scale  # [i, j, h]
    fake_logit = (q2[:, None] * k2[None, :] * e2).sum(-1) * scale
    if layer.ebt == "edge":  # each edge set's bias uses its own query: q for real, q2 for fake edges
        beta = (q * layer.ebt_k).sum(-1) * scale  # [i, h]
        beta2 = (q2 * layer.ebt_k).sum(-1) * scale
        real_logit = real_logit + beta[:, None, :] * layer.ebt_e.sum(-1)  # adds beta_i * sum_d e'
        fake_logit = fake_logit + beta2[:, None, :] * layer.ebt_e.sum(-1)
    clamp = layer.clamp
    weight_real = torch.exp(real_logit.clamp(-clamp, clamp)) / (1 + gamma)
    weight_fake = gamma * torch.exp(fake_logit.clamp(-clamp, clamp)) / (1 + gamma)
    eye = torch.eye(n, dtype=torch.bool)
    is_real = adjacency[..., None] & torch.ones(1, 1, heads, dtype=torch.bool)
    is_fake = (~adjacency & ~eye)[..., None].expand_as(is_real)
    weights = torch.where(is_real, weight_real, torch.where(is_fake, weight_fake, torch.zeros_like(weight_real)))
    messages = v if layer.ebt is None or layer.ebt == "slot" else v + layer.ebt_v
    numerator = torch.einsum("ijh,jhd->ihd", weights, messages)
    denominator = weights.sum(1)
    if layer.ebt == "slot":
        slot = torch.exp(((q * layer.ebt_k * layer.ebt_e).sum(-1) * scale).clamp(-clamp, clamp)) / (1 + gamma)
        numerator = numerator + slot[..., None] * layer.ebt_v
        denominator = denominator + slot
    return (numerator / denominator.clamp_min(1e-300)[..., None]).reshape(n, -1)


@pytest.mark.parametrize("ebt", EBTS)
def test_san_shared_denominator_matches_dense(ebt):
    torch.manual_seed(7)
    gamma = 0.3
    # two graphs in one batch: 5 nodes (one isolated) and 4 nodes
    edge_index = torch.cat([_undirected([(0, 1), (1, 2), (2, 3)], 5), _undirected([(0, 1), (2, 3)], 4) + 5], 1)
    batch = torch.tensor([0] * 5 + [1] * 4)
    layer = SANAttention(6, 2, 3, 4, ebt=ebt, clamp=2.0, backend="torch", ebt_init="standard_normal").double()
    x = torch.randn(9, 6, dtype=torch.float64) * 2  # large enough that some logits hit the clamp
    edge_attr = torch.randn(edge_index.shape[1], 4, dtype=torch.float64)
    fake_attr = torch.randn(1, 4, dtype=torch.float64)
    fake = full_fake_edges(edge_index, batch, 9, gamma)
    node_out, edge_out = layer(x, Graph(edge_index, 9), edge_attr, fake=fake, fake_attr=fake_attr)
    assert edge_out.shape == (edge_index.shape[1] + fake.num_edges, 6)

    expected = torch.cat([
        _dense_san(layer, x[:5], edge_index[:, :6], edge_attr[:6], fake_attr, gamma),
        _dense_san(layer, x[5:], edge_index[:, 6:] - 5, edge_attr[6:], fake_attr, gamma),
    ])
    torch.testing.assert_close(node_out, expected)

    # the gradients agree as well
    x.requires_grad_(True)
    grad_union = torch.autograd.grad(layer(x, Graph(edge_index, 9), edge_attr, fake=fake, fake_attr=fake_attr)[0].sum(), x)[0]
    dense = torch.cat([
        _dense_san(layer, x[:5], edge_index[:, :6], edge_attr[:6], fake_attr, gamma),
        _dense_san(layer, x[5:], edge_index[:, 6:] - 5, edge_attr[6:], fake_attr, gamma),
    ])
    torch.testing.assert_close(grad_union, torch.autograd.grad(dense.sum(), x)[0])


def test_san_union_stats_cover_real_then_fake_edges():
    torch.manual_seed(8)
    edge_index = _undirected([(0, 1), (1, 2)], 4)
    layer = SANAttention(4, 2, 2, 4, ebt="slot", backend="torch")
    fake = full_fake_edges(edge_index, None, 4, 0.5)
    stats = EdgeStats(keep_edge_ratio=True)
    _, edge_out = layer(torch.randn(4, 4), edge_index, torch.randn(4, 4), fake=fake,
                        fake_attr=torch.randn(1, 4), stats=stats)
    assert stats.rows == edge_index.shape[1] + fake.num_edges == edge_out.shape[0]
    assert stats.count == edge_out.numel()


def test_full_fake_edges_is_the_per_graph_complement():
    edge_index = torch.cat([_undirected([(0, 1), (1, 2)], 4), _undirected([(0, 1)], 3) + 4, torch.tensor([[8], [8]])], 1)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])  # graph 2 has a self loop on node 8
    fake = full_fake_edges(edge_index, batch, 9, 0.25)
    got = set(map(tuple, fake.index.t().tolist()))
    adjacent = set(map(tuple, edge_index.t().tolist()))
    expected = {
        (j, i) for i in range(9) for j in range(9)
        if batch[i] == batch[j] and i != j and (j, i) not in adjacent and (i, j) not in adjacent
    }
    assert got == expected and fake.num_edges == len(expected)
    assert torch.allclose(fake.log_weight, torch.full_like(fake.log_weight, math.log(0.25)))


def test_sampled_fake_edges_are_non_neighbours_with_importance_weights():
    torch.manual_seed(9)
    num_nodes, samples = 2000, 8
    rng = np.random.default_rng(0)
    ring = [(i, (i + 1) % num_nodes) for i in range(num_nodes)]
    chords = [tuple(map(int, rng.integers(0, num_nodes, 2))) for _ in range(3000)]
    edge_index = _undirected(ring + [c for c in chords if c[0] != c[1]], num_nodes)
    fake = sampled_fake_edges(edge_index, None, num_nodes, 0.1, samples)
    assert 0 < fake.num_edges <= num_nodes * samples
    src, dst = fake.index
    assert torch.all(src != dst)
    keys = dst * num_nodes + src
    adjacent = torch.cat([edge_index[1] * num_nodes + edge_index[0], edge_index[0] * num_nodes + edge_index[1]])
    assert not torch.isin(keys, adjacent).any()
    adjacency = sp.coo_matrix((np.ones(edge_index.shape[1]), edge_index.numpy()), shape=(num_nodes,) * 2).tocsr()
    adjacency.data[:] = 1
    non_neighbours = num_nodes - 1 - np.asarray((adjacency + adjacency.T).astype(bool).sum(1)).ravel()
    kept = np.bincount(dst.numpy(), minlength=num_nodes)
    expected = math.log(0.1) + np.log(non_neighbours[dst.numpy()] / kept[dst.numpy()])
    np.testing.assert_allclose(fake.log_weight.numpy(), expected, rtol=1e-5)


def test_sampled_fake_edges_approximate_the_exact_union():
    torch.manual_seed(10)
    num_nodes = 40
    edge_index = _undirected([(i, i + 1) for i in range(num_nodes - 1)], num_nodes)
    layer = SANAttention(8, 2, 4, 8, clamp=1.0, backend="torch").double()
    x = torch.randn(num_nodes, 8, dtype=torch.float64)
    edge_attr = torch.randn(edge_index.shape[1], 8, dtype=torch.float64)
    fake_attr = torch.randn(1, 8, dtype=torch.float64)

    def attend(fake):
        return layer(x, edge_index, edge_attr, fake=fake, fake_attr=fake_attr)[0].detach()

    exact = attend(full_fake_edges(edge_index, None, num_nodes, 1.0))
    few = (attend(sampled_fake_edges(edge_index, None, num_nodes, 1.0, 100)) - exact).abs().mean()
    many = (attend(sampled_fake_edges(edge_index, None, num_nodes, 1.0, 6400)) - exact).abs().mean()
    # the estimate converges (Monte Carlo rate: 64x the draws, ~8x smaller error) ...
    assert many < few / 4
    # ... and lands far closer to the exact union than attention over the real edges alone
    assert many < 0.1 * (attend(None) - exact).abs().mean()


def test_san_sampled_mode_runs_through_the_model():
    torch.manual_seed(11)
    info = INFOS["proteins"]
    batch = make_batch("san", "proteins")
    model = models.build_model("san", info, **SMALL, max_fake_nodes=2)
    assert model.build_fake_edges(batch, batch.num_nodes).num_edges <= batch.num_nodes * model.fake_samples
    out = model(batch)
    assert out.shape == (batch.num_nodes, info.num_tasks) and torch.isfinite(out).all()


# -- positional encodings --------------------------------------------------------------
def _dense_laplacian(edge_index, num_nodes):
    adjacency = np.zeros((num_nodes, num_nodes))
    for j, i in edge_index.t().tolist():
        if i != j:
            adjacency[i, j] = adjacency[j, i] = 1
    degree = adjacency.sum(1)
    inverse = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0)
    return np.eye(num_nodes) - inverse[:, None] * adjacency * inverse[None, :]


@pytest.mark.parametrize("p", [1, 3])
def test_graphit_kernel_matches_dense_power(p):
    gamma = 0.25
    num_nodes, pairs = 7, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (1, 3)]  # node 6 isolated
    edge_index = torch.cat([_undirected(pairs, num_nodes), torch.tensor([[4], [4]])], 1)  # plus one self loop edge
    data = positional.RandomWalkKernel(p, gamma)(Data(edge_index=edge_index, num_nodes=num_nodes))
    dense = np.linalg.matrix_power(np.eye(num_nodes) - gamma * _dense_laplacian(edge_index, num_nodes), p)
    src, dst = edge_index.numpy()
    np.testing.assert_allclose(data.kernel_log_edge.numpy(), np.log(dense[dst, src]), rtol=1e-5, atol=1e-5)
    extra_src, extra_dst = data.kernel_extra_index.numpy()
    np.testing.assert_allclose(data.kernel_log_extra.numpy(), np.log(dense[extra_dst, extra_src]), rtol=1e-5, atol=1e-5)
    # support = the non-zeros of the dense power, each pair exactly once
    covered = set(zip(dst.tolist(), src.tolist())) | set(zip(extra_dst.tolist(), extra_src.tolist()))
    assert covered == set(zip(*np.nonzero(dense > 1e-15)))
    assert len(covered) == len(set(zip(dst.tolist(), src.tolist()))) + extra_src.shape[0]


def test_graphit_kernel_batches_and_feeds_the_bias():
    info = INFOS["zinc"]
    batch = make_batch("graphit", "zinc", kernel_p=2)
    model = models.build_model("graphit", info, **SMALL, kernel_p=2).eval()
    assert model.clamp is None  # "auto": no clamp with the kernel bias (module docstring)
    graph, bias, extra = model.attention_support(batch, batch.num_nodes)
    assert graph.num_edges == batch.edge_index.shape[1] + batch.kernel_extra_index.shape[1] == bias.shape[0]
    # every node has its self pair after batching offsets the extra pairs
    loops = graph.edge_index[0] == graph.edge_index[1]
    assert torch.equal(torch.unique(graph.edge_index[0][loops]), torch.arange(batch.num_nodes))
    assert models.build_model("graphit", info, **SMALL, pe=None).clamp == 5.0


def test_lap_pe_is_orthonormal_and_padded():
    num_nodes, pairs = 10, [(i, i + 1) for i in range(9)] + [(0, 5), (2, 7)]
    data = positional.LaplacianPE(k=4)(Data(edge_index=_undirected(pairs, num_nodes), num_nodes=num_nodes))
    vectors = data.lap_pe.double().numpy()
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(4), atol=1e-5)
    laplacian = _dense_laplacian(data.edge_index, num_nodes)
    eigenvalues = np.linalg.eigvalsh(laplacian)
    np.testing.assert_allclose(np.diag(vectors.T @ laplacian @ vectors), eigenvalues[1:5], atol=1e-5)

    small = positional.LaplacianPE(k=4)(Data(edge_index=_undirected([(0, 1), (1, 2)], 3), num_nodes=3))
    assert small.lap_pe.shape == (3, 4)
    assert torch.all(small.lap_pe[:, 2:] == 0) and torch.all(small.lap_pe[:, :2].norm(dim=0) > 0.99)
    single = positional.LaplacianPE(k=4)(Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=1))
    assert torch.all(single.lap_pe == 0)


def test_san_eigen_input_is_padded_with_a_mask():
    data = positional.SANEigenPE(k=5)(Data(edge_index=_undirected([(0, 1), (1, 2)], 3), num_nodes=3))
    assert data.san_eigvec.shape == data.san_eigval.shape == data.san_eig_valid.shape == (3, 5)
    assert data.san_eig_valid[:, :3].all() and not data.san_eig_valid[:, 3:].any()
    np.testing.assert_allclose(data.san_eigval[0, :3].numpy(), [0.0, 1.0, 2.0], atol=1e-6)
    assert torch.all(data.san_eigval == data.san_eigval[0])
    assert torch.all(data.san_eigvec[:, 3:] == 0)


def test_eigsh_path_on_a_2000_node_graph_uses_no_dense_matrix(monkeypatch):
    num_nodes = 2000
    rng = np.random.default_rng(1)
    ring = [(i, (i + 1) % num_nodes) for i in range(num_nodes)]
    chords = [tuple(map(int, rng.integers(0, num_nodes, 2))) for _ in range(2000)]
    edge_index = _undirected(ring + [c for c in chords if c[0] != c[1]], num_nodes)

    def forbidden(*args, **kwargs):
        raise AssertionError("dense eigensolver or dense conversion used")

    monkeypatch.setattr(np.linalg, "eigh", forbidden)
    for cls in (sp.csr_matrix, sp.coo_matrix, sp.csc_matrix, sp.csr_array, sp.coo_array, sp.csc_array):
        monkeypatch.setattr(cls, "toarray", forbidden)
        monkeypatch.setattr(cls, "todense", forbidden)
    tracemalloc.start()
    data = positional.LaplacianPE(k=6)(Data(edge_index=edge_index, num_nodes=num_nodes))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    monkeypatch.undo()
    assert peak < num_nodes * num_nodes * 8 / 4, peak  # far below one dense float64 N x N matrix
    vectors = data.lap_pe.double().numpy()
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(6), atol=1e-4)
    laplacian = positional.normalized_laplacian(edge_index, num_nodes)
    rayleigh = np.einsum("nk,nk->k", vectors, laplacian @ vectors)
    residual = np.linalg.norm(laplacian @ vectors - vectors * rayleigh, axis=0)
    assert residual.max() < 1e-3 and np.all(np.diff(rayleigh) >= -1e-6) and rayleigh[0] > 1e-6


# -- builders and presets ---------------------------------------------------------------
def test_presets_follow_the_paper_table():
    gt = models.build_model("gt", INFOS["tox21"], preset="paper")
    assert (gt.num_layers, gt.hidden, gt.heads, gt.readout, gt.residual, gt.dropout) == (10, 444, 12, "mean", True, 0.0)
    assert gt.pe is None and gt.norm == "batch" and gt.clamp == 5.0
    san = models.build_model("san", INFOS["proteins"], preset="paper", ebt="edge")
    assert (san.num_layers, san.hidden, san.heads, san.residual, san.dropout) == (3, 88, 8, False, 0.5)
    assert not san.full_graph and san.ebt == "edge" and san.ebt_init == "standard_normal"
    # the paper's ogbn-proteins code: one shared Linear(8, hidden) re-embeds the edge features for every layer
    assert not san.layer_edge_encoders and all(layer.edge_encoder is None for layer in san.layers)
    assert san.node_encoder.features is None  # species embedding only
    graphit = models.build_model("graphit", INFOS["zinc"], preset="zinc", num_layers=4)
    assert (graphit.num_layers, graphit.hidden, graphit.readout, graphit.pe) == (4, 64, "sum", None)
    assert models.PRESETS[("graphit", "ogbn-proteins")].train_kwargs()["batch_size"] == 768
    for name in MODEL_NAMES:
        assert models.transforms_for(name, INFOS["zinc"], preset="paper") is None
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("gat", INFOS["zinc"])
    with pytest.raises(TypeError, match="no argument"):
        models.build_model("gt", INFOS["zinc"], kernel_p=3)


def test_transforms_for_each_model():
    (lap,) = models.transforms_for("gt", INFOS["zinc"]).transforms
    assert isinstance(lap, positional.LaplacianPE) and lap.k == 8
    (eig,) = models.transforms_for("san", INFOS["zinc"], pe_dim=6).transforms
    assert isinstance(eig, positional.SANEigenPE) and eig.k == 6
    (kernel,) = models.transforms_for("graphit", INFOS["zinc"]).transforms
    assert isinstance(kernel, positional.RandomWalkKernel) and (kernel.p, kernel.gamma) == (16, 0.25)
    (kernel,) = models.transforms_for("graphit", INFOS["proteins"]).transforms
    assert kernel.p == 1
    # node-level (one large graph) defaults: 3 layers, no eigenvector encodings unless asked for
    assert models.transforms_for("gt", INFOS["proteins"]) is None
    assert models.transforms_for("san", INFOS["proteins"]) is None
    assert models.build_model("gt", INFOS["proteins"]).num_layers == 3
    assert models.build_model("gt", INFOS["zinc"]).num_layers == 10
    (lap,) = models.transforms_for("gt", INFOS["proteins"], pe="lap").transforms
    assert isinstance(lap, positional.LaplacianPE)
    model = models.build_model("graphit", INFOS["zinc"], **SMALL, pe="lap")
    (lap,) = model.pre_transforms().transforms
    assert isinstance(lap, positional.LaplacianPE) and lap.k == SMALL["pe_dim"]
    with pytest.raises(ValueError, match="pe"):
        models.transforms_for("gt", INFOS["zinc"], pe="rw")


# -- parameter initialisation -----------------------------------------------------------
@pytest.mark.parametrize("ebt_init, ebt_std", [("normal_0.02", 0.02), ("standard_normal", 1.0)])
def test_reset_parameters_redraws_with_the_layers_init_rules(ebt_init, ebt_std):
    torch.manual_seed(13)
    in_channels, heads, head_dim, edge_dim = 96, 8, 32, 48
    layer = SANAttention(in_channels, heads, head_dim, edge_dim, ebt="edge", ebt_init=ebt_init)
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    layer.reset_parameters()
    for name, parameter in layer.named_parameters():
        assert not torch.equal(parameter, before[name]), name
        if name.startswith("ebt_"):  # N(0, std) by ebt_init
            assert abs(parameter.std().item() / ebt_std - 1) < 0.15, name
        else:  # nn.Linear's rule: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
            fan_in = edge_dim if name.startswith(("lin_e.", "lin_e2.")) else in_channels
            bound = 1 / math.sqrt(fan_in)
            assert parameter.abs().max() <= bound, name
            if name.endswith("weight"):
                assert abs(parameter.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
    xavier = {name: p.detach().clone() for name, p in layer.named_parameters()}
    layer.reset_parameters(init="xavier")
    for name, parameter in layer.named_parameters():
        if name.startswith("ebt_"):
            assert torch.equal(parameter, xavier[name]), name  # not a projection: kept
        elif name.endswith("bias"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        else:
            fan_out, fan_in = parameter.shape
            std = math.sqrt(2 / (fan_in + fan_out))
            assert abs(parameter.std().item() / std - 1) < 0.1, name
    with pytest.raises(ValueError, match="unknown init"):
        layer.reset_parameters(init="orthogonal")


def test_construction_draws_the_same_numbers_as_plain_linear_layers():
    for ebt, ebt_init in ((None, "normal_0.02"), ("edge", "standard_normal"), ("slot", "normal_0.02")):
        torch.manual_seed(14)
        layer = SANAttention(10, 2, 3, 5, ebt=ebt, ebt_init=ebt_init)
        torch.manual_seed(14)  # what the constructors drew before reset_parameters existed
        use_bias = ebt is not None
        plain = [torch.nn.Linear(n, 6, bias=use_bias) for n in (10, 10, 10, 5)]
        std = 0.02 if ebt_init == "normal_0.02" else 1.0
        ebt_params = [torch.randn(2, 3) * std for _ in range(3)] if ebt else []
        plain += [torch.nn.Linear(n, 6, bias=use_bias) for n in (10, 10, 5)]
        mine = [layer.lin_q, layer.lin_k, layer.lin_v, layer.lin_e, layer.lin_q2, layer.lin_k2, layer.lin_e2]
        for a, b in zip(mine, plain):
            assert torch.equal(a.weight, b.weight) and (a.bias is None or torch.equal(a.bias, b.bias))
        if ebt:
            assert all(torch.equal(a, b) for a, b in zip((layer.ebt_k, layer.ebt_e, layer.ebt_v), ebt_params))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_xavier_reset_goes_through_the_layers_and_draws_as_one_linear_loop(name):
    from magnn.analysis.detect import xavier_reset

    model = models.build_model(name, INFOS["zinc"], ebt="edge", **SMALL)
    twin = copy.deepcopy(model)
    torch.manual_seed(15)
    xavier_reset(model)
    torch.manual_seed(15)
    for module in twin.modules():  # the loop xavier_reset ran before the layers had reset_parameters
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for (key, got), want in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(got, want), key


# -- models whose edge_out only feeds the statistics ------------------------------------------
# (model, input kind, overrides): GraphiT and SAN always drop the attention's edge_out, SAN with
# fake edges too (full graph), GT when it has no edge stream (the paper's ogbn-proteins form)
DISCARDING = [("graphit", "zinc", {}), ("san", "zinc", {"full_graph": False}), ("san", "zinc", {"full_graph": True}),
              ("gt", "proteins", {"edge_stream": False})]


@pytest.mark.parametrize("name,kind,overrides", DISCARDING,
                         ids=["graphit", "san", "san-full-graph", "gt-no-edge-stream"])
def test_models_that_drop_edge_out_never_have_it_written(name, kind, overrides, monkeypatch):
    """The kernels are told (need_edge_out=False) when a model drops every layer's edge_out, and
    outputs, gradients and statistics are those of the same model while a forward hook observes
    its attention layers, which keeps edge_out for the hook (the detection's exact-ratio sampler
    reads its rows from there, and still gets them)."""
    import magnn.layers.attention
    import magnn.models.san
    from magnn.analysis.detect import ExactRatioSampler

    asked = []
    for module in (magnn.layers.attention, magnn.models.san):
        def spy(*args, _original=module.edge_attention, **kwargs):
            asked.append(kwargs.get("need_edge_out", True))
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, "edge_attention", spy)
    torch.manual_seed(3)
    batch = make_batch(name, kind, **overrides)
    model = models.build_model(name, INFOS[kind], **{**SMALL, **overrides}).eval()  # no random sign flips

    def run():
        with collect(model, keep_edge_ratio=True) as stats:
            out = model(batch)
        grads = torch.autograd.grad(out.sum(), list(model.parameters()), allow_unused=True)
        return out, grads, {key: (s.count, s.max_abs, s.hist_abs.counts, s.hist_ratio.counts, s.edge_ratio)
                            for key, s in stats.items()}

    out, grads, stats = run()
    assert len(asked) >= model.num_layers and not any(asked)
    asked.clear()
    sampler = ExactRatioSampler(model, limit=20)
    try:
        observed = run()
    finally:
        sampler.remove()
    assert len(asked) >= model.num_layers and all(asked)
    assert torch.equal(out, observed[0])
    for got, want in zip(grads, observed[1]):
        assert (got is None and want is None) or torch.equal(got, want)
    assert stats.keys() == observed[2].keys()
    for key in stats:
        assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                   for a, b in zip(stats[key], observed[2][key]))
    assert len(sampler.parts) == model.num_layers
    assert all(sampler.ratios(layer).shape[0] > 0 for layer in sampler.parts)


def test_each_model_config_holds_exactly_its_constructor_arguments():
    import inspect
    from dataclasses import fields

    from magnn.models import SAN, GraphiT, GraphTransformer
    from magnn.models.config import GraphiTConfig, GraphTransformerConfig, SANConfig

    for model, config in ((GraphTransformer, GraphTransformerConfig), (GraphiT, GraphiTConfig), (SAN, SANConfig)):
        arguments = {p.name for p in inspect.signature(model.__init__).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert arguments == {field.name for field in fields(config)}, model.__name__


def test_a_model_keeps_its_resolved_config_and_reads_its_transforms_from_it():
    from magnn.data import load_dataset
    from magnn.models import build_model

    _, info = load_dataset("zinc", max_graphs=4)
    model = build_model("graphit", info, num_layers=2, hidden=16, heads=2)
    assert model.config.pe == "rw" and model.config.clamp is None  # "auto" resolved by the kernel
    assert model.config.layer_edge_encoders is False  # None: per-layer encoders only for proteins inputs
    (kernel,) = model.pre_transforms().transforms
    assert (kernel.p, kernel.gamma) == (model.config.kernel_p, model.config.kernel_gamma)


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_reset_parameters_redraws_every_drawn_parameter_and_keeps_the_keys(name):
    from magnn.data import load_dataset
    from magnn.models import build_model

    _, info = load_dataset("zinc", max_graphs=4)
    torch.manual_seed(0)
    model = build_model(name, info, num_layers=2, hidden=16, heads=2, ebt="edge")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    torch.manual_seed(1)
    model.reset_parameters()
    after = model.state_dict()
    assert list(after) == list(before)
    drawn = [key for key, value in before.items() if value.is_floating_point() and value.numel() > 1
             and float(value.std()) > 0 and "running" not in key]
    assert drawn and all(not torch.equal(before[key], after[key]) for key in drawn), \
        [key for key in drawn if torch.equal(before[key], after[key])]
    again = {key: value.clone() for key, value in after.items()}
    torch.manual_seed(1)
    model.reset_parameters()
    assert all(torch.equal(again[key], value) for key, value in model.state_dict().items())  # seeded: repeatable


def test_a_copied_model_embeds_edges_with_its_own_encoder():
    import copy

    from magnn.data import load_dataset
    from magnn.models import build_model

    _, info = load_dataset("zinc", max_graphs=4)
    model = build_model("san", info, num_layers=1, hidden=16, heads=2, pe=None, full_graph=False)
    twin = copy.deepcopy(model)
    assert twin.edge_input.encoder is twin.edge_encoder and twin.edge_encoder is not model.edge_encoder
    with torch.no_grad():
        for parameter in twin.edge_encoder.parameters():
            parameter.add_(1.0)
    assert not torch.equal(twin.edge_input.encoder.bond.weight, model.edge_encoder.bond.weight)
