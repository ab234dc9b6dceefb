"""The Triton backend's entry point (magnn.functional's contract) over the kernels in magnn_kernels/."""
from __future__ import annotations

from magnn_kernels.edge_attention import run_triton_backend, unavailable_reason  # noqa: F401
