#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unordered_map>

namespace sqz {

std::string SamplerOptions::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "repeat_last_n = %d, repeat_penalty = %.3f, frequency_penalty = %.3f, "
                "presence_penalty = %.3f, top_k = %d, top_p = %.3f, min_p = %.3f, temp = %.3f, "
                "seed = %llu",
                repeat_last_n, repeat_penalty, frequency_penalty, presence_penalty, top_k, top_p,
                min_p, temp, (unsigned long long)seed);
  return buf;
}

namespace sampling {

// llama.cpp: a repeated token's positive logit is divided by the penalty, a negative one
// multiplied; then logit -= count * frequency + (count > 0) * presence.
void penalties(std::vector<Candidate>& c, const std::vector<int>& last_tokens, float repeat,
               float presence, float frequency) {
  if (last_tokens.empty() || (repeat == 1.0f && presence == 0.0f && frequency == 0.0f)) return;
  std::unordered_map<int, int> count;
  for (int t : last_tokens) count[t]++;
  for (Candidate& x : c) {
    auto it = count.find(x.id);
    if (it == count.end()) continue;
    if (repeat != 1.0f) x.logit = x.logit <= 0 ? x.logit * repeat : x.logit / repeat;
    x.logit -= float(it->second) * frequency + presence;
  }
}

static bool by_logit(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

void top_k(std::vector<Candidate>& c, int k) {
  if (k <= 0 || k >= int(c.size())) {
    std::sort(c.begin(), c.end(), by_logit);
    return;
  }
  std::partial_sort(c.begin(), c.begin() + k, c.end(), by_logit);
  c.resize(k);
}

void softmax(std::vector<Candidate>& c) {
  std::sort(c.begin(), c.end(), by_logit);
  const float mx = c[0].logit;
  double sum = 0;
  for (Candidate& x : c) sum += x.p = std::exp(x.logit - mx);
  for (Candidate& x : c) x.p = float(x.p / sum);
}

void top_p(std::vector<Candidate>& c, float p) {
  if (p >= 1.0f || c.size() <= 1) return;
  softmax(c);
  double cum = 0;
  size_t keep = c.size();
  for (size_t i = 0; i < c.size(); i++) {
    cum += c[i].p;
    if (cum >= p) {
      keep = i + 1;
      break;
    }
  }
  c.resize(std::max<size_t>(1, keep));
}

// Relative to the most likely token: logit_i >= logit_max + log(p).
void min_p(std::vector<Candidate>& c, float p) {
  if (p <= 0.0f || c.size() <= 1) return;
  float mx = -INFINITY;
  for (const Candidate& x : c) mx = std::max(mx, x.logit);
  const float cut = mx + std::log(p);
  std::vector<Candidate> kept;
  for (const Candidate& x : c)
    if (x.logit >= cut) kept.push_back(x);
  if (!kept.empty()) c.swap(kept);
}

void temperature(std::vector<Candidate>& c, float t) {
  for (Candidate& x : c) x.logit /= t;
}

int greedy(const std::vector<Candidate>& c) {
  const Candidate* best = &c[0];
  for (const Candidate& x : c)
    if (by_logit(x, *best)) best = &x;
  return best->id;
}

}  // namespace sampling

Sampler::Sampler(const SamplerOptions& o, int vocab_size) : o_(o), vocab_(vocab_size), rng_(o.seed) {}

int Sampler::sample(const float* logits, const std::vector<int>& history) {
  cand_.resize(vocab_);
  for (int i = 0; i < vocab_; i++) cand_[i] = {i, logits[i], 0.0f};
  const int n = o_.repeat_last_n < 0 ? int(history.size())
                                     : std::min<int>(o_.repeat_last_n, int(history.size()));
  std::vector<int> last(history.end() - n, history.end());
  sampling::penalties(cand_, last, o_.repeat_penalty, o_.presence_penalty, o_.frequency_penalty);
  if (o_.temp <= 0.0f) return sampling::greedy(cand_);
  sampling::top_k(cand_, o_.top_k);
  sampling::top_p(cand_, o_.top_p);
  sampling::min_p(cand_, o_.min_p);
  sampling::temperature(cand_, o_.temp);
  sampling::softmax(cand_);
  // Draw with 53 random bits; the same seed gives the same sequence on every platform
  // (std::uniform_real_distribution is not specified bit-for-bit).
  double u = double(rng_() >> 11) * (1.0 / 9007199254740992.0), cum = 0;
  for (const Candidate& x : cand_) {
    cum += x.p;
    if (u < cum) return x.id;
  }
  return cand_.back().id;
}

}  // namespace sqz
