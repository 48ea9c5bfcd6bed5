// quantize/: exact and Lloyd 1-D k-means, outlier selection, quantize_linear (SQUEEZE and
// RTN), dequantize. Run: ctest -R test_quantizer (the 4096x4096 timing is a disabled test:
// test_quantizer --gtest_also_run_disabled_tests --gtest_filter='*Bench*').
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <set>
#include <vector>

#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "model/dtype.h"
#include "quantize/quantizer.h"
#include "quantize_test_util.h"

namespace sqz {
namespace {

float to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Effective weights: w, or 1 everywhere when all are 0 (the k-means contract).
std::vector<double> effective(const std::vector<float>& w) {
  bool any = std::any_of(w.begin(), w.end(), [](float v) { return v > 0; });
  std::vector<double> e(w.size(), 1.0);
  if (any)
    for (size_t i = 0; i < w.size(); i++) e[i] = w[i];
  return e;
}

// Within-cluster weighted sum of squares of a partition, each cluster at its weighted
// mean (double): the k-means objective independent of how centroids were rounded.
double partition_cost(const std::vector<float>& x, const std::vector<double>& we,
                      const std::vector<uint8_t>& assign, int k) {
  std::vector<double> sw(k, 0), swx(k, 0);
  for (size_t i = 0; i < x.size(); i++) sw[assign[i]] += we[i], swx[assign[i]] += we[i] * x[i];
  double cost = 0;
  for (size_t i = 0; i < x.size(); i++) {
    int a = assign[i];
    if (sw[a] == 0) continue;
    double d = x[i] - swx[a] / sw[a];
    cost += we[i] * d * d;
  }
  return cost;
}

// Optimum by enumeration: every split of the sorted positive-weight values into at most k
// contiguous groups.
double brute_force_cost(const std::vector<float>& x, const std::vector<double>& we, int k) {
  std::vector<std::pair<double, double>> p;
  for (size_t i = 0; i < x.size(); i++)
    if (we[i] > 0) p.emplace_back(x[i], we[i]);
  std::sort(p.begin(), p.end());
  const int n = int(p.size());
  if (n == 0) return 0;
  double best = INFINITY;
  for (uint32_t cuts = 0; cuts < (1u << (n - 1)); cuts++) {
    if (__builtin_popcount(cuts) > k - 1) continue;
    double cost = 0;
    int start = 0;
    for (int i = 1; i <= n; i++) {
      if (i < n && !(cuts >> (i - 1) & 1)) continue;
      double sw = 0, swx = 0;
      for (int t = start; t < i; t++) sw += p[t].second, swx += p[t].second * p[t].first;
      for (int t = start; t < i; t++) {
        double d = p[t].first - swx / sw;
        cost += p[t].second * d * d;
      }
      start = i;
    }
    best = std::min(best, cost);
  }
  return best;
}

// Every value sits at its nearest centroid, ties to the lower index.
void expect_nearest(const std::vector<float>& x, const KMeans1D& km) {
  const int k = int(km.centroids.size());
  for (size_t i = 0; i < x.size(); i++) {
    int a = km.assign[i];
    double da = std::fabs(double(x[i]) - km.centroids[a]);
    for (int j = 0; j < k; j++) {
      double dj = std::fabs(double(x[i]) - km.centroids[j]);
      if (j < a) {
        EXPECT_GT(dj, da) << "value " << i << " tie not resolved to the lower index";
      } else {
        EXPECT_GE(dj, da) << "value " << i << " not at its nearest centroid";
      }
    }
  }
}

// ---- exact k-means ----

TEST(KMeansExact, MatchesBruteForceOnSmallRows) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int trial = 0; trial < 3000; trial++) {
    const int n = 1 + int(rng() % 12), k = 2 + int(rng() % 3);
    const bool dup = trial % 2 == 0;  // values from a small set: many duplicates
    std::vector<float> x(n), w(n);
    for (int i = 0; i < n; i++) {
      x[i] = dup ? float(int(rng() % 5) - 2) * 0.25f : u(rng);
      w[i] = rng() % 4 == 0 ? 0.0f : 0.01f + std::fabs(u(rng));
    }
    if (trial % 17 == 0) std::fill(w.begin(), w.end(), 0.0f);  // all zero: unweighted
    const KMeans1D km = kmeans_1d_exact(x.data(), w.data(), n, k);
    ASSERT_EQ(int(km.centroids.size()), k);
    ASSERT_EQ(int(km.assign.size()), n);
    EXPECT_TRUE(std::is_sorted(km.centroids.begin(), km.centroids.end()));
    expect_nearest(x, km);

    const std::vector<double> we = effective(w);
    const double opt = brute_force_cost(x, we, k);
    double total = 0;  // the one-cluster cost sets the scale of the tolerance
    {
      std::vector<uint8_t> one(n, 0);
      total = partition_cost(x, we, one, 1);
    }
    EXPECT_NEAR(partition_cost(x, we, km.assign, k), opt, 1e-9 * total + 1e-15)
        << "trial " << trial << " n " << n << " k " << k;
    EXPECT_NEAR(km.cost, opt, 1e-6 * total + 1e-12) << "trial " << trial;

    // At most k distinct positive-weight values: each is a centroid (exactly).
    std::set<float> distinct;
    for (int i = 0; i < n; i++)
      if (we[i] > 0) distinct.insert(x[i]);
    if (int(distinct.size()) <= k) {
      for (float v : distinct) {
        EXPECT_TRUE(std::count(km.centroids.begin(), km.centroids.end(), v) >= 1)
            << "trial " << trial << " value " << v;
      }
    }
  }
}

