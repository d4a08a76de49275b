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
// Chunks per thread: small enough that the caller absorbs the share of a
// worker that has not started, large enough to amortise claiming.
constexpr size_t kChunksPerThread = 4;

template <class Ready> bool spinUntil(const Ready &ready) {
  for (int i = 0; i < kSpinIterations; ++i) {
    if (ready())
      return true;
    LLMIR_CPU_RELAX();
  }
  return ready();
}

uint64_t generationOf(uint64_t ticket) { return ticket >> 32; }

// Chunk index of a closed generation: above any chunk count.
constexpr uint64_t kNoChunk = 0xffffffffu;

} // namespace

ThreadPool::ThreadPool(unsigned numThreads)
    : numThreads_(numThreads ? numThreads
                             : std::max(1u, std::thread::hardware_concurrency())) {
  // The caller takes part, so numThreads_ - 1 workers.
  for (unsigned i = 1; i < numThreads_; ++i)
    workers_.emplace_back([this] { workerLoop(); });
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
  const size_t chunk = std::max<size_t>(
      std::max<size_t>(minChunk, 1),
      (n + numThreads_ * kChunksPerThread - 1) / (numThreads_ * kChunksPerThread));
  const size_t numChunks = (n + chunk - 1) / chunk;
  if (numChunks <= 1 || workers_.empty()) {
    body(0, n);
    return;
  }
  // Close the previous generation before touching the shared fields: a
  // worker still holding that generation's last ticket could otherwise claim
  // a chunk against the new chunk count, run it twice and push completed_
  // past numChunks, so that this call would wait forever. A closed (odd)
  // generation offers no chunk; the new one opens at the next (even) value.
  const uint64_t closed = generationOf(ticket_.load(std::memory_order_relaxed)) + 1;
  ticket_.store(closed << 32 | kNoChunk, std::memory_order_release);
  body_ = &body;
  n_ = n;
  chunk_ = chunk;
  numChunks_.store(static_cast<uint32_t>(numChunks), std::memory_order_relaxed);
  completed_.store(0, std::memory_order_relaxed);
  const uint64_t generation = closed + 1;
  {
    // Under the mutex so that a worker about to sleep cannot miss it.
    std::lock_guard<std::mutex> lock(mutex_);
    ticket_.store(generation << 32, std::memory_order_release);
  }
  wake_.notify_all();
  runChunks(generation);
  auto allDone = [&] {
    return completed_.load(std::memory_order_acquire) == numChunks;
  };
  if (!spinUntil(allDone)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, allDone);
  }
  body_ = nullptr;
}

void ThreadPool::runChunks(uint64_t generation) {
  uint64_t ticket = ticket_.load(std::memory_order_acquire);
  while (true) {
    if (generationOf(ticket) != generation)
      return;
    const uint32_t index = static_cast<uint32_t>(ticket);
    // A stale read (a newer call) is caught by the exchange below.
    if (index >= numChunks_.load(std::memory_order_relaxed))
      return;
    if (!ticket_.compare_exchange_weak(ticket, ticket + 1,
                                       std::memory_order_acq_rel))
      continue; // ticket now holds the fresh value
    const size_t begin = index * chunk_;
    (*body_)(begin, std::min(n_, begin + chunk_));
    if (completed_.fetch_add(1, std::memory_order_acq_rel) + 1 ==
        numChunks_.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> lock(mutex_); // pairs with done_.wait
      done_.notify_one();
    }
    ticket = ticket_.load(std::memory_order_acquire);
  }
}

void ThreadPool::workerLoop() {
  uint64_t seenGeneration = 0;
  while (true) {
    auto woken = [&] {
      return stopping_.load(std::memory_order_relaxed) ||
             generationOf(ticket_.load(std::memory_order_acquire)) !=
                 seenGeneration;
    };
    if (!spinUntil(woken)) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, woken);
    }
    if (stopping_.load())
      return;
    seenGeneration = generationOf(ticket_.load(std::memory_order_acquire));
    runChunks(seenGeneration);
  }
}

} // namespace llmir::engine
