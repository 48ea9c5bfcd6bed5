// The CPU backend: the reference forward pass. fp32 activations and arithmetic; weights stay
// in their stored form (F32/F16/BF16 or packed) and are decoded a block of rows at a time.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "engine/backend.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/lut_gemv.h"
#include "kernels/matmul.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/errors.h"

namespace sqz {

namespace {

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(size_t(t.n_elems()));
  convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

PackedMatrix packed_matrix(const LinearWeight& w) {
  PackedMatrix p;
  p.rows = w.rows, p.cols = w.cols, p.bits = w.bits;
  p.indices = w.indices, p.row_bytes = w.row_bytes, p.lut = w.lut;
  p.row_ptr = w.row_ptr, p.col_idx = w.col_idx, p.values = w.values, p.nnz = w.nnz;
  return p;
}

class CpuBackend : public Backend {
 public:
  CpuBackend(const Model& m, const BackendOptions& o)
      : m_(m), c_(m.config), pool_(o.n_threads), ctx_(o.ctx_size), n_seqs_(o.n_seqs),
        max_batch_(o.max_batch) {
    if (ctx_ <= 0 || n_seqs_ <= 0 || max_batch_ <= 0)
      throw std::invalid_argument("cpu backend: ctx_size, n_seqs and max_batch must be > 0");
    final_norm_ = to_f32(m.final_norm);
    for (const LayerWeights& l : m.layers) {
      attn_norm_.push_back(to_f32(l.attn_norm));
      ffn_norm_.push_back(to_f32(l.ffn_norm));
    }
    // KV cache: [layer][seq][pos][kv_dim] fp32, sized from the context length up front.
    size_t per_layer = size_t(n_seqs_) * ctx_ * c_.kv_dim();
    try {
      k_cache_.assign(per_layer * c_.n_layers, 0.0f);
      v_cache_.assign(per_layer * c_.n_layers, 0.0f);
    } catch (const std::bad_alloc&) {
      throw std::runtime_error("the KV cache needs " +
                               std::to_string(2 * per_layer * c_.n_layers * 4 >> 20) +
                               " MiB of memory (ctx " + std::to_string(ctx_) + " x " +
                               std::to_string(n_seqs_) + " sequences), which is not available; "
                               "try a smaller -c/--ctx-size");
    }
  }

  std::string name() const override { return "cpu"; }
  int ctx_size() const override { return ctx_; }
  int n_seqs() const override { return n_seqs_; }
  int max_batch() const override { return max_batch_; }
  int64_t memory_bytes() const override {
    return int64_t(k_cache_.size() + v_cache_.size()) * 4 + m_.n_bytes();
  }

  void forward(const Batch& b, float* logits) override {
    const int n = b.size();
    if (n == 0) return;
    b.validate(max_batch_, n_seqs_, ctx_, c_.vocab_size);
    const int dim = c_.dim, hd = c_.head_dim, q_dim = c_.q_dim(), kv_dim = c_.kv_dim();
    const int hidden = c_.hidden_dim;
    x_.resize(size_t(n) * dim), xb_.resize(size_t(n) * dim), q_.resize(size_t(n) * q_dim);
    k_.resize(size_t(n) * kv_dim), v_.resize(size_t(n) * kv_dim), att_.resize(size_t(n) * q_dim);
    hb_.resize(size_t(n) * hidden), hb2_.resize(size_t(n) * hidden);
    out_.resize(size_t(n) * dim);

    embedding(m_.tok_embeddings.data, mat_type(m_.tok_embeddings.dtype, "tok_embeddings"), dim,
              b.tokens.data(), n, x_.data());

    std::vector<const float*> kp(n), vp(n);
    const size_t seq_stride = size_t(ctx_) * kv_dim;
    for (int l = 0; l < c_.n_layers; l++) {
      const LayerWeights& w = m_.layers[l];
      rmsnorm(x_.data(), attn_norm_[l].data(), n, dim, c_.norm_eps, xb_.data());
      linear(w.wq, xb_.data(), n, q_.data());
      linear(w.wk, xb_.data(), n, k_.data());
      linear(w.wv, xb_.data(), n, v_.data());
      rope(q_.data(), b.pos.data(), n, c_.n_heads, hd, c_.rope_theta);
      rope(k_.data(), b.pos.data(), n, c_.n_kv_heads, hd, c_.rope_theta);
      float* kc = k_cache_.data() + size_t(l) * n_seqs_ * seq_stride;
      float* vc = v_cache_.data() + size_t(l) * n_seqs_ * seq_stride;
      for (int t = 0; t < n; t++) {
        size_t at = size_t(b.seq[t]) * seq_stride + size_t(b.pos[t]) * kv_dim;
        std::memcpy(kc + at, k_.data() + size_t(t) * kv_dim, kv_dim * 4);
        std::memcpy(vc + at, v_.data() + size_t(t) * kv_dim, kv_dim * 4);
        kp[t] = kc + size_t(b.seq[t]) * seq_stride;
        vp[t] = vc + size_t(b.seq[t]) * seq_stride;
      }
      AttentionArgs a;
      a.n_tokens = n, a.n_heads = c_.n_heads, a.n_kv_heads = c_.n_kv_heads, a.head_dim = hd;
      a.q = q_.data(), a.k_cache = kp.data(), a.v_cache = vp.data(), a.pos = b.pos.data();
      a.out = att_.data();
      attention(a, pool_);
      linear(w.wo, att_.data(), n, out_.data());
      for (size_t i = 0; i < size_t(n) * dim; i++) x_[i] += out_[i];

      rmsnorm(x_.data(), ffn_norm_[l].data(), n, dim, c_.norm_eps, xb_.data());
      linear(w.w_gate, xb_.data(), n, hb_.data());
      linear(w.w_up, xb_.data(), n, hb2_.data());
      swiglu(hb_.data(), hb2_.data(), int64_t(n) * hidden, hb_.data());
      linear(w.w_down, hb_.data(), n, out_.data());
      for (size_t i = 0; i < size_t(n) * dim; i++) x_[i] += out_[i];
    }

    // Final norm and classifier only for the rows that asked for logits.
    int n_out = 0;
    for (int t = 0; t < n; t++)
      if (b.want_logits[t])
        std::memcpy(xb_.data() + size_t(n_out++) * dim, x_.data() + size_t(t) * dim, dim * 4);
    if (n_out == 0) return;
    rmsnorm(xb_.data(), final_norm_.data(), n_out, dim, c_.norm_eps, xb_.data());
    linear(m_.classifier, xb_.data(), n_out, logits);
  }

 private:
  void linear(const LinearWeight& w, const float* x, int n, float* y) {
    if (w.kind == WeightKind::PACKED)
      lut_gemm(packed_matrix(w), x, n, y, pool_);
    else
      matmul(mat_type(w.dtype, w.name), w.data, w.rows, w.cols, x, n, y, pool_);
  }

  const Model& m_;
  const Config& c_;
  ThreadPool pool_;
  int ctx_, n_seqs_, max_batch_;
  std::vector<float> final_norm_;
  std::vector<std::vector<float>> attn_norm_, ffn_norm_;
  std::vector<float> k_cache_, v_cache_;
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_, out_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(model, options);
}

}  // namespace sqz