TEST(KMeansExact, DegenerateInputs) {
  // No values: k zeros.
  KMeans1D km = kmeans_1d_exact(nullptr, nullptr, 0, 4);
  EXPECT_EQ(km.centroids, std::vector<float>(4, 0.0f));
  EXPECT_TRUE(km.assign.empty());

  // Fewer distinct values than k: one centroid each, the rest copies (ascending).
  std::vector<float> x = {0.5f, -1.0f, 0.5f, 2.0f, -1.0f}, w = {1, 1, 2, 0, 3};
  km = kmeans_1d_exact(x.data(), w.data(), 5, 4);
  EXPECT_EQ(km.centroids, (std::vector<float>{-1.0f, 0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(km.assign[3], 3 - 2);  // weight 0 (2.0): nearest centroid, first of the copies
  EXPECT_EQ(km.cost, 0.0);         // only the weight-0 value is off its centroid

  // All weights 0: the unweighted problem.
  std::vector<float> zeros(5, 0.0f);
  KMeans1D a = kmeans_1d_exact(x.data(), zeros.data(), 5, 2);
  KMeans1D b = kmeans_1d_exact(x.data(), nullptr, 5, 2);
  EXPECT_EQ(a.centroids, b.centroids);
  EXPECT_EQ(a.assign, b.assign);
  EXPECT_EQ(a.cost, b.cost);

  // Weight-0 values do not move centroids.
  std::vector<float> x2 = {0.0f, 0.1f, 1.0f, 1.2f, 5.0f, 7.0f, -3.0f};
  std::vector<float> w2 = {1, 2, 1, 1, 0, 0, 0};
  KMeans1D c = kmeans_1d_exact(x2.data(), w2.data(), 7, 2);
  KMeans1D d = kmeans_1d_exact(x2.data(), w2.data(), 4, 2);
  EXPECT_EQ(c.centroids, d.centroids);
  EXPECT_EQ(c.assign[4], 1);
  EXPECT_EQ(c.assign[6], 0);

  EXPECT_THROW(kmeans_1d_exact(x.data(), w.data(), 5, 0), std::invalid_argument);
  std::vector<float> bad = {1.0f, NAN};
  EXPECT_THROW(kmeans_1d_exact(bad.data(), nullptr, 2, 2), std::invalid_argument);
  std::vector<float> neg = {1.0f, -1.0f};
  EXPECT_THROW(kmeans_1d_exact(x.data(), neg.data(), 2, 2), std::invalid_argument);
}

// Gaussian values with a heavy tail (2% scaled by 8), like a weight row.
std::vector<float> heavy_tailed_row(std::mt19937_64& rng, int n, float scale) {
  std::normal_distribution<float> g(0, scale);
  std::vector<float> x(n);
  for (int i = 0; i < n; i++) x[i] = g(rng) * (rng() % 50 == 0 ? 8.0f : 1.0f);
  return x;
}

TEST(KMeansExact, LongRowIsFast) {
  std::mt19937_64 rng(2);
  std::vector<float> x = heavy_tailed_row(rng, 11008, 0.02f), w(11008);
  std::lognormal_distribution<float> ln(0, 2);
  for (float& v : w) v = ln(rng);
  std::vector<float> x16(x.size());
  for (size_t i = 0; i < x.size(); i++) x16[i] = to_f16(x[i]);

  // Best of 3 calls each (the machine is shared; a single call also pays first-touch
  // page faults for its buffers).
  KMeans1D e, e16, l;
  double ms_exact = 1e9, ms_exact16 = 1e9, ms_lloyd = 1e9;
  for (int rep = 0; rep < 3; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    e = kmeans_1d_exact(x.data(), w.data(), 11008, 16);
    ms_exact = std::min(ms_exact, ms_since(t0));
    t0 = std::chrono::steady_clock::now();
    e16 = kmeans_1d_exact(x16.data(), w.data(), 11008, 16);
    ms_exact16 = std::min(ms_exact16, ms_since(t0));
    t0 = std::chrono::steady_clock::now();
    l = kmeans_1d_lloyd(x.data(), w.data(), 11008, 16, 0);
    ms_lloyd = std::min(ms_lloyd, ms_since(t0));
  }
  const KMeans1D l16 = kmeans_1d_lloyd(x16.data(), w.data(), 11008, 16, 0);
  std::printf(
      "[ info ] 11008 values, k = 16, best of 3: exact %.2f ms (all distinct fp32 values), "
      "%.2f ms (fp16 values), Lloyd %.2f ms; cost exact %.6g, Lloyd %.6g\n",
      ms_exact, ms_exact16, ms_lloyd, e.cost, l.cost);
  EXPECT_LE(e.cost, l.cost * (1 + 1e-9));
  EXPECT_LE(e16.cost, l16.cost * (1 + 1e-9));
  EXPECT_LT(ms_exact, 200.0);  // a few ms here; generous for a loaded machine
}

// ---- Lloyd ----

TEST(KMeansLloyd, ExactIsNeverWorse) {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<float> ln(0, 1.5);
  for (int k : {8, 16}) {
    int strictly_better = 0;
    double max_gain = 0;
    for (int row = 0; row < 200; row++) {
      std::vector<float> x = heavy_tailed_row(rng, 512, 1.0f), w(512);
      for (float& v : w) v = ln(rng);
      const KMeans1D e = kmeans_1d_exact(x.data(), w.data(), 512, k);
      const KMeans1D l = kmeans_1d_lloyd(x.data(), w.data(), 512, k, row);
      expect_nearest(x, l);
      ASSERT_TRUE(std::is_sorted(l.centroids.begin(), l.centroids.end()));
      const std::vector<double> we = effective(w);
      const double ce = partition_cost(x, we, e.assign, k);
      const double cl = partition_cost(x, we, l.assign, k);
      EXPECT_LE(ce, cl * (1 + 1e-12)) << "k " << k << " row " << row;
      EXPECT_LE(e.cost, l.cost * (1 + 1e-9)) << "k " << k << " row " << row;
      if (ce < cl * (1 - 1e-12)) strictly_better++;
      max_gain = std::max(max_gain, cl / ce - 1);
    }
    std::printf(
        "[ info ] k = %d: exact strictly better than k-means++/Lloyd on %d of 200 rows "
        "(largest gain %.2f%% of the cost)\n",
        k, strictly_better, 100 * max_gain);
  }
}

TEST(KMeansLloyd, DeterministicPerSeed) {
  std::mt19937_64 rng(4);
  std::vector<float> x = heavy_tailed_row(rng, 300, 1.0f);
  KMeans1D a = kmeans_1d_lloyd(x.data(), nullptr, 300, 8, 7);
  KMeans1D b = kmeans_1d_lloyd(x.data(), nullptr, 300, 8, 7);
  EXPECT_EQ(a.centroids, b.centroids);
  EXPECT_EQ(a.assign, b.assign);
  // Degenerate inputs take the exact path's answer.
  std::vector<float> few = {1, 1, 2};
  EXPECT_EQ(kmeans_1d_lloyd(few.data(), nullptr, 3, 4, 0).centroids,
            (std::vector<float>{1, 2, 2, 2}));
}

// ---- outliers ----

TEST(Outliers, PercentileRule) {
  // |w| grows with the position, signs alternate.
  std::vector<float> w(1000);
  for (int i = 0; i < 1000; i++) w[i] = (i % 2 ? -1.0f : 1.0f) * float(i + 1) * 1e-3f;
  OutlierOptions o;
  o.magnitude_pct = 0.5;  // floor(5.0) = 5
  EXPECT_EQ(select_outliers(w.data(), nullptr, 10, 100, o),
            (std::vector<int64_t>{995, 996, 997, 998, 999}));
  o.magnitude_pct = 1.25;  // floor(12.5) = 12
  EXPECT_EQ(select_outliers(w.data(), nullptr, 10, 100, o).size(), 12u);

  // Ties at the cut-off: the lowest positions win.
  std::vector<float> flat(200, 1.0f);
  flat[150] = -2.0f;
  o.magnitude_pct = 2;  // 4 entries: 150, then three of the tied ones
  EXPECT_EQ(select_outliers(flat.data(), nullptr, 2, 100, o), (std::vector<int64_t>{0, 1, 2, 150}));

  // A percentage meant to give an integer count is not floored one short.
  std::vector<float> big(20000);
  for (int i = 0; i < 20000; i++) big[i] = float(i);
  for (double pct : {0.45, 0.05, 0.4, 0.35, 0.15}) {
    o.magnitude_pct = pct;
    EXPECT_EQ(int64_t(select_outliers(big.data(), nullptr, 100, 200, o).size()),
              int64_t(std::llround(pct * 200)))
        << pct;
  }
}

TEST(Outliers, IqrRule) {
  // Sorted: -10 -1 -0.5 0 0.5 1 4.5 30. numpy linear quantiles: q1 at 1.75 -> -0.625,
  // q3 at 5.25 -> 1 + 0.25 * 3.5 = 1.875, IQR = 2.5.
  //   r = 1.5: T = max(|-0.625 - 3.75|, |1.875 + 3.75|) = 5.625 -> -10, 30
  //   r = 1.0: T = max(3.125, 4.375) = 4.375                     -> -10, 4.5, 30
  std::vector<float> w = {0.5f, -10.0f, 1.0f, -0.5f, 30.0f, 0.0f, 4.5f, -1.0f};
  OutlierOptions o;
  o.iqr_range = 1.5;
  EXPECT_EQ(select_outliers(w.data(), nullptr, 2, 4, o), (std::vector<int64_t>{1, 4}));
  o.iqr_range = 1.0;
  EXPECT_EQ(select_outliers(w.data(), nullptr, 2, 4, o), (std::vector<int64_t>{1, 4, 6}));

  // A larger module against a full-sort reference.
  std::mt19937_64 rng(5);
  std::vector<float> x = heavy_tailed_row(rng, 5001, 0.02f);
  std::vector<float> s = x;
  std::sort(s.begin(), s.end());
  auto q = [&](double p) {
    double pos = p * (s.size() - 1);
    size_t lo = size_t(pos);
    return s[lo] + (pos - lo) * (double(s[lo + 1]) - s[lo]);
  };
  const double iqr = q(0.75) - q(0.25);
  const double t = std::max(std::fabs(q(0.25) - 1.8 * iqr), std::fabs(q(0.75) + 1.8 * iqr));
  std::vector<int64_t> expect;
  for (int i = 0; i < 5001; i++)
    if (std::fabs(x[i]) > t) expect.push_back(i);
  o.iqr_range = 1.8;
  EXPECT_EQ(select_outliers(x.data(), nullptr, 3, 1667, o), expect);
  EXPECT_GT(expect.size(), 0u);
}

TEST(Outliers, SensitiveAndUnion) {
  const int rows = 10, cols = 100;
  std::vector<float> w(rows * cols), f(rows * cols);
  for (int i = 0; i < rows * cols; i++) {
    w[i] = float(i) * 1e-3f;          // the top |w| are the last positions
    f[i] = float((i * 7919) % 1000);  // a permutation of 0..999
  }
  OutlierOptions o;
  o.sensitive_pct = 0.3;  // F = 999, 998, 997
  std::vector<int64_t> expect;
  for (int i = 0; i < rows * cols; i++)
    if (f[i] >= 997) expect.push_back(i);
  std::sort(expect.begin(), expect.end());
  EXPECT_EQ(select_outliers(w.data(), f.data(), rows, cols, o), expect);

  o.magnitude_pct = 0.5;  // positions 995..999, plus the sensitive ones
  std::set<int64_t> u(expect.begin(), expect.end());
  for (int i = 995; i < 1000; i++) u.insert(i);
  EXPECT_EQ(select_outliers(w.data(), f.data(), rows, cols, o),
            std::vector<int64_t>(u.begin(), u.end()));

  EXPECT_THROW(select_outliers(w.data(), nullptr, rows, cols, o), std::invalid_argument);
  o.magnitude_pct = 101;
  EXPECT_THROW(select_outliers(w.data(), f.data(), rows, cols, o), std::invalid_argument);
}

// ---- quantize_linear ----

struct TestModule {
  int rows, cols;
  std::vector<float> w, f;
};

// fp16-representable weights in three kinds of rows: centred (scale 0.02), shifted away
// from zero (0.5 +- 0.05: the centroid nearest zero is far from it, so snapping moves it)
// and tiny (scale 1e-5: fp16 subnormals). Planted: huge outliers (100x the row scale, both
// signs) and sensitive entries (huge F) at ordinary values.
TestModule make_module(int rows, int cols, uint64_t seed) {
  TestModule m{rows, cols, std::vector<float>(size_t(rows) * cols),
               std::vector<float>(size_t(rows) * cols)};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0, 1);
  std::lognormal_distribution<float> ln(0, 1.5);
  for (int r = 0; r < rows; r++) {
    const int kind = r % 3;
    const float scale = kind == 0 ? 0.02f : kind == 1 ? 0.05f : 1e-5f;
    const float shift = kind == 1 ? 0.5f : 0.0f;
    for (int c = 0; c < cols; c++) {
      float v = shift + scale * g(rng);
      if (rng() % 100 == 0) v = (rng() % 2 ? 100.0f : -100.0f) * scale * (1 + 0.1f * g(rng));
      m.w[size_t(r) * cols + c] = to_f16(v);
      float f = 1e-6f * ln(rng);
      if (rng() % 150 == 0) f *= 1e4f;  // sensitive
      m.f[size_t(r) * cols + c] = f;
    }
  }
  return m;
}

std::vector<uint8_t> unpacked(const QuantizedLinear& q) {
  std::vector<uint8_t> idx(size_t(q.rows) * q.cols);
  const int64_t rb = packed_row_bytes(q.cols, q.bits);
  for (int r = 0; r < q.rows; r++)
    unpack_row(q.indices.data() + r * rb, q.cols, q.bits, idx.data() + size_t(r) * q.cols);
  return idx;
}

// The structural and exactness checks every SQUEEZE result must pass.
void check_squeeze(const QuantizedLinear& q, const float* w, const float* f, int rows, int cols,
                   const LinearQuantOptions& o) {
  const int k = 1 << o.bits;
  ASSERT_EQ(q.rows, rows);
  ASSERT_EQ(q.cols, cols);
  ASSERT_EQ(q.bits, o.bits);
  ASSERT_EQ(q.lut.size(), size_t(rows) * k);
  ASSERT_EQ(q.indices.size(), size_t(rows * packed_row_bytes(cols, o.bits)));
  ASSERT_EQ(q.row_ptr.size(), size_t(rows) + 1);

  // CSR = the selected outliers, ascending columns.
  const std::vector<int64_t> pos = select_outliers(w, f, rows, cols, o.outliers);
  std::vector<int64_t> csr;
  for (int r = 0; r < rows; r++)
    for (int t = q.row_ptr[r]; t < q.row_ptr[r + 1]; t++) {
      if (t > q.row_ptr[r]) {
        EXPECT_LT(q.col_idx[t - 1], q.col_idx[t]);
      }
      csr.push_back(int64_t(r) * cols + q.col_idx[t]);
    }
  EXPECT_EQ(csr, pos);
  std::vector<uint8_t> is_outlier(size_t(rows) * cols, 0);
  for (int64_t p : pos) is_outlier[p] = 1;

  const std::vector<float> d = dequantize(q);
  const std::vector<uint8_t> idx = unpacked(q);
  double sq_err = 0, w_err = 0;
  for (int r = 0; r < rows; r++) {
    float lut[16];
    for (int j = 0; j < k; j++) lut[j] = f16_to_f32(q.lut[size_t(r) * k + j]);
    EXPECT_TRUE(std::is_sorted(lut, lut + k)) << "row " << r;
    for (int c = 0; c < cols; c++) {
      const size_t i = size_t(r) * cols + c;
      const int a = idx[i];
      ASSERT_LT(a, k);
      if (is_outlier[i]) {
        // D + S == W bit for bit.
        EXPECT_EQ(std::memcmp(&d[i], &w[i], 4), 0)
            << "outlier row " << r << " col " << c << ": " << d[i] << " vs " << w[i];
      } else {
        EXPECT_EQ(d[i], lut[a]);
        for (int j = 0; j < k; j++) {
          const double dj = std::fabs(double(w[i]) - lut[j]), da = std::fabs(double(w[i]) - lut[a]);
          if (j < a) {
            EXPECT_GT(dj, da) << "row " << r << " col " << c;
          } else {
            EXPECT_GE(dj, da) << "row " << r << " col " << c;
          }
        }
      }
      const double e = double(w[i]) - d[i];
      sq_err += e * e;
      w_err += (f ? f[i] : 1.0) * e * e;
    }
  }
  EXPECT_NEAR(q.sq_err, sq_err, 1e-9 * sq_err + 1e-30);
  EXPECT_NEAR(q.weighted_err, w_err, 1e-9 * w_err + 1e-30);
  // With lut_grid (3/4 bits), the rows off the grid are the ones counted.
  int64_t off = 0;
  for (int r = 0; r < rows; r++) {
    uint8_t g[32];
    off += lut_grid_row(q.lut.data() + size_t(r) * k, o.bits, g) ? 0 : 1;
  }
  EXPECT_EQ(q.n_off_grid, o.lut_grid && lut_grid_used(o.bits) ? off : 0);
}

// The LUT grid (LinearQuantOptions::lut_grid, on by default; 4 bits). Rows of normal
// weights: every row on a grid, the weighted error within 1% of the plain centroids'; off,
// the centroids are the k-means' own (rows off any grid). make_module's rows with planted huge
// weights and no outliers taken out: a grid fine enough for the far centroids would move the
// close ones by more than kLutGridMaxMove, so those rows keep theirs and are counted. 3 bits:
// no grid (lut_grid_used), the same file either way.
TEST(QuantizeLinear, LutGrid) {
  ThreadPool pool(2);
  TestModule normal{40, 500, std::vector<float>(20000), std::vector<float>(20000)};
  std::mt19937_64 rng(9);
  std::normal_distribution<float> g(0, 1);
  for (size_t i = 0; i < normal.w.size(); i++)
    normal.w[i] = to_f16(0.02f * g(rng)), normal.f[i] = 1e-6f * (1 + std::fabs(g(rng)));
  const TestModule planted = make_module(30, 300, 6);
  const TestModule& m = normal;
  LinearQuantOptions o;
  o.bits = 4;
  ASSERT_TRUE(o.lut_grid);
  const QuantizedLinear on = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, pool);
  check_squeeze(on, m.w.data(), m.f.data(), m.rows, m.cols, o);
  EXPECT_EQ(on.n_off_grid, 0);
  const QuantizedLinear p =
      quantize_linear(planted.w.data(), planted.f.data(), planted.rows, planted.cols, o, pool);
  check_squeeze(p, planted.w.data(), planted.f.data(), planted.rows, planted.cols, o);
  EXPECT_GT(p.n_off_grid, 0);
  o.lut_grid = false;
  const QuantizedLinear off = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, pool);
  check_squeeze(off, m.w.data(), m.f.data(), m.rows, m.cols, o);
  int64_t off_rows = 0;
  for (int r = 0; r < m.rows; r++) {
    uint8_t gr[32];
    off_rows += lut_grid_row(off.lut.data() + (size_t(r) << 4), 4, gr) ? 0 : 1;
  }
  EXPECT_GT(off_rows, m.rows / 2);
  EXPECT_NE(on.lut, off.lut);
  EXPECT_LE(on.weighted_err, 1.01 * off.weighted_err);

  o.bits = 3;
  const QuantizedLinear off3 = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, pool);
  o.lut_grid = true;
  const QuantizedLinear on3 = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, pool);
  EXPECT_EQ(on3.lut, off3.lut);
  EXPECT_EQ(on3.n_off_grid, 0);
}

