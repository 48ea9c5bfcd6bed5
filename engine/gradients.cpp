// The CPU gradient backend: the forward pass of engine/cpu_backend.cpp over one sequence
// (positions 0..n-1, no KV cache), saving each layer's activations, then the backward pass
// through the head, the final norm and every layer, with the weight gradients' squares
// accumulated by the GEMM's epilogue (kernels/matmul_backward.h). make_gradient_backend
// picks the GPU version (engine/gradients_cuda.cu) when one is usable.
#include "engine/gradients.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#include "engine/engine.h"
#include "kernels/attention_backward.h"
#include "kernels/embedding.h"
#include "kernels/matmul_backward.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_backward.h"
#include "kernels/rope.h"
#include "kernels/rope_backward.h"
#include "kernels/swiglu.h"
#include "kernels/swiglu_backward.h"
#include "model/errors.h"

namespace sqz {

const char* linear_hf_type(int which) {
  static const char* const kNames[kLinearsPerLayer] = {"q_proj",    "k_proj",  "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"};
  if (which < 0 || which >= kLinearsPerLayer)
    throw std::out_of_range("linear index " + std::to_string(which) + " outside 0..6");
  return kNames[which];
}

const LinearWeight& layer_linear(const LayerWeights& l, int which) {
  const LinearWeight* w[kLinearsPerLayer] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down};
  if (which < 0 || which >= kLinearsPerLayer)
    throw std::out_of_range("linear index " + std::to_string(which) + " outside 0..6");
  return *w[which];
}

namespace {

enum Slot { WQ, WK, WV, WO, W_GATE, W_UP, W_DOWN };

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(size_t(t.n_elems()));
  convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

MatType dense_type(const LinearWeight& w, const std::string& path) {
  if (w.kind != WeightKind::DENSE)
    throw format_error(path + ": " + w.name +
                       " is not a dense F32/F16/BF16 weight; calibration needs the original "
                       "checkpoint (not a packed .sqz model)");
  return mat_type(w.dtype, path + ": " + w.name);
}

// What the backward needs from one layer's forward, each [n_tokens, width].
struct LayerActs {
  std::vector<float> x_in;   // [n, dim] residual stream entering the layer
  std::vector<float> q, k;   // [n, q_dim], [n, kv_dim] after RoPE
  std::vector<float> v;      // [n, kv_dim]
  std::vector<float> att;    // [n, q_dim] attention output (input of wo)
  std::vector<float> lse;    // [n, n_heads] softmax log-sum-exp per row
  std::vector<float> x_mid;  // [n, dim] residual stream after attention
  std::vector<float> gate, up;  // [n, hidden_dim] before SwiGLU
};

class CpuGradients : public GradientBackend {
 public:
  CpuGradients(const Model& m, const GradientOptions& o)
      : m_(m), c_(m.config), pool_(o.n_threads) {
    for (const LayerWeights& l : m.layers)
      for (int i = 0; i < kLinearsPerLayer; i++) types_.push_back(dense_type(layer_linear(l, i), m.path));
    cls_type_ = dense_type(m.classifier, m.path);
    final_norm_ = to_f32(m.final_norm);
    for (const LayerWeights& l : m.layers) {
      attn_norm_.push_back(to_f32(l.attn_norm));
      ffn_norm_.push_back(to_f32(l.ffn_norm));
    }
    fisher_.resize(m.layers.size() * kLinearsPerLayer);
    for (size_t l = 0; l < m.layers.size(); l++)
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = layer_linear(m.layers[l], i);
        try {
          fisher_[l * kLinearsPerLayer + i].assign(size_t(w.rows) * w.cols, 0.0f);
        } catch (const std::bad_alloc&) {
          throw std::runtime_error("calibration: not enough memory for the squared gradients (" +
                                   std::to_string(m.n_params() * 4 >> 20) + " MiB of fp32)");
        }
      }
    acts_.resize(m.layers.size());
  }

  std::string name() const override { return "cpu"; }

  double accumulate(const int* tokens, int n) override {
    grads_ = nullptr;
    return run_checked(tokens, n, true);
  }
  double gradients(const int* tokens, int n, float* const* grads) override {
    grads_ = grads;
    double loss = run_checked(tokens, n, true);
    grads_ = nullptr;
    return loss;
  }
  double loss(const int* tokens, int n) override { return run_checked(tokens, n, false); }

