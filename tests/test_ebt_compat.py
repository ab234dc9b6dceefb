"""`ebt_compat="gnn-mas"`: SAN and GraphiT as the paper's published EBT code computes them —
the bias weight overwrites every real edge's attention weight, so K, E and e' get no gradient,
while the statistics tap (the score) is still collected."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from magnn.data.info import DatasetInfo
from magnn.models import build_model
from magnn.stats import collect

ZINC = DatasetInfo("zinc", "graph_regression", 1, "zinc_atom", "zinc_bond")
PROTEINS = DatasetInfo("ogbn-proteins", "node_multilabel", 5, "proteins", "proteins", num_species=3)


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    graphs = []
    for n in (5, 7):
        edge_index = torch.randint(0, n, (2, 3 * n), generator=generator)
        graphs.append(Data(x=torch.randint(0, 28, (n, 1), generator=generator), edge_index=edge_index,
                           edge_attr=torch.randint(1, 4, (edge_index.shape[1], 1), generator=generator),
                           y=torch.rand(1, generator=generator)))
    return Batch.from_data_list(graphs)


def _model(name, compat, ebt="edge", info=ZINC, seed=0):
    torch.manual_seed(seed)
    return build_model(name, info, ebt=ebt, preset="paper", num_layers=2, hidden=16, heads=2, backend="torch",
                       ebt_compat=compat, dropout=0.0)


def _grads(model, data):
    model.train()
    model.zero_grad(set_to_none=True)
    model(data).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["san", "graphit"])
def test_k_e_and_e_prime_get_no_gradient_under_gnn_mas(name):
    data = _batch()
    grads = _grads(_model(name, "gnn-mas"), data)
    for layer in range(2):
        prefix = f"layers.{layer}.attention."
        for frozen in ("lin_k.weight", "lin_k.bias", "lin_e.weight", "lin_e.bias", "ebt_e"):
            assert grads[prefix + frozen] is None, prefix + frozen
        assert grads[prefix + "lin_v.weight"].abs().sum() > 0  # the messages still learn
        assert grads[prefix + "ebt_v"].abs().sum() > 0
        # q and k' only set weights that are equal per node: their gradient vanishes
        for flat in ("lin_q.weight", "ebt_k"):
            assert grads[prefix + flat] is None or grads[prefix + flat].abs().max() < 1e-5
    # the formula (no switch): K, E and e' learn
    formula = _grads(_model(name, None), data)
    for frozen in ("lin_k.weight", "lin_e.weight", "ebt_e"):
        assert formula[f"layers.0.attention.{frozen}"].abs().sum() > 0


@pytest.mark.parametrize("name", ["san", "graphit"])
def test_gnn_mas_layer_output_is_the_uniform_mean_of_the_messages(name):
    data = _batch(1)
    model = _model(name, "gnn-mas").eval()
    attention = model.layers[0].attention
    seen = {}
    handle = model.layers[0].register_forward_hook(lambda m, args, out: seen.update(args=args) and None)
    with torch.no_grad():
        model(data)
    handle.remove()
    h, e, graph = seen["args"][:3]
    from magnn.models.compat import gnn_mas_node_out

    with torch.no_grad():
        node_out, edge_out = gnn_mas_node_out(attention, h, graph, e)
        v = attention.lin_v(h).view(-1, 2, 8) + attention.ebt_v
        src, dst = data.edge_index
        expected = torch.zeros_like(v).index_add_(0, dst, v[src])
        degree = torch.bincount(dst, minlength=h.shape[0]).clamp_min(1).view(-1, 1, 1)
        torch.testing.assert_close(node_out, (expected / degree).reshape(h.shape[0], -1), rtol=1e-5, atol=1e-5)
        # the tap is the layer's own score, b_e,i included
        _, formula_edge_out = attention(h, graph, e)
        torch.testing.assert_close(edge_out, formula_edge_out)


@pytest.mark.parametrize("name", ["san", "graphit"])
def test_statistics_still_come_from_the_score(name):
    data = _batch(2)
    model = _model(name, "gnn-mas").eval()
    with torch.no_grad(), collect(model, keep_edge_ratio=True) as stats:
        model(data)
    assert len(stats) == 2
    for layer_stats in stats.values():
        assert layer_stats.count == data.edge_index.shape[1] * 16


def _proteins():
    generator = torch.Generator().manual_seed(0)
    n = 12
    edge_index = torch.randint(0, n, (2, 40), generator=generator)
    return Data(x=torch.rand(n, 8, generator=generator), species=torch.randint(0, 3, (n,), generator=generator),
                edge_index=edge_index, edge_attr=torch.rand(40, 8, generator=generator), y=torch.zeros(n, 5))


def test_san_on_proteins_is_the_papers_layer_without_ebt_and_molecules_unchanged():
    """The paper's san_gt_layer_proteins.py never receives explicit_bias: its "EBT" run has no EBT,
    only biased projections, and its no-EBT run's softmax is the ordinary one."""
    proteins = _proteins()
    plain = _model("san", "gnn-mas", ebt=None, info=PROTEINS)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(proteins), _model("san", None, ebt=None, info=PROTEINS).eval()(proteins))
    grads = _grads(plain, proteins)
    assert grads["layers.0.attention.lin_k.weight"] is not None  # an ordinary softmax: K is trained
    ebt_run = _model("san", "gnn-mas", ebt="edge", info=PROTEINS)
    names = dict(ebt_run.named_parameters())
    assert not any("ebt" in name for name in names)  # no EBT parameters at all
    for projection in ("lin_q", "lin_k", "lin_v", "lin_e"):
        assert f"layers.0.attention.{projection}.bias" in names  # biased projections
        assert f"layers.0.attention.{projection}.bias" not in dict(plain.named_parameters())
    grads = _grads(ebt_run, proteins)
    assert grads["layers.0.attention.lin_k.weight"] is not None and grads["layers.0.attention.lin_e.weight"] is not None
    assert _model("san", None, ebt="edge", info=PROTEINS).layers[0].attention.ebt is not None  # magnn: the formula
    # molecules without EBT: the switch changes nothing
    data = _batch(3)
    with torch.no_grad():
        a = _model("san", "gnn-mas", ebt=None).eval()(data)
        b = _model("san", None, ebt=None).eval()(data)
    torch.testing.assert_close(a, b)


def test_gnn_mas_refuses_the_slot_variant():
    with pytest.raises(ValueError, match="slot"):
        _model("san", "gnn-mas", ebt="slot")
    with pytest.raises(ValueError, match="ebt_compat"):
        _model("graphit", "paper-code")
