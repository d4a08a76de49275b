// Paged attention: agrees with contiguous causal attention whatever the
// block size and physical block order, and across prefill/decode splits.
#include "TestUtil.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <gtest/gtest.h>

#include <algorithm>
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

} // namespace
} // namespace llmir::engine
