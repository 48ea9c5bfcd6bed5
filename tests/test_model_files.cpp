// Readers of model files: dtype conversions, Config, safetensors, HF and llama2.c loaders,
// format dispatch, and every malformed-file case we know of (each must be a format_error
// with a useful message, never a crash). Run: ctest -R test_model_files
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "model/config.h"
#include "model/dtype.h"
#include "model/errors.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

namespace sqz {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- helpers ----------------------------------------------------------------------------

void expect_contains(const std::string& msg, std::initializer_list<std::string> words) {
  for (const std::string& w : words)
    EXPECT_NE(msg.find(w), std::string::npos) << "expected '" << w << "' in: " << msg;
}

// EXPECT_THROW(stmt, format_error), then checks the message for each of the given words.
#define EXPECT_FORMAT_ERROR(stmt, ...)       \
  do {                                       \
    std::string what_;                       \
    EXPECT_THROW(                            \
        {                                    \
          try {                              \
            stmt;                            \
          } catch (const format_error& e_) { \
            what_ = e_.what();               \
            throw;                           \
          }                                  \
        },                                   \
        format_error);                       \
    expect_contains(what_, {__VA_ARGS__});   \
  } while (0)

// A scratch folder removed at the end of the test.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& name) : path(test::temp_path(name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& f) const { return path + "/" + f; }
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(v >> (8 * i));
  return s;
}

// A raw safetensors file: header length (or `len_override`), header text, `n_data` bytes.
std::string raw_st(const std::string& header, size_t n_data, int64_t len_override = -1) {
  uint64_t len = len_override >= 0 ? uint64_t(len_override) : header.size();
  return u64_le(len) + header + std::string(n_data, '\x01');
}

std::string encode(const std::vector<float>& v, DType t) {
  std::string b(v.size() * dtype_size(t), '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::F32) {
      std::memcpy(&b[4 * i], &v[i], 4);
    } else {
      uint16_t h = t == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      std::memcpy(&b[2 * i], &h, 2);
    }
  }
  return b;
}

// ---- synthetic HF checkpoints -----------------------------------------------------------

struct HfSpec {
  int dim = 16, hidden = 24, layers = 2, heads = 4, kv_heads = 2, vocab = 32, seq_len = 64;
  DType dtype = DType::F16;
  bool tied = false;  // tie_word_embeddings and no lm_head tensor
  int shards = 1;
  int head_dim() const { return dim / heads; }
};

struct HfTensors {
  std::vector<std::string> names;  // file order
  std::map<std::string, std::vector<int64_t>> shape;
  std::map<std::string, std::string> bytes;       // as stored in the file
  std::map<std::string, std::string> meta_bytes;  // q/k in Meta's interleaved layout
};

// HF's conversion-script permute, written literally on the 4-d view:
//   out = w.view(n_heads, hd/2, 2, cols).transpose(1, 2).reshape(rows, cols)
// out[h][a][b] = w[h][b][a]; flattened rows: out row (h*2 + a)*(hd/2) + b = in row
// (h*(hd/2) + b)*2 + a.
std::string hf_permute(const std::string& w, int n_heads, int hd, size_t row_bytes) {
  std::string out(w.size(), '\0');
  for (int h = 0; h < n_heads; ++h)
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < hd / 2; ++b) {
        size_t out_row = size_t(h * 2 + a) * (hd / 2) + b;
        size_t in_row = size_t(h * (hd / 2) + b) * 2 + a;
        std::memcpy(&out[out_row * row_bytes], &w[in_row * row_bytes], row_bytes);
      }
  return out;
}

HfTensors make_hf_tensors(const HfSpec& s, uint32_t seed) {
  HfTensors t;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (float& x : v) x = norm ? 1.0f + nd(rng) : nd(rng);
    t.names.push_back(name);
    t.shape[name] = shape;
    t.bytes[name] = encode(v, s.dtype);
  };
  const int64_t q_dim = int64_t(s.heads) * s.head_dim(),
                kv_dim = int64_t(s.kv_heads) * s.head_dim();
  add("model.embed_tokens.weight", {s.vocab, s.dim}, false);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.dim}, true);
    add(hf_linear_name(l, "q_proj"), {q_dim, s.dim}, false);
    add(hf_linear_name(l, "k_proj"), {kv_dim, s.dim}, false);
    add(hf_linear_name(l, "v_proj"), {kv_dim, s.dim}, false);
    add(hf_linear_name(l, "o_proj"), {s.dim, q_dim}, false);
    add(p + "post_attention_layernorm.weight", {s.dim}, true);
    add(hf_linear_name(l, "gate_proj"), {s.hidden, s.dim}, false);
    add(hf_linear_name(l, "up_proj"), {s.hidden, s.dim}, false);
    add(hf_linear_name(l, "down_proj"), {s.dim, s.hidden}, false);
    // The random q/k are taken as Meta's layout; the file gets HF's permutation of them.
    const size_t row_bytes = size_t(s.dim) * dtype_size(s.dtype);
    for (auto [which, n_heads] : {std::pair{"q_proj", s.heads}, std::pair{"k_proj", s.kv_heads}}) {
      const std::string name = hf_linear_name(l, which);
      t.meta_bytes[name] = t.bytes[name];
      t.bytes[name] = hf_permute(t.bytes[name], n_heads, s.head_dim(), row_bytes);
    }
  }
  add("model.norm.weight", {s.dim}, true);
  if (!s.tied) add("lm_head.weight", {s.vocab, s.dim}, false);
  return t;
}

// A transformers-5 style config.json (theta under rope_parameters).
json hf_config(const HfSpec& s) {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", s.dim},
              {"intermediate_size", s.hidden},
              {"num_hidden_layers", s.layers},
              {"num_attention_heads", s.heads},
              {"num_key_value_heads", s.kv_heads},
              {"head_dim", s.head_dim()},
              {"vocab_size", s.vocab},
              {"max_position_embeddings", s.seq_len},
              {"rms_norm_eps", 1e-5},
              {"rope_parameters", {{"rope_theta", 500000.0}, {"rope_type", "default"}}},
              {"hidden_act", "silu"},
              {"attention_bias", false},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"pad_token_id", nullptr},
              {"tie_word_embeddings", s.tied}};
}

