// Device top-k over rows of logits, so that only k (id, logit) pairs per row cross to the
// host (Backend::forward_topk: greedy k = 1, top-k sampling without penalties). The CPU
// counterpart is a partial sort of the row (the sampler's top-k stage); the tests compare
// with a host sort.
#pragma once

#ifdef SQZ_WITH_CUDA
#include <cuda_runtime_api.h>
namespace sqz {

constexpr int kTopKMax = 256;

// For each of n_rows rows of logits (device fp32 [n_rows, vocab]) the k largest entries,
// 1 <= k <= min(kTopKMax, vocab), sorted by logit descending; equal logits by smaller id
// first (also at the k-th place: of several equal candidates the smallest ids are taken).
// ids and vals: device [n_rows, k].
void topk_cuda(const float* logits, int n_rows, int vocab, int k, int* ids, float* vals,
               cudaStream_t stream);

}  // namespace sqz
#endif
