#include "tools/common.h"

#include "quantize/pipeline.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>

namespace sqz::tools {

void add_model_options(cxxopts::Options& o) {
  o.add_options("model")
      ("m,model", "model: HF folder or .safetensors, llama2.c .bin, or packed .sqz",
       cxxopts::value<std::string>())
      ("tokenizer", "SentencePiece tokenizer.model (when the model file holds none)",
       cxxopts::value<std::string>()->default_value(""))
      ("c,ctx-size", "context size in tokens (0: the model's trained context)",
       cxxopts::value<int>()->default_value("0"))
      ("t,threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
      ("device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"));
}

void add_sampling_options(cxxopts::Options& o) {
  o.add_options("sampling")
      ("temp", "temperature; 0 = greedy", cxxopts::value<float>()->default_value("0.8"))
      ("top-k", "top-k sampling (0 = off)", cxxopts::value<int>()->default_value("40"))
      ("top-p", "top-p sampling (1.0 = off)", cxxopts::value<float>()->default_value("0.95"))
      ("min-p", "min-p sampling (0.0 = off)", cxxopts::value<float>()->default_value("0.05"))
      ("repeat-penalty", "penalise repeated tokens (1.0 = off)",
       cxxopts::value<float>()->default_value("1.0"))
      ("repeat-last-n", "tokens considered by the penalties (-1 = whole context)",
       cxxopts::value<int>()->default_value("64"))
      ("presence-penalty", "presence penalty (0.0 = off)",
       cxxopts::value<float>()->default_value("0.0"))
      ("frequency-penalty", "frequency penalty (0.0 = off)",
       cxxopts::value<float>()->default_value("0.0"))
      ("s,seed", "RNG seed (-1 = random)", cxxopts::value<int64_t>()->default_value("-1"));
}

EngineOptions engine_options(const cxxopts::ParseResult& r) {
  if (!r.count("model")) throw usage_error("-m/--model is required");
  EngineOptions e;
  e.model_path = r["model"].as<std::string>();
  e.tokenizer_path = r["tokenizer"].as<std::string>();
  e.ctx_size = r["ctx-size"].as<int>();
  e.n_threads = r["threads"].as<int>();
  e.device = r["device"].as<std::string>();
  if (e.ctx_size < 0) throw usage_error("-c/--ctx-size must be >= 0");
  if (e.n_threads < 0) throw usage_error("-t/--threads must be >= 0");
  return e;
}

SamplerOptions sampler_options(const cxxopts::ParseResult& r) {
  SamplerOptions s;
  s.temp = r["temp"].as<float>();
  s.top_k = r["top-k"].as<int>();
  s.top_p = r["top-p"].as<float>();
  s.min_p = r["min-p"].as<float>();
  s.repeat_penalty = r["repeat-penalty"].as<float>();
  s.repeat_last_n = r["repeat-last-n"].as<int>();
  s.presence_penalty = r["presence-penalty"].as<float>();
  s.frequency_penalty = r["frequency-penalty"].as<float>();
  int64_t seed = r["seed"].as<int64_t>();
  if (seed < 0) seed = int64_t(std::random_device{}() & 0x7fffffff);
  s.seed = uint64_t(seed);
  if (s.top_p <= 0 || s.top_p > 1) throw usage_error("--top-p must be in (0, 1]");
  if (s.min_p < 0 || s.min_p > 1) throw usage_error("--min-p must be in [0, 1]");
  if (s.repeat_penalty <= 0) throw usage_error("--repeat-penalty must be > 0");
  if (s.top_k < 0) throw usage_error("--top-k must be >= 0");
  if (s.repeat_last_n < -1) throw usage_error("--repeat-last-n must be >= -1");
  return s;
}

bool parse(cxxopts::Options& o, int argc, char** argv, cxxopts::ParseResult* out) {
  std::vector<std::string> args(argv, argv + argc);
  for (auto& a : args)
    if (a == "-sys") a = "--system-prompt";
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  o.add_options()("h,help", "print this help");
  try {
    *out = o.parse(int(ptrs.size()), ptrs.data());
  } catch (const cxxopts::exceptions::exception& e) {
    throw usage_error(std::string(e.what()) + " (see --help)");
  }
  if (out->count("help")) {
    std::printf("%s\n", o.help().c_str());
    return false;
  }
  if (!out->unmatched().empty())
    throw usage_error("unexpected argument '" + out->unmatched()[0] + "' (see --help)");
  return true;
}

std::string read_text_file(const std::string& path) { return read_bytes(path); }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += char(c);
        }
    }
  }
  return o;
}

Progress::Progress(std::string what, int64_t total)
    : what_(std::move(what)), total_(total), t0_(now_seconds()), tty_(isatty(2)) {}

static std::string fmt_time(double s) {
  char b[32];
  int t = int(s + 0.5);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%dh%02dm", t / 3600, t / 60 % 60);
  else
    std::snprintf(b, sizeof b, "%dm%02ds", t / 60, t % 60);
  return b;
}

void Progress::update(int64_t done, const std::string& extra) {
  double el = now_seconds() - t0_;
  double eta = done > 0 ? el / done * (total_ - done) : 0;
  std::fprintf(stderr, "%s%s: %lld/%lld (%.0f%%) elapsed %s ETA %s %s%s", tty_ ? "\r\033[K" : "",
               what_.c_str(), (long long)done, (long long)total_,
               total_ ? 100.0 * done / total_ : 100.0, fmt_time(el).c_str(),
               fmt_time(eta).c_str(), extra.c_str(), tty_ ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish(const std::string& extra) {
  std::fprintf(stderr, "%s%s: done in %s %s\n", tty_ ? "\r\033[K" : "", what_.c_str(),
               fmt_time(now_seconds() - t0_).c_str(), extra.c_str());
}

}  // namespace sqz::tools
