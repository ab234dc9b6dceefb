// Massive-activation statistics of a tapped [rows, C] tensor, reduced row by
// row inside the kernel that writes it (SPEC §4). The numbers equal
// magnn.stats.reduce_rows on the values as stored, converted to float32:
// lower medians over the non-NaN channels, ratios divided in float32, and
// histograms indexed by the float32 bit pattern shifted right by 23 - M.
//
// Each worker owns a RowStatsPartial (private histograms, no atomics); the
// partials are folded into a RowStatsTotal under a mutex at the end. Integer
// counts add exactly and the max/argmax merge breaks ties on the smaller flat
// index, so the result does not depend on the thread count or schedule.
//
// The row pass works on the bit patterns of |a| (sign cleared; a NaN is above
// +inf). On x86-64 CPUs with AVX-512 (checked at run time; the build itself
// targets plain x86-64) the same code is compiled a second time for AVX-512
// and the median uses a bitonic sorting network (up to 64 non-NaN channels)
// or a vector quickselect (more); rows of exactly 32 or 64 channels without
// NaN (64: the usual 8 heads x 8) wait in batches of 16 that share one
// transposed network (median_of_16_rows). All paths give the same bits. What is left
// of a row's cost is mostly its 128 histogram increments (64 |a|, 64 ratios;
// about 0.3 ns each on a Zen 4 core, by perf and by leaving them out).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512 paths chosen at run time (the build itself targets plain x86-64)
#define MAGNN_X86_AVX512 1
#include <immintrin.h>
#endif

namespace magnn_cpu {

// float32 bin of a non-negative value. The sign bit is cleared so that a NaN
// produced by inf / inf (which x86 returns with the sign bit set) still lands
// inside the histogram instead of indexing before it.
inline int64_t stats_bin(float value, int shift) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<int64_t>((bits & 0x7fffffffu) >> shift);
}

// A float32 from its bit pattern. For non-negative values (|a| without NaN)
// the integer order of the patterns equals the float order.
inline float key_float(uint32_t key) {
  float value;
  std::memcpy(&value, &key, sizeof(value));
  return value;
}

// The divisor of a row's ratios: its median, or the smallest positive normal float32 for a
// median of 0, so that every ratio is finite (SPEC §4).
inline float ratio_divisor(uint32_t median_key) {
  const float median = key_float(median_key);
  return median == 0.0f ? std::numeric_limits<float>::min() : median;
}

// The kth smallest (0-based) of n keys, by quickselect with a branch-free
// three-way partition: per-row medians of random data would otherwise spend
// most of their time in mispredicted branches. Reorders `keys`; `scratch`
// holds at least n entries.
inline uint32_t select_kth(uint32_t* keys, uint32_t* scratch, int64_t n, int64_t kth) {
  const uint32_t* src = keys;
  uint32_t* src_buffer = keys;  // the buffer src points into
  uint32_t* free_buffer = scratch;
  while (n > 8) {
    const uint32_t a = src[0], b = src[n / 2], c = src[n - 1];
    const uint32_t pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    // each key is written to both ends; only the side it belongs to advances
    uint32_t* dst = free_buffer;
    int64_t lo = 0, hi = n;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t x = src[i];
      dst[lo] = x;
      dst[hi - 1] = x;
      lo += x < pivot;
      hi -= x > pivot;
    }
    if (kth >= lo && kth < hi) return pivot;
    if (kth < lo) {
      n = lo;
      src = dst;
    } else {
      src = dst + hi;
      n -= hi;
      kth -= hi;
    }
    free_buffer = src_buffer;
    src_buffer = dst;
  }
  // rank counting for the last few
  for (int64_t i = 0; i < n; ++i) {
    int64_t below = 0, equal_before = 0;
    for (int64_t j = 0; j < n; ++j) {
      below += src[j] < src[i];
      equal_before += (src[j] == src[i]) & (j < i);
    }
    if (below + equal_before == kth) return src[i];
  }
  return src[0];  // unreachable: some key has rank kth
}

