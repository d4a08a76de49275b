// parseRequest / parseChatInput: every field the parser reads, and the 400s
// (message and param) that bad input gets.
#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/serving/OutputGrammar.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include <string>

namespace llmir::openai {
namespace {

namespace json = boost::json;

ApiRequest parsed(Endpoint endpoint, const std::string &body) {
  auto result = parseRequest(endpoint, body);
  if (auto *error = std::get_if<ApiError>(&result)) {
    ADD_FAILURE() << body << " was refused: " << error->message << " (" << error->param << ")";
    return {};
  }
  return std::move(std::get<ApiRequest>(result));
}

ApiRequest completion(const std::string &fields) {
  return parsed(Endpoint::Completions, R"({"prompt": "hi")" + (fields.empty() ? "" : ", " + fields) + "}");
}

ApiRequest chat(const std::string &fields) {
  return parsed(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "hi"}])" +
                                    (fields.empty() ? "" : ", " + fields) + "}");
}

ApiError refused(Endpoint endpoint, const std::string &body) {
  auto result = parseRequest(endpoint, body);
  if (!std::holds_alternative<ApiError>(result)) {
    ADD_FAILURE() << body << " was accepted";
    return {};
  }
  return std::get<ApiError>(result);
}

ApiError completionError(const std::string &fields) {
  return refused(Endpoint::Completions, R"({"prompt": "hi", )" + fields + "}");
}

ApiError chatError(const std::string &fields) {
  return refused(Endpoint::Chat,
                 R"({"messages": [{"role": "user", "content": "hi"}], )" + fields + "}");
}

/// A 400 invalid_request_error on `param` saying `message`.
void expectInvalid(const ApiError &error, const std::string &param, const std::string &message) {
  EXPECT_EQ(error.status, 400);
  EXPECT_EQ(error.type, "invalid_request_error");
  EXPECT_EQ(error.param, param);
  EXPECT_EQ(error.message, message);
  EXPECT_EQ(error.code, "");
}

// --- defaults -------------------------------------------------------------

TEST(RequestParsing, MinimalCompletionTakesTheDefaults) {
  ApiRequest r = completion("");
  EXPECT_EQ(r.endpoint, Endpoint::Completions);
  EXPECT_EQ(r.model, "");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, std::optional<std::string>("hi"));
  EXPECT_TRUE(r.prompts[0].ids.empty());
  EXPECT_FALSE(r.echo);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.includeUsage);
  EXPECT_FALSE(r.returnTokenIds);
  EXPECT_FALSE(r.maxTokensGiven);
  const serving::RequestParams &p = r.params;
  EXPECT_EQ(p.sampling.temperature, 1.0f);
  EXPECT_EQ(p.sampling.topP, 1.0f);
  EXPECT_EQ(p.sampling.topK, 0);
  EXPECT_FALSE(p.sampling.seed);
  EXPECT_EQ(p.maxTokens, 16);
  EXPECT_EQ(p.minTokens, 0);
  EXPECT_EQ(p.n, 1);
  EXPECT_FALSE(p.logprobs);
  EXPECT_EQ(p.topLogprobs, 0);
  EXPECT_FALSE(p.promptLogprobs);
  EXPECT_TRUE(p.stop.empty());
  EXPECT_TRUE(p.stopTokenIds.empty());
  EXPECT_FALSE(p.ignoreEos);
  EXPECT_TRUE(p.logitBias.empty());
  EXPECT_EQ(p.presencePenalty, 0.0f);
  EXPECT_EQ(p.frequencyPenalty, 0.0f);
  EXPECT_EQ(p.repetitionPenalty, 1.0f);
  EXPECT_EQ(p.grammar, nullptr);
  EXPECT_TRUE(p.promptIds.empty()); // filled after tokenization
}

TEST(RequestParsing, NullFieldsAreLeftOut) {
  ApiRequest r = completion(R"("model": null, "temperature": null, "top_p": null, "top_k": null,
      "n": null, "max_tokens": null, "stop": null, "seed": null, "logprobs": null,
      "echo": null, "stream": null, "stream_options": null, "logit_bias": null,
      "presence_penalty": null, "response_format": null, "user": null)");
  EXPECT_EQ(r.params.sampling.temperature, 1.0f);
  EXPECT_EQ(r.params.n, 1);
  EXPECT_FALSE(r.maxTokensGiven);
  EXPECT_FALSE(r.params.logprobs);
  EXPECT_EQ(r.params.grammar, nullptr);
}

