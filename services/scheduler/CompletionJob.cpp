#include "CompletionJob.h"

namespace llmir::scheduler {

CompletionJob::CompletionJob(ApiRequest request, ResponseContext context,
                             Metrics &metrics, serving::ReplicaRouter &scheduler)
    : request_(std::move(request)), context_(std::move(context)), metrics_(metrics),
      scheduler_(scheduler) {
  context_.request = &request_;
  const size_t n = static_cast<size_t>(request_.params.n);
  choices_.resize(n);
  sentFirstChunk_.assign(n, false);
  lastToken_.resize(n);
  unfinished_ = request_.params.n;
}

void CompletionJob::start(std::shared_ptr<CompletionJob> job,
                          std::shared_ptr<net::ResponseStream> stream) {
  job->stream_ = stream;
  serving::RequestParams params = job->request_.params;
  params.promptIds = job->context_.promptIds;
  serving::ReplicaRouter *scheduler = &job->scheduler_;
  const uint64_t id =
      scheduler->addRequest(std::move(params), [job](const serving::SequenceEvent &e) {
        job->onEvent(e);
      });
  // Capture no job here: the stream keeps this callback and the job keeps
  // the stream.
  stream->onClientGone([scheduler, id] { scheduler->cancel(id); });
}

void CompletionJob::onEvent(const serving::SequenceEvent &event) {
  std::lock_guard<std::mutex> lock(mutex_);
  const size_t i = event.index;
  const auto now = std::chrono::steady_clock::now();
  if (event.tokenId) {
    if (!sawFirstToken_)
      metrics_.observeFirstToken(std::chrono::duration<double>(now - start_).count());
    else if (lastToken_[i] != std::chrono::steady_clock::time_point())
      metrics_.observeInterToken(std::chrono::duration<double>(now - lastToken_[i]).count());
    sawFirstToken_ = true;
    lastToken_[i] = now;
  }
  ChoiceResult &choice = choices_[i];
  if (request_.stream) {
    if (auto chunk = chunkJson(context_, event, !sentFirstChunk_[i])) {
      stream_->writeEvent(*chunk);
      sentFirstChunk_[i] = true;
    }
  } else {
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
      static_cast<int64_t>(context_.promptIds.size()),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  metrics_.update(scheduler_.stats());
  if (request_.stream) {
    if (request_.includeUsage)
      stream_->writeEvent(usageChunkJson(context_, generated_));
    stream_->writeEvent("[DONE]");
  } else {
    stream_->write(responseJson(context_, choices_));
  }
  stream_->close();
  stream_.reset();
}

} // namespace llmir::scheduler
