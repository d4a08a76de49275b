// The scheduler's HTTP surface: the OpenAI routes over one BatchScheduler,
// plus /healthz, /readyz and /metrics.
#pragma once

#include "Metrics.h"

#include "llmir/net/Http.h"
#include "llmir/serving/BatchScheduler.h"

#include <atomic>
#include <string>

namespace llmir::model {
class Tokenizer;
}

namespace llmir::scheduler {

struct OpenAiServerOptions {
  std::string modelName;
  /// Empty: no authentication; otherwise "Authorization: Bearer <key>".
  std::string apiKey;
  /// max_tokens when a completions request leaves it out (OpenAI's 16).
  int64_t defaultCompletionTokens = 16;
};

class OpenAiServer {
public:
  OpenAiServer(OpenAiServerOptions options, const model::Tokenizer &tokenizer,
               serving::BatchScheduler &scheduler, Metrics &metrics);

  /// Registers every route on `server` (before it starts).
  void addRoutes(net::HttpServer &server);
  void setReady(bool ready) { ready_ = ready; }

private:
  net::HttpResponse complete(const net::HttpRequest &http, int endpoint);
  net::HttpResponse models() const;

  OpenAiServerOptions options_;
  const model::Tokenizer &tokenizer_;
  serving::BatchScheduler &scheduler_;
  Metrics &metrics_;
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> nextId_{1};
};

} // namespace llmir::scheduler
