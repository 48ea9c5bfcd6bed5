// Benchmark of lut_gemm_cuda (kernels/lut_gemv.cu) at LLaMA-7B shapes, 3 and 4 bits, without
// and with 0.45% outliers, for 1, 8, 16 and 512 tokens. For each: time per call, bytes moved
// (indices + LUT + CSR + x + y: each read or written once), GB/s, % of the measured read
// bandwidth and the floor (bytes / bandwidth); for more than 8 tokens also TFLOP/s, cuBLAS
// fp16 GEMM (cublasGemmEx, fp16 in, fp32 compute and out) of the same shape, and the prefill
// path of the engine: lut_dequant_cuda into an fp16 matrix, then that cuBLAS GEMM.
//
// The denominator is measured first: a streaming read of 1 GiB (read_bandwidth_cuda).
// Timing: a CUDA graph of launches rotating over enough weight copies (>= 160 MB) that L2
// (50 MB) never serves the weights; the graph is replayed 15 times, time = median replay /
// launches. That is what a decode step captured in a graph sees, launch gaps included.
// Every configuration is first checked against the CPU lut_gemm on 64 rows; a mismatch aborts.
//
// Usage: bench_lut_gemv [--shape NAME|ROWSxCOLS] [--bits B] [--outliers PCT] [token counts...]
// (--shape 21120x4096: one shape of any size instead of the LLaMA-7B ones)
// (default: all shapes, bits 3 and 4, outliers 0 and 0.45 %, tokens 1 8 16 512)
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/bandwidth.h"
#include "kernels/cublas_check.h"
#include "kernels/cuda_common.h"
#include "kernels/lut_dequant.h"
#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "model/dtype.h"

using namespace sqz;


namespace {

constexpr double kRotateBytes = 160e6;  // > 3x the 50 MB L2
constexpr int kReplays = 15;
constexpr double kCheckRelTol = 1e-4;  // of sum |w x|: a wrong kernel is far off

struct Shape {
  const char* name;
  int rows, cols;
};
const Shape kShapes[] = {{"q/k/v/o", 4096, 4096},
                         {"gate,up", 11008, 4096},
                         {"down", 4096, 11008},
                         {"qkv fused", 12288, 4096},
                         {"gate|up fused", 22016, 4096}};

// A random packed matrix on the host: random index bytes (every bit pattern is valid),
// N(0,1) LUT (3/4 bits: snapped onto a grid, as sqz quantize makes them by default, with the
// GEMV's grid rows; SQZ_GEMV_GRID=0 times the fp16 decode instead), ~frac outliers per row at
// random sorted columns, N(0,4^2) values.
struct HostMatrix {
  int rows, cols, bits;
  std::vector<uint8_t> indices, grid;
  std::vector<uint16_t> lut, values;
  std::vector<int32_t> row_ptr, col_idx;
  HostMatrix(int r, int c, int b, double frac, std::mt19937_64& rng) : rows(r), cols(c), bits(b) {
    indices.resize(size_t(packed_row_bytes(cols, bits)) * rows);
    for (size_t i = 0; i + 8 <= indices.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(&indices[i], &v, 8);
    }
    std::normal_distribution<float> nd;
    lut.resize(size_t(rows) << bits);
    for (auto& v : lut) v = f32_to_f16(nd(rng));
    if (lut_grid_used(bits)) {
      const int k = 1 << bits, gb = lut_grid_row_bytes(bits);
      grid.resize(size_t(rows) * gb);
      for (int r = 0; r < rows; r++) {
        float e[16];
        for (int j = 0; j < k; j++) e[j] = f16_to_f32(lut[size_t(r) * k + j]);
        snap_lut_grid(e, k);
        for (int j = 0; j < k; j++) lut[size_t(r) * k + j] = f32_to_f16(e[j]);
        if (!lut_grid_row(&lut[size_t(r) * k], bits, &grid[size_t(r) * gb])) std::abort();
      }
    }
    row_ptr.push_back(0);
    std::poisson_distribution<int> pd(frac * cols);
    std::vector<int> cs;
    for (int i = 0; i < rows; i++) {
      cs.clear();
      const int n = frac > 0 ? std::min(pd(rng), cols) : 0;
      while (int(cs.size()) < n) {
        const int c = int(rng() % cols);
        if (std::find(cs.begin(), cs.end(), c) == cs.end()) cs.push_back(c);
      }
      std::sort(cs.begin(), cs.end());
      for (int c : cs) col_idx.push_back(c), values.push_back(f32_to_f16(4 * nd(rng)));
      row_ptr.push_back(int32_t(col_idx.size()));
    }
  }
  PackedMatrix view(int r0 = 0, int nr = -1) const {
    PackedMatrix m;
    m.rows = nr < 0 ? rows : nr, m.cols = cols, m.bits = bits;
    m.row_bytes = packed_row_bytes(cols, bits);
    m.indices = indices.data() + r0 * m.row_bytes;
    m.lut = lut.data() + (size_t(r0) << bits);
    m.row_ptr = row_ptr.data() + r0, m.col_idx = col_idx.data(), m.values = values.data();
    m.nnz = int64_t(values.size());
    return m;
  }
  size_t bytes() const {  // what one call reads of the matrix (outliers: one 4-byte word each)
    return indices.size() + lut.size() * 2 + row_ptr.size() * 4 + values.size() * 4;
  }
};

template <typename T>
T* upload(const std::vector<T>& v) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(v.size(), 1) * sizeof(T)));
  if (!v.empty()) CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// One device copy of the matrix (its own allocations, so its own addresses).
