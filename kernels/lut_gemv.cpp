// CPU reference of the packed linear: decode rows (LUT + CSR) to fp32, then the shared
// fp32 micro-kernel. No dense copy of W is kept: one block of rows per thread at a time.
#include "kernels/lut_gemv.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/lut_dequant.h"
#include "kernels/matmul.h"
#include "kernels/parallel.h"

namespace sqz {

void lut_gemm(const PackedMatrix& w, const float* x, int n_tokens, float* y, ThreadPool& pool) {
  const int block = 16;
  const int64_t n_blocks = (w.rows + block - 1) / block;
  pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(size_t(block) * w.cols);
    for (int64_t b = b0; b < b1; b++) {
      int r0 = int(b * block), nr = std::min(block, w.rows - r0);
      for (int r = 0; r < nr; r++) lut_decode_row(w, r0 + r, buf.data() + int64_t(r) * w.cols);
      gemm_rows_f32(buf.data(), nr, w.cols, x, n_tokens, y, w.rows, r0);
    }
  });
}

void pack_outliers(const int32_t* col_idx, const uint16_t* values, int64_t nnz, uint32_t* out) {
  for (int64_t k = 0; k < nnz; k++) {
    if (col_idx[k] < 0 || col_idx[k] >= kLutGpuMaxCols)
      throw std::invalid_argument("pack_outliers: column " + std::to_string(col_idx[k]) +
                                  " outside [0, " + std::to_string(kLutGpuMaxCols) + ")");
    out[k] = uint32_t(col_idx[k]) | uint32_t(values[k]) << 16;
  }
}

void check_gpu_outliers(const PackedMatrix& w, const char* who) {
  if (w.nnz > 0 && (!w.row_ptr || !w.outliers))
    throw std::invalid_argument(std::string(who) + ": nnz > 0 without row_ptr and outliers");
  if (w.cols > kLutGpuMaxCols)
    throw std::invalid_argument(std::string(who) + ": " + std::to_string(w.cols) +
                                " columns; the GPU kernels take at most " +
                                std::to_string(kLutGpuMaxCols) + " (16-bit outlier columns)");
}

}  // namespace sqz
