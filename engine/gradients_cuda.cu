// The GPU gradient backend: engine/gradients.cpp's CPU backend on one GPU, op for op in the
// same order, fp32 throughout: forward over one sample saving each layer's activations, the
// loss, the backward down to layer 0's linears, and F += dW * dW for every linear, with F on
// the device (summed over samples, copied back by fisher()). One stream, no host work per
// element and one synchronisation per sample (the per-position NLL coming back).
// Test: tests/test_gradients_cuda.cpp (ops vs the CPU versions; doc-llama-26m and
// stories260K F vs the CPU backend).
//
// Precision: the weights are fp32 on the device (F16/BF16 checkpoints widened exactly at
// upload) and every GEMM is cuBLAS fp32 with CUBLAS_COMPUTE_32F and CUBLAS_DEFAULT_MATH (no
// TF32), so the results are the CPU's up to summation order (F within ~1e-5 relative per
// tensor). GradientOptions::tf32 switches the GEMMs to TF32 tensor cores.
//
// Device memory, planned before anything is allocated (persistent, at construction):
//   w[l][i]    [rows, cols] fp32   the 7 linears of every layer
//   f[l][i]    [rows, cols] fp32   their squared gradients F
//   head       [vocab, dim] fp32;  embeddings as stored [vocab, dim]; norms [dim] fp32
//   dw         [max rows * cols]   one linear's dW before F += dW^2
//   cuBLAS workspace, upload staging
// and per sample length n (at the first sample, again when a longer one comes):
//   per layer: x_in, x_mid [n, dim]; q [n, q_dim], k, v [n, kv_dim] (after RoPE);
//              att [n, q_dim]; lse [n, n_heads]; gate, up [n, hidden]
//   scratch:   x_out, h, dx, dh [n, dim]; act, d_act [n, hidden]; d_att, dq [n, q_dim];
//              dk, dv [n, kv_dim]; logits [n - 1, vocab]; D [n, n_heads]; nll, tokens, pos
// The normed inputs of the linears and the SwiGLU output are recomputed in the backward (as
// the CPU does): cheap, and n * dim * 2 * n_layers floats fewer.
//
// Napkin math, LLaMA-7B (6.5e9 linear weights), 512 tokens: forward, dX and dW are each
// 2 * 6.5e9 * 512 = 6.6e12 FLOP: 2.0e13 per sample, 2e15 for 100 samples. At cuBLAS' fp32
// rate on an H100 SXM (~50 of 67 TFLOP/s peak) that is ~0.4 s per sample; F += dW^2 moves
// 12 bytes per weight (78 GB, ~30 ms), attention and the norms a few percent more.
// Memory: 26 GB weights + 26 GB F + 0.5 GB head + 3.1 GB activations: fits an 80 GB H100.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/gradients.h"
#include "kernels/attention_backward.h"
#include "engine/device_arena.h"
#include "kernels/cublas_check.h"
#include "kernels/cuda_common.h"
#include "kernels/cuda_util.cuh"
#include "kernels/matmul_backward.h"
#include "kernels/rmsnorm_backward.h"
#include "kernels/rope_backward.h"
#include "kernels/swiglu_backward.h"
#include "model/dtype.h"
#include "model/errors.h"


namespace sqz {

namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;  // cuBLAS' recommendation for Hopper
constexpr size_t kStagingBytes = 64u << 20;          // 16-bit weights go up in chunks of this
constexpr size_t kReserveBytes = 512u << 20;         // left free: context, cuBLAS internals
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;
constexpr int kThreads = 256;
constexpr int kLossThreads = 1024;

enum Slot { WQ, WK, WV, WO, W_GATE, W_UP, W_DOWN };


// ---- kernels of this backend (the ops' kernels are in kernels/*_backward.cu) ---------------

// dst[i] = src[i] widened from fp16 or bf16 bits (exact).
__global__ void widen_kernel(const uint16_t* __restrict__ src, int64_t n, bool bf16,
                             float* __restrict__ dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] =
        bf16 ? __uint_as_float(uint32_t(src[i]) << 16) : __half2float(__ushort_as_half(src[i]));
}

