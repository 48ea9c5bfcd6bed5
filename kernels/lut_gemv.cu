// Packed SqueezeLLM linear on the GPU:
//   y[t, r] = sum_c (lut[r][idx[r][c]] + S[r][c]) * x[t, c]
// x fp16 [n_tokens, cols], y fp32 [n_tokens, rows], fp32 accumulation, the CSR outliers S in
// the same kernel. Two kernels behind one launcher, lut_gemm_cuda():
//   lut_gemv_kernel   n_tokens <= 16: memory-bound; each weight decoded once, into tensor-core
//                     A fragments in registers, multiplied by up to 16 tokens.
//   lut_gemm_kernel   n_tokens  > 16: tiles of W decoded to fp16 in shared memory, x tiles by
//                     cp.async, mma.sync m16n8k16 with fp32 accumulation.
// The design, the instruction counts and the napkin math are in kernels/NOTES_lut_gemv.md.
// Test: build/tests/test_lut_gemv (vs the CPU lut_gemm); bench: build/tests/bench_lut_gemv.
//
// Decoding (both kernels). The LUT of a row lives in registers as byte planes: lo[j] holds
// the low bytes of entries 4j..4j+3, hi[j] their high bytes. One PRMT (byte permute) with a
// selector of four 3-bit nibbles looks up four entries' low bytes in lo[0..1], a second their
// high bytes, and two more PRMTs interleave them into two half2 registers: 4 instructions for
// 4 weights. 4 bits needs a second table pair (entries 8..15) and a select by bit 3 of each
// index, done with a sign-replicating PRMT mask and a LOP3. The 3-bit layout
// (kernels/packed_layout.h) is made for this: three masks give 24 selectors, three shifts
// and masks the other 8.
// 4-bit rows on a power-of-two grid (PackedMatrix::grid, kernels/lut_grid.h): the GEMV of up
// to 8 tokens decodes 8-bit codes instead (GRID: 5 instructions per 4 weights instead of 8).
//
// A quarter of a 128-column unit (columns 32q..32q+31 of the unit) is the decoding grain: for
// 4 bits it is word q, for 3 bits bytes [8q, 8q+8) (lanes A, B) and [32+4q, 32+4q+4)
// (lane C), for 2 bits bytes [8q, 8q+8). It yields 16 half2 "pairs" in decode order: pair 2m and
// 2m+1 (m = 0..7) are the two k-pairs of one m16n8k16 A fragment row. Columns of pair 2m+s,
// element e (quarter-relative):
//   4 bits:      4m + 2s + e                     (natural order)
//   3/2 bits:    16(m/4) + p0[m%4] + 4s + 2e     p0 = {0, 8, 1, 9}
// i.e. within each aligned 16-column chunk the 3/2-bit decode order is
//   0 2 4 6 | 8 10 12 14 | 1 3 5 7 | 9 11 13 15.
// The GEMV stages x in shared memory in that order; the GEMM turns W back to natural order.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_common.h"
#include "kernels/cluster.cuh"
#include "kernels/cuda_util.cuh"
#include "kernels/lut_gemv.h"
#include "kernels/lut_grid.h"
#include "kernels/mma.cuh"
#include "kernels/packed_layout.h"
#include "kernels/pdl.cuh"

