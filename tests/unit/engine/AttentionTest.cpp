// Paged attention: agrees with contiguous causal attention whatever the
// block size and physical block order, and across prefill/decode splits.
#include "TestUtil.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <initializer_list>
#include <limits>
#include <string>
#include <cmath>
#include <numeric>

namespace llmir::engine {
namespace {

using namespace testing;

constexpr int64_t kHeads = 4, kKvHeads = 2, kHeadDim = 8, kLength = 11;
constexpr float kScale = 0.35f;

struct Sequence {
  std::vector<float> q, k, v; // [kLength, heads * D]
};

Sequence randomSequence(unsigned seed) {
  std::mt19937 rng(seed);
  return {randomFloats(kLength * kHeads * kHeadDim, rng),
          randomFloats(kLength * kKvHeads * kHeadDim, rng),
          randomFloats(kLength * kKvHeads * kHeadDim, rng)};
}

std::vector<float> rows(const std::vector<float> &x, int64_t width,
                        int64_t begin, int64_t end) {
  return {x.begin() + begin * width, x.begin() + end * width};
}

/// Runs attention for tokens [begin, end) of `seq` in one step.
std::vector<float> runStep(const Sequence &seq, int64_t begin, int64_t end,
                           const std::vector<int32_t> &blockTable,
                           KvCache &cache, ThreadPool &pool) {
  StepInput step;
  for (int64_t p = begin; p < end; ++p) {
    step.tokenIds.push_back(0);
    step.positions.push_back(static_cast<int32_t>(p));
    step.tokenSeq.push_back(0);
  }
  step.blockTables = {blockTable};
  EXPECT_TRUE(validateStepInput(step, cache.shape()).isOk());
  const int64_t qw = kHeads * kHeadDim, kvw = kKvHeads * kHeadDim;
  std::vector<float> q = rows(seq.q, qw, begin, end);
  std::vector<float> k = rows(seq.k, kvw, begin, end);
  std::vector<float> v = rows(seq.v, kvw, begin, end);
  std::vector<float> out(static_cast<size_t>((end - begin) * qw));
  cpu::AttentionParams params{0, kHeads, kKvHeads, kHeadDim, kScale};
  cpu::pagedAttention(q.data(), k.data(), v.data(), step, params, cache,
                      out.data(), pool);
  return out;
}

KvCache makeCache(int64_t blockSize, int64_t numBlocks) {
  return std::move(
      *KvCache::create({1, kKvHeads, kHeadDim, blockSize, numBlocks}));
}

void expectMatchesReference(const std::vector<float> &out, const Sequence &seq,
                            int64_t firstRow) {
  std::vector<double> ref =
      refAttention(toDouble(seq.q), toDouble(seq.k), toDouble(seq.v), kLength,
                   kHeads, kKvHeads, kHeadDim, kScale);
  const int64_t qw = kHeads * kHeadDim;
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], ref[firstRow * qw + i], 1e-5)
        << "row " << firstRow + static_cast<int64_t>(i) / qw;
}

TEST(PagedAttention, PrefillMatchesReferenceForAnyBlockLayout) {
  Sequence seq = randomSequence(11);
  ThreadPool pool(3);
  for (int64_t blockSize : {1, 3, 4, 16}) {
    const int64_t needed = (kLength + blockSize - 1) / blockSize;
    std::vector<int32_t> table(static_cast<size_t>(needed));
    std::iota(table.begin(), table.end(), 0);
    // Physical blocks in a scrambled order within a larger cache.
    std::reverse(table.begin(), table.end());
    for (int32_t &b : table)
      b = b * 2 + 1;
    KvCache cache = makeCache(blockSize, 2 * needed + 1);
    expectMatchesReference(runStep(seq, 0, kLength, table, cache, pool), seq,
                           0);
  }
}

TEST(PagedAttention, PrefillThenDecodeEqualsOneShotPrefill) {
  Sequence seq = randomSequence(12);
  ThreadPool pool(2);
  const std::vector<int32_t> table = {5, 2, 7};
  KvCache oneShotCache = makeCache(4, 8);
  std::vector<float> oneShot = runStep(seq, 0, kLength, table, oneShotCache, pool);

  KvCache cache = makeCache(4, 8);
  std::vector<float> split = runStep(seq, 0, 6, table, cache, pool);
  for (int64_t p = 6; p < kLength; ++p) {
    std::vector<float> decoded = runStep(seq, p, p + 1, table, cache, pool);
    split.insert(split.end(), decoded.begin(), decoded.end());
  }
  ASSERT_EQ(split.size(), oneShot.size());
  for (size_t i = 0; i < split.size(); ++i)
    ASSERT_FLOAT_EQ(split[i], oneShot[i]) << i;
  expectMatchesReference(split, seq, 0);
}

