// The reference checkpoints in LLMIR_FIXTURES_DIR: real files written by
// Hugging Face transformers.
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/TensorNames.h"

#include "TestFiles.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace llmir::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<fs::path> fixtureDirs() {
  std::vector<fs::path> dirs;
  std::error_code error;
  for (const auto &entry : fs::directory_iterator(LLMIR_FIXTURES_DIR, error))
    if (fs::exists(entry.path() / "model.safetensors"))
      dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

TEST(Fixtures, EveryCheckpointMatchesItsConfig) {
  const std::vector<fs::path> dirs = fixtureDirs();
  if (dirs.empty())
    GTEST_SKIP() << "no fixtures in " << LLMIR_FIXTURES_DIR;
  for (const fs::path &dir : dirs) {
    SCOPED_TRACE(dir.string());
    Result<ModelConfig> config = loadModelConfig(dir.string());
    ASSERT_TRUE(config.isOk()) << config.message();
    Result<Checkpoint> checkpoint = Checkpoint::open(dir.string());
    ASSERT_TRUE(checkpoint.isOk()) << checkpoint.message();
    Status shapes = checkCheckpointShapes(*config, *checkpoint);
    EXPECT_TRUE(shapes.isOk()) << shapes.message();
    // Every tensor converts to float32 without error and holds finite numbers.
    for (const TensorInfo &info : checkpoint->tensors()) {
      Result<std::vector<float>> values = checkpoint->readAsF32(info.name);
      ASSERT_TRUE(values.isOk()) << values.message();
      ASSERT_EQ(static_cast<int64_t>(values->size()), info.numElements());
      for (float value : *values)
        ASSERT_TRUE(std::isfinite(value)) << info.name;
    }
  }
}

TEST(Fixtures, KnownFixtureFacts) {
  const fs::path demo = fs::path(LLMIR_FIXTURES_DIR) / "demo-llama-4m";
  const fs::path mha = fs::path(LLMIR_FIXTURES_DIR) / "tiny-llama-mha";
  if (!fs::exists(demo) || !fs::exists(mha))
    GTEST_SKIP() << "fixtures demo-llama-4m / tiny-llama-mha not in " << LLMIR_FIXTURES_DIR;
  Result<ModelConfig> config = loadModelConfig(demo.string());
  ASSERT_TRUE(config.isOk()) << config.message();
  EXPECT_EQ(config->numKvHeads, 4);
  EXPECT_EQ(config->headDim, 32);
  EXPECT_EQ(config->torchDtype, "bfloat16");
  EXPECT_EQ(config->eosTokenIds, (std::vector<int64_t>{1}));
  Result<Checkpoint> checkpoint = Checkpoint::open(demo.string());
  ASSERT_TRUE(checkpoint.isOk());
  EXPECT_EQ(checkpoint->find("model.embed_tokens.weight")->dtype, DType::BF16);
  // A bf16 slice read raw and widened agrees with readAsF32 of that slice.
  Result<std::vector<float>> row = checkpoint->readAsF32("model.embed_tokens.weight", 0, 5, 1);
  Result<std::vector<std::byte>> raw =
      checkpoint->readSliceRaw("model.embed_tokens.weight", 0, 5, 1);
  ASSERT_TRUE(row.isOk() && raw.isOk());
  ASSERT_EQ(row->size(), 256u);
  ASSERT_EQ(raw->size(), 512u);
  Result<std::vector<float>> all = checkpoint->readAsF32("model.embed_tokens.weight");
  for (size_t i = 0; i < 256; ++i)
    ASSERT_EQ((*row)[i], (*all)[5 * 256 + i]);

  Result<ModelConfig> tied = loadModelConfig(mha.string());
  ASSERT_TRUE(tied.isOk());
  EXPECT_TRUE(tied->tieWordEmbeddings);
  EXPECT_EQ(tied->rmsNormEps, 1e-6);
}

TEST(Fixtures, WrongKvHeadsGivesShapeError) {
  const fs::path gqa = fs::path(LLMIR_FIXTURES_DIR) / "tiny-llama-gqa";
  if (!fs::exists(gqa))
    GTEST_SKIP() << "fixture tiny-llama-gqa not in " << LLMIR_FIXTURES_DIR;
  std::ifstream in(gqa / "config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string original = "\"num_key_value_heads\": 2";
  ASSERT_NE(text.find(original), std::string::npos);
  text.replace(text.find(original), original.size(), "\"num_key_value_heads\": 8");
  Result<ModelConfig> config = parseModelConfig(text, (gqa / "config.json").string());
  ASSERT_TRUE(config.isOk()) << config.message();
  Result<Checkpoint> checkpoint = Checkpoint::open(gqa.string());
  ASSERT_TRUE(checkpoint.isOk());
  EXPECT_EQ(checkCheckpointShapes(*config, *checkpoint).message(),
            "model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape "
            "[32, 128], config.json implies [128, 128] (num_key_value_heads=8 x "
            "head_dim=16, hidden_size=128)");

  // An untied config for a tied checkpoint names the missing lm_head.
  const fs::path mha = fs::path(LLMIR_FIXTURES_DIR) / "tiny-llama-mha";
  Result<ModelConfig> tied = loadModelConfig(mha.string());
  Result<Checkpoint> tiedCheckpoint = Checkpoint::open(mha.string());
  ASSERT_TRUE(tied.isOk() && tiedCheckpoint.isOk());
  tied->tieWordEmbeddings = false;
  EXPECT_THAT(checkCheckpointShapes(*tied, *tiedCheckpoint).message(),
              HasSubstr("no tensor 'lm_head.weight'"));
}

} // namespace
} // namespace llmir::model
