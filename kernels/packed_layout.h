// Bit layout of packed SqueezeLLM indices, shared by the packer (quantize/), the CPU
// reference and the CUDA kernels.
//
// Each row is cut into units of 128 columns (the last unit padded with index 0; padded
// columns are never used), so row_bytes = ceil(cols / 128) * 16 * b: a unit is b aligned
// 16-byte words, one coalesced uint4 load each. Lane j of a word is the little-endian u32 at
// byte 4j of that word.
//
//   4 bits: words 0..3; word q holds columns 32q..32q+31; lane j holds 8 nibbles:
//             lane j = [c+7][c+6][c+5][c+4][c+3][c+2][c+1][c+0]    c = 32q + 8j, msb left
//
//   3 bits: words 0..1 hold the low 2 bits, word 2 the high bit:
//             word q (0..1), lane j = [c+15] ... [c+1][c+0]  2 bits each,  c = 64q + 16j
//             word 2,        lane j = [c+31] ... [c+1][c+0]  1 bit each,   c = 32j
//
//   2 bits: words 0..1 laid out like the 3-bit low words.
//
// So a lane always covers consecutive columns, a 4-bit pair (c, c+1) with c even is one
// byte, and a 3-bit pair's low bits are one nibble with its high bits two adjacent bits:
// the pair-table kernels rely on that.
#pragma once
#include <cstdint>
#include <cstring>

namespace sqz {

constexpr int kUnitCols = 128;

inline int64_t packed_row_bytes(int cols, int bits) {
  return int64_t((cols + kUnitCols - 1) / kUnitCols) * 16 * bits;
}

inline uint32_t packed_lane(const uint8_t* unit, int word, int lane) {
  uint32_t v;
  std::memcpy(&v, unit + word * 16 + lane * 4, 4);
  return v;
}

// Index of column c (0..127) within one unit.
inline int unpack_unit_index(const uint8_t* unit, int bits, int c) {
  if (bits == 4) return (packed_lane(unit, c / 32, (c / 8) % 4) >> (4 * (c % 8))) & 15;
  int lo = (packed_lane(unit, c / 64, (c / 16) % 4) >> (2 * (c % 16))) & 3;
  if (bits == 2) return lo;
  int hi = (packed_lane(unit, 2, c / 32) >> (c % 32)) & 1;
  return lo | hi << 2;
}

// Unpacks one row of `cols` indices.
inline void unpack_row(const uint8_t* row, int cols, int bits, uint8_t* idx) {
  for (int c = 0; c < cols; c++)
    idx[c] = uint8_t(unpack_unit_index(row + (c / kUnitCols) * 16 * bits, bits, c % kUnitCols));
}

// Packs idx[rows, cols] (each < 2^bits) into out[rows, packed_row_bytes(cols, bits)].
inline void pack_indices(const uint8_t* idx, int rows, int cols, int bits, uint8_t* out) {
  const int64_t rb = packed_row_bytes(cols, bits);
  std::memset(out, 0, size_t(rb) * rows);
  for (int r = 0; r < rows; r++) {
    uint8_t* row = out + r * rb;
    for (int c = 0; c < cols; c++) {
      uint8_t* unit = row + (c / kUnitCols) * 16 * bits;
      int u = c % kUnitCols, v = idx[int64_t(r) * cols + c];
      uint32_t lane;
      int word, li, shift;
      if (bits == 4) {
        word = u / 32, li = (u / 8) % 4, shift = 4 * (u % 8);
      } else {
        word = u / 64, li = (u / 16) % 4, shift = 2 * (u % 16);
      }
      std::memcpy(&lane, unit + word * 16 + li * 4, 4);
      lane |= uint32_t(bits == 4 ? v : (v & 3)) << shift;
      std::memcpy(unit + word * 16 + li * 4, &lane, 4);
      if (bits == 3) {
        std::memcpy(&lane, unit + 32 + (u / 32) * 4, 4);
        lane |= uint32_t(v >> 2) << (u % 32);
        std::memcpy(unit + 32 + (u / 32) * 4, &lane, 4);
      }
    }
  }
}

}  // namespace sqz