TEST(RequestParsing, UnknownFieldsAndUserAreIgnored) {
  ApiRequest r = completion(R"("user": "user-1234", "suffix": "x", "best_of": 1, "metadata": {"a": 1})");
  EXPECT_EQ(r.prompts.size(), 1u);
  ApiRequest c = chat(R"("user": "user-1234", "store": false, "parallel_tool_calls": true)");
  EXPECT_EQ(c.chat.messages.size(), 1u);
}

// --- body ------------------------------------------------------------------

TEST(RequestParsing, BodyMustBeAJsonObject) {
  ApiError notJson = refused(Endpoint::Completions, "{\"prompt\": ");
  EXPECT_EQ(notJson.status, 400);
  EXPECT_EQ(notJson.type, "invalid_request_error");
  EXPECT_EQ(notJson.param, "");
  EXPECT_TRUE(notJson.message.starts_with("the request body is not valid JSON: "))
      << notJson.message;
  expectInvalid(refused(Endpoint::Chat, "[1, 2]"), "", "the request body must be a JSON object");
  expectInvalid(refused(Endpoint::Completions, "\"prompt\""), "",
                "the request body must be a JSON object");
  EXPECT_EQ(refused(Endpoint::Completions, "").status, 400);
}

// --- model -----------------------------------------------------------------

TEST(RequestParsing, Model) {
  EXPECT_EQ(completion(R"("model": "demo")").model, "demo");
  EXPECT_EQ(chat(R"("model": "demo")").model, "demo");
  expectInvalid(completionError(R"("model": 3)"), "model", "'model' must be a string");
  expectInvalid(chatError(R"("model": ["demo"])"), "model", "'model' must be a string");
}

// --- prompt ----------------------------------------------------------------

TEST(RequestParsing, PromptAsStringOrTokenIds) {
  ApiRequest text = completion("");
  ASSERT_EQ(text.prompts.size(), 1u);
  EXPECT_EQ(*text.prompts[0].text, "hi");

  ApiRequest ids = parsed(Endpoint::Completions, R"({"prompt": [1, 2, 2147483647]})");
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_FALSE(ids.prompts[0].text);
  EXPECT_EQ(ids.prompts[0].ids, (std::vector<int32_t>{1, 2, 2147483647}));

  ApiRequest empty = parsed(Endpoint::Completions, R"({"prompt": ""})");
  ASSERT_EQ(empty.prompts.size(), 1u);
  EXPECT_EQ(*empty.prompts[0].text, "");
}

TEST(RequestParsing, PromptBatchMixesTextsAndTokenArrays) {
  ApiRequest r = parsed(Endpoint::Completions, R"({"prompt": ["a", [5, 6], "b"]})");
  ASSERT_EQ(r.prompts.size(), 3u);
  EXPECT_EQ(*r.prompts[0].text, "a");
  EXPECT_FALSE(r.prompts[1].text);
  EXPECT_EQ(r.prompts[1].ids, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(*r.prompts[2].text, "b");
}

TEST(RequestParsing, PromptBatchOfUpTo1024) {
  std::string batch = "[";
  for (int i = 0; i < 1024; ++i)
    batch += (i ? ",\"p\"" : "\"p\"");
  EXPECT_EQ(parsed(Endpoint::Completions, "{\"prompt\": " + batch + "]}").prompts.size(), 1024u);
  expectInvalid(refused(Endpoint::Completions, "{\"prompt\": " + batch + ",\"p\"]}"), "prompt",
                "at most 1024 prompts may be batched in one request");
  // A long token array is one prompt, not a batch.
  std::string ids = "[";
  for (int i = 0; i < 2000; ++i)
    ids += (i ? ",7" : "7");
  ApiRequest one = parsed(Endpoint::Completions, "{\"prompt\": " + ids + "]}");
  ASSERT_EQ(one.prompts.size(), 1u);
  EXPECT_EQ(one.prompts[0].ids.size(), 2000u);
}

TEST(RequestParsing, PromptErrors) {
  expectInvalid(refused(Endpoint::Completions, "{}"), "prompt", "'prompt' is required");
  expectInvalid(refused(Endpoint::Completions, R"({"prompt": null})"), "prompt",
                "'prompt' is required");
  const std::string shape =
      "'prompt' must be a string, an array of token ids, or an array of either (a batch)";
  for (const char *prompt : {"3", "true", "{}", "[]", "[[]]", "[1.5]", "[1, \"a\"]",
                             "[2147483648]", "[-2147483649]", "[\"a\", 3]", "[[\"a\"]]",
                             "[null]"})
    expectInvalid(refused(Endpoint::Completions, std::string("{\"prompt\": ") + prompt + "}"),
                  "prompt", shape);
}

TEST(RequestParsing, ChatIgnoresPromptAndCompletionsIgnoresMessages) {
  ApiRequest c = chat(R"("prompt": 3)");
  EXPECT_TRUE(c.prompts.empty());
  ApiRequest p = completion(R"("messages": 3)");
  EXPECT_TRUE(p.chat.messages.empty());
}

// --- messages ----------------------------------------------------------------

TEST(RequestParsing, MessagesWithRoles) {
  ApiRequest r = parsed(Endpoint::Chat, R"({"messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "system", "content": "sys"},
      {"role": "user", "content": "hi", "name": "ann"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "42"},
      {"role": "ipython", "content": "custom roles pass through"}]})");
  EXPECT_EQ(r.endpoint, Endpoint::Chat);
  const auto &m = r.chat.messages;
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[0].role, "developer");
  EXPECT_EQ(m[0].content, "be brief");
  EXPECT_EQ(m[1].role, "system");
  EXPECT_EQ(m[2].role, "user");
  EXPECT_EQ(m[2].content, "hi");
  EXPECT_EQ(m[3].role, "assistant");
  EXPECT_EQ(m[3].content, ""); // null content
  EXPECT_EQ(m[4].role, "tool");
  EXPECT_EQ(m[4].content, "42");
  // Roles are not checked against OpenAI's list: templates define their own
  // (Llama 3's "ipython"), as vLLM accepts them.
  EXPECT_EQ(m[5].role, "ipython");

  // The template sees every field of each message...
  const json::array &t = r.chat.templateMessages;
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(t[2].at("name"), "ann");
  EXPECT_EQ(t[4].at("tool_call_id"), "call_1");
  // ... and tool call arguments sent as a JSON string as the object they encode.
  const json::value &arguments = t[3].at("tool_calls").at(0).at("function").at("arguments");
  ASSERT_TRUE(arguments.is_object()) << json::serialize(arguments);
  EXPECT_EQ(arguments.at("x"), 1);
  EXPECT_TRUE(r.chat.addGenerationPrompt);
  EXPECT_FALSE(r.chat.hasTools);
}

