// Token-split sequence parallelism: the row slices of a step cover it in
// order (empty ones when rows < ranks), and the attention of a slice over
// the gathered K/V rows equals the same rows of the unsplit attention, for
// a prefill (blocked kernel) and a mixed step of two sequences with history.
#include "TestUtil.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <gtest/gtest.h>

#include <numeric>

namespace llmir::engine {
namespace {

using namespace testing;

TEST(SequenceParallelRows, SlicesCoverTheStepInOrder) {
  for (int64_t rows : {1, 2, 3, 7, 41})
    for (int64_t ranks : {1, 2, 3, 4}) {
      int64_t next = 0;
      for (int64_t r = 0; r < ranks; ++r) {
        RowRange slice = sequenceParallelRows(rows, ranks, r);
        EXPECT_EQ(slice.begin, next) << rows << " rows, rank " << r << " of " << ranks;
        EXPECT_GE(slice.size(), rows / ranks);
        EXPECT_LE(slice.size(), rows / ranks + 1);
        next = slice.end;
      }
      EXPECT_EQ(next, rows) << rows << " rows over " << ranks;
    }
  EXPECT_EQ(sequenceParallelRows(41, 2, 0).size(), 21);
  EXPECT_EQ(sequenceParallelRows(2, 4, 3).size(), 0);
}

constexpr int64_t kHeads = 4, kKvHeads = 2, kHeadDim = 16, kBlockSize = 4;

class SliceAttention : public ::testing::Test {
protected:
  static StepInput stepOf(std::vector<int32_t> positions, std::vector<int32_t> seqs) {
    StepInput step;
    step.tokenIds.assign(positions.size(), 0);
    step.positions = std::move(positions);
    step.tokenSeq = std::move(seqs);
    step.blockTables = {{7, 2, 9, 4, 0, 5}, {3, 8, 1, 6}};
    return step;
  }

  /// Runs `step` on a reference cache (pagedAttention) and, split over
  /// `ranks` slices, on one cache per rank (sliceAttention); compares.
  void runAndCompare(const StepInput &step, int64_t ranks) {
    ASSERT_TRUE(validateStepInput(step, reference.shape()).isOk());
    const int64_t T = step.numTokens(), qw = kHeads * kHeadDim, kvw = kKvHeads * kHeadDim;
    std::vector<float> q = randomFloats(static_cast<size_t>(T * qw), rng);
    std::vector<float> k = randomFloats(static_cast<size_t>(T * kvw), rng);
    std::vector<float> v = randomFloats(static_cast<size_t>(T * kvw), rng);
    std::vector<float> expected(static_cast<size_t>(T * qw));
    cpu::pagedAttention(q.data(), k.data(), v.data(), step, params, reference,
                        expected.data(), pool);
    std::vector<float> kv; // ALL_GATHER_ROWS of (k, v): k then v per row
    for (int64_t t = 0; t < T; ++t) {
      kv.insert(kv.end(), k.begin() + t * kvw, k.begin() + (t + 1) * kvw);
      kv.insert(kv.end(), v.begin() + t * kvw, v.begin() + (t + 1) * kvw);
    }
    for (int64_t r = 0; r < ranks; ++r) {
      RowRange rows = sequenceParallelRows(T, ranks, r);
      std::vector<float> out(static_cast<size_t>(rows.size() * qw));
      cpu::sliceAttention(q.data() + rows.begin * qw, kv.data(), step, rows, params,
                          caches[static_cast<size_t>(r)], out.data(), pool);
      for (int64_t i = 0; i < rows.size() * qw; ++i)
        ASSERT_NEAR(out[static_cast<size_t>(i)],
                    expected[static_cast<size_t>(rows.begin * qw + i)], 1e-6)
            << "rank " << r << " of " << ranks << ", row " << rows.begin + i / qw;
    }
  }

  static KvCache newCache() {
    return std::move(*KvCache::create({1, kKvHeads, kHeadDim, kBlockSize, 10}));
  }

  std::mt19937 rng{7};
  ThreadPool pool{2};
  cpu::AttentionParams params{0, kHeads, kKvHeads, kHeadDim, 0.25f};
  KvCache reference = newCache();
  std::vector<KvCache> caches = [] {
    std::vector<KvCache> c;
    for (int i = 0; i < 3; ++i)
      c.push_back(newCache());
    return c;
  }();
};

TEST_F(SliceAttention, EqualsTheUnsplitRowsOverPrefillMixedAndDecodeSteps) {
  std::vector<int32_t> prefill(19);
  std::iota(prefill.begin(), prefill.end(), 0);
  runAndCompare(stepOf(prefill, std::vector<int32_t>(19, 0)), 3);
  // Seq 0 decodes while seq 1's 9-token prompt arrives; then both decode
  // (the third rank's slice is empty).
  runAndCompare(stepOf({19, 0, 1, 2, 3, 4, 5, 6, 7, 8}, {0, 1, 1, 1, 1, 1, 1, 1, 1, 1}), 3);
  runAndCompare(stepOf({20, 9}, {0, 1}), 3);
}

} // namespace
} // namespace llmir::engine
