// sqz quantize: checkpoint (+ squared gradients) -> packed .sqz, with the size table and an
// optional HTML report.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "engine/engine.h"
#include "kernels/lut_grid.h"
#include "model/packed.h"
#include "tokenizer/tokenizer.h"
#include "quantize/calibrate.h"
#include "quantize/pipeline.h"
#include "quantize/report.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

void add_quant_options(cxxopts::Options& o) {
  o.add_options("quantization")
      ("gradients", "squared gradients (safetensors, checkpoint tensor names)",
       cxxopts::value<std::string>()->default_value(""))
      ("method", "squeeze (SqueezeLLM) or rtn (uniform round-to-nearest baseline)",
       cxxopts::value<std::string>()->default_value("squeeze"))
      ("bits", "bits per dense weight: 3 or 4 (2 as an experiment)",
       cxxopts::value<int>()->default_value("3"))
      ("outliers", "magnitude outliers: top PCT% of |w| per module",
       cxxopts::value<double>()->default_value("0"))
      ("outlier-range", "magnitude outliers by the IQR rule with range r (official recipe; 0 = off)",
       cxxopts::value<double>()->default_value("0"))
      ("sensitive", "sensitive outliers: top PCT% of the gradients per module (needs --gradients)",
       cxxopts::value<double>()->default_value("0"))
      ("group-size", "RTN group size", cxxopts::value<int>()->default_value("128"))
      ("kmeans", "exact (1-D dynamic program) or lloyd (official k-means++ + 50 iterations)",
       cxxopts::value<std::string>()->default_value("exact"))
      ("lut-grid", "on: snap each row's 4-bit centroids onto a power-of-two grid of <= 256 "
       "steps, which the CUDA GEMV decodes faster (8-bit codes); off: plain fp16 centroids",
       cxxopts::value<std::string>()->default_value("on"))
      ("overrides", "JSON file of per-module settings", cxxopts::value<std::string>()->default_value(""))
      ("quantize-head", "quantize the output head too (FP16 by default)");
}

QuantizeOptions quant_options(const cxxopts::ParseResult& r) {
  QuantizeOptions q;
  if (!r.count("model")) throw usage_error("-m/--model is required");
  q.model_path = r["model"].as<std::string>();
  q.tokenizer_path = r["tokenizer"].as<std::string>();
  q.gradients_path = r["gradients"].as<std::string>();
  q.overrides_path = r["overrides"].as<std::string>();
  q.n_threads = r["threads"].as<int>();
  q.quantize_head = r.count("quantize-head") > 0;
  const std::string method = r["method"].as<std::string>();
  if (method != "squeeze" && method != "rtn")
    throw usage_error("--method must be squeeze or rtn, not '" + method + "'");
  q.base.kind = method;
  q.base.q.method = method == "rtn" ? QuantMethod::RTN : QuantMethod::SQUEEZE;
  q.base.q.bits = r["bits"].as<int>();
  if (q.base.q.bits < 2 || q.base.q.bits > 4) throw usage_error("--bits must be 2, 3 or 4");
  q.base.q.outliers.magnitude_pct = r["outliers"].as<double>();
  q.base.q.outliers.iqr_range = r["outlier-range"].as<double>();
  q.base.q.outliers.sensitive_pct = r["sensitive"].as<double>();
  q.base.q.rtn_group = r["group-size"].as<int>();
  const std::string km = r["kmeans"].as<std::string>();
  if (km != "exact" && km != "lloyd") throw usage_error("--kmeans must be exact or lloyd");
  q.base.q.exact_kmeans = km == "exact";
  const std::string grid = r["lut-grid"].as<std::string>();
  if (grid != "on" && grid != "off") throw usage_error("--lut-grid must be on or off");
  q.base.q.lut_grid = grid == "on";
  auto pct_ok = [](double v) { return v >= 0 && v <= 100; };
  if (!pct_ok(q.base.q.outliers.magnitude_pct) || !pct_ok(q.base.q.outliers.sensitive_pct))
    throw usage_error("--outliers and --sensitive are percentages in [0, 100]");
  if (q.base.q.outliers.iqr_range < 0) throw usage_error("--outlier-range must be >= 0");
  if (q.base.q.rtn_group < 1) throw usage_error("--group-size must be >= 1");
  if (q.base.q.outliers.sensitive_pct > 0 && q.gradients_path.empty() && !r.count("calibrate"))
    throw usage_error("--sensitive needs --gradients FILE (squared gradients) or --calibrate TEXT");
  if (method == "rtn" && (q.base.q.outliers.magnitude_pct > 0 || q.base.q.outliers.sensitive_pct > 0))
    throw usage_error("--method rtn takes no outliers");
  return q;
}

