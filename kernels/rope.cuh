// Device helpers shared by the RoPE users (rope.cu, the decode attention's fused append in
// attention.cu, rope_backward.cu): one formula for the frequencies and the rotation, so the
// fused and the separate paths give the same bits.
#pragma once
#include <cuda_runtime.h>

namespace sqz {

// theta^(-2i / head_dim) in double like the CPU rope(), rounded to float.
__device__ __forceinline__ float rope_inv_freq(int i, int head_dim, float theta) {
  return float(1.0 / pow(double(theta), double(2 * i) / head_dim));
}

// cos and sin of pair i at position pos: angle = float(pos) * inv_freq in fp32, sincosf at
// full precision.
__device__ __forceinline__ void rope_cos_sin(int pos, int i, int head_dim, float theta,
                                             float& cs, float& sn) {
  sincosf(float(pos) * rope_inv_freq(i, head_dim, theta), &sn, &cs);
}

// (a, b) rotated by the angle of (cs, sn): (a cs - b sn, a sn + b cs), each a product and
// one fused multiply-add, written out so every kernel rounds the same way.
__device__ __forceinline__ float2 rope_rotate_pair(float a, float b, float cs, float sn) {
  return make_float2(__fmaf_rn(a, cs, -__fmul_rn(b, sn)), __fmaf_rn(a, sn, __fmul_rn(b, cs)));
}

}  // namespace sqz
