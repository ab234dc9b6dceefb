"""magnn.train.validation: every config check and option type refuses a bad value before any
work, with one line on stderr through the command line (and no traceback)."""
from __future__ import annotations

import pytest
import torch

from magnn.core.errors import UserError
from magnn.train import TrainConfig, train, training_settings
from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: F401  (fixtures)


@pytest.mark.parametrize("command, option, value", [
    ("train", "--epochs", "0"), ("train", "--epochs", "-3"), ("train", "--lr", "0"), ("train", "--lr", "-1e-3"),
    ("train", "--lr", "nan"), ("train", "--batch-size", "0"), ("train", "--layers", "0"), ("train", "--hidden", "0"),
    ("train", "--heads", "0"), ("train", "--max-graphs", "0"), ("train", "--seed", "-1"), ("train", "--fanouts", "5,0"),
    ("train", "--fanouts", "5,x"), ("detect", "--max-batches", "0"), ("detect", "--threshold", "0"),
    ("study", "--epochs", "0"), ("study", "--max-graphs", "0"), ("study", "--ablation-fraction", "0"),
    ("study", "--attack-steps", "-1"), ("study", "--threshold", "-5"),
])
def test_out_of_range_numbers_are_refused(capsys, tmp_path, command, option, value):
    extra = {"train": TINY + ["--data-root", tmp_path / "data"], "detect": ["--ckpt", tmp_path / "none.pt"],
             "study": ["--quick", "--dataset", "zinc", "--data-root", tmp_path / "data"]}[command]
    code, err = run(capsys, command, *extra, "--out", tmp_path / "out", f"{option}={value}")
    line = error_line(err, command, code)
    assert f"argument {option}" in line and "--help" in line
    assert not (tmp_path / "out").exists()


def test_hidden_must_divide_by_heads_before_any_work(capsys, tmp_path):
    code, err = run(capsys, "train", "--dataset", "zinc", "--heads", "3", "--out", tmp_path / "out")
    assert "--hidden 64 must be a multiple of --heads 3" in error_line(err, "train", code)  # 64: the quick preset's
    assert not (tmp_path / "out").exists()


def test_epochs_zero_does_not_report_an_old_run(capsys, run_copy):
    before = (run_copy / "metrics.json").read_bytes()
    code, err = run(capsys, "train", *TINY, "--epochs", "0", "--out", run_copy)
    assert "--epochs" in error_line(err, "train", code)
    assert (run_copy / "metrics.json").read_bytes() == before


def test_library_keeps_zero_and_refuses_it():
    config = TrainConfig(dataset="zinc", model="gt", lr=0.0, batch_size=0)
    settings = training_settings(config)  # 0 is not replaced by the preset's value...
    assert settings["lr"] == 0.0 and settings["batch_size"] == 0
    with pytest.raises(UserError, match="--batch-size"):  # ...and train() refuses it before any work
        train(config)
    with pytest.raises(UserError, match="--epochs"):
        train(TrainConfig(dataset="zinc", epochs=0))
    with pytest.raises(UserError, match="dropout"):
        train(TrainConfig(dataset="zinc", overrides={"dropout": 1.0}))
    from magnn.analysis.detect import detect

    with pytest.raises(ValueError, match="max_batches"):
        detect(torch.nn.Identity(), [], max_batches=0)


def test_data_root_and_out_that_are_files(capsys, tmp_path, trained):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for argv, option in (
        (["train", *TINY, "--data-root", a_file, "--out", tmp_path / "o"], "--data-root"),
        (["train", *TINY, "--out", a_file], "--out"),
        (["train", *TINY, "--out", a_file / "sub"], "--out"),
        (["detect", "--ckpt", trained / "best.pt", "--out", a_file], "--out"),
        (["detect", "--ckpt", trained / "best.pt", "--data-root", a_file], "--data-root"),
        (["study", "--quick", "--out", a_file], "--out"),
        (["study", "--quick", "--data-root", a_file, "--out", tmp_path / "s"], "--data-root"),
    ):
        code, err = run(capsys, *argv)
        line = error_line(err, argv[0], code)
        assert option in line and str(a_file) in line, line
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_device_without_cuda(capsys, tmp_path, trained):
    for argv in (["train", *TINY, "--out", tmp_path / "o"], ["detect", "--ckpt", trained / "best.pt"],
                 ["study", "--quick", "--out", tmp_path / "s"]):
        code, err = run(capsys, *argv, "--device", "cuda")
        assert "--device cuda: no CUDA device" in error_line(err, argv[0], code)
    code, err = run(capsys, "train", *TINY, "--out", tmp_path / "o", "--device", "banana")
    assert "--device 'banana'" in error_line(err, "train", code)
