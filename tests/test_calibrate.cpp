// sqz calibrate: sampling conventions, the output's names and row order, one-line errors, and
// doc-llama-26m against the PyTorch reference of models/doc-llama-26m/calibration
// (README.md there): 8 sequential samples x 256 tokens, layers 0 and 5 in F32: sample ids
// equal, per tensor ||F - F_ref|| / ||F_ref|| <= 1e-3 and >= 95% overlap of the top 0.05%.
// The 100 x 512 comparison (BF16 reference, all layers) runs with SQZ_SLOW_TESTS=1.
// Run: ctest -R test_calibrate
#include <gtest/gtest.h>

#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <vector>

#include "model/dtype.h"
#include "model/safetensors.h"
#include "quantize/calibrate.h"
#include "calib_reference.h"
#include "test_util.h"

namespace sqz {
namespace {

using test::kCalibDir;
using test::compare_with_reference;

std::vector<int> iota_tokens(int n) {
  std::vector<int> t(n);
  for (int i = 0; i < n; i++) t[i] = 100 + i;
  return t;
}

TEST(CalibSamples, SequentialWindowsAfterBos) {
  auto s = make_calibration_samples(iota_tokens(20), 3, 5, CalibSampling::SEQUENTIAL, 0, 1);
  ASSERT_EQ(s.size(), 15u);
  for (int i = 0; i < 3; i++) {
    EXPECT_EQ(s[i * 5], 1);
    for (int j = 1; j < 5; j++) EXPECT_EQ(s[i * 5 + j], 100 + i * 4 + j - 1);
  }
  // exactly enough: 3 x 4 tokens
  EXPECT_NO_THROW(make_calibration_samples(iota_tokens(12), 3, 5, CalibSampling::SEQUENTIAL, 0, 1));
  EXPECT_THROW(make_calibration_samples(iota_tokens(11), 3, 5, CalibSampling::SEQUENTIAL, 0, 1),
               std::invalid_argument);
}

TEST(CalibSamples, RandomOffsetsSeededAndInRange) {
  const auto toks = iota_tokens(50);
  auto a = make_calibration_samples(toks, 200, 10, CalibSampling::RANDOM, 42, 1);
  auto b = make_calibration_samples(toks, 200, 10, CalibSampling::RANDOM, 42, 1);
  auto c = make_calibration_samples(toks, 200, 10, CalibSampling::RANDOM, 43, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::set<int> offsets;
  for (int i = 0; i < 200; i++) {
    EXPECT_EQ(a[i * 10], 1);
    const int off = a[i * 10 + 1] - 100;
    offsets.insert(off);
    EXPECT_GE(off, 0);
    EXPECT_LE(off, 50 - 9);
    for (int j = 2; j < 10; j++) EXPECT_EQ(a[i * 10 + j], a[i * 10 + j - 1] + 1);
  }
  EXPECT_TRUE(offsets.count(0) && offsets.count(41)) << "both ends of [0, n - (L-1)] are drawn";
  // the documented generator: offset_i = mt19937_64(seed)() % (n - (L-1) + 1)
  std::mt19937_64 rng(42);
  EXPECT_EQ(a[1] - 100, int(rng() % 42));
  EXPECT_EQ(a[11] - 100, int(rng() % 42));
  // a text of exactly L-1 tokens has one window
  auto one = make_calibration_samples(iota_tokens(9), 3, 10, CalibSampling::RANDOM, 5, 1);
  EXPECT_EQ(one[1], 100);
  EXPECT_THROW(make_calibration_samples(iota_tokens(8), 1, 10, CalibSampling::RANDOM, 0, 1),
               std::invalid_argument);
}

TEST(CalibSamples, BadArguments) {
  EXPECT_THROW(make_calibration_samples(iota_tokens(50), 0, 10, CalibSampling::RANDOM, 0, 1),
               std::invalid_argument);
  EXPECT_THROW(make_calibration_samples(iota_tokens(50), 1, 1, CalibSampling::RANDOM, 0, 1),
               std::invalid_argument);
  EXPECT_THROW(calib_sampling_from_name("shuffled"), std::invalid_argument);
  try {
    make_calibration_samples(iota_tokens(11), 3, 5, CalibSampling::SEQUENTIAL, 0, 1);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("need 12"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("has 11"), std::string::npos) << e.what();
  }
}

// A backend whose F is known: F[l, i][r, c] = 1e4 l + 1e3 i + r + c / 1000.
class FakeBackend : public GradientBackend {
 public:
  explicit FakeBackend(const Model& m) {
    for (int l = 0; l < m.config.n_layers; l++)
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = layer_linear(m.layers[l], i);
        std::vector<float> f(size_t(w.rows) * w.cols);
        for (int r = 0; r < w.rows; r++)
          for (int c = 0; c < w.cols; c++) f[size_t(r) * w.cols + c] = 1e4f * l + 1e3f * i + r + c / 1000.0f;
        f_.push_back(f);
      }
  }
  std::string name() const override { return "fake"; }
  double accumulate(const int*, int) override { return 0; }
  const float* fisher(int layer, int which) override { return f_[layer * kLinearsPerLayer + which].data(); }
  void reset() override {}
  double gradients(const int*, int, float* const*) override { return 0; }
  double loss(const int*, int) override { return 0; }

 private:
  std::vector<std::vector<float>> f_;
};

Model shape_only_model(const std::string& format) {
  Model m;
  m.format = format;
  Config& c = m.config;
  c.dim = 8, c.hidden_dim = 12, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 4;
  m.layers.resize(2);
  for (auto& l : m.layers) {
    LinearWeight* w[kLinearsPerLayer] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down};
    const int rows[kLinearsPerLayer] = {8, 4, 4, 8, 12, 12, 8};
    const int cols[kLinearsPerLayer] = {8, 8, 8, 8, 8, 8, 12};
    for (int i = 0; i < kLinearsPerLayer; i++) w[i]->rows = rows[i], w[i]->cols = cols[i];
  }
  return m;
}

TEST(CalibOutput, NamesAndRowOrder) {
  for (const char* format : {"hf", "llama2c"}) {
    Model m = shape_only_model(format);
    FakeBackend be(m);
    const std::string path = test::temp_path(std::string("grads_") + format + ".safetensors");
    write_gradients(path, m, be, {{"samples", "3"}});
    SafeTensorsFile f(path);
    EXPECT_EQ(f.tensors().size(), 14u);
    EXPECT_EQ(f.metadata().at("samples"), "3");
    for (int l = 0; l < 2; l++)
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const TensorView& t = f.get(hf_linear_name(l, linear_hf_type(i)));
        const LinearWeight& w = layer_linear(m.layers[l], i);
        ASSERT_EQ(t.dtype, DType::F32);
        ASSERT_EQ(t.shape, (std::vector<int64_t>{w.rows, w.cols}));
        const float* v = reinterpret_cast<const float*>(t.data);
        for (int r = 0; r < w.rows; r++) {
          // HF q/k: the file's row r is our (interleaved) row rope_row_hf_to_interleaved(r)
          const int ours = std::string(format) == "hf" && i < 2 ? rope_row_hf_to_interleaved(r, 4) : r;
          EXPECT_EQ(v[size_t(r) * w.cols + 1], be.fisher(l, i)[size_t(ours) * w.cols + 1])
              << format << " layer " << l << " " << linear_hf_type(i) << " row " << r;
        }
      }
    std::remove(path.c_str());
  }
}

