// sqz perplexity: perplexity of a text file under either convention (DESIGN.md section 5),
// printing running per-chunk values as llama.cpp does and, last on stdout,
// "Final estimate: PPL = <value> +/- <stderr>".
#include <cstdio>
#include <memory>

#include "engine/kl_divergence.h"
#include "engine/perplexity.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

int cmd_perplexity(int argc, char** argv) {
  cxxopts::Options o("sqz perplexity", "Perplexity of a text file.");
  add_model_options(o);
  o.add_options("perplexity")
      ("f,file", "text file (wiki.test.raw for llamacpp, wiki.test.gptq_join.txt for gptq)",
       cxxopts::value<std::string>())
      ("ppl-method", "gptq: windows of -c, all positions scored; llamacpp: chunks of -c "
       "(default 512), BOS first, second half scored",
       cxxopts::value<std::string>()->default_value("llamacpp"))
      ("chunks", "stop after N windows (-1 = all)", cxxopts::value<int>()->default_value("-1"))
      ("b,batch-size", "tokens per forward call", cxxopts::value<int>()->default_value("512"))
      ("save-logits", "save the scored positions' logits (the reference for --kl-base)",
       cxxopts::value<std::string>()->default_value(""))
      ("kl-base", "compare with logits saved by --save-logits: KL divergence, top-1 agreement",
       cxxopts::value<std::string>()->default_value(""));
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("file")) throw usage_error("-f/--file is required");
  PerplexityOptions po;
  const std::string method = r["ppl-method"].as<std::string>();
  if (method == "gptq")
    po.method = PplMethod::GPTQ;
  else if (method == "llamacpp" || method == "llama.cpp")
    po.method = PplMethod::LLAMACPP;
  else
    throw usage_error("--ppl-method must be gptq or llamacpp, not '" + method + "'");
  po.max_chunks = r["chunks"].as<int>();
  EngineOptions eo = engine_options(r);
  eo.max_batch = r["batch-size"].as<int>();
  if (eo.max_batch < 1) throw usage_error("-b/--batch-size must be >= 1");
  // The window: -c when given; else 512 (llamacpp) or the trained context (gptq).
  const int ctx_flag = eo.ctx_size;
  std::string text = read_text_file(r["file"].as<std::string>());
  Engine engine(eo);
  const Config& c = engine.config();
  po.ctx = ctx_flag > 0 ? ctx_flag : (po.method == PplMethod::LLAMACPP ? 512 : c.seq_len);
  if (po.ctx > c.seq_len)
    std::fprintf(stderr, "warning: ctx %d is longer than the model's trained context %d\n",
                 po.ctx, c.seq_len);
  po.bos_id = engine.tokenizer().bos_id();
  po.vocab_size = c.vocab_size;
  po.n_threads = eo.n_threads;
  double t0 = now_seconds();
  std::vector<int> tokens = engine.tokenizer().encode(text, true);
  std::fprintf(stderr, "perplexity: %s, method %s, ctx %d: tokenized %zu tokens in %.2f s\n",
               r["file"].as<std::string>().c_str(), method.c_str(), po.ctx, tokens.size(),
               now_seconds() - t0);
  const int n_chunks = perplexity_chunks(tokens.size(), po);
  LogitsHeader lh;
  lh.method = method == "gptq" ? "gptq" : "llamacpp";
  lh.ctx = po.ctx, lh.vocab = c.vocab_size, lh.n_chunks = n_chunks;
  lh.n_scored = po.method == PplMethod::GPTQ ? po.ctx - 1 : po.ctx - 1 - po.ctx / 2;
  lh.n_tokens = int64_t(tokens.size()), lh.tokens_fnv1a = fnv1a(tokens);
  std::unique_ptr<LogitsWriter> writer;
  std::unique_ptr<LogitsReader> base;
  if (!r["save-logits"].as<std::string>().empty())
    writer = std::make_unique<LogitsWriter>(r["save-logits"].as<std::string>(), lh);
  if (!r["kl-base"].as<std::string>().empty()) {
    base = std::make_unique<LogitsReader>(r["kl-base"].as<std::string>());
    base->check_compatible(lh);
  }
  KlStats kl;
  NllStats base_nll;
  std::vector<float> base_logits;
  std::vector<int> base_targets;
  if (base) base_logits.resize(size_t(lh.n_scored) * lh.vocab), base_targets.resize(lh.n_scored);
  ScoredLogits on_scored = nullptr;
  if (writer || base)
    on_scored = [&](int chunk, const float* logits, const int* targets, int n_scored) {
      if (writer) writer->write_chunk(logits, targets);
      if (base) {
        base->read_chunk(chunk, base_logits.data(), base_targets.data());
        for (int k = 0; k < n_scored; k++) {
          const float* bl = base_logits.data() + size_t(k) * lh.vocab;
          kl.add(bl, logits + size_t(k) * lh.vocab, lh.vocab);
          double nll = token_nll(bl, lh.vocab, base_targets[k]);
          base_nll.nll_sum += nll, base_nll.nll2_sum += nll * nll, base_nll.count++;
        }
      }
    };
  Progress progress("perplexity", n_chunks);
  NllStats total = perplexity(engine.backend(), tokens, po, [&](const ChunkReport& rep) {
    std::printf("[%d]%.4f,", rep.chunk + 1, rep.total.ppl());
    std::fflush(stdout);
    char extra[64];
    std::snprintf(extra, sizeof extra, "PPL %.4f (%.2f s/chunk)", rep.total.ppl(), rep.seconds);
    progress.update(rep.chunk + 1, extra);
  }, on_scored);
  if (writer) {
    writer->close();
    std::fprintf(stderr, "saved logits of %d chunks to %s\n", n_chunks,
                 r["save-logits"].as<std::string>().c_str());
  }
  std::printf("\n");
  progress.finish();
  std::printf("method %s, ctx %d, %d chunks, %lld scored tokens, mean NLL %.6f\n", method.c_str(),
              po.ctx, n_chunks, (long long)total.count, total.mean());
  if (base) std::printf("%s", kl.report(base_nll, total).c_str());
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", total.ppl(), total.ppl_stderr());
  return 0;
}

}  // namespace sqz::tools
