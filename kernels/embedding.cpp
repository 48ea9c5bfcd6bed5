#include "kernels/embedding.h"

#include <cstdint>
#include <cstring>

#include "kernels/half.h"

namespace sqz {

void embedding(const void* table, MatType type, int dim, const int* tokens, int n_tokens,
               float* out) {
  for (int t = 0; t < n_tokens; t++) {
    const size_t off = size_t(tokens[t]) * dim;
    float* o = out + size_t(t) * dim;
    if (type == MatType::F32)
      std::memcpy(o, static_cast<const float*>(table) + off, size_t(dim) * 4);
    else if (type == MatType::F16)
      half_to_float_n(static_cast<const uint16_t*>(table) + off, o, dim);
    else
      bfloat_to_float_n(static_cast<const uint16_t*>(table) + off, o, dim);
  }
}

}  // namespace sqz
