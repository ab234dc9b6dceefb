"""`magnn study --compare-mitigations`: the five mitigations (none, ebt-edge, ebt-slot, sink, gate)
trained on the same data and seeds, each measured against its own untrained base.

Per seed s (--seeds N: s = --seed, --seed+1, ...), OUT/seed_<s>/ holds one training run per
mitigation (OUT/seed_<s>/<tag>/, tags no_ebt, ebt_edge, ebt_slot, sink, gate) made by the study's
own stages (magnn.study.stages: train, detect, attack, keyed in OUT/seed_<s>/stages.json, so a
re-run reuses current runs) and OUT/seed_<s>/measures.json (the detections and each mitigation's
numbers). Per mitigation and seed:

- growth: the model's MA growth over its own base (same architecture, mitigation and seed,
  untrained), trained / base of the peak over layers of the q99.9 quantile of r_e
  (magnn.study.findings.model_growth), with the bootstrap interval over test graphs;
- sink_mass (and entropy): the mean over layers, nodes and heads of the share of attention taken by
  the EBT slot or the sink (magnn.study.sink_profile; 0 for none, ebt-edge and gate);
- task_loss: the analysed model's test loss (--analyse final: the final epoch's);
- attack_gain: the Explicit Bias Attack's gain at sigma 0.1 on validation graphs;
- what the MAs do, from the study's mechanics stage run on the seed's five models (keyed in the
  same stages.json, kept in OUT/seed_<s>/stages/mechanics.json): the MA entries Sun et al.'s
  intervention edits (above --mechanics-threshold, default --threshold) and the test-loss change
  when they are set to zero / to their mean, the int8 test-loss change, the earliest layer's MA
  onset epoch (magnn.study.compare_mechanics).

OUT/compare.json holds, per mitigation, each number's mean and Student-t 95 % interval over seeds
with the per-seed values (magnn.study.seeds.interval); OUT/compare.md two tables (growth, sinks,
loss, attack; then the mechanics); OUT/compare.png and compare_mechanics.png the figures
(magnn.analysis.mitigations). Schema: docs/REPORT.md.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..core.errors import UserError, output_folder
from ..core.files import write_atomically
from ..core.mitigation import MITIGATIONS
from .compare_mechanics import MECHANICS_NUMBERS, mechanics_numbers, mechanics_table
from .findings import STATISTIC, model_growth
from .mechanics import mechanics_key, mechanics_stage
from .seeds import interval, log_interval
from .sink_profile import model_sink_mass, sink_profile
from .stages import StageRecord, StudyKeys, attack_stage, detect_stage, train_stage
from .task import StudyData, task_for

log = logging.getLogger("magnn.study.compare")

__all__ = ["run_comparison", "seed_plans", "attack_gain_at", "TAGS", "NUMBERS", "ATTACK_SIGMA"]

TAGS = {"none": "no_ebt", "ebt-edge": "ebt_edge", "ebt-slot": "ebt_slot", "sink": "sink", "gate": "gate"}
ATTACK_SIGMA = 0.1  # the attack finding's noise level
NUMBERS = ("growth", "growth_low", "growth_high", f"base_{STATISTIC}", f"trained_{STATISTIC}", "sink_mass",
           "entropy", "task_loss", "attack_gain") + MECHANICS_NUMBERS
# ratios (positive, multiplicative): summarised over seeds on the log scale (magnn.study.seeds.log_interval)
RATIO_NUMBERS = ("growth", "growth_low", "growth_high", f"base_{STATISTIC}", f"trained_{STATISTIC}", "max_r_ec")


def run_comparison(config) -> dict:
    """Trains and measures every mitigation per seed (config.seeds of them) and writes OUT/compare.json,
    compare.md and compare.png; returns what compare.json holds."""
    from ..analysis.mitigations import MECHANICS_PANELS, plot_mitigation_comparison
    from .report import report_json

    config.validate()
    if "mitigation" in config.train.overrides:
        raise UserError("--compare-mitigations trains every mitigation itself: drop --mitigation")
    out = output_folder(config.out, "--out")
    measures = {}
    for offset in range(config.seeds):
        seed = config.train.seed + offset
        one = dataclasses.replace(config, seeds=1, out=str(out / f"seed_{seed}"),
                                  train=dataclasses.replace(config.train, seed=seed))
        log.info(f"== mitigation comparison: seed {seed} ({offset + 1}/{config.seeds})")
        measures[seed] = measure_seed(one)
    rows = tabulate(measures)
    title = f"{config.model.upper()} on {config.dataset}: mitigations over {config.seeds} seed(s)"
    figures = {"compare": plot_mitigation_comparison(rows, out / "compare.png", title=title),
               "mechanics": plot_mitigation_comparison(rows, out / "compare_mechanics.png", panels=MECHANICS_PANELS,
                                                       title=f"{title}: what the MAs do")}
    summary = {"dataset": config.dataset, "model": config.model, "profile": config.profile_name,
               "seeds": list(measures), "statistic": STATISTIC, "attack_sigma": ATTACK_SIGMA,
               "threshold": config.threshold, "intervention_threshold": config.intervention_threshold,
               "mechanics_graphs": config.profile().get("mechanics_graphs"), "rows": rows,
               "figures": {name: Path(figure).name for name, figure in figures.items()}, "config": config.to_dict()}
    write_atomically(out / "compare.json", report_json(summary))
    write_atomically(out / "compare.md", markdown(summary))
    return summary


def run_config(config, mitigation: str, out: str):
    """The TrainConfig of one mitigation's run: the study's template with the mitigation's EBT setting
    (ebt-edge / ebt-slot) or model keyword (sink / gate)."""
    from ..models.presets import mitigation_ebt, variant_overrides

    train = config.run_config(mitigation_ebt(mitigation, None), out)
    train.overrides.update(variant_overrides(config.model, config.dataset, mitigation=mitigation))
    return train


def seed_plans(config, out: Path) -> tuple[dict, StudyKeys]:
    """One seed's training plans ({tag: (TrainConfig, None)}, each run in out/<tag>) and stage keys."""
    plans = {TAGS[m]: (run_config(config, m, str(out / TAGS[m])), None) for m in MITIGATIONS}
    keys = StudyKeys.of(config, config.profile(), {tag: plan[0] for tag, plan in plans.items()},
                        {tag: None for tag in plans})
    return plans, keys


