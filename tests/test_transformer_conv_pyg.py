"""magnn.layers.TransformerConv as a PyG citizen: a `MessagePassing` layer that every PyG
program treats as PyG's own, with PyG's numbers (same state_dict) in each of them:
sparse adjacencies, EdgeIndex, int32 indices, to_hetero with lazy channels, GNNExplainer
(edge masks), AttentionExplainer (`_alpha`), message hooks, torch.jit.script,
torch.compile(fullgraph=True) without graph breaks, aggr/flow."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import pytest
import torch

from magnn.core.errors import LayerInputError
from magnn.layers import TransformerConv
from magnn.stats import collect

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.nn import MessagePassing, to_hetero  # noqa: E402
from torch_geometric.nn import TransformerConv as PyGConv  # noqa: E402
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csc_tensor, to_torch_csr_tensor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(in_channels=8, out_channels=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    theirs = PyGConv(in_channels, out_channels, **kwargs)
    ours = TransformerConv(in_channels, out_channels, backend="torch", **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _graph(num_nodes=6, num_edges=14, edge_dim=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, 8, generator=gen)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    edge_attr = None if edge_dim is None else torch.randn(num_edges, edge_dim, generator=gen)
    return x, edge_index, edge_attr


def test_is_a_message_passing_layer_with_pyg_names():
    theirs, ours = _pair(heads=2, edge_dim=3, beta=True)
    assert isinstance(ours, MessagePassing)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("edge_dim", [None, 8])
@pytest.mark.parametrize("concat", [True, False])
def test_pyg_test_program_sparse_alpha_bipartite(edge_dim, concat):
    """What PyG's own test of its layer checks, on magnn's layer."""
    x1, x2 = torch.randn(4, 8), torch.randn(2, 16)
    edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
    edge_attr = None if edge_dim is None else torch.randn(4, edge_dim)
    theirs, conv = _pair(8, 32, heads=2, beta=True, edge_dim=edge_dim, concat=concat)
    out = conv(x1, edge_index, edge_attr)
    assert out.shape == (4, 32 * (2 if concat else 1))
    torch.testing.assert_close(out, theirs(x1, edge_index, edge_attr))
    adj = to_torch_csc_tensor(edge_index, size=(4, 4))
    torch.testing.assert_close(conv(x1, adj.t(), edge_attr), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.jit.script(conv)(x1, edge_index, edge_attr), out)
    result = conv(x1, edge_index, edge_attr, return_attention_weights=True)
    torch.testing.assert_close(result[0], out)
    assert result[1][0].shape == (2, 4) and result[1][1].shape == (4, 2)
    assert conv._alpha is None
    torch.testing.assert_close(result[1][1], theirs(x1, edge_index, edge_attr, return_attention_weights=True)[1][1])
    theirs, conv = _pair((8, 16), 32, heads=2, beta=True, edge_dim=edge_dim, concat=concat)
    out = conv((x1, x2), edge_index, edge_attr)
    torch.testing.assert_close(out, theirs((x1, x2), edge_index, edge_attr))
    adj = to_torch_csc_tensor(edge_index, size=(4, 2))
    torch.testing.assert_close(conv((x1, x2), adj.t(), edge_attr), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.jit.script(conv)((x1, x2), edge_index, edge_attr), out)


@pytest.mark.parametrize("form", ["int32", "edge_index_unsorted", "edge_index_csc", "coo", "csr", "csc"])
def test_edge_index_forms_match_pyg(form):
    theirs, ours = _pair(heads=2, edge_dim=3)
    x, edge_index, edge_attr = _graph(edge_dim=3)
    expected = theirs(x, edge_index, edge_attr)
    if form == "int32":
        got = ours(x, edge_index.int(), edge_attr)
    elif form.startswith("edge_index"):
        index = pyg.EdgeIndex(edge_index, sparse_size=(6, 6))
        if form == "edge_index_csc":
            index, order = index.sort_by("col")
            edge_attr, expected = edge_attr[order], theirs(x, index.as_tensor(), edge_attr[order])
            index.get_csc()  # cached: the layer reuses it
        got = ours(x, index, edge_attr)
    else:  # adj_t [N_dst, N_src]: its stored entries are the edges, values = edge_attr
        build = {"coo": to_torch_coo_tensor, "csr": to_torch_csr_tensor, "csc": to_torch_csc_tensor}[form]
        adj_t = build(edge_index.flip(0), edge_attr, size=(6, 6))
        got = ours(x, adj_t)
        expected = theirs(x, adj_t if form != "csc" else adj_t.to_sparse_csr())  # PyG reads no CSC adj_t
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(aggr="mean"), dict(aggr="max"), dict(flow="target_to_source")])
def test_aggr_and_flow_options_match_pyg(options):
    theirs, ours = _pair(heads=2, edge_dim=3, **options)
    x, edge_index, edge_attr = _graph(edge_dim=3)
    torch.testing.assert_close(ours(x, edge_index, edge_attr), theirs(x, edge_index, edge_attr))


def test_hooks_see_the_messages_and_statistics_still_flow():
    theirs, ours = _pair(heads=2, edge_dim=3)
    x, edge_index, edge_attr = _graph(edge_dim=3)
    with collect(ours) as fused_stats:
        fused = ours(x, edge_index, edge_attr)
    seen = []
    handle = ours.register_message_forward_hook(lambda module, inputs, out: seen.append((out, module._alpha)))
    with collect(ours) as hooked_stats:
        hooked = ours(x, edge_index, edge_attr)
    handle.remove()
    torch.testing.assert_close(hooked, fused)
    assert seen[0][0].shape == (edge_index.shape[1], 2, 4) and seen[0][1].shape == (edge_index.shape[1], 2)
    assert fused_stats[""].calls == hooked_stats[""].calls == 1
    assert fused_stats[""].max_ratio() == pytest.approx(hooked_stats[""].max_ratio(), rel=1e-5)


def test_to_hetero_with_lazy_channels_matches_pyg():
    from torch_geometric.data import HeteroData

    data = HeteroData()
    data["paper"].x, data["author"].x = torch.randn(5, 6), torch.randn(4, 3)
    data["author", "writes", "paper"].edge_index = torch.tensor([[0, 1, 2, 3, 3], [0, 1, 1, 4, 2]])
    data["paper", "rev", "author"].edge_index = torch.tensor([[0, 1, 4, 2], [0, 0, 3, 1]])

    class Net(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv((-1, -1), 4, heads=2)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    models = []
    for conv in (PyGConv, lambda *a, **k: TransformerConv(*a, backend="torch", **k)):
        torch.manual_seed(0)
        model = to_hetero(Net(conv), data.metadata(), aggr="sum")
        with torch.no_grad():
            model(data.x_dict, data.edge_index_dict)  # initialise the lazy parameters
        models.append(model)
    models[1].load_state_dict(models[0].state_dict(), strict=True)
    theirs, ours = (model(data.x_dict, data.edge_index_dict) for model in models)
    assert set(ours) == set(theirs) == {"paper", "author"}
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key])


class _Model(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv1, self.conv2 = conv(8, 4, heads=2, edge_dim=3), conv(8, 3, heads=1, edge_dim=3)

    def forward(self, x, edge_index, edge_attr):
        return self.conv2(self.conv1(x, edge_index, edge_attr).relu(), edge_index, edge_attr)


def _models():
    torch.manual_seed(0)
    theirs = _Model(PyGConv)
    ours = _Model(lambda *a, **k: TransformerConv(*a, backend="torch", **k))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def test_explain_edge_masks_match_pyg():
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    x, edge_index, edge_attr = _graph(edge_dim=3)
    mask = torch.nn.Parameter(torch.randn(edge_index.shape[1]))
    results = []
    for model in _models():
        set_masks(model, mask, edge_index, apply_sigmoid=True)
        out = model(x, edge_index, edge_attr)
        (grad,) = torch.autograd.grad(out.square().sum(), mask)
        clear_masks(model)
        results.append((out, grad))
    torch.testing.assert_close(results[1], results[0])
    assert not torch.allclose(results[1][0], _models()[1](x, edge_index, edge_attr))  # the mask acted


@pytest.mark.parametrize("algorithm", ["gnn", "attention"])
def test_explainers_match_pyg(algorithm):
    from torch_geometric.explain import Explainer
    from torch_geometric.explain.algorithm import AttentionExplainer, GNNExplainer

    x, edge_index, edge_attr = _graph(edge_dim=3)
    masks = []
    for model in _models():
        torch.manual_seed(2)
        explainer = Explainer(
            model, GNNExplainer(epochs=5) if algorithm == "gnn" else AttentionExplainer(),
            explanation_type="model", edge_mask_type="object",
            node_mask_type="attributes" if algorithm == "gnn" else None,
            model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"))
        masks.append(explainer(x, edge_index, edge_attr=edge_attr, index=0).edge_mask)
    assert masks[1].shape == (edge_index.shape[1],) and masks[1].abs().sum() > 0
    torch.testing.assert_close(masks[1], masks[0], atol=1e-5, rtol=1e-4)


def test_jit_script_of_a_model_holding_the_layer():
    theirs, ours = _models()
    x, edge_index, edge_attr = _graph(edge_dim=3)
    torch.testing.assert_close(torch.jit.script(ours)(x, edge_index, edge_attr), theirs(x, edge_index, edge_attr))
    assert ours.conv1.jittable() is ours.conv1  # PyG's deprecated spelling still answers


class _Stack(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.convs = torch.nn.ModuleList([TransformerConv(8, 4, heads=2, backend="torch") for _ in range(layers)])

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = out + conv(x, edge_index).sum()
        return out


def test_scripting_a_model_of_many_layers_keeps_each_twin_in_its_place():
    """torch's preparation walk records modules by id() and swaps each layer for its twin: a layer
    freed mid-walk let a later module reuse its address and be replaced by that twin (a PyG
    aggregation module turned into a TransformerConv twin, failing the compile now and then)."""
    x, edge_index, _ = _graph()
    for _ in range(5):
        model = _Stack(12)
        expected = model(x, edge_index)
        torch.testing.assert_close(torch.jit.script(model)(x, edge_index), expected)


class _Holder(torch.nn.Module):
    """A model holding the layer, as PyG's test scripts it: forward with return_attention_weights."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], edge_index: torch.Tensor,
                edge_attr: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self.conv(x, edge_index, edge_attr, return_attention_weights=True)


