// Backward ops of calibration against finite differences of fp64 forwards: dense linear (its
// GEMM forward, dX, dW and the squared-gradient epilogue, F32/F16/BF16 weights, odd shapes across the GEMM's
// blocks), RMSNorm, RoPE, SwiGLU, causal GQA attention, and a whole tiny random model whose
// dLoss/dW for every linear is compared with central differences of an fp64 reference model.
// Run: ctest -R test_backward
#include <gtest/gtest.h>

#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "engine/gradients.h"
#include "kernels/attention_backward.h"
#include "kernels/matmul_backward.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm_backward.h"
#include "kernels/rope_backward.h"
#include "kernels/swiglu_backward.h"
#include "model/dtype.h"
#include "model/model.h"

namespace sqz {
namespace {

// fp32 analytic gradients against fp64 references: relative to the reference's norm.
constexpr double kGradTol = 2e-5;
constexpr double kFdStep = 1e-5;  // central differences in fp64

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class A, class B>
double rel_err(const A& got, const B& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    num += (double(got[i]) - double(ref[i])) * (double(got[i]) - double(ref[i]));
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Central differences of a scalar fp64 function of x, one element at a time.
std::vector<double> finite_diff(std::vector<double> x, const std::function<double(const std::vector<double>&)>& f) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    const double x0 = x[i];
    x[i] = x0 + kFdStep;
    const double fp = f(x);
    x[i] = x0 - kFdStep;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * kFdStep);
  }
  return g;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---- dense linear: y = x W^T

struct LinShape {
  int n, rows, cols;
};
// Edges of the GEMM's blocks: 6 x 16 micro-tiles, 48 x 256 tasks, K blocks of 256.
const LinShape kLinShapes[] = {{1, 1, 1}, {7, 13, 5}, {2, 50, 300}, {33, 17, 70}, {300, 49, 257}};

TEST(MatmulBackward, DxDwAllTypesOddShapes) {
  ThreadPool pool(3);
  std::mt19937 rng(1);
  for (LinShape s : kLinShapes) {
    for (MatType t : {MatType::F32, MatType::F16, MatType::BF16}) {
      std::vector<float> w = randn(size_t(s.rows) * s.cols, rng), x = randn(size_t(s.n) * s.cols, rng);
      std::vector<float> dy = randn(size_t(s.n) * s.rows, rng);
      std::vector<uint16_t> w16(w.size());
      for (size_t i = 0; i < w.size(); i++) {
        if (t == MatType::F32) continue;
        w16[i] = t == MatType::F16 ? f32_to_f16(w[i]) : f32_to_bf16(w[i]);
        w[i] = t == MatType::F16 ? f16_to_f32(w16[i]) : bf16_to_f32(w16[i]);
      }
      // references in fp64
      std::vector<double> dx_ref(size_t(s.n) * s.cols), dw_ref(size_t(s.rows) * s.cols);
      for (int i = 0; i < s.n; i++)
        for (int r = 0; r < s.rows; r++)
          for (int c = 0; c < s.cols; c++) {
            dx_ref[size_t(i) * s.cols + c] += double(dy[size_t(i) * s.rows + r]) * w[size_t(r) * s.cols + c];
            dw_ref[size_t(r) * s.cols + c] += double(dy[size_t(i) * s.rows + r]) * x[size_t(i) * s.cols + c];
          }
      const void* wp = t == MatType::F32 ? (const void*)w.data() : (const void*)w16.data();
      // the forward through the same GEMM: y = x W^T
      std::vector<double> y_ref(size_t(s.n) * s.rows);
      for (int i = 0; i < s.n; i++)
        for (int r = 0; r < s.rows; r++)
          for (int c = 0; c < s.cols; c++)
            y_ref[size_t(i) * s.rows + r] += double(x[size_t(i) * s.cols + c]) * w[size_t(r) * s.cols + c];
      std::vector<float> y(y_ref.size(), NAN);
      matmul_gemm(t, wp, s.rows, s.cols, x.data(), s.n, y.data(), pool);
      EXPECT_LT(rel_err(y, y_ref), kGradTol) << "y " << s.n << "x" << s.rows << "x" << s.cols;
      std::vector<float> dx(dx_ref.size(), NAN);
      matmul_backward_x(t, wp, s.rows, s.cols, dy.data(), s.n, dx.data(), false, pool);
      EXPECT_LT(rel_err(dx, dx_ref), kGradTol) << "dx " << s.n << "x" << s.rows << "x" << s.cols;
      // accumulate: dx += dy W again
      matmul_backward_x(t, wp, s.rows, s.cols, dy.data(), s.n, dx.data(), true, pool);
      std::vector<double> dx2(dx_ref);
      for (auto& v : dx2) v *= 2;
      EXPECT_LT(rel_err(dx, dx2), kGradTol);
      if (t != MatType::F32) continue;
      std::vector<float> dw(dw_ref.size(), NAN);
      matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, dw.data(), GemmEpilogue::STORE, pool);
      EXPECT_LT(rel_err(dw, dw_ref), kGradTol) << "dw " << s.n << "x" << s.rows << "x" << s.cols;
      // F += dW^2 twice from 1: 1 + 2 dW^2
      std::vector<float> f(dw_ref.size(), 1.0f);
      matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, f.data(), GemmEpilogue::SQUARE_ADD, pool);
      matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, f.data(), GemmEpilogue::SQUARE_ADD, pool);
      std::vector<double> f_ref(dw_ref.size());
      for (size_t i = 0; i < f_ref.size(); i++) f_ref[i] = 1 + 2 * dw_ref[i] * dw_ref[i];
      EXPECT_LT(rel_err(f, f_ref), kGradTol);
    }
  }
}

