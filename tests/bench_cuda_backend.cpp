// Whole-forward speed of the CUDA backend: prefill (pp), single-sequence decode (tg, CUDA graph
// and eager launches, full logits and device greedy top-1) and batched decode. By default on
// a synthetic model of LLaMA-7B shapes with dense FP16 linears (random values: speed does not
// depend on them), i.e. the cuBLAS baseline that packed models are measured against; with
// --model it loads any file load_model() reads (HF, llama2.c, .sqz).
//
//   build/tests/bench_cuda_backend [--model PATH] [--layers 32] [--dim 4096] [--hidden 11008]
//       [--heads 32] [--kv-heads 32] [--vocab 32000] [--ctx 2048] [--steps 128] [--pp 512]
//
// Decode reads every weight once per step, so next to each decode time it prints the weight
// bytes read per step, GB/s and the fraction of the read bandwidth measured in the same run
// (read_bandwidth_cuda): time per token >= weight bytes / bandwidth.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/engine.h"
#include "kernels/bandwidth.h"
#include "model/dtype.h"
#include "model/model.h"

namespace sqz {
namespace {

struct Args {
  std::string model;
  int layers = 32, dim = 4096, hidden = 11008, heads = 32, kv_heads = 32, vocab = 32000;
  int ctx = 2048, steps = 128, pp = 512;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A model of the given shapes whose linears all view one random fp16 host buffer.
Model synthetic_model(const Args& a) {
  Model m;
  Config& c = m.config;
  c.dim = a.dim, c.hidden_dim = a.hidden, c.n_layers = a.layers, c.n_heads = a.heads;
  c.n_kv_heads = a.kv_heads, c.head_dim = a.dim / a.heads, c.vocab_size = a.vocab;
  c.seq_len = a.ctx;
  m.path = "synthetic", m.format = "synthetic";
  const size_t n = std::max({size_t(a.vocab) * a.dim, size_t(a.hidden) * a.dim,
                             size_t(c.q_dim() + 2 * c.kv_dim()) * a.dim});
  auto buf = std::make_shared<std::vector<uint16_t>>(n);
  uint32_t s = 12345;
  for (auto& h : *buf) {
    s = s * 1664525u + 1013904223u;
    h = f32_to_f16((float((s >> 8) & 0xffff) / 65536.0f - 0.5f) * 0.04f);
  }
  auto ones = std::make_shared<std::vector<float>>(a.dim, 1.0f);
  m.storage.push_back(buf);
  m.storage.push_back(ones);
  auto tensor = [&](const void* data, std::vector<int64_t> shape, DType t) {
    TensorView v;
    v.dtype = t, v.shape = shape, v.data = static_cast<const uint8_t*>(data);
    v.n_bytes = dtype_size(t);
    for (int64_t d : shape) v.n_bytes *= size_t(d);
    return v;
  };
  auto linear = [&](const char* name, int rows, int cols) {
    LinearWeight w;
    w.name = name, w.rows = rows, w.cols = cols, w.dtype = DType::F16, w.data = buf->data();
    return w;
  };
  m.tok_embeddings = tensor(buf->data(), {a.vocab, a.dim}, DType::F16);
  m.final_norm = tensor(ones->data(), {a.dim}, DType::F32);
  m.classifier = linear("output", a.vocab, a.dim);
  for (int l = 0; l < a.layers; l++) {
    LayerWeights w;
    w.attn_norm = w.ffn_norm = m.final_norm;
    w.wq = linear("wq", c.q_dim(), a.dim);
    w.wk = linear("wk", c.kv_dim(), a.dim);
    w.wv = linear("wv", c.kv_dim(), a.dim);
    w.wo = linear("wo", a.dim, c.q_dim());
    w.w_gate = linear("w_gate", a.hidden, a.dim);
    w.w_up = linear("w_up", a.hidden, a.dim);
    w.w_down = linear("w_down", a.dim, a.hidden);
    m.layers.push_back(w);
  }
  return m;
}

// Bytes the device reads per decode step for the linears (dense ones are fp16 there).
double weight_bytes(const Model& m) {
  double b = 0;
  for (const LinearWeight* w : m.linears())
    b += w->kind == WeightKind::PACKED ? double(w->n_bytes()) : 2.0 * w->rows * w->cols;
  return b;
}

void report(const char* test, double s_per_step, int tokens_per_step, double bytes, double bw) {
  std::printf("%-28s %9.3f ms/step %10.1f tok/s", test, s_per_step * 1e3,
              tokens_per_step / s_per_step);
  if (bytes > 0)
    std::printf("   %7.1f GB/s  %5.1f%% of %.0f GB/s (floor %.3f ms)", bytes / s_per_step / 1e9,
                100.0 * bytes / s_per_step / bw, bw / 1e9, bytes / bw * 1e3);
  std::printf("\n");
}

// Decode steps of n sequences (one token each) from position pos0; seconds per step.
double time_decode(Backend& be, int n, int pos0, int steps, int vocab, bool topk) {
  std::vector<float> logits(size_t(n) * vocab);
  std::vector<int> ids(n);
  Batch b;
  auto step = [&](int pos) {
    b.clear();
    for (int q = 0; q < n; q++) b.add(1 + q, pos, q, true);
    if (topk)
      be.forward_topk(b, 1, ids.data(), logits.data());
    else
      be.forward(b, logits.data());
  };
  for (int i = 0; i < 4; i++) step(pos0 + i);  // warm-up (captures the graph)
  double t0 = now_s();
  for (int i = 0; i < steps; i++) step(pos0 + 4 + i);
  return (now_s() - t0) / steps;
}

int run(const Args& a) {
  if (!cuda_available()) {
    std::printf("no CUDA GPU\n");
    return 1;
  }
  Model m = a.model.empty() ? synthetic_model(a) : load_model(a.model);
  const Config& c = m.config;
  const double bw = read_bandwidth_cuda(size_t(4) << 30);
  const double bytes = weight_bytes(m);
  std::printf("model %s: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d; linear weights "
              "%.2f GB per step; measured read bandwidth %.0f GB/s\n",
              m.path.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
              c.vocab_size, bytes / 1e9, bw / 1e9);
  const int n_seqs = 16, pp = std::min(a.pp, a.ctx / 2);
  BackendOptions bo;
  bo.ctx_size = a.ctx, bo.n_seqs = n_seqs, bo.max_batch = std::max(pp, 16);
  for (int graphs = 1; graphs >= 0; graphs--) {
    if (!graphs) setenv("SQZ_NO_CUDA_GRAPHS", "1", 1);
    auto be = make_backend(m, bo, "cuda");
    unsetenv("SQZ_NO_CUDA_GRAPHS");
    std::vector<float> logits(c.vocab_size);
    Batch b;
    for (int i = 0; i < pp; i++) b.add(1 + i % 100, i, 0, i + 1 == pp);
    if (graphs) {
      be->forward(b, logits.data());  // warm-up
      double t0 = now_s();
      const int reps = 3;
      for (int r = 0; r < reps; r++) be->forward(b, logits.data());
      double s = (now_s() - t0) / reps;
      report(("pp" + std::to_string(pp)).c_str(), s, pp, 0, bw);
    } else {
      be->forward(b, logits.data());
    }
    // Fill the other sequences' caches up to pp too (their positions are then valid).
    for (int q = 1; q < n_seqs; q++) {
      Batch bq;
      for (int i = 0; i < pp; i++) bq.add(1 + i % 100, i, q, false);
      be->forward(bq, nullptr);
    }
    const char* mode = graphs ? "graph" : "eager";
    report((std::string("tg1 ") + mode + " logits").c_str(),
           time_decode(*be, 1, pp, a.steps, c.vocab_size, false), 1, bytes, bw);
    report((std::string("tg1 ") + mode + " top1").c_str(),
           time_decode(*be, 1, pp, a.steps, c.vocab_size, true), 1, bytes, bw);
    if (graphs)
      for (int n : {4, 16})
        report(("tg" + std::to_string(n) + " graph top1").c_str(),
               time_decode(*be, n, pp, a.steps, c.vocab_size, true), n, bytes, bw);
  }
  return 0;
}

}  // namespace
}  // namespace sqz

int main(int argc, char** argv) {
  sqz::Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") a.model = v;
    else if (k == "--layers") a.layers = std::atoi(v.c_str());
    else if (k == "--dim") a.dim = std::atoi(v.c_str());
    else if (k == "--hidden") a.hidden = std::atoi(v.c_str());
    else if (k == "--heads") a.heads = std::atoi(v.c_str());
    else if (k == "--kv-heads") a.kv_heads = std::atoi(v.c_str());
    else if (k == "--vocab") a.vocab = std::atoi(v.c_str());
    else if (k == "--ctx") a.ctx = std::atoi(v.c_str());
    else if (k == "--steps") a.steps = std::atoi(v.c_str());
    else if (k == "--pp") a.pp = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of bench_cuda_backend.cpp)\n", k.c_str());
      return 2;
    }
  }
  try {
    return sqz::run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_backend: %s\n", e.what());
    return 1;
  }
}
