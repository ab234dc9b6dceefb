"""Graph transformers with edge features on `FusedEdgeAttention`: GraphTransformer, GraphiT, SAN.

    info = magnn.data.DatasetInfo(...)
    pre_transform = transforms_for("san", info)          # positional encodings the model reads
    model = build_model("san", info, ebt="edge")         # class defaults (original papers)
    model = build_model("gt", info, preset="paper")      # the MA paper's settings for info's dataset
    out = model(batch)  # [num_graphs, num_tasks] or [N, num_tasks]
"""
from __future__ import annotations

from .base import NON_EDGE_TYPE
from .config import GraphiTConfig, GraphTransformerConfig, ModelConfig, SANConfig
from .graph_transformer import GraphTransformer
from .graphit import GraphiT
from .positional import LaplacianPE, RandomWalkKernel, SANEigenPE
from .presets import PRESETS, Preset, dataset_key, get_preset
from .registry import MODELS, build_model, model_config, transforms_for
from .san import SAN

__all__ = [
    "GraphTransformer", "GraphiT", "SAN", "MODELS", "build_model", "transforms_for", "model_config",
    "LaplacianPE", "SANEigenPE", "RandomWalkKernel", "PRESETS", "Preset", "get_preset", "dataset_key",
    "NON_EDGE_TYPE", "ModelConfig", "GraphTransformerConfig", "GraphiTConfig", "SANConfig",
]
