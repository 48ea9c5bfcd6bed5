// lut_gemm_cuda (kernels/lut_gemv.cu) against the CPU lut_gemm (kernels/lut_gemv.cpp) on the
// same random packed matrices and the same fp16-rounded activations: bits 2/3/4, odd shapes
// (rows and columns not multiples of 16 or 128), 0, 1 and many outliers per row and a row
// whose every column is an outlier, unsorted CSR columns, token counts that hit every kernel
// path (GEMV 1..8, 9..16, and 17..32 in pieces of up to 16 or 8 tokens; tensor-core GEMM > 32
// with both tile sizes), CUDA graph capture.
// y is poisoned with NaN before each launch: every element must be written. LUT rows on a
// power-of-two grid (kernels/lut_grid.h) take the GEMV's code path: the same checks with
// grid rows, and SQZ_GEMV_GRID=0 against it.
// lut_dequant_cuda (kernels/lut_dequant.cu, the prefill path) against the CPU lut_decode_row
// rounded to fp16: bit for bit, on the same shapes and outlier patterns.
// Skips (does not fail) without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_common.h"
#include "kernels/lut_dequant.h"
#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "kernels/swiglu.h"
#include "model/dtype.h"

namespace sqz {
namespace {

// Per output, |gpu - cpu| <= kRelTol * sum_c |w[r][c] x[t][c]| + kAbsTol. Both accumulate in
// fp32 (the GPU on tensor cores: products of fp16 LUT values / outliers and fp16 x are exact,
// sums are fp32) in different orders; observed errors stay below 1e-6 of sum |w x|.
constexpr double kRelTol = 1e-5;
constexpr double kAbsTol = 1e-6;

bool have_gpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  if (!ok) cudaGetLastError();  // clear the error of a machine without a driver
  return ok;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

template <typename T>
struct DeviceBuf {
  T* p = nullptr;
  size_t n = 0;
  DeviceBuf() = default;
  explicit DeviceBuf(const std::vector<T>& v) { upload(v); }
  void upload(const std::vector<T>& v) {
    cudaFree(p);
    n = v.size();
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
    if (n) CUDA_CHECK(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit DeviceBuf(size_t count) : n(count) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
  }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  std::vector<T> download() const {
    std::vector<T> v(n);
    if (n) CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
};

enum class Outliers {
  NONE,         // no CSR entries
  ONE_PER_ROW,  // exactly one per row
  MANY,         // 40 in every 5th row, 0..3 elsewhere
  FULL_ROW,     // row rows/2 has every column, the others 0..2
  REALISTIC,    // ~0.45% of the row at random positions
  DENSE,        // 20..79 in every row: rows past the GEMV's 32 prefetched entries per row
};

const char* outliers_name(Outliers o) {
  switch (o) {
    case Outliers::NONE:
      return "none";
    case Outliers::ONE_PER_ROW:
      return "one";
    case Outliers::MANY:
      return "many";
    case Outliers::FULL_ROW:
      return "full_row";
    case Outliers::DENSE:
      return "dense";
    default:
      return "realistic";
  }
}

// A random packed matrix (host and device copies) with the given outlier pattern. grid: the
// LUT rows snapped onto a grid (snap_lut_grid) and the device copy given their grid rows.
struct TestMatrix {
  int rows, cols, bits;
  std::vector<uint8_t> packed, grid_rows;
  std::vector<uint16_t> lut, values;
  std::vector<int32_t> row_ptr, col_idx;
  PackedMatrix host;
  DeviceBuf<uint8_t> d_packed, d_grid;
  DeviceBuf<uint16_t> d_lut;
  DeviceBuf<int32_t> d_row_ptr;
  DeviceBuf<uint32_t> d_outliers;  // the GPU's form: col | value << 16
  PackedMatrix dev;

  TestMatrix(int rows_, int cols_, int bits_, Outliers pattern, std::mt19937& rng,
             bool unsorted = false, bool grid = false)
      : rows(rows_), cols(cols_), bits(bits_) {
    std::vector<uint8_t> idx(size_t(rows) * cols);
    for (auto& v : idx) v = uint8_t(rng() % (1u << bits));
    packed.resize(size_t(packed_row_bytes(cols, bits)) * rows);
    pack_indices(idx.data(), rows, cols, bits, packed.data());
    std::normal_distribution<float> nd;
    lut.resize(size_t(rows) << bits);
    for (auto& v : lut) v = f32_to_f16(nd(rng));
    const int k = 1 << bits, gb = lut_grid_row_bytes(bits);
    if (grid) {
      grid_rows.resize(size_t(rows) * gb);
      for (int r = 0; r < rows; r++) {
        float row[16];
        for (int j = 0; j < k; j++) row[j] = f16_to_f32(lut[size_t(r) * k + j]);
        snap_lut_grid(row, k);
        for (int j = 0; j < k; j++) lut[size_t(r) * k + j] = f32_to_f16(row[j]);
        if (!lut_grid_row(&lut[size_t(r) * k], bits, &grid_rows[size_t(r) * gb]))
          throw std::logic_error("TestMatrix: a snapped row is not on a grid");
      }
    }
    row_ptr.push_back(0);
    std::vector<int> perm(cols);
    for (int r = 0; r < rows; r++) {
      int n = 0;
      switch (pattern) {
        case Outliers::NONE:
          n = 0;
          break;
        case Outliers::ONE_PER_ROW:
          n = 1;
          break;
        case Outliers::MANY:
          n = r % 5 == 0 ? 40 : int(rng() % 4);
          break;
        case Outliers::FULL_ROW:
          n = r == rows / 2 ? cols : int(rng() % 3);
          break;
        case Outliers::REALISTIC:
          n = int(std::poisson_distribution<int>(0.0045 * cols)(rng));
          break;
        case Outliers::DENSE:
          n = 20 + int(rng() % 60);
          break;
      }
      n = std::min(n, cols);
      for (int c = 0; c < cols; c++) perm[c] = c;
      for (int i = 0; i < n; i++)
        std::swap(perm[i], perm[i + rng() % (cols - i)]);  // partial shuffle
      std::sort(perm.begin(), perm.begin() + n);
      if (unsorted) std::shuffle(perm.begin(), perm.begin() + n, rng);
      for (int i = 0; i < n; i++)
        col_idx.push_back(perm[i]), values.push_back(f32_to_f16(nd(rng) * 4));
      row_ptr.push_back(int32_t(col_idx.size()));
    }
    host.rows = rows, host.cols = cols, host.bits = bits, host.indices = packed.data();
    host.row_bytes = packed_row_bytes(cols, bits), host.lut = lut.data();
    host.row_ptr = row_ptr.data(), host.col_idx = col_idx.data(), host.values = values.data();
    host.nnz = int64_t(values.size());
    d_packed.upload(to_gpu_tiled(packed.data(), rows, host.row_bytes, bits));
    d_lut.upload(lut);
    d_row_ptr.upload(row_ptr);
    std::vector<uint32_t> words(values.size());
    pack_outliers(col_idx.data(), values.data(), host.nnz, words.data());
    d_outliers.upload(words);
    dev = host;
    dev.indices = d_packed.p, dev.lut = d_lut.p, dev.row_ptr = d_row_ptr.p;
    dev.col_idx = nullptr, dev.values = nullptr, dev.outliers = d_outliers.p;
    if (grid) d_grid.upload(grid_rows), dev.grid = d_grid.p;
  }
};

ThreadPool& pool() {
  static ThreadPool p(0);
  return p;
}

// Random fp16 activations [n, cols] and their exact fp32 values.
void random_x(int n, int cols, std::mt19937& rng, std::vector<uint16_t>& x16,
              std::vector<float>& x32) {
  std::normal_distribution<float> nd;
  x16.resize(size_t(n) * cols);
  x32.resize(x16.size());
  for (size_t i = 0; i < x16.size(); i++) x16[i] = f32_to_f16(nd(rng)), x32[i] = f16_to_f32(x16[i]);
}

// sum_c |W[r][c] x[t][c]| for every output, W the dense reconstruction (LUT + outliers).
std::vector<double> abs_scale(const PackedMatrix& w, const std::vector<float>& x, int n) {
  std::vector<double> s(size_t(n) * w.rows);
  pool().parallel_for(w.rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(w.cols);
    for (int64_t r = r0; r < r1; r++) {
      lut_decode_row(w, int(r), row.data());
      for (int t = 0; t < n; t++) {
        double a = 0;
        const float* xt = x.data() + size_t(t) * w.cols;
        for (int c = 0; c < w.cols; c++) a += std::fabs(double(row[c]) * xt[c]);
        s[size_t(t) * w.rows + r] = a;
      }
    }
  });
  return s;
}

// Runs lut_gemm_cuda and compares with lut_gemm; returns the largest |err| / sum|wx|.
double check_case(TestMatrix& m, int n, std::mt19937& rng, const std::string& what) {
  std::vector<uint16_t> x16;
  std::vector<float> x32;
  random_x(n, m.cols, rng, x16, x32);
  std::vector<float> ref(size_t(n) * m.rows);
  lut_gemm(m.host, x32.data(), n, ref.data(), pool());
  const std::vector<double> scale = abs_scale(m.host, x32, n);

  DeviceBuf<uint16_t> d_x(x16);
  DeviceBuf<float> d_y(ref.size());
  CUDA_CHECK(cudaMemset(d_y.p, 0xff, ref.size() * sizeof(float)));  // NaN everywhere
  lut_gemm_cuda(m.dev, d_x.p, n, d_y.p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> y = d_y.download();

  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < y.size(); i++) {
    const double err = std::fabs(double(y[i]) - ref[i]);
    if (!(err <= kRelTol * scale[i] + kAbsTol)) {
      if (bad++ < 10)
        ADD_FAILURE() << what << ": token " << i / m.rows << " row " << i % m.rows << ": gpu "
                      << y[i] << " cpu " << ref[i] << " (sum|wx| " << scale[i] << ")";
    } else {
      worst = std::max(worst, err / (scale[i] + 1e-30));
    }
  }
  if (bad) ADD_FAILURE() << what << ": " << bad << " of " << y.size() << " outputs wrong";
  return worst;
}

std::string case_name(int rows, int cols, int bits, Outliers o, int n, bool grid = false) {
  return std::to_string(rows) + "x" + std::to_string(cols) + " bits " + std::to_string(bits) +
         (grid ? " grid" : "") + " outliers " + outliers_name(o) + " tokens " + std::to_string(n);
}

const Outliers kPatterns[] = {Outliers::NONE, Outliers::ONE_PER_ROW, Outliers::MANY,
                              Outliers::FULL_ROW, Outliers::DENSE};

// Bit widths, and whether the LUT rows are on a grid (the GEMV's code path: 4 bits).
struct BitsForm {
  int bits;
  bool grid;
};
const BitsForm kBitsForms[] = {{2, false}, {3, false}, {4, false}, {4, true}};

// First in the file: under ctest each test is its own process, so this is the very first
// lut_gemm_cuda call of the process, made inside a (global-mode) stream capture.
TEST(LutGemmCuda, FirstCallInsideGraphCapture) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  TestMatrix m(100, 300, 3, Outliers::MANY, rng);
  for (int n : {1, 9, 40}) {
    std::vector<uint16_t> x16;
    std::vector<float> x32;
    random_x(n, m.cols, rng, x16, x32);
    std::vector<float> ref(size_t(n) * m.rows);
    lut_gemm(m.host, x32.data(), n, ref.data(), pool());
    DeviceBuf<uint16_t> d_x(x16);
    DeviceBuf<float> d_y(ref.size());
    CUDA_CHECK(cudaMemset(d_y.p, 0xff, ref.size() * sizeof(float)));
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    lut_gemm_cuda(m.dev, d_x.p, n, d_y.p, stream);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaGraphLaunch(exec, stream));  // replays are idempotent
    CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> y = d_y.download();
    const std::vector<double> scale = abs_scale(m.host, x32, n);
    for (size_t i = 0; i < y.size(); i++)
      ASSERT_LE(std::fabs(double(y[i]) - ref[i]), kRelTol * scale[i] + kAbsTol)
          << "tokens " << n << " i " << i;
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaStreamDestroy(stream));
  }
}