TEST(QuantizeLinear, OutliersExactAndIndicesNearest) {
  ThreadPool pool(2);
  const TestModule m = make_module(30, 300, 6);
  for (int bits : {2, 3, 4})
    for (bool with_f : {true, false})
      for (bool iqr : {false, true}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + (with_f ? " fisher" : " no fisher") +
                     (iqr ? " iqr" : " percentile"));
        LinearQuantOptions o;
        o.bits = bits;
        if (iqr)
          o.outliers.iqr_range = 2.0;
        else
          o.outliers.magnitude_pct = 0.5;
        if (with_f) o.outliers.sensitive_pct = 0.5;
        o.exact_kmeans = bits != 3 || with_f;  // one Lloyd run per bit width family
        const float* f = with_f ? m.f.data() : nullptr;
        const QuantizedLinear q = quantize_linear(m.w.data(), f, m.rows, m.cols, o, pool);
        check_squeeze(q, m.w.data(), f, m.rows, m.cols, o);
        EXPECT_GT(q.n_magnitude, 0);
        if (with_f) {
          EXPECT_GT(q.n_sensitive, 0);
        }
        EXPECT_EQ(q.n_magnitude + q.n_sensitive, int64_t(q.col_idx.size()));
        double norm = 0;
        for (float v : m.w) norm += double(v) * v;
        EXPECT_NEAR(q.sq_norm, norm, 1e-12 * norm);
      }
}

