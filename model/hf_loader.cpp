// Hugging Face LLaMA checkpoints: config.json + model.safetensors, or shards listed in
// model.safetensors.index.json. Weights stay views into the mapped shards, except q_proj
// and k_proj, whose rows are reordered from HF's rotate-half RoPE layout to Meta's
// interleaved pairs (the layout every kernel in this project assumes).
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/errors.h"
#include "model/model.h"

namespace sqz {

namespace {

using json = nlohmann::json;

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string parent_dir(const std::string& p) {
  size_t slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return p.substr(0, slash);
}

std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string read_text(const std::string& path) {
  if (is_dir(path)) throw format_error(path + ": is a directory, expected a JSON file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw format_error(path + ": cannot open: " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json_file(const std::string& path) {
  json j = json::parse(read_text(path), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw format_error(path + ": not valid JSON");
  if (!j.is_object()) throw format_error(path + ": expected a JSON object, found " + j.type_name());
  return j;
}

// A JSON file starts with '{' (after optional whitespace). A safetensors file starts with
// its u64 little-endian header length, whose low byte is '{' when the length is 123 mod 256;
// its top byte is then 0, which never occurs in JSON text, so that tells the two apart.
bool starts_like_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char buf[16] = {};
  f.read(buf, sizeof buf);
  std::streamsize n = f.gcount();
  for (std::streamsize i = 0; i < n; ++i) {
    if (buf[i] == ' ' || buf[i] == '\n' || buf[i] == '\r' || buf[i] == '\t') continue;
    return buf[i] == '{' && !(n >= 8 && buf[7] == 0);
  }
  return false;
}

// ---- config.json ------------------------------------------------------------------------

struct HfConfig {
  Config config;
  bool tie_word_embeddings = false;
};

struct ConfigReader {
  const json& j;
  std::string prefix;  // "path: config: "

  [[noreturn]] void fail(const std::string& msg) const { throw format_error(prefix + msg); }

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }

  int get_int(const char* key) const {
    if (!j.contains(key)) fail(std::string("missing '") + key + "'");
    return as_int(key, j[key]);
  }
  int get_int(const char* key, int def) const { return has(key) ? as_int(key, j[key]) : def; }

  int as_int(const char* key, const json& v) const {
    if (!v.is_number_integer())
      fail(std::string("'") + key + "' is " + v.dump() + ", expected an integer");
    if (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(INT32_MAX)
                               : (v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX))
      fail(std::string("'") + key + "' = " + v.dump() + " does not fit in an int");
    return int(v.get<int64_t>());
  }

  float as_float(const char* key, const json& v) const {
    if (!v.is_number()) fail(std::string("'") + key + "' is " + v.dump() + ", expected a number");
    return float(v.get<double>());
  }

  // bos/eos: an int, null (keep the default) or a list (LLaMA 3 lists several eos ids; the
  // first is the one generation stops on by default).
  int token_id(const char* key, int def) const {
    if (!has(key)) return def;
    const json& v = j[key];
    if (v.is_array()) {
      if (v.empty()) return def;
      return as_int(key, v[0]);
    }
    return as_int(key, v);
  }
};

// Returns the RoPE type named by a rope_scaling / rope_parameters object, "default" if none.
std::string rope_type_of(const ConfigReader& r, const char* key) {
  if (!r.has(key)) return "default";
  const json& v = r.j[key];
  if (!v.is_object()) r.fail(std::string("'") + key + "' is " + v.dump() + ", expected an object");
  for (const char* k : {"rope_type", "type"}) {
    if (v.contains(k) && !v[k].is_null()) {
      if (!v[k].is_string()) r.fail(std::string("'") + key + "." + k + "' is not a string");
      return v[k].get<std::string>();
    }
  }
  return "default";
}

HfConfig read_hf_config(const std::string& path) {
  json j = parse_json_file(path);
  ConfigReader r{j, path + ": config: "};

  if (!r.has("model_type")) r.fail("missing 'model_type' (expected \"llama\")");
  if (!j["model_type"].is_string()) r.fail("'model_type' is not a string");
  const std::string model_type = j["model_type"].get<std::string>();
  if (model_type != "llama" && model_type != "mistral")
    r.fail("model_type '" + model_type +
           "' is not supported (expected 'llama', or 'mistral' "
           "without sliding-window attention)");
  // Mistral is plain LLaMA unless its sliding window is shorter than the context.
  if (r.has("sliding_window")) {
    int window = r.get_int("sliding_window");
    if (window < r.get_int("max_position_embeddings", 2048))
      r.fail("sliding_window = " + std::to_string(window) +
             " is not supported (only full attention)");
  }
  if (r.has("hidden_act") && j["hidden_act"] != "silu")
    r.fail("hidden_act " + j["hidden_act"].dump() + " is not supported (expected \"silu\")");
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (r.has(key) && j[key] != false)
      r.fail(std::string("'") + key + "' = " + j[key].dump() + " is not supported (no biases)");

  // Context-extension schemes (linear, dynamic, yarn, llama3, ...) change the rotation
  // frequencies; only plain RoPE is implemented.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    std::string type = rope_type_of(r, key);
    if (type != "default")
      r.fail(std::string(key) + " type '" + type +
             "' is not supported (only plain RoPE, type 'default')");
  }

