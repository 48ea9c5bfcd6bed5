// CPU dequantization of a packed linear (the reference of lut_dequant_cuda and of both
// packed-linear versions): one row at a time, LUT values then the CSR outliers, in fp32.
#include "kernels/lut_dequant.h"

#include <algorithm>
#include <cstring>

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
  } else if (bits == 2) {
    for (int q = 0; q < 2; q++)
      for (int j = 0; j < 4; j++) {
        uint32_t v = packed_lane(unit, q, j);
        float* d = o + 64 * q + 16 * j;
        for (int k = 0; k < 16; k++, v >>= 2) d[k] = lut[v & 3];
      }
  } else {
    for (int q = 0; q < 4; q++) {
      uint32_t l[3];
      for (int s = 0; s < 3; s++) std::memcpy(&l[s], unit + packed3_lane_offset(q, s), 4);
      const uint32_t hi = packed3_odd_high(l[0], l[1], l[2]);
      float* d = o + 32 * q;
      for (int k = 0; k < 8; k++) {
        const int sh = 4 * k;
        d[2 * k] = lut[l[0] >> sh & 7];
        d[2 * k + 1] = lut[l[1] >> sh & 7];
        d[16 + 2 * k] = lut[l[2] >> sh & 7];
        d[17 + 2 * k] = lut[hi >> sh & 7];
      }
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
