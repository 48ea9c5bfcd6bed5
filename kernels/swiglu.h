// SwiGLU gate: out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
#pragma once
#include <cstdint>

namespace sqz {

void swiglu(const float* gate, const float* up, int64_t n, float* out);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// SwiGLU on the GPU over the fused gate|up projection: gate_up is device fp32
// [n_tokens, 2 * hidden_dim], each row in blocks of `block` gate values followed by the
// matching `block` up values (block = hidden_dim: gate[0..hidden) then up[0..hidden); 8: the
// interleaved rows of the fused decode GEMV, see LutGemmFusion); block must divide
// hidden_dim. out is device fp16 [n_tokens, hidden_dim] = silu(gate) * up, the input of the
// down projection.
void swiglu_cuda(const float* gate_up, int n_tokens, int hidden_dim, int block, uint16_t* out,
                 cudaStream_t stream);

}  // namespace sqz
#endif
