// Tensor-core (mma.sync) and asynchronous-copy (cp.async) helpers shared by the CUDA ops of
// kernels/*.cu (sm_80 and later). Included only by .cu files.
#pragma once

#include <cstdint>

namespace sqz {

// d += a * b: m16n8k16, fp16 inputs, fp32 accumulators.
// a: {row g k 2t..2t+1, row g+8 k 2t.., row g k 2t+8.., row g+8 k 2t+8..}, b: {k 2t.., k 2t+8..}
// (g = lane / 4, t = lane % 4); d: {row g n 2t, row g n 2t+1, row g+8 n 2t, row g+8 n 2t+1}.
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_ptr) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

// 16 bytes global -> shared, asynchronously; src_bytes < 16 zero-fills the rest.
__device__ __forceinline__ void cp_async_16(void* smem_ptr, const void* src, int src_bytes) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(src), "r"(src_bytes)
               : "memory");
}
// 8/4 bytes with src_bytes (0 or the full size) read; the rest zero-filled.
__device__ __forceinline__ void cp_async_8z(void* smem_ptr, const void* src, int src_bytes) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(a), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_4z(void* smem_ptr, const void* src, int src_bytes) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(a), "l"(src), "r"(src_bytes)
               : "memory");
}
// Same without the zero-fill operand (the whole source is read): the addresses of an item's
// copies then differ by constants, which the copies take as immediate offsets.
template <int BYTES>
__device__ __forceinline__ void cp_async_full(void* smem_ptr, const void* src) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(a), "l"(src), "n"(BYTES)
                 : "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}

// As ldmatrix_x4, each 8 x 8 matrix transposed: lane gets elements (2 (lane % 4), lane / 4)
// and (2 (lane % 4) + 1, lane / 4) of matrix i in r[i] (the B operand of mma_16816 from a
// row-major [k][n] tile).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_ptr) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

}  // namespace sqz
