// kmeans_exact_rows_cuda: the exact weighted 1-D k-means of quantize/kmeans.cpp for every
// row of a module at once, bit-identical to the CPU version (quantize/kmeans_dp.h says how).
// Test: build/tests/test_quantize_cuda (label gpu).
//
// Per chunk of rows (at most 64M values on the GPU at a time):
//   1. kmeans_keys_kernel: one block per row writes sort keys (the order-preserving bits of
//      x; outliers and weight-0 values get 0xffffffff, which sorts last and is dropped) and
//      the column as payload;
//   2. cub segmented radix sort, one segment per row (stable: equal values stay in column
//      order, as the CPU's (bits, position) keys order them);
//   3. kmeans_dp_kernel: one block of 128 threads per row (grid-stride), with its scratch in
//      global memory (the DP tables of a 11008-column row are ~1.7 MB):
//        merge equal values (each run summed left to right by the thread at its head),
//        blocked prefix sums (a thread per 64-value chunk, the chunk bases by one thread),
//        k - 1 DP layers, each the CPU's divide and conquer visited level by level: the
//        nodes of a level are independent, a team of T threads (T = 128 / nodes, at most a
//        warp, at least 1) scans one node's candidate splits and reduces to the leftmost
//        minimum with shuffles; a node's two children go to slots 2s, 2s + 1 of the next
//        level (empty slots skip);
//        backtrack, then each cluster's weighted mean by blocked sums, one warp per cluster.
//
// Work: ~m log m candidates per layer (m distinct values), each one fp64 division; a
// LLaMA-7B model at 4 bits is ~1e12 candidates: seconds on an H100, where the CPU version
// takes ~45 core-minutes at 3 bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <cub/cub.cuh>
#include <stdexcept>
#include <string>

#include "engine/device_arena.h"
#include "kernels/cuda_common.h"
#include "quantize/cuda_scratch.cuh"
#include "quantize/kmeans_dp.h"
#include "quantize/quantize_cuda.h"

namespace sqz {

namespace {

constexpr int kThreads = 128;
constexpr uint32_t kDropKey = 0xffffffffu;  // above every finite float's key
constexpr unsigned kFull = 0xffffffffu;

__device__ inline uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// keys/vals [rows, cols]: see the top of the file. n_valid[r] = values left in row r,
// any_w[r] = 1 when some of them has weight > 0 (the CPU's effective_weights).
__global__ void __launch_bounds__(256) kmeans_keys_kernel(
    const float* __restrict__ x, const float* __restrict__ f, const int32_t* __restrict__ row_ptr,
    const int32_t* __restrict__ col_idx, int cols, uint32_t* __restrict__ keys,
    int32_t* __restrict__ vals, int* __restrict__ n_valid, uint8_t* __restrict__ any_w) {
  const int r = blockIdx.x;
  const size_t base = size_t(r) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    keys[base + c] = order_key(x[base + c]);
    vals[base + c] = c;
  }
  __syncthreads();
  for (int e = row_ptr[r] + threadIdx.x; e < row_ptr[r + 1]; e += blockDim.x)
    keys[base + col_idx[e]] = kDropKey;
  __syncthreads();
  int local_any = 0;
  for (int c = threadIdx.x; f && c < cols; c += blockDim.x)
    local_any |= keys[base + c] != kDropKey && f[base + c] > 0;
  const bool any = __syncthreads_or(local_any);
  int count = 0;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    if (keys[base + c] == kDropKey) continue;
    if (any && !(f[base + c] > 0))
      keys[base + c] = kDropKey;  // weight 0: moves no centroid, left out as on the CPU
    else
      count++;
  }
  __shared__ int total;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  atomicAdd(&total, count);
  __syncthreads();
  if (threadIdx.x == 0) n_valid[r] = total, any_w[r] = any;
}

// One block's scratch (global memory), sized for rows of `cols` values and k clusters.
struct DpScratch {
  float* xs;         // [cols] sorted values
  double* we;        // [cols] their effective weights
  int* dpos;         // [cols] distinct index at a run's head, -1 elsewhere
  double *dx, *dw;   // [cols] distinct values, summed weights
  double *s0, *s1, *s2;     // [cols + 1] prefix sums
  double *prev, *cur;       // [cols + 1] DP layers
  double* tot;              // [8 * n_chunks] chunk totals / bases
  int* arg;                 // [(k + 1) * (cols + 1)] best splits
  int4 *nodes_a, *nodes_b;  // [2 * (cols + 1)] D&C level slots (lo, hi, opt_lo, opt_hi)

