// The JSON the server sends: errors, whole responses, stream chunks and the
// usage chunk, with the field names and types of OpenAI's API reference
// (and of the openai npm client's types); plus chat prompts and tool_choice.
#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/model/Tokenizer.h"
#include "llmir/serving/OutputGrammar.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <string>

namespace llmir::openai {
namespace {

namespace json = boost::json;

const model::Tokenizer &demoTokenizer() {
  static const model::Tokenizer *tokenizer = [] {
    auto loaded =
        model::Tokenizer::load(std::string(LLMIR_SOURCE_DIR) + "/models/demo-llama-4m/tokenizer.json");
    if (!loaded) {
      ADD_FAILURE() << loaded.message();
      std::abort();
    }
    return new model::Tokenizer(std::move(*loaded));
  }();
  return *tokenizer;
}

std::vector<int32_t> encode(std::string_view text) {
  auto ids = demoTokenizer().encode(text);
  EXPECT_TRUE(ids.isOk());
  return ids ? *ids : std::vector<int32_t>{};
}

std::string decode(int32_t id) {
  auto text = demoTokenizer().decode(std::span<const int32_t>(&id, 1));
  EXPECT_TRUE(text.isOk());
  return text ? *text : std::string();
}

ApiRequest request(Endpoint endpoint, const std::string &body) {
  auto parsed = parseRequest(endpoint, body);
  if (auto *error = std::get_if<ApiError>(&parsed)) {
    ADD_FAILURE() << error->message;
    return {};
  }
  return std::get<ApiRequest>(std::move(parsed));
}

/// A response context over the demo tokenizer for `req` and its prompts.
ResponseContext contextFor(const ApiRequest &req, std::vector<std::string> prompts) {
  ResponseContext ctx;
  ctx.id = req.endpoint == Endpoint::Chat ? "chatcmpl-abc" : "cmpl-abc";
  ctx.created = 1700000000;
  ctx.model = "demo";
  ctx.tokenizer = &demoTokenizer();
  ctx.request = &req;
  for (std::string &text : prompts)
    ctx.prompts.push_back({encode(text), std::move(text)});
  return ctx;
}

json::object parseObject(const std::string &text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  EXPECT_FALSE(ec) << text;
  EXPECT_TRUE(v.is_object()) << text;
  return v.is_object() ? v.get_object() : json::object{};
}

/// The envelope every response and chunk carries.
void expectEnvelope(const json::object &out, const char *object, const char *id) {
  EXPECT_EQ(out.at("id"), id);
  EXPECT_EQ(out.at("object"), object);
  EXPECT_TRUE(out.at("created").is_int64());
  EXPECT_EQ(out.at("created"), 1700000000);
  EXPECT_EQ(out.at("model"), "demo");
  EXPECT_TRUE(out.at("choices").is_array());
}

void expectUsage(const json::value &usage, int64_t prompt, int64_t completion) {
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage.at("prompt_tokens"), prompt);
  EXPECT_EQ(usage.at("completion_tokens"), completion);
  EXPECT_EQ(usage.at("total_tokens"), prompt + completion);
}

std::string str(const json::value &v) {
  EXPECT_TRUE(v.is_string()) << v;
  return v.is_string() ? std::string(v.get_string()) : std::string();
}

std::vector<int> bytesOf(const json::value &bytes) {
  std::vector<int> out;
  for (const json::value &b : bytes.as_array())
    out.push_back(static_cast<int>(b.to_number<int64_t>()));
  return out;
}

std::vector<int> utf8Bytes(const std::string &text) {
  std::vector<int> out;
  for (unsigned char c : text)
    out.push_back(c);
  return out;
}

// --- errors ------------------------------------------------------------------

TEST(ResponseJson, ErrorShape) {
  json::object out = parseObject(errorJson(
      {400, "'n' must be a number", "invalid_request_error", "n", ""}));
  ASSERT_EQ(out.size(), 1u);
  const json::object &error = out.at("error").as_object();
  EXPECT_EQ(error.size(), 4u);
  EXPECT_EQ(error.at("message"), "'n' must be a number");
  EXPECT_EQ(error.at("type"), "invalid_request_error");
  EXPECT_EQ(error.at("param"), "n");
  EXPECT_TRUE(error.at("code").is_null());

  json::object auth = parseObject(
      errorJson({401, "Incorrect API key provided.", "invalid_request_error", "", "invalid_api_key"}));
  EXPECT_TRUE(auth.at("error").at("param").is_null());
  EXPECT_EQ(auth.at("error").at("code"), "invalid_api_key");
}

TEST(ResponseJson, ErrorMessagesAreEscaped) {
  json::object out = parseObject(errorJson({400, "got \"\n\\\"", "invalid_request_error", "", ""}));
  EXPECT_EQ(out.at("error").at("message"), "got \"\n\\\"");
}

// --- completions ------------------------------------------------------------------

TEST(ResponseJson, CompletionResponse) {
  ApiRequest req = request(Endpoint::Completions, R"({"prompt": ["ab", "cd"], "n": 2})");
  ResponseContext ctx = contextFor(req, {"ab", "cd"});
  std::vector<ChoiceResult> choices(4);
  for (size_t i = 0; i < 4; ++i) {
    choices[i].text = "out" + std::to_string(i);
    choices[i].tokenIds = {5, 6, 7};
    choices[i].finishReason = i == 3 ? "length" : "stop";
    choices[i].prompt = i / 2;
  }
  json::object out = parseObject(responseJson(ctx, choices));
  expectEnvelope(out, "text_completion", "cmpl-abc");
  const json::array &list = out.at("choices").as_array();
  ASSERT_EQ(list.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const json::object &choice = list[i].as_object();
    EXPECT_EQ(choice.at("index"), i);
    EXPECT_EQ(str(choice.at("text")), "out" + std::to_string(i));
    EXPECT_TRUE(choice.at("logprobs").is_null());
    EXPECT_FALSE(choice.contains("token_ids"));
    EXPECT_FALSE(choice.contains("message"));
  }
  EXPECT_EQ(list[0].at("finish_reason"), "stop");
  EXPECT_EQ(list[3].at("finish_reason"), "length");
  expectUsage(out.at("usage"), ctx.promptTokens(), 12);
  EXPECT_EQ(ctx.promptTokens(),
            static_cast<int64_t>(encode("ab").size() + encode("cd").size()));
}

TEST(ResponseJson, CompletionLogprobs) {
  ApiRequest req = request(Endpoint::Completions, R"({"prompt": "x", "logprobs": 1})");
  ResponseContext ctx = contextFor(req, {"x"});
  const std::vector<int32_t> ids = encode(" hello world");
  ASSERT_GE(ids.size(), 2u);
  ChoiceResult c;
  c.tokenIds = ids;
  for (size_t i = 0; i < ids.size(); ++i) {
    c.text += decode(ids[i]);
    c.logprobs.push_back(-0.5f * static_cast<float>(i + 1));
    c.topLogprobs.push_back({{ids[i], -0.25f}});
  }
  c.finishReason = "length";
  json::object out = parseObject(responseJson(ctx, {c}));
  const json::object &lp = out.at("choices").at(0).at("logprobs").as_object();
  ASSERT_EQ(lp.at("tokens").as_array().size(), ids.size());
  size_t offset = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(str(lp.at("tokens").at(i)), decode(ids[i]));
    EXPECT_FLOAT_EQ(lp.at("token_logprobs").at(i).to_number<float>(), -0.5f * (i + 1));
    const json::object &top = lp.at("top_logprobs").at(i).as_object();
    ASSERT_EQ(top.size(), 1u);
    EXPECT_FLOAT_EQ(top.at(decode(ids[i])).to_number<float>(), -0.25f);
    EXPECT_EQ(lp.at("text_offset").at(i), offset);
    offset += decode(ids[i]).size();
  }
}