namespace sqz {
namespace {

// ---------------------------------------------------------------------------------------
// Device helpers

// The decoding helpers below are host-callable too, so the bit tricks can be checked on a CPU.
#define SQZ_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__
#define SQZ_UNROLL _Pragma("unroll")
#else
#define SQZ_UNROLL
#endif

// Byte permute (PTX prmt, default mode): byte k of the result is byte sel[4k+2..4k] of b:a,
// or, when sel bit 4k+3 is set, that byte's msb replicated.
SQZ_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
#else
  const uint64_t x = uint64_t(b) << 32 | a;
  uint32_t d = 0;
  for (int k = 0; k < 4; k++) {
    const uint32_t n = sel >> (4 * k) & 15, byte = uint32_t(x >> (8 * (n & 7))) & 0xff;
    d |= (n & 8 ? (byte & 0x80 ? 0xffu : 0u) : byte) << (8 * k);
  }
  return d;
#endif
}

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Streaming 16/8/4-byte loads of index words (read once; through the read-only path).
__device__ __forceinline__ uint4 ldg_u4(const void* p) {
  return __ldg(static_cast<const uint4*>(p));
}
__device__ __forceinline__ uint2 ldg_u2(const void* p) {
  return __ldg(static_cast<const uint2*>(p));
}
__device__ __forceinline__ uint32_t ldg_u1(const void* p) {
  return __ldg(static_cast<const unsigned int*>(p));
}


// ---------------------------------------------------------------------------------------
// LUT byte planes and the decoding of one quarter-unit

template <int BITS>
constexpr int kLutPlanes = BITS == 4   ? 4
                           : BITS == 3 ? 2
                                       : 1;
// u32 index words per quarter-unit: 4-bit word q; 3-bit two low lanes + the high lane; 2-bit two.
template <int BITS>
constexpr int kQuarterWords = BITS == 4   ? 4
                              : BITS == 3 ? 3
                                          : 2;

template <int BITS>
struct LutPlanes {
  uint32_t lo[kLutPlanes<BITS>], hi[kLutPlanes<BITS>];
};

// Entries 4j..4j+3 (e0 = 4j, 4j+1; e1 = 4j+2, 4j+3) -> their low bytes and their high bytes.
SQZ_HD void to_byte_planes(uint32_t e0, uint32_t e1, uint32_t& lo, uint32_t& hi) {
  lo = prmt(e0, e1, 0x6420);
  hi = prmt(e0, e1, 0x7531);
}

// The row's 2^BITS fp16 entries as byte planes (lut rows are 4-byte aligned: launcher check).
template <int BITS>
__device__ __forceinline__ LutPlanes<BITS> load_lut(const uint16_t* lut, int row) {
  const uint32_t* e = reinterpret_cast<const uint32_t*>(lut + (int64_t(row) << BITS));
  LutPlanes<BITS> l;
#pragma unroll
  for (int j = 0; j < kLutPlanes<BITS>; j++) {
    const uint32_t e0 = __ldg(e + 2 * j), e1 = __ldg(e + 2 * j + 1);  // entries 4j..4j+3
    to_byte_planes(e0, e1, l.lo[j], l.hi[j]);
  }
  return l;
}

// Quarter q of a row's unit in the GPU's tiled layout (kernels/packed_layout.h): part1 and
// part2 are the row's parts of the unit (see the top of the file for which bytes).
template <int BITS>
__device__ __forceinline__ void load_quarter(const uint8_t* part1, const uint8_t* part2, int q,
                                             uint32_t (&w)[kQuarterWords<BITS>]) {
  if constexpr (BITS == 4) {
    const uint4 v = ldg_u4(part1 + 16 * q);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else {
    const uint2 v = ldg_u2(part1 + 8 * q);
    w[0] = v.x, w[1] = v.y;
    if constexpr (BITS == 3) w[2] = ldg_u1(part2 + 4 * q);
  }
}

// Four weights whose 3-bit (or 2-bit) indices are the nibbles of sel[15:0] (bit 3 clear):
// half2 of nibbles 0,1 -> a, nibbles 2,3 -> b. GRID (kernels/lut_grid.h): lo[] holds the
// row's 8-bit codes, one lookup gives the four codes and two permutes spread them into fp16
// subnormal pairs (code, 0).
template <int BITS, bool GRID>
SQZ_HD void lookup4_small(uint32_t sel, const LutPlanes<BITS>& l, uint32_t& a, uint32_t& b) {
  if constexpr (GRID) {
    const uint32_t c = prmt(l.lo[0], l.lo[kLutPlanes<BITS> - 1], sel);
    a = prmt(c, 0u, 0x4140);
    b = prmt(c, 0u, 0x4342);
  } else {
    const uint32_t lo = prmt(l.lo[0], l.lo[kLutPlanes<BITS> - 1], sel);
    const uint32_t hi = prmt(l.hi[0], l.hi[kLutPlanes<BITS> - 1], sel);
    a = prmt(lo, hi, 0x5140);
    b = prmt(lo, hi, 0x7362);
  }
}

// Same for 4-bit indices: sel holds the low 3 bits, byte k of m is 0xff where index k >= 8.
template <bool GRID>
SQZ_HD void lookup4_16(uint32_t sel, uint32_t m, const LutPlanes<4>& l, uint32_t& a, uint32_t& b) {
  if constexpr (GRID) {
    const uint32_t c = (prmt(l.lo[0], l.lo[1], sel) & ~m) | (prmt(l.lo[2], l.lo[3], sel) & m);
    a = prmt(c, 0u, 0x4140);
    b = prmt(c, 0u, 0x4342);
  } else {
    const uint32_t lo = (prmt(l.lo[0], l.lo[1], sel) & ~m) | (prmt(l.lo[2], l.lo[3], sel) & m);
    const uint32_t hi = (prmt(l.hi[0], l.hi[1], sel) & ~m) | (prmt(l.hi[2], l.hi[3], sel) & m);
    a = prmt(lo, hi, 0x5140);
    b = prmt(lo, hi, 0x7362);
  }
}

// One quarter-unit -> 16 half2 pairs in decode order (see the top of the file); GRID: codes
// as fp16 subnormals (lookup4_small).
template <int BITS, bool GRID = false>
SQZ_HD void decode_quarter(const uint32_t (&w)[kQuarterWords<BITS>], const LutPlanes<BITS>& l,
                           uint32_t (&p)[16]) {
  if constexpr (BITS == 4) {
    SQZ_UNROLL
    for (int j = 0; j < 4; j++) {  // lane j: nibbles = columns 8j..8j+7
      const uint32_t v = w[j], s = v & 0x77777777u;
      // msb of the bytes of (v << 4 : v) are the index bits 3 of nibbles 0,1,2,.. in turn
      const uint32_t m0 = prmt(v << 4, v, 0xD9C8), m1 = prmt(v << 4, v, 0xFBEA);
      lookup4_16<GRID>(s, m0, l, p[4 * j], p[4 * j + 1]);
      lookup4_16<GRID>(s >> 16, m1, l, p[4 * j + 2], p[4 * j + 3]);
    }
  } else {
    // Selectors of four 8-column groups, nibble k = column 2k (+1, +16, +17):
    uint32_t sel[4];
    if constexpr (BITS == 3) {  // lanes A, B, C (kernels/packed_layout.h)
      constexpr uint32_t kLow3 = 0x77777777u;
      sel[0] = w[0] & kLow3, sel[1] = w[1] & kLow3, sel[2] = w[2] & kLow3;
      sel[3] = packed3_odd_high(w[0], w[1], w[2]);  // columns 17 + 2k
    } else {  // 2 bits: low lane h = columns 16h..16h+15, 2 bits each
      constexpr uint32_t kLow2 = 0x33333333u;
      sel[0] = w[0] & kLow2, sel[1] = (w[0] >> 2) & kLow2;
      sel[2] = w[1] & kLow2, sel[3] = (w[1] >> 2) & kLow2;
    }
    SQZ_UNROLL
    for (int i = 0; i < 4; i++) {  // i: even 0..14, odd 1..15, even 16..30, odd 17..31
      lookup4_small<BITS, GRID>(sel[i], l, p[4 * i + 0], p[4 * i + 1]);  // columns 0 2 | 4 6
      lookup4_small<BITS, GRID>(sel[i] >> 16, l, p[4 * i + 2], p[4 * i + 3]);  // 8 10 | 12 14
    }
  }
}

// Decode-order pairs of a quarter -> natural order (pair i = columns 2i, 2i+1).
template <int BITS>
SQZ_HD void to_natural_order(uint32_t (&p)[16]) {
  if constexpr (BITS != 4) {
    SQZ_UNROLL
    for (int h = 0; h < 2; h++) {
      uint32_t* q = p + 8 * h;
      const uint32_t a0 = q[0], b0 = q[1], a1 = q[2], b1 = q[3], a2 = q[4], b2 = q[5], a3 = q[6],
                     b3 = q[7];
      q[0] = prmt(a0, a2, 0x5410), q[1] = prmt(a0, a2, 0x7632);  // 0 1, 2 3
      q[2] = prmt(b0, b2, 0x5410), q[3] = prmt(b0, b2, 0x7632);  // 4 5, 6 7
      q[4] = prmt(a1, a3, 0x5410), q[5] = prmt(a1, a3, 0x7632);  // 8 9, 10 11
      q[6] = prmt(b1, b3, 0x5410), q[7] = prmt(b1, b3, 0x7632);  // 12 13, 14 15
    }
  }
}

// ---------------------------------------------------------------------------------------
// GEMV / batched kernel, n_tokens <= 16
//
// Block = 8 warps (or two groups of 8 sharing x_s: NGRP below), persistent over tiles of 16
// rows (tile = blockIdx.x + k * gridDim.x). A tile's K dimension is cut into items of G units
// (G * 128 columns); warp w takes items w, w + 8, ...
// Lane (g, t) = (lane / 4, lane % 4) decodes quarter t of every unit of rows g and g + 8 of the
// tile: the A fragments of m16n8k16 come straight out of the decoder, with the rows as M and
// the (permuted) columns as K. B is x^T (tokens as N, 8 per mma; 2 mmas for 9..16 tokens),
// read from shared memory where x was staged in decode order, grouped so that one 16-byte load
// gives a lane the B fragments of two k16 steps and the 4 lanes of a quad read 64 consecutive
// bytes (no bank conflicts):
//   x_s[token][unit][m / 2][t][m % 2][4 halves]   token stride = chunk bytes + 64 (== 64 mod 128)
// Latency hiding:
//   - each lane copies its own index words of the warp's next item (possibly in the next
//     tile) into a per-warp ring in shared memory with cp.async while the current one is
//     decoded (kStages items per warp);
//   - the last warp (kMetaWarp) loads the next tile's LUT rows into registers at the start
//     of a tile and stores them to shared memory before the tile's closing barrier;
//   - each lane loads the row pointers of its 2 outlier rows two tiles ahead and a first CSR
//     entry of each one tile ahead; a tile's entries are applied before its items (x from
//     x_s). At one token lane (g, t) takes entries t + 4 w, + 32, ... of its own rows g, g + 8
//     and its quad's sum goes into its accumulators; at more tokens warp w takes rows w,
//     w + 8, lanes over entries, and a transposing warp reduction gives one sum per token;
//   - the mma chain alternates between two accumulator sets.
// At the end of a tile the 8 warps' accumulators (and outlier sums) are added through
// shared memory in a fixed order and y is written.
//
// x must fit in shared memory: when n_tokens * K is too large, K is cut into chunks of
// chunk_items items (a multiple of 8), x is restaged per (tile, chunk) and the outliers read x
// from global memory.

constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = 32 * kGemvWarps;
constexpr int kTileRows = kGpuTileRows;  // the tiles of the GPU's index layout
constexpr int kMaxGemvTokens = kLutGemvMaxTokens;
// Tokens per launch: NTILE 1 takes up to kGemvChunkTokens, NTILE 2 up to kMaxNtile2Tokens;
// more tokens (up to kMaxGemvTokens) run in pieces, one launch each (launch_bits).
constexpr int kGemvChunkTokens = 8, kMaxNtile2Tokens = 16;
// The warp that loads the next tile's LUT rows and stores them to shared memory: the last
// one, as warp 0 runs the tile epilogue (and the last warps have an item fewer when the
// items do not divide evenly).
constexpr int kMetaWarp = kGemvWarps - 1;

template <int BITS>
constexpr int kItemUnits = BITS == 4 ? 2 : 4;  // units per item: 64 (4-bit) / 96 B per lane
// (3/2 bits also have G = 2 variants, for when x needs the shared memory: see launch_gemv.)
// Per-warp ring of items in shared memory: copies of the next kStages - 1 items in flight
// while one is decoded. 2 stages measured best for up to 8 tokens; 9..16 tokens need the
// shared memory for x.
template <int NTILE>
constexpr int kStages = 2;
// Blocks per SM the launch bounds ask for: 2 (up to 128 registers). 3 (80 registers) made the
// 4-bit kernel spill and the others tighter: H100 A/B, 7B tg64 b1 3-bit 2.336 -> 2.228 ms,
// 4-bit 2.972 -> 2.541 ms (4096-row 3-bit GEMVs alone 6% slower: 4096 x 4096 5.98 -> 6.34 us).
constexpr int kGemvMinBlocks = 2;
template <int BITS>
constexpr int kLaneQuarterBytes = BITS == 4   ? 16
                                  : BITS == 3 ? 12
                                              : 8;  // per unit and row
// One ring stage of a warp: [unit][row half][lane][16 or 8 bytes] (+ 3-bit high words
// [unit][row half][lane][4 bytes]): each lane copies and reads back its own quarters, and a
// warp's loads read consecutive bytes.
template <int BITS, int G>
constexpr int kStageBytes = G * 2 * 32 * kLaneQuarterBytes<BITS>;
template <int BITS>
constexpr int kLutRowBytes = 2 << BITS;  // 2^BITS fp16 entries

// The matrix, x and y as both kernels take them (linear_params() fills it).
struct LinearParams {
  const uint8_t* indices;
  int64_t row_bytes;
  const uint16_t* lut;
  const int32_t* row_ptr;    // null: no outliers
  const uint32_t* outliers;  // col | fp16 value << 16 (PackedMatrix::outliers)
  const uint16_t* x;
  float* y;
  int rows, cols, n_tokens;
  int n_units;  // ceil(cols / 128)
  bool x_vec;   // x 16-byte aligned and cols % 8 == 0: stage / copy with 16-byte loads
};

struct GemvParams : LinearParams {
  // Fusions (LutGemmFusion): y += instead of =; swiglu of interleaved gate/up rows into
  // swiglu_out instead of y.
  bool accumulate;
  uint16_t* swiglu_out;
  int n_items;      // ceil(n_units / G)
  int chunk_items;  // items per x chunk
  int n_chunks;
  int n_tiles;       // ceil(rows / 16)
  int x_tok_stride;  // bytes between tokens in x_s
  int xs_bytes;      // bytes of x_s
  float* sumsq_out;  // [n_tokens][n_tiles]: the next norm's partial sums of squares
};

// The norm fusion's kernels take these (x staged from norm_x). Separate, at the end: adding
// the fields to GemvParams made the register-capped kernels without the fusion spill (3-bit
// NTILE 1, G = 4: 0 -> 8 bytes; nvcc 13.0).
struct GemvNormParams : GemvParams {
  const float* norm_x;
  const float* norm_w;
  const float* norm_sumsq;  // [n_tokens][ceil(cols / 16)]
  float norm_eps;
};
template <bool NORM>
using GemvParamsOf = std::conditional_t<NORM, GemvNormParams, GemvParams>;

// Shared memory of the GEMV kernel after x_s: partial tiles, outlier sums, LUT rows. The
// partial tiles' rows (8 NTILE tokens) are laid out so that the epilogue's threads (a row
// each) read different banks: plain rows of 8 NTILE floats had rows 4 apart on one bank (4x
// the wavefronts, ncu). Two layouts:
// - padded: rows 8 NTILE + 2 floats apart (even, so the float2 stores stay aligned);
// - compact (COMPACT): rows of 8 NTILE floats, the columns swizzled by the row (red_col;
//   no conflicts in the stores nor in the reads), 2.3 KB less per group. Only for items of
//   one unit at up to 8 tokens (compact_red), where the padding is what kept two groups of
//   4-bit items from fitting at 8 tokens and K = 11008 (4-bit 4096 x 11008 at 8 tokens 19.16
//   -> 16.52 us, H100). Used everywhere, it was slower elsewhere (3-bit 0.45% 22016 x 4096: 8
//   tokens 24.17 -> 25.19 us, 16 tokens 30.35 -> 31.71), and so were the padded rows with
//   the swizzle's instructions added (25.27, 32.41): the few integer ops per tile cost it,
//   not the banks.
template <int NTILE, int G>
constexpr bool compact_red() {
  return NTILE == 1 && G == 1;
}

template <int NTILE, bool COMPACT>
constexpr int kRedRow = COMPACT ? 8 * NTILE : 8 * NTILE + 2;

// The column of token col in row `row` of a partial tile. Compact (8 tokens): row bits 2, 3
// flip column bits 2, 1, so the epilogue's reads (a warp: 16 rows x 2 tokens, or 8 rows x 4
// for SwiGLU) and the D fragments' float2 stores take one wavefront per 32 words.
template <int NTILE, bool COMPACT>
__device__ __forceinline__ int red_col(int row, int col) {
  static_assert(!COMPACT || NTILE == 1, "the compact layout is for up to 8 tokens");
  if constexpr (COMPACT)
    return col ^ ((row & 4) | (row >> 2 & 2));
  else
    return col;
}

template <int NTILE, bool COMPACT = false>
struct alignas(16) GemvShared {
  static constexpr int kRow = kRedRow<NTILE, COMPACT>;
  float red[2][kGemvWarps][kTileRows][kRow];  // [tile parity][warp][row][token]
  float outl[2][kTileRows][kRow];
  uint8_t lut[2][kTileRows * 32];
  uint8_t xs_perm[128];  // xs_offset of columns 0..127 (the outlier path's lookup)
};

// Offset in halves of column col (relative to the staged chunk) in x_s for token 0.
template <int BITS>
SQZ_HD int xs_offset(int col) {
  const int u = col >> 7, q = (col >> 5) & 3, o = col & 31;
  int m, k;
  if (BITS == 4) {
    m = o >> 2, k = o & 3;
  } else {  // decode order within 16 columns: 0 2 4 6 | 8 .. 14 | 1 3 5 7 | 9 .. 15
    const int r = o & 15;
    m = 4 * (o >> 4) + (r >> 3) + 2 * (r & 1), k = (r & 7) >> 1;
  }
  return (((u * 4 + (m >> 1)) * 4 + q) * 2 + (m & 1)) * 4 + k;
}

// Which of the staging's (token, 16-column group) pairs, flattened token-major, this block
// stages: all of them, or in a cluster of two blocks (launch_gemv's gemv_cluster) its half,
// stored into both blocks' x_s (peer: the other block's rank, else -1). The kernel takes it
// once; the norm weights loaded before its wait and the staging after it use the same one.
struct StageShare {
  int begin, end, peer;
};
template <int G>
__device__ __forceinline__ StageShare stage_share(const GemvParams& p, ClusterPlace c) {
  const int total = p.n_tokens * p.chunk_items * G * 8;  // 16-column groups per chunk
  if (c.size == 1) return {0, total, -1};
  const int half = (total + 1) / 2, rank = int(c.rank);
  return {rank * half, min(total, (rank + 1) * half), rank ^ 1};
}

// Stores the 16-column group q (of the staged chunk) of token tok, v[k] = columns 2k, 2k+1,
// into x_s in decode order (and into the peer block's x_s when peer >= 0).
template <int BITS>
__device__ __forceinline__ void gemv_store_x_group(const GemvParams& p, uint8_t* xs, int tok,
                                                   int q, const uint32_t (&v)[8], int peer) {
  // q -> (unit, quarter t, half h); groups m = 4h..4h+3 of quarter t: m = 4h + 2i + j at
  // uint2 slot 8i + j, i.e. i = 0 and i = 1 as one 16-byte store each. Threads with h = 1
  // store i = 1 first, so that the 8 threads of a store phase (q = 8u..8u+7: t = 0..3, h = 0,
  // 1) hit 8 different 16-byte bank groups. (Four 8-byte stores in the same order for every
  // thread had 4x the shared-memory wavefronts of a conflict-free store: ncu, 8 tokens.)
  const int u = q >> 3, t = (q >> 1) & 3, h = q & 1;
  uint4* dst = reinterpret_cast<uint4*>(xs + tok * p.x_tok_stride + u * 256 + h * 128 + t * 16);
  uint4 m01, m23;  // groups 4h, 4h + 1 (slots 0, 1) and 4h + 2, 4h + 3 (slots 8, 9)
  if constexpr (BITS == 4) {
    m01 = make_uint4(v[0], v[1], v[2], v[3]), m23 = make_uint4(v[4], v[5], v[6], v[7]);
  } else {  // columns 0 2 4 6 | 8 .. 14, then 1 3 5 7 | 9 .. 15
    m01 = make_uint4(prmt(v[0], v[1], 0x5410), prmt(v[2], v[3], 0x5410), prmt(v[4], v[5], 0x5410),
                     prmt(v[6], v[7], 0x5410));
    m23 = make_uint4(prmt(v[0], v[1], 0x7632), prmt(v[2], v[3], 0x7632), prmt(v[4], v[5], 0x7632),
                     prmt(v[6], v[7], 0x7632));
  }
  // (Selected per word: a selected uint4 went through a 32-byte stack frame once the peer's
  // stores were added.)
  auto pick = [](bool c, const uint4& x, const uint4& y) {
    return make_uint4(c ? x.x : y.x, c ? x.y : y.y, c ? x.z : y.z, c ? x.w : y.w);
  };
  const uint4 s0 = pick(h, m23, m01), s1 = pick(h, m01, m23);
  dst[4 * h] = s0;
  dst[4 * (h ^ 1)] = s1;
  if (peer >= 0) {
    store_peer_u4(dst + 4 * h, uint32_t(peer), s0);
    store_peer_u4(dst + 4 * (h ^ 1), uint32_t(peer), s1);
  }
}

// Stages columns [c0, c0 + chunk_items * G * 128) of x, zero beyond cols, into x_s. (Loading two
// groups per thread before storing either, to overlap their latencies, made the kernel spill:
// 3-bit 22016 x 4096 at one token 25.2 -> 30.6 us.)
template <int BITS, int G, int THREADS>
__device__ void gemv_stage_x(const GemvParams& p, uint8_t* xs, int chunk,
                             const StageShare& share) {
  const int n_groups = p.chunk_items * G * 8;  // 16-column groups per token
  const int c0 = chunk * p.chunk_items * G * 128;
  for (int i = share.begin + int(threadIdx.x); i < share.end; i += THREADS) {
    const int tok = i / n_groups, q = i - tok * n_groups, col = c0 + 16 * q;
    const uint16_t* src = p.x + int64_t(tok) * p.cols + col;
    uint32_t v[8];
    if (p.x_vec) {  // cols % 8 == 0: each 8-column half is all in or all out
      const uint4 a = col < p.cols ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
      const uint4 b =
          col + 8 < p.cols ? *reinterpret_cast<const uint4*>(src + 8) : make_uint4(0, 0, 0, 0);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z,
      v[7] = b.w;
    } else {
#pragma unroll
      for (int k = 0; k < 8; k++) {
        const uint32_t lo = col + 2 * k < p.cols ? src[2 * k] : 0u;
        const uint32_t hi = col + 2 * k + 1 < p.cols ? src[2 * k + 1] : 0u;
        v[k] = lo | hi << 16;
      }
    }
    gemv_store_x_group<BITS>(p, xs, tok, q, v, share.peer);
  }
}

// Whether the norm fusion's loads are 16-byte vectors (whole 16-column groups in or out).
__device__ __forceinline__ bool norm_vec(const GemvNormParams& p) {
  return p.cols % 16 == 0 && reinterpret_cast<uintptr_t>(p.norm_x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.norm_w) % 16 == 0;
}

// 16 floats of v from column col (zero beyond cols), vector or predicated scalar loads.
__device__ __forceinline__ void norm_load16(const float* v, int col, int cols, bool vec,
                                            float (&out)[16]) {
  if (vec) {
    const bool in = col < cols;  // whole groups in or out
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float4 a =
          in ? *reinterpret_cast<const float4*>(v + col + 4 * k) : make_float4(0.f, 0.f, 0.f, 0.f);
      out[4 * k] = a.x, out[4 * k + 1] = a.y, out[4 * k + 2] = a.z, out[4 * k + 3] = a.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 16; k++) out[k] = col + k < cols ? v[col + k] : 0.0f;
  }
}

// The norm weights of this thread's first group of x (group threadIdx.x of token 0): constant
// data, so the kernel loads them before pdl_wait and their round trip overlaps the previous
// kernel.
template <int G>
__device__ __forceinline__ void gemv_norm_w_first(const GemvNormParams& p,
                                                  const StageShare& share, float (&wv)[16]) {
  const int n_groups = p.chunk_items * G * 8;
  const int i = share.begin + int(threadIdx.x);
  if (i < share.end) norm_load16(p.norm_w, 16 * (i % n_groups), p.cols, norm_vec(p), wv);
}

// The norm fusion's staging (one chunk: the launcher ensures it): scale_t from the partial
// sums of squares (each warp: lane l sums partials l, l + 32, ... in order, then the warp's
// xor tree: the same sum in every warp and block), then x = fp16(norm_x * scale_t * norm_w)
// per column, rmsnorm_cuda's expression. `red` is shared scratch of >= 8 floats per warp. Each
// thread's first group of x is loaded before the partial sums, so their L2 round trips
// overlap (its norm weights wv came before pdl_wait: gemv_norm_w_first); loads are vector
// (16 columns: 8 x 16 bytes) when cols % 16 == 0 and aligned, else predicated scalars, all
// issued before the first use. (Branchy scalar loads, one use each before the next load, made
// this kernel 6.7 us slower than the plain one at 7B: H100.)
template <int BITS, int G, int THREADS>
__device__ void gemv_stage_x_norm(const GemvNormParams& p, uint8_t* xs, float* red,
                                  float (&wv)[16], const StageShare& share) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_groups = p.chunk_items * G * 8;  // 16-column groups per token
  const int first = share.begin + int(threadIdx.x);
  const bool vec = norm_vec(p);
  float xv[16];
  auto load = [&](int i, bool w) {
    const int tok = i / n_groups, col = 16 * (i - tok * n_groups);
    norm_load16(p.norm_x + int64_t(tok) * p.cols, col, p.cols, vec, xv);
    if (w) norm_load16(p.norm_w, col, p.cols, vec, wv);
  };
  if (first < share.end) load(first, false);  // wv: gemv_norm_w_first

