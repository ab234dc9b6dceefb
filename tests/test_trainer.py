"""magnn.train.trainer: a run that diverges stops with what to change and keeps its history."""
from __future__ import annotations

import json

from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: F401  (fixtures)


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
