"""magnn study's sink profile (magnn.study.sink_profile): report.json "sinks" and sink_profile.png."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_study_reports_each_trained_models_sink_profile(tmp_path):
    from magnn.study import StudyConfig, run_study

    out = tmp_path / "study"
    config = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=1, max_graphs=8, attack_steps=0,
                                      backend="torch", overrides={"num_layers": 2, "hidden": 8, "heads": 2},
                                      out=str(out), ebt="slot")
    report = run_study(config)
    assert json.loads((out / "report.json").read_text())["sinks"] == json.loads(json.dumps(report["sinks"]))
    assert (out / report["figures"]["sink_profile"]).is_file()
    sinks = report["sinks"]
    assert set(sinks) == {"no_ebt", "ebt_slot"}
    # no slot, no sink: nothing but edges takes attention; the EBT slot takes a share in (0, 1)
    assert sinks["no_ebt"]["overall"]["mean_sink_mass"] == 0.0
    assert 0.0 < sinks["ebt_slot"]["overall"]["mean_sink_mass"] < 1.0
    for entry in sinks.values():
        assert len(entry["layers"]) == 2
        for layer in entry["layers"].values():
            summary, relations = layer["summary"], layer["relations"]
            heads = summary["heads"]
            receiving = sum(row["sink_rows"] for row in summary["by_degree"] if row["degree_low"] > 0) // heads
            by_ma = relations["by_ma"]
            assert by_ma["with_ma_edge"]["nodes"] + by_ma["without_ma_edge"]["nodes"] == receiving
            types = relations["by_edge_type"]
            assert types and set(types) <= {"1", "2", "3"}  # ZINC's bond types
    for tag, entry in sinks.items():
        detected = {layer["name"]: layer["stats"]["rows"] for layer in report["detection"][f"trained {tag}"]["layers"]}
        for name, layer in entry["layers"].items():  # the same test graphs as the detection: every edge typed once
            assert sum(t["edges"] for t in layer["relations"]["by_edge_type"].values()) == detected[name]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "REPORT.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9.]+)`", doc))
    layer = next(iter(sinks["ebt_slot"]["layers"].values()))
    for key in ["sinks", "sink_profile"] + list(sinks["ebt_slot"]) + list(layer) + list(layer["relations"]):
        assert key in documented, key  # docs/REPORT.md names every key of report.json "sinks"
