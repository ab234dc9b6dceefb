"""Forward of the fused edge attention over short rows packed several to a tile (SPEC §3).

A molecule batch has rows of 1-4 edges: the row kernel (`edge_attention_fwd`) gives each row a
whole BLOCK_E-edge tile, so most lanes idle (13% busy on the 128-molecule ZINC batch). Here a
tile of BLOCK_E = ROWS x SLOTS lanes holds ROWS rows of at most SLOTS edges each (lane f: row
f // SLOTS, its edge f % SLOTS), and the softmax of each row is a reduction over the SLOTS axis
of the tile viewed as [ROWS, SLOTS, H]: no segment search, no loop over tiles (the row is in
one), and node_out, lse and edge_out (every mode: additive mode's edge_out needs only the row's
max and sum, in registers) come out of that one pass. Rows are bucketed by degree into powers of
two SLOTS (1, 2, 4, ..., BLOCK_E / 2), one launch per non-empty bucket; longer rows keep the row
kernel. `packed_plan` builds the buckets once per CSR tensor (cached like the row plan).

The per-edge work is the row kernel's (`scores`, `edge_rows`, `dropout_scale`, `tile_stats` on
the same flat [BLOCK_E, H, D] tile), so edge_out and the statistics are formed by the same code;
q and the EBT edge terms are gathered per edge (the row's node). Not packed: the EBT slot (a
per-node virtual edge), and graphs whose mean degree fills a tile (`packable`).
The sink (HAS_SINK: its term joins each row's softmax) and the gate (HAS_GATE: node_out's store)
are constexpr variants here as in the row kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import utils
from .edge_attention_common import (
    EBT_EDGE, EBT_SLOT, MODE_GT, dropout_scale, edge_rows, flush_tile_histograms, head_lanes, load_bias,
    load_ebt_params, scores, tile_stats,
)

# rows of the graph that fill, on average, less than this share of a tile make packing worthwhile
PACK_MEAN_DEGREE = 1.0  # x BLOCK_E: pack when the mean degree is at most BLOCK_E * this


@triton.jit
def packed_softmax(logit, p_mult, msg, ROWS: tl.constexpr, SLOTS: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """Per row of a packed tile (logit [ROWS * SLOTS, BLOCK_H], -inf off the row's edges): the
    row max m and sum l ([ROWS, BLOCK_H]) and acc = sum_j p_j p_mult_j msg_j ([ROWS, BLOCK_H,
    BLOCK_D]), p = exp(logit - m); an empty row has m = -inf, l = 0, acc = 0."""
    logit3 = tl.reshape(logit, [ROWS, SLOTS, BLOCK_H])
    m = tl.max(logit3, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(logit3 - m_safe[:, None, :])
    l_sum = tl.sum(p, axis=1)
    p_msg = p * tl.reshape(p_mult, [ROWS, SLOTS, BLOCK_H])
    msg4 = tl.reshape(msg, [ROWS, SLOTS, BLOCK_H, BLOCK_D])
    acc = tl.sum(p_msg[:, :, :, None] * msg4, axis=1)
    return m, l_sum, acc


@triton.jit
def per_edge(row_vals, ROWS: tl.constexpr, SLOTS: tl.constexpr, BLOCK_H: tl.constexpr):
    """A per-row [ROWS, BLOCK_H] value at every lane of its row: [ROWS * SLOTS, BLOCK_H]."""
    return tl.reshape(tl.broadcast_to(row_vals[:, None, :], [ROWS, SLOTS, BLOCK_H]), [ROWS * SLOTS, BLOCK_H])


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "drop_threshold"])
def _edge_attention_fwd_packed_kernel(
    q_ptr, k_ptr, v_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, ebt_k_ptr, ebt_e_ptr, ebt_v_ptr,  # as the row kernel's
    sink_ptr, gate_ptr,  # [H] sink logit (HAS_SINK), [N_dst, H] gate logit (HAS_GATE), fp32
    rowptr_ptr,  # [N_dst + 1] int64 CSR of the edges sorted by dst
    col_ptr,  # [E] int64 source of each sorted edge
    perm_ptr,  # [E] int64 sorted position -> caller's edge id
    pack_nodes_ptr,  # [G * ROWS] int64 the rows of each group (-1: an unused row slot)
    num_groups,
    node_out_ptr, edge_out_ptr, lse_ptr,  # [N_dst, H, D], [E, H, D] (STORE_EDGE), [N_dst, 2, H] fp32
    hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr, nan_count_ptr,  # (STATS)
    H, D, scale, clamp_val,
    seed_lo, seed_hi, drop_threshold, keep_scale,  # attention dropout (DROPOUT): utils.dropout_args
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, DROPOUT: tl.constexpr, HAS_SINK: tl.constexpr, HAS_GATE: tl.constexpr,
    STORE_EDGE: tl.constexpr,
    STATS: tl.constexpr, MBITS: tl.constexpr, WINDOW: tl.constexpr, RATIO_BASE: tl.constexpr,
    LOW_BIT: tl.constexpr,
    EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr,
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr, SLOTS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One group = ROWS whole rows of at most SLOTS edges, one tile: node_out, lse, edge_out and
    the statistics of its edges (a persistent loop over groups, so STATS flushes once). HAS_SINK
    folds the sink's term into each row's softmax before lse, node_out and additive edge_out are
    formed from it; HAS_GATE gates node_out's store (as the row kernel)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if HEADS > 0:
        H = HEADS
        D = HEAD_DIM
    HD = H * D
    BLOCK_E: tl.constexpr = ROWS * SLOTS
    lane = tl.arange(0, BLOCK_E)
    r_idx = tl.arange(0, ROWS)
    h_idx, h_mask, hd_off, hd_mask = head_lanes(H, D, BLOCK_H, BLOCK_D)
    out_ty = e_ptr.dtype.element_ty
    ebt_k, ebt_e, ebt_v = load_ebt_params(ebt_k_ptr, ebt_e_ptr, ebt_v_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)
    if HAS_SINK:
        sink_c = tl.load(sink_ptr + h_idx, mask=h_mask, other=0.0)[None, :]  # [1, BLOCK_H]

    hist_abs_loc = tl.zeros([WINDOW], tl.int32)
    hist_ratio_loc = tl.zeros([WINDOW], tl.int32)
    base_abs = tl.zeros([], tl.int32) - 1
    nan_total = tl.zeros([BLOCK_E], tl.int64)

    for group in range(pid, num_groups, nprog):
        node_e = tl.load(pack_nodes_ptr + group * ROWS + lane // SLOTS)  # each lane's row
        used = node_e >= 0
        node_e = tl.where(used, node_e, 0)
        start = tl.load(rowptr_ptr + node_e, mask=used, other=0)
        degree = tl.load(rowptr_ptr + node_e + 1, mask=used, other=0) - start
        slot = lane % SLOTS
        emask = used & (slot < degree)
        pos = start + slot
        m3 = emask[:, None, None] & hd_mask[None, :, :]
        src = tl.load(col_ptr + pos, mask=emask, other=0).to(tl.int64)
        src_off = src[:, None, None] * HD + hd_off[None, :, :]
        eid = tl.load(perm_ptr + pos, mask=emask, other=0).to(tl.int64)
        eid_off = eid[:, None, None] * HD + hd_off[None, :, :]
        q_t = tl.load(q_ptr + node_e[:, None, None] * HD + hd_off[None, :, :], mask=m3, other=0.0).to(tl.float32)
        k_t = tl.load(k_ptr + src_off, mask=m3, other=0.0).to(tl.float32)
        e_t = edge_rows(e_ptr, w_ptr, b_ptr, eid, eid_off, emask, m3, hd_off, hd_mask, HD, EDGE_FEATURES,
                        HAS_EDGE_BIAS)
        shift = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
        msg_bias = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        if EBT == EBT_EDGE:
            shift = (tl.sum(q_t * ebt_k[None, :, :], axis=2) * scale)[:, :, None] * ebt_e[None, :, :]
            msg_bias = ebt_v
        bias_t = 0.0
        if HAS_BIAS:
            bias_t = load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD, BLOCK_E, BLOCK_H)
        x, raw, logit = scores(q_t, k_t, e_t, shift, bias_t, scale, clamp_val, MODE, EBT, HAS_BIAS, HAS_CLAMP)
        logit = tl.where(emask[:, None], logit, float("-inf"))
        msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32)
        if MODE != MODE_GT:
            msg = msg + x
        msg = msg + msg_bias[None, :, :]
        drop = tl.full([BLOCK_E, BLOCK_H], 1.0, tl.float32)
        if DROPOUT:
            drop = dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
        m, l_sum, acc = packed_softmax(logit, drop, msg, ROWS, SLOTS, BLOCK_H, BLOCK_D)
        if HAS_SINK:  # every row, used or not (an unused one is never stored)
            m_new = tl.maximum(m, sink_c)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_safe)
            l_sum = l_sum * alpha + tl.exp(sink_c - m_safe)
            acc = acc * alpha[:, :, None]
            m = m_new

        node_r = tl.load(pack_nodes_ptr + group * ROWS + r_idx)
        row_used = node_r >= 0
        node_r = tl.where(row_used, node_r, 0)
        empty = l_sum == 0.0
        row_max = tl.where(empty, float("inf"), m)
        log_sum = tl.log(tl.where(empty, 1.0, l_sum))
        lse_mask = row_used[:, None] & h_mask[None, :]
        tl.store(lse_ptr + node_r[:, None] * 2 * H + h_idx[None, :], row_max, mask=lse_mask)
        tl.store(lse_ptr + node_r[:, None] * 2 * H + H + h_idx[None, :], log_sum, mask=lse_mask)
        node_val = tl.where(empty[:, :, None], 0.0, acc / tl.where(empty, 1.0, l_sum)[:, :, None])
        if HAS_GATE:
            gate = tl.load(gate_ptr + node_r[:, None] * H + h_idx[None, :], mask=lse_mask, other=0.0)
            node_val = node_val * tl.sigmoid(gate)[:, :, None]
        tl.store(node_out_ptr + node_r[:, None, None] * HD + hd_off[None, :, :], node_val.to(out_ty),
                 mask=row_used[:, None, None] & hd_mask[None, :, :])

        if MODE == MODE_GT:
            stored = x.to(out_ty)
        else:  # a * msg with the row's softmax, as the row kernel's message pass forms it
            row_max_e = per_edge(row_max, ROWS, SLOTS, BLOCK_H)
            log_sum_e = per_edge(log_sum, ROWS, SLOTS, BLOCK_H)
            attn = tl.exp(tl.where(emask[:, None], (logit - row_max_e) - log_sum_e, float("-inf")))
            if DROPOUT:
                attn = attn * drop
            stored = (attn[:, :, None] * msg).to(out_ty)
        if STORE_EDGE:
            tl.store(edge_out_ptr + eid_off, stored, mask=m3)
        if STATS:
            hist_abs_loc, hist_ratio_loc, base_abs, nan_total = tile_stats(
                stored.to(tl.float32), m3, emask, eid, hd_off,
                hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
                hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
                MBITS, WINDOW, RATIO_BASE, LOW_BIT, BLOCK_E, BLOCK_H, BLOCK_D)

    if STATS:
        flush_tile_histograms(hist_abs_ptr, hist_ratio_ptr, nan_count_ptr, hist_abs_loc, hist_ratio_loc, base_abs,
                              nan_total, RATIO_BASE, WINDOW)


# ---------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------


@dataclass
class PackedPlan:
    """Short rows in buckets [(SLOTS, [G * ROWS] int64 nodes, -1 padded)] and the row plan of the rest."""

    buckets: list
    rest: utils.RowPlan


def packable(num_nodes: int, num_edges: int, ebt_id: int, tile: utils.Tiles) -> bool:
    """Pack short rows: the mean degree fills at most PACK_MEAN_DEGREE of a tile, and no EBT slot."""
    return (ebt_id != EBT_SLOT.value and tile.block_e >= 2 and num_nodes > 0
            and num_edges <= PACK_MEAN_DEGREE * tile.block_e * num_nodes)


def _build_packed(rowptr: torch.Tensor, plan: utils.RowPlan, block_e: int) -> PackedPlan:
    degree = rowptr[1:] - rowptr[:-1]
    whole = plan.whole_nodes
    slots_of = torch.clamp(degree[whole], min=1)
    buckets, packed = [], torch.zeros_like(whole, dtype=torch.bool)
    slots = 1
    while slots <= block_e // 2:
        mine = (slots_of <= slots) & (slots_of > slots // 2) if slots > 1 else slots_of <= 1
        nodes = whole[mine]
        packed |= mine
        if nodes.numel():
            rows = block_e // slots
            padded = torch.full((-(-nodes.numel() // rows) * rows,), -1, dtype=torch.long, device=rowptr.device)
            padded[: nodes.numel()] = nodes
            buckets.append((slots, padded))
        slots *= 2
    rest = utils.RowPlan(whole[~packed], plan.chunk_node, plan.chunk_start, plan.chunk_end, plan.split_nodes,
                         plan.split_ptr)
    return PackedPlan(buckets, rest)


def packed_plan(rowptr: torch.Tensor, chunk: int, block_e: int) -> PackedPlan:
    """The buckets of short rows of a CSR and the row plan of the others (rows longer than `chunk`
    split), cached per CSR tensor as the row plan is."""
    return utils.cached_plan(rowptr, ("packed", chunk, block_e),
                             lambda: _build_packed(rowptr, utils.row_plan(rowptr, chunk), block_e))


def launch_packed(packed: PackedPlan, common: dict, tile: utils.Tiles, stats: bool, device: torch.device) -> None:
    """One launch of the packed kernel per bucket; `common` holds the row kernel's launch arguments."""
    args = {name: value for name, value in common.items() if not name.startswith("part_") and name != "BLOCK_E"}
    for slots, nodes in packed.buckets:
        rows = tile.block_e // slots
        groups = nodes.numel() // rows
        kwargs = dict(args, pack_nodes_ptr=nodes, num_groups=groups, ROWS=rows, SLOTS=slots)
        _edge_attention_fwd_packed_kernel[utils.grid(groups, stats, device, _edge_attention_fwd_packed_kernel,
                                                     kwargs)](**kwargs)
