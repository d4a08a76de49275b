// The partitioned programs are what the engine executes: every rank of a
// TP=2, PP=2 and TP=2 x PP=2 compile of the demo model runs in its own thread
// over an in-process communicator, and the last stage's logits equal the
// single-rank program's.
#include "LocalCluster.h"

#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/model/Checkpoint.h"

#include <gtest/gtest.h>

#include <numeric>
#include <thread>

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

/// Runs every rank of `compiled` on one prompt; returns the logits of the
/// rank(s) with an output (all equal for TP ranks of the last stage).
std::vector<std::vector<float>> runReplica(const CompiledModel &compiled,
                                           const model::Checkpoint &checkpoint) {
  LocalCluster cluster(compiled.plan);
  const size_t world = compiled.programs.size();
  std::vector<std::vector<float>> logits(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (size_t r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      LocalCluster::Rank comm(cluster, static_cast<uint32_t>(r));
      engine::ExecutorOptions options;
      options.numKvBlocks = 4;
      options.numThreads = 1;
      auto executor = engine::Executor::create(
          compiled.programs[r], engine::checkpointWeights(checkpoint), options, &comm);
      if (!executor) {
        errors[r] = executor.message();
        return;
      }
      auto out = (*executor)->step(promptStep());
      if (!out)
        errors[r] = out.message();
      else
        logits[r] = out->data;
    });
  for (std::thread &t : threads)
    t.join();
  for (size_t r = 0; r < world; ++r)
    EXPECT_EQ(errors[r], "") << "rank " << r;
  return logits;
}

class PartitionedExecution : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(PartitionedExecution, LastStageLogitsEqualTheSingleRankOnes) {
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  auto single = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(single) << single.message();
  std::vector<float> expected = runReplica(*single, *checkpoint)[0];
  ASSERT_EQ(expected.size(), 2048u);

  CompileOptions options;
  options.tp = GetParam().first;
  options.pp = GetParam().second;
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  ASSERT_EQ(compiled->programs.size(), static_cast<size_t>(options.tp * options.pp));
  std::vector<std::vector<float>> logits = runReplica(*compiled, *checkpoint);
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