TEST(MatmulBackward, FiniteDifferences) {
  // dLoss/dx and dLoss/dW of J = sum dy . (x W^T) by central differences.
  ThreadPool pool(2);
  std::mt19937 rng(2);
  const int n = 3, rows = 5, cols = 4;
  std::vector<float> w = randn(rows * cols, rng), x = randn(n * cols, rng), dy = randn(n * rows, rng);
  auto J = [&](const std::vector<double>& xd, const std::vector<double>& wd) {
    double j = 0;
    for (int i = 0; i < n; i++)
      for (int r = 0; r < rows; r++) {
        double y = 0;
        for (int c = 0; c < cols; c++) y += xd[i * cols + c] * wd[r * cols + c];
        j += dy[i * rows + r] * y;
      }
    return j;
  };
  const auto xd = to_double(x), wd = to_double(w);
  auto fd_x = finite_diff(xd, [&](const std::vector<double>& v) { return J(v, wd); });
  auto fd_w = finite_diff(wd, [&](const std::vector<double>& v) { return J(xd, v); });
  std::vector<float> dx(n * cols), dw(rows * cols);
  matmul_backward_x(MatType::F32, w.data(), rows, cols, dy.data(), n, dx.data(), false, pool);
  matmul_backward_w(dy.data(), x.data(), n, rows, cols, dw.data(), GemmEpilogue::STORE, pool);
  EXPECT_LT(rel_err(dx, fd_x), 1e-6);
  EXPECT_LT(rel_err(dw, fd_w), 1e-6);
}

// ---- RMSNorm

TEST(RmsNormBackward, FiniteDifferences) {
  std::mt19937 rng(3);
  const int n = 3, dim = 11;
  const float eps = 1e-5f;
  std::vector<float> x = randn(n * dim, rng), w = randn(dim, rng), dy = randn(n * dim, rng);
  x[5] = 0.01f;  // rows of very different scales
  for (int i = 0; i < dim; i++) x[2 * dim + i] *= 1e-2f;
  auto J = [&](const std::vector<double>& xd) {
    double j = 0;
    for (int t = 0; t < n; t++) {
      double ss = 0;
      for (int i = 0; i < dim; i++) ss += xd[t * dim + i] * xd[t * dim + i];
      const double s = 1.0 / std::sqrt(ss / dim + double(eps));
      for (int i = 0; i < dim; i++) j += dy[t * dim + i] * xd[t * dim + i] * s * w[i];
    }
    return j;
  };
  auto fd = finite_diff(to_double(x), J);
  std::vector<float> dx(n * dim, 0.5f);  // rmsnorm_backward adds
  rmsnorm_backward(x.data(), w.data(), dy.data(), n, dim, eps, dx.data());
  for (auto& v : dx) v -= 0.5f;
  EXPECT_LT(rel_err(dx, fd), 1e-5);
}