#ifdef MAGNN_X86_AVX512
// select_kth with AVX-512: quickselect whose three-way partition compares 16
// keys at a time and compacts each side with vpcompressd (into a register,
// then stored: a compressing store to memory is microcoded on some cores),
// until at most 16 keys are left; those stay in one register, where the kth
// smallest is the largest key with at most kth keys below it (16 broadcast
// compares, no branches). `keys`, `buf_a` and `buf_b` each hold at least
// n + 16 entries; the three take turns as source and destinations. The pivot
// is one of the keys, so every round drops at least one.
__attribute__((target("avx512f,popcnt"))) inline uint32_t select_kth_avx512(uint32_t* keys, uint32_t* buf_a,
                                                                           uint32_t* buf_b, int64_t n, int64_t kth) {
  uint32_t* src = keys;
  uint32_t* lt_buf = buf_a;
  uint32_t* gt_buf = buf_b;
  while (n > 16) {
    const uint32_t a = src[0], b = src[n / 2], c = src[n - 1];
    const uint32_t pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    const __m512i p = _mm512_set1_epi32(static_cast<int>(pivot));
    int64_t lt = 0, gt = 0;
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 valid = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(valid, src + i);
      const __mmask16 below = _mm512_mask_cmplt_epu32_mask(valid, v, p);
      const __mmask16 above = _mm512_mask_cmpgt_epu32_mask(valid, v, p);
      _mm512_storeu_si512(lt_buf + lt, _mm512_maskz_compress_epi32(below, v));
      _mm512_storeu_si512(gt_buf + gt, _mm512_maskz_compress_epi32(above, v));
      lt += __builtin_popcount(below);
      gt += __builtin_popcount(above);
    }
    if (kth < lt) {
      std::swap(src, lt_buf);  // the old source becomes a free buffer
      n = lt;
    } else if (kth < n - gt) {
      return pivot;
    } else {
      kth -= n - gt;
      std::swap(src, gt_buf);
      n = gt;
    }
  }
  // unused lanes hold 0xffffffff, above every key (keys are below 2**31)
  const __mmask16 valid = __mmask16((1u << n) - 1);
  const __m512i v = _mm512_mask_loadu_epi32(_mm512_set1_epi32(-1), valid, src);
  __m512i below = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi32(1);
  for (int j = 0; j < 16; ++j) {
    const __m512i other = _mm512_permutexvar_epi32(_mm512_set1_epi32(j), v);
    below = _mm512_mask_add_epi32(below, _mm512_cmplt_epu32_mask(other, v), below, one);
  }
  const __mmask16 candidates = _mm512_cmple_epu32_mask(below, _mm512_set1_epi32(static_cast<int>(kth)));
  return static_cast<uint32_t>(_mm512_mask_reduce_max_epu32(candidates, v));
}

// select_kth for n <= 64 keys: a bitonic sorting network over four 16-lane
// registers, the keys padded with 0xffffffff (above every key, as keys are
// below 2**31), compiled to a fixed sequence of 21 compare-exchange stages
// (permute, min, max, blend with constant masks): no branches, about 2.4x
// faster than the quickselect on 64 random keys.
template <int k, int j>
__attribute__((target("avx512f"), always_inline)) inline void bitonic_stage(__m512i* reg, __m512i lane) {
  if constexpr (j >= 16) {
    constexpr int step = j >> 4;
    for (int r = 0; r < 4; ++r) {
      if (r & step) continue;
      const int p = r | step;
      const bool ascending = ((16 * r) & k) == 0;
      const __m512i lo = _mm512_min_epu32(reg[r], reg[p]);
      const __m512i hi = _mm512_max_epu32(reg[r], reg[p]);
      reg[r] = ascending ? lo : hi;
      reg[p] = ascending ? hi : lo;
    }
  } else {
    const __m512i idx = _mm512_xor_si512(lane, _mm512_set1_epi32(j));
    for (int r = 0; r < 4; ++r) {
      // lane l of register r takes the max when it is the pair's upper lane in an ascending block
      // or the lower one in a descending block (constant masks)
      __mmask16 take_max = 0;
      for (int l = 0; l < 16; ++l) take_max |= __mmask16((((l & j) != 0) != (((16 * r + l) & k) != 0)) << l);
      const __m512i other = _mm512_permutexvar_epi32(idx, reg[r]);
      const __m512i lo = _mm512_min_epu32(reg[r], other);
      const __m512i hi = _mm512_max_epu32(reg[r], other);
      reg[r] = _mm512_mask_mov_epi32(lo, take_max, hi);
    }
  }
}

