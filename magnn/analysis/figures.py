"""Figures for detection reports (matplotlib, written as PNG). report.json / report.md
numbers (report_json, format_number, layer_cell) live in magnn.study.report."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .detect import neg_log10_edges  # noqa: E402
from ..core.constants import MA_THRESHOLD  # noqa: E402

__all__ = ["plot_sorted_ratios", "plot_edge_ratios", "plot_layer_histograms", "plot_type_heatmap", "plot_ablation"]


def _all_nan_note(layer) -> str:
    stats = getattr(layer, "stats", None)
    if stats is not None and stats.all_nan:
        return f"all NaN ({stats.nan_count} values)"
    return ""

# colour says which model (no EBT / EBT), line style says base (dashed) or trained (solid)
VARIANT_COLORS = {"no_ebt": "tab:red", "ebt": "tab:green"}


def _style(label: str):
    variant = "no_ebt" if "no_ebt" in label else ("ebt" if "ebt" in label else None)
    color = VARIANT_COLORS.get(variant, "tab:blue" if label.startswith("base") else "tab:red")
    return color, ("--" if label.startswith("base") else "-")


def plot_sorted_ratios(reports: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Per layer: each batch's max edge ratio, sorted descending (paper Fig. 2 / 4)."""
    first = next(iter(reports.values()))
    names = [layer.name for layer in first.layers]
    cols = min(5, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        notes = []
        for label, report in reports.items():
            layer = next((l for l in report.layers if l.name == name), None)
            if layer is None:
                continue
            if _all_nan_note(layer):
                notes.append(f"{label}: {_all_nan_note(layer)}")
            values = layer.sorted_ratios()
            color, dash = _style(label)
            ax.plot(np.arange(1, len(values) + 1), values, dash, color=color, label=label, linewidth=1.3)
        ax.axhline(threshold, color="gray", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        if notes:  # nothing to plot for these: say why instead of an empty line
            ax.text(0.5, 0.5, "\n".join(notes), transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="tab:red")
        ax.set_xlabel("batch (sorted)", fontsize=8)
        if index % cols == 0:
            ax.set_ylabel("max |a| / median (edge)", fontsize=8)
        ax.tick_params(labelsize=7)
    for index in range(len(names), rows * cols):
        axes[index // cols][index % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + f"  (dotted: MA threshold {threshold:g})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_edge_ratios(edge_ratio_by_label: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Per-edge ratios r_e sorted descending, one line per model (paper Fig. 1)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, ratios in edge_ratio_by_label.items():
        values = np.sort(np.asarray(ratios, dtype=float)[np.isfinite(ratios)])[::-1]
        color, dash = _style(label)
        ax.plot(np.arange(1, len(values) + 1), values, dash, color=color, label=label)
    ax.axhline(threshold, color="gray", linestyle=":", linewidth=0.8, label=f"threshold {threshold:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("edge rank")
    ax.set_ylabel("r_e = max_c |a_ec| / median_c |a_ec|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_histograms(report, path, *, title: str = "") -> Path:
    """-log10(ratio) histogram per layer with the fitted gamma pdf and KS (paper Fig. 3)."""
    layers = [l for l in report.layers if l.stats is not None]
    cols = min(5, max(len(layers), 1))
    rows = int(np.ceil(len(layers) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for index, layer in enumerate(layers):
        ax = axes[index // cols][index % cols]
        low, high, counts = neg_log10_edges(layer.stats.hist_ratio)
        if _all_nan_note(layer):
            ax.text(0.5, 0.5, _all_nan_note(layer), transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="tab:red")
        if counts.size:
            width = np.maximum(high - low, 1e-12)
            density = counts / counts.sum() / width
            ax.bar(low, density, width=width, align="edge", color="tab:gray", alpha=0.6, label="histogram")
            if layer.gamma is not None:
                grid = np.linspace(low.min(), high.max(), 400)
                ax.plot(grid, layer.gamma.pdf(grid), color="tab:red", linewidth=1.2,
                        label=f"gamma fit, KS={layer.gamma.ks:.3f}")
        ax.axvline(-np.log10(MA_THRESHOLD), color="black", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(layer.name, fontsize=8)
        ax.set_xlabel("-log10(ratio)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for index in range(len(layers), rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle(title or f"-log10(|a| / edge median); dotted line at ratio {MA_THRESHOLD:g}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_type_heatmap(report, path, *, type_names=(), title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Layer x edge type: MA edge frequency (left) and the largest edge ratio r_e (right, log colour)."""
    from matplotlib.colors import LogNorm

    layers = [l.to_dict() for l in report.layers]
    types = sorted({int(t) for layer in layers for t in layer["edge_types"]})
    frequency = np.zeros((len(layers), len(types)))
    max_ratio = np.full((len(layers), len(types)), np.nan)
    for row, layer in enumerate(layers):
        for col, t in enumerate(types):
            cell = layer["edge_types"].get(str(t), {})
            frequency[row, col] = cell.get("ma_frequency", 0.0)
            max_ratio[row, col] = cell.get("max_ratio", np.nan)
    labels = [type_names[t] if 0 <= t < len(type_names) and type_names[t] else str(t) for t in types]
    width = 2.0 + 1.0 * max(len(types), 1)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 1.4 + 0.4 * len(layers)))
    panels = (
        (frequency, f"share of edges with r_e > {threshold:g}", dict(cmap="magma", vmin=0.0, vmax=max(frequency.max(), 1e-3)), "{:.2%}"),
        (max_ratio, "largest r_e (log colour)", dict(cmap="viridis", norm=LogNorm(vmin=max(np.nanmin(max_ratio), 1.0) if np.isfinite(max_ratio).any() else 1.0,
                                                                                vmax=max(np.nanmax(max_ratio), 10.0) if np.isfinite(max_ratio).any() else 10.0)), "{:.3g}"),
    )
    for ax, (matrix, label, style, fmt) in zip(axes, panels):
        image = ax.imshow(matrix, aspect="auto", **style)
        ax.set_xticks(range(len(types)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [l["name"] for l in layers], fontsize=7)
        ax.set_xlabel("edge type")
        fig.colorbar(image, ax=ax, label=label)
        if matrix.size <= 120:  # numbers in the cells while they stay legible
            for (row, col), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=6, color="white")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_ablation(summaries: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Per edge type, with and without the added meaningless edges: MA frequency and largest r_e."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    labels = sorted({t for summary in summaries.values() for t in summary})
    width = 0.8 / max(len(summaries), 1)
    positions = np.arange(len(labels))
    for index, (name, summary) in enumerate(summaries.items()):
        offset = positions + index * width
        left.bar(offset, [summary.get(t, {}).get("ma_frequency", 0.0) for t in labels], width, label=name)
        right.bar(offset, [summary.get(t, {}).get("max_ratio", np.nan) for t in labels], width, label=name)
    for ax in (left, right):
        ax.set_xticks(positions + width * (len(summaries) - 1) / 2, labels, rotation=20, fontsize=8)
        ax.legend(fontsize=8)
    left.set_ylabel(f"share of edges with r_e > {threshold:g}")
    left.set_ylim(bottom=0.0, top=max(left.get_ylim()[1], 1e-3))
    right.set_ylabel("largest r_e (all layers)")
    right.set_yscale("log")
    right.axhline(threshold, color="gray", linestyle=":", linewidth=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