  // On the host: a layout whose pointers are offsets (an arena with no base), moved onto
  // each block's piece of scratch by at().
  static DpScratch plan(DeviceArena& a, int cols, int k) {
    DpScratch s;
    const size_t n = size_t(cols) + 1, n_chunks = size_t(cols) / kKMeansChunk + 2;
    s.xs = a.take<float>(n);
    s.we = a.take<double>(n);
    s.dpos = a.take<int>(n);
    s.dx = a.take<double>(n), s.dw = a.take<double>(n);
    s.s0 = a.take<double>(n), s.s1 = a.take<double>(n), s.s2 = a.take<double>(n);
    s.prev = a.take<double>(n), s.cur = a.take<double>(n);
    s.tot = a.take<double>(8 * n_chunks);
    s.arg = a.take<int>(size_t(k + 1) * n);
    s.nodes_a = a.take<int4>(2 * n), s.nodes_b = a.take<int4>(2 * n);
    return s;
  }
  template <typename T>
  __device__ static T* shift(T* offset, char* base) {
    return reinterpret_cast<T*>(base + reinterpret_cast<uintptr_t>(offset));
  }
  __device__ DpScratch at(char* base) const {
    DpScratch s;
    s.xs = shift(xs, base), s.we = shift(we, base), s.dpos = shift(dpos, base);
    s.dx = shift(dx, base), s.dw = shift(dw, base);
    s.s0 = shift(s0, base), s.s1 = shift(s1, base), s.s2 = shift(s2, base);
    s.prev = shift(prev, base), s.cur = shift(cur, base), s.tot = shift(tot, base);
    s.arg = shift(arg, base), s.nodes_a = shift(nodes_a, base), s.nodes_b = shift(nodes_b, base);
    return s;
  }
};

struct DpParams {
  const float* x;          // [rows, cols]
  const float* f;          // [rows, cols] or null
  const int32_t* sorted;   // [rows, cols] columns in value order (valid ones first)
  const int* n_valid;      // [rows]
  const uint8_t* any_w;    // [rows]
  int rows, cols, k;
  double* centroids;       // [rows, k]
  DpScratch layout;        // offsets within one block's scratch
  char* scratch;           // gridDim.x blocks of scratch_bytes
  size_t scratch_bytes;
};

// Blocked sums of dw and dw * dx over [a, b) by one warp (kmeans_dp.h's order); tw/twx
// [n_chunks] are this warp's chunk totals. The result is valid in lane 0.
__device__ void warp_blocked_sums(const double* dx, const double* dw, int a, int b, double* tw,
                                  double* twx, double* sw, double* swx) {
  const int lane = threadIdx.x % 32;
  const int n_ch = (b - a + kKMeansChunk - 1) / kKMeansChunk;
  for (int ch = lane; ch < n_ch; ch += 32) {
    const int t0 = a + ch * kKMeansChunk;
    kmeans_chunk_sums(dx, dw, t0, min(b, t0 + kKMeansChunk), &tw[ch], &twx[ch]);
  }
  __syncwarp();
  if (lane == 0) {
    double s = 0, sx = 0;
    for (int ch = 0; ch < n_ch; ch++) s = s + tw[ch], sx = sx + twx[ch];
    *sw = s, *swx = sx;
  }
  __syncwarp();
}

// Leftmost minimum of (v, i) over a team of T lanes (aligned, power of two, <= 32); every
// lane of the warp takes part.
__device__ inline void team_argmin(double& v, int& i, int T) {
  for (int off = T / 2; off > 0; off >>= 1) {
    const double ov = __shfl_xor_sync(kFull, v, off);
    const int oi = __shfl_xor_sync(kFull, i, off);
    if (ov < v || (ov == v && oi < i)) v = ov, i = oi;
  }
}

