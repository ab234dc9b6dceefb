"""`magnn study` end to end on a small TOX21 subset, and its pieces."""
import json

import torch
from torch_geometric.data import Data

from magnn.cli import main
from magnn.study.ablation import add_meaningless_edges, new_edge_type


def test_study_quick_writes_every_file(tmp_path):
    out = tmp_path / "study"
    code = main(["study", "--dataset", "tox21", "--model", "gt", "--quick", "--out", str(out),
                 "--epochs", "1", "--max-graphs", "48", "--attack-steps", "2", "--backend", "torch"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["detection"]) == {"base no_ebt", "trained no_ebt", "base ebt_edge", "trained ebt_edge"}
    for label, detection in report["detection"].items():
        assert len(detection["layers"]) == 4, label
        assert all(layer["batches"] == 48 for layer in detection["layers"])
    assert [round(r["sigma"], 4) for r in report["attack"]["no_ebt"]] == [0.01, 0.0316, 0.1]
    assert "meaningless" in report["ablation"]["with"]
    for name in report["figures"].values():
        assert (out / name).stat().st_size > 10_000, name  # a real PNG, not an empty canvas
    text = (out / "report.md").read_text()
    assert "Table 1" in text and "Table 2" in text and "paper: no EBT" in text
    assert "REPRODUCED" in text or "NOT reproduced" in text or "INCONCLUSIVE" in text
    assert "Robust statistics of r_e" in text and report["analysed_model"]["no_ebt"] == "final"
    robust = report["detection"]["trained no_ebt"]["layers"][0]["edge_ratio_robust"]
    assert robust["batches"] == 48 and robust["q99.9"]["low"] <= robust["q99.9"]["high"]
    assert robust["q99.9"]["value"] <= robust["max"]["value"] * (1 + 2 ** -7)
    # detection from a saved checkpoint alone
    assert main(["detect", "--ckpt", str(out / "no_ebt" / "best.pt"), "--max-batches", "5", "--out", str(tmp_path / "det")]) == 0
    assert json.loads((tmp_path / "det" / "detect.json").read_text())["layers"]


def test_meaningless_edges_get_a_new_type():
    data = Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]] * 1).repeat(1, 5), num_nodes=4,
                edge_attr=torch.ones(20, 3, dtype=torch.long), edge_type=torch.ones(20, dtype=torch.long))
    augmented = add_meaningless_edges(data, 0.1, 4, torch.Generator().manual_seed(0))
    assert augmented.edge_index.shape[1] == 22
    assert torch.equal(augmented.edge_type[20:], torch.full((2,), 4))
    assert torch.equal(augmented.edge_attr[20:, 0], torch.full((2,), 4))
    assert torch.equal(augmented.edge_index[:, :20], data.edge_index)  # the real edges stay as they were
    assert data.edge_index.shape[1] == 20  # the input is not modified


def test_new_edge_type_is_unused_by_the_data():
    from magnn.data import load_dataset

    splits, info = load_dataset("zinc", max_graphs=50)
    fake = new_edge_type(info)
    assert all(int((g.edge_type == fake).sum()) == 0 for g in splits["train"])
