// Causal GQA attention on the GPU over the fp16 KV cache: tiled prefill kernels (flash-
// attention style, online softmax; on tensor cores for head_dim 64 / 128) and split-K decode
// kernels (flash-decoding; 4 warps on their own key tiles for head_dim 64 / 128) whose last
// block per (token, kv head) merges the splits. Same math as attention() in
// kernels/attention.cpp: scores q.k * 1/sqrt(hd) in fp32, softmax in fp32, fp32 accumulation
// of p.v (the tensor-core prefill rounds q and p to fp16 for their products); output fp16.
// See kernels/attention.h for the parameters. Test: tests/test_cuda_kernels.cpp
// (AttentionCuda.*).
//
// The fp32 kernels convert K/V tiles fp16 -> fp32 into shared memory; a row pitch of
// head_dim + 1 floats keeps the column-wise reads of the score loops free of bank conflicts.
// Keys past the end of a tile's range are zero-filled (the cache beyond a sequence's length
// is never read), so p = 0 never multiplies garbage.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/mma.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rope.cuh"

namespace sqz {

namespace {

constexpr int kKeyTile = 32;  // keys per shared-memory tile (= warp size: one key per lane)
constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxDecodeSplits = 64;
constexpr int kDecodeMaxAcc = 16;  // (n_heads / n_kv_heads) * head_dim <= 128 * 16
static_assert(kThreads >= kMaxDecodeSplits, "combine_head has a thread per split");

// dst[i][d] = float(src[(key0 + i) * row_stride + d]) for i < kKeyTile, d < hd, where
// key0 + i < key_end; zero for the keys past key_end. src points at the sequence's first
// key of this kv head. 16-byte loads when rows allow (hd % 8 == 0 and aligned).
__device__ __forceinline__ void load_kv_tile(float* dst, int pitch, const uint16_t* src,
                                             int row_stride, int key0, int key_end, int hd) {
  const bool vec = (hd % 8) == 0 && (row_stride % 8) == 0 &&
                   (reinterpret_cast<uintptr_t>(src) % 16) == 0;
  if (vec) {
    const int per_row = hd / 8;
    for (int e = threadIdx.x; e < kKeyTile * per_row; e += blockDim.x) {
      const int i = e / per_row, c = (e - i * per_row) * 8;
      float* d = dst + i * pitch + c;
      if (key0 + i < key_end) {
        const uint4 u =
            *reinterpret_cast<const uint4*>(src + int64_t(key0 + i) * row_stride + c);
        const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
        for (int k = 0; k < 4; k++) {
          const float2 f = __half22float2(h[k]);
          d[2 * k] = f.x;
          d[2 * k + 1] = f.y;
        }
      } else {
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] = 0.0f;
      }
    }
  } else {
    for (int e = threadIdx.x; e < kKeyTile * hd; e += blockDim.x) {
      const int i = e / hd, c = e - i * hd;
      dst[i * pitch + c] =
          key0 + i < key_end ? h2f(src[int64_t(key0 + i) * row_stride + c]) : 0.0f;
    }
  }
}

// Register double-buffering of K/V tiles for the decode kernel (16-byte path only): the next
// tile's loads are issued before the current tile is computed, so their latency overlaps the
// math. Thread holds vectors e = tid + 128 q of the tile (8 halves each), zero past key_end.
// N vectors per thread cover head_dim <= 32 N (N = 8: any head_dim).
constexpr int kMaxVecPerThread = kKeyTile * kMaxHeadDim / 8 / kThreads;  // 8
template <int N = kMaxVecPerThread>
struct KvRegs {
  uint4 k[N], v[N];
};

__device__ __forceinline__ bool kv_vec_ok(const uint16_t* kb, const uint16_t* vb, int row_stride,
                                          int hd) {
  return (hd % 8) == 0 && (row_stride % 8) == 0 && (reinterpret_cast<uintptr_t>(kb) % 16) == 0 &&
         (reinterpret_cast<uintptr_t>(vb) % 16) == 0;
}

template <int N>
__device__ __forceinline__ void kv_fetch(KvRegs<N>& r, const uint16_t* kb, const uint16_t* vb,
                                         int row_stride, int key0, int key_end, int hd) {
  const int per_row = hd / 8, total = kKeyTile * per_row;
#pragma unroll
  for (int q = 0; q < N; q++) {
    const int e = threadIdx.x + q * kThreads;
    if (e >= total) break;
    const int i = e / per_row, c = (e - i * per_row) * 8;
    if (key0 + i < key_end) {
      const int64_t off = int64_t(key0 + i) * row_stride + c;
      r.k[q] = *reinterpret_cast<const uint4*>(kb + off);
      r.v[q] = *reinterpret_cast<const uint4*>(vb + off);
    } else {
      r.k[q] = r.v[q] = make_uint4(0, 0, 0, 0);  // fp16 zeros
    }
  }
}

__device__ __forceinline__ void store_halves(float* d, const uint4& u) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 f = __half22float2(h[k]);
    d[2 * k] = f.x;
    d[2 * k + 1] = f.y;
  }
}

template <int N>
__device__ __forceinline__ void kv_store(const KvRegs<N>& r, float* ks, float* vs, int pitch,
                                         int hd) {
  const int per_row = hd / 8, total = kKeyTile * per_row;
#pragma unroll
  for (int q = 0; q < N; q++) {
    const int e = threadIdx.x + q * kThreads;
    if (e >= total) break;
    const int i = e / per_row, c = (e - i * per_row) * 8;
    store_halves(ks + i * pitch + c, r.k[q]);
    store_halves(vs + i * pitch + c, r.v[q]);
  }
}

// ---------------------------------------------------------------------------------------
// Prefill. Block (tile, head h), 128 threads: thread = (row qi = tid / 4, sub = tid % 4).
// Per key tile of 32: the thread scores keys sub, sub + 4, ..., sub + 28 for its row (8
// scores in registers), the row's max/sum come from the 4 lanes of the row (shuffles), and
// the thread accumulates output dims d = sub + 4c (c < kC) over all 32 keys, taking each
// key's p from the lane that holds it. Shared: Q [32][hd+1], K [32][hd+1], V [32][hd+1].
template <int kC>
__global__ void __launch_bounds__(kThreads)
    attention_prefill_kernel(AttentionCudaParams p, const AttentionTile* tiles) {
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  extern __shared__ float smem[];
  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y, hd = p.head_dim, pitch = hd + 1;
  const int group = p.n_heads / p.n_kv_heads, kvh = h / group, kv_dim = p.n_kv_heads * hd;
  float* qs = smem;
  float* ks = qs + kAttentionTileTokens * pitch;
  float* vs = ks + kKeyTile * pitch;

  for (int e = threadIdx.x; e < kAttentionTileTokens * hd; e += blockDim.x) {
    const int r = e / hd, d = e - r * hd;
    qs[r * pitch + d] =
        r < tile.n ? p.q[int64_t(tile.t0 + r) * p.q_stride + h * hd + d] : 0.0f;
  }
  const int lane = threadIdx.x & 31, qi = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const bool row_valid = qi < tile.n;
  const int qpos = row_valid ? p.pos[tile.t0 + qi] : -1;  // -1: every key masked
  const float scale = 1.0f / sqrtf(float(hd));
  const uint16_t* kbase = p.k_cache + int64_t(tile.seq) * p.seq_stride + kvh * hd;
  const uint16_t* vbase = p.v_cache + int64_t(tile.seq) * p.seq_stride + kvh * hd;

  float m = -INFINITY, l = 0.0f, acc[kC];
#pragma unroll
  for (int c = 0; c < kC; c++) acc[c] = 0.0f;

  for (int k0 = 0; k0 <= tile.max_pos; k0 += kKeyTile) {
    __syncthreads();  // Q stored (first tile); previous K/V tile consumed
    load_kv_tile(ks, pitch, kbase, kv_dim, k0, tile.max_pos + 1, hd);
    load_kv_tile(vs, pitch, vbase, kv_dim, k0, tile.max_pos + 1, hd);
    __syncthreads();

    float s[8];
#pragma unroll
    for (int j = 0; j < 8; j++) s[j] = 0.0f;
    const float* qrow = qs + qi * pitch;
    for (int d = 0; d < hd; d++) {
      const float qv = qrow[d];
#pragma unroll
      for (int j = 0; j < 8; j++) s[j] += qv * ks[(sub + 4 * j) * pitch + d];
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      s[j] = k0 + sub + 4 * j <= qpos ? s[j] * scale : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
    const float m_new = fmaxf(m, mx);
    float corr = 1.0f, psum = 0.0f;
    if (m_new == -INFINITY) {  // nothing visible to this row yet
#pragma unroll
      for (int j = 0; j < 8; j++) s[j] = 0.0f;
    } else {
      corr = expf(m - m_new);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        s[j] = expf(s[j] - m_new);
        psum += s[j];
      }
    }
    psum += __shfl_xor_sync(kFullMask, psum, 1);
    psum += __shfl_xor_sync(kFullMask, psum, 2);
    l = l * corr + psum;
    m = m_new;
#pragma unroll
    for (int c = 0; c < kC; c++) acc[c] *= corr;
    // Key ki = src + 4j of this row is held in s[j] by lane (lane & ~3) | src.
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
      for (int src = 0; src < 4; src++) {
        const float pk = __shfl_sync(kFullMask, s[j], (lane & ~3) | src);
        const float* vrow = vs + (src + 4 * j) * pitch;
#pragma unroll
        for (int c = 0; c < kC; c++) {
          const int d = sub + 4 * c;
          if (d < hd) acc[c] += pk * vrow[d];
        }
      }
    }
  }
  if (!row_valid) return;
  uint16_t* out = p.out + int64_t(tile.t0 + qi) * p.n_heads * hd + h * hd;
  const float inv_l = 1.0f / l;
