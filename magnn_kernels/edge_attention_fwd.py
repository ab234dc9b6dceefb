"""Forward of the fused edge attention (SPEC §3-§4): kernels, then their launch wrapper.

Softmax
  Online (running max + running sum), fp32 accumulation. Besides the inputs and
  node_out (an output, so no extra memory) only the per-node, per-head
  log-sum-exp is saved, in two parts: `lse [N, 2, H]` holds the row max m and
  log(sum_j exp(l_j - m)), and a = exp((l - m) - log_sum) stays exact for
  logits of any finite size (m + log_sum would round log_sum away once |m| is
  large, e.g. under a 1e30 bias); the backward recomputes the scores. A node
  with nothing to attend to (no edges and no slot, or every logit -inf: SPEC §3)
  gets lse = (+inf, 0), so every a = exp(-inf) = 0 and its output is exactly 0.

Sink and gate (constexpr HAS_SINK / HAS_GATE; off, the kernels hold no trace of them)
  The learned sink logit c_h opens every row's online softmax as one more term of value 0
  (m = c_h, sum 1, acc 0: `sink_state`), so lse includes it, the edge weights sum to
  1 - exp(c_h - lse) and a row with no edge stores lse = (c_h, 0) and node_out 0; additive
  edge_out is formed with that lse. The gate multiplies node_out by sigmoid(g) as it is stored
  (`gated`, in the row kernel, the merge of split rows and the packed kernel); lse and the
  weights ignore it (SPEC §3 "Sink and gate").

Bipartite graphs and dropout
  q, node_out and lse have N_dst rows (the rows of the dst CSR), k and v N_src
  (indexed through col only). With DROPOUT each real edge's weight in node_out
  (and in additive edge_out) is multiplied by keep(seed, edge id, head) / (1 - p)
  (`dropout_scale`); the running max / sum, hence lse, are those before dropout,
  and the EBT slot is never dropped.

Statistics (constexpr STATS; no work at all when off)
  Reduced by `tile_stats` on every tile of edge_out the kernel stores. Histogram
  counts go into a per-program register histogram over a window of bins
  (tl.histogram) that is flushed once with integer atomics; values outside the
  window are added with integer atomics directly. max_abs and its flat argmax
  come from the per-edge row maxima after the kernels.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from magnn.core.binning import num_bins
from magnn.core.contract import ForwardResult

from . import edge_attention_packed as packing
from . import utils
from .edge_attention_common import (
    EBT_SLOT, EBTS, MODE_ADDITIVE, MODE_GT, MODES,
    dropout_scale, dst_tile, flush_tile_histograms, gated, head_lanes, load_ebt_params, load_lse, query_terms,
    sink_state, store_lse, tile_stats, work_item,
)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "drop_threshold"])  # one build for every seed
def _edge_attention_fwd_kernel(
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
    sink_ptr,  # [H] fp32 sink logit c_h (HAS_SINK)
    gate_ptr,  # [N_dst, H] fp32 gate logit (HAS_GATE)
    rowptr_ptr,  # [N_dst + 1] int64 CSR of the edges sorted by dst
    col_ptr,  # [E] int64 source of each sorted edge
    perm_ptr,  # [E] int64 sorted position -> caller's edge id
    # work items: whole rows, or (PARTIAL) chunks of long rows
    item_node_ptr,  # [I] int64 dst node of each item
    item_start_ptr,  # [I] int64 first sorted edge of a chunk (PARTIAL)
    item_end_ptr,  # [I] int64 one past its last (PARTIAL)
    num_items,
    # outputs
    node_out_ptr,  # [N_dst, H, D]
    edge_out_ptr,  # [E, H, D] caller's edge order (STORE_EDGE)
    lse_ptr,  # [N_dst, 2, H] fp32 row max, log sum (written; read with LSE_GIVEN)
    part_m_ptr,  # [I, H] fp32 a chunk's running max (PARTIAL)
    part_l_ptr,  # [I, H] fp32 a chunk's running sum
    part_acc_ptr,  # [I, H, D] fp32 a chunk's accumulator: sum_j p_ij msg_ij (PARTIAL)
    hist_abs_ptr,  # [num_bins] int64 |edge_out| counts (STATS)
    hist_ratio_ptr,  # [num_bins] int64 ratio counts (STATS)
    row_ratio_ptr,  # [E] fp32 per-edge ratio r_e (STATS)
    row_max_ptr,  # [E] fp32 per-edge max |edge_out| (STATS)
    row_argc_ptr,  # [E] int32 its channel (STATS)
    nan_count_ptr,  # [] int64 (STATS)
    H, D, scale, clamp_val,
    seed_lo, seed_hi, drop_threshold, keep_scale,  # attention dropout (DROPOUT): utils.dropout_args
    MODE: tl.constexpr, EBT: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_HEAD: tl.constexpr,
    HAS_CLAMP: tl.constexpr, DROPOUT: tl.constexpr, HAS_SINK: tl.constexpr, HAS_GATE: tl.constexpr,
    PARTIAL: tl.constexpr, LSE_GIVEN: tl.constexpr, MESSAGE_PASS: tl.constexpr, STORE_EDGE: tl.constexpr,
    STATS: tl.constexpr, MBITS: tl.constexpr, WINDOW: tl.constexpr, RATIO_BASE: tl.constexpr,
    LOW_BIT: tl.constexpr,
    EDGE_FEATURES: tl.constexpr, HAS_EDGE_BIAS: tl.constexpr,  # in-operator projection (F; 0: e given)
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,  # H, D as compile-time values (SHAPE_*), or 0: runtime
    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One work item = a whole dst row (PARTIAL off) or a chunk of a long row (PARTIAL).

    Every mode forms node_out and lse in one online-softmax pass over the row; gt writes
    edge_out = w there too. additive mode's edge_out = a * msg needs the row's final lse:
    when edge_out is stored or reduced (statistics) a message pass (MESSAGE_PASS) walks
    the row again and forms it (for chunks: a second launch with the merged lse,
    LSE_GIVEN); otherwise the forward is that one pass (SPEC §3). node_out is the same
    bits either way. The node's EBT slot is owned by the
    chunk that starts the row. DROPOUT scales each real edge's weight in node_out
    (and additive edge_out) by keep / (1 - p); lse stays the undropped softmax's.
    HAS_SINK opens each row's softmax with the sink's term exp(c_h) (value 0; the chunk that
    starts the row owns it), so lse includes it; HAS_GATE multiplies node_out by sigmoid(gate)
    as it is stored (`sink_state`, `gated`; SPEC §3 "Sink and gate").
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if HEADS > 0:  # a specialised shape: offsets and masks fold, edge rows load as vectors
        H = HEADS
        D = HEAD_DIM
    HD = H * D
    e_idx = tl.arange(0, BLOCK_E)
    h_idx, h_mask, hd_off, hd_mask = head_lanes(H, D, BLOCK_H, BLOCK_D)
    out_ty = e_ptr.dtype.element_ty  # of node_out and edge_out; edge_out_ptr is a placeholder without STORE_EDGE

    ebt_k, ebt_e, ebt_v = load_ebt_params(ebt_k_ptr, ebt_e_ptr, ebt_v_ptr, hd_off, hd_mask, EBT, BLOCK_H, BLOCK_D)
    if HAS_SINK:
        sink_c = tl.load(sink_ptr + h_idx, mask=h_mask, other=0.0)

    hist_abs_loc = tl.zeros([WINDOW], tl.int32)
    hist_ratio_loc = tl.zeros([WINDOW], tl.int32)
    base_abs = tl.zeros([], tl.int32) - 1
    nan_total = tl.zeros([BLOCK_E], tl.int64)  # NaN counts per tile row slot (STATS)

    for item in range(pid, num_items, nprog):
        node, start, end, owns_node = work_item(item, item_node_ptr, item_start_ptr, item_end_ptr, rowptr_ptr,
                                                PARTIAL)
        q_i, beta, shift, msg_bias, slot_raw, slot_logit, slot_msg = query_terms(
            q_ptr, node, hd_off, hd_mask, ebt_k, ebt_e, ebt_v, HD, scale, clamp_val,
            MODE, EBT, HAS_CLAMP, BLOCK_H, BLOCK_D)

        if not LSE_GIVEN:
            m = tl.full([BLOCK_H], float("-inf"), tl.float32)
            l_sum = tl.zeros([BLOCK_H], tl.float32)
            acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            if EBT == EBT_SLOT:
                m = tl.where(owns_node, slot_logit, m)
                l_sum = tl.where(owns_node, 1.0, l_sum)
                acc = tl.where(owns_node, slot_msg, acc)
            if HAS_SINK:
                m, l_sum, acc = sink_state(m, l_sum, acc, sink_c, owns_node)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, EDGE_FEATURES, HAS_EDGE_BIAS,
                    BLOCK_E, BLOCK_H)
                logit = tl.where(emask[:, None], logit, float("-inf"))
                m_new = tl.maximum(m, tl.max(logit, axis=0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp(m - m_safe)
                p = tl.exp(logit - m_safe[None, :])
                l_sum = l_sum * alpha + tl.sum(p, axis=0)
                if MODE == MODE_GT:
                    stored = x.to(out_ty)
                    if STORE_EDGE:
                        tl.store(edge_out_ptr + eid_off, stored, mask=m3)
                    if STATS:
                        hist_abs_loc, hist_ratio_loc, base_abs, nan_total = tile_stats(
                            stored.to(tl.float32), m3, emask, eid, hd_off,
                            hist_abs_loc, hist_ratio_loc, base_abs, nan_total,
                            hist_abs_ptr, hist_ratio_ptr, row_ratio_ptr, row_max_ptr, row_argc_ptr,
                            MBITS, WINDOW, RATIO_BASE, LOW_BIT, BLOCK_E, BLOCK_H, BLOCK_D)
                v_t = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32)
                if MODE == MODE_ADDITIVE:
                    v_t = v_t + x  # the message v + e (+ b_e), summed as the message pass does
                v_t = v_t + msg_bias[None, :, :]
                p_msg = p
                if DROPOUT:
                    p_msg = p * dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
                acc = acc * alpha[:, None] + tl.sum(p_msg[:, :, None] * v_t, axis=0)
                m = m_new
            if PARTIAL:
                tl.store(part_m_ptr + item * H + h_idx, m, mask=h_mask)
                tl.store(part_l_ptr + item * H + h_idx, l_sum, mask=h_mask)
                tl.store(part_acc_ptr + item * HD + hd_off, acc, mask=hd_mask)
            else:
                l_safe = tl.where(l_sum == 0.0, 1.0, l_sum)
                row_max, log_sum = store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum)
                node_val = tl.where(l_sum[:, None] == 0.0, 0.0, acc / l_safe[:, None])
                if HAS_GATE:
                    node_val = gated(node_val, gate_ptr, node, h_idx, h_mask, H)
                tl.store(node_out_ptr + node * HD + hd_off, node_val.to(out_ty), mask=hd_mask)

        if MESSAGE_PASS:
            if LSE_GIVEN:
                row_max, log_sum = load_lse(lse_ptr, node, h_idx, h_mask, H)
            for block_start in range(start, end, BLOCK_E):
                emask, m3, src_off, eid, eid_off, k_t, e_t, x, raw, logit = dst_tile(
                    block_start, end, e_idx, col_ptr, perm_ptr, k_ptr, e_ptr, w_ptr, b_ptr, bias_ptr, q_i, shift,
                    hd_off, hd_mask, h_idx, H, HD, scale, clamp_val,
                    MODE, EBT, HAS_BIAS, BIAS_PER_HEAD, HAS_CLAMP, EDGE_FEATURES, HAS_EDGE_BIAS,
                    BLOCK_E, BLOCK_H)
                attn = tl.exp(tl.where(emask[:, None], (logit - row_max[None, :]) - log_sum[None, :], float("-inf")))
                if DROPOUT:
                    attn = attn * dropout_scale(eid, h_idx, seed_lo, seed_hi, drop_threshold, keep_scale)
                msg = tl.load(v_ptr + src_off, mask=m3, other=0.0).to(tl.float32) + x + msg_bias[None, :, :]
                out = attn[:, :, None] * msg
                stored = out.to(out_ty)
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


@triton.jit
def _edge_attention_fwd_merge_kernel(
    part_m_ptr,  # [C, H] fp32 running max of each chunk
    part_l_ptr,  # [C, H] fp32 running sum of each chunk
    part_acc_ptr,  # [C, H, D] fp32 accumulator of each chunk (WITH_ACC)
    seg_node_ptr,  # [S] int64 node of each split row
    seg_ptr_ptr,  # [S + 1] int64 its chunks: seg_ptr[s]:seg_ptr[s + 1]
    lse_ptr,  # [N_dst, 2, H] fp32 row max, log sum
    node_out_ptr,  # [N_dst, H, D] (WITH_ACC)
    gate_ptr,  # [N_dst, H] fp32 gate logit (HAS_GATE)
    H, D,
    WITH_ACC: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the online-softmax partials of one split row, chunk by chunk in order (the sink's
    term is in the partials of the chunk that starts the row); HAS_GATE gates node_out's store."""
    seg = tl.program_id(0)
    node = tl.load(seg_node_ptr + seg).to(tl.int64)
    lo = tl.load(seg_ptr_ptr + seg)
    hi = tl.load(seg_ptr_ptr + seg + 1)
    HD = H * D
    h_idx, h_mask, hd_off, hd_mask = head_lanes(H, D, BLOCK_H, BLOCK_D)
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
    store_lse(lse_ptr, node, h_idx, h_mask, H, m, l_sum)
    if WITH_ACC:
        out = tl.where(l_sum[:, None] == 0.0, 0.0, acc / l_safe[:, None])
        if HAS_GATE:
            out = gated(out, gate_ptr, node, h_idx, h_mask, H)
        tl.store(node_out_ptr + node * HD + hd_off, out.to(node_out_ptr.dtype.element_ty), mask=hd_mask)