__global__ void __launch_bounds__(kThreads) kmeans_dp_kernel(DpParams p) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int k = p.k;
  const DpScratch s = p.layout.at(p.scratch + size_t(blockIdx.x) * p.scratch_bytes);
  const size_t n_chunks_max = size_t(p.cols) / kKMeansChunk + 2;

  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_tmp;
  __shared__ int start[257];
  __shared__ double sh_sum[2];

  for (int r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int n = p.n_valid[r];
    const bool any = p.any_w[r];
    const int32_t* col = p.sorted + size_t(r) * p.cols;
    const float* xrow = p.x + size_t(r) * p.cols;
    const float* frow = p.f ? p.f + size_t(r) * p.cols : nullptr;
    double* out = p.centroids + size_t(r) * k;

    // Sorted values and their effective weights.
    for (int t = tid; t < n; t += kThreads) {
      const int c = col[t];
      s.xs[t] = xrow[c];
      s.we[t] = any ? double(frow[c]) : 1.0;
    }
    __syncthreads();
    // Runs of equal values (-0 == +0, as the CPU's double comparison): distinct index at
    // each head by a block scan.
    int m = 0;
    for (int t0 = 0; t0 < n; t0 += kThreads) {
      const int t = t0 + tid;
      const int head = t < n && (t == 0 || s.xs[t] != s.xs[t - 1]);
      int before, total;
      BlockScan(scan_tmp).ExclusiveSum(head, before, total);
      if (t < n) s.dpos[t] = head ? m + before : -1;
      m += total;
      __syncthreads();
    }
    for (int t = tid; t < n; t += kThreads) {
      const int d = s.dpos[t];
      if (d < 0) continue;
      double w = s.we[t];
      for (int u = t + 1; u < n && s.dpos[u] < 0; u++) w = w + s.we[u];
      s.dx[d] = double(s.xs[t]);
      s.dw[d] = w;
    }
    __syncthreads();

    if (m <= k) {  // each distinct value its own centroid, the rest copies of the largest
      for (int j = tid; j < k; j += kThreads) out[j] = j < m ? s.dx[j] : (m ? s.dx[m - 1] : 0.0);
      __syncthreads();
      continue;
    }

    // Weighted mean, then the centred, floored, blocked prefix sums.
    if (warp == 0) warp_blocked_sums(s.dx, s.dw, 0, m, s.tot, s.tot + n_chunks_max, &sh_sum[0], &sh_sum[1]);
    __syncthreads();
    const double sw = sh_sum[0], centre = sh_sum[1] / sw, w_floor = sw * 1e-15;
    const int n_chunks = (m + kKMeansChunk - 1) / kKMeansChunk;
    for (int ch = tid; ch < n_chunks; ch += kThreads) {
      const int t0 = ch * kKMeansChunk;
      kmeans_prefix_chunk(s.dx, s.dw, centre, w_floor, t0, min(m, t0 + kKMeansChunk), s.s0, s.s1, s.s2);
    }
    __syncthreads();
    double* base0 = s.tot;
    double* base1 = s.tot + n_chunks_max;
    double* base2 = s.tot + 2 * n_chunks_max;
    if (tid == 0) {
      s.s0[0] = s.s1[0] = s.s2[0] = 0;
      double b0 = 0, b1 = 0, b2 = 0;
      for (int ch = 0; ch < n_chunks; ch++) {
        const int t1 = min(m, (ch + 1) * kKMeansChunk);
        base0[ch] = b0, base1[ch] = b1, base2[ch] = b2;
        b0 = b0 + s.s0[t1], b1 = b1 + s.s1[t1], b2 = b2 + s.s2[t1];
      }
    }
    __syncthreads();
    for (int t = 1 + tid; t <= m; t += kThreads) {
      const int ch = (t - 1) / kKMeansChunk;
      s.s0[t] = base0[ch] + s.s0[t], s.s1[t] = base1[ch] + s.s1[t], s.s2[t] = base2[ch] + s.s2[t];
    }
    // One cluster: D[1][j] = cost(0, j).
    double* prev = s.prev;
    double* cur = s.cur;
    __syncthreads();
    const double no_prefix = 0;
    for (int j = 1 + tid; j <= m; j += kThreads)
      prev[j] = kmeans_dp_candidate(&no_prefix, s.s0, s.s1, s.s2, 0, j);
    __syncthreads();

    const size_t stride = size_t(m) + 1;
    for (int c = 2; c <= k; c++) {
      int* arg_c = s.arg + size_t(c) * stride;
      if (c == k) {  // last layer: only j = m, over every split
        if (warp == 0) {
          double bv = INFINITY;
          int bi = INT_MAX;
          for (int i = c - 1 + lane; i <= m - 1; i += 32) {
            const double v = kmeans_dp_candidate(prev, s.s0, s.s1, s.s2, i, m);
            if (v < bv) bv = v, bi = i;
          }
          team_argmin(bv, bi, 32);
          if (lane == 0) arg_c[m] = bi;
        }
        break;
      }
      const int* arg_prev = c > 2 ? arg_c - stride : nullptr;
      const int prev_hi = m - (k - c + 1), min_split = c - 1;
      int4* in = s.nodes_a;
      int4* nxt = s.nodes_b;
      if (tid == 0) in[0] = make_int4(c, m - (k - c), c - 1, m - 1);
      int count = 1;
      __syncthreads();
      for (;;) {
        const int T = count >= kThreads ? 1 : min(32, 1 << (31 - __clz(kThreads / count)));
        const int teams = kThreads / T;
        int more = 0;
        for (int base = 0; base < count; base += teams) {
          const int node = base + tid / T, tl = tid % T;
          int4 nd = node < count ? in[node] : make_int4(1, 0, 0, 0);
          const bool live = nd.x <= nd.y;
          int mid = 0, i_begin = 0, i_end = -1;
          if (live) {
            mid = nd.x + (nd.y - nd.x) / 2;
            i_begin = max(nd.z, min_split);
            if (arg_prev && mid <= prev_hi) i_begin = max(i_begin, arg_prev[mid]);
            i_end = min(nd.w, mid - 1);
            i_begin = min(i_begin, i_end);
          }
          double bv = INFINITY;
          int bi = INT_MAX;
          for (int i = i_begin + tl; i <= i_end; i += T) {
            const double v = kmeans_dp_candidate(prev, s.s0, s.s1, s.s2, i, mid);
            if (v < bv) bv = v, bi = i;
          }
          team_argmin(bv, bi, T);
          if (node < count && tl == 0) {
            if (live) {
              cur[mid] = bv;
              arg_c[mid] = bi;
              nxt[2 * node] = make_int4(nd.x, mid - 1, nd.z, bi);
              nxt[2 * node + 1] = make_int4(mid + 1, nd.y, bi, nd.w);
              more |= nd.x <= mid - 1 || mid + 1 <= nd.y;
            } else {
              nxt[2 * node] = nxt[2 * node + 1] = make_int4(1, 0, 0, 0);
            }
          }
        }
        if (!__syncthreads_or(more)) break;
        count *= 2;
        int4* t = in;
        in = nxt, nxt = t;
      }
      double* t = prev;
      prev = cur, cur = t;
      __syncthreads();
    }
    __syncthreads();

    // Cluster boundaries, then each cluster's weighted mean (one warp per cluster).
    if (tid == 0) {
      start[k] = m;
      for (int c = k; c >= 2; c--) start[c - 1] = s.arg[size_t(c) * stride + start[c]];
      start[0] = 0;
    }
    __syncthreads();
    double* tw = s.tot + size_t(2 * warp) * n_chunks_max;
    double* twx = tw + n_chunks_max;
    for (int c = warp; c < k; c += kThreads / 32) {
      double cw, cwx;
      warp_blocked_sums(s.dx, s.dw, start[c], start[c + 1], tw, twx, &cw, &cwx);
      if (lane == 0) out[c] = cwx / cw;
    }
    __syncthreads();
  }
}

