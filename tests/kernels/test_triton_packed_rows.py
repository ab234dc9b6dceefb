"""Short rows packed several to a tile (magnn_kernels/edge_attention_packed.py) under the Triton
interpreter: the plan's buckets, values, gradients and statistics against the torch reference and
against the row kernel (packing off), on a molecule-like graph (degrees 0-6, a few longer rows
that keep the row kernel), both modes, EBT edge, logit bias, clamp, dropout, the projection."""
from __future__ import annotations

import pytest
import torch

import magnn_kernels.edge_attention_packed as packing
import magnn_kernels.utils as ku
from helpers import require_backend
from magnn import Graph
from magnn.backends.reference import edge_attention_reference
from magnn.functional import edge_attention
from magnn.stats import reduce_rows
from magnn_kernels.edge_attention import edge_attention as edge_attention_kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEADS, HEAD_DIM = 2, 4


def _molecule_like(seed: int, num_nodes: int = 40):
    """Rows of 0-6 edges (most 1-3, one isolated node) and two rows of 20 that stay row-kernel rows."""
    gen = torch.Generator().manual_seed(seed)
    degree = torch.randint(1, 4, (num_nodes,), generator=gen)
    degree[3], degree[7], degree[11], degree[5] = 0, 6, 5, 20
    degree[9] = 20
    dst = torch.repeat_interleave(torch.arange(num_nodes), degree)
    src = torch.randint(0, num_nodes, (dst.numel(),), generator=gen)
    order = torch.randperm(dst.numel(), generator=gen)  # the caller's edge order is not the CSR's
    return Graph(torch.stack([src[order], dst[order]]).to(DEVICE), num_nodes), gen


def _inputs(graph, gen, dtype=torch.float32):
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()

    n, num_edges = graph.num_nodes, graph.num_edges
    return ([rand(n, HEADS, HEAD_DIM) for _ in range(3)] + [rand(num_edges, HEADS, HEAD_DIM)],
            rand(num_edges, HEADS), tuple(rand(HEADS, HEAD_DIM) for _ in range(3)))


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    require_backend("triton", DEVICE, torch.float32)
    monkeypatch.setattr(ku, "MAX_BLOCK_E", 16)  # 16-edge tiles: rows of <= 8 edges packed, those of 20 not


def test_plan_buckets_short_rows_by_power_of_two_slots():
    degree = torch.tensor([0, 1, 2, 3, 4, 5, 9, 40])
    rowptr = torch.zeros(degree.numel() + 1, dtype=torch.long)
    rowptr[1:] = torch.cumsum(degree, 0)
    packed = packing.packed_plan(rowptr, 32, 8)  # tiles of 8 edges: SLOTS 1, 2, 4 (rows of <= 4 edges)
    got = {slots: nodes.tolist() for slots, nodes in packed.buckets}
    assert got == {1: [1, 0, -1, -1, -1, -1, -1, -1], 2: [2, -1, -1, -1], 4: [4, 3]}
    assert sorted(packed.rest.whole_nodes.tolist()) == [5, 6] and packed.rest.chunk_node.tolist() == [7, 7]
    assert packing.packed_plan(rowptr, 32, 8) is packed  # cached with the CSR tensor


@pytest.mark.parametrize("mode,ebt,dropout", [("gt", None, 0.0), ("additive", None, 0.0), ("gt", "edge", 0.3),
                                              ("additive", "edge", 0.3)])
def test_packed_rows_match_the_reference_and_the_row_kernel(monkeypatch, mode, ebt, dropout):
    graph, gen = _molecule_like(hash((mode, ebt)) % 1000)
    tensors, bias, params = _inputs(graph, gen)
    kwargs = dict(mode=mode, ebt=ebt, ebt_params=params if ebt else None, bias=bias if ebt else None,
                  clamp=2.0 if ebt else None)
    launched = []
    real = packing.launch_packed
    monkeypatch.setattr(packing, "launch_packed", lambda plan, *a: (launched.append(plan), real(plan, *a)))

    def outputs(backend):
        node_out, edge_out = edge_attention(*tensors, graph, backend=backend, dropout=dropout, seed=9, **kwargs)
        up = torch.Generator().manual_seed(1)
        loss = (node_out * torch.randn(node_out.shape, generator=up)).sum() \
            + (edge_out * torch.randn(edge_out.shape, generator=up)).sum()
        leaves = tensors + ([bias, *params] if ebt else [])
        return (node_out, edge_out, *torch.autograd.grad(loss, leaves))

    packed = outputs("triton")
    assert launched and {slots for slots, _ in launched[0].buckets} == {1, 2, 4, 8}
    monkeypatch.setattr(packing, "PACK_MEAN_DEGREE", 0.0)  # every row on the row kernel
    rows = outputs("triton")
    reference = outputs("torch")
    for got, row, want in zip(packed, rows, reference):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, row, atol=1e-6, rtol=1e-6)


