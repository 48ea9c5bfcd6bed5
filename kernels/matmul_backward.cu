// Calibration's dense linear on the GPU: the forward y = x W^T and the backward dX = dY W,
// dW = dY^T X (shapes in kernels/matmul_backward.h) through cuBLAS in fp32, and the
// squared-gradient accumulation F += dW * dW as a second, elementwise kernel (cuBLAS has no
// squaring epilogue; the extra pass reads dW and F and writes F: 12 bytes per weight, about
// a tenth of the GEMM's time at 512 tokens). Test: tests/test_gradients_cuda.cpp
// (MatmulBackwardCuda.*), vs matmul_gemm / matmul_backward_x / matmul_backward_w.
//
// Row-major [a, b] is column-major [b, a] with ld = b, so each row-major product is one
// column-major cuBLAS call on the transposed problem:
//   y[n, rows]   = x[n, cols] W^T   ->  y^T [rows, n]  = op_T(W^T) x^T   (m rows, n n, k cols)
//   dx[n, cols]  = dy[n, rows] W    ->  dx^T [cols, n] = W^T dy^T        (m cols, n n, k rows)
//   dW[rows, cols] = dy^T x         ->  dW^T [cols, rows] = x^T op_T(dy^T) (m cols, n rows, k n)
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cublas_check.h"
#include "kernels/cuda_common.h"
#include "kernels/matmul_backward.h"


namespace sqz {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4 * 132 * 8;  // a few waves of an H100; grid-stride beyond

// f[i] += dw[i]^2, four at a time (both 16-byte aligned), then the tail.
__global__ void square_add_kernel(const float* __restrict__ dw, int64_t n, float* __restrict__ f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t n4 = n / 4;
  const float4* d4 = reinterpret_cast<const float4*>(dw);
  float4* f4 = reinterpret_cast<float4*>(f);
  for (int64_t i = first; i < n4; i += stride) {
    const float4 d = d4[i];
    float4 v = f4[i];
    v.x += d.x * d.x, v.y += d.y * d.y, v.z += d.z * d.z, v.w += d.w * d.w;
    f4[i] = v;
  }
  for (int64_t i = 4 * n4 + first; i < n; i += stride) f[i] += dw[i] * dw[i];
}

__global__ void square_add_unaligned_kernel(const float* __restrict__ dw, int64_t n,
                                            float* __restrict__ f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    f[i] += dw[i] * dw[i];
}

// C[m, n] (column-major, ldc) = alpha op(A) op(B) + beta C, fp32 everywhere.
void sgemm(const GemmCuda& g, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k,
           const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  const float alpha = 1.0f;
  CUBLAS_CHECK(cublasGemmEx(g.handle, op_a, op_b, m, n, k, &alpha, a, CUDA_R_32F, lda, b,
                                CUDA_R_32F, ldb, &beta, c, CUDA_R_32F, ldc,
                                g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
}

void check_shape(const char* what, int rows, int cols, int n_tokens) {
  if (rows < 0 || cols < 0 || n_tokens < 0)
    throw std::invalid_argument(std::string(what) + ": negative shape " + std::to_string(n_tokens) +
                                " x " + std::to_string(rows) + " x " + std::to_string(cols));
}

}  // namespace

void square_add_cuda(const float* dw, int64_t n, float* f, cudaStream_t stream) {
  if (n <= 0) return;
  const int blocks = int(std::min(kMaxBlocks, (n / 4 + kThreads - 1) / kThreads + 1));
  if ((reinterpret_cast<uintptr_t>(dw) | reinterpret_cast<uintptr_t>(f)) % 16 == 0)
    square_add_kernel<<<blocks, kThreads, 0, stream>>>(dw, n, f);
  else
    square_add_unaligned_kernel<<<blocks, kThreads, 0, stream>>>(dw, n, f);
  CUDA_CHECK_LAUNCH();
}

void matmul_gemm_cuda(const GemmCuda& g, const float* w, int rows, int cols, const float* x,
                      int n_tokens, float* y, bool accumulate) {
  check_shape("matmul_gemm_cuda", rows, cols, n_tokens);
  if (rows == 0 || n_tokens == 0) return;
  if (cols == 0) {  // an empty sum: y = 0 (or unchanged)
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(n_tokens) * rows * 4, g.stream));
    return;
  }
  // y^T [rows, n] = (W^T)^T [rows, cols] . x^T [cols, n]
  sgemm(g, CUBLAS_OP_T, CUBLAS_OP_N, rows, n_tokens, cols, w, cols, x, cols,
        accumulate ? 1.0f : 0.0f, y, rows);
}

void matmul_backward_x_cuda(const GemmCuda& g, const float* w, int rows, int cols, const float* dy,
                            int n_tokens, float* dx, bool accumulate) {
  check_shape("matmul_backward_x_cuda", rows, cols, n_tokens);
  if (cols == 0 || n_tokens == 0) return;
  if (rows == 0) {
    if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dx, 0, size_t(n_tokens) * cols * 4, g.stream));
    return;
  }
  // dx^T [cols, n] = W^T [cols, rows] . dy^T [rows, n]
  sgemm(g, CUBLAS_OP_N, CUBLAS_OP_N, cols, n_tokens, rows, w, cols, dy, rows,
        accumulate ? 1.0f : 0.0f, dx, cols);
}

void matmul_backward_w_cuda(const GemmCuda& g, const float* dy, const float* x, int n_tokens,
                            int rows, int cols, float* out, GemmEpilogue epilogue, float* scratch) {
  check_shape("matmul_backward_w_cuda", rows, cols, n_tokens);
  if (rows == 0 || cols == 0) return;
  const size_t n_elems = size_t(rows) * cols;
  if (epilogue == GemmEpilogue::SQUARE_ADD && scratch == nullptr)
    throw std::invalid_argument(
        "matmul_backward_w_cuda: SQUARE_ADD needs a scratch of rows * cols");
  float* dst = epilogue == GemmEpilogue::SQUARE_ADD ? scratch : out;
  if (n_tokens == 0) {  // dW = 0
    if (epilogue == GemmEpilogue::STORE) CUDA_CHECK(cudaMemsetAsync(out, 0, n_elems * 4, g.stream));
    return;
  }
  // dW^T [cols, rows] = x^T [cols, n] . (dy^T)^T [n, rows]
  sgemm(g, CUBLAS_OP_N, CUBLAS_OP_T, cols, rows, n_tokens, x, cols, dy, rows,
        epilogue == GemmEpilogue::ADD ? 1.0f : 0.0f, dst, cols);
  if (epilogue == GemmEpilogue::SQUARE_ADD)
    square_add_cuda(scratch, int64_t(n_elems), out, g.stream);
}

}  // namespace sqz