void write_hf(const std::string& dir, const HfSpec& s, const HfTensors& t, const json& cfg) {
  write_file(dir + "/config.json", cfg.dump(2));
  auto to_write = [&](const std::string& name) {
    const std::string& b = t.bytes.at(name);
    return TensorToWrite{name, s.dtype, t.shape.at(name), b.data(), b.size()};
  };
  if (s.shards == 1) {
    std::vector<TensorToWrite> all;
    for (const std::string& n : t.names) all.push_back(to_write(n));
    write_safetensors(dir + "/model.safetensors", all, {{"format", "pt"}});
    return;
  }
  json weight_map = json::object();
  const size_t per_shard = (t.names.size() + s.shards - 1) / s.shards;
  for (int k = 0; k < s.shards; ++k) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, s.shards);
    std::vector<TensorToWrite> part;
    for (size_t i = k * per_shard; i < std::min(t.names.size(), (k + 1) * per_shard); ++i) {
      part.push_back(to_write(t.names[i]));
      weight_map[t.names[i]] = file;
    }
    write_safetensors(dir + "/" + file, part, {{"format", "pt"}});
  }
  write_file(dir + "/model.safetensors.index.json",
             json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2));
}

bool same_bytes(const void* data, const std::string& expected) {
  return std::memcmp(data, expected.data(), expected.size()) == 0;
}

void check_hf_model(const Model& m, const HfSpec& s, const HfTensors& t) {
  const Config& c = m.config;
  EXPECT_EQ(m.format, "hf");
  EXPECT_EQ(c.dim, s.dim);
  EXPECT_EQ(c.hidden_dim, s.hidden);
  EXPECT_EQ(c.n_layers, s.layers);
  EXPECT_EQ(c.n_heads, s.heads);
  EXPECT_EQ(c.n_kv_heads, s.kv_heads);
  EXPECT_EQ(c.head_dim, s.head_dim());
  EXPECT_EQ(c.vocab_size, s.vocab);
  EXPECT_EQ(c.seq_len, s.seq_len);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.shared_classifier, s.tied);
  ASSERT_EQ(int(m.layers.size()), s.layers);

  EXPECT_EQ(m.tok_embeddings.dtype, s.dtype);
  EXPECT_TRUE(same_bytes(m.tok_embeddings.data, t.bytes.at("model.embed_tokens.weight")));
  EXPECT_TRUE(same_bytes(m.final_norm.data, t.bytes.at("model.norm.weight")));
  for (int l = 0; l < s.layers; ++l) {
    const LayerWeights& L = m.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_TRUE(same_bytes(L.attn_norm.data, t.bytes.at(p + "input_layernorm.weight")));
    EXPECT_TRUE(same_bytes(L.ffn_norm.data, t.bytes.at(p + "post_attention_layernorm.weight")));
    // q/k come back in Meta's layout: the inverse of HF's permute.
    EXPECT_TRUE(same_bytes(L.wq.data, t.meta_bytes.at(hf_linear_name(l, "q_proj")))) << l;
    EXPECT_TRUE(same_bytes(L.wk.data, t.meta_bytes.at(hf_linear_name(l, "k_proj")))) << l;
    const std::pair<const LinearWeight*, const char*> plain[] = {{&L.wv, "v_proj"},
                                                                 {&L.wo, "o_proj"},
                                                                 {&L.w_gate, "gate_proj"},
                                                                 {&L.w_up, "up_proj"},
                                                                 {&L.w_down, "down_proj"}};
    for (auto [w, which] : plain) {
      const std::string name = hf_linear_name(l, which);
      EXPECT_EQ(w->name, name);
      EXPECT_EQ(w->kind, WeightKind::DENSE);
      EXPECT_EQ(w->dtype, s.dtype);
      EXPECT_EQ(std::vector<int64_t>({w->rows, w->cols}), t.shape.at(name));
      EXPECT_TRUE(same_bytes(w->data, t.bytes.at(name))) << name;
    }
  }
  EXPECT_EQ(m.classifier.rows, s.vocab);
  EXPECT_EQ(m.classifier.cols, s.dim);
  if (s.tied) {
    EXPECT_EQ(m.classifier.data, static_cast<const void*>(m.tok_embeddings.data));
  } else {
    EXPECT_TRUE(same_bytes(m.classifier.data, t.bytes.at("lm_head.weight")));
  }
  EXPECT_EQ(int(m.linears().size()), 7 * s.layers);
}

// ---- synthetic llama2.c checkpoints -----------------------------------------------------

struct L2cSpec {
  int dim = 16, hidden = 40, layers = 2, heads = 4, kv_heads = 2, vocab = 24, seq_len = 32;
  bool shared = true;
};

struct L2cTensors {
  std::vector<float> emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq, wcls;
};

L2cTensors make_l2c(const L2cSpec& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  auto rnd = [&](size_t n, float base) {
    std::vector<float> v(n);
    for (float& x : v) x = base + nd(rng);
    return v;
  };
  const size_t L = s.layers, dim = s.dim, hd = dim / s.heads, kv = hd * s.kv_heads;
  L2cTensors t;
  t.emb = rnd(s.vocab * dim, 0);
  t.rms_att = rnd(L * dim, 1);
  t.wq = rnd(L * dim * dim, 0);
  t.wk = rnd(L * kv * dim, 0);
  t.wv = rnd(L * kv * dim, 0);
  t.wo = rnd(L * dim * dim, 0);
  t.rms_ffn = rnd(L * dim, 1);
  t.w1 = rnd(L * s.hidden * dim, 0);
  t.w2 = rnd(L * dim * s.hidden, 0);
  t.w3 = rnd(L * s.hidden * dim, 0);
  t.rms_final = rnd(dim, 1);
  t.freq = rnd(s.seq_len * hd, 0);
  if (!s.shared) t.wcls = rnd(s.vocab * dim, 0);
  return t;
}

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string i32s(std::initializer_list<int32_t> v) {
  std::string s;
  for (int32_t x : v) s.append(reinterpret_cast<const char*>(&x), 4);
  return s;
}

std::string l2c_bytes(const L2cSpec& s, const L2cTensors& t, bool v1) {
  std::string b;
  if (v1) {
    b = i32s({0x616b3432, 1, s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.vocab, s.seq_len});
    b += char(s.shared ? 1 : 0);
    b.resize(256, '\0');
    for (auto* v : {&t.rms_att, &t.rms_ffn, &t.rms_final, &t.emb, &t.wq, &t.wk, &t.wv, &t.wo, &t.w1,
                    &t.w2, &t.w3})
      b += floats(*v);
  } else {
    b = i32s(
        {s.dim, s.hidden, s.layers, s.heads, s.kv_heads, s.shared ? s.vocab : -s.vocab, s.seq_len});
    for (auto* v : {&t.emb, &t.rms_att, &t.wq, &t.wk, &t.wv, &t.wo, &t.rms_ffn, &t.w1, &t.w2, &t.w3,
                    &t.rms_final, &t.freq})
      b += floats(*v);  // freq holds real and imaginary halves back to back
  }
  if (!s.shared) b += floats(t.wcls);
  return b;
}

