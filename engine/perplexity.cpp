#include "engine/perplexity.h"

#include "kernels/parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

namespace sqz {

double NllStats::ppl() const { return std::exp(mean()); }

double NllStats::ppl_stderr() const {
  if (count < 2) return 0;
  double m = mean(), var = nll2_sum / count - m * m;
  return var > 0 ? ppl() * std::sqrt(var / (count - 1)) : 0;
}

double log_sum_exp(const float* x, int n) {
  double mx = x[0];
  for (int i = 1; i < n; i++) mx = std::max(mx, double(x[i]));
  double sum = 0;
  for (int i = 0; i < n; i++) sum += std::exp(double(x[i]) - mx);
  return mx + std::log(sum);
}

double token_nll(const float* logits, int vocab, int target) {
  return log_sum_exp(logits, vocab) - logits[target];
}

int perplexity_chunks(size_t n_tokens, const PerplexityOptions& o) {
  int n = int(n_tokens / size_t(o.ctx));
  return o.max_chunks >= 0 ? std::min(n, o.max_chunks) : n;
}

NllStats perplexity(Backend& be, const std::vector<int>& tokens, const PerplexityOptions& o,
                    const std::function<void(const ChunkReport&)>& on_chunk,
                    const ScoredLogits& scored) {
  if (o.ctx < 2 || o.ctx > be.ctx_size())
    throw std::invalid_argument("perplexity: ctx " + std::to_string(o.ctx) +
                                " must be in [2, " + std::to_string(be.ctx_size()) + "]");
  if (o.method == PplMethod::LLAMACPP && o.ctx < 4)
    throw std::invalid_argument("perplexity: the llamacpp method needs ctx >= 4");
  const int n_chunks = perplexity_chunks(tokens.size(), o);
  if (n_chunks == 0)
    throw std::invalid_argument("perplexity: " + std::to_string(tokens.size()) +
                                " tokens are fewer than one window of " + std::to_string(o.ctx));
  const int first = o.method == PplMethod::GPTQ ? 0 : o.ctx / 2;  // first scoring position
  const int n_scored = o.ctx - 1 - first;
  const int V = o.vocab_size;
  std::vector<float> logits(size_t(n_scored) * V);
  std::vector<int> targets(n_scored);
  std::vector<double> nll(n_scored);
  ThreadPool pool(o.n_threads);
  NllStats total;
  Batch b;
  for (int c = 0; c < n_chunks; c++) {
    auto t0 = std::chrono::steady_clock::now();
    const int* w = tokens.data() + size_t(c) * o.ctx;
    // Positions [0, ctx) run in sub-batches; only positions >= first return logits.
    int out_row = 0;
    for (int start = 0; start < o.ctx; start += be.max_batch()) {
      int end = std::min(o.ctx, start + be.max_batch());
      b.clear();
      for (int i = start; i < end; i++) {
        int tok = (i == 0 && o.method == PplMethod::LLAMACPP) ? o.bos_id : w[i];
        b.add(tok, i, 0, i >= first && i < o.ctx - 1);
      }
      be.forward(b, logits.data() + size_t(out_row) * V);
      out_row += b.n_logits();
    }
    // The log-softmax of every scored row: on a GPU backend this host work is what is
    // left, so it runs on all cores; sums are taken in row order to stay deterministic.
    for (int k = 0; k < n_scored; k++) targets[k] = w[first + k + 1];
    pool.parallel_for(n_scored, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; k++) nll[k] = token_nll(logits.data() + size_t(k) * V, V, targets[k]);
    }, 16);
    NllStats chunk;
    for (int k = 0; k < n_scored; k++)
      chunk.nll_sum += nll[k], chunk.nll2_sum += nll[k] * nll[k], chunk.count++;
    total.nll_sum += chunk.nll_sum, total.nll2_sum += chunk.nll2_sum, total.count += chunk.count;
    if (scored) scored(c, logits.data(), targets.data(), n_scored);
    ChunkReport r;
    r.chunk = c, r.n_chunks = n_chunks, r.chunk_ppl = chunk.ppl(), r.total = total;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (on_chunk) on_chunk(r);
  }
  return total;
}

}  // namespace sqz
