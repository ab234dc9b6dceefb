"""Triton kernels of magnn's fused edge attention, registered as the `magnn_triton::` torch ops.

Imports nothing from magnn but magnn.core (the op contract, binning);
the backend adapter that magnn.functional calls is magnn/backends/triton.py.
The Python entry is `magnn_kernels.edge_attention.edge_attention`; see that
module for the layout of the operator's files.
"""
from . import edge_attention  # noqa: F401  (registers the magnn_triton:: ops)
from . import edge_attention_proj  # noqa: F401  (and their in-operator projection variants)
from .utils import INTERPRETED  # noqa: F401
