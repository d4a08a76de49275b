#include "CompletionJob.h"

namespace llmir::scheduler {

CompletionJob::CompletionJob(openai::ApiRequest request, openai::ResponseContext context,
                             Metrics &metrics, serving::ReplicaRouter &router,
                             serving::KeyConcurrencyLimiter::Lease keySlot)
    : request_(std::move(request)), context_(std::move(context)), metrics_(metrics),
      router_(router), keySlot_(std::move(keySlot)) {
  context_.request = &request_;
  // A batch of prompts has n choices each, numbered prompt * n + i.
  const size_t n = static_cast<size_t>(request_.params.n) * context_.prompts.size();
  choices_.resize(n);
  for (size_t i = 0; i < n; ++i)
    choices_[i].prompt = i / static_cast<size_t>(request_.params.n);
  streamed_.assign(n, openai::StreamedChoice{});
  toolStreams_.resize(n);
  lastToken_.resize(n);
  unfinished_ = static_cast<int32_t>(n);
}

void CompletionJob::start(std::shared_ptr<CompletionJob> job,
                          std::shared_ptr<net::ResponseStream> stream) {
  job->stream_ = stream;
  serving::ReplicaRouter *router = &job->router_;
  std::vector<uint64_t> ids;
  for (size_t prompt = 0; prompt < job->context_.prompts.size(); ++prompt) {
    serving::RequestParams params = job->request_.params;
    params.promptIds = job->context_.prompts[prompt].ids;
    ids.push_back(router->addRequest(std::move(params),
                                        [job, prompt](const serving::SequenceEvent &e) {
                                          job->onEvent(prompt, e);
                                        }));
  }
  // Capture no job here: the stream keeps this callback and the job keeps
  // the stream.
  stream->onClientGone([router, ids] {
    for (uint64_t id : ids)
      router->cancel(id);
  });
}

void CompletionJob::onEvent(size_t prompt, const serving::SequenceEvent &event) {
  std::lock_guard<std::mutex> lock(mutex_);
  const size_t i = prompt * static_cast<size_t>(request_.params.n) + event.index;
  const auto now = std::chrono::steady_clock::now();
  if (event.tokenId) {
    if (!sawFirstToken_)
      metrics_.observeFirstToken(std::chrono::duration<double>(now - start_).count());
    else if (lastToken_[i] != std::chrono::steady_clock::time_point())
      metrics_.observeInterToken(std::chrono::duration<double>(now - lastToken_[i]).count());
    sawFirstToken_ = true;
    lastToken_[i] = now;
  }
  openai::ChoiceResult &choice = choices_[i];
  if (request_.stream && context_.toolCalls) {
    // Content is released as soon as it cannot start a call; calls whole.
    auto &tools = toolStreams_[i];
    if (!tools)
      tools.emplace(*context_.toolCalls, openai::toolCallIdSeed(context_, i));
    const size_t before = tools->numToolCalls();
    serving::ToolCallStream::Delta delta = tools->push(event.text);
    if (event.finish) {
      serving::ToolCallStream::Delta rest = tools->finish();
      delta.content += rest.content;
      for (auto &call : rest.toolCalls)
        delta.toolCalls.push_back(std::move(call));
    }
    serving::SequenceEvent shown = event;
    shown.text = std::move(delta.content);
    if (auto chunk = openai::chunkJson(context_, shown, streamed_[i], static_cast<uint32_t>(i),
                                       prompt, delta.toolCalls, before))
      stream_->writeEvent(*chunk);
  } else if (request_.stream) {
    if (auto chunk = openai::chunkJson(context_, event, streamed_[i], static_cast<uint32_t>(i), prompt))
      stream_->writeEvent(*chunk);
  } else {
    if (!event.promptLogprobs.empty()) {
      choice.promptLogprobs = event.promptLogprobs;
      choice.promptTopLogprobs = event.promptTopLogprobs;
    }
    choice.text += event.text;
    if (event.tokenId) {
      choice.tokenIds.push_back(*event.tokenId);
      if (event.logprob) {
        choice.logprobs.push_back(*event.logprob);
        choice.topLogprobs.push_back(event.topLogprobs);
      }
    }
  }
  if (!event.finish)
    return;
  choice.finishReason = serving::finishReasonName(*event.finish);
  metrics_.observeFinished(*event.finish, event.numGenerated);
  generated_ += event.numGenerated;
  if (--unfinished_ == 0)
    finishLocked();
}

void CompletionJob::finishLocked() {
  metrics_.observeRequest(
      context_.promptTokens(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  metrics_.update(router_.stats());
  if (request_.stream) {
    if (request_.includeUsage)
      stream_->writeEvent(openai::usageChunkJson(context_, generated_));
    stream_->writeEvent("[DONE]");
  } else {
    stream_->write(openai::responseJson(context_, choices_));
  }
  stream_->close();
  stream_.reset();
  keySlot_.release();
}

} // namespace llmir::scheduler
