// Calibration's RMSNorm on the GPU, fp32 in and out: the forward (rmsnorm() with device
// pointers; the inference kernel rmsnorm_cuda writes fp16) and the backward with respect to
// the input (rmsnorm_backward(), formula in kernels/rmsnorm_backward.h), which ADDS into dx.
// Test: tests/test_gradients_cuda.cpp (RmsNormBackwardCuda.*), vs the CPU versions.
//
// One block per row. Each thread walks columns i = tid, tid + blockDim, ... and sums in
// double, as the CPU versions do (a 4096-wide row loses digits in fp32); a block reduction
// in double gives the row's sums; a second pass over the same columns writes the output.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/rmsnorm_backward.h"

namespace sqz {

namespace {

// out[t, i] = x[t, i] * s * w[i], s = 1 / sqrt(mean(x[t]^2) + eps). Grid: n_tokens blocks.
__global__ void rmsnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                       int dim, float eps, float* __restrict__ out) {
  __shared__ double partial[32];
  const float* xt = x + int64_t(blockIdx.x) * dim;
  float* ot = out + int64_t(blockIdx.x) * dim;
  double ss = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += double(xt[i]) * xt[i];
  ss = block_sum_f64(ss, partial);
  const float scale = float(1.0 / sqrt(ss / dim + eps));
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ot[i] = xt[i] * scale * w[i];
}

// dx[t, i] += a w[i] dy[t, i] - b x[t, i],  a = s, b = s^3 / dim * sum_j w[j] dy[t, j] x[t, j].
__global__ void rmsnorm_backward_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                        const float* __restrict__ dy, int dim, float eps,
                                        float* __restrict__ dx) {
  __shared__ double partial[32];
  const int64_t off = int64_t(blockIdx.x) * dim;
  const float *xt = x + off, *dyt = dy + off;
  float* dxt = dx + off;
  double ss = 0, dot = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    ss += double(xt[i]) * xt[i];
    dot += double(w[i]) * dyt[i] * xt[i];
  }
  ss = block_sum_f64(ss, partial);
  dot = block_sum_f64(dot, partial);
  const double s = 1.0 / sqrt(ss / dim + eps);
  const float a = float(s), b = float(s * s * s * dot / dim);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dxt[i] += a * w[i] * dyt[i] - b * xt[i];
}

// About 4 columns per thread, 32..1024 threads.
int row_threads(int dim) { return std::min(1024, std::max(32, (dim / 4 + 31) / 32 * 32)); }

}  // namespace

void rmsnorm_forward_cuda(const float* x, const float* w, int n_tokens, int dim, float eps,
                          float* out, cudaStream_t stream) {
  if (n_tokens <= 0 || dim <= 0) return;
  rmsnorm_forward_kernel<<<n_tokens, row_threads(dim), 0, stream>>>(x, w, dim, eps, out);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_cuda(const float* x, const float* w, const float* dy, int n_tokens, int dim,
                           float eps, float* dx, cudaStream_t stream) {
  if (n_tokens <= 0 || dim <= 0) return;
  rmsnorm_backward_kernel<<<n_tokens, row_threads(dim), 0, stream>>>(x, w, dy, dim, eps, dx);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
