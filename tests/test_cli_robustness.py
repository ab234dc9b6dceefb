"""The command line on bad options and bad files: one line on stderr, an exit code, no traceback.

Every case runs `magnn.cli.main` in-process (one subprocess checks `python -m magnn`).
Training runs are tiny: 8 bundled ZINC graphs, 1-2 layers of width 8, 1-3 epochs.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from magnn.cli import main
from magnn.core.errors import UserError
from magnn.study import DetectConfig, StudyConfig, run_detect, run_study
from magnn.train import TrainConfig, build, load_checkpoint, train, training_settings

TINY = ["--dataset", "zinc", "--max-graphs", "8", "--hidden", "8", "--heads", "2", "--batch-size", "8",
        "--backend", "torch"]


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, command: str, code: int, expected: int = 2) -> str:
    """The one error line of stderr (progress bars and log lines may precede it), checked for format."""
    assert "Traceback" not in err, err
    assert code == expected, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"magnn {command}: error: "), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # empty: ZINC falls back to the bundled subset


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A finished 1-epoch run with --layers 2 (the quick preset alone would give 4)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--layers", "2", "--epochs", "1", "--out", str(out), "--data-root", str(data_root)]) == 0
    return out


@pytest.fixture()
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


# -- item 10: --layers -----------------------------------------------------------------

def test_layers_option_sets_the_model_depth(trained):
    checkpoint = load_checkpoint(trained / "best.pt")
    assert checkpoint.config.overrides["num_layers"] == 2
    from magnn.data import ZINC_INFO

    model = build(checkpoint.config, ZINC_INFO)
    assert len(model.layers) == 2
    checkpoint.restore_model(model)  # the saved weights are those of a 2-layer model
    layer_ids = {key.split(".")[1] for key in checkpoint.state["model"] if key.startswith("layers.")}
    assert layer_ids == {"0", "1"}


# -- item 11: numeric options ---------------------------------------------------------------

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


# -- item 12: --resume with other settings --------------------------------------------------

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
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "2", "--resume", "--out", run_copy,
                    "--data-root", data_root)
    assert "already trained 2 epoch(s)" in error_line(err, "train", code)


# -- item 13: divergence --------------------------------------------------------------------

def test_diverging_run_stops_with_a_message_and_keeps_its_history(capsys, tmp_path, data_root):
    out = tmp_path / "diverged"
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--batch-size", "4", "--epochs", "3", "--lr", "1e12",
                    "--out", out, "--data-root", data_root)
    line = error_line(err, "train", code, expected=1)
    metrics = json.loads((out / "metrics.json").read_text())
    stopped = metrics["stopped"]
    assert stopped["reason"] == "diverged" and len(metrics["history"]) == stopped["epoch"]
    assert f"diverged at epoch {stopped['epoch'] + 1}" in line and "lower the learning rate" in line
    assert metrics["test"] is None and metrics["config"]["lr"] == 1e12


# -- item 14: bad checkpoints ------------------------------------------------------------------

def _bad_checkpoints(folder, good_path):
    """name -> (path, words the message must contain)."""
    good = torch.load(good_path, weights_only=False)
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
    write("unknown_config_key", {**good, "config": {**good["config"], "layer_count": 3}}, "layer_count")
    write("bad_config_value", {**good, "config": {**good["config"], "dataset": "cora"}}, "--dataset 'cora'")
    write("config_not_dict", {**good, "config": "zinc"}, "'config' is a str")
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
    good = torch.load(trained / "best.pt", weights_only=False)
    config = {**good["config"], "overrides": {**good["config"]["overrides"], "num_layers": 3}}
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


# -- item 15: folders, devices, splits, raw files ------------------------------------------------

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


def _tiny_tox21_cache(tmp_path):
    """A valid TOX21 cache, built from 20 molecules, placed where the bundled CSV's cache would be."""
    import pandas as pd

    from magnn.data import TOX21
    from magnn.data._files import bundled_path, sha256_file

    csv = tmp_path / "small.csv"
    pd.read_csv(bundled_path("tox21.csv.gz")).iloc[:20].to_csv(csv, index=False)
    small = TOX21(root=tmp_path / "small_root", csv_path=csv)
    root = tmp_path / "root"
    target = root / "tox21" / "processed" / f"v1-{sha256_file(bundled_path('tox21.csv.gz'))[:16]}"
    shutil.copytree(small.processed_dir, target)
    return root, target / "scaffold_split.pt", len(small)


