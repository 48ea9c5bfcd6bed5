// The packed .sqz format and packed models on the CPU: writer/reader round trip, every
// validation rule of the reader, stories260K quantize-then-generate at 3 and 4 bits, and the
// perplexity ordering FP16 < SqueezeLLM-4 < SqueezeLLM-3 < RTN-3 on doc-llama-26m.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <initializer_list>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/perplexity.h"
#include "model/errors.h"
#include "model/packed.h"
#include "quantize/pipeline.h"
#include "tests/generate_test_util.h"
#include "tests/test_util.h"

namespace sqz {
namespace {

std::vector<int> greedy(Backend& be, const Tokenizer& tok, const std::string& prompt, int n,
                        int vocab) {
  return test::greedy(be, vocab, tok.encode(prompt, true), n);
}

QuantizeOptions stories_options(const std::string& dir, int bits) {
  QuantizeOptions q;
  q.model_path = dir + "/stories260K.bin";
  q.tokenizer_path = dir + "/tok512.model";
  q.base.q.bits = bits;
  q.base.q.outliers.magnitude_pct = 0.5;
  q.n_threads = 2;
  return q;
}

// Quantize, write, read back: the file runs, needs no tokenizer flag, and generates the same
// tokens as the in-memory quantized model; at 4 bits the story stays close to FP32's.
void stories_round_trip(int bits, int min_common_prefix) {
  SQZ_SHARED_ASSET(dir, "models/stories260K");
  QuantizeResult res = quantize_model(stories_options(dir, bits), nullptr);
  const std::string path = test::temp_path("stories" + std::to_string(bits) + ".sqz");
  save_packed(path, res.model, res.metadata);

  EngineOptions o;
  o.model_path = path;
  o.device = "cpu";
  Engine e(o);  // the tokenizer comes from the file
  EXPECT_EQ(e.model().format, "sqz");
  for (const LinearWeight* w : e.model().linears()) {
    EXPECT_EQ(w->kind, WeightKind::PACKED);
    EXPECT_EQ(w->bits, bits);
  }
  std::vector<int> from_file = greedy(e.backend(), e.tokenizer(), "Once upon a time", 60, 512);
  BackendOptions bo;
  bo.ctx_size = 512;
  auto mem = make_cpu_backend(res.model, bo);
  EXPECT_EQ(from_file, greedy(*mem, e.tokenizer(), "Once upon a time", 60, 512));

  EngineOptions of;
  of.model_path = dir + "/stories260K.bin";
  of.tokenizer_path = dir + "/tok512.model";
  of.device = "cpu";
  Engine ef(of);
  std::vector<int> fp = greedy(ef.backend(), ef.tokenizer(), "Once upon a time", 60, 512);
  int common = 0;
  while (common < 60 && fp[common] == from_file[common]) common++;
  EXPECT_GE(common, min_common_prefix) << "quantized: " << e.tokenizer().decode(from_file)
                                       << "\nfp32: " << ef.tokenizer().decode(fp);
  std::remove(path.c_str());
}

TEST(PackedStories, QuantizeThenGenerate4Bit) { stories_round_trip(4, 10); }
TEST(PackedStories, QuantizeThenGenerate3Bit) { stories_round_trip(3, 3); }

// ---- reader validation: corrupt one tensor of a valid file at a time ----

class PackedMalformed : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = test::shared_dir() + "/models/stories260K";
    if (!test::file_exists(dir + "/stories260K.bin")) {
      if (test::in_ci()) FAIL() << "missing shared asset (CI=true): " << dir;
      GTEST_SKIP() << "shared asset not found: " << dir;
    }
    QuantizeOptions q = stories_options(dir, 3);
    res_ = std::make_unique<QuantizeResult>(quantize_model(q, nullptr));
    path_ = test::temp_path("malformed.sqz");
  }
  void TearDown() override { std::remove(path_.c_str()); }

  // Writes the model with one tensor replaced (data and/or shape) and expects the reader's
  // message to contain `expect`.
  void expect_rejected(const std::function<void(Model&)>& corrupt,
                       const std::string& expect) {
    Model m = res_->model;
    corrupt(m);
    save_packed(path_, m, res_->metadata);
    expect_load_error(path_, {expect});
  }
  // Loading `path` must throw a format_error whose message contains each of `words`.
  static void expect_load_error(const std::string& path,
                                std::initializer_list<std::string> words) {
    try {
      load_model(path);
      ADD_FAILURE() << "accepted " << path << ", which should fail with: " << *words.begin();
    } catch (const format_error& e) {
      for (const std::string& w : words)
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos)
            << "expected '" << w << "' in: " << e.what();
    }
  }
  std::unique_ptr<QuantizeResult> res_;
  std::string path_;
  std::vector<std::vector<uint8_t>> keep_;
  template <class T>
  T* copy(const T* p, size_t n) {
    keep_.emplace_back(reinterpret_cast<const uint8_t*>(p), reinterpret_cast<const uint8_t*>(p + n));
    return reinterpret_cast<T*>(keep_.back().data());
  }
};

