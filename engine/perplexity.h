// Perplexity over a token stream, in both conventions (DESIGN.md section 5):
//   gptq:     non-overlapping windows of ctx, tail dropped, every position of every window
//             scored (ctx - 1 predictions each); BOS only at the very start of the stream.
//   llamacpp: chunks of ctx, first token of each replaced by BOS, only the second half
//             scored (positions ctx/2 .. ctx-2 predict the next token).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace sqz {

enum class PplMethod { GPTQ, LLAMACPP };

struct PerplexityOptions {
  PplMethod method = PplMethod::GPTQ;
  int ctx = 1024;
  int max_chunks = -1;  // -1: all
  int bos_id = 1;
  int vocab_size = 0;
  int n_threads = 0;  // for the log-softmax of the scored rows (0: all cores)
};

// Running totals over scored positions.
struct NllStats {
  double nll_sum = 0, nll2_sum = 0;
  int64_t count = 0;
  double mean() const { return count ? nll_sum / count : 0; }
  double ppl() const;
  double ppl_stderr() const;  // as llama.cpp: ppl * sqrt(var(nll) / (count - 1))
};

struct ChunkReport {
  int chunk = 0, n_chunks = 0;
  double chunk_ppl = 0;   // this chunk alone
  NllStats total;         // running
  double seconds = 0;     // time of this chunk
};

// Number of chunks the stream gives for these options.
int perplexity_chunks(size_t n_tokens, const PerplexityOptions& o);

// `scored` receives, per chunk, the logits rows of its scored positions [n_scored, vocab]
// and the target token of each (for KL statistics and saved logits); may be empty.
using ScoredLogits =
    std::function<void(int chunk, const float* logits, const int* targets, int n_scored)>;

NllStats perplexity(Backend& be, const std::vector<int>& tokens, const PerplexityOptions& o,
                    const std::function<void(const ChunkReport&)>& on_chunk,
                    const ScoredLogits& scored = nullptr);

// log(sum_i exp(x_i)) over one row of logits, in double (max-shifted).
double log_sum_exp(const float* x, int n);

// Log-softmax NLL of `target` under one row of logits, in double.
double token_nll(const float* logits, int vocab, int target);

}  // namespace sqz
