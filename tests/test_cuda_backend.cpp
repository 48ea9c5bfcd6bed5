// The CUDA backend against the CPU backend on whole models (label gpu; every test skips when no
// GPU is present): last-token and decode-step logits, greedy tokens (and doc-llama-26m's
// transformers reference), GPTQ perplexity, batched decode vs single, forward_topk vs
// forward, CUDA-graph replay vs eager launches, and the one-line out-of-memory error.
//
// Each check is a function of a ModelCase, so a new model (e.g. a packed .sqz variant) is
// one more TEST line per check.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/perplexity.h"
#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "model/dtype.h"
#include "tests/cuda_test_util.h"
#include "tests/generate_test_util.h"
#include "tests/test_util.h"

namespace sqz {
namespace {

// fp16 activations, weights and KV cache against the fp32 CPU reference.
constexpr float kLogitsTol = 2e-2f;        // max |logit difference|
constexpr double kPplRelTol = 1e-3;        // perplexity within 0.1 %
constexpr float kGraphVsEagerTol = 1e-5f;  // same kernels, replayed from a graph

struct ModelCase {
  std::string name;
  std::string model;       // under the shared assets
  std::string tokenizer;   // under the shared assets; empty: the model's own
  std::string prompt;
  int n_greedy = 0;
  int ctx = 0;
  std::vector<std::string> batch_prompts;
};

ModelCase stories260k() {
  return {"stories260K", "models/stories260K/stories260K.bin", "models/stories260K/tok512.model",
          "Once upon a time", 60, 512, {"Once upon a time", "Lily had a", "The"}};
}

ModelCase doc_llama() {
  return {"doc-llama-26m", "models/doc-llama-26m", "", "The Linux kernel", 48, 1024,
          {"The Linux kernel", "To install a package,", "A"}};
}

// The CPU engine (model, tokenizer, reference backend) plus CUDA backends on the same model.
struct Setup {
  std::unique_ptr<Engine> cpu;
  std::unique_ptr<Backend> gpu(int ctx, int n_seqs = 1, int max_batch = 512) const {
    BackendOptions bo;
    bo.ctx_size = ctx, bo.n_seqs = n_seqs, bo.max_batch = max_batch;
    return make_backend(cpu->model(), bo, "cuda");
  }
  std::vector<int> encode(const std::string& s) const { return cpu->tokenizer().encode(s, true); }
  int vocab() const { return cpu->config().vocab_size; }
};

// Opens the case's model on the CPU; returns the missing asset's path, or "" when all is there.
std::string open_case(const ModelCase& c, int n_seqs, Setup* s) {
  std::string model = test::shared_dir() + "/" + c.model;
  std::string tok = c.tokenizer.empty() ? "" : test::shared_dir() + "/" + c.tokenizer;
  for (const std::string& p : {model, tok})
    if (!p.empty() && !test::file_exists(p)) return p;
  EngineOptions o;
  o.model_path = model, o.tokenizer_path = tok, o.device = "cpu";
  o.ctx_size = c.ctx, o.n_seqs = n_seqs;
  s->cpu = std::make_unique<Engine>(o);
  return "";
}

// Declares Setup `s` for case `c`; skips (fails under CI=true) when an asset is missing.
#define SQZ_OPEN_CASE(s, c)                                                        \
  Setup s;                                                                         \
  do {                                                                             \
    std::string missing_ = open_case(c, 1, &s);                                    \
    if (!missing_.empty()) {                                                       \
      if (test::in_ci()) FAIL() << "missing shared asset (CI=true): " << missing_; \
      GTEST_SKIP() << "shared asset not found: " << missing_;                     \
    }                                                                              \
  } while (0)

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); i++) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

// Argmax of the first row (the first n entries): the first of equal maxima.
int argmax(const std::vector<float>& v, int n) {
  return int(std::max_element(v.begin(), v.begin() + n) - v.begin());
}

