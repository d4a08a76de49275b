// A small fixed thread pool for the CPU kernels: parallelFor splits a range
// into one contiguous chunk per thread and waits for all of them. A decode
// step dispatches hundreds of short loops, so idle threads spin briefly
// before sleeping on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llmir::engine {

class ThreadPool {
public:
  /// numThreads == 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(unsigned numThreads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  unsigned numThreads() const { return numThreads_; }

  /// Runs body(begin, end) over [0, n) in chunks of at least minChunk, on the
  /// pool threads and the caller. Returns when every chunk is done. Not
  /// reentrant: body must not call parallelFor on the same pool.
  void parallelFor(size_t n, size_t minChunk,
                   const std::function<void(size_t, size_t)> &body);

private:
  void workerLoop(unsigned index);

  unsigned numThreads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  // Written by parallelFor before generation_ is bumped (release), read by
  // workers after they see the new generation (acquire).
  const std::function<void(size_t, size_t)> *body_ = nullptr;
  size_t n_ = 0;
  size_t chunk_ = 0;
  std::atomic<size_t> generation_{0};
  std::atomic<unsigned> pending_{0};
  std::atomic<bool> stopping_{false};
};

} // namespace llmir::engine