#pragma unroll
  for (int c = 0; c < kC; c++) {
    const int d = sub + 4 * c;
    if (d < hd) out[d] = f2h(acc[c] * inv_l);
  }
}

// Prefill, vectorised (head_dim % 16 == 0: every LLaMA). Same mapping and math as above, but
// shared rows have a pitch of head_dim + 4 floats so that they are 16-byte aligned, every
// shared load is a float4, and the thread's output dims are the float4 chunks 4 c4 + sub
// (c4 < head_dim / 16): dims 16 c4 + 4 sub .. + 3. That keeps the K, Q and V reads free of
// bank conflicts and cuts the shared-memory wavefronts per FMA by 4 (the scalar kernel was
// bound by them). K/V tiles are double-buffered through registers (kv_fetch / kv_store).
template <int kC4>
__global__ void __launch_bounds__(kThreads)
    attention_prefill_vec_kernel(AttentionCudaParams p, const AttentionTile* tiles) {
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y, hd = p.head_dim, pitch = hd + 4, pitch4 = pitch / 4, hd4 = hd / 4;
  const int group = p.n_heads / p.n_kv_heads, kvh = h / group, kv_dim = p.n_kv_heads * hd;
  float* qs = smem;
  float* ks = qs + kAttentionTileTokens * pitch;
  float* vs = ks + kKeyTile * pitch;
  const float4* qs4 = reinterpret_cast<const float4*>(qs);
  const float4* ks4 = reinterpret_cast<const float4*>(ks);
  const float4* vs4 = reinterpret_cast<const float4*>(vs);

  for (int e = threadIdx.x; e < kAttentionTileTokens * hd; e += blockDim.x) {
    const int r = e / hd, d = e - r * hd;
    qs[r * pitch + d] =
        r < tile.n ? p.q[int64_t(tile.t0 + r) * p.q_stride + h * hd + d] : 0.0f;
  }
  const int lane = threadIdx.x & 31, qi = threadIdx.x >> 2, sub = threadIdx.x & 3;
  const bool row_valid = qi < tile.n;
  const int qpos = row_valid ? p.pos[tile.t0 + qi] : -1;  // -1: every key masked
  const float scale = 1.0f / sqrtf(float(hd));
  const uint16_t* kbase = p.k_cache + int64_t(tile.seq) * p.seq_stride + kvh * hd;
  const uint16_t* vbase = p.v_cache + int64_t(tile.seq) * p.seq_stride + kvh * hd;
  const int key_end = tile.max_pos + 1;

  float m = -INFINITY, l = 0.0f;
  float4 acc[kC4];
#pragma unroll
  for (int c = 0; c < kC4; c++) acc[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  const bool prefetch = kv_vec_ok(kbase, vbase, kv_dim, hd);
  KvRegs<(kC4 + 1) / 2> regs;  // head_dim <= 16 kC4 = 32 N
  if (prefetch) kv_fetch(regs, kbase, vbase, kv_dim, 0, key_end, hd);
  for (int k0 = 0; k0 < key_end; k0 += kKeyTile) {
    __syncthreads();  // Q stored (first tile); previous K/V tile consumed
    if (prefetch) {
      kv_store(regs, ks, vs, pitch, hd);
      if (k0 + kKeyTile < key_end) kv_fetch(regs, kbase, vbase, kv_dim, k0 + kKeyTile, key_end, hd);
    } else {
      load_kv_tile(ks, pitch, kbase, kv_dim, k0, key_end, hd);
      load_kv_tile(vs, pitch, vbase, kv_dim, k0, key_end, hd);
    }
    __syncthreads();

    float s[8];
#pragma unroll
    for (int j = 0; j < 8; j++) s[j] = 0.0f;
    const float4* qrow = qs4 + qi * pitch4;
    for (int d4 = 0; d4 < hd4; d4++) {
      const float4 qv = qrow[d4];
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float4 kv = ks4[(sub + 4 * j) * pitch4 + d4];
        s[j] += qv.x * kv.x;
        s[j] += qv.y * kv.y;
        s[j] += qv.z * kv.z;
        s[j] += qv.w * kv.w;
      }
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      s[j] = k0 + sub + 4 * j <= qpos ? s[j] * scale : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
    const float m_new = fmaxf(m, mx);
    float corr = 1.0f, psum = 0.0f;
    if (m_new == -INFINITY) {  // nothing visible to this row yet
#pragma unroll
      for (int j = 0; j < 8; j++) s[j] = 0.0f;
    } else {
      corr = expf(m - m_new);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        s[j] = expf(s[j] - m_new);
        psum += s[j];
      }
    }
    psum += __shfl_xor_sync(kFullMask, psum, 1);
    psum += __shfl_xor_sync(kFullMask, psum, 2);
    l = l * corr + psum;
    m = m_new;
#pragma unroll
    for (int c = 0; c < kC4; c++) {
      acc[c].x *= corr, acc[c].y *= corr, acc[c].z *= corr, acc[c].w *= corr;
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
      for (int src = 0; src < 4; src++) {
        const float pk = __shfl_sync(kFullMask, s[j], (lane & ~3) | src);
        const float4* vrow = vs4 + (src + 4 * j) * pitch4;
#pragma unroll
        for (int c = 0; c < kC4; c++) {
          if (16 * c >= hd) break;
          const float4 v = vrow[4 * c + sub];
          acc[c].x += pk * v.x;
          acc[c].y += pk * v.y;
          acc[c].z += pk * v.z;
          acc[c].w += pk * v.w;
        }
      }
    }
  }
  if (!row_valid) return;
  uint16_t* out = p.out + int64_t(tile.t0 + qi) * p.n_heads * hd + h * hd;
  const float inv_l = 1.0f / l;
#pragma unroll
  for (int c = 0; c < kC4; c++) {
    if (16 * c >= hd) break;
    uint16_t* o = out + 16 * c + 4 * sub;
    o[0] = f2h(acc[c].x * inv_l);
    o[1] = f2h(acc[c].y * inv_l);
    o[2] = f2h(acc[c].z * inv_l);
    o[3] = f2h(acc[c].w * inv_l);
  }
}