// Prompt prefill, then 8 decode steps (the CPU's greedy tokens fed to both): every step's
// logits within kLogitsTol. Decode steps run through the CUDA graph.
void check_logits_close(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  auto gpu = s.gpu(c.ctx);
  Backend& cpu = s.cpu->backend();
  std::vector<int> ids = s.encode(c.prompt);
  std::vector<float> lc(s.vocab()), lg(s.vocab());
  SeqState sc, sg;
  prefill(cpu, sc, ids, lc.data());
  prefill(*gpu, sg, ids, lg.data());
  float worst = max_abs_diff(lc, lg);
  std::printf("[ %s ] prefill last-token logits: max |cuda - cpu| = %.3g\n", c.name.c_str(), worst);
  EXPECT_LT(worst, kLogitsTol) << "prefill";
  int pos = int(ids.size());
  for (int step = 0; step < 8; step++, pos++) {
    Batch b;
    b.add(argmax(lc, s.vocab()), pos, 0, true);
    cpu.forward(b, lc.data());
    gpu->forward(b, lg.data());
    float d = max_abs_diff(lc, lg);
    worst = std::max(worst, d);
    EXPECT_LT(d, kLogitsTol) << "decode step " << step;
  }
  std::printf("[ %s ] over 8 decode steps too: max |cuda - cpu| = %.3g\n", c.name.c_str(), worst);
}

// Greedy tokens identical to the CPU's (and to `expected` when given).
void check_greedy(const ModelCase& c, const std::vector<int>& expected = {}) {
  SQZ_OPEN_CASE(s, c);
  auto gpu = s.gpu(c.ctx);
  std::vector<int> ids = s.encode(c.prompt);
  std::vector<int> want = test::greedy(s.cpu->backend(), s.vocab(), ids, c.n_greedy);
  std::vector<int> got = test::greedy(*gpu, s.vocab(), ids, c.n_greedy);
  EXPECT_EQ(got, want);
  if (!expected.empty()) {
    EXPECT_EQ(got, expected);
  }
}

// GPTQ perplexity over the first 2 windows within kPplRelTol of the CPU's.
void check_perplexity(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  SQZ_SHARED_ASSET(path, "data/wikitext-2-raw/wiki.test.gptq_join.txt");
  std::vector<int> tokens = s.encode(test::read_file(path));
  PerplexityOptions po;
  po.method = PplMethod::GPTQ;
  po.ctx = std::min(1024, c.ctx);
  po.max_chunks = 2;
  po.vocab_size = s.vocab();
  auto gpu = s.gpu(c.ctx);
  NllStats cpu = perplexity(s.cpu->backend(), tokens, po, nullptr);
  NllStats cuda = perplexity(*gpu, tokens, po, nullptr);
  std::printf("[ %s ] gptq ppl (ctx %d, 2 windows): cpu %.5f cuda %.5f (rel diff %.2e)\n",
              c.name.c_str(), po.ctx, cpu.ppl(), cuda.ppl(), std::fabs(cuda.ppl() / cpu.ppl() - 1));
  EXPECT_EQ(cuda.count, cpu.count);
  EXPECT_NEAR(cuda.ppl(), cpu.ppl(), kPplRelTol * cpu.ppl());
}

// Three prompts decoded together (n_seqs 3, one token each per step) give each prompt's
// tokens when run alone.
void check_batch_equals_single(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  const int n_tok = 20, n = int(c.batch_prompts.size());
  auto single = s.gpu(256);
  auto batched = s.gpu(256, n);
  std::vector<std::vector<int>> ids, alone;
  for (auto& p : c.batch_prompts) {
    ids.push_back(s.encode(p));
    alone.push_back(test::greedy(*single, s.vocab(), ids.back(), n_tok));
  }
  SamplerOptions so;
  so.temp = 0;
  std::vector<std::unique_ptr<Sampler>> ss;
  std::vector<Sampler*> sp;
  std::vector<SeqState> st(n);
  std::vector<SeqState*> seqs;
  for (int i = 0; i < n; i++) {
    st[i].id = i;
    seqs.push_back(&st[i]);
    ss.push_back(std::make_unique<Sampler>(so, s.vocab()));
    sp.push_back(ss.back().get());
  }
  GenerateOptions go;
  go.n_predict = n_tok;
  std::vector<std::vector<int>> out(n);
  generate(*batched, seqs, ids, sp, go, [&](int i, int t) {
    out[i].push_back(t);
    return true;
  });
  for (int i = 0; i < n; i++) EXPECT_EQ(out[i], alone[i]) << c.batch_prompts[i];
}

