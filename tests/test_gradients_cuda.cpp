// The GPU gradient backend (engine/gradients_cuda.cu) and its ops against the CPU versions
// (label gpu; every test skips when no GPU is present):
//   (a) the backward ops and calibration's fp32 forwards on odd shapes: dense linear (forward,
//       dX, dW, F += dW^2), RMSNorm, RoPE, SwiGLU, causal GQA attention (head_dim 1..256);
//   (b) doc-llama-26m, 4 sequential samples x 256 tokens of its calibration text: per tensor
//       ||F_gpu - F_cpu|| / ||F_cpu|| <= 1e-3 and >= 95% overlap of the top 0.05%;
//   (c) stories260K, 2 samples x 64 tokens of a text written here: F, raw gradients, loss,
//       reset, errors, and the TF32 option;
//   (d) doc-llama-26m against the PyTorch references (tests/calib_reference.h): 8 x 256 (F32,
//       relative error <= 1e-3, top-0.05% overlap >= 95%) and 100 x 512 (BF16, <= 1e-2).
// Outputs start NaN-poisoned, so every element must have been written to pass.
// Run: ctest -R test_gradients_cuda  (or build/tests/test_gradients_cuda)
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "calib_reference.h"
#include "cuda_test_util.h"
#include "engine/engine.h"
#include "engine/gradients.h"
#include "kernels/attention_backward.h"
#include "kernels/cuda_common.h"
#include "kernels/matmul_backward.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_backward.h"
#include "kernels/rope.h"
#include "kernels/rope_backward.h"
#include "kernels/swiglu.h"
#include "kernels/swiglu_backward.h"
#include "model/model.h"
#include "quantize/calibrate.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace sqz {
namespace {

using test::DeviceBuffer;

// Ops: fp32 on both sides, so the differences are summation order and a few ulps of
// expf/cos/FMA contraction. Norm-wise: ||got - ref|| / ||ref||; elementwise: |got - ref| <=
// abs + rel * |ref|.
constexpr double kGemmRel = 1e-5;  // fp32 GEMM, K up to 300, vs the CPU's blocked GEMM
constexpr float kElemAbs = 1e-5f;  // O(1) values: norms, rope, swiglu, attention outputs
constexpr float kElemRel = 1e-4f;
constexpr double kAttnGradRel = 1e-5;      // dq, dk, dv norm-wise
constexpr double kSquareAddUlps = 2.4e-7;  // 2 ulps of fp32 (2^-23 each), of |f| + dw^2
// Whole models (the brief of the GPU backend): per tensor, F vs the CPU backend.
constexpr double kFisherRel = 1e-3;
constexpr double kTopFrac = 0.0005;  // the paper's 0.05% sensitive values
constexpr double kTopOverlapMin = 0.95;
constexpr double kLossAbs = 1e-4;        // nats, per sample
constexpr double kRawGradRel = 1e-4;     // one sample's dW, per tensor
constexpr double kTf32FisherRel = 5e-2;  // TF32 GEMMs (10-bit mantissas): loose, a smoke test

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f, float offset = 0.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng) + offset;
  return v;
}

double rel_err(const float* got, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num / std::max(den, 1e-300));
}
double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  return rel_err(got.data(), ref.data(), std::min(got.size(), ref.size()));
}

// Every element within abs + rel * |ref| (NaN fails); reports up to 10 mismatches.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, float abs_tol,
                  float rel_tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    const float tol = abs_tol + rel_tol * std::fabs(ref[i]);
    if (!(std::fabs(got[i] - ref[i]) <= tol)) {
      if (bad < 10)
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " expected " << ref[i];
      bad++;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size() << " elements differ";
}

// One stream and a cuBLAS handle bound to it, in the default (non-TF32) math mode.
struct CudaContext {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  CudaContext() {
    CUDA_CHECK(cudaStreamCreate(&stream));
    if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
    cublasSetStream(cublas, stream);
    cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH);
  }
  ~CudaContext() {
    cudaStreamSynchronize(stream);
    cublasDestroy(cublas);
    cudaStreamDestroy(stream);
  }
  GemmCuda gemm() const { return GemmCuda{cublas, stream, false}; }
};

