"""Figures for detection reports (matplotlib, written as PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .detect import neg_log10_edges  # noqa: E402

STYLES = {"base": ("tab:blue", "--"), "trained": ("tab:red", "-")}


def _style(label: str):
    for key, style in STYLES.items():
        if label.startswith(key):
            return style
    return (None, "-")


def plot_sorted_ratios(reports: dict, path, *, title: str = "", threshold: float = 1000.0) -> Path:
    """Per layer: each batch's max edge ratio, sorted descending (paper Fig. 2 / 4)."""
    first = next(iter(reports.values()))
    names = [layer.name for layer in first.layers]
    cols = min(5, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        for label, report in reports.items():
            layer = next((l for l in report.layers if l.name == name), None)
            if layer is None:
                continue
            values = layer.sorted_ratios()
            color, dash = _style(label)
            ax.plot(np.arange(1, len(values) + 1), values, dash, color=color, label=label, linewidth=1.3)
        ax.axhline(threshold, color="gray", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
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


def plot_edge_ratios(edge_ratio_by_label: dict, path, *, title: str = "", threshold: float = 1000.0) -> Path:
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
        if counts.size:
            width = np.maximum(high - low, 1e-12)
            density = counts / counts.sum() / width
            ax.bar(low, density, width=width, align="edge", color="tab:gray", alpha=0.6, label="histogram")
            if layer.gamma is not None:
                grid = np.linspace(low.min(), high.max(), 400)
                ax.plot(grid, layer.gamma.pdf(grid), color="tab:red", linewidth=1.2,
                        label=f"gamma fit, KS={layer.gamma.ks:.3f}")
        ax.axvline(-3, color="black", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(layer.name, fontsize=8)
        ax.set_xlabel("-log10(ratio)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for index in range(len(layers), rows * cols):
        axes[index // cols][index % cols].axis("off")
    fig.suptitle(title or "-log10(|a| / edge median); dotted line at ratio 1000", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_type_heatmap(report, path, *, type_names=(), title: str = "") -> Path:
    """Layer x edge-type MA frequency (share of edges of that type whose r_e exceeds the threshold)."""
    layers = [l.to_dict() for l in report.layers]
    types = sorted({int(t) for layer in layers for t in layer["edge_types"]})
    matrix = np.zeros((len(layers), len(types)))
    for row, layer in enumerate(layers):
        for col, t in enumerate(types):
            matrix[row, col] = layer["edge_types"].get(str(t), {}).get("ma_frequency", 0.0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(len(types), 1), 0.9 + 0.35 * len(layers)))
    image = ax.imshow(matrix, aspect="auto", cmap="magma", vmin=0.0, vmax=max(matrix.max(), 1e-9))
    labels = [type_names[t] if t < len(type_names) else str(t) for t in types]
    ax.set_xticks(range(len(types)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [l["name"] for l in layers], fontsize=7)
    ax.set_xlabel("edge type")
    fig.colorbar(image, ax=ax, label="MA edge frequency")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_ablation(frequencies: dict, path, *, title: str = "") -> Path:
    """Bar chart: MA frequency per edge type with and without the added meaningless edges."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels = sorted({t for freq in frequencies.values() for t in freq})
    width = 0.8 / max(len(frequencies), 1)
    for index, (name, freq) in enumerate(frequencies.items()):
        ax.bar(np.arange(len(labels)) + index * width, [freq.get(t, 0.0) for t in labels], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(frequencies) - 1) / 2, labels, rotation=20, fontsize=8)
    ax.set_ylabel("MA edge frequency (all layers)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
