// quantize_model: walks every linear of the checkpoint, applies the module's settings and
// keeps the results as packed views of an in-memory Model.
#include "quantize/pipeline.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <cmath>
#include <ctime>
#include <set>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "engine/engine.h"
#include "model/errors.h"
#include "quantize/sha256.h"

namespace sqz {

namespace {

using json = nlohmann::json;

// The packed file's linear names and the HF module types they come from.
const char* const kOurs[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"};
const char* const kHf[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"};

LinearWeight* slot(LayerWeights& l, int i) {
  LinearWeight* s[7] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_down, &l.w_up};
  return s[i];
}

// The weight the quantizer reproduces is the checkpoint's, rounded to FP16 (the identity for
// FP16 checkpoints; BF16 values lose only bits below FP16's subnormal range, 2^-24): outliers
// are stored in FP16, so this is the precision "exact" can mean.
// Converted in parallel chunks (a LLaMA-7B module has 45M values).
void convert_parallel(DType dtype, const void* src, float* dst, size_t n, ThreadPool& pool) {
  const size_t elem = dtype_size(dtype);
  pool.parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
    convert_to_f32(dtype, static_cast<const char*>(src) + size_t(b) * elem, dst + b, size_t(e - b));
  }, 1 << 16);
}

std::vector<float> to_f32(const LinearWeight& w, ThreadPool& pool) {
  std::vector<float> out(size_t(w.rows) * w.cols);
  convert_parallel(w.dtype, w.data, out.data(), out.size(), pool);
  if (w.dtype != DType::F16)
    pool.parallel_for(int64_t(out.size()), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) out[i] = f16_to_f32(f32_to_f16(out[i]));
    }, 1 << 16);
  return out;
}

void apply_fields(const json& j, const std::string& key, ModuleSettings* s) {
  if (!j.is_object()) throw format_error("overrides: '" + key + "' must map to an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    auto num = [&]() {
      if (!v.is_number())
        throw format_error("overrides: '" + key + "." + k + "' must be a number");
      return v.get<double>();
    };
    if (k == "bits") {
      int b = int(num());
      if (b < 2 || b > 4) throw format_error("overrides: '" + key + ".bits' must be 2, 3 or 4");
      s->q.bits = b;
    } else if (k == "outliers") {
      s->q.outliers.magnitude_pct = num();
    } else if (k == "outlier_range") {
      s->q.outliers.iqr_range = num();
    } else if (k == "sensitive") {
      s->q.outliers.sensitive_pct = num();
    } else if (k == "method") {
      std::string m = v.is_string() ? v.get<std::string>() : "";
      if (m != "squeeze" && m != "rtn" && m != "fp16")
        throw format_error("overrides: '" + key + ".method' must be squeeze, rtn or fp16");
      s->kind = m;
      s->q.method = m == "rtn" ? QuantMethod::RTN : QuantMethod::SQUEEZE;
    } else {
      throw format_error("overrides: unknown field '" + key + "." + k +
                         "' (expected bits, outliers, outlier_range, sensitive, method)");
    }
  }
}

std::string type_key(int i) { return kHf[i]; }