TEST(ResponseJson, CompletionEchoPutsThePromptFirst) {
  ApiRequest req = request(Endpoint::Completions,
                           R"({"prompt": "one two", "echo": true, "logprobs": 1, "max_tokens": 1})");
  ResponseContext ctx = contextFor(req, {"one two"});
  const std::vector<int32_t> &promptIds = ctx.prompts[0].ids;
  ASSERT_GE(promptIds.size(), 2u);
  ChoiceResult c;
  c.text = decode(9);
  c.tokenIds = {9};
  c.logprobs = {-1.0f};
  c.topLogprobs = {{{9, -1.0f}}};
  for (size_t i = 1; i < promptIds.size(); ++i) {
    c.promptLogprobs.push_back(-2.0f);
    c.promptTopLogprobs.push_back({{3, -0.1f}});
  }
  c.finishReason = "length";
  json::object out = parseObject(responseJson(ctx, {c}));
  const json::object &choice = out.at("choices").at(0).as_object();
  EXPECT_EQ(str(choice.at("text")), "one two" + decode(9));
  const json::object &lp = choice.at("logprobs").as_object();
  const size_t total = promptIds.size() + 1;
  ASSERT_EQ(lp.at("tokens").as_array().size(), total);
  ASSERT_EQ(lp.at("token_logprobs").as_array().size(), total);
  ASSERT_EQ(lp.at("top_logprobs").as_array().size(), total);
  ASSERT_EQ(lp.at("text_offset").as_array().size(), total);
  // The first prompt token has no logprob.
  EXPECT_TRUE(lp.at("token_logprobs").at(0).is_null());
  EXPECT_TRUE(lp.at("top_logprobs").at(0).is_null());
  EXPECT_EQ(lp.at("text_offset").at(0), 0);
  // The others: their alternatives plus the prompt token itself (vLLM).
  const json::object &second = lp.at("top_logprobs").at(1).as_object();
  EXPECT_FLOAT_EQ(second.at(decode(3)).to_number<float>(), -0.1f);
  EXPECT_FLOAT_EQ(second.at(decode(promptIds[1])).to_number<float>(), -2.0f);
  EXPECT_FLOAT_EQ(lp.at("token_logprobs").at(total - 1).to_number<float>(), -1.0f);
  EXPECT_EQ(lp.at("text_offset").at(total - 1), std::string("one two").size());
  // Usage counts the prompt once.
  expectUsage(out.at("usage"), static_cast<int64_t>(promptIds.size()), 1);
}

