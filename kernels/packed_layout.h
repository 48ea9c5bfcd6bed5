// Bit layout of packed SqueezeLLM indices, shared by the packer (quantize/), the CPU
// reference and the CUDA kernels (format version 2; model/packed.h).
//
// Each row is cut into units of 128 columns (the last unit padded with index 0; padded
// columns are never used), so row_bytes = ceil(cols / 128) * 16 * b: a unit is b aligned
// 16-byte words, one coalesced uint4 load each. Lane j of a word is the little-endian u32 at
// byte 4j of that word. Quarter q of a unit is its columns 32q..32q+31.
//
//   4 bits: words 0..3; word q holds quarter q; lane j holds 8 nibbles:
//             lane j = [c+7][c+6][c+5][c+4][c+3][c+2][c+1][c+0]    c = 32q + 8j, msb left
//
//   3 bits: quarter q is three lanes, A = lane 2q % 4 and B = lane 2q % 4 + 1 of word q / 2,
//           C = lane q of word 2. Each holds 8 nibbles; a nibble's low 3 bits are one index
//           and its msb one bit of a fourth group of 8 columns (c = 32q, k = 0..7 is the
//           nibble, from the lsb):
//             A nibble k = [bit 0 of c+17+2k][index of c+2k   ]
//             B nibble k = [bit 1 of c+17+2k][index of c+2k+1 ]
//             C nibble k = [bit 2 of c+17+2k][index of c+16+2k]
//           so A & 0x77777777 is a ready byte-permute selector of the even columns 0..14 of
//           the quarter, B & .. of the odd ones 1..15, C & .. of 16..30, and three shifts
//           and masks gather 17..31 (kernels/lut_gemv.cu). (Format version 1 had 2-bit
//           low planes and a 1-bit high plane; its files are refused with a message.)
//
//   2 bits: words 0..1; word q (0..1), lane j = [c+15] ... [c+1][c+0] 2 bits each,
//           c = 64q + 16j.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

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

#ifdef __CUDACC__
#define SQZ_LAYOUT_HD __host__ __device__ __forceinline__
#else
#define SQZ_LAYOUT_HD inline
#endif

// 3 bits: the indices of quarter columns 17, 19, ..., 31 (nibble k = column 17 + 2k, bit 3
// clear) gathered from the msbs of lanes A, B, C. (The GPU decoders call it too.)
SQZ_LAYOUT_HD uint32_t packed3_odd_high(uint32_t a, uint32_t b, uint32_t c) {
  return ((a >> 3) & 0x11111111u) | ((b >> 2) & 0x22222222u) | ((c >> 1) & 0x44444444u);
}

// 3 bits: byte offset within the unit of lane A (s = 0), B (1) or C (2) of quarter q.
SQZ_LAYOUT_HD int packed3_lane_offset(int q, int s) { return s == 2 ? 32 + 4 * q : 8 * q + 4 * s; }

// 3 bits: where column i (0..31) of a quarter lives: the index's low 3 bits in nibble `nib`
// of lane `s`, or (s == -1) bit b of the index in the msb of nibble `nib` of lane b.
struct Packed3Pos {
  int s, nib;
};
inline Packed3Pos packed3_pos(int i) {
  if (i < 16) return {i & 1, i >> 1};
  return {(i & 1) ? -1 : 2, (i - 16) >> 1};
}

// Index of column c (0..127) within one unit.
inline int unpack_unit_index(const uint8_t* unit, int bits, int c) {
  if (bits == 4) return (packed_lane(unit, c / 32, (c / 8) % 4) >> (4 * (c % 8))) & 15;
  if (bits == 2) return (packed_lane(unit, c / 64, (c / 16) % 4) >> (2 * (c % 16))) & 3;
  const int q = c / 32;
  const Packed3Pos p = packed3_pos(c % 32);
  auto lane = [&](int s) {
    uint32_t v;
    std::memcpy(&v, unit + packed3_lane_offset(q, s), 4);
    return v;
  };
  const uint32_t v = p.s >= 0 ? lane(p.s) : packed3_odd_high(lane(0), lane(1), lane(2));
  return int(v >> (4 * p.nib)) & 7;
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
  auto or_lane = [](uint8_t* p, uint32_t v) {
    uint32_t lane;
    std::memcpy(&lane, p, 4);
    lane |= v;
    std::memcpy(p, &lane, 4);
  };
  for (int r = 0; r < rows; r++) {
    uint8_t* row = out + r * rb;
    for (int c = 0; c < cols; c++) {
      uint8_t* unit = row + (c / kUnitCols) * 16 * bits;
      const int u = c % kUnitCols;
      const uint32_t v = idx[int64_t(r) * cols + c];
      if (bits == 4) {
        or_lane(unit + (u / 32) * 16 + ((u / 8) % 4) * 4, v << (4 * (u % 8)));
      } else if (bits == 2) {
        or_lane(unit + (u / 64) * 16 + ((u / 16) % 4) * 4, v << (2 * (u % 16)));
      } else {
        const Packed3Pos p = packed3_pos(u % 32);
        if (p.s >= 0) {
          or_lane(unit + packed3_lane_offset(u / 32, p.s), v << (4 * p.nib));
        } else {
          for (int b = 0; b < 3; b++)
            or_lane(unit + packed3_lane_offset(u / 32, b), (v >> b & 1) << (4 * p.nib + 3));
        }
      }
    }
  }
}

