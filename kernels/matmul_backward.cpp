#include "kernels/matmul_backward.h"

#include <algorithm>
#include <cstring>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels/half.h"
#include "kernels/parallel.h"

namespace sqz {

namespace {

// Micro-tile of C held in registers, and the cache blocks around it. Per K block of kKc, a
// task packs B[kKc, kNc] once (256 KiB, L2) and, for each of its kMc-row blocks,
// A[kMc, kKc] (48 KiB, L2), so that one B micro-panel [kKc][16] (16 KiB) stays in L1 while
// every A micro-panel of the block passes over it.
constexpr int kMr = 6, kNr = 16;
constexpr int kMc = 8 * kMr, kNc = 16 * kNr, kKc = 256;

// dst[0, n) = src[0, n) as fp32.
void convert_n(MatType t, const void* src, int64_t offset, float* dst, int n) {
  switch (t) {
    case MatType::F32:
      std::memcpy(dst, static_cast<const float*>(src) + offset, size_t(n) * 4);
      break;
    case MatType::F16: half_to_float_n(static_cast<const uint16_t*>(src) + offset, dst, n); break;
    case MatType::BF16: bfloat_to_float_n(static_cast<const uint16_t*>(src) + offset, dst, n); break;
  }
}

// dst[k * P + r] = src(r, k) for r < nr, k < kc, zero for nr <= r < P, where src(r, k) =
// data[base + r * stride_r + k * stride_k]: a micro-panel, converted to fp32. Contiguous
// runs of the source are converted a run at a time; `tmp` holds kc floats.
void pack_panel(MatType t, const void* data, int64_t base, int64_t stride_r, int64_t stride_k,
                int nr, int P, int kc, float* dst, float* tmp) {
  if (stride_r == 1) {  // contiguous along r: one run per k
    for (int k = 0; k < kc; k++) convert_n(t, data, base + k * stride_k, dst + k * P, nr);
  } else if (stride_k == 1) {  // contiguous along k: one run per r, then transposed
    for (int r = 0; r < nr; r++) {
      convert_n(t, data, base + r * stride_r, tmp, kc);
      for (int k = 0; k < kc; k++) dst[k * P + r] = tmp[k];
    }
  } else {
    for (int k = 0; k < kc; k++)
      for (int r = 0; r < nr; r++) convert_n(t, data, base + r * stride_r + k * stride_k, dst + k * P + r, 1);
  }
  if (nr < P)
    for (int k = 0; k < kc; k++)
      for (int r = nr; r < P; r++) dst[k * P + r] = 0.0f;
}

// c[6, 16] (row stride ldc) += a[kc][6]^T-broadcast . b[kc][16].
void micro_kernel(const float* a, const float* b, int kc, float* c, int ldc) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int k = 0; k < kc; k++, a += kMr, b += kNr) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 acc[kMr][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                              {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < kMr; i++) {
    float* ci = c + i * ldc;
    _mm256_storeu_ps(ci, _mm256_add_ps(_mm256_loadu_ps(ci), acc[i][0]));
    _mm256_storeu_ps(ci + 8, _mm256_add_ps(_mm256_loadu_ps(ci + 8), acc[i][1]));
  }
#else
  float acc[kMr][kNr] = {};
  for (int k = 0; k < kc; k++, a += kMr, b += kNr)
    for (int i = 0; i < kMr; i++)
      for (int j = 0; j < kNr; j++) acc[i][j] += a[i] * b[j];
  for (int i = 0; i < kMr; i++)
    for (int j = 0; j < kNr; j++) c[i * ldc + j] += acc[i][j];
#endif
}

}  // namespace