TEST_F(PackedMalformed, ValidFileLoads) {
  save_packed(path_, res_->model, res_->metadata);
  Model m = load_model(path_);
  EXPECT_EQ(m.format, "sqz");
  EXPECT_FALSE(m.tokenizer_model.empty());
  EXPECT_EQ(m.metadata.at("sqz.format_version"), "2");
  auto quant = nlohmann::json::parse(m.metadata.at("sqz.quant"));
  EXPECT_EQ(quant["bits"], 3);
  auto prov = nlohmann::json::parse(m.metadata.at("sqz.provenance"));
  EXPECT_EQ(prov["source_sha256"].get<std::string>().size(), 64u);
}

TEST_F(PackedMalformed, NonMonotonicRowPointers) {
  expect_rejected([&](Model& m) {
    LinearWeight& w = m.layers[1].wq;
    int32_t* rp = copy(w.row_ptr, w.rows + 1);
    std::swap(rp[3], rp[4]);
    if (rp[3] == rp[4]) rp[4] = rp[3] - 1;  // force a decrease even when the rows are empty
    w.row_ptr = rp;
  }, "row pointers decrease");
}

TEST_F(PackedMalformed, RowPointersDoNotStartAtZero) {
  expect_rejected([&](Model& m) {
    LinearWeight& w = m.layers[0].wk;
    int32_t* rp = copy(w.row_ptr, w.rows + 1);
    rp[0] = 1;
    w.row_ptr = rp;
  }, "expected 0");
}

TEST_F(PackedMalformed, ColumnOutOfRange) {
  expect_rejected([&](Model& m) {
    LinearWeight& w = m.layers[2].w_down;
    ASSERT_GT(w.nnz, 0);
    int32_t* ci = copy(w.col_idx, size_t(w.nnz));
    ci[w.nnz - 1] = w.cols;
    w.col_idx = ci;
  }, "out of range");
}

TEST_F(PackedMalformed, NanInLut) {
  expect_rejected([&](Model& m) {
    LinearWeight& w = m.layers[0].wv;
    uint16_t* lut = copy(w.lut, size_t(w.rows) << w.bits);
    lut[5] = 0x7e00;  // fp16 NaN
    w.lut = lut;
  }, "NaN or Inf");
}

TEST_F(PackedMalformed, NanInOutlierValues) {
  expect_rejected([&](Model& m) {
    LinearWeight& w = m.layers[0].w_up;
    ASSERT_GT(w.nnz, 0);
    uint16_t* v = copy(w.values, size_t(w.nnz));
    v[0] = 0x7c00;  // +Inf
    w.values = v;
  }, "NaN or Inf");
}

TEST_F(PackedMalformed, LutSizeNotPowerOfTwo) {
  // Rewrite the file by hand with a LUT of 6 entries per row.
  save_packed(path_, res_->model, res_->metadata);
  SafeTensorsFile f(path_);
  std::vector<TensorToWrite> t;
  std::vector<uint16_t> lut6;
  for (auto& kv : f.tensors()) {
    const TensorView& v = kv.second;
    if (kv.first == "layers.0.wq.lut") {
      lut6.assign(size_t(v.shape[0]) * 6, 0x3c00);
      t.push_back({kv.first, v.dtype, {v.shape[0], 6}, lut6.data(), lut6.size() * 2});
    } else {
      t.push_back({kv.first, v.dtype, v.shape, v.data, v.n_bytes});
    }
  }
  std::string p2 = path_ + "2";
  write_safetensors(p2, t, f.metadata());
  expect_load_error(p2, {"2^bits"});
  std::remove(p2.c_str());
}

TEST_F(PackedMalformed, TruncatedFile) {
  save_packed(path_, res_->model, res_->metadata);
  std::string bytes = test::read_file(path_);
  for (size_t cut : {bytes.size() - 1, bytes.size() / 2, size_t(100), size_t(7)}) {
    std::ofstream(path_, std::ios::binary).write(bytes.data(), std::streamsize(cut));
    EXPECT_THROW(load_model(path_), format_error) << "cut at " << cut;
  }
}