// ---- RoPE (interleaved pairs)

void rope_ref(std::vector<double>& x, const int* pos, int n, int heads, int hd, float theta) {
  for (int t = 0; t < n; t++)
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < hd / 2; i++) {
        const float inv_freq = float(1.0 / std::pow(double(theta), double(2 * i) / hd));
        const double ang = double(float(pos[t]) * inv_freq), c = std::cos(ang), s = std::sin(ang);
        double* v = x.data() + (size_t(t) * heads + h) * hd + 2 * i;
        const double a = v[0], b = v[1];
        v[0] = a * c - b * s, v[1] = a * s + b * c;
      }
}

TEST(RopeBackward, FiniteDifferences) {
  std::mt19937 rng(4);
  const int n = 4, heads = 3, hd = 8;
  const int pos[n] = {0, 3, 17, 1000};
  std::vector<float> x = randn(n * heads * hd, rng), dy = randn(x.size(), rng);
  auto J = [&](const std::vector<double>& xd) {
    std::vector<double> y = xd;
    rope_ref(y, pos, n, heads, hd, 10000.0f);
    double j = 0;
    for (size_t i = 0; i < y.size(); i++) j += dy[i] * y[i];
    return j;
  };
  auto fd = finite_diff(to_double(x), J);
  std::vector<float> g = dy;
  rope_backward(g.data(), pos, n, heads, hd, 10000.0f);
  EXPECT_LT(rel_err(g, fd), 1e-6);
}

// ---- SwiGLU

TEST(SwigluBackward, FiniteDifferences) {
  std::mt19937 rng(5);
  const int n = 40;
  std::vector<float> g = randn(n, rng, 3.0f), u = randn(n, rng), dy = randn(n, rng);
  g[0] = 0, g[1] = -30, g[2] = 30;
  auto J = [&](const std::vector<double>& gd, const std::vector<double>& ud) {
    double j = 0;
    for (int i = 0; i < n; i++) j += dy[i] * gd[i] / (1 + std::exp(-gd[i])) * ud[i];
    return j;
  };
  const auto gd = to_double(g), ud = to_double(u);
  auto fd_g = finite_diff(gd, [&](const std::vector<double>& v) { return J(v, ud); });
  auto fd_u = finite_diff(ud, [&](const std::vector<double>& v) { return J(gd, v); });
  std::vector<float> dg(n), du(n);
  swiglu_backward(g.data(), u.data(), dy.data(), n, dg.data(), du.data());
  EXPECT_LT(rel_err(dg, fd_g), 1e-6);
  EXPECT_LT(rel_err(du, fd_u), 1e-6);
}

// ---- causal GQA attention

// out[t, h] = softmax_{p <= t}(q[t,h] . k[p,g] / sqrt(hd)) v[p, g], in fp64.
std::vector<double> attention_ref(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int n, int H, int KV, int hd) {
  std::vector<double> out(size_t(n) * H * hd, 0.0);
  const int group = H / KV;
  for (int t = 0; t < n; t++)
    for (int h = 0; h < H; h++) {
      const int g = h / group;
      std::vector<double> s(t + 1);
      double mx = -1e300;
      for (int p = 0; p <= t; p++) {
        double d = 0;
        for (int i = 0; i < hd; i++) d += q[(size_t(t) * H + h) * hd + i] * k[(size_t(p) * KV + g) * hd + i];
        s[p] = d / std::sqrt(double(hd));
        mx = std::max(mx, s[p]);
      }
      double sum = 0;
      for (auto& e : s) sum += e = std::exp(e - mx);
      for (int p = 0; p <= t; p++)
        for (int i = 0; i < hd; i++)
          out[(size_t(t) * H + h) * hd + i] += s[p] / sum * v[(size_t(p) * KV + g) * hd + i];
    }
  return out;
}

