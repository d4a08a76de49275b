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
// Read-ahead is prefetched in steps of this many bytes, checking between
// two whether the thread is wanted (a new call, the call's last chunk done).
constexpr size_t kReadAheadStep = 1024;

template <class Ready> bool spinUntil(const Ready &ready) {
  for (int i = 0; i < kSpinIterations; ++i) {
    if (ready())
      return true;
    LLMIR_CPU_RELAX();
  }
  return ready();
}

uint32_t generationOf(uint64_t ticket) { return static_cast<uint32_t>(ticket >> 32); }

// Chunk index of a closed generation: above any chunk count.
constexpr uint64_t kNoChunk = 0xffffffffu;

} // namespace

ThreadPool::ThreadPool(unsigned numThreads)
    : numThreads_(numThreads ? numThreads
                             : std::max(1u, std::thread::hardware_concurrency())),
      pieceBegin_(std::make_unique<size_t[]>(numThreads_ * kMaxPiecesPerSegment + 1)),
      firstPiece_(numThreads_ + 1), segments_(std::make_unique<Segment[]>(numThreads_)) {
  // The caller takes part (segment 0), so numThreads_ - 1 workers.
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

size_t ThreadPool::chunkOf(size_t n, size_t minChunk) const {
  return std::max<size_t>(
      std::max<size_t>(minChunk, 1),
      (n + numThreads_ * kChunksPerThread - 1) / (numThreads_ * kChunksPerThread));
}

std::pair<size_t, size_t> ThreadPool::segmentOf(size_t n, size_t minChunk,
                                                unsigned slot) const {
  const size_t chunk = chunkOf(n, minChunk);
  const size_t numChunks = (n + chunk - 1) / chunk;
  if (numChunks <= 1 || workers_.empty())
    return slot == 0 ? std::pair<size_t, size_t>{0, n} : std::pair<size_t, size_t>{n, n};
  return {std::min(n, numChunks * slot / numThreads_ * chunk),
          std::min(n, numChunks * (slot + 1) / numThreads_ * chunk)};
}

void ThreadPool::parallelFor(size_t n, size_t minChunk,
                             const std::function<void(size_t, size_t)> &body) {
  parallelFor(n, minChunk, body, {});
}

void ThreadPool::parallelFor(
    size_t n, size_t minChunk, const std::function<void(size_t, size_t)> &body,
    const std::function<std::span<const ReadAhead>(unsigned slot)> &readAheadOf) {
  if (n == 0)
    return;
  const size_t chunk = chunkOf(n, minChunk);
  const size_t numChunks = (n + chunk - 1) / chunk;
  if (numChunks <= 1 || workers_.empty()) {
    body(0, n);
    return;
  }
  // Close the previous generation's segments before touching the shared
  // fields: a worker still holding that generation's last ticket of a
  // segment could otherwise claim a chunk against the new chunk count, run
  // it twice and push completed_ past numChunks, so that this call would
  // wait forever. A closed (odd) generation offers no chunk; the new one
  // opens at the next (even) value.
  // 32 bits, wrapping, as in the tickets.
  const uint32_t generation = generation_.load(std::memory_order_relaxed) + 2;
  for (unsigned s = 0; s < numThreads_; ++s)
    segments_[s].ticket.store(uint64_t{generation - 1} << 32 | kNoChunk,
                              std::memory_order_release);
  // Each segment's rows (numChunks / threads chunks) in pieces that halve:
  // 1/2, 1/4, 1/8, 1/8 of it for four chunks, none below half a chunk or
  // minChunk. A thread's last piece decides how long the other waits for
  // it (a decode GEMV's caller waited 5.5 us a call at two threads, when
  // the worker read its equal chunks 20% slower: docs/performance.md,
  // "Fifteenth round"); the large first pieces restart the weight streams
  // less often than equal chunks.
  const size_t smallest = std::max({minChunk, size_t{1}, (chunk + 1) / 2});
  size_t pieces = 0;
  for (unsigned s = 0; s < numThreads_; ++s) {
    firstPiece_[s] = static_cast<uint32_t>(pieces);
    size_t begin = std::min(n, numChunks * s / numThreads_ * chunk);
    const size_t end = std::min(n, numChunks * (s + 1) / numThreads_ * chunk);
    for (size_t left = end - begin; left > 0; left = end - begin) {
      const size_t piece =
          left >= 2 * smallest && pieces + 1 < kMaxPiecesPerSegment * (s + 1) ? left / 2 : left;
      pieceBegin_[pieces++] = begin;
      begin += piece;
    }
  }
  firstPiece_[numThreads_] = static_cast<uint32_t>(pieces);
  pieceBegin_[pieces] = n;
  body_ = &body;
  numChunks_.store(static_cast<uint32_t>(pieces), std::memory_order_relaxed);
  completed_.store(0, std::memory_order_relaxed);
  for (unsigned s = 0; s < numThreads_; ++s) {
    Segment &segment = segments_[s];
    const std::span<const ReadAhead> ranges =
        readAheadOf ? readAheadOf(s) : std::span<const ReadAhead>();
    const size_t count = std::min(ranges.size(), kMaxReadAhead);
    for (size_t r = 0; r < count; ++r) {
      segment.aheadBegin[r].store(ranges[r].begin, std::memory_order_relaxed);
      segment.aheadBytes[r].store(ranges[r].bytes, std::memory_order_relaxed);
    }
    segment.aheadCount.store(static_cast<uint32_t>(count), std::memory_order_relaxed);
    segment.aheadGeneration.store(generation, std::memory_order_relaxed);
  }
  for (unsigned s = 0; s < numThreads_; ++s) {
    segments_[s].end.store(firstPiece_[s + 1], std::memory_order_relaxed);
    segments_[s].ticket.store(uint64_t{generation} << 32 | firstPiece_[s],
                              std::memory_order_release);
  }
  {
    // Under the mutex so that a worker about to sleep cannot miss it.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.store(generation, std::memory_order_release);
  }
  wake_.notify_all();
  runChunks(generation, 0);
  auto allDone = [&] {
    return completed_.load(std::memory_order_acquire) == pieces;
  };
  readAhead(generation, 0, allDone);
  if (!spinUntil(allDone)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, allDone);
  }
  body_ = nullptr;
}