def test_tox21_cache_with_bad_split_is_refused(capsys, tmp_path):
    root, split_path, count = _tiny_tox21_cache(tmp_path)
    split = torch.load(split_path)
    argv = ["train", "--dataset", "tox21", "--max-graphs", "2", "--data-root", root, "--out", tmp_path / "o"]
    for name, bad, words in (
        ("out of range", {**split, "test": torch.cat([split["test"], torch.tensor([count + 5])])}, "outside [0, 20)"),
        ("overlap", {**split, "val": torch.cat([split["val"], split["train"][:1]])}, "splits overlap"),
        ("missing key", {"train": split["train"]}, "not train/val/test"),
    ):
        torch.save(bad, split_path)
        code, err = run(capsys, *argv)
        line = error_line(err, "train", code)
        assert words in line and str(split_path.parent) in line and "delete" in line, (name, line)


def test_zinc_raw_garbage_is_a_clear_error(capsys, tmp_path):
    from test_data import _write_benchmarking_gnns_raw

    from magnn.data import load_zinc

    bundled = load_zinc(source="bundled")
    source = {split: [bundled[split][i] for i in range(4)] for split in ("train", "val", "test")}

    def fresh(name):
        root = tmp_path / name
        _write_benchmarking_gnns_raw(root / "ZINC" / "raw", source)
        return root, root / "ZINC" / "raw"

    cases = []
    root, raw = fresh("pickle_text")
    (raw / "val.pickle").write_text("these are not molecules\n")
    cases.append((root, ["cannot be processed", str(raw)]))
    root, raw = fresh("index_words")
    (raw / "train.index").write_text("zero,two\n")
    cases.append((root, ["train.index", "comma-separated integers"]))
    root, raw = fresh("index_range")
    (raw / "test.index").write_text("0,99\n")
    cases.append((root, ["cannot be processed", "test.index has index 99, but test.pickle holds 4 molecules"]))
    root, raw = fresh("index_negative")
    (raw / "val.index").write_text("0,-1\n")
    cases.append((root, ["val.index", "negative"]))
    root, raw = fresh("index_no_newline")
    (raw / "train.index").write_text("0,2")  # PyG would silently read "0," -> a wrong split
    cases.append((root, ["train.index", "newline"]))
    root, raw = fresh("processed_garbage")
    load_zinc(root=root, source="official")
    (root / "ZINC" / "subset" / "processed" / "val.pt").write_bytes(b"garbage")
    cases.append((root, ["processed ZINC cache", "delete"]))
    for root, words in cases:
        code, err = run(capsys, "train", *TINY, "--data-root", root, "--out", tmp_path / "o")
        line = error_line(err, "train", code)
        assert all(word in line for word in words), (root.name, line)


def test_proteins_overlapping_or_out_of_range_split(capsys, tmp_path):
    from magnn.data import write_ogb_proteins_raw

    write_ogb_proteins_raw(tmp_path, num_nodes=60, num_edges_undirected=200, seed=3)
    split_dir = tmp_path / "ogbn_proteins" / "split" / "species"
    with gzip.open(split_dir / "train.csv.gz", "rt") as f:
        train_rows = f.read().splitlines()
    with gzip.open(split_dir / "valid.csv.gz", "rt") as f:
        valid_rows = f.read().splitlines()
    with gzip.open(split_dir / "valid.csv.gz", "wt") as f:
        f.write("\n".join(valid_rows + train_rows[:2]) + "\n")
    argv = ["train", "--dataset", "ogbn-proteins", "--data-root", tmp_path, "--out", tmp_path / "o"]
    code, err = run(capsys, *argv)
    assert "share 2 node(s)" in error_line(err, "train", code)
    with gzip.open(split_dir / "valid.csv.gz", "wt") as f:
        f.write("\n".join(valid_rows + ["600"]) + "\n")
    code, err = run(capsys, *argv)
    assert "outside [0, num_nodes)" in error_line(err, "train", code)