TEST(LutGemmCuda, OddShapesEveryPath) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int rows, cols;
    bool medium;  // also run 512 tokens
  };
  const Shape shapes[] = {
      {1, 1, false}, {7, 13, false}, {33, 129, false}, {130, 257, true}, {64, 1000, true}};
  std::mt19937 rng(1);
  double worst = 0, worst_grid = 0;
  for (int bits : {2, 3, 4})
    for (bool grid : {false, true}) {
      if (grid && !lut_grid_used(bits)) continue;
      for (Shape s : shapes)
        for (Outliers o : kPatterns) {
          TestMatrix m(s.rows, s.cols, bits, o, rng, false, grid);
          for (int n : {1, 2, 3, 8, 9, 16, 17, 32, 33, 64, 512}) {
            if (n == 512 && !s.medium) continue;
            double& w = grid ? worst_grid : worst;
            w = std::max(w, check_case(m, n, rng, case_name(s.rows, s.cols, bits, o, n, grid)));
          }
        }
    }
  std::printf("largest |err| / sum|wx|: %.3g (grid rows %.3g)\n", worst, worst_grid);
}

TEST(LutGemmCuda, Medium1000x3000) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(2);
  double worst = 0;
  for (int bits : {2, 3, 4})
    for (Outliers o : kPatterns) {
      TestMatrix m(1000, 3000, bits, o, rng);
      for (int n : {1, 2, 3, 8, 9, 16, 17, 32, 33, 64, 512})
        worst = std::max(worst, check_case(m, n, rng, case_name(1000, 3000, bits, o, n)));
    }
  std::printf("largest |err| / sum|wx|: %.3g\n", worst);
}