TEST(QuantizeLinear, OverlapCountedAsSensitive) {
  ThreadPool pool(1);
  std::vector<float> w = {0.1f, 5.0f, 0.2f, -0.1f, 0.3f, 0.0f, 0.1f, 0.25f};
  std::vector<float> f = {0, 9, 0, 0, 0, 0, 0, 8};  // 5.0 is both huge and sensitive
  LinearQuantOptions o;
  o.bits = 2;
  o.outliers.magnitude_pct = 12.5;  // 1 entry: 5.0
  o.outliers.sensitive_pct = 25;    // 2 entries: 5.0, 0.25
  const QuantizedLinear q = quantize_linear(w.data(), f.data(), 1, 8, o, pool);
  EXPECT_EQ(q.n_sensitive, 2);
  EXPECT_EQ(q.n_magnitude, 0);
  check_squeeze(q, w.data(), f.data(), 1, 8, o);
}

TEST(QuantizeLinear, SameResultWithOneAndThreeThreads) {
  ThreadPool one(1), three(3);
  const TestModule m = make_module(40, 200, 7);
  for (bool exact : {true, false}) {
    LinearQuantOptions o;
    o.bits = 3;
    o.exact_kmeans = exact;
    o.seed = 11;
    o.outliers.magnitude_pct = 0.4;
    o.outliers.sensitive_pct = 0.05;
    const QuantizedLinear a = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, one);
    const QuantizedLinear b = quantize_linear(m.w.data(), m.f.data(), m.rows, m.cols, o, three);
    test::expect_same_quantized(a, b);
  }
}

