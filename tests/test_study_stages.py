"""magnn.study.stages: a re-run skips the stages whose settings and inputs are unchanged and
redoes the rest (OUT/stages.json)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from magnn.study import StudyConfig, run_study
from magnn.study.stages import StageRecord, stage_key


def _stamps(out) -> dict:
    files = {"train no_ebt": out / "no_ebt" / "best.pt", "train ebt_edge": out / "ebt_edge" / "best.pt",
             "ablate": out / "stages" / "ablation.json", "attack": out / "stages" / "attack.json",
             "mechanics": out / "stages" / "mechanics.json", "report": out / "report.json"}
    return {stage: path.stat().st_mtime_ns for stage, path in files.items()}


@pytest.mark.slow
def test_rerun_redoes_only_the_stages_whose_settings_changed(tmp_path):
    out = tmp_path / "study"
    config = StudyConfig.from_options(dataset="zinc", model="san", quick=True, epochs=1, max_graphs=8, attack_steps=1,
                                      backend="torch", overrides={"num_layers": 1, "hidden": 8, "heads": 2},
                                      out=str(out))
    report = run_study(config)
    assert set(json.loads((out / "stages.json").read_text())) == {
        "train no_ebt", "train ebt_edge", "ablate", "attack", "mechanics", "report"}
    first = _stamps(out)

    assert run_study(config) == json.loads((out / "report.json").read_text())  # all current: read back
    assert _stamps(out) == first

    # the threshold feeds the ablation, the mechanics and the report, not the training or the attack
    changed = run_study(dataclasses.replace(config, threshold=5.0))
    now = _stamps(out)
    assert {stage for stage in first if now[stage] != first[stage]} == {"ablate", "mechanics", "report"}
    assert changed["threshold"] == 5.0 and changed["training"] == report["training"]
    assert changed["attack"] == report["attack"]

    # --mechanics-threshold feeds the intervention (mechanics) and the report only; the detection keeps --threshold
    edited = run_study(dataclasses.replace(config, threshold=5.0, mechanics_threshold=2.0))
    after = _stamps(out)
    assert {stage for stage in first if after[stage] != now[stage]} == {"mechanics", "report"}
    assert edited["mechanics"]["intervention_threshold"] == 2.0 and edited["threshold"] == 5.0
    assert {result["threshold"] for result in edited["mechanics"]["intervention"].values()} == {2.0}
    assert changed["mechanics"]["intervention_threshold"] == 5.0  # default: the detection's
    assert edited["detection"] == changed["detection"] and edited["ablation"] == changed["ablation"]
    now = after

    # --analyse best: the same training, the best-validation checkpoint analysed (ablation, attack, report redone)
    assert report["analysed_model"] == {"no_ebt": "final", "ebt_edge": "final"}
    best = run_study(dataclasses.replace(config, analyse="best"))
    assert best["analysed_model"] == {"no_ebt": "best", "ebt_edge": "best"}
    assert {stage for stage in first if _stamps(out)[stage] != now[stage]} == {"ablate", "attack", "mechanics",
                                                                               "report"}
    assert set(best["tap_kinds"]["no_ebt"].values()) == {"pre-softmax score"}  # SAN in "gt" mode

    # other --epochs (or --seed, --lr: every training setting keys the training): everything is redone,
    # the study's own stale runs are replaced (not refused as finished runs), report.json records it
    longer = run_study(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2)))
    after = _stamps(out)
    assert all(after[stage] != now[stage] for stage in now)
    assert longer["config"]["train"]["epochs"] == 2
    assert len(json.loads((out / "no_ebt" / "metrics.json").read_text())["history"]) == 2


def test_analysed_model_is_the_final_epoch_unless_best_is_asked(tmp_path):
    import torch

    from magnn.study.pipeline import _plan, study_keys
    from magnn.study.stages import study_variants, train_stage
    from magnn.train import load_checkpoint, prepare

    out = tmp_path / "study"
    config = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, epochs=3, max_graphs=8, attack_steps=0,
                                      backend="torch", overrides={"num_layers": 1, "hidden": 8, "heads": 2},
                                      out=str(out), lr=0.05)
    plans = {tag: _plan(config, ebt, tag) for tag, ebt in study_variants(config).items()}
    _, info, _ = prepare(plans["no_ebt"][0])
    record, keys = StageRecord(out), study_keys(config, plans)
    for analyse, file in (("final", "last.pt"), ("best", "best.pt")):
        trained = train_stage(plans, info, keys, record, analyse)
        assert trained.analysed["no_ebt"] == analyse
        expected = load_checkpoint(out / "no_ebt" / file).state["model"]
        for name, value in trained.models["no_ebt"].state_dict().items():
            assert torch.equal(value, expected[name]), (analyse, name)
    last = load_checkpoint(out / "no_ebt" / "last.pt").state["model"]
    best = load_checkpoint(out / "no_ebt" / "best.pt").state["model"]
    assert any(not torch.equal(last[k], best[k]) for k in last) or \
        json.loads((out / "no_ebt" / "metrics.json").read_text())["best_epoch"] == 2


def test_stage_record_keys_and_files(tmp_path):
    record = StageRecord(tmp_path)
    key = stage_key("train", {"seed": 1})
    assert key == stage_key("train", {"seed": 1}) != stage_key("train", {"seed": 2})
    assert not record.current("train", key)
    record.mark("train", key)
    assert StageRecord(tmp_path).current("train", key)  # read back from stages.json
    assert not StageRecord(tmp_path).current("train", key, tmp_path / "best.pt")  # its file is gone
    (tmp_path / "stages.json").write_text("{not json")
    assert not StageRecord(tmp_path).current("train", key)  # an unreadable record: everything reruns