def measure_seed(config) -> dict:
    """One seed: every mitigation trained (or reused) and measured; {mitigation: numbers}, also written
    to OUT/measures.json beside the detections they come from."""
    from ..analysis.detect import tap_kinds
    from ..train import prepare
    from .report import report_json

    out = output_folder(config.out, "--out")
    plans, keys = seed_plans(config, out)
    record = StageRecord(out)
    splits, info, _ = prepare(plans["no_ebt"][0])
    data, task = StudyData(config, config.profile(), info, splits), task_for(config.dataset)
    trained = train_stage(plans, info, keys, record, config.analyse)
    detections = detect_stage(data, task, trained, out)
    attack = attack_stage(data, task, trained, keys.attack, record, out)
    mechanics = mechanics_stage(data, task, trained, mechanics_key(config, data.profile, keys), record, out)
    report = {"detection": {label: d.report.to_dict() for label, d in detections.items()},
              "tap_kinds": {tag: tap_kinds(model) for tag, model in trained.models.items()}}
    graphs = task.sink_inputs(data)
    numbers = {}
    for mitigation in MITIGATIONS:
        tag = TAGS[mitigation]
        profile = sink_profile(trained.models[tag], graphs, device=config.train.device, threshold=config.threshold,
                               desc=f"sink profile: trained {tag}") if graphs else {}
        numbers[mitigation] = _numbers(report, tag, profile, trained.metrics[tag], attack["attack"].get(tag),
                                       config.analyse)
        numbers[mitigation].update(mechanics_numbers(mechanics, tag))
    write_atomically(out / "measures.json", report_json({"numbers": numbers, **report}))
    return numbers


