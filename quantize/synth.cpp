#include "quantize/synth.h"

#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <vector>

#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "model/dtype.h"
#include "model/errors.h"
#include "model/model.h"
#include "model/packed.h"
#include "quantize/pipeline.h"

namespace sqz {

namespace {

// splitmix64: a fast, seedable generator for bulk random data (one stream per row).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
  float normal() {  // Box-Muller, one value per call is plenty fast here
    double u = std::max(uniform(), 1e-300), v = uniform();
    return float(std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v));
  }
};

struct Storage {
  std::vector<std::shared_ptr<void>> keep;
  template <class T>
  T* alloc(size_t n) {
    auto v = std::make_shared<std::vector<T>>(n);
    keep.push_back(v);
    return v->data();
  }
};

TensorView f16_tensor(Storage& st, const std::string& name, std::vector<int64_t> shape,
                      float scale, float offset, uint64_t seed, ThreadPool& pool) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  uint16_t* p = st.alloc<uint16_t>(size_t(n));
  const int64_t rows = shape[0], cols = n / rows;
  pool.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      Rng g{seed * 1000003 + uint64_t(r)};
      for (int64_t c = 0; c < cols; c++) p[r * cols + c] = f32_to_f16(offset + scale * g.normal());
    }
  });
  TensorView v;
  v.name = name, v.dtype = DType::F16, v.shape = shape;
  v.data = reinterpret_cast<const uint8_t*>(p), v.n_bytes = size_t(n) * 2;
  return v;
}

LinearWeight packed_linear(Storage& st, int rows, int cols, int bits, double pct, uint64_t seed,
                           ThreadPool& pool) {
  LinearWeight w;
  w.rows = rows, w.cols = cols, w.kind = WeightKind::PACKED, w.bits = bits;
  w.row_bytes = packed_row_bytes(cols, bits);
  uint8_t* idx = st.alloc<uint8_t>(size_t(rows) * w.row_bytes);
  uint16_t* lut = st.alloc<uint16_t>(size_t(rows) << bits);
  // Outlier counts first (prefix sums need them), then fill rows in parallel.
  std::vector<int32_t> counts(rows);
  Rng g{seed};
  const double p = pct / 100.0;
  for (int r = 0; r < rows; r++) {
    // Binomial(cols, p) via its normal approximation, clamped to [0, cols].
    double mean = cols * p, sd = std::sqrt(cols * p * (1 - p));
    counts[r] = int32_t(std::clamp<long>(std::lround(mean + sd * g.normal()), 0, cols));
  }
  int32_t* row_ptr = st.alloc<int32_t>(size_t(rows) + 1);
  row_ptr[0] = 0;
  for (int r = 0; r < rows; r++) row_ptr[r + 1] = row_ptr[r] + counts[r];
  const int64_t nnz = row_ptr[rows];
  int32_t* col = st.alloc<int32_t>(size_t(std::max<int64_t>(nnz, 1)));
  uint16_t* val = st.alloc<uint16_t>(size_t(std::max<int64_t>(nnz, 1)));
  const int64_t rb = w.row_bytes;
  pool.parallel_for(rows, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> row_idx(cols);
    std::vector<float> c(1 << bits);
    for (int64_t r = b; r < e; r++) {
      Rng rg{seed * 7919 + uint64_t(r)};
      for (int k = 0; k < cols; k++) row_idx[k] = uint8_t(rg.next() & ((1u << bits) - 1));
      pack_indices(row_idx.data(), 1, cols, bits, idx + r * rb);
      for (float& v : c) v = 0.02f * rg.normal();
      std::sort(c.begin(), c.end());
      // fp16 values on a grid, as sqz quantize makes them by default (kernels/lut_grid.h)
      for (float& v : c) v = f16_to_f32(f32_to_f16(v));
      if (lut_grid_used(bits)) snap_lut_grid(c.data(), 1 << bits);
      for (int k = 0; k < (1 << bits); k++) lut[(size_t(r) << bits) + k] = f32_to_f16(c[k]);
      // distinct sorted columns: Floyd's sampling then sort
      std::vector<int32_t> cols_r;
      int need = counts[r];
      for (int j = cols - need; j < cols; j++) {
        int t = int(rg.next() % uint64_t(j + 1));
        if (std::find(cols_r.begin(), cols_r.end(), t) != cols_r.end()) t = j;
        cols_r.push_back(t);
      }
      std::sort(cols_r.begin(), cols_r.end());
      for (int k = 0; k < need; k++) {
        col[row_ptr[r] + k] = cols_r[k];
        val[row_ptr[r] + k] = f32_to_f16(0.1f * rg.normal());
      }
    }
  });
  w.indices = idx, w.lut = lut, w.row_ptr = row_ptr, w.col_idx = col, w.values = val, w.nnz = nnz;
  return w;
}

}  // namespace

const char* synth_shapes() { return "llama-7b, llama-13b, llama-2-7b, llama-2-13b, tiny"; }

