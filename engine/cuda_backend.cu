// The CUDA backend: the CPU backend's forward pass (engine/cpu_backend.cpp) on one GPU, op for
// op in the same order, with fp32 residual stream, fp16 inputs to every linear, fp32 linear
// outputs, and an fp16 KV cache. kernels/NOTES_cuda_backend.md has the kernel list, the
// launches per decode step, the CUDA-graph scheme and the memory plan.
// Tests: tests/test_cuda_backend.cpp (whole models vs the CPU backend).
//
// One layer, n tokens (shapes per token; M = max_batch sizes every buffer):
//   x      [n, dim] fp32      residual stream (embedding_cuda)
//   xn     [n, dim] fp16      rmsnorm_cuda(x, attn_norm)
//   qkv    [n, q_dim + 2 kv_dim] fp32   fused q|k|v linear
//          rope_cuda: rotates q, k in place; appends k, v (fp16) to the cache at (seq, pos)
//   att    [n, q_dim] fp16    attention_prefill_cuda / attention_decode_cuda (decode: one
//                             query per sequence; rotates q, k and appends k, v itself)
//   x     += o linear         (cuBLAS beta = 1, or the GEMV's accumulate epilogue)
//   xn     [n, dim] fp16      rmsnorm_cuda(x, ffn_norm)
//   gu     [n, 2 hidden] fp32 fused gate|up linear, rows interleaved in blocks of 8 gate +
//                             8 up when hidden % 8 == 0 (else all gate then all up)
//   hb     [n, hidden] fp16   swiglu_cuda
//   x     += down linear
// then the final norm of the rows that want logits (gathered), the classifier into logits
// [n_out, vocab] fp32 and, for forward_topk, topk_cuda.
// Decode (n <= kLutGemvMaxTokens = 32 tokens) with a linear that is one packed matrix fuses
// the op after it into the GEMV's epilogue (LutGemmFusion): SwiGLU into the gate|up GEMV
// (which then writes hb, not gu) and the residual adds into the o and down GEMVs. Same
// results (kernels/lut_gemv.h).
// At one token the RMSNorm goes into the next GEMV too: the o / down GEMV that updates x
// leaves partial sums of squares (sumsq), and the q|k|v / gate|up GEMV normalizes x while
// staging it (no rmsnorm kernel but the first layer's and the final one; x can differ from
// rmsnorm_cuda's in the last bit: another summation order).
//
// Linears: dense weights (F32/F16/BF16 on disk) are fp16 on the device and run through
// cublasGemmEx (fp16 A/B, fp32 compute and output); packed weights run through
// lut_gemm_cuda (kernels/lut_gemv.cu), or, from kLutDequantMinTokens tokens on (prefill),
// through lut_dequant_cuda into one fp16 scratch matrix and the same cuBLAS call. q/k/v and
// gate/up are fused into one matrix each at upload when their parts are of one kind
// (packed: equal bits); otherwise each part writes its rows of the fused output.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/device_arena.h"
#include "engine/engine.h"
#include "kernels/attention.h"
#include "kernels/cublas_check.h"
#include "kernels/cuda_common.h"
#include "kernels/embedding.h"
#include "kernels/lut_dequant.h"
#include "kernels/lut_gemv.h"
#include "kernels/lut_grid.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/topk.h"
#include "model/dtype.h"
#include "model/errors.h"

namespace sqz {

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later calls start clean
    return false;
  }
  return n >= 1;
}

