// The executor on a hand-built two-layer Llama-style ShardProgram with random
// weights, against a naive double-precision forward pass; and its errors on
// malformed programs and steps.
#include "LlamaProgram.h"
#include "TestUtil.h"

#include "llmir/engine/Communicator.h"
#include "llmir/engine/Executor.h"

#include <gtest/gtest.h>

#include <map>

namespace llmir::engine {
namespace {

using namespace testing;

using WeightMap = std::map<std::string, WeightTensor>;

WeightMap randomWeights(const proto::ShardProgram &program, proto::DType dtype,
                        unsigned seed) {
  std::mt19937 rng(seed);
  WeightMap weights;
  for (const proto::WeightSlice &slice : program.weights()) {
    std::vector<int64_t> shape(slice.full_shape().begin(), slice.full_shape().end());
    int64_t numel = 1;
    for (int64_t d : shape)
      numel *= d;
    std::vector<float> values = randomFloats(static_cast<size_t>(numel), rng, 0.4f);
    if (shape.size() == 1) // norm weights around 1
      for (float &v : values)
        v += 1.0f;
    weights[slice.tensor_name()] = makeWeight(dtype, shape, values);
  }
  return weights;
}

WeightProvider providerFor(const WeightMap &weights) {
  return [&weights](const proto::WeightSlice &slice) -> Result<WeightTensor> {
    auto it = weights.find(slice.tensor_name());
    if (it == weights.end())
      return Status::error("no tensor " + slice.tensor_name());
    return it->second;
  };
}

/// Naive forward pass of the whole sequence: logits [L, vocab] in double.
/// bf16Products: the inputs of products with bf16 weights are rounded to bf16
/// first (the medium matmul precision).
std::vector<double> referenceLogits(const TinyLlama &c, const WeightMap &weights,
                                    const std::vector<int32_t> &tokens,
                                    bool bf16Products = false) {
  auto W = [&](const std::string &name) { return weightValues(weights.at(name)); };
  auto refLinear = [&](const std::vector<double> &x, int64_t T, const std::string &name,
                       int64_t N, int64_t K) {
    if (!bf16Products || weights.at(name).dtype != proto::BF16)
      return testing::refLinear(x, T, weightValues(weights.at(name)), N, K);
    std::vector<double> rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      rounded[i] = bf16ToF32(f32ToBf16(static_cast<float>(x[i])));
    return testing::refLinear(rounded, T, weightValues(weights.at(name)), N, K);
  };
  const int64_t L = static_cast<int64_t>(tokens.size());
  std::vector<int32_t> positions(tokens.size());
  for (size_t i = 0; i < positions.size(); ++i)
    positions[i] = static_cast<int32_t>(i);
  std::vector<float> embed = W("model.embed_tokens.weight");
  std::vector<double> x;
  for (int32_t t : tokens)
    x.insert(x.end(), embed.begin() + t * c.hidden, embed.begin() + (t + 1) * c.hidden);
  const int64_t qWidth = c.heads * c.headDim, kvWidth = c.kvHeads * c.headDim;
  for (int64_t l = 0; l < c.layers; ++l) {
    auto lw = [&](const std::string &s) { return W(layerName(l, s)); };
    std::vector<double> h = x;
    refRmsNorm(h, c.hidden, lw("input_layernorm.weight"), c.eps);
    std::vector<double> q = refLinear(h, L, layerName(l, "self_attn.q_proj.weight"), qWidth, c.hidden);
    std::vector<double> k = refLinear(h, L, layerName(l, "self_attn.k_proj.weight"), kvWidth, c.hidden);
    std::vector<double> v = refLinear(h, L, layerName(l, "self_attn.v_proj.weight"), kvWidth, c.hidden);
    refRope(q, c.heads, c.headDim, positions, c.theta);
    refRope(k, c.kvHeads, c.headDim, positions, c.theta);
    std::vector<double> a = refAttention(q, k, v, L, c.heads, c.kvHeads, c.headDim,
                                         1.0 / std::sqrt(double(c.headDim)));
    std::vector<double> o = refLinear(a, L, layerName(l, "self_attn.o_proj.weight"), c.hidden, qWidth);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += o[i];
    std::vector<double> h2 = x;
    refRmsNorm(h2, c.hidden, lw("post_attention_layernorm.weight"), c.eps);
    std::vector<double> g = refLinear(h2, L, layerName(l, "mlp.gate_proj.weight"), c.ffn, c.hidden);
    std::vector<double> u = refLinear(h2, L, layerName(l, "mlp.up_proj.weight"), c.ffn, c.hidden);
    for (size_t i = 0; i < g.size(); ++i)
      g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    std::vector<double> d = refLinear(g, L, layerName(l, "mlp.down_proj.weight"), c.hidden, c.ffn);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += d[i];
  }
  refRmsNorm(x, c.hidden, W("model.norm.weight"), c.eps);
  return refLinear(x, L, "lm_head.weight", c.vocab, c.hidden);
}

StepInput stepFor(const std::vector<int32_t> &tokens, int32_t firstPosition,
                  std::vector<int32_t> blockTable) {
  StepInput step;
  for (size_t i = 0; i < tokens.size(); ++i) {
    step.tokenIds.push_back(tokens[i]);
    step.positions.push_back(firstPosition + static_cast<int32_t>(i));
    step.tokenSeq.push_back(0);
  }
  step.blockTables = {std::move(blockTable)};
  return step;
}

void expectLogitRow(const Tensor &logits, int64_t row,
                    const std::vector<double> &ref, int64_t refRow, int64_t vocab) {
  ASSERT_EQ(logits.shape.size(), 2u);
  ASSERT_EQ(logits.shape[1], vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    double expected = ref[refRow * vocab + i];
    ASSERT_NEAR(logits.data[row * vocab + i], expected, tolerance(expected))
        << "row " << row << " logit " << i;
  }
}

class ExecutorForward : public ::testing::TestWithParam<proto::DType> {
protected:
  TinyLlama config;
  proto::ShardProgram program = buildLlama(config);
  WeightMap weights = randomWeights(program, GetParam(), 99);
  std::vector<int32_t> tokens = {3, 17, 0, 47, 22, 5, 5, 31, 12};

