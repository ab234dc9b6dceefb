// Fused edge attention on CPU (SPEC §3-§4): forward with on-the-fly
// statistics, and backward, for both modes, clamp, structural bias and both
// EBT variants. Semantics follow magnn/backends/reference.py; the op
// signatures follow magnn/core/contract.py (registration.cpp).
//
// Forward: per-edge work on [E, H, D] rows (gt scores, additive messages and
// the statistics of edge_out) runs in the caller's edge order, where those
// rows stream sequentially (each edge's src and dst in that order are first
// scattered from the CSR into an [E, 2] buffer, freed on return); an online
// softmax per (node, head) walks the dst-sorted CSR and saves only lse
// [N, 2, H]: the log-sum-exp in two parts,
// the row max m and log(sum_j exp(l_j - m)), so that the attention
// a = exp((l - m) - log_sum) stays exact for logits of any finite size (m +
// log_sum would round log_sum away once |m| is large). A (node, head) with
// nothing to attend to (no edges and no slot, or every logit -inf) saves
// (+inf, 0): every attention is then exp(-inf) = 0 and node_out is 0.
// Backward recomputes the scores: a
// dst-side pass produces dq, the bias and EBT parameter gradients and leaves
// the attention a and the logit gradient dl of every edge in one [E, 2, H]
// buffer; a src-side pass over the reverse CSR gathers dk and dv and writes
// de. The gradient g of each (node, head)'s log-sum-exp (grad_lse) enters
// the softmax gradient as delta - g, since d lse / d l_j = a_j. Every output
// row is written by exactly one worker, so nothing is accumulated atomically
// and results are deterministic.
//
// Bipartite graphs: q and node_out have N_dst rows (rowptr), k, v, dk, dv
// N_src rows (rev_rowptr). Attention dropout (SPEC §3) multiplies each real
// edge's attention by keep(seed, edge id, head) / (1 - p) after the softmax;
// the mask is a hash of its arguments (keep_edge), so the backward recomputes
// it; lse is the softmax state before dropout, the EBT slot is never dropped.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "row_stats.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace magnn_cpu {
namespace {

using at::Tensor;

enum class Mode { kGt, kAdditive };
enum class Ebt { kNone, kEdge, kSlot };

Mode parse_mode(c10::string_view mode) {
  if (mode == "gt") return Mode::kGt;
  if (mode == "additive") return Mode::kAdditive;
  TORCH_CHECK(false, "magnn_cpu: unknown mode '", std::string(mode), "'");
}

Ebt parse_ebt(c10::string_view ebt) {
  if (ebt == "none") return Ebt::kNone;
  if (ebt == "edge") return Ebt::kEdge;
  if (ebt == "slot") return Ebt::kSlot;
  TORCH_CHECK(false, "magnn_cpu: unknown ebt '", std::string(ebt), "' (expected \"none\", \"edge\" or \"slot\")");
}

// Splits nodes [0, N) into blocks of about equal work (edges + nodes), the
// unit that workers claim. The split depends on the graph only: per-block
// float partial sums (the EBT parameter gradients) are then added in block
// order, which keeps them identical for any thread count.
std::vector<int64_t> balanced_blocks(const int64_t* rowptr, int64_t num_nodes) {
  std::vector<int64_t> bounds{0};
  if (num_nodes == 0) return bounds;
  const int64_t total = rowptr[num_nodes] + num_nodes;
  const int64_t blocks = std::min<int64_t>(num_nodes, std::clamp<int64_t>(total / 4096, 1, 512));
  for (int64_t b = 1; b < blocks; ++b) {
    const int64_t target = total / blocks * b;
    int64_t lo = bounds.back(), hi = num_nodes;  // first node with rowptr[i] + i >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    if (lo > bounds.back() && lo < num_nodes) bounds.push_back(lo);
  }
  bounds.push_back(num_nodes);
  return bounds;
}

// A new tensor like at::empty whose large buffer asks Linux for transparent huge pages before any
// of it is touched (madvise MADV_HUGEPAGE on the 2 MB-aligned part; with THP in "madvise" mode, a
// common default, nothing is huge otherwise). The [E, H, D] outputs are written, and the backward's
// per-edge buffers read, in an order that jumps over the whole tensor: with 4 kB pages nearly every
// row is a TLB miss, and a fresh buffer costs one page fault per 4 kB. Advice only: where the
// kernel or the allocator does not follow it, the tensor is an ordinary one. MAGNN_NO_HUGEPAGES=1
// turns it off (with THP's defrag setting "madvise", a fault in an advised region may compact
// memory first, which can stall when memory is fragmented).
Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const char* off = std::getenv("MAGNN_NO_HUGEPAGES");
  if (off && off[0] && off[0] != '0') return t;
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (t.nbytes() >= 2 * kHuge && last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

// Runs worker(claim) on every intra-op thread; claim() hands out the next
// unprocessed block (or -1). Blocks go out one at a time from a shared
// counter, so a thread that the OS deschedules on a busy machine delays only
// the block it holds instead of a fixed share of the graph.
template <typename Worker>
void run_blocks(int64_t num_blocks, const Worker& worker) {
  if (num_blocks <= 0) return;
  std::atomic<int64_t> next{0};
  auto claim = [&]() -> int64_t {
    const int64_t block = next.fetch_add(1, std::memory_order_relaxed);
    return block < num_blocks ? block : -1;
  };
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), num_blocks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { worker(claim); });
}

// The endpoints of every edge in the caller's order, side by side ([E, 2]:
// src, dst) so that scattering them from the dst-sorted CSR costs one cache
// line per edge: pairs[perm[p]] = (col[p], the row of p). Every edge is written
// by the one worker that owns its destination.
// Stored as int32 when every node index fits (half the memory: 8 instead of 16 bytes per edge,
// 0.6 GB at ogbn-proteins' size), else as int64.
struct Endpoints {
  int64_t* pairs = nullptr;    // int64 [E, 2], or
  int32_t* narrow = nullptr;   // int32 [E, 2]
  int64_t src(int64_t edge) const { return narrow ? narrow[2 * edge] : pairs[2 * edge]; }
  int64_t dst(int64_t edge) const { return narrow ? narrow[2 * edge + 1] : pairs[2 * edge + 1]; }
  void set(int64_t edge, int64_t src, int64_t dst) const {
    if (narrow) {
      narrow[2 * edge] = static_cast<int32_t>(src);
      narrow[2 * edge + 1] = static_cast<int32_t>(dst);
    } else {
      pairs[2 * edge] = src;
      pairs[2 * edge + 1] = dst;
    }
  }
  const void* row(int64_t edge) const {
    return narrow ? static_cast<const void*>(narrow + 2 * edge) : static_cast<const void*>(pairs + 2 * edge);
  }
};

inline void scatter_endpoints(const int64_t* rowptr, const int64_t* col, const int64_t* perm, int64_t num_nodes,
                              const Endpoints& ends) {
  const std::vector<int64_t> bounds = balanced_blocks(rowptr, num_nodes);
  const int64_t num_edges = rowptr[num_nodes];
  constexpr int64_t kAhead = 16;  // random writes: the line of the edge this far ahead is requested early
  run_blocks(static_cast<int64_t>(bounds.size()) - 1, [&](auto& claim) {
    for (int64_t block = claim(); block >= 0; block = claim()) {
      for (int64_t node = bounds[block]; node < bounds[block + 1]; ++node) {
        for (int64_t p = rowptr[node]; p < rowptr[node + 1]; ++p) {
          if (p + kAhead < num_edges) __builtin_prefetch(ends.row(perm[p + kAhead]), 1, 3);
          ends.set(perm[p], col[p], node);
        }
      }
    }
  });
}

// The counter-based dropout hash of SPEC §3 (magnn/core/dropout.py's edge_hash):
// unsigned 32-bit words, wrapping arithmetic.
inline uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

inline uint32_t dropout_hash(uint32_t seed_low, uint32_t seed_high, int64_t edge_id, int64_t head) {
  const uint64_t id = static_cast<uint64_t>(edge_id);
  const uint32_t e0 = static_cast<uint32_t>(id), e1 = static_cast<uint32_t>(id >> 32);
  uint32_t x = fmix32(seed_low ^ (e0 * 0x9E3779B1u));
  x = fmix32(x ^ seed_high ^ (e1 * 0x85EBCA77u));
  return fmix32(x ^ (static_cast<uint32_t>(head + 1) * 0xC2B2AE3Du));
}

// Everything both passes read. Inputs keep their storage dtype (scalar_t);
// bias and EBT parameters arrive in the accumulation dtype (acc_t).
template <typename scalar_t, typename acc_t>
struct Problem {
  const scalar_t* q;
  const scalar_t* k;
  const scalar_t* v;
  const scalar_t* e;
  const int64_t* rowptr;
  const int64_t* col;
  const int64_t* perm;
  const acc_t* bias = nullptr;
  bool bias_per_head = false;
  const acc_t* k_b = nullptr;
  const acc_t* e_b = nullptr;
  const acc_t* v_b = nullptr;
  // the learned sink logit c_h [H] (null: none) and the gate's factor sigmoid(g_ih) [N_dst, H]
  // (null: none), both in acc_t (SPEC §3, "Sink and gate")
  const acc_t* sink = nullptr;
  const acc_t* gate = nullptr;
  // in-operator edge projection (the *_proj ops): e_ij = W a_ij + b from the raw edge features
  // a [E, F] (input dtype) and W^T [F, C], b [C] (accumulation dtype); e is null then
  bool projected = false;
  const scalar_t* a = nullptr;
  const acc_t* w_t = nullptr;
  const acc_t* b_proj = nullptr;  // null: no projection bias
  int64_t feat_dim = 0;
  int64_t num_nodes, num_src_nodes, num_edges, heads, head_dim, channels;
  Mode mode;
  Ebt ebt;
  bool has_clamp;
  acc_t clamp;
  acc_t scale;
  // attention dropout: keep iff hash >= threshold, kept weights times keep_scale
  bool has_dropout = false;
  uint32_t drop_threshold = 0, seed_low = 0, seed_high = 0;
  acc_t keep_scale = acc_t(1);

  // the dropout multiplier of edge `edge` (caller's id) in head h: 1 without dropout
  acc_t keep(int64_t edge, int64_t h) const {
    if (!has_dropout) return acc_t(1);
    return dropout_hash(seed_low, seed_high, edge, h) >= drop_threshold ? keep_scale : acc_t(0);
  }

  acc_t bias_of(int64_t edge, int64_t h) const {
    if (bias == nullptr) return acc_t(0);
    return bias_per_head ? bias[edge * heads + h] : bias[edge];
  }
  // torch.clamp; NaN stays NaN
  acc_t clip(acc_t logit) const {
    if (!has_clamp) return logit;
    return logit < -clamp ? -clamp : (logit > clamp ? clamp : logit);
  }
  // torch.clamp's gradient mask: the gradient passes where -c <= l <= c
  bool passes(acc_t logit) const { return !has_clamp || (logit >= -clamp && logit <= clamp); }
};

// The edge feature row e_ij in acc_t (C values) into `out`: the stored row of e, or with the
// in-operator projection W a_ij + b formed here (F multiply-adds per channel, f outer so the
// inner loop over channels vectorises). Every pass forms it the same way, so the backward's
// recomputation equals the forward's bit for bit.
template <typename scalar_t, typename acc_t>
inline void load_feat(const Problem<scalar_t, acc_t>& pb, int64_t edge, acc_t* __restrict__ out) {
  const int64_t C = pb.channels;
  if (!pb.projected) {
    const scalar_t* __restrict__ feat = pb.e + edge * C;
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<acc_t>(feat[c]);
    return;
  }
  const int64_t F = pb.feat_dim;
  const scalar_t* __restrict__ row = pb.a + edge * F;
  if (pb.b_proj) {
    for (int64_t c = 0; c < C; ++c) out[c] = pb.b_proj[c];
  } else {
    for (int64_t c = 0; c < C; ++c) out[c] = acc_t(0);
  }
  for (int64_t f = 0; f < F; ++f) {
    const acc_t x = static_cast<acc_t>(row[f]);
    const acc_t* __restrict__ w = pb.w_t + f * C;
    for (int64_t c = 0; c < C; ++c) out[c] += w[c] * x;
  }
}

