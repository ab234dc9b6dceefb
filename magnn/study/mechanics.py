"""The study's mechanics stage: what the MAs of each trained model do (docs/MECHANICS.md).

Per trained model (tag: no_ebt, ebt_<variant>, i.e. the mitigation it was trained with):

- intervention: Sun et al.'s edit, per layer and all at once, massive entries set to zero and to
  their channel mean, the test loss after each (magnn.analysis.intervention); massive here means
  r_ec above the intervention's threshold (--mechanics-threshold, default the detection's
  --threshold: a model whose largest r_ec is just under the detection threshold has nothing to edit);
- onset: per layer the epoch whose probe ratio first exceeds 10x the untrained model's on the same
  probe, and the threshold, beside the lr schedule (magnn.analysis.onset, from metrics.json);
- quantisation: int8 (per-tensor absmax) attention inputs per layer and all at once
  (magnn.analysis.quantise).

Intervention and quantisation run on the first `mechanics_graphs` test graphs (the profile's;
molecules only: a node-level study leaves them out and says so). The result is kept in
OUT/stages/mechanics.json under its own stage key; report.json's "mechanics" holds it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.errors import UserError
from .report import format_number
from .stages import StageRecord, StudyKeys, Trained, _base, _keep, stage_key
from .task import GraphTask, StudyData

log = logging.getLogger("magnn.study.mechanics")

__all__ = ["mechanics_key", "mechanics_stage", "mechanics_figures", "mechanics_markdown", "mitigation_of"]


def mechanics_key(config, profile: dict, keys: StudyKeys) -> str:
    """The stage's key: the trained models, the analysed checkpoint, the thresholds (the intervention's
    only where it differs from the detection's), the graphs, the seed."""
    parts = [keys.train, config.analyse, config.threshold, profile.get("mechanics_graphs"), config.train.seed,
             config.xavier_base]
    if config.intervention_threshold != config.threshold:
        parts.append({"intervention_threshold": config.intervention_threshold})
    return stage_key("mechanics", *parts)


def mechanics_stage(data: StudyData, task: GraphTask, trained: Trained, key: str, record: StageRecord,
                    out: Path) -> dict:
    """report.json's "mechanics": per tag the intervention, the onset and the int8 sensitivity."""
    from ..analysis import intervention, quantise
    from ..analysis.onset import onset
    from ..train import loss_function

    path = out / "stages" / "mechanics.json"
    if record.current("mechanics", key, path):
        log.info(f"== mechanics: current, reused ({path})")
        return json.loads(path.read_text())
    config = data.config
    inputs = task.mechanics_inputs(data)
    loss_fn = loss_function(data.info.task)
    result = {"split": "test", "graphs": len(inputs) if inputs is not None else None,
              "intervention_threshold": config.intervention_threshold,
              "mitigation": {tag: mitigation_of(c) for tag, c in trained.configs.items()},
              "onset": {}, "intervention": {}, "quantisation": {}}
    if inputs is None:
        result["not_run"] = "intervention and quantisation: molecule datasets only (a node-level study skips them)"
    for tag, model in trained.models.items():
        base = _probe_base(data, trained.configs[tag], trained.metrics[tag])
        result["onset"][tag] = onset(trained.metrics[tag] or {}, base=base, threshold=config.threshold)
        if inputs is None or not len(inputs):
            continue
        log.info(f"== mechanics: {tag}, MA intervention and int8 sensitivity on {len(inputs)} test graphs")
        try:
            result["intervention"][tag] = intervention.run(model, inputs, loss_fn, device=config.train.device,
                                                           threshold=config.intervention_threshold).to_dict()
            result["quantisation"][tag] = quantise.run(model, inputs, loss_fn, device=config.train.device)
        except UserError as error:  # a model the analyses cannot edit: the rest of the study stands
            log.warning(f"mechanics: {tag} not analysed: {error}")
            result.setdefault("not_run_models", {})[tag] = str(error)
    _keep(path, result)
    record.mark("mechanics", key)
    return result


def mitigation_of(train_config) -> str:
    """The mitigation a training run used: its `mitigation` setting where the config has one, else
    its EBT variant, else "none"."""
    return getattr(train_config, "mitigation", None) or train_config.ebt or "none"