namespace {

constexpr int kMaxGraphBatch = 32;  // decode steps up to this size are graphed
constexpr int kSwigluBlock = 8;     // gate/up interleave: 8 gate + 8 up rows = one GEMV tile
constexpr size_t kCublasWorkspaceBytes = 32u << 20;  // cuBLAS' recommendation for Hopper
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

static_assert(sizeof(AttentionTile) == 4 * sizeof(int), "tiles travel in the int input buffer");

// Rows [row0, row0 + rows) of a linear's output, computed by one matrix on the device: one
// or several of the model's linears fused (their rows concatenated).
struct DevicePart {
  int row0 = 0, rows = 0;
  bool packed = false;
  bool borrowed = false;  // dense weights owned elsewhere (classifier shared with embedding)
  uint16_t* w = nullptr;  // DENSE: fp16 [rows, cols]
  PackedMatrix pm;        // PACKED: device pointers
  bool grid = false;      // PACKED: every LUT row on a grid (pm.grid: kernels/lut_grid.h)
  std::vector<const LinearWeight*> src;
};

struct DeviceLinear {
  int rows = 0, cols = 0;
  std::vector<DevicePart> parts;
  // > 0: one part of two sources of equal rows (gate, up) whose rows are stored interleaved
  // in blocks of `interleave` rows of the first then of the second (swiglu_cuda's `block`).
  int interleave = 0;
  bool fused() const { return parts.size() == 1; }
  // The source and its row stored at row d of part p.
  std::pair<int, int> source_row(const DevicePart& p, int d) const {
    if (interleave > 0) {
      const int b = d / (2 * interleave), j = d % (2 * interleave);
      return {j / interleave, b * interleave + j % interleave};
    }
    int s = 0;
    while (d >= p.src[s]->rows) d -= p.src[s++]->rows;
    return {s, d};
  }
};

struct DeviceLayer {
  float* attn_norm = nullptr;  // [dim] fp32
  float* ffn_norm = nullptr;   // [dim] fp32
  DeviceLinear qkv;            // [q_dim + 2 kv_dim, dim]
  DeviceLinear wo;             // [dim, q_dim]
  DeviceLinear gate_up;        // [2 hidden_dim, dim]
  DeviceLinear down;           // [dim, hidden_dim]
};

// One forward call's shape: everything the enqueued work depends on besides device data.
struct StepShape {
  int n = 0;        // tokens
  int n_out = 0;    // rows that want logits
  int n_tiles = 0;  // attention tiles (prefill path)
  bool decode = false;
  int k = 0;  // top-k (0: logits)
};

// Owns every CUDA resource; its destructor runs also when the backend's constructor throws
// half way (it is a fully constructed member by then).
struct CudaResources {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  char* pool = nullptr;
  int* host_in = nullptr;                                 // pinned
  char* host_out = nullptr;                               // pinned
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs;  // (n, k) -> decode step
  ~CudaResources() {
    if (stream) cudaStreamSynchronize(stream);
    for (auto& g : graphs)
      if (g.second) cudaGraphExecDestroy(g.second);
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
    if (pool) cudaFree(pool);
    if (host_in) cudaFreeHost(host_in);
    if (host_out) cudaFreeHost(host_out);
  }
};

// n elements of an F32/F16/BF16 array (possibly unaligned, as in a mapped file) to fp16.
void to_f16_serial(DType t, const void* src, uint16_t* dst, size_t n) {
  const uint8_t* s = static_cast<const uint8_t*>(src);
  if (t == DType::F16) {
    std::memcpy(dst, s, n * 2);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (t == DType::F32) {
      float f;
      std::memcpy(&f, s + 4 * i, 4);
      dst[i] = f32_to_f16(f);
    } else {
      uint16_t h;
      std::memcpy(&h, s + 2 * i, 2);
      dst[i] = f32_to_f16(bf16_to_f32(h));
    }
  }
}

// Groups the given linears (same cols, outputs concatenated in this order) into parts:
// consecutive dense linears fuse (all become fp16), consecutive packed ones fuse when their
// bits and row_bytes agree.
DeviceLinear plan_linear(const std::vector<const LinearWeight*>& srcs) {
  DeviceLinear L;
  L.cols = srcs[0]->cols;
  for (const LinearWeight* w : srcs) {
    if (w->cols != L.cols)
      throw format_error(w->name + ": " + std::to_string(w->cols) + " input features, expected " +
                         std::to_string(L.cols) + " like " + srcs[0]->name);
    const bool packed = w->kind == WeightKind::PACKED;
    if (packed && w->cols > kLutGpuMaxCols)
      throw std::runtime_error("cuda backend: " + w->name + " has " + std::to_string(w->cols) +
                               " input features; packed linears on the GPU take at most " +
                               std::to_string(kLutGpuMaxCols) + " (use --device cpu)");
    DevicePart* last = L.parts.empty() ? nullptr : &L.parts.back();
    bool merge = last && last->packed == packed;
    if (merge && packed) {
      const LinearWeight* f = last->src[0];
      merge =
          f->bits == w->bits && f->row_bytes == w->row_bytes && last->pm.nnz + w->nnz <= INT32_MAX;
    }
    if (!merge) {
      DevicePart p;
      p.row0 = L.rows, p.packed = packed;
      if (packed) p.pm.bits = w->bits, p.pm.cols = w->cols, p.pm.row_bytes = w->row_bytes;
      L.parts.push_back(p);
      last = &L.parts.back();
    }
    last->rows += w->rows;
    last->src.push_back(w);
    if (packed) last->pm.rows = last->rows, last->pm.nnz += w->nnz;
    L.rows += w->rows;
  }
  // Packed parts whose LUT rows all lie on a grid get the GEMV's 8-bit code rows too.
  for (DevicePart& p : L.parts) {
    if (!p.packed || !lut_grid_used(p.pm.bits)) continue;
    const size_t n_lut = size_t(1) << p.pm.bits;
    uint16_t row[16];
    uint8_t codes[32];
    p.grid = true;
    for (const LinearWeight* w : p.src)
      for (int r = 0; r < w->rows && p.grid; r++) {
        std::memcpy(row, w->lut + r * n_lut, n_lut * 2);  // the file's arrays may be unaligned
        p.grid = lut_grid_row(row, p.pm.bits, codes);
      }
  }
  return L;
}

class CudaBackend : public Backend {
 public:
  CudaBackend(const Model& m, const BackendOptions& o)
      : m_(m), c_(m.config), ctx_(o.ctx_size), n_seqs_(o.n_seqs), max_batch_(o.max_batch) {
    if (ctx_ <= 0 || n_seqs_ <= 0 || max_batch_ <= 0)
      throw std::invalid_argument("cuda backend: ctx_size, n_seqs and max_batch must be > 0");
    if (max_batch_ > 65535) throw std::invalid_argument("cuda backend: max_batch must be <= 65535");
    check_config();
    const char* no_graphs = std::getenv("SQZ_NO_CUDA_GRAPHS");
    graphs_enabled_ = !(no_graphs && *no_graphs && std::string(no_graphs) != "0");

    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&n_sms_, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&r_.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&r_.cublas));
    CUBLAS_CHECK(cublasSetStream(r_.cublas, r_.stream));