// Settings of one module: base, then its type key (either spelling), then its layer key.
ModuleSettings settings_for(const json& ov, const ModuleSettings& base, int layer, int i,
                            std::set<std::string>* used) {
  ModuleSettings s = base;
  const std::string keys[4] = {kHf[i], kOurs[i], "layers." + std::to_string(layer) + "." + kHf[i],
                               "layers." + std::to_string(layer) + "." + kOurs[i]};
  for (const std::string& k : keys)
    if (ov.contains(k)) apply_fields(ov[k], k, &s), used->insert(k);
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string hash_checkpoint(const Model& m, const std::atomic<bool>* cancel) {
  // The weights files that make up the checkpoint (a folder's safetensors, or the file).
  struct stat st;
  std::vector<std::string> files;
  if (stat(m.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::string idx = m.path + "/model.safetensors.index.json";
    if (stat(idx.c_str(), &st) == 0) {
      json j = json::parse(read_bytes(idx));
      std::set<std::string> shards;
      for (auto& kv : j["weight_map"].items()) shards.insert(kv.value().get<std::string>());
      for (auto& s : shards) files.push_back(m.path + "/" + s);
    } else {
      files.push_back(m.path + "/model.safetensors");
    }
  } else {
    files.push_back(m.path);
  }
  std::string out;
  for (auto& f : files) out += (out.empty() ? "" : ",") + sha256_file(f, cancel);
  return out;
}

// The provenance hashes (tens of GB for a 7B checkpoint and its gradients: a minute or more
// at one core's SHA-256 speed) run on their own threads while the model is quantized. When
// quantizing fails, the destructor cancels them instead of waiting for them.
struct BackgroundHashes {
  std::atomic<bool> cancel{false};
  std::future<std::string> source, gradients;
  ~BackgroundHashes() { cancel = true; }
};

}  // namespace

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw format_error(path + ": cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string sha256_file(const std::string& path, const std::atomic<bool>* cancel) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw format_error(path + ": cannot open file");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    if (cancel && *cancel) return "";
    f.read(buf.data(), std::streamsize(buf.size()));
    h.update(buf.data(), size_t(f.gcount()));
  }
  return h.hex_digest();
}

int64_t QuantizeResult::fp16_bytes() const {
  return model.n_params() * 2;
}

int64_t QuantizeResult::linear_params() const {
  int64_t n = 0;
  for (const ModuleReport& r : modules) n += int64_t(r.rows) * r.cols;
  return n;
}

