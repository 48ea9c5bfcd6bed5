// CPU kernels against plain loops over odd shapes: dense matmul (F32/F16/BF16), packed LUT +
// CSR matmul vs its dense reconstruction, index pack/unpack round trip for every bit width.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/half.h"
#include "kernels/lut_gemv.h"
#include "kernels/lut_grid.h"
#include "kernels/matmul.h"
#include "kernels/packed_layout.h"
#include "kernels/parallel.h"
#include "model/dtype.h"

namespace sqz {
namespace {

constexpr float kF32Tol = 1e-4f;  // relative to the row's |w|.|x| sum

std::vector<float> randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& ref,
                  const std::vector<double>& scale) {
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 10; i++)
    if (!(std::fabs(got[i] - ref[i]) <= kF32Tol * (scale[i] + 1e-6)))
      ADD_FAILURE() << "element " << i << ": " << got[i] << " vs " << ref[i], bad++;
}

struct Shape {
  int rows, cols, tokens;
};
const Shape kShapes[] = {{1, 1, 1}, {7, 13, 3}, {33, 129, 2}, {64, 1000, 5}, {130, 257, 1}};

TEST(Matmul, AllTypesOddShapes) {
  ThreadPool pool(3);
  std::mt19937 rng(1);
  for (Shape s : kShapes) {
    for (MatType t : {MatType::F32, MatType::F16, MatType::BF16}) {
      std::vector<float> w = randn(size_t(s.rows) * s.cols, rng), x = randn(size_t(s.tokens) * s.cols, rng);
      std::vector<uint16_t> w16(w.size());
      for (size_t i = 0; i < w.size(); i++) {
        w16[i] = t == MatType::F16 ? f32_to_f16(w[i]) : f32_to_bf16(w[i]);
        w[i] = t == MatType::F16 ? f16_to_f32(w16[i]) : t == MatType::BF16 ? bf16_to_f32(w16[i]) : w[i];
      }
      std::vector<double> ref(size_t(s.tokens) * s.rows), scale(ref.size());
      for (int tk = 0; tk < s.tokens; tk++)
        for (int r = 0; r < s.rows; r++)
          for (int c = 0; c < s.cols; c++) {
            ref[tk * s.rows + r] += double(w[size_t(r) * s.cols + c]) * x[size_t(tk) * s.cols + c];
            scale[tk * s.rows + r] += std::fabs(double(w[size_t(r) * s.cols + c]) * x[size_t(tk) * s.cols + c]);
          }
      std::vector<float> y(ref.size(), NAN);
      const void* wp = t == MatType::F32 ? (const void*)w.data() : (const void*)w16.data();
      matmul(t, wp, s.rows, s.cols, x.data(), s.tokens, y.data(), pool);
      expect_close(y, ref, scale);
    }
  }
}

TEST(PackedLayout, RoundTripEveryBitWidth) {
  std::mt19937 rng(2);
  for (int bits : {2, 3, 4})
    for (int cols : {1, 5, 127, 128, 129, 300, 1000}) {
      const int rows = 3;
      std::vector<uint8_t> idx(size_t(rows) * cols);
      for (auto& v : idx) v = uint8_t(rng() % (1u << bits));
      std::vector<uint8_t> packed(size_t(packed_row_bytes(cols, bits)) * rows);
      pack_indices(idx.data(), rows, cols, bits, packed.data());
      for (int r = 0; r < rows; r++) {
        std::vector<uint8_t> back(cols);
        unpack_row(packed.data() + r * packed_row_bytes(cols, bits), cols, bits, back.data());
        for (int c = 0; c < cols; c++)
          ASSERT_EQ(back[c], idx[size_t(r) * cols + c]) << "bits " << bits << " col " << c;
      }
    }
}

TEST(PackedLayout, BitOrderMatchesThePicture) {
  // 4-bit: column 9 is nibble 1 of lane 1 of word 0.
  std::vector<uint8_t> idx(128, 0);
  idx[9] = 0xA;
  std::vector<uint8_t> p(64);
  pack_indices(idx.data(), 1, 128, 4, p.data());
  EXPECT_EQ(packed_lane(p.data(), 0, 1), 0xAu << 4);
  // 3-bit: column 70 = quarter 2, column 6: index 5 in nibble 3 of lane A (word 1, lane 0).
  // Column 123 = quarter 3, column 27 = 17 + 2 * 5: index 6 (0b110) in the msbs of nibble 5 of
  // lanes B (word 1, lane 3, bit 1) and C (word 2, lane 3, bit 2).
  idx.assign(128, 0);
  idx[70] = 5;
  idx[123] = 6;
  p.assign(48, 0);
  pack_indices(idx.data(), 1, 128, 3, p.data());
  EXPECT_EQ(packed_lane(p.data(), 1, 0), 5u << 12);
  EXPECT_EQ(packed_lane(p.data(), 1, 2), 0u);
  EXPECT_EQ(packed_lane(p.data(), 1, 3), 1u << 23);
  EXPECT_EQ(packed_lane(p.data(), 2, 3), 1u << 23);
  EXPECT_EQ(packed_lane(p.data(), 0, 0) | packed_lane(p.data(), 2, 2), 0u);
}