def _probe_base(data: StudyData, train_config, metrics) -> dict | None:
    """{layer: the untrained model's max edge ratio on the training run's MA probe}, or None when the
    probe is not a batch of graphs (node tasks) or differs from the one the curves were taken on."""
    from ..train.callbacks import ma_probe, probe_stats

    description, probe = ma_probe(train_config, data.splits)
    recorded = ((metrics or {}).get("ma_over_epochs") or {}).get("probe")
    if probe is None or isinstance(probe, str) or description != recorded:
        return None
    base = _base(train_config, data.info, data.config.xavier_base)
    stats = probe_stats(base, probe, device=train_config.device)
    return {name: layer.max_ratio("edge") for name, layer in stats.items()}


def mechanics_figures(data: StudyData, trained: Trained, mechanics: dict, out: Path) -> dict:
    """intervention.png, ma_onset.png and quantisation.png (the first and last when they ran)."""
    from ..analysis.mechanics_figures import plot_intervention, plot_onset, plot_quantisation

    config = data.config
    title = f"{config.model.upper()} on {config.dataset}"
    figures = {}
    curves = {tag: (m or {}).get("ma_over_epochs") for tag, m in trained.metrics.items()}
    if any(mechanics["onset"].values()):
        figures["ma_onset"] = plot_onset(curves, mechanics["onset"], out / "ma_onset.png", title=title,
                                         threshold=config.threshold)
    if mechanics["intervention"]:
        figures["intervention"] = plot_intervention(mechanics["intervention"], out / "intervention.png", title=title)
    if mechanics["quantisation"]:
        figures["quantisation"] = plot_quantisation(mechanics["quantisation"], out / "quantisation.png", title=title)
    return figures


def mechanics_markdown(mechanics: dict | None) -> list[str]:
    """report.md's "Mechanics" section: the three tables per model."""
    if not mechanics:
        return []
    lines = ["", "## Mechanics (docs/MECHANICS.md)", ""]
    if mechanics.get("not_run"):
        lines += [f"Not run: {mechanics['not_run']}.", ""]
    for tag, reason in (mechanics.get("not_run_models") or {}).items():
        lines += [f"Not analysed, {tag}: {reason}", ""]
    for tag, result in mechanics["intervention"].items():
        lines += [f"MA intervention, {tag}: massive entries (r_ec > {format_number(result['threshold'])}) set to "
                  f"zero / to their channel mean; clean test loss {format_number(result['loss_clean'])} on "
                  f"{result['graphs']} graphs", "",
                  "| layer | max r_ec | MA entries | MA edges / edges | loss change (zero) | loss change (mean) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {format_number(r.get('max_ratio'))} | {r['ma_entries']} | {r['ma_edges']} / {r['edges']} | "
                  f"{format_number(r['delta_zero'])} | {format_number(r['delta_mean'])} |" for r in result["layers"]]
        every = result["all_layers"]
        lines += [f"| all | | | | {format_number(every['delta_zero'])} | {format_number(every['delta_mean'])} |", ""]
        unreached = sum(r.get("unreached_entries", 0) for r in result["layers"])
        if unreached:
            lines += [f"{unreached} massive entries on SAN's fake edges were not edited (no structural bias reaches "
                      "them; docs/SPEC.md §11).", ""]
    for tag, result in mechanics["onset"].items():
        if not result:
            continue
        lines += [f"MA onset, {tag} (probe: {result['probe']}; base: the layer's ratio before training)", "",
                  f"| layer | base | onset ({format_number(result['factor'])}x base) | lr then | "
                  f"onset (> {format_number(result['threshold'])}) | peak | final |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {format_number(r['base'])} | {r['onset_growth'] or '-'} | "
                  f"{format_number(r['lr_at_onset_growth'])} | {r['onset_threshold'] or '-'} | "
                  f"{format_number(r['peak'])} | {format_number(r['final'])} |" for r in result["layers"]]
        lines += [""]
    for tag, result in mechanics["quantisation"].items():
        lines += [f"int8 sensitivity, {tag}: {result['scheme']}; clean test loss {format_number(result['loss_clean'])}",
                  "", "| layer | q / k / v / e step over median | node_out rel. error | loss change |",
                  "|---|---|---|---|"]
        for r in result["layers"]:
            steps = " / ".join(format_number(r["inputs"].get(x, {}).get("step_over_median")) for x in "qkve")
            lines.append(f"| {r['name']} | {steps} | {format_number(r['output_rel_error'])} | "
                         f"{format_number(r['delta_loss'])} |")
        lines += [f"| all | | | {format_number(result['all_layers']['delta_loss'])} |", ""]
    return lines
