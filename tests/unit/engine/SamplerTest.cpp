#include "llmir/engine/Sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

namespace llmir::engine {
namespace {

std::vector<float> randomLogits(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

TEST(Sampler, GreedyPicksLowestIndexOfTheMaximum) {
  Sampler greedy({.temperature = 0.0f});
  std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(greedy.sample(logits), 1);
  EXPECT_EQ(argmax(logits), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  for (unsigned seed = 0; seed < 5; ++seed) {
    std::vector<float> logits = randomLogits(100, seed);
    Sampler topOne({.temperature = 1.0f, .topK = 1, .seed = seed});
    EXPECT_EQ(topOne.sample(logits), argmax(logits));
  }
}

TEST(Sampler, SameSeedReproducesDifferentSeedDiffers) {
  std::vector<float> logits(1000, 0.0f); // uniform: every draw is random
  auto draw = [&](uint64_t seed) {
    Sampler s({.temperature = 0.8f, .topP = 0.95f, .seed = seed});
    std::vector<int32_t> tokens;
    for (int i = 0; i < 20; ++i)
      tokens.push_back(s.sample(logits));
    return tokens;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, TopPAndTopKRestrictTheSupport) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
  std::vector<float> logits = {std::log(0.15f), std::log(0.5f),
                               std::log(0.05f), std::log(0.3f)};
  auto support = [&](SamplingParams params) {
    Sampler s(params);
    std::set<int32_t> seen;
    for (int i = 0; i < 2000; ++i)
      seen.insert(s.sample(logits));
    return seen;
  };
  // Cumulative 0.5, 0.8 >= 0.7: tokens 1 and 3 only.
  EXPECT_EQ(support({.topP = 0.7f, .seed = 1}), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(support({.topK = 2, .seed = 2}), (std::set<int32_t>{1, 3}));
  EXPECT_EQ(support({.topP = 0.4f, .seed = 3}), (std::set<int32_t>{1}));
  EXPECT_EQ(support({.seed = 4}), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(StopCriteria, StopsOnStopIdsAndLength) {
  StopCriteria stop{{2, 7}, 3};
  EXPECT_FALSE(stop.shouldStop(5, 1));
  EXPECT_TRUE(stop.shouldStop(7, 1));
  EXPECT_TRUE(stop.shouldStop(5, 3));
  StopCriteria unlimited{{2}, 0};
  EXPECT_FALSE(unlimited.shouldStop(5, 1000));
}

} // namespace
} // namespace llmir::engine
