// RMSNorm (+ fused residual add) on the GPU, fp32 in, fp16 out: see RmsNormCudaParams in
// kernels/rmsnorm.h. Test: tests/test_cuda_kernels.cpp (RmsNormCuda.*), vs rmsnorm().
//
// One block per output row, 32..1024 threads (about 4 columns per thread, so a 4096-wide
// row is 4 loads deep per thread, not 16: a single decode row is latency-bound). Pass 1: each
// thread walks columns i = tid, tid + blockDim, ... adding the residual (storing v back to
// x when updating in place) and summing v^2 in fp32; a block reduction gives mean(v^2).
// Pass 2 re-reads its own columns (the same thread wrote them, so no barrier is needed) and
// writes fp16.
#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rmsnorm.h"

namespace sqz {

namespace {

__global__ void __launch_bounds__(1024) rmsnorm_kernel(RmsNormCudaParams p) {
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  const int j = blockIdx.x;
  const int src = p.row_index ? p.row_index[j] : j;
  float* __restrict__ x = p.x + int64_t(src) * p.dim;
  const float* __restrict__ r = p.residual ? p.residual + int64_t(src) * p.dim : nullptr;
  const bool update_x = r != nullptr && p.row_index == nullptr;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = x[i];
    if (r) {
      v += r[i];
      if (update_x) x[i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / float(p.dim) + p.eps);
  uint16_t* out = p.out + int64_t(j) * p.dim;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = x[i];
    if (r && !update_x) v += r[i];
    out[i] = f2h(v * scale * p.weight[i]);
  }
}

}  // namespace

void rmsnorm_cuda(const RmsNormCudaParams& p, cudaStream_t stream) {
  if (p.n_rows <= 0 || p.dim <= 0) return;
  if (!p.x || !p.weight || !p.out) throw std::invalid_argument("rmsnorm_cuda: null x, weight or out");
  const int threads = std::min(1024, std::max(32, (p.dim / 4 + 31) / 32 * 32));
  launch_pdl(rmsnorm_kernel, p.n_rows, threads, 0, stream, p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