// forward_topk equals forward's logits sorted (k = 1: argmax), for a prefill with several
// rows, single decode steps (graphed) and a 3-sequence decode step. Re-running a batch at
// the same positions rewrites the same K/V, so forward and forward_topk see equal caches.
void check_topk(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  auto gpu = s.gpu(c.ctx, 3);
  const int V = s.vocab();
  auto compare = [&](const Batch& b, int k, const std::string& what) {
    const int rows = b.n_logits();
    std::vector<float> logits(size_t(rows) * V), vals(size_t(rows) * k);
    std::vector<int> ids(size_t(rows) * k);
    gpu->forward(b, logits.data());
    ASSERT_TRUE(gpu->forward_topk(b, k, ids.data(), vals.data())) << what;
    for (int r = 0; r < rows; r++) {
      const float* row = logits.data() + size_t(r) * V;
      std::vector<int> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
      for (int j = 0; j < k; j++) {
        EXPECT_EQ(ids[size_t(r) * k + j], order[j]) << what << " row " << r << " rank " << j;
        EXPECT_EQ(vals[size_t(r) * k + j], row[order[j]]) << what << " row " << r << " rank " << j;
      }
    }
  };
  std::vector<int> ids = s.encode(c.prompt);
  Batch b;
  for (size_t i = 0; i < ids.size(); i++) b.add(ids[i], int(i), 0, i + 2 >= ids.size());
  for (int k : {1, 40}) compare(b, k, "prefill k " + std::to_string(k));
  for (int step = 0; step < 3; step++) {
    Batch d;
    d.add(ids[step % ids.size()], int(ids.size()) + step, 0, true);
    for (int k : {1, 40}) compare(d, k, "decode k " + std::to_string(k));
  }
  Batch three;
  for (int q = 0; q < 3; q++) three.add(ids[0], q == 0 ? int(ids.size()) + 3 : 0, q, true);
  for (int k : {1, 64}) compare(three, k, "3 sequences k " + std::to_string(k));
  EXPECT_FALSE(gpu->forward_topk(b, V + 1, nullptr, nullptr));  // falls back to forward
}

// Graph replays give the eager launches' logits.
void check_graph_vs_eager(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  auto graphed = s.gpu(c.ctx, 2);
  setenv("SQZ_NO_CUDA_GRAPHS", "1", 1);
  std::unique_ptr<Backend> eager;
  try {
    eager = s.gpu(c.ctx, 2);
  } catch (...) {
    unsetenv("SQZ_NO_CUDA_GRAPHS");
    throw;
  }
  unsetenv("SQZ_NO_CUDA_GRAPHS");
  std::vector<int> ids = s.encode(c.prompt);
  const int V = s.vocab();
  std::vector<float> lg(size_t(2) * V), le(size_t(2) * V);
  SeqState g0, g1, e0, e1;  // one state per backend and slot (prefill reuses cached prefixes)
  g1.id = e1.id = 1;
  prefill(*graphed, g0, ids, lg.data());
  prefill(*eager, e0, ids, le.data());
  prefill(*graphed, g1, ids, lg.data());
  prefill(*eager, e1, ids, le.data());
  for (int step = 0; step < 5; step++) {
    for (int n : {1, 2}) {
      Batch b;
      for (int q = 0; q < n; q++) b.add(argmax(le, V), int(ids.size()) + step, q, true);
      graphed->forward(b, lg.data());
      eager->forward(b, le.data());
      lg.resize(size_t(n) * V), le.resize(size_t(n) * V);
      EXPECT_LE(max_abs_diff(lg, le), kGraphVsEagerTol) << "step " << step << " n " << n;
      lg.resize(size_t(2) * V), le.resize(size_t(2) * V);
    }
  }
}

