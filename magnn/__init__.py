"""magnn: fused sparse kernels for edge-featured graph attention with
massive-activation telemetry reduced inside the kernels."""
from .core.graph import Graph
from . import functional, stats
from .functional import edge_attention
from .stats import EdgeStats, collect

__version__ = "0.1.0"

__all__ = ["Graph", "EdgeStats", "collect", "edge_attention", "functional", "stats", "__version__"]