@pytest.mark.parametrize("edge_dim", [None, 3, 64])  # 3 < H*C: projected inside the kernels; 64: before them
@pytest.mark.parametrize("bipartite", [False, True])
def test_scripted_layer_on_the_cpu_backend_gives_the_eager_numbers(edge_dim, bipartite):
    """Scripted on the cpu backend, the twin calls the same operator on the same CSR: outputs equal
    eager's exactly (PyG's tests compare them with allclose's defaults), gradients and alpha agree."""
    torch.manual_seed(3)
    conv = TransformerConv((8, 5) if bipartite else 8, 4, heads=2, edge_dim=edge_dim, beta=True, backend="cpu")
    x, edge_index, edge_attr = _graph(edge_dim=edge_dim)
    x = (x, torch.randn(4, 5)) if bipartite else x
    edge_index = edge_index[:, edge_index[1] < 4] if bipartite else edge_index
    edge_attr = None if edge_attr is None else edge_attr[: edge_index.shape[1]]
    scripted = torch.jit.script(conv)
    eager_out, scripted_out = conv(x, edge_index, edge_attr), scripted(x, edge_index, edge_attr)
    assert torch.equal(scripted_out, eager_out)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(conv.parameters()))
    scripted_grads = torch.autograd.grad(scripted_out.square().sum(), list(scripted.parameters()))
    for eager_grad, scripted_grad in zip(eager_grads, scripted_grads):
        torch.testing.assert_close(scripted_grad, eager_grad)
    out, (index, alpha) = torch.jit.script(_Holder(conv))(x, edge_index, edge_attr)
    eager_result = conv(x, edge_index, edge_attr, return_attention_weights=True)
    assert torch.equal(out, eager_out) and torch.equal(index, edge_index)
    torch.testing.assert_close(alpha, eager_result[1][1])


