// RMSNorm: out[t, i] = x[t, i] / sqrt(mean_i(x[t]^2) + eps) * w[i]   (eps inside the root).
#pragma once

namespace sqz {

void rmsnorm(const float* x, const float* w, int n_tokens, int dim, float eps, float* out);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>
namespace sqz {

// RMSNorm on the GPU, writing the fp16 input of the next linear (the residual adds happen in
// the linears' epilogues, see engine/cuda_backend.cu):
//   v = x[src];  out[j] = fp16(v / sqrt(mean(v^2) + eps) * weight)
// where src = row_index ? row_index[j] : j (row_index: the final norm over the rows that want
// logits). x is only read. Sum of squares in fp32 (block reduction).
struct RmsNormCudaParams {
  const float* x = nullptr;        // device [rows of x, dim] fp32, the residual stream
  const float* weight = nullptr;   // device [dim] fp32
  uint16_t* out = nullptr;         // device [n_rows, dim] fp16
  const int* row_index = nullptr;  // optional device [n_rows]: the x row of each out row
  int n_rows = 0, dim = 0;
  float eps = 1e-5f;
};
void rmsnorm_cuda(const RmsNormCudaParams& p, cudaStream_t stream);

}  // namespace sqz
#endif
