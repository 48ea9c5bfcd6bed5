// Format dispatch by file contents, and the Model accessors.
#include "model/model.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "model/errors.h"

namespace sqz {

int64_t LinearWeight::n_bytes() const {
  if (kind == WeightKind::DENSE) return int64_t(rows) * cols * int64_t(dtype_size(dtype));
  return int64_t(rows) * row_bytes                   // packed indices
         + int64_t(rows) * (int64_t(1) << bits) * 2  // FP16 LUT
         + (int64_t(rows) + 1) * 4                   // CSR row pointers
         + nnz * (4 + 2);                            // column indices + FP16 values
}

std::vector<LinearWeight*> Model::linears() {
  std::vector<LinearWeight*> out;
  for (LayerWeights& l : layers)
    for (LinearWeight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      out.push_back(w);
  return out;
}

std::vector<const LinearWeight*> Model::linears() const {
  std::vector<const LinearWeight*> out;
  for (const LayerWeights& l : layers)
    for (const LinearWeight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      out.push_back(w);
  return out;
}

int64_t Model::n_params() const {
  int64_t n = tok_embeddings.n_elems() + final_norm.n_elems();
  for (const LayerWeights& l : layers) n += l.attn_norm.n_elems() + l.ffn_norm.n_elems();
  for (const LinearWeight* w : linears()) n += int64_t(w->rows) * w->cols;
  if (!config.shared_classifier) n += int64_t(classifier.rows) * classifier.cols;
  return n;
}

int64_t Model::n_bytes() const {
  int64_t n = int64_t(tok_embeddings.n_bytes + final_norm.n_bytes);
  for (const LayerWeights& l : layers) n += int64_t(l.attn_norm.n_bytes + l.ffn_norm.n_bytes);
  for (const LinearWeight* w : linears()) n += w->n_bytes();
  if (!config.shared_classifier) n += classifier.n_bytes();
  return n;
}

std::string hf_linear_name(int layer, const char* which) {
  const std::string w = which;
  const char* block = nullptr;
  if (w == "q_proj" || w == "k_proj" || w == "v_proj" || w == "o_proj")
    block = "self_attn";
  else if (w == "gate_proj" || w == "up_proj" || w == "down_proj")
    block = "mlp";
  else
    throw std::invalid_argument("hf_linear_name: unknown linear '" + w + "'");
  return "model.layers." + std::to_string(layer) + "." + block + "." + w + ".weight";
}

void check_finite(const TensorView& v, const std::string& file) {
  const int64_t n = v.n_elems();
  auto fail = [&](int64_t i, bool nan) {
    throw format_error(file + ": tensor '" + v.name + "': element " + std::to_string(i) + " is " +
                       (nan ? "NaN" : "Inf") + " (expected finite values)");
  };
  switch (v.dtype) {
    case DType::F32:
      for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, v.data + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) fail(i, (u & 0x7fffffu) != 0);
      }
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        if (!f16_bits_finite(h)) fail(i, (h & 0x3ffu) != 0);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, v.data + 2 * i, 2);
        if (!bf16_bits_finite(h)) fail(i, (h & 0x7fu) != 0);
      }
      return;
    default:
      throw format_error(file + ": tensor '" + v.name + "' has dtype " + dtype_name(v.dtype) +
                         ", expected F32, F16 or BF16");
  }
}

Model load_model(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw format_error(path + ": cannot open: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return load_hf(path);

  uint8_t head[32] = {};
  std::ifstream f(path, std::ios::binary);
  if (!f) throw format_error(path + ": cannot open: " + std::strerror(errno));
  f.read(reinterpret_cast<char*>(head), sizeof head);
  const uint64_t n_read = uint64_t(f.gcount());
  const uint64_t size = uint64_t(st.st_size);
  auto u32 = [&](int off) {
    uint32_t v;
    std::memcpy(&v, head + off, 4);
    return v;
  };

  // llama2.c v1: magic "ak42" as a little-endian u32.
  if (n_read >= 4 && u32(0) == 0x616b3432u) return load_llama2c(path);

  // safetensors: a plausible header length, then the JSON object's '{'.
  uint64_t n_header = 0;
  for (int i = 7; i >= 0 && n_read >= 8; --i) n_header = (n_header << 8) | head[i];
  const bool safetensors = n_read >= 9 && n_header >= 2 && n_header <= size - 8 &&
                           n_header <= SafeTensorsFile::kMaxHeaderBytes && head[8] == '{';
  if (safetensors) {
    SafeTensorsFile st_file(path);
    if (st_file.metadata().count("sqz.format_version")) return load_packed(path);
    return load_hf(path);
  }

  // config.json or model.safetensors.index.json of an HF checkpoint.
  size_t first = 0;
  while (first < n_read && std::strchr(" \t\r\n", head[first]) && head[first]) ++first;
  if (first < n_read && head[first] == '{') return load_hf(path);

  // llama2.c legacy: seven positive int32 (vocab_size may be negative) that fit together.
  std::string legacy_why;
  if (n_read >= 28) {
    int32_t h[7];
    std::memcpy(h, head, 28);
    bool in_range = true;
    for (int i = 0; i < 7; ++i) {
      int64_t v = i == 5 ? std::abs(int64_t(h[i])) : h[i];
      if (v <= 0 || v >= 1000000) in_range = false;
    }
    if (in_range && h[0] % h[3] == 0 && h[3] % h[4] == 0) return load_llama2c(path);
    legacy_why = "header ints dim=" + std::to_string(h[0]) + " hidden_dim=" + std::to_string(h[1]) +
                 " n_layers=" + std::to_string(h[2]) + " n_heads=" + std::to_string(h[3]) +
                 " n_kv_heads=" + std::to_string(h[4]) + " vocab_size=" + std::to_string(h[5]) +
                 " seq_len=" + std::to_string(h[6]) + " are not plausible";
  } else {
    legacy_why = "file is only " + std::to_string(size) + " bytes";
  }
  throw format_error(path +
                     ": unrecognised model file. Tried: HF folder (not a directory); "
                     "llama2.c v1 (no 'ak42' magic); safetensors / packed .sqz (first 8 bytes "
                     "are not a header length followed by '{'); HF config JSON (does not start "
                     "with '{'); llama2.c legacy (" +
                     legacy_why + ")");
}

}  // namespace sqz
