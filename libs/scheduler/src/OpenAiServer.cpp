#include "llmir/scheduler/OpenAiServer.h"

#include "CompletionJob.h"
#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/model/Tokenizer.h"
#include "llmir/support/ClusterAuth.h"

#include <boost/json.hpp>

#include <chrono>

namespace llmir::scheduler {

namespace {

net::HttpResponse errorResponse(const openai::ApiError &error) {
  return net::HttpResponse::json(error.status, openai::errorJson(error));
}

/// A refusal the client should retry: the OpenAI error body plus Retry-After.
net::HttpResponse refusalResponse(const serving::Refusal &refusal) {
  net::HttpResponse response = errorResponse(
      {refusal.httpStatus, refusal.message,
       refusal.httpStatus == 429 ? "rate_limit_error" : "service_unavailable", "", refusal.code});
  response.headers.emplace_back(
      "Retry-After", serving::retryAfterHeader(std::chrono::seconds(refusal.retryAfterSeconds)));
  return response;
}

int64_t unixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

} // namespace

OpenAiServer::OpenAiServer(OpenAiServerOptions options, const model::Tokenizer &tokenizer,
                           serving::ReplicaRouter &router, Metrics &metrics)
    : options_(std::move(options)), tokenizer_(tokenizer), router_(router),
      metrics_(metrics), keyLimiter_(options_.keyLimits) {}

void OpenAiServer::addRoutes(net::HttpServer &server) {
  server.route("POST", "/v1/completions", [this](const net::HttpRequest &r) {
    return complete(r, static_cast<int>(openai::Endpoint::Completions));
  });
  server.route("POST", "/v1/chat/completions", [this](const net::HttpRequest &r) {
    return complete(r, static_cast<int>(openai::Endpoint::Chat));
  });
  server.route("GET", "/v1/models", [this](const net::HttpRequest &r) {
    if (!authorized(r))
      return errorResponse({401, "Incorrect API key provided.", "invalid_request_error",
                            "", "invalid_api_key"});
    return models();
  });
  server.route("POST", "/tokenize", [this](const net::HttpRequest &r) { return tokenize(r); });
  server.route("POST", "/detokenize", [this](const net::HttpRequest &r) { return detokenize(r); });
  net::addProbeRoutes(server, {.notReady = [this]() -> std::optional<std::string> {
                                 if (!ready_)
                                   return "not ready";
                                 if (!router_.waitForReplica(std::chrono::milliseconds(0)))
                                   return "no replica ready";
                                 return std::nullopt;
                               },
                               .metricsText = [this] {
                                 metrics_.update(router_.stats());
                                 metrics_.setRequestsInFlight(
                                     static_cast<int64_t>(keyLimiter_.totalInFlight()));
                                 if (options_.refreshMetrics)
                                   options_.refreshMetrics();
                                 return metrics_.render();
                               }});
}

net::HttpResponse OpenAiServer::models() const {
  boost::json::object model{{"id", options_.modelName},
                            {"object", "model"},
                            {"created", unixSeconds()},
                            {"owned_by", "llmir"},
                            {"max_model_len", router_.limits().maxModelLen}};
  boost::json::object list{{"object", "list"}, {"data", boost::json::array{model}}};
  return net::HttpResponse::json(200, boost::json::serialize(list));
}

bool OpenAiServer::authorized(const net::HttpRequest &http) const {
  if (options_.apiKey.empty() && options_.apiKeys.empty())
    return true;
  // Constant time: how far a guess matched must not show in the answer time;
  // every key is compared, so neither does which one matched.
  const std::string sent = http.header("authorization").value_or("");
  bool match = !options_.apiKey.empty() &&
               auth::constantTimeEqual(sent, "Bearer " + options_.apiKey);
  for (const std::string &key : options_.apiKeys)
    match |= auth::constantTimeEqual(sent, "Bearer " + key);
  return match;
}

std::string OpenAiServer::bearerKey(const net::HttpRequest &http) {
  const std::string sent = http.header("authorization").value_or("");
  return sent.starts_with("Bearer ") ? sent.substr(7) : std::string();
}

namespace {

const openai::ApiError kUnauthorized{401, "Incorrect API key provided.",
                                     "invalid_request_error", "", "invalid_api_key"};

/// The body as a JSON object, or the 400 that says why not.
std::variant<boost::json::object, openai::ApiError> jsonObject(const std::string &body) {
  boost::system::error_code ec;
  boost::json::value root = boost::json::parse(body, ec);
  if (ec)
    return openai::ApiError{400, "the request body is not valid JSON: " + ec.message(),
                            "invalid_request_error", "", ""};
  if (!root.is_object())
    return openai::ApiError{400, "the request body must be a JSON object",
                            "invalid_request_error", "", ""};
  return std::move(root.as_object());
}

} // namespace

net::HttpResponse OpenAiServer::tokenize(const net::HttpRequest &http) const {
  if (!authorized(http))
    return errorResponse(kUnauthorized);
  auto parsed = jsonObject(http.body);
  if (auto *error = std::get_if<openai::ApiError>(&parsed))
    return errorResponse(*error);
  const boost::json::object &body = std::get<boost::json::object>(parsed);
  if (const auto *model = body.if_contains("model");
      model && model->is_string() && !model->as_string().empty() && model->as_string() != options_.modelName)
    return errorResponse({404, "The model `" + std::string(model->as_string()) + "` does not exist.",
                          "invalid_request_error", "model", "model_not_found"});
  std::string text;
  const char *param = "prompt";
  if (body.contains("messages")) {
    param = "messages";
    openai::ChatInput chat;
    if (auto error = openai::parseChatInput(body, chat))
      return errorResponse(*error);
    auto prompt = openai::chatPrompt(options_.chatFormat, chat);
    if (auto *error = std::get_if<openai::ApiError>(&prompt))
      return errorResponse(*error);
    text = std::move(std::get<std::string>(prompt));
  } else {
    const auto *prompt = body.if_contains("prompt");
    if (!prompt || !prompt->is_string())
      return errorResponse({400, "'prompt' (a string) or 'messages' is required",
                            "invalid_request_error", "prompt", ""});
    text = std::string(prompt->as_string());
  }
  auto ids = tokenizer_.encode(text);
  if (!ids)
    return errorResponse({400, ids.message(), "invalid_request_error", param, ""});
  boost::json::array tokens;
  for (int32_t id : *ids)
    tokens.emplace_back(id);
  boost::json::value tokenStrs = nullptr;
  if (const auto *flag = body.if_contains("return_token_strs"); flag && flag->is_bool() && flag->as_bool()) {
    boost::json::array strs;
    for (int32_t id : *ids) {
      auto piece = tokenizer_.decode(std::span<const int32_t>(&id, 1));
      strs.emplace_back(piece ? *piece : std::string());
    }
    tokenStrs = std::move(strs);
  }
  boost::json::object out{{"count", ids->size()},
                          {"max_model_len", router_.limits().maxModelLen},
                          {"tokens", std::move(tokens)},
                          {"token_strs", std::move(tokenStrs)}};
  return net::HttpResponse::json(200, boost::json::serialize(out));
}

net::HttpResponse OpenAiServer::detokenize(const net::HttpRequest &http) const {
  if (!authorized(http))
    return errorResponse(kUnauthorized);
  auto parsed = jsonObject(http.body);
  if (auto *error = std::get_if<openai::ApiError>(&parsed))
    return errorResponse(*error);
  const boost::json::object &body = std::get<boost::json::object>(parsed);
  const auto *tokens = body.if_contains("tokens");
  std::vector<int32_t> ids;
  bool valid = tokens && tokens->is_array();
  if (valid)
    for (const auto &t : tokens->as_array()) {
      if (!t.is_int64() || t.as_int64() < 0 || t.as_int64() > INT32_MAX) {
        valid = false;
        break;
      }
      ids.push_back(static_cast<int32_t>(t.as_int64()));
    }
  if (!valid)
    return errorResponse({400, "'tokens' must be an array of token ids", "invalid_request_error",
                          "tokens", ""});
  auto text = tokenizer_.decode(ids);
  if (!text)
    return errorResponse({400, text.message(), "invalid_request_error", "tokens", ""});
  return net::HttpResponse::json(200, boost::json::serialize(boost::json::object{{"prompt", *text}}));
}

net::HttpResponse OpenAiServer::complete(const net::HttpRequest &http, int endpointId) {
  const auto endpoint = static_cast<openai::Endpoint>(endpointId);
  if (!authorized(http))
    return errorResponse({401, "Incorrect API key provided.", "invalid_request_error", "",
                          "invalid_api_key"});
  if (!ready_)
    return errorResponse({503, "the model is not loaded yet", "service_unavailable", "", ""});
  // The key's slot is held from here (waiting for a replica included) until
  // the job ends, or released by any refusal below as `lease` goes.
  auto acquired = keyLimiter_.acquire(bearerKey(http));
  if (auto *refusal = std::get_if<serving::Refusal>(&acquired)) {
    metrics_.observeRefusal(refusal->code);
    return refusalResponse(*refusal);
  }
  auto lease = std::get<serving::KeyConcurrencyLimiter::Lease>(std::move(acquired));
  // Blocks this HTTP thread at most noReplicaTimeout (size http.threads for
  // the clients that may wait while no replica serves).
  if (!router_.waitForReplica(options_.noReplicaTimeout)) {
    metrics_.observeRefusal("no_replica");
    return refusalResponse(serving::noReplica(options_.noReplicaTimeout, options_.admission));
  }
  auto parsed = openai::parseRequest(endpoint, http.body);
  if (auto *error = std::get_if<openai::ApiError>(&parsed))
    return errorResponse(*error);
  openai::ApiRequest request = std::move(std::get<openai::ApiRequest>(parsed));
  if (auto refusal = serving::shedLoad(router_.stats().numWaiting, request.params.n,
                                       options_.admission)) {
    metrics_.observeRefusal(refusal->code);
    return refusalResponse(*refusal);
  }
  if (!request.model.empty() && request.model != options_.modelName)
    return errorResponse({404, "The model `" + request.model + "` does not exist.",
                          "invalid_request_error", "model", "model_not_found"});

  const char *promptParam = endpoint == openai::Endpoint::Chat ? "messages" : "prompt";
  std::vector<openai::PromptContext> prompts;
  if (endpoint == openai::Endpoint::Chat) {
    if (auto error = openai::applyToolChoice(options_.chatFormat, request.chat, request.params))
      return errorResponse(*error);
    auto prompt = openai::chatPrompt(options_.chatFormat, request.chat);
    if (auto *error = std::get_if<openai::ApiError>(&prompt))
      return errorResponse(*error);
    request.prompts.push_back({std::move(std::get<std::string>(prompt)), {}});
  }
  for (openai::PromptInput &input : request.prompts) {
    openai::PromptContext prompt;
    if (input.text) {
      auto ids = tokenizer_.encode(*input.text);
      if (!ids)
        return errorResponse({400, ids.message(), "invalid_request_error", promptParam, ""});
      prompt.ids = std::move(*ids);
      prompt.text = std::move(*input.text);
    } else {
      prompt.ids = std::move(input.ids);
      if (request.echo) {
        auto text = tokenizer_.decode(prompt.ids);
        prompt.text = text ? *text : std::string();
      }
    }
    prompts.push_back(std::move(prompt));
  }
  request.prompts.clear();
  // Every prompt of a batch has n choices; bound the sequences one request adds.
  constexpr size_t kMaxSequencesPerRequest = 1024;
  if (prompts.size() * static_cast<size_t>(std::max(request.params.n, 1)) > kMaxSequencesPerRequest)
    return errorResponse({400,
                          "a request may ask for at most " + std::to_string(kMaxSequencesPerRequest) +
                              " choices in all (prompts x n)",
                          "invalid_request_error", "n", ""});
  const serving::RequestLimits limits = router_.limits();
  if (!request.maxTokensGiven) {
    size_t longest = 0;
    for (const openai::PromptContext &p : prompts)
      longest = std::max(longest, p.ids.size());
    const int64_t room = limits.maxModelLen - static_cast<int64_t>(longest);
    // At least 1, so a prompt that fills the context is reported as such.
    request.params.maxTokens = std::max<int64_t>(
        1, endpoint == openai::Endpoint::Chat ? room
                                      : std::min(options_.defaultCompletionTokens, room));
  }
  for (const openai::PromptContext &p : prompts) {
    request.params.promptIds = p.ids;
    if (auto error = serving::validateRequest(request.params, limits)) {
      std::string param = error->param == "prompt" ? promptParam : error->param;
      return errorResponse({400, error->message, "invalid_request_error", param, ""});
    }
  }
  request.params.promptIds.clear(); // the job keeps them in its context

  openai::ResponseContext context;
  const uint64_t serial = nextId_++;
  context.id = std::string(endpoint == openai::Endpoint::Chat ? "chatcmpl-" : "cmpl-") +
               http.requestId + "-" + std::to_string(serial);
  context.created = unixSeconds();
  context.model = options_.modelName;
  context.tokenizer = &tokenizer_;
  context.prompts = std::move(prompts);
  if (endpoint == openai::Endpoint::Chat && options_.chatFormat.toolCalls && request.chat.hasTools &&
      !request.chat.toolChoiceNone)
    context.toolCalls = options_.chatFormat.toolCalls;
  const bool stream = request.stream;
  auto job = std::make_shared<CompletionJob>(std::move(request), std::move(context),
                                             metrics_, router_, std::move(lease));
  auto start = [job](std::shared_ptr<net::ResponseStream> out) {
    CompletionJob::start(job, std::move(out));
  };
  if (stream)
    return net::HttpResponse::sse(start);
  // Not streamed, but answered from the scheduler's thread when done, so no
  // HTTP thread waits on generation.
  net::HttpResponse response;
  response.contentType = "application/json";
  response.stream = start;
  return response;
}

} // namespace llmir::scheduler
