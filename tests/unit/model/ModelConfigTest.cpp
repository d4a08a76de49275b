#include "llmir/model/ModelConfig.h"
#include "llmir/model/TensorNames.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace llmir::model {
namespace {

using ::testing::HasSubstr;

/// A minimal valid Llama config with `extra` members appended.
std::string llamaConfig(const std::string &extra = "") {
  return R"({"architectures":["LlamaForCausalLM"],"model_type":"llama",)"
         R"("vocab_size":100,"hidden_size":64,"intermediate_size":128,)"
         R"("num_hidden_layers":2,"num_attention_heads":4)" +
         (extra.empty() ? "" : "," + extra) + "}";
}

TEST(ModelConfig, AppliesDefaults) {
  Result<ModelConfig> config = parseModelConfig(llamaConfig(), "config.json");
  ASSERT_TRUE(config.isOk()) << config.message();
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->modelType, "llama");
  EXPECT_EQ(config->numKvHeads, 4);
  EXPECT_EQ(config->headDim, 16);
  EXPECT_EQ(config->ropeTheta, 10000.0);
  EXPECT_EQ(config->rmsNormEps, 1e-6);
  EXPECT_FALSE(config->tieWordEmbeddings);
  EXPECT_FALSE(config->qkvBias);
  EXPECT_FALSE(config->bosTokenId.has_value());
  EXPECT_TRUE(config->eosTokenIds.empty());
  EXPECT_FALSE(config->slidingWindow.has_value());
}

TEST(ModelConfig, ReadsRopeThetaFromEitherPlace) {
  Result<ModelConfig> topLevel =
      parseModelConfig(llamaConfig(R"("rope_theta":500000.0,"rope_scaling":null)"), "c");
  ASSERT_TRUE(topLevel.isOk()) << topLevel.message();
  EXPECT_EQ(topLevel->ropeTheta, 500000.0);
  Result<ModelConfig> nested = parseModelConfig(
      llamaConfig(R"("rope_parameters":{"rope_theta":1e6,"rope_type":"default"})"), "c");
  ASSERT_TRUE(nested.isOk()) << nested.message();
  EXPECT_EQ(nested->ropeTheta, 1e6);

  // llama3 without its parameters names the missing one.
  EXPECT_THAT(
      parseModelConfig(llamaConfig(R"("rope_parameters":{"rope_theta":1e6,"rope_type":"llama3"})"),
                       "c")
          .message(),
      HasSubstr("key 'rope_parameters.factor' is required"));
  Result<ModelConfig> linear = parseModelConfig(
      llamaConfig(R"("rope_scaling":{"type":"linear","factor":2.0})"), "c");
  ASSERT_TRUE(linear.isOk()) << linear.message();
  EXPECT_EQ(linear->ropeScaling.type, RopeScalingType::Linear);
  EXPECT_EQ(linear->ropeScaling.factor, 2.0);
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("rope_scaling":{"type":"dynamic","factor":2.0})"),
                               "c")
                  .message(),
              HasSubstr("key 'rope_scaling.rope_type' is \"dynamic\": supported RoPE types"));
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("rope_theta":-1)"), "c").message(),
              HasSubstr("key 'rope_theta' must be a positive number"));
}

// Llama 3.1's scaling in both config forms: transformers 4 (top-level
// rope_theta, rope_scaling) and 5 (rope_parameters).
TEST(ModelConfig, ReadsLlama3RopeScalingInBothForms) {
  const std::string params =
      R"("factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,)"
      R"("original_max_position_embeddings":8192,"rope_type":"llama3")";
  for (const std::string &extra :
       {R"("rope_theta":500000.0,"rope_scaling":{)" + params + "}",
        R"("rope_parameters":{"rope_theta":500000.0,)" + params + "}"}) {
    Result<ModelConfig> config = parseModelConfig(llamaConfig(extra), "c");
    ASSERT_TRUE(config.isOk()) << config.message();
    EXPECT_EQ(config->ropeTheta, 500000.0);
    EXPECT_EQ(config->ropeScaling.type, RopeScalingType::Llama3);
    EXPECT_EQ(config->ropeScaling.factor, 8.0);
    EXPECT_EQ(config->ropeScaling.lowFreqFactor, 1.0);
    EXPECT_EQ(config->ropeScaling.highFreqFactor, 4.0);
    EXPECT_EQ(config->ropeScaling.originalMaxPositionEmbeddings, 8192);
  }
  for (const char *type : {"yarn", "longrope", "dynamic", "su"})
    EXPECT_THAT(parseModelConfig(llamaConfig(std::string(R"("rope_parameters":{"rope_type":")") +
                                             type + R"(","factor":4.0})"),
                                 "config.json")
                    .message(),
                HasSubstr(std::string("config.json: key 'rope_parameters.rope_type' is \"") +
                          type + "\""));
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("partial_rotary_factor":0.5)"), "c").message(),
              HasSubstr("key 'partial_rotary_factor' is 0.5"));
}