# -- typed configs: the library takes them, the CLI only parses into them ---------------------------

TINY_CONFIG = dict(dataset="zinc", max_graphs=8, batch_size=8, preset="quick", backend="torch",
                   overrides={"num_layers": 2, "hidden": 8, "heads": 2})


@pytest.fixture()
def no_argparse(monkeypatch):
    """Any argument parser built while this is active fails the test."""
    import argparse

    def refuse(*args, **kwargs):
        raise AssertionError("the library built an argparse parser")

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", refuse)


def test_entry_points_run_from_python_without_argparse(tmp_path, trained, data_root, no_argparse):
    metrics = train(TrainConfig(**TINY_CONFIG, ebt="edge", epochs=1, out=str(tmp_path / "ebt"), data_root=str(data_root)))
    assert len(metrics["history"]) == 1 and metrics["config"]["ebt"] == "edge"
    result = run_detect(DetectConfig(ckpt=str(tmp_path / "ebt" / "best.pt"), max_batches=2, out=str(tmp_path / "det")))
    assert result.out == tmp_path / "det" and json.loads((result.out / "detect.json").read_text())["layers"]
    assert len(result.summary()) == 2 and all(line.startswith("layers.") for line in result.summary())
    report = run_study(StudyConfig(dataset="zinc", quick=True, out=str(tmp_path / "study"), data_root=str(data_root),
                                   ckpt_no_ebt=str(trained / "best.pt"), ckpt_ebt=str(tmp_path / "ebt" / "best.pt"),
                                   max_graphs=8, attack_steps=1, backend="torch"))
    assert set(report["detection"]) == {"base no_ebt", "trained no_ebt", "base ebt_edge", "trained ebt_edge"}
    assert json.loads((tmp_path / "study" / "report.json").read_text())["findings"] == report["findings"]
    assert "| 0.0316 |" in (tmp_path / "study" / "report.md").read_text()  # Table 2 row per attacked sigma


def test_a_bad_config_raises_the_message_the_cli_prints(capsys, tmp_path, trained):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = tmp_path / "out"
    cases = [  # (argv, the same settings as a config, its entry point)
        (["train", "--dataset", "zinc", "--heads", "3", "--out", out],
         TrainConfig(dataset="zinc", preset="quick", overrides={"heads": 3}, out=str(out)), train),
        (["train", "--dataset", "zinc", "--sampled", "--out", out],
         TrainConfig(dataset="zinc", preset="quick", sampled=True, out=str(out)), train),
        (["train", "--out", a_file / "sub"], TrainConfig(preset="quick", out=str(a_file / "sub")), train),
        (["detect", "--ckpt", trained / "best.pt", "--data-root", a_file],
         DetectConfig(ckpt=str(trained / "best.pt"), data_root=str(a_file)), run_detect),
        (["detect", "--ckpt", tmp_path / "none.pt", "--out", out], DetectConfig(ckpt=str(tmp_path / "none.pt"), out=str(out)),
         run_detect),
        (["study", "--quick", "--out", a_file], StudyConfig(quick=True, out=str(a_file)), run_study),
        (["study", "--quick", "--ckpt-no-ebt", trained / "best.pt", "--out", out],
         StudyConfig(quick=True, ckpt_no_ebt=str(trained / "best.pt"), out=str(out)), run_study),
    ]
    if not torch.cuda.is_available():
        cases += [([command, *argv, "--device", "cuda"], dataclasses.replace(config, device="cuda"), entry)
                  for command, argv, config, entry in (
                      ("train", ["--out", out], TrainConfig(preset="quick", out=str(out)), train),
                      ("detect", ["--ckpt", trained / "best.pt"], DetectConfig(ckpt=str(trained / "best.pt")), run_detect),
                      ("study", ["--out", out], StudyConfig(out=str(out)), run_study))]
    for argv, config, entry in cases:
        code, err = run(capsys, *argv)
        line = error_line(err, argv[0], code)
        with pytest.raises(UserError) as raised:
            entry(config)
        assert line == f"magnn {argv[0]}: error: {raised.value}", (argv, line)
    assert not out.exists()  # every check ran before any output was written


