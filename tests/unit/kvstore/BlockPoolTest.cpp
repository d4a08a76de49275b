#include "llmir/kvstore/BlockPool.h"

#include <gtest/gtest.h>

using namespace llmir::kvstore;

namespace {

BlockKey keyOf(uint8_t n) {
  BlockKey k;
  k.bytes[0] = n;
  k.bytes[31] = n;
  return k;
}

std::shared_ptr<StoredBlock> blockOf(uint8_t n, uint64_t bytes) {
  auto b = std::make_shared<StoredBlock>();
  b->key = keyOf(n);
  b->dtype = "f32";
  b->bytes = bytes;
  b->data.reset(new uint8_t[bytes]);
  return b;
}

void add(BlockPool &pool, uint8_t n, uint64_t bytes) {
  ASSERT_TRUE(pool.reserve(bytes));
  pool.insert(blockOf(n, bytes));
}

TEST(BlockPool, EvictsLeastRecentlyUsedWithinTheBudget) {
  BlockPool pool(300);
  add(pool, 1, 100);
  add(pool, 2, 100);
  add(pool, 3, 100);
  ASSERT_NE(pool.find(keyOf(1)), nullptr); // 1 is now the most recent
  add(pool, 4, 100);                       // evicts 2, the least recent
  EXPECT_EQ(pool.find(keyOf(2)), nullptr);
  EXPECT_NE(pool.find(keyOf(1)), nullptr);
  EXPECT_NE(pool.find(keyOf(3)), nullptr);
  EXPECT_NE(pool.find(keyOf(4)), nullptr);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.bytesHeld, 300u);
  EXPECT_EQ(s.blocks, 3u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 4u);
}

TEST(BlockPool, ReservationsCountAgainstTheBudget) {
  BlockPool pool(300);
  add(pool, 1, 100);
  ASSERT_TRUE(pool.reserve(200)); // a put in flight
  // Evicting cannot make room next to the reservation: refused, and the
  // held block stays.
  auto st = pool.reserve(200);
  EXPECT_FALSE(st);
  EXPECT_NE(st.message().find("full"), std::string::npos) << st.message();
  EXPECT_EQ(pool.stats().blocks, 1u);
  ASSERT_TRUE(pool.reserve(100)); // fits once block 1 is evicted
  EXPECT_EQ(pool.stats().blocks, 0u);
  pool.release(100);
  pool.release(200);
  EXPECT_TRUE(pool.reserve(300));
  auto tooBig = pool.reserve(301);
  EXPECT_FALSE(tooBig);
  EXPECT_NE(tooBig.message().find("exceeds"), std::string::npos) << tooBig.message();
}

TEST(BlockPool, ReplacingAKeyKeepsTheAccounting) {
  BlockPool pool(1000);
  add(pool, 1, 100);
  add(pool, 1, 300);
  PoolStats s = pool.stats();
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.bytesHeld, 300u);
  EXPECT_EQ(s.bytesReserved, 0u);
}

} // namespace