    plan_weights();
    // Measure, check against free memory, then allocate the one pool and carve it.
    DeviceArena aw, akv, as;
    layout_weights(aw);
    layout_kv(akv);
    layout_scratch(as);
    const size_t need = aw.used() + akv.used() + as.used();
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    auto oom = [&](size_t free_now) {
      char msg[512];
      std::snprintf(msg, sizeof msg,
                    "model needs %.2f GiB of GPU memory (weights %.2f GiB, KV cache %.2f GiB "
                    "for ctx %d x %d seqs, scratch %.2f GiB) but only %.2f GiB is free; try a "
                    "smaller -c/--ctx-size",
                    need / kGiB, aw.used() / kGiB, akv.used() / kGiB, ctx_, n_seqs_,
                    as.used() / kGiB, free_now / kGiB);
      return std::runtime_error(msg);
    };
    if (need > free_b) throw oom(free_b);
    cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&r_.pool), need);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      r_.pool = nullptr;
      CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      throw oom(free_b);
    }
    CUDA_CHECK(err);
    pool_bytes_ = need;
    DeviceArena a(r_.pool, need, "cuda backend");
    layout_weights(a);
    layout_kv(a);
    layout_scratch(a);

    // Pinned host buffers: the packed inputs of one call and the small results.
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&r_.host_in), in_ints() * sizeof(int)));
    host_out_bytes_ = std::max(size_t(max_batch_) * kTopKMax * 8,
                               size_t(kMaxGraphBatch) * c_.vocab_size * sizeof(float));
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&r_.host_out), host_out_bytes_));

    CUBLAS_CHECK(cublasSetWorkspace(r_.cublas, cublas_ws_, kCublasWorkspaceBytes));
    if (has_packed_) lut_gemm_cuda_init();  // its one-time set-up, outside any graph capture
    ThreadPool pool(o.n_threads);
    upload_weights(pool);
    CUDA_CHECK(cudaMemsetAsync(k_cache_, 0, kv_cache_elems() * 2, r_.stream));
    CUDA_CHECK(cudaMemsetAsync(v_cache_, 0, kv_cache_elems() * 2, r_.stream));
    // the decode attention's split counters start at zero and every launch leaves them so
    CUDA_CHECK(cudaMemsetAsync(attn_counters_, 0, attn_counter_ints() * sizeof(int), r_.stream));
    CUDA_CHECK(cudaStreamSynchronize(r_.stream));
  }

  std::string name() const override { return "cuda"; }
  int ctx_size() const override { return ctx_; }
  int n_seqs() const override { return n_seqs_; }
  int max_batch() const override { return max_batch_; }
  int64_t memory_bytes() const override { return int64_t(pool_bytes_); }

  void forward(const Batch& b, float* logits) override { run(b, 0, logits, nullptr, nullptr); }

  bool forward_topk(const Batch& b, int k, int* ids, float* logits) override {
    if (k < 1) throw std::invalid_argument("forward_topk: k must be >= 1");
    if (k > kTopKMax || k > c_.vocab_size) return false;  // the caller sorts full logits
    run(b, k, nullptr, ids, logits);
    return true;
  }

 private:
  // ---- configuration ------------------------------------------------------------------
  void check_config() const {
    const int hd = c_.head_dim;
    if (hd <= 0 || hd % 2 != 0 || hd > 256)
      throw std::runtime_error("cuda backend: head_dim " + std::to_string(hd) +
                               " unsupported (even, at most 256)");
    if (c_.n_kv_heads <= 0 || c_.n_heads % c_.n_kv_heads != 0 ||
        (c_.n_heads / c_.n_kv_heads) * hd > 2048)
      throw std::runtime_error("cuda backend: n_heads / n_kv_heads * head_dim must be <= 2048");
  }
  int qkv_rows() const { return c_.q_dim() + 2 * c_.kv_dim(); }
  size_t kv_cache_elems() const {
    return size_t(c_.n_layers) * n_seqs_ * size_t(ctx_) * c_.kv_dim();
  }
  int64_t seq_stride() const { return int64_t(ctx_) * c_.kv_dim(); }
  size_t in_ints() const { return size_t(max_batch_) * 8; }  // tokens pos seq rows | tiles
  size_t attn_counter_ints() const { return size_t(max_batch_) * c_.n_kv_heads; }
  int decode_splits(int n) const { return attention_decode_splits(n, c_.n_kv_heads, ctx_, n_sms_); }

  // ---- weights: plan, layout, upload ----------------------------------------------------
  void plan_weights() {
    emb_type_ = mat_type(m_.tok_embeddings.dtype, "tok_embeddings");
    for (const LayerWeights& w : m_.layers) {
      DeviceLayer d;
      d.qkv = plan_linear({&w.wq, &w.wk, &w.wv});
      d.wo = plan_linear({&w.wo});
      d.gate_up = plan_linear({&w.w_gate, &w.w_up});
      // The fused decode GEMV computes SwiGLU from rows 8 apart: interleave gate and up.
      if (d.gate_up.fused() && c_.hidden_dim % kSwigluBlock == 0)
        d.gate_up.interleave = kSwigluBlock;
      d.down = plan_linear({&w.w_down});
      if (d.qkv.rows != qkv_rows() || d.gate_up.rows != 2 * c_.hidden_dim)
        throw format_error(m_.path + ": q/k/v or gate/up shapes disagree with the config");
      layers_.push_back(std::move(d));
    }
    classifier_ = plan_linear({&m_.classifier});
    // The classifier reuses the embedding table when they are the same fp16 matrix.
    const LinearWeight& cl = m_.classifier;
    if (cl.kind == WeightKind::DENSE && cl.dtype == DType::F16 &&
        m_.tok_embeddings.dtype == DType::F16 &&
        static_cast<const void*>(m_.tok_embeddings.data) == cl.data)
      classifier_.parts[0].borrowed = true;
    for (const DeviceLinear* L : all_linears())
      for (const DevicePart& p : L->parts) {
        has_packed_ = has_packed_ || p.packed;
        if (p.packed && !L->fused()) max_unfused_rows_ = std::max(max_unfused_rows_, p.rows);
        if (p.packed) max_packed_elems_ = std::max(max_packed_elems_, size_t(p.rows) * L->cols);
      }
  }

  std::vector<DeviceLinear*> all_linears() {
    std::vector<DeviceLinear*> v;
    for (DeviceLayer& d : layers_) v.insert(v.end(), {&d.qkv, &d.wo, &d.gate_up, &d.down});
    v.push_back(&classifier_);
    return v;
  }

  static void layout_linear(DeviceLinear& L, DeviceArena& a) {
    for (DevicePart& p : L.parts) {
      if (!p.packed) {
        if (!p.borrowed) p.w = a.take<uint16_t>(size_t(p.rows) * L.cols);
        continue;
      }
      p.pm.indices = a.take<uint8_t>(size_t(gpu_tiled_bytes(p.rows, p.pm.row_bytes)));
      p.pm.lut = a.take<uint16_t>(size_t(p.rows) << p.pm.bits);
      if (p.grid) p.pm.grid = a.take<uint8_t>(size_t(p.rows) * lut_grid_row_bytes(p.pm.bits));
      p.pm.row_ptr = a.take<int32_t>(size_t(p.rows) + 1);
      p.pm.outliers = a.take<uint32_t>(size_t(p.pm.nnz));  // col | value << 16
    }
  }

  void layout_weights(DeviceArena& a) {
    emb_ = a.take<uint8_t>(m_.tok_embeddings.n_bytes);
    final_norm_ = a.take<float>(c_.dim);
    for (DeviceLayer& d : layers_) {
      d.attn_norm = a.take<float>(c_.dim);
      d.ffn_norm = a.take<float>(c_.dim);
      layout_linear(d.qkv, a);
      layout_linear(d.wo, a);
      layout_linear(d.gate_up, a);
      layout_linear(d.down, a);
    }
    layout_linear(classifier_, a);
    if (classifier_.parts[0].borrowed) classifier_.parts[0].w = reinterpret_cast<uint16_t*>(emb_);
  }

  void layout_kv(DeviceArena& a) {
    k_cache_ = a.take<uint16_t>(kv_cache_elems());
    v_cache_ = a.take<uint16_t>(kv_cache_elems());
  }

  void layout_scratch(DeviceArena& a) {
    const size_t M = size_t(max_batch_);
    in_dev_ = a.take<int>(in_ints());
    x_ = a.take<float>(M * c_.dim);
    xn_ = a.take<uint16_t>(M * c_.dim);
    qkv_ = a.take<float>(M * qkv_rows());
    att_ = a.take<uint16_t>(M * c_.q_dim());
    gu_ = a.take<float>(M * 2 * c_.hidden_dim);
    hb_ = a.take<uint16_t>(M * c_.hidden_dim);
    sumsq_ = a.take<float>(size_t(kNormFusionMaxTokens) * ((c_.dim + 15) / 16));
    logits_ = a.take<float>(M * c_.vocab_size);
    topk_ = a.take<int>(M * kTopKMax * 2);
    size_t attn_floats = 0;
    for (int n = 1; n <= max_batch_; n++)
      attn_floats = std::max(attn_floats, attention_decode_scratch_floats(
                                              n, c_.n_heads, c_.head_dim, decode_splits(n)));
    attn_scratch_ = a.take<float>(attn_floats);
    attn_counters_ = a.take<int>(attn_counter_ints());
    part_tmp_ = a.take<float>(M * size_t(max_unfused_rows_));
    // fp16 copy of the largest packed part, for the prefill path (dequantize + cuBLAS).
    if (max_batch_ >= kLutDequantMinTokens) w16_ = a.take<uint16_t>(max_packed_elems_);
    cublas_ws_ = a.take<char>(kCublasWorkspaceBytes);
  }

  void upload_norm(float* dst, const TensorView& t) {
    std::vector<float> v(size_t(t.n_elems()));
    convert_to_f32(t.dtype, t.data, v.data(), v.size());
    CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  void upload_linear(const DeviceLinear& L, ThreadPool& pool) {
    for (const DevicePart& p : L.parts) {
      if (p.borrowed) continue;
      if (!p.packed) {
        // Converted to fp16 in chunks of rows (in stored order) through a host buffer.
        for (const LinearWeight* w : p.src) mat_type(w->dtype, w->name);
        const size_t cols = size_t(L.cols);
        const int chunk_rows = int(std::max<size_t>(1, (size_t(1) << 24) / cols));
        std::vector<uint16_t> buf;
        for (int d0 = 0; d0 < p.rows; d0 += chunk_rows) {
          const int m = std::min(chunk_rows, p.rows - d0);
          buf.resize(size_t(m) * cols);
          pool.parallel_for(
              m,
              [&](int64_t b, int64_t e) {
                for (int64_t i = b; i < e; i++) {
                  const auto [s, r] = L.source_row(p, d0 + int(i));
                  const LinearWeight* w = p.src[s];
                  const size_t esz = dtype_size(w->dtype);
                  to_f16_serial(w->dtype, static_cast<const uint8_t*>(w->data) + r * cols * esz,
                                buf.data() + i * cols, cols);
                }
              },
              1);
          CUDA_CHECK(cudaMemcpy(p.w + size_t(d0) * cols, buf.data(), buf.size() * 2,
                                cudaMemcpyHostToDevice));
        }
        continue;
      }
      // Packed: LUT rows and each row's outliers gathered in stored order (sources
      // concatenated, or interleaved), row pointers rebuilt, the outliers packed to one word
      // each (pack_outliers); the index rows gathered straight into the GPU's tiled layout
      // (to_gpu_tiled_rows, kernels/packed_layout.h) over the pool.
      const size_t rb = size_t(p.pm.row_bytes), n_lut = size_t(1) << p.pm.bits;
      std::vector<uint16_t> lut(size_t(p.rows) * n_lut), val(size_t(p.pm.nnz));
      std::vector<int32_t> row_ptr(size_t(p.rows) + 1), col(size_t(p.pm.nnz));
      int64_t nnz = 0;
      for (int d = 0; d < p.rows; d++) {
        const auto [s, r] = L.source_row(p, d);
        const LinearWeight* w = p.src[s];
        std::memcpy(&lut[d * n_lut], w->lut + r * n_lut, n_lut * 2);
        int32_t k0, k1;  // the file's arrays may be unaligned
        std::memcpy(&k0, w->row_ptr + r, 4);
        std::memcpy(&k1, w->row_ptr + r + 1, 4);
        row_ptr[d] = int32_t(nnz);
        if (k1 > k0) {
          std::memcpy(&col[nnz], w->col_idx + k0, size_t(k1 - k0) * 4);
          std::memcpy(&val[nnz], w->values + k0, size_t(k1 - k0) * 2);
        }
        nnz += k1 - k0;
      }
      row_ptr[p.rows] = int32_t(nnz);
      auto up = [](const void* dst, const void* src, size_t bytes) {
        if (bytes)
          CUDA_CHECK(cudaMemcpy(const_cast<void*>(dst), src, bytes, cudaMemcpyHostToDevice));
      };
      std::vector<uint8_t> tiled(size_t(gpu_tiled_bytes(p.rows, p.pm.row_bytes)));
      auto index_row = [&](int d) {
        const auto [s, r] = L.source_row(p, d);
        return p.src[s]->indices + size_t(r) * rb;
      };
      pool.parallel_for(gpu_tile_count(p.rows), [&](int64_t b, int64_t e) {
        to_gpu_tiled_rows(index_row, p.rows, p.pm.row_bytes, p.pm.bits, tiled.data(), int(b),
                          int(e));
      });
      up(p.pm.indices, tiled.data(), tiled.size());
      up(p.pm.lut, lut.data(), lut.size() * 2);
      if (p.grid) {
        const size_t gb = size_t(lut_grid_row_bytes(p.pm.bits));
        std::vector<uint8_t> grid(size_t(p.rows) * gb);
        for (int d = 0; d < p.rows; d++)
          if (!lut_grid_row(&lut[d * n_lut], p.pm.bits, &grid[d * gb]))
            throw std::logic_error("cuda backend: a LUT row left the grid between plan and upload");
        up(p.pm.grid, grid.data(), grid.size());
      }
      up(p.pm.row_ptr, row_ptr.data(), row_ptr.size() * 4);
      std::vector<uint32_t> words(static_cast<size_t>(nnz));
      pack_outliers(col.data(), val.data(), nnz, words.data());
      up(p.pm.outliers, words.data(), size_t(nnz) * 4);
    }
  }

  void upload_weights(ThreadPool& pool) {
    CUDA_CHECK(cudaMemcpy(emb_, m_.tok_embeddings.data, m_.tok_embeddings.n_bytes,
                          cudaMemcpyHostToDevice));
    upload_norm(final_norm_, m_.final_norm);
    for (size_t l = 0; l < layers_.size(); l++) {
      upload_norm(layers_[l].attn_norm, m_.layers[l].attn_norm);
      upload_norm(layers_[l].ffn_norm, m_.layers[l].ffn_norm);
    }
    for (DeviceLinear* L : all_linears()) upload_linear(*L, pool);
  }

  // ---- forward ------------------------------------------------------------------------
  void validate(const Batch& b) const { b.validate(max_batch_, n_seqs_, ctx_, c_.vocab_size); }

  // Runs the batch; writes logits (k == 0) or the top k of each row (ids, vals).
  void run(const Batch& b, int k, float* logits, int* ids, float* vals) {
    const int n = b.size();
    if (n == 0) return;
    validate(b);
    // Inputs, one copy: tokens [n] | pos [n] | seq [n] | rows wanting logits [n] | tiles.
    int* h = r_.host_in;
    StepShape s;
    s.n = n, s.k = k;
    for (int t = 0; t < n; t++) {
      h[t] = b.tokens[t], h[n + t] = b.pos[t], h[2 * n + t] = b.seq[t];
      if (b.want_logits[t]) h[3 * n + s.n_out++] = t;
    }
    s.n_tiles =
        attention_make_tiles(h + 2 * n, h + n, n, reinterpret_cast<AttentionTile*>(h + 4 * n));
    // Decode: one query per sequence (every token alone in its tile, no sequence twice), so
    // the attention kernel can append each token's K/V itself (AttentionCudaParams::rope_theta).
    s.decode = s.n_tiles == n && distinct_sequences(b);
    const size_t in_bytes = size_t(4 * n + 4 * s.n_tiles) * sizeof(int);
    CUDA_CHECK(cudaMemcpyAsync(in_dev_, h, in_bytes, cudaMemcpyHostToDevice, r_.stream));

    if (graphs_enabled_ && s.decode && n <= kMaxGraphBatch && s.n_out == n)
      launch_graph(s);
    else
      enqueue_forward(s);

    if (s.n_out == 0) {
      CUDA_CHECK(cudaStreamSynchronize(r_.stream));
      return;
    }
    if (k == 0) {
      const size_t bytes = size_t(s.n_out) * c_.vocab_size * sizeof(float);
      if (bytes <= host_out_bytes_) {
        CUDA_CHECK(cudaMemcpyAsync(r_.host_out, logits_, bytes, cudaMemcpyDeviceToHost, r_.stream));
        CUDA_CHECK(cudaStreamSynchronize(r_.stream));
        std::memcpy(logits, r_.host_out, bytes);
      } else {  // large (prefill / perplexity) results go straight to the caller's memory
        CUDA_CHECK(cudaMemcpyAsync(logits, logits_, bytes, cudaMemcpyDeviceToHost, r_.stream));
        CUDA_CHECK(cudaStreamSynchronize(r_.stream));
      }
    } else {
      const size_t n_res = size_t(s.n_out) * k;
      CUDA_CHECK(cudaMemcpyAsync(r_.host_out, topk_, n_res * 8, cudaMemcpyDeviceToHost, r_.stream));
      CUDA_CHECK(cudaStreamSynchronize(r_.stream));
      std::memcpy(ids, r_.host_out, n_res * sizeof(int));
      std::memcpy(vals, r_.host_out + n_res * sizeof(int), n_res * sizeof(float));
    }
  }

  // Decode steps replay one CUDA graph per (n, k), captured the first time that shape is
  // seen. Kernels read tokens/pos/seq from in_dev_ (just refreshed by the input copy) and the
  // decode attention cuts the cache at run time, so the same graph serves every step.
  static bool distinct_sequences(const Batch& b) {
    std::vector<int> seqs(b.seq.begin(), b.seq.end());
    std::sort(seqs.begin(), seqs.end());
    return std::adjacent_find(seqs.begin(), seqs.end()) == seqs.end();
  }

  void launch_graph(const StepShape& s) {
    const auto key = std::make_pair(s.n, s.k);
    auto it = r_.graphs.find(key);
    if (it == r_.graphs.end()) {
      cudaGraph_t graph = nullptr;
      CUDA_CHECK(cudaStreamBeginCapture(r_.stream, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_forward(s);
      } catch (...) {
        cudaStreamEndCapture(r_.stream, &graph);
        if (graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        throw;
      }
      CUDA_CHECK(cudaStreamEndCapture(r_.stream, &graph));
      cudaGraphExec_t exec = nullptr;
      cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      CUDA_CHECK(err);
      it = r_.graphs.emplace(key, exec).first;
    }
    CUDA_CHECK(cudaGraphLaunch(it->second, r_.stream));
  }

  // Whether the decode GEMV of L can take the fused ops (LutGemmFusion): L is one packed
  // matrix and n tokens go through the GEMV (not the prefill dequantize + cuBLAS path).
  bool gemv_fusable(const DeviceLinear& L, int n) const {
    return L.fused() && L.parts[0].packed && n <= kLutGemvMaxTokens &&
           !(n >= kLutDequantMinTokens && w16_);
  }

  // Whether the norm in front of L runs inside L's GEMV (LutGemmFusion::norm_x): L takes
  // the GEMV path, one token (kNormFusionMaxTokens), x fits the GEMV in one piece.
  // Measured on the H100, LLaMA-7B 3-bit tg128 ms per step, rmsnorm kernel -> fused: batch
  // 1 2.55 -> 2.47, 2 2.72 -> 2.82, 3 2.65 -> 3.02, 4 2.74 -> 3.10, 8 3.07 -> 3.70 (each
  // block stages every token's fp32 row and weights, a dependent L2 round trip per 256
  // groups of 16 columns, where the norm kernel spreads the rows over blocks).
  static constexpr int kNormFusionMaxTokens = 1;
  bool norm_fusable(const DeviceLinear& L, int n) const {
    return gemv_fusable(L, n) && n <= kNormFusionMaxTokens &&
           lut_gemm_cuda_norm_fusable(L.parts[0].pm, n);
  }

  // x += L . in (the o and down projections), in the GEMV's epilogue when it can; with
  // sumsq (the next norm fuses into the next linear), the GEMV also leaves the partial sums
  // of squares of the new x in sumsq_. Returns whether it did.
  bool residual_linear(const DeviceLinear& L, const uint16_t* in, int n, bool sumsq) {
    if (sumsq && gemv_fusable(L, n)) {
      LutGemmFusion f;
      f.accumulate = true, f.sumsq_out = sumsq_;
      lut_gemm_cuda(L.parts[0].pm, in, n, x_, r_.stream, f);
      return true;
    }
    linear(L, in, n, x_, /*accumulate=*/true);
    return false;
  }

  // y [n, L.rows] fp32 = x [n, L.cols] fp16 . W^T (accumulate: y +=), part by part.
  void linear(const DeviceLinear& L, const uint16_t* x, int n, float* y, bool accumulate = false) {
    for (const DevicePart& p : L.parts) {
      if (!p.packed) {
        dense_part(L, p, p.w, x, n, y, accumulate);
      } else if (n >= kLutDequantMinTokens && w16_) {
        // Prefill: dense fp16 copy of the part, then the same cuBLAS call as a dense part.
        lut_dequant_cuda(p.pm, w16_, r_.stream);
        dense_part(L, p, w16_, x, n, y, accumulate);
      } else if (p.rows == L.rows) {
        LutGemmFusion f;
        f.accumulate = accumulate;
        lut_gemm_cuda(p.pm, x, n, y, r_.stream, f);
      } else {
        if (accumulate) throw std::logic_error("cuda backend: accumulate into a split linear");
        lut_gemm_cuda(p.pm, x, n, part_tmp_, r_.stream);
        CUDA_CHECK(cudaMemcpy2DAsync(y + p.row0, size_t(L.rows) * 4, part_tmp_, size_t(p.rows) * 4,
                                     size_t(p.rows) * 4, n, cudaMemcpyDeviceToDevice, r_.stream));
      }
    }
  }

  // The rows of part p of y from the fp16 row-major W [p.rows, L.cols] through cuBLAS:
  // row-major W is column-major W^T with ld = cols; y^T = W x^T is the column-major
  // [rows, n] matrix with ld = L.rows (the fused row width).
  void dense_part(const DeviceLinear& L, const DevicePart& p, const uint16_t* w, const uint16_t* x,
                  int n, float* y, bool accumulate) {
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmEx(r_.cublas, CUBLAS_OP_T, CUBLAS_OP_N, p.rows, n, L.cols, &one, w,
                              CUDA_R_16F, L.cols, x, CUDA_R_16F, L.cols, &beta, y + p.row0,
                              CUDA_R_32F, L.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void enqueue_forward(const StepShape& s) {
    const int n = s.n, dim = c_.dim, hd = c_.head_dim;
    cudaStream_t st = r_.stream;
    const int* tokens = in_dev_;
    const int* pos = in_dev_ + n;
    const int* seq = in_dev_ + 2 * n;
    const int* out_rows = in_dev_ + 3 * n;
    const AttentionTile* tiles = reinterpret_cast<const AttentionTile*>(in_dev_ + 4 * n);
    const size_t layer_elems = size_t(n_seqs_) * ctx_ * c_.kv_dim();

    embedding_cuda(emb_, emb_type_, dim, tokens, n, x_, st);
    // rmsnorm(x) -> linear L into y, or, with swiglu_out, -> SwiGLU into swiglu_out: in the
    // GEMV's epilogue when L allows it, else through y and swiglu_cuda. With `fused_norm` (the
    // linear that wrote x left its partial sums of squares in sumsq_), the norm runs inside
    // L's GEMV: no rmsnorm kernel.
    auto norm_linear = [&](const float* norm_w, const DeviceLinear& L, float* y,
                           uint16_t* swiglu_out, bool fused_norm) {
      const bool swiglu_fused = swiglu_out && L.interleave == kSwigluBlock && gemv_fusable(L, n);
      if (!fused_norm) {
        RmsNormCudaParams rn;
        rn.x = x_, rn.weight = norm_w, rn.out = xn_, rn.n_rows = n, rn.dim = dim;
        rn.eps = c_.norm_eps;
        rmsnorm_cuda(rn, st);
      }
      if (fused_norm || swiglu_fused) {  // one packed matrix, the GEMV with its fusions
        LutGemmFusion f;
        if (fused_norm)
          f.norm_x = x_, f.norm_w = norm_w, f.norm_sumsq = sumsq_, f.norm_eps = c_.norm_eps;
        if (swiglu_fused) f.swiglu_out = swiglu_out;
        lut_gemm_cuda(L.parts[0].pm, fused_norm ? nullptr : xn_, n, y, st, f);
      } else {
        linear(L, xn_, n, y);
      }
      if (swiglu_out && !swiglu_fused)
        swiglu_cuda(y, n, c_.hidden_dim, L.interleave ? L.interleave : c_.hidden_dim, swiglu_out,
                    st);
    };
    bool have_sumsq = false;  // sumsq_ holds the partial sums of squares of x
    for (int l = 0; l < c_.n_layers; l++) {
      const DeviceLayer& L = layers_[l];
      norm_linear(L.attn_norm, L.qkv, qkv_, nullptr, have_sumsq && norm_fusable(L.qkv, n));

      // RoPE + KV-cache append: its own kernel before the prefill attention, inside the
      // decode attention kernel.
      AttentionCudaParams ap;
      ap.n_tokens = n, ap.n_heads = c_.n_heads, ap.n_kv_heads = c_.n_kv_heads, ap.head_dim = hd;
      ap.q = qkv_, ap.q_stride = qkv_rows();
      ap.k_cache = k_cache_ + l * layer_elems, ap.v_cache = v_cache_ + l * layer_elems;
      ap.seq_stride = seq_stride(), ap.pos = pos, ap.seq = seq, ap.out = att_;
      if (s.decode) {
        ap.rope_theta = c_.rope_theta;
        attention_decode_cuda(ap, decode_splits(n), attn_scratch_, attn_counters_, st);
      } else {
        RopeCudaParams rp;
        rp.qkv = qkv_, rp.n_tokens = n, rp.stride = qkv_rows();
        rp.n_heads = c_.n_heads, rp.n_kv_heads = c_.n_kv_heads, rp.head_dim = hd;
        rp.theta = c_.rope_theta, rp.pos = pos, rp.seq = seq;
        rp.k_cache = ap.k_cache, rp.v_cache = ap.v_cache, rp.seq_stride = seq_stride();
        rope_cuda(rp, st);
        attention_prefill_cuda(ap, tiles, s.n_tiles, st);
      }
      const bool gu_norm = norm_fusable(L.gate_up, n);
      have_sumsq = residual_linear(L.wo, att_, n, gu_norm);  // x += o projection

      norm_linear(L.ffn_norm, L.gate_up, gu_, hb_, have_sumsq);
      const bool next_norm = l + 1 < c_.n_layers && norm_fusable(layers_[l + 1].qkv, n);
      have_sumsq = residual_linear(L.down, hb_, n, next_norm);  // x += down projection
    }
    if (s.n_out == 0) return;
    // Final norm of the rows that want logits (x + the last down projection, gathered).
    RmsNormCudaParams fn;
    fn.x = x_, fn.weight = final_norm_;
    fn.out = xn_, fn.row_index = out_rows, fn.n_rows = s.n_out, fn.dim = dim;
    fn.eps = c_.norm_eps;
    rmsnorm_cuda(fn, st);
    linear(classifier_, xn_, s.n_out, logits_);
    if (s.k > 0) {
      int* ids = topk_;
      float* vals = reinterpret_cast<float*>(topk_ + size_t(s.n_out) * s.k);
      topk_cuda(logits_, s.n_out, c_.vocab_size, s.k, ids, vals, st);
    }
  }

  const Model& m_;
  const Config& c_;
  int ctx_, n_seqs_, max_batch_;
  int n_sms_ = 0;
  bool graphs_enabled_ = true;
  CudaResources r_;
  size_t pool_bytes_ = 0, host_out_bytes_ = 0;

  // Weights (device).
  uint8_t* emb_ = nullptr;  // [vocab, dim] as stored (F32/F16/BF16)
  MatType emb_type_ = MatType::F32;
  float* final_norm_ = nullptr;
  std::vector<DeviceLayer> layers_;
  DeviceLinear classifier_;
  int max_unfused_rows_ = 0;     // widest packed part of a linear that could not be fused
  size_t max_packed_elems_ = 0;  // rows x cols of the largest packed part
  bool has_packed_ = false;

  // KV cache (device): fp16 [n_layers][n_seqs][ctx][kv_dim], K and V.
  uint16_t* k_cache_ = nullptr;
  uint16_t* v_cache_ = nullptr;

  // Scratch (device), sized for max_batch tokens M.
  int* in_dev_ = nullptr;          // [8 M] the packed inputs (see run)
  float* x_ = nullptr;             // [M, dim]
  uint16_t* xn_ = nullptr;         // [M, dim] fp16
  float* qkv_ = nullptr;           // [M, q_dim + 2 kv_dim]
  uint16_t* att_ = nullptr;        // [M, q_dim] fp16
  float* gu_ = nullptr;            // [M, 2 hidden_dim]
  uint16_t* hb_ = nullptr;         // [M, hidden_dim] fp16
  float* sumsq_ = nullptr;  // [kNormFusionMaxTokens, dim / 16] partial sums of squares of x
  float* logits_ = nullptr;        // [M, vocab]
  int* topk_ = nullptr;            // [M * kTopKMax] ids then [M * kTopKMax] values
  float* attn_scratch_ = nullptr;  // decode split partials
  int* attn_counters_ = nullptr;   // [M, n_kv_heads] decode splits finished (kept at zero)
  float* part_tmp_ = nullptr;      // [M, max_unfused_rows] output of an unfused packed part
  uint16_t* w16_ = nullptr;        // [max_packed_elems] fp16 dequantized part (prefill), or null
  char* cublas_ws_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const Model& model, const BackendOptions& options) {
  return std::make_unique<CudaBackend>(model, options);
}

}  // namespace sqz