  const float* fisher(int layer, int which) override {
    if (layer < 0 || layer >= c_.n_layers || which < 0 || which >= kLinearsPerLayer)
      throw std::out_of_range("fisher(" + std::to_string(layer) + ", " + std::to_string(which) +
                              "): no such linear");
    return fisher_[size_t(layer) * kLinearsPerLayer + which].data();
  }
  void reset() override {
    for (auto& f : fisher_) std::fill(f.begin(), f.end(), 0.0f);
  }

 private:
  const LinearWeight& lin(int l, int which) const { return layer_linear(m_.layers[l], which); }

  // y[n, rows] = x[n, cols] W^T
  void linear(const LinearWeight& w, MatType t, const float* x, int n, float* y) {
    matmul_gemm(t, w.data, w.rows, w.cols, x, n, y, pool_);
  }
  // dx[n, cols] (+)= dy[n, rows] W
  void linear_dx(int l, int which, const float* dy, int n, float* dx, bool accumulate) {
    const LinearWeight& w = lin(l, which);
    matmul_backward_x(types_[size_t(l) * kLinearsPerLayer + which], w.data, w.rows, w.cols, dy,
                      n, dx, accumulate, pool_);
  }
  // dW = dy[n, rows]^T x[n, cols]: F += dW^2, or stored for tests.
  void linear_dw(int l, int which, const float* dy, const float* x, int n) {
    const LinearWeight& w = lin(l, which);
    const size_t slot = size_t(l) * kLinearsPerLayer + which;
    if (grads_)
      matmul_backward_w(dy, x, n, w.rows, w.cols, grads_[slot], GemmEpilogue::STORE, pool_);
    else
      matmul_backward_w(dy, x, n, w.rows, w.cols, fisher_[slot].data(), GemmEpilogue::SQUARE_ADD,
                        pool_);
  }



  // Bytes of activations and scratch for a sample of n tokens (all layers saved).
  int64_t activation_bytes(int n) const {
    const int64_t per_layer = 2 * c_.dim + 2 * c_.q_dim() + 2 * c_.kv_dim() + c_.n_heads +
                              2 * c_.hidden_dim;
    const int64_t scratch = 4 * c_.dim + 2 * c_.q_dim() + 2 * c_.kv_dim() + 2 * c_.hidden_dim;
    return 4 * int64_t(n) * (per_layer * c_.n_layers + scratch + c_.vocab_size);
  }

  double run_checked(const int* tokens, int n, bool backward) {
    try {
      return run(tokens, n, backward);
    } catch (const std::bad_alloc&) {
      throw std::runtime_error("calibration: a sample of " + std::to_string(n) +
                               " tokens needs about " + std::to_string(activation_bytes(n) >> 20) +
                               " MiB of activations, which is not available; use a shorter "
                               "--seqlen");
    }
  }

