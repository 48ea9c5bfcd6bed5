// sqz sweep: quantize at several bit widths and outlier budgets, measure perplexity of each
// in memory, and print (and plot) perplexity against size, to pick an outlier budget.
#include <cstdio>
#include <sstream>

#include "engine/engine.h"
#include "engine/perplexity.h"
#include "quantize/pipeline.h"
#include "quantize/report.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

void add_quant_options(cxxopts::Options& o);
QuantizeOptions quant_options(const cxxopts::ParseResult& r);

namespace {

template <class T>
std::vector<T> parse_list(const std::string& s, const char* flag) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::stringstream is(item);
    T v;
    if (!(is >> v) || !is.eof()) throw usage_error(std::string(flag) + ": cannot parse '" + item + "'");
    out.push_back(v);
  }
  if (out.empty()) throw usage_error(std::string(flag) + " needs at least one value");
  return out;
}

}  // namespace

int cmd_sweep(int argc, char** argv) {
  cxxopts::Options o("sqz sweep",
                     "Quantize at several settings and print perplexity against size.\n"
                     "Each budget is a total outlier percentage: with --gradients, up to "
                     "--sensitive-share of it is sensitive values and the rest magnitude outliers.");
  o.add_options("model")
      ("m,model", "FP16/FP32 checkpoint", cxxopts::value<std::string>())
      ("tokenizer", "SentencePiece tokenizer.model", cxxopts::value<std::string>()->default_value(""))
      ("t,threads", "threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
      ("device", "auto, cpu or cuda (perplexity)", cxxopts::value<std::string>()->default_value("auto"));
  add_quant_options(o);
  o.add_options("sweep")
      ("bits-list", "bit widths", cxxopts::value<std::string>()->default_value("3,4"))
      ("budgets", "total outlier percentages", cxxopts::value<std::string>()->default_value("0,0.05,0.2,0.45,1"))
      ("sensitive-share", "sensitive part of each budget (PCT, with --gradients)",
       cxxopts::value<double>()->default_value("0.05"))
      ("rtn", "add the RTN baseline at each bit width")
      ("f,file", "text for perplexity", cxxopts::value<std::string>())
      ("ppl-method", "gptq or llamacpp", cxxopts::value<std::string>()->default_value("gptq"))
      ("c,ctx-size", "perplexity window (0: the model's trained context)",
       cxxopts::value<int>()->default_value("0"))
      ("chunks", "windows per perplexity", cxxopts::value<int>()->default_value("8"))
      ("report", "HTML report with the plot", cxxopts::value<std::string>()->default_value(""));
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("file")) throw usage_error("-f/--file (text for perplexity) is required");
  QuantizeOptions base = quant_options(r);
  auto bits_list = parse_list<int>(r["bits-list"].as<std::string>(), "--bits-list");
  auto budgets = parse_list<double>(r["budgets"].as<std::string>(), "--budgets");
  const double share = r["sensitive-share"].as<double>();
  const bool have_grads = !base.gradients_path.empty();
  PerplexityOptions po;
  const std::string method = r["ppl-method"].as<std::string>();
  if (method != "gptq" && method != "llamacpp") throw usage_error("--ppl-method must be gptq or llamacpp");
  po.method = method == "gptq" ? PplMethod::GPTQ : PplMethod::LLAMACPP;
  po.max_chunks = r["chunks"].as<int>();
  const std::string text = read_text_file(r["file"].as<std::string>());

  struct Job {
    SweepPoint p;
    QuantizeOptions q;
  };
  std::vector<Job> jobs;
  for (int bits : bits_list) {
    if (r.count("rtn")) {
      Job j{SweepPoint(), base};
      j.q.base.kind = "rtn", j.q.base.q.method = QuantMethod::RTN, j.q.base.q.bits = bits;
      j.q.base.q.outliers = OutlierOptions();
      j.p.bits = bits, j.p.label = "rtn" + std::to_string(bits) + "-g" + std::to_string(base.base.q.rtn_group);
      jobs.push_back(j);
    }
    for (double b : budgets) {
      Job j{SweepPoint(), base};
      j.q.base.kind = "squeeze", j.q.base.q.method = QuantMethod::SQUEEZE, j.q.base.q.bits = bits;
      double sens = have_grads ? std::min(b, share) : 0;
      j.q.base.q.outliers.sensitive_pct = sens;
      j.q.base.q.outliers.magnitude_pct = b - sens;
      j.q.base.q.outliers.iqr_range = 0;
      j.p.bits = bits, j.p.outliers_pct = b - sens, j.p.sensitive_pct = sens;
      char label[64];
      std::snprintf(label, sizeof label, "sq%d-%.2f%%", bits, b);
      j.p.label = label;
      jobs.push_back(j);
    }
  }
  std::vector<SweepPoint> points;
  QuantizeResult last;
  std::printf("%-16s %5s %10s %10s %10s %12s %10s\n", "setting", "bits", "outliers%", "sensitive%",
              "size MiB", "bits/param", "PPL");
  for (size_t k = 0; k < jobs.size(); k++) {
    Job& j = jobs[k];
    std::fprintf(stderr, "sweep %zu/%zu: %s\n", k + 1, jobs.size(), j.p.label.c_str());
    QuantizeResult res = quantize_model(j.q, nullptr);
    Tokenizer tok = Tokenizer::from_bytes(res.model.tokenizer_model, base.model_path);
    check_vocab(res.model, tok, base.model_path);
    std::vector<int> tokens = tok.encode(text, true);
    po.ctx = r["ctx-size"].as<int>() > 0 ? r["ctx-size"].as<int>()
                                         : (po.method == PplMethod::GPTQ ? res.model.config.seq_len : 512);
    po.bos_id = tok.bos_id();
    po.vocab_size = res.model.config.vocab_size;
    BackendOptions bo;
    bo.ctx_size = po.ctx;
    bo.n_threads = base.n_threads;
    auto be = make_backend(res.model, bo, r["device"].as<std::string>());
    NllStats s = perplexity(*be, tokens, po, nullptr);
    // Size as the table computes it: effective bits of the linears plus the FP16 rest.
    int64_t bytes = 0, params = res.model.n_params();
    for (const ModuleReport& m : res.modules)
      bytes += int64_t(m.effective_bits * double(m.rows) * m.cols / 8);
    int64_t rest = params;
    for (const ModuleReport& m : res.modules) rest -= int64_t(m.rows) * m.cols;
    bytes += rest * 2;
    j.p.size_mib = double(bytes) / (1 << 20);
    j.p.bits_per_weight = 8.0 * double(bytes) / double(params);
    j.p.ppl = s.ppl();
    points.push_back(j.p);
    std::printf("%-16s %5d %10.3f %10.3f %10.2f %12.3f %10.4f\n", j.p.label.c_str(), j.p.bits,
                j.p.outliers_pct, j.p.sensitive_pct, j.p.size_mib, j.p.bits_per_weight, j.p.ppl);
    std::fflush(stdout);
    if (k + 1 == jobs.size()) last = std::move(res);
  }
  // The Pareto front: settings that no other beats on both size and perplexity.
  std::printf("best trade-offs (no other setting is both smaller and better):");
  for (const SweepPoint& p : points) {
    bool dominated = false;
    for (const SweepPoint& q : points)
      dominated |= (q.size_mib <= p.size_mib && q.ppl < p.ppl) || (q.size_mib < p.size_mib && q.ppl <= p.ppl);
    if (!dominated) std::printf(" %s", p.label.c_str());
  }
  std::printf("\n");
  if (!r["report"].as<std::string>().empty()) {
    write_html_report(r["report"].as<std::string>(), last, "sqz sweep: " + base.model_path, points);
    std::printf("report: %s\n", r["report"].as<std::string>().c_str());
  }
  return 0;
}

}  // namespace sqz::tools