TEST(PagedAttention, SequencesInOneStepStayApart) {
  Sequence a = randomSequence(21), b = randomSequence(22);
  ThreadPool pool(2);
  KvCache cache = makeCache(4, 8);
  const int64_t qw = kHeads * kHeadDim;
  // Tokens of a (blocks 0..2) then of b (blocks 3..5), one step.
  StepInput step;
  std::vector<float> q, k, v;
  for (int seqIndex = 0; seqIndex < 2; ++seqIndex) {
    const Sequence &s = seqIndex == 0 ? a : b;
    for (int64_t p = 0; p < kLength; ++p) {
      step.tokenIds.push_back(0);
      step.positions.push_back(static_cast<int32_t>(p));
      step.tokenSeq.push_back(seqIndex);
    }
    auto append = [](std::vector<float> &dst, const std::vector<float> &src) {
      dst.insert(dst.end(), src.begin(), src.end());
    };
    append(q, s.q);
    append(k, s.k);
    append(v, s.v);
  }
  step.blockTables = {{0, 1, 2}, {3, 4, 5}};
  ASSERT_TRUE(validateStepInput(step, cache.shape()).isOk());
  std::vector<float> out(static_cast<size_t>(2 * kLength * qw));
  cpu::AttentionParams params{0, kHeads, kKvHeads, kHeadDim, kScale};
  cpu::pagedAttention(q.data(), k.data(), v.data(), step, params, cache,
                      out.data(), pool);
  expectMatchesReference(rows(out, qw, 0, kLength), a, 0);
  expectMatchesReference(rows(out, qw, kLength, 2 * kLength), b, 0);
}

