// Pipelined decodes (DecodePipeline) on the demo model on the CPU: the
// steps a scheduler chains, launched each behind the one before (its tokens
// those that step drew), give the Hugging Face greedy ids, and sampled ones
// the tokens and logprobs of the steps answered one at a time; what the
// pipeline must not launch it refuses, launching nothing.
#include "DemoModel.h"

#include "llmir/engine/Executor.h"
#include "llmir/proto/worker.pb.h"
#include "llmir/serving/DecodePipeline.h"

#include <gtest/gtest.h>

namespace llmir::serving {
namespace {

class DecodePipelineTest : public ::testing::Test {
protected:
  void SetUp() override {
    demo = testing::DemoModel::get();
    ASSERT_NE(demo, nullptr);
    auto checkpoint = model::Checkpoint::open(testing::kDemoDir);
    ASSERT_TRUE(checkpoint) << checkpoint.message();
    auto made = engine::Executor::create(demo->program, engine::checkpointWeights(*checkpoint),
                                         {.numKvBlocks = 16, .numThreads = 2});
    ASSERT_TRUE(made) << made.message();
    executor = std::move(*made);
  }

  /// One greedy sequence's step: its tokens (none: chained_input) from
  /// `position`, over blocks 0..15.
  static proto::StepRequest stepOf(uint64_t id, const std::vector<int32_t> &tokens,
                                   int64_t position, float temperature = 0.0f) {
    proto::StepRequest request;
    request.set_step_id(id);
    proto::StepSequence *seq = request.add_sequences();
    seq->set_sequence_id(7);
    seq->set_start_position(static_cast<int32_t>(position));
    for (int32_t t : tokens)
      seq->add_token_ids(t);
    seq->set_chained_input(tokens.empty());
    seq->set_sample(true);
    seq->mutable_sampling()->set_temperature(temperature);
    seq->mutable_sampling()->set_top_p(1.0f);
    for (int32_t b = 0; b < 16; ++b)
      seq->add_block_table(b);
    return request;
  }

