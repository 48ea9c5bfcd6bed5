// Weighted 1-D k-means: the exact optimum by dynamic programming, and the official
// k-means++ / Lloyd recipe it is compared against (SqueezeLLM quantization/nuq.py runs
// sklearn KMeans per output row).
//
// Both return ascending float centroids and assign every input value to its nearest
// centroid (ties to the lower index); the reported cost is sum w (x - c[assign])^2 with
// those float centroids, in double. Weight-0 values never move a centroid; when every
// weight is 0 (or w is null) both solve, and report the cost of, the unweighted problem.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>

#include "quantize/kmeans_dp.h"
#include "quantize/quantize_internal.h"
#include "quantize/quantizer.h"

namespace sqz {

namespace {

void check_inputs(const char* fn, const float* x, const float* w, int n, int k) {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": n = " + std::to_string(n) + " < 0");
  if (k < 1 || k > 256)
    throw std::invalid_argument(std::string(fn) + ": k = " + std::to_string(k) +
                                " outside 1..256 (assignments are uint8)");
  for (int i = 0; i < n; i++) {
    if (!std::isfinite(x[i]))
      throw std::invalid_argument(std::string(fn) + ": x[" + std::to_string(i) + "] is not finite");
    if (w && !(std::isfinite(w[i]) && w[i] >= 0))
      throw std::invalid_argument(std::string(fn) + ": weight[" + std::to_string(i) +
                                  "] = " + std::to_string(w[i]) + " (expected finite and >= 0)");
  }
}

// ws.we = w, or 1 everywhere when w is null or all zero.
void effective_weights(const float* w, int n, KMeansWorkspace& ws) {
  bool any = false;
  for (int i = 0; w && i < n; i++) any |= w[i] > 0;
  ws.we.resize(n);
  for (int i = 0; i < n; i++) ws.we[i] = any ? double(w[i]) : 1.0;
}

// ws.dx / ws.dw: the values with positive weight, sorted, equal ones merged with their
// weights summed (rows read from fp16 have many duplicates). Weight-0 values are left out:
// they do not move centroids and are assigned at the end. The sort key is
// (order-preserving float bits, position): 8-byte keys sort fast, and equal values merge
// in position order, so the sums are deterministic.
void distinct_values(const float* x, int n, KMeansWorkspace& ws) {
  ws.key.clear();
  for (int i = 0; i < n; i++) {
    if (!(ws.we[i] > 0)) continue;
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // negatives reversed, below positives
    ws.key.push_back(uint64_t(u) << 32 | uint32_t(i));
  }
  std::sort(ws.key.begin(), ws.key.end());
  ws.dx.clear(), ws.dw.clear();
  for (uint64_t kv : ws.key) {
    const int i = int(uint32_t(kv));
    if (!ws.dx.empty() && ws.dx.back() == double(x[i])) {  // also merges -0 with +0
      ws.dw.back() += ws.we[i];
    } else {
      ws.dx.push_back(x[i]);
      ws.dw.push_back(ws.we[i]);
    }
  }
}

// At most k distinct positive-weight values: each gets its own centroid and the remaining
// slots repeat the largest one (no data at all: zeros), keeping them ascending.
std::vector<double> degenerate_centroids(const KMeansWorkspace& ws, int k) {
  std::vector<double> c(k, ws.dx.empty() ? 0.0 : ws.dx.back());
  for (size_t i = 0; i < ws.dx.size(); i++) c[i] = ws.dx[i];
  return c;
}

// Rounds the centroids to float (ascending), assigns every value to its nearest one and
// computes the cost with the effective weights.
KMeans1D finish(const float* x, int n, const std::vector<double>& centroids,
                const KMeansWorkspace& ws) {
  KMeans1D r;
  const int k = int(centroids.size());
  r.centroids.resize(k);
  for (int j = 0; j < k; j++) r.centroids[j] = float(centroids[j]);
  std::sort(r.centroids.begin(), r.centroids.end());
  r.assign.resize(n);
  double cost = 0;
  for (int i = 0; i < n; i++) {
    const int a = nearest_centroid(r.centroids.data(), k, x[i]);
    r.assign[i] = uint8_t(a);
    const double d = double(x[i]) - double(r.centroids[a]);
    cost += ws.we[i] * d * d;
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
// range cut at i*(mid)), O(m log m) cost evaluations per layer, O(k m log m) in all
// (m distinct values; a cluster never needs to split equal values).
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
//
// Every sum and cost goes through quantize/kmeans_dp.h, which quantize/kmeans.cu repeats
// exactly (this file is compiled without FMA contraction).
struct SegmentCost {
  const double *s0, *s1, *s2;  // [m + 1] prefix sums

  // out[i - i_begin] = prev[i] + cost(i, j) for i in [i_begin, i_end]: a branch-free loop
  // the compiler vectorises (the divisions dominate the whole k-means).
  void candidates(const double* prev, int i_begin, int i_end, int j, double* out) const {
    for (int i = i_begin; i <= i_end; i++)
      out[i - i_begin] = kmeans_dp_candidate(prev, s0, s1, s2, i, j);
  }
  double candidate(const double* prev, int i, int j) const {
    return kmeans_dp_candidate(prev, s0, s1, s2, i, j);
  }
};

// Blocked sums of dw and dw * dx over [a, b) (the order kmeans_dp.h defines).
void blocked_sums(const double* dx, const double* dw, int a, int b, double* sw, double* swx) {
  double tw = 0, twx = 0;
  for (int t0 = a; t0 < b; t0 += kKMeansChunk) {
    double cw, cwx;
    kmeans_chunk_sums(dx, dw, t0, std::min(b, t0 + kKMeansChunk), &cw, &cwx);
    tw = tw + cw, twx = twx + cwx;
  }
  *sw = tw, *swx = twx;
}

// Index of the first minimum of v[0..n).
int first_min(const double* v, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (v[i] < v[best]) best = i;
  return best;
}

struct DpLayer {
  SegmentCost cost;
  const double* prev;       // D[c-1][.]
  double* cur;              // D[c][.]
  int32_t* arg;             // best split for each j of this layer
  const int32_t* arg_prev;  // best splits of layer c-1 (null for c = 2), valid j <= prev_hi
  int prev_hi;
  int min_split;  // c - 1: the first c-1 clusters need c-1 values
  double* buf;    // scratch, m + 1 candidates

  // Solves j in [lo, hi] knowing their best splits lie in [opt_lo, opt_hi].
  void solve(int lo, int hi, int opt_lo, int opt_hi) {
    while (lo <= hi) {
      const int mid = lo + (hi - lo) / 2;
      // With one cluster more, the last one starts no earlier: i*(c, j) >= i*(c-1, j)
      // (the same quadrangle inequality), a second lower bound.
      int i_begin = std::max(opt_lo, min_split);
      if (arg_prev && mid <= prev_hi) i_begin = std::max(i_begin, int(arg_prev[mid]));
      const int i_end = std::min(opt_hi, mid - 1);
      i_begin = std::min(i_begin, i_end);  // should rounding ever cross the two bounds
      int best_i = i_begin;
      double best;
      if (i_end - i_begin < 16) {
        // Most nodes of the recursion have a handful of candidates: a plain loop beats
        // the vector loop's set-up there.
        best = cost.candidate(prev, i_begin, mid);
        for (int i = i_begin + 1; i <= i_end; i++) {
          const double v = cost.candidate(prev, i, mid);
          if (v < best) best = v, best_i = i;  // strict: the leftmost best split
        }
      } else {
        cost.candidates(prev, i_begin, i_end, mid, buf);
        const int b = first_min(buf, i_end - i_begin + 1);
        best_i += b, best = buf[b];
      }
      cur[mid] = best;
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

// Optimal centroids (weighted means) of the m > k distinct values in ws.dx / ws.dw.
std::vector<double> exact_centroids(int k, KMeansWorkspace& ws) {
  const int m = int(ws.dx.size());
  const double* dx = ws.dx.data();
  const double* dw = ws.dw.data();

  double sw, swx;
  blocked_sums(dx, dw, 0, m, &sw, &swx);
  const double centre = swx / sw, w_floor = sw * 1e-15;
  ws.s0.resize(m + 1), ws.s1.resize(m + 1), ws.s2.resize(m + 1);
  ws.s0[0] = ws.s1[0] = ws.s2[0] = 0;
  // Blocked prefix sums: each chunk's running sums, then the sum of the chunks before it
  // (from 0, left to right) added to every entry of the chunk.
  double b0 = 0, b1 = 0, b2 = 0;
  for (int t0 = 0; t0 < m; t0 += kKMeansChunk) {
    const int t1 = std::min(m, t0 + kKMeansChunk);
    kmeans_prefix_chunk(dx, dw, centre, w_floor, t0, t1, ws.s0.data(), ws.s1.data(), ws.s2.data());
    const double c0 = ws.s0[t1], c1 = ws.s1[t1], c2 = ws.s2[t1];
    for (int t = t0 + 1; t <= t1; t++)
      ws.s0[t] = b0 + ws.s0[t], ws.s1[t] = b1 + ws.s1[t], ws.s2[t] = b2 + ws.s2[t];
    b0 = b0 + c0, b1 = b1 + c1, b2 = b2 + c2;
  }
  const SegmentCost cost{ws.s0.data(), ws.s1.data(), ws.s2.data()};

  // arg[c][j], c = 2..k: start of the last cluster in the best split of the first j
  // values. Only the entries the backtrack reads are ever written and read: no clearing.
  const size_t stride = size_t(m) + 1;
  if (ws.arg.size() < (size_t(k) + 1) * stride) ws.arg.resize((size_t(k) + 1) * stride);
  ws.prev.resize(m + 1), ws.cur.resize(m + 1), ws.buf.resize(m + 1);
  const double no_prefix = 0;                                                  // D[0][0]
  for (int j = 1; j <= m; j++) ws.prev[j] = cost.candidate(&no_prefix, 0, j);  // one cluster
  for (int c = 2; c <= k; c++) {
    int32_t* arg_c = ws.arg.data() + size_t(c) * stride;
    if (c == k) {
      // Last layer: only j = m is needed.
      cost.candidates(ws.prev.data(), c - 1, m - 1, m, ws.buf.data());
      arg_c[m] = c - 1 + first_min(ws.buf.data(), m - c + 1);
      break;
    }
    // j ranges over [c, m - (k - c)]: every later cluster still needs one value.
    const int32_t* arg_prev = c > 2 ? arg_c - stride : nullptr;
    DpLayer layer{cost,     ws.prev.data(),  ws.cur.data(), arg_c,
                  arg_prev, m - (k - c + 1), c - 1,         ws.buf.data()};
    layer.solve(c, m - (k - c), c - 1, m - 1);
    std::swap(ws.prev, ws.cur);
  }
  // Backtrack the cluster boundaries, then take each cluster's weighted mean directly
  // (not from the centred prefix sums, which lose digits for small clusters).
  std::vector<int> start(k + 1);
  start[k] = m;
  for (int c = k; c >= 2; c--) start[c - 1] = ws.arg[size_t(c) * stride + start[c]];
  start[0] = 0;
  std::vector<double> centroids(k);
  for (int c = 0; c < k; c++) {
    double cw, cwx;
    blocked_sums(dx, dw, start[c], start[c + 1], &cw, &cwx);
    centroids[c] = cwx / cw;
  }
  return centroids;
}

// ---- Lloyd with k-means++ initialisation ----

// Uniform double in [0, 1) from the top 53 bits: the same on every platform, unlike
// std::uniform_real_distribution.
double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

// First index whose prefix sum exceeds target (target in [0, total)): an entry of zero
// mass is never picked, so neither are weight-0 values nor current centres.
int sample_index(const std::vector<double>& prefix, double target) {
  int i = int(std::upper_bound(prefix.begin(), prefix.end(), target) - prefix.begin());
  return std::min(i, int(prefix.size()) - 1);
}

// Greedy k-means++ as in sklearn (_kmeans_plusplus) over ws.xs / ws.ws: the first centre
// drawn with probability proportional to w; each next one the best of 2 + floor(ln k)
// candidates drawn proportional to w * D^2, "best" meaning the lowest resulting potential.
std::vector<double> kmeans_plus_plus(int k, std::mt19937_64& rng, KMeansWorkspace& ws) {
  const std::vector<double>& x = ws.xs;
  const std::vector<double>& w = ws.ws;
  const int n = int(x.size());
  const int n_trials = 2 + int(std::log(double(k)));
  ws.prefix.resize(n), ws.closest.resize(n), ws.best_d2.resize(n), ws.cand_d2.resize(n);
  std::vector<double> centres;
  centres.reserve(k);

  double total = 0;
  for (int i = 0; i < n; i++) ws.prefix[i] = total += w[i];
  centres.push_back(x[sample_index(ws.prefix, uniform01(rng) * total)]);
  double pot = 0;
  for (int i = 0; i < n; i++) {
    const double d = x[i] - centres[0];
    ws.closest[i] = d * d;
    pot += w[i] * ws.closest[i];
  }
  for (int c = 1; c < k; c++) {
    double acc = 0;
    for (int i = 0; i < n; i++) ws.prefix[i] = acc += w[i] * ws.closest[i];
    double best_pot = 0;
    int best = -1;
    for (int t = 0; t < n_trials; t++) {
      const int cand = sample_index(ws.prefix, uniform01(rng) * pot);
      double cand_pot = 0;
      for (int i = 0; i < n; i++) {
        const double d = x[i] - x[cand];
        ws.cand_d2[i] = std::min(ws.closest[i], d * d);
        cand_pot += w[i] * ws.cand_d2[i];
      }
      if (best < 0 || cand_pot < best_pot) {
        best = cand, best_pot = cand_pot;
        ws.best_d2.swap(ws.cand_d2);
      }
    }
    centres.push_back(x[best]);
    ws.closest.swap(ws.best_d2);
    pot = best_pot;
  }
  return centres;
}

// Lloyd iterations over ws.xs / ws.ws on centroids kept ascending (in 1-D the update
// preserves their order). A cluster without weight keeps its centroid; stops when no
// assignment changes, or after max_iter updates.
std::vector<double> lloyd(std::vector<double> c, int max_iter, KMeansWorkspace& ws) {
  const std::vector<double>& x = ws.xs;
  const std::vector<double>& w = ws.ws;
  const int n = int(x.size()), k = int(c.size());
  std::sort(c.begin(), c.end());
  ws.assign.assign(n, -1);
  std::vector<double> sw(k), swx(k);
  for (int it = 0; it < max_iter; it++) {
    bool changed = false;
    for (int i = 0; i < n; i++) {
      // Nearest centroid, ties to the lower index (binary search; centroids distinct).
      int a = int(std::lower_bound(c.begin(), c.end(), x[i]) - c.begin());
      if (a == k)
        a = k - 1;
      else if (a > 0 && x[i] - c[a - 1] <= c[a] - x[i])
        a--;
      if (a != ws.assign[i]) changed = true, ws.assign[i] = a;
    }
    if (!changed) break;
    std::fill(sw.begin(), sw.end(), 0.0);
    std::fill(swx.begin(), swx.end(), 0.0);
    for (int i = 0; i < n; i++) sw[ws.assign[i]] += w[i], swx[ws.assign[i]] += w[i] * x[i];
    for (int j = 0; j < k; j++)
      if (sw[j] > 0) c[j] = swx[j] / sw[j];
    std::sort(c.begin(), c.end());  // a no-op but for rounding at equal means
  }
  return c;
}

}  // namespace

std::vector<double> kmeans_1d_exact_centroids(const float* x, const float* w, int n, int k,
                                              KMeansWorkspace& ws) {
  check_inputs("kmeans_1d_exact", x, w, n, k);
  effective_weights(w, n, ws);
  distinct_values(x, n, ws);
  if (int(ws.dx.size()) <= k) return degenerate_centroids(ws, k);
  return exact_centroids(k, ws);
}

KMeans1D kmeans_1d_exact(const float* x, const float* w, int n, int k, KMeansWorkspace& ws) {
  const std::vector<double> c = kmeans_1d_exact_centroids(x, w, n, k, ws);
  return finish(x, n, c, ws);
}

KMeans1D kmeans_1d_lloyd(const float* x, const float* w, int n, int k, uint64_t seed, int max_iter,
                         KMeansWorkspace& ws) {
  check_inputs("kmeans_1d_lloyd", x, w, n, k);
  effective_weights(w, n, ws);
  distinct_values(x, n, ws);
  if (int(ws.dx.size()) <= k) return finish(x, n, degenerate_centroids(ws, k), ws);
  // The samples in input order (as sklearn sees them), weight-0 ones dropped: they cannot
  // be drawn as centres and do not move means.
  ws.xs.clear(), ws.ws.clear();
  for (int i = 0; i < n; i++)
    if (ws.we[i] > 0) ws.xs.push_back(x[i]), ws.ws.push_back(ws.we[i]);
  std::mt19937_64 rng(seed);
  std::vector<double> c = kmeans_plus_plus(k, rng, ws);
  return finish(x, n, lloyd(std::move(c), std::max(max_iter, 1), ws), ws);
}

KMeans1D kmeans_1d_exact(const float* x, const float* w, int n, int k) {
  KMeansWorkspace ws;
  return kmeans_1d_exact(x, w, n, k, ws);
}

KMeans1D kmeans_1d_lloyd(const float* x, const float* w, int n, int k, uint64_t seed,
                         int max_iter) {
  KMeansWorkspace ws;
  return kmeans_1d_lloyd(x, w, n, k, seed, max_iter, ws);
}

}  // namespace sqz