TEST(Calibrate, OneLineErrors) {
  SQZ_SHARED_ASSET(model, "models/doc-llama-26m");
  CalibrateOptions o;
  o.model_path = model;
  o.output_path = test::temp_path("never.safetensors");
  o.data_path = test::temp_path("missing.txt");
  try {
    calibrate(o, nullptr);
    ADD_FAILURE() << "no error for a missing text";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  const std::string short_text = test::temp_path("short.txt");
  std::ofstream(short_text) << "A short text.";
  o.data_path = short_text, o.n_samples = 2, o.seqlen = 64;
  try {
    calibrate(o, nullptr);
    ADD_FAILURE() << "no error for a short text";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("too short"), std::string::npos) << e.what();
  }
  o.n_samples = 0;
  EXPECT_THROW(calibrate(o, nullptr), std::invalid_argument);
  o.n_samples = 1, o.n_threads = -1;
  EXPECT_THROW(calibrate(o, nullptr), std::invalid_argument);
  o.n_threads = 0, o.device = "cuda";
  o.seqlen = 2;
  if (!cuda_available()) {  // with a GPU, --device cuda is valid
    try {
      calibrate(o, nullptr);
      ADD_FAILURE() << "no error for --device cuda";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("not available"), std::string::npos) << e.what();
    }
  }
  std::remove(short_text.c_str());
}

TEST(Calibrate, DocLlamaMatchesPyTorch8x256) {
  // grads-8x256.stats.json: mean_loss 3.234225034713745
  compare_with_reference("cpu", 8, 256, "grads-8x256.safetensors", "samples-8x256.i32", 1e-3, 0.95,
                         3.234225034713745);
}

TEST(Calibrate, DocLlamaMatchesPyTorch100x512Slow) {
  const char* slow = std::getenv("SQZ_SLOW_TESTS");
  if (!slow || std::string(slow) != "1")
    GTEST_SKIP() << "100 x 512 calibration of doc-llama-26m: set SQZ_SLOW_TESTS=1 to run it";
  // BF16 reference (rounding alone: up to 1.8e-3 relative), all 42 tensors.
  // grads-100x512.stats.json: mean_loss 2.362702262401581
  compare_with_reference("cpu", 100, 512, "grads-100x512.safetensors", "samples-100x512.i32", 1e-2, 0.0,
                         2.362702262401581);
}

}  // namespace
}  // namespace sqz
