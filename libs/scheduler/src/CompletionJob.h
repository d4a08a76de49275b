// One OpenAI request in flight: receives the batch manager's events for its
// choices and turns them into SSE chunks, or into one JSON body at the end,
// while feeding the latency and token metrics.
#pragma once

#include "llmir/scheduler/Metrics.h"
#include "llmir/openai/OpenAiProtocol.h"

#include "llmir/net/Http.h"
#include "llmir/serving/Admission.h"
#include "llmir/serving/ReplicaRouter.h"

#include <chrono>
#include <memory>
#include <mutex>

namespace llmir::scheduler {

class CompletionJob {
public:
  /// `keySlot` (its API key's concurrency slot) is released when the last
  /// choice finishes, which a client going away also leads to (its request
  /// is cancelled), or at the latest when the job is destroyed.
  CompletionJob(openai::ApiRequest request, openai::ResponseContext context, Metrics &metrics,
                serving::ReplicaRouter &router, serving::KeyConcurrencyLimiter::Lease keySlot);

  /// Queues the request and answers on `stream` (SSE or one JSON body);
  /// cancels the request when the client goes away.
  static void start(std::shared_ptr<CompletionJob> job,
                    std::shared_ptr<net::ResponseStream> stream);

private:
  void onEvent(size_t prompt, const serving::SequenceEvent &event);
  void finishLocked();

  openai::ApiRequest request_;
  openai::ResponseContext context_;
  Metrics &metrics_;
  serving::ReplicaRouter &router_;
  serving::KeyConcurrencyLimiter::Lease keySlot_;

  std::mutex mutex_;
  std::shared_ptr<net::ResponseStream> stream_;
  std::vector<openai::ChoiceResult> choices_;
  std::vector<openai::StreamedChoice> streamed_;
  std::vector<std::optional<serving::ToolCallStream>> toolStreams_; // streamed tool calls
  std::vector<std::chrono::steady_clock::time_point> lastToken_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool sawFirstToken_ = false;
  int32_t unfinished_ = 0;
  int64_t generated_ = 0;
};

} // namespace llmir::scheduler
