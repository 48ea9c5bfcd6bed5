// Element types: names, sizes and the f16/bf16 <-> f32 conversions every reader and the
// CPU reference use. Conversions are done on bits so they are exact and independent of
// the host's floating-point mode (no F16C needed, subnormals handled in software).
#include "model/dtype.h"

#include <cstring>

#include "model/errors.h"

namespace sqz {

namespace {

struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
  bool is_float;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4, true},  {DType::F16, "F16", 2, true},  {DType::BF16, "BF16", 2, true},
    {DType::I32, "I32", 4, false}, {DType::I16, "I16", 2, false}, {DType::U16, "U16", 2, false},
    {DType::U8, "U8", 1, false},   {DType::I64, "I64", 8, false}, {DType::U32, "U32", 4, false},
    {DType::F64, "F64", 8, true},
};

const DTypeInfo& info(DType t) {
  for (const DTypeInfo& d : kDTypes)
    if (d.type == t) return d;
  // Only reachable through a cast of an out-of-range integer to DType.
  throw format_error("invalid DType value " + std::to_string(int(t)));
}

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
const char* dtype_name(DType t) { return info(t).name; }
bool dtype_is_float(DType t) { return info(t).is_float; }

bool dtype_from_name(const std::string& s, DType* out) {
  for (const DTypeInfo& d : kDTypes) {
    if (s == d.name) {
      *out = d.type;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);  // +-0
    // Subnormal: mant * 2^-24. Shift the leading 1 up to the implicit-bit position; each
    // shift lowers the exponent by one from the smallest normal's 2^-14.
    int shifts = 0;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      ++shifts;
    }
    mant &= 0x3ffu;
    return bits_f32(sign | (uint32_t(127 - 14 - shifts) << 23) | (mant << 13));
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));  // inf, NaN (payload kept)
  return bits_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // quiet NaN
  // 65520 is halfway between 65504 (max half, odd mantissa) and 65536: ties-to-even -> inf.
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (abs < 0x38800000u) {  // below 2^-14: half subnormal or zero
    uint32_t exp = abs >> 23;
    if (exp < 102) return sign;  // below 2^-25: rounds to zero
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // value = mant * 2^(exp-150); units of 2^-24 -> mant >> shift
    uint32_t r = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal
    return uint16_t(sign | r);
  }
  uint32_t r = (abs - 0x38000000u) >> 13;  // rebias exponent 127 -> 15, drop 13 mantissa bits
  uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry may bump the exponent
  return uint16_t(sign | r);
}

uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // keep NaN a NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t(u >> 16);
}

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
  // Sources are often views into mapped files, so loads go through memcpy (no alignment
  // assumption); compilers turn these into plain loads.
  const uint8_t* p = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32:
      std::memcpy(dst, p, n * 4);
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = float(d);
      }
      return;
    default:
      throw format_error(std::string("convert_to_f32: dtype ") + dtype_name(t) +
                         " is not a float type (expected F32, F16, BF16 or F64)");
  }
}

}  // namespace sqz