TEST(QuantizeLinear, GradientsLowerTheWeightedError) {
  ThreadPool pool(2);
  const int rows = 32, cols = 256;
  std::mt19937_64 rng(8);
  std::vector<float> w = heavy_tailed_row(rng, rows * cols, 0.02f), f(rows * cols);
  std::lognormal_distribution<float> ln(0, 2);
  for (int i = 0; i < rows * cols; i++) w[i] = to_f16(w[i]), f[i] = ln(rng);
  for (bool exact : {true, false}) {
    LinearQuantOptions o;
    o.bits = 3;
    o.exact_kmeans = exact;
    const QuantizedLinear with_f = quantize_linear(w.data(), f.data(), rows, cols, o, pool);
    const QuantizedLinear without = quantize_linear(w.data(), nullptr, rows, cols, o, pool);
    const std::vector<float> d = dequantize(without);
    double err_without = 0;  // the plain k-means result on the gradient-weighted metric
    for (int i = 0; i < rows * cols; i++)
      err_without += f[i] * (double(w[i]) - d[i]) * (double(w[i]) - d[i]);
    std::printf(
        "[ info ] %s, 3 bits: weighted error with F %.4g, without %.4g; plain error "
        "with F %.4g, without %.4g\n",
        exact ? "exact" : "Lloyd", with_f.weighted_err, err_without, with_f.sq_err, without.sq_err);
    EXPECT_LT(with_f.weighted_err, err_without);
    EXPECT_LT(without.sq_err, with_f.sq_err);  // and the other way round on the plain metric
  }
}

