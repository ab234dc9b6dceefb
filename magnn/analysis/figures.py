"""Figures for detection reports (matplotlib, written as PNG). report.json / report.md
numbers (report_json, format_number, layer_cell) live in magnn.study.report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .gamma import neg_log10_edges
from ..core.constants import MA_THRESHOLD
from ..core.errors import missing_extra


def _subplots(*args, **kwargs):
    """(figure, axes) like pyplot.subplots, on a matplotlib Figure with its own Agg canvas: figures
    go to files without pyplot, so the caller's backend (a notebook's) is never switched."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise missing_extra(error, "magnn.analysis.figures") from error
    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*args, **kwargs)

__all__ = ["plot_sorted_ratios", "plot_edge_ratios", "plot_edge_ratios_by_layer", "plot_grid_panels",
           "plot_layer_histograms", "plot_type_heatmap", "plot_ablation",
           "plot_ma_over_epochs"]


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


def _base_band(curves) -> tuple:
    """(x, low, high): the pointwise min-max band of sorted-ascending curves (padded with NaN)."""
    curves = [np.asarray(c, dtype=float) for c in curves if len(c)]
    if not curves:
        return None
    width = max(len(c) for c in curves)
    stacked = np.full((len(curves), width), np.nan)
    for row, curve in enumerate(curves):
        stacked[row, : len(curve)] = curve
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            return np.arange(1, width + 1), np.nanmin(stacked, 0), np.nanmax(stacked, 0)