TEST(RequestParsing, ToolCallArgumentsThatAreNotAnObjectStayAString) {
  ApiRequest r = parsed(Endpoint::Chat, R"({"messages": [{"role": "assistant", "tool_calls": [
      {"function": {"name": "f", "arguments": "not json"}},
      {"function": {"name": "g", "arguments": "[1]"}},
      {"function": {"name": "h", "arguments": {"y": 2}}}]}]})");
  const json::array &calls = r.chat.templateMessages[0].at("tool_calls").as_array();
  EXPECT_EQ(calls[0].at("function").at("arguments"), "not json");
  EXPECT_EQ(calls[1].at("function").at("arguments"), "[1]");
  EXPECT_EQ(calls[2].at("function").at("arguments").at("y"), 2);
}

TEST(RequestParsing, ContentPartsAreJoinedWithNewlines) {
  ApiRequest r = parsed(Endpoint::Chat, R"({"messages": [{"role": "user", "content": [
      {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
      {"role": "user", "content": []}]})");
  ASSERT_EQ(r.chat.messages.size(), 2u);
  EXPECT_EQ(r.chat.messages[0].content, "one\ntwo");
  EXPECT_EQ(r.chat.messages[1].content, "");
  // The template message keeps the parts (chatPrompt joins them when the
  // template does not loop over them).
  EXPECT_TRUE(r.chat.templateMessages[0].at("content").is_array());
}

TEST(RequestParsing, MessageErrors) {
  const std::string needsArray = "'messages' must be a non-empty array";
  expectInvalid(refused(Endpoint::Chat, "{}"), "messages", needsArray);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": []})"), "messages", needsArray);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": {"role": "user"}})"), "messages",
                needsArray);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": null})"), "messages", needsArray);
  const std::string needsRole = "each message needs a string 'role'";
  expectInvalid(refused(Endpoint::Chat, R"({"messages": ["hi"]})"), "messages", needsRole);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": [{"content": "hi"}]})"), "messages",
                needsRole);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": [{"role": 1, "content": "hi"}]})"),
                "messages", needsRole);
  const std::string content = "message 'content' must be a string or an array of text parts";
  expectInvalid(refused(Endpoint::Chat, R"({"messages": [{"role": "user", "content": 5}]})"),
                "messages", content);
  expectInvalid(refused(Endpoint::Chat, R"({"messages": [{"role": "user", "content": {}}]})"),
                "messages", content);
  const std::string parts = "only text content parts are supported";
  for (const char *part : {R"({"type": "image_url", "image_url": {"url": "x"}})",
                           R"({"type": "text"})", R"({"text": "x"})",
                           R"({"type": "text", "text": 3})", R"("just a string")"})
    expectInvalid(refused(Endpoint::Chat, std::string(R"({"messages": [{"role": "user", "content": [)") +
                                              part + "]}]}"),
                  "messages", parts);
  expectInvalid(refused(Endpoint::Chat,
                        R"({"messages": [{"role": "assistant", "tool_calls": {}}]})"),
                "messages", "'tool_calls' must be an array");
  const std::string call = "each tool call needs a 'function' with a 'name'";
  for (const char *calls : {"[3]", "[{}]", R"([{"function": "f"}])", R"([{"function": {}}])"})
    expectInvalid(refused(Endpoint::Chat,
                          std::string(R"({"messages": [{"role": "assistant", "tool_calls": )") +
                              calls + "}]}"),
                  "messages", call);
}

