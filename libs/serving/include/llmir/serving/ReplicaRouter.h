// The scheduler over several replicas: one BatchScheduler per replica, a
// load balancer that picks the replica of each new request, and the moves
// that make replicas come and go invisible to clients. A lost replica's
// requests (and a drained replica's leftovers) continue on another replica
// with every token already streamed kept; with no replica, requests wait up
// to noReplicaTimeout and then fail.
//
// Thread safety: every public method may be called from any thread. Replica
// changes run on the router's own thread, in order; event callbacks run as
// BatchScheduler's do (never under the router's locks).
#pragma once

#include "llmir/serving/BatchScheduler.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace llmir::serving {

class ReplicaBackend;

/// How a new request's replica is chosen.
enum class BalancePolicy {
  /// Least (outstanding tokens x (1 + KV usage)) / measured tokens per
  /// second, preferring the replica that last served the same prompt prefix
  /// unless it costs more than affinitySlack times the best.
  Weighted,
  LeastOutstanding, // least outstanding tokens
  RoundRobin,
};
/// "weighted", "least-outstanding" or "round-robin".
std::optional<BalancePolicy> parseBalancePolicy(std::string_view name);

struct RouterOptions {
  /// Every replica's batch manager; maxModelLen must be set (> 0) since the
  /// limits of a request cannot wait for a replica.
  SchedulerOptions scheduler;
  int32_t vocabSize = 0;
  BalancePolicy policy = BalancePolicy::Weighted;
  /// How long a request waits when no replica is ready, then fails.
  std::chrono::milliseconds noReplicaTimeout{10000};
  /// Leading prompt tokens that key prefix-cache affinity.
  int32_t affinityPrefixTokens = 16;
  double affinitySlack = 1.5;
};

enum class ReplicaState { Ready, Draining };
const char *replicaStateName(ReplicaState state); // "ready", "draining"

struct ReplicaStatus {
  std::string id;
  ReplicaState state = ReplicaState::Ready;
  double tokensPerSecond = 0.0; // measured (0: no step yet)
  SchedulerStats scheduler;
};

struct RouterStats {
  std::vector<ReplicaStatus> replicas;
  int32_t waitingForReplica = 0;   // requests held with no replica
  uint64_t requeuedSequences = 0;  // choices moved to another replica
  uint64_t replicaFailures = 0;
  uint64_t replicaDrains = 0;
  uint64_t noReplicaTimeouts = 0;  // requests failed after noReplicaTimeout
  /// Load-balancing choices by (replica, reason): only_replica,
  /// least_load, prefix_affinity, least_outstanding, round_robin, requeue.
  std::map<std::pair<std::string, std::string>, uint64_t> decisions;
};

class ReplicaRouter {
public:
  /// `tokenizer` must outlive the router.
  ReplicaRouter(const model::Tokenizer &tokenizer, RouterOptions options);
  ~ReplicaRouter(); // stops every replica; unfinished requests end with Abort
  ReplicaRouter(const ReplicaRouter &) = delete;
  ReplicaRouter &operator=(const ReplicaRouter &) = delete;

  RequestLimits limits() const;
  /// As BatchScheduler::addRequest; the id is the router's.
  uint64_t addRequest(RequestParams params, EventCallback onEvent);
  void cancel(uint64_t requestId);
  /// True once some replica is ready (at once when one is), false after
  /// `timeout` without one.
  bool waitForReplica(std::chrono::milliseconds timeout) const;

  /// A ready replica joins load balancing (and takes waiting requests).
  void addReplica(std::string id, std::shared_ptr<ReplicaBackend> backend);
  /// A replica lost a rank: it takes no more requests; once its scheduler
  /// submits no more steps `abortInFlight` must fail the steps in flight;
  /// then its requests move on, their sequences' step failures forgotten
  /// unless `keepFailures` (a step of theirs is why the replica went: a
  /// request that fails every replica it reaches still ends). Runs on the
  /// router's thread.
  void removeReplica(std::string id, std::function<void()> abortInFlight,
                     bool keepFailures = false);
  /// Takes no more requests; the running ones finish for up to `grace`,
  /// then the rest move on; then `done` runs (on the router's thread).
  void drainReplica(std::string id, std::chrono::milliseconds grace,
                    std::function<void()> done);
  /// Waits until every replica change asked for so far has run (tests).
  void sync();

  /// Summed over replicas.
  SchedulerStats stats() const;
  RouterStats routerStats() const;
  /// Observes every replica's submitted steps.
  void setStepObserver(std::function<void(const StepStats &)> observer);

private:
  struct Replica;
  struct Route;
  struct Waiting;
  using Clock = std::chrono::steady_clock;

  std::shared_ptr<Replica> pickLocked(const std::vector<int32_t> &prompt,
                                      bool requeue);
  void place(uint64_t id, DetachedRequest request);
  void moveAway(Replica &replica, bool keepFailures = false);
  void tick();
  void post(std::function<void()> task);
  void loop();

  const model::Tokenizer &tokenizer_;
  RouterOptions options_;

  // changeMutex_ orders replica changes against addRequest/cancel; mutex_
  // (inner) guards the fields. Under mutex_ only BatchScheduler::stats()
  // is called (it delivers no events, whose callbacks take mutex_).
  mutable std::mutex changeMutex_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<std::shared_ptr<Replica>> replicas_;
  std::map<uint64_t, Route> routes_;
  std::deque<Waiting> waiting_;
  std::map<uint64_t, std::string> affinity_; // prefix hash -> replica id
  size_t roundRobin_ = 0;
  uint64_t nextId_ = 1;
  RouterStats counters_;
  SchedulerStats retired_; // counters of replicas that went away
  std::function<void(const StepStats &)> stepObserver_;

  std::deque<std::function<void()>> tasks_;
  uint64_t postedTasks_ = 0, doneTasks_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

} // namespace llmir::serving