  // Every warp sums all partials itself (lane l: partials l, l + 32, ... in order, then the
  // xor tree, which leaves the same bits in every lane): no block barrier before the scale.
  const int n_parts = (p.cols + kTileRows - 1) / kTileRows;
  float* scale = red + warp * kLutGemvNormMaxTokens;  // this warp's scale per token
  for (int tok = 0; tok < p.n_tokens; tok++) {
    float s = 0.0f;
#pragma unroll 8
    for (int i = lane; i < n_parts; i += 32) s += p.norm_sumsq[int64_t(tok) * n_parts + i];
    s = warp_sum(s);
    if (lane == 0) scale[tok] = 1.0f / sqrtf(s / float(p.cols) + p.norm_eps);
  }
  __syncwarp();
  for (int i = first; i < share.end; i += THREADS) {
    if (i != first) load(i, true);
    const int tok = i / n_groups, q = i - tok * n_groups;
    const float sc = scale[tok];
    uint32_t v[8];
#pragma unroll
    for (int k = 0; k < 8; k++)
      v[k] = uint32_t(f2h(xv[2 * k] * sc * wv[2 * k])) |
             uint32_t(f2h(xv[2 * k + 1] * sc * wv[2 * k + 1])) << 16;
    gemv_store_x_group<BITS>(p, xs, tok, q, v, share.peer);
  }
}

// A tile's LUT rows (rows past the end clamped), loaded by kMetaWarp into registers at the
// start of the previous tile and stored to shared memory at its end.
template <int BITS>
struct TileMeta {
  static constexpr int kChunks = kTileRows * kLutRowBytes<BITS> / 8, kPerLane = (kChunks + 31) / 32;
  uint2 lut[kPerLane];
};

template <int BITS>
__device__ __forceinline__ TileMeta<BITS> gemv_load_meta(const GemvParams& p, int tile) {
  constexpr int kPerRow = kLutRowBytes<BITS> / 8;
  const int lane = threadIdx.x & 31;
  TileMeta<BITS> m;
#pragma unroll
  for (int j = 0; j < TileMeta<BITS>::kPerLane; j++) {
    const int i = lane + 32 * j, r = min(tile * kTileRows + i / kPerRow, p.rows - 1);
    m.lut[j] =
        i < TileMeta<BITS>::kChunks
            ? __ldg(reinterpret_cast<const uint2*>(p.lut) + int64_t(r) * kPerRow + i % kPerRow)
            : make_uint2(0, 0);
  }
  return m;
}

template <int BITS, bool GRID, int NTILE, bool COMPACT>
__device__ __forceinline__ void gemv_store_meta(const TileMeta<BITS>& m,
                                                GemvShared<NTILE, COMPACT>& sh, int buf) {
  // 3 and 2 bits: stored as byte planes, so each warp loads a row's LutPlanes with one load:
  // row r = lo[0..P) hi[0..P) (P = kLutPlanes); chunk i (entries 4c..4c+3 of row i / P) gives
  // lo[c] and hi[c]. 4 bits: the entries as they are, each warp makes the planes (with the
  // 4-bit kernel at the 80-register cap of 3 blocks per SM, loading its planes here instead
  // made it 25% slower at 8 tokens, 22016 x 4096, H100; not measured since it has 128).
  // GRID: the grid rows as they are (codes | scale | offset).
  constexpr int P = kLutPlanes<BITS>;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < TileMeta<BITS>::kPerLane; j++) {
    const int i = lane + 32 * j;
    if (i >= TileMeta<BITS>::kChunks) continue;
    if constexpr (BITS == 4 || GRID) {
      reinterpret_cast<uint2*>(sh.lut[buf])[i] = m.lut[j];
    } else {
      uint32_t* row = reinterpret_cast<uint32_t*>(sh.lut[buf] + (i / P) * kLutRowBytes<BITS>);
      to_byte_planes(m.lut[j].x, m.lut[j].y, row[i % P], row[P + i % P]);
    }
  }
}