TEST(RequestParsing, ChatTemplateInputs) {
  ApiRequest r = chat(R"("add_generation_prompt": false,
      "tools": [{"type": "function", "function": {"name": "f"}}],
      "documents": [{"text": "d"}],
      "chat_template_kwargs": {"enable_thinking": false, "documents": []})");
  EXPECT_FALSE(r.chat.addGenerationPrompt);
  EXPECT_TRUE(r.chat.hasTools);
  const json::object &vars = r.chat.templateVariables;
  EXPECT_EQ(vars.at("tools").at(0).at("function").at("name"), "f");
  EXPECT_EQ(vars.at("enable_thinking"), false);
  // chat_template_kwargs come last and win.
  EXPECT_TRUE(vars.at("documents").as_array().empty());

  EXPECT_FALSE(chat(R"("tools": [])").chat.hasTools);
  EXPECT_FALSE(chat(R"("tools": null)").chat.hasTools);

  expectInvalid(chatError(R"("add_generation_prompt": "yes")"), "add_generation_prompt",
                "'add_generation_prompt' must be a boolean");
  expectInvalid(chatError(R"("tools": {})"), "tools", "'tools' must be an array");
  expectInvalid(chatError(R"("documents": "d")"), "documents", "'documents' must be an array");
  expectInvalid(chatError(R"("chat_template_kwargs": [])"), "chat_template_kwargs",
                "'chat_template_kwargs' must be an object");
}

TEST(RequestParsing, ToolChoice) {
  ChatInput none = chat(R"("tool_choice": "none")").chat;
  EXPECT_TRUE(none.toolChoiceNone);
  EXPECT_FALSE(none.toolChoiceRequired);
  ChatInput required = chat(R"("tool_choice": "required")").chat;
  EXPECT_TRUE(required.toolChoiceRequired);
  ChatInput autoChoice = chat(R"("tool_choice": "auto")").chat;
  EXPECT_FALSE(autoChoice.toolChoiceNone || autoChoice.toolChoiceRequired);
  EXPECT_EQ(autoChoice.toolChoiceFunction, "");
  ChatInput named =
      chat(R"("tool_choice": {"type": "function", "function": {"name": "get_weather"}})").chat;
  EXPECT_EQ(named.toolChoiceFunction, "get_weather");

  const std::string message = "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}";
  for (const char *choice : {R"("always")", "1", "true", R"({"type": "function"})",
                             R"({"function": {"name": 3}})", "[]"})
    expectInvalid(chatError(std::string("\"tool_choice\": ") + choice), "tool_choice", message);
}

TEST(RequestParsing, ParseChatInputReadsABodyOnItsOwn) {
  // /tokenize shares it.
  json::object body = json::parse(R"({"messages": [{"role": "user", "content": "x"}],
                                      "add_generation_prompt": false})").as_object();
  ChatInput input;
  EXPECT_FALSE(parseChatInput(body, input));
  ASSERT_EQ(input.messages.size(), 1u);
  EXPECT_FALSE(input.addGenerationPrompt);
  ChatInput bad;
  auto error = parseChatInput(json::object{{"prompt", "x"}}, bad);
  ASSERT_TRUE(error);
  expectInvalid(*error, "messages", "'messages' must be a non-empty array");
}

// --- sampling ----------------------------------------------------------------