def test_validate_checks_without_touching_the_disk(tmp_path):
    for config, option in ((TrainConfig(dataset="cora", out=str(tmp_path / "t")), "--dataset 'cora'"),
                           (TrainConfig(backend="gpu", out=str(tmp_path / "t")), "--backend 'gpu'"),
                           (StudyConfig(ebt=None, out=str(tmp_path / "s")), "--ebt None is not one of edge, slot"),
                           (StudyConfig(attack_steps=-1, out=str(tmp_path / "s")), "--attack-steps"),
                           (DetectConfig(ckpt="x.pt", split="valid"), "--split 'valid' is not one of train, val, test"),
                           (DetectConfig(ckpt="x.pt", threshold=0.0), "--threshold")):
        with pytest.raises(UserError, match=re.escape(option)):
            config.validate()
    assert StudyConfig(out=str(tmp_path / "s")).validate().out == str(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_cli_defaults_are_the_configs_defaults():
    from magnn.cli import build_parser, detect_config, study_config, train_config

    parser = build_parser()
    assert study_config(parser.parse_args(["study"])) == StudyConfig()
    assert detect_config(parser.parse_args(["detect", "--ckpt", "x.pt"])) == DetectConfig(ckpt="x.pt")
    assert train_config(parser.parse_args(["train"])) == TrainConfig(preset="quick")  # the CLI's one own default
    parsed = train_config(parser.parse_args(["train", "--ebt", "slot", "--layers", "3", "--fanouts", "2,4"]))
    assert parsed.ebt == "slot" and parsed.overrides == {"num_layers": 3} and parsed.fanouts == (2, 4)


def test_train_takes_the_proteins_architecture_as_study_does():
    from magnn.cli import build_parser, train_config
    from magnn.models.presets import proteins_architecture

    parser = build_parser()
    for model in ("gt", "graphit", "san"):
        for name in ("paper", "magnn"):
            argv = ["train", "--dataset", "ogbn-proteins", "--model", model, "--architecture", name]
            assert train_config(parser.parse_args(argv)).overrides == proteins_architecture(model, name)
    # explicit sizes stay the user's; without the flag the preset's paper form applies (no overrides)
    argv = ["train", "--dataset", "ogbn-proteins", "--architecture", "magnn", "--layers", "2"]
    assert train_config(parser.parse_args(argv)).overrides == {**proteins_architecture("gt", "magnn"), "num_layers": 2}
    assert train_config(parser.parse_args(["train", "--dataset", "ogbn-proteins"])).overrides == {}
    with pytest.raises(UserError, match="--architecture chooses between ogbn-proteins"):
        train_config(parser.parse_args(["train", "--dataset", "zinc", "--architecture", "paper"]))


def test_backend_names_are_the_ones_functional_dispatches():
    from magnn.core.constants import BACKEND_NAMES
    from magnn.functional import backend_choices

    assert set(BACKEND_NAMES) == set(backend_choices())


# -- item 16: python -m magnn -------------------------------------------------------------------

def test_python_dash_m_magnn_is_the_magnn_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "magnn", "train", "--epochs", "0"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "magnn train: error: argument --epochs: must be an integer >= 1, got 0 (see `magnn train --help`)"]
    done = subprocess.run([sys.executable, "-m", "magnn", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: magnn")
    assert all(command in done.stdout for command in ("info", "train", "detect", "study", "build-ext"))
