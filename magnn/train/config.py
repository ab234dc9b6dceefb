"""TrainConfig: everything `magnn train` takes (what it resolves to: magnn.train.settings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainConfig:
    """Everything `magnn train` takes, except --resume (an action, `train(config, resume=True)`,
    not a setting: it is not saved in checkpoints). --layers, --hidden and --heads are model
    keywords and travel in `overrides` (num_layers, hidden, heads; any other model keyword too),
    as do the named variants (--architecture, --ebt-compat: magnn.models.presets.variant_overrides).

    `validate()` raises the command line's UserError for a bad setting; `train()` calls it.
    """

    dataset: str = "tox21"
    model: str = "gt"
    ebt: Optional[str] = None
    epochs: int = 10
    out: str = "runs/train"
    data_root: Optional[str] = None
    device: str = "cpu"
    seed: int = 41
    max_graphs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    preset: Optional[str] = None  # "paper" (SPEC §10) or "quick" (CPU-sized); None is the paper's sizes
    overrides: dict = field(default_factory=dict)  # model keyword overrides (num_layers, hidden, heads, ...)
    bf16: bool = False
    activation_checkpointing: bool = False
    backend: str = "auto"
    sampled: bool = False  # ogbn-proteins: neighbour-sampled training instead of full batch
    fanouts: tuple = (5, 10, 15)
    schedule: Optional[str] = None  # "plateau" (the paper's) or "cosine" (warmup, then cosine decay); None: the preset's
    warmup_epochs: Optional[int] = None  # linear lr warmup epochs of the cosine schedule; None: the preset's
    max_time: Optional[float] = None  # --max-time: stop after this many MINUTES of training epochs (the paper's max_time)
    tensorboard: Optional[str] = None  # --tensorboard DIR: loss, metrics, lr and per-layer MA figures every epoch
    tox21_csv: Optional[str] = None  # --tox21-csv FILE: TOX21 from the user's MoleculeNet-layout CSV
    ma_probe_graphs: int = 32  # "ma_over_epochs": MA figures on the first N validation graphs after every epoch; 0: off

    def validate(self, *, environment: bool = True) -> TrainConfig:
        """UserError naming the option when a setting is out of range (magnn.train.validation); returns self."""
        from .validation import check_train_config

        check_train_config(self, environment=environment)
        return self

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """The config a JSON record holds (metrics.json "config", a checkpoint's "config")."""
        config = cls(**raw)
        if isinstance(config.fanouts, list):
            config.fanouts = tuple(config.fanouts)
        return config