// Every weight of two models is byte-identical (same config assumed).
void expect_same_weights(const Model& a, const Model& b) {
  auto same_view = [](const TensorView& x, const TensorView& y) {
    return x.n_bytes == y.n_bytes && x.dtype == y.dtype &&
           std::memcmp(x.data, y.data, x.n_bytes) == 0;
  };
  EXPECT_TRUE(same_view(a.tok_embeddings, b.tok_embeddings));
  EXPECT_TRUE(same_view(a.final_norm, b.final_norm));
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    EXPECT_TRUE(same_view(a.layers[l].attn_norm, b.layers[l].attn_norm)) << l;
    EXPECT_TRUE(same_view(a.layers[l].ffn_norm, b.layers[l].ffn_norm)) << l;
  }
  auto la = a.linears(), lb = b.linears();
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    ASSERT_EQ(la[i]->n_bytes(), lb[i]->n_bytes()) << la[i]->name;
    EXPECT_EQ(la[i]->name, lb[i]->name);
    EXPECT_EQ(std::memcmp(la[i]->data, lb[i]->data, size_t(la[i]->n_bytes())), 0) << la[i]->name;
  }
  ASSERT_EQ(a.classifier.n_bytes(), b.classifier.n_bytes());
  EXPECT_EQ(std::memcmp(a.classifier.data, b.classifier.data, size_t(a.classifier.n_bytes())), 0);
}

// ---- dtype ------------------------------------------------------------------------------

TEST(DType, NamesAndSizes) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I16, DType::U16,
                  DType::U8, DType::I64, DType::U32, DType::F64}) {
    DType back;
    ASSERT_TRUE(dtype_from_name(dtype_name(t), &back)) << dtype_name(t);
    EXPECT_EQ(back, t);
  }
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  DType d;
  EXPECT_FALSE(dtype_from_name("F8", &d));
  EXPECT_FALSE(dtype_from_name("f32", &d));
  EXPECT_TRUE(dtype_is_float(DType::F64));
  EXPECT_FALSE(dtype_is_float(DType::U8));
}

TEST(DType, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      EXPECT_NE((h & 0x3ffu), 0u);
    } else {
      EXPECT_EQ(f32_to_f16(f), h) << h;
    }
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  // Round to nearest, ties to even.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie between max and 2^16 -> inf
  EXPECT_EQ(f32_to_f16(-1e9f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);                          // tie 1.5 ulp -> 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);  // -> normal
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(-1e-30f), 0x8000);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
}

#if defined(__FLT16_MAX__)
// The compiler's _Float16 conversion is IEEE round-to-nearest-even: compare on random bits.
TEST(DType, F16MatchesCompiler) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    _Float16 h = static_cast<_Float16>(f);
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    ASSERT_EQ(f32_to_f16(f), bits) << std::hexfloat << f;
  }
}
#endif

TEST(DType, BF16) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  float tie_down, tie_up;
  uint32_t a = 0x3f808000u, b = 0x3f818000u;  // exactly halfway, even below / odd below
  std::memcpy(&tie_down, &a, 4);
  std::memcpy(&tie_up, &b, 4);
  EXPECT_EQ(f32_to_bf16(tie_down), 0x3f80);
  EXPECT_EQ(f32_to_bf16(tie_up), 0x3f82);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  uint32_t nan_low = 0x7f800001u;  // a NaN whose payload would round away
  float n;
  std::memcpy(&n, &nan_low, 4);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(n))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_bf16(f), h);
    }
  }
  EXPECT_TRUE(bf16_bits_finite(0xff7f));
  EXPECT_FALSE(bf16_bits_finite(0xff80));
  EXPECT_FALSE(f16_bits_finite(0x7e00));
}

TEST(DType, ConvertToF32) {
  const uint16_t h[3] = {0x3c00, 0xc000, 0x0001};
  float out[3];
  convert_to_f32(DType::F16, h, out, 3);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));
  const uint16_t bf[2] = {0x3f80, 0x4040};
  convert_to_f32(DType::BF16, bf, out, 2);
  EXPECT_EQ(out[1], 3.0f);
  const double d[2] = {0.5, -1e300};
  convert_to_f32(DType::F64, d, out, 2);
  EXPECT_EQ(out[0], 0.5f);
  EXPECT_TRUE(std::isinf(out[1]));
  const float f[2] = {1.5f, 2.5f};
  convert_to_f32(DType::F32, f, out, 2);
  EXPECT_EQ(out[1], 2.5f);
  int32_t ints[1] = {1};
  EXPECT_FORMAT_ERROR(convert_to_f32(DType::I32, ints, out, 1), "I32");
}

// ---- Config -----------------------------------------------------------------------------

Config small_config() {
  Config c;
  c.dim = 64;
  c.hidden_dim = 172;
  c.n_layers = 5;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 512;
  c.seq_len = 512;
  return c;
}

TEST(Config, ValidateMessages) {
  EXPECT_NO_THROW(small_config().validate("x"));
  Config c = small_config();
  c.n_kv_heads = 3;
  EXPECT_FORMAT_ERROR(c.validate("model.bin"),
                      "model.bin: config: n_kv_heads = 3 does not divide n_heads = 8");
  c = small_config();
  c.dim = 0;
  EXPECT_FORMAT_ERROR(c.validate("m"), "dim = 0", "positive");
  c = small_config();
  c.head_dim = 7;
  EXPECT_FORMAT_ERROR(c.validate("m"), "head_dim = 7", "even");
  c = small_config();
  c.rope_theta = NAN;
  EXPECT_FORMAT_ERROR(c.validate("m"), "rope_theta");
  c = small_config();
  c.norm_eps = -1;
  EXPECT_FORMAT_ERROR(c.validate("m"), "norm_eps");
  c = small_config();
  c.eos_id = 512;
  EXPECT_FORMAT_ERROR(c.validate("m"), "eos_id = 512", "[0, 512)");
  c = small_config();
  c.vocab_size = 1 << 30;
  EXPECT_FORMAT_ERROR(c.validate("m"), "vocab_size", "implausibly large");
  c = small_config();
  c.n_kv_heads = 16;
  EXPECT_FORMAT_ERROR(c.validate("m"), "n_kv_heads = 16 exceeds n_heads = 8");
}

