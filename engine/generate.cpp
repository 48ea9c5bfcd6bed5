#include "engine/generate.h"

#include <algorithm>
#include <chrono>

namespace sqz {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

int prefill(Backend& be, SeqState& s, const std::vector<int>& tokens, float* logits) {
  if (tokens.empty()) throw std::invalid_argument("prefill: empty prompt");
  if (int(tokens.size()) > be.ctx_size())
    throw context_full_error("prompt of " + std::to_string(tokens.size()) +
                             " tokens does not fit the context of " +
                             std::to_string(be.ctx_size()) + " (raise -c/--ctx-size)");
  size_t keep = 0;
  while (keep < s.tokens.size() && keep + 1 < tokens.size() && s.tokens[keep] == tokens[keep])
    keep++;
  s.tokens.assign(tokens.begin(), tokens.begin() + keep);
  Batch b;
  for (size_t start = keep; start < tokens.size(); start += be.max_batch()) {
    size_t end = std::min(tokens.size(), start + size_t(be.max_batch()));
    b.clear();
    for (size_t i = start; i < end; i++) b.add(tokens[i], int(i), s.id, i + 1 == tokens.size());
    be.forward(b, logits);
    s.tokens.insert(s.tokens.end(), tokens.begin() + start, tokens.begin() + end);
  }
  return int(tokens.size() - keep);
}

std::vector<GenerateStats> generate(Backend& be, const std::vector<SeqState*>& seqs,
                                    const std::vector<std::vector<int>>& prompts,
                                    const std::vector<Sampler*>& samplers,
                                    const GenerateOptions& o, const TokenCallback& on_token) {
  const size_t n = seqs.size();
  std::vector<GenerateStats> st(n);
  std::vector<std::vector<float>> logits(n);
  std::vector<char> active(n, o.n_predict != 0);
  const int vocab = n ? samplers[0]->vocab_size() : 0;
  for (size_t i = 0; i < n; i++) {
    logits[i].resize(vocab);
    double t0 = now_s();
    st[i].n_prompt = int(prompts[i].size());
    st[i].n_prefill = prefill(be, *seqs[i], prompts[i], logits[i].data());
    st[i].prefill_s = now_s() - t0;
    if (o.n_predict == 0) st[i].stop_reason = "length";
  }
  std::vector<float> step_logits;
  Batch b;
  std::vector<size_t> order;
  for (;;) {
    b.clear();
    order.clear();
    for (size_t i = 0; i < n; i++) {
      if (!active[i]) continue;
      SeqState& s = *seqs[i];
      int tok = samplers[i]->sample(logits[i].data(), s.tokens);
      st[i].n_gen++;
      bool stop_tok = std::find(o.stop_ids.begin(), o.stop_ids.end(), tok) != o.stop_ids.end();
      bool keep_going = on_token(int(i), tok);
      if (stop_tok) {
        st[i].stop_reason = "eos";
      } else if (!keep_going) {
        st[i].stop_reason = "interrupted";
      } else if (o.n_predict >= 0 && st[i].n_gen >= o.n_predict) {
        st[i].stop_reason = "length";
      } else if (int(s.tokens.size()) + 1 > be.ctx_size()) {
        st[i].stop_reason = "context";
      }
      if (!st[i].stop_reason.empty()) {
        active[i] = 0;  // the last token is not run: the cache ends before it
        continue;
      }
      b.add(tok, int(s.tokens.size()), s.id, true);
      s.tokens.push_back(tok);
      order.push_back(i);
    }
    if (order.empty()) break;
    double t0 = now_s();
    step_logits.resize(order.size() * size_t(vocab));
    be.forward(b, step_logits.data());
    double dt = now_s() - t0;
    for (size_t k = 0; k < order.size(); k++) {
      std::copy_n(step_logits.data() + k * vocab, vocab, logits[order[k]].data());
      st[order[k]].decode_s += dt;
    }
  }
  return st;
}

}  // namespace sqz