// A context that cannot fit: one line naming the sizes, no crash; the GPU still works.
void check_out_of_memory(const ModelCase& c) {
  SQZ_OPEN_CASE(s, c);
  try {
    auto huge = s.gpu(1 << 22, 64);
    FAIL() << "expected an out-of-memory error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    std::printf("[ %s ] %s\n", c.name.c_str(), msg.c_str());
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("model needs ", 0), 0u) << msg;
    EXPECT_NE(msg.find("GiB of GPU memory (weights "), std::string::npos) << msg;
    EXPECT_NE(msg.find("for ctx 4194304 x 64 seqs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("is free; try a smaller -c/--ctx-size"), std::string::npos) << msg;
  }
  auto ok = s.gpu(c.ctx);
  std::vector<float> logits(s.vocab());
  Batch b;
  b.add(1, 0, 0, true);
  ok->forward(b, logits.data());
  EXPECT_TRUE(std::isfinite(logits[0]));
}

std::vector<int> doc_llama_reference_greedy() {
  std::string path = test::shared_dir() + "/models/doc-llama-26m/reference.json";
  if (!test::file_exists(path)) return {};
  auto ref = nlohmann::json::parse(test::read_file(path));
  return ref["reference"]["prompt"]["greedy_ids"].get<std::vector<int>>();
}

TEST(CudaBackendStories260K, LogitsCloseToCpu) { SQZ_REQUIRE_GPU(); check_logits_close(stories260k()); }
TEST(CudaBackendStories260K, GreedyEqualsCpu) { SQZ_REQUIRE_GPU(); check_greedy(stories260k()); }
TEST(CudaBackendStories260K, PerplexityCloseToCpu) { SQZ_REQUIRE_GPU(); check_perplexity(stories260k()); }
TEST(CudaBackendStories260K, BatchEqualsSingle) { SQZ_REQUIRE_GPU(); check_batch_equals_single(stories260k()); }
TEST(CudaBackendStories260K, TopKEqualsSortedLogits) { SQZ_REQUIRE_GPU(); check_topk(stories260k()); }
TEST(CudaBackendStories260K, GraphEqualsEager) { SQZ_REQUIRE_GPU(); check_graph_vs_eager(stories260k()); }

TEST(CudaBackendDocLlama, LogitsCloseToCpu) { SQZ_REQUIRE_GPU(); check_logits_close(doc_llama()); }
TEST(CudaBackendDocLlama, GreedyEqualsCpuAndTransformers) {
  SQZ_REQUIRE_GPU();
  check_greedy(doc_llama(), doc_llama_reference_greedy());
}
TEST(CudaBackendDocLlama, PerplexityCloseToCpu) { SQZ_REQUIRE_GPU(); check_perplexity(doc_llama()); }
TEST(CudaBackendDocLlama, BatchEqualsSingle) { SQZ_REQUIRE_GPU(); check_batch_equals_single(doc_llama()); }
TEST(CudaBackendDocLlama, TopKEqualsSortedLogits) { SQZ_REQUIRE_GPU(); check_topk(doc_llama()); }
TEST(CudaBackendDocLlama, GraphEqualsEager) { SQZ_REQUIRE_GPU(); check_graph_vs_eager(doc_llama()); }
TEST(CudaBackendDocLlama, OutOfMemoryIsOneLine) { SQZ_REQUIRE_GPU(); check_out_of_memory(doc_llama()); }

// ---- a synthetic model with every kind of linear ---------------------------------------
// Random weights held in memory: fused packed q/k/v (3-bit), packed gate (3-bit) and up
// (4-bit) that cannot fuse, a q/k/v mixing packed and dense (three parts), dense F16, F32 and
// BF16 linears, outliers in many rows; dim and hidden_dim are not multiples of 128. Checks the
// upload (fusion, CSR row-pointer shifts, strided part outputs) against the CPU backend.
// grid: the LUT rows snapped onto grids (kernels/lut_grid.h), as sqz quantize makes them, so
// the decode GEMVs take their code path.
struct SyntheticModel {
  Model m;
  std::mt19937 rng{42};
  bool grid = false;
  template <typename T>
  T* keep(std::vector<T> v) {
    auto p = std::make_shared<std::vector<T>>(std::move(v));
    m.storage.push_back(p);
    return p->data();
  }
  std::vector<float> randn(size_t n, float scale) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  }
  const void* store(const std::vector<float>& v, DType t) {
    if (t == DType::F32) return keep(v);
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); i++) h[i] = t == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
    return keep(std::move(h));
  }
  TensorView tensor(const std::string& name, std::vector<int64_t> shape, DType t, float mean,
                    float scale) {
    size_t n = 1;
    for (int64_t d : shape) n *= size_t(d);
    std::vector<float> v = randn(n, scale);
    for (auto& x : v) x += mean;
    TensorView tv;
    tv.name = name, tv.dtype = t, tv.shape = shape;
    tv.data = static_cast<const uint8_t*>(store(v, t));
    tv.n_bytes = n * dtype_size(t);
    return tv;
  }
  LinearWeight dense(const std::string& name, int rows, int cols, DType t) {
    LinearWeight w;
    w.name = name, w.rows = rows, w.cols = cols, w.kind = WeightKind::DENSE, w.dtype = t;
    w.data = store(randn(size_t(rows) * cols, 1.0f / std::sqrt(float(cols))), t);
    return w;
  }
  LinearWeight packed(const std::string& name, int rows, int cols, int bits, int max_outliers) {
    LinearWeight w;
    w.name = name, w.rows = rows, w.cols = cols, w.kind = WeightKind::PACKED, w.bits = bits;
    std::vector<uint8_t> idx(size_t(rows) * cols);
    for (auto& v : idx) v = uint8_t(rng() % (1u << bits));
    w.row_bytes = packed_row_bytes(cols, bits);
    std::vector<uint8_t> pk(size_t(w.row_bytes) * rows);
    pack_indices(idx.data(), rows, cols, bits, pk.data());
    w.indices = keep(std::move(pk));
    std::vector<float> lut = randn(size_t(rows) << bits, 1.0f / std::sqrt(float(cols)));
    if (grid)
      for (int r = 0; r < rows; r++) {
        float* row = lut.data() + (size_t(r) << bits);
        for (int j = 0; j < (1 << bits); j++) row[j] = f16_to_f32(f32_to_f16(row[j]));
        snap_lut_grid(row, 1 << bits);
      }
    w.lut = static_cast<const uint16_t*>(store(lut, DType::F16));
    std::vector<int32_t> row_ptr{0}, col_idx;
    std::vector<float> vals;
    for (int r = 0; r < rows; r++) {
      int n = int(rng() % (max_outliers + 1));
      std::vector<int> cs(cols);
      std::iota(cs.begin(), cs.end(), 0);
      std::shuffle(cs.begin(), cs.end(), rng);
      cs.resize(std::min(n, cols));
      std::sort(cs.begin(), cs.end());
      for (int c : cs) col_idx.push_back(c), vals.push_back(randn(1, 3.0f / std::sqrt(float(cols)))[0]);
      row_ptr.push_back(int32_t(col_idx.size()));
    }
    w.nnz = int64_t(col_idx.size());
    w.row_ptr = keep(std::move(row_ptr));
    w.col_idx = keep(std::move(col_idx));
    w.values = static_cast<const uint16_t*>(store(vals, DType::F16));
    return w;
  }
};

