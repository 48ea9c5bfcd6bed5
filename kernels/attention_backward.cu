// Calibration's causal GQA attention over one sequence on the GPU, fp32: the forward saving
// the per-row log-sum-exp and the backward that recomputes the softmax rows from it (math in
// kernels/attention_backward.h). Test: tests/test_gradients_cuda.cpp (AttentionBackwardCuda.*),
// vs attention_causal_forward / attention_causal_backward.
//
// Straightforward kernels, correctness first: one warp per row, 8 warps (8 consecutive rows
// of one head) per block, and tiles of 32 rows of the other operand in shared memory, one row
// per lane (pitch head_dim rounded up to odd, so lane j reading row j, column c hits bank
// (j * pitch + c) % 32: all different). Each lane accumulates output columns lane, lane + 32,
// ... (kAcc = ceil(head_dim / 32) registers, head_dim <= 256).
//   forward  block (8 queries t, head h):   key tiles p0 = 0, 32, ... up to the last query;
//            lane j scores key p0 + j, online softmax over tiles (warp max / sum), then every
//            lane adds sum_j P_j v_j for its columns (P_j broadcast by shuffle).
//   D        warp per (t, h): D[t, h] = dout[t, h] . out[t, h]            -> workspace [n, H]
//   dq       block (8 queries, head h): P, dS per key as the forward, dq += sum_j dS_j k_j.
//   dk, dv   block (8 keys p, kv head g): query tiles t0 = first key, ... for every head of
//            the group; lane j handles query t0 + j >= p; dv += P q-side dout, dk += dS q.
// Napkin math (LLaMA-7B shape, 512 tokens, per layer): 32 heads x ~140k (query, key) pairs,
// each 2 x 128 FMAs with about 3 shared-memory loads per 2 FMAs in the forward: ~1 ms for
// the forward and backward together, a few percent of the layer's fp32 GEMMs (~12 ms).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/attention_backward.h"
#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"

namespace sqz {

namespace {

constexpr int kRows = 8;   // warps per block, one row each
constexpr int kTile = 32;  // rows per shared-memory tile, one per lane
constexpr int kThreads = kRows * 32;
constexpr int kMaxHeadDim = 256;

struct AttnShape {
  int n, H, KV, hd, group, q_dim, kv_dim, pitch;
  float scale;
};

AttnShape make_shape(const CausalAttentionArgs& a, const char* what) {
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    throw std::invalid_argument(std::string(what) + ": n_heads " + std::to_string(a.n_heads) +
                                " is not a positive multiple of n_kv_heads " +
                                std::to_string(a.n_kv_heads));
  if (a.head_dim <= 0 || a.head_dim > kMaxHeadDim)
    throw std::invalid_argument(std::string(what) + ": head_dim " + std::to_string(a.head_dim) +
                                " outside 1.." + std::to_string(kMaxHeadDim));
  AttnShape s;
  s.n = a.n_tokens, s.H = a.n_heads, s.KV = a.n_kv_heads, s.hd = a.head_dim;
  s.group = a.n_heads / a.n_kv_heads, s.q_dim = s.H * s.hd, s.kv_dim = s.KV * s.hd;
  s.pitch = s.hd | 1;
  s.scale = 1.0f / std::sqrt(float(s.hd));
  return s;
}

// a . b over n floats (shared memory), four partial sums.
__device__ __forceinline__ float dot_n(const float* a, const float* b, int n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i], s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2], s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// dst[r][c] (pitch) = src[(r0 + r) * stride + c] for r < kTile, c < hd; 0 past row n.
__device__ __forceinline__ void load_tile(float* dst, const float* __restrict__ src, int stride,
                                          int r0, int n, int hd, int pitch) {
  for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
    const int r = idx / hd, c = idx % hd;
    dst[r * pitch + c] = r0 + r < n ? src[int64_t(r0 + r) * stride + c] : 0.0f;
  }
}

// The row of one warp: dst[c] = src[c], c < hd.
__device__ __forceinline__ void load_row(float* dst, const float* __restrict__ src, int hd) {
  for (int c = threadIdx.x & 31; c < hd; c += 32) dst[c] = src[c];
}

