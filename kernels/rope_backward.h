// Backward of RoPE (kernels/rope.h, Meta's interleaved pairs): each pair (x[2i], x[2i+1])
// was rotated by the angle pos * theta^(-2i/head_dim), so its gradient is rotated back by
// the same angle (the transpose of a rotation is its inverse):
//   dx[2i] = dy[2i] cos + dy[2i+1] sin,   dx[2i+1] = -dy[2i] sin + dy[2i+1] cos
// with cos and sin computed exactly as the forward computes them.
#pragma once

namespace sqz {

// g: [n_tokens, n_heads * head_dim], the gradient w.r.t. the rotated values on input and
// w.r.t. the unrotated ones on output (in place).
void rope_backward(float* g, const int* pos, int n_tokens, int n_heads, int head_dim,
                   float theta);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// The same on the GPU (kernels/rope_backward.cu), device pointers (pos too), in place. Also
// calibration's forward: rope_forward_cuda is rope() on the device over one tensor.
void rope_forward_cuda(float* x, const int* pos, int n_tokens, int n_heads, int head_dim,
                       float theta, cudaStream_t stream);
void rope_backward_cuda(float* g, const int* pos, int n_tokens, int n_heads, int head_dim,
                        float theta, cudaStream_t stream);

}  // namespace sqz
#endif
