#include "kernels/rope_backward.h"

#include <cmath>
#include <vector>

namespace sqz {

void rope_backward(float* g, const int* pos, int n_tokens, int n_heads, int head_dim,
                   float theta) {
  const int half = head_dim / 2;
  std::vector<float> cs(half), sn(half);
  for (int t = 0; t < n_tokens; t++) {
    for (int i = 0; i < half; i++) {  // as rope(): inv_freq in double, angle in fp32
      float inv_freq = float(1.0 / std::pow(double(theta), double(2 * i) / head_dim));
      float angle = float(pos[t]) * inv_freq;
      cs[i] = std::cos(angle);
      sn[i] = std::sin(angle);
    }
    float* gt = g + long(t) * n_heads * head_dim;
    for (int h = 0; h < n_heads; h++) {
      float* v = gt + h * head_dim;
      for (int i = 0; i < half; i++) {
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * cs[i] + b * sn[i];
        v[2 * i + 1] = -a * sn[i] + b * cs[i];
      }
    }
  }
}

}  // namespace sqz