TEST(AttentionBackward, GqaCausalFiniteDifferences) {
  ThreadPool pool(3);
  std::mt19937 rng(6);
  const int n = 6, H = 4, KV = 2, hd = 4;
  std::vector<float> q = randn(n * H * hd, rng), k = randn(n * KV * hd, rng), v = randn(n * KV * hd, rng);
  std::vector<float> dout = randn(q.size(), rng);
  CausalAttentionArgs a;
  a.n_tokens = n, a.n_heads = H, a.n_kv_heads = KV, a.head_dim = hd;
  a.q = q.data(), a.k = k.data(), a.v = v.data();
  std::vector<float> out(q.size()), lse(n * H);
  attention_causal_forward(a, out.data(), lse.data(), pool);
  const auto qd = to_double(q), kd = to_double(k), vd = to_double(v);
  EXPECT_LT(rel_err(out, attention_ref(qd, kd, vd, n, H, KV, hd)), 1e-6);

  auto J = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv) {
    auto o = attention_ref(qq, kk, vv, n, H, KV, hd);
    double j = 0;
    for (size_t i = 0; i < o.size(); i++) j += dout[i] * o[i];
    return j;
  };
  auto fd_q = finite_diff(qd, [&](const std::vector<double>& x) { return J(x, kd, vd); });
  auto fd_k = finite_diff(kd, [&](const std::vector<double>& x) { return J(qd, x, vd); });
  auto fd_v = finite_diff(vd, [&](const std::vector<double>& x) { return J(qd, kd, x); });
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  attention_causal_backward(a, out.data(), lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), pool);
  EXPECT_LT(rel_err(dq, fd_q), 1e-5);
  EXPECT_LT(rel_err(dk, fd_k), 1e-5);
  EXPECT_LT(rel_err(dv, fd_v), 1e-5);
  // the last key is seen by the last query only; the first query sees only the first key
  EXPECT_NE(dk[(n - 1) * KV * hd], 0.0f);

  // the same numbers with one thread (the passes are free of races and reductions)
  ThreadPool one(1);
  std::vector<float> dq1(q.size()), dk1(k.size()), dv1(v.size());
  attention_causal_backward(a, out.data(), lse.data(), dout.data(), dq1.data(), dk1.data(), dv1.data(), one);
  EXPECT_EQ(dq, dq1);
  EXPECT_EQ(dk, dk1);
  EXPECT_EQ(dv, dv1);
}

// ---- a whole tiny random model

struct TinyModel {
  Config c;
  // fp64 master copies; the sqz::Model views fp32 (or fp16) roundings of them.
  std::vector<double> emb, final_norm, cls;
  std::vector<double> attn_norm[2], ffn_norm[2];
  std::vector<double> lin[2][kLinearsPerLayer];  // wq wk wv wo gate up down

  static std::pair<int, int> shape(const Config& c, int which) {
    switch (which) {
      case 0: return {c.q_dim(), c.dim};
      case 1: case 2: return {c.kv_dim(), c.dim};
      case 3: return {c.dim, c.q_dim()};
      case 4: case 5: return {c.hidden_dim, c.dim};
      default: return {c.dim, c.hidden_dim};
    }
  }
};

