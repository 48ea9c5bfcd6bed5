// Whole-model gradients of doc-llama-26m against the PyTorch references in
// ../shared/models/doc-llama-26m/calibration/ (make_grads.py there): the same samples (from
// calib.txt with sequential sampling), the same mean loss, and per tensor the relative
// error and the overlap of the top 0.05% entries. Used by test_calibrate (CPU) and
// test_gradients_cuda (GPU).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "model/dtype.h"
#include "model/safetensors.h"
#include "quantize/calibrate.h"
#include "test_util.h"

namespace sqz {
namespace test {

const std::string kCalibDir = "models/doc-llama-26m/calibration/";

inline std::vector<float> as_f32(const TensorView& t) {
  std::vector<float> v(size_t(t.n_elems()));
  convert_to_f32(t.dtype, t.data, v.data(), v.size());
  return v;
}

// Fraction of the top `frac` entries of ref[0, n) that are also among the top of got[0, n).
inline double top_overlap(const float* got, const float* ref, size_t n, double frac) {
  const size_t k = std::max<size_t>(1, size_t(std::ceil(frac * n)));
  auto top = [&](const float* v) {
    std::vector<size_t> idx(n);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(),
                     [&](size_t a, size_t b) { return v[a] > v[b]; });
    return std::set<size_t>(idx.begin(), idx.begin() + k);
  };
  const auto a = top(got), b = top(ref);
  size_t common = 0;
  for (size_t i : a) common += b.count(i);
  return double(common) / k;
}

inline std::vector<int32_t> read_i32(const std::string& path) {
  const std::string bytes = test::read_file(path);
  std::vector<int32_t> v(bytes.size() / 4);
  for (size_t i = 0; i < v.size(); i++) {
    uint32_t u = 0;
    for (int b = 0; b < 4; b++) u |= uint32_t(uint8_t(bytes[i * 4 + b])) << (8 * b);
    v[i] = int32_t(u);
  }
  return v;
}

// Runs sqz's calibration of doc-llama-26m as the reference did and compares every tensor
// the reference file holds.
inline void compare_with_reference(const std::string& device, int n, int L,
                                   const std::string& ref_grads, const std::string& ref_samples,
                                   double max_rel_err, double min_overlap, double ref_mean_loss) {
  SQZ_SHARED_ASSET(model, "models/doc-llama-26m");
  SQZ_SHARED_ASSET(text, kCalibDir + "calib.txt");
  SQZ_SHARED_ASSET(ref_path, kCalibDir + ref_grads);
  SQZ_SHARED_ASSET(ref_samples_path, kCalibDir + ref_samples);
  CalibrateOptions o;
  o.model_path = model, o.data_path = text;
  o.n_samples = n, o.seqlen = L, o.sampling = CalibSampling::SEQUENTIAL;
  o.device = device;
  o.output_path = test::temp_path("grads.safetensors");
  o.samples_path = test::temp_path("samples.i32");
  const auto t0 = std::chrono::steady_clock::now();
  CalibrateResult res = calibrate(o, nullptr);
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "doc-llama-26m %dx%d on %s: %lld text tokens, mean loss %.6f (reference %.6f), "
      "forward+backward %.2f s (%.3f s/sample), %.2f s with loading and tokenizing\n",
      n, L, device.c_str(), (long long)res.n_text_tokens, res.mean_loss, ref_mean_loss, res.seconds,
      res.seconds / n, total_s);
  EXPECT_EQ(res.n_text_tokens, 339713);
  EXPECT_NEAR(res.mean_loss, ref_mean_loss, 1e-4);

  EXPECT_EQ(read_i32(o.samples_path), read_i32(ref_samples_path)) << "sample ids differ";
  SafeTensorsFile ours(o.output_path), ref(ref_path);
  EXPECT_EQ(ours.tensors().size(), 42u);
  EXPECT_EQ(ours.metadata().at("samples"), std::to_string(n));
  EXPECT_EQ(ours.metadata().at("seqlen"), std::to_string(L));
  EXPECT_EQ(ours.metadata().at("sampling"), "sequential");
  double worst_err = 0, worst_overlap = 1;
  std::string worst_err_name, worst_overlap_name;
  int compared = 0;
  for (const auto& kv : ref.tensors()) {
    ASSERT_TRUE(ours.has(kv.first)) << kv.first;
    const TensorView& a = ours.get(kv.first);
    ASSERT_EQ(a.shape, kv.second.shape) << kv.first;
    const std::vector<float> f = as_f32(a), fr = as_f32(kv.second);
    double num = 0, den = 0;
    for (size_t i = 0; i < f.size(); i++) {
      num += (double(f[i]) - fr[i]) * (double(f[i]) - fr[i]);
      den += double(fr[i]) * fr[i];
    }
    const double err = std::sqrt(num / den),
                 ov = top_overlap(f.data(), fr.data(), f.size(), 0.0005);
    if (err > worst_err) worst_err = err, worst_err_name = kv.first;
    if (ov < worst_overlap || worst_overlap_name.empty())
      worst_overlap = ov, worst_overlap_name = kv.first;
    EXPECT_LE(err, max_rel_err) << kv.first;
    if (min_overlap > 0) {
      EXPECT_GE(ov, min_overlap) << kv.first;
    }
    compared++;
  }
  std::printf(
      "compared %d tensors: worst relative error %.3e (%s), worst top-0.05%% overlap "
      "%.1f%% (%s)\n",
      compared, worst_err, worst_err_name.c_str(), 100 * worst_overlap, worst_overlap_name.c_str());
  std::remove(o.output_path.c_str());
  std::remove(o.samples_path.c_str());
}

}  // namespace test
}  // namespace sqz
