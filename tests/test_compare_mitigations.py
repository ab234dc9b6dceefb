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
    from magnn.study.compare import run_comparison

    out = tmp_path_factory.mktemp("compare") / "out"
    config = _config(out, mechanics_threshold=MECHANICS_THRESHOLD)
    return out, run_comparison(config)


MECHANICS_THRESHOLD = 3.0  # low: the 1-epoch models' entries above it are edited (the detection keeps 1000)


def _config(out: Path, **options):
    from magnn.study import StudyConfig

    return StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=1, max_graphs=8, attack_steps=1,
                                    backend="torch", overrides={"num_layers": 1, "hidden": 8, "heads": 2},
                                    out=str(out), seeds=2, data_root=str(out.parent / "data"), **options)


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
            run = next(run for run in attack[tag] if run["sigma"] == 0.1)
            # a gain is a measurement only where the random noise moved the loss (magnn.analysis.attack)
            expected = run["gain"] if run["measurable"] else None
            assert row["attack_gain"]["per_seed"][key] == (pytest.approx(expected) if run["measurable"] else None)
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
            seeds = [v for v in value["per_seed"].values() if v is not None]
            assert value["n"] == len(seeds) and (key == "attack_gain" or len(seeds) == 2)
            if key == "growth":  # a ratio: geometric mean, interval on the log scale, above 0
                assert value["scale"] == "log" and value["mean"] == pytest.approx(math.sqrt(seeds[0] * seeds[1]))
                assert 0 < value["low"] <= value["mean"] <= value["high"]
            elif len(seeds) == 2:
                assert value["mean"] == pytest.approx(sum(seeds) / 2)
                assert value["low"] <= value["mean"] <= value["high"] or math.isclose(value["low"], value["high"])
    table = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 2 * (1 + 5)  # growth, sinks, loss, attack; then the mechanics
    for first in (1, 7):
        assert [line.split(" | ")[0][2:] for line in table[first:first + 5]] == list(MITIGATIONS)
    assert "MA entries edited" in table[6] and "int8 loss change" in table[6]
    for name in ("compare", "mechanics"):
        assert (out / summary["figures"][name]).is_file()
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