TEST(ResponseJson, ReturnTokenIds) {
  ApiRequest req = request(Endpoint::Completions, R"({"prompt": "ab", "return_token_ids": true})");
  ResponseContext ctx = contextFor(req, {"ab"});
  ChoiceResult c;
  c.text = "x";
  c.tokenIds = {4, 5};
  c.finishReason = "stop";
  json::object choice = parseObject(responseJson(ctx, {c})).at("choices").at(0).as_object();
  EXPECT_EQ(choice.at("token_ids"), (json::array{4, 5}));
  json::array promptIds;
  for (int32_t id : ctx.prompts[0].ids)
    promptIds.emplace_back(id);
  EXPECT_EQ(choice.at("prompt_token_ids"), promptIds);
}

// --- chat --------------------------------------------------------------------------

TEST(ResponseJson, ChatResponse) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}]})");
  ResponseContext ctx = contextFor(req, {"<|user|>\nhi\n<|assistant|>\n"});
  ChoiceResult c;
  c.text = "hello";
  c.tokenIds = {7, 8};
  c.finishReason = "stop";
  json::object out = parseObject(responseJson(ctx, {c}));
  expectEnvelope(out, "chat.completion", "chatcmpl-abc");
  const json::object &choice = out.at("choices").at(0).as_object();
  EXPECT_EQ(choice.at("index"), 0);
  EXPECT_EQ(choice.at("finish_reason"), "stop");
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_FALSE(choice.contains("text"));
  const json::object &message = choice.at("message").as_object();
  EXPECT_EQ(message.at("role"), "assistant");
  EXPECT_EQ(message.at("content"), "hello");
  EXPECT_FALSE(message.contains("tool_calls"));
  expectUsage(out.at("usage"), static_cast<int64_t>(ctx.prompts[0].ids.size()), 2);
}

TEST(ResponseJson, ChatLogprobs) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}],
                                              "logprobs": true, "top_logprobs": 2})");
  ResponseContext ctx = contextFor(req, {"p"});
  const std::vector<int32_t> ids = encode("hi there");
  ChoiceResult c;
  c.tokenIds = ids;
  for (size_t i = 0; i < ids.size(); ++i) {
    c.text += decode(ids[i]);
    c.logprobs.push_back(-0.1f);
    c.topLogprobs.push_back({{ids[i], -0.1f}, {2, -3.0f}});
  }
  c.finishReason = "stop";
  json::object choice = parseObject(responseJson(ctx, {c})).at("choices").at(0).as_object();
  const json::array &content = choice.at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const json::object &entry = content[i].as_object();
    EXPECT_EQ(str(entry.at("token")), decode(ids[i]));
    EXPECT_FLOAT_EQ(entry.at("logprob").to_number<float>(), -0.1f);
    EXPECT_EQ(bytesOf(entry.at("bytes")), utf8Bytes(decode(ids[i])));
    const json::array &tops = entry.at("top_logprobs").as_array();
    ASSERT_EQ(tops.size(), 2u);
    EXPECT_EQ(str(tops[1].at("token")), decode(2));
    EXPECT_FLOAT_EQ(tops[1].at("logprob").to_number<float>(), -3.0f);
    EXPECT_EQ(bytesOf(tops[1].at("bytes")), utf8Bytes(decode(2)));
  }
}

