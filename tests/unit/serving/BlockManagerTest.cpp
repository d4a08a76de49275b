// Block tables, reference counts and automatic prefix caching.
#include "llmir/serving/BlockManager.h"

#include <gtest/gtest.h>

#include <numeric>

namespace llmir::serving {
namespace {

std::vector<int32_t> iota(int32_t n, int32_t first = 100) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(BlockManager, AllocatesWholeBlocksAllOrNothing) {
  BlockManager m(4, 4, true);
  SequenceBlocks a;
  EXPECT_EQ(m.blocksNeeded(a, 9), 3);
  ASSERT_TRUE(m.ensureCapacity(a, 9));
  EXPECT_EQ(a.table.size(), 3u);
  EXPECT_DOUBLE_EQ(m.usage(), 0.75);
  SequenceBlocks b;
  EXPECT_FALSE(m.ensureCapacity(b, 8)); // needs 2, one is free
  EXPECT_TRUE(b.table.empty());
  EXPECT_EQ(m.numAvailable(), 1);
  m.release(a);
  EXPECT_DOUBLE_EQ(m.usage(), 0.0);
  EXPECT_EQ(m.numAvailable(), 4);
}

// A KV-store load that found fewer blocks than were taken for it gives the
// rest back: committed blocks stay cached, the others are free again.
TEST(BlockManager, TruncateKeepsTheLeadingBlocksAndTheirCache) {
  BlockManager m(6, 4, true);
  const std::vector<int32_t> tokens = iota(17);
  SequenceBlocks seq;
  ASSERT_TRUE(m.ensureCapacity(seq, 16)); // 4 blocks
  m.commitFullBlocks(seq, tokens, 8);     // 2 of them loaded and committed
  m.truncate(seq, 2);
  EXPECT_EQ(seq.table.size(), 2u);
  EXPECT_EQ(seq.hashes.size(), 2u);
  EXPECT_EQ(m.numAvailable(), 4);
  m.truncate(seq, 5); // nothing past the table: no change
  EXPECT_EQ(seq.table.size(), 2u);
  m.release(seq);
  SequenceBlocks again;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, again), 8) << "the committed blocks stay cached";
}

TEST(BlockManager, ReusesCommittedFullBlocksOfTheSamePrefix) {
  BlockManager m(8, 4, true);
  const std::vector<int32_t> tokens = iota(10);
  SequenceBlocks first;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, first), 0);
  ASSERT_TRUE(m.ensureCapacity(first, 10));
  m.commitFullBlocks(first, tokens, 10); // blocks 0 and 1 are full
  EXPECT_EQ(first.hashes.size(), 2u);

  SequenceBlocks second; // shares while the first still runs
  EXPECT_EQ(m.reuseCachedPrefix(tokens, second), 8);
  EXPECT_EQ(second.table[0], first.table[0]);
  EXPECT_EQ(second.table[1], first.table[1]);
  EXPECT_EQ(m.prefixHitTokens(), 8u);
  EXPECT_EQ(m.prefixQueryTokens(), 20u);

  // A different second block shares only the first.
  std::vector<int32_t> other = tokens;
  other[5] = 7;
  SequenceBlocks third;
  EXPECT_EQ(m.reuseCachedPrefix(other, third), 4);
  m.release(first);
  m.release(second);
  m.release(third);
  EXPECT_DOUBLE_EQ(m.usage(), 0.0);

  // Released cached blocks stay reusable.
  SequenceBlocks again;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, again), 8);
  m.release(again);
}

TEST(BlockManager, LeavesTheLastTokenToCompute) {
  BlockManager m(4, 4, true);
  const std::vector<int32_t> tokens = iota(8);
  SequenceBlocks a;
  ASSERT_TRUE(m.ensureCapacity(a, 8));
  m.commitFullBlocks(a, tokens, 8);
  m.release(a);
  SequenceBlocks b;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, b), 4); // not 8: logits need a token
  m.release(b);
}

TEST(BlockManager, EvictsCachedBlocksOnlyWhenNothingElseIsFree) {
  BlockManager m(3, 2, true);
  const std::vector<int32_t> tokens = iota(5);
  SequenceBlocks a;
  ASSERT_TRUE(m.ensureCapacity(a, 5));
  m.commitFullBlocks(a, tokens, 5);
  m.release(a); // two cached blocks + one plain free block
  EXPECT_EQ(m.numAvailable(), 3);

  SequenceBlocks b;
  ASSERT_TRUE(m.ensureCapacity(b, 2)); // takes the uncached block
  SequenceBlocks probe;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, probe), 4);
  m.release(probe);

  ASSERT_TRUE(m.ensureCapacity(b, 4)); // must evict: the deepest block goes
  SequenceBlocks probe2;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, probe2), 2);
  m.release(probe2);
  m.release(b);
}

TEST(BlockManager, WithoutPrefixCachingNothingIsShared) {
  BlockManager m(4, 2, false);
  const std::vector<int32_t> tokens = iota(5);
  SequenceBlocks a;
  ASSERT_TRUE(m.ensureCapacity(a, 5));
  m.commitFullBlocks(a, tokens, 5);
  SequenceBlocks b;
  EXPECT_EQ(m.reuseCachedPrefix(tokens, b), 0);
  m.release(a);
}

} // namespace
} // namespace llmir::serving
