// The order statistics of outlier selection (quantize/outliers.cpp) on the GPU: a module's
// keys sorted by cub's radix sort instead of nth_element on one CPU core (~0.4 s for a
// 45M-entry LLaMA-7B module there, ~5 ms here). Same results as the CPU version.
// Test: build/tests/test_quantize_cuda (label gpu).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <cub/cub.cuh>
#include <stdexcept>
#include <string>

#include "engine/device_arena.h"
#include "kernels/cuda_common.h"
#include "quantize/cuda_scratch.cuh"
#include "quantize/quantize_cuda.h"

namespace sqz {

namespace {

// Order-preserving bits of a float (-0 and +0 equal, as the CPU compares them).
__device__ inline uint32_t order_key(float v) {
  uint32_t u = __float_as_uint(v);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__host__ __device__ inline float key_value(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

__global__ void keys_kernel(const float* __restrict__ v, int n, uint32_t* __restrict__ keys) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    keys[i] = order_key(v[i]);
}

// flags_above[i] = key > cut, flags_at[i] = key == cut; pos[i] = i.
__global__ void flag_kernel(const uint32_t* __restrict__ keys, int n, uint32_t cut,
                            uint8_t* __restrict__ above, uint8_t* __restrict__ at,
                            int* __restrict__ pos) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    above[i] = keys[i] > cut;
    at[i] = keys[i] == cut;
    pos[i] = i;
  }
}

void check_n(int64_t n, const char* fn) {
  if (n < 0 || n > INT_MAX)
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(n) +
                                " values (expected 0.." + std::to_string(INT_MAX) + ")");
}

int blocks_for(int n) { return std::max(1, std::min((n + 255) / 256, 132 * 16)); }

}  // namespace

std::vector<int64_t> top_count_positions_cuda(const float* key, int64_t n64, int64_t count) {
  check_n(n64, "top_count_positions_cuda");
  const int n = int(n64);
  std::vector<int64_t> out;
  if (count <= 0 || n == 0) return out;
  if (count >= n) {
    out.resize(n);
    for (int i = 0; i < n; i++) out[i] = i;
    return out;
  }
  size_t sort_bytes = 0, sel_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, (const uint32_t*)nullptr,
                                            (uint32_t*)nullptr, n));
  CUDA_CHECK(cub::DeviceSelect::Flagged(nullptr, sel_bytes, (const int*)nullptr,
                                        (const uint8_t*)nullptr, (int*)nullptr, (int*)nullptr, n));
  auto plan = [&](DeviceArena& a, auto&& use) {
    float* d_v = a.take<float>(n);
    uint32_t* keys = a.take<uint32_t>(n);
    uint32_t* sorted = a.take<uint32_t>(n);
    uint8_t* above = a.take<uint8_t>(n);
    uint8_t* at = a.take<uint8_t>(n);
    int* pos = a.take<int>(n);
    int* sel_above = a.take<int>(n);
    int* sel_at = a.take<int>(n);
    int* counts = a.take<int>(2);
    void* tmp = a.take<char>(std::max(sort_bytes, sel_bytes));
    use(d_v, keys, sorted, above, at, pos, sel_above, sel_at, counts, tmp);
  };
  DeviceArena measure;
  plan(measure, [](auto...) {});
  CudaScratch b;
  DeviceArena arena(b.alloc(measure.used(), "outlier selection on the GPU for " + std::to_string(n) + " values"),
                    measure.used(), "top_count_positions_cuda");
  plan(arena, [&](float* d_v, uint32_t* keys, uint32_t* sorted, uint8_t* above, uint8_t* at,
                  int* pos, int* sel_above, int* sel_at, int* counts, void* tmp) {
    const cudaStream_t st = b.stream;
    CUDA_CHECK(cudaMemcpyAsync(d_v, key, size_t(n) * 4, cudaMemcpyHostToDevice, st));
    keys_kernel<<<blocks_for(n), 256, 0, st>>>(d_v, n, keys);
    CUDA_CHECK_LAUNCH();
    size_t bytes = sort_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortKeys(tmp, bytes, keys, sorted, n, 0, 32, st));
    uint32_t cut;  // the count-th largest key
    CUDA_CHECK(cudaMemcpyAsync(&cut, sorted + (n - count), 4, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    flag_kernel<<<blocks_for(n), 256, 0, st>>>(keys, n, cut, above, at, pos);
    CUDA_CHECK_LAUNCH();
    bytes = sel_bytes;
    CUDA_CHECK(cub::DeviceSelect::Flagged(tmp, bytes, pos, above, sel_above, counts, n, st));
    bytes = sel_bytes;
    CUDA_CHECK(cub::DeviceSelect::Flagged(tmp, bytes, pos, at, sel_at, counts + 1, n, st));
    int h_counts[2];
    CUDA_CHECK(cudaMemcpyAsync(h_counts, counts, 8, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    const int n_above = h_counts[0];
    const int n_at = int(std::min<int64_t>(count - n_above, h_counts[1]));  // first ones, by position
    std::vector<int> a(n_above), e(std::max(n_at, 0));
    if (n_above) CUDA_CHECK(cudaMemcpyAsync(a.data(), sel_above, size_t(n_above) * 4, cudaMemcpyDeviceToHost, st));
    if (n_at > 0) CUDA_CHECK(cudaMemcpyAsync(e.data(), sel_at, size_t(n_at) * 4, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    out.resize(a.size() + e.size());
    std::merge(a.begin(), a.end(), e.begin(), e.end(), out.begin());
  });
  return out;
}

std::vector<float> order_statistics_cuda(const float* v, int64_t n64,
                                         const std::vector<int64_t>& ranks) {
  check_n(n64, "order_statistics_cuda");
  const int n = int(n64);
  for (int64_t r : ranks)
    if (r < 0 || r >= n)
      throw std::invalid_argument("order_statistics_cuda: rank " + std::to_string(r) +
                                  " outside 0.." + std::to_string(n - 1));
  std::vector<float> out;
  if (ranks.empty()) return out;
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, (const uint32_t*)nullptr,
                                            (uint32_t*)nullptr, n));
  DeviceArena measure;
  measure.take<float>(n), measure.take<uint32_t>(n), measure.take<uint32_t>(n);
  measure.take<char>(sort_bytes);
  CudaScratch b;
  DeviceArena a(b.alloc(measure.used(), "outlier selection on the GPU for " + std::to_string(n) + " values"),
                measure.used(), "order_statistics_cuda");
  float* d_v = a.take<float>(n);
  uint32_t* keys = a.take<uint32_t>(n);
  uint32_t* sorted = a.take<uint32_t>(n);
  void* tmp = a.take<char>(sort_bytes);
  CUDA_CHECK(cudaMemcpyAsync(d_v, v, size_t(n) * 4, cudaMemcpyHostToDevice, b.stream));
  keys_kernel<<<blocks_for(n), 256, 0, b.stream>>>(d_v, n, keys);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(tmp, sort_bytes, keys, sorted, n, 0, 32, b.stream));
  std::vector<uint32_t> k(ranks.size());
  for (size_t i = 0; i < ranks.size(); i++)
    CUDA_CHECK(cudaMemcpyAsync(&k[i], sorted + ranks[i], 4, cudaMemcpyDeviceToHost, b.stream));
  CUDA_CHECK(cudaStreamSynchronize(b.stream));
  for (uint32_t x : k) out.push_back(key_value(x));
  return out;
}

}  // namespace sqz