TEST(ResponseJson, ChatLogprobBytesAreTheTokensOwnBytes) {
  // "bytes" lets a client join the tokens of one character; a token that is
  // part of a UTF-8 sequence gives its raw bytes, not U+FFFD's.
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}],
                                              "logprobs": true, "top_logprobs": 1})");
  ResponseContext ctx = contextFor(req, {"p"});
  // Byte-level BPE: "Ã" spells the byte 0xC3, "¤" 0xA4 ("ä" is C3 A4).
  const auto lead = demoTokenizer().tokenToId("\xC3\x83");
  const auto trail = demoTokenizer().tokenToId("\xC2\xA4");
  ASSERT_TRUE(lead && trail);
  ChoiceResult c;
  c.text = "\xC3\xA4";
  c.tokenIds = {*lead, *trail};
  c.logprobs = {-0.1f, -0.2f};
  c.topLogprobs = {{{*lead, -0.1f}}, {{*trail, -0.2f}}};
  c.finishReason = "stop";
  json::object choice = parseObject(responseJson(ctx, {c})).at("choices").at(0).as_object();
  const json::array &content = choice.at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(bytesOf(content[0].at("bytes")), (std::vector<int>{0xC3}));
  EXPECT_EQ(bytesOf(content[1].at("bytes")), (std::vector<int>{0xA4}));
  EXPECT_EQ(bytesOf(content[0].at("top_logprobs").at(0).at("bytes")), (std::vector<int>{0xC3}));
  // Joined, they are the character.
  std::string joined;
  for (const json::value &entry : content)
    for (int b : bytesOf(entry.at("bytes")))
      joined.push_back(static_cast<char>(b));
  EXPECT_EQ(joined, "\xC3\xA4");
}

TEST(ResponseJson, ChatToolCalls) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "w?"}],
      "tools": [{"type": "function", "function": {"name": "get_weather"}}]})");
  ResponseContext ctx = contextFor(req, {"p"});
  ctx.toolCalls = serving::ToolCallFormat::Hermes;
  ChoiceResult call;
  call.text = R"(<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>)";
  call.tokenIds = {1};
  call.finishReason = "stop";
  ChoiceResult text;
  text.text = "no call";
  text.tokenIds = {1};
  text.finishReason = "stop";
  ChoiceResult cut = call;
  cut.finishReason = "length";
  json::array list = parseObject(responseJson(ctx, {call, text, cut})).at("choices").as_array();

  const json::object &m0 = list[0].at("message").as_object();
  EXPECT_EQ(m0.at("role"), "assistant");
  EXPECT_TRUE(m0.at("content").is_null());
  const json::array &calls = m0.at("tool_calls").as_array();
  ASSERT_EQ(calls.size(), 1u);
  const json::object &first = calls[0].as_object();
  EXPECT_TRUE(first.at("id").as_string().starts_with("call_")) << first.at("id");
  EXPECT_EQ(first.at("type"), "function");
  EXPECT_EQ(first.at("function").at("name"), "get_weather");
  // arguments is a JSON string, as OpenAI sends it.
  ASSERT_TRUE(first.at("function").at("arguments").is_string());
  EXPECT_EQ(json::parse(first.at("function").at("arguments").as_string()),
            json::parse(R"({"city": "Oslo"})"));
  EXPECT_FALSE(first.contains("index")); // only streamed deltas carry it
  EXPECT_EQ(list[0].at("finish_reason"), "tool_calls");

  EXPECT_EQ(list[1].at("message").at("content"), "no call");
  EXPECT_FALSE(list[1].at("message").as_object().contains("tool_calls"));
  EXPECT_EQ(list[1].at("finish_reason"), "stop");
  // A call cut by the length limit keeps "length".
  EXPECT_EQ(list[2].at("finish_reason"), "length");
  // Ids are per choice, and the same as a stream would give.
  EXPECT_NE(calls[0].at("id"), list[2].at("message").at("tool_calls").at(0).at("id"));
  EXPECT_NE(toolCallIdSeed(ctx, 0), toolCallIdSeed(ctx, 1));
}

// --- streaming ------------------------------------------------------------------

serving::SequenceEvent tokenEvent(int32_t id, std::string text) {
  serving::SequenceEvent event;
  event.tokenId = id;
  event.text = std::move(text);
  return event;
}

