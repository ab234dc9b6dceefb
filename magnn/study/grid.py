"""The grid run: `magnn study --dataset all --model all` (or any row / column of it).

Runs `run_study` for every (dataset, model) pair into OUT/<dataset>_<model>/ and assembles
what the paper shows across pairs: the full Table 1 (final-epoch and best-validation test
loss, without / with EBT, beside the paper's), and the 3x3 Fig. 2 (no EBT vs the base band)
and Fig. 4 (EBT vs the base band) panels, into OUT/grid.md, OUT/grid.json, OUT/fig2_grid.png
and OUT/fig4_grid.png.

Resumable by the study's own rule (magnn.study.stages): a pair whose stages are all current
(the same settings and inputs, recorded in its stages.json) is skipped and its numbers are read
back; in any other pair each stage whose key is unchanged (e.g. a finished training run) is
reused and the rest is redone. A pair that fails is recorded with its error and the grid goes on; `run_grid` returns the
summary and the command line exits with 1 when any pair failed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.constants import DATASETS
from ..core.errors import RunFailed, UserError, check_choice, output_folder
from ..core.files import write_atomically
from ..models.registry import MODELS
from .config import StudyConfig
from .pipeline import is_current, run_study
from .report import PAPER_TABLE1, format_number, report_json

log = logging.getLogger("magnn.study.grid")

__all__ = ["GridConfig", "run_grid", "pair_folder", "assemble"]

ALL = "all"


@dataclass
class GridConfig:
    """The pairs to run and the StudyConfig every pair starts from (its dataset, model and out are
    replaced per pair). data_roots: a data root per dataset (default: `study.data_root` for all)."""

    datasets: tuple = DATASETS
    models: tuple = tuple(MODELS)
    out: str = "runs/grid"
    study: StudyConfig = field(default_factory=StudyConfig)
    data_roots: dict = field(default_factory=dict)

    def validate(self) -> "GridConfig":
        if not self.datasets or not self.models:
            raise UserError("the grid needs at least one dataset and one model")
        for dataset in self.datasets:
            check_choice(dataset, DATASETS, "--dataset")
        for model in self.models:
            check_choice(model, tuple(MODELS), "--model")
        if self.study.ckpt_no_ebt or self.study.ckpt_ebt:
            raise UserError("--ckpt-no-ebt / --ckpt-ebt name one pair's checkpoints: run that pair alone "
                            "(--dataset D --model M), not the grid")
        if self.study.seeds > 1:
            raise UserError("--seeds runs one pair several times: run that pair alone (--dataset D --model M)")
        return self


def pair_folder(out, dataset: str, model: str) -> Path:
    return Path(out) / f"{dataset}_{model}"


def pair_study(config: GridConfig, out: Path, dataset: str, model: str) -> StudyConfig:
    """The StudyConfig of one pair: the template with the pair's dataset, model, data root and folder."""
    train = dataclasses.replace(config.study.train, dataset=dataset, model=model,
                                data_root=config.data_roots.get(dataset, config.study.train.data_root))
    return dataclasses.replace(config.study, train=train, out=str(pair_folder(out, dataset, model)))


def _run_pair(key: str, study: StudyConfig) -> dict:
    """One pair's study, unless it is current; its status for grid.json (a failure is recorded, not raised)."""
    folder = Path(study.out)
    if is_current(study):
        log.info(f"== grid: {key} finished before, skipping ({folder / 'report.json'})")
        return {"status": "skipped (finished)", "folder": folder.name}
    log.info(f"== grid: {key} -> {folder}")
    try:
        run_study(study)
    except (UserError, RunFailed, RuntimeError, ValueError) as error:  # record it, run the other pairs
        log.error(f"== grid: {key} failed: {error}")
        return {"status": "failed", "folder": folder.name, "error": f"{type(error).__name__}: {error}"}
    return {"status": "done", "folder": folder.name}


def _read_json(path: Path):
    """The JSON document at path, or None if it is missing or unreadable (an unfinished run)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_grid(config: GridConfig) -> dict:
    """Every pair's study (finished ones skipped), then the assembled Table 1 and Fig. 2/4 grids."""
    config.validate()
    out = output_folder(config.out, "--out")
    status = {}
    for dataset in config.datasets:
        for model in config.models:
            key, study = f"{dataset}/{model}", pair_study(config, out, dataset, model)
            status[key] = _run_pair(key, study)
    summary = assemble(out, config.datasets, config.models, fig4_base=config.study.fig4_base,
                       ebt=config.study.ebt, threshold=config.study.threshold)
    summary["pairs"] = status
    write_atomically(out / "grid.json", report_json(summary))
    write_atomically(out / "grid.md", grid_markdown(summary))
    return summary


def _max_over_layers(layers: dict) -> np.ndarray:
    """Per batch (test graph / seed), the largest edge ratio over the layers."""
    rows = [np.asarray([np.nan if v is None else v for v in values], dtype=float) for values in layers.values()]
    rows = [r for r in rows if r.size]
    if not rows:
        return np.array([])
    width = min(r.size for r in rows)
    with np.errstate(invalid="ignore"):
        stacked = np.stack([r[:width] for r in rows])
        return np.where(np.isnan(stacked).all(0), np.nan, np.nanmax(np.nan_to_num(stacked, nan=-np.inf), 0))


