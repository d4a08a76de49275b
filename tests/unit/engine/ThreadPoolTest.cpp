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

TEST(ThreadPool, SingleThreadAndEmptyRanges) {
  ThreadPool pool(1);
  int sum = 0;
  pool.parallelFor(0, 1, [&](size_t, size_t) { sum += 100; });
  pool.parallelFor(10, 1, [&](size_t b, size_t e) { sum += static_cast<int>(e - b); });
  EXPECT_EQ(sum, 10);
}

} // namespace
} // namespace llmir::engine
