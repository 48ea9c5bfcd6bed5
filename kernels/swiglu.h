// SwiGLU gate: out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
#pragma once
#include <cstdint>

namespace sqz {

void swiglu(const float* gate, const float* up, int64_t n, float* out);

}  // namespace sqz
