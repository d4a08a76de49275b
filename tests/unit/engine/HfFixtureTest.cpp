// End to end against Hugging Face: the hand-built Llama program over the
// tiny-llama-gqa checkpoint must reproduce transformers' f32 logits (relative
// error < 1e-4) and greedy continuations. Skips without the fixtures.
#include "LlamaProgram.h"
#include "TestUtil.h"

#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace llmir::engine {
namespace {

using namespace testing;

const std::filesystem::path kModelDir =
    std::filesystem::path(LLMIR_FIXTURES_DIR) / "tiny-llama-gqa";

std::string readFile(const std::filesystem::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

/// Every F32 tensor of a safetensors file (enough for these fixtures).
std::map<std::string, WeightTensor> readSafetensors(const std::filesystem::path &path) {
  std::string bytes = readFile(path);
  uint64_t headerSize = 0;
  std::memcpy(&headerSize, bytes.data(), 8);
  boost::json::object header =
      boost::json::parse(bytes.substr(8, headerSize)).as_object();
  std::map<std::string, WeightTensor> tensors;
  for (const auto &[name, info] : header) {
    if (name == "__metadata__")
      continue;
    const boost::json::object &entry = info.as_object();
    EXPECT_EQ(entry.at("dtype").as_string(), "F32") << name;
    WeightTensor w;
    w.dtype = proto::F32;
    for (const auto &d : entry.at("shape").as_array())
      w.shape.push_back(d.to_number<int64_t>());
    const auto &offsets = entry.at("data_offsets").as_array();
    size_t begin = 8 + headerSize + offsets[0].to_number<size_t>();
    size_t end = 8 + headerSize + offsets[1].to_number<size_t>();
    w.data.resize(end - begin);
    std::memcpy(w.data.data(), bytes.data() + begin, end - begin);
    tensors[std::string(name)] = std::move(w);
  }
  return tensors;
}

TEST(HfFixture, TinyLlamaGqaMatchesTransformers) {
  if (!std::filesystem::exists(kModelDir))
    GTEST_SKIP() << "fixtures not found at " << kModelDir
                 << " (set -DLLMIR_FIXTURES_DIR)";
  TinyLlama config{.vocab = 512, .hidden = 128, .heads = 8, .kvHeads = 2,
                   .headDim = 16, .ffn = 352, .layers = 4};
  std::map<std::string, WeightTensor> weights =
      readSafetensors(kModelDir / "model.safetensors");
  std::map<std::string, WeightTensor> referenceLogits =
      readSafetensors(kModelDir / "reference_logits.safetensors");
  boost::json::object reference =
      boost::json::parse(readFile(kModelDir / "reference.json")).as_object();

  auto provider = [&](const proto::WeightSlice &slice) -> Result<WeightTensor> {
    auto it = weights.find(slice.tensor_name());
    if (it == weights.end())
      return Status::error("no tensor " + slice.tensor_name());
    return it->second;
  };
  const auto &cases = reference.at("cases").as_array();
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    auto executor = Executor::create(buildLlama(config), provider, {.numKvBlocks = 64});
    ASSERT_TRUE(executor.isOk()) << executor.message();
    std::vector<int32_t> prompt, greedy;
    for (const auto &id : cases[c].at("prompt_ids").as_array())
      prompt.push_back(id.to_number<int32_t>());
    for (const auto &id : cases[c].at("greedy_ids").as_array())
      greedy.push_back(id.to_number<int32_t>());
    std::vector<int32_t> table(64);
    for (int32_t b = 0; b < 64; ++b)
      table[b] = 63 - b; // any physical order works

    StepInput prefill;
    prefill.blockTables = {table};
    for (size_t i = 0; i < prompt.size(); ++i) {
      prefill.tokenIds.push_back(prompt[i]);
      prefill.positions.push_back(static_cast<int32_t>(i));
      prefill.tokenSeq.push_back(0);
      prefill.outputRows.push_back(static_cast<int32_t>(i));
    }
    Result<Tensor> logits = (*executor)->step(prefill);
    ASSERT_TRUE(logits.isOk()) << logits.message();
    std::vector<float> expected =
        weightValues(referenceLogits.at("prompt" + std::to_string(c) + ".logits"));
    ASSERT_EQ(logits->data.size(), expected.size());
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < expected.size(); ++i) {
      diff += std::pow(double(logits->data[i]) - expected[i], 2);
      norm += std::pow(double(expected[i]), 2);
    }
    EXPECT_LT(std::sqrt(diff / norm), 1e-4);

    // Greedy continuation, one decode step per token.
    const int64_t vocab = config.vocab;
    std::vector<int32_t> generated = {argmax(std::span<const float>(
        logits->data.data() + (logits->rows() - 1) * vocab, vocab))};
    while (generated.size() < greedy.size()) {
      StepInput decode;
      decode.tokenIds = {generated.back()};
      decode.positions = {static_cast<int32_t>(prompt.size() + generated.size() - 1)};
      decode.tokenSeq = {0};
      decode.blockTables = {table};
      Result<Tensor> next = (*executor)->step(decode);
      ASSERT_TRUE(next.isOk()) << next.message();
      generated.push_back(argmax(next->data));
    }
    EXPECT_EQ(generated, greedy);
  }
}

} // namespace
} // namespace llmir::engine