// A tile row's LUT planes from shared memory (gemv_store_meta's layouts). GRID: lo[] = the
// codes, hi[0] = the scale's bits, hi[1] = the offset's.
template <int BITS, bool GRID = false>
__device__ __forceinline__ void gemv_lut_planes(const uint8_t* row, LutPlanes<BITS>& l) {
  constexpr int P = kLutPlanes<BITS>;
  if constexpr (GRID && P == 4) {  // codes 0..15 | scale offset 0 0
    const uint4 c = *reinterpret_cast<const uint4*>(row);
    const uint2 so = *reinterpret_cast<const uint2*>(row + 16);
    l.lo[0] = c.x, l.lo[1] = c.y, l.lo[2] = c.z, l.lo[3] = c.w;
    l.hi[0] = so.x, l.hi[1] = so.y, l.hi[2] = l.hi[3] = 0;
  } else if constexpr (P == 1) {  // lo0 hi0
    const uint2 v = *reinterpret_cast<const uint2*>(row);
    l.lo[0] = v.x, l.hi[0] = v.y;
  } else if constexpr (P == 2) {  // lo0 lo1 hi0 hi1
    const uint4 v = *reinterpret_cast<const uint4*>(row);
    l.lo[0] = v.x, l.lo[1] = v.y, l.hi[0] = v.z, l.hi[1] = v.w;
  } else {  // the 16 entries
    const uint32_t* e = reinterpret_cast<const uint32_t*>(row);
#pragma unroll
    for (int j = 0; j < P; j++) to_byte_planes(e[2 * j], e[2 * j + 1], l.lo[j], l.hi[j]);
  }
}

// N (2, 4, 8 or 16) per-lane values -> lane l holds the warp sum of value
// warp_transpose_index(l): N - 1 + log2(32 / N) shuffles instead of 5 N.
template <int N>
__device__ __forceinline__ float warp_transpose_sum(float (&v)[N], int lane) {
  transpose_round<N, N / 2, 16>(v, lane);
#pragma unroll
  for (int off = 16 / N; off >= 1; off >>= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], off);
  return v[0];
}
// The token whose sum lane holds after warp_transpose_sum<N>, or -1 for a duplicate lane.
template <int N>
__device__ __forceinline__ int warp_transpose_index(int lane) {
  if (lane & (32 / N - 1)) return -1;
  int idx = 0;
#pragma unroll
  for (int r = 0; (N >> (r + 1)) >= 1; r++) idx += (lane & (16 >> r)) ? N >> (r + 1) : 0;
  return idx;
}