// A sliding window W: each token sees positions p - W < j <= p, in the
// blocked prefill path (runs of >= 4 tokens, head_dim 16), token-by-token
// decode, and the sequence-parallel partial attention merged over 2 shards.
TEST(PagedAttention, SlidingWindowHidesOlderPositionsOnEveryPath) {
  constexpr int64_t H = 4, Hkv = 2, D = 16, L = 45, W = 7, B = 4;
  constexpr float scale = 0.3f;
  std::mt19937 rng(31);
  const std::vector<float> q = randomFloats(L * H * D, rng, 2.0f);
  const std::vector<float> k = randomFloats(L * Hkv * D, rng, 2.0f);
  const std::vector<float> v = randomFloats(L * Hkv * D, rng);
  const std::vector<double> ref =
      refAttention(toDouble(q), toDouble(k), toDouble(v), L, H, Hkv, D, scale, W);
  const std::vector<double> full =
      refAttention(toDouble(q), toDouble(k), toDouble(v), L, H, Hkv, D, scale);
  ThreadPool pool(2);
  std::vector<int32_t> table(static_cast<size_t>((L + B - 1) / B));
  std::iota(table.rbegin(), table.rend(), 0); // scrambled physical order
  cpu::AttentionParams params{0, H, Hkv, D, scale};
  params.slidingWindow = W;
  auto newCache = [&] {
    return std::move(*KvCache::create({1, Hkv, D, B, static_cast<int64_t>(table.size())}));
  };
  auto stepOf = [&](int64_t begin, int64_t end) {
    StepInput step;
    for (int64_t p = begin; p < end; ++p) {
      step.tokenIds.push_back(0);
      step.positions.push_back(static_cast<int32_t>(p));
      step.tokenSeq.push_back(0);
    }
    step.blockTables = {table};
    return step;
  };
  auto expectWindowed = [&](const std::vector<float> &out, int64_t begin, const char *path) {
    double differsFromFull = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const size_t at = static_cast<size_t>(begin * H * D) + i;
      ASSERT_NEAR(out[i], ref[at], 1e-5) << path << " element " << at;
      differsFromFull = std::max(differsFromFull, std::abs(out[i] - full[at]));
    }
    EXPECT_GT(differsFromFull, 1e-2) << path << ": the window changed nothing";
  };

  // Prefill of the whole sequence (blocked path).
  KvCache prefillCache = newCache();
  std::vector<float> out(static_cast<size_t>(L * H * D));
  cpu::pagedAttention(q.data(), k.data(), v.data(), stepOf(0, L), params, prefillCache,
                      out.data(), pool);
  expectWindowed(out, 0, "prefill");

  // 20 tokens of prefill, then decode one token at a time.
  KvCache decodeCache = newCache();
  const int64_t prefix = 20;
  std::vector<float> first(static_cast<size_t>(prefix * H * D));
  cpu::pagedAttention(q.data(), k.data(), v.data(), stepOf(0, prefix), params, decodeCache,
                      first.data(), pool);
  std::vector<float> decoded;
  for (int64_t p = prefix; p < L; ++p) {
    std::vector<float> row(static_cast<size_t>(H * D));
    cpu::pagedAttention(q.data() + p * H * D, k.data() + p * Hkv * D, v.data() + p * Hkv * D,
                        stepOf(p, p + 1), params, decodeCache, row.data(), pool);
    decoded.insert(decoded.end(), row.begin(), row.end());
  }
  expectWindowed(decoded, prefix, "decode");

  // Sequence parallel: 2 shards own alternate blocks; their partials merge
  // to the windowed attention.
  const int64_t partialWidth = H * D + H;
  std::vector<float> gathered(static_cast<size_t>(L * 2 * partialWidth));
  KvCache shardCaches[2] = {newCache(), newCache()};
  for (int64_t shard = 0; shard < 2; ++shard) {
    cpu::AttentionParams shardParams = params;
    shardParams.kvShards = 2;
    shardParams.kvShard = shard;
    std::vector<float> partial(static_cast<size_t>(L * partialWidth));
    cpu::partialAttention(q.data(), k.data(), v.data(), stepOf(0, L), shardParams,
                          shardCaches[shard], partial.data(), pool);
    for (int64_t t = 0; t < L; ++t)
      std::copy_n(partial.data() + t * partialWidth, partialWidth,
                  gathered.data() + (t * 2 + shard) * partialWidth);
  }
  std::vector<float> merged(static_cast<size_t>(L * H * D));
  cpu::mergeAttention(gathered.data(), L, 2, H, D, merged.data());
  expectWindowed(merged, 0, "sequence-parallel partials");
}