// LLaMA-7B shapes, one bit width each, realistic outliers (plus a full row for one).
TEST(LutGemmCuda, Llama7bShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  double worst = 0;
  {
    TestMatrix m(4096, 4096, 3, Outliers::REALISTIC, rng);
    for (int n : {1, 8, 16, 17, 32, 64})
      worst =
          std::max(worst, check_case(m, n, rng, case_name(4096, 4096, 3, Outliers::REALISTIC, n)));
  }
  {
    TestMatrix m(11008, 4096, 4, Outliers::REALISTIC, rng);
    for (int n : {1, 3, 16, 64})
      worst =
          std::max(worst, check_case(m, n, rng, case_name(11008, 4096, 4, Outliers::REALISTIC, n)));
  }
  {
    TestMatrix m(4096, 11008, 3, Outliers::FULL_ROW, rng);
    for (int n : {1, 8, 16, 17, 32})
      worst =
          std::max(worst, check_case(m, n, rng, case_name(4096, 11008, 3, Outliers::FULL_ROW, n)));
  }
  {
    TestMatrix m(4096, 11008, 4, Outliers::REALISTIC, rng);
    for (int n : {2, 12})
      worst =
          std::max(worst, check_case(m, n, rng, case_name(4096, 11008, 4, Outliers::REALISTIC, n)));
  }
  std::printf("largest |err| / sum|wx|: %.3g\n", worst);
}

// 3/2 bits with x large enough that items of 2 units give more blocks per SM (launch_gemv):
// 333 x 3999 at 5 and 8 tokens takes the G = 2 kernels (1 token stays on G = 4).
TEST(LutGemmCuda, ItemsOfTwoUnits) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  for (int bits : {2, 3})
    for (Outliers o : kPatterns) {
      TestMatrix m(333, 3999, bits, o, rng);
      for (int n : {1, 5, 8}) check_case(m, n, rng, case_name(333, 3999, bits, o, n));
    }
}

// CSR columns in random order within each row: the GEMM applies late entries from global x.
TEST(LutGemmCuda, UnsortedOutlierColumns) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(4);
  for (int bits : {3, 4}) {
    TestMatrix m(200, 1000, bits, Outliers::MANY, rng, /*unsorted=*/true);
    for (int n : {1, 16, 17, 300})
      check_case(m, n, rng, case_name(200, 1000, bits, Outliers::MANY, n) + " unsorted");
  }
}

// x at an odd address (2 bytes off 16-byte alignment): the scalar staging paths.
TEST(LutGemmCuda, UnalignedActivations) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  TestMatrix m(77, 512, 4, Outliers::MANY, rng);
  for (int n : {1, 5, 12, 40}) {
    std::vector<uint16_t> x16;
    std::vector<float> x32;
    random_x(n, m.cols, rng, x16, x32);
    std::vector<float> ref(size_t(n) * m.rows);
    lut_gemm(m.host, x32.data(), n, ref.data(), pool());
    std::vector<uint16_t> shifted(x16.size() + 1);
    std::copy(x16.begin(), x16.end(), shifted.begin() + 1);
    DeviceBuf<uint16_t> d_x(shifted);
    DeviceBuf<float> d_y(ref.size());
    CUDA_CHECK(cudaMemset(d_y.p, 0xff, ref.size() * sizeof(float)));
    lut_gemm_cuda(m.dev, d_x.p + 1, n, d_y.p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> y = d_y.download();
    const std::vector<double> scale = abs_scale(m.host, x32, n);
    for (size_t i = 0; i < y.size(); i++)
      ASSERT_LE(std::fabs(double(y[i]) - ref[i]), kRelTol * scale[i] + kAbsTol)
          << "tokens " << n << " i " << i;
  }
}

