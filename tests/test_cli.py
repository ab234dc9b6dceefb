"""magnn.cli: options parsed into the typed configs, and `--config FILE` re-running a recorded run."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import torch

from magnn.cli import build_parser, main, study_config, train_config
from magnn.core.errors import UserError
from magnn.study import DetectConfig, StudyConfig, run_detect, run_study
from magnn.train import TrainConfig, build, load_checkpoint, train
from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: F401  (fixtures)

SHORT = [*TINY, "--layers", "2", "--epochs", "2", "--ma-probe-graphs", "4"]


def _without_timings(metrics: dict) -> dict:
    metrics = json.loads(json.dumps(metrics))
    metrics["config"].pop("out")
    for row in metrics["history"]:
        row.pop("seconds")
    return metrics


def test_train_config_file_reruns_the_recorded_run_to_the_same_numbers(tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["train", *SHORT, "--lr", "3e-3", "--out", str(first)]) == 0
    recorded = json.loads((first / "metrics.json").read_text())
    assert main(["train", "--config", str(first / "metrics.json"), "--out", str(again)]) == 0
    rerun = json.loads((again / "metrics.json").read_text())
    assert rerun["config"]["out"] == str(again)
    assert _without_timings(rerun) == _without_timings(recorded)  # every loss, metric, lr and MA curve


def test_config_file_settings_are_defaults_that_options_change(tmp_path):
    recorded = TrainConfig(dataset="zinc", model="san", ebt="slot", epochs=7, lr=2e-3, preset="paper",
                           overrides={"num_layers": 3, "ebt_compat": "gnn-mas"}, schedule="cosine", warmup_epochs=2)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": json.loads(json.dumps(recorded.__dict__))}))
    parser = build_parser()
    parsed = parser.parse_args(["train", "--config", str(path)])
    from magnn.cli.common import with_recorded_defaults

    assert train_config(with_recorded_defaults(build_parser(), ["train", "--config", str(path)], parsed)) == recorded
    argv = ["train", "--config", str(path), "--epochs", "9", "--layers", "4"]
    changed = train_config(with_recorded_defaults(build_parser(), argv, build_parser().parse_args(argv)))
    assert changed.epochs == 9 and changed.overrides == {"num_layers": 4, "ebt_compat": "gnn-mas"}
    assert (changed.model, changed.lr, changed.schedule) == ("san", 2e-3, "cosine")


def test_study_config_file_gives_back_the_recorded_config(tmp_path):
    recorded = StudyConfig.from_options(dataset="ogbn-proteins", model="graphit", quick=True, epochs=3,
                                        architecture="magnn", ebt_compat="gnn-mas", threshold=50.0,
                                        fig4_base="no_ebt", out=str(tmp_path / "study"), fanouts=(2, 3),
                                        mechanics_threshold=300.0)
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"findings": [], "config": json.loads(json.dumps(recorded.to_dict()))}))
    from magnn.cli.common import with_recorded_defaults

    argv = ["study", "--config", str(path)]
    assert study_config(with_recorded_defaults(build_parser(), argv, build_parser().parse_args(argv))) == recorded
    argv += ["--out", str(tmp_path / "other"), "--threshold", "70"]
    changed = study_config(with_recorded_defaults(build_parser(), argv, build_parser().parse_args(argv)))
    assert (changed.out, changed.threshold, changed.train) == (str(tmp_path / "other"), 70.0, recorded.train)


@pytest.mark.parametrize("content, message", [
    (None, "no file at"),
    ("not json", "not readable JSON"),
    ('{"config": [1, 2]}', "holds no config"),
    ('{"config": {"dataset": "zinc", "colour": "red"}}', "not a magnn train config"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_layers_option_sets_the_model_depth(trained):
    checkpoint = load_checkpoint(trained / "best.pt")
    assert checkpoint.config.overrides["num_layers"] == 2
    from magnn.data import ZINC_INFO

    model = build(checkpoint.config, ZINC_INFO)
    assert len(model.layers) == 2
    checkpoint.restore_model(model)  # the saved weights are those of a 2-layer model
    layer_ids = {key.split(".")[1] for key in checkpoint.state["model"] if key.startswith("layers.")}
    assert layer_ids == {"0", "1"}


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
    report = run_study(StudyConfig.from_options(dataset="zinc", quick=True, out=str(tmp_path / "study"), data_root=str(data_root),
                                   ckpt_no_ebt=str(trained / "best.pt"), ckpt_ebt=str(tmp_path / "ebt" / "best.pt"),
                                   max_graphs=8, attack_steps=1, backend="torch"))
    assert set(report["detection"]) == {"base no_ebt", "trained no_ebt", "base ebt_edge", "trained ebt_edge"}
    assert json.loads((tmp_path / "study" / "report.json").read_text())["findings"] == report["findings"]
    assert "| 0.0316 |" in (tmp_path / "study" / "report.md").read_text()  # Table 2 row per attacked sigma


def _on_cuda(config):
    """`config` with --device cuda (a StudyConfig's device is its training template's)."""
    if isinstance(config, StudyConfig):
        return dataclasses.replace(config, train=dataclasses.replace(config.train, device="cuda"))
    return dataclasses.replace(config, device="cuda")


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
        (["study", "--quick", "--out", a_file], StudyConfig.from_options(quick=True, out=str(a_file)), run_study),
        (["study", "--quick", "--ckpt-no-ebt", trained / "best.pt", "--out", out],
         StudyConfig.from_options(quick=True, ckpt_no_ebt=str(trained / "best.pt"), out=str(out)), run_study),
    ]
    if not torch.cuda.is_available():
        cases += [([command, *argv, "--device", "cuda"], _on_cuda(config), entry)
                  for command, argv, config, entry in (
                      ("train", ["--out", out], TrainConfig(preset="quick", out=str(out)), train),
                      ("detect", ["--ckpt", trained / "best.pt"], DetectConfig(ckpt=str(trained / "best.pt")), run_detect),
                      ("study", ["--out", out], StudyConfig.from_options(out=str(out)), run_study))]
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
                           (StudyConfig.from_options(ebt=None, out=str(tmp_path / "s")), "--ebt None is not one of edge, slot"),
                           (StudyConfig.from_options(attack_steps=-1, out=str(tmp_path / "s")), "--attack-steps"),
                           (StudyConfig.from_options(mechanics_threshold=-1.0, out=str(tmp_path / "s")),
                            "--mechanics-threshold"),
                           (DetectConfig(ckpt="x.pt", split="valid"), "--split 'valid' is not one of train, val, test"),
                           (DetectConfig(ckpt="x.pt", threshold=0.0), "--threshold")):
        with pytest.raises(UserError, match=re.escape(option)):
            config.validate()
    assert StudyConfig.from_options(out=str(tmp_path / "s")).validate().out == str(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_options_parse_into_the_config_fields():
    parser = build_parser()
    parsed = train_config(parser.parse_args(["train", "--ebt", "slot", "--layers", "3", "--fanouts", "2,4"]))
    assert parsed.ebt == "slot" and parsed.overrides == {"num_layers": 3} and parsed.fanouts == (2, 4)
    assert train_config(parser.parse_args(["train"])).preset == "quick"  # the command line's one own default
    studied = study_config(parser.parse_args(["study", "--dataset", "zinc", "--model", "san", "--seed", "7",
                                              "--ebt-compat", "gnn-mas", "--threshold", "50"]))
    assert (studied.train.dataset, studied.train.model, studied.train.seed) == ("zinc", "san", 7)
    assert studied.train.overrides == {"ebt_compat": "gnn-mas"} and studied.threshold == 50.0
    assert studied.train.epochs is None  # the profile's


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
