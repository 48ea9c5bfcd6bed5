// RoPE (interleaved pairs) + KV-cache append on the GPU: see RopeCudaParams in
// kernels/rope.h. Test: tests/test_cuda_kernels.cpp (RopeCuda.*), vs rope().
//
// Grid (ceil(items / 256), n_tokens), 256 threads. Each block first computes cos/sin of every
// pair i < head_dim / 2 of its token into shared memory (kernels/rope.cuh: inv_freq in double
// like the CPU, angle in fp32, sincosf at full precision); then each thread does one
// independent item: a rotation item is one (head, pair) of the q heads followed by the k heads
// (contiguous in the row), rotated in place and, for k heads, stored to the K cache; the
// remaining items copy v pairs to the V cache as fp16. (One block per token looping over the
// heads was latency-bound: a whole row went through one SM one dependent load at a time.)
// Decode steps do this inside the attention kernel instead (AttentionCudaParams::rope_theta);
// prefill uses this kernel.
#include <stdexcept>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rope.h"
#include "kernels/rope.cuh"

namespace sqz {

namespace {

constexpr int kRopeThreads = 256;
constexpr int kMaxHalf = 512;  // head_dim <= 1024

__global__ void __launch_bounds__(kRopeThreads) rope_kernel(RopeCudaParams p) {
  const int t = blockIdx.y, half = p.head_dim / 2, kv_dim = p.n_kv_heads * p.head_dim;
  const int n_rot = (p.n_heads + p.n_kv_heads) * half;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int pos = p.pos[t];
  // cos/sin of each pair for this token, shared by the block's heads. Positions are step
  // inputs, not outputs of earlier kernels, so this runs before the wait (kernels/pdl.cuh).
  __shared__ float cs_tab[kMaxHalf], sn_tab[kMaxHalf];
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rope_cos_sin(pos, i, p.head_dim, p.theta, cs_tab[i], sn_tab[i]);
  __syncthreads();
  pdl_wait();
  pdl_launch_dependents();
  float* row = p.qkv + int64_t(t) * p.stride;
  int64_t cache_at = 0;
  if (p.k_cache) cache_at = int64_t(p.seq[t]) * p.seq_stride + int64_t(pos) * kv_dim;
  if (j < n_rot) {
    const int h = j / half, i = j - h * half;
    const float cs = cs_tab[i], sn = sn_tab[i];
    float* v = row + h * p.head_dim + 2 * i;
    const float2 r = rope_rotate_pair(v[0], v[1], cs, sn);
    v[0] = r.x;
    v[1] = r.y;
    if (p.k_cache && h >= p.n_heads) {
      uint16_t* kc = p.k_cache + cache_at + (h - p.n_heads) * p.head_dim + 2 * i;
      kc[0] = f2h(r.x);
      kc[1] = f2h(r.y);
    }
  } else if (p.v_cache && j < n_rot + kv_dim / 2) {
    const int e = 2 * (j - n_rot);
    const float* vsrc = row + (p.n_heads + p.n_kv_heads) * p.head_dim;
    p.v_cache[cache_at + e] = f2h(vsrc[e]);
    p.v_cache[cache_at + e + 1] = f2h(vsrc[e + 1]);
  }
}

}  // namespace

void rope_cuda(const RopeCudaParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  if (p.head_dim <= 0 || p.head_dim % 2 != 0 || p.head_dim > 2 * kMaxHalf)
    throw std::invalid_argument("rope_cuda: head_dim must be even, positive and <= 1024");
  if ((p.k_cache != nullptr) != (p.v_cache != nullptr) || (p.k_cache && !p.seq))
    throw std::invalid_argument("rope_cuda: k_cache, v_cache and seq go together");
  if (p.n_tokens > 65535) throw std::invalid_argument("rope_cuda: more than 65535 tokens");
  const int kv_dim = p.n_kv_heads * p.head_dim;
  const int n_items = (p.n_heads + p.n_kv_heads) * (p.head_dim / 2) + (p.v_cache ? kv_dim / 2 : 0);
  dim3 grid((n_items + kRopeThreads - 1) / kRopeThreads, p.n_tokens);
  launch_pdl(rope_kernel, grid, kRopeThreads, 0, stream, p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