Config synth_config(const std::string& shape) {
  Config c;
  if (shape == "llama-7b" || shape == "llama-2-7b") {
    c.dim = 4096, c.hidden_dim = 11008, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 32;
  } else if (shape == "llama-13b" || shape == "llama-2-13b") {
    c.dim = 5120, c.hidden_dim = 13824, c.n_layers = 40, c.n_heads = 40, c.n_kv_heads = 40;
  } else if (shape == "tiny") {  // odd sizes on purpose: no multiple-of-128 anywhere
    c.dim = 200, c.hidden_dim = 520, c.n_layers = 2, c.n_heads = 5, c.n_kv_heads = 5;
  } else {
    throw std::invalid_argument("--shape '" + shape + "' is not one of " + synth_shapes());
  }
  c.head_dim = c.dim / c.n_heads;
  c.vocab_size = 32000;
  c.seq_len = shape.rfind("llama-2", 0) == 0 ? 4096 : 2048;
  return c;
}

void write_synthetic(const SynthOptions& o) {
  Config c = synth_config(o.shape);
  ThreadPool pool(o.n_threads);
  Storage st;
  Model m;
  m.config = c;
  m.format = "sqz";
  m.tokenizer_model = read_bytes(o.tokenizer_path);
  m.tok_embeddings = f16_tensor(st, "tok_embeddings", {c.vocab_size, c.dim}, 0.02f, 0, o.seed, pool);
  m.final_norm = f16_tensor(st, "norm", {c.dim}, 0.05f, 1.0f, o.seed + 1, pool);
  m.classifier.rows = c.vocab_size, m.classifier.cols = c.dim, m.classifier.dtype = DType::F16;
  m.classifier.data = f16_tensor(st, "output", {c.vocab_size, c.dim}, 0.02f, 0, o.seed + 2, pool).data;
  m.layers.resize(c.n_layers);
  uint64_t s = o.seed * 100;
  for (int l = 0; l < c.n_layers; l++) {
    LayerWeights& L = m.layers[l];
    L.attn_norm = f16_tensor(st, "an", {c.dim}, 0.05f, 1.0f, ++s, pool);
    L.ffn_norm = f16_tensor(st, "fn", {c.dim}, 0.05f, 1.0f, ++s, pool);
    L.wq = packed_linear(st, c.q_dim(), c.dim, o.bits, o.outliers_pct, ++s, pool);
    L.wk = packed_linear(st, c.kv_dim(), c.dim, o.bits, o.outliers_pct, ++s, pool);
    L.wv = packed_linear(st, c.kv_dim(), c.dim, o.bits, o.outliers_pct, ++s, pool);
    L.wo = packed_linear(st, c.dim, c.q_dim(), o.bits, o.outliers_pct, ++s, pool);
    L.w_gate = packed_linear(st, c.hidden_dim, c.dim, o.bits, o.outliers_pct, ++s, pool);
    L.w_up = packed_linear(st, c.hidden_dim, c.dim, o.bits, o.outliers_pct, ++s, pool);
    L.w_down = packed_linear(st, c.dim, c.hidden_dim, o.bits, o.outliers_pct, ++s, pool);
  }
  nlohmann::json quant = {{"method", "synthetic"}, {"bits", o.bits}, {"outliers_pct", o.outliers_pct},
                          {"shape", o.shape}, {"seed", o.seed}};
  save_packed(o.out_packed, m, {{"sqz.quant", quant.dump()},
                                {"sqz.provenance", nlohmann::json{{"source", "sqz synth"}}.dump()}});
  if (o.out_fp16_dir.empty()) return;

  // The FP16 twin: an HF folder with the same shapes.
  mkdir(o.out_fp16_dir.c_str(), 0755);
  std::vector<TensorToWrite> t;
  std::vector<TensorView> views;
  views.reserve(size_t(c.n_layers) * 9 + 3);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset) {
    views.push_back(f16_tensor(st, name, shape, scale, offset, ++s, pool));
    const TensorView& v = views.back();
    t.push_back({name, DType::F16, shape, v.data, v.n_bytes});
  };
  add("model.embed_tokens.weight", {c.vocab_size, c.dim}, 0.02f, 0);
  add("model.norm.weight", {c.dim}, 0.05f, 1.0f);
  add("lm_head.weight", {c.vocab_size, c.dim}, 0.02f, 0);
  const char* names[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  const int rows[7] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim, c.hidden_dim, c.hidden_dim, c.dim};
  const int cols[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.hidden_dim};
  for (int l = 0; l < c.n_layers; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {c.dim}, 0.05f, 1.0f);
    add(p + "post_attention_layernorm.weight", {c.dim}, 0.05f, 1.0f);
    for (int i = 0; i < 7; i++) add(hf_linear_name(l, names[i]), {rows[i], cols[i]}, 0.02f, 0);
  }
  write_safetensors(o.out_fp16_dir + "/model.safetensors", t, {{"format", "pt"}});
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                        {"hidden_size", c.dim}, {"intermediate_size", c.hidden_dim},
                        {"num_hidden_layers", c.n_layers}, {"num_attention_heads", c.n_heads},
                        {"num_key_value_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
                        {"max_position_embeddings", c.seq_len}, {"rms_norm_eps", 1e-5},
                        {"rope_theta", 10000.0}, {"bos_token_id", 1}, {"eos_token_id", 2},
                        {"tie_word_embeddings", false}, {"hidden_act", "silu"},
                        {"torch_dtype", "float16"}};
  std::ofstream(o.out_fp16_dir + "/config.json") << cfg.dump(2);
  std::ofstream(o.out_fp16_dir + "/tokenizer.model", std::ios::binary) << m.tokenizer_model;
}

}  // namespace sqz
