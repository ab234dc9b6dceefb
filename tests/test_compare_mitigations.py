"""`magnn study --compare-mitigations` (magnn.study.compare): every mitigation trained on the same data
and seeds, each measured against its own untrained base, tabulated with intervals over seeds."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.cli_helpers import error_line, run

MITIGATIONS = ("none", "ebt-edge", "ebt-slot", "sink", "gate")
TAGS = ("no_ebt", "ebt_edge", "ebt_slot", "sink", "gate")


def _peak_q(detection: dict) -> float:
    return max(layer["edge_ratio_robust"]["q99.9"]["value"] for layer in detection["layers"])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    from magnn.study import StudyConfig
    from magnn.study.compare import run_comparison

    out = tmp_path_factory.mktemp("compare") / "out"
    config = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=1, max_graphs=8, attack_steps=1,
                                      backend="torch", overrides={"num_layers": 1, "hidden": 8, "heads": 2},
                                      out=str(out), seeds=2, data_root=str(out.parent / "data"))
    return out, run_comparison(config)


@pytest.mark.slow
def test_comparison_tabulates_each_mitigation_against_its_own_base(comparison):
    out, summary = comparison
    assert json.loads((out / "compare.json").read_text())["seeds"] == summary["seeds"] == [41, 42]
    rows = summary["rows"]
    assert [row["mitigation"] for row in rows] == list(MITIGATIONS) and [row["tag"] for row in rows] == list(TAGS)
    for seed in summary["seeds"]:
        folder = out / f"seed_{seed}"
        measures = json.loads((folder / "measures.json").read_text())
        attack = json.loads((folder / "stages" / "attack.json").read_text())["attack"]
        for row in rows:
            tag, key = row["tag"], str(seed)
            # growth = trained / base of the model's own base, from the detections it ran
            base, trained = (_peak_q(measures["detection"][f"{kind} {tag}"]) for kind in ("base", "trained"))
            assert row["base_q99.9"]["per_seed"][key] == pytest.approx(base)
            assert row["trained_q99.9"]["per_seed"][key] == pytest.approx(trained)
            assert row["growth"]["per_seed"][key] == pytest.approx(trained / base)
            low, high = row["growth_bootstrap"][key]
            assert low <= row["growth"]["per_seed"][key] <= high
            # same data and seed for every mitigation; each its own mitigation
            metrics = json.loads((folder / tag / "metrics.json").read_text())
            assert (metrics["config"]["seed"], metrics["config"]["max_graphs"]) == (seed, 8)
            assert row["task_loss"]["per_seed"][key] == pytest.approx(metrics["test_final"]["loss"])
            gain = [run["gain"] for run in attack[tag] if run["sigma"] == 0.1]
            assert row["attack_gain"]["per_seed"][key] == pytest.approx(gain[0])
        bases = {row["tag"]: row["base_q99.9"]["per_seed"][str(seed)] for row in rows}
        assert bases["ebt_edge"] != bases["no_ebt"]  # EBT's N(0, 1) bias: a base of its own


@pytest.mark.slow
def test_comparison_numbers_and_intervals(comparison):
    out, summary = comparison
    by_name = {row["mitigation"]: row for row in summary["rows"]}
    for name in ("none", "ebt-edge", "gate"):  # neither slot nor sink: no attention leaves the edges
        assert by_name[name]["sink_mass"]["per_seed"] == {"41": 0.0, "42": 0.0}
    for name in ("ebt-slot", "sink"):
        assert all(0.0 < v < 1.0 for v in by_name[name]["sink_mass"]["per_seed"].values())
    for row in summary["rows"]:
        for key in ("growth", "sink_mass", "task_loss", "attack_gain"):
            value = row[key]
            seeds = list(value["per_seed"].values())
            assert value["n"] == 2 and value["mean"] == pytest.approx(sum(seeds) / 2)
            assert value["low"] <= value["mean"] <= value["high"] or math.isclose(value["low"], value["high"])
    table = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 5 and [line.split(" | ")[0][2:] for line in table[1:]] == list(MITIGATIONS)
    assert (out / summary["figures"]["compare"]).is_file()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "REPORT.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9.]+)`", doc))
    for key in list(summary) + list(summary["rows"][0]):  # compare.json's keys, each in docs/REPORT.md
        assert key in documented, key


def test_compare_mitigations_refuses_a_mitigation_or_the_grid(capsys, tmp_path):
    for extra, says in ((["--dataset", "zinc", "--mitigation", "sink"], "trains every mitigation itself"),
                        (["--dataset", "all"], "compares on one dataset and model")):
        code, err = run(capsys, "study", "--compare-mitigations", "--model", "gt", "--quick", "--out", tmp_path / "o",
                        *extra)
        line = error_line(err, "study", code)
        assert "--compare-mitigations" in line and says in line, line
    assert not (tmp_path / "o").exists()
