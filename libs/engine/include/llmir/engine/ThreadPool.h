// A small fixed thread pool for the CPU kernels: parallelFor splits a range
// into a few contiguous chunks per thread that the caller and the workers
// claim until none is left, then waits for the claimed ones. A decode step
// dispatches hundreds of short loops, so idle threads spin briefly before
// sleeping; and as chunks are claimed, not assigned, a worker that the OS
// has not scheduled (cores shared with other work) delays nobody.
// Each thread first claims the chunks of its own contiguous segment of the
// range (thread i of P: the i-th P-th), then those left in the others: a
// decode GEMV's rows are one weight stream per thread, not every other
// chunk (which one core read 7-10% slower: docs/performance.md, "Eighth
// round").
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
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
  /// pool threads and the caller (any chunk on any thread). Returns when every chunk is done. Not
  /// reentrant: body must not call parallelFor on the same pool.
  void parallelFor(size_t n, size_t minChunk,
                   const std::function<void(size_t, size_t)> &body);

private:
  void workerLoop(unsigned slot);
  /// Claims and runs chunks of `generation` until none is left, starting
  /// with segment `slot` (the caller's is 0).
  void runChunks(uint32_t generation, unsigned slot);

  // A thread's share of the chunks: [first chunk, end) as claimed so far.
  struct alignas(64) Segment {
    // generation << 32 | next chunk to claim; a closed generation (odd)
    // offers none.
    std::atomic<uint64_t> ticket{0};
    std::atomic<uint32_t> end{0}; // read racily by late workers
  };

  unsigned numThreads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  // Written by parallelFor before ticket_ moves to a new generation
  // (release); read only after claiming a chunk of that generation, which
  // keeps the call (and these fields) alive until the chunk completes.
  const std::function<void(size_t, size_t)> *body_ = nullptr;
  size_t n_ = 0;
  size_t chunk_ = 0;
  std::atomic<uint32_t> numChunks_{0}; // read racily by late workers
  // The open generation (even; one per call), published after every
  // segment's ticket: a worker that sees it finds the segments open.
  std::atomic<uint32_t> generation_{0};
  std::unique_ptr<Segment[]> segments_; // numThreads_
  std::atomic<uint32_t> completed_{0};
  std::atomic<bool> stopping_{false};
};

} // namespace llmir::engine
