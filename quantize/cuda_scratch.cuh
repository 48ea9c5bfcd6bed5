// The device memory and stream of one call of a quantizer GPU step (quantize/*.cu): one
// allocation, planned before (engine/device_arena.h), freed with the stream on return or throw.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda_common.h"

namespace sqz {

struct CudaScratch {
  char* mem = nullptr;
  cudaStream_t stream = nullptr;
  CudaScratch() = default;
  CudaScratch(const CudaScratch&) = delete;
  CudaScratch& operator=(const CudaScratch&) = delete;
  ~CudaScratch() {
    if (stream) cudaStreamDestroy(stream);
    cudaFree(mem);
  }
  // `bytes` of device memory and a stream; when the GPU has too little free, one line:
  // "<what> needs N MiB of GPU memory; M MiB free".
  char* alloc(size_t bytes, const std::string& what) {
    if (cudaMalloc(&mem, bytes) != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw cuda_error(what + " needs " + std::to_string(bytes >> 20) + " MiB of GPU memory; " +
                       std::to_string(free_b >> 20) + " MiB free");
    }
    CUDA_CHECK(cudaStreamCreate(&stream));
    return mem;
  }
};

}  // namespace sqz
