"""magnn.train.checkpoint: every bad checkpoint is one error line naming the file, and --resume
refuses settings other than its checkpoint's."""
from __future__ import annotations

import json
import shutil

import torch

from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: F401  (fixtures)


def test_resume_refuses_other_hyperparameters(capsys, run_copy, data_root):
    before = (run_copy / "metrics.json").read_bytes()
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "2", "--lr", "0.1", "--resume",
                    "--out", run_copy, "--data-root", data_root)
    line = error_line(err, "train", code)
    assert "--resume" in line and "--lr 0.0007" in line and "0.1 now" in line and str(run_copy / "last.pt") in line
    code, err = run(capsys, "train", *TINY, "--epochs", "2", "--resume", "--out", run_copy, "--data-root", data_root)
    line = error_line(err, "train", code)
    assert "--layers 2 in the checkpoint vs 4 now" in line and "--lr" not in line.split(". Resume")[0]
    assert (run_copy / "metrics.json").read_bytes() == before


def test_resume_with_more_epochs_continues_and_records_it(capsys, run_copy, data_root):
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "2", "--resume", "--out", run_copy,
                    "--data-root", data_root)
    assert code == 0, err
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]
    assert metrics["config"]["epochs"] == 2 and metrics["resumed_at_epoch"] == 1
    # a finished run resumed with the same --epochs re-evaluates it and rewrites metrics.json
    (run_copy / "metrics.json").unlink()
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "2", "--resume", "--out", run_copy,
                    "--data-root", data_root)
    assert code == 0, err
    again = json.loads((run_copy / "metrics.json").read_text())
    assert again["history"] == metrics["history"] and again["test"] == metrics["test"]
    assert again["test_final"] == metrics["test_final"] and again["resumed_at_epoch"] == 2
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "1", "--resume", "--out", run_copy,
                    "--data-root", data_root)
    line = error_line(err, "train", code)
    assert "already trained 2 epoch(s)" in line and "--epochs 2 to re-evaluate" in line


def _bad_checkpoints(folder, good_path):
    """name -> (path, words the message must contain)."""
    good = torch.load(good_path, weights_only=True)
    recorded = json.loads(good["config"])
    blob = good_path.read_bytes()
    cases = {}

    def write(name, payload, *words):
        path = folder / f"{name}.pt"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            torch.save(payload, path)
        cases[name] = (path, words)

    write("empty", b"", "empty")
    for cut in (1, 64, len(blob) // 3, len(blob) // 2, len(blob) - 1):
        write(f"truncated_{cut}", blob[:cut], "cannot be read", "truncated")
    write("text", b"epoch,loss\n1,0.5\n", "cannot be read")
    write("foreign_dict", {"state_dict": good["model"], "hyper_parameters": {}}, "lacks 'model'")
    write("bare_state_dict", good["model"], "bare state_dict")
    write("a_list", [1, 2, 3], "holds a list")
    write("unknown_config_key", {**good, "config": {**recorded, "layer_count": 3}}, "layer_count")
    write("bad_config_value", {**good, "config": json.dumps({**recorded, "dataset": "cora"})}, "--dataset 'cora'")
    write("config_not_dict", {**good, "config": 7}, "'config' is a int")
    write("config_not_json", {**good, "config": "zinc"}, "'config' is not JSON")
    write("weights_not_tensors", {**good, "model": {"w": [1.0]}}, "not a state_dict of tensors")
    folder_case = folder / "a_folder"
    folder_case.mkdir()
    cases["a_folder"] = (folder_case, ("is a folder",))
    cases["missing"] = (folder / "nope.pt", ("no checkpoint at",))
    return cases


def test_detect_names_every_bad_checkpoint(capsys, tmp_path, trained):
    for name, (path, words) in _bad_checkpoints(tmp_path, trained / "best.pt").items():
        code, err = run(capsys, "detect", "--ckpt", path, "--out", tmp_path / "det")
        line = error_line(err, "detect", code)
        assert str(path) in line and "--ckpt" in line, name
        for word in words:
            assert word in line, (name, line)
    assert not (tmp_path / "det").exists()


def test_checkpoint_weights_that_do_not_fit_their_config(capsys, tmp_path, trained, data_root):
    good = torch.load(trained / "best.pt", weights_only=True)
    recorded = json.loads(good["config"])
    config = {**recorded, "overrides": {**recorded["overrides"], "num_layers": 3}}
    path = tmp_path / "altered.pt"
    torch.save({**good, "config": config}, path)
    code, err = run(capsys, "detect", "--ckpt", path, "--data-root", data_root, "--out", tmp_path / "det")
    line = error_line(err, "detect", code)
    assert str(path) in line and "do not fit" in line and "missing" in line


def test_study_and_resume_name_bad_checkpoints(capsys, tmp_path, trained):
    cases = _bad_checkpoints(tmp_path, trained / "best.pt")
    for name in ("empty", "truncated_64", "text", "foreign_dict", "unknown_config_key"):
        path, words = cases[name]
        code, err = run(capsys, "study", "--dataset", "zinc", "--quick", "--ckpt-no-ebt", path, "--out", tmp_path / "s")
        line = error_line(err, "study", code)
        assert f"--ckpt-no-ebt {path}" in line and all(word in line for word in words), line
    # a checkpoint of the wrong kind for its option
    code, err = run(capsys, "study", "--dataset", "zinc", "--quick", "--ckpt-ebt", trained / "best.pt",
                    "--out", tmp_path / "s")
    assert "trained with no EBT" in error_line(err, "study", code)
    code, err = run(capsys, "study", "--dataset", "tox21", "--quick", "--ckpt-no-ebt", trained / "best.pt",
                    "--out", tmp_path / "s")
    assert "--dataset zinc (the checkpoint) vs tox21" in error_line(err, "study", code)

    for name in ("empty", "truncated_64", "text", "foreign_dict", "unknown_config_key"):
        out = tmp_path / f"resume_{name}"
        out.mkdir()
        shutil.copy(cases[name][0], out / "last.pt")
        code, err = run(capsys, "train", *TINY, "--epochs", "2", "--resume", "--out", out)
        line = error_line(err, "train", code)
        assert f"--resume {out / 'last.pt'}" in line, line
    out = tmp_path / "resume_best_only"
    out.mkdir()
    shutil.copy(trained / "best.pt", out / "last.pt")
    code, err = run(capsys, "train", *TINY, "--epochs", "2", "--resume", "--out", out)
    assert "--resume needs DIR/last.pt" in error_line(err, "train", code)
