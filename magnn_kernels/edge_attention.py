"""Fused edge attention in Triton (SPEC §3-§4): forward with in-kernel statistics, backward.

Layout of this file (one operator, Liger-Kernel style): device helpers, the
forward kernel and its combine kernels, the backward kernels, the Python launch
wrappers, then the `torch.library` custom ops with fake impls and autograd.

Work decomposition
  Every pass walks a CSR (the dst-sorted one for the forward and for dq, the
  src-sorted reverse one for dk, dv, de). A row no longer than `chunk` edges
  is one work item handled by one program, which loops over the row in tiles
  of BLOCK_E edges x H heads x D channels (all heads together, so an edge's
  H*D values are one contiguous load and the per-edge statistics see the
  whole row). Longer rows (hubs) are cut into chunks; each chunk writes
  partial results (running max / sum / accumulator) and a small combine
  kernel merges the chunks of a node in a fixed order, so nothing needs a
  floating-point atomic and results are deterministic.

Softmax
  Online (running max + running sum), fp32 accumulation. Besides the inputs and
  node_out (an output, so no extra memory) only the per-node, per-head
  log-sum-exp is saved, in two parts: `lse [N, 2, H]` holds the row max m and
  log(sum_j exp(l_j - m)), and a = exp((l - m) - log_sum) stays exact for
  logits of any finite size (m + log_sum would round log_sum away once |m| is
  large, e.g. under a 1e30 bias); the backward recomputes the scores. As in
  FlashAttention, delta_i = sum_j a_ij dA_ij = g_i . node_out_i when edge_out
  passes no gradient into the softmax (gt mode); additive mode with an edge_out
  gradient computes it with a first loop over the row. A node with nothing to
  attend to (no edges and no slot, or every logit -inf: SPEC §3) gets
  lse = (+inf, 0), so every a = exp(-inf) = 0 and its output is exactly 0.

Statistics (constexpr STATS; no work at all when off)
  On the stored (rounded) tap values viewed as float32: per-edge lower median
  by a radix select over the bit patterns (exact k-th smallest, NaN ranked
  last), ratios with a correctly rounded division, per-edge max ratio and max
  |a|, NaN count, and the two log-binned histograms. Histogram counts go into
  a per-program register histogram over a window of bins (tl.histogram) that
  is flushed once with integer atomics; values outside the window are added
  with integer atomics directly. Integer atomics are exact, so the counts do
  not depend on the schedule.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from magnn.core.binning import RawStats, num_bins, reduce_rows

SMALLEST_NORMAL = tl.constexpr(1.1754943508222875e-38)  # 2**-126, the stats' replacement for a zero median

# Tunables. Tests shrink them to reach the multi-block and split-row paths on small graphs.
MAX_BLOCK_E = 64  # edges per tile (upper bound; shrunk so a tile holds <= TILE_ELEMENTS values)
TILE_ELEMENTS = 1024  # values per tile: ~8 per thread at 4 warps keeps registers near 110 (ptxas, sm_90)
ROW_SPLIT: Optional[int] = None  # edges per work item for long rows; None: chosen from E and the device
HIST_WINDOW = 2048  # register-histogram bins per program


# ---------------------------------------------------------------------------
# device helpers
# ---------------------------------------------------------------------------


@triton.jit
def _scores(qx, kx, ex, shift, bias_t, scale, clamp_val,
            MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """(x, raw logit, clamped logit) of an edge tile; x is w (gt) or e + b_e (additive).

    qx, kx, ex, shift broadcast to [BLOCK_E, BLOCK_H, BLOCK_D]; bias_t is [BLOCK_E, BLOCK_H].
    """
    if MODE == 0:
        x = qx * kx * ex * scale
        if EBT == 1:
            x = x + shift
        raw = tl.sum(x, axis=2)
    else:
        x = ex
        if EBT == 1:
            x = ex + shift
        raw = tl.sum(qx * (kx + x), axis=2) * scale
    if HAS_BIAS:
        raw = raw + bias_t
    logit = raw
    if HAS_CLAMP:
        logit = tl.clamp(raw, -clamp_val, clamp_val, propagate_nan=tl.PropagateNan.ALL)
    return x, raw, logit


@triton.jit
def _store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum):
    """Save a row's softmax as lse[node] = (row max, log sum); (+inf, 0) when it attended to nothing."""
    empty = l_sum == 0.0
    tl.store(lse_ptr + node * 2 * H + h_idx, tl.where(empty, float("inf"), m), mask=h_mask)
    tl.store(lse_ptr + node * 2 * H + H + h_idx, tl.where(empty, 0.0, tl.log(tl.where(empty, 1.0, l_sum))),
             mask=h_mask)


@triton.jit
def _load_lse(lse_ptr, node, h_idx, h_mask, H):
    """(row max, log sum) of one node, [BLOCK_H] each; a = exp((l - row max) - log sum)."""
    row_max = tl.load(lse_ptr + node * 2 * H + h_idx, mask=h_mask, other=float("inf"))
    log_sum = tl.load(lse_ptr + node * 2 * H + H + h_idx, mask=h_mask, other=0.0)
    return row_max, log_sum


@triton.jit
def _load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr):
    """Structural bias of an edge tile as fp32 [BLOCK_E, BLOCK_H] ([E] biases broadcast over heads)."""
    if BIAS_PER_HEAD:
        bias_t = tl.load(bias_ptr + eid[:, None] * H + h_idx[None, :],
                         mask=emask[:, None] & (h_idx[None, :] < H), other=0.0).to(tl.float32)
    else:
        bias_t = tl.load(bias_ptr + eid, mask=emask, other=0.0).to(tl.float32)[:, None] \
            + tl.zeros([BLOCK_E, BLOCK_H], tl.float32)
    return bias_t