// Grid (ceil(n / kRows), H). Shared: K, V tiles [kTile][pitch], Q rows [kRows][hd].
template <int kAcc>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(CausalAttentionArgs a, AttnShape s, float* __restrict__ out,
                             float* __restrict__ lse) {
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = ks + kTile * s.pitch;
  float* qs = vs + kTile * s.pitch;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.y, g = h / s.group;
  const int t0 = blockIdx.x * kRows, t = t0 + warp;
  const bool active = t < s.n;
  float* q_row = qs + warp * s.hd;
  if (active) load_row(q_row, a.q + int64_t(t) * s.q_dim + h * s.hd, s.hd);

  float m = -INFINITY, l = 0.0f, acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; i++) acc[i] = 0.0f;
  // Key tiles up to the block's last query. p0 (a multiple of 32) <= t0 (a multiple of 8)
  // <= t, so every tile holds a visible key for every active row: m stays finite.
  const int last = min(s.n, t0 + kRows) - 1;
  for (int p0 = 0; p0 <= last; p0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_row written)
    load_tile(ks, a.k + g * s.hd, s.kv_dim, p0, s.n, s.hd, s.pitch);
    load_tile(vs, a.v + g * s.hd, s.kv_dim, p0, s.n, s.hd, s.pitch);
    __syncthreads();
    if (!active) continue;
    const int p = p0 + lane;
    const float sc = p <= t ? dot_n(q_row, ks + lane * s.pitch, s.hd) * s.scale : -INFINITY;
    const float m_new = fmaxf(m, warp_max(sc));
    const float pr = p <= t ? expf(sc - m_new) : 0.0f;
    const float corr = expf(m - m_new);  // 0 on the first tile
    l = l * corr + warp_sum(pr);
#pragma unroll
    for (int i = 0; i < kAcc; i++) acc[i] *= corr;
    const int n_keys = min(kTile, t - p0 + 1);
    for (int j = 0; j < n_keys; j++) {
      const float pj = __shfl_sync(kFullMask, pr, j);
      const float* vj = vs + j * s.pitch;
#pragma unroll
      for (int i = 0; i < kAcc; i++) {
        const int c = lane + 32 * i;
        if (c < s.hd) acc[i] += pj * vj[c];
      }
    }
    m = m_new;
  }
  if (!active) return;
  const float inv = 1.0f / l;
  float* o = out + int64_t(t) * s.q_dim + h * s.hd;
#pragma unroll
  for (int i = 0; i < kAcc; i++) {
    const int c = lane + 32 * i;
    if (c < s.hd) o[c] = acc[i] * inv;
  }
  if (lane == 0) lse[int64_t(t) * s.H + h] = m + logf(l);
}

// D[t, h] = dout[t, h] . out[t, h]: one warp per (t, h), kRows per block.
__global__ void __launch_bounds__(kThreads)
    attention_rowdot_kernel(const float* __restrict__ dout, const float* __restrict__ out,
                            int64_t n_rows, int hd, float* __restrict__ dd) {
  const int64_t row = blockIdx.x * int64_t(kRows) + (threadIdx.x >> 5);
  if (row >= n_rows) return;
  const float *a = dout + row * hd, *b = out + row * hd;
  float sum = 0.0f;
  for (int c = threadIdx.x & 31; c < hd; c += 32) sum += a[c] * b[c];
  sum = warp_sum(sum);
  if ((threadIdx.x & 31) == 0) dd[row] = sum;
}

