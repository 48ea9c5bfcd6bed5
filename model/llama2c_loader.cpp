// llama2.c checkpoints (karpathy/llama2.c), all FP32, q/k already in Meta's interleaved
// RoPE layout. Every tensor is a view into the mapped file; the stacked per-layer arrays
// are sliced into per-layer views.
//
// legacy:  int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//          (vocab_size < 0: separate classifier), then
//          token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim],
//          wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
//          w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
//          freq_cis_real [seq_len, head_dim/2], freq_cis_imag [same], [wcls [vocab, dim]]
// v1:      u32 magic 0x616b3432 ("ak42"), int32 version 1, the 7 int32, u8 shared flag,
//          zero padding to 256 bytes, then
//          rms_att, rms_ffn, rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3, [wcls]
#include <cstring>

#include "model/errors.h"
#include "model/mapped_file.h"
#include "model/model.h"

namespace sqz {

namespace {

constexpr uint32_t kV1Magic = 0x616b3432;
constexpr int64_t kV1HeaderBytes = 256;
constexpr int64_t kLegacyHeaderBytes = 7 * 4;
constexpr int kMaxHeaderValue = 1000000;  // any real llama2.c export is far below this

int32_t read_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Overflow-checked size arithmetic: header values are bounded, but sums of products of
// them are not guaranteed to fit.
struct SizeCalc {
  const std::string& path;
  int64_t mul(int64_t a, int64_t b) const {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
      throw format_error(path + ": llama2.c header: tensor sizes overflow int64");
    return r;
  }
  int64_t add(int64_t a, int64_t b) const {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
      throw format_error(path + ": llama2.c header: tensor sizes overflow int64");
    return r;
  }
};

// Hands out consecutive float arrays of the file, in file order.
struct Cursor {
  const uint8_t* p;
  const float* take(int64_t n_floats) {
    const float* r = reinterpret_cast<const float*>(p);
    p += n_floats * 4;
    return r;
  }
};

TensorView f32_view(const std::string& name, const float* data, std::vector<int64_t> shape) {
  TensorView v;
  v.name = name;
  v.dtype = DType::F32;
  v.shape = std::move(shape);
  v.data = reinterpret_cast<const uint8_t*>(data);
  v.n_bytes = size_t(v.n_elems()) * 4;
  return v;
}

LinearWeight f32_linear(const std::string& name, const float* data, int rows, int cols) {
  LinearWeight w;
  w.name = name;
  w.rows = rows;
  w.cols = cols;
  w.kind = WeightKind::DENSE;
  w.dtype = DType::F32;
  w.data = data;
  return w;
}

std::string layer_name(int l, const char* rest) {
  return "model.layers." + std::to_string(l) + "." + rest;
}

}  // namespace

Model load_llama2c(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  const uint8_t* base = file->data();
  const int64_t size = int64_t(file->size());

  const bool v1 = size >= 4 && uint32_t(read_i32(base)) == kV1Magic;
  const int64_t header_bytes = v1 ? kV1HeaderBytes : kLegacyHeaderBytes;
  if (size < header_bytes)
    throw format_error(path + ": file is " + std::to_string(size) + " bytes, too short for a " +
                       (v1 ? "llama2.c v1 header (256 bytes)" : "llama2.c header (28 bytes)"));
  bool shared = false;
  const uint8_t* h = base;
  if (v1) {
    int32_t version = read_i32(base + 4);
    if (version != 1)
      throw format_error(path + ": llama2.c version " + std::to_string(version) +
                         " is not supported (expected 1, the FP32 export)");
    h = base + 8;
    uint8_t flag = base[8 + 28];
    if (flag > 1)
      throw format_error(path + ": llama2.c v1 header: shared-classifier flag is " +
                         std::to_string(flag) + ", expected 0 or 1");
    shared = flag == 1;
  }
  const char* names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                          "n_kv_heads", "vocab_size", "seq_len"};
  int32_t hv[7];
  for (int i = 0; i < 7; ++i) hv[i] = read_i32(h + 4 * i);
  if (!v1) {
    // Legacy files flag a separate classifier with a negative vocab_size.
    shared = hv[5] > 0;
    if (hv[5] < 0 && hv[5] != INT32_MIN) hv[5] = -hv[5];
  }
  for (int i = 0; i < 7; ++i)
    if (hv[i] <= 0 || hv[i] >= kMaxHeaderValue)
      throw format_error(path + ": llama2.c header: " + names[i] + " = " + std::to_string(hv[i]) +
                         ", expected 1.." + std::to_string(kMaxHeaderValue - 1) +
                         " (not a llama2.c checkpoint?)");

  Config c;
  c.dim = hv[0];
  c.hidden_dim = hv[1];
  c.n_layers = hv[2];
  c.n_heads = hv[3];
  c.n_kv_heads = hv[4];
  c.vocab_size = hv[5];
  c.seq_len = hv[6];
  if (c.dim % c.n_heads != 0)
    throw format_error(path + ": llama2.c header: dim = " + std::to_string(c.dim) +
                       " is not divisible by n_heads = " + std::to_string(c.n_heads));
  c.head_dim = c.dim / c.n_heads;
  c.rope_theta = 10000.0f;  // llama2.c hard-codes both
  c.norm_eps = 1e-5f;
  c.shared_classifier = shared;
  c.validate(path);

