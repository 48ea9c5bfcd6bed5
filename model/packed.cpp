// The packed .sqz format: reader (validates everything before trusting it) and writer.
// Tensor names and metadata are listed in model/packed.h.
#include "model/packed.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "model/errors.h"
#include "model/model.h"

namespace sqz {

namespace {

using json = nlohmann::json;

const char* const kLinearNames[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"};

LinearWeight* linear_slot(LayerWeights& l, int i) {
  LinearWeight* s[7] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_down, &l.w_up};
  return s[i];
}

void linear_shape(const Config& c, int i, int* rows, int* cols) {
  const int r[7] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim, c.hidden_dim, c.dim, c.hidden_dim};
  const int k[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.hidden_dim, c.dim};
  *rows = r[i], *cols = k[i];
}

struct Reader {
  const SafeTensorsFile& f;
  const std::string& path;
  int version;                         // sqz.format_version
  mutable std::set<std::string> used;  // names read, to reject unknown tensors

  [[noreturn]] void fail(const std::string& tensor, const std::string& what) const {
    throw format_error(path + ": tensor '" + tensor + "': " + what);
  }
  const TensorView& get(const std::string& name, DType dtype, std::vector<int64_t> shape) const {
    if (!f.has(name)) throw format_error(path + ": missing tensor '" + name + "'");
    const TensorView& v = f.get(name);
    used.insert(name);
    if (v.dtype != dtype)
      fail(name, std::string("dtype ") + dtype_name(v.dtype) + ", expected " + dtype_name(dtype));
    if (v.shape != shape) {
      TensorView want;
      want.shape = shape;
      fail(name, "shape " + v.shape_str() + ", expected " + want.shape_str());
    }
    return v;
  }
  void finite_f16(const TensorView& v) const {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(v.data);
    for (int64_t i = 0; i < v.n_elems(); i++)
      if (!f16_bits_finite(p[i]))
        fail(v.name, "element " + std::to_string(i) + " is NaN or Inf (expected finite values)");
  }
};

// Packed linear: LUT size gives the bit width; indices, CSR and values are checked whole.
LinearWeight read_linear(const Reader& rd, const std::string& base, int rows, int cols) {
  LinearWeight w;
  w.name = base;
  w.rows = rows, w.cols = cols;
  if (rd.f.has(base + ".weight")) {  // a module kept dense (per-module override)
    const TensorView& v = rd.get(base + ".weight", DType::F16, {rows, cols});
    w.kind = WeightKind::DENSE, w.dtype = DType::F16, w.data = v.data;
    return w;
  }
  if (!rd.f.has(base + ".lut"))
    throw format_error(rd.path + ": missing tensor '" + base + ".lut' (nor a dense '" + base +
                       ".weight')");
  const TensorView& lut = rd.f.get(base + ".lut");
  rd.used.insert(lut.name);
  if (lut.dtype != DType::F16 || lut.shape.size() != 2 || lut.shape[0] != rows)
    rd.fail(lut.name, "expected F16 [" + std::to_string(rows) + ", 2^bits], found " +
                          dtype_name(lut.dtype) + " " + lut.shape_str());
  int bits = 0;
  for (int b : {2, 3, 4})
    if (lut.shape[1] == (1 << b)) bits = b;
  if (!bits)
    rd.fail(lut.name, "LUT has " + std::to_string(lut.shape[1]) +
                          " entries per row, expected 2^bits for bits 2, 3 or 4 (4, 8 or 16)");
  rd.finite_f16(lut);
  if (bits == 3 && rd.version == 1)
    rd.fail(base + ".indices",
            "3-bit indices in the format-version-1 bit layout, which this sqz no longer reads "
            "(version " + std::to_string(kPackedFormatVersion) +
                " changed it); quantize the model again with this sqz");
  const int64_t rb = packed_file_row_bytes(cols, bits);
  const TensorView& idx = rd.get(base + ".indices", DType::U8, {rows, rb});
  const TensorView& rp = rd.get(base + ".row_ptr", DType::I32, {int64_t(rows) + 1});
  const int32_t* row_ptr = reinterpret_cast<const int32_t*>(rp.data);
  if (row_ptr[0] != 0) rd.fail(rp.name, "row_ptr[0] = " + std::to_string(row_ptr[0]) + ", expected 0");
  for (int r = 0; r < rows; r++)
    if (row_ptr[r + 1] < row_ptr[r])
      rd.fail(rp.name, "row pointers decrease at row " + std::to_string(r) + " (" +
                           std::to_string(row_ptr[r]) + " then " + std::to_string(row_ptr[r + 1]) +
                           "), expected non-decreasing");
  const int64_t nnz = row_ptr[rows];
  if (nnz > int64_t(rows) * cols)
    rd.fail(rp.name, "nnz " + std::to_string(nnz) + " exceeds rows x cols");
  const TensorView& ci = rd.get(base + ".col_idx", DType::I32, {nnz});
  const TensorView& vals = rd.get(base + ".values", DType::F16, {nnz});
  const int32_t* col = reinterpret_cast<const int32_t*>(ci.data);
  for (int r = 0; r < rows; r++)
    for (int32_t k = row_ptr[r]; k < row_ptr[r + 1]; k++) {
      if (col[k] < 0 || col[k] >= cols)
        rd.fail(ci.name, "column index " + std::to_string(col[k]) + " at entry " +
                             std::to_string(k) + " (row " + std::to_string(r) +
                             ") out of range, expected 0 <= col < " + std::to_string(cols));
      if (k > row_ptr[r] && col[k] <= col[k - 1])
        rd.fail(ci.name, "column indices of row " + std::to_string(r) +
                             " are not strictly ascending at entry " + std::to_string(k));
    }
  rd.finite_f16(vals);
  w.kind = WeightKind::PACKED;
  w.bits = bits;
  w.indices = idx.data;
  w.row_bytes = rb;
  w.lut = reinterpret_cast<const uint16_t*>(lut.data);
  w.row_ptr = row_ptr;
  w.col_idx = col;
  w.values = reinterpret_cast<const uint16_t*>(vals.data);
  w.nnz = nnz;
  return w;
}

}  // namespace

