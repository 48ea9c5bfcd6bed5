// CPU kernels against plain loops over odd shapes: dense matmul (F32/F16/BF16), packed LUT +
// CSR matmul vs its dense reconstruction, index pack/unpack round trip for every bit width.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/half.h"
#include "kernels/lut_gemv.h"
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
