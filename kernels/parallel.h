// A small fixed thread pool with a blocking parallel_for: the CPU kernels split rows
// across it. One pool per backend, passed by reference; no globals.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sqz {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int size() const { return int(workers_.size()) + 1; }
  // Calls fn(begin, end) over disjoint chunks covering [0, n); the caller thread works too.
  // Exceptions thrown by fn are rethrown here (the first one).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                    int64_t min_chunk = 1);
  // The first i in [0, n) for which pred(i) holds, or n if none (validation scans of large
  // tensors: chunks run in parallel and stop at an index past the best one found so far).
  template <typename Pred>
  int64_t find_first(int64_t n, const Pred& pred, int64_t min_chunk = 1 << 16) {
    std::atomic<int64_t> first{n};
    parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e && i < first; i++)
        if (pred(i)) {
          int64_t cur = first;
          while (i < cur && !first.compare_exchange_weak(cur, i)) {
          }
          return;
        }
    }, min_chunk);
    return first;
  }

 private:
  void worker_loop(int index);
  void run_chunks(std::unique_lock<std::mutex>& lk);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  int64_t next_ = 0;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace sqz
