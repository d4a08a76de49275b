#include "llmir/serving/RemoteBackend.h"

#include <algorithm>
#include <vector>

namespace llmir::serving {

void RemoteBackend::submit(const proto::StepRequest &request, StepDone done) {
  const uint64_t stepId = request.step_id();
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!failed_.empty()) {
      const std::string why = failed_;
      lock.unlock();
      done(Status::error("replica failed: " + why));
      return;
    }
    Pending &pending = pending_[stepId];
    pending.done = std::move(done);
    pending.merged.set_step_id(stepId);
    pending.merged.set_ok(true);
    pending.ranksAnswered.assign(worldSize_, false);
  }
  for (uint32_t rank = 0; rank < worldSize_; ++rank)
    if (Status sent = send_(rank, request); !sent) {
      failStep(stepId, "sending step " + std::to_string(stepId) + " to rank " +
                           std::to_string(rank) + ": " + sent.message());
      return;
    }
}

void RemoteBackend::onResponse(uint32_t rank, const proto::StepResponse &response) {
  StepDone done;
  Result<proto::StepResponse> result = Status::error("unset");
  std::string disagreement;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(response.step_id());
    if (it == pending_.end() || rank >= worldSize_)
      return;
    Pending &pending = it->second;
    if (pending.ranksAnswered[rank])
      return; // one answer per rank: a rank cannot stand in for its peers
    pending.ranksAnswered[rank] = true;
    if (response.ok()) {
      pending.anyOk = true;
    } else if (!pending.failedRank) {
      pending.failedRank = rank;
      pending.error = response.error();
    } else if (response.error() != pending.error) {
      pending.errorsDiffer = true;
    }
    for (const proto::SampledToken &token : response.tokens())
      *pending.merged.add_tokens() = token;
    for (const proto::PromptLogprobs &prompt : response.prompt_logprobs())
      *pending.merged.add_prompt_logprobs() = prompt;
    pending.merged.set_step_seconds(
        std::max(pending.merged.step_seconds(), response.step_seconds()));
    if (++pending.answered < worldSize_)
      return;
    done = std::move(pending.done);
    if (!pending.failedRank) {
      result = std::move(pending.merged);
    } else {
      const std::string why =
          "rank " + std::to_string(*pending.failedRank) + ": " + pending.error;
      if (pending.anyOk || pending.errorsDiffer)
        disagreement =
            "the ranks disagree on step " + std::to_string(response.step_id()) + " (" + why + ")";
      result = Status::error(why);
    }
    pending_.erase(it);
  }
  // The step's own failure first: it counts against its sequences.
  done(std::move(result));
  if (!disagreement.empty() && onRanksDisagree_)
    onRanksDisagree_(disagreement);
}

void RemoteBackend::loadBlocks(const proto::KvLoadRequest &request, LoadDone done) {
  const uint64_t loadId = request.load_id();
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!sendLoad_ || !failed_.empty() || pendingLoads_.count(loadId)) {
      const std::string why = !sendLoad_        ? "this replica has no KV-block store"
                              : failed_.empty() ? "load id already in flight"
                                                : "replica failed: " + failed_;
      lock.unlock();
      done(Status::error(why));
      return;
    }
    PendingLoad &pending = pendingLoads_[loadId];
    pending.done = std::move(done);
    pending.ranksAnswered.assign(worldSize_, false);
    pending.minLoaded = static_cast<uint32_t>(request.block_ids_size());
  }
  for (uint32_t rank = 0; rank < worldSize_; ++rank)
    if (Status sent = sendLoad_(rank, request); !sent) {
      failLoad(loadId, "sending load " + std::to_string(loadId) + " to rank " +
                           std::to_string(rank) + ": " + sent.message());
      return;
    }
}

void RemoteBackend::onLoadResponse(uint32_t rank, const proto::KvLoadResponse &response) {
  LoadDone done;
  Result<uint32_t> result = Status::error("unset");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pendingLoads_.find(response.load_id());
    if (it == pendingLoads_.end() || rank >= worldSize_)
      return;
    PendingLoad &pending = it->second;
    if (pending.ranksAnswered[rank])
      return;
    pending.ranksAnswered[rank] = true;
    if (!response.ok() && pending.error.empty())
      pending.error = "rank " + std::to_string(rank) + ": " + response.error();
    pending.minLoaded = std::min(pending.minLoaded, response.blocks_loaded());
    if (++pending.answered < worldSize_)
      return;
    done = std::move(pending.done);
    if (pending.error.empty())
      result = pending.minLoaded;
    else
      result = Status::error(pending.error);
    pendingLoads_.erase(it);
  }
  done(std::move(result));
}

void RemoteBackend::failLoad(uint64_t loadId, const std::string &why) {
  LoadDone done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pendingLoads_.find(loadId);
    if (it == pendingLoads_.end())
      return;
    done = std::move(it->second.done);
    pendingLoads_.erase(it);
  }
  done(Status::error(why));
}

void RemoteBackend::failStep(uint64_t stepId, const std::string &why) {
  StepDone done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(stepId);
    if (it == pending_.end())
      return;
    done = std::move(it->second.done);
    pending_.erase(it);
  }
  done(Status::error(why));
}

void RemoteBackend::fail(const std::string &why) {
  std::vector<StepDone> failed;
  std::vector<LoadDone> failedLoads;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    failed_ = why.empty() ? "replica failed" : why;
    for (auto &[id, pending] : pending_)
      failed.push_back(std::move(pending.done));
    pending_.clear();
    for (auto &[id, pending] : pendingLoads_)
      failedLoads.push_back(std::move(pending.done));
    pendingLoads_.clear();
  }
  for (StepDone &done : failed)
    done(Status::error("replica failed: " + why));
  for (LoadDone &done : failedLoads)
    done(Status::error("replica failed: " + why));
}

size_t RemoteBackend::numInFlight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

} // namespace llmir::serving
