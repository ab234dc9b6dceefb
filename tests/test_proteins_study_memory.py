"""The ogbn-proteins study path allocates no [E, hidden] tensor: its training step and its
full-graph detection run the paper architecture with the edge projection inside the kernels
(`fused_edge_projection=True`). At ogbn-proteins' 79M edges one such tensor is 20 GB in fp32,
what killed `magnn study --dataset ogbn-proteins` at real size on a 24 GB machine."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from magnn.analysis.detect import detect_full_graph
from magnn.data import write_ogb_proteins_raw
from magnn.study import StudyConfig
from magnn.train import loss_function
from magnn.train.epoch import run_epoch
from magnn.train.setup import prepare


class EdgeWideAllocations(TorchDispatchMode):
    """Records every op output whose own storage holds >= rows x width elements and has >= rows
    rows (views and zero-stride expansions hold no storage of that size and are not counted)."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.rows, self.width, self.found = rows, width, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.shape[0] >= self.rows:
                if tensor.untyped_storage().nbytes() >= self.rows * self.width * tensor.element_size():
                    self.found.append((str(func), tuple(tensor.shape)))
        return result


@pytest.fixture(scope="module")
def proteins_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("proteins")
    write_ogb_proteins_raw(root, num_nodes=300, num_edges_undirected=2000, seed=6)
    return root


def _study_model(root, tmp_path, name, **overrides):
    """The model and splits of the quick study's first training run, as `magnn study` builds them."""
    study = StudyConfig.from_options(dataset="ogbn-proteins", model=name, quick=True, data_root=str(root),
                                     out=str(tmp_path), backend="cpu", overrides=overrides)
    torch.manual_seed(0)
    splits, info, model = prepare(study.run_config(None, str(tmp_path / "no_ebt")))
    return splits, info, model


def _edge_wide_allocations(splits, info, model) -> list:
    graph = splits["train"]
    probe = EdgeWideAllocations(graph.edge_index.shape[1], model.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with probe:
        run_epoch(model, graph, info, loss_function(info.task), optimizer=optimizer, node_mask_key="train_mask")
        detect_full_graph(model, splits["test"], fit=False)
    return probe.found


@pytest.mark.parametrize("name", ["gt", "graphit", "san"])
def test_study_training_step_and_detection_build_no_edge_by_hidden_tensor(proteins_root, tmp_path, name):
    splits, info, model = _study_model(proteins_root, tmp_path, name)
    assert _edge_wide_allocations(splits, info, model) == []
    assert model.fused_edge_projection  # the paper architecture's default


@pytest.mark.parametrize("name", ["gt", "san"])
def test_unfused_copy_is_the_same_function_and_takes_edge_noise(proteins_root, tmp_path, name):
    """The explicit bias attack's edge noise needs the [E, hidden] embedding: a fused model is
    attacked through `unfused()`, a copy with the same parameters computing the same function."""
    splits, info, model = _study_model(proteins_root, tmp_path, name)
    model.eval()
    copy = model.unfused()
    assert copy is not model and not copy.fused_edge_projection and model.fused_edge_projection
    graph = splits["val"]
    with torch.no_grad():
        torch.testing.assert_close(copy(graph), model(graph), rtol=1e-4, atol=1e-5)
        noise = torch.zeros(graph.edge_index.shape[1], model.hidden)
        torch.testing.assert_close(copy(graph, edge_noise=noise), model(graph), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="edge_noise"):
            model(graph, edge_noise=noise)
    assert copy.state_dict().keys() == model.state_dict().keys()


def test_the_probe_sees_the_unfused_edge_embedding(proteins_root, tmp_path):
    """Without the in-kernel projection the same step builds [E, hidden] tensors, which the probe counts."""
    splits, info, model = _study_model(proteins_root, tmp_path, "gt", fused_edge_projection=False)
    found = _edge_wide_allocations(splits, info, model)
    assert found and all(shape[-1] * (shape[-2] if len(shape) == 3 else 1) >= model.hidden for _, shape in found)


@pytest.mark.slow  # a whole (tiny) study
def test_study_loads_the_graph_once_for_both_training_runs(proteins_root, tmp_path, monkeypatch):
    """The training runs take the study's loaded graph: a second copy of ogbn-proteins' edges
    (edge_index and edge_attr, ~3.5 GiB at full size) is not held beside the first."""
    import magnn.train.setup as setup
    from magnn.study import run_study

    loads = []
    inner = setup._load
    monkeypatch.setattr(setup, "_load", lambda config: loads.append(config.ebt) or inner(config))
    run_study(StudyConfig.from_options(dataset="ogbn-proteins", quick=True, data_root=str(proteins_root),
                                       out=str(tmp_path / "study"), epochs=1, max_seeds=2, attack_steps=1,
                                       backend="cpu"))
    assert loads == [None]