  // Forward (saving activations) and, with `backward`, the backward pass. Returns the loss.
  double run(const int* tokens, int n, bool backward) {
    check_calibration_tokens(tokens, n, c_.vocab_size);
    const int dim = c_.dim, q_dim = c_.q_dim(), kv_dim = c_.kv_dim(), hidden = c_.hidden_dim;
    const int H = c_.n_heads, hd = c_.head_dim, vocab = c_.vocab_size, L = c_.n_layers;
    const size_t nd = size_t(n);
    pos_.resize(nd);
    for (int t = 0; t < n; t++) pos_[t] = t;
    x_.resize(nd * dim), h_.resize(nd * dim), out_.resize(nd * dim);
    act_.resize(nd * hidden);

    // ---- forward
    embedding(m_.tok_embeddings.data, mat_type(m_.tok_embeddings.dtype, "tok_embeddings"), dim,
              tokens, n, x_.data());
    for (int l = 0; l < L; l++) {
      LayerActs& s = acts_[l];
      s.x_in = x_;
      s.q.resize(nd * q_dim), s.k.resize(nd * kv_dim), s.v.resize(nd * kv_dim);
      s.att.resize(nd * q_dim), s.lse.resize(nd * H), s.gate.resize(nd * hidden);
      s.up.resize(nd * hidden);
      rmsnorm(x_.data(), attn_norm_[l].data(), n, dim, c_.norm_eps, h_.data());
      linear(lin(l, WQ), type(l, WQ), h_.data(), n, s.q.data());
      linear(lin(l, WK), type(l, WK), h_.data(), n, s.k.data());
      linear(lin(l, WV), type(l, WV), h_.data(), n, s.v.data());
      rope(s.q.data(), pos_.data(), n, H, hd, c_.rope_theta);
      rope(s.k.data(), pos_.data(), n, c_.n_kv_heads, hd, c_.rope_theta);
      attention_causal_forward(attn_args(s, n), s.att.data(), s.lse.data(), pool_);
      linear(lin(l, WO), type(l, WO), s.att.data(), n, out_.data());
      for (size_t i = 0; i < nd * dim; i++) x_[i] += out_[i];
      s.x_mid = x_;
      rmsnorm(x_.data(), ffn_norm_[l].data(), n, dim, c_.norm_eps, h_.data());
      linear(lin(l, W_GATE), type(l, W_GATE), h_.data(), n, s.gate.data());
      linear(lin(l, W_UP), type(l, W_UP), h_.data(), n, s.up.data());
      swiglu(s.gate.data(), s.up.data(), int64_t(nd) * hidden, act_.data());
      linear(lin(l, W_DOWN), type(l, W_DOWN), act_.data(), n, out_.data());
      for (size_t i = 0; i < nd * dim; i++) x_[i] += out_[i];
    }
    // Final norm and head over the n-1 positions that predict a token.
    const int np = n - 1;
    rmsnorm(x_.data(), final_norm_.data(), np, dim, c_.norm_eps, h_.data());
    logits_.resize(size_t(np) * vocab);
    linear(m_.classifier, cls_type_, h_.data(), np, logits_.data());

    // ---- loss; logits_ becomes dLoss/dlogits = (softmax - onehot) / np
    nll_.resize(np);
    pool_.parallel_for(np, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t++) {
        float* z = logits_.data() + size_t(t) * vocab;
        const int target = tokens[t + 1];
        float mx = z[0];
        for (int j = 1; j < vocab; j++) mx = std::max(mx, z[j]);
        double sum = 0;
        for (int j = 0; j < vocab; j++) sum += std::exp(z[j] - mx);
        const float lse = float(mx + std::log(sum));
        nll_[t] = double(lse) - z[target];
        if (backward) {
          const float inv_np = 1.0f / np;
          for (int j = 0; j < vocab; j++) z[j] = std::exp(z[j] - lse) * inv_np;
          z[target] -= inv_np;
        }
      }
    });
    double nll = 0;
    for (int t = 0; t < np; t++) nll += nll_[t];
    const double loss = nll / np;
    if (!backward) return loss;

    // ---- backward. dx_: dLoss / d(residual stream), [n, dim]; the last position has no
    // loss term, so its row starts at 0.
    dx_.assign(nd * dim, 0.0f);
    matmul_backward_x(cls_type_, m_.classifier.data, m_.classifier.rows, m_.classifier.cols,
                      logits_.data(), np, h_.data(), false, pool_);  // dh [np, dim]
    rmsnorm_backward(x_.data(), final_norm_.data(), h_.data(), np, dim, c_.norm_eps, dx_.data());

    d_att_.resize(nd * q_dim), dq_.resize(nd * q_dim), dk_.resize(nd * kv_dim);
    dv_.resize(nd * kv_dim), d_act_.resize(nd * hidden);
    for (int l = L - 1; l >= 0; l--) {
      LayerActs& s = acts_[l];
      // FFN: x_out = x_mid + W_down swiglu(W_gate h2, W_up h2), h2 = rmsnorm(x_mid)
      rmsnorm(s.x_mid.data(), ffn_norm_[l].data(), n, dim, c_.norm_eps, h_.data());
      swiglu(s.gate.data(), s.up.data(), int64_t(nd) * hidden, act_.data());
      linear_dw(l, W_DOWN, dx_.data(), act_.data(), n);
      linear_dx(l, W_DOWN, dx_.data(), n, d_act_.data(), false);  // d_act [n, hidden]
      // dgate, dup overwrite the saved gate/up (not needed after this point)
      swiglu_backward(s.gate.data(), s.up.data(), d_act_.data(), int64_t(nd) * hidden,
                      s.gate.data(), s.up.data());
      linear_dw(l, W_GATE, s.gate.data(), h_.data(), n);
      linear_dw(l, W_UP, s.up.data(), h_.data(), n);
      linear_dx(l, W_GATE, s.gate.data(), n, out_.data(), false);  // dh2 [n, dim]
      linear_dx(l, W_UP, s.up.data(), n, out_.data(), true);
      rmsnorm_backward(s.x_mid.data(), ffn_norm_[l].data(), out_.data(), n, dim, c_.norm_eps,
                       dx_.data());

      // Attention: x_mid = x_in + W_o attn(rope(W_q h1), rope(W_k h1), W_v h1)
      linear_dw(l, WO, dx_.data(), s.att.data(), n);
      linear_dx(l, WO, dx_.data(), n, d_att_.data(), false);
      attention_causal_backward(attn_args(s, n), s.att.data(), s.lse.data(), d_att_.data(),
                                dq_.data(), dk_.data(), dv_.data(), pool_);
      rope_backward(dq_.data(), pos_.data(), n, H, hd, c_.rope_theta);
      rope_backward(dk_.data(), pos_.data(), n, c_.n_kv_heads, hd, c_.rope_theta);
      rmsnorm(s.x_in.data(), attn_norm_[l].data(), n, dim, c_.norm_eps, h_.data());
      linear_dw(l, WQ, dq_.data(), h_.data(), n);
      linear_dw(l, WK, dk_.data(), h_.data(), n);
      linear_dw(l, WV, dv_.data(), h_.data(), n);
      if (l == 0) break;  // below layer 0 are the embeddings, whose gradient is not needed
      linear_dx(l, WQ, dq_.data(), n, out_.data(), false);  // dh1 [n, dim]
      linear_dx(l, WK, dk_.data(), n, out_.data(), true);
      linear_dx(l, WV, dv_.data(), n, out_.data(), true);
      rmsnorm_backward(s.x_in.data(), attn_norm_[l].data(), out_.data(), n, dim, c_.norm_eps,
                       dx_.data());
    }
    return loss;
  }

  MatType type(int l, int which) const { return types_[size_t(l) * kLinearsPerLayer + which]; }

  CausalAttentionArgs attn_args(const LayerActs& s, int n) const {
    CausalAttentionArgs a;
    a.n_tokens = n, a.n_heads = c_.n_heads, a.n_kv_heads = c_.n_kv_heads, a.head_dim = c_.head_dim;
    a.q = s.q.data(), a.k = s.k.data(), a.v = s.v.data();
    return a;
  }

  const Model& m_;
  const Config& c_;
  ThreadPool pool_;
  std::vector<MatType> types_;  // [n_layers * 7]
  MatType cls_type_ = MatType::F32;
  std::vector<float> final_norm_;
  std::vector<std::vector<float>> attn_norm_, ffn_norm_;
  std::vector<std::vector<float>> fisher_;  // [n_layers * 7] of [rows, cols]
  float* const* grads_ = nullptr;           // gradients(): where the raw dW go
  std::vector<LayerActs> acts_;
  std::vector<int> pos_;
  std::vector<double> nll_;  // [n - 1] per predicted position
  std::vector<float> x_, h_, out_, act_, logits_, dx_, d_att_, dq_, dk_, dv_, d_act_;
};

}  // namespace