// every stage from (k, j) on, up to blocks of kLast keys
template <int k, int j, int kLast = 64>
__attribute__((target("avx512f"), always_inline)) inline void bitonic_stages(__m512i* reg, __m512i lane) {
  bitonic_stage<k, j>(reg, lane);
  if constexpr (j > 1) {
    bitonic_stages<k, j / 2, kLast>(reg, lane);
  } else if constexpr (k < kLast) {
    bitonic_stages<2 * k, k, kLast>(reg, lane);
  }
}

__attribute__((target("avx512f"))) inline uint32_t select_kth_bitonic64(const uint32_t* keys, int64_t n, int64_t kth) {
  __m512i reg[4];
  const __m512i pad = _mm512_set1_epi32(-1);
  for (int r = 0; r < 4; ++r) {
    const int64_t left = n - 16 * r;
    const __mmask16 valid = left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
    reg[r] = _mm512_mask_loadu_epi32(pad, valid, keys + 16 * r);
  }
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // sorted halves (32 keys ascending, then 32 descending), then the last merge's first stage, which
  // leaves the 32 smallest keys in registers 0 and 1
  bitonic_stages<2, 1, 32>(reg, lane);
  bitonic_stage<64, 32>(reg, lane);
  if (kth == 31) return _mm512_reduce_max_epu32(_mm512_max_epu32(reg[0], reg[1]));  // 64 keys: the largest of those
  bitonic_stages<64, 16>(reg, lane);
  alignas(64) uint32_t sorted[64];
  for (int r = 0; r < 4; ++r) _mm512_store_si512(sorted + 16 * r, reg[r]);
  return sorted[kth];
}

// The first index c < n with keys[c] == wanted (n if none), 16 keys per compare.
__attribute__((target("avx512f"))) inline int64_t find_first_avx512(const uint32_t* keys, int64_t n, uint32_t wanted) {
  const __m512i target = _mm512_set1_epi32(static_cast<int>(wanted));
  for (int64_t base = 0; base < n; base += 16) {
    const int64_t left = n - base;
    const __mmask16 valid = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(valid, _mm512_maskz_loadu_epi32(valid, keys + base), target);
    if (hit) return base + __builtin_ctz(hit);
  }
  return n;
}

// Rows of exactly 32 or 64 channels are reduced 16 at a time (RowStatsPartial::add_row_batched):
// the 16 rows are transposed into C vectors whose lane r holds row r's keys, so a sorting
// network needs no shuffles at all: each compare-exchange is one min and one max acting on
// 16 rows at once (Batcher's odd-even merge sort of each half: 191 comparators for 32 keys,
// 63 for 16), and the lower median of C is the largest of the C/2 smallest,
// max_i min(X_i, Y_C/2-1-i) over the two sorted halves (the half-cleaner). For 64 channels
// that is about a quarter of the work of the per-row network.
struct CompareExchange {
  int lo, hi;
};

// Batcher's odd-even merge sort of n (a power of two) keys, ascending: visit(lo, hi) for each
// compare-exchange, in order.
template <typename Visit>
constexpr void oddeven_merge_sort_pairs(int n, Visit visit) {
  for (int p = 1; p < n; p *= 2)
    for (int k = p; k >= 1; k /= 2)
      for (int j = k % p; j <= n - 1 - k; j += 2 * k)
        for (int i = 0; i <= std::min(k - 1, n - j - k - 1); ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) visit(i + j, i + j + k);
}

constexpr int oddeven_merge_sort_count(int n) {
  int count = 0;
  oddeven_merge_sort_pairs(n, [&count](int, int) { ++count; });
  return count;
}

template <int n>
constexpr std::array<CompareExchange, oddeven_merge_sort_count(n)> oddeven_merge_sort_network() {
  std::array<CompareExchange, oddeven_merge_sort_count(n)> net{};
  int m = 0;
  oddeven_merge_sort_pairs(n, [&net, &m](int lo, int hi) { net[m++] = CompareExchange{lo, hi}; });
  return net;
}

template <int n>
inline constexpr auto kSortNetwork = oddeven_merge_sort_network<n>();

template <int lo, int hi>
__attribute__((target("avx512f"), always_inline)) inline void compare_exchange(__m512i* v) {
  const __m512i low = _mm512_min_epu32(v[lo], v[hi]);
  v[hi] = _mm512_max_epu32(v[lo], v[hi]);
  v[lo] = low;
}

// all indices constant: the keys stay in registers (or spill to the stack)
template <const auto& kNetwork, size_t... I>
__attribute__((target("avx512f"), always_inline)) inline void sort_transposed(__m512i* v,
                                                                               std::index_sequence<I...>) {
  (compare_exchange<kNetwork[I].lo, kNetwork[I].hi>(v), ...);
}

