// Sequence parallelism end to end in one process: SP=2, SP=4, TP=2 x SP=2
// and PP=2 x SP=2 compiles of the demo model (KV blocks of 4 tokens) split
// each step's rows over the sp ranks (41-token prefill: slices of 21/20 or
// 11/10/10/10 rows) and run every rank in its own thread over an in-process
// communicator, through a prefill, a mixed prefill + decode step of two
// sequences and decode steps of two tokens (SP=4: two ranks with empty
// slices); every output rank's logits equal the single-rank program's
// within 1e-5 of the step's largest logit.
#include "LocalCluster.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <tuple>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";
constexpr int64_t kBlockSize = 4;
constexpr int32_t kNumBlocks = 24;

int count(const proto::ShardProgram &program, proto::Opcode op) {
  return static_cast<int>(std::count_if(
      program.instructions().begin(), program.instructions().end(),
      [&](const proto::Instruction &i) { return i.op() == op; }));
}

class SequenceParallelExecution
    : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(SequenceParallelExecution, LogitsEqualTheSingleRankOnes) {
  auto checkpoint = model::Checkpoint::open(kDemoModel);
  ASSERT_TRUE(checkpoint) << checkpoint.message();
  CompileOptions options;
  options.kvBlockSize = kBlockSize;
  auto single = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(single) << single.message();
  const std::vector<engine::StepInput> inputs = mixedBatchSteps();
  std::vector<std::vector<float>> expected = runReplica(*single, *checkpoint, inputs, kNumBlocks)[0];
  ASSERT_EQ(expected.size(), inputs.size());
  ASSERT_EQ(expected[0].size(), 41u * 2048u);

  std::tie(options.tp, options.pp, options.sp) = GetParam();
  auto compiled = compileHuggingFace(kDemoModel, options);
  ASSERT_TRUE(compiled) << compiled.message();
  const size_t world = static_cast<size_t>(options.tp * options.pp * options.sp);
  ASSERT_EQ(compiled->programs.size(), world);
  for (const proto::ShardProgram &program : compiled->programs) {
    // The tokens are split: each local layer gathers the K/V rows once and
    // attends its own rows; the last stage gathers the hidden rows once;
    // the first scatters the embedding's rows.
    const int layers = static_cast<int>(program.kv_cache().num_layers());
    EXPECT_GT(layers, 0);
    EXPECT_EQ(count(program, proto::ATTENTION), 0) << "rank " << program.rank();
    EXPECT_EQ(count(program, proto::ATTENTION_PARTIAL), 0) << "rank " << program.rank();
    EXPECT_EQ(count(program, proto::SP_ATTENTION), layers) << "rank " << program.rank();
    EXPECT_EQ(count(program, proto::ALL_GATHER_ROWS), layers + (program.has_output() ? 1 : 0))
        << "rank " << program.rank();
    EXPECT_EQ(count(program, proto::SP_SCATTER_ROWS), program.stage_id() == 0 ? 1 : 0)
        << "rank " << program.rank();
  }

  auto logits = runReplica(*compiled, *checkpoint, inputs, kNumBlocks);
  size_t outputRanks = 0;
  for (size_t r = 0; r < world; ++r) {
    if (!compiled->programs[r].has_output())
      continue;
    ++outputRanks;
    ASSERT_EQ(logits[r].size(), inputs.size()) << "rank " << r;
    for (size_t s = 0; s < inputs.size(); ++s) {
      ASSERT_EQ(logits[r][s].size(), expected[s].size()) << "rank " << r << " step " << s;
      // Relative to the step's largest logit: f32 sums in another order.
      float scale = 0, error = 0;
      for (size_t i = 0; i < expected[s].size(); ++i) {
        scale = std::max(scale, std::abs(expected[s][i]));
        error = std::max(error, std::abs(logits[r][s][i] - expected[s][i]));
      }
      EXPECT_LE(error, 1e-5f * scale) << "rank " << r << " step " << s;
    }
  }
  // Every rank of the last stage (all its tp and sp indices) has the logits.
  EXPECT_EQ(outputRanks, static_cast<size_t>(options.tp * options.sp));
}

INSTANTIATE_TEST_SUITE_P(Degrees, SequenceParallelExecution,
                         ::testing::Values(std::tuple{1, 1, 2}, std::tuple{1, 1, 4},
                                           std::tuple{2, 1, 2}, std::tuple{1, 2, 2}));

} // namespace
} // namespace llmir::compiler