std::unique_ptr<GradientBackend> make_cpu_gradients(const Model& m, const GradientOptions& o) {
  return std::make_unique<CpuGradients>(m, o);
}

void check_gradient_device(const std::string& device) {
  if (device == "cpu" || device == "auto") return;
  if (device == "cuda") {
#ifdef SQZ_WITH_CUDA
    if (cuda_available()) return;
    throw std::runtime_error(
        "--device cuda: calibration on the GPU is not available: no usable CUDA GPU was found; "
        "use --device cpu");
#else
    throw std::runtime_error(
        "--device cuda: calibration on the GPU is not available: this build has no CUDA "
        "backend; use --device cpu");
#endif
  }
  throw std::invalid_argument("--device must be auto, cpu or cuda, not '" + device + "'");
}

void check_calibration_tokens(const int* tokens, int n, int vocab_size) {
  if (n < 2)
    throw std::invalid_argument("calibration sample of " + std::to_string(n) +
                                " tokens: need at least 2 (one predicted position)");
  for (int t = 0; t < n; t++)
    if (tokens[t] < 0 || tokens[t] >= vocab_size)
      throw std::out_of_range("token id " + std::to_string(tokens[t]) + " at position " +
                              std::to_string(t) + " outside the vocabulary of " +
                              std::to_string(vocab_size));
}

std::unique_ptr<GradientBackend> make_gradient_backend(const Model& m, const GradientOptions& o,
                                                       const std::string& device) {
  check_gradient_device(device);
#ifdef SQZ_WITH_CUDA
  if (device == "cuda" || (device == "auto" && cuda_available())) return make_cuda_gradients(m, o);
#endif
  return make_cpu_gradients(m, o);
}

}  // namespace sqz