// ascending sort of v[0 .. n)
template <int n>
__attribute__((target("avx512f"), always_inline)) inline void sort_half(__m512i* v) {
  sort_transposed<kSortNetwork<n>>(v, std::make_index_sequence<kSortNetwork<n>.size()>{});
}

// rows[i * stride + j] for i, j < 16 -> out[j] with lane i = rows[i * stride + j]
__attribute__((target("avx512f"), always_inline)) inline void transpose16x16(const uint32_t* rows, int64_t stride,
                                                                             __m512i* out) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512i r0 = _mm512_loadu_si512(rows + i * stride), r1 = _mm512_loadu_si512(rows + (i + 1) * stride);
    a[i] = _mm512_unpacklo_epi32(r0, r1);  // per 128-bit lane L: columns 4L, 4L + 1 of rows i, i + 1
    a[i + 1] = _mm512_unpackhi_epi32(r0, r1);  // columns 4L + 2, 4L + 3
  }
  for (int k = 0; k < 4; ++k) {  // b[4k + m], lane L: column 4L + m of rows 4k .. 4k + 3
    b[4 * k + 0] = _mm512_unpacklo_epi64(a[4 * k], a[4 * k + 2]);
    b[4 * k + 1] = _mm512_unpackhi_epi64(a[4 * k], a[4 * k + 2]);
    b[4 * k + 2] = _mm512_unpacklo_epi64(a[4 * k + 1], a[4 * k + 3]);
    b[4 * k + 3] = _mm512_unpackhi_epi64(a[4 * k + 1], a[4 * k + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // the 4 x 4 transpose of 128-bit lanes among b[m], b[4 + m], b[8 + m], b[12 + m]
    const __m512i c0 = _mm512_shuffle_i32x4(b[m], b[4 + m], 0x44), c1 = _mm512_shuffle_i32x4(b[m], b[4 + m], 0xee);
    const __m512i c2 = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0x44);
    const __m512i c3 = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0xee);
    out[m] = _mm512_shuffle_i32x4(c0, c2, 0x88);
    out[4 + m] = _mm512_shuffle_i32x4(c0, c2, 0xdd);
    out[8 + m] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    out[12 + m] = _mm512_shuffle_i32x4(c1, c3, 0xdd);
  }
}

// The lower median of each of 16 rows of C keys (keys[r * C + c]), lane r.
template <int C>
__attribute__((target("avx512f"), noinline)) __m512i median_of_16_rows(const uint32_t* keys) {
  __m512i v[C];
  for (int block = 0; block < C / 16; ++block) transpose16x16(keys + 16 * block, C, v + 16 * block);
  sort_half<C / 2>(v);
  sort_half<C / 2>(v + C / 2);
  __m512i median = _mm512_min_epu32(v[0], v[C - 1]);
  for (int i = 1; i < C / 2; ++i) median = _mm512_max_epu32(median, _mm512_min_epu32(v[i], v[C - 1 - i]));
  return median;
}

inline bool avx512_usable() {
  // every extension add_row_avx512 is compiled for, so the vectorised loops cannot fault
  static const bool usable = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("popcnt");
  // MAGNN_CPU_NO_AVX512=1 forces the portable code (tests compare both)
  const char* off = std::getenv("MAGNN_CPU_NO_AVX512");
  return usable && !(off && off[0] && off[0] != '0');
}
#else
inline bool avx512_usable() { return false; }
#endif

// Row-local counts before they are added to the 64-bit histograms: 32-bit
// counters halve the cache lines the increments touch. They are flushed
// before any of them could overflow.
struct RowStatsPartial {
  int shift;
  int64_t channels;
  std::vector<int64_t> hist_abs;
  std::vector<int64_t> hist_ratio;
  std::vector<uint32_t> count_abs, count_ratio;  // pending, not yet in hist_*
  int64_t pending_rows = 0, flush_rows;
  std::vector<uint32_t> keys, select_keys, scratch, ratio_keys;  // 16 spare entries: whole-vector stores
  std::vector<float> ratios;
  bool use_avx512;
  // 32- and 64-channel rows without NaN wait here, 16 at a time, for median_of_16_rows (AVX-512)
  static constexpr int kBatch = 16;
  bool batched;
  std::vector<uint32_t> batch_keys;  // [kBatch, C] |a| bit patterns
  int64_t batch_rows[kBatch];
  int batch_size = 0;
  float* batch_row_ratio = nullptr;
  float* batch_row_max_abs = nullptr;
  int64_t nan_count = 0;
  float max_abs = -1.0f;
  int64_t argmax = -1;