// Grid (ceil(n / kRows), H). Shared: K, V tiles [kTile][pitch], Q and dout rows [kRows][hd].
template <int kAcc>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(CausalAttentionArgs a, AttnShape s, const float* __restrict__ lse,
                        const float* __restrict__ dout, const float* __restrict__ dd,
                        float* __restrict__ dq) {
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = ks + kTile * s.pitch;
  float* qs = vs + kTile * s.pitch;
  float* gs = qs + kRows * s.hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.y, g = h / s.group;
  const int t0 = blockIdx.x * kRows, t = t0 + warp;
  const bool active = t < s.n;
  float* q_row = qs + warp * s.hd;
  float* g_row = gs + warp * s.hd;
  float lse_t = 0.0f, d_t = 0.0f;
  if (active) {
    load_row(q_row, a.q + int64_t(t) * s.q_dim + h * s.hd, s.hd);
    load_row(g_row, dout + int64_t(t) * s.q_dim + h * s.hd, s.hd);
    lse_t = lse[int64_t(t) * s.H + h], d_t = dd[int64_t(t) * s.H + h];
  }
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; i++) acc[i] = 0.0f;
  const int last = min(s.n, t0 + kRows) - 1;
  for (int p0 = 0; p0 <= last; p0 += kTile) {
    __syncthreads();
    load_tile(ks, a.k + g * s.hd, s.kv_dim, p0, s.n, s.hd, s.pitch);
    load_tile(vs, a.v + g * s.hd, s.kv_dim, p0, s.n, s.hd, s.pitch);
    __syncthreads();
    if (!active) continue;
    const int p = p0 + lane;
    float ds = 0.0f;
    if (p <= t) {
      const float P = expf(dot_n(q_row, ks + lane * s.pitch, s.hd) * s.scale - lse_t);
      ds = P * (dot_n(g_row, vs + lane * s.pitch, s.hd) - d_t) * s.scale;
    }
    const int n_keys = min(kTile, t - p0 + 1);
    for (int j = 0; j < n_keys; j++) {
      const float dsj = __shfl_sync(kFullMask, ds, j);
      const float* kj = ks + j * s.pitch;
#pragma unroll
      for (int i = 0; i < kAcc; i++) {
        const int c = lane + 32 * i;
        if (c < s.hd) acc[i] += dsj * kj[c];
      }
    }
  }
  if (!active) return;
  float* o = dq + int64_t(t) * s.q_dim + h * s.hd;
#pragma unroll
  for (int i = 0; i < kAcc; i++) {
    const int c = lane + 32 * i;
    if (c < s.hd) o[c] = acc[i];
  }
}

// Grid (ceil(n / kRows), KV). Shared: Q, dout tiles [kTile][pitch], their lse and D [kTile],
// K and V rows [kRows][hd].
template <int kAcc>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(CausalAttentionArgs a, AttnShape s, const float* __restrict__ lse,
                          const float* __restrict__ dout, const float* __restrict__ dd,
                          float* __restrict__ dk, float* __restrict__ dv) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* gs = qs + kTile * s.pitch;
  float* ls = gs + kTile * s.pitch;
  float* ds_rows = ls + kTile;
  float* kr = ds_rows + kTile;
  float* vr = kr + kRows * s.hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = blockIdx.y;
  const int p_first = blockIdx.x * kRows, p = p_first + warp;
  const bool active = p < s.n;
  float* k_row = kr + warp * s.hd;
  float* v_row = vr + warp * s.hd;
  if (active) {
    load_row(k_row, a.k + int64_t(p) * s.kv_dim + g * s.hd, s.hd);
    load_row(v_row, a.v + int64_t(p) * s.kv_dim + g * s.hd, s.hd);
  }
  float acc_k[kAcc], acc_v[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; i++) acc_k[i] = acc_v[i] = 0.0f;
  for (int h = g * s.group; h < (g + 1) * s.group; h++) {
    for (int t0 = p_first; t0 < s.n; t0 += kTile) {
      __syncthreads();
      load_tile(qs, a.q + h * s.hd, s.q_dim, t0, s.n, s.hd, s.pitch);
      load_tile(gs, dout + h * s.hd, s.q_dim, t0, s.n, s.hd, s.pitch);
      if (threadIdx.x < kTile) {
        const int t = t0 + threadIdx.x;
        ls[threadIdx.x] = t < s.n ? lse[int64_t(t) * s.H + h] : 0.0f;
        ds_rows[threadIdx.x] = t < s.n ? dd[int64_t(t) * s.H + h] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int t = t0 + lane;
      float P = 0.0f, dS = 0.0f;
      if (t >= p && t < s.n) {
        P = expf(dot_n(k_row, qs + lane * s.pitch, s.hd) * s.scale - ls[lane]);
        dS = P * (dot_n(v_row, gs + lane * s.pitch, s.hd) - ds_rows[lane]) * s.scale;
      }
      const int j_begin = max(0, p - t0), j_end = min(kTile, s.n - t0);
      for (int j = j_begin; j < j_end; j++) {
        const float pj = __shfl_sync(kFullMask, P, j), dsj = __shfl_sync(kFullMask, dS, j);
        const float *qj = qs + j * s.pitch, *gj = gs + j * s.pitch;
#pragma unroll
        for (int i = 0; i < kAcc; i++) {
          const int c = lane + 32 * i;
          if (c < s.hd) acc_v[i] += pj * gj[c], acc_k[i] += dsj * qj[c];
        }
      }
    }
  }
  if (!active) return;
  float* ok = dk + int64_t(p) * s.kv_dim + g * s.hd;
  float* ov = dv + int64_t(p) * s.kv_dim + g * s.hd;
#pragma unroll
  for (int i = 0; i < kAcc; i++) {
    const int c = lane + 32 * i;
    if (c < s.hd) ok[c] = acc_k[i], ov[c] = acc_v[i];
  }
}

