// Device helpers shared by the CUDA ops of kernels/*.cu: warp and block reductions and the
// fp16 <-> fp32 conversions. Included only by .cu files.
#pragma once
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace sqz {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// One round of a transposing reduction: lanes with bit OFF set keep the upper HALF of their
// N values, the others the lower, each adding its partner's copy; then the next round with
// half of each. Started at HALF = OFF = N / 2, after N - 1 shuffles lane l holds value
// l % N summed over its group of N lanes; started at OFF = 16, over lanes l ^ 16, l ^ 8, ...
template <int N, int HALF, int OFF>
__device__ __forceinline__ void transpose_round(float (&v)[N], int lane) {
  const bool hi = lane & OFF;
#pragma unroll
  for (int i = 0; i < HALF; i++) {
    const float send = hi ? v[i] : v[i + HALF], keep = hi ? v[i + HALF] : v[i];
    v[i] = keep + __shfl_xor_sync(kFullMask, send, OFF);
  }
  if constexpr (HALF > 1) transpose_round<N, HALF / 2, OFF / 2>(v, lane);
}

// Block reduction: warp_op (a whole-warp reduction) within each warp, then across the warps
// through the shared `partial` [32] (blockDim.x a multiple of 32, at most 1024; `identity`
// fills the missing warps). Every thread gets the result. Contains __syncthreads: call it
// from all threads.
template <class T, class WarpOp>
__device__ __forceinline__ T block_reduce(T v, T* partial, T identity, WarpOp warp_op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_op(v);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < n_warps ? partial[lane] : identity;
  return warp_op(v);
}

__device__ __forceinline__ double block_sum_f64(double v, double* partial) {
  return block_reduce(v, partial, 0.0, [](double a) { return warp_sum(a); });
}

__device__ __forceinline__ float block_max(float v, float* partial) {
  return block_reduce(v, partial, -INFINITY, [](float a) { return warp_max(a); });
}

// Sum over the whole block into its own shared partials.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  return block_reduce(v, partial, 0.0f, [](float a) { return warp_sum(a); });
}

// fp16 bits (as stored in uint16_t buffers) to and from fp32; round-to-nearest-even.
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t f2h(float f) {
  return __half_as_ushort(__float2half_rn(f));
}

}  // namespace sqz
