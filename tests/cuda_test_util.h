// Helpers of the gpu-labelled suites: the skip without a GPU and a device array.
#pragma once
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "engine/engine.h"
#include "kernels/cuda_common.h"

// Skips the test (cleanly, also under CI=true) when no usable CUDA GPU is present.
#define SQZ_REQUIRE_GPU() \
  if (!sqz::cuda_available()) GTEST_SKIP() << "no CUDA GPU"

namespace sqz {
namespace test {

// A device array; starts filled with 0xff bytes (NaN for fp32 and fp16, -1 for int), so an
// output must be written everywhere to pass; poison() refills it.
template <typename T>
struct DeviceBuffer {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t n_elems) : n(n_elems) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size()) { upload(v); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& v) {
    CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> v(n);
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void poison() { CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }
};

}  // namespace test
}  // namespace sqz
