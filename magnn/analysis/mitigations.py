"""The mitigation comparison's figure (`magnn study --compare-mitigations`, magnn.study.compare):
per mitigation, its MA growth over its own base, sink mass, task loss and attack gain, each a bar
at the mean over seeds with its interval."""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot_mitigation_comparison", "PANELS"]

# (row key, axis label, log scale)
PANELS = (("growth", "MA growth over own base (q99.9 of r_e)", True),
          ("sink_mass", "mean sink mass", False),
          ("task_loss", "test loss", False),
          ("attack_gain", "attack gain (sigma 0.1)", False))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_mitigation_comparison(rows: list, path, *, title: str = "") -> Path:
    """rows: [{"mitigation", key: {"mean", "low", "high"}} for the PANELS' keys]; a missing mean is
    left out of its panel, a missing interval drawn without error bar."""
    from .figures import _save, _subplots

    fig, axes = _subplots(1, len(PANELS), figsize=(4 * len(PANELS), 4))
    names = [row["mitigation"] for row in rows]
    for axis, (key, label, log) in zip(axes, PANELS):
        for index, row in enumerate(rows):
            value = row.get(key) or {}
            if not _finite(value.get("mean")):
                continue
            low, high = value.get("low"), value.get("high")
            error = [[value["mean"] - low], [high - value["mean"]]] if _finite(low) and _finite(high) else None
            axis.bar(index, value["mean"], yerr=error, capsize=4, color=f"C{index}")
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, rotation=30)
        axis.set_ylabel(label)
        if log:
            axis.set_yscale("log")
            axis.axhline(1.0, color="grey", linestyle=":")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