// Per-node quantities that depend on q_i only: the query in acc_t, and for
// ebt="edge" beta_i[h] = (q_i . k') / sqrt(D) and shift = beta_i * e'.
template <typename scalar_t, typename acc_t>
void load_query(const Problem<scalar_t, acc_t>& pb, int64_t node, acc_t* query, acc_t* beta, acc_t* shift) {
  const int64_t C = pb.channels, D = pb.head_dim;
  const scalar_t* src = pb.q + node * C;
  for (int64_t c = 0; c < C; ++c) query[c] = static_cast<acc_t>(src[c]);
  if (pb.ebt != Ebt::kEdge) return;
  for (int64_t h = 0; h < pb.heads; ++h) {
    acc_t dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += query[h * D + d] * pb.k_b[h * D + d];
    beta[h] = dot * pb.scale;
    for (int64_t d = 0; d < D; ++d) shift[h * D + d] = beta[h] * pb.e_b[h * D + d];
  }
}

// Raw (unclamped) logits of the EBT slot for one node.
template <typename scalar_t, typename acc_t>
void slot_logits(const Problem<scalar_t, acc_t>& pb, const acc_t* query, acc_t* raw) {
  const int64_t D = pb.head_dim;
  for (int64_t h = 0; h < pb.heads; ++h) {
    acc_t dot = 0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t c = h * D + d;
      dot += pb.mode == Mode::kGt ? query[c] * (pb.k_b[c] * pb.e_b[c]) : query[c] * (pb.k_b[c] + pb.e_b[c]);
    }
    raw[h] = dot * pb.scale;
  }
}

// The slot's message: v' (gt) or v' + e' (additive); the same for every node.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> slot_message(const Problem<scalar_t, acc_t>& pb) {
  std::vector<acc_t> message(pb.channels, acc_t(0));
  if (pb.ebt != Ebt::kSlot) return message;
  for (int64_t c = 0; c < pb.channels; ++c)
    message[c] = pb.mode == Mode::kGt ? pb.v_b[c] : pb.v_b[c] + pb.e_b[c];
  return message;
}

// Rows of the [E, H, D] tensors are visited in a random order whenever a pass
// walks edges grouped by node (the caller's order seen through a CSR), so
// each row is a cache and TLB miss. Requesting rows a few edges ahead keeps
// several misses in flight instead of waiting for each in turn. Passes that
// only need per-edge work run in the caller's order instead, where those rows
// stream sequentially.
constexpr int64_t kPrefetchDistance = 8;
constexpr int64_t kEdgeChunk = 4096;  // caller-order passes hand out edges in chunks

inline void prefetch_read(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 3);
}

inline void prefetch_write(const void* row, int64_t bytes);

// the edge's feature row as stored: e_ij [C], or a_ij [F] under the in-operator projection
template <typename scalar_t, typename acc_t>
inline void prefetch_feat(const Problem<scalar_t, acc_t>& pb, int64_t edge) {
  if (pb.projected)
    prefetch_read(pb.a + edge * pb.feat_dim, pb.feat_dim * static_cast<int64_t>(sizeof(scalar_t)));
  else
    prefetch_read(pb.e + edge * pb.channels, pb.channels * static_cast<int64_t>(sizeof(scalar_t)));
}

inline void prefetch_write(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 1, 3);
}

// gt score of edge j -> i: w = ((q_i k_j) e_ij) / sqrt(D) (+ b_e,i) in
// `score`, raw logits sum_d w + s in `logits`. The arithmetic order follows
// the reference, so scores without EBT equal it bit for bit.
template <typename scalar_t, typename acc_t>
inline void gt_score(const Problem<scalar_t, acc_t>& pb, const acc_t* __restrict__ query,
                     const acc_t* __restrict__ shift, int64_t src, int64_t edge, acc_t* __restrict__ score,
                     acc_t* __restrict__ logits) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads;
  const scalar_t* __restrict__ key = pb.k + src * C;
  const acc_t scale = pb.scale;
  load_feat(pb, edge, score);  // e_ij, overwritten in place by the score
  for (int64_t c = 0; c < C; ++c) score[c] = query[c] * static_cast<acc_t>(key[c]) * score[c] * scale;
  if (pb.ebt == Ebt::kEdge)
    for (int64_t c = 0; c < C; ++c) score[c] += shift[c];
  for (int64_t h = 0; h < H; ++h) {
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += score[h * D + d];
    logits[h] = sum + pb.bias_of(edge, h);
  }
}

// additive terms of edge j -> i: ee = e_ij (+ b_e,i) in `shifted_feat`, raw
// logits q_i . (k_j + ee) / sqrt(D) + s in `logits`; `scratch` holds C values.
template <typename scalar_t, typename acc_t>
inline void additive_logits(const Problem<scalar_t, acc_t>& pb, const acc_t* __restrict__ query,
                            const acc_t* __restrict__ shift, int64_t src, int64_t edge,
                            acc_t* __restrict__ shifted_feat, acc_t* __restrict__ scratch,
                            acc_t* __restrict__ logits) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads;
  const scalar_t* __restrict__ key = pb.k + src * C;
  load_feat(pb, edge, shifted_feat);
  if (pb.ebt == Ebt::kEdge)
    for (int64_t c = 0; c < C; ++c) shifted_feat[c] += shift[c];
  // the products first, then per-head sums: the first loop vectorises
  for (int64_t c = 0; c < C; ++c) scratch[c] = query[c] * (static_cast<acc_t>(key[c]) + shifted_feat[c]);
  for (int64_t h = 0; h < H; ++h) {
    acc_t sum = 0;
    for (int64_t d = 0; d < D; ++d) sum += scratch[h * D + d];
    logits[h] = sum * pb.scale + pb.bias_of(edge, h);
  }
}

// The message of edge j -> i: v_j (+ v') for gt, (v_j (+ v')) + ee for additive.
template <typename scalar_t, typename acc_t>
inline void edge_message(const Problem<scalar_t, acc_t>& pb, int64_t src, const acc_t* __restrict__ shifted_feat,
                         acc_t* __restrict__ msg) {
  const int64_t C = pb.channels;
  const scalar_t* __restrict__ value = pb.v + src * C;
  const acc_t* __restrict__ v_b = pb.v_b;
  const bool edge_ebt = pb.ebt == Ebt::kEdge;
  if (pb.mode == Mode::kGt) {
    if (edge_ebt) {
      for (int64_t c = 0; c < C; ++c) msg[c] = static_cast<acc_t>(value[c]) + v_b[c];
    } else {
      for (int64_t c = 0; c < C; ++c) msg[c] = static_cast<acc_t>(value[c]);
    }
  } else {
    if (edge_ebt) {
      for (int64_t c = 0; c < C; ++c) msg[c] = (static_cast<acc_t>(value[c]) + v_b[c]) + shifted_feat[c];
    } else {
      for (int64_t c = 0; c < C; ++c) msg[c] = static_cast<acc_t>(value[c]) + shifted_feat[c];
    }
  }
}

// Everything about one edge seen from its destination (the backward sweeps):
// raw logits[h], message msg[c] and `term`: the score w (gt) or ee (additive).
// `msg` holds 2 C values (the second half is scratch).
template <typename scalar_t, typename acc_t>
inline void edge_terms(const Problem<scalar_t, acc_t>& pb, const acc_t* query, const acc_t* shift, int64_t src,
                       int64_t edge, acc_t* logits, acc_t* msg, acc_t* term) {
  if (pb.mode == Mode::kGt) {
    gt_score(pb, query, shift, src, edge, term, logits);
  } else {
    additive_logits(pb, query, shift, src, edge, term, msg + pb.channels, logits);
  }
  edge_message(pb, src, term, msg);
}

struct StatsOut {
  RowStatsTotal* total;
  int mantissa_bits;
  float* row_ratio;
  float* row_max_abs;
};

// Per-worker statistics of edge_out rows, on the values as stored.
template <typename scalar_t>
struct RowReducer {
  const StatsOut* stats;
  std::unique_ptr<RowStatsPartial> part;
  std::vector<float> stored;

  RowReducer(const StatsOut* stats_, int64_t channels) : stats(stats_), stored(channels) {
    if (stats) part = std::make_unique<RowStatsPartial>(stats->mantissa_bits, channels);
  }
  void add(const scalar_t* row, int64_t edge) {
    if (!part) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      part->add_row(row, edge, stats->row_ratio, stats->row_max_abs);  // already float32: no copy
    } else {
      for (size_t c = 0; c < stored.size(); ++c) stored[c] = static_cast<float>(row[c]);
      part->add_row(stored.data(), edge, stats->row_ratio, stats->row_max_abs);
    }
  }
  void finish() {
    if (part) stats->total->merge(*part);
  }
};

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

// gt, pass 1, caller's order: scores -> edge_out and statistics; raw logits
// -> `logit_buffer` [E, H] for the softmax pass.
template <typename scalar_t, typename acc_t>
void gt_scores_fwd_kernel(const Problem<scalar_t, acc_t>& pb, const Endpoints& ends,
                          scalar_t* edge_out, acc_t* logit_buffer, const StatsOut* stats) {
  const int64_t C = pb.channels, H = pb.heads, E = pb.num_edges;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  run_blocks((E + kEdgeChunk - 1) / kEdgeChunk, [&](auto& claim) {
    std::vector<acc_t> query(C), beta(H), shift(C), score(C), logits(H);
    std::vector<scalar_t> unkept(edge_out ? 0 : C);  // a row for the statistics when edge_out is not kept
    RowReducer<scalar_t> reducer(stats, C);
    for (int64_t chunk = claim(); chunk >= 0; chunk = claim()) {
      const int64_t end = std::min(E, (chunk + 1) * kEdgeChunk);
      for (int64_t edge = chunk * kEdgeChunk; edge < end; ++edge) {
        if (edge + kPrefetchDistance < E) {
          prefetch_read(pb.q + ends.dst(edge + kPrefetchDistance) * C, row_bytes);
          prefetch_read(pb.k + ends.src(edge + kPrefetchDistance) * C, row_bytes);
        }
        load_query(pb, ends.dst(edge), query.data(), beta.data(), shift.data());
        gt_score(pb, query.data(), shift.data(), ends.src(edge), edge, score.data(), logits.data());
        for (int64_t h = 0; h < H; ++h) logit_buffer[edge * H + h] = logits[h];
        if (!edge_out && !stats) continue;
        scalar_t* __restrict__ out_row = edge_out ? edge_out + edge * C : unkept.data();
        const acc_t* __restrict__ values = score.data();
        for (int64_t c = 0; c < C; ++c) out_row[c] = static_cast<scalar_t>(values[c]);
        reducer.add(out_row, edge);
      }
    }
    reducer.finish();
  });
}

// The attention of a (clamped) logit from a node's saved lse (row max, log sum).
template <typename acc_t>
inline acc_t attention_of(acc_t logit, const acc_t* node_lse, int64_t heads, int64_t h) {
  return std::exp((logit - node_lse[h]) - node_lse[heads + h]);
}

// The online softmax's state before any edge when there is a sink: its term exp(c_h) with value 0,
// i.e. row max c_h, sum 1, accumulator 0 (left to the caller). A -inf sink is no term at all.
template <typename scalar_t, typename acc_t>
inline void start_from_sink(const Problem<scalar_t, acc_t>& pb, acc_t* run_max, acc_t* run_sum) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t h = 0; h < pb.heads; ++h) {
    const bool none = pb.sink[h] == neg_inf;
    run_max[h] = none ? neg_inf : pb.sink[h];
    run_sum[h] = none ? acc_t(0) : acc_t(1);
  }
}

