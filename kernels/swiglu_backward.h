// Backward of SwiGLU (kernels/swiglu.h): out = silu(g) * u, silu(g) = g * sigmoid(g).
//   du = dout * silu(g)
//   dg = dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
#pragma once
#include <cstdint>

namespace sqz {

// gate, up, dout: [n]; writes dgate and dup ([n] each; they may alias gate and up).
void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                     float* dgate, float* dup);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// The same on the GPU (kernels/swiglu_backward.cu), device pointers; dgate/dup may alias
// gate/up. Also calibration's forward: swiglu_forward_cuda is swiglu() on the device (fp32,
// separate gate and up; the inference kernel swiglu_cuda reads fused gate|up, writes fp16).
void swiglu_forward_cuda(const float* gate, const float* up, int64_t n, float* out,
                         cudaStream_t stream);
void swiglu_backward_cuda(const float* gate, const float* up, const float* dout, int64_t n,
                          float* dgate, float* dup, cudaStream_t stream);

}  // namespace sqz
#endif