// Launches kernel<kAcc> with kAcc = ceil(head_dim / 32) rounded up to 1, 2, 4 or 8, opting in
// to more than 48 KiB of dynamic shared memory where needed.
template <template <int> class K, typename... Args>
void launch(const AttnShape& s, dim3 grid, size_t smem_bytes, cudaStream_t stream, Args... args) {
  auto go = [&](auto kernel) {
    if (smem_bytes > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(smem_bytes)));
    kernel<<<grid, kThreads, smem_bytes, stream>>>(args...);
    CUDA_CHECK_LAUNCH();
  };
  if (s.hd <= 32)
    go(K<1>::fn);
  else if (s.hd <= 64)
    go(K<2>::fn);
  else if (s.hd <= 128)
    go(K<4>::fn);
  else
    go(K<8>::fn);
}

template <int kAcc>
struct ForwardK {
  static constexpr auto fn = attention_forward_kernel<kAcc>;
};
template <int kAcc>
struct DqK {
  static constexpr auto fn = attention_dq_kernel<kAcc>;
};
template <int kAcc>
struct DkdvK {
  static constexpr auto fn = attention_dkdv_kernel<kAcc>;
};

int row_blocks(int n) { return (n + kRows - 1) / kRows; }

}  // namespace

void attention_causal_forward_cuda(const CausalAttentionArgs& a, float* out, float* lse,
                                   cudaStream_t stream) {
  if (a.n_tokens <= 0) return;
  const AttnShape s = make_shape(a, "attention_causal_forward_cuda");
  const size_t smem = (2 * kTile * s.pitch + kRows * s.hd) * sizeof(float);
  launch<ForwardK>(s, dim3(row_blocks(s.n), s.H), smem, stream, a, s, out, lse);
}

void attention_causal_backward_cuda(const CausalAttentionArgs& a, const float* out,
                                    const float* lse, const float* dout, float* dq, float* dk,
                                    float* dv, float* workspace, cudaStream_t stream) {
  if (a.n_tokens <= 0) return;
  const AttnShape s = make_shape(a, "attention_causal_backward_cuda");
  const int64_t n_rows = int64_t(s.n) * s.H;
  attention_rowdot_kernel<<<int((n_rows + kRows - 1) / kRows), kThreads, 0, stream>>>(
      dout, out, n_rows, s.hd, workspace);
  CUDA_CHECK_LAUNCH();
  const float* dd = workspace;
  const size_t smem_dq = (2 * kTile * s.pitch + 2 * kRows * s.hd) * sizeof(float);
  launch<DqK>(s, dim3(row_blocks(s.n), s.H), smem_dq, stream, a, s, lse, dout, dd, dq);
  const size_t smem_kv = (2 * kTile * s.pitch + 2 * kTile + 2 * kRows * s.hd) * sizeof(float);
  launch<DkdvK>(s, dim3(row_blocks(s.n), s.KV), smem_kv, stream, a, s, lse, dout, dd, dk, dv);
}

}  // namespace sqz
