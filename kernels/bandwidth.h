// Measured read bandwidth: the denominator of every "% of bandwidth" figure, measured in the
// same run as the numbers it divides.
#pragma once
#include <cstddef>

namespace sqz {

class ThreadPool;

// Bytes per second for a streaming read (sum) of an n_bytes buffer by every thread; best of
// `reps`.
double read_bandwidth_cpu(ThreadPool& pool, size_t n_bytes, int reps = 5);

#ifdef SQZ_WITH_CUDA
// Bytes per second for a streaming 16-byte-per-thread read of an n_bytes device buffer
// (median of `reps` timed with events).
double read_bandwidth_cuda(size_t n_bytes, int reps = 20);
#endif

}  // namespace sqz
