"""The Explicit Bias Attack on one large graph (ogbn-proteins-like): the loss is the validation seeds'
loss, the noise that reaches the seeds moves it, and a model whose output ignores its inputs gets
its gain marked not measurable instead of a silent 0."""
import pytest
import torch
from torch_geometric.loader import DataLoader

from magnn.analysis.attack import AttackProtocol, explicit_bias_attack
from magnn.data import proteins_info, synthetic_proteins_graph
from magnn.data.sampling import seed_rows, subgraph
from magnn.models import build_model
from magnn.study.findings import _attack_finding
from magnn.study.report import table2_lines
from magnn.study.task import NodeTask, StudyData
from magnn.train import loss_function


class _Settings:
    """The two settings NodeTask.attack_inputs reads (config.train.seed, config.train.fanouts)."""

    class train:
        seed, fanouts = 0, (5, 10, 15)


@pytest.fixture(scope="module")
def proteins():
    data = synthetic_proteins_graph(num_nodes=300, num_edges_undirected=3000, seed=4)
    info = proteins_info(int(data.species.max()) + 1)
    inputs = NodeTask().attack_inputs(StudyData(_Settings, {"attack_graphs": 8}, info, {"val": data}))
    return data, info, inputs


def _paper_gt(info):
    """The paper's ogbn-proteins GT (3 layers, no residual, BatchNorm), freshly built: in eval mode its
    BatchNorm holds the initial running statistics, and the output hardly varies between nodes."""
    torch.manual_seed(0)
    return build_model("gt", info, preset="paper", backend="torch", hidden=32, heads=4).eval()


def _with_data_statistics(model, inputs):
    """`model` with its BatchNorm running statistics those of `inputs` (as after training): a model
    whose output depends on its inputs."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None  # the cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model(next(iter(DataLoader(inputs, batch_size=len(inputs)))))
    return model.eval()


def _attack(model, inputs, info, sigma=0.1, epochs=3):
    return explicit_bias_attack(model, inputs, loss_function(info.task), sigma=sigma,
                                protocol=AttackProtocol(max_epochs=epochs), progress=False)


def test_seed_rows_are_each_subgraphs_first_num_seeds_rows(proteins):
    data, _, inputs = proteins
    batch = next(iter(DataLoader(inputs, batch_size=len(inputs))))
    rows = seed_rows(batch)
    seeds = torch.nonzero(data.val_mask).reshape(-1)[:len(inputs)]
    assert torch.equal(batch.node_ids[rows], seeds)  # one seed per subgraph, in order
    several = subgraph(data, seeds[:3], torch.arange(40))
    assert torch.equal(seed_rows(several), torch.arange(3)) and seed_rows(data) is None


def test_node_attack_loss_is_the_seeds_loss(proteins):
    data, info, inputs = proteins
    model = _paper_gt(info)
    flipped = []  # the same subgraphs with every non-seed label flipped: the attack's losses must not move
    for graph in inputs:
        graph = graph.clone()
        graph.y[graph.num_seeds:] = 1 - graph.y[graph.num_seeds:]
        flipped.append(graph)
    result, other = _attack(model, inputs, info, epochs=1), _attack(model, flipped, info, epochs=1)
    assert other.loss_clean == result.loss_clean and other.loss_random == result.loss_random
    batch = next(iter(DataLoader(inputs, batch_size=len(inputs))))
    with torch.no_grad():
        prediction = model.unfused()(batch)
    seeds = batch.ptr[:-1]
    expected = loss_function(info.task)(prediction[seeds], batch.y[seeds])
    assert result.loss_clean == pytest.approx(float(expected), rel=1e-6)


def test_noise_on_what_the_seeds_see_moves_the_loss_and_the_attack_raises_it(proteins):
    _, info, inputs = proteins
    model = _with_data_statistics(_paper_gt(info), inputs)
    result = _attack(model, inputs, info, sigma=0.1, epochs=3)
    assert result.loss_random != result.loss_clean and result.measurable and result.note is None
    assert result.gain > 0 and result.loss_optimised > result.loss_random
    node_only = explicit_bias_attack(model, inputs, loss_function(info.task), sigma=0.1, progress=False,
                                     protocol=AttackProtocol(max_epochs=3, edge_noise=False))
    assert node_only.measurable and node_only.gain > 0


def test_a_model_that_ignores_its_inputs_is_reported_not_measurable(proteins, caplog):
    _, info, inputs = proteins
    with caplog.at_level("WARNING", logger="magnn.analysis.attack"):
        result = _attack(_paper_gt(info), inputs, info, sigma=0.01, epochs=1)
    assert result.noise_effect <= 1e-6 and not result.measurable
    row = result.to_dict()
    assert row["measurable"] is False and "not measurable" in row["note"] and "not measurable" in caplog.text
    measured = dict(row, measurable=True, note=None, gain_percent=3.0)
    report = {"dataset": "ogbn-proteins", "model": "gt", "attack": {"no_ebt": [dict(row, sigma=0.1)], "ebt_edge": [dict(measured, sigma=0.1)]}}
    finding = _attack_finding(report, "ebt_edge")
    assert finding["overall"]["verdict"].startswith("NOT TESTABLE") and "no_ebt" in finding["overall"]["verdict"]
    table = "\n".join(table2_lines(report, ["no_ebt", "ebt_edge"], "ebt_edge"))
    assert "0 (not measurable) | 3 |" in table and "rounding, not a measurement" in table