QuantizeResult quantize_model(const QuantizeOptions& o, const QuantizeProgress& progress) {
  const double t_start = now_s();
  QuantizeResult res;
  Model src = load_model(o.model_path);
  if (src.format == "sqz")
    throw format_error(o.model_path + ": already a packed model; quantize an FP16/FP32 checkpoint");
  const Config& c = src.config;

  // The tokenizer goes into the file so that it is self-contained.
  std::string tok_source;
  const std::string tok_bytes = open_tokenizer(src, o.tokenizer_path, &tok_source).model_bytes();

  std::unique_ptr<SafeTensorsFile> grads;
  if (!o.gradients_path.empty()) grads = std::make_unique<SafeTensorsFile>(o.gradients_path);
  json ov = json::object();
  if (!o.overrides_path.empty()) {
    try {
      ov = json::parse(read_bytes(o.overrides_path));
    } catch (const json::exception& e) {
      throw format_error(o.overrides_path + ": not valid JSON (" + e.what() + ")");
    }
    if (!ov.is_object()) throw format_error(o.overrides_path + ": expected a JSON object");
  }
  std::set<std::string> used_keys;

  BackgroundHashes hashes;
  hashes.source = std::async(std::launch::async, [&] { return hash_checkpoint(src, &hashes.cancel); });
  if (!o.gradients_path.empty() && o.gradients_note.empty())
    hashes.gradients = std::async(std::launch::async,
                                  [&] { return sha256_file(o.gradients_path, &hashes.cancel); });

  ThreadPool pool(o.n_threads);
  Model& m = res.model;
  m = src;  // views into the source files (kept alive through storage)
  m.format = "sqz";
  m.tokenizer_model = tok_bytes;

  int64_t total = 0, done = 0;
  for (const LinearWeight* w : src.linears()) total += int64_t(w->rows) * w->cols;
  if (o.quantize_head) total += int64_t(c.vocab_size) * c.dim;

  auto quantize_one = [&](LinearWeight& dst, const LinearWeight& w, const std::string& name,
                          const std::string& type, int layer, const ModuleSettings& s,
                          const std::string& grad_name, bool rope_rows) {
    double t0 = now_s();
    ModuleReport rep;
    rep.name = name, rep.type = type, rep.layer = layer, rep.rows = w.rows, rep.cols = w.cols;
    rep.kind = s.kind;
    if (w.kind != WeightKind::DENSE)
      throw format_error(o.model_path + ": " + name + " is not a dense weight");
    if (s.kind == "fp16") {
      dst = w;  // written as F16 by save_packed
      rep.bits = 16, rep.n_bytes = int64_t(w.rows) * w.cols * 2, rep.effective_bits = 16;
    } else {
      std::vector<float> wf = to_f32(w, pool);
      std::vector<float> fisher;
      if (grads && !grad_name.empty()) {
        if (!grads->has(grad_name))
          throw format_error(o.gradients_path + ": missing tensor '" + grad_name + "'");
        const TensorView& g = grads->get(grad_name);
        if (g.shape != std::vector<int64_t>{w.rows, w.cols})
          throw format_error(o.gradients_path + ": tensor '" + grad_name + "' has shape " +
                             g.shape_str() + ", expected [" + std::to_string(w.rows) + ", " +
                             std::to_string(w.cols) + "] like the checkpoint");
        if (!dtype_is_float(g.dtype))
          throw format_error(o.gradients_path + ": tensor '" + grad_name + "' has dtype " +
                             dtype_name(g.dtype) + ", expected F32, F16 or BF16");
        std::vector<float> gf(size_t(w.rows) * w.cols);
        convert_parallel(g.dtype, g.data, gf.data(), gf.size(), pool);
        const int64_t n_f = int64_t(gf.size());
        if (pool.find_first(n_f, [&](int64_t i) { return !(gf[i] >= 0) || !std::isfinite(gf[i]); }) < n_f)
          throw format_error(o.gradients_path + ": tensor '" + grad_name +
                             "' holds a negative, NaN or Inf value (expected squared gradients)");
        if (rope_rows) {  // HF rotate-half rows -> the interleaved rows of the loaded weight
          fisher.resize(gf.size());
          pool.parallel_for(w.rows, [&](int64_t b, int64_t e) {
            for (int64_t r = b; r < e; r++)
              std::copy_n(gf.data() + size_t(r) * w.cols, w.cols,
                          fisher.data() + size_t(rope_row_hf_to_interleaved(int(r), c.head_dim)) * w.cols);
          });
        } else {
          fisher.swap(gf);
        }
      }
      if (s.kind == "rtn") {
        // The baseline is stored dense (per-group scales do not fit a per-row LUT).
        double err = 0;
        std::vector<float> d = rtn_quantize(wf.data(), w.rows, w.cols, s.q.bits, s.q.rtn_group, &err);
        auto deq = std::make_shared<std::vector<uint16_t>>(d.size());
        for (size_t i = 0; i < d.size(); i++) {
          (*deq)[i] = f32_to_f16(d[i]);
          double e = double(wf[i]) - d[i];
          rep.weighted_err += (fisher.empty() ? 1.0 : fisher[i]) * e * e;
          rep.sq_norm += double(wf[i]) * wf[i];
        }
        m.storage.push_back(deq);
        dst = w;
        dst.dtype = DType::F16, dst.data = deq->data();
        rep.bits = s.q.bits, rep.sq_err = err;
        rep.n_bytes = int64_t(w.rows) * w.cols * 2;
        rep.effective_bits = s.q.bits + 32.0 / s.q.rtn_group;  // + fp16 scale and zero per group
      } else {
        rep.seconds_load = now_s() - t0;
        LinearQuantOptions qo = s.q;
        if (fisher.empty()) qo.outliers.sensitive_pct = 0;  // nothing to rank by
        auto q = std::make_shared<QuantizedLinear>(quantize_linear(
            wf.data(), fisher.empty() ? nullptr : fisher.data(), w.rows, w.cols, qo, pool));
        rep.weighted_err = q->weighted_err, rep.sq_err = q->sq_err, rep.sq_norm = q->sq_norm;
        rep.seconds_outliers = q->seconds_outliers, rep.seconds_kmeans = q->seconds_kmeans;
        rep.seconds_rows = q->seconds_rows;
        m.storage.push_back(q);
        dst = LinearWeight();
        dst.name = name, dst.rows = w.rows, dst.cols = w.cols, dst.kind = WeightKind::PACKED;
        dst.bits = q->bits, dst.indices = q->indices.data();
        dst.row_bytes = packed_row_bytes(w.cols, q->bits);
        dst.lut = q->lut.data(), dst.row_ptr = q->row_ptr.data(), dst.col_idx = q->col_idx.data();
        dst.values = q->values.data(), dst.nnz = int64_t(q->values.size());
        rep.bits = q->bits, rep.n_outliers = dst.nnz;
        rep.n_sensitive = q->n_sensitive, rep.n_magnitude = q->n_magnitude;
        rep.n_off_grid = q->n_off_grid;
        rep.n_bytes = dst.n_bytes();
        rep.effective_bits = 8.0 * double(rep.n_bytes) / (double(w.rows) * w.cols);
        if (name == o.report_module) {
          int r = std::min(std::max(o.report_row, 0), w.rows - 1);
          res.report_rows = w.rows, res.report_cols = w.cols;
          res.report_row_values.assign(wf.begin() + size_t(r) * w.cols, wf.begin() + size_t(r + 1) * w.cols);
          for (int k = 0; k < (1 << q->bits); k++)
            res.report_row_centroids.push_back(f16_to_f32(q->lut[(size_t(r) << q->bits) + k]));
          res.report_row_is_outlier.assign(w.cols, 0);
          for (int k = q->row_ptr[r]; k < q->row_ptr[r + 1]; k++) res.report_row_is_outlier[q->col_idx[k]] = 1;
          for (int rr = 0; rr < w.rows; rr++)
            for (int k = q->row_ptr[rr]; k < q->row_ptr[rr + 1]; k++)
              res.report_outliers.push_back(int64_t(rr) * w.cols + q->col_idx[k]);
        }
      }
    }
    rep.seconds = now_s() - t0;
    res.modules.push_back(rep);
    done += int64_t(w.rows) * w.cols;
    if (progress) progress(done, total, name);
  };

  for (int l = 0; l < c.n_layers; l++) {
    for (int i = 0; i < 7; i++) {
      ModuleSettings s = settings_for(ov, o.base, l, i, &used_keys);
      const LinearWeight& w = *slot(src.layers[l], i);
      std::string name = "layers." + std::to_string(l) + "." + kOurs[i];
      quantize_one(*slot(m.layers[l], i), w, name, type_key(i), l, s, hf_linear_name(l, kHf[i]),
                   src.format == "hf" && i < 2);
    }
  }
  if (o.quantize_head || ov.contains("output")) {
    ModuleSettings s = o.base;
    if (ov.contains("output")) apply_fields(ov["output"], "output", &s), used_keys.insert("output");
    if (c.shared_classifier)
      throw format_error("the output head is shared with the embeddings; it stays FP16");
    quantize_one(m.classifier, src.classifier, "output", "lm_head", -1, s, "lm_head.weight", false);
  }
  for (auto it = ov.begin(); it != ov.end(); ++it)
    if (!used_keys.count(it.key()))
      throw format_error(o.overrides_path + ": key '" + it.key() +
                         "' names no module (expected a type like down_proj, layers.N.down_proj, or output)");

  json quant = {{"method", o.base.kind == "rtn" ? "rtn" : "squeezellm"},
                {"bits", o.base.q.bits},
                {"outliers_pct", o.base.q.outliers.magnitude_pct},
                {"outlier_range", o.base.q.outliers.iqr_range},
                {"sensitive_pct", o.base.q.outliers.sensitive_pct},
                {"kmeans", o.base.q.exact_kmeans ? "exact-dp" : "kmeans++-lloyd-50"},
                {"lut_grid", o.base.q.lut_grid},
                {"gradients", !o.gradients_path.empty()},
                {"quantize_head", o.quantize_head},
                {"overrides", ov}};
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const double t_hash = now_s();
  json prov = {{"source", o.model_path},
               {"source_format", src.format},
               {"source_sha256", hashes.source.get()},
               {"tokenizer", tok_source},
               {"gradients", o.gradients_note.empty() ? o.gradients_path : o.gradients_note},
               {"gradients_sha256", hashes.gradients.valid() ? hashes.gradients.get() : ""},
               {"date", date}};
  res.seconds_hash_wait = now_s() - t_hash;
  if (grads) prov["gradients_metadata"] = grads->metadata();
  res.metadata["sqz.quant"] = quant.dump();
  res.metadata["sqz.provenance"] = prov.dump();
  m.metadata = res.metadata;
  res.seconds = now_s() - t_start;
  return res;
}

}  // namespace sqz