TEST_F(PackedMalformed, MissingTensor) {
  save_packed(path_, res_->model, res_->metadata);
  SafeTensorsFile f(path_);
  std::vector<TensorToWrite> t;
  for (auto& kv : f.tensors())
    if (kv.first != "layers.1.wo.col_idx")
      t.push_back({kv.first, kv.second.dtype, kv.second.shape, kv.second.data, kv.second.n_bytes});
  std::string p2 = path_ + "m";
  write_safetensors(p2, t, f.metadata());
  expect_load_error(p2, {"missing tensor 'layers.1.wo.col_idx'"});
  std::remove(p2.c_str());
}

// `src` rewritten with sqz.format_version = `version`, as `dst`.
static void relabel_version(const std::string& src, const std::string& dst, const char* version) {
  SafeTensorsFile f(src);
  std::vector<TensorToWrite> t;
  for (auto& kv : f.tensors())
    t.push_back({kv.first, kv.second.dtype, kv.second.shape, kv.second.data, kv.second.n_bytes});
  auto md = f.metadata();
  md["sqz.format_version"] = version;
  write_safetensors(dst, t, md);
}

TEST_F(PackedMalformed, NewerFormatVersion) {
  save_packed(path_, res_->model, res_->metadata);
  std::string p2 = path_ + "v";
  relabel_version(path_, p2, "7");
  expect_load_error(p2, {"newer"});
  std::remove(p2.c_str());
}

// Version 1 had another 3-bit index layout: its 3-bit files are refused by name, its 4-bit
// files (same layout) still load.
TEST_F(PackedMalformed, FormatVersion1) {
  save_packed(path_, res_->model, res_->metadata);
  std::string p2 = path_ + "v1";
  relabel_version(path_, p2, "1");
  expect_load_error(p2, {".indices': 3-bit indices in the format-version-1 bit layout",
                         "quantize the model again"});
  QuantizeResult q4 =
      quantize_model(stories_options(test::shared_dir() + "/models/stories260K", 4), nullptr);
  save_packed(path_, q4.model, q4.metadata);
  relabel_version(path_, p2, "1");
  Model m = load_model(p2);
  EXPECT_EQ(m.metadata.at("sqz.format_version"), "1");
  EXPECT_EQ(m.layers[0].wq.bits, 4);
  std::remove(p2.c_str());
}

// ---- quality ordering on doc-llama-26m: FP16 < SqueezeLLM-4 < SqueezeLLM-3 < RTN-3 ----

TEST(PackedDocLlama, PerplexityOrdering) {
  SQZ_SHARED_ASSET(dir, "models/doc-llama-26m");
  SQZ_SHARED_ASSET(grads, "models/doc-llama-26m/calibration/grads-100x512.safetensors");
  SQZ_SHARED_ASSET(text, "data/wikitext-2-raw/wiki.test.gptq_join.txt");
  Tokenizer tok = Tokenizer::from_file(dir + "/tokenizer.model");
  std::vector<int> tokens = tok.encode(test::read_file(text), true);
  PerplexityOptions po;
  po.method = PplMethod::GPTQ, po.ctx = 1024, po.max_chunks = 3, po.vocab_size = 8000;
  BackendOptions bo;
  bo.ctx_size = 1024;
  auto ppl = [&](const Model& m) {
    auto be = make_cpu_backend(m, bo);
    return perplexity(*be, tokens, po, nullptr).ppl();
  };
  Model fp16 = load_model(dir);
  auto quant = [&](const std::string& kind, int bits) {
    QuantizeOptions q;
    q.model_path = dir;
    q.gradients_path = grads;
    q.base.kind = kind;
    q.base.q.method = kind == "rtn" ? QuantMethod::RTN : QuantMethod::SQUEEZE;
    q.base.q.bits = bits;
    if (kind != "rtn") q.base.q.outliers.magnitude_pct = 0.4, q.base.q.outliers.sensitive_pct = 0.05;
    return ppl(quantize_model(q, nullptr).model);
  };
  double p16 = ppl(fp16), sq4 = quant("squeeze", 4), sq3 = quant("squeeze", 3), rtn3 = quant("rtn", 3);
  std::printf("ppl over 3 windows: fp16 %.3f  sq4 %.3f  sq3 %.3f  rtn3 %.3f\n", p16, sq4, sq3, rtn3);
  EXPECT_LT(p16, sq4);
  EXPECT_LT(sq4, sq3);
  EXPECT_LT(sq3, rtn3);
}

}  // namespace
}  // namespace sqz