  RowStatsPartial(int mantissa_bits, int64_t channels_)
      : shift(23 - mantissa_bits),
        channels(channels_),
        hist_abs(int64_t(1) << (8 + mantissa_bits), 0),
        hist_ratio(int64_t(1) << (8 + mantissa_bits), 0),
        count_abs(int64_t(1) << (8 + mantissa_bits), 0),
        count_ratio(int64_t(1) << (8 + mantissa_bits), 0),
        flush_rows(std::max<int64_t>(1, int64_t(std::numeric_limits<uint32_t>::max()) / std::max<int64_t>(channels_, 1))),
        keys(channels_),
        select_keys(channels_ + 16),
        scratch(channels_ + 16),
        ratio_keys(channels_ + 16),
        ratios(channels_),
        use_avx512(channels_ >= 16 && avx512_usable()),  // below 16 channels the scalar code is as fast
        batched(use_avx512 && (channels_ == 32 || channels_ == 64)),
        batch_keys(batched ? kBatch * channels_ : 0) {}

  // the worker's max |a| and its flat index (ties: the smaller index)
  void take_max(float value, int64_t flat) {
    if (value > max_abs || (value == max_abs && flat < argmax)) {
      max_abs = value;
      argmax = flat;
    }
  }

  // adds the pending 32-bit counts to the histograms (also done by RowStatsTotal::merge)
  void flush() {
    for (size_t b = 0; b < count_abs.size(); ++b) {
      hist_abs[b] += count_abs[b];
      hist_ratio[b] += count_ratio[b];
    }
    std::fill(count_abs.begin(), count_abs.end(), 0u);
    std::fill(count_ratio.begin(), count_ratio.end(), 0u);
    pending_rows = 0;
  }

  // values: the row as stored, in float32; row: its index in the caller's order.
  // Rows may be held back in a batch: their outputs are written by drain() at the latest
  // (RowStatsTotal::merge calls it).
  void add_row(const float* values, int64_t row, float* row_ratio, float* row_max_abs) {
#ifdef MAGNN_X86_AVX512
    if (batched) {
      return channels == 64 ? add_row_batched<64>(values, row, row_ratio, row_max_abs)
                            : add_row_batched<32>(values, row, row_ratio, row_max_abs);
    }
    if (use_avx512) return add_row_avx512(values, row, row_ratio, row_max_abs);
#endif
    add_row_impl<false>(values, row, row_ratio, row_max_abs);
  }