// The GPU's tiled copy: every byte of every row's unit where gpu_tiled_offset says, each
// place used once, the padding rows zero; and quarter t of tile row 8 h + g at (32 h + 4 g +
// t) * Q of its unit's block (part 2 for 3 bits: * 4 after 16 rows * 32 bytes), the order in
// which the GEMV's lane (g, t) copies it.
TEST(PackedLayout, GpuTiledCopy) {
  std::mt19937 rng(11);
  for (int bits : {2, 3, 4})
    for (int rows : {1, 15, 16, 17, 40})
      for (int cols : {100, 300}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + " rows " + std::to_string(rows) +
                     " cols " + std::to_string(cols));
        const int64_t rb = packed_row_bytes(cols, bits);
        std::vector<uint8_t> src(size_t(rows * rb));
        for (auto& v : src) v = uint8_t(1 + rng() % 255);  // no zero byte
        const int64_t n = gpu_tiled_bytes(rows, rb);
        ASSERT_EQ(n, (rows + 15) / 16 * 16 * rb);
        std::vector<uint8_t> dst(size_t(n), 0xEE);
        to_gpu_tiled(src.data(), rows, rb, bits, dst.data());
        std::vector<int> used(size_t(n), 0);
        const int ub = 16 * bits, n_units = int(rb / ub);
        for (int r = 0; r < rows; r++)
          for (int u = 0; u < n_units; u++)
            for (int b = 0; b < ub; b++) {
              const int64_t o = gpu_tiled_offset(rb, bits, r, u, b);
              ASSERT_TRUE(o >= 0 && o < n);
              EXPECT_EQ(dst[o], src[r * rb + u * ub + b]);
              used[o]++;
            }
        int64_t zeros = 0;
        for (int64_t o = 0; o < n; o++) {
          ASSERT_LE(used[o], 1);
          if (!used[o]) zeros += dst[o] == 0;
        }
        EXPECT_EQ(zeros, n - int64_t(rows) * rb);  // every unused byte is zero padding
        const int q = bits == 4 ? 16 : 8;
        for (int r = 0; r < std::min(rows, 16); r++)
          for (int t = 0; t < 4; t++) {
            const int h = r / 8, g = r % 8, u = n_units - 1;
            const int64_t block = gpu_tiled_offset(rb, bits, 0, u, 0);
            EXPECT_EQ(gpu_tiled_offset(rb, bits, r, u, q * t), block + (32 * h + 4 * g + t) * q);
            if (bits == 3) {
              EXPECT_EQ(gpu_tiled_offset(rb, bits, r, u, 32 + 4 * t),
                        block + 16 * 32 + (32 * h + 4 * g + t) * 4);
            }
          }
      }
}

// A random packed matrix with `per_row(r)` outliers in row r.
struct RandomPacked {
  PackedMatrix m;
  std::vector<uint8_t> packed;
  std::vector<uint16_t> lut, values;
  std::vector<int32_t> row_ptr, col_idx;
  RandomPacked(int rows, int cols, int bits, int max_outliers, std::mt19937& rng) {
    std::vector<uint8_t> idx(size_t(rows) * cols);
    for (auto& v : idx) v = uint8_t(rng() % (1u << bits));
    packed.resize(size_t(packed_row_bytes(cols, bits)) * rows);
    pack_indices(idx.data(), rows, cols, bits, packed.data());
    std::normal_distribution<float> d;
    for (int i = 0; i < rows << bits; i++) lut.push_back(f32_to_f16(d(rng)));
    row_ptr.push_back(0);
    for (int r = 0; r < rows; r++) {
      int n = max_outliers ? int(rng() % (max_outliers + 1)) : 0;
      if (r == 0) n = std::min(cols, max_outliers);  // the most in the first row
      std::vector<int> cs;
      for (int c = 0; c < cols; c++) cs.push_back(c);
      std::shuffle(cs.begin(), cs.end(), rng);
      cs.resize(std::min(n, cols));
      std::sort(cs.begin(), cs.end());
      for (int c : cs) col_idx.push_back(c), values.push_back(f32_to_f16(d(rng) * 4));
      row_ptr.push_back(int32_t(col_idx.size()));
    }
    m.rows = rows, m.cols = cols, m.bits = bits, m.indices = packed.data();
    m.row_bytes = packed_row_bytes(cols, bits), m.lut = lut.data(), m.row_ptr = row_ptr.data();
    m.col_idx = col_idx.data(), m.values = values.data(), m.nnz = int64_t(values.size());
  }
};

