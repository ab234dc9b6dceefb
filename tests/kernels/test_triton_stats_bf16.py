"""The statistics' median search on bfloat16 rows (edge_attention_common.median_bits_16: two
15-bit keys per register) under the Triton interpreter: equal, bit for bit, to reduce_rows on
rows with zeros, ties, NaN and infinity, for several row widths (H x D channels)."""
from __future__ import annotations

import pytest
import torch

from helpers import random_graph, require_backend
from magnn import Graph
from magnn.stats import reduce_rows
import magnn.backends.triton as triton_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("heads,head_dim", [(2, 8), (8, 8), (1, 4), (1, 2)])
def test_bf16_statistics_equal_reduce_rows(heads, head_dim):
    require_backend("triton", DEVICE, torch.bfloat16)
    gen = torch.Generator().manual_seed(heads * 100 + head_dim)
    num_nodes = 12
    edge_index = random_graph(num_nodes, 60, generator=gen, self_loops=1, duplicates=2)
    graph = Graph(edge_index.to(DEVICE), num_nodes)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, torch.bfloat16)

    q, k, v = (rand(num_nodes, heads, head_dim) for _ in range(3))
    e = rand(graph.num_edges, heads, head_dim)
    e[::5] = 0.0  # all-zero rows: the median's stand-in, the smallest normal
    e[1, 0, :] = float("nan")
    e[2, 0, 0] = float("inf")
    e[3] = torch.round(e[3] * 2)  # ties
    e[4, :, : head_dim // 2] = 1.5  # more ties, spanning the lower median
    _, edge_out, raw = triton_backend.run_triton_backend(q, k, v, e, graph, mode="gt", clamp=None, bias=None,
                                                         ebt=None, ebt_params=None, mantissa_bits=7, tap="edge")
    want = reduce_rows(edge_out.reshape(graph.num_edges, -1).cpu(), 7)
    assert torch.equal(raw.hist_abs.cpu(), want.hist_abs.cpu())
    assert torch.equal(raw.hist_ratio.cpu(), want.hist_ratio.cpu())
    torch.testing.assert_close(raw.row_ratio.cpu(), want.row_ratio.cpu(), atol=0, rtol=0, equal_nan=True)
    assert int(raw.nan_count) == int(want.nan_count) > 0