TinyModel make_tiny(uint32_t seed) {
  TinyModel t;
  Config& c = t.c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
  c.vocab_size = 32, c.seq_len = 64, c.rope_theta = 10000.0f, c.norm_eps = 1e-5f;
  std::mt19937 rng(seed);
  auto rnd = [&](size_t n, float scale, float offset = 0) {
    std::vector<float> v = randn(n, rng, scale);
    std::vector<double> d(n);
    for (size_t i = 0; i < n; i++) d[i] = double(v[i] + offset);
    return d;
  };
  t.emb = rnd(size_t(c.vocab_size) * c.dim, 1.0f);
  t.final_norm = rnd(c.dim, 0.2f, 1.0f);
  t.cls = rnd(size_t(c.vocab_size) * c.dim, 0.5f);
  for (int l = 0; l < 2; l++) {
    t.attn_norm[l] = rnd(c.dim, 0.2f, 1.0f);
    t.ffn_norm[l] = rnd(c.dim, 0.2f, 1.0f);
    for (int i = 0; i < kLinearsPerLayer; i++) {
      auto [rows, cols] = TinyModel::shape(c, i);
      t.lin[l][i] = rnd(size_t(rows) * cols, 1.0f / std::sqrt(float(cols)));
    }
  }
  return t;
}

// The sqz::Model of a TinyModel, weights as `dtype` (F32, F16 or BF16). When rounding to
// 16 bits, the fp64 copies are rounded too, so both describe the same weights.
Model to_model(TinyModel& t, DType dtype) {
  Model m;
  m.path = "tiny", m.format = "llama2c", m.config = t.c;
  auto hold = [&](std::vector<double>& d, const std::string& name, std::vector<int64_t> shape, DType dt) {
    TensorView v;
    v.name = name, v.dtype = dt, v.shape = shape;
    if (dt == DType::F32) {
      auto buf = std::make_shared<std::vector<float>>(d.begin(), d.end());
      v.data = reinterpret_cast<const uint8_t*>(buf->data()), v.n_bytes = buf->size() * 4;
      m.storage.push_back(buf);
    } else {
      auto buf = std::make_shared<std::vector<uint16_t>>(d.size());
      for (size_t i = 0; i < d.size(); i++) {
        (*buf)[i] = dt == DType::F16 ? f32_to_f16(float(d[i])) : f32_to_bf16(float(d[i]));
        d[i] = dt == DType::F16 ? f16_to_f32((*buf)[i]) : bf16_to_f32((*buf)[i]);
      }
      v.data = reinterpret_cast<const uint8_t*>(buf->data()), v.n_bytes = buf->size() * 2;
      m.storage.push_back(buf);
    }
    return v;
  };
  auto linear = [&](std::vector<double>& d, const std::string& name, int rows, int cols, DType dt) {
    TensorView v = hold(d, name, {rows, cols}, dt);
    LinearWeight w;
    w.name = name, w.rows = rows, w.cols = cols, w.kind = WeightKind::DENSE, w.dtype = dt;
    w.data = v.data;
    return w;
  };
  const Config& c = t.c;
  m.tok_embeddings = hold(t.emb, "model.embed_tokens.weight", {c.vocab_size, c.dim}, DType::F32);
  m.final_norm = hold(t.final_norm, "model.norm.weight", {c.dim}, DType::F32);
  m.classifier = linear(t.cls, "lm_head.weight", c.vocab_size, c.dim, dtype);
  m.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; l++) {
    LayerWeights& lw = m.layers[l];
    lw.attn_norm = hold(t.attn_norm[l], "attn_norm", {c.dim}, DType::F32);
    lw.ffn_norm = hold(t.ffn_norm[l], "ffn_norm", {c.dim}, DType::F32);
    LinearWeight* slots[kLinearsPerLayer] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down};
    for (int i = 0; i < kLinearsPerLayer; i++) {
      auto [rows, cols] = TinyModel::shape(c, i);
      *slots[i] = linear(t.lin[l][i], hf_linear_name(l, linear_hf_type(i)), rows, cols, dtype);
    }
  }
  return m;
}

