"""magnn study: train without and with EBT, detect MAs, ablate, attack, report.

Writes DIR/report.json (every number, and under "config" the StudyConfig that re-runs it:
`magnn study --config DIR/report.json`), DIR/report.md (tables shaped like the paper's
Table 1 and 2, the paper's values beside ours, and an honest line on whether each
qualitative finding reproduced) and PNG figures: sorted_max_ratios.png (Fig. 2: no EBT vs
the base band), sorted_max_ratios_ebt.png (Fig. 4: EBT vs its base, or the no-EBT base with
fig4_base="no_ebt"), edge_ratios.png (Fig. 1, every layer), hist_<model>.png (Fig. 3),
heatmap_<model>.png, ablation.png and, when both runs' metrics.json hold MA curves,
ma_over_epochs.png. report.json's schema: docs/REPORT.md. Many pairs at once: magnn.study.grid.

The study is a sequence of stages with typed results (magnn.study.stages: train, detect,
ablate, attack; magnn.study.outputs: figures, report), each asking a task strategy
(magnn.study.task: graph-level or node-level) for what differs between the datasets. A
re-run into the same folder skips the stages whose settings and inputs are unchanged
(OUT/stages.json) and redoes the rest.

Library entry point: `run_study(StudyConfig(...))`; `magnn study` (magnn.cli) only parses
its options into a StudyConfig and calls it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.errors import UserError, output_folder
from .config import StudyConfig
from .mechanics import mechanics_figures, mechanics_key, mechanics_stage
from .outputs import figures_stage, report_stage
from .sink_profile import sinks_stage
from .stages import (
    StageRecord,
    StudyKeys,
    ablate_stage,
    attack_stage,
    detect_stage,
    given_identity,
    study_variants,
    train_stage,
)
from .task import StudyData, task_for

log = logging.getLogger("magnn.study.pipeline")

__all__ = ["StudyConfig", "run_study", "study_keys", "is_current"]


def run_study(config: StudyConfig) -> dict:
    """The whole study (`magnn study`): writes report.json, report.md and the figures into config.out
    and returns the report (the dictionary report.json holds)."""
    from ..train import prepare

    config.validate()
    if config.seeds > 1:
        from .seeds import run_seeds

        return run_seeds(config, run_study)
    plans = {tag: _plan(config, ebt, tag) for tag, ebt in study_variants(config).items()}  # reads given checkpoints
    out = output_folder(config.out, "--out")  # after every check: a refused run writes nothing
    keys = study_keys(config, plans)
    record = StageRecord(out)
    if record.current("report", keys.report, out / "report.json"):
        log.info(f"== study: every stage is current, reading {out / 'report.json'}")
        return json.loads((out / "report.json").read_text())
    splits, info, _ = prepare(plans["no_ebt"][0])  # the data once, for every model below
    data, task = StudyData(config, config.profile(), info, splits), task_for(config.dataset)
    # one large graph: the runs train on the study's copy rather than loading their own
    trained = train_stage(plans, info, keys, record, config.analyse, splits if task.node_level else None)
    detections = detect_stage(data, task, trained, out)
    ablation = ablate_stage(data, task, trained, detections, keys.ablate, record, out)
    attack = attack_stage(data, task, trained, keys.attack, record, out)
    figures = figures_stage(data, task, trained, detections, ablation, out)
    sinks, sink_figures = sinks_stage(data, task, trained, out)
    figures.update(sink_figures)
    mechanics = mechanics_stage(data, task, trained, mechanics_key(config, data.profile, keys), record, out)
    figures.update(mechanics_figures(data, trained, mechanics, out))
    extra = {"sinks": sinks} if mechanics is None else {"sinks": sinks, "mechanics": mechanics}
    report = report_stage(data, task, trained, detections, ablation, attack, figures, out, extra=extra)
    record.mark("report", keys.report)
    return report


def study_keys(config: StudyConfig, plans: dict | None = None) -> StudyKeys:
    """Every stage's key for this config (see magnn.study.stages)."""
    plans = plans or {tag: _plan(config, ebt, tag) for tag, ebt in study_variants(config).items()}
    given = {tag: given_identity(checkpoint.path) if checkpoint is not None else None
             for tag, (_, checkpoint) in plans.items()}
    return StudyKeys.of(config, config.profile(), {tag: plan[0] for tag, plan in plans.items()}, given)


def is_current(config: StudyConfig) -> bool:
    """Whether OUT holds this config's finished study (its report stage is current): a re-run reads it back."""
    out = Path(config.out)
    return StageRecord(out).current("report", study_keys(config).report, out / "report.json")


def _plan(config: StudyConfig, ebt, tag):
    """(TrainConfig, checkpoint or None) for one EBT setting: the given checkpoint's, or one to train."""
    given = config.ckpt_ebt if ebt else config.ckpt_no_ebt
    if not given:
        return config.run_config(ebt, str(Path(config.out) / tag)), None
    from ..train import load_checkpoint

    option = "--ckpt-ebt" if ebt else "--ckpt-no-ebt"
    checkpoint = load_checkpoint(given, option=option)
    trained = checkpoint.config
    found = {"--dataset": trained.dataset, "--model": trained.model}
    wanted = {"--dataset": config.dataset, "--model": config.model}
    differing = [f"{name} {found[name]} (the checkpoint) vs {wanted[name]} (this command)"
                 for name in found if found[name] != wanted[name]]
    if differing:
        raise UserError(f"{option} {checkpoint.path} does not match this study: {'; '.join(differing)}; "
                        f"pass {' '.join(f'{n} {found[n]}' for n in found)} or another checkpoint")
    if trained.ebt != ebt:
        how = f"--ebt {trained.ebt}" if trained.ebt else "no EBT"
        raise UserError(f"{option} {checkpoint.path} was trained with {how}, but {option} needs "
                        f"{'--ebt ' + ebt if ebt else 'a model without EBT'}"
                        + (f" (pass --ebt {trained.ebt} to study that variant)" if ebt and trained.ebt else ""))
    if config.train.data_root is not None:
        trained.data_root = config.train.data_root
    return trained, checkpoint
