#include "llmir/engine/ThreadPool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace llmir::engine {
namespace {

// Back-to-back calls of changing size: every index runs exactly once per
// call and no call hangs. Workers that wake late hold stale tickets of the
// previous call; a claim against the new call's chunk count would run a
// chunk twice and (before the fix) leave the caller waiting forever.
TEST(ThreadPool, EveryIndexOnceAcrossManyCallsOfChangingSize) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(4096);
  for (int call = 0; call < 20000; ++call) {
    const size_t n = 1 + static_cast<size_t>((call * 7919) % 4096);
    for (size_t i = 0; i < n; ++i)
      hits[i].store(0, std::memory_order_relaxed);
    pool.parallelFor(n, 1, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i)
        hits[i].fetch_add(1, std::memory_order_relaxed);
    });
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(hits[i].load(), 1) << "call " << call << " index " << i;
  }
}

// segmentOf names the rows each thread claims first: the segments of all
// threads tile [0, n) in order, whatever n and the minimum chunk.
TEST(ThreadPool, SegmentsTileTheRange) {
  for (unsigned threads : {1u, 2u, 3u, 4u}) {
    ThreadPool pool(threads);
    for (size_t n : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{576}, size_t{960},
                     size_t{3072}, size_t{49152}})
      for (size_t minChunk : {size_t{1}, size_t{16}, size_t{64}}) {
        size_t next = 0;
        for (unsigned slot = 0; slot < threads; ++slot) {
          const auto [begin, end] = pool.segmentOf(n, minChunk, slot);
          EXPECT_EQ(begin, next) << threads << " threads, n " << n << ", slot " << slot;
          EXPECT_LE(begin, end);
          next = end;
        }
        EXPECT_EQ(next, n) << threads << " threads, n " << n << ", min chunk " << minChunk;
      }
  }
}

// With a read-ahead (the next call's data prefetched while threads wait),
// every index still runs once, every thread's ranges are asked for, and
// calls with and without one alternate without hanging.
TEST(ThreadPool, ReadAheadLeavesTheWorkUnchanged) {
  ThreadPool pool(3);
  std::vector<char> buffer(1 << 20);
  std::vector<std::atomic<int>> hits(4096);
  for (int call = 0; call < 5000; ++call) {
    const size_t n = 1 + static_cast<size_t>((call * 7919) % 4096);
    for (size_t i = 0; i < n; ++i)
      hits[i].store(0, std::memory_order_relaxed);
    std::vector<int> asked(pool.numThreads(), 0);
    ReadAhead ranges[2] = {{buffer.data(), buffer.size() / 2},
                           {buffer.data() + buffer.size() / 2, buffer.size() / 2}};
    auto body = [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i)
        hits[i].fetch_add(1, std::memory_order_relaxed);
    };
    if (call % 2)
      pool.parallelFor(n, 1, body);
    else
      pool.parallelFor(n, 1, body, [&](unsigned slot) {
        ++asked.at(slot);
        return std::span<const ReadAhead>(ranges, slot % 3);
      });
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(hits[i].load(), 1) << "call " << call << " index " << i;
    if (call % 2 == 0 && n > 1)
      for (int a : asked)
        ASSERT_EQ(a, 1) << "call " << call;
  }
}

TEST(ThreadPool, SingleThreadAndEmptyRanges) {
  ThreadPool pool(1);
  int sum = 0;
  pool.parallelFor(0, 1, [&](size_t, size_t) { sum += 100; });
  pool.parallelFor(10, 1, [&](size_t b, size_t e) { sum += static_cast<int>(e - b); });
  EXPECT_EQ(sum, 10);
}

} // namespace
} // namespace llmir::engine
