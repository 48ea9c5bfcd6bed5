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