TEST(LutGemmCuda, ZeroTokensIsANoOp) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(6);
  TestMatrix m(16, 128, 3, Outliers::NONE, rng);
  DeviceBuf<float> d_y(16);
  CUDA_CHECK(cudaMemset(d_y.p, 0, 16 * sizeof(float)));
  DeviceBuf<uint16_t> d_x(128);
  lut_gemm_cuda(m.dev, d_x.p, 0, d_y.p, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  for (float v : d_y.download()) EXPECT_EQ(v, 0.0f);
}

TEST(LutGemmCuda, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  TestMatrix m(16, 128, 3, Outliers::NONE, rng);
  DeviceBuf<uint16_t> d_x(128);
  DeviceBuf<float> d_y(16);
  PackedMatrix w = m.dev;
  w.bits = 5;
  EXPECT_THROW(lut_gemm_cuda(w, d_x.p, 1, d_y.p, nullptr), std::invalid_argument);
  w = m.dev;
  w.row_bytes += 16;
  EXPECT_THROW(lut_gemm_cuda(w, d_x.p, 1, d_y.p, nullptr), std::invalid_argument);
  w = m.dev;
  w.indices += 8;
  EXPECT_THROW(lut_gemm_cuda(w, d_x.p, 1, d_y.p, nullptr), std::invalid_argument);
  w = m.dev;
  w.nnz = 5, w.outliers = nullptr;
  EXPECT_THROW(lut_gemm_cuda(w, d_x.p, 1, d_y.p, nullptr), std::invalid_argument);
  w = m.dev;  // 16-bit outlier columns on the GPU
  w.cols = kLutGpuMaxCols + 128, w.row_bytes = packed_row_bytes(w.cols, w.bits);
  EXPECT_THROW(lut_gemm_cuda(w, d_x.p, 1, d_y.p, nullptr), std::invalid_argument);
}

// ---- fusions (LutGemmFusion) ----------------------------------------------------------

// Runs lut_gemm_cuda with fusion f (y pre-filled with y_init) and returns y, or swiglu_out.
std::vector<float> run_fused(const TestMatrix& m, const uint16_t* d_x, int n,
                             const LutGemmFusion& f, const std::vector<float>& y_init) {
  DeviceBuf<float> d_y(y_init);
  lut_gemm_cuda(m.dev, d_x, n, d_y.p, nullptr, f);
  CUDA_CHECK(cudaDeviceSynchronize());
  return d_y.download();
}

// Residual add: y = y0 + W x, bit for bit the unfused result added to y0. Tokens run in
// pieces (lut_gemm_cuda): 27 in two at 1000 columns; 11 and 27 in pieces of up to 8 at 12000
// (x of more than 8 tokens does not fit the shared memory in one piece).
TEST(LutGemmFusion, AccumulateIntoY) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(22);
  for (int cols : {1000, 12000})
    for (int n : {1, 6, 11, 27}) {
      SCOPED_TRACE("cols " + std::to_string(cols));
      TestMatrix m(333, cols, 3, Outliers::MANY, rng);
      std::vector<uint16_t> x16;
      std::vector<float> x32, y0(size_t(n) * m.rows);
      random_x(n, m.cols, rng, x16, x32);
      std::normal_distribution<float> nd;
      for (auto& v : y0) v = nd(rng);
      DeviceBuf<uint16_t> d_x(x16);
      const std::vector<float> plain = run_fused(m, d_x.p, n, LutGemmFusion{}, y0);
      LutGemmFusion f;
      f.accumulate = true;
      const std::vector<float> acc = run_fused(m, d_x.p, n, f, y0);
      for (size_t i = 0; i < y0.size(); i++)
        ASSERT_EQ(acc[i], y0[i] + plain[i]) << "n " << n << " i " << i;
    }
}

// The SwiGLU fusion's output for x (device) against swiglu_cuda of the unfused product
// d_plain (device, [n, rows]), bit for bit.
void expect_swiglu_fusion(const TestMatrix& m, const uint16_t* d_x, const float* d_plain,
                          int n) {
  const int hidden = m.rows / 2;
  DeviceBuf<uint16_t> want(size_t(n) * hidden), got(size_t(n) * hidden);
  swiglu_cuda(d_plain, n, hidden, 8, want.p, nullptr);
  CUDA_CHECK(cudaMemset(got.p, 0xff, got.n * 2));
  LutGemmFusion f;
  f.swiglu_out = got.p;
  lut_gemm_cuda(m.dev, d_x, n, nullptr, nullptr, f);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(got.download(), want.download()) << "swiglu";
}

// SwiGLU of gate/up rows interleaved by 8: bit for bit swiglu_cuda of the unfused output.
TEST(LutGemmFusion, SwigluOutput) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(23);
  for (int cols : {1000, 12000})
    for (int n : {1, 7, 13, 30}) {
      SCOPED_TRACE("n " + std::to_string(n) + " cols " + std::to_string(cols));
      const int hidden = 8 * 45;
      TestMatrix m(2 * hidden, cols, 3, Outliers::MANY, rng);
      std::vector<uint16_t> x16;
      std::vector<float> x32;
      random_x(n, m.cols, rng, x16, x32);
      DeviceBuf<uint16_t> d_x(x16);
      DeviceBuf<float> d_y(size_t(n) * m.rows);
      lut_gemm_cuda(m.dev, d_x.p, n, d_y.p, nullptr);
      expect_swiglu_fusion(m, d_x.p, d_y.p, n);
    }
}

