"""Device code shared by the forward and backward edge-attention kernels (SPEC §3-§4).

The constexpr flags the kernels branch on, and the @triton.jit helpers that
every pass uses the same way: the prologue (head lanes, work item bounds, q_i
and its EBT terms), scores, bias / EBT loads, the dst-row tile, the EBT slot,
the attention-dropout hash, the softmax state (lse) store / load and the
statistics of a tile; then the segment-sum kernel that merges the chunks of
split rows, in either direction.

Shapes: N nodes (bipartite: N_dst for q and the outputs, N_src for k and v),
E edges, H heads, D channels per head (HD = H * D values per row). Tiles are
[BLOCK_E, BLOCK_H, BLOCK_D] in float32; `hd_off` [BLOCK_H, BLOCK_D] are the
offsets of a row's values, added to a row's int64 base.
"""
from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------
# constexpr flags (host code passes their integer values)
# ---------------------------------------------------------------------------

# MODE: the score function
MODE_GT = tl.constexpr(0)  # w = q * k * e / sqrt(D), logit = sum(w), message v (Dwivedi & Bresson)
MODE_ADDITIVE = tl.constexpr(1)  # logit = q . (k + e) / sqrt(D), message v + e (TransformerConv)

# EBT: the Explicit Bias Term variant
EBT_NONE = tl.constexpr(0)
EBT_EDGE = tl.constexpr(1)  # every edge into i gets b_e,i = beta_i e' on its score, v' on its message
EBT_SLOT = tl.constexpr(2)  # one virtual incoming edge per node with k', e', v'

# DELTA: how the dst-side backward gets delta_i = sum_j a_ij dA_ij (+ slot) - g_i
DELTA_ROW = tl.constexpr(0)  # a first loop over the (whole) row sums it, then the gradients
DELTA_CHUNK = tl.constexpr(1)  # only the partial delta of a chunk (summed per node on the host side)
DELTA_GIVEN = tl.constexpr(2)  # read from delta_ptr (g_n . node_out - g, or the merged chunk deltas)

SMALLEST_NORMAL = tl.constexpr(1.1754943508222875e-38)  # 2**-126, the stats' replacement for a zero median

# DROPOUT (a plain bool constexpr): attention dropout on; off, the kernels hold no trace of it
# HAS_SINK, HAS_GATE (plain bool constexprs of the forward kernels): the learned sink logit's term
# in every row's softmax (`sink_state`) and the gate of node_out's store (`gated`); off, likewise

MODES = {"gt": MODE_GT.value, "additive": MODE_ADDITIVE.value}
EBTS = {"none": EBT_NONE.value, "edge": EBT_EDGE.value, "slot": EBT_SLOT.value}


# ---------------------------------------------------------------------------
# prologue
# ---------------------------------------------------------------------------


