#include "llmir/compiler/Compile.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace llmir::compiler {
namespace {

const std::string kDemoModel = std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m";

TEST(CompileHuggingFace, SingleRankProgramHasEveryLayerAndTheLogits) {
  auto compiled = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(compiled) << compiled.message();
  EXPECT_EQ(compiled->plan.world_size(), 1u);
  EXPECT_EQ(compiled->plan.tp(), 1u);
  ASSERT_EQ(compiled->programs.size(), 1u);
  const proto::ShardProgram &program = compiled->programs[0];
  EXPECT_TRUE(program.has_output());
  EXPECT_EQ(program.kv_cache().num_layers(), 4u);
  EXPECT_EQ(program.vocab_size(), 2048u);
  EXPECT_EQ(program.groups_size(), 0);
  for (const proto::WeightSlice &w : program.weights())
    EXPECT_EQ(w.dim(), -1) << w.tensor_name() << " is sliced on one rank";
  EXPECT_NE(compiled->partitionedMlir.find("func.func @prefill"), std::string::npos);
}

int64_t slotsNamed(const proto::ShardProgram &program, const std::string &name) {
  return std::count_if(program.slots().begin(), program.slots().end(),
                       [&](const proto::TensorSlot &s) { return s.name() == name; });
}

int64_t loadsOf(const proto::ShardProgram &program, const std::string &name) {
  return std::count_if(
      program.weights().begin(), program.weights().end(),
      [&](const proto::WeightSlice &w) { return w.tensor_name() == name; });
}

// The embedding and the LM head of a tied model read one slot: the engine
// loads the tensor once (per rank, per slice).
TEST(CompileHuggingFace, TiedEmbeddingIsLoadedIntoOneSlot) {
  const std::string tied = std::string(LLMIR_FIXTURES_DIR) + "/tiny-llama-mha";
  if (!std::filesystem::exists(tied))
    GTEST_SKIP() << "fixture tiny-llama-mha not in " << LLMIR_FIXTURES_DIR;
  const std::string embed = "model.embed_tokens.weight";
  for (int tp : {1, 2}) {
    CompileOptions options;
    options.tp = tp;
    auto compiled = compileHuggingFace(tied, options);
    ASSERT_TRUE(compiled) << compiled.message();
    ASSERT_EQ(compiled->programs.size(), static_cast<size_t>(tp));
    for (const proto::ShardProgram &program : compiled->programs) {
      EXPECT_EQ(slotsNamed(program, embed), 1) << "tp=" << tp;
      EXPECT_EQ(loadsOf(program, embed), 1) << "tp=" << tp;
      int embedSlot = -1;
      for (const proto::WeightSlice &w : program.weights())
        if (w.tensor_name() == embed)
          embedSlot = static_cast<int>(w.slot());
      int readers = 0;
      for (const proto::Instruction &inst : program.instructions())
        readers += static_cast<int>(std::count(inst.inputs().begin(),
                                               inst.inputs().end(), embedSlot));
      EXPECT_EQ(readers, 2) << "tp=" << tp << ": the embedding and the LM head";
    }
    // The memory plan counts what the ranks load: every weight slice once.
    for (int rank = 0; rank < tp; ++rank) {
      uint64_t loaded = 0;
      for (const proto::WeightSlice &w : compiled->programs[rank].weights()) {
        const proto::TensorSlot &slot = compiled->programs[rank].slots(w.slot());
        uint64_t elements = 4; // f32 fixture
        for (int64_t d : slot.shape())
          elements *= static_cast<uint64_t>(d);
        loaded += elements;
      }
      EXPECT_EQ(compiled->plan.ranks(rank).weight_bytes(), loaded) << "tp=" << tp;
    }
  }
}

TEST(CompileHuggingFace, UntiedHeadHasItsOwnSlot) {
  auto compiled = compileHuggingFace(kDemoModel, CompileOptions{});
  ASSERT_TRUE(compiled) << compiled.message();
  const proto::ShardProgram &program = compiled->programs[0];
  EXPECT_EQ(loadsOf(program, "model.embed_tokens.weight"), 1);
  EXPECT_EQ(loadsOf(program, "lm_head.weight"), 1);
}

TEST(CompileHuggingFace, MissingDirectoryIsAnErrorNamingIt) {
  auto compiled = compileHuggingFace("/nonexistent/model", CompileOptions{});
  ASSERT_FALSE(compiled);
  EXPECT_NE(compiled.message().find("/nonexistent/model"), std::string::npos)
      << compiled.message();
}

TEST(CompileModule, UnparseableTextIsAnErrorWithTheParserMessage) {
  auto compiled = compileModule("func.func @prefill(", CompileOptions{});
  ASSERT_FALSE(compiled);
  EXPECT_NE(compiled.message().find("parsing"), std::string::npos) << compiled.message();
}

// The cost model's step time and its calibration: the demo model's batch-1
// decode is bound by memory, so half the bandwidth doubles it, and a time
// per op adds that time once per compute op.
TEST(PredictStepSeconds, CalibrationScalesTheRoofline) {
  const std::string &demo = kDemoModel;
  ClusterSpec ideal;
  StepShape decode;
  decode.tokens = 1;
  decode.context = 100;
  // The same step on several devices, and two steps on one: one import each.
  auto predict = [&](const ClusterSpec &spec, const StepShape &step) -> Result<double> {
    auto seconds = predictStepSeconds(demo, spec, {step});
    if (!seconds)
      return seconds.status();
    return seconds->front();
  };
  auto base = predict(ideal, decode);
  ASSERT_TRUE(base) << base.message();
  EXPECT_GT(*base, 0);
  ClusterSpec slow = ideal;
  slow.device.memoryEfficiency = 0.5;
  auto halved = predict(slow, decode);
  ASSERT_TRUE(halved) << halved.message();
  EXPECT_NEAR(*halved / *base, 2.0, 1e-3);
  ClusterSpec launches = ideal;
  launches.device.opOverheadSeconds = 1e-3;
  auto withOverhead = predict(launches, decode);
  ASSERT_TRUE(withOverhead) << withOverhead.message();
  const double ops = (*withOverhead - *base) / 1e-3;
  EXPECT_NEAR(ops, std::round(ops), 1e-6);
  EXPECT_GE(ops, 4 * 15); // every layer's norms, projections, attention, adds
  StepShape prefill;
  prefill.tokens = 512;
  prefill.decode = false;
  auto fast = predict(ideal, prefill);
  ClusterSpec slowAttention = ideal;
  slowAttention.device.attentionEfficiency = 0.01;
  auto slower = predict(slowAttention, prefill);
  ASSERT_TRUE(fast && slower);
  EXPECT_GT(*slower, *fast);
  auto both = predictStepSeconds(demo, ideal, {decode, prefill});
  ASSERT_TRUE(both) << both.message();
  ASSERT_EQ(both->size(), 2u);
  EXPECT_EQ((*both)[0], *base);
  EXPECT_EQ((*both)[1], *fast);
  EXPECT_FALSE(predictStepSeconds("/nonexistent/model", ideal, {decode}));
}

// The collectives' alpha-beta times the bench prints beside measured ones:
// a ring all-reduce over n ranks costs 2 (n - 1) latencies and moves
// 2 (n - 1) / n of the buffer; a send one latency and the buffer. A tensor-
// parallel step's prediction grows with the link's latency by exactly its
// collectives' latency terms.
TEST(PredictStepSeconds, CollectivesFollowTheLink) {
  ClusterSpec spec;
  spec.devicesPerNode = 2; // the tp = 2 group on one node: the intra-node link
  spec.intraNode = {100e9, 10e-6};
  EXPECT_NEAR(predictAllReduceSeconds(spec, 1e6, 2), 2 * 10e-6 + 1e6 / 100e9, 1e-12);
  EXPECT_NEAR(predictAllReduceSeconds(spec, 1e6, 4), 6 * 10e-6 + 1.5e6 / 100e9, 1e-12);
  EXPECT_EQ(predictAllReduceSeconds(spec, 1e6, 1), 0);
  EXPECT_NEAR(predictSendSeconds(spec, 1e6), 10e-6 + 1e6 / 100e9, 1e-12);

  StepShape decode;
  decode.tp = 2;
  decode.tokens = 1;
  decode.context = 100;
  ClusterSpec slowLink = spec;
  slowLink.intraNode.latency = 1e-3;
  auto fast = predictStepSeconds(kDemoModel, spec, {decode});
  auto slow = predictStepSeconds(kDemoModel, slowLink, {decode});
  ASSERT_TRUE(fast && slow);
  // 2 latencies per all-reduce, 1 per all-gather (the logits') at n = 2.
  const double latencies = ((*slow)[0] - (*fast)[0]) / (1e-3 - 10e-6);
  EXPECT_NEAR(latencies, std::round(latencies), 1e-6);
  EXPECT_GE(latencies, 2 * 2 * 4); // attention and MLP of each of the 4 layers
}

} // namespace
} // namespace llmir::compiler
