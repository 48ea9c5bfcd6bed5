// SqueezeLLM quantization of one linear weight: sensitivity-weighted per-row k-means (the
// dense LUT part) plus exact FP16 outliers in CSR (the sparse part), and the uniform RTN
// baseline. Operates on fp32 copies of one weight and its squared-gradient (Fisher) matrix.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sqz {

class ThreadPool;

// ---- 1-D weighted k-means (quantize/kmeans.cpp) ----
struct KMeans1D {
  std::vector<float> centroids;  // k values, ascending
  std::vector<uint8_t> assign;   // per input value, index into centroids
  double cost = 0;               // sum_i w_i (x_i - c[assign_i])^2
};
// The exact optimum (dynamic programming over the sorted, de-duplicated values with the
// divide-and-conquer speed-up). Values with weight 0 are assigned to their nearest centroid
// but do not move centroids; if every weight is 0 the unweighted problem is solved. Fewer
// distinct values than k: each gets its own centroid, the rest are copies.
KMeans1D kmeans_1d_exact(const float* x, const float* w, int n, int k);
// The official recipe: k-means++ initialisation (seeded) then Lloyd, max_iter iterations.
KMeans1D kmeans_1d_lloyd(const float* x, const float* w, int n, int k, uint64_t seed,
                         int max_iter = 50);

// ---- outlier selection (quantize/outliers.cpp) ----
struct OutlierOptions {
  double magnitude_pct = 0;  // top PCT% of |w| per module (percentile rule); 0 = off
  double iqr_range = 0;      // r of the IQR rule |w| beyond max(|q1 - r IQR|, |q3 + r IQR|); 0 = off
  double sensitive_pct = 0;  // top PCT% of F per module; 0 = off (needs F)
  bool use_cuda = false;     // order statistics on the GPU (same result; CUDA builds only)
};
// Returns the sorted flat positions (r * cols + c) of the module's outliers (union of the rules).
std::vector<int64_t> select_outliers(const float* w, const float* fisher, int rows, int cols,
                                     const OutlierOptions& o);

// ---- one linear (quantize/quantize_linear.cpp) ----
enum class QuantMethod { SQUEEZE, RTN };

struct LinearQuantOptions {
  QuantMethod method = QuantMethod::SQUEEZE;
  int bits = 3;              // 2, 3, 4
  OutlierOptions outliers;
  bool exact_kmeans = true;  // false: the official k-means++ / Lloyd recipe
  // Exact k-means and outlier selection on the GPU (quantize/quantize_cuda.h): the same
  // result bit for bit, minutes faster on large models. CUDA builds only.
  bool use_cuda = false;
  int rtn_group = 128;       // RTN: asymmetric min/max groups of this many columns
  // Snap each row's centroids onto a power-of-two grid of at most 256 steps before the
  // assignment (kernels/lut_grid.h: each moves by at most half a step, about range / 508), so
  // that the CUDA GEMV can decode 8-bit codes instead of fp16 entries. 4 bits
  // (lut_grid_used). A row keeps its centroids where one would move by more than 1/8 of the smallest gap between
  // them (kLutGridMaxMove, quantize_linear.cpp), and counts in n_off_grid.
  bool lut_grid = true;
  uint64_t seed = 0;
};

struct QuantizedLinear {
  int rows = 0, cols = 0, bits = 0;
  std::vector<uint8_t> indices;   // packed, [rows, packed_row_bytes(cols, bits)] (kernels/packed_layout.h)
  std::vector<uint16_t> lut;      // [rows, 2^bits] fp16
  std::vector<int32_t> row_ptr;   // [rows + 1]
  std::vector<int32_t> col_idx;   // [nnz], ascending within a row
  std::vector<uint16_t> values;   // [nnz] fp16: w - lut[row][idx] at the outlier, exact
  // statistics
  int64_t n_sensitive = 0, n_magnitude = 0;  // outliers chosen by each rule (overlap counted once, as sensitive)
  // With lut_grid: rows whose final LUT is not on a grid (the grid too coarse for the row, or
  // an outlier's exact residual needed a centroid off it); the GPU then decodes fp16 entries
  // for the whole matrix.
  int64_t n_off_grid = 0;
  double weighted_err = 0;   // sum F (w - w_hat)^2 (F = 1 without gradients)
  double sq_err = 0;         // sum (w - w_hat)^2
  double sq_norm = 0;        // sum w^2
  double seconds_outliers = 0, seconds_kmeans = 0, seconds_rows = 0;  // where the time went
};

// Quantizes W [rows, cols] (fp32 values of the checkpoint's fp16/bf16/fp32 weight) with
// optional sensitivity F [rows, cols] (nullptr: plain k-means). Deterministic for given
// options, whatever the thread count.
//
// Exactness at outliers: the row's dense index there points at the centroid nearest zero,
// c0, and the stored fp16 value is v = w - c0. For v to be exact in fp16, c0 is snapped to
// a multiple of the largest ulp among the row's residuals (a shift far below the
// quantisation step; c0 becomes 0 when the outliers are large), then all non-outlier
// entries are re-assigned to their nearest fp16 centroid. So float(c0) + float(v) == w for
// every outlier, checked, and D + S reproduces w exactly there.
//
// RTN (o.method == RTN): only the shape and the statistics are filled; the baseline's
// per-group scales do not fit a per-row LUT, so callers store rtn_quantize()'s dequantised
// weights densely (a quality baseline, not a speed path).
QuantizedLinear quantize_linear(const float* w, const float* fisher, int rows, int cols,
                                const LinearQuantOptions& o, ThreadPool& pool);

// RTN baseline: returns the de-quantised weights (fp32) [rows, cols].
std::vector<float> rtn_quantize(const float* w, int rows, int cols, int bits, int group,
                                double* sq_err);

// Dense reconstruction of a quantized linear (D + S), fp32 [rows, cols].
std::vector<float> dequantize(const QuantizedLinear& q);

}  // namespace sqz
