#include "engine/engine.h"

#include <cstdio>

#include "model/errors.h"

namespace sqz {

void check_vocab(const Model& m, const Tokenizer& t, const std::string& tokenizer_source) {
  if (t.vocab_size() != m.config.vocab_size)
    throw format_error(tokenizer_source + ": tokenizer has " + std::to_string(t.vocab_size()) +
                       " tokens but the model " + m.path + " expects vocab_size " +
                       std::to_string(m.config.vocab_size) + " (wrong --tokenizer?)");
}

Tokenizer open_tokenizer(const Model& m, const std::string& flag_path, std::string* source) {
  std::string from;
  auto checked = [&](Tokenizer t, const std::string& src) {
    check_vocab(m, t, src);
    if (source) *source = src;
    return t;
  };
  if (!flag_path.empty()) return checked(Tokenizer::from_file(flag_path), flag_path);
  if (!m.tokenizer_model.empty()) {
    from = m.path + " (embedded tokenizer)";
    return checked(Tokenizer::from_bytes(m.tokenizer_model, from), from);
  }
  if (!m.tokenizer_path.empty()) return checked(Tokenizer::from_file(m.tokenizer_path), m.tokenizer_path);
  throw format_error(m.path +
                     ": the model holds no tokenizer and none lies beside it; pass "
                     "--tokenizer FILE (a SentencePiece tokenizer.model)");
}

#ifndef SQZ_WITH_CUDA
bool cuda_available() { return false; }
#endif

Engine::Engine(const EngineOptions& o) : o_(o) {
  model_ = load_model(o.model_path);
  if (o.need_tokenizer || !o.tokenizer_path.empty())
    tok_ = std::make_unique<Tokenizer>(open_tokenizer(model_, o.tokenizer_path));
  BackendOptions bo;
  bo.ctx_size = o.ctx_size > 0 ? o.ctx_size : model_.config.seq_len;
  if (bo.ctx_size > model_.config.seq_len)
    std::fprintf(stderr, "warning: context %d is longer than the model's trained context %d\n",
                 bo.ctx_size, model_.config.seq_len);
  bo.n_seqs = o.n_seqs;
  bo.n_threads = o.n_threads;
  bo.max_batch = o.max_batch;
  backend_ = make_backend(model_, bo, o.device);
}

std::unique_ptr<Backend> make_backend(const Model& m, const BackendOptions& bo,
                                      const std::string& device) {
  std::string dev = device;
  if (dev == "auto") dev = cuda_available() ? "cuda" : "cpu";
  if (dev == "cpu") return make_cpu_backend(m, bo);
  if (dev == "cuda") {
#ifdef SQZ_WITH_CUDA
    if (!cuda_available()) throw std::runtime_error("--device cuda: no usable CUDA GPU was found");
    return make_cuda_backend(m, bo);
#else
    throw std::runtime_error(
        "--device cuda: this build of sqz has no CUDA backend (configure with SQZ_CUDA=ON)");
#endif
  }
  throw std::invalid_argument("--device must be auto, cpu or cuda, not '" + device + "'");
}

const Tokenizer& Engine::tokenizer() const {
  if (!tok_) throw std::logic_error("engine opened without a tokenizer");
  return *tok_;
}

}  // namespace sqz