def _layer_panels(count: int, *, sharey: bool = False):
    """One panel per layer, up to 5 a row: (figure, the `count` panels in order, panels per row);
    the grid's unused cells are blanked."""
    cols = min(5, max(count, 1))
    rows = int(np.ceil(count / cols)) or 1
    fig, grid = _subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=sharey)
    for index in range(count, rows * cols):
        grid[index // cols][index % cols].axis("off")
    return fig, [grid[index // cols][index % cols] for index in range(count)], cols


def plot_sorted_ratios(reports: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD,
                       ascending: bool = True, base_band: bool = True) -> Path:
    """Per layer: each batch's max edge ratio, sorted (paper Fig. 2 / 4: ascending).

    With base_band, the reports labelled "base ..." are drawn as one grey band, the min-max over
    their runs and layers at each rank (the paper's base model band), the others as lines.
    """
    first = next(iter(reports.values()))
    names = [layer.name for layer in first.layers]
    band = None
    if base_band:
        base = [l.sorted_ratios()[::-1] if ascending else l.sorted_ratios()
                for label, report in reports.items() if label.startswith("base") for l in report.layers]
        band = _base_band(base)
        reports = {label: report for label, report in reports.items() if not label.startswith("base")} or reports
    fig, panels, cols = _layer_panels(len(names), sharey=True)
    for index, (name, ax) in enumerate(zip(names, panels)):
        notes = []
        for label, report in reports.items():
            layer = next((l for l in report.layers if l.name == name), None)
            if layer is None:
                continue
            if _all_nan_note(layer):
                notes.append(f"{label}: {_all_nan_note(layer)}")
            values = layer.sorted_ratios()[::-1] if ascending else layer.sorted_ratios()
            color, dash = _style(label)
            ax.plot(np.arange(1, len(values) + 1), values, dash, color=color, label=label, linewidth=1.3)
        if band is not None:
            ax.fill_between(band[0], band[1], band[2], color="tab:gray", alpha=0.35, linewidth=0,
                            label="base (min-max over runs/layers)")
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
    panels[0].legend(fontsize=7, loc="upper left")  # a fixed place: "best" is slow with many points
    fig.suptitle(title + f"  (dotted: MA threshold {threshold:g})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_edge_ratios(edge_ratio_by_label: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """Per-edge ratios r_e sorted descending, one line per model (paper Fig. 1)."""
    fig, ax = _subplots(figsize=(6, 3.6))
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
    ax.legend(fontsize=8, loc="lower left")  # a fixed place: "best" is slow with many points
    fig.tight_layout()
    return _save(fig, path)


def plot_edge_ratios_by_layer(ratios_by_label: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD,
                              base_band: bool = True) -> Path:
    """Paper Fig. 1 for every layer: per-edge ratios r_e sorted ascending, one panel per layer.

    ratios_by_label: label -> {layer name: r_e array}. x is the edge's rank as a fraction of the
    layer's edges (so splits of different sizes overlay); with base_band the "base ..." labels are
    one grey band, the min-max over their runs and layers at each rank fraction.
    """
    names: list = []
    for layers in ratios_by_label.values():
        names += [name for name in layers if name not in names]
    grid = np.linspace(0.0, 1.0, 512)

    def curve(values):
        values = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
        if values.size == 0:
            return None
        return np.interp(grid, np.linspace(0.0, 1.0, values.size), values) if values.size > 1 else np.full_like(grid, values[0])

    band = None
    lines = dict(ratios_by_label)
    if base_band and any(label.startswith("base") for label in ratios_by_label):
        base = [c for label, layers in ratios_by_label.items() if label.startswith("base")
                for c in (curve(v) for v in layers.values()) if c is not None]
        if base:
            band = (np.min(base, 0), np.max(base, 0))
        lines = {label: layers for label, layers in ratios_by_label.items() if not label.startswith("base")} or lines
    fig, panels, cols = _layer_panels(len(names), sharey=True)
    for index, (name, ax) in enumerate(zip(names, panels)):
        for label, layers in lines.items():
            if name in layers and (values := curve(layers[name])) is not None:
                color, dash = _style(label)
                ax.plot(grid, values, dash, color=color, label=label, linewidth=1.2)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="tab:gray", alpha=0.35, linewidth=0,
                            label="base (min-max over runs/layers)")
        ax.axhline(threshold, color="gray", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("edge rank (fraction, ascending)", fontsize=8)
        if index % cols == 0:
            ax.set_ylabel("r_e = max_c |a| / median_c |a|", fontsize=8)
        ax.tick_params(labelsize=7)
    if panels:
        panels[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title + f"  (dotted: threshold {threshold:g})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_grid_panels(panels: dict, path, *, rows: list, cols: list, title: str = "",
                     threshold: float = MA_THRESHOLD) -> Path:
    """The paper's 3x3 Fig. 2 / Fig. 4 layout: one panel per (row, col) = (dataset, model).

    panels: (row, col) -> {"lines": {label: sorted-ascending values}, "band": (low, high) or None,
    "note": str}; missing pairs are drawn as empty panels saying so.
    """
    fig, axes = _subplots(len(rows), len(cols), figsize=(3.4 * len(cols), 2.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            panel = panels.get((row, col))
            ax.set_title(f"{col.upper()} on {row}", fontsize=8)
            if not panel:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", fontsize=8, color="gray")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            band = panel.get("band")
            if band is not None:
                x = np.arange(1, len(band[0]) + 1)
                ax.fill_between(x, band[0], band[1], color="tab:gray", alpha=0.35, linewidth=0, label="base (min-max)")
            for label, values in panel.get("lines", {}).items():
                color, dash = _style(label)
                ax.plot(np.arange(1, len(values) + 1), values, dash, color=color, label=label, linewidth=1.2)
            ax.axhline(threshold, color="gray", linestyle=":", linewidth=0.8)
            ax.set_yscale("log")
            if panel.get("note"):
                ax.text(0.02, 0.95, panel["note"], transform=ax.transAxes, va="top", fontsize=6)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("test graph (sorted ascending)", fontsize=8)
            if c == 0:
                ax.set_ylabel("max edge ratio", fontsize=8)
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title + f"  (dotted: threshold {threshold:g})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_histograms(report, path, *, title: str = "") -> Path:
    """-log10(ratio) histogram per layer with the fitted gamma pdf and KS (paper Fig. 3)."""
    from matplotlib.collections import PolyCollection

    layers = [l for l in report.layers if l.stats is not None]
    fig, panels, _ = _layer_panels(len(layers))
    for layer, ax in zip(layers, panels):
        low, high, counts = neg_log10_edges(layer.stats.hist_ratio)
        if _all_nan_note(layer):
            ax.text(0.5, 0.5, _all_nan_note(layer), transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="tab:red")
        if counts.size:
            width = np.maximum(high - low, 1e-12)
            density = counts / counts.sum() / width
            # one collection of rectangles, not one bar patch per bin (thousands of bins draw slowly)
            floor = np.full_like(density, density[density > 0].min() / 10 if (density > 0).any() else 1e-12)
            corners = [(low, floor), (low, density), (low + width, density), (low + width, floor)]
            boxes = np.stack([np.stack(corner, axis=1) for corner in corners], axis=1)
            ax.add_collection(PolyCollection(boxes, facecolors="tab:gray", edgecolors="none", alpha=0.6,
                                             label="histogram"))
            ax.autoscale_view()
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
            ax.legend(fontsize=6, loc="upper right")  # a fixed place: "best" is slow with many bins
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
    fig, axes = _subplots(1, 2, figsize=(2 * width, 1.4 + 0.4 * len(layers)))
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
    fig, (left, right) = _subplots(1, 2, figsize=(11, 3.6))
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


def plot_ma_over_epochs(curves_by_label: dict, path, *, title: str = "", threshold: float = MA_THRESHOLD) -> Path:
    """MA emergence over training: per layer, the probe's max edge ratio (top row) and median |a|
    (bottom row) after every epoch, one line per run label (e.g. "no_ebt", "ebt").

    curves_by_label: label -> a metrics.json "ma_over_epochs" dict ({"probe", "layers", "epochs",
    "max_ratio_edge", "median_abs"}, see magnn.telemetry); None entries (no finite value) are gaps.
    Labels without curves (None or no epochs) are skipped; with none left the figure says so.
    """
    curves_by_label = {label: c for label, c in curves_by_label.items() if c and c.get("epochs")}
    names: list = []
    for curves in curves_by_label.values():
        names += [name for name in curves.get("layers", []) if name not in names]
    cols = max(1, len(names))
    fig, axes = _subplots(2, cols, figsize=(min(3.0 * cols, 30), 5.0), squeeze=False, sharex=True)
    if not names:
        axes[0][0].text(0.5, 0.5, "no MA curves recorded", ha="center", va="center")
    for index, name in enumerate(names):
        top, bottom = axes[0][index], axes[1][index]
        for label, curves in curves_by_label.items():
            if name not in curves["layers"]:
                continue
            column = curves["layers"].index(name)
            epochs = np.asarray(curves["epochs"], dtype=float)
            color, dash = _style(label)
            for ax, key in ((top, "max_ratio_edge"), (bottom, "median_abs")):
                values = np.asarray([np.nan if row[column] is None else row[column] for row in curves[key]], dtype=float)
                ax.plot(epochs, values, dash, color=color, label=label, linewidth=1.2, marker="." if len(epochs) < 30 else None)
        top.axhline(threshold, color="gray", linewidth=0.8, linestyle=":")
        top.set_title(name, fontsize=8)
        for ax in (top, bottom):
            ax.set_yscale("log")
            ax.tick_params(labelsize=7)
        bottom.set_xlabel("epoch", fontsize=8)
        if index == 0:
            top.set_ylabel("max edge ratio", fontsize=8)
            bottom.set_ylabel("median |a|", fontsize=8)
    if names:
        axes[0][0].legend(fontsize=7)
    probes = sorted({c.get("probe", "") for c in curves_by_label.values()} - {""})
    fig.suptitle((title + "  " if title else "") + (f"probe: {probes[0]}" if len(probes) == 1 else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    """The figure as PNG, written atomically inside its folder (magnn.core.files)."""
    import io

    from ..core.files import write_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")  # the figure is not pyplot's: nothing to close
    write_atomically(path, buffer.getvalue(), durable=False)
    return path
