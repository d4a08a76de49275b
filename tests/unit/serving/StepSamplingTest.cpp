// The stateless half of a step on hand-made logits: which rows a sequence
// owns, prompt logprobs across chunk boundaries, and the logits processing
// (logit_bias, presence/frequency/repetition penalties) in vLLM's order.
#include "llmir/serving/StepSampling.h"

#include "llmir/proto/worker.pb.h"

#include <gtest/gtest.h>

#include <cmath>

namespace llmir::serving {
namespace {

engine::Tensor logitsOf(std::vector<std::vector<float>> rows) {
  engine::Tensor t({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
  t.data.clear();
  for (const auto &r : rows)
    t.data.insert(t.data.end(), r.begin(), r.end());
  return t;
}

proto::StepSequence &greedySequence(proto::StepRequest &request, std::vector<int32_t> tokens) {
  proto::StepSequence *seq = request.add_sequences();
  seq->set_sequence_id(static_cast<uint64_t>(request.sequences_size()));
  seq->mutable_token_ids()->Add(tokens.begin(), tokens.end());
  seq->set_sample(true);
  seq->mutable_sampling()->set_temperature(0);
  seq->mutable_sampling()->set_top_p(1);
  return *seq;
}

int32_t sampled(const proto::StepRequest &request, const engine::Tensor &logits) {
  proto::StepResponse response;
  Status s = sampleStep(request, logits, response);
  EXPECT_TRUE(s.isOk()) << s.message();
  return response.tokens_size() ? response.tokens(0).token_id() : -1;
}

TEST(StepSampling, LogitBiasAndPenalties) {
  const engine::Tensor logits = logitsOf({{3.0f, 2.0f, 1.0f, -1.0f}});
  {
    proto::StepRequest r;
    greedySequence(r, {0});
    EXPECT_EQ(sampled(r, logits), 0);
  }
  {
    proto::StepRequest r;
    auto &seq = greedySequence(r, {0});
    auto *bias = seq.add_logit_bias();
    bias->set_token_id(3);
    bias->set_logprob(5.0f); // -1 + 5 = 4 > 3
    EXPECT_EQ(sampled(r, logits), 3);
  }
  {
    proto::StepRequest r;
    auto &seq = greedySequence(r, {0});
    seq.set_frequency_penalty(0.6f); // token 0 twice: 3 - 1.2 = 1.8 < 2
    for (int32_t id : {0, 0})
      seq.add_output_token_ids(id);
    EXPECT_EQ(sampled(r, logits), 1);
    seq.set_frequency_penalty(0.4f); // 3 - 0.8 = 2.2 > 2
    EXPECT_EQ(sampled(r, logits), 0);
  }
  {
    proto::StepRequest r;
    auto &seq = greedySequence(r, {0});
    seq.set_presence_penalty(1.5f); // once present: 3 - 1.5 = 1.5 < 2
    for (int32_t id : {0, 0, 0})
      seq.add_output_token_ids(id);
    EXPECT_EQ(sampled(r, logits), 1);
  }
  {
    proto::StepRequest r;
    auto &seq = greedySequence(r, {0});
    seq.set_repetition_penalty(2.0f); // prompt tokens 0 and 1: 1.5, 1.0 -> token 0 still
    for (int32_t id : {0, 1})
      seq.add_prompt_token_ids(id);
    EXPECT_EQ(sampled(r, logits), 0);
    seq.set_repetition_penalty(4.0f); // 0.75, 0.5 < 1 -> token 2
    EXPECT_EQ(sampled(r, logits), 2);
  }
  {
    // The reported logprob stays that of the raw logits.
    proto::StepRequest r;
    auto &seq = greedySequence(r, {0});
    seq.set_want_logprobs(true);
    auto *bias = seq.add_logit_bias();
    bias->set_token_id(3);
    bias->set_logprob(10.0f);
    proto::StepResponse response;
    ASSERT_TRUE(sampleStep(r, logits, response).isOk());
    ASSERT_EQ(response.tokens_size(), 1);
    EXPECT_EQ(response.tokens(0).token_id(), 3);
    const double z = std::log(std::exp(3.0) + std::exp(2.0) + std::exp(1.0) + std::exp(-1.0));
    EXPECT_NEAR(response.tokens(0).logprob(), -1.0 - z, 1e-6);
  }
}

TEST(StepSampling, PromptLogprobsOfAChunkUseTheNextChunksFirstToken) {
  // A prompt of 5 tokens [0 1 2 3 0], computed as chunks [0 1 2] and [3 0].
  const std::vector<std::vector<float>> rows = {
      {0.0f, 1.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 2.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 3.0f},
      {1.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 5.0f, 0.0f}};
  auto logprob = [&](size_t row, int32_t id) {
    double z = 0;
    for (float v : rows[row])
      z += std::exp(double(v));
    return double(rows[row][static_cast<size_t>(id)]) - std::log(z);
  };
  proto::StepRequest first;
  auto &a = greedySequence(first, {0, 1, 2});
  a.set_sample(false);
  a.set_prompt_logprobs(true);
  a.set_prompt_length(5);
  a.set_next_prompt_token(3);
  a.set_top_logprobs(1);
  proto::StepResponse r1;
  ASSERT_TRUE(sampleStep(first, logitsOf({rows[0], rows[1], rows[2]}), r1).isOk());
  EXPECT_EQ(r1.tokens_size(), 0);
  ASSERT_EQ(r1.prompt_logprobs_size(), 1);
  const auto &p1 = r1.prompt_logprobs(0);
  EXPECT_EQ(p1.first_position(), 1);
  ASSERT_EQ(p1.logprobs_size(), 3); // tokens 1, 2 and the next chunk's 3
  EXPECT_NEAR(p1.logprobs(0), logprob(0, 1), 1e-6);
  EXPECT_NEAR(p1.logprobs(1), logprob(1, 2), 1e-6);
  EXPECT_NEAR(p1.logprobs(2), logprob(2, 3), 1e-6);
  EXPECT_EQ(p1.tops(2).entries(0).token_id(), 3);

  proto::StepRequest second;
  auto &b = greedySequence(second, {3, 0});
  b.set_start_position(3);
  b.set_prompt_logprobs(true);
  b.set_prompt_length(5);
  b.set_next_prompt_token(-1);
  proto::StepResponse r2;
  ASSERT_TRUE(sampleStep(second, logitsOf({rows[3], rows[4]}), r2).isOk());
  ASSERT_EQ(r2.prompt_logprobs_size(), 1);
  EXPECT_EQ(r2.prompt_logprobs(0).first_position(), 4);
  ASSERT_EQ(r2.prompt_logprobs(0).logprobs_size(), 1); // token 0 at position 4
  EXPECT_NEAR(r2.prompt_logprobs(0).logprobs(0), logprob(3, 0), 1e-6);
  ASSERT_EQ(r2.tokens_size(), 1); // the last row samples
  EXPECT_EQ(r2.tokens(0).token_id(), 2);

  // Rows that do not match what the sequences own are an error.
  proto::StepResponse bad;
  EXPECT_FALSE(sampleStep(second, logitsOf({rows[3]}), bad).isOk());
}

// Sampling where the logits are: which steps may take it, and that the
// tokens Executor::stepSample draws from backendSampling's rows (here the
// CPU's Sampler with the row's uniform draw, what every backend computes)
// are the tokens and logprobs sampleStep gives from the same logits.
// A chained decode takes the token the replica sampled for its sequence at
// the position before it, from whichever earlier step; one the replica has
// not sampled there (a failed step, a position ahead) fails the step, naming
// the sequence.
TEST(StepSampling, DecodeChainFillsChainedInputsOnlyFromTheSampleAtThePositionBefore) {
  auto stepOf = [](uint64_t id, int32_t start, std::vector<int32_t> tokens) {
    proto::StepRequest request;
    proto::StepSequence *seq = request.add_sequences();
    seq->set_sequence_id(id);
    seq->set_start_position(start);
    seq->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    seq->set_sample(true);
    seq->set_chained_input(tokens.empty());
    return request;
  };
  auto sampled = [](uint64_t id, int32_t token) {
    proto::StepResponse response;
    proto::SampledToken *t = response.add_tokens();
    t->set_sequence_id(id);
    t->set_token_id(token);
    return response;
  };
  DecodeChain chain;
  chain.remember(stepOf(7, 0, {5, 6, 7}), sampled(7, 42), true); // a prompt of 3: 42 goes at 3
  chain.remember(stepOf(8, 0, {1}), sampled(8, 9), true);        // another step between
  EXPECT_FALSE(DecodeChain::chains(stepOf(7, 3, {42})));

  proto::StepRequest next = stepOf(7, 3, {});
  ASSERT_TRUE(DecodeChain::chains(next));
  std::vector<uint64_t> unchained;
  ASSERT_TRUE(chain.fillChainedInputs(next, unchained));
  EXPECT_TRUE(unchained.empty());
  ASSERT_EQ(next.sequences(0).token_ids_size(), 1);
  EXPECT_EQ(next.sequences(0).token_ids(0), 42);

  // No token sampled for the position it chains on: taken out of the step.
  auto takenOut = [&](proto::StepRequest request) {
    std::vector<uint64_t> ids;
    EXPECT_TRUE(chain.fillChainedInputs(request, ids));
    EXPECT_EQ(request.sequences_size(), 0);
    return ids;
  };
  EXPECT_EQ(takenOut(stepOf(7, 4, {})), std::vector<uint64_t>{7}); // ahead of its step
  chain.remember(stepOf(7, 3, {42}), proto::StepResponse{}, false);  // that step failed
  EXPECT_EQ(takenOut(stepOf(7, 4, {})), std::vector<uint64_t>{7});
  EXPECT_EQ(takenOut(stepOf(3, 1, {})), std::vector<uint64_t>{3}); // never sampled here
}

// A chained decode with penalties gets the output tokens the scheduler had
// not seen (drawn here from prompt_length + its output_token_ids on,
// through its input); with one of them not drawn here it is taken out.
TEST(StepSampling, DecodeChainAddsTheUnseenOutputToAPenalizedChainedDecode) {
  auto step = [](int32_t start, std::vector<int32_t> tokens) {
    proto::StepRequest request;
    proto::StepSequence *seq = request.add_sequences();
    seq->set_sequence_id(7);
    seq->set_start_position(start);
    seq->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    seq->set_sample(true);
    seq->set_chained_input(tokens.empty());
    return request;
  };
  auto sampled = [](int32_t token) {
    proto::StepResponse response;
    proto::SampledToken *t = response.add_tokens();
    t->set_sequence_id(7);
    t->set_token_id(token);
    return response;
  };
  DecodeChain chain;
  chain.remember(step(0, {5, 6, 7}), sampled(40), true); // prompt of 3: 40 at 3
  chain.remember(step(3, {40}), sampled(41), true);      // 41 at 4
  chain.remember(step(4, {41}), sampled(42), true);      // 42 at 5
  // The scheduler saw the output through position 3 (40) and chains a
  // decode at 5: the worker adds 41 and 42.
  proto::StepRequest penalized = step(5, {});
  proto::StepSequence *seq = penalized.mutable_sequences(0);
  seq->set_presence_penalty(0.5f);
  seq->set_prompt_length(3);
  seq->add_output_token_ids(40);
  std::vector<uint64_t> unchained;
  ASSERT_TRUE(chain.fillChainedInputs(penalized, unchained));
  EXPECT_TRUE(unchained.empty());
  ASSERT_EQ(penalized.sequences_size(), 1);
  EXPECT_EQ(penalized.sequences(0).token_ids(0), 42);
  EXPECT_EQ(std::vector<int32_t>(penalized.sequences(0).output_token_ids().begin(),
                                 penalized.sequences(0).output_token_ids().end()),
            (std::vector<int32_t>{40, 41, 42}));
  // Without penalties nothing is added.
  proto::StepRequest plain = step(5, {});
  ASSERT_TRUE(chain.fillChainedInputs(plain, unchained));
  EXPECT_EQ(plain.sequences(0).output_token_ids_size(), 0);
  // A history that restarted (a step that went back) lacks 40 and 41.
  chain.remember(step(5, {42}), sampled(43), true); // 43 at 6
  chain.remember(step(2, {7, 40}), sampled(50), true); // a recompute from 2: 50 at 4
  proto::StepRequest gap = step(4, {});
  gap.mutable_sequences(0)->set_frequency_penalty(1.0f);
  gap.mutable_sequences(0)->set_prompt_length(3);
  ASSERT_TRUE(chain.fillChainedInputs(gap, unchained));
  EXPECT_EQ(gap.sequences_size(), 0);
  EXPECT_EQ(unchained, std::vector<uint64_t>{7});
}

// A step whose chained sequences are partly broken runs for the others, in
// their order; a chained sequence that carries tokens is a malformed request.
TEST(StepSampling, DecodeChainTakesOutOnlyTheBrokenChains) {
  auto sequence = [](proto::StepRequest &step, uint64_t id, int32_t start, bool chained) {
    proto::StepSequence *seq = step.add_sequences();
    seq->set_sequence_id(id);
    seq->set_start_position(start);
    seq->set_sample(true);
    seq->set_chained_input(chained);
    if (!chained)
      seq->add_token_ids(5);
    return seq;
  };
  DecodeChain chain;
  proto::StepRequest first;
  sequence(first, 1, 0, false);
  sequence(first, 2, 0, false);
  proto::StepResponse sampled;
  for (uint64_t id : {1, 2}) {
    proto::SampledToken *t = sampled.add_tokens();
    t->set_sequence_id(id);
    t->set_token_id(static_cast<int32_t>(10 + id));
  }
  chain.remember(first, sampled, true);

  proto::StepRequest next;
  sequence(next, 1, 1, true);
  sequence(next, 3, 4, true); // its previous step never ran here
  sequence(next, 4, 0, false);
  sequence(next, 2, 1, true);
  std::vector<uint64_t> unchained;
  ASSERT_TRUE(chain.fillChainedInputs(next, unchained));
  EXPECT_EQ(unchained, std::vector<uint64_t>{3});
  ASSERT_EQ(next.sequences_size(), 3);
  EXPECT_EQ(next.sequences(0).sequence_id(), 1u);
  EXPECT_EQ(next.sequences(0).token_ids(0), 11);
  EXPECT_EQ(next.sequences(1).sequence_id(), 4u);
  EXPECT_EQ(next.sequences(2).sequence_id(), 2u);
  EXPECT_EQ(next.sequences(2).token_ids(0), 12);

  proto::StepRequest malformed;
  sequence(malformed, 1, 1, true)->add_token_ids(7);
  Status status = chain.fillChainedInputs(malformed, unchained);
  ASSERT_FALSE(status);
  EXPECT_NE(status.message().find("sequence 1"), std::string::npos) << status.message();
}

// What finished sequences leave in a worker's chain does not pile up: past
// 1,024 kept samples, those older than 64 steps go; recent ones stay.
TEST(StepSampling, DecodeChainForgetsSamplesOfSequencesLongGone) {
  DecodeChain chain;
  for (uint64_t id = 1; id <= 1100; ++id) {
    proto::StepRequest step;
    proto::StepSequence *seq = step.add_sequences();
    seq->set_sequence_id(id);
    seq->add_token_ids(1);
    seq->set_sample(true);
    proto::StepResponse response;
    proto::SampledToken *token = response.add_tokens();
    token->set_sequence_id(id);
    token->set_token_id(static_cast<int32_t>(id));
    chain.remember(step, response, true);
  }
  auto chained = [](uint64_t id) {
    proto::StepRequest next;
    proto::StepSequence *seq = next.add_sequences();
    seq->set_sequence_id(id);
    seq->set_start_position(1);
    seq->set_sample(true);
    seq->set_chained_input(true);
    return next;
  };
  proto::StepRequest old = chained(1), recent = chained(1050), last = chained(1100);
  std::vector<uint64_t> unchained;
  ASSERT_TRUE(chain.fillChainedInputs(old, unchained));
  EXPECT_EQ(unchained, std::vector<uint64_t>{1}); // forgotten
  ASSERT_TRUE(chain.fillChainedInputs(recent, unchained));
  EXPECT_EQ(recent.sequences(0).token_ids(0), 1050);
  ASSERT_TRUE(chain.fillChainedInputs(last, unchained));
  EXPECT_EQ(last.sequences(0).token_ids(0), 1100);
  EXPECT_EQ(unchained.size(), 1u);
}

TEST(StepSampling, BackendSamplingGivesSampleStepsTokens) {
  proto::StepRequest request;
  greedySequence(request, {1, 2, 3});
  greedySequence(request, {4}).set_sample(false); // a prefill chunk
  auto &hot = greedySequence(request, {5, 6});
  hot.mutable_sampling()->set_temperature(0.8f);
  hot.mutable_sampling()->set_top_p(0.9f);
  hot.mutable_sampling()->set_seed(7);
  hot.set_start_position(9);
  hot.set_want_logprobs(true);
  auto &topK = greedySequence(request, {7});
  topK.mutable_sampling()->set_temperature(1.5f);
  topK.mutable_sampling()->set_top_k(3);
  topK.mutable_sampling()->set_seed(11);
  EXPECT_TRUE(samplesOnBackend(request));
  const engine::Tensor logits = logitsOf({{0.1f, 0.9f, 0.9f, 0.3f, -2.0f},
                                          {2.0f, 1.9f, 1.7f, 0.5f, 1.95f},
                                          {0.4f, 0.2f, 0.3f, 0.1f, 0.35f}});
  const std::vector<engine::RowSampling> rows = backendSampling(request);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_FALSE(rows[0].logprob);
  EXPECT_TRUE(rows[1].logprob);
  EXPECT_EQ(rows[1].params.seed, tokenSeed(7, 11)); // the position of the next token
  for (int trial = 0; trial < 50; ++trial) {
    proto::StepRequest r = request;
    for (int s = 2; s < 4; ++s)
      r.mutable_sequences(s)->mutable_sampling()->set_seed(static_cast<uint64_t>(100 + trial + s));
    const std::vector<engine::RowSampling> trialRows = backendSampling(r);
    std::vector<engine::SampledToken> tokens;
    for (size_t i = 0; i < trialRows.size(); ++i) {
      std::span<const float> row(logits.data.data() + i * 5, 5);
      engine::SampledToken token;
      token.id = engine::Sampler(trialRows[i].params).sample(row, trialRows[i].uniform);
      token.logprob = static_cast<float>(row[size_t(token.id)] - engine::logNormalizer(row));
      tokens.push_back(token);
    }
    proto::StepResponse fromLogits, fromBackend;
    ASSERT_TRUE(sampleStep(r, logits, fromLogits).isOk());
    ASSERT_TRUE(sampledTokens(r, tokens, fromBackend).isOk());
    ASSERT_EQ(fromBackend.tokens_size(), 3);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(fromBackend.tokens(i).sequence_id(), fromLogits.tokens(i).sequence_id());
      EXPECT_EQ(fromBackend.tokens(i).token_id(), fromLogits.tokens(i).token_id());
      EXPECT_NEAR(fromBackend.tokens(i).logprob(), fromLogits.tokens(i).logprob(), 1e-6);
    }
  }
  proto::StepResponse wrongCount;
  EXPECT_FALSE(sampledTokens(request, {{1, 0}}, wrongCount).isOk());

  auto with = [&](auto change) {
    proto::StepRequest r = request;
    change(*r.mutable_sequences(2));
    return samplesOnBackend(r);
  };
  EXPECT_TRUE(with([](proto::StepSequence &s) { s.mutable_sampling()->set_top_k(1); }));
  EXPECT_FALSE(with([](proto::StepSequence &s) { s.set_top_logprobs(2); }));
  EXPECT_FALSE(with([](proto::StepSequence &s) { s.set_prompt_logprobs(true); }));
  EXPECT_FALSE(with([](proto::StepSequence &s) { s.set_presence_penalty(0.5f); }));
  EXPECT_FALSE(with([](proto::StepSequence &s) { s.set_constrained(true); }));
  proto::StepRequest none;
  greedySequence(none, {1}).set_sample(false);
  EXPECT_FALSE(samplesOnBackend(none)); // nothing to sample
}

} // namespace
} // namespace llmir::serving
