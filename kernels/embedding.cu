// Embedding lookup on the GPU: out[t, i] = float(table[tokens[t], i]) for an F32, F16 or BF16
// table, exact like the CPU conversion. Tested in tests/test_cuda_kernels.cpp (Embedding.*).
//
// Grid (ceil(dim / 256) capped at 64, n_tokens), 256 threads; each thread converts columns
// i, i + 256 * gridDim.x, ... of one token's row (coalesced reads and writes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_common.h"
#include "kernels/embedding.h"
#include "kernels/pdl.cuh"

namespace sqz {

namespace {

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T>
__global__ void embedding_kernel(const T* table, int dim, const int* tokens, float* out) {
  // The first kernel of a step (launched plainly, after the inputs' copy): the next one may
  // start its constant-data prologue now (kernels/pdl.cuh).
  pdl_launch_dependents();
  const int t = blockIdx.y;
  const T* row = table + int64_t(tokens[t]) * dim;
  float* o = out + int64_t(t) * dim;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x)
    o[i] = load_f32(row + i);
}

}  // namespace

void embedding_cuda(const void* table, MatType type, int dim, const int* tokens, int n_tokens,
                    float* out, cudaStream_t stream) {
  if (n_tokens <= 0 || dim <= 0) return;
  if (n_tokens > 65535) throw std::invalid_argument("embedding_cuda: more than 65535 tokens");
  const int threads = 256;
  dim3 grid(std::min((dim + threads - 1) / threads, 64), n_tokens);
  switch (type) {
    case MatType::F32:
      embedding_kernel<<<grid, threads, 0, stream>>>(static_cast<const float*>(table), dim,
                                                     tokens, out);
      break;
    case MatType::F16:
      embedding_kernel<<<grid, threads, 0, stream>>>(static_cast<const __half*>(table), dim,
                                                     tokens, out);
      break;
    case MatType::BF16:
      embedding_kernel<<<grid, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(table),
                                                     dim, tokens, out);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace sqz