// ---- (a) ops ---------------------------------------------------------------------------------

struct LinShape {
  int n, rows, cols;
};
const LinShape kLinShapes[] = {{1, 1, 1},    {7, 13, 5},     {2, 50, 300},
                               {33, 17, 70}, {300, 49, 257}, {64, 128, 96}};

TEST(MatmulBackwardCuda, ForwardDxDwSquareAddOddShapes) {
  SQZ_REQUIRE_GPU();
  CudaContext ctx;
  ThreadPool pool(4);
  std::mt19937 rng(11);
  for (LinShape s : kLinShapes) {
    const std::string tag =
        std::to_string(s.n) + "x" + std::to_string(s.rows) + "x" + std::to_string(s.cols);
    std::vector<float> w = randn(size_t(s.rows) * s.cols, rng),
                       x = randn(size_t(s.n) * s.cols, rng);
    std::vector<float> dy = randn(size_t(s.n) * s.rows, rng);
    DeviceBuffer<float> dw_w(w), dx_in(x), d_dy(dy);
    // y = x W^T, then y += x W^T
    std::vector<float> y(size_t(s.n) * s.rows);
    matmul_gemm(MatType::F32, w.data(), s.rows, s.cols, x.data(), s.n, y.data(), pool);
    DeviceBuffer<float> d_y(y.size());
    matmul_gemm_cuda(ctx.gemm(), dw_w.p, s.rows, s.cols, dx_in.p, s.n, d_y.p, false);
    EXPECT_LT(rel_err(d_y.download(), y), kGemmRel) << "y " << tag;
    matmul_gemm_cuda(ctx.gemm(), dw_w.p, s.rows, s.cols, dx_in.p, s.n, d_y.p, true);
    std::vector<float> y2(y);
    for (auto& v : y2) v *= 2;
    EXPECT_LT(rel_err(d_y.download(), y2), kGemmRel) << "y += " << tag;
    // dx = dy W, then dx += dy W
    std::vector<float> dx(size_t(s.n) * s.cols);
    matmul_backward_x(MatType::F32, w.data(), s.rows, s.cols, dy.data(), s.n, dx.data(), false,
                      pool);
    DeviceBuffer<float> d_dx(dx.size());
    matmul_backward_x_cuda(ctx.gemm(), dw_w.p, s.rows, s.cols, d_dy.p, s.n, d_dx.p, false);
    EXPECT_LT(rel_err(d_dx.download(), dx), kGemmRel) << "dx " << tag;
    matmul_backward_x_cuda(ctx.gemm(), dw_w.p, s.rows, s.cols, d_dy.p, s.n, d_dx.p, true);
    for (auto& v : dx) v *= 2;
    EXPECT_LT(rel_err(d_dx.download(), dx), kGemmRel) << "dx += " << tag;
    // dW = dy^T x
    std::vector<float> dw(size_t(s.rows) * s.cols);
    matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, dw.data(), GemmEpilogue::STORE,
                      pool);
    DeviceBuffer<float> d_dw(dw.size()), scratch(dw.size());
    matmul_backward_w_cuda(ctx.gemm(), d_dy.p, dx_in.p, s.n, s.rows, s.cols, d_dw.p,
                           GemmEpilogue::STORE, nullptr);
    EXPECT_LT(rel_err(d_dw.download(), dw), kGemmRel) << "dW " << tag;
    // F = 1, then F += dW^2 twice, on both sides
    std::vector<float> f(dw.size(), 1.0f);
    matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, f.data(), GemmEpilogue::SQUARE_ADD,
                      pool);
    matmul_backward_w(dy.data(), x.data(), s.n, s.rows, s.cols, f.data(), GemmEpilogue::SQUARE_ADD,
                      pool);
    DeviceBuffer<float> d_f(std::vector<float>(dw.size(), 1.0f));
    for (int rep = 0; rep < 2; rep++)
      matmul_backward_w_cuda(ctx.gemm(), d_dy.p, dx_in.p, s.n, s.rows, s.cols, d_f.p,
                             GemmEpilogue::SQUARE_ADD, scratch.p);
    EXPECT_LT(rel_err(d_f.download(), f), 2 * kGemmRel) << "F " << tag;
  }
}

