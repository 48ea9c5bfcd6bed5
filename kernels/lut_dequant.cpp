// CPU dequantization of a packed linear (the reference of lut_dequant_cuda and of both
// packed-linear versions): one row at a time, LUT values then the CSR outliers, in fp32.
#include "kernels/lut_dequant.h"

#include <algorithm>

#include "kernels/half.h"
#include "kernels/packed_layout.h"

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

}  // namespace sqz