TEST(Config, JsonRoundTrip) {
  Config c = small_config();
  c.rope_theta = 500000.0f;
  c.norm_eps = 1e-5f;
  c.bos_id = 3;
  c.shared_classifier = true;
  std::string text = c.to_json();
  EXPECT_NE(text.find("\"norm_eps\":1e-05"), std::string::npos) << text;
  Config d = Config::from_json(text, "meta");
  EXPECT_EQ(d.dim, c.dim);
  EXPECT_EQ(d.hidden_dim, c.hidden_dim);
  EXPECT_EQ(d.n_layers, c.n_layers);
  EXPECT_EQ(d.n_heads, c.n_heads);
  EXPECT_EQ(d.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(d.head_dim, c.head_dim);
  EXPECT_EQ(d.vocab_size, c.vocab_size);
  EXPECT_EQ(d.seq_len, c.seq_len);
  EXPECT_EQ(d.rope_theta, c.rope_theta);
  EXPECT_EQ(d.norm_eps, c.norm_eps);
  EXPECT_EQ(d.bos_id, 3);
  EXPECT_TRUE(d.shared_classifier);

  EXPECT_FORMAT_ERROR(Config::from_json("{", "meta"), "meta: config:", "not valid JSON");
  EXPECT_FORMAT_ERROR(Config::from_json("[1]", "meta"), "expected a JSON object");
  json j = json::parse(text);
  j.erase("n_layers");
  EXPECT_FORMAT_ERROR(Config::from_json(j.dump(), "meta"), "missing field 'n_layers'");
  j = json::parse(text);
  j["dim"] = "64";
  EXPECT_FORMAT_ERROR(Config::from_json(j.dump(), "meta"), "'dim'", "expected an integer");
  j = json::parse(text);
  j["dim"] = 1e20;
  EXPECT_FORMAT_ERROR(Config::from_json(j.dump(), "meta"), "'dim'");
  j = json::parse(text);
  j["n_kv_heads"] = 3;
  EXPECT_FORMAT_ERROR(Config::from_json(j.dump(), "meta"), "n_kv_heads = 3 does not divide");
}

// ---- mapped files and safetensors -------------------------------------------------------

TEST(MappedFile, EmptyAndMissing) {
  TempDir dir("mapped");
  write_file(dir / "empty", "");
  MappedFile empty(dir / "empty");
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_EQ(empty.data(), nullptr);
  write_file(dir / "abc", "abc");
  MappedFile abc(dir / "abc");
  ASSERT_EQ(abc.size(), 3u);
  EXPECT_EQ(std::memcmp(abc.data(), "abc", 3), 0);
  EXPECT_FORMAT_ERROR(MappedFile(dir / "nope"), "nope", "No such file");
  EXPECT_FORMAT_ERROR(MappedFile(dir.path), "directory");
}

TEST(SafeTensors, WriteThenRead) {
  TempDir dir("st_rw");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {0x3c00, 0x4000, 0x4200};
  std::vector<uint8_t> u = {9, 8, 7, 6, 5};
  const std::string p = dir / "x.safetensors";
  write_safetensors(p,
                    {{"a", DType::F32, {2, 3}, a.data(), 24},
                     {"b.h", DType::F16, {3}, b.data(), 6},
                     {"empty", DType::I32, {0}, nullptr, 0},
                     {"u", DType::U8, {5}, u.data(), 5}},
                    {{"sqz.format_version", "1"}, {"note", "hi \"there\""}});
  EXPECT_FALSE(test::file_exists(p + ".tmp"));
  std::string raw = test::read_file(p);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // header padded so the data section is 8-byte aligned
  EXPECT_EQ(raw[8], '{');
  EXPECT_EQ(raw.size(), 8 + n + 24 + 6 + 5);

  SafeTensorsFile f(p);
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("note"), "hi \"there\"");
  EXPECT_EQ(f.metadata().at("sqz.format_version"), "1");
  const TensorView& ta = f.get("a");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape_str(), "[2, 3]");
  EXPECT_EQ(ta.n_elems(), 6);
  EXPECT_EQ(std::memcmp(ta.data, a.data(), 24), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta.data) % 8, 0u);
  EXPECT_EQ(std::memcmp(f.get("b.h").data, b.data(), 6), 0);
  EXPECT_EQ(f.get("empty").n_elems(), 0);
  EXPECT_EQ(f.get("empty").n_bytes, 0u);
  EXPECT_EQ(std::memcmp(f.get("u").data, u.data(), 5), 0);
  EXPECT_FORMAT_ERROR(f.get("zz"), "no tensor 'zz'");

  // Writer-side checks.
  EXPECT_FORMAT_ERROR(write_safetensors(dir / "bad", {{"a", DType::F32, {2, 3}, a.data(), 20}}, {}),
                      "'a'", "24 bytes", "n_bytes = 20");
  EXPECT_FORMAT_ERROR(
      write_safetensors(dir / "bad",
                        {{"a", DType::F32, {1}, a.data(), 4}, {"a", DType::F32, {1}, a.data(), 4}},
                        {}),
      "duplicate");
  EXPECT_FORMAT_ERROR(write_safetensors(dir.path + "/no/such/dir/f", {}, {}), "cannot create");
  EXPECT_FALSE(test::file_exists(dir / "bad"));
}

class SafeTensorsMalformed : public ::testing::Test {
 protected:
  TempDir dir{"st_bad"};
  std::string path = dir / "model.safetensors";
  // Writes a raw file and opens it; the caller expects a throw.
  void open(const std::string& bytes) {
    write_file(path, bytes);
    SafeTensorsFile f(path);
  }
};

TEST_F(SafeTensorsMalformed, TooShortAndEmpty) {
  EXPECT_FORMAT_ERROR(open(""), "model.safetensors", "0 bytes", "too short");
  EXPECT_FORMAT_ERROR(open(std::string("\x10\0\0", 3)), "3 bytes", "too short");
}

TEST_F(SafeTensorsMalformed, Truncated) {
  const std::string good = raw_st(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  EXPECT_NO_THROW(open(good));
  EXPECT_FORMAT_ERROR(open(good.substr(0, good.size() - 3)), "tensor 'a'", "[0, 16)",
                      "run past the end of the data section (13 bytes)");
  EXPECT_FORMAT_ERROR(open(good.substr(0, 20)), "header length", "runs past the end");
}

TEST_F(SafeTensorsMalformed, HeaderLength) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_FORMAT_ERROR(open(raw_st(h, 4, h.size() + 5)), "header length", "runs past the end");
  EXPECT_FORMAT_ERROR(open(raw_st(h, 4, int64_t(1) << 40)), "header length 1099511627776",
                      "exceeds the limit");
  EXPECT_FORMAT_ERROR(open(raw_st(h, 4, 0)), "does not start with '{'");
  EXPECT_FORMAT_ERROR(open(raw_st("[" + h + "]", 4)), "does not start with '{'");
}