// An outlier whose residual w - c0 lands in a coarser binade than w itself, with c0 on
// the other side of zero: no snapped c0 is exact, so c0 becomes 0.
TEST(QuantizeLinear, OutlierFallsBackToZeroCentroid) {
  ThreadPool pool(1);
  std::vector<float> w(64, to_f16(-0.99951171875f)), f(64, 1.0f);
  w[5] = 1.0009765625f;  // 1 + 2^-10: w - c0 ~ 2.0005 needs a 2^-10 step in [2, 4)
  f[5] = 100.0f;
  LinearQuantOptions o;
  o.bits = 2;
  o.outliers.sensitive_pct = 1.6;  // one entry
  const QuantizedLinear q = quantize_linear(w.data(), f.data(), 1, 64, o, pool);
  check_squeeze(q, w.data(), f.data(), 1, 64, o);
  EXPECT_EQ(q.col_idx, std::vector<int32_t>{5});
  EXPECT_EQ(f16_to_f32(q.values[0]), w[5]);  // stored as is, on top of c0 = 0
  EXPECT_NE(std::find(q.lut.begin(), q.lut.end(), uint16_t(0)), q.lut.end());
  // A weight that is not an fp16 value cannot be an exact outlier.
  w[5] = 1.0000001f;
  try {
    quantize_linear(w.data(), f.data(), 1, 64, o, pool);
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("row 0, col 5"), std::string::npos) << e.what();
  }
}

