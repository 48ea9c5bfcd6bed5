// sqz calibrate: squared gradients (SqueezeLLM's sensitivity, a diagonal Fisher) of every
// linear weight over samples of a text, written as safetensors under the checkpoint's tensor
// names, ready for `sqz quantize --gradients`. Conventions: quantize/calibrate.h.
#include <chrono>
#include <cstdio>
#include <memory>

#include "quantize/calibrate.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

// calibrate() with progress and ETA on stderr and a summary on stdout; also used by
// `sqz quantize --calibrate`.
CalibrateResult run_calibration(const CalibrateOptions& o) {
  std::fprintf(stderr, "calibrate: %s, %d %s samples x %d tokens from %s\n", o.model_path.c_str(),
               o.n_samples, calib_sampling_name(o.sampling), o.seqlen, o.data_path.c_str());
  std::unique_ptr<Progress> progress;  // started when the first sample starts
  double sum = 0, t_last = 0;
  CalibrateResult res = calibrate(o, [&](int done, int total, double loss) {
    const double t = std::chrono::duration<double>(
                         std::chrono::steady_clock::now().time_since_epoch()).count();
    if (done == 0) {
      progress = std::make_unique<Progress>("calibrate", total);
      t_last = t;
      return;
    }
    sum += loss;
    char extra[96];
    const double dt = t - t_last;
    if (dt < 1.0)
      std::snprintf(extra, sizeof extra, "loss %.4f (mean %.4f) %.0f ms/sample", loss, sum / done,
                    1e3 * dt);
    else
      std::snprintf(extra, sizeof extra, "loss %.4f (mean %.4f) %.2f s/sample", loss, sum / done,
                    dt);
    t_last = t;
    progress->update(done, extra);
  });
  if (progress) progress->finish();
  std::printf("calibrate: %lld text tokens, %d samples x %d tokens, mean loss %.4f, %.1f s on %s "
              "(%.2f s/sample, %.0f tokens/s)\n",
              (long long)res.n_text_tokens, o.n_samples, o.seqlen, res.mean_loss, res.seconds,
              res.backend.c_str(), res.seconds / o.n_samples,
              double(o.n_samples) * o.seqlen / std::max(res.seconds, 1e-9));
  if (!o.samples_path.empty()) std::printf("wrote samples %s\n", o.samples_path.c_str());
  return res;
}

int cmd_calibrate(int argc, char** argv) {
  cxxopts::Options o("sqz calibrate",
                     "Squared gradients of every linear weight (SqueezeLLM sensitivity) over "
                     "samples of a text, for sqz quantize --gradients.");
  o.add_options("model")
      ("m,model", "dense checkpoint: HF folder or .safetensors, or llama2.c .bin",
       cxxopts::value<std::string>())
      ("tokenizer", "SentencePiece tokenizer.model (when the checkpoint holds none)",
       cxxopts::value<std::string>()->default_value(""))
      ("t,threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
      ("device", "auto (the GPU when one is usable, else the CPU), cpu or cuda (fp32 on the "
       "GPU: weights and squared gradients must fit in its memory)",
       cxxopts::value<std::string>()->default_value("auto"));
  o.add_options("calibration")
      ("data", "calibration text (UTF-8), tokenized once without BOS",
       cxxopts::value<std::string>())
      ("samples", "number of samples (official recipe: 100)",
       cxxopts::value<int>()->default_value("100"))
      ("seqlen", "tokens per sample, BOS included (official recipe: 512)",
       cxxopts::value<int>()->default_value("512"))
      ("sampling", "random (seeded offsets, the official recipe) or sequential (consecutive "
       "windows from the start)", cxxopts::value<std::string>()->default_value("random"))
      ("s,seed", "seed of the random offsets (std::mt19937_64)",
       cxxopts::value<int64_t>()->default_value("0"))
      ("save-samples", "also write the sample token ids (raw little-endian int32 [N, L])",
       cxxopts::value<std::string>()->default_value(""))
      ("o,output", "output safetensors (F32, checkpoint tensor names)",
       cxxopts::value<std::string>());
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("model")) throw usage_error("-m/--model is required");
  if (!r.count("data")) throw usage_error("--data is required (the calibration text)");
  if (!r.count("output")) throw usage_error("-o/--output is required");
  CalibrateOptions co;
  co.model_path = r["model"].as<std::string>();
  co.tokenizer_path = r["tokenizer"].as<std::string>();
  co.data_path = r["data"].as<std::string>();
  co.output_path = r["output"].as<std::string>();
  co.samples_path = r["save-samples"].as<std::string>();
  co.n_samples = r["samples"].as<int>();
  co.seqlen = r["seqlen"].as<int>();
  co.n_threads = r["threads"].as<int>();
  co.device = r["device"].as<std::string>();
  const int64_t seed = r["seed"].as<int64_t>();
  if (co.n_threads < 0) throw usage_error("-t/--threads must be >= 0");
  if (co.n_samples < 1) throw usage_error("--samples must be >= 1");
  if (co.seqlen < 2) throw usage_error("--seqlen must be >= 2 (BOS and one token)");
  if (seed < 0) throw usage_error("-s/--seed must be >= 0");
  if (co.device != "auto" && co.device != "cpu" && co.device != "cuda")
    throw usage_error("--device must be auto, cpu or cuda, not '" + co.device + "'");
  co.seed = uint64_t(seed);
  try {
    co.sampling = calib_sampling_from_name(r["sampling"].as<std::string>());
  } catch (const std::invalid_argument& e) {
    throw usage_error(e.what());
  }
  run_calibration(co);
  std::printf("wrote %s\n", co.output_path.c_str());
  return 0;
}

}  // namespace sqz::tools