def test_scripted_layer_takes_a_torch_sparse_adjacency_through_pyg_path():
    """A torch.sparse adj_t is a Tensor to TorchScript too: the cpu twin must not read it as [2, E]."""
    torch.manual_seed(0)
    conv = TransformerConv(8, 4, heads=2, backend="cpu")
    x, edge_index, _ = _graph()
    adj_t = to_torch_csc_tensor(edge_index, size=(6, 6)).t()
    torch.testing.assert_close(torch.jit.script(conv)(x, adj_t), conv(x, edge_index), atol=1e-6, rtol=1e-5)


def test_sparse_values_without_edge_dim_take_pyg_path():
    """A sparse adjacency's 2-D values are edge_attr to PyG even without edge_dim (it adds them to
    the messages' values): the layer then takes PyG's path, as for an edge_attr passed so."""
    theirs, ours = _pair(heads=2)
    for backend in ("torch", "cpu"):
        ours.backend = backend
        x = torch.randn(3, 8)
        adj_t = torch.sparse_coo_tensor(torch.tensor([[2], [0]]), torch.randn(1, 4), (3, 3, 4))
        torch.testing.assert_close(ours(x, adj_t), theirs(x, adj_t))


def _sparse_tensor_class():
    import torch_geometric.typing

    if not torch_geometric.typing.WITH_TORCH_SPARSE:
        pytest.skip("torch-sparse is not installed: PyG's SparseTensor is then a placeholder that cannot be built")
    return torch_geometric.typing.SparseTensor


