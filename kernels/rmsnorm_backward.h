// Backward of RMSNorm (kernels/rmsnorm.h, eps inside the root) with respect to its input:
//   y_i = x_i * s * w_i,  s = 1 / sqrt(mean_j(x_j^2) + eps)
//   dx_i = s * w_i * dy_i - x_i * s^3 / dim * sum_j (w_j * dy_j * x_j)
// The norm weight's own gradient is not needed (calibration wants the linears only).
#pragma once

namespace sqz {

// x, dy: [n_tokens, dim]; w: [dim]. ADDS the input gradient into dx [n_tokens, dim] (the
// residual stream's gradient already holds the skip path).
void rmsnorm_backward(const float* x, const float* w, const float* dy, int n_tokens, int dim,
                      float eps, float* dx);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// The same on the GPU (kernels/rmsnorm_backward.cu), device pointers, one stream. Calibration
// runs its forward in fp32 too: rmsnorm_forward_cuda is rmsnorm() on the device (fp32 out;
// the inference kernel rmsnorm_cuda writes fp16). Both sum in double, as the CPU versions.
void rmsnorm_forward_cuda(const float* x, const float* w, int n_tokens, int dim, float eps,
                          float* out, cudaStream_t stream);
// ADDS the input gradient into dx [n_tokens, dim], as rmsnorm_backward().
void rmsnorm_backward_cuda(const float* x, const float* w, const float* dy, int n_tokens, int dim,
                           float eps, float* dx, cudaStream_t stream);

}  // namespace sqz
#endif