// The loss of the tiny model in fp64: same math as the engine (RMSNorm eps inside the root,
// interleaved RoPE, causal GQA, SwiGLU), written independently with plain loops.
double tiny_loss_ref(const TinyModel& m, const std::vector<int>& ids) {
  const Config& c = m.c;
  const int n = int(ids.size()), dim = c.dim, hd = c.head_dim, H = c.n_heads, KV = c.n_kv_heads;
  auto rms = [&](const std::vector<double>& x, const std::vector<double>& w) {
    std::vector<double> y(x.size());
    for (int t = 0; t < n; t++) {
      double ss = 0;
      for (int i = 0; i < dim; i++) ss += x[t * dim + i] * x[t * dim + i];
      const double s = 1.0 / std::sqrt(ss / dim + double(c.norm_eps));
      for (int i = 0; i < dim; i++) y[t * dim + i] = x[t * dim + i] * s * w[i];
    }
    return y;
  };
  auto mm = [&](const std::vector<double>& x, const std::vector<double>& w, int rows, int cols) {
    std::vector<double> y(size_t(n) * rows, 0.0);
    for (int t = 0; t < n; t++)
      for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) y[t * rows + r] += w[r * cols + k] * x[t * cols + k];
    return y;
  };
  std::vector<int> pos(n);
  for (int t = 0; t < n; t++) pos[t] = t;
  std::vector<double> x(size_t(n) * dim);
  for (int t = 0; t < n; t++)
    for (int i = 0; i < dim; i++) x[t * dim + i] = m.emb[ids[t] * dim + i];
  for (int l = 0; l < c.n_layers; l++) {
    auto h = rms(x, m.attn_norm[l]);
    auto q = mm(h, m.lin[l][0], c.q_dim(), dim), k = mm(h, m.lin[l][1], c.kv_dim(), dim);
    auto v = mm(h, m.lin[l][2], c.kv_dim(), dim);
    rope_ref(q, pos.data(), n, H, hd, c.rope_theta);
    rope_ref(k, pos.data(), n, KV, hd, c.rope_theta);
    auto o = mm(attention_ref(q, k, v, n, H, KV, hd), m.lin[l][3], dim, c.q_dim());
    for (size_t i = 0; i < x.size(); i++) x[i] += o[i];
    h = rms(x, m.ffn_norm[l]);
    auto g = mm(h, m.lin[l][4], c.hidden_dim, dim), u = mm(h, m.lin[l][5], c.hidden_dim, dim);
    for (size_t i = 0; i < g.size(); i++) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    auto d = mm(g, m.lin[l][6], dim, c.hidden_dim);
    for (size_t i = 0; i < x.size(); i++) x[i] += d[i];
  }
  auto h = rms(x, m.final_norm);
  auto logits = mm(h, m.cls, c.vocab_size, dim);
  double nll = 0;
  for (int t = 0; t + 1 < n; t++) {
    const double* z = logits.data() + size_t(t) * c.vocab_size;
    double mx = *std::max_element(z, z + c.vocab_size), sum = 0;
    for (int j = 0; j < c.vocab_size; j++) sum += std::exp(z[j] - mx);
    nll += mx + std::log(sum) - z[ids[t + 1]];
  }
  return nll / (n - 1);
}

const std::vector<int> kTinyIds = {1, 5, 31, 7, 7, 0, 19};  // L = 7

TEST(ModelGradients, TinyModelEveryLinearVsFiniteDifferences) {
  TinyModel t = make_tiny(7);
  Model m = to_model(t, DType::F32);
  GradientOptions go;
  go.n_threads = 2;
  auto be = make_cpu_gradients(m, go);
  EXPECT_NEAR(be->loss(kTinyIds.data(), 7), tiny_loss_ref(t, kTinyIds), 1e-5);

  std::vector<std::vector<float>> g(2 * kLinearsPerLayer);
  std::vector<float*> gp;
  for (int l = 0; l < 2; l++)
    for (int i = 0; i < kLinearsPerLayer; i++) {
      auto [rows, cols] = TinyModel::shape(t.c, i);
      g[l * kLinearsPerLayer + i].assign(size_t(rows) * cols, NAN);
      gp.push_back(g[l * kLinearsPerLayer + i].data());
    }
  const double loss = be->gradients(kTinyIds.data(), 7, gp.data());
  EXPECT_NEAR(loss, tiny_loss_ref(t, kTinyIds), 1e-5);
  double worst = 0;
  for (int l = 0; l < 2; l++)
    for (int i = 0; i < kLinearsPerLayer; i++) {
      std::vector<double>& w = t.lin[l][i];
      const std::vector<double> w0 = w;
      auto fd = finite_diff(w0, [&](const std::vector<double>& v) {
        w = v;
        return tiny_loss_ref(t, kTinyIds);
      });
      w = w0;
      const double e = rel_err(g[l * kLinearsPerLayer + i], fd);
      worst = std::max(worst, e);
      EXPECT_LT(e, 1e-4) << "layer " << l << " " << linear_hf_type(i);
    }
  std::printf("tiny model: worst relative error of dLoss/dW vs central differences %.2e\n", worst);
}

