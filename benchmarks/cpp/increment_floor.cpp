// What one exact histogram increment costs on this CPU, whatever the histogram (issue 15).
//
//   g++ -O3 -march=native -o /tmp/increment_floor benchmarks/cpp/increment_floor.cpp && /tmp/increment_floor
//
// The statistics count every |a| and every ratio of a row in its M = 7 bin (SPEC §4): 128
// increments per 64-channel row. This times those increments alone, from precomputed 16-bit
// bin ids of |products of three normals| (the kernels' benchmark rows), into
//   big:   two 32768-bin uint32 histograms, the kernels' layout;
//   fixed: two 256-bin histograms at fixed, distinct positions per row (always in L1, no bin ids
//          read, no two increments of a row on one counter).
// Best of 7 passes over 200,000 rows, ns per increment. When big ~ fixed, the cost is the
// load-add-store itself, not the histogram's size or cache misses, so no layout makes it cheaper.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

int main() {
  constexpr int kRows = 200000, kChannels = 64, kBins = 32768;
  std::mt19937 generator(1);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> ids(size_t(kRows) * kChannels * 2);  // per row: 64 |a| ids, then 64 ratio-like ids
  for (auto& id : ids) {
    const float a = std::fabs(normal(generator) * normal(generator) * normal(generator));
    uint32_t bits;
    std::memcpy(&bits, &a, sizeof bits);
    id = static_cast<uint16_t>(bits >> (23 - 7));
  }
  std::vector<uint32_t> big(2 * kBins), small(2 * 256);
  const char* names[] = {"big", "fixed"};
  for (int variant = 0; variant < 2; ++variant) {
    double best = 1e30;
    for (int pass = 0; pass < 7; ++pass) {
      const auto start = std::chrono::steady_clock::now();
      const uint16_t* row = ids.data();
      for (int r = 0; r < kRows; ++r, row += 2 * kChannels) {
        for (int c = 0; c < kChannels; ++c) {
          if (variant == 0) {
            ++big[row[c]];
            ++big[kBins + row[kChannels + c]];
          } else {
            ++small[c];
            ++small[256 + ((c * 7) & 255)];
          }
        }
      }
      const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
      best = std::min(best, ns / (double(kRows) * 2 * kChannels));
    }
    uint64_t total = 0;  // keeps the counts live
    for (uint32_t count : variant == 0 ? big : small) total += count;
    std::printf("%-5s %.3f ns per increment (%llu counted)\n", names[variant], best,
                static_cast<unsigned long long>(total));
  }
}