struct DeviceMatrix {
  PackedMatrix m;
  std::vector<void*> owned;
  explicit DeviceMatrix(const HostMatrix& h) {
    m = h.view();
    auto keep = [&](auto* p) {
      owned.push_back(p);
      return p;
    };
    m.indices = keep(upload(to_gpu_tiled(h.indices.data(), h.rows, m.row_bytes, h.bits)));
    m.lut = keep(upload(h.lut));
    if (!h.grid.empty()) m.grid = keep(upload(h.grid));
    m.row_ptr = keep(upload(h.row_ptr));
    std::vector<uint32_t> words(h.values.size());
    pack_outliers(h.col_idx.data(), h.values.data(), int64_t(words.size()), words.data());
    m.outliers = keep(upload(words));
    m.col_idx = nullptr, m.values = nullptr;
  }
  ~DeviceMatrix() {
    for (void* p : owned) cudaFree(p);
  }
};

__global__ void fill_random_half_kernel(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    p[i] = __half_as_ushort(__float2half_rn(float(h >> 8) * (2.0f / 16777216.0f) - 1.0f));
  }
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median time per launch (us) of a graph of n_launch calls of launch(stream, i).
double time_graph(const std::function<void(cudaStream_t, int)>& launch, int n_launch, cudaStream_t s) {
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < n_launch; i++) launch(s, i);
  CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < kReplays + 2; r++) {
    CUDA_CHECK(cudaEventRecord(a, s));
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    CUDA_CHECK(cudaEventRecord(b, s));
    CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    if (r >= 2) ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return 1e3 * median(ms) / n_launch;
}

