"""Models by name: `build_model`, `model_config`, `transforms_for` over `MODELS`."""
from __future__ import annotations

import inspect
from typing import Optional

from torch_geometric.transforms import Compose

from ..data.info import DatasetInfo
from .graph_transformer import GraphTransformer
from .graphit import GraphiT
from .presets import get_preset
from .san import SAN

MODELS = {"gt": GraphTransformer, "graphit": GraphiT, "san": SAN}


def _model_class(name: str):
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(MODELS)}")
    return key, MODELS[key]


def _preset_kwargs(key: str, info: DatasetInfo, preset: Optional[str]) -> dict:
    if preset is None:
        return {}
    dataset = info.name if preset == "paper" else preset
    return get_preset(key, dataset).model_kwargs()


def model_config(name: str, info: DatasetInfo, *, preset: Optional[str] = None, **overrides) -> dict:
    """Every constructor argument of the model `build_model` would build (defaults filled in)."""
    key, cls = _model_class(name)
    config = {
        param.name: param.default
        for param in inspect.signature(cls.__init__).parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = set(overrides) - set(config)
    if unknown:
        raise TypeError(f"{cls.__name__} has no argument(s) {sorted(unknown)}")
    config.update(_preset_kwargs(key, info, preset))
    config.update(overrides)
    return config


def build_model(name: str, info: DatasetInfo, *, ebt: Optional[str] = None, preset: Optional[str] = None, **overrides):
    """Builds "gt", "graphit" or "san" for `info`.

    preset: None (the class defaults, which follow the original papers),
      "paper" (SPEC §10's row for info's dataset) or a dataset name ("zinc",
      "tox21", "ogbn-proteins") whose row to use. `overrides` win over both.
    """
    key, cls = _model_class(name)
    return cls(info, **model_config(key, info, preset=preset, ebt=ebt, **overrides))


def transforms_for(
    name: str, info: DatasetInfo, *, preset: Optional[str] = None, dense_max_nodes: int = 1000, **overrides
) -> Optional[Compose]:
    """The pre-transforms (a Compose, or None if none is needed) that the model
    `build_model(name, info, preset=preset, **overrides)` reads in `forward`.

    GraphiT's kernel uses p = 1 (edges plus self loops) for node-level
    datasets (one large graph), as SPEC §5 prescribes.
    """
    key, cls = _model_class(name)
    overrides.pop("ebt", None)  # irrelevant to the inputs; accepted so build_model's kwargs can be reused
    config = model_config(key, info, preset=preset, **overrides)
    return cls.transforms(info, config, dense_max_nodes=dense_max_nodes)