Model load_packed(const std::string& path) {
  auto f = std::make_shared<SafeTensorsFile>(path);
  const auto& md = f->metadata();
  auto meta = [&](const char* key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end())
      throw format_error(path + ": metadata key '" + key + "' is missing (not a packed .sqz file?)");
    return it->second;
  };
  // Version 1 differs only in the 3-bit index layout: its 4- and 2-bit files are read as they
  // are, its 3-bit linears refused with a message (read_linear).
  const std::string& ver = meta("sqz.format_version");
  const std::string current = std::to_string(kPackedFormatVersion);
  const int version = ver == "1" ? 1 : ver == current ? kPackedFormatVersion : 0;
  if (!version)
    throw format_error(path + ": packed format version '" + ver +
                       "', this sqz reads versions 1 and " + current +
                       (std::atoi(ver.c_str()) > kPackedFormatVersion ? " (written by a newer sqz)" : ""));
  if (meta("sqz.rope_layout") != "interleaved")
    throw format_error(path + ": sqz.rope_layout '" + meta("sqz.rope_layout") +
                       "', expected 'interleaved'");
  Model m;
  m.path = path;
  m.format = "sqz";
  m.config = Config::from_json(meta("sqz.config"), path + " (sqz.config)");
  m.config.validate(path);
  m.metadata = md;
  m.storage.push_back(f);
  const Config& c = m.config;
  Reader rd{*f, path, version, {}};

  const TensorView no_tok;
  const TensorView& tok = rd.f.has("tokenizer.model") ? rd.f.get("tokenizer.model") : no_tok;
  rd.used.insert("tokenizer.model");
  if (tok.data == nullptr || tok.dtype != DType::U8 || tok.shape.size() != 1)
    throw format_error(path + ": tensor 'tokenizer.model' (U8 [n], the SentencePiece model) is "
                       "missing or malformed");
  m.tokenizer_model.assign(reinterpret_cast<const char*>(tok.data), tok.n_bytes);

  m.tok_embeddings = rd.get("tok_embeddings.weight", DType::F16, {c.vocab_size, c.dim});
  rd.finite_f16(m.tok_embeddings);
  m.final_norm = rd.get("norm.weight", DType::F16, {c.dim});
  rd.finite_f16(m.final_norm);
  if (c.shared_classifier) {
    if (f->has("output.weight"))
      throw format_error(path + ": tensor 'output.weight' present but the config says the "
                         "classifier is shared with the embeddings");
    m.classifier.name = "tok_embeddings.weight";
    m.classifier.rows = c.vocab_size, m.classifier.cols = c.dim;
    m.classifier.dtype = DType::F16, m.classifier.data = m.tok_embeddings.data;
  } else {
    m.classifier = read_linear(rd, "output", c.vocab_size, c.dim);
  }
  m.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; l++) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights& L = m.layers[l];
    L.attn_norm = rd.get(p + "attention_norm.weight", DType::F16, {c.dim});
    L.ffn_norm = rd.get(p + "ffn_norm.weight", DType::F16, {c.dim});
    rd.finite_f16(L.attn_norm);
    rd.finite_f16(L.ffn_norm);
    for (int i = 0; i < 7; i++) {
      int rows, cols;
      linear_shape(c, i, &rows, &cols);
      *linear_slot(L, i) = read_linear(rd, p + kLinearNames[i], rows, cols);
    }
  }
  // Every tensor in the file must be one we read: a stray one means a writer we do not know.
  for (const auto& kv : f->tensors())
    if (!rd.used.count(kv.first))
      throw format_error(path + ": unexpected tensor '" + kv.first + "' (not part of format version " +
                         std::to_string(kPackedFormatVersion) + ")");
  return m;
}

