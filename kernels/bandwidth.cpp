#include "kernels/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "kernels/parallel.h"

namespace sqz {

double read_bandwidth_cpu(ThreadPool& pool, size_t n_bytes, int reps) {
  const size_t n = n_bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;  // touch every page
  double best = 0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < reps; r++) {
    std::vector<uint64_t> partial(size_t(pool.size()) * 8, 0);
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(int64_t(pool.size()), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) {
        size_t lo = n * size_t(t) / pool.size(), hi = n * size_t(t + 1) / pool.size();
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = lo;
        for (; i + 4 <= hi; i += 4) s0 += buf[i], s1 += buf[i + 1], s2 += buf[i + 2], s3 += buf[i + 3];
        for (; i < hi; i++) s0 += buf[i];
        partial[size_t(t) * 8] = s0 + s1 + s2 + s3;
      }
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (uint64_t p : partial) sink = sink + p;
    best = std::max(best, double(n * sizeof(uint64_t)) / s);
  }
  return best;
}

}  // namespace sqz
