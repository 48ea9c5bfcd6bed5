// Helpers shared by the quantize/ sources (and their tests), beyond the public contract in
// quantize/quantizer.h.
#pragma once
#include <cstdint>
#include <vector>

#include "quantize/quantizer.h"

namespace sqz {

// Index of the entry of c[0..k) (ascending, duplicates allowed) nearest to x; on a tie the
// lower index wins, and among equal centroids the first. Distances are taken in double,
// where the difference of two floats is exact, so "tie" means an exact tie.
inline int nearest_centroid(const float* c, int k, float x) {
  // First centroid >= x (binary search), then compare with its left neighbour.
  int lo = 0, hi = k;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (c[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == k)
    lo = k - 1;  // x above every centroid: the last one (or its first copy)
  else if (lo > 0) {
    double d_right = double(c[lo]) - double(x);
    double d_left = double(x) - double(c[lo - 1]);
    if (d_left <= d_right) lo = lo - 1;
  }
  while (lo > 0 && c[lo - 1] == c[lo]) lo--;  // first of equal copies
  return lo;
}

// Reusable buffers for the 1-D k-means: one per thread, so a module's rows do not pay
// for fresh (page-faulting) allocations each. Holds no state between calls.
struct KMeansWorkspace {
  std::vector<uint64_t> key;                                      // sort keys
  std::vector<double> we;                                         // effective weights
  std::vector<double> dx, dw;                                     // distinct values, summed weights
  std::vector<double> s0, s1, s2;                                 // DP prefix sums
  std::vector<double> prev, cur, buf;                             // DP layers, candidate scratch
  std::vector<int32_t> arg;                                       // DP best splits [k + 1, m + 1]
  std::vector<double> xs, ws, prefix, closest, best_d2, cand_d2;  // Lloyd
  std::vector<int> assign;                                        // Lloyd
};

// The optimal centroids of kmeans_1d_exact before they are rounded to float and sorted, as
// the CUDA version (quantize/quantize_cuda.h) computes them, bit for bit.
std::vector<double> kmeans_1d_exact_centroids(const float* x, const float* w, int n, int k,
                                              KMeansWorkspace& ws);

// kmeans_1d_exact / kmeans_1d_lloyd with caller-owned buffers (same results).
KMeans1D kmeans_1d_exact(const float* x, const float* w, int n, int k, KMeansWorkspace& ws);
KMeans1D kmeans_1d_lloyd(const float* x, const float* w, int n, int k, uint64_t seed, int max_iter,
                         KMeansWorkspace& ws);

// Which rule picked an outlier (bit flags; an entry can be picked by several).
enum OutlierRule : uint8_t {
  OUTLIER_RULE_MAGNITUDE = 1,  // percentile or IQR rule on |w|
  OUTLIER_RULE_SENSITIVE = 2,  // top F
};

struct OutlierSet {
  std::vector<int64_t> pos;   // sorted flat positions r * cols + c
  std::vector<uint8_t> rule;  // per position, OutlierRule flags
};

// select_outliers with the rule(s) behind each position, for the statistics.
// pool: the checks and passes over the module run on it (null: on the caller's thread).
OutlierSet select_outliers_with_rules(const float* w, const float* fisher, int rows, int cols,
                                      const OutlierOptions& o, ThreadPool* pool = nullptr);

}  // namespace sqz
