// The partitioned programs are what the engine executes: every rank of a
// TP=2, PP=2 and TP=2 x PP=2 compile of the demo model runs in its own thread
// over an in-process communicator, and the last stage's logits equal the
// single-rank program's.
#include "LocalCluster.h"

#include <gtest/gtest.h>

#include <numeric>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

engine::StepInput promptStep() {
  engine::StepInput step;
  step.tokenIds = {1, 17, 300, 2000, 5, 9, 1024};
  step.positions.resize(step.tokenIds.size());
  std::iota(step.positions.begin(), step.positions.end(), 0);
  step.tokenSeq.assign(step.tokenIds.size(), 0);
  step.blockTables = {{0}};
  return step;
}

/// The last-token logits of every rank of `compiled` for the prompt (empty
/// for ranks without an output; all equal for TP ranks of the last stage).
std::vector<std::vector<float>> runPrompt(const CompiledModel &compiled,
                                          const model::Checkpoint &checkpoint) {
  auto logits = runReplica(compiled, checkpoint, {promptStep()}, /*numKvBlocks=*/4);
  std::vector<std::vector<float>> prompt;
  for (auto &rank : logits)
    prompt.push_back(rank.empty() ? std::vector<float>{} : std::move(rank[0]));
  return prompt;
}

class PartitionedExecution : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(PartitionedExecution, LastStageLogitsEqualTheSingleRankOnes) {
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  auto single = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(single) << single.message();
  std::vector<float> expected = runPrompt(*single, *checkpoint)[0];
  ASSERT_EQ(expected.size(), 2048u);

  CompileOptions options;
  options.tp = GetParam().first;
  options.pp = GetParam().second;
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  ASSERT_EQ(compiled->programs.size(), static_cast<size_t>(options.tp * options.pp));
  std::vector<std::vector<float>> logits = runPrompt(*compiled, *checkpoint);
  for (size_t r = 0; r < logits.size(); ++r) {
    bool lastStage = compiled->programs[r].stage_id() + 1 == static_cast<uint32_t>(options.pp);
    EXPECT_EQ(compiled->programs[r].has_output(), lastStage) << "rank " << r;
    if (!lastStage)
      continue;
    ASSERT_EQ(logits[r].size(), expected.size()) << "rank " << r;
    for (size_t i = 0; i < expected.size(); ++i)
      ASSERT_NEAR(logits[r][i], expected[i], 1e-3f * (1 + std::abs(expected[i])))
          << "rank " << r << " logit " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Degrees, PartitionedExecution,
                         ::testing::Values(std::pair{2, 1}, std::pair{1, 2},
                                           std::pair{2, 2}));

} // namespace
} // namespace llmir::compiler
