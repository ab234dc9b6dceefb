"""When massive activations appear: per layer, the onset epoch of its MA curve beside the lr schedule.

Reads what `magnn train` records in metrics.json: "ma_over_epochs" (per epoch and layer, the
largest per-edge ratio r_e on a fixed probe; magnn.telemetry) and "history" (per epoch the learning
rate the schedule set for the next epoch). Per layer:

- base: the same layer's ratio on the same probe before training (the untrained model of the same
  seed, `base=`), or the first recorded epoch's when no base is given (`base_source` says which);
- onset_growth: the first epoch whose ratio exceeds `factor` (10) times the base;
- onset_threshold: the first epoch whose ratio exceeds the MA threshold (1000);
- the lr in effect during each onset epoch (the one set after the epoch before; None for epoch 1,
  whose initial lr the history does not record), and per epoch the lr set after it (the schedule).

None where a curve never crosses. The probe is a few validation graphs, so an onset says when that
probe's largest ratio crossed, not when every graph's did.
"""
from __future__ import annotations

from typing import Optional

from ..core.constants import MA_THRESHOLD

__all__ = ["GROWTH_FACTOR", "onset", "lr_after_epochs"]

GROWTH_FACTOR = 10.0


def lr_after_epochs(metrics: dict) -> dict:
    """{epoch (1-based): the lr the schedule set at the end of that epoch (for the next)}, from the
    history (the lr in effect during epoch e is the one set after epoch e-1; epoch 1 ran at the
    configured initial lr, warmup applied, which the history does not record)."""
    return {int(row["epoch"]) + 1: row.get("lr") for row in (metrics.get("history") or []) if "epoch" in row}


def _first(epochs: list, values: list, limit: float) -> Optional[int]:
    for epoch, value in zip(epochs, values):
        if value is not None and limit == limit and value > limit:
            return int(epoch)
    return None


def onset(metrics: dict, *, base: Optional[dict] = None, factor: float = GROWTH_FACTOR,
          threshold: float = MA_THRESHOLD) -> Optional[dict]:
    """Per layer, the onset epochs of metrics.json's MA curves (module docstring); None without curves.

    base: {layer: the untrained model's ratio on the same probe}; missing layers fall back to epoch 1."""
    curves = (metrics or {}).get("ma_over_epochs")
    if not curves or not curves.get("epochs"):
        return None
    epochs, names = curves["epochs"], curves["layers"]
    set_after = lr_after_epochs(metrics)
    lr_of = {epoch: set_after.get(epoch - 1) for epoch in epochs}  # in effect during the epoch (None: epoch 1)
    rows = []
    for index, name in enumerate(names):
        values = [row[index] if index < len(row) else None for row in curves["max_ratio_edge"]]
        given = (base or {}).get(name)
        source = "untrained model" if given is not None else "epoch 1"
        reference = given if given is not None else values[0]
        growth = _first(epochs, values, factor * reference) if reference is not None else None
        crossed = _first(epochs, values, threshold)
        finite = [v for v in values if v is not None]
        rows.append({"name": name, "base": reference, "base_source": source,
                     "onset_growth": growth, "onset_threshold": crossed,
                     "lr_at_onset_growth": lr_of.get(growth), "lr_at_onset_threshold": lr_of.get(crossed),
                     "final": values[-1], "peak": max(finite) if finite else None})
    return {"factor": factor, "threshold": threshold, "probe": curves.get("probe"), "epochs": list(epochs),
            "lr_after_epoch": [set_after.get(epoch) for epoch in epochs], "layers": rows}