TEST(MatmulBackwardCuda, SquareAddUnalignedAndTails) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(12);
  for (int n : {1, 3, 4, 5, 1023, 100001}) {
    for (int offset : {0, 1}) {  // offset 1: not 16-byte aligned, the scalar kernel
      std::vector<float> dw = randn(n + 1, rng), f = randn(n + 1, rng);
      DeviceBuffer<float> d_dw(dw), d_f(f);
      square_add_cuda(d_dw.p + offset, n, d_f.p + offset, nullptr);
      // f + d^2 rounded once (FMA) or twice: within an ulp or so of |f| + d^2
      const std::vector<float> got = d_f.download();
      int bad = 0;
      for (int i = 0; i < n + 1; i++) {
        const double d = dw[i], f0 = f[i];
        const bool touched = i >= offset && i < n + offset;
        const double ref = touched ? f0 + d * d : f0;
        const double tol = touched ? kSquareAddUlps * (std::fabs(f0) + d * d) : 0.0;
        if (!(std::fabs(got[i] - ref) <= tol) && bad++ < 10)
          ADD_FAILURE() << "square_add n " << n << " offset " << offset << ": element " << i
                        << " got " << got[i] << " expected " << ref;
      }
      EXPECT_EQ(bad, 0) << "square_add n " << n << " offset " << offset;
    }
  }
}

TEST(RmsNormBackwardCuda, ForwardAndBackwardOddShapes) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(13);
  const float eps = 1e-5f;
  for (int n : {1, 3, 37})
    for (int dim : {1, 11, 111, 500, 4099}) {
      const std::string tag = std::to_string(n) + "x" + std::to_string(dim);
      std::vector<float> x = randn(size_t(n) * dim, rng), w = randn(dim, rng, 0.2f, 1.0f);
      std::vector<float> dy = randn(x.size(), rng), dx0 = randn(x.size(), rng);
      for (int i = 0; i < dim; i++) x[i] *= 1e-2f;  // rows of different scales
      std::vector<float> y(x.size()), dx(dx0);
      rmsnorm(x.data(), w.data(), n, dim, eps, y.data());
      rmsnorm_backward(x.data(), w.data(), dy.data(), n, dim, eps, dx.data());
      DeviceBuffer<float> d_x(x), d_w(w), d_dy(dy), d_y(y.size()), d_dx(dx0);
      rmsnorm_forward_cuda(d_x.p, d_w.p, n, dim, eps, d_y.p, nullptr);
      rmsnorm_backward_cuda(d_x.p, d_w.p, d_dy.p, n, dim, eps, d_dx.p, nullptr);  // adds
      expect_close(d_y.download(), y, kElemAbs, kElemRel, "rmsnorm forward " + tag);
      expect_close(d_dx.download(), dx, kElemAbs, kElemRel, "rmsnorm backward " + tag);
    }
}

TEST(RopeBackwardCuda, ForwardAndBackwardOddShapes) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(14);
  struct Shape {
    int n, heads, hd;
  };
  for (Shape s :
       {Shape{1, 1, 2}, Shape{5, 3, 8}, Shape{37, 4, 64}, Shape{17, 32, 128}, Shape{9, 2, 6}}) {
    const std::string tag =
        std::to_string(s.n) + "x" + std::to_string(s.heads) + "x" + std::to_string(s.hd);
    std::vector<int> pos(s.n);
    for (int t = 0; t < s.n; t++) pos[t] = t == 0 ? 0 : int(rng() % 4096);
    std::vector<float> x = randn(size_t(s.n) * s.heads * s.hd, rng), g = randn(x.size(), rng);
    DeviceBuffer<float> d_x(x), d_g(g);
    DeviceBuffer<int> d_pos(pos);
    rope(x.data(), pos.data(), s.n, s.heads, s.hd, 10000.0f);
    rope_backward(g.data(), pos.data(), s.n, s.heads, s.hd, 10000.0f);
    rope_forward_cuda(d_x.p, d_pos.p, s.n, s.heads, s.hd, 10000.0f, nullptr);
    rope_backward_cuda(d_g.p, d_pos.p, s.n, s.heads, s.hd, 10000.0f, nullptr);
    expect_close(d_x.download(), x, kElemAbs, kElemRel, "rope forward " + tag);
    expect_close(d_g.download(), g, kElemAbs, kElemRel, "rope backward " + tag);
  }
  DeviceBuffer<float> d_x(6);
  DeviceBuffer<int> d_pos(std::vector<int>{0});
  EXPECT_THROW(rope_forward_cuda(d_x.p, d_pos.p, 1, 2, 3, 10000.0f, nullptr),
               std::invalid_argument);
}