TEST(LutGemm, MatchesDenseReconstruction) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  for (int bits : {2, 3, 4})
    for (Shape s : kShapes)
      for (int outl : {0, 1, 17}) {
        RandomPacked p(s.rows, s.cols, bits, outl, rng);
        std::vector<float> x = randn(size_t(s.tokens) * s.cols, rng);
        // reference: dense W from the unpacked indices and LUT, plus the CSR entries
        std::vector<double> w(size_t(s.rows) * s.cols);
        std::vector<uint8_t> idx(s.cols);
        for (int r = 0; r < s.rows; r++) {
          unpack_row(p.packed.data() + r * p.m.row_bytes, s.cols, bits, idx.data());
          for (int c = 0; c < s.cols; c++)
            w[size_t(r) * s.cols + c] = f16_to_f32(p.lut[(size_t(r) << bits) + idx[c]]);
          for (int k = p.row_ptr[r]; k < p.row_ptr[r + 1]; k++)
            w[size_t(r) * s.cols + p.col_idx[k]] += f16_to_f32(p.values[k]);
        }
        std::vector<double> ref(size_t(s.tokens) * s.rows), scale(ref.size());
        for (int t = 0; t < s.tokens; t++)
          for (int r = 0; r < s.rows; r++)
            for (int c = 0; c < s.cols; c++) {
              ref[t * s.rows + r] += w[size_t(r) * s.cols + c] * x[size_t(t) * s.cols + c];
              scale[t * s.rows + r] += std::fabs(w[size_t(r) * s.cols + c] * x[size_t(t) * s.cols + c]);
            }
        std::vector<float> y(ref.size(), NAN);
        lut_gemm(p.m, x.data(), s.tokens, y.data(), pool);
        expect_close(y, ref, scale);
      }
}

TEST(LutGemm, PackOutliersForTheGpu) {
  const std::vector<int32_t> col = {0, 7, kLutGpuMaxCols - 1};
  const std::vector<uint16_t> val = {0x3c00, 0xbc00, 0x7bff};
  std::vector<uint32_t> w(3);
  pack_outliers(col.data(), val.data(), 3, w.data());
  EXPECT_EQ(w, (std::vector<uint32_t>{0x3c000000u, 0xbc000007u, 0x7bffffffu}));
  const std::vector<int32_t> wide = {kLutGpuMaxCols};
  EXPECT_THROW(pack_outliers(wide.data(), val.data(), 1, w.data()), std::invalid_argument);
}

// A grid row's entries, rebuilt as the GEMV does: code 2^-24 * scale + offset, in double
// (exact: every term is a short binary fraction).
std::vector<double> grid_values(const uint8_t* row, int bits) {
  const int k = 1 << bits;
  float scale, offset;
  std::memcpy(&scale, row + k, 4);
  std::memcpy(&offset, row + k + 4, 4);
  std::vector<double> v(k);
  for (int j = 0; j < k; j++) v[j] = std::ldexp(double(row[j]), -24) * scale + offset;
  return v;
}

TEST(LutGrid, RowOnAGridRebuildsExactly) {
  // 3 bits: -1.5 + 0.25 j (z = -6, e = -2): codes 0, 1, .., 7
  uint16_t lut[16];
  for (int j = 0; j < 8; j++) lut[j] = f32_to_f16(-1.5f + 0.25f * j);
  uint8_t row[32];
  ASSERT_TRUE(lut_grid_row(lut, 3, row));
  for (int j = 0; j < 8; j++) EXPECT_EQ(row[j], j);
  float scale, offset;
  std::memcpy(&scale, row + 8, 4);
  std::memcpy(&offset, row + 12, 4);
  EXPECT_EQ(scale, std::ldexp(1.0f, 22));
  EXPECT_EQ(offset, -1.5f);
  // The widest grid: 0 and 255 steps of a tiny subnormal (e = -24) up to the largest fp16 run.
  for (int bits : {3, 4}) {
    const int k = 1 << bits;
    std::mt19937 rng(bits);
    for (int e : {-24, -20, -10, 0, 5}) {
      for (int trial = 0; trial < 50; trial++) {
        const int z = int(rng() % 1024) - 512;
        std::vector<uint16_t> l(k);
        for (int j = 0; j < k; j++) {
          const int code = j == 0 ? 0 : j == 1 ? 255 : int(rng() % 256);
          const double v = std::ldexp(double(code + z), e);
          l[j] = f32_to_f16(float(v));
          ASSERT_EQ(double(f16_to_f32(l[j])), v) << "test value not an fp16 value";
        }
        uint8_t r[32];
        ASSERT_TRUE(lut_grid_row(l.data(), bits, r)) << "e " << e << " z " << z;
        const std::vector<double> got = grid_values(r, bits);
        for (int j = 0; j < k; j++) EXPECT_EQ(got[j], double(f16_to_f32(l[j]))) << j;
        for (int j = k + 8; j < lut_grid_row_bytes(bits); j++) EXPECT_EQ(r[j], 0);
      }
    }
  }
}

