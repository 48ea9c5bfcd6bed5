// Packed linear -> dense fp16 W = D + S on the GPU (the prefill path: the engine then multiplies
// with cuBLAS, see kLutDequantMinTokens). Memory-bound: it reads the packed row (0.38-0.5 bytes
// per weight) and writes 2 bytes per weight, so the decode is plain shifts and a shared-memory
// LUT; the tricks of lut_gemv.cu are not needed here.
//
// One 128-thread block per row. Thread i decodes 16-column groups i, i + 128, ... (2 bits: one
// 32-bit lane, 3 bits: the three lanes of the quarter, 4 bits: two lanes; the bit layout is
// drawn in kernels/packed_layout.h) and writes them as two 16-byte stores when the row allows
// it. After a barrier the block walks the row's CSR entries: w = fp16(float(D) + float(S)),
// which is lut_decode_row's fp32 sum rounded to nearest even (D is an fp16 LUT value, and the
// columns are distinct, so each entry is added once).
#include "kernels/lut_dequant.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda_common.h"
#include "kernels/packed_layout.h"
#include "kernels/pdl.cuh"

namespace sqz {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ uint32_t lane_u32(const uint8_t* p) {
  return __ldg(reinterpret_cast<const uint32_t*>(p));
}

template <int BITS>
__global__ void __launch_bounds__(kThreads)
    lut_dequant_kernel(const PackedMatrix w, uint16_t* out) {
  __shared__ uint16_t lut[1 << BITS];
  const int row = blockIdx.x;
  if (threadIdx.x < (1 << BITS)) lut[threadIdx.x] = w.lut[(int64_t(row) << BITS) + threadIdx.x];
  // This row's parts of unit 0 in the GPU's tiled layout (kernels/packed_layout.h), as the
  // GEMM takes them (computed once, not per load). at(u, off): byte `off` of unit u in part 1;
  // at_c(u, q): 3 bits, quarter q's C lane (the first C lane starts part 2).
  constexpr int kUnitStride = gpu_tiled_unit_stride(BITS);
  const GpuTiledRow parts = gpu_tiled_row(w.row_bytes, BITS, row);
  const uint8_t* part1 = w.indices + parts.part1;
  const uint8_t* part2 = w.indices + parts.part2;
  auto at = [&](int u, int off) { return part1 + u * kUnitStride + off; };
  auto at_c = [&](int u, int q) { return part2 + u * kUnitStride + 4 * q; };
  uint16_t* o = out + int64_t(row) * w.cols;
  // 16-byte stores need the row start 16-byte aligned: out aligned and cols % 8 == 0.
  const bool vec = (reinterpret_cast<uintptr_t>(out) % 16 == 0) && (w.cols % 8 == 0);
  pdl_wait();  // `out` may still be read by the previous kernel (the last GEMM on this scratch)
  pdl_launch_dependents();
  __syncthreads();

  const int n_groups = (w.cols + 15) / 16;
  for (int g = threadIdx.x; g < n_groups; g += kThreads) {
    const int u = g / 8, within = g % 8;  // unit, 16-column group inside the unit
    uint32_t h[8];             // 16 fp16 values, two per register, column order
    if (BITS == 4) {
      // columns 16 within .. +15: word within / 2, lanes 2 (within % 2) and +1, 8 nibbles each
      const int lane = (within / 2) * 16 + (within % 2) * 8;
      for (int l = 0; l < 2; l++) {
        uint32_t v = lane_u32(at(u, lane + 4 * l));
#pragma unroll
        for (int k = 0; k < 4; k++, v >>= 8)
          h[4 * l + k] = lut[v & 15] | uint32_t(lut[(v >> 4) & 15]) << 16;
      }
    } else if (BITS == 2) {
      // word within / 4, lane within % 4: 16 columns, 2 bits each
      uint32_t v = lane_u32(at(u, (within / 4) * 16 + (within % 4) * 4));
#pragma unroll
      for (int k = 0; k < 8; k++, v >>= 4) h[k] = lut[v & 3] | uint32_t(lut[(v >> 2) & 3]) << 16;
    } else {
      // quarter within / 2, half within % 2: the first half's even and odd columns are lanes
      // A and B; the second half's even columns lane C, its odd ones the msbs of A, B, C
      const int q = within / 2;
      const uint32_t a = lane_u32(at(u, packed3_lane_offset(q, 0))),
                     b = lane_u32(at(u, packed3_lane_offset(q, 1))),
                     c = lane_u32(at_c(u, q));
      uint32_t ev = within % 2 ? c : a;
      uint32_t od = within % 2 ? packed3_odd_high(a, b, c) : b;
#pragma unroll
      for (int k = 0; k < 8; k++, ev >>= 4, od >>= 4)
        h[k] = lut[ev & 7] | uint32_t(lut[od & 7]) << 16;
    }
    const int c0 = 16 * g;
    if (vec && c0 + 16 <= w.cols) {
      uint4* dst = reinterpret_cast<uint4*>(o + c0);
      dst[0] = make_uint4(h[0], h[1], h[2], h[3]);
      dst[1] = make_uint4(h[4], h[5], h[6], h[7]);
    } else {
      for (int k = 0; k < 16 && c0 + k < w.cols; k++)
        o[c0 + k] = uint16_t(h[k / 2] >> (16 * (k % 2)));
    }
  }

  if (w.nnz == 0) return;
  const int32_t e0 = w.row_ptr[row], e1 = w.row_ptr[row + 1];
  if (e0 == e1) return;
  __syncthreads();  // the block's dense stores are visible to all its threads
  for (int32_t k = e0 + threadIdx.x; k < e1; k += kThreads) {
    const uint32_t e = w.outliers[k];  // col | value << 16
    const int c = int(e & 0xffffu);
    const float v =
        __half2float(__ushort_as_half(o[c])) + __half2float(__ushort_as_half(uint16_t(e >> 16)));
    o[c] = __half_as_ushort(__float2half_rn(v));
  }
}

}  // namespace

void lut_dequant_cuda(const PackedMatrix& w, uint16_t* out, cudaStream_t stream) {
  if (w.bits < 2 || w.bits > 4)
    throw std::invalid_argument("lut_dequant_cuda: bits must be 2, 3 or 4, got " +
                                std::to_string(w.bits));
  if (w.rows < 0 || w.cols <= 0)
    throw std::invalid_argument("lut_dequant_cuda: bad shape rows " + std::to_string(w.rows) +
                                " cols " + std::to_string(w.cols));
  if (w.row_bytes != packed_row_bytes(w.cols, w.bits))
    throw std::invalid_argument("lut_dequant_cuda: row_bytes " + std::to_string(w.row_bytes) +
                                ", expected " + std::to_string(packed_row_bytes(w.cols, w.bits)));
  if (reinterpret_cast<uintptr_t>(w.indices) % 4 != 0)
    throw std::invalid_argument("lut_dequant_cuda: indices must be 4-byte aligned");
  check_gpu_outliers(w, "lut_dequant_cuda");
  if (w.rows == 0) return;
  auto kernel = w.bits == 2   ? lut_dequant_kernel<2>
                : w.bits == 3 ? lut_dequant_kernel<3>
                              : lut_dequant_kernel<4>;
  launch_pdl(kernel, dim3(w.rows), dim3(kThreads), 0, stream, w, out);
}

}  // namespace sqz
