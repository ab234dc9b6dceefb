"""`magnn study --seeds N`: the pair N times, each finding as mean and interval over seeds."""
import json
import math

from magnn.study import StudyConfig, run_study
from magnn.cli import main
from magnn.study.seeds import aggregate


def test_two_seeds_give_each_finding_with_per_seed_values(tmp_path):
    out = tmp_path / "study"
    config = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=1, max_graphs=8, attack_steps=0,
                                      backend="torch", overrides={"num_layers": 1, "hidden": 8, "heads": 2},
                                      out=str(out), seeds=2, seed=3)
    returned = run_study(config)
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4] and returned["findings"] == summary["findings"]
    for seed in (3, 4):
        report = json.loads((out / f"seed_{seed}" / "report.json").read_text())
        assert report["config"]["train"]["seed"] == seed and report["config"]["seeds"] == 1
    growth = next(item for item in summary["findings_detail"] if item["name"].startswith("no-EBT model grows"))
    number = growth["overall"]["numbers"]["growth"]
    assert set(number["per_seed"]) == {"3", "4"} and number["n"] == 2
    values = list(number["per_seed"].values())
    assert math.isclose(number["mean"], sum(values) / 2)
    assert number["low"] <= number["mean"] <= number["high"]
    assert growth["overall"]["seeds_reproduced"].endswith("/2") and set(growth["overall"]["verdicts"]) == {"3", "4"}
    assert "REPRODUCED in" in (out / "seeds.md").read_text()
    assert main(["study", "--seeds", "0"]) != 0  # refused: at least one seed


def test_interval_over_seeds_is_student_t():
    reports = {s: {"findings_detail": [{"name": "f", "criterion": "c", "per_layer": [],
                                        "overall": {"verdict": "REPRODUCED" if s else "NOT reproduced", "x": v}}]}
               for s, v in ((0, 1.0), (1, 3.0), (2, 5.0))}
    item = aggregate(reports)["findings_detail"][0]["overall"]
    x = item["numbers"]["x"]
    assert x["mean"] == 3.0 and math.isclose(x["high"] - 3.0, 4.302652729911275 * 2 / math.sqrt(3))
    assert item["seeds_reproduced"] == "2/3"


def test_a_measurement_is_not_reported_as_a_claim_reproduced_in_no_seed():
    def report(verdict):
        return {"findings_detail": [{"name": "init effect", "criterion": "c", "per_layer": [],
                                     "overall": {"verdict": verdict, "factor": 2.0}}]}
    measured = aggregate({s: report("MEASURED (not one of the paper's claims)") for s in (1, 2)})["findings"][0]
    assert "MEASURED in every seed" in measured and "REPRODUCED in" not in measured
    claimed = aggregate({1: report("REPRODUCED"), 2: report("NOT reproduced")})["findings"][0]
    assert "REPRODUCED in 1/2 seeds" in claimed