// Decode one token at a time over a cache of `element`, every output
// against the double reference of the keys and values as the cache holds
// them (a bf16 cache rounds them when storing).
void expectGroupedDecodeMatchesReference(int64_t H, int64_t Hkv, KvElement element,
                                         int64_t L = 45, unsigned threads = 2,
                                         int64_t D = 64, int64_t B = 8) {
  constexpr float scale = 0.125f;
  std::mt19937 rng(17);
  const std::vector<float> q = randomFloats(L * H * D, rng, 2.0f);
  const std::vector<float> k = randomFloats(L * Hkv * D, rng, 2.0f);
  const std::vector<float> v = randomFloats(L * Hkv * D, rng);
  auto stored = [&](const std::vector<float> &x) {
    std::vector<double> out = toDouble(x);
    if (element == KvElement::BF16)
      for (double &e : out)
        e = bf16ToF32(f32ToBf16(static_cast<float>(e)));
    return out;
  };
  const std::vector<double> ref =
      refAttention(toDouble(q), stored(k), stored(v), L, H, Hkv, D, scale);
  ThreadPool pool(threads);
  std::vector<int32_t> table(static_cast<size_t>((L + B - 1) / B));
  std::iota(table.rbegin(), table.rend(), 0);
  cpu::AttentionParams params{0, H, Hkv, D, scale};
  auto newCache = [&] {
    return std::move(
        *KvCache::create({1, Hkv, D, B, static_cast<int64_t>(table.size())}, element));
  };
  auto stepOf = [&](int64_t begin, int64_t end) {
    StepInput step;
    for (int64_t p = begin; p < end; ++p) {
      step.tokenIds.push_back(0);
      step.positions.push_back(static_cast<int32_t>(p));
      step.tokenSeq.push_back(0);
    }
    step.blockTables = {table};
    return step;
  };
  const std::string label = "H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) +
                            " D=" + std::to_string(D) + " B=" + std::to_string(B) +
                            (element == KvElement::BF16 ? " bf16" : " f32") +
                            " L=" + std::to_string(L) + " threads=" + std::to_string(threads);
  KvCache cache = newCache();
  for (int64_t p = 0; p < L; ++p) {
    std::vector<float> row(static_cast<size_t>(H * D));
    cpu::pagedAttention(q.data() + p * H * D, k.data() + p * Hkv * D,
                        v.data() + p * Hkv * D, stepOf(p, p + 1), params, cache,
                        row.data(), pool);
    for (int64_t i = 0; i < H * D; ++i)
      ASSERT_NEAR(row[static_cast<size_t>(i)], ref[static_cast<size_t>(p * H * D + i)], 1e-5)
          << label << " decode position " << p << " element " << i;
  }
  // The blocked prefill path (gathers the cache's rows) and the
  // sequence-parallel partials merged over 2 shards read the same cache.
  KvCache prefillCache = newCache();
  std::vector<float> out(static_cast<size_t>(L * H * D));
  cpu::pagedAttention(q.data(), k.data(), v.data(), stepOf(0, L), params, prefillCache,
                      out.data(), pool);
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], ref[i], 1e-5) << label << " prefill element " << i;
  const int64_t partialWidth = H * D + H;
  std::vector<float> gathered(static_cast<size_t>(L * 2 * partialWidth));
  for (int64_t shard = 0; shard < 2; ++shard) {
    KvCache shardCache = newCache();
    cpu::AttentionParams shardParams = params;
    shardParams.kvShards = 2;
    shardParams.kvShard = shard;
    std::vector<float> partial(static_cast<size_t>(L * partialWidth));
    cpu::partialAttention(q.data(), k.data(), v.data(), stepOf(0, L), shardParams,
                          shardCache, partial.data(), pool);
    for (int64_t t = 0; t < L; ++t)
      std::copy_n(partial.data() + t * partialWidth, partialWidth,
                  gathered.data() + (t * 2 + shard) * partialWidth);
  }
  cpu::mergeAttention(gathered.data(), L, 2, H, D, out.data());
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], ref[i], 1e-5) << label << " sequence-parallel element " << i;
}

// SmolLM's shape: 9 query heads on 3 KV heads (groups of 3 share a key
// read), head_dim 64 (the decode kernels' 64-wide register blocks), 45
// positions (blocks of 16 and 8 keys and a remainder); and groups of 4, 1
// and 2 query heads, and 5 query heads per KV head (split 4 + 1).
TEST(PagedAttention, GroupedDecodeMatchesReferenceAtHeadDim64) {
  for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{9, 3}, {8, 2}, {4, 4}, {6, 3}, {10, 2}})
    expectGroupedDecodeMatchesReference(H, Hkv, KvElement::F32);
}

// Decode over every length 1..L (one token at a time: blocks of 16 and 8
// keys, remainders of every size, one key alone) at head dims that are and
// are not a multiple of the kernels' 64-wide value blocks (16, 48, 80, 128;
// 24 takes the per-head path), for GQA ratios of 1, 3, 4 and 7 query heads
// per KV head, both cache elements, against the double reference; cache
// blocks of 8 positions in reverse physical order (a block of 16 keys is
// two pieces) and of 32 (16 keys equally spaced).
TEST(PagedAttention, DecodeMatchesReferenceAtOddLengthsAndHeadDims) {
  for (int64_t B : {8, 32})
    for (int64_t D : {16, 24, 48, 80, 128})
      for (auto [H, Hkv] : std::initializer_list<std::pair<int64_t, int64_t>>{
               {9, 3}, {3, 3}, {8, 2}, {7, 1}})
        for (KvElement element : {KvElement::F32, KvElement::BF16})
          expectGroupedDecodeMatchesReference(H, Hkv, element, 37, 1, D, B);
  // Split over threads (parts merged by log-sum-exp) at another head dim.
  expectGroupedDecodeMatchesReference(9, 3, KvElement::F32, 300, 2, 80);
}