// Prefill on tensor cores (head_dim 64 or 128, 16-byte aligned K/V rows: attention_prefill_cuda
// picks it; the two kernels above take the rest). Block (tile, head h), 2 warps: warp w owns
// query rows 16 w .. 16 w + 15 of the tile as the M of m16n8k16 mma.sync (fp16 inputs, fp32
// accumulation), flash-attention style:
//   S = Q K^T: Q (unscaled, rounded to fp16) as A fragments held in registers for
//     the whole kernel; K from shared memory as B (row-major [key][d] is already K^T's
//     column layout: two 32-bit loads per fragment).
//   online softmax on the S fragments in fp32 (a row lives on the 4 lanes of a quad: two
//     shuffles for its max; the sums stay per lane until the end);
//   O += P V: the S accumulators of two 8-key blocks are, rounded to fp16, the A fragment of
//     16 keys (no data movement); V as B by ldmatrix.trans.
// K/V tiles of 32 keys (0 .. max_pos of the tile, zero past it) are copied by cp.async into
// a double buffer ([key][HD + 8] halves: conflict-free fragment loads and ldmatrix rows).
// Differences from the fp32 kernels: q and p are rounded to fp16 before their products (as
// in flash attention); the sums are fp32.
constexpr int kMmaWarps = 2, kMmaThreads = 32 * kMmaWarps;

template <int HD>
constexpr size_t prefill_mma_smem() {
  return size_t(2) * 2 * kKeyTile * (HD + 8) * sizeof(uint16_t);  // [buffer][K, V][key][d]
}