/// A chunk of a choice that has (first: not yet) sent its first chunk.
std::optional<std::string> chunk(const ResponseContext &ctx, const serving::SequenceEvent &event,
                                 bool first, uint32_t index, size_t prompt,
                                 const std::vector<serving::ToolCall> &calls = {},
                                 size_t firstCall = 0) {
  StreamedChoice sent{!first, 0};
  auto out = chunkJson(ctx, event, sent, index, prompt, calls, firstCall);
  EXPECT_EQ(sent.sentFirst, !first || out.has_value());
  return out;
}

TEST(ResponseJson, ChatChunks) {
  ApiRequest req = request(Endpoint::Chat,
                           R"({"messages": [{"role": "user", "content": "hi"}], "stream": true})");
  ResponseContext ctx = contextFor(req, {"p"});

  auto first = chunk(ctx, tokenEvent(5, "Hel"), true, 0, 0);
  ASSERT_TRUE(first);
  json::object out = parseObject(*first);
  expectEnvelope(out, "chat.completion.chunk", "chatcmpl-abc");
  EXPECT_FALSE(out.contains("usage"));
  ASSERT_EQ(out.at("choices").as_array().size(), 1u);
  const json::object &choice = out.at("choices").at(0).as_object();
  EXPECT_EQ(choice.at("index"), 0);
  EXPECT_TRUE(choice.at("finish_reason").is_null());
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_EQ(choice.at("delta"), (json::object{{"role", "assistant"}, {"content", "Hel"}}));

  json::object next = parseObject(*chunk(ctx, tokenEvent(6, "lo"), false, 2, 0));
  EXPECT_EQ(next.at("choices").at(0).at("index"), 2);
  EXPECT_EQ(next.at("choices").at(0).at("delta"), (json::object{{"content", "lo"}}));

  serving::SequenceEvent last = tokenEvent(7, "");
  last.finish = serving::FinishReason::Length;
  json::object end = parseObject(*chunk(ctx, last, false, 0, 0));
  EXPECT_EQ(end.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_TRUE(end.at("choices").at(0).at("delta").as_object().empty());

  // A token whose text is held back (a partial character, a possible stop
  // string) sends nothing.
  EXPECT_FALSE(chunk(ctx, tokenEvent(8, ""), false, 0, 0));
  // But the first chunk always goes: it carries the role.
  json::object role = parseObject(*chunk(ctx, tokenEvent(8, ""), true, 0, 0));
  EXPECT_EQ(role.at("choices").at(0).at("delta"),
            (json::object{{"role", "assistant"}, {"content", ""}}));
}

TEST(ResponseJson, ChatChunkLogprobs) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}],
                                              "stream": true, "logprobs": true, "top_logprobs": 1})");
  ResponseContext ctx = contextFor(req, {"p"});
  serving::SequenceEvent event = tokenEvent(5, decode(5));
  event.logprob = -0.5f;
  event.topLogprobs = {{5, -0.5f}};
  json::object out = parseObject(*chunk(ctx, event, false, 0, 0));
  const json::array &content = out.at("choices").at(0).at("logprobs").at("content").as_array();
  ASSERT_EQ(content.size(), 1u);
  EXPECT_EQ(str(content[0].at("token")), decode(5));
  EXPECT_FLOAT_EQ(content[0].at("logprob").to_number<float>(), -0.5f);
  EXPECT_EQ(content[0].at("top_logprobs").as_array().size(), 1u);
  // A held-back token with a logprob is still sent (its logprob is news).
  serving::SequenceEvent held = event;
  held.text.clear();
  EXPECT_TRUE(chunk(ctx, held, false, 0, 0));
}