  std::unique_ptr<Executor> create(KvCacheDType kvCacheDtype = KvCacheDType::Auto) {
    auto executor = Executor::create(program, providerFor(weights),
                                     {.numThreads = 2, .kvCacheDtype = kvCacheDtype});
    EXPECT_TRUE(executor.isOk()) << executor.message();
    return executor.isOk() ? std::move(*executor) : nullptr;
  }
};

TEST_P(ExecutorForward, OneShotPrefillMatchesReference) {
  auto executor = create();
  ASSERT_TRUE(executor);
  StepInput step = stepFor(tokens, 0, {6, 1, 9});
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i)
    step.outputRows.push_back(i);
  Result<Tensor> logits = executor->step(step);
  ASSERT_TRUE(logits.isOk()) << logits.message();
  ASSERT_EQ(logits->rows(), static_cast<int64_t>(tokens.size()));
  std::vector<double> ref = referenceLogits(config, weights, tokens);
  for (int64_t t = 0; t < logits->rows(); ++t)
    expectLogitRow(*logits, t, ref, t, config.vocab);
}

TEST_P(ExecutorForward, PrefillThenDecodeMatchesReference) {
  auto executor = create();
  ASSERT_TRUE(executor);
  std::vector<double> ref = referenceLogits(config, weights, tokens);
  const std::vector<int32_t> table = {2, 7, 4};
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 5);
  Result<Tensor> logits = executor->step(stepFor(prompt, 0, table));
  ASSERT_TRUE(logits.isOk()) << logits.message();
  ASSERT_EQ(logits->rows(), 1) << "default output: the last token";
  expectLogitRow(*logits, 0, ref, 4, config.vocab);
  for (int32_t p = 5; p < static_cast<int32_t>(tokens.size()); ++p) {
    logits = executor->step(stepFor({tokens[p]}, p, table));
    ASSERT_TRUE(logits.isOk()) << logits.message();
    expectLogitRow(*logits, 0, ref, p, config.vocab);
  }
}

