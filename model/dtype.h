// Element types of tensors in checkpoint and packed files, with their safetensors names.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sqz {

enum class DType { F32, F16, BF16, I32, I16, U16, U8, I64, U32, F64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);           // safetensors spelling: "F32", "F16", ...
bool dtype_from_name(const std::string& s, DType* out);
bool dtype_is_float(DType t);

// Bit-level finiteness checks, no conversion needed.
inline bool f16_bits_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
inline bool bf16_bits_finite(uint16_t h) { return (h & 0x7f80u) != 0x7f80u; }

// Scalar conversions (exact for f16/bf16 -> f32; round-to-nearest-even the other way).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f);

// Converts n elements of a float dtype (F32/F16/BF16/F64) to f32.
void convert_to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace sqz
