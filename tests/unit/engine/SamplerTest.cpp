#include "llmir/engine/Sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
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

/// The definition Sampler::sample follows, written out with a full sort:
/// candidates by decreasing logit (ties: lower id), top-k, the smallest
/// prefix whose mass reaches top-p, then the first whose running mass passes
/// uniform * the kept mass.
int32_t sortedReference(std::span<const float> logits, const SamplingParams &p, double uniform) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const size_t k = p.topK > 0 ? std::min(order.size(), size_t(p.topK)) : order.size();
  std::vector<float> probs(k);
  double total = 0;
  for (size_t i = 0; i < k; ++i) {
    const double e = std::exp((logits[order[i]] - double(logits[order[0]])) / p.temperature);
    probs[i] = static_cast<float>(e);
    total += e;
  }
  size_t keep = k;
  double cumulative = 0;
  for (size_t i = 0; p.topP < 1.0f && i < k; ++i)
    if ((cumulative += probs[i] / total) >= p.topP) {
      keep = i + 1;
      break;
    }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i)
    kept += probs[i];
  double draw = kept * uniform;
  for (size_t i = 0; i < keep; ++i)
    if ((draw -= probs[i]) < 0)
      return order[i];
  return order[keep - 1];
}

// The sampler sorts only the prefix the nucleus and the draw reach: the
// same tokens as the full sort, on vocabularies up to Qwen's, peaked and
// flat rows, rows with many equal logits, with and without top-k / top-p.
TEST(Sampler, SortsOnlyWhatTheDrawReachesAndMatchesTheFullSort) {
  std::mt19937 rng(5);
  int compared = 0;
  for (size_t vocab : {size_t(1), size_t(7), size_t(300), size_t(32000), size_t(151936)})
    for (float spread : {0.5f, 3.0f, 12.0f})
      for (bool rounded : {false, true}) {
        std::vector<float> logits = randomLogits(vocab, static_cast<unsigned>(vocab + spread));
        for (float &v : logits)
          v = rounded ? std::round(v * spread / 2) : v * spread / 2;
        for (SamplingParams p : {SamplingParams{0.8f, 0.9f, 0, 0}, SamplingParams{1.0f, 1.0f, 0, 0},
                                 SamplingParams{0.7f, 0.95f, 40, 0},
                                 SamplingParams{1.5f, 1.0f, 1000, 0},
                                 SamplingParams{0.3f, 0.5f, 0, 0}}) {
          const double uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
          EXPECT_EQ(Sampler(p).sample(logits, uniform), sortedReference(logits, p, uniform))
              << "vocab " << vocab << " spread " << spread << (rounded ? " rounded" : "")
              << " T " << p.temperature << " top-p " << p.topP << " top-k " << p.topK
              << " u " << uniform;
          ++compared;
        }
      }
  EXPECT_EQ(compared, 150);
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