// One (clamped) logit with message msg [D] folded into a head's online softmax state, as the
// edge loop below does (without dropout): what the EBT slot goes through after a sink.
template <typename acc_t>
inline void fold_term(acc_t logit, const acc_t* msg, int64_t D, acc_t& run_max, acc_t& run_sum, acc_t* acc) {
  if (logit > run_max) {
    const acc_t correction = std::exp(run_max - logit);
    run_sum *= correction;
    for (int64_t d = 0; d < D; ++d) acc[d] *= correction;
    run_max = logit;
  }
  const acc_t weight = logit == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(logit - run_max);
  run_sum += weight;
  for (int64_t d = 0; d < D; ++d) acc[d] += weight * msg[d];
}

// Pass over the dst-sorted CSR: online softmax per (node, head) -> node_out,
// lse. gt reads the raw logits of pass 1; additive computes them here and
// leaves the clamped ones in `logit_buffer` (caller's order) for pass 3.
template <typename scalar_t, typename acc_t>
void softmax_fwd_kernel(const Problem<scalar_t, acc_t>& pb, scalar_t* node_out, acc_t* lse, acc_t* logit_buffer) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads, E = pb.num_edges;
  const std::vector<int64_t> bounds = balanced_blocks(pb.rowptr, pb.num_nodes);
  const int64_t num_blocks = static_cast<int64_t>(bounds.size()) - 1;
  const std::vector<acc_t> slot_msg = slot_message(pb);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const acc_t pos_inf = std::numeric_limits<acc_t>::infinity();
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t logit_bytes = H * static_cast<int64_t>(sizeof(acc_t));
  const bool gt = pb.mode == Mode::kGt;

  run_blocks(num_blocks, [&](auto& claim) {
    std::vector<acc_t> query(C), shift(C), shifted_feat(C), scratch(C), msg(C), acc(C);
    std::vector<acc_t> beta(H), logits(H), run_max(H), run_sum(H), slot_raw(H);
    for (int64_t block = claim(); block >= 0; block = claim()) {
      for (int64_t node = bounds[block]; node < bounds[block + 1]; ++node) {
        const int64_t p0 = pb.rowptr[node], p1 = pb.rowptr[node + 1];
        load_query(pb, node, query.data(), beta.data(), shift.data());
        std::fill(acc.begin(), acc.end(), acc_t(0));
        if (pb.sink) {
          start_from_sink(pb, run_max.data(), run_sum.data());
          if (pb.ebt == Ebt::kSlot) {
            slot_logits(pb, query.data(), slot_raw.data());
            for (int64_t h = 0; h < H; ++h)
              fold_term(pb.clip(slot_raw[h]), slot_msg.data() + h * D, D, run_max[h], run_sum[h], acc.data() + h * D);
          }
        } else {
          std::fill(run_max.begin(), run_max.end(), neg_inf);
          std::fill(run_sum.begin(), run_sum.end(), acc_t(0));
          if (pb.ebt == Ebt::kSlot) {
            slot_logits(pb, query.data(), slot_raw.data());
            for (int64_t h = 0; h < H; ++h) {
              run_max[h] = pb.clip(slot_raw[h]);
              run_sum[h] = 1;
              for (int64_t d = 0; d < D; ++d) acc[h * D + d] = slot_msg[h * D + d];
            }
          }
        }
        for (int64_t p = p0; p < p1; ++p) {
          if (p + kPrefetchDistance < E) {
            const int64_t ahead = pb.perm[p + kPrefetchDistance];
            const int64_t ahead_src = pb.col[p + kPrefetchDistance];
            prefetch_read(pb.v + ahead_src * C, row_bytes);
            if (gt) {
              prefetch_read(logit_buffer + ahead * H, logit_bytes);
            } else {
              prefetch_feat(pb, ahead);
              prefetch_read(pb.k + ahead_src * C, row_bytes);
              prefetch_write(logit_buffer + ahead * H, logit_bytes);
            }
          }
          const int64_t edge = pb.perm[p], src = pb.col[p];
          if (gt) {
            for (int64_t h = 0; h < H; ++h) logits[h] = pb.clip(logit_buffer[edge * H + h]);
          } else {
            additive_logits(pb, query.data(), shift.data(), src, edge, shifted_feat.data(), scratch.data(),
                            logits.data());
            for (int64_t h = 0; h < H; ++h) logit_buffer[edge * H + h] = logits[h] = pb.clip(logits[h]);
          }
          edge_message(pb, src, shifted_feat.data(), msg.data());
          for (int64_t h = 0; h < H; ++h) {
            const acc_t logit = logits[h];
            acc_t* __restrict__ acc_h = acc.data() + h * D;
            const acc_t* __restrict__ msg_h = msg.data() + h * D;
            if (logit > run_max[h]) {  // new running max: rescale what was summed so far
              const acc_t correction = std::exp(run_max[h] - logit);
              run_sum[h] *= correction;
              for (int64_t d = 0; d < D; ++d) acc_h[d] *= correction;
              run_max[h] = logit;
            }
            // a -inf logit (a masked edge) weighs 0, also while the running max is still
            // -inf, where exp(-inf - -inf) would be NaN; a NaN logit still propagates
            const acc_t weight = logit == neg_inf ? acc_t(0) : std::exp(logit - run_max[h]);
            run_sum[h] += weight;  // the softmax statistics are those before dropout
            const acc_t kept = pb.has_dropout ? weight * pb.keep(edge, h) : weight;
            for (int64_t d = 0; d < D; ++d) acc_h[d] += kept * msg_h[d];
          }
        }

        // nothing to attend to (neither edges nor slot nor sink, or every logit -inf): exactly 0,
        // and lse (+inf, 0) makes every attention 0 in the later passes; NaN logits
        // still propagate (a NaN sum is not 0). A gate scales the row as it is stored.
        scalar_t* out = node_out + node * C;
        acc_t* node_lse = lse + node * 2 * H;
        for (int64_t h = 0; h < H; ++h) {
          if (run_sum[h] != acc_t(0)) {
            const acc_t inv = acc_t(1) / run_sum[h];
            if (pb.gate) {
              const acc_t gain = pb.gate[node * H + h];
              for (int64_t d = 0; d < D; ++d) out[h * D + d] = static_cast<scalar_t>(acc[h * D + d] * inv * gain);
            } else {
              for (int64_t d = 0; d < D; ++d) out[h * D + d] = static_cast<scalar_t>(acc[h * D + d] * inv);
            }
            node_lse[h] = run_max[h];
            node_lse[H + h] = std::log(run_sum[h]);
          } else {
            for (int64_t d = 0; d < D; ++d) out[h * D + d] = static_cast<scalar_t>(0);
            node_lse[h] = pos_inf;
            node_lse[H + h] = acc_t(0);
          }
        }
      }
    }
  });
}

// additive, pass 3, caller's order: edge_out = a_ij (v_j (+ v') + ee) needs the
// final lse; statistics on the rows as they are written.
template <typename scalar_t, typename acc_t>
void additive_messages_fwd_kernel(const Problem<scalar_t, acc_t>& pb, const Endpoints& ends,
                                  const acc_t* lse, const acc_t* logit_buffer, scalar_t* edge_out,
                                  const StatsOut* stats) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads, E = pb.num_edges;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  const bool edge_ebt = pb.ebt == Ebt::kEdge;
  run_blocks((E + kEdgeChunk - 1) / kEdgeChunk, [&](auto& claim) {
    std::vector<acc_t> query(C), beta(H), shift(C), shifted_feat(C), msg(C);
    std::vector<scalar_t> unkept(edge_out ? 0 : C);  // a row for the statistics when edge_out is not kept
    RowReducer<scalar_t> reducer(stats, C);
    for (int64_t chunk = claim(); chunk >= 0; chunk = claim()) {
      const int64_t end = std::min(E, (chunk + 1) * kEdgeChunk);
      for (int64_t edge = chunk * kEdgeChunk; edge < end; ++edge) {
        if (edge + kPrefetchDistance < E) {
          prefetch_read(pb.v + ends.src(edge + kPrefetchDistance) * C, row_bytes);
          prefetch_read(lse + ends.dst(edge + kPrefetchDistance) * 2 * H, 2 * H * static_cast<int64_t>(sizeof(acc_t)));
          if (edge_ebt) prefetch_read(pb.q + ends.dst(edge + kPrefetchDistance) * C, row_bytes);
        }
        const int64_t dst = ends.dst(edge);
        if (edge_ebt) load_query(pb, dst, query.data(), beta.data(), shift.data());
        load_feat(pb, edge, shifted_feat.data());
        if (edge_ebt)
          for (int64_t c = 0; c < C; ++c) shifted_feat[c] += shift[c];
        edge_message(pb, ends.src(edge), shifted_feat.data(), msg.data());
        scalar_t* __restrict__ out_row = edge_out ? edge_out + edge * C : unkept.data();
        for (int64_t h = 0; h < H; ++h) {
          const acc_t attention =
              attention_of(logit_buffer[edge * H + h], lse + dst * 2 * H, H, h) * pb.keep(edge, h);
          const acc_t* __restrict__ msg_h = msg.data() + h * D;
          for (int64_t d = 0; d < D; ++d) out_row[h * D + d] = static_cast<scalar_t>(attention * msg_h[d]);
        }
        reducer.add(out_row, edge);
      }
    }
    reducer.finish();
  });
}

template <typename scalar_t, typename acc_t>
void edge_attention_fwd_kernel(const Problem<scalar_t, acc_t>& pb, const Endpoints& ends,
                               scalar_t* node_out, scalar_t* edge_out, acc_t* lse, acc_t* logit_buffer,
                               const StatsOut* stats) {
  if (pb.mode == Mode::kGt) {
    gt_scores_fwd_kernel(pb, ends, edge_out, logit_buffer, stats);
    softmax_fwd_kernel(pb, node_out, lse, logit_buffer);
  } else {
    softmax_fwd_kernel(pb, node_out, lse, logit_buffer);
    // edge_out = a (v + e) only exists for the caller or the statistics
    if (edge_out || stats) additive_messages_fwd_kernel(pb, ends, lse, logit_buffer, edge_out, stats);
  }
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct Grads {
  // gradients of the outputs, read in place as rows [H, D] at a fixed row stride (elements): C for
  // a contiguous tensor, 0 for one broadcast over its rows (the gradient of out.sum()), see grad_rows
  const scalar_t* grad_node;  // never null (zeros when the output had no gradient)
  const scalar_t* grad_edge;  // may be null: zero
  int64_t grad_node_stride;
  int64_t grad_edge_stride;
  const acc_t* lse;
  const acc_t* grad_lse;  // [N, 2, H] (only [:, 1, :] is read); null: zero
  const int64_t* rev_rowptr;
  const int64_t* rev_col;
  const int64_t* rev_perm;
  // [E, 2, H] in the caller's edge order, filled by the dst pass: per edge the
  // attention a of each head (after dropout: a' = a keep / (1 - p)), then the
  // gradient dl of each raw logit (one cache line for both when the later
  // passes look them up)
  acc_t* edge_grad;
  scalar_t* dq;
  scalar_t* dk;
  scalar_t* dv;
  scalar_t* de;  // null under the in-operator projection (no [E, H, D] gradient exists then)
  // in-operator projection: da [E, F] (null when a needs no gradient), dW [C, F] and db [C]
  // (null without a projection bias), accumulation dtype
  scalar_t* da = nullptr;
  acc_t* dw = nullptr;
  acc_t* db = nullptr;
  acc_t* dbias;  // null without bias
  acc_t* dk_b;   // EBT parameter gradients, null without EBT
  acc_t* de_b;
  acc_t* dv_b;
  acc_t* dsink = nullptr;  // [H], null without a sink
  // with a gate (pb.gate): the saved (gated) node_out [N, H, D] and dgate [N, H], written per row
  const scalar_t* node_out = nullptr;
  acc_t* dgate = nullptr;
};

// One in-edge's share of the dst-side sums, flat over the C channels (dl_c,
// a_c: the head's logit gradient and attention repeated over its D channels).
// gt: w = ((q k) e) / sqrt(D) (+ b_e), so dw = grad_edge + dl; dq gathers
// dw k e (scaled later) and b_e gathers dw.
template <bool kHasGradEdge, typename scalar_t, typename acc_t>
inline void gt_dst_edge(int64_t C, const scalar_t* __restrict__ key, const acc_t* __restrict__ feat,
                        const scalar_t* __restrict__ grad_row, const acc_t* __restrict__ dl_c,
                        acc_t* __restrict__ dq_acc, acc_t* __restrict__ dshift) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t dw = kHasGradEdge ? static_cast<acc_t>(grad_row[c]) + dl_c[c] : dl_c[c];
    dq_acc[c] += dw * static_cast<acc_t>(key[c]) * feat[c];
    dshift[c] += dw;
  }
}

