// The quantizer's GPU steps (quantize/kmeans.cu, quantize/outliers.cu) against their CPU
// versions, which must agree bit for bit (label gpu; every test skips without a GPU):
//   (a) kmeans_exact_rows_cuda vs kmeans_1d_exact_centroids row by row: odd and LLaMA
//       widths, k = 2..16, no weights / Fisher weights spanning 1e-20..1e3 / all-zero and
//       partly zero weights, fp16 duplicates, -0 and +0, rows with <= k distinct values,
//       rows that are all outliers;
//   (b) outlier selection (percentile, IQR, sensitive; ties at the cut-off) on both;
//   (c) quantize_linear on both: identical indices, LUT, CSR and statistics;
//   (d) doc-llama-26m, whole model at 3 bits with 0.45% outliers: identical packed tensors.
// Run: ctest -R test_quantize_cuda  (or build/tests/test_quantize_cuda)
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/engine.h"
#include "kernels/parallel.h"
#include "model/dtype.h"
#include "quantize/pipeline.h"
#include "quantize/quantize_cuda.h"
#include "quantize/quantize_internal.h"
#include "quantize/quantizer.h"
#include "cuda_test_util.h"
#include "quantize_test_util.h"
#include "test_util.h"

namespace sqz {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

enum class Weights { NONE, FISHER, ZERO_ROWS, SOME_ZERO };

struct Module {
  int rows, cols;
  std::vector<float> w, f;  // f empty: no weights
  std::vector<int32_t> row_ptr, col_idx;
};

// fp16-rounded Gaussian weights (many duplicates, as in a real checkpoint) with a few
// heavy tails, signed zeros, some rows of few distinct values, and random outliers.
Module make_module(int rows, int cols, Weights wt, double outlier_frac, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 0.02f);
  std::uniform_real_distribution<double> u(0, 1);
  Module m{rows, cols, {}, {}, {}, {}};
  m.w.resize(size_t(rows) * cols);
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) {
      float v = g(rng);
      if (u(rng) < 0.002) v *= 30;                  // tails
      if (r % 7 == 3) v = float(int(v * 100) % 3);  // few distinct values (-2..2 -> <= 5)
      if (u(rng) < 0.01) v = u(rng) < 0.5 ? 0.0f : -0.0f;
      m.w[size_t(r) * cols + c] = f16_to_f32(f32_to_f16(v));
    }
  if (wt != Weights::NONE) {
    m.f.resize(m.w.size());
    for (size_t i = 0; i < m.f.size(); i++) m.f[i] = float(std::pow(10.0, -20 + 23 * u(rng)));
    for (int r = 0; r < rows; r++)
      for (int c = 0; c < cols; c++) {
        float& f = m.f[size_t(r) * cols + c];
        if (wt == Weights::ZERO_ROWS && r % 3 == 1) f = 0;
        if (wt == Weights::SOME_ZERO && u(rng) < 0.3) f = 0;
      }
  }
  m.row_ptr.assign(size_t(rows) + 1, 0);
  for (int r = 0; r < rows; r++) {
    const bool all = r % 11 == 5;  // a row that is all outliers
    for (int c = 0; c < cols; c++)
      if (all || u(rng) < outlier_frac) m.col_idx.push_back(c);
    m.row_ptr[r + 1] = int32_t(m.col_idx.size());
  }
  return m;
}

