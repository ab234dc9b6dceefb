"""The score without EBT's bias term (magnn.analysis.unbiased): what the bias does not touch."""
import math

import pytest
import torch

from magnn.analysis.detect import detect
from magnn.analysis.unbiased import collect_without_bias
from magnn.core.graph import Graph
from magnn.layers import FusedEdgeAttention
from magnn.stats import EdgeStats, add_to_all, collect, reduce_tensor

HEADS, DIM = 2, 4


class OneLayer(torch.nn.Module):
    def __init__(self, ebt, mode="gt"):
        super().__init__()
        self.attention = FusedEdgeAttention(8, HEADS, DIM, 8, mode=mode, ebt=ebt, backend="torch",
                                            ebt_init="standard_normal")

    def forward(self, x, graph, e):
        return self.attention(x, graph, e, need_edge_out=False)


def _inputs():
    generator = torch.Generator().manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0, 2], [1, 2, 3, 4, 0, 3, 1]])
    return (torch.randn(5, 8, generator=generator), Graph(edge_index, num_nodes=5),
            torch.randn(7, 8, generator=generator))


def _reference(layer: FusedEdgeAttention, x, graph, e) -> EdgeStats:
    """Statistics of w_ij = q_i k_j e_ij / sqrt(D), computed here from the layer's projections."""
    q = layer.lin_q(x).view(-1, HEADS, DIM)
    k = layer.lin_k(x).view(-1, HEADS, DIM)
    w = q[graph.dst] * k[graph.src] * layer.lin_e(e).view(-1, HEADS, DIM) / math.sqrt(DIM)
    stats = EdgeStats()
    add_to_all((stats,), reduce_tensor(w.detach().reshape(w.shape[0], -1)), HEADS)
    return stats


@pytest.mark.parametrize("ebt", [None, "edge"])
def test_the_score_without_the_bias_is_q_k_e(ebt):
    model = OneLayer(ebt).eval()
    x, graph, e = _inputs()
    with torch.no_grad(), collect_without_bias(model) as unbiased, collect(model) as tapped:
        model(x, graph, e)
    expected = _reference(model.attention, x, graph, e)
    ours = unbiased["attention"]
    assert ours.rows == 7
    assert ours.max_ratio("edge") == pytest.approx(expected.max_ratio("edge"), rel=1e-4)
    assert ours.max_abs == pytest.approx(expected.max_abs, rel=1e-4)
    if ebt is None:  # nothing to subtract: the same as the ordinary tap
        assert ours.max_ratio("edge") == pytest.approx(tapped["attention"].max_ratio("edge"), rel=1e-6)
    else:  # the N(0, 1) bias raises every edge's median: the ordinary tap's ratio is not the score's
        assert tapped["attention"].max_ratio("edge") != pytest.approx(ours.max_ratio("edge"), rel=1e-2)


def test_additive_mode_and_one_graph_splits_are_refused():
    with pytest.raises(ValueError, match="mode='additive'"):
        with collect_without_bias(OneLayer("edge", mode="additive")):
            pass
    from torch_geometric.data import Data

    with pytest.raises(ValueError, match="without_bias=True measures graph batches"):
        detect(OneLayer(None), Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=1), without_bias=True)


def test_detect_without_bias_on_a_graph_model():
    from magnn.data import load_dataset
    from magnn.models import build_model

    splits, info = load_dataset("zinc", max_graphs=16)
    torch.manual_seed(0)
    model = build_model("gt", info, preset="paper", backend="torch", ebt="edge", num_layers=2, pe=None)
    graphs = list(splits["test"])[:3]
    plain = detect(model, graphs, progress=False, fit=False)
    unbiased = detect(model, graphs, progress=False, fit=False, without_bias=True)
    assert [l.name for l in unbiased.layers] == [l.name for l in plain.layers]
    for ours, theirs in zip(unbiased.layers, plain.layers):
        assert ours.stats.rows == theirs.stats.rows and len(ours.batch_max_ratio_edge) == 3
        assert ours.batch_max_ratio_edge != theirs.batch_max_ratio_edge


def test_magnn_detect_has_a_without_bias_option():
    from magnn.cli import build_parser
    from magnn.cli.run import detect_config

    argv = ["detect", "--ckpt", "x.pt", "--without-bias"]
    assert detect_config(build_parser(argv).parse_args(argv)).without_bias is True
    argv = ["detect", "--ckpt", "x.pt"]
    assert detect_config(build_parser(argv).parse_args(argv)).without_bias is False