// additive: l = q . (k + ee) / sqrt(D), message = v (+ v') + ee, ee = e (+ b_e);
// dq gathers dl (k + ee) (scaled later). With ebt="edge", b_e gathers
// dL/dee = dl q / sqrt(D) + a (grad_node + grad_edge) and v' gathers the message gradient.
template <bool kHasGradEdge, bool kEdgeEbt, typename scalar_t, typename acc_t>
inline void additive_dst_edge(int64_t C, acc_t scale, const acc_t* __restrict__ query,
                              const acc_t* __restrict__ shift, const acc_t* __restrict__ grad_out,
                              const scalar_t* __restrict__ key, const acc_t* __restrict__ feat,
                              const scalar_t* __restrict__ grad_row, const acc_t* __restrict__ dl_c,
                              const acc_t* __restrict__ a_c, acc_t* __restrict__ dq_acc, acc_t* __restrict__ dshift,
                              acc_t* __restrict__ dv_b_edges) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t ee = kEdgeEbt ? feat[c] + shift[c] : feat[c];
    dq_acc[c] += dl_c[c] * (static_cast<acc_t>(key[c]) + ee);
    if (kEdgeEbt) {
      const acc_t g = kHasGradEdge ? grad_out[c] + static_cast<acc_t>(grad_row[c]) : grad_out[c];
      const acc_t dmsg = a_c[c] * g;
      dshift[c] += dl_c[c] * scale * query[c] + dmsg;
      dv_b_edges[c] += dmsg;
    }
  }
}

// With a gate: node_out = s U (s = sigmoid(gate)) for the softmax's output U, so the row's gradient
// grad_out [C] becomes U's, s grad_out, in place, and dgate = (1 - s) grad_out . node_out (node_out
// is saved gated, so no division by s).
template <typename scalar_t, typename acc_t>
inline void gate_row(const Problem<scalar_t, acc_t>& pb, const Grads<scalar_t, acc_t>& g, int64_t node,
                     acc_t* __restrict__ grad_out) {
  const int64_t D = pb.head_dim, H = pb.heads;
  const scalar_t* __restrict__ out = g.node_out + node * pb.channels;
  for (int64_t h = 0; h < H; ++h) {
    const acc_t factor = pb.gate[node * H + h];
    acc_t dot = 0;
    for (int64_t d = 0; d < D; ++d) {
      dot += grad_out[h * D + d] * static_cast<acc_t>(out[h * D + d]);
      grad_out[h * D + d] *= factor;
    }
    g.dgate[node * H + h] = (acc_t(1) - factor) * dot;
  }
}

// dst-side pass over the CSR: dq, dbias, EBT parameter gradients; leaves a
// and dl of every edge in g.edge_grad.
template <typename scalar_t, typename acc_t>
void edge_attention_bwd_dst_kernel(const Problem<scalar_t, acc_t>& pb, const Grads<scalar_t, acc_t>& g) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads, E = pb.num_edges;
  const std::vector<int64_t> bounds = balanced_blocks(pb.rowptr, pb.num_nodes);
  const int64_t num_blocks = static_cast<int64_t>(bounds.size()) - 1;
  const std::vector<acc_t> slot_msg = slot_message(pb);
  const bool with_ebt = pb.ebt != Ebt::kNone;
  const bool gt = pb.mode == Mode::kGt;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  // per block: dk', de', dv' partial sums, and the sink's dsink [H], added in block order afterwards
  std::vector<acc_t> ebt_partial(with_ebt ? num_blocks * 3 * C : 0, acc_t(0));
  std::vector<acc_t> sink_partial(pb.sink ? num_blocks * H : 0, acc_t(0));

  run_blocks(num_blocks, [&](auto& claim) {
    std::vector<acc_t> query(C), shift(C), term(C), msg(2 * C), grad_out(C), dq_acc(C), dshift(C), dv_b_edges(C),
        dl_c(C), a_c(C), feat_c(C);
    std::vector<acc_t> beta(H), logits(H), delta(H), attention_sum(H), slot_raw(H), slot_attention(H), slot_dA(H);
    std::vector<uint8_t> inside;  // clamp gradient mask of the node's (edge, head) logits
    std::vector<acc_t> kept;      // dropout multipliers of the node's (edge, head) weights

    for (int64_t block = claim(); block >= 0; block = claim()) {
      acc_t* dk_b = with_ebt ? ebt_partial.data() + block * 3 * C : nullptr;
      acc_t* de_b = with_ebt ? dk_b + C : nullptr;
      acc_t* dv_b = with_ebt ? dk_b + 2 * C : nullptr;
      for (int64_t node = bounds[block]; node < bounds[block + 1]; ++node) {
        const int64_t p0 = pb.rowptr[node], p1 = pb.rowptr[node + 1];
        scalar_t* dq_row = g.dq + node * C;
        if (p1 == p0 && pb.ebt != Ebt::kSlot && !pb.sink) {  // no softmax at all: output is constant 0
          for (int64_t c = 0; c < C; ++c) dq_row[c] = static_cast<scalar_t>(0);
          if (g.dgate)
            for (int64_t h = 0; h < H; ++h) g.dgate[node * H + h] = acc_t(0);
          continue;
        }
        load_query(pb, node, query.data(), beta.data(), shift.data());
        for (int64_t c = 0; c < C; ++c) grad_out[c] = static_cast<acc_t>(g.grad_node[node * g.grad_node_stride + c]);
        if (pb.gate) gate_row(pb, g, node, grad_out.data());
        const acc_t* node_lse = g.lse + node * 2 * H;
        std::fill(delta.begin(), delta.end(), acc_t(0));
        std::fill(attention_sum.begin(), attention_sum.end(), acc_t(0));
        if (pb.ebt == Ebt::kSlot) {
          slot_logits(pb, query.data(), slot_raw.data());
          for (int64_t h = 0; h < H; ++h) {
            slot_attention[h] = attention_of(pb.clip(slot_raw[h]), node_lse, H, h);
            acc_t dA = 0;
            for (int64_t d = 0; d < D; ++d) dA += grad_out[h * D + d] * slot_msg[h * D + d];
            slot_dA[h] = dA;
            delta[h] += slot_attention[h] * dA;
          }
        }
        inside.resize((p1 - p0) * H);
        if (pb.has_dropout) kept.resize((p1 - p0) * H);

        // sweep 1: attention a, dL/da' and delta = sum_j a'_j dL/da'_j per head (a' = a after dropout)
        for (int64_t p = p0; p < p1; ++p) {
          if (p + kPrefetchDistance < E) {
            const int64_t ahead = pb.perm[p + kPrefetchDistance];
            const int64_t ahead_src = pb.col[p + kPrefetchDistance];
            prefetch_feat(pb, ahead);
            prefetch_read(pb.k + ahead_src * C, row_bytes);
            prefetch_read(pb.v + ahead_src * C, row_bytes);
            if (g.grad_edge_stride) prefetch_read(g.grad_edge + ahead * g.grad_edge_stride, row_bytes);
            prefetch_write(g.edge_grad + ahead * 2 * H, 2 * H * static_cast<int64_t>(sizeof(acc_t)));
          }
          const int64_t edge = pb.perm[p];
          edge_terms(pb, query.data(), shift.data(), pb.col[p], edge, logits.data(), msg.data(), term.data());
          // additive: edge_out = a * message, so its gradient joins the message's
          if (!gt && g.grad_edge) {
            const scalar_t* grad_row = g.grad_edge + edge * g.grad_edge_stride;
            for (int64_t c = 0; c < C; ++c) msg[C + c] = (grad_out[c] + static_cast<acc_t>(grad_row[c])) * msg[c];
          } else {
            for (int64_t c = 0; c < C; ++c) msg[C + c] = grad_out[c] * msg[c];
          }
          acc_t* entry = g.edge_grad + edge * 2 * H;
          for (int64_t h = 0; h < H; ++h) {
            const acc_t a = attention_of(pb.clip(logits[h]), node_lse, H, h);
            acc_t dA = 0;
            for (int64_t d = 0; d < D; ++d) dA += msg[C + h * D + d];
            entry[h] = a;
            entry[H + h] = dA;
            inside[(p - p0) * H + h] = pb.passes(logits[h]);
            if (pb.has_dropout) {
              const acc_t m = pb.keep(edge, h);
              kept[(p - p0) * H + h] = m;
              delta[h] += a * m * dA;
            } else {
              delta[h] += a * dA;
            }
          }
        }
        // the log-sum-exp's own gradient: d lse / d l_j = a_j (the slot's included)
        if (g.grad_lse)
          for (int64_t h = 0; h < H; ++h) delta[h] -= g.grad_lse[(node * 2 + 1) * H + h];
        // the sink's logit c_h is one more softmax term with value 0: dL/dc_h = w (grad_lse - delta)
        // with w = exp(c_h - lse) its weight, i.e. -w times the row term as it stands here
        if (pb.sink) {
          acc_t* part = sink_partial.data() + block * H;
          for (int64_t h = 0; h < H; ++h) part[h] -= attention_of(pb.sink[h], node_lse, H, h) * delta[h];
        }

        // sweep 2: logit gradients, then what they feed at the dst side
        std::fill(dq_acc.begin(), dq_acc.end(), acc_t(0));
        std::fill(dshift.begin(), dshift.end(), acc_t(0));
        std::fill(dv_b_edges.begin(), dv_b_edges.end(), acc_t(0));
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t edge = pb.perm[p];
          acc_t* entry = g.edge_grad + edge * 2 * H;
          acc_t bias_grad = 0;
          for (int64_t h = 0; h < H; ++h) {
            // with dropout (multiplier m): dL/dl = a (m dL/da' - delta), and from here on the
            // edge's weight is a' = a m (what dv, de and the EBT's v' see); m = 1 without it
            const acc_t m = pb.has_dropout ? kept[(p - p0) * H + h] : acc_t(1);
            const acc_t dl = inside[(p - p0) * H + h] ? entry[h] * (m * entry[H + h] - delta[h]) : acc_t(0);
            const acc_t a = entry[h] * m;
            entry[h] = a;
            entry[H + h] = dl;
            attention_sum[h] += a;
            if (g.dbias) {
              if (pb.bias_per_head) g.dbias[edge * H + h] = dl; else bias_grad += dl;
            }
            for (int64_t d = 0; d < D; ++d) {
              dl_c[h * D + d] = dl;
              a_c[h * D + d] = a;
            }
          }
          if (g.dbias && !pb.bias_per_head) g.dbias[edge] = bias_grad;
          const scalar_t* key = pb.k + pb.col[p] * C;
          load_feat(pb, edge, feat_c.data());
          const acc_t* feat = feat_c.data();
          const scalar_t* grad_row = g.grad_edge ? g.grad_edge + edge * g.grad_edge_stride : nullptr;
          if (gt) {
            if (grad_row)
              gt_dst_edge<true>(C, key, feat, grad_row, dl_c.data(), dq_acc.data(), dshift.data());
            else
              gt_dst_edge<false>(C, key, feat, grad_row, dl_c.data(), dq_acc.data(), dshift.data());
          } else {
            auto run = [&](auto has_grad_edge, auto edge_ebt) {
              additive_dst_edge<decltype(has_grad_edge)::value, decltype(edge_ebt)::value>(
                  C, pb.scale, query.data(), shift.data(), grad_out.data(), key, feat, grad_row, dl_c.data(),
                  a_c.data(), dq_acc.data(), dshift.data(), dv_b_edges.data());
            };
            if (pb.ebt != Ebt::kEdge) {
              run(std::false_type{}, std::false_type{});  // grad_edge reaches only de (own pass)
            } else if (grad_row) {
              run(std::true_type{}, std::true_type{});
            } else {
              run(std::false_type{}, std::true_type{});
            }
          }
        }

        for (int64_t c = 0; c < C; ++c) dq_acc[c] *= pb.scale;
        if (pb.ebt == Ebt::kEdge && p1 > p0) {
          // b_e = beta e', beta = (q . k') / sqrt(D); v' rides on every message
          for (int64_t h = 0; h < H; ++h) {
            acc_t dbeta = 0;
            for (int64_t d = 0; d < D; ++d) dbeta += dshift[h * D + d] * pb.e_b[h * D + d];
            for (int64_t d = 0; d < D; ++d) {
              const int64_t c = h * D + d;
              de_b[c] += beta[h] * dshift[c];
              dq_acc[c] += dbeta * pb.scale * pb.k_b[c];
              dk_b[c] += dbeta * pb.scale * query[c];
              dv_b[c] += gt ? attention_sum[h] * grad_out[c] : dv_b_edges[c];
            }
          }
        }
        if (pb.ebt == Ebt::kSlot) {
          for (int64_t h = 0; h < H; ++h) {
            const acc_t a = slot_attention[h];
            const acc_t dl = pb.passes(slot_raw[h]) ? a * (slot_dA[h] - delta[h]) : acc_t(0);
            for (int64_t d = 0; d < D; ++d) {
              const int64_t c = h * D + d;
              const acc_t kb = pb.k_b[c], eb = pb.e_b[c];
              if (gt) {
                dq_acc[c] += dl * pb.scale * kb * eb;
                dk_b[c] += dl * pb.scale * query[c] * eb;
                de_b[c] += dl * pb.scale * query[c] * kb;
              } else {
                dq_acc[c] += dl * pb.scale * (kb + eb);
                dk_b[c] += dl * pb.scale * query[c];
                de_b[c] += dl * pb.scale * query[c] + a * grad_out[c];
              }
              dv_b[c] += a * grad_out[c];
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) dq_row[c] = static_cast<scalar_t>(dq_acc[c]);
      }
    }
  });

  if (pb.sink) {
    for (int64_t h = 0; h < H; ++h) g.dsink[h] = acc_t(0);
    for (int64_t block = 0; block < num_blocks; ++block)
      for (int64_t h = 0; h < H; ++h) g.dsink[h] += sink_partial[block * H + h];
  }
  if (with_ebt) {
    for (int64_t c = 0; c < C; ++c) g.dk_b[c] = g.de_b[c] = g.dv_b[c] = acc_t(0);
    for (int64_t block = 0; block < num_blocks; ++block) {
      const acc_t* part = ebt_partial.data() + block * 3 * C;
      for (int64_t c = 0; c < C; ++c) {
        g.dk_b[c] += part[c];
        g.de_b[c] += part[C + c];
        g.dv_b[c] += part[2 * C + c];
      }
    }
  }
}

