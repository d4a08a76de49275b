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
// round"). A segment's chunks are pieces that halve (1/2, 1/4, 1/8, 1/8
// of it), so that the last piece, for which another thread may wait, is
// small. A thread out of pieces may prefetch the start of its share of
// the next call's data while it waits (ReadAhead).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

namespace llmir::engine {

/// Bytes a pool thread may bring into its cache while it waits: the start
/// of its share of the data of the call that comes next.
struct ReadAhead {
  const void *begin = nullptr;
  size_t bytes = 0;
};

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
  /// As above; then each thread that has run out of chunks, while it waits
  /// (a worker until the next call, the caller until the call's chunks are
  /// done), prefetches readAhead(slot) into its L2 (thread `slot` of
  /// numThreads(): the caller is 0): at two threads a decode step leaves a
  /// worker idle for several microseconds between two GEMVs (the caller's
  /// norms, adds and bookkeeping; a chunk's imbalance), in which it can read
  /// the start of its rows of the next GEMV ("Fifteenth round" in
  /// docs/performance.md). At most kMaxReadAhead ranges a thread.
  static constexpr size_t kMaxReadAhead = 4;
  void parallelFor(size_t n, size_t minChunk,
                   const std::function<void(size_t, size_t)> &body,
                   const std::function<std::span<const ReadAhead>(unsigned slot)> &readAheadOf);

  /// The rows [begin, end) that thread `slot` claims first in a
  /// parallelFor(n, minChunk, ...): its own segment (it may steal others).
  std::pair<size_t, size_t> segmentOf(size_t n, size_t minChunk, unsigned slot) const;

private:
  size_t chunkOf(size_t n, size_t minChunk) const;
  void workerLoop(unsigned slot);
  /// Claims and runs chunks of `generation` until none is left, starting
  /// with segment `slot` (the caller's is 0).
  void runChunks(uint32_t generation, unsigned slot);
  /// Prefetches segment `slot`'s read-ahead of `generation` until done or
  /// `stop()` (checked every few lines).
  template <class Stop> void readAhead(uint32_t generation, unsigned slot, const Stop &stop);

  // A thread's share of the chunks: [first chunk, end) as claimed so far.
  struct alignas(64) Segment {
    // generation << 32 | next chunk to claim; a closed generation (odd)
    // offers none.
    std::atomic<uint64_t> ticket{0};
    std::atomic<uint32_t> end{0}; // read racily by late workers
    // The read-ahead of the generation in `aheadGeneration` (written before
    // the generation opens; a thread that finds another generation there
    // reads nothing). Atomics, as a late reader may see a newer call's.
    std::atomic<uint32_t> aheadGeneration{0};
    std::atomic<uint32_t> aheadCount{0};
    std::atomic<const void *> aheadBegin[kMaxReadAhead] = {};
    std::atomic<size_t> aheadBytes[kMaxReadAhead] = {};
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
  // The call's pieces: piece i is [pieceBegin_[i], pieceBegin_[i + 1]);
  // segment s offers pieces [its first ticket, end).
  static constexpr size_t kMaxPiecesPerSegment = 8;
  std::unique_ptr<size_t[]> pieceBegin_;
  std::vector<uint32_t> firstPiece_; // by segment, then the end
  std::atomic<uint32_t> numChunks_{0}; // pieces; read racily by late workers
  // The open generation (even; one per call), published after every
  // segment's ticket: a worker that sees it finds the segments open.
  std::atomic<uint32_t> generation_{0};
  std::unique_ptr<Segment[]> segments_; // numThreads_
  std::atomic<uint32_t> completed_{0};
  std::atomic<bool> stopping_{false};
};

} // namespace llmir::engine
