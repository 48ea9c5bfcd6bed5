#include "kernels/attention_backward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/parallel.h"

namespace sqz {

void attention_causal_forward(const CausalAttentionArgs& a, float* out, float* lse,
                              ThreadPool& pool) {
  const int hd = a.head_dim, q_dim = a.n_heads * hd, kv_dim = a.n_kv_heads * hd;
  const int group = a.n_heads / a.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  pool.parallel_for(int64_t(a.n_tokens) * a.n_heads, [&](int64_t b, int64_t e) {
    std::vector<float> att;
    for (int64_t job = b; job < e; job++) {
      const int t = int(job / a.n_heads), h = int(job % a.n_heads), g = h / group, n = t + 1;
      const float* q = a.q + int64_t(t) * q_dim + h * hd;
      att.resize(n);
      float mx = -INFINITY;
      for (int p = 0; p < n; p++) {
        att[p] = dot_f32(q, a.k + int64_t(p) * kv_dim + g * hd, hd) * scale;
        mx = std::max(mx, att[p]);
      }
      float sum = 0;
      for (int p = 0; p < n; p++) sum += att[p] = std::exp(att[p] - mx);
      const float inv = 1.0f / sum;
      float* o = out + int64_t(t) * q_dim + h * hd;
      for (int i = 0; i < hd; i++) o[i] = 0;
      for (int p = 0; p < n; p++) {
        const float w = att[p] * inv;
        const float* v = a.v + int64_t(p) * kv_dim + g * hd;
        for (int i = 0; i < hd; i++) o[i] += w * v[i];
      }
      lse[int64_t(t) * a.n_heads + h] = mx + std::log(sum);
    }
  }, 1);
}

void attention_causal_backward(const CausalAttentionArgs& a, const float* out, const float* lse,
                               const float* dout, float* dq, float* dk, float* dv,
                               ThreadPool& pool) {
  const int n = a.n_tokens, H = a.n_heads, hd = a.head_dim;
  const int q_dim = H * hd, kv_dim = a.n_kv_heads * hd, group = H / a.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  // D[t, h] = dout[t, h] . out[t, h]: [n, H]
  std::vector<float> D(size_t(n) * H);
  for (int64_t i = 0; i < int64_t(n) * H; i++) D[i] = dot_f32(dout + i * hd, out + i * hd, hd);

  // Pass 1: dq[t, h] = scale sum_{p <= t} dS[t, p] k[p, g]
  pool.parallel_for(int64_t(n) * H, [&](int64_t b, int64_t e) {
    for (int64_t job = b; job < e; job++) {
      const int t = int(job / H), h = int(job % H), g = h / group;
      const float* q = a.q + int64_t(t) * q_dim + h * hd;
      const float* go = dout + int64_t(t) * q_dim + h * hd;
      const float l = lse[job], d = D[job];
      float* gq = dq + int64_t(t) * q_dim + h * hd;
      for (int i = 0; i < hd; i++) gq[i] = 0;
      for (int p = 0; p <= t; p++) {
        const float* k = a.k + int64_t(p) * kv_dim + g * hd;
        const float* v = a.v + int64_t(p) * kv_dim + g * hd;
        const float P = std::exp(dot_f32(q, k, hd) * scale - l);
        const float dS = P * (dot_f32(go, v, hd) - d) * scale;
        for (int i = 0; i < hd; i++) gq[i] += dS * k[i];
      }
    }
  }, 1);

  // Pass 2: dk[p, g], dv[p, g] over the queries t >= p of every head h of group g.
  pool.parallel_for(int64_t(n) * a.n_kv_heads, [&](int64_t b, int64_t e) {
    for (int64_t job = b; job < e; job++) {
      const int p = int(job / a.n_kv_heads), g = int(job % a.n_kv_heads);
      const float* k = a.k + int64_t(p) * kv_dim + g * hd;
      const float* v = a.v + int64_t(p) * kv_dim + g * hd;
      float* gk = dk + int64_t(p) * kv_dim + g * hd;
      float* gv = dv + int64_t(p) * kv_dim + g * hd;
      for (int i = 0; i < hd; i++) gk[i] = 0, gv[i] = 0;
      for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t = p; t < n; t++) {
          const int64_t th = int64_t(t) * H + h;
          const float* q = a.q + th * hd;
          const float* go = dout + th * hd;
          const float P = std::exp(dot_f32(q, k, hd) * scale - lse[th]);
          const float dS = P * (dot_f32(go, v, hd) - D[th]) * scale;
          for (int i = 0; i < hd; i++) gv[i] += P * go[i], gk[i] += dS * q[i];
        }
      }
    }
  }, 1);
}

}  // namespace sqz