// One out-edge j -> i: its share of dk_j, dv_j (flat over channels; dk scaled
// later) and its de row: gt de = (grad_edge + dl) q_i k_j / sqrt(D); additive
// de = dL/dee = dl q_i / sqrt(D) + a (grad_node_i + grad_edge).
template <Mode kMode, bool kHasGradEdge, typename scalar_t, typename acc_t, typename grad_t>
inline void src_edge(int64_t C, acc_t scale, const acc_t* __restrict__ key, const scalar_t* __restrict__ query,
                     const grad_t* __restrict__ grad_out, const acc_t* __restrict__ feat,
                     const scalar_t* __restrict__ grad_row, const acc_t* __restrict__ dl_c,
                     const acc_t* __restrict__ a_c, acc_t* __restrict__ dk_acc, acc_t* __restrict__ dv_acc,
                     acc_t* __restrict__ de_row) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t ge = kHasGradEdge ? static_cast<acc_t>(grad_row[c]) : acc_t(0);
    const acc_t go = static_cast<acc_t>(grad_out[c]);
    const acc_t qc = static_cast<acc_t>(query[c]);
    if (kMode == Mode::kGt) {
      const acc_t dw = ge + dl_c[c];
      dk_acc[c] += dw * qc * feat[c];
      dv_acc[c] += a_c[c] * go;
      de_row[c] = dw * qc * key[c] * scale;
    } else {
      dk_acc[c] += dl_c[c] * qc;
      dv_acc[c] += a_c[c] * (go + ge);
      de_row[c] = dl_c[c] * scale * qc + a_c[c] * (go + ge);
    }
  }
}

// src-side pass over the reverse CSR: dk_j and dv_j gather over j's out-edges,
// which also hold everything de needs.
template <typename scalar_t, typename acc_t>
void edge_attention_bwd_src_kernel(const Problem<scalar_t, acc_t>& pb, const Grads<scalar_t, acc_t>& g) {
  const int64_t C = pb.channels, D = pb.head_dim, H = pb.heads, E = pb.num_edges;
  const std::vector<int64_t> bounds = balanced_blocks(g.rev_rowptr, pb.num_src_nodes);
  const int64_t num_blocks = static_cast<int64_t>(bounds.size()) - 1;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  const bool gt = pb.mode == Mode::kGt;

  // in-operator projection: per block, partial sums of dW^T [F, C] then db [C], added in block order
  // afterwards, so dW and db are identical for any thread count (blocks (F + 1) C values each, at
  // most 512 blocks: about 2 MB for C = 128, F = 8)
  const int64_t F = pb.feat_dim;
  std::vector<acc_t> proj_partial(pb.projected ? num_blocks * (F + 1) * C : 0, acc_t(0));
  run_blocks(num_blocks, [&](auto& claim) {
    std::vector<acc_t> dk_acc(C), dv_acc(C), dl_c(C), a_c(C), key(C), feat(C), de_row(C);
    std::vector<acc_t> raw(pb.projected ? F : 0);
    std::vector<acc_t> gated(pb.gate ? C : 0);  // with a gate: sigmoid(gate_dst) grad_node_dst
    for (int64_t block = claim(); block >= 0; block = claim()) {
      acc_t* dw_t = pb.projected ? proj_partial.data() + block * (F + 1) * C : nullptr;  // [F, C] then db [C]
      acc_t* db = pb.projected ? dw_t + F * C : nullptr;
      for (int64_t node = bounds[block]; node < bounds[block + 1]; ++node) {
        for (int64_t c = 0; c < C; ++c) key[c] = static_cast<acc_t>(pb.k[node * C + c]);
        std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
        std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
        for (int64_t r = g.rev_rowptr[node]; r < g.rev_rowptr[node + 1]; ++r) {
          if (r + kPrefetchDistance < E) {
            const int64_t ahead = g.rev_perm[r + kPrefetchDistance];
            const int64_t ahead_dst = g.rev_col[r + kPrefetchDistance];
            if (gt || pb.projected) prefetch_feat(pb, ahead);
            if (g.grad_edge_stride) prefetch_read(g.grad_edge + ahead * g.grad_edge_stride, row_bytes);
            prefetch_read(pb.q + ahead_dst * C, row_bytes);
            if (g.grad_node_stride) prefetch_read(g.grad_node + ahead_dst * g.grad_node_stride, row_bytes);
            prefetch_read(g.edge_grad + ahead * 2 * H, 2 * H * static_cast<int64_t>(sizeof(acc_t)));
            if (g.de) prefetch_write(g.de + ahead * C, row_bytes);
          }
          const int64_t dst = g.rev_col[r], edge = g.rev_perm[r];
          const acc_t* entry = g.edge_grad + edge * 2 * H;
          for (int64_t h = 0; h < H; ++h) {
            const acc_t a = entry[h], dl = entry[H + h];
            for (int64_t d = 0; d < D; ++d) {
              a_c[h * D + d] = a;
              dl_c[h * D + d] = dl;
            }
          }
          const scalar_t* query = pb.q + dst * C;
          const scalar_t* grad_out = g.grad_node + dst * g.grad_node_stride;
          const scalar_t* grad_row = g.grad_edge ? g.grad_edge + edge * g.grad_edge_stride : nullptr;
          if (gt) load_feat(pb, edge, feat.data());  // additive's de does not read e
          auto gather = [&](const auto* go) {
            if (gt) {
              if (grad_row)
                src_edge<Mode::kGt, true>(C, pb.scale, key.data(), query, go, feat.data(), grad_row, dl_c.data(),
                                          a_c.data(), dk_acc.data(), dv_acc.data(), de_row.data());
              else
                src_edge<Mode::kGt, false>(C, pb.scale, key.data(), query, go, feat.data(), grad_row, dl_c.data(),
                                           a_c.data(), dk_acc.data(), dv_acc.data(), de_row.data());
            } else {
              if (grad_row)
                src_edge<Mode::kAdditive, true>(C, pb.scale, key.data(), query, go, feat.data(), grad_row,
                                                dl_c.data(), a_c.data(), dk_acc.data(), dv_acc.data(), de_row.data());
              else
                src_edge<Mode::kAdditive, false>(C, pb.scale, key.data(), query, go, feat.data(), grad_row,
                                                 dl_c.data(), a_c.data(), dk_acc.data(), dv_acc.data(), de_row.data());
            }
          };
          if (pb.gate) {  // the message terms see the gradient of the ungated output
            for (int64_t h = 0; h < H; ++h) {
              const acc_t factor = pb.gate[dst * H + h];
              for (int64_t d = 0; d < D; ++d) gated[h * D + d] = static_cast<acc_t>(grad_out[h * D + d]) * factor;
            }
            gather(gated.data());
          } else {
            gather(grad_out);
          }
          if (!pb.projected) {
            scalar_t* out = g.de + edge * C;
            for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(de_row[c]);
            continue;
          }
          // e = W a + b: dW += de a^T, db += de, da = W^T de; no [E, H, D] row is stored
          const scalar_t* a_row = pb.a + edge * F;
          for (int64_t f = 0; f < F; ++f) raw[f] = static_cast<acc_t>(a_row[f]);
          for (int64_t f = 0; f < F; ++f) {
            acc_t* __restrict__ dw = dw_t + f * C;
            const acc_t x = raw[f];
            for (int64_t c = 0; c < C; ++c) dw[c] += de_row[c] * x;
          }
          if (pb.b_proj)
            for (int64_t c = 0; c < C; ++c) db[c] += de_row[c];
          if (g.da) {
            scalar_t* da_row = g.da + edge * F;
            for (int64_t f = 0; f < F; ++f) {
              const acc_t* __restrict__ w = pb.w_t + f * C;
              acc_t sum = 0;
              for (int64_t c = 0; c < C; ++c) sum += w[c] * de_row[c];
              da_row[f] = static_cast<scalar_t>(sum);
            }
          }
        }
        scalar_t* dk_row = g.dk + node * C;
        scalar_t* dv_row = g.dv + node * C;
        for (int64_t c = 0; c < C; ++c) {
          dk_row[c] = static_cast<scalar_t>(dk_acc[c] * pb.scale);
          dv_row[c] = static_cast<scalar_t>(dv_acc[c]);
        }
      }
    }
  });
  if (pb.projected) {
    for (int64_t i = 0; i < C * F; ++i) g.dw[i] = acc_t(0);
    if (g.db)
      for (int64_t c = 0; c < C; ++c) g.db[c] = acc_t(0);
    for (int64_t block = 0; block < num_blocks; ++block) {
      const acc_t* part = proj_partial.data() + block * (F + 1) * C;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t f = 0; f < F; ++f) g.dw[c * F + f] += part[f * C + c];
      if (g.db)
        for (int64_t c = 0; c < C; ++c) g.db[c] += part[F * C + c];
    }
  }
}