  // the rows still waiting in a batch, one by one
  void drain() {
#ifdef MAGNN_X86_AVX512
    if (batched) drain_avx512();
#endif
  }

#ifdef MAGNN_X86_AVX512
  // the same code compiled for AVX-512 (the loops vectorise 16 wide), with the vector selection
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt"), noinline)) void add_row_avx512(
      const float* values, int64_t row, float* row_ratio, float* row_max_abs) {
    add_row_impl<true>(values, row, row_ratio, row_max_abs);
  }

  // C = 32 or 64 channels: a row with a NaN goes through add_row_avx512 at once; the others
  // join the batch as |a| bit patterns (the statistics depend on |a| only), 16 of them share
  // one transposed median network, then each finishes with its median known.
  template <int C>
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt"), noinline)) void add_row_batched(
      const float* values, int64_t row, float* row_ratio, float* row_max_abs) {
    constexpr int kVectors = C / 16;
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    __m512i key[kVectors];
    __mmask16 nan = 0;
    for (int r = 0; r < kVectors; ++r) {
      key[r] = _mm512_and_si512(_mm512_loadu_si512(values + 16 * r), magnitude);
      nan |= _mm512_cmpgt_epu32_mask(key[r], inf);
    }
    if (nan) return add_row_impl<true>(values, row, row_ratio, row_max_abs);
    uint32_t* slot = batch_keys.data() + C * batch_size;
    for (int r = 0; r < kVectors; ++r) _mm512_storeu_si512(slot + 16 * r, key[r]);
    batch_rows[batch_size] = row;
    batch_row_ratio = row_ratio;
    batch_row_max_abs = row_max_abs;
    if (++batch_size < kBatch) return;
    alignas(64) uint32_t medians[kBatch];
    _mm512_store_si512(medians, median_of_16_rows<C>(batch_keys.data()));
    batch_size = 0;
    for (int r = 0; r < kBatch; ++r) finish_batched_row<C>(batch_keys.data() + C * r, batch_rows[r], medians[r]);
  }

  // add_row_impl for a batched row: C keys without NaN, the median known
  template <int C>
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt"), always_inline)) inline void
  finish_batched_row(const uint32_t* key, int64_t row, uint32_t median_key) {
    constexpr int kVectors = C / 16;
    if (pending_rows == flush_rows) flush();
    ++pending_rows;
    const __m128i shift_count = _mm_cvtsi32_si128(shift);
    uint32_t* __restrict__ abs_counts = count_abs.data();
    uint32_t* __restrict__ ratio_counts = count_ratio.data();
    __m512i k[kVectors];
    __m512i all_max = _mm512_setzero_si512();
    for (int r = 0; r < kVectors; ++r) {
      k[r] = _mm512_loadu_si512(key + 16 * r);
      all_max = _mm512_max_epu32(all_max, k[r]);
    }
    count_bins<kVectors>(k, shift_count, abs_counts);
    const uint32_t key_max = _mm512_reduce_max_epu32(all_max);
    const float row_max = key_float(key_max);
    batch_row_max_abs[row] = row_max;
    if (row_max >= max_abs) take_max(row_max, row * C + find_first_avx512(key, C, key_max));
    const float median = ratio_divisor(median_key);
    const __m512 divisor = _mm512_set1_ps(median);
    __m512i ratio[kVectors];
    for (int r = 0; r < kVectors; ++r) {
      // a ratio is never negative: its sign bit is clear except for NaN (inf / inf), as in stats_bin
      ratio[r] = _mm512_and_si512(_mm512_castps_si512(_mm512_div_ps(_mm512_castsi512_ps(k[r]), divisor)),
                                  _mm512_set1_epi32(0x7fffffff));
    }
    count_bins<kVectors>(ratio, shift_count, ratio_counts);
    batch_row_ratio[row] = row_max / median;
  }

  // ++counts[bits >> shift] for 16 * kVectors non-negative bit patterns
  template <int kVectors>
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt"), always_inline)) inline void count_bins(
      const __m512i* bits, __m128i shift_count, uint32_t* __restrict__ counts) {
    alignas(64) uint32_t bins[16 * kVectors];
    for (int r = 0; r < kVectors; ++r) _mm512_store_si512(bins + 16 * r, _mm512_srl_epi32(bits[r], shift_count));
#pragma GCC unroll 8
    for (int c = 0; c < 16 * kVectors; ++c) ++counts[bins[c]];
  }

  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt"), noinline)) void drain_avx512() {
    const int waiting = batch_size;
    batch_size = 0;
    for (int r = 0; r < waiting; ++r)
      add_row_impl<true>(reinterpret_cast<const float*>(batch_keys.data() + channels * r), batch_rows[r],
                         batch_row_ratio, batch_row_max_abs);
  }