// Lane 0's sum after the kernels' n-lane xor shuffle tree (n a power of 2, at most 32): in
// round o = n / 2, ..., 1 every lane l adds lane l ^ o. Overwrites v.
float xor_tree_sum(float* v, int n) {
  for (int o = n / 2; o >= 1; o >>= 1) {
    float nv[32];
    for (int l = 0; l < n; l++) nv[l] = v[l] + v[l ^ o];
    std::copy(nv, nv + n, v);
  }
  return v[0];
}

// The norm fusion's scale, computed as the kernel does (kernels/lut_gemv.cu,
// gemv_stage_x_norm, in every warp): lane l of 32 sums partials l, l + 32, ... in order; a
// 32-lane xor tree; then 1 / sqrt(s / cols + eps), all in fp32.
float kernel_norm_scale(const float* parts, int n_parts, int cols, float eps) {
  float v[32];
  for (int l = 0; l < 32; l++) {
    v[l] = 0.0f;
    for (int i = l; i < n_parts; i += 32) v[l] += parts[i];
  }
  return 1.0f / std::sqrt(xor_tree_sum(v, 32) / float(cols) + eps);
}

// The norm fusion's inputs for x [n, cols]: the producer's partial sums of squares (parts
// [n, ceil(cols / 16)]), the scale per token the kernel computes from them
// (kernel_norm_scale) and x as the kernel stages it, fp16(x * scale * w).
struct NormInput {
  std::vector<float> parts, scale;
  std::vector<uint16_t> xn;
};
NormInput norm_input(const std::vector<float>& x, const std::vector<float>& w, int n, int cols,
                     float eps) {
  const int n_parts = (cols + 15) / 16;
  NormInput in{std::vector<float>(size_t(n) * n_parts, 0.0f), std::vector<float>(n),
               std::vector<uint16_t>(x.size())};
  for (int t = 0; t < n; t++) {
    for (int c = 0; c < cols; c++) {
      const float v = x[size_t(t) * cols + c];
      in.parts[size_t(t) * n_parts + c / 16] += v * v;
    }
    const float sc = kernel_norm_scale(&in.parts[size_t(t) * n_parts], n_parts, cols, eps);
    in.scale[t] = sc;
    for (int c = 0; c < cols; c++)
      in.xn[size_t(t) * cols + c] = f32_to_f16(x[size_t(t) * cols + c] * sc * w[c]);
  }
  return in;
}

// sumsq_out of y [n, rows]: per token and 16-row tile the kernel's 16-lane xor tree of y^2
// (rows past the end count 0), bit for bit.
void expect_tile_sumsq(const std::vector<float>& y, const std::vector<float>& ss, int rows,
                       int n) {
  const int tiles = (rows + 15) / 16;
  for (int t = 0; t < n; t++)
    for (int j = 0; j < tiles; j++) {
      float v[16];
      for (int l = 0; l < 16; l++) {
        const int r = 16 * j + l;
        const float yr = r < rows ? y[size_t(t) * rows + r] : 0.0f;
        v[l] = yr * yr;
      }
      ASSERT_EQ(ss[size_t(t) * tiles + j], xor_tree_sum(v, 16)) << "token " << t << " tile " << j;
    }
}

// RMSNorm in front: the same bits as the plain kernel on x = fp16(norm_x * scale * norm_w)
// with the scale summed in the kernel's order, and that scale within 1e-6 of the exact one.
TEST(LutGemmFusion, NormInFront) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(25);
  std::normal_distribution<float> nd;
  const float eps = 1e-5f;
  for (int bits : {2, 3, 4})
    for (int cols : {1000, 4096, 5000})
      for (int n : {1, 5, 8}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + " cols " + std::to_string(cols) + " n " +
                     std::to_string(n));
        TestMatrix m(333, cols, bits, Outliers::MANY, rng);
        ASSERT_TRUE(lut_gemm_cuda_norm_fusable(m.dev, n));
        std::vector<float> x(size_t(n) * cols), w(cols);
        for (auto& v : x) v = 3.0f * nd(rng);
        for (auto& v : w) v = 1.0f + 0.2f * nd(rng);
        const NormInput in = norm_input(x, w, n, cols, eps);
        for (int t = 0; t < n; t++) {
          double exact = 0;
          for (int c = 0; c < cols; c++) {
            const double v = x[size_t(t) * cols + c];
            exact += v * v;
          }
          EXPECT_NEAR(in.scale[t], 1.0 / std::sqrt(exact / cols + eps), 1e-6 * in.scale[t]);
        }
        DeviceBuf<uint16_t> d_xn(in.xn);
        const std::vector<float> y0(size_t(n) * m.rows, 0.0f);
        const std::vector<float> want = run_fused(m, d_xn.p, n, LutGemmFusion{}, y0);
        DeviceBuf<float> d_x(x), d_w(w), d_parts(in.parts);
        LutGemmFusion f;
        f.norm_x = d_x.p, f.norm_w = d_w.p, f.norm_sumsq = d_parts.p, f.norm_eps = eps;
        EXPECT_EQ(run_fused(m, nullptr, n, f, y0), want);
      }
}