// The centroid nearest zero moves to a multiple of the outlier residual's ulp.
TEST(QuantizeLinear, SnapsOutlierCentroidToResidualUlp) {
  ThreadPool pool(1);
  std::vector<float> w = {0.29f, 0.3f, 0.31f, 5.0f, 0.3f, 0.29f, 0.31f, 0.3f};
  for (float& v : w) v = to_f16(v);
  LinearQuantOptions o;
  o.bits = 2;
  o.outliers.magnitude_pct = 12.5;  // 5.0
  const QuantizedLinear q = quantize_linear(w.data(), nullptr, 1, 8, o, pool);
  check_squeeze(q, w.data(), nullptr, 1, 8, o);
  // fp16(0.29) = 0.2900390625 (step 2^-12); 5 - 0.29 lies in [4, 8), step 2^-8, so c0
  // becomes round(0.29004 * 256) / 256 = 74 / 256 and the residual 4.7109375.
  EXPECT_EQ(f16_to_f32(q.lut[0]), 0.2890625f);
  EXPECT_EQ(f16_to_f32(q.values[0]), 4.7109375f);
  EXPECT_EQ(unpacked(q)[3], 0);
}

TEST(QuantizeLinear, StressShapes) {
  ThreadPool pool(2);
  LinearQuantOptions o;
  o.bits = 2;
  // All-equal row: reproduced exactly.
  std::vector<float> flat(300, 0.25f), ones(300, 1.0f);
  QuantizedLinear q = quantize_linear(flat.data(), ones.data(), 1, 300, o, pool);
  check_squeeze(q, flat.data(), ones.data(), 1, 300, o);
  EXPECT_EQ(q.sq_err, 0.0);

  // One non-outlier value, the rest outliers (c0 = 0.1 snaps to 1/8 under 130's ulp).
  std::vector<float> one = {0.1f, 50, -60, 70, 80.5f, -90, 100, 110, 120, 130};
  for (float& v : one) v = to_f16(v);
  o.outliers.magnitude_pct = 90;
  q = quantize_linear(one.data(), nullptr, 1, 10, o, pool);
  check_squeeze(q, one.data(), nullptr, 1, 10, o);
  EXPECT_EQ(q.col_idx.size(), 9u);
  EXPECT_EQ(q.sq_err, 0.0);

  // Every entry an outlier: the LUT is all zeros and S holds W.
  o.outliers.magnitude_pct = 100;
  q = quantize_linear(one.data(), nullptr, 2, 5, o, pool);
  check_squeeze(q, one.data(), nullptr, 2, 5, o);
  EXPECT_EQ(q.lut, std::vector<uint16_t>(8, 0));

  // cols = 1 and rows = 1.
  const TestModule m = make_module(7, 1000, 9);
  o.outliers = OutlierOptions{};
  o.outliers.magnitude_pct = 1;
  o.outliers.sensitive_pct = 1;
  for (int bits : {2, 3, 4}) {
    o.bits = bits;
    q = quantize_linear(m.w.data(), m.f.data(), 7, 1, o, pool);
    check_squeeze(q, m.w.data(), m.f.data(), 7, 1, o);
    q = quantize_linear(m.w.data(), m.f.data(), 1, 1000, o, pool);
    check_squeeze(q, m.w.data(), m.f.data(), 1, 1000, o);
  }
}

