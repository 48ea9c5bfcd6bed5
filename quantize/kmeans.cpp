// Weighted 1-D k-means: the exact optimum by dynamic programming, and the official
// k-means++ / Lloyd recipe it is compared against (SqueezeLLM quantization/nuq.py runs
// sklearn KMeans per output row).
//
// Both return ascending float centroids and assign every input value to its nearest
// centroid (ties to the lower index); the reported cost is sum w (x - c[assign])^2 with
// those float centroids, in double. Weight-0 values never move a centroid; when every
// weight is 0 both solve (and report the cost of) the unweighted problem.
#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

#include "quantize/quantize_internal.h"
#include "quantize/quantizer.h"

namespace sqz {

namespace {

// The distinct values with positive (effective) weight, ascending, with summed weights.
struct Distinct {
  std::vector<double> x, w;
};

void check_inputs(const char* fn, const float* x, const float* w, int n, int k) {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": n = " + std::to_string(n) + " < 0");
  if (k < 1 || k > 256)
    throw std::invalid_argument(std::string(fn) + ": k = " + std::to_string(k) +
                                " outside 1..256 (assignments are uint8)");
  for (int i = 0; i < n; i++) {
    if (!std::isfinite(x[i]))
      throw std::invalid_argument(std::string(fn) + ": x[" + std::to_string(i) + "] is not finite");
    if (w && !(std::isfinite(w[i]) && w[i] >= 0))
      throw std::invalid_argument(std::string(fn) + ": weight[" + std::to_string(i) + "] = " +
                                  std::to_string(w[i]) + " (expected finite and >= 0)");
  }
}

// Effective weights: w, or 1 everywhere when w is null or all zero.
std::vector<double> effective_weights(const float* w, int n) {
  std::vector<double> we(n, 1.0);
  if (!w) return we;
  bool any = false;
  for (int i = 0; i < n; i++) any |= w[i] > 0;
  if (any)
    for (int i = 0; i < n; i++) we[i] = w[i];
  return we;
}

// Sort (value, weight) pairs, drop weight-0 values (they do not move centroids and are
// assigned afterwards) and merge equal values: rows read from fp16 have many duplicates.
Distinct distinct_values(const float* x, const std::vector<double>& we, int n) {
  std::vector<std::pair<float, double>> p;
  p.reserve(n);
  for (int i = 0; i < n; i++)
    if (we[i] > 0) p.emplace_back(x[i], we[i]);
  std::sort(p.begin(), p.end());  // by value, then weight: deterministic merge order
  Distinct d;
  for (size_t i = 0; i < p.size(); i++) {
    if (!d.x.empty() && d.x.back() == double(p[i].first)) {
      d.w.back() += p[i].second;
    } else {
      d.x.push_back(p[i].first);
      d.w.push_back(p[i].second);
    }
  }
  return d;
}

// Fewer distinct positive-weight values than k: each gets its own centroid and the
// remaining slots repeat the largest one (no data: all zeros), keeping them ascending.
std::vector<double> degenerate_centroids(const Distinct& d, int k) {
  std::vector<double> c(k, d.x.empty() ? 0.0 : d.x.back());
  for (size_t i = 0; i < d.x.size(); i++) c[i] = d.x[i];
  return c;
}

// Rounds the centroids to float (ascending), assigns every value to its nearest one and
// computes the cost with the effective weights.
KMeans1D finish(const float* x, const std::vector<double>& we, int n,
                const std::vector<double>& centroids) {
  KMeans1D r;
  const int k = int(centroids.size());
  r.centroids.resize(k);
  for (int j = 0; j < k; j++) r.centroids[j] = float(centroids[j]);
  std::sort(r.centroids.begin(), r.centroids.end());
  r.assign.resize(n);
  double cost = 0;
  for (int i = 0; i < n; i++) {
    int a = nearest_centroid(r.centroids.data(), k, x[i]);
    r.assign[i] = uint8_t(a);
    double d = double(x[i]) - double(r.centroids[a]);
    cost += we[i] * d * d;
  }
  r.cost = cost;
  return r;
}

// ---- exact: dynamic programming over the sorted distinct values ----
//
// D[c][j] = least cost of splitting the first j distinct values into c clusters
//         = min over i < j of D[c-1][i] + cost(i, j),
// cost(i, j) the weighted within-cluster sum of squares of values i..j-1. In 1-D the
// optimal clusters are contiguous in sorted order, and cost satisfies the quadrangle
// inequality, so the (leftmost) best split i*(j) is non-decreasing in j: each layer is
// computed by divide and conquer (solve the middle j, recurse on each half with the split
// range cut at i*(mid)), O(m log m) cost evaluations per layer, O(k m log m) in all.
//
// cost(i, j) comes from prefix sums S0 = sum w, S1 = sum w x, S2 = sum w x^2 as
// S2 - S1^2 / S0. That subtracts two nearly equal numbers for a tight cluster far from
// the origin, so the values are first centred on their weighted mean (shrinking S2), and
// the result is clamped at 0 (it is a sum of squares).
//
// Fisher weights can span more than 1e16, where a tiny weight would vanish in the prefix
// sum and leave S0[j] - S0[i] = 0 (0/0 below). Inside the DP only, weights are floored at
// 1e-15 of the total, which keeps S0 strictly increasing; a weight that small moves no
// cost by more than the prefix sums' own rounding. Centroids and the reported cost use the
// true weights.
class SegmentCost {
 public:
  explicit SegmentCost(const Distinct& d) {
    const size_t m = d.x.size();
    double sw = 0, swx = 0;
    for (size_t t = 0; t < m; t++) sw += d.w[t], swx += d.w[t] * d.x[t];
    const double centre = swx / sw, w_floor = sw * 1e-15;
    s0_.assign(m + 1, 0.0), s1_.assign(m + 1, 0.0), s2_.assign(m + 1, 0.0);
    for (size_t t = 0; t < m; t++) {
      const double xc = d.x[t] - centre, w = std::max(d.w[t], w_floor);
      s0_[t + 1] = s0_[t] + w;
      s1_[t + 1] = s1_[t] + w * xc;
      s2_[t + 1] = s2_[t] + w * xc * xc;
    }
  }
  // out[i - i_begin] = prev[i] + cost(i, j) for i in [i_begin, i_end]: a branch-free loop
  // the compiler vectorises (the divisions dominate the whole k-means).
  void candidates(const double* prev, int i_begin, int i_end, int j, double* out) const {
    const double a0 = s0_[j], a1 = s1_[j], a2 = s2_[j];
    const double *p0 = s0_.data(), *p1 = s1_.data(), *p2 = s2_.data();
    for (int i = i_begin; i <= i_end; i++) {
      const double w1 = a1 - p1[i];
      const double c = (a2 - p2[i]) - w1 * w1 / (a0 - p0[i]);
      out[i - i_begin] = prev[i] + (c > 0 ? c : 0.0);
    }
  }