TEST(ModelConfig, SlidingWindowLayersFollowTransformers) {
  // Mistral: every layer; null means none.
  std::string mistral = llamaConfig(R"("sliding_window":16)");
  mistral.replace(mistral.find("LlamaForCausalLM"), 16, "MistralForCausalLM");
  Result<ModelConfig> windowed = parseModelConfig(mistral, "c");
  ASSERT_TRUE(windowed.isOk()) << windowed.message();
  EXPECT_EQ(windowed->layerSlidingWindow, (std::vector<int64_t>{16, 16}));
  std::string unwindowed = llamaConfig(R"("sliding_window":null)");
  unwindowed.replace(unwindowed.find("LlamaForCausalLM"), 16, "MistralForCausalLM");
  Result<ModelConfig> none = parseModelConfig(unwindowed, "c");
  ASSERT_TRUE(none.isOk()) << none.message();
  EXPECT_EQ(none->layerSlidingWindow, (std::vector<int64_t>{0, 0}));
  // Llama: transformers ignores the key.
  Result<ModelConfig> llama = parseModelConfig(llamaConfig(R"("sliding_window":16)"), "c");
  ASSERT_TRUE(llama.isOk());
  EXPECT_EQ(llama->layerSlidingWindow, (std::vector<int64_t>{0, 0}));

  // Qwen2: layers >= max_window_layers, only with use_sliding_window.
  const std::string qwen = R"({"architectures":["Qwen2ForCausalLM"],"vocab_size":100,)"
                           R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,)"
                           R"("num_attention_heads":4,"num_key_value_heads":2,)"
                           R"("sliding_window":32,)";
  Result<ModelConfig> upper =
      parseModelConfig(qwen + R"("use_sliding_window":true,"max_window_layers":1})", "c");
  ASSERT_TRUE(upper.isOk()) << upper.message();
  EXPECT_EQ(upper->layerSlidingWindow, (std::vector<int64_t>{0, 32, 32}));
  Result<ModelConfig> every =
      parseModelConfig(qwen + R"("use_sliding_window":true,"max_window_layers":0})", "c");
  ASSERT_TRUE(every.isOk()) << every.message();
  EXPECT_EQ(every->layerSlidingWindow, (std::vector<int64_t>{32, 32, 32}));
  Result<ModelConfig> off =
      parseModelConfig(qwen + R"("use_sliding_window":false,"max_window_layers":1})", "c");
  ASSERT_TRUE(off.isOk());
  EXPECT_EQ(off->layerSlidingWindow, (std::vector<int64_t>{0, 0, 0}));
  // transformers 5's layer_types decide when present.
  Result<ModelConfig> typed = parseModelConfig(
      qwen + R"("use_sliding_window":true,"layer_types":)"
             R"(["sliding_attention","full_attention","sliding_attention"]})",
      "c");
  ASSERT_TRUE(typed.isOk()) << typed.message();
  EXPECT_EQ(typed->layerSlidingWindow, (std::vector<int64_t>{32, 0, 32}));
  EXPECT_THAT(parseModelConfig(qwen + R"("use_sliding_window":false,"layer_types":)"
                                      R"(["sliding_attention","full_attention","full_attention"]})",
                               "c")
                  .message(),
              HasSubstr("key 'layer_types[0]' is \"sliding_attention\" but there is no "
                        "sliding_window"));
  EXPECT_THAT(parseModelConfig(qwen + R"("layer_types":["chunked","full_attention",)"
                                      R"("full_attention"]})",
                               "c")
                  .message(),
              HasSubstr("key 'layer_types[0]' is \"chunked\""));
}

TEST(ModelConfig, Qwen3AndPhi3Layouts) {
  const std::string qwen3 = R"({"architectures":["Qwen3ForCausalLM"],"vocab_size":100,)"
                            R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,)"
                            R"("num_attention_heads":4,"num_key_value_heads":2,"head_dim":32})";
  Result<ModelConfig> q3 = parseModelConfig(qwen3, "c");
  ASSERT_TRUE(q3.isOk()) << q3.message();
  EXPECT_TRUE(q3->qkNorm);
  EXPECT_FALSE(q3->qkvBias);
  EXPECT_EQ(q3->headDim, 32);
  std::vector<ExpectedTensor> expected = expectedTensors(*q3);
  auto has = [&](const std::string &name, std::vector<int64_t> shape) {
    return std::any_of(expected.begin(), expected.end(), [&](const ExpectedTensor &t) {
      return t.name == name && t.shape == shape;
    });
  };
  EXPECT_TRUE(has("model.layers.0.self_attn.q_norm.weight", {32}));
  EXPECT_TRUE(has("model.layers.0.self_attn.q_proj.weight", {128, 64}));
  EXPECT_TRUE(has("model.layers.0.self_attn.o_proj.weight", {64, 128}));

  const std::string phi3 = R"({"architectures":["Phi3ForCausalLM"],"vocab_size":100,)"
                           R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,)"
                           R"("num_attention_heads":4,"num_key_value_heads":2})";
  Result<ModelConfig> p3 = parseModelConfig(phi3, "c");
  ASSERT_TRUE(p3.isOk()) << p3.message();
  EXPECT_TRUE(p3->fusedProjections);
  expected = expectedTensors(*p3);
  EXPECT_TRUE(has("model.layers.0.self_attn.qkv_proj.weight", {64 + 2 * 32, 64}));
  EXPECT_TRUE(has("model.layers.0.mlp.gate_up_proj.weight", {256, 64}));
  EXPECT_FALSE(has("model.layers.0.self_attn.q_proj.weight", {64, 64}));
}