void ThreadPool::runChunks(uint32_t generation, unsigned slot) {
  for (unsigned i = 0; i < numThreads_; ++i) {
    Segment &segment = segments_[(slot + i) % numThreads_];
    uint64_t ticket = segment.ticket.load(std::memory_order_acquire);
    while (true) {
      if (generationOf(ticket) != generation)
        return; // a newer call: this one's chunks are all claimed
      const uint32_t index = static_cast<uint32_t>(ticket);
      // A stale read (a newer call) is caught by the exchange below.
      if (index >= segment.end.load(std::memory_order_relaxed))
        break; // this segment is claimed; the next one
      if (!segment.ticket.compare_exchange_weak(ticket, ticket + 1,
                                                std::memory_order_acq_rel))
        continue; // ticket now holds the fresh value
      (*body_)(pieceBegin_[index], pieceBegin_[index + 1]);
      if (completed_.fetch_add(1, std::memory_order_acq_rel) + 1 ==
          numChunks_.load(std::memory_order_relaxed)) {
        std::lock_guard<std::mutex> lock(mutex_); // pairs with done_.wait
        done_.notify_one();
      }
      ticket = segment.ticket.load(std::memory_order_acquire);
    }
  }
}

template <class Stop>
void ThreadPool::readAhead(uint32_t generation, unsigned slot, const Stop &stop) {
  Segment &segment = segments_[slot];
  if (segment.aheadGeneration.load(std::memory_order_relaxed) != generation)
    return;
  const uint32_t count = segment.aheadCount.load(std::memory_order_relaxed);
  for (uint32_t r = 0; r < count && r < kMaxReadAhead; ++r) {
    const char *p = static_cast<const char *>(segment.aheadBegin[r].load(std::memory_order_relaxed));
    const size_t bytes = segment.aheadBytes[r].load(std::memory_order_relaxed);
    // A prefetch never faults, so a range that a newer call has replaced
    // meanwhile costs at most a few useless lines.
    for (size_t offset = 0; offset < bytes; offset += kReadAheadStep) {
      if (stop())
        return;
      for (size_t line = offset; line < std::min(bytes, offset + kReadAheadStep); line += 64)
        __builtin_prefetch(p + line, 0, 2); // into L2 (prefetcht1)
    }
  }
}

void ThreadPool::workerLoop(unsigned slot) {
  uint32_t seenGeneration = 0;
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
    runChunks(seenGeneration, slot);
    readAhead(seenGeneration, slot, [&] {
      return generation_.load(std::memory_order_relaxed) != seenGeneration ||
             stopping_.load(std::memory_order_relaxed);
    });
  }
}

} // namespace llmir::engine