// (a) Every row's centroids, bit for bit.
void expect_same_centroids(const Module& m, int k) {
  std::vector<double> gpu(size_t(m.rows) * k, NAN);
  const float* f = m.f.empty() ? nullptr : m.f.data();
  kmeans_exact_rows_cuda(m.w.data(), f, m.row_ptr.data(), m.col_idx.data(), m.rows, m.cols, k,
                         gpu.data());
  KMeansWorkspace ws;
  std::vector<float> xs, fs;
  int mismatched = 0;
  for (int r = 0; r < m.rows; r++) {
    xs.clear(), fs.clear();
    for (int c = 0, t = m.row_ptr[r]; c < m.cols; c++) {
      if (t < m.row_ptr[r + 1] && m.col_idx[t] == c) {
        t++;
        continue;
      }
      xs.push_back(m.w[size_t(r) * m.cols + c]);
      if (f) fs.push_back(f[size_t(r) * m.cols + c]);
    }
    const std::vector<double> cpu =
        kmeans_1d_exact_centroids(xs.data(), f ? fs.data() : nullptr, int(xs.size()), k, ws);
    if (std::memcmp(cpu.data(), gpu.data() + size_t(r) * k, size_t(k) * sizeof(double)) != 0) {
      if (++mismatched <= 3) {
        ADD_FAILURE() << "[" << m.rows << ", " << m.cols << "] k " << k << " row " << r
                      << ": centroid 0 cpu " << cpu[0] << " gpu " << gpu[size_t(r) * k]
                      << ", centroid k-1 cpu " << cpu[k - 1] << " gpu "
                      << gpu[size_t(r) * k + k - 1];
      }
    }
  }
  EXPECT_EQ(mismatched, 0) << "rows whose GPU centroids differ from the CPU's";
}

TEST(QuantizeCuda, KMeansOddShapesMatchCpuBitForBit) {
  SQZ_REQUIRE_GPU();
  const int shapes[][2] = {{1, 1}, {3, 5}, {12, 17}, {23, 100}, {31, 300}, {9, 1000}};
  uint32_t seed = 1;
  for (const auto& s : shapes)
    for (int k : {2, 4, 8, 16})
      for (Weights wt : {Weights::NONE, Weights::FISHER, Weights::ZERO_ROWS, Weights::SOME_ZERO}) {
        SCOPED_TRACE(testing::Message() << "shape " << s[0] << "x" << s[1] << " k " << k
                                        << " weights " << int(wt));
        expect_same_centroids(make_module(s[0], s[1], wt, 0.01, seed++), k);
      }
}

TEST(QuantizeCuda, KMeansLlamaWidthsMatchCpuBitForBit) {
  SQZ_REQUIRE_GPU();
  for (int cols : {4096, 11008})
    for (int k : {8, 16}) {
      SCOPED_TRACE(testing::Message() << "cols " << cols << " k " << k);
      expect_same_centroids(make_module(24, cols, Weights::FISHER, 0.0045, 7 + cols + k), k);
    }
}

TEST(QuantizeCuda, KMeansErrors) {
  SQZ_REQUIRE_GPU();
  std::vector<float> x(4, 1.f);
  std::vector<int32_t> rp(2, 0);
  std::vector<double> c(300);
  EXPECT_THROW(kmeans_exact_rows_cuda(x.data(), nullptr, rp.data(), nullptr, 1, 4, 0, c.data()),
               std::invalid_argument);
  EXPECT_THROW(kmeans_exact_rows_cuda(x.data(), nullptr, rp.data(), nullptr, 1, 4, 257, c.data()),
               std::invalid_argument);
  EXPECT_THROW(kmeans_exact_rows_cuda(x.data(), nullptr, rp.data(), nullptr, -1, 4, 4, c.data()),
               std::invalid_argument);
}

