#include "kernels/rmsnorm.h"

#include <cmath>

namespace sqz {

void rmsnorm(const float* x, const float* w, int n_tokens, int dim, float eps, float* out) {
  for (int t = 0; t < n_tokens; t++) {
    const float* xt = x + (long)t * dim;
    float* ot = out + (long)t * dim;
    double ss = 0;  // double: the sum of squares of a wide row loses digits in fp32
    for (int i = 0; i < dim; i++) ss += double(xt[i]) * xt[i];
    float scale = float(1.0 / std::sqrt(ss / dim + eps));
    for (int i = 0; i < dim; i++) ot[i] = xt[i] * scale * w[i];
  }
}

}  // namespace sqz
