// RMSNorm: out[t, i] = x[t, i] / sqrt(mean_i(x[t]^2) + eps) * w[i]   (eps inside the root).
#pragma once

namespace sqz {

void rmsnorm(const float* x, const float* w, int n_tokens, int dim, float eps, float* out);

}  // namespace sqz