// Executor::launchStep, the host a step ahead: a prefill of two
// sequences, then decodes whose tokens are those the step launched before
// drew (tokensFromLastLaunch), each collected one step late, give
// stepGreedy's ids (no sampling rows) or stepSample's tokens and logprobs
// (temperature / top-k / top-p rows) step for step; misuses fail with a
// message.
TEST_P(ExecutorForward, LaunchedStepsGiveTheSynchronousSteps) {
  StepInput prefill, decode;
  for (int32_t s = 0; s < 2; ++s) {
    prefill.blockTables.push_back({3 * s, 3 * s + 1, 3 * s + 2});
    for (int32_t p = 0; p < 4; ++p) {
      prefill.tokenIds.push_back(tokens[static_cast<size_t>(p + s)]);
      prefill.positions.push_back(p);
      prefill.tokenSeq.push_back(s);
    }
    decode.tokenIds.push_back(0);
    decode.positions.push_back(4);
    decode.tokenSeq.push_back(s);
  }
  decode.blockTables = prefill.blockTables;
  const int steps = 6;
  // Step n's rows: none (greedy), or a draw per sequence, the second
  // sequence with top-k and its logprob.
  const auto samplingOf = [](bool sampled, int n) {
    std::vector<RowSampling> rows;
    for (int s = 0; sampled && s < 2; ++s) {
      RowSampling row;
      row.params = {0.9f, s == 0 ? 0.95f : 1.0f, s == 0 ? 0 : 5,
                    static_cast<uint64_t>(100 * n + s)};
      row.uniform = Sampler(row.params).nextUniform();
      row.logprob = s == 1;
      rows.push_back(row);
    }
    return rows;
  };
  const auto idsOf = [](const std::vector<SampledToken> &tokens) {
    std::vector<int32_t> ids;
    for (const SampledToken &token : tokens)
      ids.push_back(token.id);
    return ids;
  };

  for (bool sampled : {false, true}) {
    SCOPED_TRACE(sampled ? "sampled" : "greedy");
    auto reference = create();
    ASSERT_TRUE(reference);
    std::vector<std::vector<SampledToken>> want;
    StepInput step = prefill;
    for (int n = 0; n <= steps; ++n) {
      const std::vector<RowSampling> rows = samplingOf(sampled, n);
      Result<std::vector<SampledToken>> tokens = std::vector<SampledToken>();
      if (sampled) {
        tokens = reference->stepSample(step, rows);
      } else if (Result<std::vector<int32_t>> ids = reference->stepGreedy(step); ids) {
        for (int32_t id : *ids)
          tokens->push_back({id, 0.0f});
      } else {
        tokens = ids.status();
      }
      ASSERT_TRUE(tokens.isOk()) << "step " << n << ": " << tokens.message();
      want.push_back(*tokens);
      if (n == 0)
        step = decode;
      else
        for (int32_t &position : step.positions)
          ++position;
      step.tokenIds = idsOf(want.back());
    }

    auto pipelined = create();
    ASSERT_TRUE(pipelined);
    StepInput chained = decode;
    chained.tokensFromLastLaunch = true;
    EXPECT_FALSE(pipelined->launchStep(chained).isOk()) << "no step launched before";
    EXPECT_FALSE(pipelined->collectStep().isOk()) << "nothing launched";
    ASSERT_TRUE(pipelined->launchStep(prefill, samplingOf(sampled, 0)).isOk());
    std::vector<std::vector<SampledToken>> got;
    for (int n = 1; n <= steps; ++n) {
      Status launched = pipelined->launchStep(chained, samplingOf(sampled, n));
      ASSERT_TRUE(launched.isOk()) << "step " << n << ": " << launched.message();
      if (n == 1) {
        EXPECT_FALSE(pipelined->launchStep(chained).isOk()) << "three in flight";
        EXPECT_FALSE(pipelined->step(prefill).isOk()) << "a step while two are in flight";
        EXPECT_FALSE(pipelined->stepGreedy(prefill).isOk()) << "a step while two are in flight";
      }
      Result<std::vector<SampledToken>> tokens = pipelined->collectStep();
      ASSERT_TRUE(tokens.isOk()) << "step " << n << ": " << tokens.message();
      got.push_back(*tokens);
      for (int32_t &position : chained.positions)
        ++position;
    }
    Result<std::vector<SampledToken>> tokens = pipelined->collectStep();
    ASSERT_TRUE(tokens.isOk()) << tokens.message();
    got.push_back(*tokens);
    ASSERT_EQ(got.size(), want.size());
    for (size_t n = 0; n < got.size(); ++n) {
      EXPECT_EQ(idsOf(got[n]), idsOf(want[n])) << "step " << n;
      for (size_t r = 0; r < got[n].size(); ++r)
        EXPECT_EQ(got[n][r].logprob, want[n][r].logprob) << "step " << n << " row " << r;
    }
    // A step of another size cannot take the last tokens, nor sample with
    // rows that are not its output rows.
    StepInput wider = chained;
    wider.tokenIds.push_back(0);
    wider.positions.push_back(wider.positions.back());
    wider.tokenSeq.push_back(1);
    EXPECT_FALSE(pipelined->launchStep(wider).isOk());
    EXPECT_FALSE(pipelined->launchStep(decode, std::vector<RowSampling>(3)).isOk());
  }
}

// The CPU backend passes activation buffers from slot to slot (a slot's
// buffer goes to a later output once its last reader ran): steps observed
// instruction by instruction (each output read right after it is computed)
// and steps run whole give the same logits, bit for bit, through a prefill
// and decode steps whose activations change size, and what the observer
// sees of the last instruction is the step's output.
TEST_P(ExecutorForward, ObservedStepsMatchStepsRunWhole) {
  auto whole = create();
  auto observed = create();
  ASSERT_TRUE(whole && observed);
  const std::vector<int32_t> table = {2, 7, 4};
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 5);
  for (int32_t p = 4; p < static_cast<int32_t>(tokens.size()); ++p) {
    const StepInput step = p == 4 ? stepFor(prompt, 0, table) : stepFor({tokens[p]}, p, table);
    Result<Tensor> expected = whole->step(step);
    ASSERT_TRUE(expected.isOk()) << expected.message();
    size_t seen = 0;
    Tensor last;
    Result<Tensor> logits = observed->step(step, [&](size_t, const Tensor &out) {
      ++seen;
      EXPECT_EQ(out.data.size(), static_cast<size_t>(out.numel()));
      last = out;
    });
    ASSERT_TRUE(logits.isOk()) << logits.message();
    EXPECT_GT(seen, 0u);
    ASSERT_EQ(logits->shape, expected->shape);
    EXPECT_EQ(logits->data, expected->data) << "position " << p;
    EXPECT_EQ(last.data, expected->data) << "position " << p;
  }
}

// The KV store's block transfers: blocks prefilled on one executor, copied
// out and written into other physical blocks of a second executor, let the
// second decode as if it had computed them (identical logits).
void expectKvBlocksContinueTheSequence(Executor *computed, Executor *loaded,
                                       const std::vector<int32_t> &tokens,
                                       const char *kvCacheDtype);

TEST_P(ExecutorForward, KvBlocksCopiedToAnotherExecutorContinueTheSequence) {
  auto computed = create();
  auto loaded = create();
  ASSERT_TRUE(computed && loaded);
  expectKvBlocksContinueTheSequence(computed.get(), loaded.get(), tokens, "f32");
}

// The same with bf16 caches: a block is half the bytes, and all of them move
// (a block read at f32 size took half of the next block with it).
TEST_P(ExecutorForward, Bf16KvBlocksCopiedToAnotherExecutorContinueTheSequence) {
  auto computed = create(KvCacheDType::BF16);
  auto loaded = create(KvCacheDType::BF16);
  ASSERT_TRUE(computed && loaded);
  EXPECT_EQ(computed->kvBlockBytes(), static_cast<size_t>(2 * config.layers * computed->kvCacheShape().blockSize *
                                                          config.kvHeads * config.headDim) *
                                          2);
  expectKvBlocksContinueTheSequence(computed.get(), loaded.get(), tokens, "bf16");
}

