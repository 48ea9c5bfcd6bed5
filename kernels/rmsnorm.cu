// RMSNorm on the GPU, fp32 in, fp16 out: see RmsNormCudaParams in
// kernels/rmsnorm.h. Test: tests/test_cuda_kernels.cpp (RmsNormCuda.*), vs rmsnorm().
//
// One block per output row, 32..1024 threads (about 4 columns per thread, so a 4096-wide
// row is 4 loads deep per thread, not 16: a single decode row is latency-bound). Pass 1: each
// thread walks columns i = tid, tid + blockDim, ... summing v^2 in fp32; a block reduction
// gives mean(v^2). Pass 2 writes fp16: from registers when the row is at most kRegs columns
// per thread (every LLaMA width up to 8192), else re-reading its columns of x.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rmsnorm.h"

namespace sqz {

namespace {

constexpr int kRegs = 8;  // columns per thread kept in registers

__global__ void __launch_bounds__(1024) rmsnorm_kernel(RmsNormCudaParams p) {
  // Rows of up to kRegs x blockDim elements stay in registers (one pass over x), and the
  // norm weights, constant, are loaded before the wait (kernels/pdl.cuh). Same sums in the
  // same order as the general loop below.
  const bool in_regs = p.dim <= kRegs * int(blockDim.x);
  float wv[kRegs];
  if (in_regs) {
#pragma unroll
    for (int k = 0; k < kRegs; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      wv[k] = i < p.dim ? p.weight[i] : 0.0f;
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  const int j = blockIdx.x;
  const int src = p.row_index ? p.row_index[j] : j;
  const float* __restrict__ x = p.x + int64_t(src) * p.dim;
  uint16_t* out = p.out + int64_t(j) * p.dim;
  if (in_regs) {
    float v[kRegs], ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kRegs; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      v[k] = i < p.dim ? x[i] : 0.0f;
      ss += v[k] * v[k];
    }
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / float(p.dim) + p.eps);
#pragma unroll
    for (int k = 0; k < kRegs; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < p.dim) out[i] = f2h(v[k] * scale * wv[k]);
    }
    return;
  }
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) ss += x[i] * x[i];
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / float(p.dim) + p.eps);
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) out[i] = f2h(x[i] * scale * p.weight[i]);
}

}  // namespace

void rmsnorm_cuda(const RmsNormCudaParams& p, cudaStream_t stream) {
  if (p.n_rows <= 0 || p.dim <= 0) return;
  if (!p.x || !p.weight || !p.out)
    throw std::invalid_argument("rmsnorm_cuda: null x, weight or out");
  const int threads = std::min(1024, std::max(32, (p.dim / 4 + 31) / 32 * 32));
  launch_pdl(rmsnorm_kernel, p.n_rows, threads, 0, stream, p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
