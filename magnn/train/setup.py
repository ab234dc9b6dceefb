"""What a run is built from: the data splits, the model, the lr schedule."""
from __future__ import annotations

import math

from ..distributed import is_distributed
from .config import TrainConfig
from .settings import model_overrides


def prepare(config: TrainConfig):
    """(splits, info, model) for a config; splits hold lists of transformed graphs or one Data."""
    from ..models import transforms_for

    splits, info = _load(config)
    splits = {("val" if name == "valid" else name): part for name, part in splits.items()}
    transform = transforms_for(config.model, info, preset="paper", **model_overrides(config))
    if transform is not None:
        splits = {name: _apply(transform, part) for name, part in splits.items()}
    return splits, info, build(config, info)


def _load(config: TrainConfig):
    """The dataset's splits and info. Under torchrun rank 0 loads first: a raw dataset folder is
    processed (and cached) once, not by every rank at the same time (ogb's processing of one
    folder is not concurrency-safe)."""
    from ..data import load_dataset

    kwargs = {} if config.max_graphs is None else {"max_graphs": config.max_graphs}
    if config.tox21_csv is not None:
        kwargs["csv_path"] = config.tox21_csv
    if not is_distributed():
        return load_dataset(config.dataset, root=config.data_root, **kwargs)
    import torch.distributed as dist

    if dist.get_rank() != 0:
        dist.barrier()
    loaded = load_dataset(config.dataset, root=config.data_root, **kwargs)
    if dist.get_rank() == 0:
        dist.barrier()
    return loaded


def build(config: TrainConfig, info):
    """The model a config describes, for a dataset already loaded (`info`)."""
    from ..models import build_model

    return build_model(config.model, info, ebt=config.ebt, preset="paper", **model_overrides(config))


def _apply(transform, part):
    from torch_geometric.data import Data

    if isinstance(part, Data):
        return transform(part)
    return [transform(graph) for graph in part]


def make_scheduler(optimizer, settings: dict, epochs: int):
    """The per-epoch lr schedule `training_settings` names: "plateau" is ReduceLROnPlateau(min,
    factor 0.5) on the validation loss (the paper's; step it with that loss), "cosine" a linear
    warmup over warmup_epochs, then a cosine decay reaching 1% of lr at the last epoch (step()
    after every epoch)."""
    import torch

    if settings["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=settings["patience"])
    warmup = min(settings["warmup_epochs"], max(epochs - 1, 0))

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = min((epoch - warmup) / max(epochs - 1 - warmup, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
