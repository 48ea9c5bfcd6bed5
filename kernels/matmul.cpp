#include "kernels/matmul.h"

#include <algorithm>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels/half.h"
#include "kernels/parallel.h"

namespace sqz {

float dot_f32(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
#endif

void gemm_rows_f32(const float* w, int nr, int cols, const float* x, int n_tokens, float* y,
                   int y_stride, int r0) {
  int r = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const int cv = cols & ~7;
  for (; r + 4 <= nr; r += 4) {
    const float* w0 = w + int64_t(r) * cols;
    const float *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
    int t = 0;
    for (; t + 2 <= n_tokens; t += 2) {
      const float* xa = x + int64_t(t) * cols;
      const float* xb = xa + cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
             b3 = a0;
      for (int c = 0; c < cv; c += 8) {
        __m256 va = _mm256_loadu_ps(xa + c), vb = _mm256_loadu_ps(xb + c);
        __m256 v0 = _mm256_loadu_ps(w0 + c), v1 = _mm256_loadu_ps(w1 + c);
        __m256 v2 = _mm256_loadu_ps(w2 + c), v3 = _mm256_loadu_ps(w3 + c);
        a0 = _mm256_fmadd_ps(v0, va, a0);
        a1 = _mm256_fmadd_ps(v1, va, a1);
        a2 = _mm256_fmadd_ps(v2, va, a2);
        a3 = _mm256_fmadd_ps(v3, va, a3);
        b0 = _mm256_fmadd_ps(v0, vb, b0);
        b1 = _mm256_fmadd_ps(v1, vb, b1);
        b2 = _mm256_fmadd_ps(v2, vb, b2);
        b3 = _mm256_fmadd_ps(v3, vb, b3);
      }
      float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3),
                    hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
      for (int c = cv; c < cols; c++) {
        s[0] += w0[c] * xa[c], s[1] += w1[c] * xa[c], s[2] += w2[c] * xa[c];
        s[3] += w3[c] * xa[c], s[4] += w0[c] * xb[c], s[5] += w1[c] * xb[c];
        s[6] += w2[c] * xb[c], s[7] += w3[c] * xb[c];
      }
      float* ya = y + int64_t(t) * y_stride + r0 + r;
      float* yb = ya + y_stride;
      for (int k = 0; k < 4; k++) ya[k] = s[k], yb[k] = s[4 + k];
    }
    for (; t < n_tokens; t++) {
      const float* xa = x + int64_t(t) * cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int c = 0; c < cv; c += 8) {
        __m256 va = _mm256_loadu_ps(xa + c);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), va, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), va, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), va, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), va, a3);
      }
      float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (int c = cv; c < cols; c++)
        s[0] += w0[c] * xa[c], s[1] += w1[c] * xa[c], s[2] += w2[c] * xa[c],
            s[3] += w3[c] * xa[c];
      float* ya = y + int64_t(t) * y_stride + r0 + r;
      for (int k = 0; k < 4; k++) ya[k] = s[k];
    }
  }
#endif
  for (; r < nr; r++)
    for (int t = 0; t < n_tokens; t++)
      y[int64_t(t) * y_stride + r0 + r] =
          dot_f32(w + int64_t(r) * cols, x + int64_t(t) * cols, cols);
}

void matmul(MatType type, const void* w, int rows, int cols, const float* x, int n_tokens,
            float* y, ThreadPool& pool) {
  // Rows per task: enough to amortise the conversion, few enough to balance the threads.
  const int block = 16;
  const int64_t n_blocks = (rows + block - 1) / block;
  pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
    std::vector<float> buf;
    for (int64_t b = b0; b < b1; b++) {
      int r0 = int(b * block), nr = std::min(block, rows - r0);
      const float* wf;
      if (type == MatType::F32) {
        wf = static_cast<const float*>(w) + int64_t(r0) * cols;
      } else {
        buf.resize(size_t(nr) * cols);
        const uint16_t* src = static_cast<const uint16_t*>(w) + int64_t(r0) * cols;
        if (type == MatType::F16)
          half_to_float_n(src, buf.data(), int64_t(nr) * cols);
        else
          bfloat_to_float_n(src, buf.data(), int64_t(nr) * cols);
        wf = buf.data();
      }
      gemm_rows_f32(wf, nr, cols, x, n_tokens, y, rows, r0);
    }
  });
}

}  // namespace sqz