TEST(ModelConfig, ReadsTokenIdsAndDtype) {
  Result<ModelConfig> list = parseModelConfig(
      llamaConfig(R"("bos_token_id":1,"eos_token_id":[2,7],"torch_dtype":"bfloat16")"), "c");
  ASSERT_TRUE(list.isOk()) << list.message();
  EXPECT_EQ(list->bosTokenId, 1);
  EXPECT_EQ(list->eosTokenIds, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(list->torchDtype, "bfloat16");
  Result<ModelConfig> single =
      parseModelConfig(llamaConfig(R"("eos_token_id":3,"dtype":"float32")"), "c");
  ASSERT_TRUE(single.isOk());
  EXPECT_EQ(single->eosTokenIds, (std::vector<int64_t>{3}));
  EXPECT_EQ(single->torchDtype, "float32");
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("eos_token_id":[2,100])"), "c").message(),
              HasSubstr("key 'eos_token_id' must be a token id in [0, vocab_size=100)"));
}

TEST(ModelConfig, ArchitectureSpecifics) {
  const std::string qwen = R"({"architectures":["Qwen2ForCausalLM"],"vocab_size":100,)"
                           R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,)"
                           R"("num_attention_heads":4,"num_key_value_heads":2,)"
                           R"("sliding_window":32,"use_sliding_window":false})";
  Result<ModelConfig> config = parseModelConfig(qwen, "c");
  ASSERT_TRUE(config.isOk()) << config.message();
  EXPECT_TRUE(config->qkvBias);
  EXPECT_FALSE(config->outputBias);
  EXPECT_FALSE(config->slidingWindow.has_value());
  const std::vector<ExpectedTensor> expected = expectedTensors(*config);
  EXPECT_TRUE(std::any_of(expected.begin(), expected.end(), [](const ExpectedTensor &t) {
    return t.name == "model.layers.0.self_attn.k_proj.bias" && t.shape == std::vector<int64_t>{32};
  }));

  std::string mistral = llamaConfig(R"("sliding_window":4096)");
  mistral.replace(mistral.find("LlamaForCausalLM"), 16, "MistralForCausalLM");
  Result<ModelConfig> mistralConfig = parseModelConfig(mistral, "c");
  ASSERT_TRUE(mistralConfig.isOk()) << mistralConfig.message();
  EXPECT_EQ(mistralConfig->slidingWindow, 4096);

  std::string gpt = llamaConfig();
  gpt.replace(gpt.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
  Result<ModelConfig> unsupported = parseModelConfig(gpt, "config.json");
  EXPECT_THAT(unsupported.message(), HasSubstr("config.json: key 'architectures'"));
  EXPECT_THAT(unsupported.message(), HasSubstr("'GPT2LMHeadModel'"));
  EXPECT_THAT(unsupported.message(),
              HasSubstr("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                        "Qwen3ForCausalLM, Phi3ForCausalLM"));
}

TEST(ModelConfig, ValidatesSizes) {
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("num_key_value_heads":3)"), "cfg").message(),
              HasSubstr("cfg: key 'num_key_value_heads' (3) must divide num_attention_heads (4)"));
  EXPECT_THAT(parseModelConfig(R"({"architectures":["LlamaForCausalLM"],"vocab_size":0})", "c")
                  .message(),
              HasSubstr("key 'vocab_size' must be a positive integer, got 0"));
  EXPECT_THAT(parseModelConfig(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10})", "c")
                  .message(),
              HasSubstr("key 'hidden_size' is required"));
  EXPECT_THAT(parseModelConfig(llamaConfig(R"("hidden_act":"gelu")"), "c").message(),
              HasSubstr("c: key 'hidden_act' is \"gelu\": only \"silu\""));
  EXPECT_THAT(parseModelConfig("{", "c").message(), HasSubstr("c: invalid JSON"));
  EXPECT_THAT(loadModelConfig("/nonexistent-dir").message(), HasSubstr("cannot open"));
}

TEST(TensorNames, CanonicalNames) {
  EXPECT_EQ(layerTensorName(3, LayerTensor::KProj), "model.layers.3.self_attn.k_proj.weight");
  EXPECT_EQ(layerTensorName(0, LayerTensor::DownProj), "model.layers.0.mlp.down_proj.weight");
  Result<ModelConfig> config =
      parseModelConfig(llamaConfig(R"("tie_word_embeddings":true)"), "c");
  ASSERT_TRUE(config.isOk());
  const std::vector<ExpectedTensor> expected = expectedTensors(*config);
  // embed + 2 layers x 9 + norm; no lm_head when tied.
  ASSERT_EQ(expected.size(), 1u + 2 * 9 + 1);
  EXPECT_EQ(expected.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(expected.back().name, "model.norm.weight");
}

} // namespace
} // namespace llmir::model
