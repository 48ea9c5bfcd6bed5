// Packed SqueezeLLM linear: y = (D + S) x where D[r][c] = lut[r][idx[r][c]] (idx packed as in
// model/packed.h) and S is the row's CSR outliers. CPU version (reference) and CUDA version.
#pragma once
#include <cstdint>

namespace sqz {

class ThreadPool;

struct PackedMatrix {
  int rows = 0, cols = 0, bits = 0;
  // [rows, row_bytes] on the CPU; on the device (lut_gemm_cuda, lut_dequant_cuda) the tiled
  // layout of kernels/packed_layout.h instead, gpu_tiled_bytes(rows, row_bytes) bytes
  // (to_gpu_tiled builds it).
  const uint8_t* indices = nullptr;
  int64_t row_bytes = 0;
  const uint16_t* lut = nullptr;     // [rows, 2^bits] fp16
  // On the device, optional: where every row of lut is on a grid, the rows in the GEMV's form
  // (lut_grid_row, kernels/lut_grid.h), [rows, lut_grid_row_bytes(bits)], 16-byte aligned; the
  // GEMV launches of up to 8 tokens then decode codes (SQZ_GEMV_GRID=0 in the environment: not).
  // Null: fp16 entries. The other kernels read lut.
  const uint8_t* grid = nullptr;
  const int32_t* row_ptr = nullptr;  // [rows + 1]
  const int32_t* col_idx = nullptr;  // [nnz] (CPU)
  const uint16_t* values = nullptr;  // [nnz] fp16 (CPU)
  // The GPU's form of the outliers: one word per entry, col | fp16 value << 16
  // (pack_outliers), read by the CUDA kernels instead of col_idx and values: one load per
  // entry and 4 bytes instead of 6. Columns are 16-bit there, so cols <= kLutGpuMaxCols.
  const uint32_t* outliers = nullptr;  // [nnz]
  int64_t nnz = 0;
};

constexpr int kLutGpuMaxCols = 65536;
// out[k] = col_idx[k] | values[k] << 16; every col_idx[k] must be in [0, kLutGpuMaxCols).
void pack_outliers(const int32_t* col_idx, const uint16_t* values, int64_t nnz, uint32_t* out);
// Throws std::invalid_argument, naming `who`, unless w's outliers are in the GPU's form: row_ptr
// and outliers set when nnz > 0, and cols <= kLutGpuMaxCols.
void check_gpu_outliers(const PackedMatrix& w, const char* who);

// CPU: y[t, r] = sum_c W[r, c] * x[t, c] for t < n_tokens; x [n_tokens, cols],
// y [n_tokens, rows], fp32 accumulate. Each row is decoded once for all tokens.
void lut_gemm(const PackedMatrix& w, const float* x, int n_tokens, float* y, ThreadPool& pool);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// CUDA: y[t, r] = sum_c W[r, c] * x[t, c] for t < n_tokens, every pointer of `w` on the
// device (the indices tiled, the outliers as `outliers`; col_idx and values are not read).
// x is fp16 [n_tokens, cols] (__half bits), y fp32 [n_tokens, rows]; fp32 accumulate; CSR
// outliers applied in the same kernel. Picks the kernel by n_tokens: a GEMV for 1, a batched kernel
// that decodes each weight once for 2..16 (17..32: in pieces of up to 16, or 8 when x does
// not fit its shared memory, one launch each), and a tiled tensor-core kernel for more. Any
// rows/cols (no multiple-of-128 rule).
// Launch errors throw cuda_error; bad arguments (bits, row_bytes, alignment: indices 16-byte,
// lut 8-byte; cols > kLutGpuMaxCols) throw std::invalid_argument. No host synchronisation and
// no allocation, so it can be captured in a CUDA graph. kernels/NOTES_lut_gemv.md describes
// the kernels.
struct LutGemmFusion;
void lut_gemm_cuda(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                   cudaStream_t stream);

// The ops after a decoder linear fused into its epilogue, for n_tokens <= kLutGemvMaxTokens
// (the GEMV kernel; more tokens throw std::invalid_argument). Each gives exactly the
// separate ops' result: the same fp32 sums, then the same add or formula.
struct LutGemmFusion {
  // Residual add: y[t, r] += (W x)[t, r] instead of =.
  bool accumulate = false;
  // SwiGLU: W's rows are gate and up interleaved in blocks of 8 (rows 16b..16b+7 = gate rows
  // 8b..8b+7, rows 16b+8..16b+15 = the matching up rows; rows % 16 == 0) and, instead of y,
  // swiglu_out device fp16 [n_tokens, rows / 2] gets fp16(silu(gate) * up), swiglu_cuda's
  // formula. y is not written (may be null).
  uint16_t* swiglu_out = nullptr;
  // RMSNorm in front (n_tokens <= kLutGemvNormMaxTokens): the x argument is not read; the
  // kernel computes it from the fp32 residual norm_x [n_tokens, cols] and the fp32 norm
  // weights norm_w [cols], as rmsnorm_cuda does:
  //   x[t, c] = fp16(norm_x[t, c] * scale_t * norm_w[c]),
  //   scale_t = 1 / sqrt(sum_j norm_sumsq[t, j] / cols + norm_eps),
  // from the partial sums of squares norm_sumsq [n_tokens, ceil(cols / 16)] that the linear
  // which wrote norm_x left (sumsq_out). The sum runs in a fixed order (deterministic); it is
  // not rmsnorm_cuda's order, so x can differ from it in the last bit. Each block stages
  // every token: worth it at one token only (engine/cuda_backend.cu has the measurements).
  const float* norm_x = nullptr;
  const float* norm_w = nullptr;
  const float* norm_sumsq = nullptr;
  float norm_eps = 1e-5f;
  // Partial sums of squares of the output rows (after accumulate), for the next linear's
  // norm: sumsq_out [n_tokens, ceil(rows / 16)] fp32, entry (t, j) = sum of y[t, r]^2 over
  // rows r of 16-row tile j. Not with swiglu_out.
  float* sumsq_out = nullptr;
};
constexpr int kLutGemvMaxTokens = 32;
constexpr int kLutGemvNormMaxTokens = 8;
// Whether the norm fusion can run for w and n_tokens: n_tokens <= kLutGemvNormMaxTokens and
// x of n_tokens x cols fits in the GEMV's shared memory in one piece.
bool lut_gemm_cuda_norm_fusable(const PackedMatrix& w, int n_tokens);
void lut_gemm_cuda(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                   cudaStream_t stream, const LutGemmFusion& fusion);
// The blocks per cluster of the last GEMV launch this thread made (1, or 2 where the two
// blocks share one staging of x), 0 before any: for tests.
int lut_gemm_cuda_last_cluster();

// One-time set-up for the current device (kernel shared-memory limits, SM count). The first
// lut_gemm_cuda call does it too; call it up front to keep it out of a graph capture.
void lut_gemm_cuda_init();

}  // namespace sqz
#endif
