// Outlier selection for the dense-and-sparse split, per module (one linear weight):
//   magnitude, percentile rule: the top magnitude_pct% of |w|;
//   magnitude, IQR rule (SqueezeLLM generate_outlier_config.py): with q1, q3 the module's
//     quartiles (numpy's default linear interpolation) and IQR = q3 - q1,
//     T = max(|q1 - r IQR|, |q3 + r IQR|), every |w| > T;
//   sensitive: the top sensitive_pct% of the Fisher values F.
// The result is the union. Order statistics use nth_element on a copy (O(n)), never a full
// sort: a module has up to ~45M entries.
#include <algorithm>
#include <functional>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/parallel.h"
#include "quantize/quantize_cuda.h"
#include "quantize/quantize_internal.h"
#include "quantize/quantizer.h"

namespace sqz {

namespace {

// count = floor(pct / 100 * n). The product is nudged up by a relative 1e-12 so that a
// percentage meant to hit an integer count (0.45% of 1e6 = 4500) is not floored to one
// less by the rounding of pct / 100 in binary.
int64_t percent_count(double pct, int64_t n) {
  double x = pct / 100.0 * double(n);
  int64_t c = int64_t(std::floor(x * (1 + 1e-12)));
  return std::clamp<int64_t>(c, 0, n);
}

// Marks (flag |= bit) the `count` entries with the largest key. Entries equal to the
// cut-off value are taken in position order, so the choice is deterministic. tmp is
// scratch (a module can have 45M entries: one copy at a time).
void mark_top(const float* key, int64_t n, int64_t count, uint8_t bit, std::vector<uint8_t>& flags,
              std::vector<float>& tmp, bool use_cuda) {
  if (count <= 0) return;
  if (count >= n) {
    for (auto& f : flags) f |= bit;
    return;
  }
#ifdef SQZ_WITH_CUDA
  if (use_cuda) {
    for (int64_t i : top_count_positions_cuda(key, n, count)) flags[i] |= bit;
    return;
  }
#else
  (void)use_cuda;
#endif
  tmp.assign(key, key + n);
  std::nth_element(tmp.begin(), tmp.begin() + (n - count), tmp.end());
  const float cut = tmp[n - count];  // the count-th largest key
  int64_t n_above = 0;
  for (int64_t i = 0; i < n; i++) n_above += key[i] > cut;
  int64_t n_at_cut = count - n_above;  // how many of the entries equal to cut to take
  for (int64_t i = 0; i < n; i++) {
    if (key[i] > cut)
      flags[i] |= bit;
    else if (key[i] == cut && n_at_cut > 0)
      flags[i] |= bit, n_at_cut--;
  }
}

// fn(begin, end) over [0, n), on the pool when there is one.
void for_range(ThreadPool* pool, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (pool)
    pool->parallel_for(n, fn, 1 << 16);
  else
    fn(0, n);
}

// The q-quantile of a (reordered in place) with numpy's default "linear" method: the
// order statistics at floor(q (n-1)) and the next one, linearly interpolated.
double quantile_linear(std::vector<float>& a, double q, bool use_cuda) {
  const int64_t n = int64_t(a.size());
  const double pos = q * double(n - 1);
  const int64_t lo = int64_t(std::floor(pos));
  const double frac = pos - double(lo);
#ifdef SQZ_WITH_CUDA
  if (use_cuda) {
    const std::vector<float> v = order_statistics_cuda(a.data(), n, {lo, std::min(lo + 1, n - 1)});
    if (lo + 1 >= n || frac == 0) return v[0];
    return double(v[0]) + frac * (double(v[1]) - double(v[0]));
  }
#else
  (void)use_cuda;
#endif
  std::nth_element(a.begin(), a.begin() + lo, a.end());
  const double v_lo = a[lo];
  if (lo + 1 >= n || frac == 0) return v_lo;
  // After nth_element everything right of lo is >= a[lo]: the next order statistic is
  // their minimum.
  const double v_hi = *std::min_element(a.begin() + lo + 1, a.end());
  return v_lo + frac * (v_hi - v_lo);
}

}  // namespace

OutlierSet select_outliers_with_rules(const float* w, const float* fisher, int rows, int cols,
                                      const OutlierOptions& o, ThreadPool* pool) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument("select_outliers: negative shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "]");
  auto check_pct = [](const char* name, double v) {
    if (!(v >= 0 && v <= 100))
      throw std::invalid_argument(std::string("select_outliers: ") + name + " = " +
                                  std::to_string(v) + " (expected 0..100)");
  };
  check_pct("magnitude_pct", o.magnitude_pct);
  check_pct("sensitive_pct", o.sensitive_pct);
  if (!(o.iqr_range >= 0 && std::isfinite(o.iqr_range)))
    throw std::invalid_argument("select_outliers: iqr_range = " + std::to_string(o.iqr_range) +
                                " (expected finite and >= 0)");
  if (o.sensitive_pct > 0 && !fisher)
    throw std::invalid_argument(
        "select_outliers: sensitive_pct > 0 needs the sensitivity (Fisher) matrix");

