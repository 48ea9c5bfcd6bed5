// Model hyper-parameters, named as in llama2.c's run.c.
#pragma once
#include <string>

namespace sqz {

struct Config {
  int dim = 0;         // transformer width
  int hidden_dim = 0;  // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;    // usually dim / n_heads
  int vocab_size = 0;
  int seq_len = 0;     // trained / maximum context length
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  int bos_id = 1;
  int eos_id = 2;
  bool shared_classifier = false;  // the output head is the embedding matrix

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Throws format_error (naming `source`) when a field is out of range or inconsistent.
  void validate(const std::string& source) const;
  std::string to_json() const;
  static Config from_json(const std::string& json, const std::string& source);
};

}  // namespace sqz
