// sqz bench: llama-bench-style throughput. pp<N>: one prompt of N tokens in one forward;
// tg<N>: N decode steps for each of `batch` sequences together; "@ d<D>": after a context of D
// tokens (prefilled, not timed), as llama-bench's -d. Prints t/s mean +- std over
// repetitions, and for decode the bytes read per step (weights and the K/V read) over the
// step time next to the read bandwidth this same run measured (the floor is bytes /
// bandwidth).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>

#include "engine/engine.h"
#include "kernels/bandwidth.h"
#include "kernels/parallel.h"
#include "tools/common.h"
#include "tools/commands.h"

namespace sqz::tools {

namespace {

struct Stat {
  double mean = 0, sd = 0;
};
Stat stats(const std::vector<double>& v) {
  Stat s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0;
  return s;
}

// A comma-separated list of integers >= min_value.
std::vector<int> parse_ints(const std::string& s, const char* flag, int min_value = 1) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoi(item));
    } catch (...) {
      throw usage_error(std::string(flag) + ": cannot parse '" + item + "'");
    }
    if (out.back() < min_value)
      throw usage_error(std::string(flag) + " values must be >= " + std::to_string(min_value));
  }
  return out;
}

// The table: each column's printf width (negative: left-aligned) and header. The header, the
// rule under it and every row take their widths from here.
struct Column {
  int width;
  const char* name;
};
constexpr Column kColumns[] = {{-28, "model"}, {10, "size"},   {8, "params"}, {7, "backend"},
                               {-17, "test"},  {18, "t/s"},    {9, "ms/step"}, {8, "GB/s"},
                               {6, "% bw"},    {9, "floor ms"}};
constexpr int kNumColumns = int(sizeof kColumns / sizeof kColumns[0]);

void print_row(const std::string (&cells)[kNumColumns]) {
  std::string line = "|";
  for (int i = 0; i < kNumColumns; i++) {
    char b[96];
    std::snprintf(b, sizeof b, " %*s |", kColumns[i].width, cells[i].c_str());
    line += b;
  }
  std::printf("%s\n", line.c_str());
}

void print_header() {
  std::string cells[kNumColumns], rule = "|";
  for (int i = 0; i < kNumColumns; i++) {
    cells[i] = kColumns[i].name;
    rule += std::string(std::abs(kColumns[i].width) + 2, '-') + "|";
  }
  print_row(cells);
  std::printf("%s\n", rule.c_str());
}

