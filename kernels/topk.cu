// Device top-k per row of logits: see kernels/topk.h. Test: tests/test_cuda_kernels.cpp
// (TopKCuda.*), against a host sort with ties.
//
// One block of 512 threads per row; logits are compared as order-preserving uint32 keys
// (-0 folded into +0), ties by smaller id.
//   k = 1: block argmax (thread-strided scan, warp shuffles, then across warps).
//   k > 1: radix select of the k-th largest key T in four 8-bit passes (shared histogram,
//          most significant digit first), then every key > T is collected (there are
//          exactly k - r of them) and the r smallest ids with key == T are taken: ranked by
//          id when at most kEqMax keys equal T, else by an ordered block scan of the row
//          (many ties: e.g. masked -inf logits); the k candidates are finally ranked by
//          (key desc, id asc).
// The row (vocab fp32) is read 1 (k = 1) or 5 times, from L2 after the first pass. Every scan
// issues kScanUnroll loads per thread before using any (for_each_key): a plain strided loop
// waited one round trip per key, 18 us for one 32000-entry row (H100, k = 1).
#include <climits>
#include <stdexcept>
#include <string>

#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/pdl.cuh"
#include "kernels/topk.h"

namespace sqz {

namespace {

constexpr int kTopKThreads = 512;
constexpr int kTopKWarps = kTopKThreads / 32;
constexpr int kScanUnroll = 8;
constexpr int kEqMax = 1024;  // ties with the k-th key ranked in shared memory

__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// (key, id) a beats (key, id) b: larger key, or equal key and smaller id.
__device__ __forceinline__ bool beats(uint32_t ka, int ia, uint32_t kb, int ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// f(key, id) for every id of the row, kScanUnroll loads in flight per thread: 16-byte loads
// (ids 4i .. 4i + 3 for i = tid, tid + kTopKThreads, ...) when the row allows, else ids tid,
// tid + kTopKThreads, ...
template <typename F>
__device__ __forceinline__ void for_each_key(const float* row, int vocab, F&& f) {
  if (vocab % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int n4 = vocab / 4;
    for (int base = threadIdx.x; base < n4; base += kScanUnroll * kTopKThreads) {
      float4 v[kScanUnroll];
#pragma unroll
      for (int u = 0; u < kScanUnroll; u++) {
        const int i = base + u * kTopKThreads;
        v[u] = i < n4 ? row4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kScanUnroll; u++) {
        const int i = base + u * kTopKThreads;
        if (i < n4) {
          f(order_key(v[u].x), 4 * i), f(order_key(v[u].y), 4 * i + 1);
          f(order_key(v[u].z), 4 * i + 2), f(order_key(v[u].w), 4 * i + 3);
        }
      }
    }
    return;
  }
  for (int base = threadIdx.x; base < vocab; base += kScanUnroll * kTopKThreads) {
    float v[kScanUnroll];
#pragma unroll
    for (int u = 0; u < kScanUnroll; u++) {
      const int i = base + u * kTopKThreads;
      v[u] = i < vocab ? row[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kScanUnroll; u++) {
      const int i = base + u * kTopKThreads;
      if (i < vocab) f(order_key(v[u]), i);
    }
  }
}

__global__ void __launch_bounds__(kTopKThreads)
    topk_kernel(const float* logits, int vocab, int k, int* ids, float* vals) {
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  const float* row = logits + int64_t(blockIdx.x) * vocab;
  int* out_ids = ids + int64_t(blockIdx.x) * k;
  float* out_vals = vals + int64_t(blockIdx.x) * k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  if (k == 1) {
    __shared__ uint32_t wkey[kTopKWarps];
    __shared__ int wid[kTopKWarps];
    uint32_t best_key = 0;
    int best_id = INT_MAX;
    for_each_key(row, vocab, [&](uint32_t key, int i) {
      if (beats(key, i, best_key, best_id)) best_key = key, best_id = i;
    });
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const uint32_t ok = __shfl_xor_sync(kFullMask, best_key, o);
      const int oi = __shfl_xor_sync(kFullMask, best_id, o);
      if (beats(ok, oi, best_key, best_id)) best_key = ok, best_id = oi;
    }
    if (lane == 0) wkey[warp] = best_key, wid[warp] = best_id;
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < kTopKWarps; w++)
        if (beats(wkey[w], wid[w], best_key, best_id)) best_key = wkey[w], best_id = wid[w];
      out_ids[0] = best_id;
      out_vals[0] = row[best_id];
    }
    return;
  }

  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_digit;
  __shared__ int s_remaining;
  __shared__ int s_count;
  __shared__ int warp_counts[kTopKWarps];
  __shared__ uint32_t cand_key[kTopKMax];
  __shared__ int cand_id[kTopKMax];