// x[t, :] = table[tokens[t], :] as fp32. Grid (col blocks, n_tokens). dtype: 0 F32, 1 F16, 2 BF16.
__global__ void embed_kernel(const void* __restrict__ table, int dtype,
                             const int* __restrict__ tokens, int dim, float* __restrict__ x) {
  const int t = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= dim) return;
  const int64_t src = int64_t(tokens[t]) * dim + i;
  float v;
  if (dtype == 0) {
    v = static_cast<const float*>(table)[src];
  } else {
    const uint16_t b = static_cast<const uint16_t*>(table)[src];
    v = dtype == 1 ? __half2float(__ushort_as_half(b)) : __uint_as_float(uint32_t(b) << 16);
  }
  x[int64_t(t) * dim + i] = v;
}

// One block per predicted position t < n - 1 (the CPU's loss loop): lse of the logits row,
// nll[t] = lse - z[target] (double), and with `backward` the row becomes
// dLoss/dlogits = (softmax - onehot(target)) / n_pred.
__global__ void __launch_bounds__(kLossThreads)
    loss_kernel(float* __restrict__ logits, int vocab, const int* __restrict__ tokens, float inv_np,
                bool backward, double* __restrict__ nll) {
  __shared__ float partial_f[32];
  __shared__ double partial_d[32];
  const int t = blockIdx.x, target = tokens[t + 1];
  float* z = logits + int64_t(t) * vocab;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, z[j]);
  mx = block_max(mx, partial_f);
  double sum = 0;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += double(expf(z[j] - mx));
  sum = block_sum_f64(sum, partial_d);
  const float lse = float(double(mx) + log(sum));
  if (threadIdx.x == 0) nll[t] = double(lse) - double(z[target]);
  if (!backward) return;
  __syncthreads();  // z[target] is read above before any thread overwrites it
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float g = expf(z[j] - lse) * inv_np;
    if (j == target) g -= inv_np;
    z[j] = g;
  }
}

int grid_for(int64_t n) { return int(std::min<int64_t>(4096, (n + kThreads - 1) / kThreads)); }

// ---- the backend ---------------------------------------------------------------------------

// Owns every CUDA resource; its destructor also runs when the constructor throws half way.
struct GradResources {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  char* pool = nullptr;        // weights, F, scratch
  char* acts = nullptr;        // activations for up to `capacity` tokens
  int* host_tokens = nullptr;  // pinned [capacity]
  double* host_nll = nullptr;  // pinned [capacity]
  ~GradResources() {
    if (stream) cudaStreamSynchronize(stream);
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
    if (pool) cudaFree(pool);
    if (acts) cudaFree(acts);
    if (host_tokens) cudaFreeHost(host_tokens);
    if (host_nll) cudaFreeHost(host_nll);
  }
};

struct DeviceLayer {
  float* attn_norm = nullptr;       // [dim]
  float* ffn_norm = nullptr;        // [dim]
  float* w[kLinearsPerLayer] = {};  // [rows, cols] fp32
  float* f[kLinearsPerLayer] = {};  // [rows, cols] fp32 squared gradients
};

// What the backward needs from one layer's forward, each [n, width] (see the file comment).
struct LayerActs {
  float *x_in, *x_mid, *q, *k, *v, *att, *lse, *gate, *up;
};

void check_dense(const LinearWeight& w, const std::string& path) {
  if (w.kind == WeightKind::DENSE &&
      (w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16))
    return;
  throw format_error(path + ": " + w.name +
                     " is not a dense F32/F16/BF16 weight; calibration needs the original "
                     "checkpoint (not a packed .sqz model)");
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(size_t(t.n_elems()));
  convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

std::string gib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / kGiB);
  return b;
}