// NORM: the norm fusion (x staged from norm_x; one chunk). Its own instantiations, so the
// kernels without it keep their code (the GEMV sits near its register cap).
// NGRP: groups of 8 warps per block (1 or 2). The groups share x_s, staged once by the
// whole block, and each walks its own tiles as a block of NGRP = 1 would (group gr of block b
// as block b + gr gridDim.x of a grid NGRP times larger, so that the first round's extra
// tiles go to the groups 0 of different blocks, one per SM), with its own barrier; x in one
// chunk.
// GRID: p.lut holds grid rows (kernels/lut_grid.h; the same bytes per row as the fp16 LUT):
// the weights are decoded to codes, and a second mma per k-step with A = ones sums x over the
// same columns (fp32, as the products are), so each warp's partial tile is
//   2^(e+24) (sum of code 2^-24 x) + z 2^e (sum of x)
// per row before the cross-warp sum. (Summing x separately over x_s after the staging, with
// the offset added in the epilogue, made the 8-token GEMVs slower than the fp16 decode:
// 4096 x 4096 7.74 -> 9.46 us, H100; the ones-mma needs no loads and no barrier.)
template <int BITS, int NTILE, int G, bool NORM = false, int NGRP = 1, bool GRID = false>
__global__ void __launch_bounds__(kGemvThreads * NGRP, kGemvMinBlocks / NGRP)
    lut_gemv_kernel(const GemvParamsOf<NORM> p) {
  constexpr int QW = kQuarterWords<BITS>, NT8 = 8 * NTILE;
  static_assert(NGRP == 1 || NGRP == 2, "one or two groups of 8 warps");
  // Shared memory: x_s [xs_bytes] | GemvShared per group | each warp's ring of kStages items.
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* xs = smem;
  const int grp = NGRP == 1 ? 0 : int(threadIdx.x) / kGemvThreads;
  const int tid = NGRP == 1 ? int(threadIdx.x) : int(threadIdx.x) % kGemvThreads;
  constexpr bool COMPACT = compact_red<NTILE, G>();
  using Shared = GemvShared<NTILE, COMPACT>;
  Shared& sh = reinterpret_cast<Shared*>(smem + p.xs_bytes)[grp];
  // The group's place in the grid of groups.
  const int vblock = int(blockIdx.x) + grp * int(gridDim.x), vgrid = int(gridDim.x) * NGRP;
  // Launched in clusters of two blocks (one group each, x in one chunk: launch_gemv), each
  // block stages half of x into both blocks' x_s; the arrival here tells the peer that this
  // block's shared memory exists, and the wait for it comes just before the first store.
  const ClusterPlace place = NGRP == 1 ? cluster_place() : ClusterPlace{0, 1};
  const uint32_t n_cta = place.size;
  if (n_cta > 1) cluster_arrive_relaxed();
  auto group_sync = [&]() {
    if constexpr (NGRP == 1)
      __syncthreads();
    else
      asm volatile("bar.sync %0, %1;" ::"r"(1 + grp), "n"(kGemvThreads) : "memory");
  };

  const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int my_tiles =
      NGRP == 1 || vblock < p.n_tiles ? (p.n_tiles - vblock + vgrid - 1) / vgrid : 0;
  const bool has_outliers = p.row_ptr != nullptr;
  // One token: lane (g, t) walks the outliers of its own rows g, g + 8 (entries t + 4 warp,
  // + 32, ...), so that its sums go straight into its accumulators (a quad reduction instead
  // of a warp-wide one and the sh.outl buffer: H100, 3-bit 0.45%, 22016 x 4096 23.1 -> 22.1
  // us, 7B tg64 b1 2.20 -> 2.13 ms). More tokens: warp w walks rows w, w + 8 with all lanes.
  const bool outl_own_rows = NT8 == 8 && p.n_tokens == 1;
  const int o_row = outl_own_rows ? g : warp, o_lane = outl_own_rows ? t + 4 * warp : lane;

  // This lane's B-fragment rows of x_s: token nt * 8 + g (clamped; columns >= n_tokens of D
  // are never stored), quarter t.
  int xs_lane[NTILE];
#pragma unroll
  for (int nt = 0; nt < NTILE; nt++)
    xs_lane[nt] = min(nt * 8 + g, p.n_tokens - 1) * p.x_tok_stride + t * 16;

  // The warp's items, in order: tile k, items warp, warp + 8, ... Each lane copies its own
  // index words (rows g, g + 8, quarter t) of the next items into the warp's ring with
  // cp.async and reads them back itself. The indices are in the GPU's tiled layout
  // (kernels/packed_layout.h): a unit's quarters of the tile's 16 rows lie in the order of the
  // ring, so each copy instruction of the warp reads 256 or 512 contiguous bytes. Rows past
  // the end are the layout's zero padding (their sums are discarded); units past the end are
  // zero-filled (index 0, against x = 0).
  const int n_mine = warp < p.n_items ? (p.n_items - warp + kGemvWarps - 1) / kGemvWarps : 0;
  uint8_t* ring = smem + p.xs_bytes + NGRP * sizeof(Shared) +
                 (grp * kGemvWarps + warp) * kStages<NTILE> * kStageBytes<BITS, G>;
  constexpr int kQ = BITS == 4 ? 16 : 8;               // part-1 bytes of a quarter
  constexpr int kBlock = gpu_tiled_unit_stride(BITS);  // a unit of the tile's 16 rows
  constexpr int kPart2 = kTileRows * gpu_tiled_part1(BITS);  // 3 bits: where part 2 starts
  // Fetch cursor: the next item to copy, and this lane's quarter in its tile's first unit.
  int f_left = n_mine * my_tiles, f_item = warp, f_tile = vblock;
  const uint8_t* f_base;
  auto f_set_base = [&]() {
    f_base = p.indices + int64_t(f_tile) * kTileRows * p.row_bytes + lane * kQ;
  };
  f_set_base();
  auto fetch = [&](int stage) {
    if (f_left <= 0) return;
    uint8_t* dst = ring + stage * kStageBytes<BITS, G> + lane * kQ;
    uint8_t* dst2 = ring + stage * kStageBytes<BITS, G> + G * 2 * 32 * 8 + lane * 4;  // 3 bits
    const int valid = p.n_units - f_item * G;  // units of this item inside the row
    const uint8_t* src = f_base + int64_t(f_item) * G * kBlock;
    const uint8_t* src2 = src - lane * kQ + kPart2 + lane * 4;  // 3 bits: part 2
    // The usual case (every unit inside the row): no zero-fill, one base address. Not for
    // the 4-bit NTILE 2 kernel: at its 128-register cap the path makes it spill.
    if ((BITS != 4 || NTILE == 1) && valid >= G) {
#pragma unroll
      for (int u = 0; u < G; u++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
          const int slot = (u * 2 + hr) * 32;
          cp_async_full<kQ>(dst + slot * kQ, src + u * kBlock + hr * 32 * kQ);
          if constexpr (BITS == 3)
            cp_async_full<4>(dst2 + slot * 4, src2 + u * kBlock + hr * 32 * 4);
        }
    } else {
#pragma unroll
      for (int u = 0; u < G; u++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
          const bool ok = u < valid;
          const int slot = (u * 2 + hr) * 32;
          const uint8_t* su = ok ? src + u * kBlock + hr * 32 * kQ : f_base;
          if constexpr (BITS == 4) {
            cp_async_16(dst + slot * 16, su, ok ? 16 : 0);
          } else {
            cp_async_8z(dst + slot * 8, su, ok ? 8 : 0);
            if constexpr (BITS == 3)
              cp_async_4z(dst2 + slot * 4, ok ? src2 + u * kBlock + hr * 32 * 4 : f_base,
                          ok ? 4 : 0);
          }
        }
    }
    f_left--;
    f_item += kGemvWarps;
    if (f_item >= p.n_items) {
      f_item = warp, f_tile += vgrid;
      f_set_base();
    }
  };
  auto read_quarter = [&](int stage, int u, int hr, uint32_t(&w)[QW]) {
    const uint8_t* src = ring + stage * kStageBytes<BITS, G>;
    const int slot = (u * 2 + hr) * 32 + lane;
    if constexpr (BITS == 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(src + slot * 16);
      w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(src + slot * 8);
      w[0] = v.x, w[1] = v.y;
      if constexpr (BITS == 3)
        w[2] = *reinterpret_cast<const uint32_t*>(src + G * 2 * 32 * 8 + slot * 4);
    }
  };

#pragma unroll
  for (int j = 0; j < kStages<NTILE> - 1; j++) {
    fetch(j);
    cp_async_commit();
  }
  TileMeta<BITS> meta;
  if (warp == kMetaWarp)
    gemv_store_meta<BITS, GRID>(gemv_load_meta<BITS>(p, vblock), sh, 0);
  if (tid < 128) sh.xs_perm[tid] = uint8_t(xs_offset<BITS>(tid));

  // Outliers of this lane's rows (o_row, o_row + 8 of each tile), a tile ahead: while tile k
  // runs, each row's entry o_lane of tile k + 1 and the row pointers of tile k + 2 are in
  // flight, so no DRAM latency is exposed at a tile's end (it was, once per tile, at 1 block
  // per SM: 8+ tokens).
  int rp_cur[4] = {0, 0, 0, 0}, rp_nxt[4] = {0, 0, 0, 0};  // [row k0, row k1] x 2 rows
  uint32_t oe_cur[2] = {0, 0}, oe_nxt[2] = {0, 0};         // entry `lane` (col | value << 16)
  auto load_rp = [&](int tile, int(&rp)[4]) {
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int r = tile * kTileRows + o_row + 8 * rr;
      rp[2 * rr] = __ldg(p.row_ptr + min(r, p.rows));
      rp[2 * rr + 1] = __ldg(p.row_ptr + min(r + 1, p.rows));
    }
  };
  auto load_csr = [&](const int(&rp)[4], uint32_t(&oe)[2]) {
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int kk = rp[2 * rr] + o_lane;
      oe[rr] = kk < rp[2 * rr + 1] ? __ldg(p.outliers + kk) : 0u;
    }
  };
  if (has_outliers) {
    load_rp(vblock, rp_cur);
    load_csr(rp_cur, oe_cur);
    if (my_tiles > 1) load_rp(vblock + vgrid, rp_nxt);
  }
  const StageShare share = stage_share<G>(p, place);  // this block's groups of x
  float nw_first[16];  // NORM: the norm weights of this thread's first group of x
  if constexpr (NORM) gemv_norm_w_first<G>(p, share, nw_first);
  // Everything above reads only the weights (index words, LUT, CSR row pointers, norm
  // weights): with PDL it overlaps the previous kernel; x and y belong to the earlier kernels
  // (kernels/pdl.cuh).
  pdl_wait();
  pdl_launch_dependents();
  if (n_cta > 1) cluster_wait();
  // (The norm staging's scratch: group 0's partial tiles, 8 floats per warp of the block.)
  if constexpr (NORM)
    gemv_stage_x_norm<BITS, G, kGemvThreads * NGRP>(
        p, xs, reinterpret_cast<float*>(smem + p.xs_bytes), nw_first, share);
  else if (p.n_chunks == 1)
    gemv_stage_x<BITS, G, kGemvThreads * NGRP>(p, xs, 0, share);
  // Both halves of x are in x_s once the cluster's barrier is passed; the peer writes no more
  // into this block's shared memory after it, so either block may leave before the other.
  if (n_cta > 1)
    cluster_sync();
  else
    __syncthreads();

  int stage = 0;  // ring stage of the warp's next item
  for (int k = 0; k < my_tiles; k++) {
    const int tile = vblock + k * vgrid, par = k & 1;
    if (warp == kMetaWarp && k + 1 < my_tiles) meta = gemv_load_meta<BITS>(p, tile + vgrid);
    LutPlanes<BITS> lut0, lut1;
    gemv_lut_planes<BITS, GRID>(sh.lut[par] + g * kLutRowBytes<BITS>, lut0);
    gemv_lut_planes<BITS, GRID>(sh.lut[par] + (g + 8) * kLutRowBytes<BITS>, lut1);
    int rp_nn[4] = {0, 0, 0, 0};
    if (has_outliers && k + 1 < my_tiles) {
      load_csr(rp_nxt, oe_nxt);
      if (k + 2 < my_tiles) load_rp(tile + 2 * vgrid, rp_nn);
    }

    float acc[2][NTILE][4];
    // GRID: the sums of x over the same columns (every row the same), two chains like acc.
    float ones[2][NTILE][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
      for (int nt = 0; nt < NTILE; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
          acc[a][nt][i] = 0.0f;
          ones[a][nt][i] = 0.0f;
        }

    // Outliers of rows o_row, o_row + 8 (before the items: x_s is staged for the whole tile, or
    // x is read from global; their latency then is not the last thing before the barrier):
    // lanes over entries, every token; at one token a quad sum per row into the accumulators
    // (o_sum), else one sum per (row, token) in sh.outl by a transposing warp reduction.
    // (The token loop stops at n_tokens: testing every one of the 8 or 16 cost ~50
    // instructions per tile at one token.) One token with x in shared memory (every decode
    // step) has its own straight-line path: the general one cost 141 warp instructions per
    // warp and tile there (ncu, 22016 x 4096, 3-bit 0.45%), a third of the item loop's.
    float o_sum[2] = {0.0f, 0.0f};  // one token: this warp's outlier sums of rows g, g + 8
    if (has_outliers && outl_own_rows && (NORM || p.n_chunks == 1)) {
      const uint16_t* xs_h = reinterpret_cast<const uint16_t*>(xs);
      // v += entry e times token 0's x (x_s at the column's decode-order offset); the same
      // operations in the same order as the general path, so the same bits
      auto add = [&](float& v, uint32_t e) {
        const int col = int(e & 0xffffu);
        v += h2f(uint16_t(e >> 16)) * h2f(xs_h[(col & ~127) + sh.xs_perm[col & 127]]);
      };
#pragma unroll
      for (int rr = 0; rr < 2; rr++) {
        const int k0 = rp_cur[2 * rr], k1 = rp_cur[2 * rr + 1];
        float v = 0.0f;
        if (k0 + o_lane < k1) add(v, oe_cur[rr]);
        for (int kk = k0 + 32 + o_lane; kk < k1; kk += 32) add(v, __ldg(p.outliers + kk));
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        o_sum[rr] = v + __shfl_xor_sync(0xffffffffu, v, 2);
      }
    } else if (has_outliers) {
      const int tok_stride_h = p.x_tok_stride / 2;
      const uint16_t* xs_h = reinterpret_cast<const uint16_t*>(xs);
      float s[2][NT8];
#pragma unroll
      for (int rr = 0; rr < 2; rr++) {
#pragma unroll
        for (int i = 0; i < NT8; i++) s[rr][i] = 0.0f;
        const int k0 = rp_cur[2 * rr], k1 = rp_cur[2 * rr + 1];
        auto add = [&](int col, float v) {
          if (NORM || p.n_chunks == 1) {
            const uint16_t* xc = xs_h + (col & ~127) + sh.xs_perm[col & 127];
            if (p.n_tokens == NT8) {  // a full tile of tokens (batch 8 or 16): no test per token
#pragma unroll
              for (int i = 0; i < NT8; i++) s[rr][i] += v * h2f(xc[i * tok_stride_h]);
            } else {
#pragma unroll
              for (int i = 0; i < NT8; i++) {
                if (i == p.n_tokens) break;
                s[rr][i] += v * h2f(xc[i * tok_stride_h]);
              }
            }
          } else {
#pragma unroll
            for (int i = 0; i < NT8; i++) {
              if (i == p.n_tokens) break;
              s[rr][i] += v * h2f(__ldg(p.x + int64_t(i) * p.cols + col));
            }
          }
        };
        auto add_entry = [&](uint32_t e) { add(int(e & 0xffffu), h2f(uint16_t(e >> 16))); };
        if (k0 + o_lane < k1) add_entry(oe_cur[rr]);
        for (int kk = k0 + 32 + o_lane; kk < k1; kk += 32) add_entry(__ldg(p.outliers + kk));
      }
      if (outl_own_rows) {
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
          float v = s[rr][0];
          v += __shfl_xor_sync(0xffffffffu, v, 1);
          o_sum[rr] = v + __shfl_xor_sync(0xffffffffu, v, 2);
        }
      } else {
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
          const float v = warp_transpose_sum<NT8>(s[rr], lane);
          const int tok = warp_transpose_index<NT8>(lane);
          const int row = warp + 8 * rr;
          if (tok >= 0 && tok < p.n_tokens)
            sh.outl[par][row][red_col<NTILE, COMPACT>(row, tok)] = v;
        }
      }
    }

    for (int c = 0; c < p.n_chunks; c++) {
      const int item0 = c * p.chunk_items, item1 = min(item0 + p.chunk_items, p.n_items);
      if (!NORM && NGRP == 1 && p.n_chunks > 1) {
        __syncthreads();  // everyone is done with the previous chunk
        gemv_stage_x<BITS, G, kGemvThreads>(p, xs, c, stage_share<G>(p, ClusterPlace{0, 1}));
        __syncthreads();
      }
      for (int item = item0 + warp; item < item1; item += kGemvWarps) {
        // Refill the stage read by the previous item, then wait for this item's copies.
        fetch(stage == 0 ? kStages<NTILE> - 1 : stage - 1);
        cp_async_commit();
        cp_async_wait<kStages<NTILE> - 1>();
        const int xs_item = (item - item0) * G * 256;
#pragma unroll
        for (int u = 0; u < G; u++) {
          uint32_t w0[QW], w1[QW], p0[16], p1[16];
          read_quarter(stage, u, 0, w0);
          read_quarter(stage, u, 1, w1);
          decode_quarter<BITS, GRID>(w0, lut0, p0);
          decode_quarter<BITS, GRID>(w1, lut1, p1);
#pragma unroll
          for (int m = 0; m < 8; m += 2) {
#pragma unroll
            for (int nt = 0; nt < NTILE; nt++) {
              const uint4 b =
                  *reinterpret_cast<const uint4*>(xs + xs_lane[nt] + xs_item + u * 256 + m * 32);
              mma_16816(acc[u & 1][nt], p0[2 * m], p1[2 * m], p0[2 * m + 1], p1[2 * m + 1], b.x,
                        b.y);
              mma_16816(acc[u & 1][nt], p0[2 * m + 2], p1[2 * m + 2], p0[2 * m + 3],
                        p1[2 * m + 3], b.z, b.w);
              if constexpr (GRID) {
                constexpr uint32_t k1 = 0x3c003c00u;  // fp16 1.0 pairs
                mma_16816(ones[u & 1][nt], k1, k1, k1, k1, b.x, b.y);
                mma_16816(ones[u & 1][nt], k1, k1, k1, k1, b.z, b.w);
              }
            }
          }
        }
        stage = stage + 1 == kStages<NTILE> ? 0 : stage + 1;
      }
    }

    // Sum the warps' partial tiles (fixed order), add the outliers, store. (One token: every
    // column of D is token 0; its outlier sums go into column 0.) GRID: the codes' sums
    // scaled by 2^(e+24) and the offset times the sum of x added first.
    if constexpr (GRID) {  // rows g: lut0's scale and offset, g + 8: lut1's
      const float s0 = __uint_as_float(lut0.hi[0]), s1 = __uint_as_float(lut1.hi[0]);
      const float o0 = __uint_as_float(lut0.hi[1]), o1 = __uint_as_float(lut1.hi[1]);
#pragma unroll
      for (int nt = 0; nt < NTILE; nt++) {
        float(&a0)[4] = acc[0][nt];
        const float(&a1)[4] = acc[1][nt];
        float x[4];
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] = ones[0][nt][i] + ones[1][nt][i];
        a0[0] = (a0[0] + a1[0]) * s0 + x[0] * o0, a0[1] = (a0[1] + a1[1]) * s0 + x[1] * o0;
        a0[2] = (a0[2] + a1[2]) * s1 + x[2] * o1, a0[3] = (a0[3] + a1[3]) * s1 + x[3] * o1;
        acc[1][nt][0] = acc[1][nt][1] = acc[1][nt][2] = acc[1][nt][3] = 0.0f;
      }
    }
    if (outl_own_rows && has_outliers) acc[0][0][0] += o_sum[0], acc[0][0][2] += o_sum[1];
