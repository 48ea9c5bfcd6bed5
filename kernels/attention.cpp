#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/parallel.h"

namespace sqz {

void attention(const AttentionArgs& a, ThreadPool& pool) {
  const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd, group = a.n_heads / a.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  pool.parallel_for(int64_t(a.n_tokens) * a.n_heads, [&](int64_t b, int64_t e) {
    std::vector<float> att;
    for (int64_t job = b; job < e; job++) {
      int t = int(job / a.n_heads), h = int(job % a.n_heads);
      int kvh = h / group, n = a.pos[t] + 1;
      const float* q = a.q + (int64_t(t) * a.n_heads + h) * hd;
      const float* kc = a.k_cache[t] + kvh * hd;
      const float* vc = a.v_cache[t] + kvh * hd;
      att.resize(n);
      float mx = -INFINITY;
      for (int p = 0; p < n; p++) {
        att[p] = dot_f32(q, kc + int64_t(p) * kv_dim, hd) * scale;
        mx = std::max(mx, att[p]);
      }
      float sum = 0;
      for (int p = 0; p < n; p++) sum += att[p] = std::exp(att[p] - mx);
      float inv = 1.0f / sum;
      float* o = a.out + (int64_t(t) * a.n_heads + h) * hd;
      for (int i = 0; i < hd; i++) o[i] = 0;
      for (int p = 0; p < n; p++) {
        float wgt = att[p] * inv;
        const float* v = vc + int64_t(p) * kv_dim;
        for (int i = 0; i < hd; i++) o[i] += wgt * v[i];
      }
    }
  }, 1);
}

}  // namespace sqz