TEST(RequestParsing, Sampling) {
  for (const auto &r : {completion(R"("temperature": 0, "top_p": 0.5, "top_k": 40, "seed": 7)"),
                        chat(R"("temperature": 0, "top_p": 0.5, "top_k": 40, "seed": 7)")}) {
    EXPECT_EQ(r.params.sampling.temperature, 0.0f);
    EXPECT_EQ(r.params.sampling.topP, 0.5f);
    EXPECT_EQ(r.params.sampling.topK, 40);
    EXPECT_EQ(r.params.sampling.seed, std::optional<uint64_t>(7));
  }
  EXPECT_EQ(completion(R"("temperature": 1.5)").params.sampling.temperature, 1.5f);
  // An integer-valued double is an integer.
  EXPECT_EQ(completion(R"("top_k": 5.0)").params.sampling.topK, 5);
  // -1 and 0 both turn top-k off (vLLM's -1).
  EXPECT_EQ(completion(R"("top_k": -1)").params.sampling.topK, 0);
  EXPECT_EQ(completion(R"("top_k": 0)").params.sampling.topK, 0);
  EXPECT_EQ(completion(R"("top_k": 2147483647)").params.sampling.topK, 2147483647);
  // A negative seed keeps its bits.
  EXPECT_EQ(completion(R"("seed": -1)").params.sampling.seed,
            std::optional<uint64_t>(UINT64_MAX));
}

TEST(RequestParsing, SamplingErrors) {
  expectInvalid(completionError(R"("temperature": "0")"), "temperature",
                "'temperature' must be a number");
  expectInvalid(chatError(R"("top_p": true)"), "top_p", "'top_p' must be a number");
  expectInvalid(completionError(R"("top_k": "40")"), "top_k", "'top_k' must be a number");
  expectInvalid(completionError(R"("top_k": 1.5)"), "top_k", "'top_k' must be an integer");
  expectInvalid(completionError(R"("top_k": 1e16)"), "top_k", "'top_k' must be an integer");
  expectInvalid(completionError(R"("top_k": -2)"), "top_k",
                "top_k must be -1 or 0 (off) or a positive count up to 2147483647, got -2");
  // Issue 14: checked on the value as sent, not narrowed to 1 first.
  expectInvalid(completionError(R"("top_k": 4294967297)"), "top_k",
                "top_k must be -1 or 0 (off) or a positive count up to 2147483647, got 4294967297");
  expectInvalid(completionError(R"("seed": "7")"), "seed", "'seed' must be a number");
  expectInvalid(completionError(R"("seed": 0.5)"), "seed", "'seed' must be an integer");
}

// --- lengths and choices ---------------------------------------------------------

TEST(RequestParsing, MaxTokens) {
  ApiRequest r = completion(R"("max_tokens": 5, "min_tokens": 2)");
  EXPECT_EQ(r.params.maxTokens, 5);
  EXPECT_TRUE(r.maxTokensGiven);
  EXPECT_EQ(r.params.minTokens, 2);
  // Completions may ask for no tokens (echo scoring).
  ApiRequest zero = completion(R"("max_tokens": 0)");
  EXPECT_EQ(zero.params.maxTokens, 0);
  EXPECT_TRUE(zero.maxTokensGiven);
  // max_completion_tokens is chat's; completions ignore it.
  EXPECT_FALSE(completion(R"("max_completion_tokens": 3)").maxTokensGiven);

  EXPECT_EQ(chat(R"("max_tokens": 9)").params.maxTokens, 9);
  EXPECT_EQ(chat(R"("max_completion_tokens": 8)").params.maxTokens, 8);
  // Both: max_completion_tokens (the newer name) wins; null falls back.
  EXPECT_EQ(chat(R"("max_tokens": 9, "max_completion_tokens": 8)").params.maxTokens, 8);
  EXPECT_EQ(chat(R"("max_tokens": 9, "max_completion_tokens": null)").params.maxTokens, 9);
}

TEST(RequestParsing, MaxTokensErrors) {
  expectInvalid(completionError(R"("max_tokens": "5")"), "max_tokens",
                "'max_tokens' must be a number");
  expectInvalid(completionError(R"("max_tokens": 2.5)"), "max_tokens",
                "'max_tokens' must be an integer");
  expectInvalid(chatError(R"("max_tokens": 0)"), "max_tokens",
                "max_tokens must be at least 1, got 0");
  expectInvalid(chatError(R"("max_completion_tokens": -3)"), "max_completion_tokens",
                "max_completion_tokens must be at least 1, got -3");
  expectInvalid(chatError(R"("max_completion_tokens": "8")"), "max_completion_tokens",
                "'max_completion_tokens' must be a number");
  expectInvalid(completionError(R"("min_tokens": false)"), "min_tokens",
                "'min_tokens' must be a number");
}

