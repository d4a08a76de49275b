#include "llmir/model/Tokenizer.h"

#include "TestFiles.h"

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace llmir::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const fs::path kDemo = fs::path(LLMIR_FIXTURES_DIR) / "demo-llama-4m";

class DemoTokenizer : public ::testing::Test {
protected:
  void SetUp() override {
    if (!fs::exists(kDemo / "tokenizer.json"))
      GTEST_SKIP() << "fixture " << kDemo << " not present";
    Result<Tokenizer> loaded = Tokenizer::load((kDemo / "tokenizer.json").string());
    ASSERT_TRUE(loaded.isOk()) << loaded.message();
    tokenizer_.emplace(std::move(loaded).value());
  }
  std::vector<int32_t> encode(std::string_view text) {
    Result<std::vector<int32_t>> ids = tokenizer_->encode(text);
    EXPECT_TRUE(ids.isOk()) << ids.message();
    return ids.isOk() ? *ids : std::vector<int32_t>{};
  }
  std::string decode(const std::vector<int32_t> &ids) {
    Result<std::string> text = tokenizer_->decode(ids);
    EXPECT_TRUE(text.isOk()) << text.message();
    return text.isOk() ? *text : "";
  }
  std::optional<Tokenizer> tokenizer_;
};

TEST_F(DemoTokenizer, MatchesReferencePromptIds) {
  std::ifstream in(kDemo / "reference.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const boost::json::value reference = boost::json::parse(text);
  const boost::json::array &cases = reference.at("cases").as_array();
  ASSERT_FALSE(cases.empty());
  for (const boost::json::value &item : cases) {
    const std::string prompt(item.at("prompt_text").as_string());
    std::vector<int32_t> expected;
    for (const boost::json::value &id : item.at("prompt_ids").as_array())
      expected.push_back(static_cast<int32_t>(id.as_int64()));
    EXPECT_EQ(encode(prompt), expected) << "prompt: " << prompt;
    EXPECT_EQ(decode(expected), prompt);
  }
}

TEST_F(DemoTokenizer, VocabularyAndSpecialTokens) {
  EXPECT_EQ(tokenizer_->vocabSize(), 2048);
  EXPECT_EQ(tokenizer_->bosId(), 0);
  EXPECT_EQ(tokenizer_->eosId(), 1);
  EXPECT_EQ(tokenizer_->tokenToId("</s>"), 1);
  EXPECT_EQ(tokenizer_->idToToken(9), "(");
  EXPECT_FALSE(tokenizer_->idToToken(2048).has_value());
  EXPECT_TRUE(tokenizer_->isSpecial(0));
  EXPECT_FALSE(tokenizer_->isSpecial(9));
  // Special tokens are matched verbatim, even inside words.
  const std::vector<int32_t> ids = encode("a</s>b<s>");
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids[3], 0);
  EXPECT_EQ(decode(ids), "a</s>b<s>");
  EXPECT_EQ(*tokenizer_->decode(ids, /*skipSpecialTokens=*/true), "ab");
}

TEST_F(DemoTokenizer, RoundTripsText) {
  for (const std::string &text : std::vector<std::string>{
           "hello world", "def f(x):\n    return x + 1\n", "héllo wörld — 日本語 🙂",
        "  leading and   inner   spaces  ", "\n\n\ttabs\t\n", "", " ", "a\r\nb",
        "numbers 1234567890 and symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
        std::string("nul\0byte", 8)}) {
    const std::vector<int32_t> ids = encode(text);
    EXPECT_EQ(decode(ids), text) << "text: " << text;
  }
  EXPECT_TRUE(encode("").empty());
}

TEST_F(DemoTokenizer, RejectsBadInput) {
  EXPECT_THAT(tokenizer_->encode("bad \xff byte").message(),
              HasSubstr("not valid UTF-8 at byte 4"));
  const std::vector<int32_t> ids = {5, 2048};
  EXPECT_THAT(tokenizer_->decode(ids).message(), HasSubstr("token id 2048"));
  const std::vector<int32_t> negative = {-1};
  EXPECT_FALSE(tokenizer_->decode(negative).isOk());
}

/// True when `text` is valid UTF-8 (checked independently of the library).
bool isValidUtf8(const std::string &text) {
  for (size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    const size_t length = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3
                                             : (lead >> 3) == 30            ? 4
                                                                            : 0;
    if (length == 0 || i + length > text.size())
      return false;
    for (size_t k = 1; k < length; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80)
        return false;
    i += length;
  }
  return true;
}

TEST_F(DemoTokenizer, StreamDecoderMatchesDecode) {
  const std::string text = "héllo wörld — 日本語 🙂 def main():\n    pass";
  const std::vector<int32_t> ids = encode(text);
  // Multi-byte characters must be split over several byte tokens here, or
  // the test would not exercise holding back partial characters.
  size_t partialTokens = 0;
  for (int32_t id : ids)
    partialTokens += !isValidUtf8(*tokenizer_->tokenBytes(id));
  EXPECT_GT(partialTokens, 0u);

  StreamDecoder stream(*tokenizer_);
  std::string streamed;
  for (int32_t id : ids) {
    Result<std::string> piece = stream.push(id);
    ASSERT_TRUE(piece.isOk()) << piece.message();
    EXPECT_TRUE(isValidUtf8(*piece)) << "id " << id;
    streamed += *piece;
  }
  streamed += stream.flush();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(streamed, decode(ids));
  EXPECT_FALSE(stream.push(99999).isOk());
}

