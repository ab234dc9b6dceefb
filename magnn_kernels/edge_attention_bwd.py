"""Backward of the fused edge attention (SPEC §3 Autograd): kernels, then their launch wrapper.

The scores are recomputed from the inputs and the saved softmax state lse
(row max, log sum), so nothing of size E*H*D is saved by the forward. With
d_logit_ij = a_ij (dA_ij - delta_i) the only per-row reduction is, as in
FlashAttention, delta_i = sum_j a_ij dA_ij (+ the slot's term) where dA_ij is
the gradient reaching attention weight a_ij. It is g_n . node_out_i when
edge_out passes no gradient into the softmax (gt mode, or no edge_out
gradient); additive mode with an edge_out gradient sums it with a first loop
over the row. A gradient g_i of the log-sum-exp (the lse output) adds
g_i a_ij to d_logit_ij (d lse_i / d l_ij = a_ij), i.e. delta_i becomes
delta_i - g_i; the delta buffer always holds that difference.

Dropout (DROPOUT): both passes regenerate the forward's keep bits m_ij from
(seed, edge id, head); with a'_ij = a_ij m_ij / (1 - p) the weight the message
went out with, d_logit_ij = a_ij (m_ij / (1 - p) dA_ij - delta_i) and
delta_i = sum_j a'_ij dA_ij (still g_n . node_out_i - g_i), while dv, the
message part of de (additive) and the EBT v' sum get a'_ij.

Sink and gate: the weights recomputed from the saved lse already leave the sink its share;
with a gate the kernels are given sigmoid(g) * grad_node as node_out's gradient (what the edge
terms see), which leaves delta unchanged (delta = grad_node . node_out with the saved, gated
node_out); dsink_h = -sum_i exp(c_h - lse_i) (delta_i - g_i) and dgate = (1 - sigmoid(g))
grad_node . node_out are node-sized sums taken in torch after the dst pass.

Two passes: the dst pass walks the dst-sorted CSR (dq, dbias, EBT sums), the
src pass the source-sorted one (de per edge, dk and dv per source node); rows
split into chunks write partial sums merged by `segment_sum` in chunk order.
Bipartite graphs: the dst pass covers the N_dst rows of rowptr, the src pass the
N_src rows of rev_rowptr (sources with no edge get zero dk, dv).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from magnn.core.contract import BackwardResult, ProjBackwardResult

from . import utils
from .edge_attention_common import (
    DELTA_CHUNK, DELTA_GIVEN, DELTA_ROW, EBT_EDGE, EBT_NONE, EBT_SLOT, EBTS, MODE_GT, MODES,
    clamp_gate, dropout_scale, dst_tile, edge_rows, head_lanes, load_bias, load_ebt_params, load_lse, query_terms,
    scores, segment_sum, work_item,
)


# DW_DOT: how the src backward sums the in-operator projection's dW, db (and da)
DW_DOT_OFF = tl.constexpr(0)  # per-feature reductions of each tile (`projection_grads`)
DW_DOT_IEEE = tl.constexpr(1)  # per-tile tl.dot, fp32 operands, IEEE products (`projection_grads_dot`)
DW_DOT_HALF = tl.constexpr(2)  # per-tile tl.dot, operands in the 16-bit feature dtype (tensor cores)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "drop_threshold"])  # one build for every seed
def _edge_attention_bwd_dst_kernel(
    # inputs
    q_ptr,  # [N_dst, H, D] queries
    k_ptr,  # [N_src, H, D] keys
    v_ptr,  # [N_src, H, D] values
    e_ptr,  # [E, H, D] edge features, caller's edge order; or (EDGE_FEATURES = F > 0) raw features a [E, F]
    w_ptr,  # [F, H*D] fp32 projection weight W^T (EDGE_FEATURES > 0)
    b_ptr,  # [H*D] fp32 projection bias (HAS_EDGE_BIAS)
    bias_ptr,  # [E] | [E, H] structural bias (HAS_BIAS)
    ebt_k_ptr,  # [H, D] EBT k' (EBT != EBT_NONE)
    ebt_e_ptr,  # [H, D] EBT e'
    ebt_v_ptr,  # [H, D] EBT v'
    rowptr_ptr,  # [N_dst + 1] int64 CSR of the edges sorted by dst
    col_ptr,  # [E] int64 source of each sorted edge
    perm_ptr,  # [E] int64 sorted position -> caller's edge id
    # work items: whole rows, or (PARTIAL) chunks of long rows
    item_node_ptr,  # [I] int64 dst node of each item
    item_start_ptr,  # [I] int64 first sorted edge of a chunk (PARTIAL)
    item_end_ptr,  # [I] int64 one past its last (PARTIAL)
    num_items,
    # upstream gradients and saved state
    grad_node_ptr,  # [N_dst, H, D] gradient of node_out (HAS_GRAD_NODE)
    grad_edge_ptr,  # [E, H, D] gradient of edge_out, caller's order (HAS_GRAD_EDGE)
    grad_lse_ptr,  # [N_dst, H] fp32 gradient g of the log-sum-exp (HAS_GRAD_LSE)
    lse_ptr,  # [N_dst, 2, H] fp32 row max, log sum
    delta_ptr,  # [N_dst, H] fp32 delta - g (written by DELTA_ROW, read by DELTA_GIVEN)
    # outputs
    dq_ptr,  # [N_dst, H, D]
    dbias_ptr,  # like bias, fp32 (HAS_BIAS)
    debt_ptr,  # [N_dst + C, 3, H, D] fp32 per-item EBT sums of k', e', v' (EBT != EBT_NONE)
    part_delta_ptr,  # [C, H] fp32 partial delta of each chunk (DELTA_CHUNK)
    part_dq_ptr,  # [C, H, D] fp32 partial dq of each chunk (PARTIAL, DELTA_GIVEN)
    N, H, D, scale, clamp_val,  # N: N_dst
    seed_lo, seed_hi, drop_threshold, keep_scale,  # attention dropout (DROPOUT): utils.dropout_args
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, DROPOUT: tl.constexpr,
    HAS_GRAD_NODE: tl.constexpr, HAS_GRAD_EDGE: tl.constexpr, HAS_GRAD_LSE: tl.constexpr,
    PARTIAL: tl.constexpr, DELTA: tl.constexpr,
    EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr,  # in-operator projection (F; 0: e given)
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,  # H, D as compile-time values (SHAPE_*), or 0: runtime
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dst-side backward: delta_i (DELTA, see edge_attention_common), then dq, dbias and the EBT sums.

    Chunks (PARTIAL) write partial dq; the EBT sums go to one row of `debt` per work
    item (rows N + item for chunks), summed on the host. The chunk that starts a row
    owns its slot and lse-gradient terms.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if HEADS > 0:  # a specialised shape: offsets and masks fold, edge rows load as vectors
        H = HEADS
        D = HEAD_DIM
    HD = H * D
    e_idx = tl.arange(0, BLOCK_E)
    h_idx, h_mask, hd_off, hd_mask = head_lanes(H, D, BLOCK_H, BLOCK_D)

    ebt_k, ebt_e, ebt_v = load_ebt_params(ebt_k_ptr, ebt_e_ptr, ebt_v_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)

    for item in range(pid, num_items, nprog):
        node, start, end, owns_node = work_item(item, item_node_ptr, item_start_ptr, item_end_ptr, rowptr_ptr,
                                                PARTIAL)
        q_i, beta, shift, msg_bias, slot_raw, slot_logit, slot_msg = query_terms(
            q_ptr, node, hd_off, hd_mask, ebt_k, ebt_e, ebt_v, HD, scale, clamp_val,
            MODE, EBT, HAS_CLAMP, BLOCK_H, BLOCK_D)
        row_max, log_sum = load_lse(lse_ptr, node, h_idx, h_mask, H)
        g_n = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        if HAS_GRAD_NODE:
            g_n = tl.load(grad_node_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        slot_a = tl.zeros([BLOCK_H], tl.float32)
        slot_da = tl.zeros([BLOCK_H], tl.float32)
        if EBT == EBT_SLOT:
            slot_a = tl.where(owns_node, tl.exp((slot_logit - row_max) - log_sum), 0.0)
            slot_da = tl.sum(g_n * slot_msg, axis=1)

        if DELTA != DELTA_GIVEN:
            delta = tl.zeros([BLOCK_H], tl.float32)
            if EBT == EBT_SLOT:
                delta += slot_a * slot_da
            if HAS_GRAD_LSE:
                g_lse = tl.load(grad_lse_ptr + node * H + h_idx, mask=h_mask, other=0.0)
                delta -= tl.where(owns_node, g_lse, 0.0)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, EDGE_FEATURES, HAS_EDGE_BIAS,
                    BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + msg_bias[None, :, :]
                grad = g_n[None, :, :]
                if MODE != MODE_GT:
                    msg = msg + x
                    if HAS_GRAD_EDGE:
                        grad = grad + tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
                d_attn = tl.sum(grad * msg, axis=2)
                if DROPOUT:  # the message went out with the dropped weight a m / (1 - p)
                    d_attn = d_attn * dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
                delta += tl.sum(attn * d_attn, axis=0)
            if DELTA == DELTA_ROW:
                tl.store(delta_ptr + node * H + h_idx, delta, mask=h_mask)
            else:
                tl.store(part_delta_ptr + item * H + h_idx, delta, mask=h_mask)

        if DELTA != DELTA_CHUNK:
            if DELTA == DELTA_GIVEN:
                delta = tl.load(delta_ptr + node * H + h_idx, mask=h_mask, other=0.0)
            dq = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            sum_dx = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            sum_dmsg = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, EDGE_FEATURES, HAS_EDGE_BIAS,
                    BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + msg_bias[None, :, :]
                g_e = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
                if HAS_GRAD_EDGE:
                    g_e = tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
                attn_msg = attn  # the weight the message went out with
                if DROPOUT:
                    drop = dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
                    attn_msg = attn * drop
                if MODE == MODE_GT:
                    d_attn = tl.sum(g_n[None, :, :] * msg, axis=2)
                    if DROPOUT:
                        d_attn = d_attn * drop
                    d_logit = clamp_gate(attn * (d_attn - delta[None, :]), raw, clamp_val, HAS_CLAMP)
                    dx = tl.where(m3, g_e + d_logit[:, :, None], 0.0)  # dL/dw
                    dq += tl.sum(dx * k_t * e_t, axis=0) * scale
                    if EBT == EBT_EDGE:
                        sum_dmsg += tl.sum(attn_msg[:, :, None] * g_n[None, :, :], axis=0)
                else:
                    msg = msg + x
                    grad = g_n[None, :, :] + g_e
                    d_attn = tl.sum(grad * msg, axis=2)
                    if DROPOUT:
                        d_attn = d_attn * drop
                    d_logit = clamp_gate(attn * (d_attn - delta[None, :]), raw, clamp_val, HAS_CLAMP)
                    d_msg = attn_msg[:, :, None] * grad
                    dx = tl.where(m3, d_msg + d_logit[:, :, None] * scale * q_i[None, :, :], 0.0)  # dL/d(e + b_e)
                    dq += tl.sum(d_logit[:, :, None] * (k_t + x), axis=0) * scale
                    if EBT == EBT_EDGE:
                        sum_dmsg += tl.sum(d_msg, axis=0)
                if EBT == EBT_EDGE:
                    sum_dx += tl.sum(dx, axis=0)
                if HAS_BIAS:
                    if BIAS_PER_HEAD:
                        tl.store(dbias_ptr + eid[:, None] * H + h_idx[None, :], d_logit,
                                 mask=emask[:, None] & h_mask[None, :])
                    else:
                        d_bias = tl.sum(tl.where(h_mask[None, :], d_logit, 0.0), axis=1)
                        tl.store(dbias_ptr + eid, d_bias, mask=emask)

            d_ebt_k = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            d_ebt_e = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            d_ebt_v = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            if EBT == EBT_EDGE:
                d_beta = tl.sum(sum_dx * ebt_e, axis=1)
                dq += d_beta[:, None] * scale * ebt_k
                d_ebt_k = d_beta[:, None] * scale * q_i
                d_ebt_e = beta[:, None] * sum_dx
                d_ebt_v = sum_dmsg
            if EBT == EBT_SLOT:
                slot_dl = clamp_gate(slot_a * (slot_da - delta), slot_raw, clamp_val, HAS_CLAMP)
                d_ebt_v = slot_a[:, None] * g_n
                if MODE == MODE_GT:
                    dq += slot_dl[:, None] * scale * (ebt_k * ebt_e)
                    d_ebt_k = slot_dl[:, None] * scale * q_i * ebt_e
                    d_ebt_e = slot_dl[:, None] * scale * q_i * ebt_k
                else:
                    dq += slot_dl[:, None] * scale * (ebt_k + ebt_e)
                    d_ebt_k = slot_dl[:, None] * scale * q_i
                    d_ebt_e = slot_dl[:, None] * scale * q_i + d_ebt_v
            if PARTIAL:
                tl.store(part_dq_ptr + item * HD + hd_off, dq, mask=hd_mask)
            else:
                tl.store(dq_ptr + node * HD + hd_off, dq.to(dq_ptr.dtype.element_ty), mask=hd_mask)
            if EBT != EBT_NONE:
                row = node
                if PARTIAL:
                    row = (N + item).to(tl.int64)
                tl.store(debt_ptr + (row * 3 + 0) * HD + hd_off, d_ebt_k, mask=hd_mask)
                tl.store(debt_ptr + (row * 3 + 1) * HD + hd_off, d_ebt_e, mask=hd_mask)
                tl.store(debt_ptr + (row * 3 + 2) * HD + hd_off, d_ebt_v, mask=hd_mask)


@triton.jit
def projection_grads(d_e, a_ptr, w_ptr, da_ptr, eid, emask, m3, hd_off, hd_mask, HD, f_idx, dw_acc, db_acc,
                     EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr, NEED_GRAD_A: tl.constexpr):
    """The in-operator projection's share of one tile's edge gradient d_e (fp32 [BLOCK_E, BLOCK_H,
    BLOCK_D]): dw_acc [BLOCK_F, BLOCK_H, BLOCK_D] += d_e a^T per feature f (a_ptr: [E, F] raw
    features), db_acc [BLOCK_H, BLOCK_D] += sum of d_e, and (NEED_GRAD_A) da_ij,f = W[:, f] . d_e_ij
    stored to da_ptr [E, F] (w_ptr: W^T [F, H*D] fp32). Returns the two accumulators."""
    d_e = tl.where(m3, d_e, 0.0)
    if HAS_EDGE_BIAS:
        db_acc += tl.sum(d_e, axis=0)
    for f in tl.static_range(EDGE_FEATURES):
        a_f = tl.load(a_ptr + eid * EDGE_FEATURES + f, mask=emask, other=0.0).to(tl.float32)
        dw_f = tl.sum(d_e * a_f[:, None, None], axis=0)
        dw_acc += tl.where(f_idx[:, None, None] == f, dw_f[None, :, :], 0.0)
        if NEED_GRAD_A:
            w_f = tl.load(w_ptr + f * HD + hd_off, mask=hd_mask, other=0.0)
            da_f = tl.sum(tl.sum(d_e * w_f[None, :, :], axis=2), axis=1)
            tl.store(da_ptr + eid * EDGE_FEATURES + f, da_f.to(da_ptr.dtype.element_ty), mask=emask)
    return dw_acc, db_acc


@triton.jit
def projection_grads_dot(d_e, a_ptr, w_ptr, da_ptr, eid, emask, m3, HD, H, D, f_idx, dw_acc,
                         EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr, NEED_GRAD_A: tl.constexpr,
                         DW_DOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """`projection_grads` as matrix products (DW_DOT): one tile's d_e (fp32 [BLOCK_E, BLOCK_H, BLOCK_D])
    flattened to [BLOCK_E, HDB] and dw_acc [BLOCK_F, HDB] += a^T d_e by one `tl.dot` with fp32 sums
    (DW_DOT_IEEE: fp32 IEEE products, no tf32; DW_DOT_HALF: d_e rounded to the 16-bit feature dtype,
    as the unfused path stores de, on tensor cores), where a^T [BLOCK_F, BLOCK_E] holds the F raw
    features and, with HAS_EDGE_BIAS, a row of ones at f = F (BLOCK_F > F), so that row of the
    accumulator is db. No per-feature reduction across the warps (the per-feature form's barriers
    and shuffles); NEED_GRAD_A: da = d_e W as a second product. Needs BLOCK_E >= 16, HDB >= 16 and
    BLOCK_F >= 16 (tl.dot's smallest tile)."""
    HDB: tl.constexpr = BLOCK_H * BLOCK_D
    d_e = tl.reshape(tl.where(m3, d_e, 0.0), [BLOCK_E, HDB])
    feat = f_idx[:, None] < EDGE_FEATURES
    a_t = tl.load(a_ptr + eid[None, :] * EDGE_FEATURES + f_idx[:, None], mask=feat & emask[None, :],
                  other=0.0).to(tl.float32)
    if HAS_EDGE_BIAS:
        a_t = tl.where((f_idx[:, None] == EDGE_FEATURES) & emask[None, :], 1.0, a_t)
    if DW_DOT == DW_DOT_HALF:
        half = a_ptr.dtype.element_ty
        dw_acc = tl.dot(a_t.to(half), d_e.to(half), dw_acc)
    else:
        dw_acc = tl.dot(a_t, d_e, dw_acc, input_precision="ieee")
    if NEED_GRAD_A:
        c = tl.arange(0, HDB)
        c_off = (c // BLOCK_D) * D + c % BLOCK_D
        c_mask = ((c // BLOCK_D) < H) & ((c % BLOCK_D) < D)
        w = tl.load(w_ptr + f_idx[None, :] * HD + c_off[:, None], mask=(f_idx[None, :] < EDGE_FEATURES)
                    & c_mask[:, None], other=0.0)  # W [HDB, BLOCK_F] from W^T [F, H*D]
        da = tl.dot(d_e, w, input_precision="ieee")
        tl.store(da_ptr + eid[:, None] * EDGE_FEATURES + f_idx[None, :], da.to(da_ptr.dtype.element_ty),
                 mask=emask[:, None] & (f_idx[None, :] < EDGE_FEATURES))
    return dw_acc


@triton.jit
def store_dot_partials(part_dw_ptr, part_db_ptr, pid, dw_acc, f_idx, HD, H, D, EDGE_FEATURES: tl.constexpr,
                       HAS_EDGE_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Write a program's `projection_grads_dot` accumulator: rows f < F to its part_dw row [F, H*D],
    row F (the ones feature) to its part_db row [H*D] (HAS_EDGE_BIAS)."""
    c = tl.arange(0, BLOCK_H * BLOCK_D)
    c_off = (c // BLOCK_D) * D + c % BLOCK_D
    c_mask = ((c // BLOCK_D) < H) & ((c % BLOCK_D) < D)
    tl.store(part_dw_ptr + pid * EDGE_FEATURES * HD + f_idx[:, None] * HD + c_off[None, :], dw_acc,
             mask=(f_idx[:, None] < EDGE_FEATURES) & c_mask[None, :])
    if HAS_EDGE_BIAS:
        tl.store(part_db_ptr + pid * HD + f_idx[:, None] * 0 + c_off[None, :], dw_acc,
                 mask=(f_idx[:, None] == EDGE_FEATURES) & c_mask[None, :])


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "drop_threshold"])
def _edge_attention_bwd_src_kernel(
    # inputs
    q_ptr,  # [N_dst, H, D] queries
    k_ptr,  # [N_src, H, D] keys
    v_ptr,  # [N_src, H, D] values
    e_ptr,  # [E, H, D] edge features, caller's edge order; or (EDGE_FEATURES = F > 0) raw features a [E, F]
    w_ptr,  # [F, H*D] fp32 projection weight W^T (EDGE_FEATURES > 0)
    b_ptr,  # [H*D] fp32 projection bias (HAS_EDGE_BIAS)
    bias_ptr,  # [E] | [E, H] structural bias (HAS_BIAS)
    ebt_k_ptr,  # [H, D] EBT k' (EBT != EBT_NONE)
    ebt_e_ptr,  # [H, D] EBT e'
    ebt_v_ptr,  # [H, D] EBT v'
    rev_rowptr_ptr,  # [N_src + 1] int64 CSR of the edges sorted by source
    rev_col_ptr,  # [E] int64 dst of each source-sorted edge
    rev_perm_ptr,  # [E] int64 source-sorted position -> caller's edge id
    # work items: whole rows, or (PARTIAL) chunks of long rows
    item_node_ptr,  # [I] int64 source node of each item
    item_start_ptr,  # [I] int64 first source-sorted edge of a chunk (PARTIAL)
    item_end_ptr,  # [I] int64 one past its last (PARTIAL)
    num_items,
    # upstream gradients and saved state
    grad_node_ptr,  # [N_dst, H, D] gradient of node_out (HAS_GRAD_NODE)
    grad_edge_ptr,  # [E, H, D] gradient of edge_out, caller's order (HAS_GRAD_EDGE)
    lse_ptr,  # [N_dst, 2, H] fp32 row max, log sum
    delta_ptr,  # [N_dst, H] fp32 delta - g of each dst node
    # outputs
    dk_ptr,  # [N_src, H, D]
    dv_ptr,  # [N_src, H, D]
    de_ptr,  # [E, H, D] caller's edge order (EDGE_FEATURES == 0)
    da_ptr,  # [E, F] caller's edge order, input dtype (EDGE_FEATURES > 0 and NEED_GRAD_A)
    part_dw_ptr,  # [P, F, H*D] fp32 each program's partial dW^T (EDGE_FEATURES > 0)
    part_db_ptr,  # [P, H*D] fp32 each program's partial db (HAS_EDGE_BIAS)
    part_dk_ptr,  # [C, H, D] fp32 partial dk of each chunk (PARTIAL)
    part_dv_ptr,  # [C, H, D] fp32 partial dv of each chunk (PARTIAL)
    H, D, scale, clamp_val,
    seed_lo, seed_hi, drop_threshold, keep_scale,  # attention dropout (DROPOUT): utils.dropout_args
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, DROPOUT: tl.constexpr, HAS_GRAD_NODE: tl.constexpr, HAS_GRAD_EDGE: tl.constexpr,
    PARTIAL: tl.constexpr,
    EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr,  # in-operator projection (F; 0: e given)
    NEED_GRAD_A: tl.constexpr, BLOCK_F: tl.constexpr,  # da wanted; next power of two >= F (DW_DOT: > F, >= 16)
    DW_DOT: tl.constexpr,  # DW_DOT_*: dW (and db, da) per tile as matrix products (`projection_grads_dot`), or not
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,  # H, D as compile-time values (SHAPE_*), or 0: runtime
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """src-side backward over the reverse CSR: de per edge, dk and dv summed per source node.

    Under the in-operator projection (EDGE_FEATURES = F > 0) de_ij never leaves registers:
    each program sums dW^T = sum de a^T ([F, H*D]) and db = sum de over its edges and writes
    them once to its row of part_dw / part_db (the host sums the rows in a fixed order: no
    float atomics, the same bits every run), and da_ij = W^T de_ij when NEED_GRAD_A."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if HEADS > 0:  # a specialised shape: offsets and masks fold, edge rows load as vectors
        H = HEADS
        D = HEAD_DIM
    HD = H * D
    e_idx = tl.arange(0, BLOCK_E)
    h_idx, h_mask, hd_off, hd_mask = head_lanes(H, D, BLOCK_H, BLOCK_D)

    ebt_k, ebt_e, ebt_v = load_ebt_params(ebt_k_ptr, ebt_e_ptr, ebt_v_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)

    f_idx = tl.arange(0, BLOCK_F)
    if DW_DOT != DW_DOT_OFF:  # dW^T (and, at row F, db) of this program's edges, flat channels
        dw_acc = tl.zeros([BLOCK_F, BLOCK_H * BLOCK_D], tl.float32)
    else:
        dw_acc = tl.zeros([BLOCK_F, BLOCK_H, BLOCK_D], tl.float32)  # dW^T of this program's edges (EDGE_FEATURES)
    db_acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)  # db (HAS_EDGE_BIAS)

    for item in range(pid, num_items, nprog):
        node, start, end, _ = work_item(item, item_node_ptr, item_start_ptr, item_end_ptr, rev_rowptr_ptr, PARTIAL)
        k_j = tl.load(k_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        v_j = tl.load(v_ptr + node * HD + hd_off, mask=hd_mask, other=0.0).to(tl.float32)
        if EBT == EBT_EDGE:
            v_j = v_j + ebt_v
        dk = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for block_start in range(start, end, BLOCK_E):
            pos = block_start + e_idx
            emask = pos < end
            m2 = emask[:, None] & h_mask[None, :]
            m3 = emask[:, None, None] & hd_mask[None, :, :]
            dst = tl.load(rev_col_ptr + pos, mask=emask, other=0).to(tl.int64)
            dst_off = dst[:, None, None] * HD + hd_off[None, :, :]
            eid = tl.load(rev_perm_ptr + pos, mask=emask, other=0).to(tl.int64)
            eid_off = eid[:, None, None] * HD + hd_off[None, :, :]  # int64 (eid is): E*H*D passes 2**31
            q_t = tl.load(q_ptr + dst_off, mask=m3, other=0.0).to(tl.float32)
            e_t = edge_rows(e_ptr, w_ptr, b_ptr, eid, eid_off, emask, m3, hd_off, hd_mask, HD,
                            EDGE_FEATURES, HAS_EDGE_BIAS, DW_DOT != DW_DOT_OFF)
            max_t, log_sum_t = load_lse(lse_ptr, dst[:, None], h_idx[None, :], m2, H)
            delta_t = tl.load(delta_ptr + dst[:, None] * H + h_idx[None, :], mask=m2, other=0.0)
            g_n = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if HAS_GRAD_NODE:
                g_n = tl.load(grad_node_ptr + dst_off, mask=m3, other=0.0).to(tl.float32)
            g_e = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if HAS_GRAD_EDGE:
                g_e = tl.load(grad_edge_ptr + eid_off, mask=m3, other=0.0).to(tl.float32)
            shift = tl.zeros([BLOCK_E, BLOCK_H, BLOCK_D], tl.float32)
            if EBT == EBT_EDGE:
                shift = (tl.sum(q_t * ebt_k[None, :, :], axis=2) * scale)[:, :, None] * ebt_e[None, :, :]
            bias_t = 0.0
            if HAS_BIAS:
                bias_t = load_bias(bias_ptr, eid, emask, h_idx, H, BIAS_PER_HEAD, BLOCK_E, BLOCK_H)
            x, raw, logit = scores(q_t, k_j[None, :, :], e_t, shift, bias_t, scale, clamp_val,
                                   MODE, EBT, HAS_BIAS, HAS_CLAMP)
            attn = tl.exp(tl.where(m2, (logit - max_t) - log_sum_t, float("-inf")))
            attn_msg = attn  # the weight the message went out with
            if DROPOUT:
                drop = dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
                attn_msg = attn * drop
            if MODE == MODE_GT:
                d_attn = tl.sum(g_n * v_j[None, :, :], axis=2)
                if DROPOUT:
                    d_attn = d_attn * drop
                d_logit = clamp_gate(attn * (d_attn - delta_t), raw, clamp_val, HAS_CLAMP)
                dw = tl.where(m3, g_e + d_logit[:, :, None], 0.0)
                dk += tl.sum(dw * q_t * e_t, axis=0) * scale
                d_e = dw * q_t * k_j[None, :, :] * scale
                dv += tl.sum(attn_msg[:, :, None] * g_n, axis=0)
            else:
                grad = g_n + g_e
                d_attn = tl.sum(grad * (v_j[None, :, :] + x), axis=2)
                if DROPOUT:
                    d_attn = d_attn * drop
                d_logit = clamp_gate(attn * (d_attn - delta_t), raw, clamp_val, HAS_CLAMP)
                d_msg = attn_msg[:, :, None] * grad
                d_e = d_msg + d_logit[:, :, None] * scale * q_t
                dk += tl.sum(d_logit[:, :, None] * q_t, axis=0) * scale
                dv += tl.sum(d_msg, axis=0)
            if DW_DOT != DW_DOT_OFF:
                dw_acc = projection_grads_dot(d_e, e_ptr, w_ptr, da_ptr, eid, emask, m3, HD, H, D, f_idx, dw_acc,
                                              EDGE_FEATURES, HAS_EDGE_BIAS, NEED_GRAD_A, DW_DOT, BLOCK_E, BLOCK_H,
                                              BLOCK_D)
            elif EDGE_FEATURES > 0:
                dw_acc, db_acc = projection_grads(d_e, e_ptr, w_ptr, da_ptr, eid, emask, m3, hd_off, hd_mask, HD,
                                                  f_idx, dw_acc, db_acc, EDGE_FEATURES, HAS_EDGE_BIAS, NEED_GRAD_A)
            else:
                tl.store(de_ptr + eid_off, d_e.to(de_ptr.dtype.element_ty), mask=m3)
        if PARTIAL:
            tl.store(part_dk_ptr + item * HD + hd_off, dk, mask=hd_mask)
            tl.store(part_dv_ptr + item * HD + hd_off, dv, mask=hd_mask)
        else:
            tl.store(dk_ptr + node * HD + hd_off, dk.to(dk_ptr.dtype.element_ty), mask=hd_mask)
            tl.store(dv_ptr + node * HD + hd_off, dv.to(dv_ptr.dtype.element_ty), mask=hd_mask)
    if DW_DOT != DW_DOT_OFF:
        store_dot_partials(part_dw_ptr, part_db_ptr, pid, dw_acc, f_idx, HD, H, D, EDGE_FEATURES, HAS_EDGE_BIAS,
                           BLOCK_H, BLOCK_D)
    elif EDGE_FEATURES > 0:
        f_hd = (f_idx[:, None, None] * HD + hd_off[None, :, :])
        tl.store(part_dw_ptr + pid * EDGE_FEATURES * HD + f_hd, dw_acc,
                 mask=(f_idx[:, None, None] < EDGE_FEATURES) & hd_mask[None, :, :])
        if HAS_EDGE_BIAS:
            tl.store(part_db_ptr + pid * HD + hd_off, db_acc, mask=hd_mask)


# ---------------------------------------------------------------------------
# launch wrapper
# ---------------------------------------------------------------------------


def edge_attention_backward(grad_node, grad_edge, grad_lse, q, k, v, e, lse, node_out,
                            rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                            bias, ebt_k, ebt_e, ebt_v, mode: str, ebt: str, clamp, dropout: float,
                            seed: int, proj=None, need_grad_a: bool = False, sink=None, gate=None):
    """Launch the backward; the gradients of absent optional inputs are empty tensors.

    Returns a `BackwardResult`, or with proj = (W^T [F, H*D], b [H*D] or None), both fp32 (the
    in-operator projection; e is then the raw features a [E, F]) a `ProjBackwardResult`: no
    [E, H, D] gradient, dW [H*D, F] and db summed from per-program partials, da only when
    need_grad_a (else [0, F]).

    dq, dk, dv, de come in the input dtype, dbias and the EBT gradients in float32 (the
    accumulation dtype); only grad_lse[:, 1] (the log-sum part) is read. Bipartite: the dst
    pass walks the N_dst rows of rowptr (dq), the src pass the N_src rows of rev_rowptr (dk,
    dv); with dropout both regenerate the forward's keep mask from (seed, edge id, head).

    sink [H], gate [N_dst, H] (fp32, or None): the weights recomputed from the saved lse already
    hold the sink's share; the kernels see sigmoid(gate) * grad_node as node_out's gradient (the
    edge terms' and, with it, delta's: delta is unchanged by the gate); dsink and dgate are reduced
    here from the per-row delta (`_sink_and_gate_grads`)."""
    num_nodes, heads, head_dim = q.shape  # N_dst
    num_edges = e.shape[0]
    device = q.device
    acc_dtype = torch.float32
    tile = utils.tiles(heads, head_dim)
    mode_id, ebt_id = MODES[mode], EBTS[ebt]
    drop = utils.dropout_args(dropout, seed)
    has_ebt = ebt_id != EBT_NONE.value
    dq, dk, dv = (utils.empty(t.shape, t.dtype, device) for t in (q, k, v))
    de = utils.empty(e.shape if proj is None else (0, heads, head_dim), e.dtype, device)
    dbias = utils.empty(bias.shape, acc_dtype, device) if bias is not None else q.new_empty(0, dtype=acc_dtype)
    grads = _ProjGrads(proj, e, need_grad_a, heads * head_dim, tile)
    if num_nodes == 0:  # no dst node, so no edge: the N_src sources get zero gradients
        dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=device) for t in (k, v))
        ebt_grads = tuple(torch.zeros(p.shape, dtype=acc_dtype, device=device) if has_ebt
                          else q.new_empty(0, dtype=acc_dtype) for p in (ebt_k, ebt_e, ebt_v))
        dsink, dgate = (torch.zeros(t.shape, dtype=acc_dtype, device=device) if t is not None
                        else q.new_empty(0, dtype=acc_dtype) for t in (sink, gate))
        return grads.result(BackwardResult(dq, dk, dv, de, dbias, *ebt_grads, dsink, dgate))

    chunk = utils.row_split(num_edges, device, tile)
    dst_plan, src_plan = utils.row_plan(rowptr, chunk), utils.row_plan(rev_rowptr, chunk)
    # graphs whose rows are all shorter than a tile (molecule batches): tiles cut to the longest row
    dst_tiles = utils.short_row_tiles(tile, utils.max_degree(rowptr))
    src_tiles = utils.short_row_tiles(tile, utils.max_degree(rev_rowptr))
    grads.tile = src_tiles
    g_lse = grad_lse[:, 1].to(acc_dtype).contiguous() if grad_lse is not None else None  # [N, H]
    # delta_i - g_i is g_n . node_out_i - g_i unless edge_out (additive: a * msg) carries
    # gradient into the softmax; then the dst pass sums it over each row first
    delta_from_out = mode_id == MODE_GT.value or grad_edge is None
    # with a gate, node_out is the gated output: delta = grad_node . node_out is unchanged by it
    node_dot, grad_node = _gated_grad_node(grad_node, node_out, gate, acc_dtype)
    if not delta_from_out:
        delta = utils.empty((num_nodes, heads), acc_dtype, device)
    else:
        delta = torch.zeros((num_nodes, heads), dtype=acc_dtype, device=device)
        if node_dot is not None:
            delta = node_dot
        if g_lse is not None:
            delta = delta - g_lse
    placeholder = delta  # stands in for every absent pointer
    debt = (
        torch.zeros((num_nodes + dst_plan.num_chunks, 3, heads, head_dim), dtype=acc_dtype, device=device)
        if has_ebt else placeholder
    )
    grad_node = grad_node.contiguous() if grad_node is not None else None
    grad_edge = grad_edge.contiguous() if grad_edge is not None else None
    common = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, e_ptr=e, bias_ptr=utils.or_placeholder(bias, placeholder),
        **utils.projection_args(proj, placeholder),
        ebt_k_ptr=utils.or_placeholder(ebt_k, placeholder), ebt_e_ptr=utils.or_placeholder(ebt_e, placeholder),
        ebt_v_ptr=utils.or_placeholder(ebt_v, placeholder),
        grad_node_ptr=utils.or_placeholder(grad_node, placeholder),
        grad_edge_ptr=utils.or_placeholder(grad_edge, placeholder), lse_ptr=lse, delta_ptr=delta,
        H=heads, D=head_dim, scale=1.0 / math.sqrt(head_dim), clamp_val=0.0 if clamp is None else float(clamp),
        MODE=mode_id, EBT=ebt_id, HAS_BIAS=bias is not None, BIAS_PER_HEAD=bias is not None and bias.dim() == 2,
        HAS_CLAMP=clamp is not None, HAS_GRAD_NODE=grad_node is not None, HAS_GRAD_EDGE=grad_edge is not None,
        **drop,
    )

    def dst_pass(items: dict, partial: bool, delta_mode: int, part_delta=placeholder, part_dq=placeholder):
        _edge_attention_bwd_dst_kernel[utils.grid(items["num_items"], False, device)](
            **items, **common, **dst_tiles.launch_args(), rowptr_ptr=rowptr, col_ptr=col, perm_ptr=perm,
            grad_lse_ptr=utils.or_placeholder(g_lse, placeholder), dq_ptr=dq,
            dbias_ptr=dbias if bias is not None else placeholder, debt_ptr=debt,
            part_delta_ptr=part_delta, part_dq_ptr=part_dq, N=num_nodes,
            HAS_GRAD_LSE=g_lse is not None, PARTIAL=partial, DELTA=delta_mode,
        )

    def src_pass(items: dict, partial: bool, part_dk=placeholder, part_dv=placeholder):
        # with the projection a persistent grid: its [programs, F, H*D] dW partials stay small (SMs x 8 rows)
        launch_grid = utils.grid(items["num_items"], proj is not None, device)
        _edge_attention_bwd_src_kernel[launch_grid](
            **items, **common, **src_tiles.launch_args(), rev_rowptr_ptr=rev_rowptr, rev_col_ptr=rev_col,
            rev_perm_ptr=rev_perm,
            dk_ptr=dk, dv_ptr=dv, de_ptr=de if proj is None else placeholder, part_dk_ptr=part_dk,
            part_dv_ptr=part_dv, PARTIAL=partial, **grads.launch_args(launch_grid[0], placeholder),
            **grads.stages(),
        )

    with utils.device_ctx(device):
        if dst_plan.num_whole:
            dst_pass(dst_plan.whole_items(), False, DELTA_GIVEN.value if delta_from_out else DELTA_ROW.value)
        if dst_plan.num_chunks:
            if not delta_from_out:
                part_delta = utils.empty((dst_plan.num_chunks, heads), acc_dtype, device)
                dst_pass(dst_plan.chunk_items(), True, DELTA_CHUNK.value, part_delta=part_delta)
                segment_sum(part_delta, dst_plan, delta)
            part_dq = utils.empty((dst_plan.num_chunks, heads, head_dim), acc_dtype, device)
            dst_pass(dst_plan.chunk_items(), True, DELTA_GIVEN.value, part_dq=part_dq)
            segment_sum(part_dq, dst_plan, dq)
        if src_plan.num_whole:
            src_pass(src_plan.whole_items(), False)
        if src_plan.num_chunks:
            part_dk = utils.empty((src_plan.num_chunks, heads, head_dim), acc_dtype, device)
            part_dv = utils.empty((src_plan.num_chunks, heads, head_dim), acc_dtype, device)
            src_pass(src_plan.chunk_items(), True, part_dk=part_dk, part_dv=part_dv)
            segment_sum(part_dk, src_plan, dk)
            segment_sum(part_dv, src_plan, dv)
    ebt_grads = tuple(q.new_empty(0, dtype=acc_dtype) for _ in range(3))
    if has_ebt:
        totals = debt.sum(0)  # one deterministic reduction over the per-item rows
        ebt_grads = tuple(totals[i].clone() for i in range(3))
    dsink, dgate = _sink_and_gate_grads(sink, gate, lse, delta, node_dot)
    return grads.result(BackwardResult(dq, dk, dv, de, dbias, *ebt_grads, dsink, dgate))


def _gated_grad_node(grad_node, node_out, gate, acc_dtype):
    """(node_dot [N, H] = grad_node . node_out per (node, head), or None without a gradient;
    node_out's gradient as the kernels take it: sigmoid(gate) * grad_node in fp32 with a gate,
    else grad_node itself)."""
    if grad_node is None:
        return None, None
    node_dot = (grad_node.to(acc_dtype) * node_out.to(acc_dtype)).sum(-1)
    if gate is None:
        return node_dot, grad_node
    return node_dot, (grad_node.to(acc_dtype) * torch.sigmoid(gate)[..., None]).contiguous()


def _sink_and_gate_grads(sink, gate, lse, delta, node_dot):
    """(dsink [H], dgate [N, H]), empty where absent. delta [N, H] holds the full row term of the
    softmax backward minus the lse gradient, so dsink_h = -sum_i w_ih delta_ih with the sink's
    weight w = exp(c_h - lse_i) (a deterministic torch sum); dgate = (1 - sigmoid(g)) grad_node .
    node_out with node_out the gated output the forward stored."""
    dsink = delta.new_empty(0)  # distinct empty tensors: a custom op's outputs may not alias each other
    if sink is not None:
        weight = torch.exp((sink[None, :] - lse[:, 0]) - lse[:, 1])
        dsink = -(weight * delta).sum(0)
    dgate = delta.new_empty(0)
    if gate is not None:
        dgate = torch.zeros_like(gate) if node_dot is None else (1.0 - torch.sigmoid(gate)) * node_dot
    return dsink, dgate


# dW, db (and da) of the in-operator projection as per-tile matrix products (`projection_grads_dot`)
# where the tile allows tl.dot (>= 16 edges and >= 16 channels); a module global so tests can turn it off
PROJECTION_DOT = True


def dw_dot(tile, features: int) -> bool:
    """Whether the src backward sums the projection's gradients with `projection_grads_dot`."""
    return bool(PROJECTION_DOT and tile is not None and tile.block_e >= 16 and tile.block_h * tile.block_d >= 16
                and features < 32)


class _ProjGrads:
    """The in-operator projection's gradient buffers of one backward (inactive without proj): da
    [E, F] (written by the src kernel when need_grad_a), and per src launch a [programs, F, H*D]
    / [programs, H*D] buffer of partial dW^T / db, one row per program, summed in a fixed order."""

    def __init__(self, proj, a, need_grad_a: bool, channels: int, tile=None):
        self.proj, self.need_grad_a, self.channels, self.tile = proj, need_grad_a, channels, tile
        self.a_dtype = a.dtype
        self.parts: list = []
        if proj is not None:
            features = proj[0].shape[0]
            self.da = utils.empty((a.shape[0] if need_grad_a else 0, features), a.dtype, a.device)

    def launch_args(self, programs: int, placeholder) -> dict:
        """The src kernel's projection arguments for a launch of `programs` programs."""
        if self.proj is None:
            return dict(da_ptr=placeholder, part_dw_ptr=placeholder, part_db_ptr=placeholder,
                        NEED_GRAD_A=False, BLOCK_F=1, DW_DOT=DW_DOT_OFF.value)
        w_t, b = self.proj
        part_dw = utils.empty((programs, w_t.shape[0], self.channels), torch.float32, w_t.device)
        part_db = utils.empty((programs, self.channels), torch.float32, w_t.device) if b is not None else placeholder
        self.parts.append((part_dw, part_db))
        features = w_t.shape[0]
        dot = dw_dot(self.tile, features)
        block_f = max(16, triton.next_power_of_2(features + 1)) if dot else triton.next_power_of_2(features)
        kind = DW_DOT_OFF
        if dot:  # Triton's interpreter multiplies bfloat16 tl.dot operands wrongly: fp32 products there
            half = self.a_dtype in (torch.float16, torch.bfloat16) and not (
                utils.INTERPRETED and self.a_dtype == torch.bfloat16)
            kind = DW_DOT_HALF if half else DW_DOT_IEEE
        return dict(da_ptr=self.da if self.need_grad_a else placeholder, part_dw_ptr=part_dw, part_db_ptr=part_db,
                    NEED_GRAD_A=self.need_grad_a, BLOCK_F=block_f, DW_DOT=kind.value)

    def stages(self) -> dict:
        """num_stages of the src launch: one with `projection_grads_dot` (a loop holding a tl.dot is
        otherwise software-pipelined, its edge loads turned into cp.async copies through shared
        memory), else Triton's default."""
        return dict(num_stages=1) if self.proj is not None and dw_dot(self.tile, self.proj[0].shape[0]) else {}

    def result(self, plain: BackwardResult):
        """`plain` itself without a projection, else the `ProjBackwardResult` (de dropped)."""
        if self.proj is None:
            return plain
        w_t, b = self.proj
        dw_t = torch.zeros(w_t.shape, dtype=torch.float32, device=w_t.device)
        db = torch.zeros((self.channels if b is not None else 0,), dtype=torch.float32, device=w_t.device)
        for part_dw, part_db in self.parts:  # launch order, then program order: the same sums every run
            dw_t = dw_t + part_dw.sum(0)
            if b is not None:
                db = db + part_db.sum(0)
        if self.need_grad_a and not self.parts:  # no source rows were walked: no edge
            self.da.zero_()
        return ProjBackwardResult(plain.dq, plain.dk, plain.dv, self.da, dw_t.t().contiguous(), db, plain.dbias,
                                  plain.debt_k, plain.debt_e, plain.debt_v, plain.dsink, plain.dgate)
