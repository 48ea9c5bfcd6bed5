// An opened model: weights, tokenizer and the backend that runs them, chosen and checked
// together (vocabulary sizes agree, the KV cache fits).
#pragma once
#include <memory>
#include <stdexcept>
#include <string>

#include "engine/backend.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace sqz {

struct EngineOptions {
  std::string model_path;
  std::string tokenizer_path;  // when the model file holds none
  std::string device = "auto"; // auto | cpu | cuda
  int ctx_size = 0;            // 0: the model's trained context (seq_len)
  int n_seqs = 1;
  int n_threads = 0;
  int max_batch = 512;
  bool need_tokenizer = true;
};

class Engine {
 public:
  explicit Engine(const EngineOptions& o);
  const Model& model() const { return model_; }
  const Config& config() const { return model_.config; }
  const Tokenizer& tokenizer() const;
  bool has_tokenizer() const { return tok_ != nullptr; }
  Backend& backend() { return *backend_; }
  const EngineOptions& options() const { return o_; }

 private:
  EngineOptions o_;
  Model model_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Backend> backend_;
};

// The model's tokenizer: `flag_path` (--tokenizer) when given, else the one the model file
// embeds, else a tokenizer.model beside the checkpoint; its vocabulary is checked against
// the model's. `source` (optional) receives where it came from. Throws format_error when
// there is none or the vocabularies differ.
Tokenizer open_tokenizer(const Model& m, const std::string& flag_path, std::string* source = nullptr);

// Throws format_error when the tokenizer's vocabulary differs from the model's.
void check_vocab(const Model& m, const Tokenizer& t, const std::string& tokenizer_source);

// Whether this build has the CUDA backend and a usable GPU is present.
bool cuda_available();

// The backend for `device` (auto: cuda when available, else cpu); throws a one-line error
// when the device cannot be used.
std::unique_ptr<Backend> make_backend(const Model& m, const BackendOptions& o,
                                      const std::string& device);

}  // namespace sqz
