// Calibration's RoPE on the GPU (Meta's interleaved pairs), fp32 in place: the forward
// (rope() with device pointers over one tensor) and the backward (rope_backward(): the
// gradient is rotated back by the same angle). Both are one kernel that rotates by +angle or
// -angle. Test: tests/test_gradients_cuda.cpp (RopeBackwardCuda.*), vs the CPU versions.
//
// One block per token: cos and sin of the token's head_dim / 2 angles go to shared memory,
// computed as rope() does (inv_freq in double rounded to float, angle = float(pos) * inv_freq
// in fp32) with cos/sin evaluated in double and rounded (the correctly rounded value that
// glibc's cosf/sinf return); then the block's threads rotate (head, pair) items.
#include <stdexcept>
#include <string>

#include "kernels/cuda_common.h"
#include "kernels/rope.cuh"
#include "kernels/rope_backward.h"

namespace sqz {

namespace {

constexpr int kThreads = 128;

// x[t] rotated pair-wise by `sign` * angle(pos[t], i). Shared memory: head_dim floats.
__global__ void rope_rotate_kernel(float* __restrict__ x, const int* __restrict__ pos, int n_heads,
                                   int head_dim, float theta, float sign) {
  extern __shared__ float cs_sn[];  // [half] cos, then [half] sin
  const int half = head_dim / 2, t = blockIdx.x;
  float* cs = cs_sn;
  float* sn = cs_sn + half;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = float(pos[t]) * rope_inv_freq(i, head_dim, theta);
    cs[i] = float(cos(double(angle)));
    sn[i] = sign * float(sin(double(angle)));
  }
  __syncthreads();
  float* xt = x + int64_t(t) * n_heads * head_dim;
  for (int item = threadIdx.x; item < n_heads * half; item += blockDim.x) {
    const int h = item / half, i = item % half;
    float* v = xt + h * head_dim + 2 * i;
    const float a = v[0], b = v[1];
    v[0] = a * cs[i] - b * sn[i];
    v[1] = a * sn[i] + b * cs[i];
  }
}

void rope_rotate(float* x, const int* pos, int n_tokens, int n_heads, int head_dim, float theta,
                 float sign, cudaStream_t stream, const char* what) {
  if (n_tokens <= 0 || n_heads <= 0) return;
  if (head_dim <= 0 || head_dim % 2 != 0)
    throw std::invalid_argument(std::string(what) + ": head_dim " + std::to_string(head_dim) +
                                " must be even and positive");
  rope_rotate_kernel<<<n_tokens, kThreads, head_dim * sizeof(float), stream>>>(
      x, pos, n_heads, head_dim, theta, sign);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward_cuda(float* x, const int* pos, int n_tokens, int n_heads, int head_dim,
                       float theta, cudaStream_t stream) {
  rope_rotate(x, pos, n_tokens, n_heads, head_dim, theta, 1.0f, stream, "rope_forward_cuda");
}

void rope_backward_cuda(float* g, const int* pos, int n_tokens, int n_heads, int head_dim,
                        float theta, cudaStream_t stream) {
  rope_rotate(g, pos, n_tokens, n_heads, head_dim, theta, -1.0f, stream, "rope_backward_cuda");
}

}  // namespace sqz