TEST_F(DemoTokenizer, StreamDecoderReplacesBrokenBytesLikeDecode) {
  // "日" is E6 97 A5; feed only its first two bytes, then "a". In GPT-2's
  // byte-level alphabet byte E6 is spelled U+00E6 and byte 97 is U+0139.
  std::vector<int32_t> ids;
  for (const char *spelling : {"\u00e6", "\u0139", "a"}) {
    std::optional<int32_t> id = tokenizer_->tokenToId(spelling);
    ASSERT_TRUE(id.has_value()) << "no token " << spelling;
    ids.push_back(*id);
  }
  StreamDecoder stream(*tokenizer_);
  std::string streamed;
  for (int32_t id : ids)
    streamed += *stream.push(id);
  streamed += stream.flush();
  EXPECT_EQ(streamed, decode(ids));
  EXPECT_EQ(streamed, "\xEF\xBF\xBD" "a");
}

/// A hand-written tokenizer.json exercising features the fixture lacks.
std::string tinyTokenizerJson(const std::string &preTokenizer, const std::string &merges,
                              const std::string &extraModel = "") {
  return R"({"version":"1.0","normalizer":null,"decoder":{"type":"ByteLevel"},)"
         R"("added_tokens":[{"id":9,"content":"<|end|>","special":true,"lstrip":true,)"
         R"("rstrip":false,"single_word":false,"normalized":false}],)"
         R"("pre_tokenizer":)" +
         preTokenizer +
         R"(,"model":{"type":"BPE","vocab":{"a":0,"b":1,"c":2,"Ġ":3,"ab":4,"abc":5,)"
         R"("Ġa":6,"1":7,"2":8},"merges":)" +
         merges + extraModel + "}}";
}

TEST(TinyTokenizer, SplitRegexMergesAndAddedTokens) {
  const std::string preTokenizer =
      R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\p{N}"},)"
      R"("behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,)"
      R"("use_regex":false}]})";
  for (const char *merges :
       {R"(["a b","ab c","Ġ a"])", R"([["a","b"],["ab","c"],["Ġ","a"]])"}) {
    Result<Tokenizer> tokenizer = Tokenizer::parse(tinyTokenizerJson(preTokenizer, merges), "t.json");
    ASSERT_TRUE(tokenizer.isOk()) << tokenizer.message();
    // Digits are isolated by the Split regex, so "12" never merges; the
    // lstrip added token swallows the space before it.
    EXPECT_EQ(*tokenizer->encode("abc a12 <|end|>ab"),
              (std::vector<int32_t>{5, 6, 7, 8, 9, 4}));
    const std::vector<int32_t> ids = {5, 6, 9};
    EXPECT_EQ(*tokenizer->decode(ids), "abc a<|end|>");
  }
}

TEST(TinyTokenizer, RejectsUnsupportedConfigurations) {
  const std::string byteLevel = R"({"type":"ByteLevel","add_prefix_space":false})";
  EXPECT_THAT(Tokenizer::parse(tinyTokenizerJson(R"({"type":"Metaspace"})", "[]"), "t.json")
                  .message(),
              HasSubstr("t.json: pre_tokenizer: type 'Metaspace' is not supported"));
  EXPECT_THAT(Tokenizer::parse(tinyTokenizerJson(byteLevel, R"(["a x"])"), "t.json").message(),
              HasSubstr("not in the vocab"));
  EXPECT_THAT(Tokenizer::parse(tinyTokenizerJson(byteLevel, R"(["abc"])"), "t.json").message(),
              HasSubstr("two tokens separated by one space"));
  EXPECT_THAT(Tokenizer::parse(tinyTokenizerJson(
                                   R"({"type":"Split","pattern":{"Regex":"("},"behavior":"Isolated"})",
                                   "[]"),
                               "t.json")
                  .message(),
              HasSubstr("cannot compile regex"));
  std::string normalized = tinyTokenizerJson(byteLevel, "[]");
  normalized.replace(normalized.find("\"normalizer\":null"), 17,
                     R"("normalizer":{"type":"NFC"})");
  EXPECT_THAT(Tokenizer::parse(normalized, "t.json").message(),
              HasSubstr("normalizer \"NFC\" is not supported"));
  EXPECT_THAT(Tokenizer::parse("{", "t.json").message(), HasSubstr("invalid JSON"));
  EXPECT_THAT(Tokenizer::load("/nonexistent/tokenizer.json").message(), HasSubstr("cannot open"));
}

TEST(TinyTokenizer, IgnoreMergesAndByteFallback) {
  const std::string byteLevel = R"({"type":"ByteLevel","add_prefix_space":true})";
  // With ignore_merges a whole word in the vocab wins over the merge order.
  Result<Tokenizer> tokenizer = Tokenizer::parse(
      tinyTokenizerJson(byteLevel, R"(["a b"])", R"(,"ignore_merges":true)"), "t.json");
  ASSERT_TRUE(tokenizer.isOk()) << tokenizer.message();
  // add_prefix_space turns "abc" into "Ġabc": no merge for Ġ+a... "Ġa" not merged (no rule).
  EXPECT_EQ(*tokenizer->encode("abc"), (std::vector<int32_t>{3, 4, 2}));
  EXPECT_EQ(*tokenizer->encode(" a"), (std::vector<int32_t>{6})); // whole word "Ġa"
  // Characters outside the vocab are dropped (no unk, no byte fallback).
  EXPECT_EQ(*tokenizer->encode(" z"), (std::vector<int32_t>{3}));
}

} // namespace
} // namespace llmir::model