@pytest.mark.slow
def test_comparison_measures_what_the_mas_do(comparison):
    """Each mitigation's mechanics numbers are the mechanics stage's (kept per seed beside the other stages),
    the intervention at --mechanics-threshold, the detection at --threshold."""
    out, summary = comparison
    assert (summary["threshold"], summary["intervention_threshold"]) == (1000.0, MECHANICS_THRESHOLD)
    for seed in summary["seeds"]:
        folder, key = out / f"seed_{seed}", str(seed)
        assert "mechanics" in json.loads((folder / "stages.json").read_text())
        mechanics = json.loads((folder / "stages" / "mechanics.json").read_text())
        assert mechanics["intervention_threshold"] == MECHANICS_THRESHOLD
        for row in summary["rows"]:
            tag = row["tag"]
            edit, int8 = mechanics["intervention"][tag], mechanics["quantisation"][tag]
            assert edit["threshold"] == MECHANICS_THRESHOLD
            every = edit["all_layers"]
            assert row["ma_entries_edited"]["per_seed"][key] == every["edited_zero"] > 0
            assert row["zero_loss_change"]["per_seed"][key] == pytest.approx(every["loss_zero"] - edit["loss_clean"])
            assert row["mean_loss_change"]["per_seed"][key] == pytest.approx(every["loss_mean"] - edit["loss_clean"])
            assert row["max_r_ec"]["per_seed"][key] == pytest.approx(max(r["max_ratio"] for r in edit["layers"]))
            assert row["max_r_ec"]["per_seed"][key] > MECHANICS_THRESHOLD
            assert row["int8_loss_change"]["per_seed"][key] == pytest.approx(int8["all_layers"]["loss"]
                                                                             - int8["loss_clean"])
            worst = max(int8["layers"], key=lambda r: r["delta_loss"])
            assert row["int8_worst_layer_loss_change"]["per_seed"][key] == pytest.approx(worst["delta_loss"])
            assert row["int8_worst_layer"][key] == worst["name"]
            onset = [r["onset_growth"] for r in mechanics["onset"][tag]["layers"] if r["onset_growth"] is not None]
            assert row["onset_growth_epoch"]["per_seed"][key] == (min(onset) if onset else None)
            # the test loss the mechanics start from is the trained model's on the same test graphs
            metrics = json.loads((folder / tag / "metrics.json").read_text())
            assert edit["loss_clean"] == pytest.approx(metrics["test_final"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_a_comparison_without_mechanics_is_reused_and_completed(comparison):
    """A seed folder whose comparison ran before the mechanics stage existed (no "mechanics" in
    stages.json): a re-run reuses its trained models and attack and adds the mechanics, same numbers."""
    import dataclasses

    from magnn.study.compare import measure_seed

    out, summary = comparison
    folder = out / "seed_41"
    record = json.loads((folder / "stages.json").read_text())
    mechanics = json.loads((folder / "stages" / "mechanics.json").read_text())
    del record["mechanics"]
    (folder / "stages.json").write_text(json.dumps(record))
    (folder / "stages" / "mechanics.json").unlink()
    kept = [folder / tag / name for tag in TAGS for name in ("last.pt", "metrics.json")] + [
        folder / "stages" / "attack.json"]
    before = {path: path.stat().st_mtime_ns for path in kept}
    config = _config(out, mechanics_threshold=MECHANICS_THRESHOLD)
    one = dataclasses.replace(config, seeds=1, out=str(folder), train=dataclasses.replace(config.train, seed=41))
    numbers = measure_seed(one)
    assert {path: path.stat().st_mtime_ns for path in kept} == before  # nothing retrained, no new attack
    assert json.loads((folder / "stages.json").read_text()) == dict(record, mechanics=mechanics_key_of(one))
    again = json.loads((folder / "stages" / "mechanics.json").read_text())
    for tag in TAGS:
        assert again["intervention"][tag]["all_layers"] == pytest.approx(mechanics["intervention"][tag]["all_layers"])
    for row in summary["rows"]:
        assert numbers[row["mitigation"]]["zero_loss_change"] == pytest.approx(row["zero_loss_change"]["per_seed"]["41"])


def mechanics_key_of(config) -> str:
    from magnn.study.compare import seed_plans
    from magnn.study.mechanics import mechanics_key

    _, keys = seed_plans(config, Path(config.out))
    return mechanics_key(config, config.profile(), keys)


def test_mechanics_numbers_say_why_nothing_was_edited():
    """A model with no entry above the intervention's threshold: the loss changes are None with a note,
    not the 0.0 of an edit that did nothing."""
    from magnn.study.compare_mechanics import mechanics_numbers

    layer = {"name": "layers.0.attention", "ma_entries": 0, "max_ratio": 987.5}
    mechanics = {"intervention": {"no_ebt": {"threshold": 1000.0, "loss_clean": 1.0, "layers": [layer],
                                             "all_layers": {"delta_zero": 0.0, "delta_mean": 0.0, "edited_zero": 0,
                                                            "edited_mean": 0}}},
                 "quantisation": {"no_ebt": {"loss_clean": 1.0, "all_layers": {"delta_loss": 0.25},
                                             "layers": [{"name": "layers.0.attention", "delta_loss": 0.125}]}},
                 "onset": {"no_ebt": {"factor": 10.0, "epochs": [1, 2], "layers": [
                     {"onset_growth": None, "onset_threshold": None}]}}}
    row = mechanics_numbers(mechanics, "no_ebt")
    assert row["zero_loss_change"] is None and row["mean_loss_change"] is None and row["ma_entries_edited"] == 0
    assert row["max_r_ec"] == 987.5 and row["int8_loss_change"] == 0.25 and row["int8_worst_layer_loss_change"] == 0.125
    assert row["onset_growth_epoch"] is None
    assert any("no entry above the threshold 1000" in note and "987.5" in note for note in row["notes"])
    assert any("onset" in note for note in row["notes"])
    not_run = mechanics_numbers({"intervention": {}, "quantisation": {}, "onset": {}, "not_run_models":
                                 {"sink": "cannot edit"}}, "sink")
    assert not_run["int8_loss_change"] is None and any("cannot edit" in note for note in not_run["notes"])


def test_mechanics_threshold_leaves_the_train_and_attack_keys_alone(tmp_path):
    """--mechanics-threshold (and its default) enters the mechanics stage's key only: a comparison run
    before it existed is reused, trained models and attack included, and only the mechanics are added."""
    import dataclasses

    from magnn.study.compare import seed_plans
    from magnn.study.mechanics import mechanics_key

    keys, mech = {}, {}
    for name, threshold in (("default", None), ("detection's", 1000.0), ("lower", 5.0)):
        config = dataclasses.replace(_config(tmp_path / "out", mechanics_threshold=threshold), seeds=1)
        plans, keys[name] = seed_plans(config, tmp_path / "out")
        mech[name] = mechanics_key(config, config.profile(), keys[name])
    for name in ("detection's", "lower"):
        assert (keys[name].train, keys[name].attack, keys[name].ablate) == \
            (keys["default"].train, keys["default"].attack, keys["default"].ablate)
    assert keys["default"].report != keys["lower"].report  # report.json records the setting
    assert mech["default"] == mech["detection's"] != mech["lower"]
    plain = dataclasses.replace(_config(tmp_path / "out"), seeds=1)
    settings = plain.to_dict()
    assert settings.pop("mechanics_threshold") is None and plain.key_settings() == settings


def test_mechanics_threshold_option(capsys, tmp_path):
    from magnn.cli import build_parser
    from magnn.cli.study import study_config

    args = build_parser().parse_args(["study", "--dataset", "zinc", "--model", "gt", "--mechanics-threshold", "50",
                                      "--threshold", "800", "--out", str(tmp_path / "o")])
    config = study_config(args)
    assert (config.threshold, config.mechanics_threshold, config.intervention_threshold) == (800.0, 50.0, 50.0)
    default = study_config(build_parser().parse_args(["study", "--dataset", "zinc", "--out", str(tmp_path / "o")]))
    assert default.mechanics_threshold is None and default.intervention_threshold == default.threshold
    code, err = run(capsys, "study", "--dataset", "zinc", "--model", "gt", "--quick", "--mechanics-threshold", "0",
                    "--out", tmp_path / "o")
    assert code != 0 and "--mechanics-threshold" in err
    assert not (tmp_path / "o").exists()


def test_an_unmeasurable_attack_gain_is_no_value_not_zero():
    """A run whose random noise left the loss unchanged reports gain 0 by rounding: the table shows none."""
    from magnn.study.compare import ATTACK_SIGMA, attack_gain_at

    runs = [{"sigma": 0.01, "gain": 0.5, "measurable": True}, {"sigma": ATTACK_SIGMA, "gain": 0.0, "measurable": False}]
    assert attack_gain_at(runs, ATTACK_SIGMA) is None
    runs[1].update(gain=0.08, measurable=True)
    assert attack_gain_at(runs, ATTACK_SIGMA) == 0.08 and attack_gain_at(runs, 0.01) == 0.5
    assert attack_gain_at([{"sigma": ATTACK_SIGMA, "gain": 0.02}], ATTACK_SIGMA) == 0.02  # recorded before the flag
    assert attack_gain_at(None, ATTACK_SIGMA) is None and attack_gain_at(runs, 1.0) is None


def test_ratio_intervals_are_taken_on_the_log_scale():
    """Ratios over seeds: geometric mean, an interval on the log scale that stays above 0 where the
    symmetric one would not; non-positive and missing values are left out."""
    from magnn.study.seeds import interval, log_interval

    values = [2.0, 40.0, 8.0]
    plain, logged = interval(values), log_interval(values + [None, 0.0, float("nan")])
    assert plain["low"] < 0 < logged["low"] and logged["n"] == 3 and logged["scale"] == "log"
    assert logged["mean"] == pytest.approx((2.0 * 40.0 * 8.0) ** (1 / 3))
    logs = interval([math.log(v) for v in values])
    assert (math.log(logged["low"]), math.log(logged["high"])) == (pytest.approx(logs["low"]), pytest.approx(logs["high"]))
    assert log_interval([5.0])["n"] == 1 and math.isnan(log_interval([5.0])["low"])
    assert log_interval([])["n"] == 0