TEST(ResponseJson, ChatChunkToolCalls) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "w?"}],
      "stream": true, "tools": [{"type": "function", "function": {"name": "f"}}]})");
  ResponseContext ctx = contextFor(req, {"p"});
  ctx.toolCalls = serving::ToolCallFormat::Hermes;
  std::vector<serving::ToolCall> calls = {{"call_1", "f", "{\"a\":1}"}, {"call_2", "f", "{}"}};
  serving::SequenceEvent event = tokenEvent(5, "");
  json::object out = parseObject(*chunk(ctx, event, true, 0, 0, calls, 3));
  const json::object &delta = out.at("choices").at(0).at("delta").as_object();
  EXPECT_EQ(delta.at("role"), "assistant");
  EXPECT_FALSE(delta.contains("content")); // only calls so far
  const json::array &deltaCalls = delta.at("tool_calls").as_array();
  ASSERT_EQ(deltaCalls.size(), 2u);
  EXPECT_EQ(deltaCalls[0].at("index"), 3);
  EXPECT_EQ(deltaCalls[1].at("index"), 4);
  EXPECT_EQ(deltaCalls[0].at("id"), "call_1");
  EXPECT_EQ(deltaCalls[0].at("type"), "function");
  EXPECT_EQ(deltaCalls[0].at("function").at("name"), "f");
  EXPECT_EQ(deltaCalls[0].at("function").at("arguments"), "{\"a\":1}");

  // The finish after calls says tool_calls; with none, stop stays stop.
  serving::SequenceEvent finish;
  finish.finish = serving::FinishReason::Stop;
  json::object afterCalls = parseObject(*chunk(ctx, finish, false, 0, 0, {}, 2));
  EXPECT_EQ(afterCalls.at("choices").at(0).at("finish_reason"), "tool_calls");
  json::object noCalls = parseObject(*chunk(ctx, finish, false, 0, 0, {}, 0));
  EXPECT_EQ(noCalls.at("choices").at(0).at("finish_reason"), "stop");
}

TEST(ResponseJson, CompletionChunks) {
  ApiRequest req = request(Endpoint::Completions, R"({"prompt": "ab", "stream": true})");
  ResponseContext ctx = contextFor(req, {"ab"});
  json::object out = parseObject(*chunk(ctx, tokenEvent(5, "x"), true, 1, 0));
  expectEnvelope(out, "text_completion", "cmpl-abc");
  const json::object &choice = out.at("choices").at(0).as_object();
  EXPECT_EQ(choice.at("index"), 1);
  EXPECT_EQ(choice.at("text"), "x");
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_TRUE(choice.at("finish_reason").is_null());
  EXPECT_FALSE(choice.contains("delta"));

  serving::SequenceEvent stop;
  stop.finish = serving::FinishReason::Stop;
  json::object end = parseObject(*chunk(ctx, stop, false, 1, 0));
  EXPECT_EQ(end.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(end.at("choices").at(0).at("text"), "");
}

TEST(ResponseJson, CompletionChunkEchoAndLogprobs) {
  ApiRequest req = request(Endpoint::Completions,
                           R"({"prompt": ["ab", "cd"], "stream": true, "echo": true, "logprobs": 0})");
  ResponseContext ctx = contextFor(req, {"ab", "cd"});
  serving::SequenceEvent event = tokenEvent(5, decode(5));
  event.logprob = -1.0f;
  // The first chunk of prompt 1's choice echoes "cd".
  json::object first = parseObject(*chunk(ctx, event, true, 1, 1));
  const json::object &choice = first.at("choices").at(0).as_object();
  EXPECT_EQ(str(choice.at("text")), "cd" + decode(5));
  const json::object &lp = choice.at("logprobs").as_object();
  const size_t n = ctx.prompts[1].ids.size() + 1;
  EXPECT_EQ(lp.at("tokens").as_array().size(), n);
  EXPECT_TRUE(lp.at("token_logprobs").at(0).is_null());
  EXPECT_FLOAT_EQ(lp.at("token_logprobs").at(n - 1).to_number<float>(), -1.0f);
  // logprobs 0: no alternatives, an empty object per token.
  EXPECT_TRUE(lp.at("top_logprobs").at(n - 1).as_object().empty());
  // Later chunks do not echo.
  json::object later = parseObject(*chunk(ctx, event, false, 1, 1));
  EXPECT_EQ(str(later.at("choices").at(0).at("text")), decode(5));
  EXPECT_EQ(later.at("choices").at(0).at("logprobs").at("tokens").as_array().size(), 1u);
}

TEST(ResponseJson, StreamedTextOffsetsCountFromTheChoicesStart) {
  // As in a whole response: the offset of each token in the choice's text
  // (echoed prompt included), not 0 in every chunk.
  ApiRequest req = request(Endpoint::Completions,
                           R"({"prompt": "ab", "stream": true, "echo": true, "logprobs": 0})");
  ResponseContext ctx = contextFor(req, {"ab"});
  StreamedChoice sent;
  std::string streamed;
  std::vector<size_t> offsets;
  for (int32_t id : encode(" one two three")) {
    serving::SequenceEvent event = tokenEvent(id, decode(id));
    event.logprob = -1.0f;
    auto out = chunkJson(ctx, event, sent, 0, 0);
    ASSERT_TRUE(out);
    json::object choice = parseObject(*out).at("choices").at(0).as_object();
    const json::array &tokenOffsets = choice.at("logprobs").at("text_offset").as_array();
    offsets.push_back(static_cast<size_t>(tokenOffsets.back().to_number<int64_t>()));
    EXPECT_EQ(offsets.back(), streamed.size() + (streamed.empty() ? 2 : 0)) << "after the echo";
    streamed += str(choice.at("text"));
    EXPECT_EQ(sent.textSent, streamed.size());
  }
  EXPECT_TRUE(sent.sentFirst);
  ASSERT_GE(offsets.size(), 3u);
  EXPECT_EQ(streamed, "ab one two three");
  // A held-back token sends nothing and moves nothing.
  StreamedChoice before = sent;
  EXPECT_FALSE(chunkJson(ctx, tokenEvent(5, ""), sent, 0, 0));
  EXPECT_EQ(sent.textSent, before.textSent);
}

TEST(ResponseJson, ChunkTokenIds) {
  ApiRequest req = request(Endpoint::Completions,
                           R"({"prompt": "ab", "stream": true, "return_token_ids": true})");
  ResponseContext ctx = contextFor(req, {"ab"});
  json::object out = parseObject(*chunk(ctx, tokenEvent(5, "x"), false, 0, 0));
  EXPECT_EQ(out.at("choices").at(0).at("token_ids"), (json::array{5}));
  // Even a held-back token is sent, for its id.
  json::object held = parseObject(*chunk(ctx, tokenEvent(6, ""), false, 0, 0));
  EXPECT_EQ(held.at("choices").at(0).at("token_ids"), (json::array{6}));
  serving::SequenceEvent stop;
  stop.finish = serving::FinishReason::Stop;
  json::object end = parseObject(*chunk(ctx, stop, false, 0, 0));
  EXPECT_EQ(end.at("choices").at(0).at("token_ids"), json::array{});
}

TEST(ResponseJson, UsageChunk) {
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}],
      "stream": true, "stream_options": {"include_usage": true}})");
  ResponseContext ctx = contextFor(req, {"a prompt"});
  json::object out = parseObject(usageChunkJson(ctx, 9));
  expectEnvelope(out, "chat.completion.chunk", "chatcmpl-abc");
  EXPECT_TRUE(out.at("choices").as_array().empty());
  expectUsage(out.at("usage"), static_cast<int64_t>(ctx.prompts[0].ids.size()), 9);

  ApiRequest completionReq = request(Endpoint::Completions, R"({"prompt": "x", "stream": true})");
  ResponseContext completionCtx = contextFor(completionReq, {"x"});
  EXPECT_EQ(parseObject(usageChunkJson(completionCtx, 0)).at("object"), "text_completion");
}