TEST(SwigluBackwardCuda, ForwardAndBackward) {
  SQZ_REQUIRE_GPU();
  std::mt19937 rng(15);
  for (int n : {1, 1000, 4097}) {
    std::vector<float> g = randn(n, rng, 3.0f), u = randn(n, rng), d = randn(n, rng);
    if (n > 3) g[0] = 0, g[1] = -30, g[2] = 30, g[3] = -90;
    std::vector<float> out(n), dg(n), du(n);
    swiglu(g.data(), u.data(), n, out.data());
    swiglu_backward(g.data(), u.data(), d.data(), n, dg.data(), du.data());
    DeviceBuffer<float> d_g(g), d_u(u), d_d(d), d_out(n), d_dg(n), d_du(n);
    swiglu_forward_cuda(d_g.p, d_u.p, n, d_out.p, nullptr);
    swiglu_backward_cuda(d_g.p, d_u.p, d_d.p, n, d_dg.p, d_du.p, nullptr);
    expect_close(d_out.download(), out, kElemAbs, kElemRel,
                 "swiglu forward n " + std::to_string(n));
    expect_close(d_dg.download(), dg, kElemAbs, kElemRel, "swiglu dgate n " + std::to_string(n));
    expect_close(d_du.download(), du, kElemAbs, kElemRel, "swiglu dup n " + std::to_string(n));
    // in place, as the backend calls it: dgate/dup overwrite gate/up
    swiglu_backward_cuda(d_g.p, d_u.p, d_d.p, n, d_g.p, d_u.p, nullptr);
    expect_close(d_g.download(), dg, kElemAbs, kElemRel, "swiglu dgate in place");
    expect_close(d_u.download(), du, kElemAbs, kElemRel, "swiglu dup in place");
  }
}

struct AttnShape {
  int n, H, KV, hd;
};
// Tiles of 8 rows and 32 keys; head_dim 1..256 (1, 2, 4 or 8 registers per lane), odd too;
// GQA groups 1, 2, 3, 4.
const AttnShape kAttnShapes[] = {{1, 1, 1, 4},     {7, 4, 2, 4},   {33, 6, 3, 8},   {70, 8, 4, 64},
                                 {100, 2, 1, 128}, {45, 3, 3, 80}, {40, 2, 2, 256}, {37, 4, 1, 5},
                                 {129, 4, 4, 33},  {300, 2, 1, 16}};