#pragma unroll
    for (int nt = 0; nt < NTILE; nt++) {
      *reinterpret_cast<float2*>(
          &sh.red[par][warp][g][red_col<NTILE, COMPACT>(g, nt * 8 + 2 * t)]) =
          make_float2(acc[0][nt][0] + acc[1][nt][0], acc[0][nt][1] + acc[1][nt][1]);
      *reinterpret_cast<float2*>(
          &sh.red[par][warp][g + 8][red_col<NTILE, COMPACT>(g + 8, nt * 8 + 2 * t)]) =
          make_float2(acc[0][nt][2] + acc[1][nt][2], acc[0][nt][3] + acc[1][nt][3]);
    }
    if (warp == kMetaWarp && k + 1 < my_tiles)
      gemv_store_meta<BITS, GRID>(meta, sh, par ^ 1);
#pragma unroll
    for (int i = 0; i < 4; i++) rp_cur[i] = rp_nxt[i], rp_nxt[i] = rp_nn[i];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) oe_cur[rr] = oe_nxt[rr];
    group_sync();
    auto row_sum = [&](int rl, int tok) {
      const int c = red_col<NTILE, COMPACT>(rl, tok);
      float s = has_outliers && !outl_own_rows ? sh.outl[par][rl][c] : 0.0f;
#pragma unroll
      for (int w = 0; w < kGemvWarps; w++) s += sh.red[par][w][rl][c];
      return s;
    };
    if (p.swiglu_out) {  // rows rl and rl + 8 are gate and up of hidden unit 8 tile + rl
      if (tid < 8 * p.n_tokens) {
        const int rl = tid & 7, tok = tid >> 3, hidden = p.rows / 2;
        const float gate = row_sum(rl, tok), up = row_sum(rl + 8, tok);
        p.swiglu_out[int64_t(tok) * hidden + tile * 8 + rl] = f2h(gate / (1.0f + expf(-gate)) * up);
      }
    } else {
      const int rl = tid & 15, tok = tid >> 4, r = tile * kTileRows + rl;
      float out = 0.0f;
      if (tok < p.n_tokens && r < p.rows) {
        float* y = p.y + int64_t(tok) * p.rows + r;
        const float s = row_sum(rl, tok);
        out = p.accumulate ? *y + s : s;
        *y = out;
      }
      // The tile's sum of squares per token (the next norm's input): a 16-lane tree over
      // whole warps (lanes past the tokens add zeros).
      if (p.sumsq_out && warp * 2 < p.n_tokens) {
        float q = out * out;
#pragma unroll
        for (int o = 8; o >= 1; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
        if (rl == 0 && tok < p.n_tokens) p.sumsq_out[int64_t(tok) * p.n_tiles + tile] = q;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// GEMM kernel, n_tokens > 16
//
// Block tile BM rows x BN tokens, 8 warps as (BM / 16MT) x (BN / 8NT), warp tile 16MT x 8NT.
// K step = one 128-column unit. Per step: thread (row, quarters) decodes its BM/64 quarters of
// one row to natural-order fp16 in W_s, x [BN tokens][128 columns] arrives by cp.async into
// x_s (both double-buffered, rows padded to 272 bytes so ldmatrix is conflict-free), and the
// warps run 8 k16 steps of ldmatrix + mma.sync. The index words of step k+1 are loaded before
// the mma of step k and decoded in the middle of it (so the decode's integer work overlaps
// the tensor cores).
// Outliers: each lane owns the D fragments of 2MT rows x 2NT tokens and walks the CSR entries
// of its rows with one cursor per row (next entry prefetched); in step k it applies the
// entries with column in [128k, 128k+128) with x from x_s. CSR columns normally ascend within
// a row; an entry that comes after a larger column is applied late, with x read from global
// memory, so any order is correct. (This per-lane walk diverges across the 8 rows of a warp
// and is the slow part of this kernel: see kernels/NOTES_lut_gemv.md.)

constexpr int kGemmThreads = 256;
constexpr int kLds = 136;  // shared row stride in halves (272 bytes)

using GemmParams = LinearParams;

template <int BM, int BN>
constexpr size_t gemm_smem_bytes() {
  return size_t(2 * (BM + BN) * kLds) * sizeof(uint16_t);
}

template <int BITS, int BM, int BN, int MT, int NT>
__global__ void __launch_bounds__(kGemmThreads, 1) lut_gemm_kernel(const GemmParams p) {
  constexpr int WN = BN / (8 * NT);  // warps along tokens
  static_assert((BM / (16 * MT)) * WN == 8 && NT % 2 == 0, "8 warps, ldmatrix.x4 pairs of n-tiles");
  constexpr int QPT = BM / 64;  // quarters decoded per thread per step
  pdl_wait();  // kernels/pdl.cuh: nothing before this reads earlier kernels' outputs
  pdl_launch_dependents();
  constexpr int QW = kQuarterWords<BITS>;
  extern __shared__ __align__(16) uint8_t smem[];
  uint16_t* ws = reinterpret_cast<uint16_t*>(smem);  // [2][BM][kLds]
  uint16_t* xs = ws + 2 * BM * kLds;                 // [2][BN][kLds]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int wm = warp / WN, wn = warp % WN;
  const int row0 = blockIdx.x * BM, tok0 = blockIdx.y * BN;
  const bool has_outliers = p.row_ptr != nullptr;

  // Decoder job: one row, QPT consecutive quarters.
  const int d_row = tid / (4 / QPT), d_q0 = (tid % (4 / QPT)) * QPT;
  const int d_r = min(row0 + d_row, p.rows - 1);
  const LutPlanes<BITS> lut = load_lut<BITS>(p.lut, d_r);
  // The row's parts of unit 0 in the tiled layout; unit u's are gpu_tiled_unit_stride further.
  constexpr int kUnitStride = gpu_tiled_unit_stride(BITS);
  const GpuTiledRow d_parts = gpu_tiled_row(p.row_bytes, BITS, d_r);
  const uint8_t* d_p1 = p.indices + d_parts.part1;
  const uint8_t* d_p2 = p.indices + d_parts.part2;
  // Index words two steps ahead: raw_a / raw_b alternate (the step loop is unrolled by 2).
  uint32_t raw_a[QPT][QW], raw_b[QPT][QW];
  auto load_raw = [&](int unit, uint32_t(&raw)[QPT][QW]) {
#pragma unroll
    for (int q = 0; q < QPT; q++)
      load_quarter<BITS>(d_p1 + unit * kUnitStride, d_p2 + unit * kUnitStride, d_q0 + q, raw[q]);
  };
  auto decode_store = [&](int buf, int q, const uint32_t(&raw)[QPT][QW]) {
    uint32_t pr[16];
    decode_quarter<BITS>(raw[q], lut, pr);
    to_natural_order<BITS>(pr);
    uint4* dst = reinterpret_cast<uint4*>(ws + (buf * BM + d_row) * kLds + 32 * (d_q0 + q));
#pragma unroll
    for (int k = 0; k < 4; k++)
      dst[k] = make_uint4(pr[4 * k], pr[4 * k + 1], pr[4 * k + 2], pr[4 * k + 3]);
  };
  // x[tok0 .. tok0+BN)[128 unit .. +128) -> x_s[buf], zeros outside x.
  auto load_x = [&](int unit, int buf) {
    const int col_base = unit * 128;
    for (int i = tid; i < BN * 16; i += kGemmThreads) {
      const int tl = i >> 4, ch = i & 15, tok = tok0 + tl, col = col_base + 8 * ch;
      uint16_t* dst = xs + (buf * BN + tl) * kLds + 8 * ch;
      const uint16_t* src = p.x + int64_t(tok) * p.cols + col;
      if (p.x_vec) {
        const bool ok = tok < p.n_tokens && col < p.cols;
        cp_async_16(dst, ok ? src : p.x, ok ? 16 : 0);
      } else {
        uint32_t v[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
          const uint32_t lo = tok < p.n_tokens && col + 2 * k < p.cols ? src[2 * k] : 0u;
          const uint32_t hi = tok < p.n_tokens && col + 2 * k + 1 < p.cols ? src[2 * k + 1] : 0u;
          v[k] = lo | hi << 16;
        }
        *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NT; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

  // Outlier cursors of this lane's rows: slot s = (m-tile s/2, row g + 8 (s%2)); the column
  // and value of the next entry are loaded one entry ahead.
  int o_ptr[2 * MT] = {}, o_end[2 * MT] = {}, o_col[2 * MT];
  uint16_t o_val[2 * MT];
  auto next_outlier = [&](int s) {  // entry o_ptr[s], or none (column INT_MAX)
    const uint32_t e = o_ptr[s] < o_end[s] ? __ldg(p.outliers + o_ptr[s]) : 0u;
    o_col[s] = o_ptr[s] < o_end[s] ? int(e & 0xffffu) : INT_MAX;
    o_val[s] = uint16_t(e >> 16);
  };
#pragma unroll
  for (int s = 0; s < 2 * MT; s++) {
    const int r = row0 + wm * 16 * MT + 16 * (s / 2) + g + 8 * (s % 2);
    if (has_outliers && r < p.rows)
      o_ptr[s] = __ldg(p.row_ptr + r), o_end[s] = __ldg(p.row_ptr + r + 1);
    next_outlier(s);
  }

  load_raw(0, raw_a);
  load_x(0, 0);
  cp_async_commit();
#pragma unroll
  for (int q = 0; q < QPT; q++) decode_store(0, q, raw_a);
  if (p.n_units > 1) load_raw(1, raw_a);

  // Step kt: raw_next holds the index words of step kt + 1 (decoded during this step's mma
  // into W_s[buf ^ 1]); raw_after receives those of step kt + 2.
  auto step = [&](int kt, const uint32_t(&raw_next)[QPT][QW], uint32_t(&raw_after)[QPT][QW]) {
    const int buf = kt & 1;
    const bool more = kt + 1 < p.n_units;
    if (kt + 2 < p.n_units) load_raw(kt + 2, raw_after);
    cp_async_wait_all();
    __syncthreads();  // W_s[buf], x_s[buf] complete; everyone is done with buf ^ 1
    if (more) {
      load_x(kt + 1, buf ^ 1);
      cp_async_commit();
    }
    const uint16_t* wsb = ws + buf * BM * kLds;
    const uint16_t* xsb = xs + buf * BN * kLds;
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
      uint32_t a[MT][4], b[NT][2];
#pragma unroll
      for (int i = 0; i < MT; i++)
        ldmatrix_x4(a[i],
                    wsb + (wm * 16 * MT + 16 * i + (lane & 15)) * kLds + ks * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, xsb + (wn * 8 * NT + 8 * j + (lane & 7) + ((lane >> 4) << 3)) * kLds +
                           ks * 16 + ((lane >> 3) & 1) * 8);
        b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
          mma_16816(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
      // The next step's W tile, decoded between the mma steps.
      if (more && ks == 8 - 2 * QPT + 1) decode_store(buf ^ 1, 0, raw_next);
      if constexpr (QPT == 2)
        if (more && ks == 7) decode_store(buf ^ 1, 1, raw_next);
    }
    if (has_outliers) {  // this lane's rows' entries in columns [k0, k1), x from x_s
      const int k0 = kt * 128, k1 = k0 + 128;
#pragma unroll
      for (int s = 0; s < 2 * MT; s++) {
        while (o_col[s] < k1) {
          const int c = o_col[s];
          const float v = h2f(o_val[s]);
          o_ptr[s]++;
          next_outlier(s);
#pragma unroll
          for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
              const int tl = wn * 8 * NT + 8 * j + 2 * t + e;
              float xv;
              if (c >= k0) {
                xv = h2f(xsb[tl * kLds + (c - k0)]);
              } else {  // out-of-order entry: its window has passed
                xv = tok0 + tl < p.n_tokens ? h2f(p.x[int64_t(tok0 + tl) * p.cols + c]) : 0.0f;
              }
              acc[s / 2][j][2 * (s % 2) + e] += v * xv;
            }
        }
      }
    }
  };
  for (int kt = 0; kt < p.n_units; kt += 2) {
    step(kt, raw_a, raw_b);
    if (kt + 1 < p.n_units) step(kt + 1, raw_b, raw_a);
  }

#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int r = row0 + wm * 16 * MT + 16 * i + g + 8 * hh;
      if (r >= p.rows) continue;
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int tok = tok0 + wn * 8 * NT + 8 * j + 2 * t + e;
          if (tok < p.n_tokens) p.y[int64_t(tok) * p.rows + r] = acc[i][j][2 * hh + e];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Host side

struct DeviceInfo {
  int n_sms = 0, smem_optin = 0;
  bool clusters = false;  // thread block clusters (compute capability 9.0 and later)
};

std::mutex g_init_mutex;
uint64_t g_init_done = 0;  // bit d: device d initialised
DeviceInfo g_devices[64];

template <typename Kernel>
void allow_smem(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// A GEMV instantiation and the bytes of its GemvShared (per group), which its G decides.
template <bool NORM>
struct GemvVariant {
  void (*kernel)(GemvParamsOf<NORM>);
  int shared_bytes;
};

template <int BITS, int NTILE, int G, bool NORM, int NGRP, bool GRID>
GemvVariant<NORM> gemv_variant_of() {
  return {lut_gemv_kernel<BITS, NTILE, G, NORM, NGRP, GRID>,
          int(sizeof(GemvShared<NTILE, compact_red<NTILE, G>()>))};
}

// The GEMV instantiation for items of g units and ngrp groups of 8 warps: g = kItemUnits or
// 2 (3/2 bits), and 1 with two groups (choose_gemv). Launch, occupancy, the shared-memory
// limit and the plan's shared-memory size all take their kernel from here.
template <int BITS, int NTILE, bool NORM, bool GRID>
GemvVariant<NORM> gemv_variant(int g, int ngrp) {
  constexpr int G = kItemUnits<BITS>;
  if (g == G) return ngrp == 2 ? gemv_variant_of<BITS, NTILE, G, NORM, 2, GRID>()
                               : gemv_variant_of<BITS, NTILE, G, NORM, 1, GRID>();
  if (g == 2) return ngrp == 2 ? gemv_variant_of<BITS, NTILE, 2, NORM, 2, GRID>()
                               : gemv_variant_of<BITS, NTILE, 2, NORM, 1, GRID>();
  if (g == 1 && ngrp == 2) return gemv_variant_of<BITS, NTILE, 1, NORM, 2, GRID>();
  throw std::logic_error("lut_gemm_cuda: no GEMV kernel for items of " + std::to_string(g) +
                         " units in " + std::to_string(ngrp) + " groups");
}

// Every kernel gemv_variant gives for NTILE and NORM: G, G / 2, ..., 1 units per item (1 only
// with two groups).
template <int BITS, int NTILE, bool NORM, bool GRID>
void allow_smem_gemv(int smem) {
  for (int ngrp : {1, 2})
    for (int g = kItemUnits<BITS>; g >= (ngrp == 2 ? 1 : 2); g /= 2)
      allow_smem(gemv_variant<BITS, NTILE, NORM, GRID>(g, ngrp).kernel, smem);
}

template <int BITS, bool GRID>
void init_gemv(int smem) {
  allow_smem_gemv<BITS, 1, false, GRID>(smem);
  if constexpr (!GRID) allow_smem_gemv<BITS, 2, false, GRID>(smem);  // launch_bits
  allow_smem_gemv<BITS, 1, true, GRID>(smem);
}

template <int BITS>
void init_bits(int smem) {
  init_gemv<BITS, false>(smem);
  if constexpr (BITS == 4) init_gemv<BITS, true>(smem);  // lut_grid_used
  allow_smem(lut_gemm_kernel<BITS, 128, 128, 4, 4>, smem);
  allow_smem(lut_gemm_kernel<BITS, 64, 64, 2, 2>, smem);
}

const DeviceInfo& device_info() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) throw std::runtime_error("lut_gemm_cuda: device index out of range");
  std::lock_guard<std::mutex> lock(g_init_mutex);
  if (!(g_init_done >> dev & 1)) {
    DeviceInfo& d = g_devices[dev];
    CUDA_CHECK(cudaDeviceGetAttribute(&d.n_sms, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    d.clusters = major >= 9;
    init_bits<2>(d.smem_optin);
    init_bits<3>(d.smem_optin);
    init_bits<4>(d.smem_optin);
    g_init_done |= uint64_t(1) << dev;
  }
  return g_devices[dev];
}

template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t smem) {
  int n = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  return n;
}

LinearParams linear_params(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y) {
  LinearParams p{};
  p.indices = w.indices, p.row_bytes = w.row_bytes, p.lut = w.lut;
  p.row_ptr = w.nnz > 0 ? w.row_ptr : nullptr, p.outliers = w.outliers;
  p.x = x, p.y = y, p.rows = w.rows, p.cols = w.cols, p.n_tokens = n_tokens;
  p.n_units = (w.cols + kUnitCols - 1) / kUnitCols;
  p.x_vec = w.cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  return p;
}

// The GEMV launch launch_gemv makes: g (units per item), ngrp (groups of 8 warps), its
// parameters, shared memory and blocks per SM.
template <bool NORM>
struct GemvPlan {
  int g = 0, ngrp = 1;
  GemvParamsOf<NORM> p{};
  size_t smem = 0;
  int blocks = 0;
};

// The plan of gemv_variant(g, ngrp); blocks = 0 where it cannot run (two groups when x needs
// chunks or the block does not fit).
template <int BITS, int NTILE, bool NORM, bool GRID>
GemvPlan<NORM> plan_gemv(int g, int ngrp, const PackedMatrix& w, const uint16_t* x, int n_tokens,
                         float* y, const LutGemmFusion& f, const DeviceInfo& dev) {
  const GemvVariant<NORM> v = gemv_variant<BITS, NTILE, NORM, GRID>(g, ngrp);
  GemvPlan<NORM> c;
  c.g = g, c.ngrp = ngrp;
  GemvParamsOf<NORM>& p = c.p;
  static_cast<LinearParams&>(p) = linear_params(w, x, n_tokens, y);
  if constexpr (GRID) p.lut = reinterpret_cast<const uint16_t*>(w.grid);  // same bytes per row
  p.accumulate = f.accumulate, p.swiglu_out = f.swiglu_out, p.sumsq_out = f.sumsq_out;
  if constexpr (NORM)
    p.norm_x = f.norm_x, p.norm_w = f.norm_w, p.norm_sumsq = f.norm_sumsq, p.norm_eps = f.norm_eps;
  p.n_items = (p.n_units + g - 1) / g;
  p.n_tiles = (w.rows + kTileRows - 1) / kTileRows;

  const int fixed = ngrp * (v.shared_bytes +
                            kGemvWarps * kStages<NTILE> * g * kStageBytes<BITS, 1>);
  const int item_bytes = g * kUnitCols * 2;  // x_s bytes per token per item
  auto xs_bytes = [&](int items) { return n_tokens * (items * item_bytes + 64); };
  p.chunk_items = p.n_items;
  if (xs_bytes(p.n_items) + fixed > dev.smem_optin) {
    // Chunks: a multiple of the warp count so that every chunk starts at item w for warp w.
    int items = ((dev.smem_optin - fixed) / n_tokens - 64) / item_bytes;
    items = std::max(kGemvWarps, items / kGemvWarps * kGemvWarps);
    if (items < p.n_items) p.chunk_items = items;
  }
  p.n_chunks = (p.n_items + p.chunk_items - 1) / p.chunk_items;
  p.x_tok_stride = p.chunk_items * item_bytes + 64;  // == 64 mod 128: conflict-free B loads
  p.xs_bytes = (xs_bytes(p.chunk_items) + 15) / 16 * 16;
  c.smem = size_t(p.xs_bytes) + fixed;
  if (ngrp > 1 && (p.n_chunks > 1 || c.smem > size_t(dev.smem_optin))) return c;
  if (c.smem > size_t(dev.smem_optin))
    throw std::runtime_error("lut_gemm_cuda: x does not fit in shared memory (" +
                             std::to_string(c.smem) + " bytes)");
  const int n = blocks_per_sm(v.kernel, kGemvThreads * ngrp, c.smem);
  c.blocks = ngrp > 1 ? n : std::max(n, 1);
  return c;
}

// 3/2 bits: items of 4 units (fewer per-item overheads) unless x leaves room for only one
// block per SM or needs chunks, and items of 2 units (half the ring) fix that: at 8 tokens,
// x of 64 KB at K = 4096 (2 blocks per SM instead of 1) or 172 KB at K = 11008 (one chunk
// instead of two). Measured: tg128 batch 8 on LLaMA-7B 3-bit 5.05 -> 3.75 ms per step. Not
// otherwise: at one token, 3 blocks of G = 2 against 2 of G = 4 (down, K = 11008) was 20% slower.
template <int BITS, int NTILE, bool NORM, bool GRID>
GemvPlan<NORM> choose_gemv(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                           const LutGemmFusion& f, const DeviceInfo& dev) {
  constexpr int G = kItemUnits<BITS>;
  auto plan = [&](int g, int ngrp) {
    return plan_gemv<BITS, NTILE, NORM, GRID>(g, ngrp, w, x, n_tokens, y, f, dev);
  };
  GemvPlan<NORM> a = plan(G, 1);
  if (G != 2 && (a.blocks == 1 || a.p.n_chunks > 1)) {  // else there is nothing G = 2 could improve
    const GemvPlan<NORM> b = plan(2, 1);
    if ((a.blocks == 1 && b.blocks > 1) || (a.p.n_chunks > 1 && b.p.n_chunks == 1)) a = b;
  }
  // Two groups of 8 warps per block sharing x_s (the largest G that fits; G = 1 only where
  // neither 4 nor 2 does), taken when it runs more warps per SM than the plan above: that
  // one has a single block of 8 warps because of x (9..16 tokens at K = 4096, 8 at K =
  // 11008). H100 A/B, 3-bit 0.45%, us: 16 tokens 22016 x 4096 38.6 -> 32.1, 4096 x 4096 10.6
  // -> 8.8; 8 tokens 4096 x 11008 16.2 -> 13.3 (G = 1). Where one group already has two
  // blocks per SM (up to 8 tokens at K = 4096, one token at any K) two groups were slower: 7B
  // 3-bit b1 1.889 -> 2.008 ms, b8 2.383 -> 2.536 (kernels/NOTES_lut_gemv.md section 2).
  // SQZ_GEMV_GROUPS=1 or 2 in the environment forces one or the other where it can run (for
  // tests and measurements).
  const char* env = std::getenv("SQZ_GEMV_GROUPS");
  const int want = env ? std::atoi(env) : 0;
  if (want == 1) return a;
  GemvPlan<NORM> c;
  for (int g = G; g >= 1 && c.blocks == 0; g /= 2) c = plan(g, 2);
  if (c.blocks == 0) return a;
  if (want == 2 || 2 * c.blocks > a.blocks) return c;
  return a;
}

// Blocks in clusters of two that share one staging of x (half each, stored into both blocks'
// x_s), or 1. Every block reads the whole of x from L2 right after the previous kernel ends
// (kernels/NOTES_lut_gemv.md section 7, 0c); a pair reads it once, but starts only when two
// SMs have room, and waits at a cluster barrier for the slower half. SQZ_GEMV_CLUSTER in the
// environment: 0 never, 1 wherever the pairs can run (the blocks single groups with x in one
// piece, an even grid, sm_90), unset: there when x has at least kGemvClusterMinXBytes (64 KB:
// 8 tokens at 4096 columns). H100, 7B tg128 ms per step, three rounds in one run, never /
// always / this rule: 3-bit b1 1.851 / 1.872 / 1.851, b2 2.139 / 2.178 / 2.141, b4 2.281 /
// 2.291 / 2.274, b8 2.377 / 2.340 / 2.341; 4-bit b1 2.413 / 2.422 / 2.415, b8 2.865 / 2.858 /
// 2.869. GEMV alone, 3-bit 0.45%: 22016 x 4096 at 1 token 19.87 -> 20.62 us, at 8 25.90 ->
// 24.50; 4096 x 4096 at 1 5.75 -> 6.43, at 8 8.05 -> 7.80.
thread_local int g_last_cluster = 0;  // lut_gemm_cuda_last_cluster
constexpr int kGemvClusterMinXBytes = 65536;

template <bool NORM>
int gemv_cluster(const GemvPlan<NORM>& c, int grid, const DeviceInfo& dev) {
  if (!dev.clusters || c.ngrp != 1 || c.p.n_chunks != 1 || grid % 2 != 0) return 1;
  const char* env = std::getenv("SQZ_GEMV_CLUSTER");
  if (env) return std::atoi(env) == 0 ? 1 : 2;
  const int64_t x_bytes = int64_t(c.p.n_tokens) * c.p.cols * (NORM ? 4 : 2);
  return x_bytes >= kGemvClusterMinXBytes ? 2 : 1;
}

template <int BITS, bool GRID, int NTILE, bool NORM = false>
void launch_gemv(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                 const LutGemmFusion& f, cudaStream_t stream, const DeviceInfo& dev) {
  const GemvPlan<NORM> c = choose_gemv<BITS, NTILE, NORM, GRID>(w, x, n_tokens, y, f, dev);
  if (NORM && c.p.n_chunks > 1)
    throw std::invalid_argument("lut_gemm_cuda: the norm fusion needs x (" +
                                std::to_string(n_tokens) + " x " + std::to_string(w.cols) +
                                ") in shared memory in one piece (lut_gemm_cuda_norm_fusable)");
  const int grid = std::min((c.p.n_tiles + c.ngrp - 1) / c.ngrp, dev.n_sms * c.blocks);
  g_last_cluster = gemv_cluster(c, grid, dev);
  launch_pdl_cluster(gemv_variant<BITS, NTILE, NORM, GRID>(c.g, c.ngrp).kernel, grid,
                     kGemvThreads * c.ngrp, c.smem, stream, g_last_cluster, c.p);
}

// Whether the GEMV decodes w's grid rows (kernels/lut_grid.h): w.grid set, 4 bits
// (lut_grid_used), and not turned off by SQZ_GEMV_GRID=0 in the environment (for A/B
// measurements and tests).
bool gemv_grid(const PackedMatrix& w) {
  if (!w.grid || !lut_grid_used(w.bits)) return false;
  const char* env = std::getenv("SQZ_GEMV_GRID");
  return !env || std::atoi(env) != 0;
}

// Whether the norm variant launch_gemv would launch has x in one chunk.
template <int BITS, bool GRID>
bool norm_one_chunk(const PackedMatrix& w, int n_tokens, const DeviceInfo& dev) {
  const LutGemmFusion f;
  return choose_gemv<BITS, 1, true, GRID>(w, nullptr, n_tokens, nullptr, f, dev).p.n_chunks == 1;
}

template <int BITS, int BM, int BN, int MT, int NT>
void launch_gemm_tile(const GemmParams& p, cudaStream_t stream) {
  const size_t smem = gemm_smem_bytes<BM, BN>();
  const dim3 grid((p.rows + BM - 1) / BM, (p.n_tokens + BN - 1) / BN);
  if (grid.y > 65535) throw std::runtime_error("lut_gemm_cuda: too many tokens");
  launch_pdl(lut_gemm_kernel<BITS, BM, BN, MT, NT>, grid, kGemmThreads, smem, stream, p);
}

template <int BITS>
void launch_gemm(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                 cudaStream_t stream, const DeviceInfo& dev) {
  const GemmParams p = linear_params(w, x, n_tokens, y);
  // 128 x 128 tiles when they make nearly a wave, else 64 x 64.
  const int64_t big_blocks = int64_t((w.rows + 127) / 128) * ((n_tokens + 127) / 128);
  if (big_blocks * 4 >= int64_t(dev.n_sms) * 3)
    launch_gemm_tile<BITS, 128, 128, 4, 4>(p, stream);
  else
    launch_gemm_tile<BITS, 64, 64, 2, 2>(p, stream);
}

template <int BITS, bool GRID>
void launch_bits(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                 const LutGemmFusion& f, cudaStream_t stream, const DeviceInfo& dev) {
  if (f.norm_x) {
    launch_gemv<BITS, GRID, 1, true>(w, x, n_tokens, y, f, stream, dev);
  } else if (n_tokens <= kGemvChunkTokens) {
    launch_gemv<BITS, GRID, 1>(w, x, n_tokens, y, f, stream, dev);
  } else if (n_tokens <= kMaxGemvTokens) {
    // Pieces of at most 16 tokens (sizes differing by at most one), one launch each: NTILE 2
    // for 9..16 when x of the piece fits the shared memory in one chunk, else pieces of at
    // most 8 on NTILE 1 (restaging x per tile and chunk costs more than a second launch: H100,
    // 4096 x 11008 3-bit, 16 tokens: 74.3 us in one launch, 38.7 us in two). x, y and the
    // fusions' outputs are per token.
    const int p16 = (n_tokens + kMaxNtile2Tokens - 1) / kMaxNtile2Tokens;
    const int n16 = (n_tokens + p16 - 1) / p16;  // the largest piece of 16-token pieces
    const bool fits = n16 <= kGemvChunkTokens ||
                      choose_gemv<BITS, 2, false, false>(w, x, n16, y, f, dev).p.n_chunks == 1;
    const int piece = fits ? kMaxNtile2Tokens : kGemvChunkTokens;
    const int n_pieces = (n_tokens + piece - 1) / piece;
    const int n_tiles = (w.rows + kTileRows - 1) / kTileRows;
    for (int c = 0, t0 = 0; c < n_pieces; c++) {
      const int n = n_tokens / n_pieces + (c < n_tokens % n_pieces ? 1 : 0);
      LutGemmFusion fc = f;
      if (fc.swiglu_out) fc.swiglu_out += int64_t(t0) * (w.rows / 2);
      if (fc.sumsq_out) fc.sumsq_out += int64_t(t0) * n_tiles;
      const uint16_t* xc = x + int64_t(t0) * w.cols;
      float* yc = y ? y + int64_t(t0) * w.rows : y;
      if (n <= kGemvChunkTokens)
        launch_gemv<BITS, GRID, 1>(w, xc, n, yc, fc, stream, dev);
      else  // fp16 entries: the grid's second mma made the 16-token kernels spill
        launch_gemv<BITS, false, 2>(w, xc, n, yc, fc, stream, dev);
      t0 += n;
    }
  } else {
    launch_gemm<BITS>(w, x, n_tokens, y, stream, dev);
  }
}

}  // namespace

void lut_gemm_cuda_init() { device_info(); }

bool lut_gemm_cuda_norm_fusable(const PackedMatrix& w, int n_tokens) {
  if (n_tokens < 1 || n_tokens > kLutGemvNormMaxTokens || w.bits < 2 || w.bits > 4 || w.cols <= 0)
    return false;
  const DeviceInfo& dev = device_info();
  if (w.bits == 2) return norm_one_chunk<2, false>(w, n_tokens, dev);
  if (w.bits == 3) return norm_one_chunk<3, false>(w, n_tokens, dev);
  return gemv_grid(w) ? norm_one_chunk<4, true>(w, n_tokens, dev)
                      : norm_one_chunk<4, false>(w, n_tokens, dev);
}

void lut_gemm_cuda(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                   cudaStream_t stream) {
  lut_gemm_cuda(w, x, n_tokens, y, stream, LutGemmFusion{});
}

int lut_gemm_cuda_last_cluster() { return g_last_cluster; }

void lut_gemm_cuda(const PackedMatrix& w, const uint16_t* x, int n_tokens, float* y,
                   cudaStream_t stream, const LutGemmFusion& f) {
  if (w.bits < 2 || w.bits > 4)
    throw std::invalid_argument("lut_gemm_cuda: bits must be 2, 3 or 4, got " +
                                std::to_string(w.bits));
  if (w.rows < 0 || w.cols <= 0 || n_tokens < 0)
    throw std::invalid_argument("lut_gemm_cuda: bad shape rows " + std::to_string(w.rows) +
                                " cols " + std::to_string(w.cols) + " tokens " +
                                std::to_string(n_tokens));
  if (w.row_bytes != packed_row_bytes(w.cols, w.bits))
    throw std::invalid_argument("lut_gemm_cuda: row_bytes " + std::to_string(w.row_bytes) +
                                " != packed_row_bytes " +
                                std::to_string(packed_row_bytes(w.cols, w.bits)));
  if (reinterpret_cast<uintptr_t>(w.indices) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.lut) % 8 != 0 || reinterpret_cast<uintptr_t>(w.grid) % 16 != 0)
    throw std::invalid_argument(
        "lut_gemm_cuda: indices and grid must be 16-byte and lut 8-byte aligned");
  check_gpu_outliers(w, "lut_gemm_cuda");
  const bool fused = f.accumulate || f.swiglu_out || f.norm_x || f.sumsq_out;
  if (fused && n_tokens > kLutGemvMaxTokens)
    throw std::invalid_argument(
        "lut_gemm_cuda: fusions need n_tokens <= " + std::to_string(kLutGemvMaxTokens) + ", got " +
        std::to_string(n_tokens));
  if (f.swiglu_out && (w.rows % 16 != 0 || f.accumulate))
    throw std::invalid_argument(
        "lut_gemm_cuda: fused SwiGLU needs rows % 16 == 0 (gate/up "
        "interleaved by 8), got " +
        std::to_string(w.rows) + " rows, and no accumulate");
  if (f.norm_x && (!f.norm_w || !f.norm_sumsq || n_tokens > kLutGemvNormMaxTokens))
    throw std::invalid_argument("lut_gemm_cuda: the norm fusion needs norm_x, norm_w and "
                                "norm_sumsq, and n_tokens <= " +
                                std::to_string(kLutGemvNormMaxTokens));
  if (f.sumsq_out && f.swiglu_out)
    throw std::invalid_argument("lut_gemm_cuda: sumsq_out and swiglu_out together");
  const DeviceInfo& dev = device_info();
  if (n_tokens == 0 || w.rows == 0) return;
  const bool grid = gemv_grid(w);
  switch (w.bits) {
    case 2:
      launch_bits<2, false>(w, x, n_tokens, y, f, stream, dev);
      break;
    case 3:
      launch_bits<3, false>(w, x, n_tokens, y, f, stream, dev);
      break;
    default:
      if (grid)
        launch_bits<4, true>(w, x, n_tokens, y, f, stream, dev);
      else
        launch_bits<4, false>(w, x, n_tokens, y, f, stream, dev);
      break;
  }
}

}  // namespace sqz
