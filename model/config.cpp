// Config checks and its JSON form (stored as `sqz.config` in packed files).
#include "model/config.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "model/errors.h"

namespace sqz {

namespace {

// Upper bounds well past any real LLaMA (405B: dim 16384, vocab 128256, 126 layers). They
// exist so every later size product (vocab * dim, seq_len * kv_dim, ...) fits in int64 and
// a corrupt header is caught here instead of as a giant allocation.
constexpr int64_t kMaxWidth = 1 << 20;  // dim, hidden_dim, q_dim
constexpr int64_t kMaxCount = 1 << 16;  // n_layers, n_heads, n_kv_heads, head_dim
constexpr int64_t kMaxVocab = 1 << 24;
constexpr int64_t kMaxSeqLen = 1 << 24;

std::string fail_prefix(const std::string& source) { return source + ": config: "; }

void check_range(const std::string& source, const char* field, int64_t v, int64_t max) {
  if (v <= 0)
    throw format_error(fail_prefix(source) + field + " = " + std::to_string(v) +
                       ", expected a positive value");
  if (v > max)
    throw format_error(fail_prefix(source) + field + " = " + std::to_string(v) +
                       " is implausibly large (limit " + std::to_string(max) + ")");
}

// The double whose shortest printed form is the shortest decimal that reads back as `f`,
// so 1e-5f is written as 1e-05 rather than 9.999999747378752e-06.
double float_for_json(float f) {
  char buf[32];
  for (int prec = 6; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, double(f));
    if (std::strtof(buf, nullptr) == f) return std::strtod(buf, nullptr);
  }
  return double(f);
}

using json = nlohmann::json;

int64_t get_int(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) throw format_error(fail_prefix(source) + "missing field '" + key + "'");
  if (!it->is_number_integer())
    throw format_error(fail_prefix(source) + "field '" + key + "' is " + it->type_name() +
                       ", expected an integer");
  if (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(std::numeric_limits<int>::max()))
    throw format_error(fail_prefix(source) + "field '" + key + "' = " + it->dump() +
                       " does not fit in an int");
  int64_t v = it->get<int64_t>();
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw format_error(fail_prefix(source) + "field '" + key + "' = " + std::to_string(v) +
                       " does not fit in an int");
  return v;
}

float get_float(const json& j, const char* key, float def, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) return def;
  if (!it->is_number())
    throw format_error(fail_prefix(source) + "field '" + key + "' is " + it->type_name() +
                       ", expected a number");
  return float(it->get<double>());
}

}  // namespace

void Config::validate(const std::string& source) const {
  check_range(source, "dim", dim, kMaxWidth);
  check_range(source, "hidden_dim", hidden_dim, kMaxWidth);
  check_range(source, "n_layers", n_layers, kMaxCount);
  check_range(source, "n_heads", n_heads, kMaxCount);
  check_range(source, "n_kv_heads", n_kv_heads, kMaxCount);
  check_range(source, "head_dim", head_dim, kMaxCount);
  check_range(source, "vocab_size", vocab_size, kMaxVocab);
  check_range(source, "seq_len", seq_len, kMaxSeqLen);
  if (n_kv_heads > n_heads)
    throw format_error(fail_prefix(source) + "n_kv_heads = " + std::to_string(n_kv_heads) +
                       " exceeds n_heads = " + std::to_string(n_heads));
  if (n_heads % n_kv_heads != 0)
    throw format_error(fail_prefix(source) + "n_kv_heads = " + std::to_string(n_kv_heads) +
                       " does not divide n_heads = " + std::to_string(n_heads));
  // RoPE rotates pairs of components, so a head must have an even width.
  if (head_dim % 2 != 0)
    throw format_error(fail_prefix(source) + "head_dim = " + std::to_string(head_dim) +
                       " is odd, expected an even value (RoPE rotates pairs)");
  // q_dim may differ from dim (HF allows an explicit head_dim), but it must stay in range
  // because o_proj is [dim, q_dim] and the KV cache is sized from kv_dim.
  int64_t q = int64_t(n_heads) * head_dim;
  if (q > kMaxWidth)
    throw format_error(fail_prefix(source) + "n_heads * head_dim = " + std::to_string(n_heads) +
                       " * " + std::to_string(head_dim) + " = " + std::to_string(q) +
                       " is implausibly large (limit " + std::to_string(kMaxWidth) + ")");
  if (!std::isfinite(rope_theta) || rope_theta <= 0.0f)
    throw format_error(fail_prefix(source) + "rope_theta = " + std::to_string(rope_theta) +
                       ", expected a finite positive value");
  if (!std::isfinite(norm_eps) || norm_eps <= 0.0f || norm_eps >= 1.0f)
    throw format_error(fail_prefix(source) + "norm_eps = " + std::to_string(norm_eps) +
                       ", expected a finite value in (0, 1)");
  if (bos_id < 0 || bos_id >= vocab_size)
    throw format_error(fail_prefix(source) + "bos_id = " + std::to_string(bos_id) +
                       " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  if (eos_id < 0 || eos_id >= vocab_size)
    throw format_error(fail_prefix(source) + "eos_id = " + std::to_string(eos_id) +
                       " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
}

std::string Config::to_json() const {
  nlohmann::ordered_json j;
  j["dim"] = dim;
  j["hidden_dim"] = hidden_dim;
  j["n_layers"] = n_layers;
  j["n_heads"] = n_heads;
  j["n_kv_heads"] = n_kv_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["seq_len"] = seq_len;
  j["rope_theta"] = float_for_json(rope_theta);
  j["norm_eps"] = float_for_json(norm_eps);
  j["bos_id"] = bos_id;
  j["eos_id"] = eos_id;
  j["shared_classifier"] = shared_classifier;
  return j.dump();
}

Config Config::from_json(const std::string& text, const std::string& source) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw format_error(fail_prefix(source) + "not valid JSON");
  if (!j.is_object())
    throw format_error(fail_prefix(source) + "expected a JSON object, found " + j.type_name());
  Config c;
  c.dim = int(get_int(j, "dim", source));
  c.hidden_dim = int(get_int(j, "hidden_dim", source));
  c.n_layers = int(get_int(j, "n_layers", source));
  c.n_heads = int(get_int(j, "n_heads", source));
  c.n_kv_heads = int(get_int(j, "n_kv_heads", source));
  c.vocab_size = int(get_int(j, "vocab_size", source));
  c.seq_len = int(get_int(j, "seq_len", source));
  if (j.contains("head_dim")) {
    c.head_dim = int(get_int(j, "head_dim", source));
  } else {
    check_range(source, "n_heads", c.n_heads, kMaxCount);
    c.head_dim = c.dim / c.n_heads;
  }
  c.rope_theta = get_float(j, "rope_theta", c.rope_theta, source);
  c.norm_eps = get_float(j, "norm_eps", c.norm_eps, source);
  if (j.contains("bos_id")) c.bos_id = int(get_int(j, "bos_id", source));
  if (j.contains("eos_id")) c.eos_id = int(get_int(j, "eos_id", source));
  if (j.contains("shared_classifier")) {
    const json& s = j["shared_classifier"];
    if (!s.is_boolean())
      throw format_error(fail_prefix(source) + "field 'shared_classifier' is " + s.type_name() +
                         ", expected a boolean");
    c.shared_classifier = s.get<bool>();
  }
  c.validate(source);
  return c;
}

}  // namespace sqz
