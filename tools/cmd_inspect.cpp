// sqz inspect: a model's format, config, tensors with dtypes and sizes, and totals.
#include <cstdio>

#include "model/model.h"
#include "quantize/report.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

namespace {

std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) b /= 1024, i++;
  char s[32];
  std::snprintf(s, sizeof s, i ? "%.2f %s" : "%.0f %s", b, u[i]);
  return s;
}

void print_linear(const LinearWeight& w) {
  if (w.kind == WeightKind::DENSE) {
    std::printf("  %-40s %-6s [%d, %d] %s\n", w.name.c_str(), dtype_name(w.dtype), w.rows,
                w.cols, human_bytes(double(w.n_bytes())).c_str());
  } else {
    std::printf("  %-40s %d-bit [%d, %d] outliers %lld (%.3f%%) %s\n", w.name.c_str(), w.bits,
                w.rows, w.cols, (long long)w.nnz, 100.0 * double(w.nnz) / (double(w.rows) * w.cols),
                human_bytes(double(w.n_bytes())).c_str());
  }
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  cxxopts::Options o("sqz inspect", "Print a model's config, tensors, dtypes and sizes.");
  o.add_options()("m,model", "model path", cxxopts::value<std::string>())
      ("tensors", "list every tensor");
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("model")) throw usage_error("-m/--model is required");
  Model m = load_model(r["model"].as<std::string>());
  const Config& c = m.config;
  std::printf("model:      %s\nformat:     %s\n", m.path.c_str(), m.format.c_str());
  std::printf("config:     dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
              "head_dim %d\n            vocab_size %d, seq_len %d, rope_theta %g, norm_eps %g, "
              "bos %d, eos %d, %s classifier\n",
              c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
              c.seq_len, c.rope_theta, c.norm_eps, c.bos_id, c.eos_id,
              c.shared_classifier ? "shared" : "separate");
  std::printf("tokenizer:  %s\n",
              !m.tokenizer_model.empty()
                  ? ("embedded (" + human_bytes(double(m.tokenizer_model.size())) + ")").c_str()
                  : (m.tokenizer_path.empty() ? "none (pass --tokenizer)" : m.tokenizer_path.c_str()));
  std::printf("parameters: %lld (%.2f M)\nweights:    %s (%.3f bits per parameter)\n",
              (long long)m.n_params(), m.n_params() / 1e6, human_bytes(double(m.n_bytes())).c_str(),
              8.0 * double(m.n_bytes()) / double(m.n_params()));
  if (m.format == "sqz") std::printf("\n%s\n", size_table(module_reports(m), m).c_str());
  if (r.count("tensors")) {
    std::printf("tensors:\n");
    std::printf("  %-40s %-6s [%d, %d] %s\n", "tok_embeddings", dtype_name(m.tok_embeddings.dtype),
                c.vocab_size, c.dim, human_bytes(double(m.tok_embeddings.n_bytes)).c_str());
    for (const LinearWeight* w : m.linears()) print_linear(*w);
    if (!c.shared_classifier) print_linear(m.classifier);
  } else {
    std::printf("(--tensors lists every tensor)\n");
  }
  for (const auto& kv : m.metadata)
    if (kv.first.rfind("sqz.", 0) == 0 && kv.first != "sqz.config")
      std::printf("%-12s%s\n", (kv.first.substr(4) + ":").c_str(), kv.second.c_str());
  return 0;
}

}  // namespace sqz::tools