@pytest.mark.parametrize("edge_dim", [None, 3])
def test_sparse_tensor_adjacency_matches_pyg(edge_dim):
    """SparseTensor adj_t (its 2-D values as edge_attr): outputs, alpha as the adjacency's values and
    the scripted layer as PyG's layer, on both backends; a wrongly sized adjacency is refused."""
    sparse_tensor = _sparse_tensor_class()
    theirs, ours = _pair(heads=2, edge_dim=edge_dim)
    x, edge_index, edge_attr = _graph(edge_dim=edge_dim)
    adj_t = sparse_tensor.from_edge_index(edge_index, edge_attr, sparse_sizes=(6, 6)).t()
    expected = theirs(x, adj_t)
    their_alpha = theirs(x, adj_t, return_attention_weights=True)[1]
    for backend in ("torch", "cpu"):
        ours.backend = backend
        torch.testing.assert_close(ours(x, adj_t), expected)
        out, alpha = ours(x, adj_t, return_attention_weights=True)
        assert alpha.sizes() == [6, 6, 2] and alpha.nnz() == edge_index.shape[1]
        torch.testing.assert_close(alpha.storage.value(), their_alpha.storage.value())
        torch.testing.assert_close(torch.jit.script(ours)(x, adj_t), expected)
    with pytest.raises(LayerInputError, match="adj_t"):
        ours(x, sparse_tensor.from_edge_index(edge_index, edge_attr, sparse_sizes=(6, 7)).t())


def test_scripted_layer_trains_with_attention_dropout_on_the_cpu_backend():
    torch.manual_seed(0)
    conv = TransformerConv(8, 4, heads=2, edge_dim=3, dropout=0.5, backend="cpu").train()
    x, edge_index, edge_attr = _graph(edge_dim=3)
    scripted = torch.jit.script(conv)
    outs = [scripted(x, edge_index, edge_attr) for _ in range(2)]
    assert not torch.equal(outs[0], outs[1])  # a new mask per call
    grads = torch.autograd.grad(outs[0].sum(), list(scripted.parameters()))
    assert all(torch.isfinite(grad).all() for grad in grads)
    scripted.eval()
    torch.testing.assert_close(scripted(x, edge_index, edge_attr), conv.eval()(x, edge_index, edge_attr))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compile_fullgraph_without_graph_breaks(backend):
    import torch._dynamo

    theirs, _ = _pair(heads=2, edge_dim=3)
    ours = TransformerConv(8, 4, heads=2, edge_dim=3, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x, edge_index, edge_attr = _graph(edge_dim=3)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(ours)(x, edge_index, edge_attr)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    torch.testing.assert_close(compiled(x, edge_index, edge_attr), theirs(x, edge_index, edge_attr))