def _numbers(report: dict, tag: str, profile: dict, metrics, attack_runs, analyse: str) -> dict:
    """One mitigation's numbers (NUMBERS) for one seed."""
    growth, _ = model_growth(report, tag)
    sinks = model_sink_mass(profile) if profile else {"mean_sink_mass": None, "mean_entropy": None}
    test = (metrics or {}).get("test_final" if analyse == "final" else "test") or {}
    row = {key: growth[key] for key in NUMBERS if key in growth}
    row.update(sink_mass=sinks["mean_sink_mass"], entropy=sinks["mean_entropy"], task_loss=test.get("loss"),
               attack_gain=attack_gain_at(attack_runs, ATTACK_SIGMA))
    return row


def attack_gain_at(attack_runs, sigma: float):
    """The gain of the attack run at `sigma`; None without one, and None where the run's random noise left
    the loss unchanged (`measurable` False: its gain is rounding, magnn.analysis.attack)."""
    for run in attack_runs or []:
        if abs(run["sigma"] - sigma) < 1e-12:
            return run["gain"] if run.get("measurable", True) else None
    return None


def tabulate(measures: dict) -> list:
    """{seed: {mitigation: numbers}} -> one row per mitigation: per number its mean and 95 % interval
    over seeds with the per-seed values (ratios, RATIO_NUMBERS: the geometric mean and the interval on
    the log scale), and the per-seed bootstrap interval of the growth."""
    seeds = list(measures)
    rows = []
    for mitigation in MITIGATIONS:
        row = {"mitigation": mitigation, "tag": TAGS[mitigation]}
        for key in NUMBERS:
            values = {str(s): measures[s][mitigation].get(key) for s in seeds}
            summary = log_interval if key in RATIO_NUMBERS else interval
            row[key] = dict(summary(list(values.values())), per_seed=values)
        row["growth_bootstrap"] = {str(s): [measures[s][mitigation].get("growth_low"),
                                            measures[s][mitigation].get("growth_high")] for s in seeds}
        row["int8_worst_layer"] = {str(s): measures[s][mitigation].get("int8_worst_layer") for s in seeds}
        row["notes"] = {str(s): measures[s][mitigation].get("notes") or [] for s in seeds}
        rows.append(row)
    return rows


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.4g}"


def _cell(value: dict, bootstrap=None) -> str:
    if value["n"] >= 2:
        return f"{_fmt(value['mean'])} [{_fmt(value['low'])}, {_fmt(value['high'])}]"
    if bootstrap:  # one seed: the growth's bootstrap interval over test graphs
        low, high = next(iter(bootstrap.values()))
        return f"{_fmt(value['mean'])} [{_fmt(low)}, {_fmt(high)}]"
    return _fmt(value["mean"])


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    how = (f"mean [95 % Student-t interval over the {len(seeds)} seeds]; growth, q99.9 and largest r_ec (ratios): "
           "geometric mean [the interval on the log scale]" if len(seeds) > 1
           else "one seed: growth [bootstrap interval over test graphs], the rest single values")
    lines = [f"# Mitigations compared: {summary['model'].upper()} on {summary['dataset']} "
             f"({summary['profile']} profile, seeds {', '.join(map(str, seeds))})", "",
             f"Each model against its own untrained base; growth = trained / base of the peak {STATISTIC} of r_e "
             f"over layers. Cells: {how}. Attack gain at sigma {summary['attack_sigma']}. Per seed: OUT/seed_<s>/.", "",
             f"| mitigation | growth | base {STATISTIC} | trained {STATISTIC} | sink mass | test loss | attack gain |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        cells = [_cell(row["growth"], row["growth_bootstrap"])] + [
            _cell(row[key]) for key in (f"base_{STATISTIC}", f"trained_{STATISTIC}", "sink_mass", "task_loss",
                                        "attack_gain")]
        lines.append(f"| {row['mitigation']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + mechanics_table(summary, _fmt)) + "\n"