void gemm_f32(int M, int N, int K, const GemmOperand& A, const GemmOperand& B, float* C,
              int64_t ldc, GemmEpilogue epilogue, ThreadPool& pool) {
  if (M <= 0 || N <= 0) return;
  // A task is one kNc-wide column block of C times a group of kMc-row blocks: each packed
  // B block [kKc, kNc] serves the whole group. Groups are as tall as the thread count
  // allows (about 3 tasks per thread, for balance).
  const int n_bm = (M + kMc - 1) / kMc, n_bn = (N + kNc - 1) / kNc;
  const int group = std::max(1, std::min(n_bm, n_bm * n_bn / (3 * pool.size())));
  const int n_groups = (n_bm + group - 1) / group;
  pool.parallel_for(int64_t(n_groups) * n_bn, [&](int64_t t0, int64_t t1) {
    // Per-thread scratch, kept between calls (calibration calls this hundreds of times per
    // sample): packed A and B, a conversion run, and the task's C [group * kMc, kNc].
    thread_local std::vector<float> a_pack, b_pack, tmp, acc;
    a_pack.resize(size_t(kMc) * kKc), b_pack.resize(size_t(kNc) * kKc), tmp.resize(kKc);
    acc.resize(size_t(group) * kMc * kNc);
    for (int64_t task = t0; task < t1; task++) {
      const int n0 = int(task % n_bn) * kNc, nc = std::min(kNc, N - n0);
      const int g0 = int(task / n_bn) * group * kMc;  // first row of the group
      const int g_rows = std::min(group * kMc, M - g0);
      const int n_panels = (nc + kNr - 1) / kNr;
      std::fill(acc.begin(), acc.begin() + size_t((g_rows + kMr - 1) / kMr * kMr) * kNc, 0.0f);
      for (int k0 = 0; k0 < K; k0 += kKc) {
        const int kc = std::min(kKc, K - k0);
        // B micro-panels: b_pack[q][k][j] = B(k0 + k, n0 + 16q + j).
        for (int q = 0; q < n_panels; q++)
          pack_panel(B.type, B.data, k0 * B.row_stride + (n0 + int64_t(q) * kNr) * B.col_stride,
                     B.col_stride, B.row_stride, std::min(kNr, nc - q * kNr), kNr, kc,
                     b_pack.data() + size_t(q) * kc * kNr, tmp.data());
        for (int mb = 0; mb * kMc < g_rows; mb++) {
          const int m0 = g0 + mb * kMc, mc = std::min(kMc, g_rows - mb * kMc);
          const int m_panels = (mc + kMr - 1) / kMr;
          // A micro-panels: a_pack[p][k][i] = A(m0 + 6p + i, k0 + k).
          for (int p = 0; p < m_panels; p++)
            pack_panel(A.type, A.data, (m0 + int64_t(p) * kMr) * A.row_stride + k0 * A.col_stride,
                       A.row_stride, A.col_stride, std::min(kMr, mc - p * kMr), kMr, kc,
                       a_pack.data() + size_t(p) * kc * kMr, tmp.data());
          float* c_block = acc.data() + size_t(mb) * kMc * kNc;
          for (int q = 0; q < n_panels; q++)
            for (int p = 0; p < m_panels; p++)
              micro_kernel(a_pack.data() + size_t(p) * kc * kMr,
                           b_pack.data() + size_t(q) * kc * kNr, kc,
                           c_block + size_t(p) * kMr * kNc + q * kNr, kNc);
        }
      }
      for (int i = 0; i < g_rows; i++) {
        const float* src = acc.data() + size_t(i) * kNc;
        float* dst = C + (g0 + i) * ldc + n0;
        switch (epilogue) {
          case GemmEpilogue::STORE:
            for (int j = 0; j < nc; j++) dst[j] = src[j];
            break;
          case GemmEpilogue::ADD:
            for (int j = 0; j < nc; j++) dst[j] += src[j];
            break;
          case GemmEpilogue::SQUARE_ADD:
            for (int j = 0; j < nc; j++) dst[j] += src[j] * src[j];
            break;
        }
      }
    }
  }, 1);
}

void matmul_gemm(MatType type, const void* w, int rows, int cols, const float* x, int n_tokens,
                 float* y, ThreadPool& pool) {
  GemmOperand a{x, MatType::F32, cols, 1};  // x [n, cols]
  GemmOperand b{w, type, 1, cols};          // W^T: element (c, r) = W[r * cols + c]
  gemm_f32(n_tokens, rows, cols, a, b, y, rows, GemmEpilogue::STORE, pool);
}

void matmul_backward_x(MatType type, const void* w, int rows, int cols, const float* dy,
                       int n_tokens, float* dx, bool accumulate, ThreadPool& pool) {
  GemmOperand a{dy, MatType::F32, rows, 1};  // dy [n, rows]
  GemmOperand b{w, type, cols, 1};           // W [rows, cols]
  gemm_f32(n_tokens, cols, rows, a, b, dx, cols,
           accumulate ? GemmEpilogue::ADD : GemmEpilogue::STORE, pool);
}

void matmul_backward_w(const float* dy, const float* x, int n_tokens, int rows, int cols,
                       float* out, GemmEpilogue epilogue, ThreadPool& pool) {
  GemmOperand a{dy, MatType::F32, 1, rows};  // dy^T: element (r, t) = dy[t * rows + r]
  GemmOperand b{x, MatType::F32, cols, 1};   // x [n, cols]
  gemm_f32(rows, cols, n_tokens, a, b, out, cols, epilogue, pool);
}

}  // namespace sqz
