// The scheduler's HTTP surface: the OpenAI routes over the replica router,
// plus /healthz, /readyz and /metrics.
#pragma once

#include "llmir/scheduler/Metrics.h"
#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/net/Http.h"
#include "llmir/serving/Admission.h"
#include "llmir/serving/ReplicaRouter.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace llmir::model {
class Tokenizer;
}

namespace llmir::scheduler {

struct OpenAiServerOptions {
  std::string modelName;
  /// Empty (and no apiKeys): no authentication; otherwise
  /// "Authorization: Bearer <key>" with this key or one of apiKeys.
  std::string apiKey;
  std::vector<std::string> apiKeys;
  /// Requests in flight per API key (the bearer token; "" without one).
  serving::KeyLimitOptions keyLimits;
  /// max_tokens when a completions request leaves it out (OpenAI's 16).
  int64_t defaultCompletionTokens = 16;
  /// With no replica ready, a request waits this long for one, then 503.
  std::chrono::milliseconds noReplicaTimeout{10000};
  /// Load shedding (429) and the Retry-After of 429 and 503.
  serving::AdmissionOptions admission;
  /// How /v1/chat/completions turns messages into a prompt.
  openai::ChatFormat chatFormat;
  /// Refreshes the cluster metrics before /metrics renders.
  std::function<void()> refreshMetrics;
};

class OpenAiServer {
public:
  OpenAiServer(OpenAiServerOptions options, const model::Tokenizer &tokenizer,
               serving::ReplicaRouter &router, Metrics &metrics);

  /// Registers every route on `server` (before it starts).
  void addRoutes(net::HttpServer &server);
  void setReady(bool ready) { ready_ = ready; }

private:
  net::HttpResponse complete(const net::HttpRequest &http, int endpoint);
  net::HttpResponse models() const;
  /// vLLM's /tokenize: the prompt tokens a completions ("prompt") or chat
  /// ("messages") request would run on; and /detokenize: their text.
  net::HttpResponse tokenize(const net::HttpRequest &http) const;
  net::HttpResponse detokenize(const net::HttpRequest &http) const;
  bool authorized(const net::HttpRequest &http) const;
  /// The bearer token the request carries ("" when none): its API key.
  static std::string bearerKey(const net::HttpRequest &http);

  OpenAiServerOptions options_;
  const model::Tokenizer &tokenizer_;
  serving::ReplicaRouter &router_;
  Metrics &metrics_;
  serving::KeyConcurrencyLimiter keyLimiter_;
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> nextId_{1};
};

} // namespace llmir::scheduler