std::string fmt(const char* f, double v) {
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string human(double bytes) {
  char b[32];
  if (bytes >= 1e9) std::snprintf(b, sizeof b, "%.2f GiB", bytes / (1u << 30));
  else std::snprintf(b, sizeof b, "%.2f MiB", bytes / (1u << 20));
  return b;
}

// Bytes a decode step reads: every weight once (the head included, one embedding row per
// token) plus the KV cache up to the average position. The GPU holds each outlier as one
// 4-byte word (PackedMatrix::outliers), not the file's 4-byte column + 2-byte value.
double step_bytes(const Model& m, int batch, double avg_pos, bool gpu) {
  const Config& c = m.config;
  double b = 0;
  auto linear = [&](const LinearWeight& w) {
    return double(w.n_bytes()) - (gpu ? 2.0 * double(w.nnz) : 0.0);
  };
  for (const LinearWeight* w : m.linears()) b += linear(*w);
  b += linear(m.classifier);
  b += double(m.final_norm.n_bytes);
  for (const LayerWeights& l : m.layers) b += double(l.attn_norm.n_bytes + l.ffn_norm.n_bytes);
  b += double(batch) * c.dim * 2;
  b += double(batch) * c.n_layers * 2.0 * avg_pos * c.kv_dim() * 2;  // fp16 K and V
  return b;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options o("sqz bench", "Prompt and decode throughput, llama-bench style.");
  o.add_options()
      ("m,model", "model(s), comma separated", cxxopts::value<std::string>())
      ("p,n-prompt", "prompt lengths (pp tests)", cxxopts::value<std::string>()->default_value("512"))
      ("n,n-gen", "decode steps (tg tests)", cxxopts::value<int>()->default_value("128"))
      ("batch", "sequences decoded together in tg tests", cxxopts::value<std::string>()->default_value("1,8"))
      ("d,n-depth", "context depths: tests run after this many tokens are in the cache", cxxopts::value<std::string>()->default_value("0"))
      ("r,repetitions", "repetitions per test", cxxopts::value<int>()->default_value("5"))
      ("t,threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
      ("device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"));
  cxxopts::ParseResult r;
  if (!parse(o, argc, argv, &r)) return 0;
  if (!r.count("model")) throw usage_error("-m/--model is required");
  std::vector<std::string> models;
  {
    std::stringstream ss(r["model"].as<std::string>());
    std::string item;
    while (std::getline(ss, item, ',')) models.push_back(item);
  }
  const std::vector<int> pps = parse_ints(r["n-prompt"].as<std::string>(), "-p");
  const std::vector<int> batches = parse_ints(r["batch"].as<std::string>(), "--batch");
  const std::vector<int> depths = parse_ints(r["n-depth"].as<std::string>(), "-d", 0);
  const int n_gen = r["n-gen"].as<int>(), reps = r["repetitions"].as<int>();
  if (n_gen < 1 || reps < 1) throw usage_error("-n and -r must be >= 1");
  int max_pp = 0, max_b = 1;
  for (int p : pps) max_pp = std::max(max_pp, p);
  for (int b : batches) max_b = std::max(max_b, b);
  int max_depth = 0;
  for (int d : depths) max_depth = std::max(max_depth, d);

  double bw = 0;
  std::string bw_what;
  bool header = false;
  std::mt19937 rng(1234);
  for (const std::string& path : models) {
    EngineOptions eo;
    eo.model_path = path;
    eo.device = r["device"].as<std::string>();
    eo.n_threads = r["threads"].as<int>();
    eo.need_tokenizer = false;
    eo.n_seqs = max_b;
    eo.max_batch = std::max(max_pp, max_b);
    eo.ctx_size = max_depth + std::max(max_pp, n_gen + 1);
    Engine e(eo);
    Backend& be = e.backend();
    const Model& m = e.model();
    const bool gpu = be.name() == "cuda";
    if (bw == 0) {
#ifdef SQZ_WITH_CUDA
      if (gpu) bw = read_bandwidth_cuda(size_t(1) << 30), bw_what = "GPU streaming read, 1 GiB";
#endif
      if (!gpu) {
        ThreadPool pool(eo.n_threads);
        bw = read_bandwidth_cpu(pool, size_t(1) << 30);
        bw_what = "CPU streaming read, 1 GiB, " + std::to_string(pool.size()) + " threads";
      }
    }
    if (!header) {
      std::printf("read bandwidth: %.1f GB/s (%s)\n\n", bw / 1e9, bw_what.c_str());
      print_header();
      header = true;
    }
    std::string name = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    if (name.empty()) name = path;
    if (name.size() > 28) name = name.substr(name.size() - 28);
    char params[32];
    std::snprintf(params, sizeof params, "%.2f B", m.n_params() / 1e9);
    if (m.n_params() < 1e9) std::snprintf(params, sizeof params, "%.2f M", m.n_params() / 1e6);
    const std::string size = human(double(m.n_bytes()));
    std::uniform_int_distribution<int> tok(3, m.config.vocab_size - 1);
    std::vector<float> logits(size_t(max_b) * m.config.vocab_size);

    for (int depth : depths) {
      // The context: positions 0..depth-1 of every sequence, in forwards of at most
      // max_batch tokens; the tests below write positions from depth on, so every repetition
      // finds the same context.
      for (int s = 0; s < max_b; s++) {
        for (int p0 = 0; p0 < depth; p0 += eo.max_batch) {
          Batch b;
          for (int i = p0; i < std::min(depth, p0 + eo.max_batch); i++)
            b.add(tok(rng), i, s, false);
          be.forward(b, logits.data());
        }
      }
      const std::string at = depth ? " @ d" + std::to_string(depth) : "";
      for (int pp : pps) {
        std::vector<double> tps;
        for (int rep = -1; rep < reps; rep++) {  // rep -1 warms up
          Batch b;
          for (int i = 0; i < pp; i++) b.add(tok(rng), depth + i, 0, i == pp - 1);
          double t0 = now_seconds();
          be.forward(b, logits.data());
          double dt = now_seconds() - t0;
          if (rep >= 0) tps.push_back(pp / dt);
        }
        Stat s = stats(tps);
        char ts[40];
        std::snprintf(ts, sizeof ts, "%.2f ± %.2f", s.mean, s.sd);
        print_row({name, size, params, be.name(), "pp" + std::to_string(pp) + at, ts,
                   fmt("%.2f", 1e3 * pp / s.mean), "-", "-", "-"});
        std::fflush(stdout);
      }
      for (int nb : batches) {
        std::vector<double> tps, step_ms;
        std::vector<int> ids(nb);
        std::vector<float> top_logit(nb);
        for (int rep = -1; rep < reps; rep++) {
          Batch b;
          for (int s = 0; s < nb; s++) b.add(tok(rng), depth, s, true);
          be.forward(b, logits.data());
          double t0 = now_seconds();
          for (int step = 1; step <= n_gen; step++) {
            Batch d;
            for (int s = 0; s < nb; s++) d.add(tok(rng), depth + step, s, true);
            // The generation path: only the chosen ids cross to the host when it can.
            if (!be.forward_topk(d, 1, ids.data(), top_logit.data())) be.forward(d, logits.data());
          }
          double dt = now_seconds() - t0;
          if (rep >= 0) tps.push_back(double(nb) * n_gen / dt), step_ms.push_back(1e3 * dt / n_gen);
        }
        Stat s = stats(tps), ms = stats(step_ms);
        double bytes = step_bytes(m, nb, depth + n_gen / 2.0, gpu);
        double gbs = bytes / (ms.mean * 1e-3) / 1e9;
        char ts[40];
        std::snprintf(ts, sizeof ts, "%.2f ± %.2f", s.mean, s.sd);
        print_row({name, size, params, be.name(),
                   "tg" + std::to_string(n_gen) + " b" + std::to_string(nb) + at, ts,
                   fmt("%.3f", ms.mean), fmt("%.1f", gbs), fmt("%.1f%%", 100 * gbs * 1e9 / bw),
                   fmt("%.3f", 1e3 * bytes / bw)});
        std::fflush(stdout);
      }
    }
  }
  return 0;
}


}  // namespace sqz::tools