TEST(AttentionBackwardCuda, ForwardAndBackwardGqaOddShapes) {
  SQZ_REQUIRE_GPU();
  ThreadPool pool(4);
  std::mt19937 rng(16);
  for (AttnShape s : kAttnShapes) {
    const std::string tag = "n " + std::to_string(s.n) + " H " + std::to_string(s.H) + " KV " +
                            std::to_string(s.KV) + " hd " + std::to_string(s.hd);
    const size_t nq = size_t(s.n) * s.H * s.hd, nk = size_t(s.n) * s.KV * s.hd;
    std::vector<float> q = randn(nq, rng), k = randn(nk, rng), v = randn(nk, rng),
                       dout = randn(nq, rng);
    CausalAttentionArgs a;
    a.n_tokens = s.n, a.n_heads = s.H, a.n_kv_heads = s.KV, a.head_dim = s.hd;
    a.q = q.data(), a.k = k.data(), a.v = v.data();
    std::vector<float> out(nq), lse(size_t(s.n) * s.H), dq(nq), dk(nk), dv(nk);
    attention_causal_forward(a, out.data(), lse.data(), pool);
    attention_causal_backward(a, out.data(), lse.data(), dout.data(), dq.data(), dk.data(),
                              dv.data(), pool);

    DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_dout(dout), d_out(nq), d_lse(lse.size());
    DeviceBuffer<float> d_dq(nq), d_dk(nk), d_dv(nk), ws(lse.size());
    CausalAttentionArgs da = a;
    da.q = d_q.p, da.k = d_k.p, da.v = d_v.p;
    attention_causal_forward_cuda(da, d_out.p, d_lse.p, nullptr);
    const std::vector<float> g_out = d_out.download(), g_lse = d_lse.download();
    expect_close(g_out, out, kElemAbs, kElemRel, "attention out " + tag);
    expect_close(g_lse, lse, kElemAbs, kElemRel, "attention lse " + tag);
    // the backward from the CPU's forward, so that only the backward is compared
    d_out.upload(out), d_lse.upload(lse);
    attention_causal_backward_cuda(da, d_out.p, d_lse.p, d_dout.p, d_dq.p, d_dk.p, d_dv.p, ws.p,
                                   nullptr);
    EXPECT_LT(rel_err(d_dq.download(), dq), kAttnGradRel) << "dq " << tag;
    EXPECT_LT(rel_err(d_dk.download(), dk), kAttnGradRel) << "dk " << tag;
    EXPECT_LT(rel_err(d_dv.download(), dv), kAttnGradRel) << "dv " << tag;
    // deterministic: the same call gives the same bits
    const std::vector<float> dk1 = d_dk.download();
    attention_causal_backward_cuda(da, d_out.p, d_lse.p, d_dout.p, d_dq.p, d_dk.p, d_dv.p, ws.p,
                                   nullptr);
    EXPECT_EQ(d_dk.download(), dk1) << tag;
  }
  CausalAttentionArgs bad;
  bad.n_tokens = 2, bad.n_heads = 3, bad.n_kv_heads = 2, bad.head_dim = 4;
  EXPECT_THROW(attention_causal_forward_cuda(bad, nullptr, nullptr, nullptr),
               std::invalid_argument);
  bad.n_kv_heads = 1, bad.head_dim = 257;
  EXPECT_THROW(attention_causal_forward_cuda(bad, nullptr, nullptr, nullptr),
               std::invalid_argument);
}

// ---- whole models: GPU vs CPU backend --------------------------------------------------------

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs the samples through both backends, then compares every linear's F: relative error
// <= max_rel and (when min_overlap > 0) the top-0.05% overlap; prints the worst of each.
void compare_backends(const Model& m, const std::vector<int32_t>& samples, int n_samples, int L,
                      const std::string& what, double max_rel, double min_overlap,
                      bool tf32 = false) {
  GradientOptions go;
  auto cpu = make_cpu_gradients(m, go);
  go.tf32 = tf32;
  auto gpu = make_cuda_gradients(m, go);
  EXPECT_EQ(gpu->name(), tf32 ? "cuda-tf32" : "cuda");
  double cpu_s = 0, gpu_s = 0;
  for (int i = 0; i < n_samples; i++) {
    const int* ids = samples.data() + size_t(i) * L;
    double t0 = now_s();
    const double lc = cpu->accumulate(ids, L);
    cpu_s += now_s() - t0;
    t0 = now_s();
    const double lg = gpu->accumulate(ids, L);
    gpu_s += now_s() - t0;
    EXPECT_NEAR(lg, lc, tf32 ? 1e-2 : kLossAbs) << what << " sample " << i;
  }
  double worst_err = 0, worst_overlap = 1;
  std::string worst_err_name, worst_overlap_name;
  for (int l = 0; l < m.config.n_layers; l++)
    for (int i = 0; i < kLinearsPerLayer; i++) {
      const LinearWeight& w = layer_linear(m.layers[l], i);
      const size_t n = size_t(w.rows) * w.cols;
      const float* fc = cpu->fisher(l, i);
      const float* fg = gpu->fisher(l, i);
      const std::string name = w.name;
      const double err = rel_err(fg, fc, n);
      const double ov = test::top_overlap(fg, fc, n, kTopFrac);
      if (err > worst_err || worst_err_name.empty()) worst_err = err, worst_err_name = name;
      if (ov < worst_overlap || worst_overlap_name.empty())
        worst_overlap = ov, worst_overlap_name = name;
      EXPECT_LE(err, max_rel) << what << " " << name;
      if (min_overlap > 0) {
        EXPECT_GE(ov, min_overlap) << what << " " << name;
      }
    }
  std::printf(
      "%s: %d x %d tokens, cpu %.3f s/sample, %s %.3f s/sample; F vs cpu: worst relative "
      "error %.3e (%s), worst top-0.05%% overlap %.1f%% (%s)\n",
      what.c_str(), n_samples, L, cpu_s / n_samples, gpu->name().c_str(), gpu_s / n_samples,
      worst_err, worst_err_name.c_str(), 100 * worst_overlap, worst_overlap_name.c_str());
}

