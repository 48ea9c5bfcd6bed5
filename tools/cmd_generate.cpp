// sqz generate: text from a prompt (-p) or a file of prompts (-f, one per line), several
// prompts decoded together with --batch N; --json writes one line per prompt.
#include <cstdio>
#include <memory>
#include <sstream>

#include "engine/generate.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

namespace {

std::vector<std::string> read_prompts(const cxxopts::ParseResult& r) {
  std::vector<std::string> prompts;
  if (r.count("prompt")) prompts.push_back(r["prompt"].as<std::string>());
  if (r.count("file")) {
    std::stringstream ss(read_text_file(r["file"].as<std::string>()));
    std::string line;
    while (std::getline(ss, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) prompts.push_back(line);
    }
    if (prompts.empty()) throw usage_error(r["file"].as<std::string>() + ": no prompts in file");
  }
  if (prompts.empty()) throw usage_error("give a prompt with -p TEXT or a file of prompts with -f FILE");
  return prompts;
}

std::string ids_json(const std::vector<int>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); i++) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  cxxopts::Options o("sqz generate", "Generate text from a prompt or a file of prompts.");
  add_model_options(o);
  add_sampling_options(o);
  o.add_options("generation")
      ("p,prompt", "prompt text", cxxopts::value<std::string>())
      ("f,file", "file of prompts, one per line", cxxopts::value<std::string>())
      ("n,n-predict", "tokens to generate (-1 = until EOS or the context is full)",
       cxxopts::value<int>()->default_value("-1"))
      ("batch", "prompts decoded together", cxxopts::value<int>()->default_value("1"))
      ("ignore-eos", "keep generating past the end-of-sequence token")
      ("json", "one JSON line per prompt: text, token ids, timings")
      ("no-bos", "do not prepend the BOS token");
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  std::vector<std::string> prompts = read_prompts(r);
  const int n_predict = r["n-predict"].as<int>();
  const int batch = r["batch"].as<int>();
  const bool json = r.count("json"), add_bos = !r.count("no-bos");
  if (n_predict < -1) throw usage_error("-n/--n-predict must be >= -1");
  if (batch < 1) throw usage_error("--batch must be >= 1");
  EngineOptions eo = engine_options(r);
  eo.n_seqs = std::min<int>(batch, int(prompts.size()));
  Engine engine(eo);
  const Tokenizer& tok = engine.tokenizer();
  SamplerOptions so = sampler_options(r);
  if (!json) std::fprintf(stderr, "sampler: %s\n", so.describe().c_str());

  GenerateOptions go;
  go.n_predict = n_predict;
  if (!r.count("ignore-eos")) go.stop_ids = {tok.eos_id()};
  std::vector<SeqState> slots(eo.n_seqs);
  for (int i = 0; i < eo.n_seqs; i++) slots[i].id = i;

  for (size_t first = 0; first < prompts.size(); first += eo.n_seqs) {
    size_t n = std::min(prompts.size() - first, size_t(eo.n_seqs));
    std::vector<SeqState*> seqs;
    std::vector<std::vector<int>> ids(n), out_ids(n);
    std::vector<std::unique_ptr<Sampler>> samplers;
    std::vector<Sampler*> sp;
    std::vector<StreamDecoder> dec;
    std::vector<std::string> text(n);
    for (size_t i = 0; i < n; i++) {
      seqs.push_back(&slots[i]);
      ids[i] = tok.encode(prompts[first + i], add_bos);
      // Each prompt gets the same seed, so a prompt gives the same tokens alone or batched.
      samplers.push_back(std::make_unique<Sampler>(so, engine.config().vocab_size));
      sp.push_back(samplers.back().get());
      dec.emplace_back(tok);
      dec.back().reset(false);  // a continuation: its first piece keeps its leading space
    }
    // Streaming to the terminal only makes sense for one prompt at a time.
    const bool stream = !json && n == 1;
    if (stream) {
      std::printf("%s", prompts[first].c_str());
      std::fflush(stdout);
    }
    auto stats = generate(engine.backend(), seqs, ids, sp, go, [&](int i, int token) {
      if (token == tok.eos_id() && !r.count("ignore-eos")) return true;
      out_ids[i].push_back(token);
      std::string piece = dec[i].push(token);
      text[i] += piece;
      if (stream) {
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    for (size_t i = 0; i < n; i++) {
      const std::string tail = dec[i].flush();
      text[i] += tail;
      const GenerateStats& s = stats[i];
      double pp_tps = s.prefill_s > 0 ? s.n_prefill / s.prefill_s : 0;
      double tg_tps = s.decode_s > 0 ? (s.n_gen - 1) / s.decode_s : 0;
      if (json) {
        std::printf(
            "{\"prompt\":\"%s\",\"text\":\"%s\",\"prompt_ids\":%s,\"ids\":%s,\"n_prompt\":%d,"
            "\"n_gen\":%zu,\"stop\":\"%s\",\"timings\":{\"prefill_ms\":%.3f,\"decode_ms\":%.3f,"
            "\"prefill_tps\":%.2f,\"decode_tps\":%.2f}}\n",
            json_escape(prompts[first + i]).c_str(), json_escape(text[i]).c_str(),
            ids_json(ids[i]).c_str(), ids_json(out_ids[i]).c_str(), s.n_prompt,
            out_ids[i].size(), s.stop_reason.c_str(), s.prefill_s * 1e3, s.decode_s * 1e3,
            pp_tps, tg_tps);
      } else {
        if (stream)
          std::fputs(tail.c_str(), stdout);
        else
          std::printf("%s%s", prompts[first + i].c_str(), text[i].c_str());
        std::printf("\n");
        if (n > 1 || prompts.size() > 1) std::printf("\n");
        std::fflush(stdout);  // the timing line on stderr comes after the text
        std::fprintf(stderr,
                     "prompt %zu: %d prompt tokens %.2f ms (%.1f tok/s), %d generated %.2f ms "
                     "(%.1f tok/s), stop: %s\n",
                     first + i + 1, s.n_prompt, s.prefill_s * 1e3, pp_tps, s.n_gen,
                     s.decode_s * 1e3, tg_tps, s.stop_reason.c_str());
      }
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace sqz::tools