@triton.jit
def head_lanes(H, D, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Lanes of one [H, D] row: h_idx [BLOCK_H], h_mask, hd_off [BLOCK_H, BLOCK_D] (h * D + d), hd_mask."""
    h_idx = tl.arange(0, BLOCK_H)
    d_idx = tl.arange(0, BLOCK_D)
    hd_off = h_idx[:, None] * D + d_idx[None, :]
    hd_mask = (h_idx[:, None] < H) & (d_idx[None, :] < D)
    return h_idx, h_idx < H, hd_off, hd_mask


@triton.jit
def work_item(item, item_node_ptr, item_start_ptr, item_end_ptr, rowptr_ptr, PARTIAL: tl.constexpr):
    """(node, start, end, owns_node) of a work item: a whole CSR row, or (PARTIAL) the chunk
    [start, end) of one. owns_node marks the item that starts the row; it alone handles the
    node's once-per-row terms (the EBT slot, the lse gradient)."""
    node = tl.load(item_node_ptr + item).to(tl.int64)
    row_begin = tl.load(rowptr_ptr + node)
    if PARTIAL:
        start = tl.load(item_start_ptr + item)
        end = tl.load(item_end_ptr + item)
    else:
        start = row_begin
        end = tl.load(rowptr_ptr + node + 1)
    return node, start, end, start == row_begin


@triton.jit
def load_ebt_params(ebt_k_ptr, ebt_e_ptr, ebt_v_ptr, hd_off, hd_mask, EBT: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """k', e', v' ([H, D] each) as fp32 tiles; zeros without EBT, so callers need no branches."""
    ebt_k = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    ebt_e = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    ebt_v = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if EBT != EBT_NONE:
        ebt_k = tl.load(ebt_k_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        ebt_e = tl.load(ebt_e_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        ebt_v = tl.load(ebt_v_ptr + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
    return ebt_k, ebt_e, ebt_v


@triton.jit
def slot_terms(q_i, ebt_k, ebt_e, ebt_v, scale, clamp_val, MODE: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """The EBT slot of one node: raw logit [BLOCK_H], clamped logit, message [BLOCK_H, BLOCK_D]."""
    if MODE == MODE_GT:
        raw = tl.sum(q_i * (ebt_k * ebt_e), axis=1) * scale
        msg = ebt_v
    else:
        raw = tl.sum(q_i * (ebt_k + ebt_e), axis=1) * scale
        msg = ebt_v + ebt_e
    logit = raw
    if HAS_CLAMP:
        logit = tl.clamp(raw, -clamp_val, clamp_val, propagate_nan=tl.PropagateNan.ALL)
    return raw, logit, msg


@triton.jit
def query_terms(q_ptr, node, hd_off, hd_mask, ebt_k, ebt_e, ebt_v, HD, scale, clamp_val,
                MODE: tl.constexpr, EBT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """q_i of a dst node (q_ptr: [N, H, D]) and the EBT terms it sets for its whole row.

    Returns q_i, beta [BLOCK_H], shift (b_e,i = beta e'), msg_bias (v'), slot raw logit,
    slot logit, slot message; the terms of an EBT variant that is off are zeros."""
    q_i = tl.load(q_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
    beta = tl.zeros([BLOCK_H], tl.float32)
    shift = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    msg_bias = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    slot_raw = tl.zeros([BLOCK_H], tl.float32)
    slot_logit = tl.zeros([BLOCK_H], tl.float32)
    slot_msg = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if EBT == EBT_EDGE:
        beta = tl.sum(q_i * ebt_k, axis=1) * scale
        shift = beta[:, None] * ebt_e
        msg_bias = ebt_v
    if EBT == EBT_SLOT:
        slot_raw, slot_logit, slot_msg = slot_terms(q_i, ebt_k, ebt_e, ebt_v, scale, clamp_val, MODE, HAS_CLAMP)
    return q_i, beta, shift, msg_bias, slot_raw, slot_logit, slot_msg


# ---------------------------------------------------------------------------
# scores and tiles
# ---------------------------------------------------------------------------


@triton.jit
def scores(qx, kx, ex, shift, bias_t, scale, clamp_val,
           MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """(x, raw logit, clamped logit) of an edge tile; x is w (gt) or e + b_e (additive).

    qx, kx, ex, shift broadcast to [BLOCK_E, BLOCK_H, BLOCK_D]; bias_t is [BLOCK_E, BLOCK_H].
    """
    if MODE == MODE_GT:
        x = qx * kx * ex * scale
        if EBT == EBT_EDGE:
            x = x + shift
        raw = tl.sum(x, axis=2)
    else:
        x = ex
        if EBT == EBT_EDGE:
            x = ex + shift
        raw = tl.sum(qx * (kx + x), axis=2) * scale
    if HAS_BIAS:
        raw = raw + bias_t
    logit = raw
    if HAS_CLAMP:
        logit = tl.clamp(raw, -clamp_val, clamp_val, propagate_nan=tl.PropagateNan.ALL)
    return x, raw, logit


@triton.jit
def load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD: tl.constexpr,
              BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr):
    """Structural bias (bias_ptr: [E] or, BIAS_PER_HEAD, [E, H]) of the edges eid [BLOCK_E]
    as fp32 [BLOCK_E, BLOCK_H] ([E] biases broadcast over heads)."""
    if BIAS_PER_HEAD:
        bias_t = tl.load(bias_ptr + eid[:, None] * H + h_idx[None, :],
                         mask=emask[:, None] & (h_idx[None, :] < H), other=0.0).to(tl.float32)
    else:
        bias_t = tl.load(bias_ptr + eid, mask=emask, other=0.0).to(tl.float32)[:, None] \
            + tl.zeros([BLOCK_E, BLOCK_H], tl.float32)
    return bias_t


@triton.jit
def edge_rows(e_ptr, w_ptr, b_ptr, eid, eid_off, emask, m3, hd_off, hd_mask, HD,
              EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr, RELOAD_W: tl.constexpr = True):
    """e_ij of the edges eid [BLOCK_E] as fp32 [BLOCK_E, BLOCK_H, BLOCK_D] (0 outside m3).

    EDGE_FEATURES == 0: loaded from e_ptr [E, H, D] (eid_off). EDGE_FEATURES = F > 0, the
    in-operator projection (SPEC §3): e_ptr holds the raw features a [E, F] (input dtype),
    w_ptr W^T [F, H*D] fp32 and b_ptr b [H*D] fp32 (HAS_EDGE_BIAS), and e_ij = b + sum_f
    W[:, f] a_ij,f is formed here in fp32, f ascending (the C++ kernels' order), never
    rounded to the input dtype; every pass forms it the same way, so the backward's
    recomputation is the forward's bit for bit. RELOAD_W re-reads W's columns per tile (L1-resident)
    instead of letting the compiler hold all F of them across the row loop (8 registers each: the
    dst-row passes then need a stack frame on sm_90); the source-side backward holds them."""
    if EDGE_FEATURES > 0:
        e_t = tl.zeros(m3.shape, tl.float32)
        if HAS_EDGE_BIAS:
            e_t += tl.load(b_ptr + hd_off, mask=hd_mask, other=0.0)[None, :, :]
        for f in tl.static_range(EDGE_FEATURES):
            a_f = tl.load(e_ptr + eid * EDGE_FEATURES + f, mask=emask, other=0.0).to(tl.float32)
            w_f = tl.load(w_ptr + f * HD + hd_off, mask=hd_mask, other=0.0, volatile=RELOAD_W)
            e_t += a_f[:, None, None] * w_f[None, :, :]
        e_t = tl.where(m3, e_t, 0.0)
    else:
        e_t = tl.load(e_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
    return e_t


@triton.jit
def dst_tile(block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, q_i, shift,
             hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
             MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
             HAS_CLAMP: tl.constexpr, EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr,
             BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr):
    """One tile of a dst row (sorted positions block_start + e_idx below end): masks, offsets,
    k_j (k_ptr: [N, H, D], j from col_ptr: [E]) and e_ij (`edge_rows`: loaded from e_ptr
    [E, H, D], or projected from the raw features; caller's edge id from perm_ptr: [E]),
    scores recomputed.

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
    e_t = edge_rows(e_ptr, w_ptr, b_ptr, eid, eid_off, emask, m3, hd_off, hd_mask, HD, EDGE_FEATURES, HAS_EDGE_BIAS)
    bias_t = 0.0
    if HAS_BIAS:
        bias_t = load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD, BLOCK_E, BLOCK_H)
    x, raw, logit = scores(q_i[None, :, :], k_t, e_t, shift[None, :, :], bias_t, scale, clamp_val,
                           MODE, EBT, HAS_BIAS, HAS_CLAMP)
    return emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit


@triton.jit
def clamp_gate(d_logit, raw, clamp_val, HAS_CLAMP: tl.constexpr):
    """The clamp's derivative: no gradient reaches a logit that the clamp cut."""
    if HAS_CLAMP:
        d_logit = tl.where((raw >= -clamp_val) & (raw <= clamp_val), d_logit, 0.0)
    return d_logit


# ---------------------------------------------------------------------------
# attention dropout: keep(seed, edge id, head), counter-based (SPEC §3)
# ---------------------------------------------------------------------------


@triton.jit
def fmix32(x):
    """MurmurHash3's 32-bit finaliser on uint32 words (multiplications wrap mod 2**32)."""
    x ^= x >> 16
    x *= 0x85EBCA6B
    x ^= x >> 13
    x *= 0xC2B2AE35
    x ^= x >> 16
    return x


@triton.jit
def dropout_hash(eid, h_idx, seed_lo, seed_hi):
    """The uint32 hash [BLOCK_E, BLOCK_H] of (seed, edge id, head) for the edges eid [BLOCK_E]
    (int64 caller's ids) x heads h_idx [BLOCK_H]; seed_lo / seed_hi are the seed's low / high
    32 bits as int32 holding the uint32 bit patterns. The same bits as magnn.core.dropout's
    `edge_hash` (torch) and the C++ kernels' (tests compare them)."""
    s0 = seed_lo.to(tl.uint32, bitcast=True)
    s1 = seed_hi.to(tl.uint32, bitcast=True)
    e0 = eid.to(tl.uint32)  # low 32 bits
    e1 = (eid >> 32).to(tl.uint32)  # ids are >= 0: the arithmetic shift is a logical one
    x = fmix32(s0 ^ (e0 * 0x9E3779B1))
    x = fmix32(x ^ s1 ^ (e1 * 0x85EBCA77))
    return fmix32(x[:, None] ^ ((h_idx[None, :].to(tl.uint32) + 1) * 0xC2B2AE3D))


@triton.jit
def dropout_keep(eid, h_idx, seed_lo, seed_hi, threshold):
    """keep(seed, edge_id, h): bool [BLOCK_E, BLOCK_H], hash >= threshold (min(floor(p 2**32),
    2**32 - 1), an int32 holding the uint32 bit pattern)."""
    return dropout_hash(eid, h_idx, seed_lo, seed_hi) >= threshold.to(tl.uint32, bitcast=True)


@triton.jit
def dropout_scale(eid, h_idx, seed_lo, seed_hi, threshold, keep_scale):
    """fp32 [BLOCK_E, BLOCK_H]: the factor of each dropped-out attention weight, keep_scale
    (1 / (1 - p)) where kept, 0 where dropped."""
    return tl.where(dropout_keep(eid, h_idx, seed_lo, seed_hi, threshold), keep_scale, 0.0)


# ---------------------------------------------------------------------------
# softmax state
# ---------------------------------------------------------------------------


@triton.jit
def store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum):
    """Save a row's softmax as lse[node] = (row max, log sum) (lse_ptr: [N, 2, H] fp32);
    (+inf, 0) when it attended to nothing. Returns the two stored [BLOCK_H] vectors."""
    empty = l_sum == 0.0
    row_max = tl.where(empty, float("inf"), m)
    log_sum = tl.log(tl.where(empty, 1.0, l_sum))  # log 1 = 0 for an empty row
    tl.store(lse_ptr + node * 2 * H + h_idx, row_max, mask=h_mask)
    tl.store(lse_ptr + node * 2 * H + H + h_idx, log_sum, mask=h_mask)
    return row_max, log_sum


@triton.jit
def sink_state(m, l_sum, acc, sink_c, owns):
    """The online-softmax state (m, l_sum [BLOCK_H], acc [BLOCK_H, BLOCK_D]) with the sink's term
    exp(c_h) folded in (value 0: acc is only rescaled), where `owns` (the item that starts the
    row); elsewhere unchanged. From the empty state it is m = c, l_sum = 1, acc = 0."""
    m_new = tl.maximum(m, sink_c)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    l_new = l_sum * alpha + tl.exp(sink_c - m_safe)
    return tl.where(owns, m_new, m), tl.where(owns, l_new, l_sum), tl.where(owns, acc * alpha[:, None], acc)


@triton.jit
def gated(node_val, gate_ptr, node, h_idx, h_mask, H):
    """node_val [BLOCK_H, BLOCK_D] (fp32) times sigmoid(gate[node]) per head (gate_ptr: [N, H] fp32)."""
    gate = tl.load(gate_ptr + node * H + h_idx, mask=h_mask, other=0.0)
    return node_val * tl.sigmoid(gate)[:, None]


@triton.jit
def load_lse(lse_ptr, node, h_idx, h_mask, H):
    """(row max, log sum) of one node (lse_ptr: [N, 2, H] fp32), [BLOCK_H] each, or of a
    tile of nodes (node [BLOCK_E, 1], h_idx [1, BLOCK_H], h_mask [BLOCK_E, BLOCK_H]);
    a = exp((l - row max) - log sum)."""
    row_max = tl.load(lse_ptr + node * 2 * H + h_idx, mask=h_mask, other=float("inf"))
    log_sum = tl.load(lse_ptr + node * 2 * H + H + h_idx, mask=h_mask, other=0.0)
    return row_max, log_sum


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


@triton.jit
def median_bits_16(key, kth, BLOCK_E: tl.constexpr, CHANNELS: tl.constexpr):
    """The radix select of `tile_stats` for keys whose low 16 bits are zero (bf16 values; padding
    and NaN 0x7FFFFFFF): the same kth smallest key of each row ([BLOCK_E] int32 bit pattern),
    found on the 15-bit top halves packed two to a register. Per round, the candidate c (its
    top half, 1 <= c <= 0x7FFF) is compared with both halves of a pair at once: in
    ((c - 1) | 0x8000) * 0x10001 - pair no borrow crosses the halves (each minuend half is >=
    0x8000 > any key half) and bit 15 of a half is set iff key < c; the two flags, shifted to
    bits 0 and 16, sum over a row's <= 32 pairs without carrying into each other."""
    top = tl.reshape(key >> 16, [BLOCK_E, CHANNELS // 2, 2])
    low_half, high_half = tl.split(top)
    pair = low_half | (high_half << 16)
    med = tl.zeros([BLOCK_E], tl.int32)
    for i in tl.static_range(0, 15):
        cand = med | (1 << (14 - i))
        minuend = ((cand - 1) | 0x8000) * 0x10001
        flags = ((minuend[:, None] - pair) >> 15) & 0x10001
        packed = tl.sum(flags, axis=1)
        below = (packed & 0xFFFF) + ((packed >> 16) & 0xFFFF)
        med = tl.where(below <= kth, cand, med)
    return med << 16


@triton.jit
def flush_tile_histograms(hist_abs_ptr, hist_ratio_ptr, nan_count_ptr, hist_abs_loc, hist_ratio_loc, base_abs,
                          nan_total, RATIO_BASE: tl.constexpr, WINDOW: tl.constexpr):
    """Adds a program's register histograms (tile_stats' [WINDOW] windows of |a| and r_e bins, at
    base_abs / RATIO_BASE) and its NaN count to the call's global ones, once per program: one
    relaxed atomic per occupied bin."""
    w_idx = tl.arange(0, WINDOW)
    tl.atomic_add(hist_abs_ptr + base_abs + w_idx, hist_abs_loc.to(tl.int64), mask=hist_abs_loc > 0, sem="relaxed")
    tl.atomic_add(hist_ratio_ptr + RATIO_BASE + w_idx, hist_ratio_loc.to(tl.int64), mask=hist_ratio_loc > 0,
                  sem="relaxed")
    tl.atomic_add(nan_count_ptr, tl.sum(nan_total, axis=0), sem="relaxed")


@triton.jit
def tile_stats(vals, m3, emask, eid, hd_off,
               hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
               hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
               MBITS: tl.constexpr, WINDOW: tl.constexpr, RATIO_BASE: tl.constexpr, LOW_BIT: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Reduce one tile of stored tap values (fp32 [BLOCK_E, BLOCK_H, BLOCK_D]); m3 marks real values.

    Per edge (rows eid, caller's order) it stores the ratio r_e (row_ratio_ptr: [E] fp32), the
    max |a| (row_max_ptr: [E] fp32) and its channel (row_argc_ptr: [E] int32); histogram
    counts (hist_*_ptr: [num_bins] int64) go into the program's register windows
    (hist_*_loc: [WINDOW] int32, flushed by the caller) or straight to memory outside them;
    NaNs into nan_total ([BLOCK_E] int64 per row slot, summed by the caller at the end).

    On the stored (rounded) values viewed as float32: per-edge lower median by a radix select
    over the bit patterns (exact k-th smallest, NaN ranked last), ratios with a correctly
    rounded division. Integer atomics are exact, so the counts do not depend on the schedule.
    """
    NUM_BINS: tl.constexpr = 1 << (8 + MBITS)
    SHIFT: tl.constexpr = 23 - MBITS
    CHANNELS: tl.constexpr = BLOCK_H * BLOCK_D
    FLAT: tl.constexpr = BLOCK_E * CHANNELS
    # one row per edge, its H*D channels along the last axis (padding lanes masked out)
    a = tl.abs(tl.reshape(vals, [BLOCK_E, CHANNELS]))
    real = tl.reshape(m3, [BLOCK_E, CHANNELS])
    channel = tl.reshape(tl.broadcast_to(hd_off[None, :, :], [BLOCK_E, BLOCK_H, BLOCK_D]), [BLOCK_E, CHANNELS])
    ok = real & (a == a)
    # NaN counts per row slot (a reduction among the lanes holding the row), summed once at the end
    nan_total += tl.sum((real & (a != a)).to(tl.int64), axis=1)
    bits = a.to(tl.int32, bitcast=True)
    # NaN and padding rank after every number: |a| bit patterns order like the values
    key = tl.where(ok, bits, 0x7FFFFFFF)
    n_valid = tl.sum(ok.to(tl.int32), axis=1)
    kth = tl.maximum(n_valid - 1, 0) // 2
    # radix select of the kth smallest key: the largest t with #(key < t) <= kth; the
    # stored dtype leaves the low LOW_BIT bits zero, so they need no rounds
    if LOW_BIT >= 16 and CHANNELS % 2 == 0:  # bf16 stored: two keys per register, less work per round
        med_bits = median_bits_16(key, kth, BLOCK_E, CHANNELS)
    else:
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
    # the |A| window is anchored on the program's first values (a layer's scale is shared): the
    # block-wide max is taken only until then
    if base_abs < 0:
        top = tl.max(tl.where(okf, abs_bin, -1), axis=0)  # static-model: rare
        anchor = tl.minimum(tl.maximum(top + (2 << MBITS) - WINDOW, 0), NUM_BINS - WINDOW)  # static-model: rare
        base_abs = tl.where(top >= 0, anchor, base_abs)  # static-model: rare
    rel = abs_bin - base_abs
    inside = okf & (rel >= 0) & (rel < WINDOW)
    hist_abs_loc += tl.histogram(tl.where(inside, rel, 0), WINDOW, mask=inside)

    ratio_f = tl.reshape(ratio, [FLAT])
    ratio_ok = okf & (ratio_f == ratio_f)  # inf/inf (median inf) has no bin
    ratio_bin = ratio_f.to(tl.int32, bitcast=True) >> SHIFT
    rel_r = ratio_bin - RATIO_BASE
    inside_r = ratio_ok & (rel_r >= 0) & (rel_r < WINDOW)
    hist_ratio_loc += tl.histogram(tl.where(inside_r, rel_r, 0), WINDOW, mask=inside_r)
    # values outside the windows (rare: a massive activation, a window far from the first tile's)
    # go to memory with integer atomics, behind one block-wide test so tiles without any skip them
    out_abs = okf & (inside == 0)
    out_ratio = ratio_ok & (inside_r == 0)
    if tl.max((out_abs | out_ratio).to(tl.int32), axis=0) > 0:
        tl.atomic_add(hist_abs_ptr + abs_bin, 1, mask=out_abs, sem="relaxed")  # static-model: rare
        tl.atomic_add(hist_ratio_ptr + ratio_bin, 1, mask=out_ratio, sem="relaxed")  # static-model: rare
    return hist_abs_loc, hist_ratio_loc, base_abs, nan_total


# ---------------------------------------------------------------------------
# chunk merge by summation (forward: additive node_out; backward: delta, dq, dk, dv)
# ---------------------------------------------------------------------------


@triton.jit
def _segment_sum_kernel(
    part_ptr,  # [C, R] fp32: one partial row per chunk, the chunks of a node consecutive
    seg_node_ptr,  # [S] int64: node of each split row
    seg_ptr_ptr,  # [S + 1] int64: the chunks of seg_node[s] are rows seg_ptr[s]:seg_ptr[s + 1] of part
    out_ptr,  # [N, R]
    R,
    BLOCK_R: tl.constexpr,
):
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


def segment_sum(part, plan, out) -> None:
    """out[node] = sum over its chunks of part (part: [C, ...] fp32 per chunk of `plan`, a RowPlan)."""
    row = part[0].numel() if part.shape[0] else 1
    block = min(triton.next_power_of_2(row), 4096)
    _segment_sum_kernel[(plan.num_split,)](
        part_ptr=part, seg_node_ptr=plan.split_nodes, seg_ptr_ptr=plan.split_ptr, out_ptr=out, R=row, BLOCK_R=block,
    )