TEST(LutGrid, RowsOffAGridAreRefused) {
  uint16_t lut[16];
  uint8_t row[32] = {};
  for (int j = 0; j < 16; j++) lut[j] = f32_to_f16(float(j));
  EXPECT_FALSE(lut_grid_row(lut, 2, row)) << "2 bits have no grid form";
  for (int j = 0; j < 32; j++) row[j] = uint8_t(j);
  // 1 + 2^-10 and 1000: the step is 2^-10, the range 10^6 steps
  lut[0] = f32_to_f16(1.0f + std::ldexp(1.0f, -10));
  lut[1] = f32_to_f16(1000.0f);
  EXPECT_FALSE(lut_grid_row(lut, 3, row));
  EXPECT_FALSE(lut_grid_row(lut, 4, row));
  // 256 steps: one too many
  for (int j = 0; j < 16; j++) lut[j] = f32_to_f16(float(j));
  lut[1] = f32_to_f16(256.0f);
  EXPECT_FALSE(lut_grid_row(lut, 3, row));
  lut[1] = f32_to_f16(255.0f);
  uint8_t on[32];
  EXPECT_TRUE(lut_grid_row(lut, 3, on));
  EXPECT_EQ(on[1], 255);
  lut[2] = 0x7c00;  // inf
  EXPECT_FALSE(lut_grid_row(lut, 3, row));
  lut[2] = 0x7e00;  // NaN
  EXPECT_FALSE(lut_grid_row(lut, 4, row));
  for (int j = 0; j < 32; j++) EXPECT_EQ(row[j], j) << "untouched on refusal";
}

// snap_lut_grid on rows of every magnitude: on a grid afterwards, in order, each value moved by
// at most half of the grid's step.
TEST(LutGrid, SnapPutsRowsOnAGrid) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (int bits : {3, 4}) {
    const int k = 1 << bits;
    for (float mag : {1e-7f, 1e-4f, 0.02f, 1.0f, 300.0f, 1500.0f})
      for (int trial = 0; trial < 200; trial++) {
        float v[16], before[16];
        const float shift = trial % 3 == 0 ? 0.0f : mag * 10 * nd(rng);
        bool finite = true;
        for (int j = 0; j < k; j++) {
          v[j] = f16_to_f32(f32_to_f16(shift + mag * nd(rng)));
          finite = finite && std::isfinite(v[j]);
        }
        if (!finite) continue;
        std::sort(v, v + k);
        std::copy(v, v + k, before);
        snap_lut_grid(v, k);
        uint16_t l[16];
        for (int j = 0; j < k; j++) {
          l[j] = f32_to_f16(v[j]);
          ASSERT_EQ(f16_to_f32(l[j]), v[j]) << "snapped value not an fp16 value";
        }
        uint8_t r[32];
        ASSERT_TRUE(lut_grid_row(l, bits, r)) << "mag " << mag << " trial " << trial;
        EXPECT_TRUE(std::is_sorted(v, v + k));
        // the grid's step: below range / 127 (the finest with codes <= 255) unless it is the
        // fp16 spacing at the row's largest magnitude (rows far from zero), or 2^-24
        const double range = double(before[k - 1]) - double(before[0]);
        int ex = 0;
        std::frexp(std::max(std::fabs(before[0]), std::fabs(before[k - 1])), &ex);
        const double step = std::max({range / 127, std::ldexp(1.0, ex - 11), std::ldexp(1.0, -24)});
        for (int j = 0; j < k; j++)
          EXPECT_LE(std::fabs(double(v[j]) - before[j]), step / 2) << "mag " << mag;
      }
  }
}

TEST(ThreadPool, CoversRangeAndRethrows) {
  ThreadPool pool(4);
  std::vector<int> hits(1000, 0);
  pool.parallel_for(1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) hits[i]++;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
  EXPECT_THROW(pool.parallel_for(100, [](int64_t b, int64_t) {
    if (b > 50) throw std::runtime_error("x");
  }), std::runtime_error);
  pool.parallel_for(10, [&](int64_t, int64_t) {});  // still usable
}

}  // namespace
}  // namespace sqz
