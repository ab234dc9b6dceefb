"""magnn: fused sparse kernels for edge-featured graph attention with
massive-activation telemetry reduced inside the kernels.

The public names below load on first access (PEP 562), so `import magnn` and the command line's
`magnn --help` / `magnn --version` do not import torch; `magnn.Graph` (and the others) import it
when first used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it (a name equal to its module is that submodule)
_LAZY = {
    "Graph": "magnn.core.graph",
    "EdgeStats": "magnn.stats",
    "collect": "magnn.stats",
    "edge_attention": "magnn.functional",
    "functional": "magnn.functional",
    "stats": "magnn.stats",
}

__all__ = ["Graph", "EdgeStats", "collect", "edge_attention", "functional", "stats", "__version__"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import functional, stats
    from .core.graph import Graph
    from .functional import edge_attention
    from .stats import EdgeStats, collect


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
