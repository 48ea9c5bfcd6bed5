// Dequantization of a packed SqueezeLLM linear to its dense weights W = D + S, where
// D[r][c] = lut[r][idx[r][c]] and S is the row's CSR outliers. CPU version (fp32, one row; the
// reference) and CUDA version (the whole matrix to fp16, for the prefill path).
#pragma once
#include <cstdint>

#include "kernels/lut_gemv.h"

namespace sqz {

// Dense reconstruction of one row (D + S), fp32: the LUT value, plus the row's outliers
// added in CSR order.
void lut_decode_row(const PackedMatrix& w, int row, float* out);

}  // namespace sqz

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

// CUDA: out [rows, cols] fp16 (row-major, leading dimension cols) = the values of
// lut_decode_row rounded to nearest even, every pointer of `w` on the device (the outliers as
// `outliers`, cols <= kLutGpuMaxCols, as for lut_gemm_cuda). The columns of a row's CSR
// entries must be distinct (the packed-file reader guarantees it: strictly
// ascending). No host synchronisation and no allocation; launched with programmatic
// dependent launch (writes `out` only after the previous kernel has finished).
void lut_dequant_cuda(const PackedMatrix& w, uint16_t* out, cudaStream_t stream);

// The packed path for more tokens than the batched GEMV takes (> 32): dequantizing W to fp16
// scratch and multiplying with cuBLAS measured faster than lut_gemm_cuda's tensor-core kernel
// at every LLaMA-7B shape and token count from 17 to 512, with and without outliers; from 17
// to 32 tokens the GEMV in pieces beats it at every shape but 4096 x 4096 (H100:
// kernels/NOTES_lut_gemv.md §8). lut_gemm_cuda stays the path that needs no scratch.
constexpr int kLutDequantMinTokens = 33;

}  // namespace sqz
#endif