// The partial sums of squares of the output (after the residual add): per token and 16-row
// tile, the 16-lane xor tree of y^2 the kernel uses, bit for bit; the last tile of 333 rows
// is partial.
TEST(LutGemmFusion, SumsOfSquaresOut) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(26);
  std::normal_distribution<float> nd;
  for (int n : {1, 3, 8, 11, 25}) {
    SCOPED_TRACE("n " + std::to_string(n));
    TestMatrix m(333, 1000, 3, Outliers::MANY, rng);
    const int tiles = (m.rows + 15) / 16;
    std::vector<uint16_t> x16;
    std::vector<float> x32, y0(size_t(n) * m.rows);
    random_x(n, m.cols, rng, x16, x32);
    for (auto& v : y0) v = nd(rng);
    DeviceBuf<uint16_t> d_x(x16);
    DeviceBuf<float> d_y(y0), d_ss(size_t(n) * tiles);
    LutGemmFusion f;
    f.accumulate = true, f.sumsq_out = d_ss.p;
    lut_gemm_cuda(m.dev, d_x.p, n, d_y.p, nullptr, f);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_tile_sumsq(d_y.download(), d_ss.download(), m.rows, n);
  }
}

// Random inputs for the fusion checks of one shape and token count: x (fp16) and y0 for the
// linear, and the norm's fp32 residual rows, weights and partial sums with its prestaged x.
struct FusionHost {
  std::vector<uint16_t> x16;
  std::vector<float> y0, xr, w;
  NormInput in;
};
FusionHost fusion_host(int rows, int cols, int n, float eps, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  FusionHost h;
  std::vector<float> x32;
  random_x(n, cols, rng, h.x16, x32);
  h.y0.resize(size_t(n) * rows), h.xr.resize(size_t(n) * cols), h.w.resize(cols);
  for (auto& v : h.y0) v = nd(rng);
  for (auto& v : h.xr) v = 3.0f * nd(rng);
  for (auto& v : h.w) v = 1.0f + 0.2f * nd(rng);
  h.in = norm_input(h.xr, h.w, n, cols, eps);
  return h;
}
// The same on the device, with the norm fusion that reads them.
struct FusionInputs {
  FusionHost h;
  DeviceBuf<uint16_t> d_x, d_xn;
  DeviceBuf<float> d_xr, d_w, d_parts;
  LutGemmFusion norm;
  FusionInputs(int rows, int cols, int n, float eps, std::mt19937& rng)
      : h(fusion_host(rows, cols, n, eps, rng)),
        d_x(h.x16),
        d_xn(h.in.xn),
        d_xr(h.xr),
        d_w(h.w),
        d_parts(h.in.parts) {
    norm.norm_x = d_xr.p, norm.norm_w = d_w.p, norm.norm_sumsq = d_parts.p, norm.norm_eps = eps;
  }
};

// An environment variable set for the scope, its previous state restored after:
// SQZ_GEMV_GROUPS (kernels/lut_gemv.cu, choose_gemv: the GEMV as one or two groups of 8 warps
// per block) and SQZ_GEMV_CLUSTER (gemv_cluster: 0 never in clusters, 1 wherever they can run).
struct ScopedEnv {
  ScopedEnv(const char* name, const char* v) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, v, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// Two groups of 8 warps per block sharing x (what the launcher takes where one group fits
// only one block per SM) and one group, each forced where it can run: the CPU's product, and
// every fusion bit for bit against the same form's plain product (the fusion tests above),
// over odd shapes, 1..16 tokens and every item size (G = 4, 2, and 1 where x is large: 11008
// columns at 8 tokens, 4096 at 16 for 4 bits; at 8 tokens with the compact partial tiles, whose
// SwiGLU epilogue the 32 x 11008 shape checks). (The two forms can take different item sizes,
// which sum in a different order, so their bits are not compared with each other.)
TEST(LutGemmCuda, TwoGroupsEveryFusion) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(27);
  struct Shape {
    int rows, cols;
  };
  const Shape shapes[] = {{1, 1},     {7, 13},     {33, 129},  {336, 1000},
                          {48, 4096}, {40, 11008}, {32, 11008}};
  const float eps = 1e-5f;
  for (const BitsForm bf : kBitsForms)
    for (Shape s : shapes) {
      const int bits = bf.bits;
      TestMatrix m(s.rows, s.cols, bits, Outliers::MANY, rng, false, bf.grid);
      const int tiles = (s.rows + 15) / 16;
      for (int n : {1, 3, 8, 9, 16}) {
        const FusionInputs f(s.rows, s.cols, n, eps, rng);
        const std::vector<float>& y0 = f.h.y0;
        for (const char* form : {"1", "2"}) {
          const std::string what =
              case_name(s.rows, s.cols, bits, Outliers::MANY, n, bf.grid) + " groups " + form;
          SCOPED_TRACE(what);
          ScopedEnv scope("SQZ_GEMV_GROUPS", form);
          check_case(m, n, rng, what);

          DeviceBuf<float> d_plain(y0);
          lut_gemm_cuda(m.dev, f.d_x.p, n, d_plain.p, nullptr);
          CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> plain = d_plain.download();

          DeviceBuf<float> d_acc(y0), d_ss(size_t(n) * tiles);
          LutGemmFusion acc;
          acc.accumulate = true, acc.sumsq_out = d_ss.p;
          lut_gemm_cuda(m.dev, f.d_x.p, n, d_acc.p, nullptr, acc);
          CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> y = d_acc.download();
          for (size_t i = 0; i < y.size(); i++) ASSERT_EQ(y[i], y0[i] + plain[i]) << "i " << i;
          expect_tile_sumsq(y, d_ss.download(), s.rows, n);

          if (s.rows % 16 == 0) expect_swiglu_fusion(m, f.d_x.p, d_plain.p, n);

          if (lut_gemm_cuda_norm_fusable(m.dev, n)) {
            EXPECT_EQ(run_fused(m, nullptr, n, f.norm, y0),
                      run_fused(m, f.d_xn.p, n, LutGemmFusion{}, y0))
                << "norm in front";
          }
        }
      }
    }
}