def _band(curves_by_label: dict, labels) -> tuple | None:
    """Min-max band over the base runs and layers of sorted-ascending per-batch curves."""
    curves = [np.sort(np.asarray([v for v in values if v is not None], dtype=float))
              for label in labels for values in (curves_by_label.get(label) or {}).values()]
    curves = [c for c in curves if c.size]
    if not curves:
        return None
    width = max(c.size for c in curves)
    stacked = np.full((len(curves), width), np.nan)
    for row, c in enumerate(curves):
        stacked[row, : c.size] = c
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(stacked, 0), np.nanmax(stacked, 0)


def assemble(out, datasets, models, *, fig4_base: str = "own", ebt: str = "edge", threshold: float = 1000.0) -> dict:
    """Table 1 rows and the Fig. 2 / Fig. 4 grids from the pairs' report.json and curves.json."""
    from ..analysis.figures import plot_grid_panels

    out = Path(out)
    ebt_tag = f"ebt_{ebt}"
    table, fig2, fig4 = [], {}, {}
    for dataset in datasets:
        for model in models:
            folder = pair_folder(out, dataset, model)
            report = _read_json(folder / "report.json")
            paper = PAPER_TABLE1.get((dataset, model), (None, None))
            row = {"dataset": dataset, "model": model, "paper_no_ebt": paper[0], "paper_ebt": paper[1], "done": False}
            if report is not None:
                best, final = report.get("training") or {}, report.get("training_final") or {}
                loss = lambda table_, tag: (table_.get(tag) or {}).get("loss")
                tag = next((t for t in best if t != "no_ebt"), ebt_tag)
                peak = {label: max((l["max_ratio_edge"] for l in d["layers"] if l.get("max_ratio_edge") is not None),
                                   default=None) for label, d in (report.get("detection") or {}).items()}
                row.update(done=True, ebt=tag, final_no_ebt=loss(final, "no_ebt"), final_ebt=loss(final, tag),
                           best_no_ebt=loss(best, "no_ebt"), best_ebt=loss(best, tag), profile=report.get("profile"),
                           ebt_compat=report.get("ebt_compat"), peak_max_ratio=peak)
                curves = _read_json(folder / "curves.json")
                if curves:
                    base_ebt = "base no_ebt" if fig4_base == "no_ebt" else f"base {tag}"
                    fig2[(dataset, model)] = {
                        "lines": {"trained no_ebt": np.sort(_max_over_layers(curves.get("trained no_ebt", {})))},
                        "band": _band(curves, ["base no_ebt"])}
                    fig4[(dataset, model)] = {
                        "lines": {f"trained {tag}": np.sort(_max_over_layers(curves.get(f"trained {tag}", {})))},
                        "band": _band(curves, [base_ebt]), "note": f"base: {base_ebt}"}
            table.append(row)
    figures = {}
    if fig2:
        figures["fig2_grid"] = plot_grid_panels(fig2, out / "fig2_grid.png", rows=list(datasets), cols=list(models),
                                                title="Fig. 2: per test graph, max edge ratio over layers (no EBT)",
                                                threshold=threshold).name
        figures["fig4_grid"] = plot_grid_panels(fig4, out / "fig4_grid.png", rows=list(datasets), cols=list(models),
                                                title=f"Fig. 4: per test graph, max edge ratio over layers ({ebt_tag})",
                                                threshold=threshold).name
    return {"table1": table, "figures": figures, "fig4_base": fig4_base}


def grid_markdown(summary: dict) -> str:
    lines = ["# magnn grid: Table 1 and Fig. 2/4 over the dataset x model pairs", "",
             "## Table 1: test loss without / with EBT", "",
             "Final: the last epoch's model (the paper's Table 1); best: the best-validation checkpoint.", "",
             "| dataset | model | final: no EBT | final: EBT | best: no EBT | best: EBT | paper: no EBT | paper: EBT "
             "| peak edge ratio base / trained / EBT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary["table1"]:
        if not row["done"]:
            lines.append(f"| {row['dataset']} | {row['model']} | not run | | | | {format_number(row['paper_no_ebt'])} "
                         f"| {format_number(row['paper_ebt'])} | |")
            continue
        peak = row.get("peak_max_ratio") or {}
        tag = row.get("ebt", "ebt_edge")
        peaks = " / ".join(format_number(peak.get(label)) for label in ("base no_ebt", "trained no_ebt", f"trained {tag}"))
        lines.append(f"| {row['dataset']} | {row['model']} | {format_number(row['final_no_ebt'])} "
                     f"| {format_number(row['final_ebt'])} | {format_number(row['best_no_ebt'])} "
                     f"| {format_number(row['best_ebt'])} | {format_number(row['paper_no_ebt'])} "
                     f"| {format_number(row['paper_ebt'])} | {peaks} |")
    lines += ["", "## Pairs", ""]
    for key, state in (summary.get("pairs") or {}).items():
        lines.append(f"- {key}: {state['status']} ({state['folder']}/report.md)"
                     + (f": {state['error']}" if state.get("error") else ""))
    lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in summary.get("figures", {}).items()]
    lines += ["", f"Fig. 4's base band: {summary.get('fig4_base')} (each pair's EBT base, or the no-EBT base with "
              "--fig4-base no_ebt).", ""]
    return "\n".join(lines)