// The GPU's copy of the indices is "tiled" (the file and the CPU keep the row layout above):
// rows in tiles of 16 (the last tile padded with zero rows), and within a tile unit-major:
// unit u of the tile's 16 rows is one block of 16 * 16 * bits bytes at
// tile * 16 * row_bytes + u * 16 * 16 * bits, holding
//   part 1: the first P1 bytes of each row's unit, rows in order (P1 = 32 for 3 bits: lanes A
//           and B of the four quarters; the whole unit, 16 * bits, for 4 and 2 bits),
//   part 2: (3 bits) the last 16 bytes (the C lanes) of each row's unit, rows in order.
// Quarter t of row (8 h + g) of a tile is then at (32 h + 4 g + t) * Q in part 1 (Q = 16
// bytes for 4 bits, 8 otherwise) and at (32 h + 4 g + t) * 4 in part 2: the GEMV's lane
// (g, t) copies its quarters of rows g and g + 8 with one 256 or 512-byte contiguous read
// per warp (kernels/lut_gemv.cu; row-layout copies, 8 rows apart, measured 5% slower at one
// token on the H100). Built by to_gpu_tiled when the weights are uploaded.
constexpr int kGpuTileRows = 16;

// Tiles of a matrix of `rows` rows, and bytes of its tiled copy (whole tiles).
inline int gpu_tile_count(int rows) { return (rows + kGpuTileRows - 1) / kGpuTileRows; }
inline int64_t gpu_tiled_bytes(int rows, int64_t row_bytes) {
  return int64_t(gpu_tile_count(rows)) * kGpuTileRows * row_bytes;
}

// Bytes of part 1 of a row's unit in the tiled layout.
SQZ_LAYOUT_HD constexpr int gpu_tiled_part1(int bits) { return bits == 3 ? 32 : 16 * bits; }
// Bytes from one unit's block of a tile to the next's (the tile's 16 rows of one unit).
SQZ_LAYOUT_HD constexpr int gpu_tiled_unit_stride(int bits) { return kGpuTileRows * 16 * bits; }

// Offset in the tiled copy of byte b (0 .. 16 * bits - 1) of unit `unit` of row `row`.
SQZ_LAYOUT_HD int64_t gpu_tiled_offset(int64_t row_bytes, int bits, int row, int unit, int b) {
  const int p1 = gpu_tiled_part1(bits), unit_bytes = 16 * bits, rl = row % kGpuTileRows;
  const int64_t block = int64_t(row / kGpuTileRows) * kGpuTileRows * row_bytes +
                        int64_t(unit) * gpu_tiled_unit_stride(bits);
  return b < p1 ? block + rl * p1 + b
                : block + kGpuTileRows * p1 + rl * (unit_bytes - p1) + (b - p1);
}

// Where row `row`'s unit 0 lies in the tiled copy: the offsets of its part 1 and of its part 2
// (3 bits: the C lanes; for 4 and 2 bits, which have none, the end of part 1's block). Unit
// u's parts lie u * gpu_tiled_unit_stride(bits) bytes further.
struct GpuTiledRow {
  int64_t part1, part2;
};
SQZ_LAYOUT_HD GpuTiledRow gpu_tiled_row(int64_t row_bytes, int bits, int row) {
  return {gpu_tiled_offset(row_bytes, bits, row, 0, 0),
          gpu_tiled_offset(row_bytes, bits, row, 0, gpu_tiled_part1(bits))};
}

// Row-layout indices -> tiles [tile0, tile1) of the tiled copy (gpu_tiled_bytes(rows,
// row_bytes) bytes in all, the padding rows zero). row(r) gives row r's row_bytes bytes, so
// rows gathered from several sources (fused or interleaved linears) are tiled in one pass.
// Disjoint tile ranges may be filled in parallel.
template <typename RowFn>
void to_gpu_tiled_rows(RowFn&& row, int rows, int64_t row_bytes, int bits, uint8_t* dst,
                       int tile0, int tile1) {
  const int unit_bytes = 16 * bits, p1 = gpu_tiled_part1(bits);
  const int n_units = int(row_bytes / unit_bytes);
  for (int tile = tile0; tile < tile1; tile++) {
    const int r0 = tile * kGpuTileRows, r1 = std::min(rows, r0 + kGpuTileRows);
    // A partial last tile is zeroed first: its padding rows lie between its real ones.
    if (r1 - r0 < kGpuTileRows)
      std::memset(dst + int64_t(r0) * row_bytes, 0, size_t(kGpuTileRows * row_bytes));
    for (int r = r0; r < r1; r++) {
      const uint8_t* src = row(r);
      for (int u = 0; u < n_units; u++) {
        const uint8_t* s = src + int64_t(u) * unit_bytes;
        std::memcpy(dst + gpu_tiled_offset(row_bytes, bits, r, u, 0), s, size_t(p1));
        if (unit_bytes > p1)
          std::memcpy(dst + gpu_tiled_offset(row_bytes, bits, r, u, p1), s + p1,
                      size_t(unit_bytes - p1));
      }
    }
  }
}
// The same from one row-layout array [rows, row_bytes].
inline void to_gpu_tiled(const uint8_t* src, int rows, int64_t row_bytes, int bits, uint8_t* dst,
                         int tile0, int tile1) {
  to_gpu_tiled_rows([&](int r) { return src + int64_t(r) * row_bytes; }, rows, row_bytes, bits,
                    dst, tile0, tile1);
}
inline void to_gpu_tiled(const uint8_t* src, int rows, int64_t row_bytes, int bits,
                         uint8_t* dst) {
  to_gpu_tiled(src, rows, row_bytes, bits, dst, 0, gpu_tile_count(rows));
}
inline std::vector<uint8_t> to_gpu_tiled(const uint8_t* src, int rows, int64_t row_bytes,
                                         int bits) {
  std::vector<uint8_t> dst(size_t(gpu_tiled_bytes(rows, row_bytes)));
  to_gpu_tiled(src, rows, row_bytes, bits, dst.data());
  return dst;
}

}  // namespace sqz
