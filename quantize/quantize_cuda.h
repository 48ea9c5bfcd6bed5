// GPU versions of the quantizer's two heavy steps, for whole modules at once. Both give the
// same result as their CPU versions bit for bit, so `sqz quantize` writes the same file on
// either device. Built only with the CUDA backend (SQZ_WITH_CUDA); tests:
// tests/test_quantize_cuda (label gpu).
#pragma once
#include <cstdint>
#include <vector>

namespace sqz {

// Exact weighted 1-D k-means of every row of a module (quantize/kmeans.cu). Row r's values
// are x[r, c] for the columns c that the row's CSR entries (row_ptr/col_idx: the outliers)
// do not list, weighted by f[r, c] (f null: unweighted); centroids [rows, k] receive
// exactly what kmeans_1d_exact_centroids returns for that row. Host pointers; k in 1..256.
void kmeans_exact_rows_cuda(const float* x, const float* f, const int32_t* row_ptr,
                            const int32_t* col_idx, int rows, int cols, int k, double* centroids);

// The `count` largest keys of key[0..n) (quantize/outliers.cu): the flat positions, sorted,
// of every key above the count-th largest and of the first (in position order) keys equal
// to it, as mark_top in quantize/outliers.cpp chooses them. Keys are finite and >= 0 (|w|
// or F). Host pointer in and out.
std::vector<int64_t> top_count_positions_cuda(const float* key, int64_t n, int64_t count);

// The values of rank ranks[i] (0 = smallest) of v[0..n) (the IQR rule's quartiles).
std::vector<float> order_statistics_cuda(const float* v, int64_t n,
                                         const std::vector<int64_t>& ranks);

}  // namespace sqz