TEST_F(SafeTensorsMalformed, NotJson) {
  EXPECT_FORMAT_ERROR(open(raw_st("{not json}", 0)), "header is not valid JSON");
  EXPECT_FORMAT_ERROR(open(raw_st("{\"a\":", 0)), "header is not valid JSON");
  EXPECT_FORMAT_ERROR(open(raw_st("{\"a\":1} xx", 0)), "header is not valid JSON");
  EXPECT_FORMAT_ERROR(open(raw_st("{\"a\":[[[[[[[[[[[[1]]]]]]]]]]]}", 0)), "nested deeper");
  EXPECT_FORMAT_ERROR(open(raw_st("{\"a\":\"\xff\xfe\"}", 0)), "not valid JSON");  // bad UTF-8
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  8)),
                      "duplicate key 'a'");
  // Whitespace padding, as the reference writer produces, is fine; an empty header too.
  EXPECT_NO_THROW(open(raw_st("{}      ", 0)));
}

TEST_F(SafeTensorsMalformed, EntryTypes) {
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":5})", 0)), "tensor 'a'", "expected an object");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4)), "tensor 'a'",
                      "missing 'dtype'");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":1,"shape":[1],"data_offsets":[0,4]}})", 4)),
                      "'dtype'", "expected a string");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", 4)),
                      "'shape'", "expected an array");
  EXPECT_FORMAT_ERROR(
      open(raw_st(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)),
      "non-integer dimension");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[1]}})", 4)),
                      "missing 'data_offsets'");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4)),
                      "data_offsets [0]", "expected [begin, end]");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4)),
                      "non-negative");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4)),
                      "end before they begin");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"__metadata__":{"k":1}})", 0)), "__metadata__ key 'k'",
                      "expected a string");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"__metadata__":[1]})", 0)), "__metadata__");
}

TEST_F(SafeTensorsMalformed, DTypeShapeAndByteCount) {
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"w":{"dtype":"F8","shape":[4],"data_offsets":[0,4]}})", 4)),
                      "tensor 'w'", "unknown dtype 'F8'", "F16");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
                      "tensor 'w'", "[3] x F32", "12 bytes", "[0, 8)", "hold 8");
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
                      "tensor 'w'", "negative dimension -2");
  EXPECT_FORMAT_ERROR(
      open(raw_st(R"({"w":{"dtype":"F16","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                  8)),
      "tensor 'w'", "overflows int64");
  EXPECT_FORMAT_ERROR(
      open(
          raw_st(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8)),
      "overflows int64");
  EXPECT_FORMAT_ERROR(
      open(
          raw_st(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8)),
      "too large");
  // A zero dimension is a legal, empty tensor (e.g. an empty CSR column list).
  write_file(path, raw_st(R"({"w":{"dtype":"I32","shape":[0],"data_offsets":[0,0]},)"
                          R"("s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                          4));
  SafeTensorsFile f(path);
  EXPECT_EQ(f.get("w").n_elems(), 0);
  EXPECT_EQ(f.get("s").n_elems(), 1);  // a scalar
}

TEST_F(SafeTensorsMalformed, OffsetsLayout) {
  // overlap: b starts inside a
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                  12)),
                      "tensor 'b': data_offsets [4, 12) overlap tensor 'a' [0, 8)");
  // identical ranges
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                  8)),
                      "overlap");
  // gap between tensors
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                                  20)),
                      "tensor 'b'", "gap of 4 bytes", "tensor 'a' [0, 8)");
  // gap at the start
  EXPECT_FORMAT_ERROR(
      open(raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12)),
      "gap of 4 bytes", "start of the data section");
  // trailing bytes after the last tensor
  EXPECT_FORMAT_ERROR(open(raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12)),
                      "4 bytes of trailing data");
  EXPECT_FORMAT_ERROR(open(raw_st("{}", 3)), "3 bytes of trailing data");
  // out of order in the header is fine as long as the file is tiled
  EXPECT_NO_THROW(open(raw_st(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                              R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                              16)));
}

// ---- HF checkpoints ---------------------------------------------------------------------

struct HfCase {
  const char* name;
  DType dtype;
  int shards;
  bool tied;
};

class HfSynthetic : public ::testing::TestWithParam<HfCase> {};

TEST_P(HfSynthetic, LoadsAndUnpermutesQK) {
  const HfCase& hc = GetParam();
  HfSpec s;
  s.dtype = hc.dtype;
  s.shards = hc.shards;
  s.tied = hc.tied;
  TempDir dir(std::string("hf_") + hc.name);
  HfTensors t = make_hf_tensors(s, 42);
  write_hf(dir.path, s, t, hf_config(s));
  write_file(dir / "tokenizer.model", "not really");

  Model m = load_hf(dir.path);
  check_hf_model(m, s, t);
  EXPECT_EQ(m.tokenizer_path, dir / "tokenizer.model");
  // Every other way of naming the same checkpoint.
  check_hf_model(load_model(dir.path), s, t);
  check_hf_model(load_model(dir / "config.json"), s, t);
  if (s.shards == 1) {
    check_hf_model(load_model(dir / "model.safetensors"), s, t);
  } else {
    check_hf_model(load_model(dir / "model.safetensors.index.json"), s, t);
  }
  const int64_t hd = s.head_dim();
  const int64_t expect_params = int64_t(s.vocab) * s.dim * (s.tied ? 1 : 2) + s.dim +
                                s.layers * (2 * s.dim + 2 * s.heads * hd * s.dim +
                                            2 * s.kv_heads * hd * s.dim + 3 * s.hidden * s.dim);
  EXPECT_EQ(m.n_params(), expect_params);
  EXPECT_EQ(m.n_bytes(), expect_params * int64_t(dtype_size(s.dtype)));
}

