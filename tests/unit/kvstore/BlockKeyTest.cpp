#include "llmir/kvstore/BlockKey.h"

#include <gtest/gtest.h>

#include <vector>

using namespace llmir::kvstore;

namespace {

BlockKeyFields fields(const std::vector<int32_t> &tokens) {
  BlockKeyFields f;
  f.model = "tiny-llama";
  f.layerBegin = 0;
  f.layerEnd = 4;
  f.shard = 0;
  f.shardCount = 2;
  f.dtype = "f32";
  f.blockTokens = 4;
  f.tokenPrefix = tokens;
  return f;
}

TEST(BlockKey, SameFieldsSameKeyAndEveryFieldMatters) {
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  auto base = makeBlockKey(fields(tokens));
  ASSERT_TRUE(base) << base.message();
  EXPECT_EQ(*makeBlockKey(fields(tokens)), *base);
  EXPECT_EQ(base->hex().size(), 64u);

  std::vector<int32_t> other = tokens;
  other[0] = 9; // an earlier token changes every later block
  EXPECT_NE(*makeBlockKey(fields(other)), *base);

  auto vary = [&](auto mutate) {
    BlockKeyFields f = fields(tokens);
    mutate(f);
    auto key = makeBlockKey(f);
    EXPECT_TRUE(key) << key.message();
    return key ? *key : BlockKey{};
  };
  EXPECT_NE(vary([](BlockKeyFields &f) { f.model = "tiny-llama2"; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.layerBegin = 1; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.layerEnd = 5; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.shard = 1; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.shardCount = 4; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.dtype = "bf16"; }), *base);
  EXPECT_NE(vary([](BlockKeyFields &f) { f.blockTokens = 2; }), *base);
  // Length-prefixed fields: moving a character between model and dtype
  // does not collide.
  EXPECT_NE(vary([](BlockKeyFields &f) { f.model = "tiny-llamaf"; f.dtype = "32"; }),
            *base);
}

TEST(BlockKey, InvalidFieldsAreNamed) {
  std::vector<int32_t> tokens = {1, 2, 3, 4};
  auto expectError = [&](auto mutate, const std::string &needle) {
    BlockKeyFields f = fields(tokens);
    mutate(f);
    auto key = makeBlockKey(f);
    ASSERT_FALSE(key);
    EXPECT_NE(key.message().find(needle), std::string::npos) << key.message();
  };
  expectError([](BlockKeyFields &f) { f.model.clear(); }, "model");
  expectError([](BlockKeyFields &f) { f.layerEnd = 0; }, "layer range");
  expectError([](BlockKeyFields &f) { f.shard = 2; }, "shard");
  expectError([](BlockKeyFields &f) { f.dtype = "F32"; }, "dtype");
  expectError([](BlockKeyFields &f) { f.blockTokens = 0; }, "block size");
  std::vector<int32_t> partial = {1, 2, 3};
  expectError([&](BlockKeyFields &f) { f.tokenPrefix = partial; }, "block boundary");
  expectError([&](BlockKeyFields &f) { f.tokenPrefix = {}; }, "block boundary");
}

} // namespace