TEST(RequestParsing, N) {
  EXPECT_EQ(completion(R"("n": 3)").params.n, 3);
  EXPECT_EQ(chat(R"("n": 128)").params.n, 128);
  expectInvalid(completionError(R"("n": 0)"), "n", "n must be in [1, 128], got 0");
  expectInvalid(chatError(R"("n": 129)"), "n", "n must be in [1, 128], got 129");
  expectInvalid(chatError(R"("n": 4294967297)"), "n", "n must be in [1, 128], got 4294967297");
  expectInvalid(completionError(R"("n": "2")"), "n", "'n' must be a number");
  expectInvalid(completionError(R"("n": 1.5)"), "n", "'n' must be an integer");
}

// --- stop ----------------------------------------------------------------------

TEST(RequestParsing, Stop) {
  EXPECT_EQ(completion(R"("stop": "\n")").params.stop, (std::vector<std::string>{"\n"}));
  EXPECT_EQ(chat(R"("stop": ["a", "bc"])").params.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(completion(R"("stop": [])").params.stop.empty());
  EXPECT_EQ(completion(R"("stop_token_ids": [3, 4])").params.stopTokenIds,
            (std::vector<int32_t>{3, 4}));
  EXPECT_TRUE(completion(R"("stop_token_ids": [])").params.stopTokenIds.empty());
  EXPECT_TRUE(completion(R"("ignore_eos": true)").params.ignoreEos);

  const std::string message = "'stop' must be a string or an array of strings";
  expectInvalid(completionError(R"("stop": 3)"), "stop", message);
  expectInvalid(chatError(R"("stop": ["a", 3])"), "stop", message);
  expectInvalid(chatError(R"("stop": {"a": 1})"), "stop", message);
  expectInvalid(completionError(R"("stop_token_ids": [1.5])"), "stop_token_ids",
                "'stop_token_ids' must be an array of integers");
  expectInvalid(completionError(R"("stop_token_ids": 3)"), "stop_token_ids",
                "'stop_token_ids' must be an array of integers");
  expectInvalid(completionError(R"("ignore_eos": 1)"), "ignore_eos",
                "'ignore_eos' must be a boolean");
}

// --- logprobs and echo ---------------------------------------------------------

TEST(RequestParsing, CompletionLogprobsIsTheNumberOfAlternatives) {
  ApiRequest none = completion(R"("logprobs": 0)");
  EXPECT_TRUE(none.params.logprobs);
  EXPECT_EQ(none.params.topLogprobs, 0);
  ApiRequest five = completion(R"("logprobs": 5)");
  EXPECT_TRUE(five.params.logprobs);
  EXPECT_EQ(five.params.topLogprobs, 5);
  EXPECT_EQ(completion(R"("logprobs": 20)").params.topLogprobs, 20);
  // top_logprobs is chat's.
  EXPECT_EQ(completion(R"("top_logprobs": 3)").params.topLogprobs, 0);

  expectInvalid(completionError(R"("logprobs": 21)"), "logprobs",
                "logprobs must be in [0, 20], got 21");
  expectInvalid(completionError(R"("logprobs": -1)"), "logprobs",
                "logprobs must be in [0, 20], got -1");
  expectInvalid(completionError(R"("logprobs": 4294967301)"), "logprobs",
                "logprobs must be in [0, 20], got 4294967301");
  expectInvalid(completionError(R"("logprobs": true)"), "logprobs",
                "'logprobs' must be a number");
}

TEST(RequestParsing, ChatLogprobsIsAFlagWithTopLogprobs) {
  ApiRequest r = chat(R"("logprobs": true, "top_logprobs": 4)");
  EXPECT_TRUE(r.params.logprobs);
  EXPECT_EQ(r.params.topLogprobs, 4);
  EXPECT_FALSE(r.params.promptLogprobs);
  EXPECT_FALSE(chat(R"("logprobs": false)").params.logprobs);
  // echo is completions'.
  EXPECT_FALSE(chat(R"("echo": true)").echo);

  expectInvalid(chatError(R"("logprobs": 2)"), "logprobs", "'logprobs' must be a boolean");
  expectInvalid(chatError(R"("top_logprobs": 2)"), "top_logprobs",
                "'top_logprobs' needs 'logprobs': true");
  expectInvalid(chatError(R"("logprobs": false, "top_logprobs": 2)"), "top_logprobs",
                "'top_logprobs' needs 'logprobs': true");
  expectInvalid(chatError(R"("logprobs": true, "top_logprobs": 21)"), "top_logprobs",
                "top_logprobs must be in [0, 20], got 21");
  expectInvalid(chatError(R"("logprobs": true, "top_logprobs": "2")"), "top_logprobs",
                "'top_logprobs' must be a number");
}

TEST(RequestParsing, EchoAsksForPromptLogprobsWhenScoring) {
  ApiRequest plain = completion(R"("echo": true)");
  EXPECT_TRUE(plain.echo);
  EXPECT_FALSE(plain.params.promptLogprobs);
  EXPECT_TRUE(completion(R"("echo": true, "logprobs": 1)").params.promptLogprobs);
  // max_tokens 0 with echo scores the prompt alone.
  EXPECT_TRUE(completion(R"("echo": true, "max_tokens": 0)").params.promptLogprobs);
  EXPECT_FALSE(completion(R"("echo": true, "max_tokens": 1)").params.promptLogprobs);
  EXPECT_FALSE(completion(R"("logprobs": 1)").params.promptLogprobs);
  expectInvalid(completionError(R"("echo": "true")"), "echo", "'echo' must be a boolean");
}

// --- streaming -----------------------------------------------------------------

TEST(RequestParsing, StreamAndStreamOptions) {
  ApiRequest r = completion(R"("stream": true, "stream_options": {"include_usage": true})");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.includeUsage);
  ApiRequest c = chat(R"("stream": true, "stream_options": {})");
  EXPECT_TRUE(c.stream);
  EXPECT_FALSE(c.includeUsage);
  EXPECT_TRUE(chat(R"("return_token_ids": true)").returnTokenIds);

  expectInvalid(completionError(R"("stream": "yes")"), "stream", "'stream' must be a boolean");
  expectInvalid(chatError(R"("stream_options": true)"), "stream_options",
                "'stream_options' must be an object");
  expectInvalid(chatError(R"("stream_options": {"include_usage": 1})"), "stream_options",
                "'include_usage' must be a boolean");
  expectInvalid(chatError(R"("return_token_ids": 1)"), "return_token_ids",
                "'return_token_ids' must be a boolean");
}