// lut_gemm_cuda on copy 0 vs the CPU lut_gemm on rows [0, 32) and [rows - 32, rows); every
// output must be written (y is NaN-poisoned first). Exits on a mismatch.
void validate(const HostMatrix& h, const PackedMatrix& dev, const std::vector<float>& x32,
              const uint16_t* d_x, int n, float* d_y, ThreadPool& pool, const std::string& what) {
  CUDA_CHECK(cudaMemset(d_y, 0xff, size_t(n) * h.rows * sizeof(float)));
  lut_gemm_cuda(dev, d_x, n, d_y, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> y(size_t(n) * h.rows);
  CUDA_CHECK(cudaMemcpy(y.data(), d_y, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < y.size(); i++)
    if (!std::isfinite(y[i])) {
      std::fprintf(stderr, "FAILED %s: output %zu not written (or not finite)\n", what.c_str(), i);
      std::exit(1);
    }
  const int nr = std::min(32, h.rows);
  for (int r0 : {0, h.rows - nr}) {
    const PackedMatrix sub = h.view(r0, nr);
    std::vector<float> ref(size_t(n) * nr), row(h.cols);
    lut_gemm(sub, x32.data(), n, ref.data(), pool);
    for (int i = 0; i < nr; i++) {
      lut_decode_row(sub, i, row.data());
      for (int t = 0; t < n; t++) {
        double scale = 0;
        for (int c = 0; c < h.cols; c++) scale += std::fabs(double(row[c]) * x32[size_t(t) * h.cols + c]);
        const double got = y[size_t(t) * h.rows + r0 + i], want = ref[size_t(t) * nr + i];
        if (!(std::fabs(got - want) <= kCheckRelTol * scale + 1e-5)) {
          std::fprintf(stderr, "FAILED %s: token %d row %d: gpu %g cpu %g\n", what.c_str(), t, r0 + i, got, want);
          std::exit(1);
        }
      }
    }
  }
}

// lut_dequant_cuda on copy 0: rows [0, 32) must equal the CPU rows rounded to fp16, bit for bit.
void check_dequant(const HostMatrix& h, const PackedMatrix& dev, uint16_t* d_w, const std::string& what) {
  lut_dequant_cuda(dev, d_w, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const int nr = std::min(32, h.rows);
  std::vector<uint16_t> got(size_t(nr) * h.cols);
  CUDA_CHECK(cudaMemcpy(got.data(), d_w, got.size() * 2, cudaMemcpyDeviceToHost));
  std::vector<float> row(h.cols);
  const PackedMatrix sub = h.view();
  for (int r = 0; r < nr; r++) {
    lut_decode_row(sub, r, row.data());
    for (int c = 0; c < h.cols; c++)
      if (got[size_t(r) * h.cols + c] != f32_to_f16(row[c])) {
        std::fprintf(stderr, "FAILED %s: dequantized row %d col %d differs from the CPU\n", what.c_str(), r, c);
        std::exit(1);
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> token_counts, bit_widths = {3, 4};
  std::vector<double> outlier_fracs = {0.0, 0.0045};
  std::string only_shape;
  // A whole-string number in [lo, hi] (an integer when `integer`), or exit naming the argument
  // and what was expected.
  auto number = [](const char* s, const char* what, double lo, double hi, bool integer) {
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= lo && v <= hi) || (integer && v != std::floor(v))) {
      std::fprintf(stderr, "bench_lut_gemv: %s '%s': expected %s in [%g, %g]\n", what, s,
                   integer ? "an integer" : "a number", lo, hi);
      std::exit(1);
    }
    return v;
  };
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--shape" && i + 1 < argc) {
      only_shape = argv[++i];
    } else if (a == "--bits" && i + 1 < argc) {
      bit_widths = {int(number(argv[++i], "--bits", 2, 4, true))};
    } else if (a == "--outliers" && i + 1 < argc) {  // percent of weights, e.g. 0.45
      outlier_fracs = {number(argv[++i], "--outliers (percent)", 0, 100, false) / 100.0};
    } else {
      token_counts.push_back(int(number(argv[i], "token count", 1, 4096, true)));
    }
  }
  std::vector<Shape> shapes(std::begin(kShapes), std::end(kShapes));
  // ROWSxCOLS: both decimal, cols within the GPU kernels' limit, at most 2^30 weights.
  const size_t x_at = only_shape.find('x');
  char* rows_end = nullptr;
  char* cols_end = nullptr;
  const long long custom_rows =
      x_at == std::string::npos ? 0 : std::strtoll(only_shape.c_str(), &rows_end, 10);
  const long long custom_cols =
      x_at == std::string::npos ? 0 : std::strtoll(only_shape.c_str() + x_at + 1, &cols_end, 10);
  if (x_at != std::string::npos && x_at > 0 && rows_end == only_shape.c_str() + x_at &&
      cols_end != only_shape.c_str() + x_at + 1 && *cols_end == '\0') {
    if (custom_rows <= 0 || custom_cols <= 0 || custom_cols > kLutGpuMaxCols ||
        custom_rows > (1ll << 30) / custom_cols) {
      std::fprintf(stderr,
                   "bench_lut_gemv: --shape %s: expected rows >= 1, 1 <= cols <= %d and at most "
                   "2^30 weights\n",
                   only_shape.c_str(), kLutGpuMaxCols);
      return 1;
    }
    shapes = {{only_shape.c_str(), int(custom_rows), int(custom_cols)}};
  } else if (!only_shape.empty() &&
             std::none_of(shapes.begin(), shapes.end(),
                          [&](const Shape& s) { return only_shape == s.name; })) {
    std::fprintf(stderr, "bench_lut_gemv: unknown --shape %s (a LLaMA-7B name or ROWSxCOLS)\n",
                 only_shape.c_str());
    return 1;
  }
  if (token_counts.empty()) token_counts = {1, 8, 16, 512};
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::fprintf(stderr, "bench_lut_gemv: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double bw = read_bandwidth_cuda(size_t(1) << 30);
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  std::printf("measured read bandwidth (1 GiB streaming read): %.0f GB/s\n\n", bw / 1e9);
  lut_gemm_cuda_init();

  ThreadPool pool(0);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t blas;
  CUBLAS_CHECK(cublasCreate(&blas));
  CUBLAS_CHECK(cublasSetStream(blas, stream));
  std::mt19937_64 rng(12345);

  std::printf("%-14s %5s %5s %4s %5s %6s %9s %8s %7s %5s %8s %8s %9s %8s %7s %8s\n", "shape", "rows", "cols",
              "bits", "outl%", "tokens", "time_us", "MB", "GB/s", "%bw", "floor_us", "TFLOP/s",
              "cuBLAS_us", "cuBLAS_TF", "deq_us", "deq+BLAS");
  for (const Shape& shape : shapes) {
    if (!only_shape.empty() && only_shape != shape.name) continue;
    for (int bits : bit_widths)
      for (double frac : outlier_fracs) {
        HostMatrix h(shape.rows, shape.cols, bits, frac, rng);
        const size_t mat_bytes = h.bytes();
        const int n_copies = std::max(2, int(std::ceil(kRotateBytes / double(mat_bytes))));
        std::vector<DeviceMatrix*> copies;
        for (int i = 0; i < n_copies; i++) copies.push_back(new DeviceMatrix(h));
        for (int n : token_counts) {
          std::normal_distribution<float> nd;
          std::vector<uint16_t> x16(size_t(n) * shape.cols);
          std::vector<float> x32(x16.size());
          for (size_t i = 0; i < x16.size(); i++) x16[i] = f32_to_f16(nd(rng)), x32[i] = f16_to_f32(x16[i]);
          uint16_t* d_x = upload(x16);
          float* d_y = nullptr;
          CUDA_CHECK(cudaMalloc(&d_y, size_t(n) * shape.rows * sizeof(float)));
          const std::string what = std::string(shape.name) + " bits " + std::to_string(bits) + " tokens " + std::to_string(n);
          validate(h, copies[0]->m, x32, d_x, n, d_y, pool, what);

          const int n_launch = std::max(n_copies, 20);
          const double us = time_graph(
              [&](cudaStream_t s, int i) { lut_gemm_cuda(copies[i % n_copies]->m, d_x, n, d_y, s); }, n_launch, stream);
          const double bytes = double(mat_bytes) + 2.0 * n * shape.cols + 4.0 * n * shape.rows;
          const double gbs = bytes / (us * 1e-6) / 1e9;
          std::printf("%-14s %5d %5d %4d %5.2f %6d %9.2f %8.2f %7.0f %5.1f %8.2f", shape.name, shape.rows,
                      shape.cols, bits, 100 * frac, n, us, bytes / 1e6, gbs, 100 * gbs * 1e9 / bw,
                      bytes / bw * 1e6);
          if (n > 8) {  // the chunked GEMV next to the GEMM paths
            const double flops = 2.0 * shape.rows * shape.cols * n;
            // cuBLAS: y[n, rows] = x[n, cols] W^T with W fp16 [rows, cols] (random, not zeros).
            uint16_t* d_w = nullptr;
            CUDA_CHECK(cudaMalloc(&d_w, size_t(shape.rows) * shape.cols * 2));
            fill_random_half_kernel<<<1024, 256>>>(d_w, size_t(shape.rows) * shape.cols, 7u);
            CUDA_CHECK_LAUNCH();
            const float alpha = 1.0f, beta = 0.0f;
            auto gemm = [&]() {
              CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, shape.rows, n, shape.cols, &alpha, d_w,
                                        CUDA_R_16F, shape.cols, d_x, CUDA_R_16F, shape.cols, &beta, d_y,
                                        CUDA_R_32F, shape.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            };
            for (int i = 0; i < 3; i++) gemm();
            cudaEvent_t a, b;
            CUDA_CHECK(cudaEventCreate(&a));
            CUDA_CHECK(cudaEventCreate(&b));
            std::vector<float> ms;
            for (int r = 0; r < kReplays; r++) {
              CUDA_CHECK(cudaEventRecord(a, stream));
              for (int i = 0; i < 10; i++) gemm();
              CUDA_CHECK(cudaEventRecord(b, stream));
              CUDA_CHECK(cudaEventSynchronize(b));
              float t = 0;
              CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
              ms.push_back(t / 10);
            }
            const double blas_us = 1e3 * median(ms);
            // The prefill path: dequantize (rotating over the copies, as the engine reads each
            // layer's weights once), then the GEMM on the fp16 result.
            check_dequant(h, copies[0]->m, d_w, what);
            const double deq_us = time_graph(
                [&](cudaStream_t s, int i) { lut_dequant_cuda(copies[i % n_copies]->m, d_w, s); }, n_launch, stream);
            CUDA_CHECK(cudaEventDestroy(a));
            CUDA_CHECK(cudaEventDestroy(b));
            CUDA_CHECK(cudaFree(d_w));
            std::printf(" %8.1f %9.2f %8.1f %7.2f %8.2f", flops / (us * 1e-6) / 1e12, blas_us,
                        flops / (blas_us * 1e-6) / 1e12, deq_us, deq_us + blas_us);
          }
          std::printf("\n");
          std::fflush(stdout);
          CUDA_CHECK(cudaFree(d_x));
          CUDA_CHECK(cudaFree(d_y));
        }
        for (DeviceMatrix* c : copies) delete c;
      }
  }
  CUBLAS_CHECK(cublasDestroy(blas));
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