 private:
  std::vector<double> s0_, s1_, s2_;
};

// Index of the first minimum of v[0..n).
int first_min(const double* v, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (v[i] < v[best]) best = i;
  return best;
}

struct DpLayer {
  const SegmentCost* cost;
  const double* prev;  // D[c-1][.]
  double* cur;         // D[c][.]
  int32_t* arg;        // best split for each j of this layer
  int min_split;       // c - 1: the first c-1 clusters need c-1 values
  double* buf;         // scratch, m + 1 candidates

  // Solves j in [lo, hi] knowing their best splits lie in [opt_lo, opt_hi].
  void solve(int lo, int hi, int opt_lo, int opt_hi) {
    while (lo <= hi) {
      const int mid = lo + (hi - lo) / 2;
      const int i_begin = std::max(opt_lo, min_split), i_end = std::min(opt_hi, mid - 1);
      cost->candidates(prev, i_begin, i_end, mid, buf);
      const int best = first_min(buf, i_end - i_begin + 1);  // the leftmost best split
      const int best_i = i_begin + best;
      cur[mid] = buf[best];
      arg[mid] = best_i;
      // Recurse on the smaller half, loop on the other: bounded stack depth.
      if (mid - lo < hi - mid) {
        solve(lo, mid - 1, opt_lo, best_i);
        lo = mid + 1, opt_lo = best_i;
      } else {
        solve(mid + 1, hi, best_i, opt_hi);
        hi = mid - 1, opt_hi = best_i;
      }
    }
  }
};

// Optimal centroids (weighted means) of the m > k distinct values.
std::vector<double> exact_centroids(const Distinct& d, int k) {
  const int m = int(d.x.size());
  const SegmentCost cost(d);
  // arg[c][j], c = 2..k: start of the last cluster in the best split of the first j values.
  std::vector<int32_t> arg(size_t(k + 1) * (m + 1), 0);
  std::vector<double> prev(m + 1, 0.0), cur(m + 1, 0.0), buf(m + 1);
  std::vector<double> zero(1, 0.0);
  for (int j = 1; j <= m; j++) cost.candidates(zero.data() - 0, 0, 0, j, &prev[j]);  // one cluster
  for (int c = 2; c <= k; c++) {
    int32_t* arg_c = arg.data() + size_t(c) * (m + 1);
    if (c == k) {
      // Last layer: only j = m is needed.
      cost.candidates(prev.data(), c - 1, m - 1, m, buf.data());
      arg_c[m] = c - 1 + first_min(buf.data(), m - c + 1);
      break;
    }
    // j ranges over [c, m - (k - c)]: every later cluster still needs one value.
    DpLayer layer{&cost, prev.data(), cur.data(), arg_c, c - 1, buf.data()};
    layer.solve(c, m - (k - c), c - 1, m - 1);
    std::swap(prev, cur);
  }
  // Backtrack the cluster boundaries, then take each cluster's weighted mean directly
  // (not from the centred prefix sums, which lose digits for small clusters).
  std::vector<int> start(k + 1);
  start[k] = m;
  for (int c = k; c >= 2; c--) start[c - 1] = arg[size_t(c) * (m + 1) + start[c]];
  start[0] = 0;
  std::vector<double> centroids(k);
  for (int c = 0; c < k; c++) {
    double sw = 0, swx = 0;
    for (int t = start[c]; t < start[c + 1]; t++) sw += d.w[t], swx += d.w[t] * d.x[t];
    centroids[c] = swx / sw;
  }
  return centroids;
}

// ---- Lloyd with k-means++ initialisation ----

// Uniform double in [0, 1) from the top 53 bits: the same on every platform, unlike
// std::uniform_real_distribution.
double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

// First index whose prefix sum exceeds target (target in [0, total)): an entry of zero
// mass is never picked, so neither are weight-0 values or current centres.
int sample_index(const std::vector<double>& prefix, double target) {
  int i = int(std::upper_bound(prefix.begin(), prefix.end(), target) - prefix.begin());
  return std::min(i, int(prefix.size()) - 1);
}

// Greedy k-means++ as in sklearn (_kmeans_plusplus): the first centre drawn with
// probability proportional to w; each next one as the best of 2 + floor(ln k) candidates
// drawn proportional to w * D^2, "best" meaning the lowest resulting potential.
std::vector<double> kmeans_plus_plus(const std::vector<double>& x, const std::vector<double>& w,
                                     int k, std::mt19937_64& rng) {
  const int n = int(x.size());
  const int n_trials = 2 + int(std::log(double(k)));
  std::vector<double> prefix(n), best_d2(n), cand_d2(n), closest(n);
  std::vector<double> centres;
  centres.reserve(k);

  double total = 0;
  for (int i = 0; i < n; i++) prefix[i] = total += w[i];
  centres.push_back(x[sample_index(prefix, uniform01(rng) * total)]);
  double pot = 0;
  for (int i = 0; i < n; i++) {
    double d = x[i] - centres[0];
    closest[i] = d * d;
    pot += w[i] * closest[i];
  }
  for (int c = 1; c < k; c++) {
    double acc = 0;
    for (int i = 0; i < n; i++) prefix[i] = acc += w[i] * closest[i];
    double best_pot = 0;
    int best = -1;
    for (int t = 0; t < n_trials; t++) {
      const int cand = sample_index(prefix, uniform01(rng) * pot);
      double cand_pot = 0;
      for (int i = 0; i < n; i++) {
        double d = x[i] - x[cand];
        cand_d2[i] = std::min(closest[i], d * d);
        cand_pot += w[i] * cand_d2[i];
      }
      if (best < 0 || cand_pot < best_pot) best = cand, best_pot = cand_pot, best_d2.swap(cand_d2);
    }
    centres.push_back(x[best]);
    closest.swap(best_d2);
    pot = best_pot;
  }
  return centres;
}

// Lloyd iterations on centroids kept ascending (in 1-D the update preserves their order).
// A cluster without weight keeps its centroid; stops when no assignment changes.
std::vector<double> lloyd(const std::vector<double>& x, const std::vector<double>& w,
                          std::vector<double> c, int max_iter) {
  const int n = int(x.size()), k = int(c.size());
  std::sort(c.begin(), c.end());
  std::vector<int> assign(n, -1);
  std::vector<double> sw(k), swx(k);
  for (int it = 0; it < max_iter; it++) {
    bool changed = false;
    for (int i = 0; i < n; i++) {
      // Nearest centroid, ties to the lower index (k is small: a binary search).
      int a = int(std::lower_bound(c.begin(), c.end(), x[i]) - c.begin());
      if (a == k) a = k - 1;
      else if (a > 0 && x[i] - c[a - 1] <= c[a] - x[i]) a--;
      if (a != assign[i]) changed = true, assign[i] = a;
    }
    if (!changed) break;
    std::fill(sw.begin(), sw.end(), 0.0);
    std::fill(swx.begin(), swx.end(), 0.0);
    for (int i = 0; i < n; i++) sw[assign[i]] += w[i], swx[assign[i]] += w[i] * x[i];
    for (int j = 0; j < k; j++)
      if (sw[j] > 0) c[j] = swx[j] / sw[j];
    std::sort(c.begin(), c.end());  // a no-op but for rounding at equal means
  }
  return c;
}

}  // namespace

