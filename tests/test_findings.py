"""Findings compare each model with its own base: EBT's initialisation alone does not reproduce
"EBT lowers MAs"; every finding shows its robust statistic, the max and the numbers behind the ratio."""
from magnn.analysis.detect import detect
from magnn.study.findings import MEASURED, finding_details
from magnn.study.report import findings
from magnn.train import TrainConfig, prepare, seed_everything

VARIANTS = {"no_ebt": None, "ebt_edge": "edge"}


def _untrained(ebt):
    config = TrainConfig(dataset="zinc", model="gt", ebt=ebt, max_graphs=60, backend="torch", seed=0)
    seed_everything(0)
    splits, _, model = prepare(config)
    return model, splits["test"][:12]


def test_untrained_ebt_model_does_not_reproduce_ebt_lowers_growth():
    """Two untrained models as their own 'trained' models: growth is exactly 1 for both, so the EBT
    finding cannot be REPRODUCED, although EBT's N(0, 1) init alone lowers the ratios (the confound
    the old trained-vs-trained comparison fell for)."""
    detections = {}
    for tag, ebt in VARIANTS.items():
        model, graphs = _untrained(ebt)
        report = detect(model, graphs, threshold=1000.0, fit=False, progress=False).to_dict()
        detections[f"base {tag}"] = detections[f"trained {tag}"] = report
    report = {"threshold": 1000.0, "detection": detections, "profile": "quick"}
    details = {item["name"]: item for item in finding_details(report, VARIANTS)}
    init = details["EBT init effect (untrained EBT vs untrained no-EBT)"]
    lower = [row for row in init["per_layer"] if row["factor"] > 1]
    assert len(lower) >= len(init["per_layer"]) - 1, init  # the confound: EBT's init lowers untrained ratios
    assert init["overall"]["verdict"] == MEASURED
    ebt = details["EBT lowers growth over its own base"]
    assert not ebt["overall"]["verdict"].startswith("REPRODUCED")
    assert all(not row["verdict"].startswith("REPRODUCED") for row in ebt["per_layer"])
    assert ebt["overall"]["growth_no_ebt"] == 1.0 and ebt["overall"]["growth_ebt_edge"] == 1.0
    growth = details["no-EBT model grows over its own base (> 10x)"]
    row = growth["per_layer"][0]
    for key in ("growth", "growth_low", "growth_high", "growth_max", "base_max_abs", "trained_max_abs",
                "base_median_abs", "trained_median_abs", "growth_from", "base_q99.9", "trained_max"):
        assert key in row, key
    crossed = details["MA threshold crossed"]
    assert "absolute_verdict" in crossed["overall"] and "max" in crossed["overall"]
    assert any("EBT lowers growth over its own base: INCONCLUSIVE" in line for line in findings(report, VARIANTS))


def test_ebt_finding_reproduces_only_when_growth_is_lowered():
    def layers(values, max_abs=50.0, median=0.5):
        return {"layers": [{"name": f"l{i}", "max_ratio_edge": 2 * v,
                            "edge_ratio_robust": {"q99.9": {"value": v, "low": 0.9 * v, "high": 1.1 * v}},
                            "stats": {"max_abs": max_abs, "median_abs": {"estimate": median}}}
                           for i, v in enumerate(values)]}

    report = {"threshold": 1000.0, "profile": "full", "detection": {
        "base no_ebt": layers([50, 50]), "trained no_ebt": layers([2000, 60], max_abs=50.0, median=0.01),
        "base ebt_edge": layers([10, 10]), "trained ebt_edge": layers([20, 12])}}
    details = {item["name"]: item for item in finding_details(report, VARIANTS)}
    ebt = details["EBT lowers growth over its own base"]
    assert [row["verdict"].split(" (")[0] for row in ebt["per_layer"]] == ["REPRODUCED", "INCONCLUSIVE"]
    growth = details["no-EBT model grows over its own base (> 10x)"]["per_layer"][0]
    assert growth["growth"] == 40.0 and growth["growth_from"] == "shrinking medians"
    assert growth["growth_low"] == 0.9 * 2000 / (1.1 * 50)
    crossed = details["MA threshold crossed"]
    assert crossed["per_layer"][0]["verdict"] == "REPRODUCED" and crossed["per_layer"][0]["absolute_verdict"] == "NOT reproduced"