INSTANTIATE_TEST_SUITE_P(Variants, HfSynthetic,
                         ::testing::Values(HfCase{"f16", DType::F16, 1, false},
                                           HfCase{"bf16", DType::BF16, 1, false},
                                           HfCase{"f32_2shards", DType::F32, 2, false},
                                           HfCase{"f16_3shards_tied", DType::F16, 3, true},
                                           HfCase{"bf16_tied", DType::BF16, 1, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(HfConfigJson, TopLevelThetaDefaultsAndEosList) {
  HfSpec s;
  TempDir dir("hf_cfg");
  json cfg = hf_config(s);
  cfg.erase("rope_parameters");
  cfg.erase("head_dim");
  cfg.erase("num_key_value_heads");
  s.kv_heads = s.heads;  // default: no GQA
  HfTensors t = make_hf_tensors(s, 1);
  cfg["rope_theta"] = 250000;
  cfg["eos_token_id"] = {2, 5};
  cfg["rope_scaling"] = nullptr;
  write_hf(dir.path, s, t, cfg);
  Model m = load_hf(dir.path);
  EXPECT_EQ(m.config.rope_theta, 250000.0f);
  EXPECT_EQ(m.config.n_kv_heads, s.heads);
  EXPECT_EQ(m.config.head_dim, s.dim / s.heads);
  EXPECT_EQ(m.config.eos_id, 2);
  EXPECT_TRUE(m.tokenizer_path.empty());

  cfg.erase("rope_theta");
  write_hf(dir.path, s, t, cfg);
  EXPECT_EQ(load_hf(dir.path).config.rope_theta, 10000.0f);
}

class HfMalformed : public ::testing::Test {
 protected:
  HfSpec s;
  TempDir dir{"hf_bad"};
  HfTensors t = make_hf_tensors(s, 3);
  json cfg = hf_config(s);
  void write() { write_hf(dir.path, s, t, cfg); }
  void load() { load_model(dir.path); }
  void set_f16(const std::string& name, size_t i, uint16_t bits) {
    std::memcpy(&t.bytes[name][2 * i], &bits, 2);
  }
};

TEST_F(HfMalformed, NanInNormInfInEmbeddings) {
  set_f16("model.layers.1.post_attention_layernorm.weight", 5, 0x7e00);
  write();
  EXPECT_FORMAT_ERROR(load(), "model.safetensors",
                      "tensor 'model.layers.1.post_attention_layernorm.weight'",
                      "element 5 is NaN");
  t = make_hf_tensors(s, 3);
  set_f16("model.embed_tokens.weight", 100, 0xfc00);
  write();
  EXPECT_FORMAT_ERROR(load(), "tensor 'model.embed_tokens.weight'", "element 100 is Inf");
  t = make_hf_tensors(s, 3);
  set_f16("model.norm.weight", 0, 0x7c01);
  write();
  EXPECT_FORMAT_ERROR(load(), "model.norm.weight", "NaN");
}

TEST_F(HfMalformed, BF16NanInNorm) {
  s.dtype = DType::BF16;
  t = make_hf_tensors(s, 3);
  set_f16("model.layers.0.input_layernorm.weight", 2, 0xffc0);
  write();
  EXPECT_FORMAT_ERROR(load(), "model.layers.0.input_layernorm.weight", "element 2 is NaN");
}

TEST_F(HfMalformed, MissingTensor) {
  const std::string name = hf_linear_name(1, "up_proj");
  t.names.erase(std::find(t.names.begin(), t.names.end(), name));
  write();
  EXPECT_FORMAT_ERROR(load(), "missing tensor 'model.layers.1.mlp.up_proj.weight'");
}

TEST_F(HfMalformed, MissingTensorSharded) {
  s.shards = 2;
  const std::string name = "model.layers.0.input_layernorm.weight";
  t.names.erase(std::find(t.names.begin(), t.names.end(), name));
  write();
  EXPECT_FORMAT_ERROR(load(), "model.safetensors.index.json", "missing tensor '" + name + "'");
  // The index names a shard that is not there.
  const json original = json::parse(test::read_file(dir / "model.safetensors.index.json"));
  json index = original;
  index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
  write_file(dir / "model.safetensors.index.json", index.dump());
  EXPECT_FORMAT_ERROR(load(), "model-00009-of-00009.safetensors", "cannot open");
  index["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  write_file(dir / "model.safetensors.index.json", index.dump());
  EXPECT_FORMAT_ERROR(load(), "not a file name inside the checkpoint folder");
  // The index puts a tensor in a shard that lacks it.
  index = original;
  index["weight_map"][name] = "model-00001-of-00002.safetensors";
  write_file(dir / "model.safetensors.index.json", index.dump());
  EXPECT_FORMAT_ERROR(load(), "weight_map puts tensor '" + name + "'", "does not contain it");
}

TEST_F(HfMalformed, WrongShapeAndDType) {
  const std::string name = hf_linear_name(0, "down_proj");
  t.shape[name] = {s.hidden, s.dim};
  write();
  EXPECT_FORMAT_ERROR(load(), "tensor 'model.layers.0.mlp.down_proj.weight'", "expected [16, 24]",
                      "found [24, 16]");
  t = make_hf_tensors(s, 3);
  // Same bytes, relabelled as I16: a dtype the engine does not run.
  write_file(dir / "config.json", cfg.dump());
  std::vector<TensorToWrite> all;
  for (const std::string& n : t.names)
    all.push_back({n, n == "model.norm.weight" ? DType::I16 : DType::F16, t.shape[n],
                   t.bytes[n].data(), t.bytes[n].size()});
  write_safetensors(dir / "model.safetensors", all, {});
  EXPECT_FORMAT_ERROR(load(), "tensor 'model.norm.weight' has dtype I16",
                      "expected F32, F16 or BF16");
}

TEST_F(HfMalformed, BadConfigValues) {
  write();
  auto with = [&](const char* key, json value) {
    json c = cfg;
    if (value.is_discarded())
      c.erase(key);
    else
      c[key] = value;
    write_file(dir / "config.json", c.dump());
  };
  const json erase = json(json::value_t::discarded);
  with("num_key_value_heads", 3);
  EXPECT_FORMAT_ERROR(load(), "config.json: config: n_kv_heads = 3 does not divide n_heads = 4");
  with("hidden_size", -5);
  EXPECT_FORMAT_ERROR(load(), "config.json", "dim = -5");
  with("hidden_size", "512");
  EXPECT_FORMAT_ERROR(load(), "'hidden_size'", "expected an integer");
  with("hidden_size", erase);
  EXPECT_FORMAT_ERROR(load(), "missing 'hidden_size'");
  with("model_type", "gpt2");
  EXPECT_FORMAT_ERROR(load(), "model_type 'gpt2' is not supported");
  with("rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}});
  EXPECT_FORMAT_ERROR(load(), "rope_scaling type 'linear' is not supported");
  with("rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 10000.0}});
  EXPECT_FORMAT_ERROR(load(), "rope_parameters type 'yarn' is not supported");
  with("rms_norm_eps", 0);
  EXPECT_FORMAT_ERROR(load(), "norm_eps");
  with("bos_token_id", 99);
  EXPECT_FORMAT_ERROR(load(), "bos_id = 99", "outside the vocabulary");
  with("head_dim", 5);
  EXPECT_FORMAT_ERROR(load(), "head_dim = 5");
  with("attention_bias", true);
  EXPECT_FORMAT_ERROR(load(), "attention_bias", "no biases");
  with("hidden_act", "gelu");
  EXPECT_FORMAT_ERROR(load(), "hidden_act");
  with("sliding_window", 16);
  EXPECT_FORMAT_ERROR(load(), "sliding_window = 16");
  with("vocab_size", 33);  // consistent config, but the tensors disagree
  EXPECT_FORMAT_ERROR(load(), "model.embed_tokens.weight", "expected [33, 16]", "found [32, 16]");
  write_file(dir / "config.json", "{\"model_type\": ");
  EXPECT_FORMAT_ERROR(load(), "config.json", "not valid JSON");
  fs::remove(dir / "config.json");
  EXPECT_FORMAT_ERROR(load(), "no config.json");
}

TEST_F(HfMalformed, NoWeights) {
  write();
  fs::remove(dir / "model.safetensors");
  EXPECT_FORMAT_ERROR(load(), "no model.safetensors or model.safetensors.index.json");
}

// ---- llama2.c ---------------------------------------------------------------------------

TEST(Llama2c, SyntheticLegacyAndV1Agree) {
  for (bool shared : {true, false}) {
    L2cSpec s;
    s.shared = shared;
    L2cTensors t = make_l2c(s, 11);
    TempDir dir("l2c");
    write_file(dir / "legacy.bin", l2c_bytes(s, t, false));
    write_file(dir / "v1.bin", l2c_bytes(s, t, true));
    Model a = load_model(dir / "legacy.bin");
    Model b = load_model(dir / "v1.bin");
    EXPECT_EQ(a.format, "llama2c");
    EXPECT_EQ(b.format, "llama2c-v1");
    for (const Model* m : {&a, &b}) {
      EXPECT_EQ(m->config.dim, s.dim);
      EXPECT_EQ(m->config.hidden_dim, s.hidden);
      EXPECT_EQ(m->config.n_kv_heads, s.kv_heads);
      EXPECT_EQ(m->config.head_dim, s.dim / s.heads);
      EXPECT_EQ(m->config.vocab_size, s.vocab);
      EXPECT_EQ(m->config.shared_classifier, shared);
      // Per-layer views land on the right slices of the stacked arrays.
      const size_t kv = size_t(s.dim / s.heads) * s.kv_heads;
      EXPECT_EQ(std::memcmp(m->layers[1].wk.data, t.wk.data() + kv * s.dim, kv * s.dim * 4), 0);
      EXPECT_EQ(std::memcmp(m->layers[1].w_down.data, t.w2.data() + size_t(s.dim) * s.hidden,
                            size_t(s.dim) * s.hidden * 4),
                0);
      EXPECT_EQ(std::memcmp(m->layers[1].ffn_norm.data, t.rms_ffn.data() + s.dim, s.dim * 4), 0);
      EXPECT_EQ(std::memcmp(m->final_norm.data, t.rms_final.data(), s.dim * 4), 0);
      const float* cls = shared ? t.emb.data() : t.wcls.data();
      EXPECT_EQ(std::memcmp(m->classifier.data, cls, size_t(s.vocab) * s.dim * 4), 0);
    }
    expect_same_weights(a, b);
  }
}

TEST(Llama2c, Malformed) {
  L2cSpec s;
  L2cTensors t = make_l2c(s, 5);
  TempDir dir("l2c_bad");
  const std::string legacy = l2c_bytes(s, t, false), v1 = l2c_bytes(s, t, true);
  const std::string p = dir / "m.bin";
  write_file(p, legacy + "abcd");
  EXPECT_FORMAT_ERROR(load_model(p),
                      "m.bin: file is " + std::to_string(legacy.size() + 4) + " bytes, expected " +
                          std::to_string(legacy.size()),
                      "dim 16", "2 layers", "4 heads", "2 kv heads", "vocab 24");
  write_file(p, legacy.substr(0, legacy.size() - 4));
  EXPECT_FORMAT_ERROR(load_llama2c(p), "truncated?");
  write_file(p, v1.substr(0, v1.size() - 8));
  EXPECT_FORMAT_ERROR(load_model(p), "expected " + std::to_string(v1.size()), "llama2.c v1");
  write_file(p, v1.substr(0, 100));
  EXPECT_FORMAT_ERROR(load_model(p), "too short", "v1 header");
  std::string bad = v1;
  bad[4] = 2;  // version 2 is the int8 export
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_model(p), "llama2.c version 2 is not supported");
  bad = v1;
  bad[8 + 28] = 7;
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_model(p), "shared-classifier flag is 7");
  bad = v1;
  std::memcpy(&bad[8 + 12], i32s({0}).data(), 4);  // n_heads = 0
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_model(p), "n_heads = 0");
  bad = legacy;
  std::memcpy(&bad[16], i32s({3}).data(), 4);  // n_kv_heads = 3 with n_heads = 4
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_llama2c(p), "n_kv_heads = 3 does not divide n_heads = 4");
  bad = legacy;
  std::memcpy(&bad[0], i32s({999999}).data(), 4);  // dim not divisible by n_heads
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_llama2c(p), "dim = 999999 is not divisible by n_heads = 4");
  bad = legacy;
  std::memcpy(&bad[0], i32s({1 << 24}).data(), 4);
  write_file(p, bad);
  EXPECT_FORMAT_ERROR(load_llama2c(p), "dim = 16777216", "not a llama2.c checkpoint?");
  // NaN in a norm of an otherwise valid file.
  L2cTensors tn = t;
  tn.rms_att[s.dim + 3] = NAN;
  write_file(p, l2c_bytes(s, tn, false));
  EXPECT_FORMAT_ERROR(load_model(p), "model.layers.1.input_layernorm.weight", "element 3 is NaN");
  // Neither format: load_model lists what it tried.
  write_file(p, std::string(64, '\xee'));
  EXPECT_FORMAT_ERROR(load_model(p), "unrecognised model file", "llama2.c v1", "safetensors",
                      "llama2.c legacy");
  EXPECT_FORMAT_ERROR(load_model(dir / "missing.bin"), "missing.bin", "cannot open");
}

// ---- shared assets ----------------------------------------------------------------------

TEST(Stories260K, LegacyAndV1) {
  SQZ_SHARED_ASSET(legacy_path, "models/stories260K/stories260K.bin");
  SQZ_SHARED_ASSET(v1_path, "models/stories260K/stories260K_v1.bin");
  Model a = load_model(legacy_path);
  Model b = load_model(v1_path);
  EXPECT_EQ(a.format, "llama2c");
  EXPECT_EQ(b.format, "llama2c-v1");
  for (const Model* m : {&a, &b}) {
    const Config& c = m->config;
    EXPECT_EQ(c.dim, 64);
    EXPECT_EQ(c.hidden_dim, 172);
    EXPECT_EQ(c.n_layers, 5);
    EXPECT_EQ(c.n_heads, 8);
    EXPECT_EQ(c.n_kv_heads, 4);
    EXPECT_EQ(c.head_dim, 8);
    EXPECT_EQ(c.vocab_size, 512);
    EXPECT_EQ(c.seq_len, 512);
    EXPECT_EQ(c.rope_theta, 10000.0f);
    EXPECT_EQ(c.norm_eps, 1e-5f);
    EXPECT_TRUE(c.shared_classifier);
    EXPECT_EQ(m->n_params(), 260032);
    EXPECT_EQ(m->n_bytes(), 260032 * 4);
    EXPECT_EQ(m->classifier.data, static_cast<const void*>(m->tok_embeddings.data));
    EXPECT_EQ(m->layers[4].wk.rows, 32);
    EXPECT_EQ(m->layers[4].w_down.cols, 172);
  }
  expect_same_weights(a, b);
}

TEST(Stories260K, WrongSize) {
  SQZ_SHARED_ASSET(legacy_path, "models/stories260K/stories260K.bin");
  TempDir dir("stories_bad");
  std::string bytes = test::read_file(legacy_path);
  write_file(dir / "s.bin", bytes.substr(0, bytes.size() - 100));
  EXPECT_FORMAT_ERROR(load_model(dir / "s.bin"), "file is 1056440 bytes, expected 1056540",
                      "dim 64", "5 layers", "vocab 512");
}

TEST(DocLlama26m, ConfigAndQKPermutation) {
  SQZ_SHARED_ASSET(dir, "models/doc-llama-26m");
  Model m = load_model(dir);
  const Config& c = m.config;
  EXPECT_EQ(m.format, "hf");
  EXPECT_EQ(c.dim, 512);
  EXPECT_EQ(c.hidden_dim, 1376);
  EXPECT_EQ(c.n_layers, 6);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 8000);
  EXPECT_EQ(c.seq_len, 2048);
  EXPECT_EQ(c.rope_theta, 10000.0f);  // from rope_parameters (transformers 5)
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_FALSE(c.shared_classifier);
  EXPECT_EQ(m.n_params(), 25598464);
  EXPECT_EQ(m.n_bytes(), 25598464 * 2);
  EXPECT_EQ(m.tok_embeddings.dtype, DType::F16);
  EXPECT_EQ(m.tokenizer_path, dir + "/tokenizer.model");

  // Meta row h*64 + 2*i + half is HF row h*64 + half*32 + i. Check one row of q (head 1,
  // i = 1, half = 1: Meta row 67, HF row 97) and one of k (head 3, i = 30, half = 0).
  SafeTensorsFile raw(dir + "/model.safetensors");
  const size_t row_bytes = 512 * 2;
  const TensorView& q = raw.get(hf_linear_name(2, "q_proj"));
  const auto* wq = static_cast<const uint8_t*>(m.layers[2].wq.data);
  EXPECT_EQ(std::memcmp(wq + 67 * row_bytes, q.data + 97 * row_bytes, row_bytes), 0);
  EXPECT_NE(std::memcmp(wq + 67 * row_bytes, q.data + 67 * row_bytes, row_bytes), 0);
  const TensorView& k = raw.get(hf_linear_name(5, "k_proj"));
  const auto* wk = static_cast<const uint8_t*>(m.layers[5].wk.data);
  EXPECT_EQ(
      std::memcmp(wk + (3 * 64 + 60) * row_bytes, k.data + (3 * 64 + 30) * row_bytes, row_bytes),
      0);
  // Other linears are stored as they are.
  EXPECT_EQ(
      std::memcmp(m.layers[0].wv.data, raw.get(hf_linear_name(0, "v_proj")).data, 256 * row_bytes),
      0);
  // Loading the safetensors file directly finds config.json beside it.
  EXPECT_EQ(load_model(dir + "/model.safetensors").config.n_layers, 6);
}