  const testing::DemoModel *demo = nullptr;
  std::unique_ptr<engine::Executor> executor;
  DecodeChain chain;
};

TEST_F(DecodePipelineTest, ChainedStepsLaunchedBehindGiveTheReferenceIds) {
  const testing::ReferenceCase &ref = demo->cases.front();
  const int64_t P = static_cast<int64_t>(ref.promptIds.size());
  // The prompt as the scheduler sends it, answered by stepAndSample.
  proto::StepResponse first;
  ASSERT_TRUE(stepAndSample(*executor, stepOf(1, ref.promptIds, 0), true, first, &chain));
  ASSERT_EQ(first.tokens_size(), 1);
  std::vector<int32_t> ids = {first.tokens(0).token_id()};
  {
    DecodePipeline pipeline(*executor, chain);
    // Its first decode chained on the prompt's token (from the chain, on the
    // host), then eight more each launched behind the one before.
    ASSERT_TRUE(pipeline.launch(stepOf(2, {}, P)));
    for (int k = 1; k <= 8; ++k) {
      ASSERT_TRUE(pipeline.launchBehind(stepOf(2 + k, {}, P + k))) << k;
      EXPECT_FALSE(pipeline.launchBehind(stepOf(3 + k, {}, P + k + 1)))
          << "at most " << DecodePipeline::kMostInFlight << " in flight";
      double seconds = -1;
      const proto::StepResponse answer = pipeline.finish(seconds);
      ASSERT_TRUE(answer.ok()) << answer.error();
      EXPECT_EQ(answer.step_id(), uint64_t(1 + k));
      EXPECT_GE(seconds, 0.0);
      ASSERT_EQ(answer.tokens_size(), 1);
      EXPECT_EQ(answer.tokens(0).sequence_id(), 7u);
      ids.push_back(answer.tokens(0).token_id());
    }
    double seconds = 0;
    const proto::StepResponse last = pipeline.finish(seconds);
    ASSERT_TRUE(last.ok()) << last.error();
    ids.push_back(last.tokens(0).token_id());
    EXPECT_TRUE(pipeline.empty());
  }
  ASSERT_LE(ids.size(), ref.greedyIds.size());
  EXPECT_EQ(ids, std::vector<int32_t>(ref.greedyIds.begin(), ref.greedyIds.begin() + ids.size()));
  // The chain kept the last token: a later step chained on it takes it.
  proto::StepResponse next;
  ASSERT_TRUE(stepAndSample(*executor, stepOf(20, {}, P + 9), true, next, &chain));
  ASSERT_EQ(next.tokens_size(), 1);
  EXPECT_EQ(next.tokens(0).token_id(), ref.greedyIds[ids.size()]);
}

// Sampled decodes (temperature, top-p, the token's logprob) launched each
// behind the one before draw what the same steps answered one at a time by
// stepAndSample draw: the same seeded uniform at each position, the same
// tokens in.
TEST_F(DecodePipelineTest, SampledStepsLaunchedBehindDrawTheSynchronousTokens) {
  const testing::ReferenceCase &ref = demo->cases.front();
  const int64_t P = static_cast<int64_t>(ref.promptIds.size());
  const auto sampledStep = [&](uint64_t id, const std::vector<int32_t> &tokens,
                               int64_t position) {
    proto::StepRequest request = stepOf(id, tokens, position, 0.9f);
    proto::StepSequence *seq = request.mutable_sequences(0);
    seq->mutable_sampling()->set_top_p(0.95f);
    seq->mutable_sampling()->set_seed(11);
    seq->set_want_logprobs(true);
    return request;
  };
  const int decodes = 8;
  std::vector<std::pair<int32_t, float>> want, got;
  DecodeChain alone;
  for (int k = 0; k <= decodes; ++k) {
    proto::StepResponse answer;
    const proto::StepRequest request =
        k == 0 ? sampledStep(1, ref.promptIds, 0) : sampledStep(1 + k, {}, P + k - 1);
    ASSERT_TRUE(stepAndSample(*executor, request, true, answer, &alone)) << k;
    ASSERT_EQ(answer.tokens_size(), 1);
    want.emplace_back(answer.tokens(0).token_id(), answer.tokens(0).logprob());
  }

  proto::StepResponse first;
  ASSERT_TRUE(stepAndSample(*executor, sampledStep(1, ref.promptIds, 0), true, first, &chain));
  got.emplace_back(first.tokens(0).token_id(), first.tokens(0).logprob());
  DecodePipeline pipeline(*executor, chain);
  ASSERT_TRUE(pipeline.launch(sampledStep(2, {}, P)));
  for (int k = 2; k <= decodes + 1; ++k) {
    if (k <= decodes)
      ASSERT_TRUE(pipeline.launchBehind(sampledStep(1 + k, {}, P + k - 1))) << k;
    double seconds = 0;
    const proto::StepResponse answer = pipeline.finish(seconds);
    ASSERT_TRUE(answer.ok()) << answer.error();
    ASSERT_EQ(answer.tokens_size(), 1);
    got.emplace_back(answer.tokens(0).token_id(), answer.tokens(0).logprob());
  }
  EXPECT_TRUE(pipeline.empty());
  EXPECT_EQ(got, want);
}

TEST_F(DecodePipelineTest, WhatItMustNotLaunchItRefuses) {
  const testing::ReferenceCase &ref = demo->cases.front();
  const int64_t P = static_cast<int64_t>(ref.promptIds.size());
  EXPECT_FALSE(DecodePipeline::takes(stepOf(1, ref.promptIds, 0))) << "a prompt";
  EXPECT_TRUE(DecodePipeline::takes(stepOf(1, {5}, P, 0.8f))) << "a draw";
  proto::StepRequest logprobs = stepOf(1, {5}, P);
  logprobs.mutable_sequences(0)->set_want_logprobs(true);
  EXPECT_TRUE(DecodePipeline::takes(logprobs)) << "a logprob";
  logprobs.mutable_sequences(0)->set_top_logprobs(2);
  EXPECT_FALSE(DecodePipeline::takes(logprobs)) << "top logprobs";
  proto::StepRequest penalized = stepOf(1, {5}, P, 0.8f);
  penalized.mutable_sequences(0)->set_presence_penalty(0.5f);
  EXPECT_FALSE(DecodePipeline::takes(penalized)) << "logit processing";
  proto::StepRequest stores = stepOf(1, {5}, P);
  stores.mutable_sequences(0)->add_store_blocks(0);
  EXPECT_FALSE(DecodePipeline::takes(stores)) << "blocks to store";

  DecodePipeline pipeline(*executor, chain);
  EXPECT_FALSE(pipeline.launchBehind(stepOf(1, {}, P))) << "nothing launched to be behind";
  EXPECT_FALSE(pipeline.launch(stepOf(1, {}, P))) << "a chained input with no token here";
  ASSERT_TRUE(pipeline.launch(stepOf(1, {5}, 0))); // a one-token step from position 0
  EXPECT_FALSE(pipeline.launchBehind(stepOf(2, {}, 2))) << "not one position on";
  EXPECT_FALSE(pipeline.launchBehind(stepOf(2, {6}, 1))) << "not chained";
  proto::StepRequest other = stepOf(2, {}, 1);
  other.mutable_sequences(0)->set_sequence_id(8);
  EXPECT_FALSE(pipeline.launchBehind(other)) << "another sequence";
  EXPECT_TRUE(pipeline.launchBehind(stepOf(2, {}, 1)));
  double seconds = 0;
  EXPECT_TRUE(pipeline.finish(seconds).ok());
  EXPECT_TRUE(pipeline.finish(seconds).ok());
  EXPECT_FALSE(pipeline.finish(seconds).ok()) << "nothing left to answer";
}

TEST_F(DecodePipelineTest, AStepBehindAFailedOneFailsAndTheExecutorServesOn) {
  DecodePipeline pipeline(*executor, chain);
  // Block 99 is outside the 16-block cache: the launch fails, and nothing
  // is launched behind a failed step.
  proto::StepRequest broken = stepOf(1, {5}, 0);
  broken.mutable_sequences(0)->set_block_table(0, 99);
  ASSERT_TRUE(pipeline.launch(broken));
  EXPECT_FALSE(pipeline.launchBehind(stepOf(2, {}, 1)));
  double seconds = 0;
  const proto::StepResponse failed = pipeline.finish(seconds);
  EXPECT_FALSE(failed.ok());
  EXPECT_FALSE(failed.error().empty());
  EXPECT_EQ(failed.tokens_size(), 0);
  // The executor takes ordinary steps again.
  proto::StepResponse answer;
  EXPECT_TRUE(stepAndSample(*executor, stepOf(3, {5}, 0), true, answer, &chain));
}

} // namespace
} // namespace llmir::serving
