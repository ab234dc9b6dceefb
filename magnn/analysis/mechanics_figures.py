"""Figures of the mechanics analyses (PNG): the MA intervention, the MA onset beside the lr schedule,
and int8 sensitivity. Each takes one or more labelled results as the analyses return them
(`to_dict()` / dict form, as report.json holds them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.constants import MA_THRESHOLD
from .figures import _save, _style, _subplots

__all__ = ["plot_intervention", "plot_onset", "plot_quantisation"]


def _short(name: str) -> str:
    """A layer's module path shortened for an axis tick ("layers.3.attention" -> "3")."""
    parts = [p for p in name.split(".") if p.isdigit()]
    return parts[0] if parts else name


def _bars(ax, rows: list, series: dict, ylabel: str) -> None:
    """Grouped bars per layer (plus "all"), one group member per series {label: values}."""
    names = [_short(r["name"]) for r in rows] + ["all"]
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for index, (label, values) in enumerate(series.items()):
        ax.bar(x + (index - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.axhline(0.0, color="gray", linewidth=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=7)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def plot_intervention(results: dict, path, *, title: str = "") -> Path:
    """Per model (label -> intervention result dict): the test-loss change when each layer's massive
    entries are set to zero and to their channel mean (bars), and the massive entries edited (line)."""
    results = {label: r for label, r in results.items() if r}
    fig, axes = _subplots(1, max(1, len(results)), figsize=(max(5.0, 5.0 * len(results)), 3.6), squeeze=False)
    for ax, (label, result) in zip(axes[0], results.items()):
        rows, every = result["layers"], result["all_layers"]
        _bars(ax, rows, {f"{mode}": [r[f"delta_{mode}"] for r in rows] + [every[f"delta_{mode}"]]
                         for mode in ("zero", "mean")}, "test loss change")
        counts = ax.twinx()
        counts.plot(np.arange(len(rows)), [r["ma_entries"] for r in rows], "k.", label="MA entries")
        counts.set_ylabel("MA entries edited", fontsize=8)
        counts.tick_params(labelsize=7)
        ax.set_title(f"{label} (clean loss {result['loss_clean']:.4g})", fontsize=8)
    if not results:
        axes[0][0].text(0.5, 0.5, "no intervention results", ha="center", va="center")
    fig.suptitle((title + ": " if title else "") + "massive activations set to zero vs their mean", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_onset(curves: dict, onsets: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Per model (label -> metrics.json "ma_over_epochs"), each layer's max edge ratio over epochs with
    its onset epoch marked (onsets: label -> onset result), and the lr schedule below."""
    labels = [label for label in curves if curves[label] and (onsets.get(label) or {}).get("layers")]
    fig, axes = _subplots(2, max(1, len(labels)), figsize=(max(5.0, 5.0 * len(labels)), 5.5), squeeze=False,
                          sharex="col", gridspec_kw={"height_ratios": [3, 1]})
    for column, label in enumerate(labels):
        top, bottom, result = axes[0][column], axes[1][column], onsets[label]
        epochs = np.asarray(curves[label]["epochs"], dtype=float)
        colours = [f"C{i % 10}" for i in range(len(result["layers"]))]
        for index, (row, colour) in enumerate(zip(result["layers"], colours)):
            values = [np.nan if r[index] is None else r[index] for r in curves[label]["max_ratio_edge"]]
            top.plot(epochs, values, color=colour, linewidth=1.0, label=_short(row["name"]))
            if row["base_source"] == "untrained model" and row["base"] is not None:  # epoch 0: the own base
                top.plot([0.0, epochs[0]], [row["base"], values[0]], ":", color=colour, linewidth=0.8, marker="o",
                         markersize=2.5)
            if row["onset_growth"] is not None:
                top.axvline(row["onset_growth"], color=colour, linewidth=0.6, linestyle="--")
        top.axhline(threshold, color="gray", linewidth=0.8, linestyle=":")
        top.set_yscale("log")
        top.set_ylabel("max edge ratio (probe)", fontsize=8)
        top.set_title(f"{label}: epoch 0 = untrained; dashed = onset ({result['factor']:g}x own base)", fontsize=8)
        top.legend(fontsize=6, ncol=2, title="layer", title_fontsize=6)
        lrs = [np.nan if v is None else v for v in result["lr_after_epoch"]]
        bottom.step(epochs, lrs, where="post", color=_style(label)[0])
        bottom.set_ylabel("lr", fontsize=8)
        bottom.set_xlabel("epoch", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
    if not labels:
        axes[0][0].text(0.5, 0.5, "no MA curves recorded", ha="center", va="center")
    fig.suptitle((title + ": " if title else "") + "when MAs appear", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_quantisation(results: dict, path, *, title: str = "") -> Path:
    """Per model (label -> quantisation result dict): the task-loss change with each layer's attention
    inputs in int8 (and all layers), and each layer's node_out error."""
    results = {label: r for label, r in results.items() if r}
    fig, axes = _subplots(2, max(1, len(results)), figsize=(max(5.0, 5.0 * len(results)), 5.5), squeeze=False)
    for column, (label, result) in enumerate(results.items()):
        rows = result["layers"]
        _bars(axes[0][column], rows, {"int8 inputs": [r["delta_loss"] for r in rows]
                                      + [result["all_layers"]["delta_loss"]]}, "test loss change")
        axes[0][column].set_title(f"{label} (clean loss {result['loss_clean']:.4g})", fontsize=8)
        _bars(axes[1][column], rows,
              {"node_out rel. error": [r["output_rel_error"] for r in rows] + [np.nan]}, "relative error")
    if not results:
        axes[0][0].text(0.5, 0.5, "no quantisation results", ha="center", va="center")
    fig.suptitle((title + ": " if title else "") + "int8 attention inputs (per-tensor absmax)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