  // Expected file size, in floats after the header.
  SizeCalc s{path};
  const int64_t L = c.n_layers, dim = c.dim, hidden = c.hidden_dim, kv_dim = c.kv_dim();
  const int64_t vocab = c.vocab_size;
  int64_t n = s.mul(vocab, dim);                         // embeddings
  n = s.add(n, s.mul(s.mul(L, dim), 2));                 // rms_att, rms_ffn
  n = s.add(n, s.mul(s.mul(L, dim), s.mul(dim, 2)));     // wq, wo
  n = s.add(n, s.mul(s.mul(L, kv_dim), s.mul(dim, 2)));  // wk, wv
  n = s.add(n, s.mul(s.mul(L, hidden), s.mul(dim, 3)));  // w1, w2, w3
  n = s.add(n, dim);                                     // rms_final
  if (!v1) n = s.add(n, s.mul(c.seq_len, c.head_dim));   // freq_cis real + imag, hd/2 each
  if (!shared) n = s.add(n, s.mul(vocab, dim));          // wcls
  const int64_t expected = s.add(header_bytes, s.mul(n, 4));
  if (size != expected)
    throw format_error(path + ": file is " + std::to_string(size) + " bytes, expected " +
                       std::to_string(expected) + " for llama2.c " + (v1 ? "v1 " : "legacy ") +
                       "dim " + std::to_string(c.dim) + ", hidden_dim " +
                       std::to_string(c.hidden_dim) + ", " + std::to_string(c.n_layers) +
                       " layers, " + std::to_string(c.n_heads) + " heads, " +
                       std::to_string(c.n_kv_heads) + " kv heads, vocab " +
                       std::to_string(c.vocab_size) + ", seq_len " + std::to_string(c.seq_len) +
                       (shared ? ", shared classifier" : ", separate classifier") +
                       (size < expected ? " (truncated?)" : ""));

  Cursor cur{base + header_bytes};
  const float *emb, *rms_att, *rms_ffn, *rms_final, *wq, *wk, *wv, *wo, *w1, *w2, *w3;
  if (v1) {
    rms_att = cur.take(L * dim);
    rms_ffn = cur.take(L * dim);
    rms_final = cur.take(dim);
    emb = cur.take(vocab * dim);
  } else {
    emb = cur.take(vocab * dim);
    rms_att = cur.take(L * dim);
  }
  wq = cur.take(L * dim * dim);
  wk = cur.take(L * kv_dim * dim);
  wv = cur.take(L * kv_dim * dim);
  wo = cur.take(L * dim * dim);
  if (!v1) rms_ffn = cur.take(L * dim);
  w1 = cur.take(L * hidden * dim);
  w2 = cur.take(L * dim * hidden);
  w3 = cur.take(L * hidden * dim);
  if (!v1) {
    rms_final = cur.take(dim);
    cur.take(c.seq_len * c.head_dim);  // freq_cis: recomputed by the engine from rope_theta
  }
  const float* wcls = shared ? emb : cur.take(vocab * dim);

  Model m;
  m.path = path;
  m.format = v1 ? "llama2c-v1" : "llama2c";
  m.config = c;
  m.storage.push_back(file);
  // Names follow the HF checkpoint so gradients and tools address every format alike.
  m.tok_embeddings = f32_view("model.embed_tokens.weight", emb, {vocab, dim});
  check_finite(m.tok_embeddings, path);
  m.final_norm = f32_view("model.norm.weight", rms_final, {dim});
  check_finite(m.final_norm, path);
  m.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& lw = m.layers[l];
    lw.attn_norm = f32_view(layer_name(l, "input_layernorm.weight"), rms_att + l * dim, {dim});
    check_finite(lw.attn_norm, path);
    lw.ffn_norm =
        f32_view(layer_name(l, "post_attention_layernorm.weight"), rms_ffn + l * dim, {dim});
    check_finite(lw.ffn_norm, path);
    lw.wq = f32_linear(hf_linear_name(l, "q_proj"), wq + l * dim * dim, c.dim, c.dim);
    lw.wk = f32_linear(hf_linear_name(l, "k_proj"), wk + l * kv_dim * dim, c.kv_dim(), c.dim);
    lw.wv = f32_linear(hf_linear_name(l, "v_proj"), wv + l * kv_dim * dim, c.kv_dim(), c.dim);
    lw.wo = f32_linear(hf_linear_name(l, "o_proj"), wo + l * dim * dim, c.dim, c.dim);
    lw.w_gate =
        f32_linear(hf_linear_name(l, "gate_proj"), w1 + l * hidden * dim, c.hidden_dim, c.dim);
    lw.w_down =
        f32_linear(hf_linear_name(l, "down_proj"), w2 + l * dim * hidden, c.dim, c.hidden_dim);
    lw.w_up = f32_linear(hf_linear_name(l, "up_proj"), w3 + l * hidden * dim, c.hidden_dim, c.dim);
  }
  m.classifier = f32_linear(shared ? "model.embed_tokens.weight" : "lm_head.weight", wcls,
                            c.vocab_size, c.dim);
  return m;
}

}  // namespace sqz
