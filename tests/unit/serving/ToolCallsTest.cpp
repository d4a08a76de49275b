// Tool calls parsed out of model output, whole and streamed in pieces of
// every size (the stream must release the same content and calls).
#include "llmir/serving/ToolCalls.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace llmir::serving {
namespace {

/// Streams `text` in pieces of `size` bytes and joins what is released.
ParsedOutput streamed(ToolCallFormat format, std::string_view text, size_t size) {
  ToolCallStream stream(format, 7);
  std::string content;
  std::vector<ToolCall> calls;
  auto take = [&](ToolCallStream::Delta d) {
    content += d.content;
    for (auto &c : d.toolCalls)
      calls.push_back(std::move(c));
  };
  for (size_t i = 0; i < text.size(); i += size)
    take(stream.push(text.substr(i, size)));
  take(stream.finish());
  ParsedOutput out;
  out.toolCalls = std::move(calls);
  if (!content.empty() || out.toolCalls.empty())
    out.content = content;
  return out;
}

void expectSame(ToolCallFormat format, std::string_view text) {
  ParsedOutput whole = parseToolCalls(format, text, 7);
  for (size_t size : {1, 2, 3, 5, 8, 1000}) {
    SCOPED_TRACE("pieces of " + std::to_string(size));
    ParsedOutput s = streamed(format, text, size);
    ASSERT_EQ(s.toolCalls.size(), whole.toolCalls.size());
    for (size_t i = 0; i < s.toolCalls.size(); ++i) {
      EXPECT_EQ(s.toolCalls[i].name, whole.toolCalls[i].name);
      EXPECT_EQ(s.toolCalls[i].arguments, whole.toolCalls[i].arguments);
      EXPECT_EQ(s.toolCalls[i].id, whole.toolCalls[i].id);
    }
    auto trimmed = [](std::optional<std::string> c) {
      std::string s = c.value_or("");
      while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.pop_back();
      return s;
    };
    EXPECT_EQ(trimmed(s.content), trimmed(whole.content));
  }
}

TEST(ToolCalls, HermesBlocksBecomeCalls) {
  const std::string text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                           "{\"city\": \"Z\\u00fcrich\", \"days\": 2}}\n</tool_call>\n<tool_call>\n"
                           "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";
  ParsedOutput out = parseToolCalls(ToolCallFormat::Hermes, text, 1);
  ASSERT_EQ(out.toolCalls.size(), 2u);
  EXPECT_EQ(out.content.value_or("<none>"), "Let me check.\n");
  EXPECT_EQ(out.toolCalls[0].name, "get_weather");
  EXPECT_EQ(boost::json::parse(out.toolCalls[0].arguments),
            boost::json::parse("{\"city\": \"Zürich\", \"days\": 2}"));
  EXPECT_EQ(out.toolCalls[1].name, "add");
  EXPECT_TRUE(out.toolCalls[0].id.starts_with("call_"));
  EXPECT_NE(out.toolCalls[0].id, out.toolCalls[1].id);
  expectSame(ToolCallFormat::Hermes, text);

  // Only calls: no content.
  ParsedOutput only = parseToolCalls(ToolCallFormat::Hermes,
                                     "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 1);
  ASSERT_EQ(only.toolCalls.size(), 1u);
  EXPECT_FALSE(only.content);
  EXPECT_EQ(only.toolCalls[0].arguments, "{}");
}

TEST(ToolCalls, TextThatIsNotACallStaysContent) {
  for (std::string text : {"plain answer", "a < b and <tool_ but not a call",
                           "<tool_call>{not json}</tool_call> after",
                           "<tool_call>{\"name\": \"f\"", "ends with <tool_cal"}) {
    SCOPED_TRACE(text);
    ParsedOutput out = parseToolCalls(ToolCallFormat::Hermes, text, 1);
    EXPECT_TRUE(out.toolCalls.empty());
    EXPECT_EQ(out.content.value_or("<none>"), text);
    expectSame(ToolCallFormat::Hermes, text);
  }
}

TEST(ToolCalls, Llama3JsonAndMistral) {
  ParsedOutput llama = parseToolCalls(
      ToolCallFormat::Llama3Json,
      "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"a;b\"}}; "
      "{\"name\": \"add\", \"parameters\": {\"a\": 1}}",
      3);
  ASSERT_EQ(llama.toolCalls.size(), 2u);
  EXPECT_FALSE(llama.content);
  EXPECT_EQ(boost::json::parse(llama.toolCalls[0].arguments), boost::json::parse("{\"city\": \"a;b\"}"));
  EXPECT_EQ(llama.toolCalls[1].name, "add");
  expectSame(ToolCallFormat::Llama3Json, "{\"name\": \"f\", \"parameters\": {}}");
  EXPECT_EQ(parseToolCalls(ToolCallFormat::Llama3Json, "The answer is {x}.", 3).content.value_or(""),
            "The answer is {x}.");
  expectSame(ToolCallFormat::Llama3Json, "The answer is {x}.");

  ParsedOutput mistral = parseToolCalls(
      ToolCallFormat::Mistral, "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]", 5);
  ASSERT_EQ(mistral.toolCalls.size(), 1u);
  EXPECT_EQ(mistral.toolCalls[0].id.size(), 9u);
  EXPECT_EQ(mistral.toolCalls[0].name, "add");
  expectSame(ToolCallFormat::Mistral, "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {}}]");
  expectSame(ToolCallFormat::Mistral, "No call here.");

  EXPECT_TRUE(toolCallFormat("hermes").isOk());
  EXPECT_FALSE(toolCallFormat("pythonic").isOk());
}

} // namespace
} // namespace llmir::serving