namespace {

// fp16 copy of a float tensor (norms and embeddings are stored as F16).
std::vector<uint16_t> to_f16(const TensorView& v) {
  std::vector<float> f(size_t(v.n_elems()));
  convert_to_f32(v.dtype, v.data, f.data(), f.size());
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); i++) h[i] = f32_to_f16(f[i]);
  return h;
}

}  // namespace

void save_packed(const std::string& path, const Model& m,
                 const std::map<std::string, std::string>& extra_metadata) {
  const Config& c = m.config;
  if (m.tokenizer_model.empty())
    throw format_error(path + ": cannot write a packed model without its tokenizer");
  std::vector<TensorToWrite> t;
  std::vector<std::vector<uint16_t>> keep;  // converted copies, alive until written
  auto add_f16 = [&](const std::string& name, const TensorView& v, std::vector<int64_t> shape) {
    const void* data = v.data;
    if (v.dtype != DType::F16) {
      keep.push_back(to_f16(v));
      data = keep.back().data();
    }
    t.push_back({name, DType::F16, shape, data, size_t(v.n_elems()) * 2});
  };
  auto add_linear = [&](const std::string& base, const LinearWeight& w) {
    if (w.kind == WeightKind::DENSE) {
      TensorView v;
      v.name = base, v.dtype = w.dtype, v.shape = {w.rows, w.cols};
      v.data = static_cast<const uint8_t*>(w.data);
      v.n_bytes = size_t(w.rows) * w.cols * dtype_size(w.dtype);
      add_f16(base + ".weight", v, {w.rows, w.cols});
      return;
    }
    t.push_back({base + ".indices", DType::U8, {w.rows, w.row_bytes}, w.indices,
                 size_t(w.rows) * size_t(w.row_bytes)});
    t.push_back({base + ".lut", DType::F16, {w.rows, int64_t(1) << w.bits}, w.lut,
                 size_t(w.rows) << w.bits << 1});
    t.push_back({base + ".row_ptr", DType::I32, {int64_t(w.rows) + 1}, w.row_ptr,
                 (size_t(w.rows) + 1) * 4});
    t.push_back({base + ".col_idx", DType::I32, {w.nnz}, w.col_idx, size_t(w.nnz) * 4});
    t.push_back({base + ".values", DType::F16, {w.nnz}, w.values, size_t(w.nnz) * 2});
  };
  t.push_back({"tokenizer.model", DType::U8, {int64_t(m.tokenizer_model.size())},
               m.tokenizer_model.data(), m.tokenizer_model.size()});
  add_f16("tok_embeddings.weight", m.tok_embeddings, {c.vocab_size, c.dim});
  add_f16("norm.weight", m.final_norm, {c.dim});
  if (!c.shared_classifier) add_linear("output", m.classifier);
  for (int l = 0; l < c.n_layers; l++) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const LayerWeights& L = m.layers[l];
    add_f16(p + "attention_norm.weight", L.attn_norm, {c.dim});
    add_f16(p + "ffn_norm.weight", L.ffn_norm, {c.dim});
    const LinearWeight* ws[7] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_down, &L.w_up};
    for (int i = 0; i < 7; i++) add_linear(p + kLinearNames[i], *ws[i]);
  }
  // The container has no padding between tensors: wider elements first keeps every tensor
  // aligned to its element size (the data section starts 8-byte aligned).
  std::stable_sort(t.begin(), t.end(), [](const TensorToWrite& a, const TensorToWrite& b) {
    return dtype_size(a.dtype) > dtype_size(b.dtype);
  });
  std::map<std::string, std::string> md = extra_metadata;
  md["sqz.format_version"] = std::to_string(kPackedFormatVersion);
  md["sqz.config"] = c.to_json();
  md["sqz.rope_layout"] = "interleaved";
  write_safetensors(path, t, md);
}

}  // namespace sqz