// ---------------------------------------------------------------------------
// launch wrappers
// ---------------------------------------------------------------------------
void check_index(const Tensor& t, const char* name, int64_t length) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(),
              "magnn_cpu: ", name, " must be a contiguous int64 CPU vector");
  TORCH_CHECK(t.size(0) == length, "magnn_cpu: ", name, " has ", t.size(0), " entries, expected ", length);
}

struct Setup;
void prepare_sink_and_gate(Setup& s, const std::optional<Tensor>& sink, const std::optional<Tensor>& gate,
                           at::ScalarType acc_type);

// The common checks; fills the fields of Problem that don't depend on the dtype.
struct Setup {
  Tensor q, k, v, e, bias, k_b, e_b, v_b;
  // the sink logit [H] and the gate's factor sigmoid(gate) [N_dst, H] in the accumulation dtype
  // (undefined when absent)
  Tensor sink, gate_factor;
  // in-operator projection (the *_proj ops): e is then the raw features a [E, F]; w_t = W^T [F, C]
  // and b_proj [C] (undefined without a bias) in the accumulation dtype
  bool projected = false;
  Tensor w_t, b_proj;
  int64_t feat_dim = 0;
  int64_t num_nodes, num_src_nodes, num_edges, heads, head_dim;
  Mode mode;
  Ebt ebt;
  std::optional<double> clamp;
  double dropout = 0.0;
  int64_t seed = 0;
};

Setup prepare(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e, const Tensor& rowptr,
              const Tensor& col, const Tensor& perm, const std::optional<Tensor>& bias,
              const std::optional<Tensor>& ebt_k, const std::optional<Tensor>& ebt_e,
              const std::optional<Tensor>& ebt_v, const std::optional<Tensor>& sink,
              const std::optional<Tensor>& gate, c10::string_view mode, c10::string_view ebt,
              std::optional<double> clamp, double dropout, int64_t seed,
              const Tensor* proj_w = nullptr, const std::optional<Tensor>* proj_b = nullptr) {
  Setup s;
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.size(1) == q.size(1) && k.size(2) == q.size(2) &&
                  v.sizes() == k.sizes(),
              "magnn_cpu: q must be [N_dst, H, D] and k, v [N_src, H, D] with the same H and D");
  if (proj_w == nullptr) {
    TORCH_CHECK(e.dim() == 3 && e.size(1) == q.size(1) && e.size(2) == q.size(2), "magnn_cpu: e must be [E, H, D]");
  } else {
    const int64_t C = q.size(1) * q.size(2);
    TORCH_CHECK(e.dim() == 2, "magnn_cpu: the raw edge features a must be [E, F]");
    TORCH_CHECK(proj_w->dim() == 2 && proj_w->size(0) == C && proj_w->size(1) == e.size(1),
                "magnn_cpu: the projection weight must be [H*D, F] = [", C, ", ", e.size(1), "]");
    TORCH_CHECK(proj_w->is_floating_point() && proj_w->device().is_cpu(),
                "magnn_cpu: the projection weight must be a floating-point CPU tensor");
    s.projected = true;
    s.feat_dim = e.size(1);
    const auto acc = at::toOpMathType(q.scalar_type());
    s.w_t = proj_w->to(acc).t().contiguous();
    if (proj_b != nullptr && proj_b->has_value()) {
      TORCH_CHECK((*proj_b)->dim() == 1 && (*proj_b)->size(0) == C && (*proj_b)->device().is_cpu() &&
                      (*proj_b)->is_floating_point(),
                  "magnn_cpu: the projection bias must be a floating-point CPU vector [H*D]");
      s.b_proj = (*proj_b)->to(acc).contiguous();
    }
  }
  for (const Tensor* t : {&q, &k, &v, &e}) {
    TORCH_CHECK(t->device().is_cpu(), "magnn_cpu: tensors must live on the CPU");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "magnn_cpu: q, k, v, e must share one dtype");
  }
  s.num_nodes = q.size(0);
  s.num_src_nodes = k.size(0);
  s.heads = q.size(1);
  s.head_dim = q.size(2);
  s.num_edges = e.size(0);
  check_index(rowptr, "rowptr", s.num_nodes + 1);
  check_index(col, "col", s.num_edges);
  check_index(perm, "perm", s.num_edges);
  TORCH_CHECK(rowptr.data_ptr<int64_t>()[s.num_nodes] == s.num_edges, "magnn_cpu: rowptr does not end at E");
  s.q = q.contiguous();
  s.k = k.contiguous();
  s.v = v.contiguous();
  s.e = e.contiguous();
  const auto acc_type = at::toOpMathType(q.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->size(0) == s.num_edges && (bias->dim() == 1 || (bias->dim() == 2 && bias->size(1) == s.heads)),
                "magnn_cpu: bias must be [E] or [E, H]");
    s.bias = bias->to(acc_type).contiguous();
  }
  s.mode = parse_mode(mode);
  s.ebt = parse_ebt(ebt);
  if (s.ebt != Ebt::kNone) {
    TORCH_CHECK(ebt_k.has_value() && ebt_e.has_value() && ebt_v.has_value(),
                "magnn_cpu: ebt \"", std::string(ebt), "\" needs ebt_k, ebt_e, ebt_v");
    for (const auto* p : {&ebt_k, &ebt_e, &ebt_v})
      TORCH_CHECK((*p)->dim() == 2 && (*p)->size(0) == s.heads && (*p)->size(1) == s.head_dim,
                  "magnn_cpu: EBT parameters must be [H, D]");
    s.k_b = ebt_k->to(acc_type).contiguous();
    s.e_b = ebt_e->to(acc_type).contiguous();
    s.v_b = ebt_v->to(acc_type).contiguous();
  }
  prepare_sink_and_gate(s, sink, gate, acc_type);
  s.clamp = clamp;
  TORCH_CHECK(!clamp.has_value() || *clamp > 0, "magnn_cpu: clamp must be positive");
  TORCH_CHECK(dropout >= 0.0 && dropout < 1.0, "magnn_cpu: dropout must be in [0, 1), got ", dropout);
  s.dropout = dropout;
  s.seed = seed;
  return s;
}

// The sink [H] and the gate [N_dst, H] (SPEC §3, "Sink and gate"), checked and kept in the
// accumulation dtype; the gate as its factor sigmoid(gate), which the forward's store and the
// backward's gradients use. A +inf sink would take every row's whole softmax and leave lse
// without a finite value: refused (a clamp bounds it).
void prepare_sink_and_gate(Setup& s, const std::optional<Tensor>& sink, const std::optional<Tensor>& gate,
                           at::ScalarType acc_type) {
  if (sink.has_value()) {
    TORCH_CHECK(sink->dim() == 1 && sink->size(0) == s.heads && sink->device().is_cpu() && sink->is_floating_point(),
                "magnn_cpu: sink must be a floating-point CPU vector [H] = [", s.heads, "]");
    s.sink = sink->to(acc_type).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sink_check", [&] {
      const scalar_t* c = s.sink.data_ptr<scalar_t>();
      for (int64_t h = 0; h < s.heads; ++h)
        TORCH_CHECK(!(c[h] == std::numeric_limits<scalar_t>::infinity()),
                    "magnn_cpu: the sink logit of head ", h, " is +inf (it would take all attention); pass a "
                    "finite sink or a clamp, which clips it");
    });
  }
  if (gate.has_value()) {
    TORCH_CHECK(gate->dim() == 2 && gate->size(0) == s.num_nodes && gate->size(1) == s.heads &&
                    gate->device().is_cpu() && gate->is_floating_point(),
                "magnn_cpu: gate must be a floating-point CPU tensor [N_dst, H] = [", s.num_nodes, ", ", s.heads, "]");
    s.gate_factor = gate->to(acc_type).sigmoid().contiguous();
  }
}

template <typename scalar_t, typename acc_t>
Problem<scalar_t, acc_t> make_problem(const Setup& s, const Tensor& rowptr, const Tensor& col, const Tensor& perm) {
  Problem<scalar_t, acc_t> pb;
  pb.q = s.q.data_ptr<scalar_t>();
  pb.k = s.k.data_ptr<scalar_t>();
  pb.v = s.v.data_ptr<scalar_t>();
  pb.e = s.e.data_ptr<scalar_t>();
  pb.rowptr = rowptr.data_ptr<int64_t>();
  pb.col = col.data_ptr<int64_t>();
  pb.perm = perm.data_ptr<int64_t>();
  if (s.bias.defined()) {
    pb.bias = s.bias.data_ptr<acc_t>();
    pb.bias_per_head = s.bias.dim() == 2;
  }
  if (s.projected) {
    pb.projected = true;
    pb.e = nullptr;
    pb.a = s.e.data_ptr<scalar_t>();
    pb.w_t = s.w_t.data_ptr<acc_t>();
    pb.b_proj = s.b_proj.defined() ? s.b_proj.data_ptr<acc_t>() : nullptr;
    pb.feat_dim = s.feat_dim;
  }
  if (s.ebt != Ebt::kNone) {
    pb.k_b = s.k_b.data_ptr<acc_t>();
    pb.e_b = s.e_b.data_ptr<acc_t>();
    pb.v_b = s.v_b.data_ptr<acc_t>();
  }
  pb.sink = s.sink.defined() ? s.sink.data_ptr<acc_t>() : nullptr;
  pb.gate = s.gate_factor.defined() ? s.gate_factor.data_ptr<acc_t>() : nullptr;
  pb.num_nodes = s.num_nodes;
  pb.num_src_nodes = s.num_src_nodes;
  pb.num_edges = s.num_edges;
  pb.heads = s.heads;
  pb.head_dim = s.head_dim;
  pb.channels = s.heads * s.head_dim;
  pb.mode = s.mode;
  pb.ebt = s.ebt;
  pb.has_clamp = s.clamp.has_value();
  pb.clamp = static_cast<acc_t>(s.clamp.value_or(0.0));
  pb.scale = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  if (s.dropout > 0.0) {
    // threshold = min(floor(p 2^32), 2^32 - 1) in double, as magnn.core.dropout.dropout_threshold
    const double threshold = std::min(std::floor(s.dropout * 4294967296.0), 4294967295.0);
    pb.has_dropout = true;
    pb.drop_threshold = static_cast<uint32_t>(threshold);
    const uint64_t seed = static_cast<uint64_t>(s.seed);
    pb.seed_low = static_cast<uint32_t>(seed);
    pb.seed_high = static_cast<uint32_t>(seed >> 32);
    pb.keep_scale = static_cast<acc_t>(1.0 / (1.0 - s.dropout));
  }
  return pb;
}

using ForwardTuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Both forward ops: e [E, H, D], or (proj_w given) the raw features a [E, F] with e = W a + b
// formed per edge inside the passes.
ForwardTuple edge_attention_fwd_impl(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e, const Tensor* proj_w,
    const std::optional<Tensor>* proj_b, const Tensor& rowptr, const Tensor& col,
    const Tensor& perm, const std::optional<Tensor>& rev_rowptr, const std::optional<Tensor>& rev_col,
    const std::optional<Tensor>& rev_perm, const std::optional<Tensor>& bias, const std::optional<Tensor>& ebt_k,
    const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v, const std::optional<Tensor>& sink,
    const std::optional<Tensor>& gate, c10::string_view mode, c10::string_view ebt, std::optional<double> clamp,
    double dropout, int64_t seed, int64_t mantissa_bits, bool need_edge_out) {
  const Setup s = prepare(q, k, v, e, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp,
                          dropout, seed, proj_w, proj_b);
  // the reverse CSR only travels with the forward for the backward; checked when given
  TORCH_CHECK(rev_rowptr.has_value() == rev_col.has_value() && rev_col.has_value() == rev_perm.has_value(),
              "magnn_cpu: pass all of rev_rowptr, rev_col, rev_perm or none of them");
  if (rev_rowptr.has_value()) {
    check_index(*rev_rowptr, "rev_rowptr", s.num_src_nodes + 1);
    check_index(*rev_col, "rev_col", s.num_edges);
    check_index(*rev_perm, "rev_perm", s.num_edges);
  }
  TORCH_CHECK(mantissa_bits <= 23, "magnn_cpu: mantissa_bits must be in [0, 23]");
  const auto acc_type = at::toOpMathType(q.scalar_type());
  Tensor node_out = at::empty_like(s.q);
  Tensor edge_out = need_edge_out ? empty_huge({s.num_edges, s.heads, s.head_dim}, s.q.options())
                                  : at::empty({0, s.heads, s.head_dim}, s.q.options());
  Tensor lse = at::empty({s.num_nodes, 2, s.heads}, q.options().dtype(acc_type));
  // per-edge logits between the caller-order and the CSR passes; freed on return
  Tensor logit_buffer = empty_huge({s.num_edges, s.heads}, q.options().dtype(acc_type));
  // each edge's src and dst in the caller's order, for the caller-order passes; freed on return
  const bool narrow_ends = std::max(s.num_nodes, s.num_src_nodes) <= std::numeric_limits<int32_t>::max();
  Tensor endpoints = empty_huge({s.num_edges, 2}, q.options().dtype(narrow_ends ? at::kInt : at::kLong));
  Endpoints ends;
  if (narrow_ends) ends.narrow = endpoints.data_ptr<int32_t>(); else ends.pairs = endpoints.data_ptr<int64_t>();
  scatter_endpoints(rowptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), s.num_nodes, ends);
  const bool with_stats = mantissa_bits >= 0;
  const auto i64 = q.options().dtype(at::kLong);
  const auto f32 = q.options().dtype(at::kFloat);
  const int64_t bins = with_stats ? (int64_t(1) << (8 + mantissa_bits)) : 0;
  Tensor hist_abs = at::zeros({bins}, i64);
  Tensor hist_ratio = at::zeros({bins}, i64);
  Tensor row_ratio = at::empty({with_stats ? s.num_edges : 0}, f32);
  Tensor row_max_abs = at::empty({with_stats ? s.num_edges : 0}, f32);
  RowStatsTotal total;
  total.hist_abs = hist_abs.data_ptr<int64_t>();
  total.hist_ratio = hist_ratio.data_ptr<int64_t>();
  total.num_bins = bins;
  StatsOut stats{&total, static_cast<int>(mantissa_bits), row_ratio.data_ptr<float>(), row_max_abs.data_ptr<float>()};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "edge_attention_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto pb = make_problem<scalar_t, acc_t>(s, rowptr, col, perm);
    edge_attention_fwd_kernel<scalar_t, acc_t>(pb, ends,
                                               node_out.data_ptr<scalar_t>(),
                                               need_edge_out ? edge_out.data_ptr<scalar_t>() : nullptr,
                                               lse.data_ptr<acc_t>(), logit_buffer.data_ptr<acc_t>(),
                                               with_stats ? &stats : nullptr);
  });

  Tensor nan_count = at::empty({}, i64);
  Tensor max_abs = at::empty({}, f32);
  Tensor argmax = at::empty({}, i64);
  if (with_stats) {
    nan_count.fill_(total.nan_count);
    max_abs.fill_(total.max_abs);
    argmax.fill_(total.argmax);
  } else {
    nan_count.fill_(0);
    max_abs.fill_(-1.0);
    argmax.fill_(-1);
  }
  return {node_out, edge_out, lse, hist_abs, hist_ratio, row_ratio, row_max_abs, nan_count, max_abs, argmax};
}

ForwardTuple edge_attention_fwd(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e, const Tensor& rowptr, const Tensor& col,
    const Tensor& perm, const std::optional<Tensor>& rev_rowptr, const std::optional<Tensor>& rev_col,
    const std::optional<Tensor>& rev_perm, const std::optional<Tensor>& bias, const std::optional<Tensor>& ebt_k,
    const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v, const std::optional<Tensor>& sink,
    const std::optional<Tensor>& gate, c10::string_view mode, c10::string_view ebt, std::optional<double> clamp,
    double dropout, int64_t seed, int64_t mantissa_bits, bool need_edge_out) {
  return edge_attention_fwd_impl(q, k, v, e, nullptr, nullptr, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                                 bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout, seed, mantissa_bits,
                                 need_edge_out);
}

// The in-operator edge projection (contract.PROJ_FORWARD_ARGS): e_ij = W a_ij + b per edge,
// never stored.
ForwardTuple edge_attention_proj_fwd(
    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& w_e,
    const std::optional<Tensor>& b_e, const Tensor& rowptr, const Tensor& col,
    const Tensor& perm, const std::optional<Tensor>& rev_rowptr, const std::optional<Tensor>& rev_col,
    const std::optional<Tensor>& rev_perm, const std::optional<Tensor>& bias, const std::optional<Tensor>& ebt_k,
    const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v, const std::optional<Tensor>& sink,
    const std::optional<Tensor>& gate, c10::string_view mode, c10::string_view ebt, std::optional<double> clamp,
    double dropout, int64_t seed, int64_t mantissa_bits, bool need_edge_out) {
  return edge_attention_fwd_impl(q, k, v, a, &w_e, &b_e, rowptr, col, perm, rev_rowptr, rev_col, rev_perm,
                                 bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp, dropout, seed, mantissa_bits,
                                 need_edge_out);
}

// An output gradient [rows, H, D] as rows the kernels read in place: the returned tensor's data
// and *row_stride (elements between consecutive rows). Rows that are contiguous [H, D] blocks in
// the wanted dtype are used where they lie, at the tensor's own row stride; a gradient broadcast
// over its rows (row stride 0: the gradient of out.sum() or out.mean()) keeps stride 0, so its one
// row is read for every edge instead of being materialised as [E, H, D]; anything else is copied
// to a contiguous tensor (row stride H D).
Tensor grad_rows(const Tensor& grad, at::ScalarType dtype, int64_t* row_stride) {
  const int64_t heads = grad.size(1), head_dim = grad.size(2);
  const bool rows_contiguous = (heads == 1 || grad.stride(1) == head_dim) && (head_dim == 1 || grad.stride(2) == 1);
  if (grad.size(0) > 0 && grad.scalar_type() == dtype && rows_contiguous) {
    *row_stride = grad.stride(0);
    return grad;
  }
  if (grad.size(0) > 0 && grad.stride(0) == 0) {
    *row_stride = 0;
    return grad.select(0, 0).to(dtype).contiguous().unsqueeze(0);
  }
  *row_stride = heads * head_dim;
  return grad.to(dtype).contiguous();
}