TEST(CudaGradients, DocLlamaMatchesCpu4x256) {
  SQZ_REQUIRE_GPU();
  SQZ_SHARED_ASSET(model_dir, "models/doc-llama-26m");
  SQZ_SHARED_ASSET(text_path, "models/doc-llama-26m/calibration/calib.txt");
  const Model m = load_model(model_dir);
  const Tokenizer tok = Tokenizer::from_file(model_dir + "/tokenizer.model");
  const int n = 4, L = 256;
  const std::vector<int> tokens = tok.encode(test::read_file(text_path), false);
  const std::vector<int32_t> samples =
      make_calibration_samples(tokens, n, L, CalibSampling::SEQUENTIAL, 0, tok.bos_id());
  compare_backends(m, samples, n, L, "doc-llama-26m", kFisherRel, kTopOverlapMin);
}

// A made-up little story (stories260K's tokenizer has 512 pieces: about 2 characters each).
std::string story_text() {
  const char* names[] = {"Lily", "Tom", "Sue", "Ben"};
  const char* things[] = {"a red ball", "a big dog", "a small cat", "a blue kite"};
  std::string s;
  for (int i = 0; i < 24; i++)
    s += std::string("Once upon a time, ") + names[i % 4] + " found " + things[(i * 3) % 4] +
         " in the park. " + names[(i + 1) % 4] + " was happy and they played all day. ";
  return s;
}

struct Stories {
  Model m;
  std::vector<int32_t> samples;
  static constexpr int kN = 2, kL = 64;
};

Stories load_stories(const std::string& bin, const std::string& tok_path) {
  Stories s;
  s.m = load_model(bin);
  const Tokenizer tok = Tokenizer::from_file(tok_path);
  s.samples = make_calibration_samples(tok.encode(story_text(), false), Stories::kN, Stories::kL,
                                       CalibSampling::SEQUENTIAL, 0, tok.bos_id());
  return s;
}

TEST(CudaGradients, Stories260KMatchesCpu2x64) {
  SQZ_REQUIRE_GPU();
  SQZ_SHARED_ASSET(bin, "models/stories260K/stories260K.bin");
  SQZ_SHARED_ASSET(tok_path, "models/stories260K/tok512.model");
  const Stories s = load_stories(bin, tok_path);
  compare_backends(s.m, s.samples, Stories::kN, Stories::kL, "stories260K", kFisherRel, 0.0);
}

