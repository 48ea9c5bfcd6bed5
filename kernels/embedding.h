// Token embedding lookup: out[t, :] = table[tokens[t], :] as fp32.
#pragma once
#include "kernels/matmul.h"  // MatType: the table's element type

namespace sqz {

// CPU: table [vocab, dim] of `type`; tokens already checked to lie in [0, vocab).
void embedding(const void* table, MatType type, int dim, const int* tokens, int n_tokens,
               float* out);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// table: device [vocab, dim] of `type` (F32, F16 or BF16); tokens: device [n_tokens], already
// checked to lie in [0, vocab); out: device [n_tokens, dim] fp32 (the residual stream).
void embedding_cuda(const void* table, MatType type, int dim, const int* tokens, int n_tokens,
                    float* out, cudaStream_t stream);

}  // namespace sqz
#endif