template <int HD>
__global__ void __launch_bounds__(kMmaThreads)
    attention_prefill_mma_kernel(AttentionCudaParams p, const AttentionTile* tiles) {
  constexpr int PITCH = HD + 8, KS = HD / 16, NB = HD / 8;  // k16 steps of q.k, 8-dim blocks
  constexpr int TILE_HALVES = kKeyTile * PITCH;
  extern __shared__ __align__(16) uint16_t kv_s[];  // [buffer][K, V][key][PITCH]
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y, group = p.n_heads / p.n_kv_heads, kvh = h / group;
  const int kv_dim = p.n_kv_heads * HD, key_end = tile.max_pos + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const uint16_t* kbase = p.k_cache + int64_t(tile.seq) * p.seq_stride + kvh * HD;
  const uint16_t* vbase = p.v_cache + int64_t(tile.seq) * p.seq_stride + kvh * HD;

  // K and V rows k0 .. k0 + 31 into buffer b: 16-byte pieces, zero past key_end.
  auto load_tile = [&](int k0, int b) {
    constexpr int PIECES = kKeyTile * HD / 8;
    uint16_t* dst = kv_s + b * 2 * TILE_HALVES;
#pragma unroll
    for (int i = threadIdx.x; i < PIECES; i += kMmaThreads) {
      const int key = i / (HD / 8), c = (i - key * (HD / 8)) * 8;
      const bool ok = k0 + key < key_end;
      const int64_t off = int64_t(ok ? k0 + key : 0) * kv_dim + c;
      cp_async_16(dst + key * PITCH + c, kbase + off, ok ? 16 : 0);
      cp_async_16(dst + TILE_HALVES + key * PITCH + c, vbase + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };
  load_tile(0, 0);

  // This warp's rows g and g + 8 (r0, r1 in the tile); rows past tile.n see no key.
  const int r0 = 16 * warp + g, r1 = r0 + 8;
  const int pos0 = r0 < tile.n ? p.pos[tile.t0 + r0] : -1;
  const int pos1 = r1 < tile.n ? p.pos[tile.t0 + r1] : -1;
  const bool active = 16 * warp < tile.n;
  int warp_max_pos = max(pos0, pos1);
#pragma unroll
  for (int o = 4; o < 32; o <<= 1)
    warp_max_pos = max(warp_max_pos, __shfl_xor_sync(kFullMask, warp_max_pos, o));
  uint32_t qa[KS][4];
  {
    const float* q0 = p.q + int64_t(tile.t0 + min(r0, tile.n - 1)) * p.q_stride + h * HD;
    const float* q1 = p.q + int64_t(tile.t0 + min(r1, tile.n - 1)) * p.q_stride + h * HD;
    auto pack = [](const float* q, int d, bool ok) {
      const float2 v = ok ? *reinterpret_cast<const float2*>(q + d) : make_float2(0.0f, 0.0f);
      const __half2 hv = __floats2half2_rn(v.x, v.y);
      return *reinterpret_cast<const uint32_t*>(&hv);
    };
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
      const int d = 16 * ks + 2 * t;
      qa[ks][0] = pack(q0, d, pos0 >= 0), qa[ks][1] = pack(q1, d, pos1 >= 0);
      qa[ks][2] = pack(q0, d + 8, pos0 >= 0), qa[ks][3] = pack(q1, d + 8, pos1 >= 0);
    }
  }
  const float scale = 1.0f / sqrtf(float(HD));
  float o[NB][4];
#pragma unroll
  for (int nb = 0; nb < NB; nb++) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows r0, r1 (l: this lane's part)

  const int n_tiles = (key_end + kKeyTile - 1) / kKeyTile;
  for (int kt = 0; kt < n_tiles; kt++) {
    const int k0 = kt * kKeyTile, b = kt & 1;
    if (kt + 1 < n_tiles) {
      load_tile(k0 + kKeyTile, b ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (active && k0 <= warp_max_pos) {
      const uint16_t* ks_ = kv_s + b * 2 * TILE_HALVES;
      const uint16_t* vs_ = ks_ + TILE_HALVES;
      // S: 16 rows x 32 keys = 4 blocks of 8 keys.
      float s[4][4];
#pragma unroll
      for (int kb = 0; kb < 4; kb++) {
        s[kb][0] = s[kb][1] = s[kb][2] = s[kb][3] = 0.0f;
        const uint16_t* krow = ks_ + (8 * kb + g) * PITCH + 2 * t;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + 16 * ks);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + 16 * ks + 8);
          mma_16816(s[kb], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b0, b1);
        }
      }
      // Scale, mask (key > the row's pos), row max over the quad.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int kb = 0; kb < 4; kb++) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int key = k0 + 8 * kb + 2 * t + c;
          s[kb][c] = key <= pos0 ? s[kb][c] * scale : -INFINITY;
          s[kb][2 + c] = key <= pos1 ? s[kb][2 + c] * scale : -INFINITY;
          mx0 = fmaxf(mx0, s[kb][c]), mx1 = fmaxf(mx1, s[kb][2 + c]);
        }
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 2));
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      // A row with no visible key yet keeps m = -inf: use 0 as the reference (p = 0).
      const float ref0 = mn0 == -INFINITY ? 0.0f : mn0, ref1 = mn1 == -INFINITY ? 0.0f : mn1;
      const float c0 = expf(m0 - ref0), c1 = expf(m1 - ref1);
      m0 = mn0, m1 = mn1;
      l0 *= c0, l1 *= c1;
#pragma unroll
      for (int nb = 0; nb < NB; nb++)
        o[nb][0] *= c0, o[nb][1] *= c0, o[nb][2] *= c1, o[nb][3] *= c1;
      uint32_t pa[4][2];  // [key block][row g, row g + 8]: fp16 pairs of p
#pragma unroll
      for (int kb = 0; kb < 4; kb++) {
        const float e0 = expf(s[kb][0] - ref0), e1 = expf(s[kb][1] - ref0);
        const float e2 = expf(s[kb][2] - ref1), e3 = expf(s[kb][3] - ref1);
        l0 += e0 + e1, l1 += e2 + e3;
        const __half2 h01 = __floats2half2_rn(e0, e1), h23 = __floats2half2_rn(e2, e3);
        pa[kb][0] = *reinterpret_cast<const uint32_t*>(&h01);
        pa[kb][1] = *reinterpret_cast<const uint32_t*>(&h23);
      }
      // O += P V: 2 steps of 16 keys; V^T fragments for two 8-dim blocks per ldmatrix.
#pragma unroll
      for (int kk = 0; kk < 2; kk++) {
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
          uint32_t vb[4];
          const int key = 16 * kk + (lane & 15), dim = 8 * (nb + (lane >> 4));
          ldmatrix_x4_trans(vb, vs_ + key * PITCH + dim);
          mma_16816(o[nb], pa[2 * kk][0], pa[2 * kk][1], pa[2 * kk + 1][0], pa[2 * kk + 1][1],
                    vb[0], vb[1]);
          mma_16816(o[nb + 1], pa[2 * kk][0], pa[2 * kk][1], pa[2 * kk + 1][0],
                    pa[2 * kk + 1][1], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // buffer b is refilled by the next iteration's copy
  }
  if (!active) return;
  l0 += __shfl_xor_sync(kFullMask, l0, 1);
  l0 += __shfl_xor_sync(kFullMask, l0, 2);
  l1 += __shfl_xor_sync(kFullMask, l1, 1);
  l1 += __shfl_xor_sync(kFullMask, l1, 2);
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
  for (int nb = 0; nb < NB; nb++) {
    const int d = 8 * nb + 2 * t;
    if (r0 < tile.n) {
      uint16_t* out = p.out + int64_t(tile.t0 + r0) * p.n_heads * HD + h * HD + d;
      const __half2 v = __floats2half2_rn(o[nb][0] * inv0, o[nb][1] * inv0);
      *reinterpret_cast<__half2*>(out) = v;
    }
    if (r1 < tile.n) {
      uint16_t* out = p.out + int64_t(tile.t0 + r1) * p.n_heads * HD + h * HD + d;
      const __half2 v = __floats2half2_rn(o[nb][2] * inv1, o[nb][3] * inv1);
      *reinterpret_cast<__half2*>(out) = v;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Decode. Block (split s, kv head g, token t), 128 threads, for the `group` query heads of
// kv head g together (K/V read once for all of them). The token's keys 0..pos are cut into
// chunks of whole 32-key tiles (decode_chunk: at most n_splits, at least
// kAttentionDecodeSplitKeys keys each); this block runs the online softmax over chunk s, or
// returns at once when chunk s is empty.
// Scores: item (j, i) = (head j of the group, key i of the tile), items spread over the
// threads; for groups of 1 or 2 heads 4 or 2 threads share an item (a slice of the head dim
// each, summed through shared memory), so all 128 threads work. Softmax: warp w updates
// heads j = w, w + 4, ... (one key per lane). Output:
// thread owns elements e = tid + 128 r of [group][hd] (kAcc registers).
// Shared: q [group][hd], K/V [32][hd+1], p [group][32], per-head m, l, correction, partial
// dots [128].
// With rope_theta (the fused append), the block of the last chunk first rotates this step's k
// and stores k and v at pos (kernels/rope.cuh, the same bits as rope_cuda), then reads the
// cache; every block rotates its q heads as it loads them.
//
// Keys per chunk for a sequence of len keys: whole tiles, at least min_keys keys
// (kAttentionDecodeSplitKeys, or kDecodeWarpSplitKeys for the warp-tile kernel), at most
// n_splits chunks.
__device__ __forceinline__ int decode_chunk(int len, int n_splits, int min_keys) {
  const int n = min(n_splits, (len + min_keys - 1) / min_keys);
  const int chunk = (len + n - 1) / n;
  return (chunk + kKeyTile - 1) / kKeyTile * kKeyTile;
}

// Merges the n_used partials of head h, token t (written by the decode blocks; the scratch
// has room for n_splits per head): out = sum_s w_s o_s / sum_s w_s l_s with
// w_s = exp(m_s - max m). Thread s < n_used
// (<= 64) loads split s's (m, l) so the loads run in parallel; the max and the sum are warp
// reductions over the first two warps. Empty splits have m = -inf, l = 0, o = 0 and weigh
// nothing; split 0 is never empty. Partials are read through L2 (__ldcg): other blocks
// wrote them. Called by all kThreads threads of the block.
__device__ void combine_head(const AttentionCudaParams& p, int n_splits, int n_used,
                             const float* scratch, int t, int h) {
  __shared__ float w[kMaxDecodeSplits];
  __shared__ float red_m[2], red_l[2];
  const int hd = p.head_dim;
  const int s = threadIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n_parts = int64_t(p.n_tokens) * p.n_heads * n_splits;
  const int64_t part0 = (int64_t(t) * p.n_heads + h) * n_splits;
  const float* ml = scratch + n_parts * hd + part0 * 2;
  const float m = s < n_used ? __ldcg(ml + 2 * s) : -INFINITY;
  const float l = s < n_used ? __ldcg(ml + 2 * s + 1) : 0.0f;
  const float wm = warp_max(m);
  if (lane == 0 && warp < 2) red_m[warp] = wm;
  __syncthreads();
  const float mx = fmaxf(red_m[0], red_m[1]);
  const float ws = s < n_used ? expf(m - mx) : 0.0f;
  if (s < kMaxDecodeSplits) w[s] = ws;
  const float wl = warp_sum(ws * l);
  if (lane == 0 && warp < 2) red_l[warp] = wl;
  __syncthreads();
  const float inv_l = 1.0f / (red_l[0] + red_l[1]);
  const float* o = scratch + part0 * hd;
  uint16_t* out = p.out + int64_t(t) * p.n_heads * hd + h * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll 8
    for (int q = 0; q < n_used; q++) a += w[q] * __ldcg(o + q * hd + d);
    out[d] = f2h(a * inv_l);
  }
  __syncthreads();  // w, red_* free for the next head
}

// Called by every thread of a split's block once its partials are in the scratch: the last
// of the `arrivals` blocks of (kv head g, token t) to finish merges the n_used splits of
// every head of the group (the threadFenceReduction pattern: each block's partials are
// fenced before its count), then resets the counter for the next call. The merge reads the splits in a fixed order, so the
// result does not depend on which block comes last.
__device__ void merge_if_last(const AttentionCudaParams& p, int n_splits, int n_used,
                              const float* scratch, int* counters, int t, int g,
                              int arrivals) {
  __shared__ bool is_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = counters + int64_t(t) * p.n_kv_heads + g;
    is_last = atomicAdd(counter, 1) == arrivals - 1;
    if (is_last) *counter = 0;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int group = p.n_heads / p.n_kv_heads;
  for (int j = 0; j < group; j++) combine_head(p, n_splits, n_used, scratch, t, g * group + j);
}

// Decode, warp tiles: the kernel for head_dim 64 or 128 and 16-byte aligned K/V rows
// (attention_decode_cuda picks it; the kernel below takes the rest). Block (split s, kv head
// g and GMAX of its query heads, token t): GMAX = 1 or 2 (hd 128), up to 4 (hd 64), as many
// as fit the registers without spills (the K slices are converted once for all heads);
// larger groups take several blocks, which read the same K/V. 4 warps; the chunk of split s
// (at least kDecodeWarpSplitKeys keys) is cut into 32-key tiles and warp w takes tiles w,
// w + 4, ..., so the 4 warps work on their own with no block barrier per tile; the warps'
// softmax states are merged through shared memory at the end (and the splits, as above, by
// the last block).
// In a tile, lane l loads 16 bytes (8 dims) of keys l / LK, l / LK + 32 / LK, ... (LK = hd / 8
// lanes per key; one coalesced load covers 32 / LK keys) for K and V. Scores: each lane dots
// its 8 dims of q with each of its LK key slices, and a transposing reduction over the LK
// lanes of a key (LK - 1 shuffles) leaves every lane with the whole score of one key. Softmax
// per warp (one key per lane). p . V: each lane gathers the p of its keys by shuffle and
// accumulates its 8 dims; the key groups are summed at the end.
// With rope_theta, each warp's first tile of cached positions (< pos) is loaded before the
// PDL wait (only this kernel writes the cache, and the previous kernel does not: attention.h);
// this step's key, which the block of the last chunk rotates and stores, joins its tile from
// shared memory.
constexpr int kDecodeWarps = kThreads / 32;

// Loads K (and V) rows of the tile at key0 into k (and v), zero for keys >= key_end and skip.
template <int LK, bool V>
__device__ __forceinline__ void kv_tile_fetch(uint4 (&k)[LK], uint4 (&v)[LK], const uint16_t* kb,
                                              const uint16_t* vb, int row_stride, int key0,
                                              int key_end, int skip) {
  constexpr int KPL = 32 / LK;
  const int lane = threadIdx.x & 31, kg = lane / LK, dl = (lane % LK) * 8;
#pragma unroll
  for (int r = 0; r < LK; r++) {
    const int key = key0 + r * KPL + kg;
    const bool ok = key < key_end && key != skip;
    const int64_t off = int64_t(key) * row_stride + dl;
    k[r] = ok ? __ldcg(reinterpret_cast<const uint4*>(kb + off)) : make_uint4(0, 0, 0, 0);
    if (V) v[r] = ok ? __ldcg(reinterpret_cast<const uint4*>(vb + off)) : make_uint4(0, 0, 0, 0);
  }
}

// The 8 fp16 values of u, in order, as floats (the warp-tile kernel's K and V slices).
__device__ __forceinline__ void halves_to_floats(const uint4& u, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 v = __half22float2(h[k]);
    f[2 * k] = v.x, f[2 * k + 1] = v.y;
  }
}

// (a, b) . the 8 fp16 values of h, summed in order.
__device__ __forceinline__ float dot8(const float4& a, const float4& b, const uint4& h) {
  float k[8];
  halves_to_floats(h, k);
  float d = a.x * k[0];
  d += a.y * k[1];
  d += a.z * k[2];
  d += a.w * k[3];
  d += b.x * k[4];
  d += b.y * k[5];
  d += b.z * k[6];
  d += b.w * k[7];
  return d;
}

template <int LK, int GMAX>
__global__ void __launch_bounds__(kThreads) attention_decode_warps_kernel(
    AttentionCudaParams p, int n_splits, float* scratch, int* counters) {
  // At one token the next kernel (the o linear) is let in before this one's wait, so that its
  // blocks take the room the q|k|v linear frees and start on their weights during this kernel
  // (H100, 7B tg128 b1: 4-bit 2.408 -> 2.376 ms, 3-bit 1.896 -> 1.890; at 8 tokens, where
  // this kernel has 8 times the blocks, 3-bit b8 2.311 -> 2.320, so there it waits first; in
  // the packed GEMV the same move cost 3-bit b1 1.887 -> 1.907). The o linear reads nothing
  // of this kernel's before its own wait.
  const bool early = p.n_tokens == 1;
  if (early) pdl_launch_dependents();
  constexpr int HD = 8 * LK, KPL = 32 / LK;
  const int group = p.n_heads / p.n_kv_heads, n_chunks = (group + GMAX - 1) / GMAX;
  const int s = blockIdx.x, g = blockIdx.y / n_chunks, t = blockIdx.z;
  const int j0 = (blockIdx.y - g * n_chunks) * GMAX, nh = min(GMAX, group - j0);  // heads
  const int len = p.pos[t] + 1, chunk = decode_chunk(len, n_splits, kDecodeWarpSplitKeys);
  const int n_used = (len + chunk - 1) / chunk;  // chunks with keys
  if (s >= n_used) return;
  const int begin = s * chunk, end = min(len, begin + chunk);
  const bool append = p.rope_theta > 0.0f, appends = append && end == len;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kg = lane / LK;
  const int dl = (lane % LK) * 8, kv_dim = p.n_kv_heads * HD;
  const int64_t seq_off = int64_t(p.seq[t]) * p.seq_stride + g * HD;
  uint16_t* kbase = p.k_cache + seq_off;
  uint16_t* vbase = p.v_cache + seq_off;

  __shared__ float rope_cs[HD / 2], rope_sn[HD / 2];
  __shared__ __align__(16) float qs[GMAX][HD];
  __shared__ __align__(16) uint16_t knew[HD], vnew[HD];
  __shared__ __align__(16) float wo[kDecodeWarps][GMAX][HD];
  __shared__ float wm[kDecodeWarps][GMAX], wl[kDecodeWarps][GMAX];

  // A tile's rows: load r holds key r * KPL + kg, dims dl .. dl + 7. V_LATE (head_dim 128
  // with 2 heads per block): V is loaded after the scores, so K and V are not both held
  // (spills otherwise).
  constexpr bool V_LATE = LK == 16 && GMAX > 1;
  const int first = begin + warp * kKeyTile, skip = appends ? len - 1 : -1;
  uint4 tk[LK], tv[LK];
  if (append) {
    for (int i = threadIdx.x; i < HD / 2; i += blockDim.x)
      rope_cos_sin(len - 1, i, HD, p.rope_theta, rope_cs[i], rope_sn[i]);
    if (first < end) kv_tile_fetch<LK, !V_LATE>(tk, tv, kbase, vbase, kv_dim, first, end, skip);
    __syncthreads();
  }
  pdl_wait();  // nothing before this reads earlier kernels' outputs
  if (!early) pdl_launch_dependents();
  if (!append && first < end)
    kv_tile_fetch<LK, !V_LATE>(tk, tv, kbase, vbase, kv_dim, first, end, skip);

  const float* row = p.q + int64_t(t) * p.q_stride;
  // A thread holds at most one pair of q (GMAX * HD <= 2 * kThreads) and, in the appending
  // block, one pair of this step's k and v (HD / 2 < kThreads): every load is issued before
  // any is used.
  static_assert(GMAX * HD <= 2 * kThreads && HD / 2 <= kThreads, "one pair per thread");
  const int e = 2 * threadIdx.x, i = (e % HD) / 2;
  const bool has_q = e < nh * HD, has_kv = appends && e < HD;
  const float* q = row + (g * group + j0) * HD;
  const float* k_new = row + (p.n_heads + g) * HD;
  const float* v_new = row + (p.n_heads + p.n_kv_heads + g) * HD;
  float2 qv = make_float2(0.0f, 0.0f), kv = qv, vv = qv;
  if (has_q) qv = make_float2(q[e], q[e + 1]);
  if (has_kv) kv = make_float2(k_new[e], k_new[e + 1]), vv = make_float2(v_new[e], v_new[e + 1]);
  if (has_q) {
    if (append) qv = rope_rotate_pair(qv.x, qv.y, rope_cs[i], rope_sn[i]);
    qs[e / HD][e % HD] = qv.x, qs[e / HD][e % HD + 1] = qv.y;
  }
  if (has_kv) {  // rotate this step's k, store k and v at pos, keep them for the tile
    const int64_t at = int64_t(len - 1) * kv_dim;
    const float2 r = rope_rotate_pair(kv.x, kv.y, rope_cs[i], rope_sn[i]);
    const uint32_t kh = uint32_t(f2h(r.x)) | uint32_t(f2h(r.y)) << 16;
    const uint32_t vh = uint32_t(f2h(vv.x)) | uint32_t(f2h(vv.y)) << 16;
    reinterpret_cast<uint32_t*>(kbase + at)[i] = kh;
    reinterpret_cast<uint32_t*>(vbase + at)[i] = vh;
    reinterpret_cast<uint32_t*>(knew)[i] = kh;
    reinterpret_cast<uint32_t*>(vnew)[i] = vh;
  }
  __syncthreads();

  const float scale = 1.0f / sqrtf(float(HD));
  float m[GMAX], l[GMAX], acc[GMAX][8];
#pragma unroll
  for (int j = 0; j < GMAX; j++) {
    m[j] = -INFINITY, l[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; c++) acc[j][c] = 0.0f;
  }
  // After the transposing reduction lane l holds the score of key (l % LK) * KPL + l / LK of
  // the tile; load r's key r * KPL + kg is on lane kg * LK + r.
  const int my_key = (lane % LK) * KPL + kg;
  for (int k0 = first; k0 < end; k0 += kDecodeWarps * kKeyTile) {
    if (k0 != first) kv_tile_fetch<LK, !V_LATE>(tk, tv, kbase, vbase, kv_dim, k0, end, skip);
    const bool has_new = skip >= k0 && skip < k0 + kKeyTile;
    if (has_new) {
#pragma unroll
      for (int r = 0; r < LK; r++)
        if (k0 + r * KPL + kg == skip) tk[r] = *reinterpret_cast<const uint4*>(knew + dl);
    }
    const bool valid = k0 + my_key < end;
    float e[GMAX];  // this lane's key's p, per head
#pragma unroll
    for (int j = 0; j < GMAX; j++) {
      if (j >= nh) break;
      const float4 qa = *reinterpret_cast<const float4*>(&qs[j][dl]);
      const float4 qb = *reinterpret_cast<const float4*>(&qs[j][dl + 4]);
      float part[LK];
#pragma unroll
      for (int r = 0; r < LK; r++) part[r] = dot8(qa, qb, tk[r]);
      transpose_round<LK, LK / 2, LK / 2>(part, lane);
      const float sc = valid ? part[0] * scale : -INFINITY;
      const float m_new = fmaxf(m[j], warp_max(sc));  // finite: key k0 is valid
      e[j] = expf(sc - m_new);
      const float corr = expf(m[j] - m_new);
      l[j] = l[j] * corr + warp_sum(e[j]);
      m[j] = m_new;
#pragma unroll
      for (int c = 0; c < 8; c++) acc[j][c] *= corr;
    }
    if (V_LATE) kv_tile_fetch<LK, false>(tv, tk, vbase, kbase, kv_dim, k0, end, skip);
    if (has_new) {
#pragma unroll
      for (int r = 0; r < LK; r++)
        if (k0 + r * KPL + kg == skip) tv[r] = *reinterpret_cast<const uint4*>(vnew + dl);
    }
#pragma unroll
    for (int r = 0; r < LK; r++) {
      float v[8];
      halves_to_floats(tv[r], v);
#pragma unroll
      for (int j = 0; j < GMAX; j++) {
        if (j >= nh) break;
        const float pk = __shfl_sync(kFullMask, e[j], kg * LK + r);
#pragma unroll
        for (int c = 0; c < 8; c++) acc[j][c] += pk * v[c];
      }
    }
  }
  // The warp's state: dims summed over its key groups, then to shared memory.
#pragma unroll
  for (int j = 0; j < GMAX; j++) {
    if (j >= nh) break;
#pragma unroll
    for (int c = 0; c < 8; c++)
#pragma unroll
      for (int o = LK; o < 32; o <<= 1) acc[j][c] += __shfl_xor_sync(kFullMask, acc[j][c], o);
    if (kg == 0) {
      *reinterpret_cast<float4*>(&wo[warp][j][dl]) =
          make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
      *reinterpret_cast<float4*>(&wo[warp][j][dl + 4]) =
          make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
    }
    if (lane == 0) wm[warp][j] = m[j], wl[warp][j] = l[j];
  }
  __syncthreads();
  // The 4 warps merged in order (a warp without keys has m = -inf and weighs nothing): the
  // output when this is the only split, else this split's partials.
  const int64_t n_parts = int64_t(p.n_tokens) * p.n_heads * n_splits;
  for (int e = threadIdx.x; e < nh * HD; e += blockDim.x) {
    const int j = e / HD, d = e - j * HD, h = g * group + j0 + j;
    float mx = wm[0][j];
#pragma unroll
    for (int w = 1; w < kDecodeWarps; w++) mx = fmaxf(mx, wm[w][j]);
    float o = 0.0f, sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; w++) {
      const float f = expf(wm[w][j] - mx);
      o += f * wo[w][j][d];
      sum += f * wl[w][j];
    }
    if (n_used == 1) {
      p.out[int64_t(t) * p.n_heads * HD + h * HD + d] = f2h(o / sum);
    } else {
      const int64_t part = (int64_t(t) * p.n_heads + h) * n_splits + s;
      scratch[part * HD + d] = o;
      if (d == 0) scratch[n_parts * HD + part * 2] = mx, scratch[n_parts * HD + part * 2 + 1] = sum;
    }
  }
  if (n_used > 1)
    merge_if_last(p, n_splits, n_used, scratch, counters, t, g, n_used * n_chunks);
}

template <int kAcc>
__global__ void __launch_bounds__(kThreads)
    attention_decode_kernel(AttentionCudaParams p, int n_splits, float* scratch, int* counters) {
  const int s = blockIdx.x, g = blockIdx.y, t = blockIdx.z;
  // Positions are step inputs, not outputs of earlier kernels: the chunking and the rotation
  // table come before the wait (kernels/pdl.cuh).
  const int len = p.pos[t] + 1, chunk = decode_chunk(len, n_splits, kAttentionDecodeSplitKeys);
  const int n_used = (len + chunk - 1) / chunk;  // chunks with keys
  if (s >= n_used) return;
  const int begin = s * chunk, end = min(len, begin + chunk);
  const int hd = p.head_dim, pitch = hd + 1, group = p.n_heads / p.n_kv_heads;
  const bool append = p.rope_theta > 0.0f;
  __shared__ float rope_cs[kMaxHeadDim / 2], rope_sn[kMaxHeadDim / 2];
  if (append) {
    for (int i = threadIdx.x; i < hd / 2; i += blockDim.x)
      rope_cos_sin(len - 1, i, hd, p.rope_theta, rope_cs[i], rope_sn[i]);
    __syncthreads();
  }
  pdl_wait();  // nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  extern __shared__ float smem[];
  const int kv_dim = p.n_kv_heads * hd, gsize = group * hd;
  float* qs = smem;                        // [group][hd]
  float* ks = qs + gsize;                  // [32][pitch]
  float* vs = ks + kKeyTile * pitch;       // [32][pitch]
  float* ps = vs + kKeyTile * pitch;       // [group][32]
  float* ms = ps + group * kKeyTile;       // [group] running max
  float* ls = ms + group;                  // [group] running sum
  float* cs = ls + group;                  // [group] correction of this tile
  float* pp = cs + group;                  // [kThreads] partial dot products
  // Scores: group * 32 items; with fewer items than threads, `parts` threads share one.
  const int n_items = group * kKeyTile;
  const int parts = n_items < kThreads && kThreads % n_items == 0 ? kThreads / n_items : 1;
  const int part_dims = (hd + parts - 1) / parts;

  const float* row = p.q + int64_t(t) * p.q_stride;
  const float* q = row + g * gsize;  // heads g*group.. contiguous
  const int64_t seq_off = int64_t(p.seq[t]) * p.seq_stride + g * hd;
  uint16_t* kbase = p.k_cache + seq_off;
  uint16_t* vbase = p.v_cache + seq_off;
  if (append) {
    for (int e = 2 * threadIdx.x; e < gsize; e += 2 * blockDim.x) {
      const int i = (e % hd) / 2;
      const float2 r = rope_rotate_pair(q[e], q[e + 1], rope_cs[i], rope_sn[i]);
      qs[e] = r.x, qs[e + 1] = r.y;
    }
    if (end == len) {  // this block's chunk holds the new key: append it, then read the cache
      const float* k_new = row + (p.n_heads + g) * hd;
      const float* v_new = row + (p.n_heads + p.n_kv_heads + g) * hd;
      const int64_t at = int64_t(len - 1) * kv_dim;
      for (int i = threadIdx.x; i < hd / 2; i += blockDim.x) {
        const float2 r = rope_rotate_pair(k_new[2 * i], k_new[2 * i + 1], rope_cs[i], rope_sn[i]);
        kbase[at + 2 * i] = f2h(r.x), kbase[at + 2 * i + 1] = f2h(r.y);
        vbase[at + 2 * i] = f2h(v_new[2 * i]), vbase[at + 2 * i + 1] = f2h(v_new[2 * i + 1]);
      }
      __syncthreads();  // the stores are visible to the block's cache reads below
    }
  } else {
    for (int e = threadIdx.x; e < gsize; e += blockDim.x) qs[e] = q[e];
  }
  for (int j = threadIdx.x; j < group; j += blockDim.x) ms[j] = -INFINITY, ls[j] = 0.0f;
  const float scale = 1.0f / sqrtf(float(hd));

  float acc[kAcc];
  int ej[kAcc], ed[kAcc];
#pragma unroll
  for (int r = 0; r < kAcc; r++) {
    const int e = threadIdx.x + r * kThreads;
    acc[r] = 0.0f;
    ej[r] = e / hd;
    ed[r] = e - ej[r] * hd;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  const bool prefetch = kv_vec_ok(kbase, vbase, kv_dim, hd);
  KvRegs<> regs;
  if (prefetch && begin < end) kv_fetch(regs, kbase, vbase, kv_dim, begin, end, hd);
  for (int k0 = begin; k0 < end; k0 += kKeyTile) {
    __syncthreads();  // q, m, l stored (first tile); previous tile consumed
    if (prefetch) {
      kv_store(regs, ks, vs, pitch, hd);
      if (k0 + kKeyTile < end) kv_fetch(regs, kbase, vbase, kv_dim, k0 + kKeyTile, end, hd);
    } else {
      load_kv_tile(ks, pitch, kbase, kv_dim, k0, end, hd);
      load_kv_tile(vs, pitch, vbase, kv_dim, k0, end, hd);
    }
    __syncthreads();
    if (parts == 1) {
      for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        const int j = it / kKeyTile, i = it - j * kKeyTile;
        float sc = -INFINITY;
        if (k0 + i < end) {
          const float* qj = qs + j * hd;
          const float* ki = ks + i * pitch;
          float dot = 0.0f;
          for (int d = 0; d < hd; d++) dot += qj[d] * ki[d];
          sc = dot * scale;
        }
        ps[it] = sc;
      }
    } else {  // `parts` threads per score, each over a slice of the head dim
      const int it = threadIdx.x % n_items, part = threadIdx.x / n_items;
      const int j = it / kKeyTile, i = it - j * kKeyTile;
      const int d0 = part * part_dims, d1 = min(hd, d0 + part_dims);
      const float* qj = qs + j * hd;
      const float* ki = ks + i * pitch;
      float dot = 0.0f;
      for (int d = d0; d < d1; d++) dot += qj[d] * ki[d];
      pp[part * n_items + it] = dot;
      __syncthreads();
      if (threadIdx.x < n_items) {
        float sum = pp[threadIdx.x];
        for (int q = 1; q < parts; q++) sum += pp[q * n_items + threadIdx.x];
        ps[threadIdx.x] = k0 + i < end ? sum * scale : -INFINITY;
      }
    }
    __syncthreads();
    for (int j = warp; j < group; j += kThreads / 32) {
      const float sc = ps[j * kKeyTile + lane];
      const float m_old = ms[j];
      const float m_new = fmaxf(m_old, warp_max(sc));  // finite: key k0 is always valid
      const float e = expf(sc - m_new);
      const float sum = warp_sum(e);
      ps[j * kKeyTile + lane] = e;
      __syncwarp();  // every lane has read ms[j] before lane 0 replaces it
      if (lane == 0) {
        const float corr = expf(m_old - m_new);
        cs[j] = corr;
        ls[j] = ls[j] * corr + sum;
        ms[j] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kAcc; r++) {
      if (ej[r] >= group) continue;
      const float* pj = ps + ej[r] * kKeyTile;
      float a = acc[r] * cs[ej[r]];
#pragma unroll 8
      for (int i = 0; i < kKeyTile; i++) a += pj[i] * vs[i * pitch + ed[r]];
      acc[r] = a;
    }
  }
  __syncthreads();  // m, l final (also for an empty split)

  if (n_used == 1) {
#pragma unroll
    for (int r = 0; r < kAcc; r++) {
      if (ej[r] >= group) continue;
      const int h = g * group + ej[r];
      p.out[int64_t(t) * p.n_heads * hd + h * hd + ed[r]] = f2h(acc[r] / ls[ej[r]]);
    }
    return;
  }
  // Partials: o [n_tokens][n_heads][n_splits][hd] (unnormalised), then ml [..][2] = (m, l).
  const int64_t n_parts = int64_t(p.n_tokens) * p.n_heads * n_splits;
#pragma unroll
  for (int r = 0; r < kAcc; r++) {
    if (ej[r] >= group) continue;
    const int h = g * group + ej[r];
    scratch[((int64_t(t) * p.n_heads + h) * n_splits + s) * hd + ed[r]] = acc[r];
  }
  for (int j = threadIdx.x; j < group; j += blockDim.x) {
    const int64_t part = (int64_t(t) * p.n_heads + g * group + j) * n_splits + s;
    scratch[n_parts * hd + part * 2] = ms[j];
    scratch[n_parts * hd + part * 2 + 1] = ls[j];
  }
  merge_if_last(p, n_splits, n_used, scratch, counters, t, g, n_used);
}

void check_params(const AttentionCudaParams& p, const char* who) {
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || p.n_kv_heads <= 0 ||
      p.n_heads % p.n_kv_heads != 0)
    throw std::invalid_argument(std::string(who) + ": need 0 < head_dim <= 256 and n_heads (" +
                                std::to_string(p.n_heads) + ") a multiple of n_kv_heads (" +
                                std::to_string(p.n_kv_heads) + ")");
  if (!p.q || !p.k_cache || !p.v_cache || !p.pos || !p.seq || !p.out)
    throw std::invalid_argument(std::string(who) + ": null pointer in params");
}

// Opts in to more than 48 KiB of dynamic shared memory when a launch needs it. The attribute
// call is slow (hundreds of microseconds), so each kernel remembers the largest size already
// granted (`granted`, one per kernel instantiation) and calls it only to raise it.
template <typename Kernel>
void set_smem(Kernel kernel, size_t smem, std::atomic<size_t>& granted) {
  if (smem <= 48 * 1024 || smem <= granted.load()) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(smem)));
  granted.store(smem);
}