  const int64_t n = int64_t(rows) * cols;
  // The first entry (in position order) that fails a check.
  auto first_bad = [&](const auto& bad) {
    if (pool) return pool->find_first(n, bad);
    int64_t i = 0;
    while (i < n && !bad(i)) i++;
    return i;
  };
  const int64_t bad_w = first_bad([&](int64_t i) { return !std::isfinite(w[i]); });
  if (bad_w < n)
    throw std::invalid_argument("select_outliers: weight at row " + std::to_string(bad_w / cols) +
                                ", col " + std::to_string(bad_w % cols) + " is not finite");

  std::vector<uint8_t> flags(n, 0);
  std::vector<float> mag, tmp;
  if (n > 0 && (o.magnitude_pct > 0 || o.iqr_range > 0)) {
    mag.resize(n);
    for_range(pool, n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) mag[i] = std::fabs(w[i]);
    });
    mark_top(mag.data(), n, percent_count(o.magnitude_pct, n), OUTLIER_RULE_MAGNITUDE, flags, tmp,
             o.use_cuda);
    if (o.iqr_range > 0) {
      tmp.assign(w, w + n);
      const double q1 = quantile_linear(tmp, 0.25, o.use_cuda), q3 = quantile_linear(tmp, 0.75, o.use_cuda);
      const double iqr = q3 - q1;
      const double t =
          std::max(std::fabs(q1 - o.iqr_range * iqr), std::fabs(q3 + o.iqr_range * iqr));
      for_range(pool, n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++)
          if (double(mag[i]) > t) flags[i] |= OUTLIER_RULE_MAGNITUDE;
      });
    }
  }
  if (n > 0 && o.sensitive_pct > 0) {
    const int64_t bad_f =
        first_bad([&](int64_t i) { return !(std::isfinite(fisher[i]) && fisher[i] >= 0); });
    if (bad_f < n)
      throw std::invalid_argument("select_outliers: sensitivity at row " +
                                  std::to_string(bad_f / cols) + ", col " +
                                  std::to_string(bad_f % cols) + " is " +
                                  std::to_string(fisher[bad_f]) + " (expected finite and >= 0)");
    mark_top(fisher, n, percent_count(o.sensitive_pct, n), OUTLIER_RULE_SENSITIVE, flags, tmp,
             o.use_cuda);
  }

  OutlierSet s;
  for (int64_t i = 0; i < n; i++)
    if (flags[i]) s.pos.push_back(i), s.rule.push_back(flags[i]);
  return s;
}

std::vector<int64_t> select_outliers(const float* w, const float* fisher, int rows, int cols,
                                     const OutlierOptions& o) {
  return select_outliers_with_rules(w, fisher, rows, cols, o).pos;
}

}  // namespace sqz
