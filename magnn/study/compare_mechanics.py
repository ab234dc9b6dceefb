"""The mechanics columns of `magnn study --compare-mitigations` (magnn.study.compare): per
mitigation and seed, a few numbers from the mechanics stage (magnn.study.mechanics) that say what
the model's MAs do, and compare.md's second table.

- ma_entries_edited: the massive entries (r_ec above the intervention's threshold) that Sun et
  al.'s edit changed with every layer edited at once, summed over the analysed test graphs;
  max_r_ec: the largest r_ec over layers (how far from the threshold the model is);
- zero_loss_change / mean_loss_change: the test-loss change with every layer's massive entries set
  to zero / to their channel mean (None where nothing was edited: a note says so);
- int8_loss_change: the test-loss change with every layer's attention inputs fake-quantised to
  int8 (per-tensor absmax) at once; int8_worst_layer_loss_change: the largest change of one layer
  quantised alone (its name: int8_worst_layer);
- onset_growth_epoch / onset_threshold_epoch: the earliest layer's onset epoch (its probe ratio
  above 10x its untrained base / above the detection threshold; None where no layer crossed).
"""
from __future__ import annotations

from .report import format_number

__all__ = ["MECHANICS_NUMBERS", "mechanics_numbers", "mechanics_table"]

MECHANICS_NUMBERS = ("ma_entries_edited", "max_r_ec", "zero_loss_change", "mean_loss_change", "int8_loss_change",
                     "int8_worst_layer_loss_change", "onset_growth_epoch", "onset_threshold_epoch")


def mechanics_numbers(mechanics: dict, tag: str) -> dict:
    """One model's MECHANICS_NUMBERS from the mechanics stage's result, with "int8_worst_layer" and
    "notes" (why a number is None)."""
    row = dict.fromkeys(MECHANICS_NUMBERS)
    row.update(int8_worst_layer=None, notes=[])
    _onset(row, (mechanics.get("onset") or {}).get(tag))
    reason = (mechanics.get("not_run_models") or {}).get(tag) or mechanics.get("not_run")
    edit, quantised = (mechanics.get(part, {}).get(tag) for part in ("intervention", "quantisation"))
    if reason and not (edit and quantised):
        row["notes"].append(f"intervention and int8 not run: {reason}")
    if edit:
        _intervention(row, edit)
    if quantised:
        every, layers = quantised["all_layers"], quantised["layers"]
        row["int8_loss_change"] = every["delta_loss"]
        if layers:
            worst = max(layers, key=lambda layer: layer["delta_loss"])
            row.update(int8_worst_layer_loss_change=worst["delta_loss"], int8_worst_layer=worst["name"])
    return row


def _onset(row: dict, onset: dict | None) -> None:
    if not onset:
        row["notes"].append("MA onset: no MA curves in metrics.json (or no probe of graphs)")
        return
    for kind in ("growth", "threshold"):
        epochs = [layer[f"onset_{kind}"] for layer in onset["layers"] if layer[f"onset_{kind}"] is not None]
        row[f"onset_{kind}_epoch"] = min(epochs) if epochs else None
    if row["onset_growth_epoch"] is None:
        row["notes"].append(f"MA onset: no layer's probe ratio rose above {format_number(onset['factor'])}x its base "
                            f"in {len(onset['epochs'])} epochs")


def _intervention(row: dict, edit: dict) -> None:
    every, layers = edit["all_layers"], edit["layers"]
    entries = sum(layer["ma_entries"] for layer in layers)  # a result without edit counts: the clean pass's
    edited = {mode: every.get(f"edited_{mode}", entries) for mode in ("zero", "mean")}
    row["ma_entries_edited"] = edited["zero"]
    row["max_r_ec"] = max((layer.get("max_ratio") or 0.0 for layer in layers), default=None)
    for mode in ("zero", "mean"):
        if edited[mode]:
            row[f"{mode}_loss_change"] = every[f"delta_{mode}"]
    if not edited["zero"]:
        row["notes"].append(f"intervention: no entry above the threshold {format_number(edit['threshold'])} "
                            f"(largest r_ec {format_number(row['max_r_ec'])}): nothing edited, no loss change to "
                            "report (a lower --mechanics-threshold edits the largest entries)")


def _cell(value: dict, seeds: int, missing: str, fmt) -> str:
    """mean [interval] over the seeds that have the number; `missing` where none has it, the count where some."""
    if value["n"] == 0:
        return missing
    text = fmt(value["mean"]) + (f" [{fmt(value['low'])}, {fmt(value['high'])}]" if value["n"] >= 2 else "")
    return text if value["n"] == seeds else f"{text} ({value['n']}/{seeds} seeds)"


COLUMNS = (("ma_entries_edited", "MA entries edited", "-"), ("max_r_ec", "largest r_ec", "-"),
           ("zero_loss_change", "loss change, MAs zeroed", "nothing edited"),
           ("mean_loss_change", "loss change, MAs at their mean", "nothing edited"),
           ("int8_loss_change", "int8 loss change, all layers", "-"),
           ("int8_worst_layer_loss_change", "int8, worst layer alone", "-"),
           ("onset_growth_epoch", "MA onset epoch (10x base)", "never"),
           ("onset_threshold_epoch", "onset epoch (> threshold)", "never"))


def _graphs(cap) -> str:
    return "every test graph" if cap is None else f"the first {cap} test graphs (all, if fewer)"


def mechanics_table(summary: dict, fmt) -> list[str]:
    """compare.md's second table (what the MAs do, per mitigation) and the per-seed notes."""
    seeds = len(summary["seeds"])
    lines = ["", "## What the MAs do (mechanics stage, docs/MECHANICS.md)", "",
             f"On {_graphs(summary['mechanics_graphs'])} of each seed. Intervention (Sun et al.): "
             f"entries with r_ec > {format_number(summary['intervention_threshold'])} (--mechanics-threshold) set to "
             "zero / to their channel mean, every layer at once; int8: attention inputs fake-quantised (per-tensor "
             f"absmax); onset: the earliest layer's, on the training probe (threshold "
             f"{format_number(summary['threshold'])}). Cells: mean [95 % interval] over the seeds that have the "
             "number (largest r_ec: geometric mean, log-scale interval).",
             "", "| mitigation | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row in summary["rows"]:
        cells = [_cell(row[key], seeds, missing, fmt) for key, _, missing in COLUMNS]
        lines.append(f"| {row['mitigation']} | " + " | ".join(cells) + " |")
    notes = [f"- {row['mitigation']}, seed {seed}: {note}" for row in summary["rows"]
             for seed, items in row["notes"].items() for note in items]
    return lines + (["", "Notes:", *notes] if notes else [])