// --- logits processing -----------------------------------------------------------

TEST(RequestParsing, PenaltiesAndLogitBias) {
  ApiRequest r = chat(R"("presence_penalty": 0.5, "frequency_penalty": -1,
      "repetition_penalty": 1.2, "logit_bias": {"5": -100, "17": 2.5})");
  EXPECT_EQ(r.params.presencePenalty, 0.5f);
  EXPECT_EQ(r.params.frequencyPenalty, -1.0f);
  EXPECT_EQ(r.params.repetitionPenalty, 1.2f);
  ASSERT_EQ(r.params.logitBias.size(), 2u);
  EXPECT_EQ(r.params.logitBias[0], (std::pair<int32_t, float>{5, -100.0f}));
  EXPECT_EQ(r.params.logitBias[1], (std::pair<int32_t, float>{17, 2.5f}));
  EXPECT_TRUE(completion(R"("logit_bias": {})").params.logitBias.empty());

  expectInvalid(completionError(R"("presence_penalty": "1")"), "presence_penalty",
                "'presence_penalty' must be a number");
  expectInvalid(chatError(R"("frequency_penalty": [])"), "frequency_penalty",
                "'frequency_penalty' must be a number");
  expectInvalid(chatError(R"("repetition_penalty": {})"), "repetition_penalty",
                "'repetition_penalty' must be a number");
  expectInvalid(chatError(R"("logit_bias": [1])"), "logit_bias",
                "'logit_bias' must be an object of token id -> bias");
  for (const auto &[bias, key] : std::vector<std::pair<std::string, std::string>>{
           {R"({"abc": 1})", "abc"}, {R"({"-1": 1})", "-1"}, {R"({"": 1})", ""},
           {R"({"2147483648": 1})", "2147483648"}, {R"({"5": "1"})", "5"}, {R"({"5x": 1})", "5x"}})
    expectInvalid(chatError("\"logit_bias\": " + bias), "logit_bias",
                  "'logit_bias' maps token ids to numbers; got \"" + key + "\"");
}

// --- structured output -----------------------------------------------------------

/// Whether `grammar` accepts `text` whole.
bool accepts(const std::shared_ptr<const serving::OutputGrammar> &grammar, std::string_view text) {
  serving::GrammarMatcher matcher(grammar);
  return matcher.advance(text) && matcher.complete();
}

TEST(RequestParsing, ResponseFormat) {
  EXPECT_EQ(chat(R"("response_format": {"type": "text"})").params.grammar, nullptr);

  auto object = chat(R"("response_format": {"type": "json_object"})").params.grammar;
  ASSERT_NE(object, nullptr);
  EXPECT_TRUE(accepts(object, R"({"a":[1,2]})"));
  EXPECT_FALSE(accepts(object, "[1]"));

  auto schema = chat(R"("response_format": {"type": "json_schema", "json_schema": {"name": "n",
      "strict": true, "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}},
      "required": ["ok"], "additionalProperties": false}}})").params.grammar;
  ASSERT_NE(schema, nullptr);
  EXPECT_TRUE(accepts(schema, R"({"ok":true})"));
  EXPECT_FALSE(accepts(schema, R"({"ok":1})"));
  // Completions take it too.
  EXPECT_NE(completion(R"("response_format": {"type": "json_object"})").params.grammar, nullptr);
}

