// Issue 14, finding 9 (and 7): model files that crashed or exhausted memory
// now give clear errors. Built from the embedded demo model, so it runs
// without ../shared.
#include "llmir/model/ModelConfig.h"
#include "llmir/model/Safetensors.h"
#include "llmir/model/Tokenizer.h"

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using namespace llmir;
using namespace llmir::model;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

const fs::path kDemo = fs::path(LLMIR_SOURCE_DIR) / "models" / "demo-llama-4m";

std::string readText(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

class BadFilesTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("llmir-bad-files-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string &name, const std::string &text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return dir_ / name;
  }
  // The demo tokenizer.json with one more added token.
  fs::path tokenizerWithAddedId(int64_t id) {
    boost::json::value v = boost::json::parse(readText(kDemo / "tokenizer.json"));
    v.as_object()["added_tokens"].as_array().push_back(
        boost::json::object{{"id", id}, {"content", "<|evil|>"}, {"special", true}});
    return write("tokenizer.json", boost::json::serialize(v));
  }
  fs::path dir_;
};

TEST_F(BadFilesTest, AnAddedTokenIdFarBeyondTheVocabularyIsAnError) {
  for (int64_t id : {int64_t(2147483647), int64_t(100000000), int64_t(5000000)}) {
    auto loaded = Tokenizer::load(tokenizerWithAddedId(id).string());
    ASSERT_FALSE(loaded.isOk()) << id;
    EXPECT_THAT(loaded.message(), HasSubstr("token id " + std::to_string(id)));
    EXPECT_THAT(loaded.message(), HasSubstr("beyond the tokens the file defines"));
  }
  // Right after the vocabulary is where added tokens go.
  auto demo = Tokenizer::load((kDemo / "tokenizer.json").string());
  ASSERT_TRUE(demo.isOk()) << demo.message();
  auto next = Tokenizer::load(tokenizerWithAddedId(demo->vocabSize()).string());
  ASSERT_TRUE(next.isOk()) << next.message();
  EXPECT_EQ(next->vocabSize(), demo->vocabSize() + 1);
}

TEST_F(BadFilesTest, AbsurdModelSizesAreRefusedBeforeAllocating) {
  boost::json::value config = boost::json::parse(readText(kDemo / "config.json"));
  for (const char *key : {"num_hidden_layers", "vocab_size", "hidden_size"}) {
    boost::json::value bad = config;
    bad.as_object()[key] = 1000000000;
    auto parsed = parseModelConfig(boost::json::serialize(bad), "config.json");
    ASSERT_FALSE(parsed.isOk()) << key;
    EXPECT_THAT(parsed.message(), HasSubstr(std::string("key '") + key + "' is 1000000000"));
    EXPECT_THAT(parsed.message(), HasSubstr("over the limit"));
  }
  boost::json::value infinite = config;
  infinite.as_object().erase("rms_norm_eps");
  std::string text;
  text = boost::json::serialize(infinite);
  text.insert(text.size() - 1, ",\"rms_norm_eps\":1e999");
  auto parsed = parseModelConfig(text, "config.json");
  ASSERT_FALSE(parsed.isOk());
  EXPECT_THAT(parsed.message(), HasSubstr("'rms_norm_eps' must be finite"));
}

TEST_F(BadFilesTest, AConfigThatIsADeviceOrTooLargeIsRefused) {
  fs::create_symlink("/dev/zero", dir_ / "config.json");
  auto zero = loadModelConfig(dir_.string());
  ASSERT_FALSE(zero.isOk());
  EXPECT_THAT(zero.message(), HasSubstr("not a regular file"));
  fs::remove(dir_ / "config.json");
  write("config.json", std::string(kMaxConfigFileBytes + 1, ' '));
  auto large = loadModelConfig(dir_.string());
  ASSERT_FALSE(large.isOk());
  EXPECT_THAT(large.message(), HasSubstr("larger than the limit"));
}

TEST_F(BadFilesTest, ASafetensorsHeaderLengthOffBySevenIsAnError) {
  std::string file = readText(kDemo / "model.safetensors");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = (length << 8) | static_cast<unsigned char>(file[i]);
  // The header padded with 7 spaces (as writers pad it for alignment) while
  // its length still says the old size: the data region then starts 7 bytes
  // early and every tensor would read shifted bytes.
  std::string shifted = file;
  shifted.insert(8 + length, std::string(7, ' '));
  auto bad = SafetensorsFile::open(write("model.safetensors", shifted).string());
  ASSERT_FALSE(bad.isOk());
  EXPECT_THAT(bad.message(), HasSubstr("the tensors cover"));
  auto good = SafetensorsFile::open((kDemo / "model.safetensors").string());
  EXPECT_TRUE(good.isOk()) << good.message();
}

// Finding 7: every distinct ~1 MB one-word prompt grew the BPE cache by
// 9.4 MB. Long words now bypass the cache; short ones are still cached.
TEST_F(BadFilesTest, LongWordsBypassTheBpeCache) {
  auto tokenizer = Tokenizer::load((kDemo / "tokenizer.json").string());
  ASSERT_TRUE(tokenizer.isOk()) << tokenizer.message();
  const size_t before = tokenizer->numCachedWords();
  for (char c = 'a'; c <= 'j'; ++c) {
    auto ids = tokenizer->encode(std::string(4096, c));
    ASSERT_TRUE(ids.isOk());
    EXPECT_FALSE(ids->empty());
  }
  EXPECT_EQ(tokenizer->numCachedWords(), before);
  ASSERT_TRUE(tokenizer->encode("def fibonacci").isOk());
  EXPECT_GT(tokenizer->numCachedWords(), before);
}

} // namespace
