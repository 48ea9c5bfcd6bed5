#include "kernels/rmsnorm_backward.h"

#include <cmath>

namespace sqz {

void rmsnorm_backward(const float* x, const float* w, const float* dy, int n_tokens, int dim,
                      float eps, float* dx) {
  for (int t = 0; t < n_tokens; t++) {
    const float* xt = x + long(t) * dim;
    const float* dyt = dy + long(t) * dim;
    float* dxt = dx + long(t) * dim;
    double ss = 0, dot = 0;  // double, as the forward's sum of squares
    for (int i = 0; i < dim; i++) {
      ss += double(xt[i]) * xt[i];
      dot += double(w[i]) * dyt[i] * xt[i];
    }
    const double s = 1.0 / std::sqrt(ss / dim + eps);
    const float a = float(s), b = float(s * s * s * dot / dim);
    for (int i = 0; i < dim; i++) dxt[i] += a * w[i] * dyt[i] - b * xt[i];
  }
}

}  // namespace sqz