// Blocks in clusters of two that share one staging of x (SQZ_GEMV_CLUSTER=1: wherever the
// blocks are single groups with x in one piece and the grid is even, on sm_90) against blocks
// on their own (SQZ_GEMV_CLUSTER=0): the CPU's product, and the plain product, the residual
// add with its sums of squares and the norm in front, each bit for bit between the two (the
// staged x is the same, so is every sum), over 2-4 bits, 1, 3 and 8 tokens, and grids of 2 to
// 128 blocks (partial tiles and odd widths included); SwiGLU against swiglu_cuda.
TEST(LutGemmCuda, ClusterPairsEveryFusion) {
  SKIP_WITHOUT_GPU();
  int dev = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  std::mt19937 rng(28);
  struct Shape {
    int rows, cols;
  };
  const Shape shapes[] = {{32, 129}, {30, 1000}, {64, 4096}, {96, 11008}, {2048, 4096}};
  const float eps = 1e-5f;
  int paired = 0;
  for (const BitsForm bf : kBitsForms)
    for (Shape s : shapes) {
      const int bits = bf.bits;
      TestMatrix m(s.rows, s.cols, bits, Outliers::MANY, rng, false, bf.grid);
      const int tiles = (s.rows + 15) / 16;
      for (int n : {1, 3, 8}) {
        const std::string what = case_name(s.rows, s.cols, bits, Outliers::MANY, n, bf.grid);
        SCOPED_TRACE(what);
        ScopedEnv pairs("SQZ_GEMV_CLUSTER", "1");  // wherever they can run
        check_case(m, n, rng, what);
        const int cluster = lut_gemm_cuda_last_cluster();
        // Where the plan is surely one group with x in one piece: up to 4096 columns.
        if (major >= 9 && s.cols <= 4096) {
          EXPECT_EQ(cluster, 2);
        }
        paired += cluster == 2;

        const FusionInputs f(s.rows, s.cols, n, eps, rng);
        const std::vector<float>& y0 = f.h.y0;
        const bool fusable = lut_gemm_cuda_norm_fusable(m.dev, n);
        struct Out {
          std::vector<float> plain, acc, sumsq, norm;
        };
        auto run_all = [&]() {
          Out o;
          o.plain = run_fused(m, f.d_x.p, n, LutGemmFusion{}, y0);
          DeviceBuf<float> d_ss(size_t(n) * tiles);
          LutGemmFusion acc;
          acc.accumulate = true, acc.sumsq_out = d_ss.p;
          o.acc = run_fused(m, f.d_x.p, n, acc, y0);
          o.sumsq = d_ss.download();
          if (fusable) o.norm = run_fused(m, nullptr, n, f.norm, y0);
          return o;
        };
        const Out on = run_all();
        Out off;
        {
          ScopedEnv scope("SQZ_GEMV_CLUSTER", "0");
          off = run_all();
          EXPECT_EQ(lut_gemm_cuda_last_cluster(), 1);
        }
        EXPECT_EQ(on.plain, off.plain);
        EXPECT_EQ(on.acc, off.acc);
        EXPECT_EQ(on.sumsq, off.sumsq);
        EXPECT_EQ(on.norm, off.norm);
        if (fusable) {
          EXPECT_EQ(on.norm, run_fused(m, f.d_xn.p, n, LutGemmFusion{}, y0)) << "norm";
        }
        if (s.rows % 16 == 0) {
          DeviceBuf<float> d_plain(on.plain);
          expect_swiglu_fusion(m, f.d_x.p, d_plain.p, n);
        }
      }
    }
  if (major >= 9) {
    EXPECT_GT(paired, 0);
  }
}

// LUT rows on a grid at LLaMA-7B shapes; and the dispatch: a grid row's scale doubled on the
// device changes that row's result where the GEMV reads the grid rows (4 bits, up to 8
// tokens per launch) but not with SQZ_GEMV_GRID=0 (fp16 entries), nor at 3 bits, at 9..16
// tokens (the 16-token GEMV decodes fp16 entries) or past the GEMV (the GEMM reads the LUT).
TEST(LutGemmCuda, GridRows) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(29);
  double worst = 0;
  {
    TestMatrix m(4096, 4096, 3, Outliers::REALISTIC, rng, false, true);
    for (int n : {1, 8, 9, 16})
      worst = std::max(
          worst, check_case(m, n, rng, case_name(4096, 4096, 3, Outliers::REALISTIC, n, true)));
  }
  {
    TestMatrix m(4096, 11008, 4, Outliers::REALISTIC, rng, false, true);
    for (int n : {1, 8, 16, 32})
      worst = std::max(
          worst, check_case(m, n, rng, case_name(4096, 11008, 4, Outliers::REALISTIC, n, true)));
  }
  std::printf("largest |err| / sum|wx|: %.3g\n", worst);

  for (int bits : {3, 4}) {
    TestMatrix m(48, 1000, bits, Outliers::MANY, rng, false, true);
    std::vector<uint8_t> bad = m.grid_rows;
    float scale;
    std::memcpy(&scale, &bad[1 << bits], 4);
    scale *= 2;
    std::memcpy(&bad[1 << bits], &scale, 4);
    m.d_grid.upload(bad);
    m.dev.grid = m.d_grid.p;
    for (int n : {1, 8, 16, 40}) {
      std::vector<uint16_t> x16;
      std::vector<float> x32, ref(size_t(n) * m.rows);
      random_x(n, m.cols, rng, x16, x32);
      lut_gemm(m.host, x32.data(), n, ref.data(), pool());
      DeviceBuf<uint16_t> d_x(x16);
      for (const char* env : {"1", "0"}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + " tokens " + std::to_string(n) +
                     " SQZ_GEMV_GRID=" + env);
        ScopedEnv scope("SQZ_GEMV_GRID", env);
        const std::vector<float> y = run_fused(m, d_x.p, n, LutGemmFusion{}, ref);
        const bool grid_read = env[0] == '1' && n <= 8 && lut_grid_used(bits);
        for (int t = 0; t < n; t++) {
          const float want = ref[size_t(t) * m.rows], got = y[size_t(t) * m.rows];
          if (grid_read)
            EXPECT_GT(std::fabs(got - want), 1e-3f * std::fabs(want)) << "token " << t;
          else
            EXPECT_NEAR(got, want, 1e-4f * (std::fabs(want) + 1.0f)) << "token " << t;
        }
      }
    }
  }
}

