// Backward of the dense linear y = x W^T on the CPU (W row-major [rows (out), cols (in)]):
//   dX = dY W        [n, cols]  = [n, rows] . [rows, cols]
//   dW = dY^T X      [rows, cols] = [rows, n] . [n, cols]
// Both are one blocked fp32 GEMM (gemm_f32), BLIS-style: operands are packed into 6 x 16
// micro-panels (converting F16/BF16 weights to fp32 on the way), an AVX2/FMA micro-kernel
// keeps a 6 x 16 block of C in registers, and tasks (a 256-column block of C times a group
// of 48-row blocks, K in blocks of 256) are spread over the ThreadPool. The squared-gradient
// accumulation F += dW * dW is the GEMM's epilogue, so dW never exists as a whole matrix.
// The same GEMM does calibration's forward (matmul_gemm): about 1.6x matmul() for
// hundreds of tokens, because matmul() is built for few tokens (decode).
#pragma once
#include <cstdint>

#include "kernels/matmul.h"

namespace sqz {

class ThreadPool;

// A matrix operand of gemm_f32: element (i, j) is data[i * row_stride + j * col_stride],
// stored as F32, F16 or BF16 (read as fp32).
struct GemmOperand {
  const void* data = nullptr;
  MatType type = MatType::F32;
  int64_t row_stride = 0, col_stride = 1;
};

enum class GemmEpilogue {
  STORE,       // C = A B
  ADD,         // C += A B
  SQUARE_ADD,  // C += (A B)^2, elementwise: the diagonal-Fisher accumulation
};

// C[M, N] (row stride ldc, fp32) op= A[M, K] . B[K, N], fp32 arithmetic and accumulation.
// K = 0 gives A B = 0.
void gemm_f32(int M, int N, int K, const GemmOperand& A, const GemmOperand& B, float* C,
              int64_t ldc, GemmEpilogue epilogue, ThreadPool& pool);

// y[n, rows] = x[n, cols] W^T, W [rows, cols] as `type` (the forward of the same linear).
void matmul_gemm(MatType type, const void* w, int rows, int cols, const float* x, int n_tokens,
                 float* y, ThreadPool& pool);

// dx[n, cols] (= or +=, see `accumulate`) dy[n, rows] . W[rows, cols]; W as `type`.
void matmul_backward_x(MatType type, const void* w, int rows, int cols, const float* dy,
                       int n_tokens, float* dx, bool accumulate, ThreadPool& pool);

// dW = dy[n, rows]^T . x[n, cols], written into out[rows, cols] per `epilogue`
// (STORE: the gradient itself; SQUARE_ADD: out += dW * dW).
void matmul_backward_w(const float* dy, const float* x, int n_tokens, int rows, int cols,
                       float* out, GemmEpilogue epilogue, ThreadPool& pool);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
namespace sqz {

// The same on the GPU (kernels/matmul_backward.cu): fp32 weights [rows, cols] and fp32
// activations on the device, cuBLAS GEMMs on `handle`, which the caller binds to `stream`
// (cublasSetStream) and leaves in CUBLAS_DEFAULT_MATH. tf32 = false computes with
// CUBLAS_COMPUTE_32F: fp32 products and sums, the CPU's numbers up to summation order.
// tf32 = true allows CUBLAS_COMPUTE_32F_FAST_TF32 (tensor cores, inputs rounded to 10-bit
// mantissas: several times faster, about 1e-3 relative error per product).
struct GemmCuda {
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
  bool tf32 = false;
};

// y[n, rows] (= or += with `accumulate`) x[n, cols] W^T.
void matmul_gemm_cuda(const GemmCuda& g, const float* w, int rows, int cols, const float* x,
                      int n_tokens, float* y, bool accumulate);
// dx[n, cols] (= or +=) dy[n, rows] W.
void matmul_backward_x_cuda(const GemmCuda& g, const float* w, int rows, int cols,
                            const float* dy, int n_tokens, float* dx, bool accumulate);
// dW = dy[n, rows]^T x[n, cols] into out[rows, cols] per `epilogue`. SQUARE_ADD writes dW to
// `scratch` [rows, cols] and then runs square_add_cuda(scratch -> out); the other epilogues
// ignore scratch.
void matmul_backward_w_cuda(const GemmCuda& g, const float* dy, const float* x, int n_tokens,
                            int rows, int cols, float* out, GemmEpilogue epilogue, float* scratch);
// f[i] += dw[i]^2 for i < n.
void square_add_cuda(const float* dw, int64_t n, float* f, cudaStream_t stream);

}  // namespace sqz
#endif