TEST(CudaGradients, Stories260KRawGradientsLossResetErrors) {
  SQZ_REQUIRE_GPU();
  SQZ_SHARED_ASSET(bin, "models/stories260K/stories260K.bin");
  SQZ_SHARED_ASSET(tok_path, "models/stories260K/tok512.model");
  const Stories s = load_stories(bin, tok_path);
  const Model& m = s.m;
  const int L = Stories::kL, n_slots = m.config.n_layers * kLinearsPerLayer;
  auto cpu = make_cpu_gradients(m, GradientOptions());
  auto gpu = make_gradient_backend(m, GradientOptions(), "cuda");
  EXPECT_EQ(gpu->name(), "cuda");
  EXPECT_EQ(make_gradient_backend(m, GradientOptions(), "auto")->name(), "cuda");

  // raw gradients of one sample (F untouched), against the CPU's
  std::vector<std::vector<float>> gc(n_slots), gg(n_slots);
  std::vector<float*> pc, pg;
  for (int sl = 0; sl < n_slots; sl++) {
    const LinearWeight& w = layer_linear(m.layers[sl / kLinearsPerLayer], sl % kLinearsPerLayer);
    gc[sl].assign(size_t(w.rows) * w.cols, NAN), gg[sl].assign(size_t(w.rows) * w.cols, NAN);
    pc.push_back(gc[sl].data()), pg.push_back(gg[sl].data());
  }
  const int* ids = s.samples.data();
  const double lc = cpu->gradients(ids, L, pc.data());
  EXPECT_NEAR(gpu->gradients(ids, L, pg.data()), lc, kLossAbs);
  for (int sl = 0; sl < n_slots; sl++)
    EXPECT_LT(rel_err(gg[sl], gc[sl]), kRawGradRel) << "slot " << sl;
  EXPECT_EQ(gpu->fisher(0, 0)[0], 0.0f) << "gradients() must not touch F";
  EXPECT_NEAR(gpu->loss(ids, L), lc, kLossAbs);

  // F of one sample is the square of its gradients; reset() zeroes; a shorter sample after a
  // longer one reuses the activations
  gpu->accumulate(ids, L);
  for (int sl = 0; sl < n_slots; sl++) {
    std::vector<float> sq(gg[sl]);
    for (auto& v : sq) v *= v;
    const float* f = gpu->fisher(sl / kLinearsPerLayer, sl % kLinearsPerLayer);
    EXPECT_LT(rel_err(f, sq.data(), sq.size()), 1e-6) << "slot " << sl;
  }
  gpu->reset();
  EXPECT_EQ(gpu->fisher(m.config.n_layers - 1, 6)[0], 0.0f);
  EXPECT_NEAR(gpu->accumulate(ids, 17), cpu->loss(ids, 17), kLossAbs);
  EXPECT_NEAR(gpu->accumulate(ids, 2), cpu->loss(ids, 2), kLossAbs);

  EXPECT_THROW(gpu->accumulate(ids, 1), std::invalid_argument);
  const std::vector<int> bad = {1, m.config.vocab_size};
  EXPECT_THROW(gpu->accumulate(bad.data(), 2), std::out_of_range);
  EXPECT_THROW(gpu->fisher(m.config.n_layers, 0), std::out_of_range);
}

TEST(CudaGradients, Stories260KTf32Option) {
  SQZ_REQUIRE_GPU();
  SQZ_SHARED_ASSET(bin, "models/stories260K/stories260K.bin");
  SQZ_SHARED_ASSET(tok_path, "models/stories260K/tok512.model");
  const Stories s = load_stories(bin, tok_path);
  compare_backends(s.m, s.samples, Stories::kN, Stories::kL, "stories260K (tf32)", kTf32FisherRel,
                   0.0, true);
}

// (d) The GPU against the PyTorch references directly (the brief's checks, on the GPU).
TEST(CudaGradients, DocLlamaMatchesPyTorch8x256) {
  SQZ_REQUIRE_GPU();
  test::compare_with_reference("cuda", 8, 256, "grads-8x256.safetensors", "samples-8x256.i32", 1e-3,
                               0.95, 3.234225034713745);
}

TEST(CudaGradients, DocLlamaMatchesPyTorch100x512) {
  SQZ_REQUIRE_GPU();
  // BF16 reference (its rounding alone: up to 1.8e-3 relative), all 42 tensors.
  test::compare_with_reference("cuda", 100, 512, "grads-100x512.safetensors", "samples-100x512.i32",
                               1e-2, 0.0, 2.362702262401581);
}

}  // namespace
}  // namespace sqz