#endif

  template <bool kAvx512>
  __attribute__((always_inline)) inline void add_row_impl(const float* __restrict__ values, int64_t row,
                                                          float* row_ratio, float* row_max_abs) {
    if (pending_rows == flush_rows) flush();
    ++pending_rows;
    const int64_t C = channels;
    // locals: the counters are uint32_t, which may alias the int members, so the compiler would
    // reload `shift` and the buffers' pointers after every increment
    const int sh = shift;
    uint32_t* __restrict__ abs_counts = count_abs.data();
    uint32_t* __restrict__ ratio_counts = count_ratio.data();
    uint32_t* __restrict__ key = keys.data();
    // |a| as bit patterns: the sign cleared; a NaN is above the pattern of +inf
    constexpr uint32_t kInf = 0x7f800000u;
    uint32_t any_nan = 0, key_max = 0;
    for (int64_t c = 0; c < C; ++c) {
      uint32_t bits;
      std::memcpy(&bits, values + c, sizeof(bits));
      bits &= 0x7fffffffu;
      key[c] = bits;
      any_nan |= static_cast<uint32_t>(bits > kInf);
      key_max = std::max(key_max, bits);
    }
    uint32_t* __restrict__ select = select_keys.data();
    int64_t n_valid = C;
    if (any_nan) {
      // NaN entries are left out of the median and both histograms
      key_max = 0;
      n_valid = 0;
      for (int64_t c = 0; c < C; ++c) {
        const uint32_t k = key[c];
        if (k > kInf) continue;
        select[n_valid++] = k;
        key_max = std::max(key_max, k);
      }
      nan_count += C - n_valid;
    }
    const uint32_t* __restrict__ valid_keys = any_nan ? select : key;
    if (n_valid == 0) {  // all NaN (or no channels)
      row_max_abs[row] = -1.0f;
      row_ratio[row] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    {
      uint32_t* __restrict__ bins = scratch.data();  // bins first (vectorised), then the increments
      for (int64_t c = 0; c < n_valid; ++c) bins[c] = valid_keys[c] >> sh;
#pragma GCC unroll 8
      for (int64_t c = 0; c < n_valid; ++c) ++abs_counts[bins[c]];
    }
    const float row_max = key_float(key_max);
    row_max_abs[row] = row_max;
    if (row_max >= max_abs) {  // only a row that may hold the worker's max needs its argmax
      int64_t row_arg = 0;     // the first channel holding the row's max, like torch.argmax
#ifdef MAGNN_X86_AVX512
      if constexpr (kAvx512) {
        row_arg = find_first_avx512(key, C, key_max);
      } else {
        while (key[row_arg] != key_max) ++row_arg;
      }
#else
      while (key[row_arg] != key_max) ++row_arg;
#endif
      take_max(row_max, row * C + row_arg);
    }
    // torch.median's lower middle value of the non-NaN entries
    // (the selections that reorder their input get a copy)
    uint32_t median_key;
    const int64_t kth = (n_valid - 1) / 2;
#ifdef MAGNN_X86_AVX512
    if constexpr (kAvx512) {
      if (n_valid <= 64) {
        median_key = select_kth_bitonic64(valid_keys, n_valid, kth);
      } else {
        if (!any_nan) std::memcpy(select, key, C * sizeof(uint32_t));
        median_key = select_kth_avx512(select, scratch.data(), ratio_keys.data(), n_valid, kth);
      }
    } else
#endif
    {
      if (!any_nan) std::memcpy(select, key, C * sizeof(uint32_t));
      median_key = select_kth(select, scratch.data(), n_valid, kth);
    }
    const float median = ratio_divisor(median_key);
    float* __restrict__ ratio = ratios.data();
    for (int64_t c = 0; c < C; ++c) ratio[c] = key_float(key[c]) / median;
    if (any_nan) {
      for (int64_t c = 0; c < C; ++c) {
        // a NaN entry stays out; a NaN ratio from a valid entry (inf / inf) is binned
        if (key[c] > kInf) continue;
        ++ratio_counts[stats_bin(ratio[c], sh)];
      }
    } else {
      uint32_t* __restrict__ bins = scratch.data();  // free again after the selection
      for (int64_t c = 0; c < C; ++c) {
        uint32_t bits;
        std::memcpy(&bits, ratio + c, sizeof(bits));
        bins[c] = (bits & 0x7fffffffu) >> sh;
      }
#pragma GCC unroll 8
      for (int64_t c = 0; c < C; ++c) ++ratio_counts[bins[c]];
    }
    // rounding is monotone, so max_c fl(|a_c| / med) = fl(max_c |a_c| / med); inf / inf gives NaN as amax would
    row_ratio[row] = row_max / median;
  }
};

struct RowStatsTotal {
  int64_t* hist_abs;
  int64_t* hist_ratio;
  int64_t num_bins;
  int64_t nan_count = 0;
  float max_abs = -1.0f;
  int64_t argmax = -1;
  std::mutex lock;

  // once per worker, at its end
  void merge(RowStatsPartial& part) {
    part.drain();
    part.flush();
    std::lock_guard<std::mutex> guard(lock);
    for (int64_t b = 0; b < num_bins; ++b) {
      hist_abs[b] += part.hist_abs[b];
      hist_ratio[b] += part.hist_ratio[b];
    }
    nan_count += part.nan_count;
    if (part.argmax >= 0 &&
        (argmax < 0 || part.max_abs > max_abs || (part.max_abs == max_abs && part.argmax < argmax))) {
      max_abs = part.max_abs;
      argmax = part.argmax;
    }
  }
};

}  // namespace magnn_cpu