void expectKvBlocksContinueTheSequence(Executor *computed, Executor *loaded,
                                       const std::vector<int32_t> &tokens,
                                       const char *kvCacheDtype) {
  const int64_t blockSize = computed->kvCacheShape().blockSize;
  const int32_t full = static_cast<int32_t>(tokens.size() - 1) / static_cast<int32_t>(blockSize);
  ASSERT_GE(full, 1) << "the test needs at least one full block";
  const int64_t prefix = full * blockSize;
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + prefix);
  ASSERT_TRUE(computed->step(stepFor(prompt, 0, {5, 2, 8})).isOk());
  EXPECT_STREQ(computed->kvCacheDtypeName(), kvCacheDtype);
  const std::vector<int32_t> target = {7, 1, 3};
  std::vector<std::byte> block(computed->kvBlockBytes());
  for (int32_t b = 0; b < full; ++b) {
    ASSERT_TRUE(computed->readKvBlock(std::vector<int32_t>{5, 2, 8}[b], block).isOk());
    ASSERT_TRUE(loaded->writeKvBlock(target[b], block).isOk());
  }
  for (int64_t p = prefix; p < static_cast<int64_t>(tokens.size()); ++p) {
    const int32_t pos = static_cast<int32_t>(p);
    Result<Tensor> a = computed->step(stepFor({tokens[p]}, pos, {5, 2, 8}));
    Result<Tensor> b = loaded->step(stepFor({tokens[p]}, pos, target));
    ASSERT_TRUE(a.isOk() && b.isOk());
    EXPECT_EQ(a->data, b->data) << "position " << p;
  }
  // Bad transfers are refused with the reason.
  Status outside = loaded->readKvBlock(static_cast<int32_t>(loaded->kvCacheShape().numBlocks), block);
  EXPECT_NE(outside.message().find("outside"), std::string::npos) << outside.message();
  std::vector<std::byte> small(block.size() - 1);
  Status size = loaded->writeKvBlock(0, small);
  EXPECT_NE(size.message().find("bytes"), std::string::npos) << size.message();
}

TEST_P(ExecutorForward, BatchesSequencesInOneStep) {
  auto executor = create();
  ASSERT_TRUE(executor);
  std::vector<int32_t> other = {9, 8, 7, 6};
  StepInput step = stepFor(tokens, 0, {0, 1, 2});
  for (size_t i = 0; i < other.size(); ++i) {
    step.tokenIds.push_back(other[i]);
    step.positions.push_back(static_cast<int32_t>(i));
    step.tokenSeq.push_back(1);
  }
  step.blockTables.push_back({3});
  Result<Tensor> logits = executor->step(step);
  ASSERT_TRUE(logits.isOk()) << logits.message();
  ASSERT_EQ(logits->rows(), 2);
  expectLogitRow(*logits, 0, referenceLogits(config, weights, tokens),
                 static_cast<int64_t>(tokens.size()) - 1, config.vocab);
  expectLogitRow(*logits, 1, referenceLogits(config, weights, other), 3,
                 config.vocab);
}

