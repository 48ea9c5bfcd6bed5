// Quantizes one linear weight W [rows, cols]:
//   SQUEEZE: outliers (quantize/outliers.cpp) go to a CSR of exact fp16 residuals; every
//            output row gets a 2^bits-entry fp16 LUT from a weighted 1-D k-means over its
//            remaining values (weights F) and a packed b-bit index per column.
//   RTN:     the uniform round-to-nearest baseline. Its per-group scales do not fit the
//            row-LUT form, so quantize_linear(RTN) fills ONLY rows/cols/bits and the
//            statistics (no indices, LUT or CSR, no outliers); the caller stores the dense
//            weights from rtn_quantize() as fp16.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "model/dtype.h"
#include "quantize/quantize_cuda.h"
#include "quantize/quantize_internal.h"
#include "quantize/quantizer.h"

namespace sqz {

namespace {

std::string at(int r, int c) { return "row " + std::to_string(r) + ", col " + std::to_string(c); }

// The spacing of fp16 values around v: 2^(e - 10) for |v| in [2^e, 2^(e+1)), e >= -14.
// Below 2^-14 (zero and the subnormals) the spacing is the subnormal step 2^-24, the same
// as in the lowest normal binade: there a multiple of 2^-24 is always representable.
// Taken from fp16(v), so a value that rounds up into the next binade gets that binade's
// (larger, hence safe) ulp. Returns 0 when v is beyond the fp16 range.
double f16_ulp(double v) {
  const uint16_t h = f32_to_f16(float(std::fabs(v)));
  if (!f16_bits_finite(h)) return 0;
  const int e = (h >> 10) & 0x1f;
  return std::ldexp(1.0, (e == 0 ? 1 : e) - 15 - 10);
}

// float(c) + float(fp16(w - c)) == w: the outlier w is reproduced exactly by D + S.
bool exact_with(float c, float w) {
  const uint16_t v = f32_to_f16(float(double(w) - double(c)));
  return f16_bits_finite(v) && c + f16_to_f32(v) == w;
}

// The outlier centroid c0 for one row's outliers ow[0..n): the LUT value nearest zero,
// snapped to a multiple of u, the largest fp16 ulp among the residuals w - c0 (a shift of
// at most u/2, far below the quantisation step when outliers are moderate; c0 rounds to 0
// when they are large). Why it works: an fp16 w is a multiple of ulp(w), c0 of u, so
// w - c0 is a multiple of min(ulp(w), u), which is fp16-exact when that is at least
// ulp(w - c0): always, unless the residual is in a coarser binade than w itself (possible
// when c0 and w have opposite signs). Snapping changes the residuals, which may move one
// into a coarser binade: repeat until c0 is stable. A multiple of u no finer than c0's own
// spacing has no more significant bits than c0, so it is fp16 too. If some residual is
// still inexact, c0 = 0 (a multiple of every u), which leaves v = w: exact for every fp16
// w. Only a w that is not an fp16 value (an unrounded fp32/bf16 weight) fails that: throw.
float outlier_centroid(float c0, const float* ow, const int* ocol, int n, int row) {
  float c = c0;
  for (int iter = 0; iter < 64; iter++) {
    double u = 0;
    for (int t = 0; t < n; t++) {
      double ulp = f16_ulp(double(ow[t]) - double(c));
      if (ulp == 0) u = INFINITY;  // residual overflows fp16: only c = 0 can help
      u = std::max(u, ulp);
    }
    float snapped = std::isinf(u) ? 0.0f : float(std::round(double(c) / u) * u);
    snapped += 0.0f;  // -0 -> +0
    if (snapped == c) break;
    c = snapped;
  }
  bool ok = f16_to_f32(f32_to_f16(c)) == c;
  for (int t = 0; t < n && ok; t++) ok = exact_with(c, ow[t]);
  if (ok) return c;
  for (int t = 0; t < n; t++)
    if (!exact_with(0.0f, ow[t]))
      throw std::runtime_error("quantize_linear: outlier at " + at(row, ocol[t]) +
                               " (w = " + std::to_string(ow[t]) +
                               ") cannot be stored exactly: it is not an fp16 value");
  return 0.0f;
}

struct RowStats {
  double weighted_err = 0, sq_err = 0, sq_norm = 0;
  bool off_grid = false;
};

// Per-thread buffers, reused across the rows of a chunk.
struct RowScratch {
  std::vector<float> xs, fs;  // the row's non-outlier values and their sensitivities
  std::vector<float> ow;      // the row's outlier values
  std::vector<int> ocol;      // and their columns
  std::vector<int> oidx;      // the centroid each outlier's dense index points at
  std::vector<float> fw;      // outliers no centroid serves exactly (for the snap)
  std::vector<int> fcol;
  std::vector<uint8_t> idx;   // [cols] unpacked indices
  std::vector<float> centroids;  // the row's k-means centroids, ascending
  KMeansWorkspace kmeans;
};

// For each of the row's outliers (s.ow/s.ocol, n of them) finds a centroid of the sorted LUT
// lutf[0..k) whose residual is exact (exact_with), trying centroids in order of distance to
// the weight. Outliers that none serves (residuals too large for their binade: huge weights)
// get the centroid nearest zero snapped for them (outlier_centroid), then all are chosen
// again; if one still fails, the snap is redone for every outlier, which ends at 0 at worst.
void choose_outlier_indices(float* lutf, int k, RowScratch& s, int n, int row) {
  s.oidx.assign(n, -1);
  auto choose_all = [&]() {
    s.fw.clear(), s.fcol.clear();
    for (int t = 0; t < n; t++) {
      const float w = s.ow[t];
      int best = -1;
      // centroids outward from the nearest one to w
      int lo = nearest_centroid(lutf, k, w), hi = lo + 1;
      while (best < 0 && (lo >= 0 || hi < k)) {
        bool take_lo = lo >= 0 && (hi >= k || std::fabs(w - lutf[lo]) <= std::fabs(w - lutf[hi]));
        int j = take_lo ? lo-- : hi++;
        if (exact_with(lutf[j], w)) best = j;
      }
      s.oidx[t] = best;
      if (best < 0) s.fw.push_back(w), s.fcol.push_back(s.ocol[t]);
    }
    return s.fw.empty();
  };
  if (choose_all()) return;
  for (int attempt = 0; attempt < 2; attempt++) {
    const bool everyone = attempt == 1;
    int i0 = nearest_centroid(lutf, k, 0.0f);
    lutf[i0] = everyone ? outlier_centroid(lutf[i0], s.ow.data(), s.ocol.data(), n, row)
                        : outlier_centroid(lutf[i0], s.fw.data(), s.fcol.data(), int(s.fw.size()), row);
    std::sort(lutf, lutf + k);
    if (choose_all()) return;
  }
  throw std::runtime_error("quantize_linear: an outlier of row " + std::to_string(row) +
                           " cannot be stored exactly");
}

// The most a centroid may move onto the LUT grid, as a fraction of the smallest gap between
// the row's centroids: rows whose range is set by a few far centroids (weights with heavy
// tails and no outliers taken out) would lose their close ones to a coarse grid, and keep
// their fp16 centroids instead (quantizer.h, lut_grid). With outliers taken out the move is
// typically ~1/100 of the gap.
constexpr double kLutGridMaxMove = 0.125;

// gpu_centroids: the row's k-means centroids from kmeans_exact_rows_cuda (null: computed here).
void quantize_row(const float* w, const float* fisher, int r, int cols, const LinearQuantOptions& o,
                  const double* gpu_centroids, QuantizedLinear& q, RowStats& st, RowScratch& s) {
  const int k = 1 << o.bits;
  const float* row = w + int64_t(r) * cols;
  const float* frow = fisher ? fisher + int64_t(r) * cols : nullptr;
  const int o_begin = q.row_ptr[r], o_end = q.row_ptr[r + 1];
  const int n_out = o_end - o_begin;

  // Split the row into outliers and the values the k-means sees. Outliers have weight 0
  // in the official recipe; leaving them out is the same (weight-0 values never move a
  // centroid) and keeps them out of the "all weights zero -> unweighted" fallback.
  s.ow.clear(), s.ocol.clear();
  for (int t = o_begin; t < o_end; t++) s.ow.push_back(row[q.col_idx[t]]), s.ocol.push_back(q.col_idx[t]);
  std::vector<float>& centroids = s.centroids;
  centroids.resize(k);
  if (gpu_centroids) {
    // Only the centroids are used below (the assignment is redone against the fp16 LUT):
    // rounded to float and sorted, as the CPU k-means does.
    for (int j = 0; j < k; j++) centroids[j] = float(gpu_centroids[j]);
    std::sort(centroids.begin(), centroids.end());
  } else {
    s.xs.clear(), s.fs.clear();
    for (int c = 0, t = o_begin; c < cols; c++) {
      if (t < o_end && q.col_idx[t] == c) {
        t++;
        continue;
      }
      s.xs.push_back(row[c]);
      if (frow) s.fs.push_back(frow[c]);
    }
    const int n_in = int(s.xs.size());
    const float* fs = frow ? s.fs.data() : nullptr;
    centroids = o.exact_kmeans ? kmeans_1d_exact(s.xs.data(), fs, n_in, k, s.kmeans).centroids
                               : kmeans_1d_lloyd(s.xs.data(), fs, n_in, k, o.seed + r, 50, s.kmeans).centroids;
  }

  // fp16 LUT. Rounding is monotone, so it stays ascending (equal neighbours allowed).
  uint16_t* lut = q.lut.data() + int64_t(r) * k;
  float lutf[16];
  for (int j = 0; j < k; j++) {
    lut[j] = f32_to_f16(centroids[j]);
    if (!f16_bits_finite(lut[j]))
      throw std::runtime_error("quantize_linear: row " + std::to_string(r) + " centroid " +
                               std::to_string(centroids[j]) + " overflows fp16");
    lutf[j] = f16_to_f32(lut[j]);
  }
  const bool grid = o.lut_grid && lut_grid_used(o.bits);
  if (grid) {  // onto the grid (fp16 values, finite: kept as they were where not)
    float snapped[16];
    std::copy(lutf, lutf + k, snapped);
    bool ok = snap_lut_grid(snapped, k, kLutGridMaxMove);
    for (int j = 0; j < k; j++) ok = ok && f16_bits_finite(f32_to_f16(snapped[j]));
    if (ok)
      for (int j = 0; j < k; j++) lut[j] = f32_to_f16(snapped[j]), lutf[j] = f16_to_f32(lut[j]);
  }

  // Outliers: the dense index may point at any centroid, since the stored residual makes
  // D + S exact whatever it is; choose_outlier_indices picks, for each outlier, a centroid
  // whose residual is an fp16 value (the nearest to w first, so the residual is small) and
  // snaps the centroid nearest zero only for outliers that no centroid serves (very large
  // weights; see outlier_centroid). Pointing every outlier at the centroid nearest zero
  // instead forced that centroid to 0 in a fifth of the rows with small sensitive outliers,
  // which cost more than the outliers gained at 3 bits.
  if (n_out > 0) choose_outlier_indices(lutf, k, s, n_out, r);
  for (int j = 0; j < k; j++) lut[j] = f32_to_f16(lutf[j]);
  if (grid) {
    uint8_t row_codes[32];
    st.off_grid = !lut_grid_row(lut, o.bits, row_codes);
  }

  // Dense indices (non-outliers: nearest fp16 centroid, ties to the lower index; outliers:
  // the chosen centroid) and the exact residuals at the outliers.
  for (int c = 0, t = o_begin; c < cols; c++) {
    float w_hat;
    if (t < o_end && q.col_idx[t] == c) {
      const int a = s.oidx[t - o_begin];
      s.idx[c] = uint8_t(a);
      const uint16_t v = f32_to_f16(float(double(row[c]) - double(lutf[a])));
      q.values[t++] = v;
      w_hat = lutf[a] + f16_to_f32(v);  // == row[c], checked in choose_outlier_indices
    } else {
      const int a = nearest_centroid(lutf, k, row[c]);
      s.idx[c] = uint8_t(a);
      w_hat = lutf[a];
    }
    const double d = double(row[c]) - double(w_hat);
    st.sq_err += d * d;
    st.weighted_err += (frow ? double(frow[c]) : 1.0) * d * d;
    st.sq_norm += double(row[c]) * row[c];
  }
  pack_indices(s.idx.data(), 1, cols, o.bits,
               q.indices.data() + int64_t(r) * packed_row_bytes(cols, o.bits));
}

void check_shape(int rows, int cols) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument("quantize_linear: negative shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "]");
}

// Finite weights everywhere, finite non-negative sensitivities: checked once here so the
// message names the matrix position.
void check_values(const float* w, const float* fisher, int rows, int cols, ThreadPool& pool) {
  const int64_t n = int64_t(rows) * cols;
  const int64_t i = pool.find_first(n, [&](int64_t j) {
    return !std::isfinite(w[j]) || (fisher && !(std::isfinite(fisher[j]) && fisher[j] >= 0));
  });
  if (i == n) return;
  const int r = int(i / cols), c = int(i % cols);
  if (!std::isfinite(w[i]))
    throw std::invalid_argument("quantize_linear: weight at " + at(r, c) + " is not finite");
  throw std::invalid_argument("quantize_linear: sensitivity at " + at(r, c) + " is " +
                              std::to_string(fisher[i]) + " (expected finite and >= 0)");
}

}  // namespace

