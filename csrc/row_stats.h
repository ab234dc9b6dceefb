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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

namespace magnn_cpu {

// float32 bin of a non-negative value. The sign bit is cleared so that a NaN
// produced by inf / inf (which x86 returns with the sign bit set) still lands
// inside the histogram instead of indexing before it.
inline int64_t stats_bin(float value, int shift) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<int64_t>((bits & 0x7fffffffu) >> shift);
}

// Bit pattern of a float32 as uint32: for non-negative values (|a| without
// NaN) the integer order equals the float order.
inline uint32_t float_key(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float key_float(uint32_t key) {
  float value;
  std::memcpy(&value, &key, sizeof(value));
  return value;
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

struct RowStatsPartial {
  int shift;
  int64_t channels;
  std::vector<int64_t> hist_abs;
  std::vector<int64_t> hist_ratio;
  std::vector<float> abs_values;
  std::vector<uint32_t> keys, scratch;  // select_kth buffers
  int64_t nan_count = 0;
  float max_abs = -1.0f;
  int64_t argmax = -1;

  RowStatsPartial(int mantissa_bits, int64_t channels_)
      : shift(23 - mantissa_bits),
        channels(channels_),
        hist_abs(int64_t(1) << (8 + mantissa_bits), 0),
        hist_ratio(int64_t(1) << (8 + mantissa_bits), 0),
        abs_values(channels_),
        keys(channels_),
        scratch(channels_) {}

  // values: the row as stored, in float32; row: its index in the caller's order.
  void add_row(const float* __restrict__ values, int64_t row, float* row_ratio, float* row_max_abs) {
    const int64_t C = channels;
    float* __restrict__ abs_row = abs_values.data();
    for (int64_t c = 0; c < C; ++c) abs_row[c] = std::fabs(values[c]);
    int64_t n_valid = 0;
    float row_max = -1.0f;
    int64_t row_arg = -1;
    uint32_t* __restrict__ key = keys.data();
    for (int64_t c = 0; c < C; ++c) {
      const float a = abs_row[c];
      if (std::isnan(a)) continue;
      key[n_valid++] = float_key(a);
      ++hist_abs[stats_bin(a, shift)];
      if (a > row_max) {  // strict: the first occurrence wins, like torch.argmax
        row_max = a;
        row_arg = c;
      }
    }
    nan_count += C - n_valid;
    row_max_abs[row] = row_max;
    if (n_valid == 0) {
      row_ratio[row] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    const int64_t flat = row * C + row_arg;
    if (row_max > max_abs || (row_max == max_abs && flat < argmax)) {
      max_abs = row_max;
      argmax = flat;
    }
    // torch.median's lower middle value of the non-NaN entries
    float median = key_float(select_kth(key, scratch.data(), n_valid, (n_valid - 1) / 2));
    if (median == 0.0f) median = std::numeric_limits<float>::min();  // 2**-126
    for (int64_t c = 0; c < C; ++c) abs_row[c] = abs_row[c] / median;
    for (int64_t c = 0; c < C; ++c) {
      const float ratio = abs_row[c];
      // NaN entries stay NaN after the division; a NaN ratio from a valid entry (inf / inf) is binned
      if (std::isnan(values[c])) continue;
      ++hist_ratio[stats_bin(ratio, shift)];
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

  void merge(const RowStatsPartial& part) {
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