template <int kC>
void launch_prefill(const AttentionCudaParams& p, const AttentionTile* tiles, int n_tiles,
                    cudaStream_t stream) {
  const int pitch = p.head_dim + 1;
  const size_t smem = size_t(kAttentionTileTokens + 2 * kKeyTile) * pitch * sizeof(float);
  static std::atomic<size_t> granted{0};
  set_smem(attention_prefill_kernel<kC>, smem, granted);
  launch_pdl(attention_prefill_kernel<kC>, dim3(n_tiles, p.n_heads), kThreads, smem, stream, p, tiles);
  CUDA_CHECK_LAUNCH();
}

template <int kC4>
void launch_prefill_vec(const AttentionCudaParams& p, const AttentionTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  const int pitch = p.head_dim + 4;
  const size_t smem = size_t(kAttentionTileTokens + 2 * kKeyTile) * pitch * sizeof(float);
  static std::atomic<size_t> granted{0};
  set_smem(attention_prefill_vec_kernel<kC4>, smem, granted);
  launch_pdl(attention_prefill_vec_kernel<kC4>, dim3(n_tiles, p.n_heads), kThreads, smem, stream,
             p, tiles);
  CUDA_CHECK_LAUNCH();
}

template <int kAcc>
void launch_decode(const AttentionCudaParams& p, int n_splits, float* scratch, int* counters,
                   cudaStream_t stream) {
  const int group = p.n_heads / p.n_kv_heads, pitch = p.head_dim + 1;
  const size_t smem =
      (size_t(group) * p.head_dim + 2 * kKeyTile * pitch + group * kKeyTile + 3 * group +
       kThreads) * sizeof(float);
  static std::atomic<size_t> granted{0};
  set_smem(attention_decode_kernel<kAcc>, smem, granted);
  launch_pdl(attention_decode_kernel<kAcc>, dim3(n_splits, p.n_kv_heads, p.n_tokens), kThreads,
             smem, stream, p, n_splits, scratch, counters);
  CUDA_CHECK_LAUNCH();
}