QuantizedLinear quantize_linear(const float* w, const float* fisher, int rows, int cols,
                                const LinearQuantOptions& o, ThreadPool& pool) {
  check_shape(rows, cols);
  QuantizedLinear q;
  q.rows = rows, q.cols = cols, q.bits = o.bits;

  if (o.method == QuantMethod::RTN) {
    check_values(w, fisher, rows, cols, pool);
    // Stats only (see the top of this file).
    const std::vector<float> w_hat = rtn_quantize(w, rows, cols, o.bits, o.rtn_group, nullptr);
    for (int64_t i = 0; i < int64_t(rows) * cols; i++) {
      const double d = double(w[i]) - double(w_hat[i]);
      q.sq_err += d * d;
      q.weighted_err += (fisher ? double(fisher[i]) : 1.0) * d * d;
      q.sq_norm += double(w[i]) * w[i];
    }
    return q;
  }
  if (o.method != QuantMethod::SQUEEZE)
    throw std::invalid_argument("quantize_linear: unknown method");
  if (o.bits < 2 || o.bits > 4)
    throw std::invalid_argument("quantize_linear: bits = " + std::to_string(o.bits) +
                                " (SQUEEZE supports 2, 3, 4)");
  check_values(w, fisher, rows, cols, pool);

#ifndef SQZ_WITH_CUDA
  if (o.use_cuda)
    throw std::invalid_argument("quantize_linear: use_cuda needs a build with the CUDA backend");
#endif
  // Outliers -> CSR structure (positions are sorted, so columns ascend within a row).
  OutlierOptions oo = o.outliers;
  oo.use_cuda = oo.use_cuda || o.use_cuda;
  auto t = std::chrono::steady_clock::now();
  auto lap = [&t]() {
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t).count();
    t = now;
    return dt;
  };
  const OutlierSet out = select_outliers_with_rules(w, fisher, rows, cols, oo, &pool);
  if (out.pos.size() > size_t(INT32_MAX))
    throw std::runtime_error("quantize_linear: " + std::to_string(out.pos.size()) +
                             " outliers do not fit int32 CSR offsets");
  q.row_ptr.assign(size_t(rows) + 1, 0);
  q.col_idx.resize(out.pos.size());
  q.values.resize(out.pos.size());
  for (size_t t = 0; t < out.pos.size(); t++) {
    q.row_ptr[out.pos[t] / cols + 1]++;
    q.col_idx[t] = int32_t(out.pos[t] % cols);
    if (out.rule[t] & OUTLIER_RULE_SENSITIVE)
      q.n_sensitive++;
    else
      q.n_magnitude++;
  }
  for (int r = 0; r < rows; r++) q.row_ptr[r + 1] += q.row_ptr[r];

  const int k = 1 << o.bits;
  q.lut.assign(size_t(rows) * k, 0);
  q.indices.assign(size_t(rows) * packed_row_bytes(cols, o.bits), 0);

  q.seconds_outliers = lap();
  // The exact k-means of every row at once on the GPU (the same centroids, bit for bit).
  std::vector<double> centroids;
