// The generation loop over a backend: prefill with KV-cache prefix reuse, then one decode
// step at a time for every active sequence together.
#pragma once
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/sampler.h"

namespace sqz {

struct context_full_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What one KV cache slot holds.
struct SeqState {
  int id = 0;
  std::vector<int> tokens;
};

// Makes the sequence's cache hold exactly `tokens`, reusing the longest prefix it already
// holds (at least the last token is re-run so its logits come back). Writes the logits of the
// last token into `logits` [vocab]. Returns the number of tokens actually run.
// Throws context_full_error when tokens do not fit in the context.
int prefill(Backend& be, SeqState& s, const std::vector<int>& tokens, float* logits);

struct GenerateOptions {
  int n_predict = -1;          // -1: until a stop token or the context is full
  std::vector<int> stop_ids;   // EOS and template stop tokens
};

struct GenerateStats {
  int n_prompt = 0;    // prompt tokens
  int n_prefill = 0;   // prompt tokens actually run (the rest reused from the cache)
  int n_gen = 0;
  double prefill_s = 0, decode_s = 0;
  std::string stop_reason;  // "eos", "length", "context", "interrupted"
};

// Called once per generated token of sequence i; return false to stop that sequence.
using TokenCallback = std::function<bool(int i, int token)>;

// Generates for seqs[i] (whose prompts are given) with samplers[i]. Each step runs one token
// for every active sequence in a single forward call.
std::vector<GenerateStats> generate(Backend& be, const std::vector<SeqState*>& seqs,
                                    const std::vector<std::vector<int>>& prompts,
                                    const std::vector<Sampler*>& samplers,
                                    const GenerateOptions& o, const TokenCallback& on_token);

}  // namespace sqz