template <typename T>
void upload(T* dst, const T* src, size_t n, cudaStream_t st) {
  if (n) CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, st));
}

}  // namespace

void kmeans_exact_rows_cuda(const float* x, const float* f, const int32_t* row_ptr,
                            const int32_t* col_idx, int rows, int cols, int k, double* centroids) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument("kmeans_exact_rows_cuda: negative shape [" + std::to_string(rows) +
                                ", " + std::to_string(cols) + "]");
  if (k < 1 || k > 256)
    throw std::invalid_argument("kmeans_exact_rows_cuda: k = " + std::to_string(k) +
                                " outside 1..256");
  if (rows == 0) return;

  int device, n_sms;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, device));
  const int chunk_rows = int(std::max<int64_t>(1, std::min<int64_t>(rows, (int64_t(64) << 20) / std::max(cols, 1))));
  const int n_blocks = std::min(chunk_rows, n_sms * 8);
  const size_t chunk_elems = size_t(chunk_rows) * cols;
  const int64_t max_nnz = [&] {
    int64_t mx = 0;
    for (int r0 = 0; r0 < rows; r0 += chunk_rows)
      mx = std::max<int64_t>(mx, row_ptr[std::min(rows, r0 + chunk_rows)] - row_ptr[r0]);
    return mx;
  }();

  // Sort temporary storage for the largest chunk.
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
      nullptr, sort_bytes, (const uint32_t*)nullptr, (uint32_t*)nullptr, (const int32_t*)nullptr,
      (int32_t*)nullptr, int(chunk_elems), chunk_rows, (const int*)nullptr, (const int*)nullptr));

  // Memory plan: measure, allocate once, hand out.
  DeviceArena layout_arena;
  const DpScratch layout = DpScratch::plan(layout_arena, cols, k);
  const size_t scratch_bytes = layout_arena.used();
  auto plan = [&](DeviceArena& a, auto&& use) {
    float* d_x = a.take<float>(chunk_elems);
    float* d_f = f ? a.take<float>(chunk_elems) : nullptr;
    uint32_t* keys_in = a.take<uint32_t>(chunk_elems);
    uint32_t* keys_out = a.take<uint32_t>(chunk_elems);
    int32_t* vals_in = a.take<int32_t>(chunk_elems);
    int32_t* vals_out = a.take<int32_t>(chunk_elems);
    int* offsets = a.take<int>(size_t(chunk_rows) + 1);
    int32_t* d_row_ptr = a.take<int32_t>(size_t(chunk_rows) + 1);
    int32_t* d_col = a.take<int32_t>(size_t(std::max<int64_t>(max_nnz, 1)));
    int* n_valid = a.take<int>(chunk_rows);
    uint8_t* any_w = a.take<uint8_t>(chunk_rows);
    double* d_cent = a.take<double>(size_t(chunk_rows) * k);
    void* sort_tmp = a.take<char>(sort_bytes);
    char* scratch = a.take<char>(scratch_bytes * n_blocks);
    use(d_x, d_f, keys_in, keys_out, vals_in, vals_out, offsets, d_row_ptr, d_col, n_valid, any_w,
        d_cent, sort_tmp, scratch);
  };
  DeviceArena measure;
  plan(measure, [](auto...) {});
  CudaScratch scratch_mem;
  char* mem = scratch_mem.alloc(measure.used(), "k-means on the GPU for a [" + std::to_string(rows) +
                                                    ", " + std::to_string(cols) + "] module");
  const cudaStream_t st = scratch_mem.stream;
  DeviceArena arena(mem, measure.used(), "kmeans_exact_rows_cuda");
  plan(arena, [&](float* d_x, float* d_f, uint32_t* keys_in, uint32_t* keys_out, int32_t* vals_in,
                  int32_t* vals_out, int* offsets, int32_t* d_row_ptr, int32_t* d_col, int* n_valid,
                  uint8_t* any_w, double* d_cent, void* sort_tmp, char* scratch) {
    std::vector<int> h_off(size_t(chunk_rows) + 1);
    std::vector<int32_t> h_rp(size_t(chunk_rows) + 1);
    for (int r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int nr = std::min(chunk_rows, rows - r0);
      const size_t ne = size_t(nr) * cols;
      for (int i = 0; i <= nr; i++) h_off[i] = i * cols, h_rp[i] = row_ptr[r0 + i] - row_ptr[r0];
      upload(d_x, x + size_t(r0) * cols, ne, st);
      if (f) upload(d_f, f + size_t(r0) * cols, ne, st);
      upload(offsets, h_off.data(), size_t(nr) + 1, st);
      upload(d_row_ptr, h_rp.data(), size_t(nr) + 1, st);
      upload(d_col, col_idx + row_ptr[r0], size_t(h_rp[nr]), st);
      kmeans_keys_kernel<<<nr, 256, 0, st>>>(d_x, d_f, d_row_ptr, d_col, cols, keys_in, vals_in,
                                             n_valid, any_w);
      CUDA_CHECK_LAUNCH();
      size_t bytes = sort_bytes;
      CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(sort_tmp, bytes, keys_in, keys_out,
                                                          vals_in, vals_out, int(ne), nr,
                                                          offsets, offsets + 1, 0, 32, st));
      DpParams p{d_x,  d_f,    vals_out, n_valid, any_w,   nr,
                 cols, k,      d_cent,   layout,  scratch, scratch_bytes};
      kmeans_dp_kernel<<<std::min(nr, n_blocks), kThreads, 0, st>>>(p);
      CUDA_CHECK_LAUNCH();
      CUDA_CHECK(cudaMemcpyAsync(centroids + size_t(r0) * k, d_cent, size_t(nr) * k * sizeof(double),
                                 cudaMemcpyDeviceToHost, st));
      CUDA_CHECK(cudaStreamSynchronize(st));
    }
  });
}

}  // namespace sqz