std::unique_ptr<SyntheticModel> make_synthetic(bool grid = false) {
  auto s = std::make_unique<SyntheticModel>();
  s->grid = grid;
  Config& c = s->m.config;
  c.dim = 96, c.hidden_dim = 200, c.n_layers = 3, c.n_heads = 6, c.n_kv_heads = 2;
  c.head_dim = 16, c.vocab_size = 300, c.seq_len = 128;
  s->m.path = "synthetic", s->m.format = "synthetic";
  const int dim = c.dim, hid = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim();
  s->m.tok_embeddings = s->tensor("tok_embeddings", {c.vocab_size, dim}, DType::F32, 0.0f, 1.0f);
  s->m.final_norm = s->tensor("norm", {dim}, DType::F32, 1.0f, 0.1f);
  s->m.classifier = s->dense("output", c.vocab_size, dim, DType::F16);
  for (int l = 0; l < c.n_layers; l++) {
    LayerWeights w;
    const std::string p = "layers." + std::to_string(l) + ".";
    w.attn_norm = s->tensor(p + "attention_norm", {dim}, DType::F16, 1.0f, 0.1f);
    w.ffn_norm = s->tensor(p + "ffn_norm", {dim}, DType::BF16, 1.0f, 0.1f);
    if (l == 0) {
      w.wq = s->packed(p + "wq", q, dim, 3, 4);
      w.wk = s->packed(p + "wk", kv, dim, 3, 0);
      w.wv = s->packed(p + "wv", kv, dim, 3, 9);
      w.wo = s->dense(p + "wo", dim, q, DType::F16);
      w.w_gate = s->packed(p + "w_gate", hid, dim, 3, 3);
      w.w_up = s->packed(p + "w_up", hid, dim, 4, 3);
      w.w_down = s->packed(p + "w_down", dim, hid, 4, 200);  // some rows all outliers
    } else if (l == 2) {  // every linear one packed matrix: the fused decode GEMVs
      w.wq = s->packed(p + "wq", q, dim, 3, 2);
      w.wk = s->packed(p + "wk", kv, dim, 3, 5);
      w.wv = s->packed(p + "wv", kv, dim, 3, 0);
      w.wo = s->packed(p + "wo", dim, q, 4, 3);
      w.w_gate = s->packed(p + "w_gate", hid, dim, 3, 4);
      w.w_up = s->packed(p + "w_up", hid, dim, 3, 2);
      w.w_down = s->packed(p + "w_down", dim, hid, 3, 6);
    } else {
      w.wq = s->packed(p + "wq", q, dim, 4, 2);
      w.wk = s->dense(p + "wk", kv, dim, DType::F32);
      w.wv = s->packed(p + "wv", kv, dim, 4, 2);
      w.wo = s->packed(p + "wo", dim, q, 3, 1);
      w.w_gate = s->dense(p + "w_gate", hid, dim, DType::BF16);
      w.w_up = s->dense(p + "w_up", hid, dim, DType::BF16);
      w.w_down = s->dense(p + "w_down", dim, hid, DType::F32);
    }
    s->m.layers.push_back(w);
  }
  return s;
}