#ifdef SQZ_WITH_CUDA
  if (o.use_cuda && o.exact_kmeans) {
    centroids.resize(size_t(rows) * k);
    kmeans_exact_rows_cuda(w, fisher, q.row_ptr.data(), q.col_idx.data(), rows, cols, k,
                           centroids.data());
  }
#endif
  q.seconds_kmeans = lap();

  // One task per row; each row writes only its own slices, and the statistics are summed
  // in row order afterwards, so the result does not depend on the thread count.
  std::vector<RowStats> stats(rows);
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    RowScratch s;
    s.idx.resize(cols);
    for (int64_t r = begin; r < end; r++)
      quantize_row(w, fisher, int(r), cols, o,
                   centroids.empty() ? nullptr : centroids.data() + size_t(r) * k, q, stats[r], s);
  });
  for (const RowStats& st : stats) {
    q.weighted_err += st.weighted_err;
    q.sq_err += st.sq_err;
    q.n_off_grid += st.off_grid ? 1 : 0;
    q.sq_norm += st.sq_norm;
  }
  q.seconds_rows = lap();
  return q;
}

// Uniform asymmetric grid per group of `group` columns (group <= 0: the whole row), as
// GPTQ's quantizer: scale = (max - min) / (2^bits - 1), zero = round(-min / scale),
// q = clamp(round(w / scale) + zero, 0, 2^bits - 1), w_hat = scale (q - zero); fp32 math,
// round half to even like torch.round. Unlike GPTQ the range is the group's own min/max
// (GPTQ widens it to include 0). A constant group reproduces its value exactly.
std::vector<float> rtn_quantize(const float* w, int rows, int cols, int bits, int group,
                                double* sq_err) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument("rtn_quantize: negative shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "]");
  if (bits < 1 || bits > 16)
    throw std::invalid_argument("rtn_quantize: bits = " + std::to_string(bits) +
                                " (expected 1..16)");
  if (group <= 0 || group > cols) group = std::max(cols, 1);
  const float maxq = float((1 << bits) - 1);
  std::vector<float> out(size_t(rows) * cols);
  double err = 0;
  for (int r = 0; r < rows; r++) {
    const float* row = w + int64_t(r) * cols;
    float* dst = out.data() + int64_t(r) * cols;
    for (int g0 = 0; g0 < cols; g0 += group) {
      const int g1 = std::min(cols, g0 + group);
      float lo = row[g0], hi = row[g0];
      for (int c = g0; c < g1; c++) {
        if (!std::isfinite(row[c]))
          throw std::invalid_argument("rtn_quantize: weight at " + at(r, c) + " is not finite");
        lo = std::min(lo, row[c]), hi = std::max(hi, row[c]);
      }
      if (hi == lo) {  // constant group: scale 0 would divide by zero; keep it exactly
        for (int c = g0; c < g1; c++) dst[c] = row[c];
        continue;
      }
      const float scale = (hi - lo) / maxq;
      const float zero = std::nearbyint(-lo / scale);
      for (int c = g0; c < g1; c++) {
        const float qv = std::clamp(std::nearbyint(row[c] / scale) + zero, 0.0f, maxq);
        dst[c] = scale * (qv - zero);
      }
    }
    for (int c = 0; c < cols; c++) {
      const double d = double(row[c]) - double(dst[c]);
      err += d * d;
    }
  }
  if (sq_err) *sq_err = err;
  return out;
}

