// Equality of two quantizations of one linear (thread counts, CPU vs GPU): every packed
// array and every statistic, exactly.
#pragma once
#include <gtest/gtest.h>

#include "quantize/quantizer.h"

namespace sqz {
namespace test {

inline void expect_same_quantized(const QuantizedLinear& a, const QuantizedLinear& b) {
  EXPECT_EQ(a.indices, b.indices);
  EXPECT_EQ(a.lut, b.lut);
  EXPECT_EQ(a.row_ptr, b.row_ptr);
  EXPECT_EQ(a.col_idx, b.col_idx);
  EXPECT_EQ(a.values, b.values);
  EXPECT_EQ(a.weighted_err, b.weighted_err);
  EXPECT_EQ(a.sq_err, b.sq_err);
  EXPECT_EQ(a.sq_norm, b.sq_norm);
  EXPECT_EQ(a.n_sensitive, b.n_sensitive);
  EXPECT_EQ(a.n_magnitude, b.n_magnitude);
}

}  // namespace test
}  // namespace sqz