def test_statistics_and_lse_of_packed_rows():
    """The in-kernel statistics are the reduction of the stored rows bit for bit; lse marks the
    isolated node (+inf, 0); node_out, lse and edge_out are the same with and without statistics."""
    graph, gen = _molecule_like(5)
    tensors, bias, _ = _inputs(graph, gen)
    rowptr, col, perm = graph.rowptr, graph.col, graph.perm
    with torch.no_grad():
        args = [t.detach() for t in tensors] + [rowptr, col, perm]
        with_stats = edge_attention_kernels(*args, mode="additive", mantissa_bits=7)
        without = edge_attention_kernels(*args, mode="additive", mantissa_bits=-1)
    own = reduce_rows(with_stats.edge_out.reshape(graph.num_edges, -1).cpu(), 7)
    assert torch.equal(with_stats.hist_abs.cpu(), own.hist_abs.cpu())
    assert torch.equal(with_stats.hist_ratio.cpu(), own.hist_ratio.cpu())
    torch.testing.assert_close(with_stats.row_ratio.cpu(), own.row_ratio.cpu(), atol=0, rtol=0, equal_nan=True)
    assert float(with_stats.max_abs) == float(own.max_abs) and int(with_stats.argmax) == int(own.argmax)
    for name in ("node_out", "edge_out", "lse"):
        assert torch.equal(getattr(with_stats, name), getattr(without, name)), name
    assert torch.isinf(with_stats.lse[3, 0]).all() and (with_stats.lse[3, 1] == 0).all()
    assert (with_stats.node_out[3] == 0).all()
    want = edge_attention_reference(*[t.detach() for t in tensors], graph, mode="additive")
    torch.testing.assert_close(with_stats.node_out, want[0], atol=1e-5, rtol=1e-5)


def test_projection_on_packed_rows():
    graph, gen = _molecule_like(7)
    tensors, _, _ = _inputs(graph, gen)
    a = torch.randn(graph.num_edges, 3, generator=gen).to(DEVICE).requires_grad_()
    weight = torch.randn(HEADS * HEAD_DIM, 3, generator=gen).to(DEVICE).requires_grad_()
    outs = {}
    for backend in ("triton", "torch"):
        node_out, edge_out = edge_attention(*tensors[:3], a, graph, e_weight=weight, backend=backend, mode="gt")
        outs[backend] = (node_out, edge_out, *torch.autograd.grad((node_out.sum() + edge_out.square().sum()),
                                                                  [*tensors[:3], a, weight]))
    for got, want in zip(outs["triton"], outs["torch"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_not_packed_when_rows_fill_tiles_or_with_the_ebt_slot():
    tile = ku.tiles(8, 8)  # 16-edge tiles (1024 values)
    assert packing.packable(100, 1_600, 0, tile) and not packing.packable(100, 1_601, 0, tile)
    assert not packing.packable(100, 200, 2, tile)  # EBT slot
    assert not packing.packable(0, 0, 0, tile)


def test_short_row_tiles_cut_to_the_longest_row():
    """Graphs whose rows are all shorter than a tile (molecules: 1-4 edges) get tiles of the longest
    row's power of two and the warps that fill (256 values each); others keep the tile."""
    tile = ku.tiles(8, 8)  # 16 edges x 64 values, 4 warps
    assert ku.short_row_tiles(tile, 16) == tile and ku.short_row_tiles(tile, 40) == tile
    cut = ku.short_row_tiles(tile, 3)
    assert (cut.block_e, cut.num_warps, cut.block_h, cut.block_d) == (4, 1, 8, 8)
    assert ku.short_row_tiles(tile, 0).block_e == 1
    assert ku.short_row_tiles(tile, 9).block_e == 16 and ku.short_row_tiles(tile, 9).num_warps == 4
    rowptr = torch.tensor([0, 2, 2, 7, 8])
    assert ku.max_degree(rowptr) == 5 and ku.max_degree(torch.zeros(1, dtype=torch.long)) == 0