void check_synthetic(bool grid) {
  auto s = make_synthetic(grid);
  const int V = s->m.config.vocab_size;
  BackendOptions bo;
  bo.ctx_size = 64, bo.n_seqs = 2, bo.max_batch = 16;  // a 20-token prompt takes 2 calls
  auto cpu = make_backend(s->m, bo, "cpu");
  auto gpu = make_backend(s->m, bo, "cuda");
  std::vector<int> prompt;
  for (int i = 0; i < 20; i++) prompt.push_back(int(s->rng() % V));
  std::vector<float> lc(size_t(2) * V), lg(size_t(2) * V);
  SeqState sc, sg;
  prefill(*cpu, sc, prompt, lc.data());
  prefill(*gpu, sg, prompt, lg.data());
  lc.resize(V), lg.resize(V);
  float worst = max_abs_diff(lc, lg);
  EXPECT_LT(worst, kLogitsTol) << "prefill";
  lc.resize(size_t(2) * V), lg.resize(size_t(2) * V);
  for (int step = 0; step < 5; step++) {
    Batch b;  // sequence 0 continues, sequence 1 starts from the same prompt's first token
    b.add(argmax(lc, V), int(prompt.size()) + step, 0, true);
    b.add(prompt[0], step, 1, true);
    cpu->forward(b, lc.data());
    gpu->forward(b, lg.data());
    float d = max_abs_diff(lc, lg);
    worst = std::max(worst, d);
    EXPECT_LT(d, kLogitsTol) << "decode step " << step;
  }
  std::printf("[ synthetic packed/mixed%s ] max |cuda - cpu| logits = %.3g\n",
              grid ? ", grid LUTs" : "", worst);
}

TEST(CudaBackendSynthetic, PackedAndMixedLinearsMatchCpu) {
  SQZ_REQUIRE_GPU();
  check_synthetic(false);
}

TEST(CudaBackendSynthetic, GridLutsMatchCpu) {
  SQZ_REQUIRE_GPU();
  check_synthetic(true);
}

// Packed models (.sqz) join here with the same checks, one line each, e.g.
//   TEST(CudaBackendDocLlamaSqz3, LogitsCloseToCpu) { SQZ_REQUIRE_GPU(); check_logits_close(doc_llama_sqz3()); }

}  // namespace
}  // namespace sqz
