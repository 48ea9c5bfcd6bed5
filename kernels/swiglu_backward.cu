// Calibration's SwiGLU on the GPU, fp32 elementwise over separate gate and up tensors: the
// forward (swiglu() with device pointers; the inference kernel swiglu_cuda reads a fused
// gate|up row and writes fp16) and the backward (swiglu_backward(), formula in
// kernels/swiglu_backward.h). Test: tests/test_gradients_cuda.cpp (SwigluBackwardCuda.*).
//
// Grid-stride loops, one element per thread per step; expf is CUDA's full-precision one
// (within 2 ulp of the CPU's), not __expf.
#include <algorithm>

#include "kernels/cuda_common.h"
#include "kernels/swiglu_backward.h"

namespace sqz {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

__global__ void swiglu_forward_kernel(const float* __restrict__ gate, const float* __restrict__ up,
                                      int64_t n, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// dgate/dup may alias gate/up: each element is read before it is written, by one thread.
__global__ void swiglu_backward_kernel(const float* gate, const float* up,
                                       const float* __restrict__ dout, int64_t n, float* dgate,
                                       float* dup) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float sig = 1.0f / (1.0f + expf(-g));
    const float silu = g * sig;
    dgate[i] = d * u * sig * (1.0f + g * (1.0f - sig));
    dup[i] = d * silu;
  }
}

int blocks_for(int64_t n) { return int(std::min(kMaxBlocks, (n + kThreads - 1) / kThreads)); }

}  // namespace

void swiglu_forward_cuda(const float* gate, const float* up, int64_t n, float* out,
                         cudaStream_t stream) {
  if (n <= 0) return;
  swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(gate, up, n, out);
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward_cuda(const float* gate, const float* up, const float* dout, int64_t n,
                          float* dgate, float* dup, cudaStream_t stream) {
  if (n <= 0) return;
  swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(gate, up, dout, n, dgate, dup);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