# ---------------------------------------------------------------------------
# launch wrapper
# ---------------------------------------------------------------------------


def _max_abs_and_argmax(row_max: torch.Tensor, row_argc: torch.Tensor, channels: int):
    """(max |A|, its flat index e * C + c) from the per-edge maxima: the first edge holding the
    maximum, as a flat argmax finds it; (-1, -1) when there is no value (or only NaN)."""
    if row_max.shape[0] == 0:
        return (torch.full((), -1.0, dtype=torch.float32, device=row_max.device),
                torch.full((), -1, dtype=torch.int64, device=row_max.device))
    row = torch.argmax(row_max).reshape(1)
    best = row_max.gather(0, row).reshape(())
    channel = row_argc.gather(0, row).reshape(()).long()
    row = row.reshape(())
    found = best >= 0  # rows that are all NaN report -1
    argmax = torch.where(found, row * channels + channel, torch.full_like(row, -1))
    max_abs = torch.where(found, best, torch.full_like(best, -1.0))
    return max_abs, argmax


def edge_attention_forward(q, k, v, e, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v, mode: str, ebt: str,
                           clamp, dropout: float, seed: int, mantissa_bits: int,
                           need_edge_out: bool = True, proj=None, sink=None, gate=None) -> ForwardResult:
    """Launch the forward on contiguous inputs; mantissa_bits < 0: no statistics (empty stats outputs);
    need_edge_out False: edge_out is not stored (an empty [0, H, D] comes back). proj = (W^T [F, H*D],
    b [H*D] or None), both fp32 contiguous: the in-operator projection, e being the raw features a [E, F].
    sink [H], gate [N_dst, H] (fp32 contiguous, or None): the learned sink logit and the gate logit
    (contract.FORWARD_ARGS), each a constexpr variant of every kernel (off: the same code as without).

    Bipartite: q is [N_dst, H, D] (rowptr [N_dst + 1]), k and v [N_src, H, D]; every launch
    walks the N_dst rows, so N_src only bounds the indices in col."""
    num_nodes, heads, head_dim = q.shape  # N_dst
    num_edges = e.shape[0]
    device = q.device
    tile = utils.tiles(heads, head_dim)
    mode_id, ebt_id = MODES[mode], EBTS[ebt]
    drop = utils.dropout_args(dropout, seed)
    stats = mantissa_bits >= 0
    node_out = utils.empty(q.shape, q.dtype, device)
    edge_out = utils.empty((num_edges if need_edge_out else 0, heads, head_dim), e.dtype, device)
    lse = utils.empty((num_nodes, 2, heads), torch.float32, device)  # row max, log sum
    if stats:
        bins = num_bins(mantissa_bits)
        hist_abs = torch.zeros(bins, dtype=torch.int64, device=device)
        hist_ratio = torch.zeros(bins, dtype=torch.int64, device=device)
        row_ratio = utils.empty((num_edges,), torch.float32, device)
        row_max = utils.empty((num_edges,), torch.float32, device)
        row_argc = utils.empty((num_edges,), torch.int32, device)
        window, ratio_base = utils.hist_layout(mantissa_bits)
    else:
        # distinct empty tensors: a custom op's outputs may not alias each other
        hist_abs, hist_ratio = (torch.empty(0, dtype=torch.int64, device=device) for _ in range(2))
        row_ratio, row_max = (torch.empty(0, dtype=torch.float32, device=device) for _ in range(2))
        row_argc = torch.empty(0, dtype=torch.int32, device=device)
        window, ratio_base = 1, 0
    nan_count = torch.zeros((), dtype=torch.int64, device=device)

    def result() -> ForwardResult:
        max_abs, argmax = _max_abs_and_argmax(row_max, row_argc, heads * head_dim)
        return ForwardResult(node_out, edge_out, lse, hist_abs, hist_ratio, row_ratio, row_max, nan_count,
                             max_abs, argmax)

    if num_nodes == 0:
        return result()

    chunk = utils.row_split(num_edges, device, tile)
    packed = None  # short rows several to a tile (molecule batches): edge_attention_packed
    if packing.packable(num_nodes, num_edges, ebt_id, tile):
        packed = packing.packed_plan(rowptr, chunk, tile.block_e)
    plan = packed.rest if packed is not None else utils.row_plan(rowptr, chunk)
    placeholder = lse  # stands in for every absent pointer
    part_m = part_l = part_acc = placeholder
    if plan.num_chunks:
        part_m = utils.empty((plan.num_chunks, heads), torch.float32, device)
        part_l = utils.empty((plan.num_chunks, heads), torch.float32, device)
        part_acc = utils.empty((plan.num_chunks, heads, head_dim), torch.float32, device)
    stats_out = {name: t if stats else placeholder for name, t in (
        ("hist_abs_ptr", hist_abs), ("hist_ratio_ptr", hist_ratio), ("row_ratio_ptr", row_ratio),
        ("row_max_ptr", row_max), ("row_argc_ptr", row_argc))}
    common = dict(
        q_ptr=q, k_ptr=k, v_ptr=v, e_ptr=e, bias_ptr=utils.or_placeholder(bias, placeholder),
        **utils.projection_args(proj, placeholder),
        ebt_k_ptr=utils.or_placeholder(ebt_k, placeholder), ebt_e_ptr=utils.or_placeholder(ebt_e, placeholder),
        ebt_v_ptr=utils.or_placeholder(ebt_v, placeholder),
        sink_ptr=utils.or_placeholder(sink, placeholder), gate_ptr=utils.or_placeholder(gate, placeholder),
        rowptr_ptr=rowptr, col_ptr=col, perm_ptr=perm,
        node_out_ptr=node_out, edge_out_ptr=edge_out if need_edge_out else placeholder, lse_ptr=lse,
        part_m_ptr=part_m, part_l_ptr=part_l, part_acc_ptr=part_acc, nan_count_ptr=nan_count, **stats_out,
        H=heads, D=head_dim, scale=1.0 / math.sqrt(head_dim), clamp_val=0.0 if clamp is None else float(clamp),
        MODE=mode_id, EBT=ebt_id, HAS_BIAS=bias is not None, BIAS_PER_HEAD=bias is not None and bias.dim() == 2,
        HAS_CLAMP=clamp is not None, HAS_SINK=sink is not None, HAS_GATE=gate is not None, **drop,
        STORE_EDGE=bool(need_edge_out), STATS=stats,
        MBITS=max(mantissa_bits, 0), WINDOW=window,
        RATIO_BASE=ratio_base, LOW_BIT=utils.low_bit(e.dtype), **tile.launch_args(),
    )
    # node_out comes from the online-softmax pass in every mode; additive mode needs its message
    # pass only to form edge_out = a * msg, stored or reduced (SPEC §3: skipped otherwise)
    edge_pass = mode_id == MODE_ADDITIVE.value and (need_edge_out or stats)

    def launch(items: dict, partial: bool, lse_given: bool, message_pass: bool) -> None:
        kwargs = dict(**items, **common, PARTIAL=partial, LSE_GIVEN=lse_given, MESSAGE_PASS=message_pass)
        _edge_attention_fwd_kernel[utils.grid(items["num_items"], stats, device, _edge_attention_fwd_kernel,
                                              kwargs)](**kwargs)

    with utils.device_ctx(device):
        if packed is not None:
            packing.launch_packed(packed, common, tile, stats, device)
        if plan.num_whole:
            launch(plan.whole_items(), partial=False, lse_given=False, message_pass=edge_pass)
        if plan.num_chunks:
            launch(plan.chunk_items(), partial=True, lse_given=False, message_pass=False)
            _edge_attention_fwd_merge_kernel[(plan.num_split,)](
                part_m_ptr=part_m, part_l_ptr=part_l, part_acc_ptr=part_acc, seg_node_ptr=plan.split_nodes,
                seg_ptr_ptr=plan.split_ptr, lse_ptr=lse, node_out_ptr=node_out, gate_ptr=common["gate_ptr"],
                H=heads, D=head_dim, WITH_ACC=True, HAS_GATE=gate is not None, BLOCK_H=tile.block_h,
                BLOCK_D=tile.block_d,
            )
            if edge_pass:  # node_out is merged already: this launch forms the chunks' edge_out rows
                launch(plan.chunk_items(), partial=True, lse_given=True, message_pass=True)
    return result()