CalibrateResult run_calibration(const CalibrateOptions& o);  // cmd_calibrate.cpp

// The gradients of --calibrate live in a temporary file, removed when quantize ends, also
// when a signal ends it (F is 4 bytes per weight: 26 GiB for LLaMA-7B). The signal handler
// can only reach the path through a static buffer.
char g_temp_gradients[4096];
extern "C" void remove_temp_gradients(int sig) {
  if (g_temp_gradients[0]) unlink(g_temp_gradients);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
struct TempGradients {
  std::string path;
  void set(const std::string& p) {
    path = p;
    std::snprintf(g_temp_gradients, sizeof g_temp_gradients, "%s", p.c_str());
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) std::signal(sig, remove_temp_gradients);
  }
  ~TempGradients() {
    if (path.empty()) return;
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) std::signal(sig, SIG_DFL);
    std::remove(path.c_str());
    g_temp_gradients[0] = 0;
  }
};

int cmd_quantize(int argc, char** argv) {
  cxxopts::Options o("sqz quantize", "Quantize a checkpoint with SqueezeLLM into one packed .sqz file.");
  o.add_options("model")
      ("m,model", "checkpoint: HF folder or .safetensors, or llama2.c .bin", cxxopts::value<std::string>())
      ("tokenizer", "SentencePiece tokenizer.model (when the checkpoint holds none)",
       cxxopts::value<std::string>()->default_value(""))
      ("o,output", "output .sqz file", cxxopts::value<std::string>())
      ("t,threads", "threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
      ("device", "auto (the GPU when one is usable, else the CPU), cpu or cuda: where the "
       "k-means, the outlier selection and --calibrate run (the file is the same either way)",
       cxxopts::value<std::string>()->default_value("auto"));
  add_quant_options(o);
  o.add_options("calibration")
      ("calibrate", "compute the gradients first from this text, as sqz calibrate does "
       "(instead of --gradients)", cxxopts::value<std::string>())
      ("calib-samples", "calibration samples", cxxopts::value<int>()->default_value("100"))
      ("calib-seqlen", "tokens per calibration sample", cxxopts::value<int>()->default_value("512"))
      ("calib-seed", "seed of the random sample offsets", cxxopts::value<int64_t>()->default_value("0"))
      ("calib-sampling", "random or sequential", cxxopts::value<std::string>()->default_value("random"));
  o.add_options("report")
      ("chat-template", "store the model's chat template (llama-2, zephyr, chatml, raw) for "
       "`sqz chat`", cxxopts::value<std::string>()->default_value(""))
      ("report", "write an HTML report with plots", cxxopts::value<std::string>()->default_value(""))
      ("report-module", "module drawn in the report", cxxopts::value<std::string>()->default_value("layers.0.wq"))
      ("report-row", "row of that module for the histogram", cxxopts::value<int>()->default_value("0"));
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("output")) throw usage_error("-o/--output is required");
  if (!r["chat-template"].as<std::string>().empty())
    chat_template_from_name(r["chat-template"].as<std::string>());  // a bad name fails before the work
  QuantizeOptions q = quant_options(r);
  const std::string device = r["device"].as<std::string>();
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw usage_error("--device must be auto, cpu or cuda, not '" + device + "'");
  if (device == "cuda" && !cuda_available())
    throw std::runtime_error(
        "--device cuda: no usable CUDA GPU was found (or this build has no CUDA backend); use "
        "--device cpu");
  q.base.q.use_cuda = device == "cuda" || (device == "auto" && cuda_available());
  q.report_module = r["report-module"].as<std::string>();
  q.report_row = r["report-row"].as<int>();
  TempGradients calib_grads;
  if (r.count("calibrate")) {
    if (!q.gradients_path.empty()) throw usage_error("--calibrate and --gradients exclude each other");
    CalibrateOptions co;
    co.model_path = q.model_path, co.tokenizer_path = q.tokenizer_path;
    co.data_path = r["calibrate"].as<std::string>();
    co.n_samples = r["calib-samples"].as<int>(), co.seqlen = r["calib-seqlen"].as<int>();
    co.n_threads = q.n_threads;
    co.device = device;
    if (q.n_threads < 0) throw usage_error("-t/--threads must be >= 0");
    if (co.n_samples < 1) throw usage_error("--calib-samples must be >= 1");
    if (co.seqlen < 2) throw usage_error("--calib-seqlen must be >= 2");
    if (r["calib-seed"].as<int64_t>() < 0) throw usage_error("--calib-seed must be >= 0");
    co.seed = uint64_t(r["calib-seed"].as<int64_t>());
    const std::string sampling = r["calib-sampling"].as<std::string>();
    if (sampling != "random" && sampling != "sequential")
      throw usage_error("--calib-sampling must be random or sequential, not '" + sampling + "'");
    co.sampling = calib_sampling_from_name(sampling);
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/sqz-calib-XXXXXX.safetensors";
    int fd = mkstemps(tmpl.data(), 12);
    if (fd < 0) throw std::runtime_error(tmpl + ": cannot create a temporary file for the gradients");
    close(fd);
    calib_grads.set(tmpl);
    co.output_path = tmpl;
    run_calibration(co);
    q.gradients_path = calib_grads.path;
    q.gradients_note = "computed by --calibrate " + co.data_path;
  }
  Progress progress("quantize", 100);
  QuantizeResult res = quantize_model(q, [&](int64_t done, int64_t total, const std::string& name) {
    progress.update(done * 100 / std::max<int64_t>(1, total), name);
  });
  progress.finish();
  const std::string out = r["output"].as<std::string>();
  if (!r["chat-template"].as<std::string>().empty())
    res.metadata["sqz.chat_template"] =
        chat_template_name(chat_template_from_name(r["chat-template"].as<std::string>()));
  save_packed(out, res.model, res.metadata);
  std::printf("%s", size_table(res.modules, res.model).c_str());
  double t_load = 0, t_out = 0, t_km = 0, t_rows = 0;
  for (const ModuleReport& m : res.modules)
    t_load += m.seconds_load, t_out += m.seconds_outliers, t_km += m.seconds_kmeans, t_rows += m.seconds_rows;
  std::printf("wrote %s in %.1f s (reading %.1f s, outliers %.1f s, k-means on the %s %.1f s, "
              "rows %.1f s, waiting for the provenance hashes %.1f s)\n",
              out.c_str(), res.seconds, t_load, t_out, q.base.q.use_cuda ? "GPU" : "CPU (in rows)",
              t_km, t_rows, res.seconds_hash_wait);
  int64_t off_grid = 0, grid_mats = 0;
  for (const ModuleReport& m : res.modules)
    if (m.kind == "squeeze" && lut_grid_used(m.bits))
      off_grid += m.n_off_grid, grid_mats += m.n_off_grid == 0 ? 1 : 0;
  if (q.base.q.lut_grid && off_grid > 0)
    std::printf("LUT grid: %lld rows are off it (too coarse for their centroids, or an "
                "outlier's exact residual moved one); the CUDA GEMV decodes fp16 entries for their "
                "matrices, 8-bit codes for the other %lld\n",
                (long long)off_grid, (long long)grid_mats);
  if (!r["report"].as<std::string>().empty()) {
    write_html_report(r["report"].as<std::string>(), res, "sqz quantize: " + out);
    std::printf("report: %s\n", r["report"].as<std::string>().c_str());
  }
  return 0;
}

}  // namespace sqz::tools
