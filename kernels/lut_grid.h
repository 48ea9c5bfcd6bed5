// LUT rows on a power-of-two grid, and the GEMV's cheaper form of them.
//
// A row's 2^bits fp16 entries are "on a grid" when lut[k] = (code[k] + z) 2^e for integers
// e, z and codes 0..255. The packed format does not change: such a LUT is an ordinary fp16
// LUT whose entries happen to share a grid (the quantizer snaps its centroids onto one by
// default: snap_lut_grid). The CUDA GEMV then decodes 8-bit codes instead of fp16 entries:
// one byte-permute lookup gives four codes, and one more per pair spreads them into fp16
// subnormals (code, 0), code 2^-24 exactly, so the tensor cores compute
//   sum_k lut[idx_k] x_k = 2^(e+24) sum_k (code[idx_k] 2^-24) x_k + z 2^e sum_k x_k
// with the same products as the fp16 entries would give, scaled by a power of two (3 bits: 3
// byte permutes per 4 weights instead of 4; 4 bits: 5 instructions instead of 8; kernels/
// NOTES_lut_gemv.md section 7, 0d, has the counts and the measurements).
//
// The GEMV's row ("grid row", lut_grid_row_bytes(bits) bytes, as many as the fp16 row):
//   codes [2^bits] u8 | scale = 2^(e+24) f32 | offset = z 2^e f32 | zero padding (4 bits: 8 B)
// 3 and 4 bits only (a 2-bit row of 8 bytes has no room for the scale and offset); the GEMV
// uses them at 4 bits (lut_grid_used).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/half.h"

namespace sqz {

constexpr int kLutGridMaxCode = 255;

inline bool lut_grid_bits(int bits) { return bits == 3 || bits == 4; }
// The bit widths whose LUT rows sqz quantize puts on a grid by default and whose CUDA GEMV
// decodes grid rows: 4 bits. At 3 bits the decode saves one permute in four, less than the
// GEMV's second mma (the sums of x for z 2^e) costs: H100, 7B tg128 b1 1.85 -> 1.90 ms with
// codes, where 4 bits gains 2.35 -> 2.12 (kernels/NOTES_lut_gemv.md section 7, 0d).
inline bool lut_grid_used(int bits) { return bits == 4; }
inline int lut_grid_row_bytes(int bits) { return 2 << bits; }

// The grid row of the fp16 LUT row `lut` (2^bits entries) into out[lut_grid_row_bytes(bits)],
// or false (out untouched) when the row is not on a grid of at most 256 steps, has a
// non-finite entry, or bits is not 3 or 4. The coarsest grid that holds every entry is used
// (any finer one has larger codes), so the answer does not depend on how the row was made.
inline bool lut_grid_row(const uint16_t* lut, int bits, uint8_t* out) {
  if (!lut_grid_bits(bits)) return false;
  const int k = 1 << bits;
  double v[16];
  int e = 64;  // the lowest set bit's exponent over the nonzero entries (fp16: >= -24)
  for (int j = 0; j < k; j++) {
    v[j] = double(half_to_float(lut[j]));
    if (!std::isfinite(v[j])) return false;
    if (v[j] != 0.0) {
      int ex = 0;
      double m = std::frexp(std::fabs(v[j]), &ex);  // |v| = m 2^ex, m in [0.5, 1)
      // m has at most 11 significant bits: strip trailing zero bits
      int64_t mi = int64_t(std::ldexp(m, 11));
      int tz = 0;
      while ((mi & 1) == 0) mi >>= 1, tz++;
      e = std::min(e, ex - 11 + tz);
    }
  }
  if (e == 64) e = 0;  // all zero
  double q[16], qmin = 0;
  for (int j = 0; j < k; j++) {
    q[j] = std::ldexp(v[j], -e);  // an integer, exactly
    qmin = j == 0 ? q[j] : std::min(qmin, q[j]);
  }
  for (int j = 0; j < k; j++)
    if (q[j] - qmin > kLutGridMaxCode) return false;
  for (int j = 0; j < k; j++) out[j] = uint8_t(q[j] - qmin);
  const float scale = float(std::ldexp(1.0, e + 24)), offset = float(std::ldexp(qmin, e));
  std::memcpy(out + k, &scale, 4);
  std::memcpy(out + k + 4, &offset, 4);
  std::memset(out + k + 8, 0, size_t(lut_grid_row_bytes(bits) - k - 8));
  return true;
}

// Moves k float values (each an fp16 value) to the nearest points of the finest power-of-two
// grid that holds them in at most 256 steps and whose points up to their magnitude are fp16
// values, so that the fp16 row they make is on a grid (lut_grid_row). Order is kept (rounding
// is monotone; neighbours may become equal). Each value moves by at most half a step, a step
// being about (max - min) / 254. max_gap_frac > 0: only if no value moves by more than that
// fraction of the smallest gap between distinct values (else v is left as it is), so that a
// row whose range is set by a few far values keeps its close ones apart; returns whether it
// moved them.
inline bool snap_lut_grid(float* v, int k, double max_gap_frac = 0) {
  float lo = v[0], hi = v[0], amax = 0;
  for (int j = 0; j < k; j++)
    lo = std::min(lo, v[j]), hi = std::max(hi, v[j]), amax = std::max(amax, std::fabs(v[j]));
  if (amax == 0) return true;
  int ex = 0;
  std::frexp(double(amax), &ex);  // amax < 2^ex
  // Finest step with rounded codes within 255 (range / step <= 254) and fp16-exact points
  // (|q| <= 2^11, step >= 2^-24).
  int e = std::max(ex - 11, -24);
  while (double(hi) - double(lo) > 254.0 * std::ldexp(1.0, e)) e++;
  float out[16];
  double move = 0, gap = INFINITY;
  for (int j = 0; j < k; j++) {
    out[j] = float(std::ldexp(std::nearbyint(std::ldexp(double(v[j]), -e)), e)) + 0.0f;  // -0 -> +0
    move = std::max(move, std::fabs(double(out[j]) - double(v[j])));
    for (int i = 0; i < j; i++)
      if (v[i] != v[j]) gap = std::min(gap, std::fabs(double(v[i]) - double(v[j])));
  }
  if (max_gap_frac > 0 && move > max_gap_frac * gap) return false;
  std::copy(out, out + k, v);
  return true;
}

}  // namespace sqz