TEST(QuantizeLinear, RejectsBadInput) {
  ThreadPool pool(1);
  std::vector<float> w(16, 0.5f), f(16, 1.0f);
  LinearQuantOptions o;
  o.bits = 5;
  EXPECT_THROW(quantize_linear(w.data(), f.data(), 4, 4, o, pool), std::invalid_argument);
  o.bits = 3;
  w[3] = NAN;
  EXPECT_THROW(quantize_linear(w.data(), f.data(), 4, 4, o, pool), std::invalid_argument);
  w[3] = 0.5f;
  f[7] = -1.0f;
  EXPECT_THROW(quantize_linear(w.data(), f.data(), 4, 4, o, pool), std::invalid_argument);
}

// ---- RTN ----

TEST(Rtn, ErrorFallsWithBitsAndConstantGroupsAreExact) {
  std::mt19937_64 rng(10);
  const int rows = 8, cols = 300;  // groups of 128: 128, 128, 44
  std::vector<float> w = heavy_tailed_row(rng, rows * cols, 0.02f);
  for (int c = 128; c < 256; c++) w[c] = 0.0371f;  // row 0, group 1: constant
  double prev = INFINITY;
  for (int bits : {2, 3, 4, 8}) {
    double err = 0;
    const std::vector<float> d = rtn_quantize(w.data(), rows, cols, bits, 128, &err);
    EXPECT_LT(err, prev) << bits;
    prev = err;
    for (int c = 128; c < 256; c++) EXPECT_EQ(d[c], w[c]);
    // Every group has at most 2^bits levels, each within one step of its value.
    for (int r = 0; r < rows; r++)
      for (int g0 = 0; g0 < cols; g0 += 128) {
        const int g1 = std::min(cols, g0 + 128);
        std::set<float> levels;
        float lo = INFINITY, hi = -INFINITY;
        for (int c = g0; c < g1; c++) {
          levels.insert(d[size_t(r) * cols + c]);
          lo = std::min(lo, w[size_t(r) * cols + c]), hi = std::max(hi, w[size_t(r) * cols + c]);
        }
        EXPECT_LE(levels.size(), size_t(1) << bits);
        const float step = (hi - lo) / float((1 << bits) - 1);
        for (int c = g0; c < g1; c++)
          EXPECT_LE(std::fabs(w[size_t(r) * cols + c] - d[size_t(r) * cols + c]), step * 1.0001f);
      }
  }

  // quantize_linear(RTN) fills only the statistics, from the same grid.
  ThreadPool pool(1);
  LinearQuantOptions o;
  o.method = QuantMethod::RTN;
  o.bits = 4;
  o.rtn_group = 128;
  double err = 0;
  rtn_quantize(w.data(), rows, cols, 4, 128, &err);
  const QuantizedLinear q = quantize_linear(w.data(), nullptr, rows, cols, o, pool);
  EXPECT_DOUBLE_EQ(q.sq_err, err);
  EXPECT_DOUBLE_EQ(q.weighted_err, err);
  EXPECT_TRUE(q.indices.empty());
  EXPECT_TRUE(q.lut.empty());
  EXPECT_TRUE(q.col_idx.empty());
}

// ---- timing (disabled: run by hand) ----

TEST(QuantizeLinear, DISABLED_BenchModule4096) {
  ThreadPool pool(0);
  const int n = 4096;
  std::mt19937_64 rng(12);
  std::vector<float> w = heavy_tailed_row(rng, n * n, 0.02f), f(size_t(n) * n);
  std::lognormal_distribution<float> ln(0, 2);
  for (size_t i = 0; i < w.size(); i++) w[i] = to_f16(w[i]), f[i] = ln(rng);
  for (bool exact : {true, false}) {
    LinearQuantOptions o;
    o.bits = 4;
    o.exact_kmeans = exact;
    o.outliers.magnitude_pct = 0.4;
    o.outliers.sensitive_pct = 0.05;
    auto t0 = std::chrono::steady_clock::now();
    const std::clock_t cpu0 = std::clock();  // process CPU time, all threads
    const QuantizedLinear q = quantize_linear(w.data(), f.data(), n, n, o, pool);
    const double cpu_s = double(std::clock() - cpu0) / CLOCKS_PER_SEC;
    std::printf(
        "[ info ] 4096x4096, 4 bits, %d threads, %s: %.2f s wall, %.2f s CPU "
        "(%.2f ms per row), weighted err %.6g, sq err / sq norm %.4g, %zu outliers\n",
        pool.size(), exact ? "exact" : "Lloyd", ms_since(t0) / 1000, cpu_s, cpu_s * 1000 / n,
        q.weighted_err, q.sq_err / q.sq_norm, q.col_idx.size());
  }
}

}  // namespace
}  // namespace sqz