class CudaGradients : public GradientBackend {
 public:
  CudaGradients(const Model& m, const GradientOptions& o) : m_(m), c_(m.config), tf32_(o.tf32) {
    if (!cuda_available())
      throw std::runtime_error(
          "calibration on the GPU is not available: no usable CUDA GPU was found; use --device "
          "cpu");
    for (const LayerWeights& l : m.layers)
      for (int i = 0; i < kLinearsPerLayer; i++) check_dense(layer_linear(l, i), m.path);
    check_dense(m.classifier, m.path);
    const DType et = m.tok_embeddings.dtype;
    if (et != DType::F32 && et != DType::F16 && et != DType::BF16)
      throw format_error(m.path + ": embeddings must be F32, F16 or BF16, not " + dtype_name(et));
    if (c_.head_dim <= 0 || c_.head_dim % 2 != 0 || c_.head_dim > 256)
      throw std::runtime_error("calibration on the GPU: head_dim " + std::to_string(c_.head_dim) +
                               " unsupported (even, at most 256)");

    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    gpu_name_ = prop.name;
    CUDA_CHECK(cudaStreamCreateWithFlags(&r_.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&r_.cublas));
    CUBLAS_CHECK(cublasSetStream(r_.cublas, r_.stream));
    CUBLAS_CHECK(cublasSetMathMode(r_.cublas, CUBLAS_DEFAULT_MATH));  // no TF32 by default
    gemm_.handle = r_.cublas, gemm_.stream = r_.stream, gemm_.tf32 = tf32_;

    // Measure, check against free memory, allocate one pool, carve it.
    DeviceArena measure;
    layout(measure);
    const size_t need = measure.used();
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (need + kReserveBytes > free_b) throw oom(need, free_b, total_b);
    cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&r_.pool), need);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      r_.pool = nullptr;
      CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      throw oom(need, free_b, total_b);
    }
    CUDA_CHECK(err);
    DeviceArena a(r_.pool, need, "cuda gradients");
    layout(a);
    CUBLAS_CHECK(cublasSetWorkspace(r_.cublas, cublas_ws_, kCublasWorkspaceBytes));
    upload();
    reset();
    CUDA_CHECK(cudaStreamSynchronize(r_.stream));
  }

  std::string name() const override { return tf32_ ? "cuda-tf32" : "cuda"; }

  double accumulate(const int* tokens, int n) override { return run(tokens, n, true, nullptr); }
  double gradients(const int* tokens, int n, float* const* grads) override {
    return run(tokens, n, true, grads);
  }
  double loss(const int* tokens, int n) override { return run(tokens, n, false, nullptr); }

  const float* fisher(int layer, int which) override {
    if (layer < 0 || layer >= c_.n_layers || which < 0 || which >= kLinearsPerLayer)
      throw std::out_of_range("fisher(" + std::to_string(layer) + ", " + std::to_string(which) +
                              "): no such linear");
    const size_t slot = size_t(layer) * kLinearsPerLayer + which;
    if (!host_f_valid_[slot]) {
      const LinearWeight& w = lin(layer, which);
      host_f_[slot].resize(size_t(w.rows) * w.cols);
      CUDA_CHECK(cudaMemcpyAsync(host_f_[slot].data(), dl_[layer].f[which],
                                 host_f_[slot].size() * sizeof(float), cudaMemcpyDeviceToHost,
                                 r_.stream));
      CUDA_CHECK(cudaStreamSynchronize(r_.stream));
      host_f_valid_[slot] = true;
    }
    return host_f_[slot].data();
  }

  void reset() override {
    for (int l = 0; l < c_.n_layers; l++)
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = lin(l, i);
        CUDA_CHECK(
            cudaMemsetAsync(dl_[l].f[i], 0, size_t(w.rows) * w.cols * sizeof(float), r_.stream));
      }
    std::fill(host_f_valid_.begin(), host_f_valid_.end(), false);
  }

 private:
  const LinearWeight& lin(int l, int which) const { return layer_linear(m_.layers[l], which); }

  std::runtime_error oom(size_t need, size_t free_b, size_t total_b) const {
    return std::runtime_error("calibration on the GPU needs " + gib(need + kReserveBytes) +
                              " before activations (fp32 weights " + gib(weight_bytes_) +
                              ", squared gradients " + gib(weight_bytes_ - head_bytes_) +
                              ", reserve " + gib(kReserveBytes) + ") but " + gib(free_b) + " of " +
                              gib(total_b) + " are free on " + gpu_name_ + "; use --device cpu");
  }

  // ---- memory: persistent pool ---------------------------------------------------------
  void layout(DeviceArena& a) {
    const int dim = c_.dim;
    dl_.assign(c_.n_layers, DeviceLayer());
    size_t max_elems = 0;
    weight_bytes_ = 0;
    for (int l = 0; l < c_.n_layers; l++) {
      dl_[l].attn_norm = a.take<float>(dim);
      dl_[l].ffn_norm = a.take<float>(dim);
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = lin(l, i);
        const size_t n = size_t(w.rows) * w.cols;
        dl_[l].w[i] = a.take<float>(n);
        weight_bytes_ += n * 4;
        max_elems = std::max(max_elems, n);
      }
    }
    for (int l = 0; l < c_.n_layers; l++)
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = lin(l, i);
        dl_[l].f[i] = a.take<float>(size_t(w.rows) * w.cols);
      }
    final_norm_ = a.take<float>(dim);
    head_bytes_ = size_t(m_.classifier.rows) * m_.classifier.cols * 4;
    weight_bytes_ += head_bytes_;
    head_ = a.take<float>(size_t(m_.classifier.rows) * m_.classifier.cols);
    emb_ = a.take<char>(m_.tok_embeddings.n_bytes);
    dw_ = a.take<float>(max_elems);
    cublas_ws_ = a.take<char>(kCublasWorkspaceBytes);
    staging_ = a.take<uint16_t>(kStagingBytes / 2);
    host_f_.assign(size_t(c_.n_layers) * kLinearsPerLayer, {});
    host_f_valid_.assign(host_f_.size(), false);
  }

  // dst [n] fp32 on the device = src [n] F32/F16/BF16 on the host; 16-bit data goes up in
  // chunks through the staging buffer and is widened there (stream-ordered reuse).
  void upload_f32(float* dst, const void* src, DType dt, size_t n) {
    if (dt == DType::F32) {
      CUDA_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, r_.stream));
      return;
    }
    const uint16_t* s = static_cast<const uint16_t*>(src);
    const size_t chunk = kStagingBytes / 2;
    for (size_t off = 0; off < n; off += chunk) {
      const size_t c = std::min(chunk, n - off);
      CUDA_CHECK(cudaMemcpyAsync(staging_, s + off, c * 2, cudaMemcpyHostToDevice, r_.stream));
      widen_kernel<<<grid_for(int64_t(c)), kThreads, 0, r_.stream>>>(staging_, int64_t(c),
                                                                     dt == DType::BF16, dst + off);
      CUDA_CHECK_LAUNCH();
    }
  }

  void upload() {
    // Host copies of the norms must outlive their asynchronous copies: kept until the sync.
    std::vector<std::vector<float>> norms;
    auto norm = [&](const TensorView& t, float* dst) {
      norms.push_back(to_f32(t));
      CUDA_CHECK(cudaMemcpyAsync(dst, norms.back().data(), norms.back().size() * 4,
                                 cudaMemcpyHostToDevice, r_.stream));
    };
    for (int l = 0; l < c_.n_layers; l++) {
      norm(m_.layers[l].attn_norm, dl_[l].attn_norm);
      norm(m_.layers[l].ffn_norm, dl_[l].ffn_norm);
      for (int i = 0; i < kLinearsPerLayer; i++) {
        const LinearWeight& w = lin(l, i);
        upload_f32(dl_[l].w[i], w.data, w.dtype, size_t(w.rows) * w.cols);
      }
    }
    norm(m_.final_norm, final_norm_);
    upload_f32(head_, m_.classifier.data, m_.classifier.dtype,
               size_t(m_.classifier.rows) * m_.classifier.cols);
    CUDA_CHECK(cudaMemcpyAsync(emb_, m_.tok_embeddings.data, m_.tok_embeddings.n_bytes,
                               cudaMemcpyHostToDevice, r_.stream));
    CUDA_CHECK(cudaStreamSynchronize(r_.stream));
  }

  // ---- memory: activations for samples of up to `capacity_` tokens ------------------------
  void layout_acts(DeviceArena& a, int n) {
    const size_t nd = size_t(n);
    const int dim = c_.dim, q_dim = c_.q_dim(), kv_dim = c_.kv_dim(), hidden = c_.hidden_dim;
    acts_.assign(c_.n_layers, LayerActs());
    for (LayerActs& s : acts_) {
      s.x_in = a.take<float>(nd * dim), s.x_mid = a.take<float>(nd * dim);
      s.q = a.take<float>(nd * q_dim), s.k = a.take<float>(nd * kv_dim);
      s.v = a.take<float>(nd * kv_dim), s.att = a.take<float>(nd * q_dim);
      s.lse = a.take<float>(nd * c_.n_heads);
      s.gate = a.take<float>(nd * hidden), s.up = a.take<float>(nd * hidden);
    }
    x_out_ = a.take<float>(nd * dim), h_ = a.take<float>(nd * dim);
    dx_ = a.take<float>(nd * dim), dh_ = a.take<float>(nd * dim);
    act_ = a.take<float>(nd * hidden), d_act_ = a.take<float>(nd * hidden);
    d_att_ = a.take<float>(nd * q_dim), dq_ = a.take<float>(nd * q_dim);
    dk_ = a.take<float>(nd * kv_dim), dv_ = a.take<float>(nd * kv_dim);
    logits_ = a.take<float>(nd * c_.vocab_size);
    attn_ws_ = a.take<float>(nd * c_.n_heads);
    nll_ = a.take<double>(nd);
    tokens_ = a.take<int>(nd), pos_ = a.take<int>(nd);
  }

  void ensure_capacity(int n) {
    if (n <= capacity_) return;
    CUDA_CHECK(cudaStreamSynchronize(r_.stream));
    if (r_.acts) CUDA_CHECK(cudaFree(r_.acts));
    if (r_.host_tokens) CUDA_CHECK(cudaFreeHost(r_.host_tokens));
    if (r_.host_nll) CUDA_CHECK(cudaFreeHost(r_.host_nll));
    r_.acts = nullptr, r_.host_tokens = nullptr, r_.host_nll = nullptr;
    capacity_ = 0;
    DeviceArena measure;
    layout_acts(measure, n);
    const size_t need = measure.used();
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    auto oom = [&](size_t free_now) {
      char msg[512];
      std::snprintf(msg, sizeof msg,
                    "calibration on the GPU: a sample of %d tokens needs %.0f MiB of activations "
                    "but only %.0f MiB of %s are free on %s (weights and squared gradients hold "
                    "%s); use a shorter --seqlen or --device cpu",
                    n, need / kMiB, free_now / kMiB, gib(total_b).c_str(), gpu_name_.c_str(),
                    gib(2 * weight_bytes_ - head_bytes_).c_str());
      return std::runtime_error(msg);
    };
    if (need + kReserveBytes / 2 > free_b) throw oom(free_b);
    cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&r_.acts), need);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      r_.acts = nullptr;
      CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      throw oom(free_b);
    }
    CUDA_CHECK(err);
    DeviceArena a(r_.acts, need, "cuda gradients");
    layout_acts(a, n);
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&r_.host_tokens), size_t(n) * sizeof(int)));
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&r_.host_nll), size_t(n) * sizeof(double)));
    std::vector<int> pos(n);
    for (int t = 0; t < n; t++) pos[t] = t;
    CUDA_CHECK(cudaMemcpyAsync(pos_, pos.data(), size_t(n) * sizeof(int), cudaMemcpyHostToDevice,
                               r_.stream));
    CUDA_CHECK(cudaStreamSynchronize(r_.stream));
    capacity_ = n;
  }

  // ---- the pass ---------------------------------------------------------------------------

  // y[n, rows] (+)= x[n, cols] W^T
  void linear(int l, int which, const float* x, int n, float* y, bool accumulate) {
    const LinearWeight& w = lin(l, which);
    matmul_gemm_cuda(gemm_, dl_[l].w[which], w.rows, w.cols, x, n, y, accumulate);
  }
  // dx[n, cols] (+)= dy[n, rows] W
  void linear_dx(int l, int which, const float* dy, int n, float* dx, bool accumulate) {
    const LinearWeight& w = lin(l, which);
    matmul_backward_x_cuda(gemm_, dl_[l].w[which], w.rows, w.cols, dy, n, dx, accumulate);
  }
  // dW = dy[n, rows]^T x[n, cols]: F += dW^2, or (gradients()) dW to the host.
  void linear_dw(int l, int which, const float* dy, const float* x, int n) {
    const LinearWeight& w = lin(l, which);
    if (grads_) {
      matmul_backward_w_cuda(gemm_, dy, x, n, w.rows, w.cols, dw_, GemmEpilogue::STORE, nullptr);
      CUDA_CHECK(cudaMemcpyAsync(grads_[size_t(l) * kLinearsPerLayer + which], dw_,
                                 size_t(w.rows) * w.cols * sizeof(float), cudaMemcpyDeviceToHost,
                                 r_.stream));
    } else {
      matmul_backward_w_cuda(gemm_, dy, x, n, w.rows, w.cols, dl_[l].f[which],
                             GemmEpilogue::SQUARE_ADD, dw_);
    }
  }

  CausalAttentionArgs attn_args(const LayerActs& s, int n) const {
    CausalAttentionArgs a;
    a.n_tokens = n, a.n_heads = c_.n_heads, a.n_kv_heads = c_.n_kv_heads, a.head_dim = c_.head_dim;
    a.q = s.q, a.k = s.k, a.v = s.v;
    return a;
  }

  // Forward (saving activations) and, with `backward`, the backward pass: F += dW^2, or with
  // `grads` the dW themselves to the host. Returns the loss. Everything is enqueued on one
  // stream; the one synchronisation waits for the per-position NLL at the end.
  double run(const int* tokens, int n, bool backward, float* const* grads) {
    check_calibration_tokens(tokens, n, c_.vocab_size);
    ensure_capacity(n);
    grads_ = grads;
    const int dim = c_.dim, hidden = c_.hidden_dim, L = c_.n_layers;
    const int H = c_.n_heads, KV = c_.n_kv_heads, hd = c_.head_dim;
    const float eps = c_.norm_eps, theta = c_.rope_theta;
    const int64_t nh = int64_t(n) * hidden;
    const size_t row_bytes = size_t(n) * dim * sizeof(float);
    cudaStream_t st = r_.stream;

    // ---- forward
    std::memcpy(r_.host_tokens, tokens, size_t(n) * sizeof(int));
    CUDA_CHECK(cudaMemcpyAsync(tokens_, r_.host_tokens, size_t(n) * sizeof(int),
                               cudaMemcpyHostToDevice, st));
    const int emb_type = m_.tok_embeddings.dtype == DType::F32   ? 0
                         : m_.tok_embeddings.dtype == DType::F16 ? 1
                                                                 : 2;
    embed_kernel<<<dim3((dim + kThreads - 1) / kThreads, n), kThreads, 0, st>>>(
        emb_, emb_type, tokens_, dim, acts_[0].x_in);
    CUDA_CHECK_LAUNCH();
    for (int l = 0; l < L; l++) {
      const LayerActs& s = acts_[l];
      rmsnorm_forward_cuda(s.x_in, dl_[l].attn_norm, n, dim, eps, h_, st);
      linear(l, WQ, h_, n, s.q, false);
      linear(l, WK, h_, n, s.k, false);
      linear(l, WV, h_, n, s.v, false);
      rope_forward_cuda(s.q, pos_, n, H, hd, theta, st);
      rope_forward_cuda(s.k, pos_, n, KV, hd, theta, st);
      attention_causal_forward_cuda(attn_args(s, n), s.att, s.lse, st);
      // x_mid = x_in + att W_o^T
      CUDA_CHECK(cudaMemcpyAsync(s.x_mid, s.x_in, row_bytes, cudaMemcpyDeviceToDevice, st));
      linear(l, WO, s.att, n, s.x_mid, true);
      rmsnorm_forward_cuda(s.x_mid, dl_[l].ffn_norm, n, dim, eps, h_, st);
      linear(l, W_GATE, h_, n, s.gate, false);
      linear(l, W_UP, h_, n, s.up, false);
      swiglu_forward_cuda(s.gate, s.up, nh, act_, st);
      // next residual = x_mid + act W_down^T
      float* x_next = l + 1 < L ? acts_[l + 1].x_in : x_out_;
      CUDA_CHECK(cudaMemcpyAsync(x_next, s.x_mid, row_bytes, cudaMemcpyDeviceToDevice, st));
      linear(l, W_DOWN, act_, n, x_next, true);
    }
    // Final norm and head over the n-1 positions that predict a token.
    const int np = n - 1;
    rmsnorm_forward_cuda(x_out_, final_norm_, np, dim, eps, h_, st);
    matmul_gemm_cuda(gemm_, head_, m_.classifier.rows, m_.classifier.cols, h_, np, logits_, false);
    // loss; logits_ becomes dLoss/dlogits = (softmax - onehot) / np
    loss_kernel<<<np, kLossThreads, 0, st>>>(logits_, c_.vocab_size, tokens_, 1.0f / np, backward,
                                             nll_);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaMemcpyAsync(r_.host_nll, nll_, size_t(np) * sizeof(double),
                               cudaMemcpyDeviceToHost, st));

    if (backward) {
      // ---- backward. dx_: dLoss / d(residual stream) [n, dim]; the last position has no loss
      // term, so its row stays 0.
      std::fill(host_f_valid_.begin(), host_f_valid_.end(), false);
      CUDA_CHECK(cudaMemsetAsync(dx_, 0, row_bytes, st));
      matmul_backward_x_cuda(gemm_, head_, m_.classifier.rows, m_.classifier.cols, logits_, np, dh_,
                             false);  // dh [np, dim]
      rmsnorm_backward_cuda(x_out_, final_norm_, dh_, np, dim, eps, dx_, st);
      for (int l = L - 1; l >= 0; l--) {
        const LayerActs& s = acts_[l];
        // FFN: x_out = x_mid + W_down swiglu(W_gate h2, W_up h2), h2 = rmsnorm(x_mid)
        rmsnorm_forward_cuda(s.x_mid, dl_[l].ffn_norm, n, dim, eps, h_, st);
        swiglu_forward_cuda(s.gate, s.up, nh, act_, st);
        linear_dw(l, W_DOWN, dx_, act_, n);
        linear_dx(l, W_DOWN, dx_, n, d_act_, false);  // d_act [n, hidden]
        // dgate, dup overwrite the saved gate/up (not needed after this point)
        swiglu_backward_cuda(s.gate, s.up, d_act_, nh, s.gate, s.up, st);
        linear_dw(l, W_GATE, s.gate, h_, n);
        linear_dw(l, W_UP, s.up, h_, n);
        linear_dx(l, W_GATE, s.gate, n, dh_, false);  // dh2 [n, dim]
        linear_dx(l, W_UP, s.up, n, dh_, true);
        rmsnorm_backward_cuda(s.x_mid, dl_[l].ffn_norm, dh_, n, dim, eps, dx_, st);

        // Attention: x_mid = x_in + W_o attn(rope(W_q h1), rope(W_k h1), W_v h1)
        linear_dw(l, WO, dx_, s.att, n);
        linear_dx(l, WO, dx_, n, d_att_, false);
        attention_causal_backward_cuda(attn_args(s, n), s.att, s.lse, d_att_, dq_, dk_, dv_,
                                       attn_ws_, st);
        rope_backward_cuda(dq_, pos_, n, H, hd, theta, st);
        rope_backward_cuda(dk_, pos_, n, KV, hd, theta, st);
        rmsnorm_forward_cuda(s.x_in, dl_[l].attn_norm, n, dim, eps, h_, st);
        linear_dw(l, WQ, dq_, h_, n);
        linear_dw(l, WK, dk_, h_, n);
        linear_dw(l, WV, dv_, h_, n);
        if (l == 0) break;  // below layer 0 are the embeddings, whose gradient is not needed
        linear_dx(l, WQ, dq_, n, dh_, false);  // dh1 [n, dim]
        linear_dx(l, WK, dk_, n, dh_, true);
        linear_dx(l, WV, dv_, n, dh_, true);
        rmsnorm_backward_cuda(s.x_in, dl_[l].attn_norm, dh_, n, dim, eps, dx_, st);
      }
    }
    grads_ = nullptr;
    CUDA_CHECK(cudaStreamSynchronize(st));
    double nll = 0;
    for (int t = 0; t < np; t++) nll += r_.host_nll[t];
    return nll / np;
  }

  const Model& m_;
  const Config& c_;
  const bool tf32_;
  std::string gpu_name_;
  GradResources r_;
  GemmCuda gemm_;
  // persistent pool
  std::vector<DeviceLayer> dl_;
  float* final_norm_ = nullptr;  // [dim]
  float* head_ = nullptr;        // [vocab, dim] fp32
  char* emb_ = nullptr;          // [vocab, dim] as stored
  float* dw_ = nullptr;          // [max rows * cols]
  char* cublas_ws_ = nullptr;
  uint16_t* staging_ = nullptr;
  size_t weight_bytes_ = 0, head_bytes_ = 0;
  // activations
  int capacity_ = 0;
  std::vector<LayerActs> acts_;
  float *x_out_ = nullptr, *h_ = nullptr, *dx_ = nullptr, *dh_ = nullptr, *act_ = nullptr;
  float *d_act_ = nullptr, *d_att_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr;
  float *logits_ = nullptr, *attn_ws_ = nullptr;
  double* nll_ = nullptr;
  int *tokens_ = nullptr, *pos_ = nullptr;
  // host side
  float* const* grads_ = nullptr;           // gradients(): where the raw dW go
  std::vector<std::vector<float>> host_f_;  // [n_layers * 7] F copied back by fisher()
  std::vector<bool> host_f_valid_;
};

}  // namespace

std::unique_ptr<GradientBackend> make_cuda_gradients(const Model& m, const GradientOptions& o) {
  return std::make_unique<CudaGradients>(m, o);
}

}  // namespace sqz