// Medium matmul precision: products with bf16 weights take x rounded to
// bf16 (the `vdpbf16ps` kernels where the CPU has them), so prefill and
// decode match the reference whose products use the same rounded inputs;
// f32 and f16 weights keep the highest-precision results.
TEST_P(ExecutorForward, MediumPrecisionMatchesReferenceOfRoundedActivations) {
  ExecutorOptions options{.numThreads = 2};
  options.matmulPrecision = MatmulPrecision::Medium;
  auto executor = Executor::create(program, providerFor(weights), options);
  ASSERT_TRUE(executor.isOk()) << executor.message();
  std::vector<double> ref = referenceLogits(config, weights, tokens, true);
  const std::vector<int32_t> table = {2, 7, 4};
  std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 5);
  StepInput first = stepFor(prompt, 0, table);
  first.outputRows = {0, 1, 2, 3, 4};
  Result<Tensor> logits = (*executor)->step(first);
  ASSERT_TRUE(logits.isOk()) << logits.message();
  for (int64_t t = 0; t < 5; ++t)
    expectLogitRow(*logits, t, ref, t, config.vocab);
  for (int32_t p = 5; p < static_cast<int32_t>(tokens.size()); ++p) {
    logits = (*executor)->step(stepFor({tokens[p]}, p, table));
    ASSERT_TRUE(logits.isOk()) << logits.message();
    expectLogitRow(*logits, 0, ref, p, config.vocab);
  }
  // A 9-token prefill takes the GEMM path (more than 8 tokens).
  auto again = Executor::create(program, providerFor(weights), options);
  ASSERT_TRUE(again.isOk()) << again.message();
  StepInput whole = stepFor(tokens, 0, {6, 1, 9});
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i)
    whole.outputRows.push_back(i);
  logits = (*again)->step(whole);
  ASSERT_TRUE(logits.isOk()) << logits.message();
  for (int64_t t = 0; t < logits->rows(); ++t)
    expectLogitRow(*logits, t, ref, t, config.vocab);
  if (GetParam() == proto::BF16) { // the rounding matters at this tolerance
    const std::vector<double> exact = referenceLogits(config, weights, tokens);
    double farthest = 0;
    for (size_t i = 0; i < exact.size(); ++i)
      farthest = std::max(farthest, std::fabs(logits->data[i] - exact[i]) /
                                        (1.0 + std::fabs(exact[i])));
    EXPECT_GT(farthest, 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(WeightDTypes, ExecutorForward,
                         ::testing::Values(proto::F32, proto::BF16, proto::F16),
                         [](const auto &info) { return dtypeName(info.param); });

class ExecutorErrors : public ::testing::Test {
protected:
  TinyLlama config;
  proto::ShardProgram program = buildLlama(config);
  WeightMap weights = randomWeights(program, proto::F32, 5);

  std::string createError(const proto::ShardProgram &p, Communicator *comm = nullptr) {
    auto executor = Executor::create(p, providerFor(weights), {.numThreads = 1}, comm);
    EXPECT_FALSE(executor.isOk());
    return executor.message();
  }
  proto::Instruction &firstOf(proto::ShardProgram &p, proto::Opcode op) {
    for (proto::Instruction &inst : *p.mutable_instructions())
      if (inst.op() == op)
        return inst;
    ADD_FAILURE() << "no such instruction";
    return *p.mutable_instructions(0);
  }
};

#define EXPECT_CONTAINS(text, fragment)                                        \
  EXPECT_NE((text).find(fragment), std::string::npos) << (text)

TEST_F(ExecutorErrors, RejectsMalformedPrograms) {
  proto::ShardProgram p = program;
  p.set_format_version(proto::FORMAT_VERSION_UNSPECIFIED);
  EXPECT_CONTAINS(createError(p), "format_version 0");

  p = program;
  p.mutable_instructions(1)->set_inputs(0, 999);
  EXPECT_CONTAINS(createError(p), "slot 999");

  p = program;
  firstOf(p, proto::RMS_NORM).mutable_float_attrs()->erase("eps");
  EXPECT_CONTAINS(createError(p), "lacks float attribute 'eps'");

  p = program;
  firstOf(p, proto::ATTENTION).mutable_int_attrs()->at("layer") = 7;
  EXPECT_CONTAINS(createError(p), "layer 7");

  p = program;
  p.mutable_instructions(1)->add_inputs(0);
  EXPECT_CONTAINS(createError(p), "inputs; expected");

  p = program;
  p.mutable_kv_cache()->set_num_blocks(0);
  EXPECT_CONTAINS(createError(p), "KV cache");

  p = program;
  p.mutable_weights()->RemoveLast();
  EXPECT_CONTAINS(createError(p), "expected exactly 1");

  p = program;
  p.mutable_instructions()->SwapElements(0, 1); // norm before embedding
  EXPECT_CONTAINS(createError(p), "before any instruction writes it");

  // A misspelt optional attribute is a load error, not a silent default.
  p = program;
  firstOf(p, proto::EMBEDDING).mutable_int_attrs()->insert({"vocab_ofset", 3});
  EXPECT_CONTAINS(createError(p), "unknown int attribute 'vocab_ofset'");
  p = program;
  firstOf(p, proto::ROPE).mutable_float_attrs()->insert({"theta_scale", 2.0});
  EXPECT_CONTAINS(createError(p), "unknown float attribute 'theta_scale'");
}

TEST_F(ExecutorErrors, RejectsUnknownDevices) {
  EXPECT_FALSE(Device::parse("gpu").isOk());
  EXPECT_CONTAINS(Device::parse("cuda:x").message(), "cpu, cuda, cuda:N");
  EXPECT_FALSE(Device::parse("cuda:-1").isOk());
  EXPECT_EQ(Device::parse("cuda:3")->index, 3);
  EXPECT_EQ(Device::parse("cuda")->name(), "cuda:0");
  EXPECT_FALSE(Device::parse("cpu")->isCuda());
}

TEST_F(ExecutorErrors, RejectsCollectivesWithoutCommunicator) {
  proto::ShardProgram p = program;
  p.add_groups()->set_id(0);
  p.mutable_groups(0)->add_ranks(0);
  proto::Instruction *reduce = p.add_instructions();
  reduce->set_op(proto::ALL_REDUCE);
  reduce->add_inputs(p.output_slot());
  reduce->add_outputs(p.output_slot());
  reduce->mutable_int_attrs()->insert({"group", 0});
  EXPECT_CONTAINS(createError(p), "no communicator");
}

TEST_F(ExecutorErrors, RejectsBadWeights) {
  weights["lm_head.weight"].shape = {config.hidden, config.vocab};
  EXPECT_CONTAINS(createError(program), "lm_head.weight");
  weights.erase("model.norm.weight");
  EXPECT_CONTAINS(createError(program), "no tensor model.norm.weight");
}

TEST_F(ExecutorErrors, RejectsBadSteps) {
  auto executor = Executor::create(program, providerFor(weights), {.numThreads = 1});
  ASSERT_TRUE(executor.isOk()) << executor.message();
  StepInput step = stepFor({1, 2, 3, 4, 5}, 0, {0});
  Result<Tensor> r = (*executor)->step(step);
  ASSERT_FALSE(r.isOk());
  EXPECT_CONTAINS(r.message(), "needs block 1");
  step.blockTables = {{0, 16}};
  EXPECT_CONTAINS((*executor)->step(step).message(), "block id 16");
  step.blockTables = {{0, 1}};
  step.positions.pop_back();
  EXPECT_CONTAINS((*executor)->step(step).message(), "sizes differ");
  step = stepFor({1, 48}, 0, {0});
  EXPECT_CONTAINS((*executor)->step(step).message(), "id 48, outside the vocabulary");
}

// ---- KV_LOAD / KV_STORE (docs/kv-store.md) --------------------------------

/// `program` with the KV-block store's instructions where the compiler puts
/// them (llm-insert-kv-transfers + lowering): KV_LOAD of every layer before
/// the first ATTENTION, KV_STORE after the last.
proto::ShardProgram withKvTransfers(const proto::ShardProgram &program) {
  proto::ShardProgram p = program;
  p.clear_instructions();
  int first = -1, last = -1;
  for (int i = 0; i < program.instructions_size(); ++i)
    if (program.instructions(i).op() == proto::ATTENTION) {
      first = first < 0 ? i : first;
      last = i;
    }
  auto transfer = [&](proto::Opcode op) {
    proto::Instruction *inst = p.add_instructions();
    inst->set_op(op);
    (*inst->mutable_int_attrs())["layer_begin"] = 0;
    (*inst->mutable_int_attrs())["layer_end"] = program.kv_cache().num_layers();
  };
  for (int i = 0; i < program.instructions_size(); ++i) {
    if (i == first)
      transfer(proto::KV_LOAD);
    *p.add_instructions() = program.instructions(i);
    if (i == last)
      transfer(proto::KV_STORE);
  }
  return p;
}

/// A KV-block store in memory, keyed by a block's token prefix as the real
/// one is: the engine's side of the store (kvstore::RankKvStore is the UCX
/// one, tested against a real server in serving_test and the mesh tests).
class InMemoryKvStore final : public KvTransferHook {
public:
  InMemoryKvStore(Executor &executor, std::map<std::vector<int32_t>, std::vector<std::byte>> &blocks)
      : executor_(executor), blocks_(blocks) {}

  Result<std::vector<uint32_t>> loadKvBlocks(const std::vector<KvBlockRun> &runs,
                                             uint32_t layerBegin, uint32_t layerEnd) override {
    ++loads;
    layers = {layerBegin, layerEnd};
    std::vector<uint32_t> loaded;
    for (const KvBlockRun &run : runs) {
      uint32_t n = 0;
      for (; n < run.blocks.size(); ++n) { // the leading run of held blocks
        auto it = blocks_.find(prefixOf(run, n));
        if (it == blocks_.end())
          break;
        LLMIR_RETURN_IF_ERROR(executor_.writeKvBlock(run.blocks[n], it->second));
      }
      loaded.push_back(n);
    }
    return loaded;
  }

  Result<uint32_t> storeKvBlocks(const std::vector<KvBlockRun> &runs, uint32_t layerBegin,
                                 uint32_t layerEnd) override {
    ++stores;
    layers = {layerBegin, layerEnd};
    uint32_t stored = 0;
    for (const KvBlockRun &run : runs)
      for (size_t i = 0; i < run.blocks.size(); ++i, ++stored) {
        std::vector<std::byte> bytes(executor_.kvBlockBytes());
        LLMIR_RETURN_IF_ERROR(executor_.readKvBlock(run.blocks[i], bytes));
        blocks_[prefixOf(run, i)] = std::move(bytes);
      }
    return stored;
  }

  int loads = 0, stores = 0;
  std::pair<uint32_t, uint32_t> layers{0, 0};

private:
  std::vector<int32_t> prefixOf(const KvBlockRun &run, size_t i) const {
    const size_t end = (static_cast<size_t>(run.firstBlock) + i + 1) *
                       static_cast<size_t>(executor_.kvCacheShape().blockSize);
    return {run.tokenIds.begin(), run.tokenIds.begin() + static_cast<std::ptrdiff_t>(end)};
  }
  Executor &executor_;
  std::map<std::vector<int32_t>, std::vector<std::byte>> &blocks_;
};

// Executor A stores the blocks its prefill filled through KV_STORE;
// executor B, another cache, loads them through KV_LOAD inside the step that
// computes the rest: B's logits equal A's, step by step.
TEST_P(ExecutorForward, KvStoreThenKvLoadInAStepContinueTheSequence) {
  program = withKvTransfers(program);
  auto computed = create();
  auto loaded = create();
  ASSERT_TRUE(computed && loaded);
  EXPECT_TRUE(computed->hasKvTransfers());
  std::map<std::vector<int32_t>, std::vector<std::byte>> store;
  InMemoryKvStore hookA(*computed, store), hookB(*loaded, store);
  computed->setKvTransferHook(&hookA);
  loaded->setKvTransferHook(&hookB);
  const int64_t B = computed->kvCacheShape().blockSize;
  const int32_t full = static_cast<int32_t>((tokens.size() - 1) / static_cast<size_t>(B));
  ASSERT_GE(full, 1);
  const int64_t prefix = full * B;
  const std::vector<int32_t> tableA = {5, 2, 8}, tableB = {7, 1, 3};

  StepInput prefill = stepFor({tokens.begin(), tokens.begin() + prefix}, 0, tableA);
  prefill.kvStores = {{tokens, 0, {tableA.begin(), tableA.begin() + full}}};
  ASSERT_TRUE(computed->step(prefill).isOk());
  EXPECT_EQ(hookA.stores, 1);
  EXPECT_EQ(hookA.loads, 0) << "the step named nothing to load";
  EXPECT_EQ(hookA.layers, std::make_pair(0u, static_cast<uint32_t>(config.layers)));
  EXPECT_EQ(store.size(), static_cast<size_t>(full));

  for (int64_t p = prefix; p < static_cast<int64_t>(tokens.size()); ++p) {
    const int32_t pos = static_cast<int32_t>(p);
    StepInput stepB = stepFor({tokens[p]}, pos, tableB);
    if (p == prefix) // the first step of B loads the prefix, then attends over it
      stepB.kvLoads = {{tokens, 0, {tableB.begin(), tableB.begin() + full}}};
    Result<Tensor> a = computed->step(stepFor({tokens[p]}, pos, tableA));
    Result<Tensor> b = loaded->step(stepB);
    ASSERT_TRUE(a.isOk() && b.isOk()) << a.message() << b.message();
    EXPECT_EQ(a->data, b->data) << "position " << p;
  }
  EXPECT_EQ(hookB.loads, 1);
  EXPECT_EQ(hookA.stores, 1) << "steps that name no blocks do not call the hook";
}

TEST_P(ExecutorForward, KvTransferInstructionsDoNothingWithoutBlocksOrHook) {
  auto plain = create();
  program = withKvTransfers(program);
  auto withTransfers = create();
  ASSERT_TRUE(plain && withTransfers);
  StepInput step = stepFor(tokens, 0, {6, 1, 9});
  step.kvStores = {{tokens, 0, {6}}}; // no hook: the block stays local
  Result<Tensor> a = plain->step(step), b = withTransfers->step(step);
  ASSERT_TRUE(a.isOk() && b.isOk()) << a.message() << b.message();
  EXPECT_EQ(a->data, b->data);
}

TEST_F(ExecutorErrors, RejectsBadKvTransferInstructions) {
  const proto::ShardProgram transfers = withKvTransfers(program);
  auto kvLoad = [&](proto::ShardProgram &p) -> proto::Instruction & {
    return firstOf(p, proto::KV_LOAD);
  };
  proto::ShardProgram p = transfers;
  kvLoad(p).mutable_int_attrs()->insert({"layer_start", 0}); // misspelt
  EXPECT_CONTAINS(createError(p), "KV_LOAD has unknown int attribute 'layer_start'");
  p = transfers;
  kvLoad(p).mutable_int_attrs()->erase("layer_end");
  EXPECT_CONTAINS(createError(p), "KV_LOAD lacks int attribute 'layer_end'");
  p = transfers;
  (*kvLoad(p).mutable_int_attrs())["layer_end"] = config.layers + 1;
  EXPECT_CONTAINS(createError(p), "layers [0, 3) are not a non-empty range of the KV cache's 2");
  p = transfers;
  (*firstOf(p, proto::KV_STORE).mutable_int_attrs())["layer_begin"] = 2;
  EXPECT_CONTAINS(createError(p), "KV_STORE: layers [2, 2)");
  p = transfers;
  kvLoad(p).add_inputs(0);
  EXPECT_CONTAINS(createError(p), "KV_LOAD has 1 inputs; expected 0");
  p = transfers;
  kvLoad(p).mutable_float_attrs()->insert({"layer_begin", 0.0});
  EXPECT_CONTAINS(createError(p), "unknown float attribute 'layer_begin'");
  // A load after the attention over its layers, a store before it.
  auto transferAt = [&](proto::Opcode op, bool atEnd) {
    proto::ShardProgram q = program;
    proto::Instruction inst;
    inst.set_op(op);
    (*inst.mutable_int_attrs())["layer_begin"] = 1;
    (*inst.mutable_int_attrs())["layer_end"] = 2;
    *q.add_instructions() = inst;
    if (!atEnd) // move it to the front
      for (int i = q.instructions_size() - 1; i > 0; --i)
        q.mutable_instructions()->SwapElements(i, i - 1);
    return q;
  };
  EXPECT_CONTAINS(createError(transferAt(proto::KV_LOAD, true)),
                  "KV_LOAD of layer 1 after the attention over it");
  EXPECT_CONTAINS(createError(transferAt(proto::KV_STORE, false)),
                  "instruction 0: KV_STORE of layer 1 before the attention over it");
  auto fine = Executor::create(transferAt(proto::KV_LOAD, false), providerFor(weights),
                               {.numThreads = 1});
  EXPECT_TRUE(fine) << fine.message();
}

TEST_F(ExecutorErrors, AStepWhoseBlocksDoNotAllComeFails) {
  std::map<std::vector<int32_t>, std::vector<std::byte>> store;
  auto plain = Executor::create(program, providerFor(weights), {.numThreads = 1});
  auto executor = Executor::create(withKvTransfers(program), providerFor(weights), {.numThreads = 1});
  ASSERT_TRUE(plain && executor) << plain.message() << executor.message();
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  StepInput step = stepFor({9}, 8, {0, 1, 2});
  step.kvLoads = {{tokens, 0, {0, 1}}};
  // Loads need a hook and a program with KV_LOAD.
  EXPECT_CONTAINS((*executor)->step(step).message(), "no KV transfer hook");
  InMemoryKvStore hookPlain(**plain, store);
  (*plain)->setKvTransferHook(&hookPlain);
  EXPECT_CONTAINS((*plain)->step(step).message(), "the program has no KV_LOAD");
  EXPECT_CONTAINS((*plain)->transferKvBlocks(step.kvLoads, {}).message(), "has no KV_LOAD");

  InMemoryKvStore hook(**executor, store);
  (*executor)->setKvTransferHook(&hook);
  // The store holds block 0 only: the step cannot attend over block 1.
  StepInput first = stepFor({1, 2, 3, 4}, 0, {3});
  first.kvStores = {{tokens, 0, {3}}};
  ASSERT_TRUE((*executor)->step(first).isOk());
  Result<Tensor> r = (*executor)->step(step);
  ASSERT_FALSE(r.isOk());
  EXPECT_CONTAINS(r.message(), "(KV_LOAD): load run 0: 1 of its 2 blocks came from the store");
  // Between steps the same shortfall is an answer, not an error.
  auto moved = (*executor)->transferKvBlocks(step.kvLoads, {});
  ASSERT_TRUE(moved) << moved.message();
  EXPECT_EQ(moved->loaded, std::vector<uint32_t>{1});
  auto none = (*executor)->transferKvBlocks({{{9, 9, 9, 9}, 0, {4}}}, {});
  ASSERT_TRUE(none) << none.message();
  EXPECT_EQ(none->loaded, std::vector<uint32_t>{0});
  // Runs outside the cache or their tokens are refused with the step.
  step.kvLoads = {{tokens, 0, {0, 99}}};
  EXPECT_CONTAINS((*executor)->step(step).message(), "KV load run 0: block id 99 outside");
  step.kvLoads = {{{1, 2, 3}, 0, {0}}};
  EXPECT_CONTAINS((*executor)->step(step).message(), "its token ids only 3");
  step.kvLoads.clear();
  step.kvStores = {{tokens, -1, {0}}};
  EXPECT_CONTAINS((*executor)->step(step).message(), "KV store run 0: first block -1");
}

/// Plays the other ranks: every peer contributes ones to a sum, holds twice
/// this rank's data in a gather, and sends sevens.
class FakeCommunicator : public Communicator {
public:
  Status allReduceSum(float *data, size_t count, uint32_t) override {
    for (size_t i = 0; i < count; ++i)
      data[i] += 1.0f;
    return Status::ok();
  }
  Status allGather(const float *in, size_t count, float *out, uint32_t) override {
    for (size_t i = 0; i < count; ++i) {
      out[i] = in[i];
      out[count + i] = 2.0f * in[i];
    }
    return Status::ok();
  }
  Status send(const float *, size_t count, uint32_t peer) override {
    sent.push_back({count, peer});
    return Status::ok();
  }
  Status recv(float *data, size_t count, uint32_t) override {
    std::fill(data, data + count, 7.0f);
    return Status::ok();
  }
  std::vector<std::pair<size_t, uint32_t>> sent;
};

TEST(ExecutorCollectives, RoutesThroughCommunicator) {
  ProgramBuilder b;
  const int64_t V = 6, H = 3;
  uint32_t table = b.weight("embed", {V, H});
  uint32_t e = b.activation("e", H), r = b.activation("r", H);
  uint32_t g = b.activation("g", 2 * H), in = b.activation("in", 2);
  uint32_t out = b.activation("out", 2 * H);
  b.emit(proto::EMBEDDING, {table}, {e});
  b.emit(proto::ALL_REDUCE, {e}, {r}).mutable_int_attrs()->insert({"group", 4});
  b.emit(proto::ALL_GATHER, {r}, {g}).mutable_int_attrs()->insert({"group", 4});
  b.emit(proto::RECV, {}, {in}).mutable_int_attrs()->insert({"peer", 0});
  b.emit(proto::SEND, {in}, {}).mutable_int_attrs()->insert({"peer", 2});
  b.emit(proto::SELECT_ROWS, {g}, {out});
  b.program.set_has_output(true);
  b.program.set_output_slot(out);
  b.program.set_world_size(3);
  b.program.add_groups()->set_id(4);
  b.program.mutable_groups(0)->add_ranks(1);
  b.program.mutable_groups(0)->add_ranks(2);
  proto::KvCacheSpec *kv = b.program.mutable_kv_cache();
  kv->set_num_layers(1);
  kv->set_num_kv_heads(1);
  kv->set_head_dim(1);
  kv->set_block_size(4);
  kv->set_num_blocks(1);

  std::vector<float> values = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  WeightMap weights = {{"embed", makeWeight(proto::F32, {V, H}, values)}};
  FakeCommunicator comm;
  auto executor = Executor::create(b.program, providerFor(weights), {}, &comm);
  ASSERT_TRUE(executor.isOk()) << executor.message();
  StepInput step = stepFor({4, 1}, 0, {0});
  step.outputRows = {0, 1};
  Result<Tensor> y = (*executor)->step(step);
  ASSERT_TRUE(y.isOk()) << y.message();
  ASSERT_EQ(y->shape, (std::vector<int64_t>{2, 2 * H}));
  // Token 4: embedding 12 13 14, +1 -> 13 14 15, gathered with 26 28 30.
  EXPECT_EQ(y->data, (std::vector<float>{13, 14, 15, 26, 28, 30, 4, 5, 6, 8, 10, 12}));
  ASSERT_EQ(comm.sent.size(), 1u);
  EXPECT_EQ(comm.sent[0], (std::pair<size_t, uint32_t>{4, 2}));
}

} // namespace
} // namespace llmir::engine
