// Token sampling with llama.cpp's defaults and order:
//   penalties -> top-k -> top-p -> min-p -> temperature -> draw.
// A stage set to its neutral value (top_k 0, top_p 1.0, min_p 0, penalties 1.0/0) is off.
// temp <= 0 is greedy (argmax after penalties). The same seed gives the same tokens.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace sqz {

struct SamplerOptions {
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;  // -1: the whole context
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  std::string describe() const;  // one line, as llama.cpp prints its sampler settings
};

struct Candidate {
  int id;
  float logit;
  float p;  // filled by the stages that need probabilities
};

// The stages, exposed for tests. Each keeps at least one candidate.
namespace sampling {
void penalties(std::vector<Candidate>& c, const std::vector<int>& last_tokens, float repeat,
               float presence, float frequency);
void top_k(std::vector<Candidate>& c, int k);        // sorts by logit, descending
void top_p(std::vector<Candidate>& c, float p);      // smallest prefix with mass >= p
void min_p(std::vector<Candidate>& c, float p);      // keep p_i >= p * p_max
void temperature(std::vector<Candidate>& c, float t);
void softmax(std::vector<Candidate>& c);             // sorts descending, fills p
int greedy(const std::vector<Candidate>& c);
}  // namespace sampling

class Sampler {
 public:
  Sampler(const SamplerOptions& o, int vocab_size);
  // history: the sequence so far (prompt + generated), used by the penalties.
  int sample(const float* logits, const std::vector<int>& history);
  const SamplerOptions& options() const { return o_; }
  int vocab_size() const { return vocab_; }

 private:
  SamplerOptions o_;
  int vocab_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cand_;
};

}  // namespace sqz
