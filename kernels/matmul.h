// Dense linear on the CPU: y[t, r] = sum_c W[r, c] * x[t, c], W row-major [rows, cols] in
// fp32, fp16 or bf16, fp32 arithmetic. Rows are split across the pool; each block of rows is
// converted to fp32 once and multiplied by every token.
#pragma once
#include <cstdint>

namespace sqz {

class ThreadPool;

enum class MatType { F32, F16, BF16 };

void matmul(MatType type, const void* w, int rows, int cols, const float* x, int n_tokens,
            float* y, ThreadPool& pool);

// The inner product used by every CPU kernel: 8 independent accumulators so the compiler
// vectorises without -ffast-math.
float dot_f32(const float* a, const float* b, int n);

// y_t[r0..r0+nr) += rows(w_f32[nr, cols]) . x[t]  for each token t; w rows are contiguous.
// The shared micro-kernel of matmul and lut_gemm (4 rows x 2 tokens at a time).
void gemm_rows_f32(const float* w, int nr, int cols, const float* x, int n_tokens, float* y,
                   int y_stride, int r0);

}  // namespace sqz
