#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace llmir::engine {
namespace {

TEST(BlockAllocator, AllocatesDistinctBlocksAndFreesThem) {
  BlockAllocator alloc(4);
  auto a = alloc.allocate(3);
  ASSERT_TRUE(a.isOk()) << a.message();
  EXPECT_EQ(alloc.numFree(), 1);
  EXPECT_EQ(alloc.numAllocated(), 3);
  std::vector<int32_t> ids = *a;
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2}));

  auto tooMany = alloc.allocate(2);
  EXPECT_FALSE(tooMany.isOk());
  EXPECT_EQ(alloc.numFree(), 1) << "a failed allocation takes nothing";

  EXPECT_TRUE(alloc.free({a->at(0)}).isOk());
  EXPECT_EQ(alloc.numFree(), 2);
  EXPECT_FALSE(alloc.free({a->at(0)}).isOk()) << "double free";
  EXPECT_FALSE(alloc.free({7}).isOk()) << "out of range";
  EXPECT_FALSE(alloc.free({a->at(1), a->at(1)}).isOk()) << "same id twice";
  EXPECT_EQ(alloc.numFree(), 2) << "a failed free releases nothing";
}

TEST(KvCache, RejectsEmptyShape) {
  EXPECT_FALSE(KvCache::create({1, 2, 4, 0, 8}).isOk());
  EXPECT_FALSE(KvCache::create({1, 2, 4, 4, 0}).isOk());
  EXPECT_TRUE(KvCache::create({1, 2, 4, 4, 8}).isOk());
}

TEST(KvCache, DecodeReadsEveryCachedPositionOfEveryLayer) {
  // SmolLM-135M: 30 layers, 3 KV heads of 64; 128 tokens after 512.
  const KvCacheShape smol{30, 3, 64, 16, 40};
  // The steps attend over 513, 514, ..., 640 positions: 73,792 in all.
  EXPECT_EQ(decodeKvBytesRead(smol, 4, 512, 128), int64_t{73792} * 30 * 3 * 64 * 2 * 4);
  EXPECT_EQ(decodeKvBytesRead(smol, 2, 512, 128), int64_t{73792} * 30 * 3 * 64 * 2 * 2);
  // One step with nothing cached reads its own key and value.
  EXPECT_EQ(decodeKvBytesRead({2, 1, 8, 4, 1}, 4, 0, 1), 2 * 1 * 8 * 2 * 4);
  EXPECT_EQ(decodeKvBytesRead(smol, 4, 512, 0), 0);
}

class StepValidation : public ::testing::Test {
protected:
  KvCacheShape cache{1, 1, 4, 4, 8}; // block size 4, 8 blocks
  StepInput good() {
    StepInput s;
    s.tokenIds = {1, 2, 3, 4, 5};
    s.positions = {0, 1, 2, 3, 4};
    s.tokenSeq = {0, 0, 0, 0, 0};
    s.blockTables = {{3, 5}};
    return s;
  }
};

TEST_F(StepValidation, AcceptsConsistentStepAndPicksLastTokens) {
  StepInput s = good();
  EXPECT_TRUE(validateStepInput(s, cache).isOk());
  EXPECT_EQ(selectedRows(s), (std::vector<int32_t>{4}));
  s.tokenSeq = {0, 0, 1, 1, 1};
  s.positions = {0, 1, 0, 1, 2};
  s.blockTables = {{0}, {1}};
  ASSERT_TRUE(validateStepInput(s, cache).isOk());
  EXPECT_EQ(selectedRows(s), (std::vector<int32_t>{1, 4}));
}

TEST_F(StepValidation, RejectsInconsistentSteps) {
  auto expectError = [&](StepInput s, const std::string &fragment) {
    Status st = validateStepInput(s, cache);
    ASSERT_FALSE(st.isOk()) << fragment;
    EXPECT_NE(st.message().find(fragment), std::string::npos) << st.message();
  };
  StepInput s = good();
  s.positions.pop_back();
  expectError(s, "sizes differ");
  s = good();
  s.tokenSeq[2] = 1;
  expectError(s, "step token 2: sequence index 1");
  s = good();
  s.blockTables = {{3}};
  expectError(s, "needs block 1");
  s = good();
  s.blockTables = {{3, 8}};
  expectError(s, "block id 8");
  s = good();
  s.positions[0] = -1;
  expectError(s, "step token 0: negative position");
  s = good();
  s.outputRows = {5};
  expectError(s, "output row");
  expectError(StepInput{}, "no tokens");
}

} // namespace
} // namespace llmir::engine