// Whether the tensor-core prefill and the warp-tile decode kernels take p's shapes: head_dim
// 64 or 128, and K/V rows of 16-byte aligned slices (aligned caches, seq_stride % 8 == 0).
bool kv_rows_fit_warp_kernels(const AttentionCudaParams& p) {
  return (p.head_dim == 64 || p.head_dim == 128) && p.seq_stride % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.k_cache) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.v_cache) % 16 == 0;
}

template <int HD>
void launch_prefill_mma(const AttentionCudaParams& p, const AttentionTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  static std::atomic<size_t> granted{0};
  set_smem(attention_prefill_mma_kernel<HD>, prefill_mma_smem<HD>(), granted);
  launch_pdl(attention_prefill_mma_kernel<HD>, dim3(n_tiles, p.n_heads), kMmaThreads,
             prefill_mma_smem<HD>(), stream, p, tiles);
  CUDA_CHECK_LAUNCH();
}

template <int LK, int GMAX>
void launch_decode_warps(const AttentionCudaParams& p, int n_splits, float* scratch,
                         int* counters, cudaStream_t stream) {
  const int n_chunks = (p.n_heads / p.n_kv_heads + GMAX - 1) / GMAX;
  if (int64_t(p.n_kv_heads) * n_chunks > 65535)
    throw std::invalid_argument("attention_decode_cuda: too many kv heads");
  launch_pdl(attention_decode_warps_kernel<LK, GMAX>,
             dim3(n_splits, p.n_kv_heads * n_chunks, p.n_tokens), kThreads, 0, stream, p,
             n_splits, scratch, counters);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

int attention_make_tiles(const int* seq, const int* pos, int n_tokens, AttentionTile* tiles) {
  int n_tiles = 0;
  for (int t = 0; t < n_tokens; t++) {
    AttentionTile* cur = n_tiles ? &tiles[n_tiles - 1] : nullptr;
    if (cur && cur->seq == seq[t] && cur->n < kAttentionTileTokens && cur->t0 + cur->n == t) {
      cur->n++;
      cur->max_pos = std::max(cur->max_pos, pos[t]);
    } else {
      AttentionTile& nt = tiles[n_tiles++];
      nt.t0 = t, nt.n = 1, nt.seq = seq[t], nt.max_pos = pos[t];
    }
  }
  return n_tiles;
}

void attention_prefill_cuda(const AttentionCudaParams& p, const AttentionTile* tiles,
                            int n_tiles, cudaStream_t stream) {
  if (n_tiles <= 0) return;
  check_params(p, "attention_prefill_cuda");
  if (p.n_heads > 65535) throw std::invalid_argument("attention_prefill_cuda: too many heads");
  if (kv_rows_fit_warp_kernels(p) && p.q_stride % 2 == 0 &&
      reinterpret_cast<uintptr_t>(p.q) % 8 == 0) {  // q read as float2
    if (p.head_dim == 64) launch_prefill_mma<64>(p, tiles, n_tiles, stream);
    else launch_prefill_mma<128>(p, tiles, n_tiles, stream);
    return;
  }
  if (p.head_dim % 16 == 0) {  // float4 chunks of output dims per thread: head_dim / 16
    const int c4 = p.head_dim / 16;
    if (c4 <= 2) launch_prefill_vec<2>(p, tiles, n_tiles, stream);
    else if (c4 <= 4) launch_prefill_vec<4>(p, tiles, n_tiles, stream);
    else if (c4 <= 8) launch_prefill_vec<8>(p, tiles, n_tiles, stream);
    else launch_prefill_vec<16>(p, tiles, n_tiles, stream);
    return;
  }
  const int c = (p.head_dim + 3) / 4;  // output dims per thread
  if (c <= 2) launch_prefill<2>(p, tiles, n_tiles, stream);
  else if (c <= 4) launch_prefill<4>(p, tiles, n_tiles, stream);
  else if (c <= 8) launch_prefill<8>(p, tiles, n_tiles, stream);
  else if (c <= 16) launch_prefill<16>(p, tiles, n_tiles, stream);
  else if (c <= 32) launch_prefill<32>(p, tiles, n_tiles, stream);
  else launch_prefill<64>(p, tiles, n_tiles, stream);
}

int attention_decode_splits(int n_tokens, int n_kv_heads, int ctx_size, int n_sms) {
  // About four blocks per SM, at least 64 keys per split at full context, at most 64 splits.
  const int blocks = std::max(1, n_tokens * n_kv_heads);
  int splits = (4 * std::max(1, n_sms) + blocks - 1) / blocks;
  splits = std::min(splits, std::max(1, ctx_size / 64));
  return std::max(1, std::min(splits, kMaxDecodeSplits));
}

size_t attention_decode_scratch_floats(int n_tokens, int n_heads, int head_dim, int n_splits) {
  if (n_splits <= 1) return 0;
  return size_t(n_tokens) * n_heads * n_splits * (head_dim + 2);
}

void attention_decode_cuda(const AttentionCudaParams& p, int n_splits, float* scratch,
                           int* counters, cudaStream_t stream) {
  if (p.n_tokens <= 0) return;
  check_params(p, "attention_decode_cuda");
  if (n_splits < 1 || n_splits > kMaxDecodeSplits || (n_splits > 1 && (!scratch || !counters)))
    throw std::invalid_argument("attention_decode_cuda: n_splits must be in [1, 64], with "
                                "scratch and counters when > 1");
  if (p.n_tokens > 65535 || p.n_kv_heads > 65535)
    throw std::invalid_argument("attention_decode_cuda: too many tokens or kv heads");
  if (p.rope_theta > 0.0f && p.head_dim % 2 != 0)
    throw std::invalid_argument("attention_decode_cuda: the fused RoPE needs an even head_dim");
  const int group = p.n_heads / p.n_kv_heads, gsize = group * p.head_dim;
  if (kv_rows_fit_warp_kernels(p)) {
    if (p.head_dim == 64) {
      if (group == 1) launch_decode_warps<8, 1>(p, n_splits, scratch, counters, stream);
      else if (group == 2) launch_decode_warps<8, 2>(p, n_splits, scratch, counters, stream);
      else launch_decode_warps<8, 4>(p, n_splits, scratch, counters, stream);
    } else {
      if (group == 1) launch_decode_warps<16, 1>(p, n_splits, scratch, counters, stream);
      else launch_decode_warps<16, 2>(p, n_splits, scratch, counters, stream);
    }
    return;
  }
  const int acc = (gsize + kThreads - 1) / kThreads;
  if (acc <= 1) launch_decode<1>(p, n_splits, scratch, counters, stream);
  else if (acc <= 2) launch_decode<2>(p, n_splits, scratch, counters, stream);
  else if (acc <= 4) launch_decode<4>(p, n_splits, scratch, counters, stream);
  else if (acc <= 8) launch_decode<8>(p, n_splits, scratch, counters, stream);
  else if (acc <= kDecodeMaxAcc)
    launch_decode<kDecodeMaxAcc>(p, n_splits, scratch, counters, stream);
  else
    throw std::invalid_argument("attention_decode_cuda: (n_heads / n_kv_heads) * head_dim = " +
                                std::to_string(gsize) + " exceeds 2048");
}

}  // namespace sqz
