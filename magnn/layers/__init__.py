"""magnn's attention layers: `FusedEdgeAttention` (magnn's own) and `TransformerConv` (a PyG
`MessagePassing` layer, drop-in for `torch_geometric.nn.TransformerConv`)."""
from ..core.errors import ArgumentError, LayerInputError  # noqa: F401  (importable here)
from .attention import (  # noqa: F401
    EBT_INIT_STD, RESET_INITS, FusedEdgeAttention, check_ebt_init, check_positive_int, linear_parameters,
    projection, projects_in_kernel, reset_projection,
)
from .transformer_conv import TransformerConv  # noqa: F401

__all__ = ["FusedEdgeAttention", "TransformerConv"]
