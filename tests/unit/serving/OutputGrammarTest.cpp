// Structured output grammars: what they accept byte by byte, and the token
// masks they give on the demo tokenizer.
#include "DemoModel.h"

#include "llmir/serving/OutputGrammar.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace llmir::serving {
namespace {

bool accepts(const std::shared_ptr<const OutputGrammar> &g, std::string_view text, bool complete = true) {
  GrammarMatcher m(g);
  if (!m.advance(text))
    return false;
  return !complete || m.complete();
}

std::shared_ptr<const OutputGrammar> schema(const char *text) {
  auto g = OutputGrammar::jsonSchema(boost::json::parse(text));
  EXPECT_TRUE(g.isOk()) << g.message();
  return g.isOk() ? *g : nullptr;
}

TEST(OutputGrammar, JsonObjectAcceptsJsonObjectsOnly) {
  auto g = OutputGrammar::jsonObject();
  for (const char *ok : {"{}", "{\"a\":1}", "{\"a\":[1,-2.5e3,true,null,\"x\\n\\u00e9\"],\"b\":{\"c\":{}}}",
                         "{\"k\":\"caf\xc3\xa9\"}"})
    EXPECT_TRUE(accepts(g, ok)) << ok;
  for (const char *bad : {"[]", "{\"a\"}", "{a:1}", "{\"a\":01}", "{\"a\":1,}", "{\"a\":tru}", "\"x\""})
    EXPECT_FALSE(accepts(g, bad)) << bad;
  EXPECT_TRUE(accepts(g, "{\"a\":[1,", false)) << "a viable prefix";
}

TEST(OutputGrammar, SchemaFixesShapeAndBounds) {
  auto g = schema(R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 3},
      "age": {"type": "integer"},
      "ok": {"type": "boolean"},
      "color": {"enum": ["red", "green"]},
      "tags": {"type": "array", "items": {"type": "number"}, "maxItems": 2}},
      "required": ["name", "age"]})");
  EXPECT_TRUE(accepts(g, R"({"name":"Bob","age":-42,"ok":true,"color":"green","tags":[1.5,2]})"));
  EXPECT_FALSE(accepts(g, R"({"name":"Bobby","age":1,"ok":true,"color":"red","tags":[]})")) << "maxLength";
  EXPECT_FALSE(accepts(g, R"({"age":1})")) << "properties in order, all written";
  EXPECT_FALSE(accepts(g, R"({"name":"B","age":1.5,"ok":true,"color":"red","tags":[]})")) << "integer";
  EXPECT_FALSE(accepts(g, R"({"name":"B","age":1,"ok":true,"color":"blue","tags":[]})")) << "enum";
  EXPECT_FALSE(accepts(g, R"({"name":"B","age":1,"ok":true,"color":"red","tags":[1,2,3]})")) << "maxItems";
  EXPECT_FALSE(OutputGrammar::jsonSchema(boost::json::parse(R"({"anyOf": []})")).isOk());
  EXPECT_FALSE(OutputGrammar::jsonSchema(boost::json::parse(R"({"type": "string", "pattern": "x"})")).isOk());

  auto number = schema(R"({"type": "number"})");
  GrammarMatcher m(number);
  ASSERT_TRUE(m.advance("12"));
  EXPECT_TRUE(m.complete()) << "a number may end here";
  EXPECT_FALSE(m.finished()) << "or go on";
}

TEST(OutputGrammar, ChoiceAndTokenMasks) {
  auto g = OutputGrammar::choice({"yes", "no", "maybe"});
  ASSERT_TRUE(g.isOk());
  EXPECT_TRUE(accepts(*g, "maybe"));
  EXPECT_FALSE(accepts(*g, "ye"));
  EXPECT_FALSE(accepts(*g, "yess", false));

  const auto *demo = testing::DemoModel::get();
  ASSERT_TRUE(demo);
  const int32_t vocab = demo->tokenizer.vocabSize();
  const int32_t eos = *demo->tokenizer.eosId();
  GrammarMatcher m(*g);
  std::vector<int32_t> first = m.allowedTokens(demo->tokenizer, vocab, {eos});
  ASSERT_FALSE(first.empty());
  for (int32_t id : first) {
    auto bytes = demo->tokenizer.tokenBytes(id);
    ASSERT_TRUE(bytes.isOk());
    EXPECT_TRUE(std::string("yes").starts_with(*bytes) || std::string("no").starts_with(*bytes) ||
                std::string("maybe").starts_with(*bytes))
        << *bytes;
  }
  EXPECT_EQ(std::count(first.begin(), first.end(), eos), 0) << "not complete yet";
  ASSERT_TRUE(m.advance("no"));
  EXPECT_EQ(m.allowedTokens(demo->tokenizer, vocab, {eos}), std::vector<int32_t>{eos});
}

TEST(OutputGrammar, ForcedToolCallsInEachFormat) {
  const auto tools = boost::json::parse(R"([{"type": "function", "function": {"name": "add",
      "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}])")
                         .as_array();
  auto hermes = OutputGrammar::toolCall(ToolCallFormat::Hermes, tools);
  ASSERT_TRUE(hermes.isOk()) << hermes.message();
  GrammarMatcher m(*hermes);
  ASSERT_TRUE(m.advance("<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":-2}}\n</tool_call>"));
  EXPECT_TRUE(m.finished());
  EXPECT_FALSE(accepts(*hermes, "<tool_call>\n{\"name\":\"sub\"", false));
  EXPECT_FALSE(accepts(*hermes, "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":\"x\"", false));
  auto llama = OutputGrammar::toolCall(ToolCallFormat::Llama3Json, tools);
  ASSERT_TRUE(llama.isOk());
  EXPECT_TRUE(accepts(*llama, "{\"name\":\"add\",\"parameters\":{\"a\":1,\"b\":2}}"));
  auto mistral = OutputGrammar::toolCall(ToolCallFormat::Mistral, tools);
  ASSERT_TRUE(mistral.isOk());
  EXPECT_TRUE(accepts(*mistral, "[TOOL_CALLS][{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}]"));
  // Parsed back by the matching parser.
  ParsedOutput out = parseToolCalls(ToolCallFormat::Mistral,
                                    "[TOOL_CALLS][{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}]", 1);
  ASSERT_EQ(out.toolCalls.size(), 1u);
  EXPECT_EQ(out.toolCalls[0].name, "add");
}

} // namespace
} // namespace llmir::serving
