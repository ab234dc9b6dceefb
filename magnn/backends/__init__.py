"""Backends of the fused edge attention, one module each: `reference` (pure PyTorch, the
oracle), `cpu` (C++ kernels in csrc/), `triton` (kernels in magnn_kernels/).

Each exposes ``run_<name>_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt,
ebt_params, mantissa_bits, tap) -> (node_out, edge_out, RawStats | None)`` and
``unavailable_reason(device, dtype)``; only `magnn.functional` chooses between them.
"""
