#include "kernels/parallel.h"

#include <algorithm>

namespace sqz {

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < n_threads; i++) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
}

// Claims chunks under the lock and runs them outside it until none is left; the first
// exception stops the rest. Each chunk is large enough that the lock is not the cost.
void ThreadPool::run_chunks(std::unique_lock<std::mutex>& lk) {
  while (next_ < n_) {
    int64_t b = next_, e = std::min(n_, b + chunk_);
    next_ = e;
    lk.unlock();
    try {
      (*fn_)(b, e);
    } catch (...) {
      lk.lock();
      if (!error_) error_ = std::current_exception();
      next_ = n_;
      continue;
    }
    lk.lock();
  }
}

void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    active_++;
    run_chunks(lk);
    if (--active_ == 0) cv_done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                              int64_t min_chunk) {
  if (n <= 0) return;
  int64_t chunk = std::max<int64_t>(min_chunk, (n + size() * 4 - 1) / (size() * 4));
  if (workers_.empty() || n <= chunk) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lk(mu_);
  fn_ = &fn;
  n_ = n;
  chunk_ = chunk;
  next_ = 0;
  error_ = nullptr;
  active_++;  // the caller
  generation_++;
  cv_work_.notify_all();
  run_chunks(lk);
  active_--;
  cv_done_.wait(lk, [&] { return active_ == 0; });
  fn_ = nullptr;
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace sqz