// (b) Outlier selection: the same positions and rule flags on both.
TEST(QuantizeCuda, OutlierSelectionMatchesCpu) {
  SQZ_REQUIRE_GPU();
  for (int variant = 0; variant < 4; variant++) {
    Module m = make_module(77, 301, Weights::FISHER, 0, 100 + variant);
    if (variant == 1)  // many ties at the cut-off: a coarse grid of values and weights
      for (size_t i = 0; i < m.w.size(); i++) {
        m.w[i] = float(int(m.w[i] * 200)) / 64;
        m.f[i] = float(i % 5);
      }
    OutlierOptions o;
    o.magnitude_pct = variant == 2 ? 0 : 0.45;
    o.sensitive_pct = variant == 3 ? 0 : 0.05 * (variant + 1);
    o.iqr_range = variant >= 2 ? 1.5 + variant : 0;
    const OutlierSet cpu = select_outliers_with_rules(m.w.data(), m.f.data(), m.rows, m.cols, o);
    o.use_cuda = true;
    const OutlierSet gpu = select_outliers_with_rules(m.w.data(), m.f.data(), m.rows, m.cols, o);
    EXPECT_EQ(gpu.pos, cpu.pos) << "variant " << variant;
    EXPECT_EQ(gpu.rule, cpu.rule) << "variant " << variant;
    EXPECT_GT(cpu.pos.size(), 0u) << "variant " << variant;
  }
  // all and nothing
  std::vector<float> key = {3, 1, 2, 2, 0};
  EXPECT_EQ(top_count_positions_cuda(key.data(), 5, 0), std::vector<int64_t>{});
  EXPECT_EQ(top_count_positions_cuda(key.data(), 5, 5), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(top_count_positions_cuda(key.data(), 5, 2), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(order_statistics_cuda(key.data(), 5, {0, 2, 4}), (std::vector<float>{0, 2, 3}));
  EXPECT_THROW(order_statistics_cuda(key.data(), 5, {5}), std::invalid_argument);
}

// (c) One linear, every setting that reaches the GPU.
TEST(QuantizeCuda, QuantizeLinearMatchesCpu) {
  SQZ_REQUIRE_GPU();
  ThreadPool pool(0);
  for (int bits : {2, 3, 4})
    for (bool with_f : {false, true}) {
      SCOPED_TRACE(testing::Message() << bits << " bits, gradients " << with_f);
      Module m = make_module(97, 513, with_f ? Weights::FISHER : Weights::NONE, 0, 40 + bits);
      LinearQuantOptions o;
      o.bits = bits;
      o.outliers.magnitude_pct = 0.45;
      o.outliers.sensitive_pct = with_f ? 0.05 : 0;
      const float* f = with_f ? m.f.data() : nullptr;
      const QuantizedLinear cpu = quantize_linear(m.w.data(), f, m.rows, m.cols, o, pool);
      o.use_cuda = true;
      const QuantizedLinear gpu = quantize_linear(m.w.data(), f, m.rows, m.cols, o, pool);
      test::expect_same_quantized(cpu, gpu);
    }
}

// (d) A real model end to end.
TEST(QuantizeCuda, DocLlamaWholeModelMatchesCpu) {
  SQZ_REQUIRE_GPU();
  SQZ_SHARED_ASSET(model, "models/doc-llama-26m");
  QuantizeOptions q;
  q.model_path = model;
  q.base.q.bits = 3;
  q.base.q.outliers.magnitude_pct = 0.45;
  auto t0 = std::chrono::steady_clock::now();
  const QuantizeResult cpu = quantize_model(q, nullptr);
  const double cpu_s = seconds_since(t0);
  q.base.q.use_cuda = true;
  t0 = std::chrono::steady_clock::now();
  const QuantizeResult gpu = quantize_model(q, nullptr);
  const double gpu_s = seconds_since(t0);
  std::printf("doc-llama-26m 3-bit 0.45%%: CPU k-means %.2f s, GPU %.2f s\n", cpu_s, gpu_s);
  const auto a = cpu.model.linears(), b = gpu.model.linears();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) {
    const LinearWeight &x = *a[i], &y = *b[i];
    SCOPED_TRACE(x.name);
    ASSERT_EQ(x.kind, WeightKind::PACKED);
    ASSERT_EQ(y.kind, WeightKind::PACKED);
    ASSERT_EQ(x.nnz, y.nnz);
    const size_t k = size_t(1) << x.bits;
    EXPECT_EQ(0, std::memcmp(x.indices, y.indices, size_t(x.rows) * x.row_bytes));
    EXPECT_EQ(0, std::memcmp(x.lut, y.lut, size_t(x.rows) * k * 2));
    EXPECT_EQ(0, std::memcmp(x.col_idx, y.col_idx, size_t(x.nnz) * 4));
    EXPECT_EQ(0, std::memcmp(x.values, y.values, size_t(x.nnz) * 2));
  }
}

}  // namespace
}  // namespace sqz