// Both backward ops; with the projection: (dq, dk, dv, da, dW, db, dbias, EBT grads, dsink, dgate), where
// da is [0, F] unless need_grad_a and db is empty without a projection bias; dsink / dgate are empty
// without a sink / gate.
std::vector<Tensor> edge_attention_bwd_impl(
    const std::optional<Tensor>& grad_node, const std::optional<Tensor>& grad_edge,
    const std::optional<Tensor>& grad_lse, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e,
    const Tensor* proj_w, const std::optional<Tensor>* proj_b, bool need_grad_a,
    const Tensor& lse, const Tensor& node_out, const Tensor& rowptr, const Tensor& col, const Tensor& perm,
    const Tensor& rev_rowptr, const Tensor& rev_col, const Tensor& rev_perm, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& ebt_k, const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v,
    const std::optional<Tensor>& sink, const std::optional<Tensor>& gate, c10::string_view mode,
    c10::string_view ebt, std::optional<double> clamp, double dropout, int64_t seed) {
  const Setup s = prepare(q, k, v, e, rowptr, col, perm, bias, ebt_k, ebt_e, ebt_v, sink, gate, mode, ebt, clamp,
                          dropout, seed, proj_w, proj_b);
  check_index(rev_rowptr, "rev_rowptr", s.num_src_nodes + 1);
  check_index(rev_col, "rev_col", s.num_edges);
  check_index(rev_perm, "rev_perm", s.num_edges);
  const auto acc_type = at::toOpMathType(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == acc_type && lse.dim() == 3 && lse.size(0) == s.num_nodes && lse.size(1) == 2 &&
                  lse.size(2) == s.heads,
              "magnn_cpu: lse must be [N, 2, H] (row max, log sum) in the accumulation dtype");
  const Tensor lse_c = lse.contiguous();
  // node_out is part of the contract (a backend may derive delta from it); this one recomputes delta from
  // the edges, which also covers the additive mode's edge_out gradient, and reads it for the gate's gradient
  TORCH_CHECK(node_out.sizes() == q.sizes(), "magnn_cpu: node_out must be [N, H, D]");
  Tensor grad_lse_c;
  if (grad_lse.has_value() && grad_lse->defined()) {
    TORCH_CHECK(grad_lse->sizes() == lse.sizes(), "magnn_cpu: grad_lse must be [N, 2, H] like lse");
    grad_lse_c = grad_lse->to(acc_type).contiguous();
  }
  Tensor grad_node_c, grad_edge_c;
  int64_t grad_node_stride = s.heads * s.head_dim, grad_edge_stride = s.heads * s.head_dim;
  if (grad_node.has_value() && grad_node->defined()) {
    TORCH_CHECK(grad_node->sizes() == q.sizes(), "magnn_cpu: grad_node must be [N, H, D]");
    grad_node_c = grad_rows(*grad_node, q.scalar_type(), &grad_node_stride);
  } else {
    grad_node_c = at::zeros({1, s.heads, s.head_dim}, s.q.options());  // one zero row for every node
    grad_node_stride = 0;
  }
  if (grad_edge.has_value() && grad_edge->defined()) {
    TORCH_CHECK(grad_edge->dim() == 3 && grad_edge->size(0) == s.num_edges && grad_edge->size(1) == s.heads &&
                    grad_edge->size(2) == s.head_dim,
                "magnn_cpu: grad_edge must be [E, H, D]");
    grad_edge_c = grad_rows(*grad_edge, q.scalar_type(), &grad_edge_stride);
  }
  Tensor dq = at::empty_like(s.q);
  Tensor dk = at::empty_like(s.k);
  Tensor dv = at::empty_like(s.v);
  // no [E, H, D] gradient under the projection: de is reduced into dW, db, da per edge
  Tensor de = s.projected ? at::empty({0, s.heads, s.head_dim}, s.q.options()) : empty_huge(s.e.sizes(), s.e.options());
  Tensor da = at::empty({s.projected && need_grad_a ? s.num_edges : 0, s.feat_dim}, s.q.options());
  Tensor dw = at::empty({s.projected ? s.heads * s.head_dim : 0, s.feat_dim}, q.options().dtype(acc_type));
  Tensor db = at::empty({s.b_proj.defined() ? s.heads * s.head_dim : 0}, q.options().dtype(acc_type));
  Tensor dbias = s.bias.defined() ? at::empty_like(s.bias) : at::empty({0}, q.options().dtype(acc_type));
  const auto param_options = q.options().dtype(acc_type);
  const bool with_ebt = s.ebt != Ebt::kNone;
  Tensor dk_b = at::empty(with_ebt ? std::vector<int64_t>{s.heads, s.head_dim} : std::vector<int64_t>{0}, param_options);
  Tensor de_b = at::empty_like(dk_b);
  Tensor dv_b = at::empty_like(dk_b);
  Tensor edge_grad = empty_huge({s.num_edges, 2, s.heads}, param_options);
  Tensor dsink = at::empty({s.sink.defined() ? s.heads : 0}, param_options);
  const bool gated = s.gate_factor.defined();
  Tensor dgate = gated ? at::empty({s.num_nodes, s.heads}, param_options) : at::empty({0}, param_options);
  // the gate's gradient reads the saved (gated) node_out, row by row in the dst pass
  Tensor node_out_c;
  if (gated) {
    TORCH_CHECK(node_out.scalar_type() == q.scalar_type(), "magnn_cpu: node_out must have q's dtype");
    node_out_c = node_out.contiguous();
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "edge_attention_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto pb = make_problem<scalar_t, acc_t>(s, rowptr, col, perm);
    Grads<scalar_t, acc_t> g;
    g.grad_node = grad_node_c.data_ptr<scalar_t>();
    g.grad_edge = grad_edge_c.defined() ? grad_edge_c.data_ptr<scalar_t>() : nullptr;
    g.grad_node_stride = grad_node_stride;
    g.grad_edge_stride = grad_edge_c.defined() ? grad_edge_stride : 0;
    g.lse = lse_c.data_ptr<acc_t>();
    g.grad_lse = grad_lse_c.defined() ? grad_lse_c.data_ptr<acc_t>() : nullptr;
    g.rev_rowptr = rev_rowptr.data_ptr<int64_t>();
    g.rev_col = rev_col.data_ptr<int64_t>();
    g.rev_perm = rev_perm.data_ptr<int64_t>();
    g.edge_grad = edge_grad.data_ptr<acc_t>();
    g.dq = dq.data_ptr<scalar_t>();
    g.dk = dk.data_ptr<scalar_t>();
    g.dv = dv.data_ptr<scalar_t>();
    g.de = s.projected ? nullptr : de.data_ptr<scalar_t>();
    g.da = s.projected && need_grad_a ? da.data_ptr<scalar_t>() : nullptr;
    g.dw = s.projected ? dw.data_ptr<acc_t>() : nullptr;
    g.db = s.b_proj.defined() ? db.data_ptr<acc_t>() : nullptr;
    g.dbias = s.bias.defined() ? dbias.data_ptr<acc_t>() : nullptr;
    g.dk_b = with_ebt ? dk_b.data_ptr<acc_t>() : nullptr;
    g.de_b = with_ebt ? de_b.data_ptr<acc_t>() : nullptr;
    g.dv_b = with_ebt ? dv_b.data_ptr<acc_t>() : nullptr;
    g.dsink = s.sink.defined() ? dsink.data_ptr<acc_t>() : nullptr;
    g.node_out = gated ? node_out_c.data_ptr<scalar_t>() : nullptr;
    g.dgate = gated ? dgate.data_ptr<acc_t>() : nullptr;
    edge_attention_bwd_dst_kernel<scalar_t, acc_t>(pb, g);
    edge_attention_bwd_src_kernel<scalar_t, acc_t>(pb, g);
  });
  if (s.projected) return {dq, dk, dv, da, dw, db, dbias, dk_b, de_b, dv_b, dsink, dgate};
  return {dq, dk, dv, de, dbias, dk_b, de_b, dv_b, dsink, dgate};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> edge_attention_bwd(
    const std::optional<Tensor>& grad_node, const std::optional<Tensor>& grad_edge,
    const std::optional<Tensor>& grad_lse, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& e,
    const Tensor& lse, const Tensor& node_out, const Tensor& rowptr, const Tensor& col, const Tensor& perm,
    const Tensor& rev_rowptr, const Tensor& rev_col, const Tensor& rev_perm, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& ebt_k, const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v,
    const std::optional<Tensor>& sink, const std::optional<Tensor>& gate, c10::string_view mode,
    c10::string_view ebt, std::optional<double> clamp, double dropout, int64_t seed) {
  auto r = edge_attention_bwd_impl(grad_node, grad_edge, grad_lse, q, k, v, e, nullptr, nullptr, false, lse, node_out,
                                   rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e, ebt_v, sink,
                                   gate, mode, ebt, clamp, dropout, seed);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
edge_attention_proj_bwd(
    const std::optional<Tensor>& grad_node, const std::optional<Tensor>& grad_edge,
    const std::optional<Tensor>& grad_lse, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a,
    const Tensor& w_e, const std::optional<Tensor>& b_e,
    const Tensor& lse, const Tensor& node_out, const Tensor& rowptr, const Tensor& col, const Tensor& perm,
    const Tensor& rev_rowptr, const Tensor& rev_col, const Tensor& rev_perm, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& ebt_k, const std::optional<Tensor>& ebt_e, const std::optional<Tensor>& ebt_v,
    const std::optional<Tensor>& sink, const std::optional<Tensor>& gate, c10::string_view mode,
    c10::string_view ebt, std::optional<double> clamp, double dropout, int64_t seed, bool need_grad_a) {
  auto r = edge_attention_bwd_impl(grad_node, grad_edge, grad_lse, q, k, v, a, &w_e, &b_e, need_grad_a, lse,
                                   node_out, rowptr, col, perm, rev_rowptr, rev_col, rev_perm, bias, ebt_k, ebt_e,
                                   ebt_v, sink, gate, mode, ebt, clamp, dropout, seed);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]};
}

// Statistics of a materialised tap rows [R, C] (any floating dtype, read as
// stored and converted to float32 row by row): the RawStats fields of
// magnn.core.binning.reduce_rows, reduced with the same RowStatsPartial code as
// the forward's in-kernel statistics (what magnn.stats.reduce_tensor uses for
// the PyG message hooks). Rows go out in chunks to the intra-op threads.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> reduce_rows(const Tensor& rows,
                                                                               int64_t mantissa_bits) {
  TORCH_CHECK(rows.dim() == 2, "magnn_cpu.reduce_rows: rows must be 2-D [R, C], got ", rows.dim(), " dims");
  TORCH_CHECK(rows.device().is_cpu(), "magnn_cpu.reduce_rows: rows must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(rows.scalar_type()), "magnn_cpu.reduce_rows: rows must be floating point");
  TORCH_CHECK(mantissa_bits >= 0 && mantissa_bits <= 23, "magnn_cpu.reduce_rows: mantissa_bits must be in [0, 23]");
  const Tensor values = rows.contiguous();
  const int64_t R = values.size(0), C = values.size(1);
  const auto i64 = values.options().dtype(at::kLong);
  const auto f32 = values.options().dtype(at::kFloat);
  const int64_t bins = int64_t(1) << (8 + mantissa_bits);
  Tensor hist_abs = at::zeros({bins}, i64);
  Tensor hist_ratio = at::zeros({bins}, i64);
  Tensor row_ratio = at::empty({R}, f32);
  Tensor row_max_abs = at::empty({R}, f32);
  RowStatsTotal total;
  total.hist_abs = hist_abs.data_ptr<int64_t>();
  total.hist_ratio = hist_ratio.data_ptr<int64_t>();
  total.num_bins = bins;
  StatsOut stats{&total, static_cast<int>(mantissa_bits), row_ratio.data_ptr<float>(), row_max_abs.data_ptr<float>()};
  if (C == 0) {  // no values: every row is empty (all NaN in reduce_rows' terms)
    row_ratio.fill_(std::numeric_limits<float>::quiet_NaN());
    row_max_abs.fill_(std::numeric_limits<float>::quiet_NaN());
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "reduce_rows", [&] {
      const scalar_t* data = values.data_ptr<scalar_t>();
      run_blocks((R + kEdgeChunk - 1) / kEdgeChunk, [&](auto& claim) {
        RowReducer<scalar_t> reducer(&stats, C);
        for (int64_t chunk = claim(); chunk >= 0; chunk = claim()) {
          const int64_t end = std::min(R, (chunk + 1) * kEdgeChunk);
          for (int64_t row = chunk * kEdgeChunk; row < end; ++row) reducer.add(data + row * C, row);
        }
        reducer.finish();
      });
    });
  }
  Tensor nan_count = at::empty({}, i64);
  Tensor max_abs = at::empty({}, f32);
  Tensor argmax = at::empty({}, i64);
  nan_count.fill_(total.nan_count);
  max_abs.fill_(total.max_abs);
  argmax.fill_(total.argmax);
  return {hist_abs, hist_ratio, row_ratio, row_max_abs, nan_count, max_abs, argmax};
}

// What magnn.stats.EdgeStats.add derives from a call's per-row ratios r [R]
// (float32), in one serial pass: the histogram of |r| over the non-NaN rows,
// their number and max (-inf when none), which rows are massive (r >
// threshold, and row_max_abs > min_abs when min_abs is given) and how many. Serial on
// purpose: it is one pass over R floats, and a parallel region per torch op
// on a busy machine waited for descheduled threads far longer than the work.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> summarize_ratios(const Tensor& row_ratio, int64_t mantissa_bits,
                                                           double threshold, const std::optional<Tensor>& row_max_abs,
                                                           std::optional<double> min_abs) {
  TORCH_CHECK(row_ratio.dim() == 1 && row_ratio.scalar_type() == at::kFloat && row_ratio.device().is_cpu(),
              "magnn_cpu.summarize_ratios: row_ratio must be a float32 CPU vector");
  TORCH_CHECK(mantissa_bits >= 0 && mantissa_bits <= 23, "magnn_cpu.summarize_ratios: mantissa_bits must be in [0, 23]");
  TORCH_CHECK(!min_abs.has_value() || (row_max_abs.has_value() && row_max_abs->sizes() == row_ratio.sizes() &&
                                       row_max_abs->scalar_type() == at::kFloat),
              "magnn_cpu.summarize_ratios: min_abs needs a float32 row_max_abs shaped like row_ratio");
  const Tensor ratio = row_ratio.contiguous();
  const int64_t R = ratio.size(0);
  const int shift = 23 - static_cast<int>(mantissa_bits);
  Tensor hist = at::zeros({int64_t(1) << (8 + mantissa_bits)}, ratio.options().dtype(at::kLong));
  Tensor massive = at::empty({R}, ratio.options().dtype(at::kBool));
  int64_t* counts = hist.data_ptr<int64_t>();
  bool* is_massive = massive.data_ptr<bool>();
  const float* r = ratio.data_ptr<float>();
  Tensor big;
  const float* big_abs = nullptr;
  if (min_abs.has_value()) {
    big = row_max_abs->contiguous();
    big_abs = big.data_ptr<float>();
  }
  const float limit = static_cast<float>(threshold);
  const float abs_limit = min_abs.has_value() ? static_cast<float>(*min_abs) : 0.0f;
  int64_t valid = 0, num_massive = 0;
  float largest = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < R; ++i) {
    const float value = r[i];
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    bits &= 0x7fffffffu;
    const bool nan = bits > 0x7f800000u;
    if (!nan) {
      ++counts[bits >> shift];
      ++valid;
      largest = std::max(largest, value);
    }
    is_massive[i] = value > limit && (big_abs == nullptr || big_abs[i] > abs_limit);  // NaN compares false
    num_massive += is_massive[i];
  }
  Tensor num_valid = at::empty({}, ratio.options().dtype(at::kLong));
  Tensor max_ratio = at::empty({}, ratio.options());
  Tensor massive_count = at::empty({}, ratio.options().dtype(at::kLong));
  num_valid.fill_(valid);
  max_ratio.fill_(largest);
  massive_count.fill_(num_massive);
  return {hist, num_valid, max_ratio, massive, massive_count};
}

}  // namespace

TORCH_LIBRARY_IMPL(magnn_cpu, CPU, m) {
  m.impl("summarize_ratios", &summarize_ratios);
  m.impl("edge_attention_fwd", &edge_attention_fwd);
  m.impl("edge_attention_bwd", &edge_attention_bwd);
  m.impl("edge_attention_proj_fwd", &edge_attention_proj_fwd);
  m.impl("edge_attention_proj_bwd", &edge_attention_proj_bwd);
  m.impl("reduce_rows", &reduce_rows);
}

}  // namespace magnn_cpu