TEST(RequestParsing, ResponseFormatErrors) {
  const std::string needsType = "'response_format' needs a 'type'";
  expectInvalid(chatError(R"("response_format": "json_object")"), "response_format", needsType);
  expectInvalid(chatError(R"("response_format": {})"), "response_format", needsType);
  expectInvalid(chatError(R"("response_format": {"type": 1})"), "response_format", needsType);
  expectInvalid(chatError(R"("response_format": {"type": "xml"})"), "response_format",
                "'response_format.type' must be text, json_object or json_schema");
  const std::string needsSchema = "'response_format.json_schema.schema' is required";
  expectInvalid(chatError(R"("response_format": {"type": "json_schema"})"), "response_format",
                needsSchema);
  expectInvalid(chatError(R"("response_format": {"type": "json_schema", "json_schema": {"name": "n"}})"),
                "response_format", needsSchema);
  // A schema the grammar cannot take: its error, on response_format.
  ApiError unsupported = chatError(
      R"("response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}})");
  EXPECT_EQ(unsupported.status, 400);
  EXPECT_EQ(unsupported.param, "response_format");
  EXPECT_NE(unsupported.message.find("pattern"), std::string::npos) << unsupported.message;
}

TEST(RequestParsing, GuidedJsonAndChoice) {
  auto fromObject = completion(R"("guided_json": {"type": "integer"})").params.grammar;
  ASSERT_NE(fromObject, nullptr);
  EXPECT_TRUE(accepts(fromObject, "42"));
  auto fromText = completion(R"("guided_json": "{\"type\": \"boolean\"}")").params.grammar;
  ASSERT_NE(fromText, nullptr);
  EXPECT_TRUE(accepts(fromText, "false"));
  auto choice = chat(R"("guided_choice": ["yes", "no"])").params.grammar;
  ASSERT_NE(choice, nullptr);
  EXPECT_TRUE(accepts(choice, "no"));
  EXPECT_FALSE(accepts(choice, "maybe"));

  expectInvalid(completionError(R"("guided_json": "{nope")"), "guided_json",
                "'guided_json' is not valid JSON");
  expectInvalid(chatError(R"("guided_choice": ["a", 1])"), "guided_choice",
                "'guided_choice' must be an array of strings");
  EXPECT_EQ(chatError(R"("guided_choice": [])").param, "guided_choice");
  EXPECT_EQ(chatError(R"("guided_choice": "a")").param, "guided_choice");
  expectInvalid(chatError(R"("guided_regex": "a+")"), "guided_regex",
                "'guided_regex' is not supported yet");
  expectInvalid(completionError(R"("guided_grammar": "root ::= x")"), "guided_grammar",
                "'guided_grammar' is not supported yet");
}

// --- everything at once -----------------------------------------------------------

TEST(RequestParsing, AFullChatRequestAsTheOpenAiClientSendsIt) {
  ApiRequest r = parsed(Endpoint::Chat, R"({"model": "demo",
      "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
      "max_completion_tokens": 12, "temperature": 0.7, "top_p": 0.9, "n": 2,
      "stop": ["\n\n"], "seed": 3, "logprobs": true, "top_logprobs": 2,
      "stream": true, "stream_options": {"include_usage": true},
      "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"9": 1},
      "response_format": {"type": "json_object"},
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": "auto", "user": "u-1"})");
  EXPECT_EQ(r.model, "demo");
  EXPECT_EQ(r.chat.messages.size(), 2u);
  EXPECT_EQ(r.params.maxTokens, 12);
  EXPECT_EQ(r.params.sampling.temperature, 0.7f);
  EXPECT_EQ(r.params.sampling.topP, 0.9f);
  EXPECT_EQ(r.params.n, 2);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"\n\n"}));
  EXPECT_EQ(r.params.sampling.seed, std::optional<uint64_t>(3));
  EXPECT_TRUE(r.params.logprobs);
  EXPECT_EQ(r.params.topLogprobs, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.includeUsage);
  EXPECT_EQ(r.params.presencePenalty, 0.1f);
  EXPECT_EQ(r.params.frequencyPenalty, 0.2f);
  EXPECT_EQ(r.params.logitBias.size(), 1u);
  EXPECT_NE(r.params.grammar, nullptr);
  EXPECT_TRUE(r.chat.hasTools);
}

} // namespace
} // namespace llmir::openai
