// A replica whose ranks are worker processes: every StepRequest goes to
// every rank, and the step completes when all of them have answered (the
// sampled tokens come from the deciding rank, the others answer empty).
// Transport-agnostic: the owner sends the frames and feeds the answers in.
#pragma once

#include "llmir/serving/ReplicaBackend.h"

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace llmir::serving {

class RemoteBackend final : public ReplicaBackend {
public:
  /// Sends `request` to `rank`; an error fails the step.
  using SendStep = std::function<Status(uint32_t rank, const proto::StepRequest &request)>;

  /// Sends a KV load request to `rank`; an error fails the load.
  using SendLoad = std::function<Status(uint32_t rank, const proto::KvLoadRequest &request)>;

  /// Called (once a step, after the step's own completion) when the ranks'
  /// answers to one step disagree: some succeeded and some failed, or they
  /// failed with different errors (a failure every rank meets alike, before
  /// any collective, leaves them paired). Such a replica's ranks
  /// may no longer pair their collectives (one stopped before them, its
  /// peers went on or waited theirs out), so its owner tears it down.
  using OnRanksDisagree = std::function<void(const std::string &why)>;

  RemoteBackend(ReplicaInfo info, uint32_t worldSize, SendStep send, SendLoad sendLoad = {},
                OnRanksDisagree onRanksDisagree = {})
      : info_(info), worldSize_(worldSize), send_(std::move(send)),
        sendLoad_(std::move(sendLoad)), onRanksDisagree_(std::move(onRanksDisagree)) {
    info_.kvStore = info_.kvStore && sendLoad_ != nullptr;
  }

  ReplicaInfo info() const override { return info_; }
  void submit(const proto::StepRequest &request, StepDone done) override;
  /// Every rank loads its part; the result is the smallest leading run any
  /// rank loaded (blocks past it are not complete on every rank).
  void loadBlocks(const proto::KvLoadRequest &request, LoadDone done) override;
  /// Rank `rank`'s answer to a load (any thread); dropped like onResponse's
  /// strays.
  void onLoadResponse(uint32_t rank, const proto::KvLoadResponse &response);
  /// Rank `rank`'s answer (any thread). A step completes once every rank
  /// answered; answers to unknown steps, a second answer from the same rank
  /// and ranks outside [0, world size) are dropped.
  void onResponse(uint32_t rank, const proto::StepResponse &response);
  /// Fails every step in flight and every later one with `why` (a rank is
  /// gone: its peers' answers will not complete those steps).
  void fail(const std::string &why);
  size_t numInFlight() const;

private:
  struct Pending {
    StepDone done;
    uint32_t answered = 0;
    std::vector<bool> ranksAnswered;
    proto::StepResponse merged;
    std::optional<uint32_t> failedRank; // the first rank that failed
    std::string error;                  // its error, as it sent it
    bool anyOk = false;
    bool errorsDiffer = false;
  };
  struct PendingLoad {
    LoadDone done;
    uint32_t answered = 0;
    std::vector<bool> ranksAnswered;
    uint32_t minLoaded = 0;
    std::string error;
  };
  void failStep(uint64_t stepId, const std::string &why);
  void failLoad(uint64_t loadId, const std::string &why);

  ReplicaInfo info_;
  uint32_t worldSize_;
  SendStep send_;
  SendLoad sendLoad_;
  OnRanksDisagree onRanksDisagree_;
  mutable std::mutex mutex_;
  std::map<uint64_t, Pending> pending_;
  std::map<uint64_t, PendingLoad> pendingLoads_;
  std::string failed_; // non-empty once fail() ran
};

} // namespace llmir::serving