TEST(ModelGradients, AccumulatesSquaresPerSample) {
  TinyModel t = make_tiny(8);
  Model m = to_model(t, DType::F32);
  auto be = make_cpu_gradients(m, GradientOptions());
  const std::vector<int> b = {1, 2, 3, 4, 5};
  std::vector<std::vector<float>> ga(14), gb(14);
  std::vector<float*> pa, pb;
  for (int s = 0; s < 14; s++) {
    auto [rows, cols] = TinyModel::shape(t.c, s % 7);
    ga[s].resize(size_t(rows) * cols), gb[s].resize(size_t(rows) * cols);
    pa.push_back(ga[s].data()), pb.push_back(gb[s].data());
  }
  const double la = be->gradients(kTinyIds.data(), 7, pa.data());
  const double lb = be->gradients(b.data(), 5, pb.data());
  EXPECT_NEAR(be->accumulate(kTinyIds.data(), 7), la, 1e-6);
  EXPECT_NEAR(be->accumulate(b.data(), 5), lb, 1e-6);
  for (int s = 0; s < 14; s++) {
    std::vector<double> ref(ga[s].size());
    for (size_t i = 0; i < ref.size(); i++) ref[i] = double(ga[s][i]) * ga[s][i] + double(gb[s][i]) * gb[s][i];
    const float* f = be->fisher(s / 7, s % 7);
    EXPECT_LT(rel_err(std::vector<float>(f, f + ref.size()), ref), 1e-6) << s;
  }
  be->reset();
  EXPECT_EQ(be->fisher(1, 6)[0], 0.0f);
  EXPECT_THROW(be->accumulate(b.data(), 1), std::invalid_argument);
  const std::vector<int> bad = {1, 32};
  EXPECT_THROW(be->accumulate(bad.data(), 2), std::out_of_range);
  if (!cuda_available()) {  // without a GPU (or a CUDA build), asking for one is an error
    EXPECT_THROW(make_gradient_backend(m, GradientOptions(), "cuda"), std::runtime_error);
  }
  EXPECT_THROW(make_gradient_backend(m, GradientOptions(), "tpu"), std::invalid_argument);
}

TEST(ModelGradients, HalfWeightsReadAsF32) {
  // F16 / BF16 weights give the gradients of the F32 model holding the same (rounded) values.
  for (DType dt : {DType::F16, DType::BF16}) {
    TinyModel t = make_tiny(9);
    Model m16 = to_model(t, dt);     // rounds t's linears
    Model m32 = to_model(t, DType::F32);
    auto b16 = make_cpu_gradients(m16, GradientOptions()), b32 = make_cpu_gradients(m32, GradientOptions());
    EXPECT_NEAR(b16->accumulate(kTinyIds.data(), 7), b32->accumulate(kTinyIds.data(), 7), 1e-6);
    for (int s = 0; s < 14; s++) {
      auto [rows, cols] = TinyModel::shape(t.c, s % 7);
      const size_t n = size_t(rows) * cols;
      const float *f16 = b16->fisher(s / 7, s % 7), *f32 = b32->fisher(s / 7, s % 7);
      EXPECT_LT(rel_err(std::vector<float>(f16, f16 + n), std::vector<float>(f32, f32 + n)), 1e-5);
    }
  }
}

}  // namespace
}  // namespace sqz