std::vector<float> dequantize(const QuantizedLinear& q) {
  const int k = 1 << q.bits;
  const int64_t rb = packed_row_bytes(q.cols, q.bits);
  if (q.bits < 2 || q.bits > 4 || q.rows < 0 || q.cols < 0 ||
      q.indices.size() != size_t(q.rows) * rb || q.lut.size() != size_t(q.rows) * k ||
      q.row_ptr.size() != size_t(q.rows) + 1 || q.row_ptr[0] != 0 ||
      size_t(q.row_ptr[q.rows]) != q.col_idx.size() || q.col_idx.size() != q.values.size())
    throw std::invalid_argument(
        "dequantize: inconsistent QuantizedLinear (expected a SQUEEZE result: bits 2..4, "
        "indices [rows, packed_row_bytes], lut [rows, 2^bits], row_ptr [rows + 1], "
        "col_idx/values [nnz])");
  std::vector<float> out(size_t(q.rows) * q.cols);
  std::vector<uint8_t> idx(q.cols);
  for (int r = 0; r < q.rows; r++) {
    float* dst = out.data() + int64_t(r) * q.cols;
    unpack_row(q.indices.data() + r * rb, q.cols, q.bits, idx.data());
    for (int c = 0; c < q.cols; c++) dst[c] = f16_to_f32(q.lut[int64_t(r) * k + idx[c]]);
    for (int t = q.row_ptr[r]; t < q.row_ptr[r + 1]; t++) {
      const int c = q.col_idx[t];
      if (c < 0 || c >= q.cols)
        throw std::invalid_argument("dequantize: row " + std::to_string(r) + " has column " +
                                    std::to_string(c) + " outside 0.." +
                                    std::to_string(q.cols - 1));
      dst[c] += f16_to_f32(q.values[t]);
    }
  }
  return out;
}

}  // namespace sqz
