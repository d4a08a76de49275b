#include "llmir/engine/ThreadPool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LLMIR_CPU_RELAX() _mm_pause()
#else
#define LLMIR_CPU_RELAX() ((void)0)
#endif

namespace llmir::engine {
namespace {

// Polls before sleeping: long enough to bridge the serial work between two
// kernels of a decode step (tens of microseconds), short enough not to
// steal a shared core for long.
constexpr int kSpinIterations = 20000;

template <class Ready> bool spinUntil(const Ready &ready) {
  for (int i = 0; i < kSpinIterations; ++i) {
    if (ready())
      return true;
    LLMIR_CPU_RELAX();
  }
  return ready();
}

} // namespace

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
    stopping_.store(true);
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
  body_ = &body;
  n_ = n;
  chunk_ = chunk;
  pending_.store(static_cast<unsigned>(workers_.size()),
                 std::memory_order_relaxed);
  {
    // Under the mutex so that a worker about to sleep cannot miss it.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  body(0, std::min(chunk, n));
  auto allDone = [this] {
    return pending_.load(std::memory_order_acquire) == 0;
  };
  if (!spinUntil(allDone)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, allDone);
  }
  body_ = nullptr;
}

void ThreadPool::workerLoop(unsigned index) {
  size_t seenGeneration = 0;
  while (true) {
    auto woken = [&] {
      return stopping_.load(std::memory_order_relaxed) ||
             generation_.load(std::memory_order_acquire) != seenGeneration;
    };
    if (!spinUntil(woken)) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, woken);
    }
    if (stopping_.load())
      return;
    seenGeneration = generation_.load(std::memory_order_acquire);
    const size_t begin = std::min(n_, index * chunk_);
    const size_t end = std::min(n_, begin + chunk_);
    if (begin < end)
      (*body_)(begin, end);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_); // pairs with done_.wait
      done_.notify_one();
    }
  }
}

} // namespace llmir::engine
