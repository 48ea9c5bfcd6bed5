// The backend interface: something that runs the LLaMA forward pass over a batch of tokens
// from one or more sequences, keeping each sequence's KV cache. A linear layer is whatever
// the backend knows how to apply (dense F32/F16/BF16 or packed LUT + CSR).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "model/model.h"

namespace sqz {

struct Batch {
  std::vector<int> tokens;
  std::vector<int> pos;  // position of each token in its sequence
  std::vector<int> seq;  // sequence (KV cache slot) of each token
  std::vector<uint8_t> want_logits;
  void add(int token, int position, int sequence, bool logits) {
    tokens.push_back(token), pos.push_back(position), seq.push_back(sequence);
    want_logits.push_back(logits);
  }
  void clear() { tokens.clear(), pos.clear(), seq.clear(), want_logits.clear(); }
  int size() const { return int(tokens.size()); }
  int n_logits() const;
  // Throws (one line) unless the arrays agree in length, the batch fits max_batch, every
  // (seq, pos) lies inside the KV cache and every token inside the vocabulary. Backends call
  // it before touching their caches.
  void validate(int max_batch, int n_seqs, int ctx, int vocab_size) const;
};

struct BackendOptions {
  int ctx_size = 0;   // positions per sequence
  int n_seqs = 1;     // KV cache slots
  int n_threads = 0;  // CPU threads (0: all cores)
  int max_batch = 512;  // most tokens per forward call (scratch is planned for this)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int ctx_size() const = 0;
  virtual int n_seqs() const = 0;
  virtual int max_batch() const = 0;
  // Runs the batch and writes [batch.n_logits(), vocab_size] fp32 logits, in batch order, for
  // the tokens that asked. Each token's K/V is stored at (seq, pos) before attention, so a
  // token sees its sequence's positions 0..pos: a prompt's tokens in one batch are a causal
  // prefill, and one token per sequence is a batched decode step.
  virtual void forward(const Batch& batch, float* logits) = 0;
  // Optional device-side reduction: runs the batch and, for each token that asked for
  // logits, returns its `k` best candidates (id, logit; sorted by logit, descending) so only
  // those cross to the host. Used for greedy (k = 1) and top-k sampling without penalties.
  // Returns false when the backend has no such path (the caller then uses forward()).
  virtual bool forward_topk(const Batch& batch, int k, int* ids, float* logits) {
    (void)batch, (void)k, (void)ids, (void)logits;
    return false;
  }
  // Bytes of device (or host) memory the backend holds, for reports.
  virtual int64_t memory_bytes() const = 0;
};

// The kernels' element type for a dense F32/F16/BF16 tensor; format_error naming `what`
// for any other dtype.
MatType mat_type(DType t, const std::string& what);

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options);
// engine/cuda_backend.cu; only in CUDA builds. Throws (one line: bytes needed and free) when
// the weights, KV cache and scratch do not fit in GPU memory.
std::unique_ptr<Backend> make_cuda_backend(const Model& model, const BackendOptions& options);

}  // namespace sqz
