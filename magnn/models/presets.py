"""The MA paper's experimental settings (SPEC §10), one per (model, dataset).

`build_model(..., preset=...)` applies the model columns; the training
columns (lr, scheduler patience, min_lr, batch size) and the shared protocol
are here for the trainer. Shared model settings of the protocol: BatchNorm,
sparse graphs (real edges only: SAN without fake edges, GraphiT without the
kernel weighting), no positional encoding, EBT parameters drawn from a
standard normal (the paper code's initialisation).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["Preset", "PRESETS", "PROTOCOL", "DATASETS", "dataset_key", "get_preset"]

from ..core.constants import DATASETS  # re-exported: the datasets presets exist for

# shared by every row of the table
PROTOCOL = {
    "seed": 41,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "lr_factor": 0.5,  # ReduceLROnPlateau(mode="min") on the validation loss
    "max_epochs": 1000,
}

# the model settings every preset shares, per model
_SHARED_MODEL = {
    "gt": {"norm": "batch", "pe": None, "ebt_init": "standard_normal"},
    "graphit": {"norm": "batch", "pe": None, "ebt_init": "standard_normal"},
    "san": {"norm": "batch", "pe": None, "ebt_init": "standard_normal", "full_graph": False},
}


@dataclass(frozen=True)
class Preset:
    model: str
    dataset: str
    num_layers: int
    hidden: int
    heads: int
    readout: Optional[str]
    residual: bool
    dropout: float
    lr: float
    patience: int
    min_lr: float
    batch_size: int

    def model_kwargs(self) -> dict:
        kwargs = {key: getattr(self, key) for key in ("num_layers", "hidden", "heads", "readout", "residual", "dropout")}
        kwargs.update(_SHARED_MODEL[self.model])
        return kwargs

    def train_kwargs(self) -> dict:
        kwargs = {key: getattr(self, key) for key in ("lr", "patience", "min_lr", "batch_size")}
        kwargs.update(PROTOCOL)
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


_ROWS = [
    # model, dataset, L, hidden, heads, readout, residual, dropout, lr, patience, min_lr, batch
    ("gt", "zinc", 10, 64, 8, "mean", True, 0.0, 7e-4, 15, 1e-6, 128),
    ("gt", "tox21", 10, 444, 12, "mean", True, 0.0, 7e-4, 15, 1e-6, 128),
    ("gt", "ogbn-proteins", 3, 64, 8, None, False, 0.0, 7e-4, 15, 1e-6, 512),
    ("san", "zinc", 10, 56, 8, "sum", True, 0.0, 7e-4, 25, 1e-6, 32),
    ("san", "tox21", 10, 88, 8, "sum", True, 0.5, 7e-4, 25, 1e-6, 128),
    ("san", "ogbn-proteins", 3, 88, 8, None, False, 0.5, 7e-4, 25, 1e-5, 512),
    ("graphit", "zinc", 10, 64, 8, "sum", True, 0.0, 3e-4, 25, 1e-6, 32),
    ("graphit", "tox21", 10, 88, 8, "sum", True, 0.5, 7e-4, 25, 1e-6, 256),
    ("graphit", "ogbn-proteins", 3, 88, 8, None, False, 0.5, 7e-4, 25, 1e-5, 768),
]
PRESETS: dict[tuple[str, str], Preset] = {(row[0], row[1]): Preset(*row) for row in _ROWS}


def dataset_key(name: str) -> str:
    """'ZINC', 'zinc-subset', 'ogbg-moltox21', 'ogbn-proteins', ... -> 'zinc' | 'tox21' | 'ogbn-proteins'."""
    lowered = name.lower()
    if "zinc" in lowered:
        return "zinc"
    if "tox21" in lowered:
        return "tox21"
    if "protein" in lowered:
        return "ogbn-proteins"
    raise ValueError(f"no preset for dataset {name!r}; presets exist for {DATASETS}")


def get_preset(model: str, dataset: str) -> Preset:
    key = (model, dataset_key(dataset))
    if key not in PRESETS:
        raise ValueError(f"no preset for model {model!r}; choose one of 'gt', 'graphit', 'san'")
    return PRESETS[key]