@triton.jit
def _load_ebt_params(kb_ptr, eb_ptr, vb_ptr, hd_off, hd_mask, EBT: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """k', e', v' as fp32 [H, D] tiles (zeros without EBT, so callers need no branches)."""
    kb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    eb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    vb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if EBT != 0:
        kb = tl.load(kb_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        eb = tl.load(eb_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        vb = tl.load(vb_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
    return kb, eb, vb


@triton.jit
def _dst_tile(block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, bias_ptr, q_i, shift,
              hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
              MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
              HAS_CLAMP: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr):
    """One tile of a dst row: masks, offsets, k_j and e_ij loaded, scores recomputed.

    Shared by the forward's two passes and the dst-side backward's two passes,
    which all walk the same CSR row the same way."""
    pos = block_start + e_idx
    emask = pos < end
    m3 = emask[:, None, None] & hd_mask[None, :, :]
    src = tl.load(col_ptr + pos, mask=emask, other=0).to(tl.int64)
    src_off = src[:, None, None] * HD + hd_off[None, :, :]
    eid = tl.load(perm_ptr + pos, mask=emask, other=0).to(tl.int64)
    eid_off = eid[:, None, None] * HD + hd_off[None, :, :]  # int64 (eid is): E*H*D passes 2**31
    k_t = tl.load(k_ptr + src_off, mask=m3, other=0.0).to(tl.float32)
    e_t = tl.load(e_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
    bias_t = 0.0
    if HAS_BIAS:
        bias_t = _load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD, BLOCK_E, BLOCK_H)
    x, raw, logit = _scores(q_i[None, :, :], k_t, e_t, shift[None, :, :], bias_t, scale, clamp_val,
                            MODE, EBT, HAS_BIAS, HAS_CLAMP)
    return emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit


@triton.jit
def _slot_terms(q_i, kb, eb, vb, scale, clamp_val, MODE: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """The EBT slot of one node: raw logit [BLOCK_H], clamped logit, message [BLOCK_H, BLOCK_D]."""
    if MODE == 0:
        raw = tl.sum(q_i * (kb * eb), axis=1) * scale
        msg = vb
    else:
        raw = tl.sum(q_i * (kb + eb), axis=1) * scale
        msg = vb + eb
    logit = raw
    if HAS_CLAMP:
        logit = tl.clamp(raw, -clamp_val, clamp_val, propagate_nan=tl.PropagateNan.ALL)
    return raw, logit, msg


@triton.jit
def _tile_stats(vals, m3, emask, eid, hd_off,
                hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
                hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
                MBITS: tl.constexpr, WINDOW: tl.constexpr, RATIO_BASE: tl.constexpr, LOW_BIT: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Reduce one tile of stored tap values (fp32 [BLOCK_E, BLOCK_H, BLOCK_D]); m3 marks real values."""
    NUM_BINS: tl.constexpr = 1 << (8 + MBITS)
    SHIFT: tl.constexpr = 23 - MBITS
    CHANNELS: tl.constexpr = BLOCK_H * BLOCK_D
    FLAT: tl.constexpr = BLOCK_E * CHANNELS
    # one row per edge, its H*D channels along the last axis (padding lanes masked out)
    a = tl.abs(tl.reshape(vals, [BLOCK_E, CHANNELS]))
    real = tl.reshape(m3, [BLOCK_E, CHANNELS])
    channel = tl.reshape(tl.broadcast_to(hd_off[None, :, :], [BLOCK_E, BLOCK_H, BLOCK_D]), [BLOCK_E, CHANNELS])
    ok = real & (a == a)
    nan_total += tl.sum(tl.reshape(real & (a != a), [FLAT]).to(tl.int64), axis=0)
    bits = a.to(tl.int32, bitcast=True)
    # NaN and padding rank after every number: |a| bit patterns order like the values
    key = tl.where(ok, bits, 0x7FFFFFFF)
    n_valid = tl.sum(ok.to(tl.int32), axis=1)
    kth = tl.maximum(n_valid - 1, 0) // 2
    # radix select of the kth smallest key: the largest t with #(key < t) <= kth; the
    # stored dtype leaves the low LOW_BIT bits zero, so they need no rounds
    med_bits = tl.zeros([BLOCK_E], tl.int32)
    for i in tl.static_range(0, 31 - LOW_BIT):
        cand = med_bits | (1 << (30 - i))
        below = tl.sum((key < cand[:, None]).to(tl.int32), axis=1)
        med_bits = tl.where(below <= kth, cand, med_bits)
    med = med_bits.to(tl.float32, bitcast=True)
    med = tl.where(med == 0.0, SMALLEST_NORMAL, med)
    ratio = tl.math.div_rn(a, med[:, None])  # IEEE division, so bins match torch's
    row_ratio = tl.max(tl.where(ok, ratio, -1.0), axis=1)
    row_ratio = tl.where(n_valid == 0, float("nan"), row_ratio)
    row_max = tl.max(tl.where(ok, a, -1.0), axis=1)
    row_argc = tl.min(tl.where(ok & (a == row_max[:, None]), channel, 0x3FFFFFFF), axis=1)
    tl.store(row_ratio_ptr + eid, row_ratio, mask=emask)
    tl.store(row_max_ptr + eid, row_max, mask=emask)
    tl.store(row_argc_ptr + eid, row_argc, mask=emask)

    okf = tl.reshape(ok, [FLAT])
    abs_bin = tl.reshape(bits >> SHIFT, [FLAT])
    # the |A| window is anchored on the program's first values (a layer's scale is shared)
    top = tl.max(tl.where(okf, abs_bin, -1), axis=0)
    anchor = tl.minimum(tl.maximum(top + (2 << MBITS) - WINDOW, 0), NUM_BINS - WINDOW)
    base_abs = tl.where((base_abs < 0) & (top >= 0), anchor, base_abs)
    rel = abs_bin - base_abs
    inside = okf & (rel >= 0) & (rel < WINDOW)
    hist_abs_loc += tl.histogram(tl.where(inside, rel, 0), WINDOW, mask=inside)
    tl.atomic_add(hist_abs_ptr + abs_bin, 1, mask=okf & (inside == 0), sem="relaxed")

    ratio_f = tl.reshape(ratio, [FLAT])
    ratio_ok = okf & (ratio_f == ratio_f)  # inf/inf (median inf) has no bin
    ratio_bin = ratio_f.to(tl.int32, bitcast=True) >> SHIFT
    rel_r = ratio_bin - RATIO_BASE
    inside_r = ratio_ok & (rel_r >= 0) & (rel_r < WINDOW)
    hist_ratio_loc += tl.histogram(tl.where(inside_r, rel_r, 0), WINDOW, mask=inside_r)
    tl.atomic_add(hist_ratio_ptr + ratio_bin, 1, mask=ratio_ok & (inside_r == 0), sem="relaxed")
    return hist_abs_loc, hist_ratio_loc, base_abs, nan_total


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------


@triton.jit
def _edge_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, e_ptr, bias_ptr, kb_ptr, eb_ptr, vb_ptr,
    rowptr_ptr, col_ptr, perm_ptr,
    item_node_ptr, item_start_ptr, item_end_ptr, num_items,
    node_out_ptr, edge_out_ptr, lse_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr, nan_count_ptr,
    H, D, scale, clamp_val,
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, PARTIAL: tl.constexpr, LSE_GIVEN: tl.constexpr, MESSAGE_PASS: tl.constexpr,
    STATS: tl.constexpr, MBITS: tl.constexpr, WINDOW: tl.constexpr, RATIO_BASE: tl.constexpr,
    LOW_BIT: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One work item = a whole dst row (PARTIAL=0) or a chunk of a long row (PARTIAL=1).

    gt: one online-softmax pass writes edge_out = w and accumulates node_out.
    additive: a logits pass gives lse, then a message pass (MESSAGE_PASS) writes
    edge_out = a * msg and node_out; for chunks the message pass is a second
    launch with the merged lse (LSE_GIVEN). The node's EBT slot is owned by the
    chunk that starts the row.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    HD = H * D
    h_idx = tl.arange(0, BLOCK_H)
    d_idx = tl.arange(0, BLOCK_D)
    e_idx = tl.arange(0, BLOCK_E)
    hd_off = h_idx[:, None] * D + d_idx[None, :]
    hd_mask = (h_idx[:, None] < H) & (d_idx[None, :] < D)
    h_mask = h_idx < H
    out_ty = edge_out_ptr.dtype.element_ty

    kb, eb, vb = _load_ebt_params(kb_ptr, eb_ptr, vb_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)

    hist_abs_loc = tl.zeros([WINDOW], tl.int32)
    hist_ratio_loc = tl.zeros([WINDOW], tl.int32)
    base_abs = tl.zeros([], tl.int32) - 1
    nan_total = tl.zeros([], tl.int64)

    for item in range(pid, num_items, nprog):
        node = tl.load(item_node_ptr + item).to(tl.int64)
        row_begin = tl.load(rowptr_ptr + node)
        if PARTIAL:
            start = tl.load(item_start_ptr + item)
            end = tl.load(item_end_ptr + item)
        else:
            start = row_begin
            end = tl.load(rowptr_ptr + node + 1)
        owns_node = start == row_begin
        q_i = tl.load(q_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        shift = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        msg_bias = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        if EBT == 1:
            beta = tl.sum(q_i * kb, axis=1) * scale
            shift = beta[:, None] * eb
            msg_bias = vb
        if EBT == 2:
            slot_raw, slot_logit, slot_msg = _slot_terms(q_i, kb, eb, vb, scale, clamp_val, MODE, HAS_CLAMP)

        if LSE_GIVEN == 0:
            m = tl.full([BLOCK_H], float("-inf"), tl.float32)
            l_sum = tl.zeros([BLOCK_H], tl.float32)
            acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            if EBT == 2:
                m = tl.where(owns_node, slot_logit, m)
                l_sum = tl.where(owns_node, 1.0, l_sum)
                if MODE == 0:
                    acc = tl.where(owns_node, slot_msg, acc)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = _dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, BLOCK_E, BLOCK_H)
                logit = tl.where(emask[:, None], logit, float("-inf"))
                m_new = tl.maximum(m, tl.max(logit, axis=0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp(m - m_safe)
                p = tl.exp(logit - m_safe[None, :])
                l_sum = l_sum * alpha + tl.sum(p, axis=0)
                if MODE == 0:
                    stored = x.to(out_ty)
                    tl.store(edge_out_ptr + eid_off, stored, mask=m3)
                    if STATS:
                        hist_abs_loc, hist_ratio_loc, base_abs, nan_total = _tile_stats(
                            stored.to(tl.float32), m3, emask, eid, hd_off,
                            hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
                            hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
                            MBITS, WINDOW, RATIO_BASE, LOW_BIT, BLOCK_E, BLOCK_H, BLOCK_D)
                    v_t = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + msg_bias[None, :, :]
                    acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v_t, axis=0)
                m = m_new
            if PARTIAL:
                tl.store(part_m_ptr + item * H + h_idx, m, mask=h_mask)
                tl.store(part_l_ptr + item * H + h_idx, l_sum, mask=h_mask)
                if MODE == 0:
                    tl.store(part_acc_ptr + item * HD + hd_off, acc, mask=hd_mask)
            else:
                l_safe = tl.where(l_sum == 0.0, 1.0, l_sum)
                _store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum)
                row_max = tl.where(l_sum == 0.0, float("inf"), m)
                log_sum = tl.log(l_safe)
                if MODE == 0:
                    out = tl.where(l_sum[:, None] == 0.0, 0.0, acc / l_safe[:, None])
                    tl.store(node_out_ptr + node * HD + hd_off, out.to(out_ty), mask=hd_mask)

        if MESSAGE_PASS:
            if LSE_GIVEN:
                row_max, log_sum = _load_lse(lse_ptr, node, h_idx, h_mask, H)
            acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            if EBT == 2:
                slot_a = tl.exp((slot_logit - row_max) - log_sum)
                acc = tl.where(owns_node, slot_a[:, None] * slot_msg, acc)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = _dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + x + msg_bias[None, :, :]
                out = attn[:, :, None] * msg
                stored = out.to(out_ty)
                tl.store(edge_out_ptr + eid_off, stored, mask=m3)
                if STATS:
                    hist_abs_loc, hist_ratio_loc, base_abs, nan_total = _tile_stats(
                        stored.to(tl.float32), m3, emask, eid, hd_off,
                        hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
                        hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
                        MBITS, WINDOW, RATIO_BASE, LOW_BIT, BLOCK_E, BLOCK_H, BLOCK_D)
                acc += tl.sum(tl.where(m3, out, 0.0), axis=0)
            if LSE_GIVEN:
                tl.store(part_acc_ptr + item * HD + hd_off, acc, mask=hd_mask)
            else:
                tl.store(node_out_ptr + node * HD + hd_off, acc.to(out_ty), mask=hd_mask)

    if STATS:
        w_idx = tl.arange(0, WINDOW)
        tl.atomic_add(hist_abs_ptr + base_abs + w_idx, hist_abs_loc.to(tl.int64), mask=hist_abs_loc > 0,
                      sem="relaxed")
        tl.atomic_add(hist_ratio_ptr + RATIO_BASE + w_idx, hist_ratio_loc.to(tl.int64), mask=hist_ratio_loc > 0,
                      sem="relaxed")
        tl.atomic_add(nan_count_ptr, nan_total, sem="relaxed")


@triton.jit
def _edge_attention_fwd_merge_kernel(
    part_m_ptr, part_l_ptr, part_acc_ptr, seg_node_ptr, seg_ptr_ptr,
    lse_ptr, node_out_ptr, H, D,
    WITH_ACC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the online-softmax partials of one split row, chunk by chunk in order."""
    seg = tl.program_id(0)
    node = tl.load(seg_node_ptr + seg).to(tl.int64)
    lo = tl.load(seg_ptr_ptr + seg)
    hi = tl.load(seg_ptr_ptr + seg + 1)
    HD = H * D
    h_idx = tl.arange(0, BLOCK_H)
    d_idx = tl.arange(0, BLOCK_D)
    hd_off = h_idx[:, None] * D + d_idx[None, :]
    hd_mask = (h_idx[:, None] < H) & (d_idx[None, :] < D)
    h_mask = h_idx < H
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for item in range(lo, hi):
        m_c = tl.load(part_m_ptr + item * H + h_idx, mask=h_mask, other=float("-inf"))
        l_c = tl.load(part_l_ptr + item * H + h_idx, mask=h_mask, other=0.0)
        m_new = tl.maximum(m, m_c)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        alpha_c = tl.exp(m_c - m_safe)
        l_sum = l_sum * alpha + l_c * alpha_c
        if WITH_ACC:
            acc_c = tl.load(part_acc_ptr + item * HD + hd_off, mask=hd_mask, other=0.0)
            acc = acc * alpha[:, None] + acc_c * alpha_c[:, None]
        m = m_new
    l_safe = tl.where(l_sum == 0.0, 1.0, l_sum)
    _store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum)
    if WITH_ACC:
        out = tl.where(l_sum[:, None] == 0.0, 0.0, acc / l_safe[:, None])
        tl.store(node_out_ptr + node * HD + hd_off, out.to(node_out_ptr.dtype.element_ty), mask=hd_mask)


@triton.jit
def _segment_sum_kernel(part_ptr, seg_node_ptr, seg_ptr_ptr, out_ptr, R, BLOCK_R: tl.constexpr):
    """out[node] = sum of the partial rows of its chunks (length R), summed in chunk order."""
    seg = tl.program_id(0)
    node = tl.load(seg_node_ptr + seg).to(tl.int64)
    lo = tl.load(seg_ptr_ptr + seg)
    hi = tl.load(seg_ptr_ptr + seg + 1)
    for r0 in range(0, R, BLOCK_R):
        offs = r0 + tl.arange(0, BLOCK_R)
        mask = offs < R
        acc = tl.zeros([BLOCK_R], tl.float32)
        for item in range(lo, hi):
            acc += tl.load(part_ptr + item * R + offs, mask=mask, other=0.0)
        tl.store(out_ptr + node * R + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------


@triton.jit
def _edge_attention_bwd_dst_kernel(
    q_ptr, k_ptr, v_ptr, e_ptr, bias_ptr, kb_ptr, eb_ptr, vb_ptr,
    rowptr_ptr, col_ptr, perm_ptr, item_node_ptr, item_start_ptr, item_end_ptr, num_items,
    grad_node_ptr, grad_edge_ptr, lse_ptr, delta_ptr,
    dq_ptr, dbias_ptr, debt_ptr, part_ptr,
    N, H, D, scale, clamp_val,
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, HAS_GRAD_NODE: tl.constexpr, HAS_GRAD_EDGE: tl.constexpr,
    PARTIAL: tl.constexpr, DELTA_MODE: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dst-side backward: delta_i = sum_j a_ij dA_ij (+ slot), then dq, dbias and the EBT sums.

    DELTA_MODE 0: a first loop over the (whole) row computes delta, then the gradients;
    1: only the partial delta of a chunk; 2: delta is given (g_n . node_out when
    edge_out carries no gradient into the softmax, or the merged chunk deltas).
    Chunks (PARTIAL) write partial dq; the EBT sums go to one row of `debt` per work
    item (rows N + item for chunks), summed on the host.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    HD = H * D
    h_idx = tl.arange(0, BLOCK_H)
    d_idx = tl.arange(0, BLOCK_D)
    e_idx = tl.arange(0, BLOCK_E)
    hd_off = h_idx[:, None] * D + d_idx[None, :]
    hd_mask = (h_idx[:, None] < H) & (d_idx[None, :] < D)
    h_mask = h_idx < H

    kb, eb, vb = _load_ebt_params(kb_ptr, eb_ptr, vb_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)

    for item in range(pid, num_items, nprog):
        node = tl.load(item_node_ptr + item).to(tl.int64)
        row_begin = tl.load(rowptr_ptr + node)
        if PARTIAL:
            start = tl.load(item_start_ptr + item)
            end = tl.load(item_end_ptr + item)
        else:
            start = row_begin
            end = tl.load(rowptr_ptr + node + 1)
        owns_node = start == row_begin
        q_i = tl.load(q_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        row_max, log_sum = _load_lse(lse_ptr, node, h_idx, h_mask, H)
        g_n = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        if HAS_GRAD_NODE:
            g_n = tl.load(grad_node_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        shift = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        msg_bias = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        beta = tl.zeros([BLOCK_H], tl.float32)
        if EBT == 1:
            beta = tl.sum(q_i * kb, axis=1) * scale
            shift = beta[:, None] * eb
            msg_bias = vb
        if EBT == 2:
            slot_raw, slot_logit, slot_msg = _slot_terms(q_i, kb, eb, vb, scale, clamp_val, MODE, HAS_CLAMP)
            slot_a = tl.where(owns_node, tl.exp((slot_logit - row_max) - log_sum), 0.0)
            slot_da = tl.sum(g_n * slot_msg, axis=1)

        if DELTA_MODE != 2:
            delta = tl.zeros([BLOCK_H], tl.float32)
            if EBT == 2:
                delta += slot_a * slot_da
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = _dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + msg_bias[None, :, :]
                grad = g_n[None, :, :]
                if MODE == 1:
                    msg = msg + x
                    if HAS_GRAD_EDGE:
                        grad = grad + tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
                d_attn = tl.sum(grad * msg, axis=2)
                delta += tl.sum(attn * d_attn, axis=0)
            if DELTA_MODE == 0:
                tl.store(delta_ptr + node * H + h_idx, delta, mask=h_mask)
            else:
                tl.store(part_ptr + item * H + h_idx, delta, mask=h_mask)

        if DELTA_MODE != 1:
            if DELTA_MODE == 2:
                delta = tl.load(delta_ptr + node * H + h_idx, mask=h_mask, other=0.0)
            dq = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            sum_dx = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            sum_dmsg = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = _dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + msg_bias[None, :, :]
                g_e = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
                if HAS_GRAD_EDGE:
                    g_e = tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
                if MODE == 0:
                    d_attn = tl.sum(g_n[None, :, :] * msg, axis=2)
                    d_logit = attn * (d_attn - delta[None, :])
                    if HAS_CLAMP:
                        d_logit = tl.where((raw >= -clamp_val) & (raw <= clamp_val), d_logit, 0.0)
                    dx = tl.where(m3, g_e + d_logit[:, :, None], 0.0)  # dL/dw
                    dq += tl.sum(dx * k_t * e_t, axis=0) * scale
                    if EBT == 1:
                        sum_dmsg += tl.sum(attn[:, :, None] * g_n[None, :, :], axis=0)
                else:
                    msg = msg + x
                    grad = g_n[None, :, :] + g_e
                    d_attn = tl.sum(grad * msg, axis=2)
                    d_logit = attn * (d_attn - delta[None, :])
                    if HAS_CLAMP:
                        d_logit = tl.where((raw >= -clamp_val) & (raw <= clamp_val), d_logit, 0.0)
                    d_msg = attn[:, :, None] * grad
                    dx = tl.where(m3, d_msg + d_logit[:, :, None] * scale * q_i[None, :, :], 0.0)  # dL/d(e + b_e)
                    dq += tl.sum(d_logit[:, :, None] * (k_t + x), axis=0) * scale
                    if EBT == 1:
                        sum_dmsg += tl.sum(d_msg, axis=0)
                if EBT == 1:
                    sum_dx += tl.sum(dx, axis=0)
                if HAS_BIAS:
                    if BIAS_PER_HEAD:
                        tl.store(dbias_ptr + eid[:, None] * H + h_idx[None, :],
                                 d_logit.to(dbias_ptr.dtype.element_ty), mask=emask[:, None] & h_mask[None, :])
                    else:
                        d_bias = tl.sum(tl.where(h_mask[None, :], d_logit, 0.0), axis=1)
                        tl.store(dbias_ptr + eid, d_bias.to(dbias_ptr.dtype.element_ty), mask=emask)

            dkb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            deb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            dvb = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            if EBT == 1:
                d_beta = tl.sum(sum_dx * eb, axis=1)
                dq += d_beta[:, None] * scale * kb
                dkb = d_beta[:, None] * scale * q_i
                deb = beta[:, None] * sum_dx
                dvb = sum_dmsg
            if EBT == 2:
                slot_dl = slot_a * (slot_da - delta)
                if HAS_CLAMP:
                    slot_dl = tl.where((slot_raw >= -clamp_val) & (slot_raw <= clamp_val), slot_dl, 0.0)
                dvb = slot_a[:, None] * g_n
                if MODE == 0:
                    dq += slot_dl[:, None] * scale * (kb * eb)
                    dkb = slot_dl[:, None] * scale * q_i * eb
                    deb = slot_dl[:, None] * scale * q_i * kb
                else:
                    dq += slot_dl[:, None] * scale * (kb + eb)
                    dkb = slot_dl[:, None] * scale * q_i
                    deb = slot_dl[:, None] * scale * q_i + dvb
            if PARTIAL:
                tl.store(part_ptr + item * HD + hd_off, dq, mask=hd_mask)
            else:
                tl.store(dq_ptr + node * HD + hd_off, dq.to(dq_ptr.dtype.element_ty), mask=hd_mask)
            if EBT != 0:
                row = node
                if PARTIAL:
                    row = (N + item).to(tl.int64)
                tl.store(debt_ptr + (row * 3 + 0) * HD + hd_off, dkb, mask=hd_mask)
                tl.store(debt_ptr + (row * 3 + 1) * HD + hd_off, deb, mask=hd_mask)
                tl.store(debt_ptr + (row * 3 + 2) * HD + hd_off, dvb, mask=hd_mask)


@triton.jit
def _edge_attention_bwd_src_kernel(
    q_ptr, k_ptr, v_ptr, e_ptr, bias_ptr, kb_ptr, eb_ptr, vb_ptr,
    rowptr_ptr, dst_ptr, eid_ptr, item_node_ptr, item_start_ptr, item_end_ptr, num_items,
    grad_node_ptr, grad_edge_ptr, lse_ptr, delta_ptr,
    dk_ptr, dv_ptr, de_ptr, part_dk_ptr, part_dv_ptr,
    H, D, scale, clamp_val,
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, HAS_GRAD_NODE: tl.constexpr, HAS_GRAD_EDGE: tl.constexpr,
    PARTIAL: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """src-side backward over the reverse CSR: de per edge, dk and dv summed per source node."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    HD = H * D
    h_idx = tl.arange(0, BLOCK_H)
    d_idx = tl.arange(0, BLOCK_D)
    e_idx = tl.arange(0, BLOCK_E)
    hd_off = h_idx[:, None] * D + d_idx[None, :]
    hd_mask = (h_idx[:, None] < H) & (d_idx[None, :] < D)
    h_mask = h_idx < H

    kb, eb, vb = _load_ebt_params(kb_ptr, eb_ptr, vb_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)

    for item in range(pid, num_items, nprog):
        node = tl.load(item_node_ptr + item).to(tl.int64)
        if PARTIAL:
            start = tl.load(item_start_ptr + item)
            end = tl.load(item_end_ptr + item)
        else:
            start = tl.load(rowptr_ptr + node)
            end = tl.load(rowptr_ptr + node + 1)
        k_j = tl.load(k_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        v_j = tl.load(v_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        if EBT == 1:
            v_j = v_j + vb
        dk = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for block_start in range(start, end, BLOCK_E):
            pos = block_start + e_idx
            emask = pos < end
            m2 = emask[:, None] & h_mask[None, :]
            m3 = emask[:, None, None] & hd_mask[None, :, :]
            dst = tl.load(dst_ptr + pos, mask=emask, other=0).to(tl.int64)
            dst_off = dst[:, None, None] * HD + hd_off[None, :, :]
            eid = tl.load(eid_ptr + pos, mask=emask, other=0).to(tl.int64)
            eid_off = eid[:, None, None] * HD + hd_off[None, :, :]  # int64 (eid is): E*H*D passes 2**31
            q_t = tl.load(q_ptr + dst_off, mask=m3, other=0.0).to(tl.float32)
            e_t = tl.load(e_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
            lse_off = dst[:, None] * 2 * H + h_idx[None, :]
            max_t = tl.load(lse_ptr + lse_off, mask=m2, other=float("inf"))
            log_sum_t = tl.load(lse_ptr + lse_off + H, mask=m2, other=0.0)
            delta_t = tl.load(delta_ptr + dst[:, None] * H + h_idx[None, :], mask=m2, other=0.0)
            g_n = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if HAS_GRAD_NODE:
                g_n = tl.load(grad_node_ptr + dst_off, mask=m3, other=0.0).to(tl.float32)
            g_e = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if HAS_GRAD_EDGE:
                g_e = tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
            shift = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if EBT == 1:
                shift = (tl.sum(q_t * kb[None, :, :], axis=2) * scale)[:, :, None] * eb[None, :, :]
            bias_t = 0.0
            if HAS_BIAS:
                bias_t = _load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD, BLOCK_E, BLOCK_H)
            x, raw, logit = _scores(q_t, k_j[None, :, :], e_t, shift, bias_t, scale, clamp_val,
                                    MODE, EBT, HAS_BIAS, HAS_CLAMP)
            attn = tl.exp(tl.where(m2, (logit - max_t) - log_sum_t, float("-inf")))
            if MODE == 0:
                d_attn = tl.sum(g_n * v_j[None, :, :], axis=2)
                d_logit = attn * (d_attn - delta_t)
                if HAS_CLAMP:
                    d_logit = tl.where((raw >= -clamp_val) & (raw <= clamp_val), d_logit, 0.0)
                dw = tl.where(m3, g_e + d_logit[:, :, None], 0.0)
                dk += tl.sum(dw * q_t * e_t, axis=0) * scale
                d_e = dw * q_t * k_j[None, :, :] * scale
                dv += tl.sum(attn[:, :, None] * g_n, axis=0)
            else:
                grad = g_n + g_e
                d_attn = tl.sum(grad * (v_j[None, :, :] + x), axis=2)
                d_logit = attn * (d_attn - delta_t)
                if HAS_CLAMP:
                    d_logit = tl.where((raw >= -clamp_val) & (raw <= clamp_val), d_logit, 0.0)
                d_msg = attn[:, :, None] * grad
                d_e = d_msg + d_logit[:, :, None] * scale * q_t
                dk += tl.sum(d_logit[:, :, None] * q_t, axis=0) * scale
                dv += tl.sum(d_msg, axis=0)
            tl.store(de_ptr + eid_off, d_e.to(de_ptr.dtype.element_ty), mask=m3)
        if PARTIAL:
            tl.store(part_dk_ptr + item * HD + hd_off, dk, mask=hd_mask)
            tl.store(part_dv_ptr + item * HD + hd_off, dv, mask=hd_mask)
        else:
            tl.store(dk_ptr + node * HD + hd_off, dk.to(dk_ptr.dtype.element_ty), mask=hd_mask)
            tl.store(dv_ptr + node * HD + hd_off, dv.to(dv_ptr.dtype.element_ty), mask=hd_mask)


# ---------------------------------------------------------------------------
# launch wrappers
# ---------------------------------------------------------------------------

_MODES = {"gt": 0, "additive": 1}
_EBTS = {"none": 0, "edge": 1, "slot": 2}
_INTERPRETED = not isinstance(_edge_attention_fwd_kernel, triton.runtime.JITFunction)


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when these kernels can run on `device` tensors of `dtype`, else why not."""
    device = torch.device(device)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take float16, bfloat16 or float32, not {dtype} (the torch backend covers float64)"
    if device.type == "cuda":
        if _INTERPRETED:
            return None  # the interpreter runs CUDA tensors too (slowly)
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] < 8:
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
        return None
    if device.type == "cpu":
        if _INTERPRETED:
            return None
        if os.environ.get("TRITON_INTERPRET") == "1":
            return "TRITON_INTERPRET=1 was set after magnn_kernels was imported; set it before importing"
        return "the Triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    return f"the Triton kernels run on CUDA tensors, got {device.type} tensors"


@dataclass(frozen=True)
class _Tiles:
    block_e: int
    block_h: int
    block_d: int
    num_warps: int


def _tiles(heads: int, head_dim: int) -> _Tiles:
    block_h = triton.next_power_of_2(heads)
    block_d = triton.next_power_of_2(head_dim)
    per_edge = block_h * block_d
    block_e = max(1, min(MAX_BLOCK_E, TILE_ELEMENTS // per_edge))
    block_e = 1 << (block_e.bit_length() - 1)  # a power of two
    return _Tiles(block_e, block_h, block_d, 8 if block_e * per_edge >= 4096 else 4)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda" and not _INTERPRETED:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _row_split(num_edges: int, device: torch.device, tiles: _Tiles) -> int:
    if ROW_SPLIT is not None:
        return max(1, int(ROW_SPLIT))
    # a row longer than ~1/(32 x programs in flight) of the work would hold up the tail
    return max(32 * tiles.block_e, num_edges // (_sm_count(device) * 32))


@dataclass
class _Plan:
    """Work items over one CSR: whole rows (by degree, longest first) and chunks of long rows."""

    whole_nodes: torch.Tensor  # int64 [W]
    chunk_node: torch.Tensor  # int64 [C]
    chunk_start: torch.Tensor  # int64 [C]
    chunk_end: torch.Tensor  # int64 [C]
    split_nodes: torch.Tensor  # int64 [S]
    split_ptr: torch.Tensor  # int64 [S+1]: chunks of split_nodes[s] are split_ptr[s]:split_ptr[s+1]

    @property
    def num_whole(self) -> int:
        return self.whole_nodes.shape[0]

    @property
    def num_chunks(self) -> int:
        return self.chunk_node.shape[0]

    @property
    def num_split(self) -> int:
        return self.split_nodes.shape[0]


def _build_plan(rowptr: torch.Tensor, chunk: int) -> _Plan:
    degree = rowptr[1:] - rowptr[:-1]
    split = degree > chunk
    whole_nodes = torch.nonzero(~split).reshape(-1)
    # longest rows first: the scheduler starts them early, so they do not form the tail
    whole_nodes = whole_nodes[torch.argsort(degree[whole_nodes], descending=True, stable=True)]
    split_nodes = torch.nonzero(split).reshape(-1)
    pieces = (degree[split_nodes] + chunk - 1) // chunk
    split_ptr = torch.zeros(split_nodes.shape[0] + 1, dtype=torch.long, device=rowptr.device)
    torch.cumsum(pieces, 0, out=split_ptr[1:])
    num_chunks = int(split_ptr[-1])
    chunk_node = torch.repeat_interleave(split_nodes, pieces, output_size=num_chunks)
    first = torch.repeat_interleave(split_ptr[:-1], pieces, output_size=num_chunks)
    local = torch.arange(num_chunks, device=rowptr.device) - first
    chunk_start = rowptr[chunk_node] + local * chunk
    chunk_end = torch.minimum(chunk_start + chunk, rowptr[chunk_node + 1])
    return _Plan(whole_nodes, chunk_node, chunk_start, chunk_end, split_nodes, split_ptr)


_PLAN_CACHE: list[tuple[tuple, torch.Tensor, _Plan]] = []
_PLAN_CACHE_SIZE = 16


def _plan(rowptr: torch.Tensor, chunk: int) -> _Plan:
    """Cached per CSR: building one syncs with the device. The cache holds the rowptr
    tensor itself, so its memory cannot be reused under a stale key; in-place edits
    bump its version."""
    key = (rowptr.data_ptr(), rowptr.shape[0], rowptr._version, str(rowptr.device), chunk)
    for entry_key, _, plan in _PLAN_CACHE:
        if entry_key == key:
            return plan
    plan = _build_plan(rowptr, chunk)
    _PLAN_CACHE.append((key, rowptr, plan))
    if len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.pop(0)
    return plan


def _grid(items: int, persistent: bool, device: torch.device) -> tuple[int]:
    """One program per item, or a persistent grid (stats: one histogram flush per program)."""
    if _INTERPRETED:
        programs = min(items, 4)  # several items per program, so every test runs the persistent loop
    elif persistent:
        programs = min(items, _sm_count(device) * 8)
    else:
        programs = items
    return (max(programs, 1),)


def _hist_layout(mantissa_bits: int) -> tuple[int, int]:
    """(window, ratio window base): the ratio window starts 11/16 of its width below 1.0."""
    bins = num_bins(mantissa_bits)
    window = min(bins, HIST_WINDOW)
    base = (127 << mantissa_bits) - (window * 11) // 16
    return window, min(max(base, 0), bins - window)


def _low_bit(dtype: torch.dtype) -> int:
    # float32 bits that a value stored in `dtype` always has zero
    return {torch.bfloat16: 16, torch.float16: 13}.get(dtype, 0)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer that the kernels must write in full is allocated here (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _device_ctx(device: torch.device):
    # Triton launches on the current CUDA device: make it the tensors' device
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(q, k, v, e, rowptr, col, perm, bias, k_bias, e_bias, v_bias, mode, clamp, ebt, mantissa_bits):
    num_nodes, heads, head_dim = q.shape
    num_edges = e.shape[0]
    device = q.device
    tiles = _tiles(heads, head_dim)
    mode_id, ebt_id = _MODES[mode], _EBTS[ebt]
    stats = mantissa_bits >= 0
    node_out = _empty(q.shape, q.dtype, device)
    edge_out = _empty(e.shape, e.dtype, device)
    lse = _empty((num_nodes, 2, heads), torch.float32, device)  # row max, log sum
    if stats:
        bins = num_bins(mantissa_bits)
        hist_abs = torch.zeros(bins, dtype=torch.int64, device=device)
        hist_ratio = torch.zeros(bins, dtype=torch.int64, device=device)
        row_ratio = _empty((num_edges,), torch.float32, device)
        row_max = _empty((num_edges,), torch.float32, device)
        row_argc = _empty((num_edges,), torch.int32, device)
        window, ratio_base = _hist_layout(mantissa_bits)
    else:
        # distinct empty tensors: a custom op's outputs may not alias each other
        hist_abs, hist_ratio = (torch.empty(0, dtype=torch.int64, device=device) for _ in range(2))
        row_ratio, row_max = (torch.empty(0, dtype=torch.float32, device=device) for _ in range(2))
        row_argc = torch.empty(0, dtype=torch.int32, device=device)
        window, ratio_base = 1, 0
    nan_count = torch.zeros((), dtype=torch.int64, device=device)
    if num_nodes == 0:
        return node_out, edge_out, lse, hist_abs, hist_ratio, row_ratio, row_max, row_argc, nan_count

    plan = _plan(rowptr, _row_split(num_edges, device, tiles))
    scale = 1.0 / math.sqrt(head_dim)
    dummy = lse
    part_m = part_l = part_acc = dummy
    if plan.num_chunks:
        part_m = _empty((plan.num_chunks, heads), torch.float32, device)
        part_l = _empty((plan.num_chunks, heads), torch.float32, device)
        part_acc = _empty((plan.num_chunks, heads, head_dim), torch.float32, device)
    common = dict(
        MODE=mode_id, EBT=ebt_id, HAS_BIAS=bias is not None, BIAS_PER_HEAD=bias is not None and bias.dim() == 2,
        HAS_CLAMP=clamp is not None, STATS=stats, MBITS=max(mantissa_bits, 0), WINDOW=window,
        RATIO_BASE=ratio_base, LOW_BIT=_low_bit(e.dtype),
        BLOCK_E=tiles.block_e, BLOCK_H=tiles.block_h, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )

    def launch(items, count, partial, lse_given, message_pass):
        node_ids, starts, ends = items
        _edge_attention_fwd_kernel[_grid(count, stats, device)](
            q, k, v, e, dummy if bias is None else bias,
            dummy if k_bias is None else k_bias, dummy if e_bias is None else e_bias,
            dummy if v_bias is None else v_bias,
            rowptr, col, perm, node_ids, starts, ends, count,
            node_out, edge_out, lse, part_m, part_l, part_acc,
            hist_abs if stats else dummy, hist_ratio if stats else dummy,
            row_ratio if stats else dummy, row_max if stats else dummy, row_argc if stats else dummy, nan_count,
            heads, head_dim, scale, 0.0 if clamp is None else float(clamp),
            PARTIAL=partial, LSE_GIVEN=lse_given, MESSAGE_PASS=message_pass, **common,
        )

    with _device_ctx(device):
        if plan.num_whole:
            whole = (plan.whole_nodes, plan.whole_nodes, plan.whole_nodes)
            launch(whole, plan.num_whole, partial=False, lse_given=False, message_pass=mode_id == 1)
        if plan.num_chunks:
            chunks = (plan.chunk_node, plan.chunk_start, plan.chunk_end)
            launch(chunks, plan.num_chunks, partial=True, lse_given=False, message_pass=False)
            _edge_attention_fwd_merge_kernel[(plan.num_split,)](
                part_m, part_l, part_acc, plan.split_nodes, plan.split_ptr, lse, node_out, heads, head_dim,
                WITH_ACC=mode_id == 0, BLOCK_H=tiles.block_h, BLOCK_D=tiles.block_d,
            )
            if mode_id == 1:
                launch(chunks, plan.num_chunks, partial=True, lse_given=True, message_pass=True)
                _segment_sum(part_acc, plan, node_out)
    return node_out, edge_out, lse, hist_abs, hist_ratio, row_ratio, row_max, row_argc, nan_count


def _segment_sum(part: torch.Tensor, plan: _Plan, out: torch.Tensor) -> None:
    row = part[0].numel() if part.shape[0] else 1
    block = min(triton.next_power_of_2(row), 4096)
    _segment_sum_kernel[(plan.num_split,)](part, plan.split_nodes, plan.split_ptr, out, row, BLOCK_R=block)


def _backward(grad_node, grad_edge, q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
              bias, k_bias, e_bias, v_bias, mode, clamp, ebt):
    num_nodes, heads, head_dim = q.shape
    num_edges = e.shape[0]
    device = q.device
    tiles = _tiles(heads, head_dim)
    mode_id, ebt_id = _MODES[mode], _EBTS[ebt]
    dq, dk, dv, de = (_empty(t.shape, t.dtype, device) for t in (q, k, v, e))
    dbias = _empty(bias.shape, bias.dtype, device) if bias is not None else q.new_empty(0)
    if num_nodes == 0:
        ebt_grads = tuple(torch.zeros_like(p) if ebt_id else q.new_empty(0) for p in (k_bias, e_bias, v_bias))
        return dq, dk, dv, de, dbias, *ebt_grads

    chunk = _row_split(num_edges, device, tiles)
    dst_plan, src_plan = _plan(rowptr, chunk), _plan(rev_rowptr, chunk)
    scale = 1.0 / math.sqrt(head_dim)
    clamp_val = 0.0 if clamp is None else float(clamp)
    # delta_i = sum_j a_ij dA_ij (+ slot) is g_n . node_out unless edge_out (additive: a * msg)
    # carries gradient into the softmax; then a first loop over each row computes it
    delta_from_out = mode_id == 0 or grad_edge is None
    if not delta_from_out:
        delta = _empty((num_nodes, heads), torch.float32, device)
    elif grad_node is None:
        delta = torch.zeros((num_nodes, heads), dtype=torch.float32, device=device)
    else:
        delta = (grad_node.float() * node_out.float()).sum(-1)
    debt = (
        torch.zeros((num_nodes + dst_plan.num_chunks, 3, heads, head_dim), dtype=torch.float32, device=device)
        if ebt_id else delta
    )
    grad_node = grad_node.contiguous() if grad_node is not None else None
    grad_edge = grad_edge.contiguous() if grad_edge is not None else None
    dummy = delta
    inputs = (q, k, v, e, dummy if bias is None else bias, dummy if k_bias is None else k_bias,
              dummy if e_bias is None else e_bias, dummy if v_bias is None else v_bias)
    grads_in = (dummy if grad_node is None else grad_node, dummy if grad_edge is None else grad_edge, lse, delta)
    flags = dict(
        MODE=mode_id, EBT=ebt_id, HAS_BIAS=bias is not None, BIAS_PER_HEAD=bias is not None and bias.dim() == 2,
        HAS_CLAMP=clamp is not None, HAS_GRAD_NODE=grad_node is not None, HAS_GRAD_EDGE=grad_edge is not None,
        BLOCK_E=tiles.block_e, BLOCK_H=tiles.block_h, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )

    def dst_pass(items, count, partial, delta_mode, part):
        _edge_attention_bwd_dst_kernel[_grid(count, False, device)](
            *inputs, rowptr, col, perm, *items, count, *grads_in,
            dq, dummy if bias is None else dbias, debt, part,
            num_nodes, heads, head_dim, scale, clamp_val, PARTIAL=partial, DELTA_MODE=delta_mode, **flags,
        )

    def src_pass(items, count, partial, part_dk, part_dv):
        _edge_attention_bwd_src_kernel[_grid(count, False, device)](
            *inputs, rev_rowptr, rev_col, rev_perm, *items, count, *grads_in,
            dk, dv, de, part_dk, part_dv,
            heads, head_dim, scale, clamp_val, PARTIAL=partial, **flags,
        )

    with _device_ctx(device):
        if dst_plan.num_whole:
            whole = (dst_plan.whole_nodes,) * 3
            dst_pass(whole, dst_plan.num_whole, False, 2 if delta_from_out else 0, dummy)
        if dst_plan.num_chunks:
            chunks = (dst_plan.chunk_node, dst_plan.chunk_start, dst_plan.chunk_end)
            if not delta_from_out:
                part_delta = _empty((dst_plan.num_chunks, heads), torch.float32, device)
                dst_pass(chunks, dst_plan.num_chunks, True, 1, part_delta)
                _segment_sum(part_delta, dst_plan, delta)
            part_dq = _empty((dst_plan.num_chunks, heads, head_dim), torch.float32, device)
            dst_pass(chunks, dst_plan.num_chunks, True, 2, part_dq)
            _segment_sum(part_dq, dst_plan, dq)
        if src_plan.num_whole:
            whole = (src_plan.whole_nodes,) * 3
            src_pass(whole, src_plan.num_whole, False, dummy, dummy)
        if src_plan.num_chunks:
            chunks = (src_plan.chunk_node, src_plan.chunk_start, src_plan.chunk_end)
            part_dk = _empty((src_plan.num_chunks, heads, head_dim), torch.float32, device)
            part_dv = _empty((src_plan.num_chunks, heads, head_dim), torch.float32, device)
            src_pass(chunks, src_plan.num_chunks, True, part_dk, part_dv)
            _segment_sum(part_dk, src_plan, dk)
            _segment_sum(part_dv, src_plan, dv)
    ebt_grads = tuple(q.new_empty(0) for _ in range(3))
    if ebt_id:
        totals = debt.sum(0)  # one deterministic reduction over the per-node rows
        ebt_grads = tuple(totals[i].to(p.dtype, copy=True) for i, p in enumerate((k_bias, e_bias, v_bias)))
    return dq, dk, dv, de, dbias, *ebt_grads


# ---------------------------------------------------------------------------
# custom ops + autograd
# ---------------------------------------------------------------------------

Tensor = torch.Tensor


@torch.library.custom_op("magnn::edge_attention_fwd", mutates_args=())
def edge_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, e: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor,
    rev_rowptr: Optional[Tensor], rev_col: Optional[Tensor], rev_perm: Optional[Tensor],
    bias: Optional[Tensor], k_bias: Optional[Tensor], e_bias: Optional[Tensor], v_bias: Optional[Tensor],
    mode: str, clamp: Optional[float], ebt: str, mantissa_bits: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(node_out, edge_out, lse, hist_abs, hist_ratio, row_ratio, row_max_abs, row_argc, nan_count).

    The reverse CSR is only carried for the backward. mantissa_bits < 0: no
    statistics (the stats outputs are empty). Edge order is the caller's.
    """
    return _forward(q, k, v, e, rowptr, col, perm, bias, k_bias, e_bias, v_bias, mode, clamp, ebt, mantissa_bits)


@edge_attention_fwd.register_fake
def _edge_attention_fwd_fake(q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                             bias, k_bias, e_bias, v_bias, mode, clamp, ebt, mantissa_bits):
    num_nodes, heads, _ = q.shape
    num_edges = e.shape[0]
    stats = mantissa_bits >= 0
    bins = num_bins(mantissa_bits) if stats else 0
    rows = num_edges if stats else 0
    return (
        torch.empty_like(q), torch.empty_like(e), q.new_empty((num_nodes, 2, heads), dtype=torch.float32),
        q.new_empty((bins,), dtype=torch.int64), q.new_empty((bins,), dtype=torch.int64),
        q.new_empty((rows,), dtype=torch.float32), q.new_empty((rows,), dtype=torch.float32),
        q.new_empty((rows,), dtype=torch.int32), q.new_empty((), dtype=torch.int64),
    )


@torch.library.custom_op("magnn::edge_attention_bwd", mutates_args=())
def edge_attention_bwd(
    grad_node: Optional[Tensor], grad_edge: Optional[Tensor],
    q: Tensor, k: Tensor, v: Tensor, e: Tensor, lse: Tensor, node_out: Tensor,
    rowptr: Tensor, col: Tensor, perm: Tensor, rev_rowptr: Tensor, rev_col: Tensor, rev_perm: Tensor,
    bias: Optional[Tensor], k_bias: Optional[Tensor], e_bias: Optional[Tensor], v_bias: Optional[Tensor],
    mode: str, clamp: Optional[float], ebt: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, de, dbias, dk_bias, de_bias, dv_bias); absent inputs get empty grads."""
    return _backward(grad_node, grad_edge, q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                     bias, k_bias, e_bias, v_bias, mode, clamp, ebt)


@edge_attention_bwd.register_fake
def _edge_attention_bwd_fake(grad_node, grad_edge, q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col,
                             rev_perm, bias, k_bias, e_bias, v_bias, mode, clamp, ebt):
    dbias = torch.empty_like(bias) if bias is not None else q.new_empty(0)
    if ebt != "none":
        ebt_grads = (torch.empty_like(k_bias), torch.empty_like(e_bias), torch.empty_like(v_bias))
    else:
        ebt_grads = tuple(q.new_empty(0) for _ in range(3))
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(e), dbias, *ebt_grads)


def _setup_context(ctx, inputs, output):
    (q, k, v, e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, k_bias, e_bias, v_bias, mode, clamp, ebt, _) = inputs
    ctx.save_for_backward(q, k, v, e, output[2], output[0], rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                          bias, k_bias, e_bias, v_bias)
    ctx.mode, ctx.clamp, ctx.ebt = mode, clamp, ebt
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero tensor is read
    ctx.mark_non_differentiable(*output[2:])


def _backward_formula(ctx, grad_node, grad_edge, *_unused):
    (q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
     bias, k_bias, e_bias, v_bias) = ctx.saved_tensors
    if rev_rowptr is None:
        raise RuntimeError(
            "magnn::edge_attention_fwd ran without the reverse CSR (no input required grad at call time); "
            "call it with rev_rowptr/rev_col/rev_perm to differentiate it"
        )
    nothing = (None,) * 14
    if grad_node is None and grad_edge is None:
        return nothing + (None,) * 4
    dq, dk, dv, de, dbias, dkb, deb, dvb = edge_attention_bwd(
        grad_node, grad_edge, q, k, v, e, lse, node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
        bias, k_bias, e_bias, v_bias, ctx.mode, ctx.clamp, ctx.ebt,
    )
    has_ebt = ctx.ebt != "none"
    return (
        dq, dk, dv, de, None, None, None, None, None, None,
        dbias if bias is not None else None,
        dkb if has_ebt else None, deb if has_ebt else None, dvb if has_ebt else None,
        None, None, None, None,
    )


edge_attention_fwd.register_autograd(_backward_formula, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# backend entry point (magnn.functional's contract)
# ---------------------------------------------------------------------------


def _raw_stats(num_edges, channels, hist_abs, hist_ratio, row_ratio, row_max, row_argc, nan_count) -> RawStats:
    device = row_ratio.device
    if num_edges:
        # first row holding the maximum, as a flat argmax would find; gathers, not
        # indexing, so torch.compile sees no data-dependent shape
        row = torch.argmax(row_max).reshape(1)
        best = row_max.gather(0, row).reshape(())
        channel = row_argc.gather(0, row).reshape(()).long()
        row = row.reshape(())
        found = best >= 0  # rows that are all NaN report -1
        argmax = torch.where(found, row * channels + channel, torch.full_like(row, -1))
        max_abs = torch.where(found, best, torch.full_like(best, -1.0))
    else:
        argmax = torch.tensor(-1, dtype=torch.int64, device=device)
        max_abs = torch.tensor(-1.0, device=device)
    return RawStats(
        hist_abs=hist_abs, hist_ratio=hist_ratio, row_ratio=row_ratio, nan_count=nan_count,
        max_abs=max_abs, argmax=argmax, count=num_edges * channels, channels=channels, row_max_abs=row_max,
    )


def run_triton_backend(q, k, v, e, graph, *, mode, clamp, bias, ebt, ebt_params, mantissa_bits, tap):
    """Backend entry point: (node_out, edge_out, RawStats | None), same contract as the torch reference."""
    graph.check_index_bounds()  # an unvalidated graph's indices, once: the kernels do not bound-check them
    k_bias = e_bias = v_bias = None
    if ebt is not None:
        k_bias, e_bias, v_bias = (p.contiguous() for p in ebt_params)
    tensors = [q, k, v, e] + ([bias] if bias is not None else []) + ([k_bias, e_bias, v_bias] if ebt else [])
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    reverse = (graph.rev_rowptr, graph.rev_col, graph.rev_perm) if needs_grad else (None, None, None)
    edge_stats = mantissa_bits is not None and tap == "edge"
    outputs = torch.ops.magnn.edge_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), e.contiguous(),
        graph.rowptr, graph.col, graph.perm, *reverse,
        None if bias is None else bias.contiguous(), k_bias, e_bias, v_bias,
        mode, clamp, "none" if ebt is None else ebt, mantissa_bits if edge_stats else -1,
    )
    node_out, edge_out = outputs[0], outputs[1]
    raw = None
    if mantissa_bits is not None:
        if tap == "node":
            # node_out is small and written anyway; its rows are nodes
            raw = reduce_rows(node_out.reshape(node_out.shape[0], -1), mantissa_bits)
        else:
            channels = q.shape[1] * q.shape[2]
            raw = _raw_stats(e.shape[0], channels, *outputs[3:])
    return node_out, edge_out, raw
