// CPU reference of the packed linear: decode rows (LUT + CSR) to fp32, then the shared
// fp32 micro-kernel. No dense copy of W is kept: one block of rows per thread at a time.
#include "kernels/lut_gemv.h"

#include <algorithm>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"

namespace sqz {

// One 128-column unit to fp32 through the row's LUT, a 32-bit lane at a time (the layout is
// drawn in kernels/packed_layout.h); `n` < 128 only for the row's last unit.
static void decode_unit(const uint8_t* unit, int bits, const float* lut, int n, float* out) {
  float tmp[kUnitCols];
  float* o = n == kUnitCols ? out : tmp;
  if (bits == 4) {
    for (int q = 0; q < 4; q++)
      for (int j = 0; j < 4; j++) {
        uint32_t v = packed_lane(unit, q, j);
        float* d = o + 32 * q + 8 * j;
        for (int k = 0; k < 8; k++, v >>= 4) d[k] = lut[v & 15];
      }
  } else {
    for (int q = 0; q < 2; q++)
      for (int j = 0; j < 4; j++) {
        uint32_t lo = packed_lane(unit, q, j);
        const int c0 = 64 * q + 16 * j;
        // the high bits of columns c0..c0+15: bits (c0 % 32)..+15 of lane c0 / 32 of word 2
        uint32_t hi = bits == 3 ? packed_lane(unit, 2, c0 / 32) >> (c0 % 32) : 0;
        for (int k = 0; k < 16; k++, lo >>= 2, hi >>= 1) o[c0 + k] = lut[(lo & 3) | (hi & 1) << 2];
      }
  }
  if (o != out) std::copy_n(tmp, n, out);
}

void lut_decode_row(const PackedMatrix& w, int row, float* out) {
  const int n_centroids = 1 << w.bits;
  float lut[16];
  for (int i = 0; i < n_centroids; i++) lut[i] = half_to_float(w.lut[int64_t(row) * n_centroids + i]);
  const uint8_t* packed = w.indices + int64_t(row) * w.row_bytes;
  const int unit_bytes = 16 * w.bits;
  for (int c0 = 0; c0 < w.cols; c0 += kUnitCols)
    decode_unit(packed + (c0 / kUnitCols) * unit_bytes, w.bits, lut,
                std::min(kUnitCols, w.cols - c0), out + c0);
  for (int32_t k = w.row_ptr[row]; k < w.row_ptr[row + 1]; k++)
    out[w.col_idx[k]] += half_to_float(w.values[k]);
}

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

}  // namespace sqz