  HfConfig hc;
  Config& c = hc.config;
  c.dim = r.get_int("hidden_size");
  c.hidden_dim = r.get_int("intermediate_size");
  c.n_layers = r.get_int("num_hidden_layers");
  c.n_heads = r.get_int("num_attention_heads");
  c.n_kv_heads = r.get_int("num_key_value_heads", c.n_heads);
  c.vocab_size = r.get_int("vocab_size");
  c.seq_len = r.get_int("max_position_embeddings", 2048);  // transformers' LlamaConfig default
  if (r.has("head_dim")) {
    c.head_dim = r.get_int("head_dim");
  } else {
    if (c.n_heads <= 0 || c.dim % c.n_heads != 0)
      r.fail("hidden_size = " + std::to_string(c.dim) +
             " is not divisible by num_attention_heads = " + std::to_string(c.n_heads) +
             " and no head_dim is given");
    c.head_dim = c.dim / c.n_heads;
  }
  // transformers 4 keeps rope_theta at the top level; transformers 5 moved it into
  // rope_parameters. 10000 is the default of both.
  c.rope_theta = 10000.0f;
  if (r.has("rope_theta")) {
    c.rope_theta = r.as_float("rope_theta", j["rope_theta"]);
  } else if (r.has("rope_parameters") && j["rope_parameters"].contains("rope_theta")) {
    c.rope_theta = r.as_float("rope_parameters.rope_theta", j["rope_parameters"]["rope_theta"]);
  }
  c.norm_eps = r.has("rms_norm_eps") ? r.as_float("rms_norm_eps", j["rms_norm_eps"]) : 1e-6f;
  c.bos_id = r.token_id("bos_token_id", 1);
  c.eos_id = r.token_id("eos_token_id", 2);
  if (r.has("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean()) r.fail("'tie_word_embeddings' is not a boolean");
    hc.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  c.validate(path);
  return hc;
}

// ---- tensors ----------------------------------------------------------------------------

// Where each tensor lives: one file, or the shards named by the index (each opened once).
class TensorSource {
 public:
  void open_single(const std::string& path) {
    files_[path] = std::make_shared<SafeTensorsFile>(path);
    single_ = files_[path].get();
  }

  void open_index(const std::string& index_path) {
    index_path_ = index_path;
    json j = parse_json_file(index_path);
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw format_error(index_path + ": missing 'weight_map' object");
    const std::string dir = parent_dir(index_path);
    for (auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string())
        throw format_error(index_path + ": weight_map['" + name + "'] is " + shard.dump() +
                           ", expected a file name");
      const std::string file = shard.get<std::string>();
      // Shards live beside the index; refuse names that would reach elsewhere.
      if (file.empty() || file[0] == '/' || file.find("..") != std::string::npos)
        throw format_error(index_path + ": weight_map['" + name + "'] = '" + file +
                           "' is not a file name inside the checkpoint folder");
      const std::string shard_path = join(dir, file);
      if (!files_.count(shard_path))
        files_[shard_path] = std::make_shared<SafeTensorsFile>(shard_path);
      weight_map_[name] = files_[shard_path].get();
    }
  }

  // The file holding `name`, or nullptr when the checkpoint has no such tensor.
  const SafeTensorsFile* find(const std::string& name) const {
    if (single_) return single_->has(name) ? single_ : nullptr;
    auto it = weight_map_.find(name);
    if (it == weight_map_.end()) return nullptr;
    if (!it->second->has(name))
      throw format_error(index_path_ + ": weight_map puts tensor '" + name + "' in " +
                         it->second->path() + ", which does not contain it");
    return it->second;
  }

  const SafeTensorsFile& require(const std::string& name) const {
    const SafeTensorsFile* f = find(name);
    if (!f)
      throw format_error((single_ ? single_->path() : index_path_) + ": missing tensor '" + name +
                         "'");
    return *f;
  }

  void keep_alive(Model& m) const {
    for (auto& [path, f] : files_) m.storage.push_back(f->file());
  }

 private:
  std::map<std::string, std::shared_ptr<SafeTensorsFile>> files_;
  const SafeTensorsFile* single_ = nullptr;
  std::string index_path_;
  std::map<std::string, const SafeTensorsFile*> weight_map_;
};

std::string shape_to_str(const std::vector<int64_t>& s) {
  TensorView v;
  v.shape = s;
  return v.shape_str();
}

// The tensor `name` with the expected shape and a float dtype the engine runs on.
const TensorView& expect_tensor(const TensorSource& src, const std::string& name,
                                const std::vector<int64_t>& shape, std::string* file = nullptr) {
  const SafeTensorsFile& f = src.require(name);
  const TensorView& v = f.get(name);
  if (v.dtype != DType::F32 && v.dtype != DType::F16 && v.dtype != DType::BF16)
    throw format_error(f.path() + ": tensor '" + name + "' has dtype " + dtype_name(v.dtype) +
                       ", expected F32, F16 or BF16");
  if (v.shape != shape)
    throw format_error(f.path() + ": tensor '" + name + "': expected " + shape_to_str(shape) +
                       ", found " + v.shape_str());
  if (file) *file = f.path();
  return v;
}

LinearWeight as_linear(const TensorView& v) {
  LinearWeight w;
  w.name = v.name;
  w.rows = int(v.shape[0]);
  w.cols = int(v.shape[1]);
  w.kind = WeightKind::DENSE;
  w.dtype = v.dtype;
  w.data = v.data;
  return w;
}

// HF's conversion script permuted Meta's q/k rows so RoPE could rotate halves:
//   w.view(n_heads, head_dim/2, 2, dim).transpose(1, 2).reshape(n_heads*head_dim, dim)
// i.e. Meta row h*hd + 2*i + half is stored at HF row h*hd + half*(hd/2) + i. Undo it
// into an owned buffer of the same dtype (rope_row_hf_to_interleaved is the row map).
LinearWeight unpermute_rope_rows(const TensorView& v, int head_dim, Model& m) {
  auto buf = std::make_shared<std::vector<uint8_t>>(v.n_bytes);
  const size_t row_bytes = size_t(v.shape[1]) * dtype_size(v.dtype);
  const int rows = int(v.shape[0]);
  for (int r = 0; r < rows; ++r)
    std::memcpy(buf->data() + size_t(rope_row_hf_to_interleaved(r, head_dim)) * row_bytes,
                v.data + size_t(r) * row_bytes, row_bytes);
  m.storage.push_back(buf);
  LinearWeight w = as_linear(v);
  w.data = buf->data();
  return w;
}

}  // namespace

Model load_hf(const std::string& path) {
  // Resolve the folder, config.json and the weights from what `path` is.
  std::string dir, config_path, index_path, weights_path;
  if (is_dir(path)) {
    dir = path;
  } else {
    if (!exists(path)) throw format_error(path + ": no such file or directory");
    dir = parent_dir(path);
    if (starts_like_json(path)) {
      json j = parse_json_file(path);
      if (j.contains("weight_map"))
        index_path = path;
      else
        config_path = path;
    } else {
      weights_path = path;
    }
  }
  if (config_path.empty()) config_path = join(dir, "config.json");
  if (!exists(config_path))
    throw format_error(path + ": no config.json in " + dir + " (an HF checkpoint needs one)");
  if (index_path.empty() && weights_path.empty()) {
    if (exists(join(dir, "model.safetensors.index.json")))
      index_path = join(dir, "model.safetensors.index.json");
    else if (exists(join(dir, "model.safetensors")))
      weights_path = join(dir, "model.safetensors");
    else
      throw format_error(path + ": no model.safetensors or model.safetensors.index.json in " + dir);
  }

  HfConfig hc = read_hf_config(config_path);
  Model m;
  m.path = path;
  m.format = "hf";
  m.config = hc.config;
  const Config& c = m.config;

  TensorSource src;
  if (!index_path.empty())
    src.open_index(index_path);
  else
    src.open_single(weights_path);
  src.keep_alive(m);

  const int64_t dim = c.dim, hidden = c.hidden_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  std::string file;
  m.tok_embeddings = expect_tensor(src, "model.embed_tokens.weight", {c.vocab_size, dim}, &file);
  check_finite(m.tok_embeddings, file);
  m.final_norm = expect_tensor(src, "model.norm.weight", {dim}, &file);
  check_finite(m.final_norm, file);

  m.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = m.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.attn_norm = expect_tensor(src, p + "input_layernorm.weight", {dim}, &file);
    check_finite(L.attn_norm, file);
    L.ffn_norm = expect_tensor(src, p + "post_attention_layernorm.weight", {dim}, &file);
    check_finite(L.ffn_norm, file);
    L.wq = unpermute_rope_rows(expect_tensor(src, hf_linear_name(l, "q_proj"), {q_dim, dim}),
                               c.head_dim, m);
    L.wk = unpermute_rope_rows(expect_tensor(src, hf_linear_name(l, "k_proj"), {kv_dim, dim}),
                               c.head_dim, m);
    L.wv = as_linear(expect_tensor(src, hf_linear_name(l, "v_proj"), {kv_dim, dim}));
    L.wo = as_linear(expect_tensor(src, hf_linear_name(l, "o_proj"), {dim, q_dim}));
    L.w_gate = as_linear(expect_tensor(src, hf_linear_name(l, "gate_proj"), {hidden, dim}));
    L.w_up = as_linear(expect_tensor(src, hf_linear_name(l, "up_proj"), {hidden, dim}));
    L.w_down = as_linear(expect_tensor(src, hf_linear_name(l, "down_proj"), {dim, hidden}));
  }

  // Tied (or simply absent) lm_head: the classifier is the embedding matrix.
  if (hc.tie_word_embeddings || !src.find("lm_head.weight")) {
    m.config.shared_classifier = true;
    m.classifier = as_linear(m.tok_embeddings);
  } else {
    m.config.shared_classifier = false;
    m.classifier = as_linear(expect_tensor(src, "lm_head.weight", {c.vocab_size, dim}));
  }

  if (exists(join(dir, "tokenizer.model"))) m.tokenizer_path = join(dir, "tokenizer.model");
  return m;
}

}  // namespace sqz
