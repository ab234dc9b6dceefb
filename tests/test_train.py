"""Training: real subsets, resume equivalence, atomic checkpoints, 2-process DDP with merged stats."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from magnn.train import TrainConfig, loss_function, prepare, save_atomically, train

def _config(tmp_path, name="run", **kwargs):
    base = dict(dataset="zinc", model="gt", epochs=2, out=str(tmp_path / name), max_graphs=48, batch_size=16,
                preset="quick", overrides={"num_layers": 2, "hidden": 16, "heads": 2}, backend="torch")
    base.update(kwargs)
    return TrainConfig(**base)


@pytest.mark.parametrize("model", ["gt", "graphit", "san"])
@pytest.mark.parametrize("ebt", [None, "edge", "slot"])
def test_each_model_and_ebt_learns_on_real_zinc(tmp_path, model, ebt):
    from torch_geometric.loader import DataLoader

    torch.manual_seed(0)
    splits, info, net = prepare(_config(tmp_path, model=model, ebt=ebt, max_graphs=32))
    batch = next(iter(DataLoader(splits["train"], batch_size=32)))
    loss_fn = loss_function(info.task)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = loss_fn(net(batch), batch.y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.85 * losses[0]
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_resume_reaches_the_same_weights(tmp_path):
    straight = train(_config(tmp_path, "straight", epochs=3, model="gt", ebt="edge", overrides={**_config(tmp_path).overrides, "dropout": 0.2}))
    first = _config(tmp_path, "resumed", epochs=1, model="gt", ebt="edge", overrides={**_config(tmp_path).overrides, "dropout": 0.2})
    train(first)
    first.epochs = 3
    resumed = train(first, resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [round(r["val_loss"], 10) for r in straight["history"]] == [round(r["val_loss"], 10) for r in resumed["history"]]
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and "mae" in metrics["test"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomically({"epoch": 1}, path)

    def dies_mid_write(obj, target):
        target.write(b"partial")  # the serialized bytes go to memory, then to a temp file
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(tmp_path, "empty"), resume=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from magnn.analysis.detect import detect

    config = TrainConfig(dataset="zinc", model="gt", epochs=1, out=out, max_graphs=32, batch_size=8, preset="quick",
                         overrides={"num_layers": 2, "hidden": 16, "heads": 2}, backend="torch")
    metrics = train(config)
    # each rank detects on its contiguous half; merged stats must equal one process over all graphs
    torch.manual_seed(0)
    splits, _, model = prepare(config)
    graphs = list(splits["test"])
    half = len(graphs) // world
    report = detect(model, graphs[rank * half:(rank + 1) * half], progress=False, fit=False)
    torch.save({"world_size": metrics["world_size"],
                "stats": {layer.name: layer.stats for layer in report.layers}}, f"{result_path}.{rank}")
    dist.destroy_process_group()


def test_two_process_gloo_ddp_trains_and_merges_stats(tmp_path):
    port = _free_port()
    result = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), result), nprocs=2, join=True)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 1
    assert torch.isfinite(torch.tensor(metrics["test"]["loss"]))
    ranks = [torch.load(f"{result}.{r}", weights_only=False) for r in range(2)]
    # single process over the same graphs with the same model
    from magnn.analysis.detect import detect

    config = TrainConfig(dataset="zinc", model="gt", epochs=1, out=str(tmp_path / "single"), max_graphs=32, batch_size=8,
                         preset="quick", overrides={"num_layers": 2, "hidden": 16, "heads": 2}, backend="torch")
    torch.manual_seed(0)
    splits, _, model = prepare(config)
    graphs = list(splits["test"])
    single = detect(model, graphs[: 2 * (len(graphs) // 2)], progress=False, fit=False)
    for layer in single.layers:
        for rank_result in ranks:
            merged = rank_result["stats"][layer.name]
            assert torch.equal(merged.hist_abs.counts, layer.stats.hist_abs.counts)
            assert torch.equal(merged.hist_ratio.counts, layer.stats.hist_ratio.counts)
            assert merged.to_dict() == layer.stats.to_dict()
