#include "kernels/swiglu_backward.h"

#include <cmath>

namespace sqz {

void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                     float* dgate, float* dup) {
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float sig = 1.0f / (1.0f + std::exp(-g));
    const float silu = g * sig;
    dgate[i] = d * u * sig * (1.0f + g * (1.0f - sig));
    dup[i] = d * silu;
  }
}

}  // namespace sqz