// ---- fuzz ---------------------------------------------------------------------------------

// Mutates the header of a valid small checkpoint 500 times (seeded). Every load must either
// succeed or throw format_error: no other exception, no crash.
TEST(Fuzz, SafeTensorsHeaderMutations) {
  HfSpec s;
  s.layers = 1;
  s.vocab = 8;
  TempDir dir("fuzz");
  HfTensors t = make_hf_tensors(s, 9);
  write_hf(dir.path, s, t, hf_config(s));
  const std::string path = dir / "model.safetensors";
  const std::string good = test::read_file(path);
  uint64_t n_header;
  std::memcpy(&n_header, good.data(), 8);
  const size_t header_end = 8 + size_t(n_header);

  std::mt19937 rng(20240601);
  const char interesting[] = "{}[]\",:0123456789-+.eE \\ntfu";
  int n_ok = 0, n_format_error = 0;
  for (int iter = 0; iter < 500; ++iter) {
    std::string b = good;
    const int n_mut = 1 + int(rng() % 3);
    for (int k = 0; k < n_mut; ++k) {
      size_t pos = rng() % std::min(header_end, b.size());
      switch (rng() % 6) {
        case 0:
          b[pos] = char(b[pos] ^ (1u << (rng() % 8)));
          break;  // bit flip
        case 1:
          b[pos] = interesting[rng() % (sizeof interesting - 1)];
          break;
        case 2:
          b[pos] = char(rng());
          break;  // random byte
        case 3:
          b.erase(pos, 1);
          break;  // shift the JSON
        case 4:
          b.insert(pos, 1, interesting[rng() % (sizeof interesting - 1)]);
          break;
        case 5:
          b.resize(rng() % b.size());
          break;  // truncate
      }
      if (b.empty()) break;
    }
    write_file(path, b);
    try {
      SafeTensorsFile f(path);
      load_model(dir.path);
      ++n_ok;
    } catch (const format_error&) {
      ++n_format_error;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << iter << ": unexpected exception: " << e.what();
    }
  }
  EXPECT_EQ(n_ok + n_format_error, 500);
  EXPECT_GT(n_format_error, 400);  // nearly every mutation must be caught
}

}  // namespace
}  // namespace sqz