// --- chat prompts ----------------------------------------------------------------

ChatInput chatInput(const std::string &body) {
  return request(Endpoint::Chat, body).chat;
}

TEST(ChatPrompt, DefaultTemplate) {
  EXPECT_EQ(applyDefaultChatTemplate({{"system", "s"}, {"user", "u"}}),
            "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n");
  ChatFormat format; // no chat_template
  auto prompt = chatPrompt(format, chatInput(R"({"messages": [{"role": "user", "content":
      [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})"));
  ASSERT_TRUE(std::holds_alternative<std::string>(prompt));
  EXPECT_EQ(std::get<std::string>(prompt), "<|user|>\na\nb\n<|assistant|>\n");
}

serving::ChatTemplate parseTemplate(std::string_view source) {
  auto parsed = serving::ChatTemplate::parse(source);
  if (!parsed) {
    ADD_FAILURE() << parsed.message();
    std::abort();
  }
  return std::move(*parsed);
}

TEST(ChatPrompt, ModelTemplateSeesMessagesFlagAndVariables) {
  ChatFormat format;
  format.chatTemplate = parseTemplate(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}{{ suffix | default('') }}");
  format.inputs.bosToken = "<s>";
  auto prompt = chatPrompt(format, chatInput(R"({"messages": [{"role": "user", "content": "hi"}],
      "chat_template_kwargs": {"suffix": "!"}})"));
  ASSERT_TRUE(std::holds_alternative<std::string>(prompt));
  EXPECT_EQ(std::get<std::string>(prompt), "<s>[user]hi[assistant]!");

  auto noFlag = chatPrompt(format, chatInput(R"({"messages": [{"role": "user", "content":
      [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "add_generation_prompt": false})"));
  // Parts joined for a template that does not loop over content.
  EXPECT_EQ(std::get<std::string>(noFlag), "<s>[user]a\nb");
}

TEST(ChatPrompt, TemplateThatLoopsOverPartsGetsThem) {
  ChatFormat format;
  format.chatTemplate = parseTemplate(
      "{% for m in messages %}{% for p in m.content %}<{{ p.text }}>{% endfor %}{% endfor %}");
  auto prompt = chatPrompt(format, chatInput(R"({"messages": [{"role": "user", "content":
      [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})"));
  EXPECT_EQ(std::get<std::string>(prompt), "<a><b>");
}

TEST(ChatPrompt, ToolUseTemplateForRequestsWithTools) {
  ChatFormat format;
  format.chatTemplate = parseTemplate("plain");
  format.toolUseTemplate = parseTemplate("tools:{{ tools | length }}");
  EXPECT_EQ(std::get<std::string>(chatPrompt(format, chatInput(
                R"({"messages": [{"role": "user", "content": "x"}]})"))),
            "plain");
  EXPECT_EQ(std::get<std::string>(chatPrompt(format, chatInput(
                R"({"messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}]})"))),
            "tools:1");
}

TEST(ChatPrompt, TemplateErrorIsA400OnMessages) {
  ChatFormat format;
  format.chatTemplate = parseTemplate(
      "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with "
      "user') }}{% endif %}ok");
  auto prompt = chatPrompt(format, chatInput(R"({"messages": [{"role": "tool", "content": "x"}]})"));
  ASSERT_TRUE(std::holds_alternative<ApiError>(prompt));
  const ApiError &error = std::get<ApiError>(prompt);
  EXPECT_EQ(error.status, 400);
  EXPECT_EQ(error.param, "messages");
  EXPECT_EQ(error.type, "invalid_request_error");
  EXPECT_EQ(error.message,
            "the model's chat template rejected the messages: Conversations must start with user");
}

// --- tool_choice ---------------------------------------------------------------

TEST(ToolChoice, AutoAndNoneLeaveTheOutputFree) {
  ChatFormat format;
  for (const char *choice : {"\"auto\"", "\"none\"", "null"}) {
    ApiRequest req = request(Endpoint::Chat, std::string(R"({"messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": )") + choice + "}");
    EXPECT_FALSE(applyToolChoice(format, req.chat, req.params));
    EXPECT_EQ(req.params.grammar, nullptr);
  }
}

TEST(ToolChoice, RequiredOrNamedConstrainsTheOutput) {
  ChatFormat format;
  format.toolCalls = serving::ToolCallFormat::Hermes;
  const std::string tools = R"("tools": [
      {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
        "properties": {"x": {"type": "integer"}}, "required": ["x"]}}},
      {"type": "function", "function": {"name": "g"}}])";
  ApiRequest named = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], )" +
                                                 tools + R"(, "tool_choice": {"type": "function", "function": {"name": "f"}}})");
  ASSERT_FALSE(applyToolChoice(format, named.chat, named.params));
  ASSERT_NE(named.params.grammar, nullptr);
  serving::GrammarMatcher matcher(named.params.grammar);
  EXPECT_TRUE(matcher.advance("<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>"));
  serving::GrammarMatcher other(named.params.grammar);
  EXPECT_FALSE(other.advance("<tool_call>\n{\"name\":\"g\""));

  ApiRequest required = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], )" +
                                                    tools + R"(, "tool_choice": "required"})");
  ASSERT_FALSE(applyToolChoice(format, required.chat, required.params));
  EXPECT_NE(required.params.grammar, nullptr);
}

TEST(ToolChoice, Errors) {
  ChatFormat noParser;
  ApiRequest req = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"})");
  auto error = applyToolChoice(noParser, req.chat, req.params);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->status, 400);
  EXPECT_EQ(error->param, "tool_choice");
  EXPECT_EQ(error->message, "forcing a tool call needs the server's --tool-call-parser");

  ChatFormat format;
  format.toolCalls = serving::ToolCallFormat::Hermes;
  ApiRequest noTools = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tool_choice": "required"})");
  error = applyToolChoice(format, noTools.chat, noTools.params);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "tool_choice");
  EXPECT_EQ(error->message, "'tool_choice' forces a call but 'tools' is empty");

  ApiRequest unknown = request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "h"}}})");
  error = applyToolChoice(format, unknown.chat, unknown.params);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "tool_choice");
  EXPECT_EQ(error->message, "no tool is named 'h'");
  EXPECT_EQ(unknown.params.grammar, nullptr);
}

} // namespace
} // namespace llmir::openai
