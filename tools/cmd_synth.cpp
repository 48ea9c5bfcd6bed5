// sqz synth: a synthetic packed model with real LLaMA shapes (and its FP16 twin) for speed
// measurements without real weights.
#include <cstdio>

#include "quantize/synth.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

int cmd_synth(int argc, char** argv) {
  cxxopts::Options o("sqz synth", std::string("Write a synthetic packed model with real shapes.\n"
                                              "Shapes: ") + synth_shapes());
  o.add_options()
      ("shape", "model shape", cxxopts::value<std::string>()->default_value("llama-7b"))
      ("bits", "3 or 4 (2 as an experiment)", cxxopts::value<int>()->default_value("3"))
      ("outliers", "outlier share per module, PCT", cxxopts::value<double>()->default_value("0.45"))
      ("tokenizer", "SentencePiece model embedded in the file (vocab 32000 for LLaMA shapes)",
       cxxopts::value<std::string>())
      ("o,output", "packed .sqz file", cxxopts::value<std::string>())
      ("fp16", "also write the FP16 twin (HF folder) here", cxxopts::value<std::string>()->default_value(""))
      ("seed", "random seed", cxxopts::value<uint64_t>()->default_value("1"))
      ("t,threads", "threads (0: all cores)", cxxopts::value<int>()->default_value("0"));
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("output")) throw usage_error("-o/--output is required");
  if (!r.count("tokenizer")) throw usage_error("--tokenizer is required (the file embeds one)");
  SynthOptions s;
  s.shape = r["shape"].as<std::string>();
  s.bits = r["bits"].as<int>();
  s.outliers_pct = r["outliers"].as<double>();
  s.tokenizer_path = r["tokenizer"].as<std::string>();
  s.out_packed = r["output"].as<std::string>();
  s.out_fp16_dir = r["fp16"].as<std::string>();
  s.seed = r["seed"].as<uint64_t>();
  s.n_threads = r["threads"].as<int>();
  if (s.bits < 2 || s.bits > 4) throw usage_error("--bits must be 2, 3 or 4");
  if (s.outliers_pct < 0 || s.outliers_pct > 100) throw usage_error("--outliers is a percentage");
  synth_config(s.shape);  // validates the name before any work
  double t0 = now_seconds();
  write_synthetic(s);
  std::printf("wrote %s%s%s in %.1f s\n", s.out_packed.c_str(), s.out_fp16_dir.empty() ? "" : " and ",
              s.out_fp16_dir.c_str(), now_seconds() - t0);
  return 0;
}

}  // namespace sqz::tools
