#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/model/Tokenizer.h"
#include "llmir/serving/OutputGrammar.h"

#include <boost/json.hpp>

#include <cmath>

namespace llmir::openai {

namespace json = boost::json;

std::string errorJson(const ApiError &e) {
  json::object error;
  error["message"] = e.message;
  error["type"] = e.type;
  error["param"] = e.param.empty() ? json::value(nullptr) : json::value(e.param);
  error["code"] = e.code.empty() ? json::value(nullptr) : json::value(e.code);
  return json::serialize(json::object{{"error", std::move(error)}});
}

namespace {

ApiError invalid(std::string param, std::string message) {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

/// Typed field readers: absent or null leaves the target unchanged.
class Fields {
public:
  explicit Fields(const json::object &object) : object_(object) {}
  std::optional<ApiError> error;

  const json::value *get(const char *name) {
    const json::value *v = object_.if_contains(name);
    return v && !v->is_null() ? v : nullptr;
  }
  bool number(const char *name, double &out) {
    const json::value *v = get(name);
    if (!v || error)
      return false;
    if (!v->is_number()) {
      error = invalid(name, std::string("'") + name + "' must be a number");
      return false;
    }
    out = v->to_number<double>();
    return true;
  }
  bool integer(const char *name, int64_t &out) {
    double d = 0;
    if (!number(name, d))
      return false;
    if (d != std::floor(d) || std::abs(d) > 9e15) {
      error = invalid(name, std::string("'") + name + "' must be an integer");
      return false;
    }
    out = static_cast<int64_t>(d);
    return true;
  }
  bool boolean(const char *name, bool &out) {
    const json::value *v = get(name);
    if (!v || error)
      return false;
    if (!v->is_bool()) {
      error = invalid(name, std::string("'") + name + "' must be a boolean");
      return false;
    }
    out = v->get_bool();
    return true;
  }
  bool string(const char *name, std::string &out) {
    const json::value *v = get(name);
    if (!v || error)
      return false;
    if (!v->is_string()) {
      error = invalid(name, std::string("'") + name + "' must be a string");
      return false;
    }
    out = std::string(v->get_string());
    return true;
  }

private:
  const json::object &object_;
};

std::optional<std::vector<int32_t>> tokenArray(const json::value &v) {
  if (!v.is_array() || v.get_array().empty())
    return std::nullopt;
  std::vector<int32_t> ids;
  for (const json::value &x : v.get_array()) {
    if (!x.is_int64() && !x.is_uint64())
      return std::nullopt;
    const int64_t id = x.to_number<int64_t>();
    if (id < INT32_MIN || id > INT32_MAX)
      return std::nullopt;
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

/// Prompts a request may batch (lm-evaluation-harness sends tens).
constexpr size_t kMaxBatchedPrompts = 1024;

std::optional<ApiError> parsePrompt(Fields &f, ApiRequest &r) {
  const json::value *prompt = f.get("prompt");
  if (!prompt)
    return invalid("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    r.prompts.push_back({std::string(prompt->get_string()), {}});
    return std::nullopt;
  }
  if (auto ids = tokenArray(*prompt)) {
    r.prompts.push_back({std::nullopt, std::move(*ids)});
    return std::nullopt;
  }
  const char *shape = "'prompt' must be a string, an array of token ids, or an array of "
                      "either (a batch)";
  if (!prompt->is_array() || prompt->get_array().empty())
    return invalid("prompt", shape);
  if (prompt->get_array().size() > kMaxBatchedPrompts)
    return invalid("prompt", "at most " + std::to_string(kMaxBatchedPrompts) +
                                 " prompts may be batched in one request");
  for (const json::value &item : prompt->get_array()) {
    if (item.is_string()) {
      r.prompts.push_back({std::string(item.get_string()), {}});
    } else if (auto ids = tokenArray(item)) {
      r.prompts.push_back({std::nullopt, std::move(*ids)});
    } else {
      return invalid("prompt", shape);
    }
  }
  return std::nullopt;
}

/// Structured output: response_format json_object / json_schema (OpenAI),
/// guided_json and guided_choice (vLLM).
std::optional<ApiError> parseStructuredOutput(Fields &f, serving::RequestParams &p) {
  auto fromSchema = [&](const char *param, const json::value &schema) -> std::optional<ApiError> {
    const json::value *s = &schema;
    json::value parsed;
    if (schema.is_string()) { // guided_json may be the schema's text
      boost::system::error_code ec;
      parsed = json::parse(schema.get_string(), ec);
      if (ec)
        return invalid(param, std::string("'") + param + "' is not valid JSON");
      s = &parsed;
    }
    auto grammar = serving::OutputGrammar::jsonSchema(*s);
    if (!grammar)
      return invalid(param, grammar.message());
    p.grammar = std::move(*grammar);
    return std::nullopt;
  };
  if (const json::value *format = f.get("response_format")) {
    const json::object *o = format->if_object();
    const json::value *type = o ? o->if_contains("type") : nullptr;
    if (!type || !type->is_string())
      return invalid("response_format", "'response_format' needs a 'type'");
    if (type->get_string() == "json_object") {
      p.grammar = serving::OutputGrammar::jsonObject();
    } else if (type->get_string() == "json_schema") {
      const json::value *spec = o->if_contains("json_schema");
      const json::value *schema = spec && spec->is_object() ? spec->get_object().if_contains("schema") : nullptr;
      if (!schema)
        return invalid("response_format", "'response_format.json_schema.schema' is required");
      if (auto e = fromSchema("response_format", *schema))
        return e;
    } else if (type->get_string() != "text") {
      return invalid("response_format", "'response_format.type' must be text, json_object or json_schema");
    }
  }
  if (const json::value *schema = f.get("guided_json"))
    if (auto e = fromSchema("guided_json", *schema))
      return e;
  if (const json::value *choice = f.get("guided_choice")) {
    std::vector<std::string> choices;
    if (choice->is_array())
      for (const json::value &c : choice->get_array()) {
        if (!c.is_string())
          return invalid("guided_choice", "'guided_choice' must be an array of strings");
        choices.emplace_back(c.get_string());
      }
    auto grammar = serving::OutputGrammar::choice(std::move(choices));
    if (!grammar)
      return invalid("guided_choice", grammar.message());
    p.grammar = std::move(*grammar);
  }
  for (const char *unsupported : {"guided_regex", "guided_grammar"})
    if (f.get(unsupported))
      return invalid(unsupported, std::string("'") + unsupported + "' is not supported yet");
  return std::nullopt;
}

/// logit_bias, presence/frequency penalties (OpenAI) and repetition_penalty
/// (vLLM).
std::optional<ApiError> parseLogitsProcessing(Fields &f, serving::RequestParams &p) {
  double number = 0;
  if (f.number("presence_penalty", number))
    p.presencePenalty = static_cast<float>(number);
  if (f.number("frequency_penalty", number))
    p.frequencyPenalty = static_cast<float>(number);
  if (f.number("repetition_penalty", number))
    p.repetitionPenalty = static_cast<float>(number);
  if (f.error)
    return *f.error;
  if (const json::value *bias = f.get("logit_bias")) {
    const json::object *o = bias->if_object();
    if (!o)
      return invalid("logit_bias", "'logit_bias' must be an object of token id -> bias");
    for (const auto &[key, value] : *o) {
      char *end = nullptr;
      const std::string id(key);
      const long token = std::strtol(id.c_str(), &end, 10);
      if (id.empty() || *end != 0 || token < 0 || token > INT32_MAX || !value.is_number())
        return invalid("logit_bias", "'logit_bias' maps token ids to numbers; got \"" + id + "\"");
      p.logitBias.emplace_back(static_cast<int32_t>(token), static_cast<float>(value.to_number<double>()));
    }
  }
  return std::nullopt;
}

std::optional<ApiError> parseStop(Fields &f, serving::RequestParams &p) {
  const json::value *stop = f.get("stop");
  if (stop && stop->is_string()) {
    p.stop = {std::string(stop->get_string())};
  } else if (stop && stop->is_array()) {
    for (const json::value &s : stop->get_array()) {
      if (!s.is_string())
        return invalid("stop", "'stop' must be a string or an array of strings");
      p.stop.emplace_back(s.get_string());
    }
  } else if (stop) {
    return invalid("stop", "'stop' must be a string or an array of strings");
  }
  if (const json::value *ids = f.get("stop_token_ids")) {
    auto parsed = tokenArray(*ids);
    if (!parsed && !(ids->is_array() && ids->get_array().empty()))
      return invalid("stop_token_ids", "'stop_token_ids' must be an array of integers");
    if (parsed)
      p.stopTokenIds = std::move(*parsed);
  }
  return std::nullopt;
}

std::optional<ApiError> checkTopLogprobs(const char *name, int64_t value) {
  if (value < 0 || value > serving::kMaxTopLogprobs)
    return invalid(name, std::string(name) + " must be in [0, " +
                             std::to_string(serving::kMaxTopLogprobs) + "], got " +
                             std::to_string(value));
  return std::nullopt;
}

} // namespace

std::variant<ApiRequest, ApiError> parseRequest(Endpoint endpoint, std::string_view body) {
  boost::system::error_code ec;
  json::value root = json::parse(body, ec);
  if (ec)
    return ApiError{400, "the request body is not valid JSON: " + ec.message(),
                    "invalid_request_error", "", ""};
  const json::object *object = root.if_object();
  if (!object)
    return invalid("", "the request body must be a JSON object");
  Fields f(*object);
  ApiRequest r;
  r.endpoint = endpoint;
  serving::RequestParams &p = r.params;
  f.string("model", r.model);
  if (f.error)
    return *f.error;
  if (auto e = endpoint == Endpoint::Completions ? parsePrompt(f, r) : parseChatInput(*object, r.chat))
    return *e;

  double number = 0;
  int64_t integer = 0;
  if (f.number("temperature", number))
    p.sampling.temperature = static_cast<float>(number);
  if (f.number("top_p", number))
    p.sampling.topP = static_cast<float>(number);
  // Ranges are checked on the value as sent (issue 14: a top_k of 2^32 + 1
  // became 1 when narrowed; n and logprobs errors showed the clamped value).
  if (f.integer("top_k", integer)) {
    if (integer < -1 || integer > INT32_MAX)
      return invalid("top_k", "top_k must be -1 or 0 (off) or a positive count up to " +
                                  std::to_string(INT32_MAX) + ", got " + std::to_string(integer));
    p.sampling.topK = integer == -1 ? 0 : static_cast<int32_t>(integer);
  }
  if (f.integer("seed", integer))
    p.sampling.seed = static_cast<uint64_t>(integer);
  const char *maxTokensName =
      endpoint == Endpoint::Chat && f.get("max_completion_tokens") ? "max_completion_tokens"
                                                                   : "max_tokens";
  if (f.integer(maxTokensName, integer)) {
    // Chat has no echo: at least one token, reported under the name sent.
    if (endpoint == Endpoint::Chat && integer < 1)
      return invalid(maxTokensName, std::string(maxTokensName) + " must be at least 1, got " +
                                        std::to_string(integer));
    p.maxTokens = integer;
    r.maxTokensGiven = true;
  }
  if (f.integer("min_tokens", integer))
    p.minTokens = integer;
  if (f.integer("n", integer)) {
    if (integer < 1 || integer > serving::kMaxChoices)
      return invalid("n", "n must be in [1, " + std::to_string(serving::kMaxChoices) +
                              "], got " + std::to_string(integer));
    p.n = static_cast<int32_t>(integer);
  }
  f.boolean("ignore_eos", p.ignoreEos);
  f.boolean("stream", r.stream);
  f.boolean("return_token_ids", r.returnTokenIds);
  if (f.error)
    return *f.error;
  if (const json::value *options = f.get("stream_options")) {
    const json::object *o = options->if_object();
    if (!o)
      return invalid("stream_options", "'stream_options' must be an object");
    Fields of(*o);
    of.boolean("include_usage", r.includeUsage);
    if (of.error)
      return invalid("stream_options", of.error->message);
  }
  if (auto e = parseLogitsProcessing(f, p))
    return *e;
  if (auto e = parseStructuredOutput(f, p))
    return *e;
  if (endpoint == Endpoint::Completions) {
    // logprobs: the number of alternatives (0 = only the sampled token's).
    if (f.integer("logprobs", integer)) {
      if (auto e = checkTopLogprobs("logprobs", integer))
        return *e;
      p.logprobs = true;
      p.topLogprobs = static_cast<int32_t>(integer);
    }
    f.boolean("echo", r.echo);
    // With echo, logprobs cover the prompt too (its first token has none);
    // max_tokens 0 then scores the prompt alone.
    p.promptLogprobs = r.echo && (p.logprobs || (r.maxTokensGiven && p.maxTokens == 0));
  } else {
    f.boolean("logprobs", p.logprobs);
    if (f.integer("top_logprobs", integer)) {
      if (!p.logprobs)
        return invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      if (auto e = checkTopLogprobs("top_logprobs", integer))
        return *e;
      p.topLogprobs = static_cast<int32_t>(integer);
    }
  }
  if (f.error)
    return *f.error;
  if (auto e = parseStop(f, p))
    return *e;
  return r;
}

std::string applyDefaultChatTemplate(const std::vector<ChatMessage> &messages) {
  std::string prompt;
  for (const ChatMessage &m : messages)
    prompt += "<|" + m.role + "|>\n" + m.content + "\n";
  return prompt + "<|assistant|>\n";
}

std::optional<ApiError> parseChatInput(const json::object &body, ChatInput &chat) {
  const json::value *messages = body.if_contains("messages");
  if (!messages || !messages->is_array() || messages->get_array().empty())
    return invalid("messages", "'messages' must be a non-empty array");
  for (const json::value &m : messages->get_array()) {
    const json::object *object = m.if_object();
    const json::value *role = object ? object->if_contains("role") : nullptr;
    if (!role || !role->is_string())
      return invalid("messages", "each message needs a string 'role'");
    ChatMessage message{std::string(role->get_string()), ""};
    json::object templateMessage = *object;
    const json::value *content = object->if_contains("content");
    if (content && content->is_string()) {
      message.content = std::string(content->get_string());
    } else if (content && content->is_array()) {
      // vLLM's "string" content format: text parts joined by newlines.
      bool first = true;
      for (const json::value &part : content->get_array()) {
        const json::object *p = part.if_object();
        const json::value *text = p ? p->if_contains("text") : nullptr;
        const json::value *type = p ? p->if_contains("type") : nullptr;
        if (!text || !text->is_string() || !type || !type->is_string() ||
            type->get_string() != "text")
          return invalid("messages", "only text content parts are supported");
        if (!first)
          message.content += "\n";
        first = false;
        message.content += std::string(text->get_string());
      }
      // templateMessage keeps the parts: chatPrompt joins them unless the
      // template loops over them.
    } else if (content && !content->is_null()) {
      return invalid("messages", "message 'content' must be a string or an array of "
                                 "text parts");
    }
    if (json::value *calls = templateMessage.if_contains("tool_calls")) {
      if (!calls->is_array() && !calls->is_null())
        return invalid("messages", "'tool_calls' must be an array");
      if (calls->is_array())
        for (json::value &call : calls->get_array()) {
          json::object *c = call.if_object();
          json::value *function = c ? c->if_contains("function") : nullptr;
          if (!function || !function->is_object() || !function->get_object().contains("name"))
            return invalid("messages", "each tool call needs a 'function' with a 'name'");
          // Templates index the arguments (tool_call.arguments|items), so a
          // JSON string becomes the object it encodes, as in vLLM.
          json::value *arguments = function->get_object().if_contains("arguments");
          if (arguments && arguments->is_string()) {
            boost::system::error_code ec;
            json::value parsed = json::parse(arguments->get_string(), ec);
            if (!ec && parsed.is_object())
              *arguments = std::move(parsed);
          }
        }
    }
    chat.messages.push_back(std::move(message));
    chat.templateMessages.push_back(std::move(templateMessage));
  }
  if (const json::value *flag = body.if_contains("add_generation_prompt"); flag && !flag->is_null()) {
    if (!flag->is_bool())
      return invalid("add_generation_prompt", "'add_generation_prompt' must be a boolean");
    chat.addGenerationPrompt = flag->get_bool();
  }
  for (const char *name : {"tools", "documents"}) {
    const json::value *v = body.if_contains(name);
    if (!v || v->is_null())
      continue;
    if (!v->is_array())
      return invalid(name, std::string("'") + name + "' must be an array");
    chat.templateVariables[name] = *v;
    if (std::string_view(name) == "tools")
      chat.hasTools = !v->get_array().empty();
  }
  if (const json::value *choice = body.if_contains("tool_choice"); choice && !choice->is_null()) {
    const json::object *named = choice->if_object();
    const json::value *function = named ? named->if_contains("function") : nullptr;
    const json::value *name = function && function->is_object() ? function->get_object().if_contains("name") : nullptr;
    if (choice->is_string() && choice->get_string() == "none")
      chat.toolChoiceNone = true;
    else if (choice->is_string() && choice->get_string() == "required")
      chat.toolChoiceRequired = true;
    else if (name && name->is_string())
      chat.toolChoiceFunction = std::string(name->get_string());
    else if (!(choice->is_string() && choice->get_string() == "auto"))
      return invalid("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                                    "{\"type\": \"function\", \"function\": {\"name\": ...}}");
  }
  if (const json::value *kwargs = body.if_contains("chat_template_kwargs"); kwargs && !kwargs->is_null()) {
    if (!kwargs->is_object())
      return invalid("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    for (const auto &[key, value] : kwargs->get_object())
      chat.templateVariables[key] = value;
  }
  return std::nullopt;
}

std::optional<ApiError> applyToolChoice(const ChatFormat &format, const ChatInput &chat,
                                        serving::RequestParams &params) {
  if (!chat.toolChoiceRequired && chat.toolChoiceFunction.empty())
    return std::nullopt;
  if (!format.toolCalls)
    return invalid("tool_choice", "forcing a tool call needs the server's --tool-call-parser");
  const json::value *tools = chat.templateVariables.if_contains("tools");
  if (!tools || !tools->is_array() || tools->get_array().empty())
    return invalid("tool_choice", "'tool_choice' forces a call but 'tools' is empty");
  json::array chosen;
  for (const json::value &tool : tools->get_array()) {
    const json::value *function = tool.is_object() ? tool.get_object().if_contains("function") : nullptr;
    const json::value *name = function && function->is_object() ? function->get_object().if_contains("name") : nullptr;
    if (chat.toolChoiceRequired || (name && name->is_string() && name->get_string() == chat.toolChoiceFunction))
      chosen.push_back(tool);
  }
  if (chosen.empty())
    return invalid("tool_choice", "no tool is named '" + chat.toolChoiceFunction + "'");
  auto grammar = serving::OutputGrammar::toolCall(*format.toolCalls, chosen);
  if (!grammar)
    return invalid("tool_choice", grammar.message());
  params.grammar = std::move(*grammar);
  return std::nullopt;
}

std::variant<std::string, ApiError> chatPrompt(const ChatFormat &format, const ChatInput &chat) {
  if (!format.chatTemplate)
    return applyDefaultChatTemplate(chat.messages);
  serving::ChatTemplateInputs inputs = format.inputs;
  inputs.addGenerationPrompt = chat.addGenerationPrompt;
  inputs.extra = chat.templateVariables;
  const serving::ChatTemplate &tmpl =
      chat.hasTools && format.toolUseTemplate ? *format.toolUseTemplate : *format.chatTemplate;
  const json::array *messages = &chat.templateMessages;
  json::array joined;
  const bool anyParts = std::any_of(chat.templateMessages.begin(), chat.templateMessages.end(),
                                    [](const json::value &m) {
                                      const json::value *c = m.as_object().if_contains("content");
                                      return c && c->is_array();
                                    });
  if (anyParts && !tmpl.takesContentParts()) {
    joined = chat.templateMessages;
    for (size_t i = 0; i < joined.size(); ++i)
      if (json::value *content = joined[i].as_object().if_contains("content"); content && content->is_array())
        *content = chat.messages[i].content;
    messages = &joined;
  }
  auto prompt = tmpl.render(*messages, inputs);
  if (!prompt)
    return ApiError{400, "the model's chat template rejected the messages: " + prompt.message(),
                    "invalid_request_error", "messages", ""};
  return std::move(*prompt);
}

namespace {

std::string tokenText(const ResponseContext &ctx, int32_t id) {
  auto text = ctx.tokenizer->decode(std::span<const int32_t>(&id, 1));
  return text ? *text : std::string();
}

json::value completionLogprobs(const ResponseContext &ctx, const ChoiceResult &c,
                               size_t textOffsetStart = 0, const PromptContext *echo = nullptr) {
  json::array tokens, logprobs, tops, offsets;
  size_t offset = textOffsetStart;
  if (echo) {
    // The prompt's tokens first: the first has no logprob (null), the rest
    // their logprob and alternatives, plus the token itself, as vLLM shows.
    for (size_t i = 0; i < echo->ids.size(); ++i) {
      std::string text = tokenText(ctx, echo->ids[i]);
      tokens.emplace_back(text);
      offsets.emplace_back(offset);
      offset += text.size();
      if (i == 0 || i - 1 >= c.promptLogprobs.size()) {
        logprobs.emplace_back(nullptr);
        tops.emplace_back(nullptr);
        continue;
      }
      logprobs.emplace_back(c.promptLogprobs[i - 1]);
      json::object top;
      if (i - 1 < c.promptTopLogprobs.size())
        for (const serving::TopLogprob &t : c.promptTopLogprobs[i - 1])
          top[tokenText(ctx, t.tokenId)] = t.logprob;
      if (ctx.request->params.topLogprobs > 0)
        top[text] = c.promptLogprobs[i - 1];
      tops.emplace_back(std::move(top));
    }
  }
  for (size_t i = 0; i < c.tokenIds.size() && i < c.logprobs.size(); ++i) {
    std::string text = tokenText(ctx, c.tokenIds[i]);
    tokens.emplace_back(text);
    logprobs.emplace_back(c.logprobs[i]);
    json::object top;
    for (const serving::TopLogprob &t : c.topLogprobs[i])
      top[tokenText(ctx, t.tokenId)] = t.logprob;
    tops.emplace_back(std::move(top));
    offsets.emplace_back(offset);
    offset += text.size();
  }
  return json::object{{"tokens", std::move(tokens)},
                      {"token_logprobs", std::move(logprobs)},
                      {"top_logprobs", std::move(tops)},
                      {"text_offset", std::move(offsets)}};
}

/// Chat logprobs' "bytes": the token's own bytes, so that the tokens of one
/// character (each alone decoding to U+FFFD) join into it, as OpenAI means
/// them to.
json::array tokenBytes(const ResponseContext &ctx, int32_t id) {
  auto raw = ctx.tokenizer->tokenBytes(id);
  json::array bytes;
  for (unsigned char b : raw ? *raw : std::string())
    bytes.emplace_back(static_cast<int>(b));
  return bytes;
}

json::value chatLogprobs(const ResponseContext &ctx, const ChoiceResult &c) {
  json::array content;
  for (size_t i = 0; i < c.tokenIds.size() && i < c.logprobs.size(); ++i) {
    std::string text = tokenText(ctx, c.tokenIds[i]);
    json::array tops;
    for (const serving::TopLogprob &t : c.topLogprobs[i]) {
      std::string topText = tokenText(ctx, t.tokenId);
      tops.emplace_back(json::object{
          {"token", topText}, {"logprob", t.logprob}, {"bytes", tokenBytes(ctx, t.tokenId)}});
    }
    content.emplace_back(json::object{{"token", text},
                                      {"logprob", c.logprobs[i]},
                                      {"bytes", tokenBytes(ctx, c.tokenIds[i])},
                                      {"top_logprobs", std::move(tops)}});
  }
  return json::object{{"content", std::move(content)}};
}

json::object envelope(const ResponseContext &ctx, const char *object) {
  return json::object{{"id", ctx.id},
                      {"object", object},
                      {"created", ctx.created},
                      {"model", ctx.model}};
}

json::object usage(int64_t promptTokens, int64_t completionTokens) {
  return json::object{{"prompt_tokens", promptTokens},
                      {"completion_tokens", completionTokens},
                      {"total_tokens", promptTokens + completionTokens}};
}

bool isChat(const ResponseContext &ctx) { return ctx.request->endpoint == Endpoint::Chat; }


/// OpenAI's tool_calls: streamed deltas carry their index.
json::array toolCallsJson(const std::vector<serving::ToolCall> &calls, size_t firstIndex,
                          bool withIndex) {
  json::array out;
  for (size_t k = 0; k < calls.size(); ++k) {
    json::object call{{"id", calls[k].id},
                      {"type", "function"},
                      {"function", json::object{{"name", calls[k].name},
                                                {"arguments", calls[k].arguments}}}};
    if (withIndex)
      call["index"] = firstIndex + k;
    out.emplace_back(std::move(call));
  }
  return out;
}

} // namespace

uint64_t toolCallIdSeed(const ResponseContext &ctx, size_t choice) {
  return std::hash<std::string>{}(ctx.id) ^ (0x9e3779b97f4a7c15ULL * (choice + 1));
}

std::string responseJson(const ResponseContext &ctx, const std::vector<ChoiceResult> &choices) {
  const bool chat = isChat(ctx);
  json::object out = envelope(ctx, chat ? "chat.completion" : "text_completion");
  json::array list;
  int64_t completionTokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult &c = choices[i];
    completionTokens += static_cast<int64_t>(c.tokenIds.size());
    json::object choice{{"index", i}, {"finish_reason", c.finishReason}};
    const bool withLogprobs = ctx.request->params.logprobs;
    if (chat && ctx.toolCalls) {
      const serving::ParsedOutput parsed =
          serving::parseToolCalls(*ctx.toolCalls, c.text, toolCallIdSeed(ctx, i));
      json::object message{{"role", "assistant"},
                           {"content", parsed.content ? json::value(*parsed.content) : json::value(nullptr)}};
      if (!parsed.toolCalls.empty()) {
        message["tool_calls"] = toolCallsJson(parsed.toolCalls, 0, false);
        if (c.finishReason == "stop")
          choice["finish_reason"] = "tool_calls";
      }
      choice["message"] = std::move(message);
      choice["logprobs"] = withLogprobs ? chatLogprobs(ctx, c) : json::value(nullptr);
    } else if (chat) {
      choice["message"] = json::object{{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = withLogprobs ? chatLogprobs(ctx, c) : json::value(nullptr);
    } else {
      const PromptContext *echo = ctx.request->echo ? &ctx.prompts.at(c.prompt) : nullptr;
      choice["text"] = echo ? echo->text + c.text : c.text;
      choice["logprobs"] = withLogprobs ? completionLogprobs(ctx, c, 0, echo) : json::value(nullptr);
    }
    if (ctx.request->returnTokenIds) {
      choice["token_ids"] = json::value_from(c.tokenIds);
      choice["prompt_token_ids"] = json::value_from(ctx.prompts.at(c.prompt).ids);
    }
    list.emplace_back(std::move(choice));
  }
  out["choices"] = std::move(list);
  out["usage"] = usage(ctx.promptTokens(), completionTokens);
  return json::serialize(out);
}

std::optional<std::string> chunkJson(const ResponseContext &ctx,
                                     const serving::SequenceEvent &event, StreamedChoice &sent,
                                     uint32_t index, size_t prompt,
                                     const std::vector<serving::ToolCall> &toolCalls,
                                     size_t firstToolCall) {
  const bool first = !sent.sentFirst;
  const bool chat = isChat(ctx);
  const PromptContext *echo = !chat && first && ctx.request->echo ? &ctx.prompts.at(prompt) : nullptr;
  if (!first && event.text.empty() && !event.finish && !event.logprob &&
      !ctx.request->returnTokenIds && toolCalls.empty())
    return std::nullopt; // a token whose text is held back: nothing to say yet
  json::object out = envelope(ctx, chat ? "chat.completion.chunk" : "text_completion");
  json::object choice{{"index", index}};
  const bool calledTools = ctx.toolCalls && firstToolCall + toolCalls.size() > 0;
  choice["finish_reason"] =
      event.finish ? json::value(calledTools && *event.finish == serving::FinishReason::Stop
                                     ? "tool_calls"
                                     : serving::finishReasonName(*event.finish))
                   : json::value(nullptr);
  ChoiceResult one;
  if (event.tokenId && event.logprob) {
    one.tokenIds = {*event.tokenId};
    one.logprobs = {*event.logprob};
    one.topLogprobs = {event.topLogprobs};
  }
  one.promptLogprobs = event.promptLogprobs;
  one.promptTopLogprobs = event.promptTopLogprobs;
  const bool withLogprobs = event.logprob || (echo && ctx.request->params.logprobs);
  if (chat) {
    json::object delta;
    if (first)
      delta["role"] = "assistant";
    if (!event.text.empty() || (first && toolCalls.empty()))
      delta["content"] = event.text;
    if (!toolCalls.empty())
      delta["tool_calls"] = toolCallsJson(toolCalls, firstToolCall, true);
    choice["delta"] = std::move(delta);
    choice["logprobs"] = event.logprob ? chatLogprobs(ctx, one) : json::value(nullptr);
  } else {
    // text_offset counts from the start of the choice's text, as in a
    // whole response (it restarted at 0 in every chunk).
    std::string text = echo ? echo->text + event.text : event.text;
    choice["logprobs"] =
        withLogprobs ? completionLogprobs(ctx, one, sent.textSent, echo) : json::value(nullptr);
    sent.textSent += text.size();
    choice["text"] = std::move(text);
  }
  if (ctx.request->returnTokenIds)
    choice["token_ids"] = event.tokenId ? json::array{*event.tokenId} : json::array{};
  out["choices"] = json::array{std::move(choice)};
  sent.sentFirst = true;
  return json::serialize(out);
}

std::string usageChunkJson(const ResponseContext &ctx, int64_t completionTokens) {
  json::object out = envelope(ctx, isChat(ctx) ? "chat.completion.chunk" : "text_completion");
  out["choices"] = json::array{};
  out["usage"] = usage(ctx.promptTokens(), completionTokens);
  return json::serialize(out);
}

} // namespace llmir::openai