KMeans1D kmeans_1d_exact(const float* x, const float* w, int n, int k) {
  check_inputs("kmeans_1d_exact", x, w, n, k);
  const std::vector<double> we = effective_weights(w, n);
  const Distinct d = distinct_values(x, we, n);
  if (int(d.x.size()) <= k) return finish(x, we, n, degenerate_centroids(d, k));
  return finish(x, we, n, exact_centroids(d, k));
}

KMeans1D kmeans_1d_lloyd(const float* x, const float* w, int n, int k, uint64_t seed,
                         int max_iter) {
  check_inputs("kmeans_1d_lloyd", x, w, n, k);
  const std::vector<double> we = effective_weights(w, n);
  const Distinct d = distinct_values(x, we, n);
  if (int(d.x.size()) <= k) return finish(x, we, n, degenerate_centroids(d, k));
  // The samples in input order (as sklearn sees them), weight-0 ones dropped: they cannot
  // be drawn as centres and do not move means.
  std::vector<double> xs, ws;
  xs.reserve(n), ws.reserve(n);
  for (int i = 0; i < n; i++)
    if (we[i] > 0) xs.push_back(x[i]), ws.push_back(we[i]);
  std::mt19937_64 rng(seed);
  std::vector<double> c = kmeans_plus_plus(xs, ws, k, rng);
  return finish(x, we, n, lloyd(xs, ws, std::move(c), std::max(max_iter, 1)));
}

}  // namespace sqz
