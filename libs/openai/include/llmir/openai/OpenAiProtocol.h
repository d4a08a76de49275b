// The OpenAI wire format of /v1/completions and /v1/chat/completions:
// request JSON -> serving::RequestParams (plus what shapes the response),
// and the response / stream-chunk / error JSON. Unknown fields are ignored,
// as OpenAI's server does.
#pragma once

#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/ChatTemplate.h"
#include "llmir/serving/RequestParams.h"
#include "llmir/serving/ToolCalls.h"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace llmir::model {
class Tokenizer;
}

namespace llmir::openai {

enum class Endpoint { Completions, Chat };

/// An OpenAI error: HTTP status and the {"error": {...}} body fields.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param; // empty: null
  std::string code;  // empty: null
};
/// {"error": {"message", "type", "param", "code"}}.
std::string errorJson(const ApiError &error);

struct ChatMessage {
  std::string role;
  std::string content;
};

/// What a chat template renders: the messages as the template sees them
/// (every field of each message kept, text parts joined into one string,
/// tool call arguments given as JSON strings parsed into objects, as vLLM
/// does), the flag and the extra variables (tools, documents,
/// chat_template_kwargs).
struct ChatInput {
  std::vector<ChatMessage> messages;
  boost::json::array templateMessages;
  boost::json::object templateVariables;
  bool addGenerationPrompt = true;
  bool hasTools = false;      // a non-empty "tools"
  bool toolChoiceNone = false; // tool_choice "none": output stays text
  bool toolChoiceRequired = false;  // tool_choice "required"
  std::string toolChoiceFunction;   // tool_choice {"type": "function", "function": {"name"}}
};

/// One completions prompt: a text, or token ids.
struct PromptInput {
  std::optional<std::string> text;
  std::vector<int32_t> ids;
};

/// A parsed request, before tokenization of its prompt.
struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  /// completions: one prompt, or a batch (each with n choices, numbered
  /// prompt * n + i as OpenAI does).
  std::vector<PromptInput> prompts;
  bool echo = false; // completions: the prompt's text (and logprobs) before the output
  ChatInput chat;                                // chat
  serving::RequestParams params;                 // promptIds filled later
  bool maxTokensGiven = false;
  bool stream = false;
  bool includeUsage = false;   // stream_options.include_usage
  bool returnTokenIds = false; // vLLM extension: token ids in each choice
};

/// Parses a request body; the error names the offending parameter.
std::variant<ApiRequest, ApiError> parseRequest(Endpoint endpoint,
                                                std::string_view body);

/// The default prompt text of a chat, for models without a chat_template:
/// each message as "<|role|>\ncontent\n", then "<|assistant|>\n".
std::string applyDefaultChatTemplate(const std::vector<ChatMessage> &messages);

/// How a chat becomes prompt text: the model's chat_template from
/// tokenizer_config.json when it has one, else applyDefaultChatTemplate.
struct ChatFormat {
  std::optional<serving::ChatTemplate> chatTemplate;
  /// A named "tool_use" template, for requests with tools.
  std::optional<serving::ChatTemplate> toolUseTemplate;
  serving::ChatTemplateInputs inputs; // bos/eos tokens; add_generation_prompt on
  /// --tool-call-parser: how tool calls are read back out of the output.
  std::optional<serving::ToolCallFormat> toolCalls;
};

/// The prompt of a chat; a template error (e.g. its raise_exception) is a
/// 400 on "messages" carrying the template's message.
std::variant<std::string, ApiError> chatPrompt(const ChatFormat &format, const ChatInput &chat);

/// tool_choice "required" or a named function: the output is constrained to
/// one call in the --tool-call-parser's format (400 without a parser).
std::optional<ApiError> applyToolChoice(const ChatFormat &format, const ChatInput &chat,
                                        serving::RequestParams &params);

/// Reads "messages" (and add_generation_prompt, tools, documents,
/// chat_template_kwargs) from a request body: chat completions and
/// /tokenize share it.
std::optional<ApiError> parseChatInput(const boost::json::object &body, ChatInput &chat);

/// What the server accumulates per choice for a non-streamed response.
struct ChoiceResult {
  std::string text;
  std::vector<int32_t> tokenIds;
  std::vector<float> logprobs;
  std::vector<std::vector<serving::TopLogprob>> topLogprobs;
  std::string finishReason;
  size_t prompt = 0; // index into ResponseContext::prompts
  // echo with logprobs: of prompt tokens 1.. (the first has none).
  std::vector<float> promptLogprobs;
  std::vector<std::vector<serving::TopLogprob>> promptTopLogprobs;
};

/// A prompt as the response shows it (echo) and counts it (usage).
struct PromptContext {
  std::vector<int32_t> ids;
  std::string text;
};

struct ResponseContext {
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
  const model::Tokenizer *tokenizer = nullptr;
  const ApiRequest *request = nullptr;
  std::vector<PromptContext> prompts; // chat: one
  /// Chat with tools and a --tool-call-parser: tool calls are parsed out.
  std::optional<serving::ToolCallFormat> toolCalls;
  int64_t promptTokens() const {
    int64_t total = 0;
    for (const PromptContext &p : prompts)
      total += static_cast<int64_t>(p.ids.size());
    return total;
  }
};

/// The seed of choice `choice`'s tool call ids (the same streamed or not).
uint64_t toolCallIdSeed(const ResponseContext &ctx, size_t choice);

/// The whole (non-streamed) response body, with usage.
std::string responseJson(const ResponseContext &ctx,
                         const std::vector<ChoiceResult> &choices);

/// What a stream has sent of one choice so far.
struct StreamedChoice {
  bool sentFirst = false; // the first chunk (chat role, completions echo) went
  /// Bytes of text sent: completions' text_offset of the next token.
  size_t textSent = 0;
};

/// One streamed chunk for `event` (a token and/or a finish) of choice
/// `choice`; nullopt when the event has nothing to send. The first chunk
/// adds the chat role delta, or (completions with echo) the prompt of
/// `prompt`. `sent` is advanced past a chunk returned.
std::optional<std::string> chunkJson(const ResponseContext &ctx,
                                     const serving::SequenceEvent &event, StreamedChoice &sent,
                                     uint32_t choice, size_t prompt,
                                     const std::vector<serving::ToolCall> &toolCalls = {},
                                     size_t firstToolCall = 0);
/// The final usage-only chunk (stream_options.include_usage).
std::string usageChunkJson(const ResponseContext &ctx, int64_t completionTokens);

} // namespace llmir::openai