TEST(LutGemmFusion, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(24);
  TestMatrix m(40, 128, 3, Outliers::NONE, rng);
  const int n_big = kLutGemvMaxTokens + 1;  // not the GEMV
  DeviceBuf<uint16_t> d_x(size_t(n_big) * 128), d_h(size_t(n_big) * 20);
  DeviceBuf<float> d_y(size_t(n_big) * 40);
  LutGemmFusion acc;
  acc.accumulate = true;
  EXPECT_THROW(lut_gemm_cuda(m.dev, d_x.p, n_big, d_y.p, nullptr, acc), std::invalid_argument);
  LutGemmFusion sw;
  sw.swiglu_out = d_h.p;  // 40 rows: not a multiple of 16
  EXPECT_THROW(lut_gemm_cuda(m.dev, d_x.p, 1, d_y.p, nullptr, sw), std::invalid_argument);
  DeviceBuf<float> d_f(size_t(n_big) * 128);
  LutGemmFusion norm;
  norm.norm_x = d_f.p, norm.norm_w = d_f.p;  // no partial sums
  EXPECT_THROW(lut_gemm_cuda(m.dev, nullptr, 1, d_y.p, nullptr, norm), std::invalid_argument);
  norm.norm_sumsq = d_f.p;  // 9 tokens: more than the norm fusion takes
  EXPECT_THROW(lut_gemm_cuda(m.dev, nullptr, 9, d_y.p, nullptr, norm), std::invalid_argument);
  EXPECT_FALSE(lut_gemm_cuda_norm_fusable(m.dev, 9));
  TestMatrix wide(16, 60000, 3, Outliers::NONE, rng);  // x of 8 x 60000 fp16: no room
  EXPECT_FALSE(lut_gemm_cuda_norm_fusable(wide.dev, 8));
  EXPECT_TRUE(lut_gemm_cuda_norm_fusable(wide.dev, 1));
}

// lut_dequant_cuda: every element equals f32_to_f16 of the CPU row (LUT value + outliers in
// fp32), bit for bit. `offset` (elements) shifts the output off 16-byte alignment, which
// forces the scalar stores; a guard element on each side must stay untouched.
void check_dequant(const TestMatrix& m, int offset, const std::string& what) {
  const size_t n = size_t(m.rows) * m.cols;
  DeviceBuf<uint16_t> d_out(n + offset + 1);
  CUDA_CHECK(cudaMemset(d_out.p, 0xff, (n + offset + 1) * 2));  // 0xffff: a NaN, never a result
  lut_dequant_cuda(m.dev, d_out.p + offset, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> out = d_out.download();
  if (offset > 0) {
    ASSERT_EQ(out[offset - 1], 0xffff) << what << ": wrote before the matrix";
  }
  ASSERT_EQ(out[offset + n], 0xffff) << what << ": wrote past the matrix";
  std::vector<float> row(m.cols);
  int bad = 0;
  for (int r = 0; r < m.rows; r++) {
    lut_decode_row(m.host, r, row.data());
    for (int c = 0; c < m.cols; c++) {
      const uint16_t want = f32_to_f16(row[c]), got = out[offset + size_t(r) * m.cols + c];
      if (got != want && bad++ < 10) {
        ADD_FAILURE() << what << ": row " << r << " col " << c << ": gpu 0x" << std::hex << got
                      << " cpu 0x" << want << std::dec;
      }
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST(LutDequantCuda, MatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  const std::pair<int, int> shapes[] = {{1, 1},     {7, 13},   {33, 129}, {130, 257},
                                        {64, 1000}, {5, 4096}, {3, 11008}};
  std::mt19937 rng(8);
  for (int bits : {2, 3, 4})
    for (auto [rows, cols] : shapes)
      for (Outliers o : kPatterns) {
        TestMatrix m(rows, cols, bits, o, rng);
        const std::string what = std::to_string(rows) + "x" + std::to_string(cols) + " bits " +
                                 std::to_string(bits) + " outliers " + outliers_name(o);
        check_dequant(m, 0, what);
        check_dequant(m, 3, what + " unaligned");
      }
}

TEST(LutDequantCuda, Llama7bShapeRealisticOutliers) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  TestMatrix m(4096, 4096, 3, Outliers::REALISTIC, rng);
  check_dequant(m, 0, "4096x4096 bits 3 realistic");
}

TEST(LutDequantCuda, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(10);
  TestMatrix m(16, 128, 3, Outliers::NONE, rng);
  DeviceBuf<uint16_t> d_out(16 * 128);
  PackedMatrix w = m.dev;
  w.bits = 1;
  EXPECT_THROW(lut_dequant_cuda(w, d_out.p, nullptr), std::invalid_argument);
  w = m.dev;
  w.row_bytes -= 16;
  EXPECT_THROW(lut_dequant_cuda(w, d_out.p, nullptr), std::invalid_argument);
  w = m.dev;
  w.nnz = 5, w.outliers = nullptr;
  EXPECT_THROW(lut_dequant_cuda(w, d_out.p, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace sqz
