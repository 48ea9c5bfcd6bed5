// SwiGLU on the GPU: out[t, i] = fp16(g / (1 + exp(-g)) * up) with g and up the gate and up
// values of unit i in gate_up's row t (blocks of `block` gate then `block` up values: see
// kernels/swiglu.h), the CPU swiglu()'s formula and order (expf at full
// precision). Test: tests/test_cuda_kernels.cpp (SwigluCuda.*).
//
// Grid (ceil(hidden / 256) capped at 256, n_tokens), 256 threads, a grid-stride loop over
// the columns of one token's row.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/pdl.cuh"
#include "kernels/swiglu.h"

namespace sqz {

namespace {

__global__ void swiglu_kernel(const float* gate_up, int hidden, int block, uint16_t* out) {
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  const int t = blockIdx.y;
  const float* row = gate_up + int64_t(t) * 2 * hidden;
  uint16_t* o = out + int64_t(t) * hidden;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    const int b = i / block;
    const float* gate = row + int64_t(b) * 2 * block + (i - b * block);
    const float g = gate[0];
    o[i] = f2h(g / (1.0f + expf(-g)) * gate[block]);
  }
}

}  // namespace

void swiglu_cuda(const float* gate_up, int n_tokens, int hidden_dim, int block, uint16_t* out,
                 cudaStream_t stream) {
  if (n_tokens <= 0 || hidden_dim <= 0) return;
  if (block <= 0 || hidden_dim % block != 0)
    throw std::invalid_argument("swiglu_cuda: block " + std::to_string(block) +
                                " does not divide hidden_dim " + std::to_string(hidden_dim));
  if (n_tokens > 65535) throw std::invalid_argument("swiglu_cuda: more than 65535 tokens");
  const int threads = 256;
  dim3 grid(std::min((hidden_dim + threads - 1) / threads, 256), n_tokens);
  launch_pdl(swiglu_kernel, grid, threads, 0, stream, gate_up, hidden_dim, block, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