  // 1. Radix select: after the pass for `shift`, `prefix` holds the top digits of T and
  //    `remaining` how many keys equal to T's digits so far are still to be taken.
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for_each_key(row, vocab, [&](uint32_t key, int) {
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    });
    __syncthreads();
    if (warp == 0) {
      // Lane L owns digits 255 - 8L - 7 .. 255 - 8L (descending); an inclusive scan over
      // lanes finds the digit where the count from the top reaches `remaining`.
      uint32_t c[8], lane_sum = 0;
#pragma unroll
      for (int b = 0; b < 8; b++) lane_sum += c[b] = hist[255 - 8 * lane - b];
      uint32_t incl = lane_sum;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t v = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += v;
      }
      uint32_t above = incl - lane_sum;  // keys with a larger digit than this lane's first
      if (above < uint32_t(remaining) && incl >= uint32_t(remaining)) {
#pragma unroll
        for (int b = 0; b < 8; b++) {
          if (above + c[b] >= uint32_t(remaining)) {
            s_digit = 255u - 8u * lane - b;
            s_remaining = remaining - int(above);
            break;
          }
          above += c[b];
        }
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 255u << shift;
    remaining = s_remaining;
  }
  const uint32_t thr = prefix;
  const int n_greater = k - remaining;

  // 2. Candidates: all keys > T (any order), then the `remaining` smallest ids with key == T.
  __shared__ int eq_id[kEqMax];
  __shared__ int s_eq;
  if (tid == 0) s_count = 0, s_eq = 0;
  __syncthreads();
  for_each_key(row, vocab, [&](uint32_t key, int i) {
    if (key > thr) {
      const int slot = atomicAdd(&s_count, 1);
      cand_key[slot] = key, cand_id[slot] = i;
    } else if (key == thr) {
      const int e = atomicAdd(&s_eq, 1);
      if (e < kEqMax) eq_id[e] = i;
    }
  });
  __syncthreads();
  const int n_eq = s_eq;  // >= remaining
  if (n_eq <= kEqMax) {
    for (int e = tid; e < n_eq; e += blockDim.x) {
      const int id = eq_id[e];
      int rank = 0;
      for (int j = 0; j < n_eq; j++) rank += eq_id[j] < id;
      if (rank < remaining) cand_key[n_greater + rank] = thr, cand_id[n_greater + rank] = id;
    }
  } else {  // ordered scan: chunks of blockDim.x ids, ranks by warp ballots
    int taken = 0;  // block-uniform
    for (int base = 0; base < vocab && taken < remaining; base += blockDim.x) {
      const int i = base + tid;
      const bool eq = i < vocab && order_key(row[i]) == thr;
      const unsigned ballot = __ballot_sync(kFullMask, eq);
      if (lane == 0) warp_counts[warp] = __popc(ballot);
      __syncthreads();
      int before = 0, total = 0;
      for (int w = 0; w < kTopKWarps; w++) {
        if (w < warp) before += warp_counts[w];
        total += warp_counts[w];
      }
      const int rank = taken + before + __popc(ballot & ((1u << lane) - 1u));
      if (eq && rank < remaining) cand_key[n_greater + rank] = thr, cand_id[n_greater + rank] = i;
      taken += total;
      __syncthreads();  // warp_counts reused by the next chunk
    }
  }
  __syncthreads();

  // 3. Rank the k candidates.
  for (int c = tid; c < k; c += blockDim.x) {
    const uint32_t kc = cand_key[c];
    const int ic = cand_id[c];
    int rank = 0;
    for (int j = 0; j < k; j++) rank += beats(cand_key[j], cand_id[j], kc, ic);
    out_ids[rank] = ic;
    out_vals[rank] = row[ic];
  }
}

}  // namespace

void topk_cuda(const float* logits, int n_rows, int vocab, int k, int* ids, float* vals,
               cudaStream_t stream) {
  if (n_rows <= 0) return;
  if (k < 1 || k > kTopKMax || k > vocab)
    throw std::invalid_argument("topk_cuda: k = " + std::to_string(k) + " must be in [1, " +
                                std::to_string(kTopKMax) + "] and <= vocab (" +
                                std::to_string(vocab) + ")");
  launch_pdl(topk_kernel, n_rows, kTopKThreads, 0, stream, logits, vocab, k, ids, vals);
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
