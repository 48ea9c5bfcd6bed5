// CUDA error handling shared by kernels and the CUDA backend (host-side header; no CUDA
// headers needed by includers except cuda_runtime_api.h).
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace sqz {

struct cuda_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void cuda_fail(cudaError_t err, const char* stmt, const char* func,
                                   const char* file, int line) {
  throw cuda_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " in " + stmt +
                   " (" + func + " at " + file + ":" + std::to_string(line) + ")");
}

}  // namespace sqz

// Evaluates its argument once; on failure throws cuda_error naming the statement and place.
#define CUDA_CHECK(stmt)                                                       \
  do {                                                                         \
    cudaError_t err_ = (stmt);                                                 \
    if (err_ != cudaSuccess) sqz::cuda_fail(err_, #stmt, __func__, __FILE__, __LINE__); \
  } while (0)

// After a launch: configuration errors surface here, not at the next sync.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
