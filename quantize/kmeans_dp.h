// The arithmetic of the exact 1-D k-means (quantize/kmeans.cpp) that its CUDA version
// (quantize/kmeans.cu) repeats operation for operation, so both give the same bits and a
// model quantized on the GPU is byte-identical to one quantized on the CPU.
//
// Three rules make that possible:
//   * no fused multiply-add: kmeans.cpp is compiled with -ffp-contract=off and kmeans.cu
//     with --fmad=false (division and sqrt are IEEE on both);
//   * long sums are blocked: a run [a, b) is summed in chunks of kKMeansChunk values, each
//     chunk left to right from 0, then the chunk totals left to right from 0; the GPU gives
//     each chunk to one thread, so no sum is longer than a chunk or the list of chunks;
//   * the divide and conquer of each DP layer visits the same tree (mid = lo + (hi-lo)/2)
//     and keeps the leftmost minimum, whatever order the GPU evaluates the candidates in.
#pragma once

#if defined(__CUDACC__)
#define SQZ_HD __host__ __device__
#else
#define SQZ_HD
#endif

namespace sqz {

constexpr int kKMeansChunk = 64;

// D[c-1][i] + cost(i, j): cost of values i..j-1 as one cluster from the centred prefix sums
// (S2 - S1^2 / S0, clamped at 0: it is a sum of squares).
SQZ_HD inline double kmeans_dp_candidate(const double* prev, const double* s0, const double* s1,
                                         const double* s2, int i, int j) {
  const double w1 = s1[j] - s1[i];
  const double c = (s2[j] - s2[i]) - w1 * w1 / (s0[j] - s0[i]);
  return prev[i] + (c > 0 ? c : 0.0);
}

// Chunk of the prefix sums: the running sums of one chunk [t0, t1) of the distinct values
// dx/dw (weights floored at w_floor, values centred), written to s*[t + 1], chunk-local
// (the caller adds the chunk's base). Returns nothing; totals are s*[t1].
SQZ_HD inline void kmeans_prefix_chunk(const double* dx, const double* dw, double centre,
                                       double w_floor, int t0, int t1, double* s0, double* s1,
                                       double* s2) {
  double a0 = 0, a1 = 0, a2 = 0;
  for (int t = t0; t < t1; t++) {
    const double xc = dx[t] - centre, w = dw[t] > w_floor ? dw[t] : w_floor;
    a0 = a0 + w;
    a1 = a1 + w * xc;
    a2 = a2 + w * xc * xc;
    s0[t + 1] = a0, s1[t + 1] = a1, s2[t + 1] = a2;
  }
}

// sum of dw[t] and of dw[t] * dx[t] over one chunk [t0, t1), from 0, left to right.
SQZ_HD inline void kmeans_chunk_sums(const double* dx, const double* dw, int t0, int t1,
                                     double* sw, double* swx) {
  double a = 0, b = 0;
  for (int t = t0; t < t1; t++) {
    a = a + dw[t];
    b = b + dw[t] * dx[t];
  }
  *sw = a, *swx = b;
}

}  // namespace sqz
