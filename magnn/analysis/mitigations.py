"""The mitigation comparison's figure (`magnn study --compare-mitigations`, magnn.study.compare):
per mitigation, its MA growth over its own base, sink mass, task loss and attack gain, each a bar
at the mean over seeds with its interval."""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot_mitigation_comparison", "PANELS", "MECHANICS_PANELS"]

# (row key, axis label, log scale)
PANELS = (("growth", "MA growth over own base (q99.9 of r_e)", True),
          ("sink_mass", "mean sink mass", False),
          ("task_loss", "test loss", False),
          ("attack_gain", "attack gain (sigma 0.1)", False))
# what the MAs do (magnn.study.compare_mechanics): loss changes around 0, onset in epochs
MECHANICS_PANELS = (("zero_loss_change", "test-loss change, MAs zeroed", False),
                    ("mean_loss_change", "test-loss change, MAs at their mean", False),
                    ("int8_loss_change", "test-loss change, int8 attention inputs", False),
                    ("onset_growth_epoch", "MA onset epoch (earliest layer, 10x base)", False))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_mitigation_comparison(rows: list, path, *, title: str = "", panels: tuple = PANELS) -> Path:
    """rows: [{"mitigation", key: {"mean", "low", "high"}} for the panels' keys ((key, axis label, log
    scale) each: PANELS, MECHANICS_PANELS)]; a missing mean is left out of its panel (its name marked
    "n/a"), a missing interval drawn without error bar."""
    from .figures import _save, _subplots

    fig, axes = _subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for axis, (key, label, log) in zip(axes, panels):
        names = []
        for index, row in enumerate(rows):
            value = row.get(key) or {}
            names.append(row["mitigation"] if _finite(value.get("mean")) else f"{row['mitigation']} (n/a)")
            if not _finite(value.get("mean")):
                continue
            low, high = value.get("low"), value.get("high")
            error = [[value["mean"] - low], [high - value["mean"]]] if _finite(low) and _finite(high) else None
            axis.bar(index, value["mean"], yerr=error, capsize=4, color=f"C{index}")
        axis.set_xticks(range(len(names)))
        axis.set_xlim(-0.6, len(names) - 0.4)
        axis.set_xticklabels(names, rotation=30, ha="right")
        axis.set_title(label, fontsize=9)
        if log:
            axis.set_yscale("log")
            axis.axhline(1.0, color="grey", linestyle=":")
        else:
            axis.axhline(0.0, color="grey", linewidth=0.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