// Fewer decode tokens than twice the threads: long contexts split a token's
// positions into parts (all query heads in each), merged by log-sum-exp;
// 2 groups of query heads per KV head (5 heads: 4 + 1) in every part; and
// one thread, which never splits.
TEST(PagedAttention, DecodeSplitOverThreadsMatchesReference) {
  expectGroupedDecodeMatchesReference(9, 3, KvElement::F32, 300, 2);
  expectGroupedDecodeMatchesReference(9, 3, KvElement::F32, 400, 4);
  expectGroupedDecodeMatchesReference(4, 1, KvElement::F32, 600, 3);
  expectGroupedDecodeMatchesReference(8, 2, KvElement::BF16, 300, 2);
  expectGroupedDecodeMatchesReference(10, 2, KvElement::F32, 300, 2);
  expectGroupedDecodeMatchesReference(10, 2, KvElement::BF16, 300, 3);
  expectGroupedDecodeMatchesReference(9, 3, KvElement::F32, 300, 1);
}

// A bf16 cache: the same paths agree with the reference of the rounded keys
// and values (the arithmetic stays f32).
TEST(PagedAttention, Bf16CacheMatchesReferenceOfRoundedKeysAndValues) {
  for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{9, 3}, {8, 2}, {4, 4}, {10, 2}})
    expectGroupedDecodeMatchesReference(H, Hkv, KvElement::BF16);
}

TEST(PagedAttention, Bf16StoreRoundsToNearestEvenAsTheScalarRule) {
  // Halfway cases, both signs, denormals, infinities and a NaN, past one
  // vector so both the vector body and the tail run.
  std::vector<float> x = {1.0f, -1.0f, 0.0f, -0.0f,
                          std::bit_cast<float>(0x3f808000u), // tie, even below
                          std::bit_cast<float>(0x3f818000u), // tie, odd below
                          std::bit_cast<float>(0x3f808001u),
                          std::bit_cast<float>(0x00000001u),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          std::bit_cast<float>(0x7f800001u), // signalling NaN
                          3.14159265f, -2.71828183f, 65504.0f, 1e-30f,
                          std::bit_cast<float>(0x7f7fffffu), 0.1f, -0.3f};
  KvCache cache = std::move(*KvCache::create({1, 1, static_cast<int64_t>(x.size()), 1, 1},
                                             KvElement::BF16));
  StepInput step;
  step.tokenIds = {0};
  step.positions = {0};
  step.tokenSeq = {0};
  step.blockTables = {{0}};
  cpu::AttentionParams params{0, 1, 1, static_cast<int64_t>(x.size()), 1.0f};
  cpu::storeKeysAndValues(x.data(), x.data(), 0, step, params, cache);
  const auto *stored = static_cast<const uint16_t *>(cache.keyData(0, 0, 0));
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_EQ(stored[i], f32ToBf16(x[i])) << "element " << i;
}

// transformers' _compute_llama3_parameters and linear scaling, written out
// in double: long wavelengths divided by the factor, short ones kept, the
// band between blended.
TEST(Rope, ScaledInverseFrequenciesFollowTransformers) {
  const int64_t D = 16;
  const double theta = 500000.0, factor = 8, low = 1, high = 4, context = 64;
  cpu::RopeScaling llama3;
  llama3.type = cpu::RopeScaling::Llama3;
  llama3.factor = 8;
  llama3.lowFreqFactor = 1;
  llama3.highFreqFactor = 4;
  llama3.originalMaxPosition = 64;
  const std::vector<float> got = cpu::ropeInverseFrequencies(D, float(theta), llama3);
  ASSERT_EQ(got.size(), 8u);
  int kept = 0, divided = 0, blended = 0;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double base = 1.0 / std::pow(theta, double(2 * i) / double(D));
    const double wavelength = 2 * M_PI / base;
    double want = base;
    if (wavelength > context / low) {
      want = base / factor;
      ++divided;
    } else if (wavelength >= context / high) {
      const double smooth = (context / wavelength - low) / (high - low);
      want = (1 - smooth) * base / factor + smooth * base;
      ++blended;
    } else {
      ++kept;
    }
    EXPECT_NEAR(got[static_cast<size_t>(i)], want, 1e-6 * want) << "i = " << i;
  }
  // The 8 frequencies of this shape cover all three bands.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);

  cpu::RopeScaling linear;
  linear.type = cpu::RopeScaling::Linear;
  linear.factor = 2;
  const std::vector<float> plain = cpu::ropeInverseFrequencies(D, 10000.0f, {});
  const std::vector<float> halved = cpu::ropeInverseFrequencies(D, 10000.0f, linear);
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_FLOAT_EQ(halved[i], plain[i] / 2);
}

} // namespace
} // namespace llmir::engine
