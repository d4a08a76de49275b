#include "llmir/engine/ThreadPool.h"

#include <algorithm>

namespace llmir::engine {

ThreadPool::ThreadPool(unsigned numThreads)
    : numThreads_(numThreads ? numThreads
                             : std::max(1u, std::thread::hardware_concurrency())) {
  // The caller runs chunk 0, so numThreads_ - 1 workers.
  for (unsigned i = 1; i < numThreads_; ++i)
    workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread &t : workers_)
    t.join();
}

void ThreadPool::parallelFor(size_t n, size_t minChunk,
                             const std::function<void(size_t, size_t)> &body) {
  if (n == 0)
    return;
  size_t chunk = std::max<size_t>(
      std::max<size_t>(minChunk, 1), (n + numThreads_ - 1) / numThreads_);
  size_t numChunks = (n + chunk - 1) / chunk;
  if (numChunks <= 1 || workers_.empty()) {
    body(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    n_ = n;
    chunk_ = chunk;
    pending_ = static_cast<unsigned>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  body(0, std::min(chunk, n));
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return pending_ == 0; });
  body_ = nullptr;
}

void ThreadPool::workerLoop(unsigned index) {
  size_t seenGeneration = 0;
  while (true) {
    const std::function<void(size_t, size_t)> *body;
    size_t begin, end;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock,
                 [&] { return stopping_ || generation_ != seenGeneration; });
      if (stopping_)
        return;
      seenGeneration = generation_;
      body = body_;
      begin = std::min(n_, index * chunk_);
      end = std::min(n_, begin + chunk_);
    }
    if (begin < end)
      (*body)(begin, end);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0)
        done_.notify_one();
    }
  }
}

} // namespace llmir::engine
