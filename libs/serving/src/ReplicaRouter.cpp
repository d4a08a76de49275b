#include "llmir/serving/ReplicaRouter.h"

#include "llmir/proto/worker.pb.h"
#include "llmir/serving/ReplicaBackend.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <limits>

namespace llmir::serving {

std::optional<BalancePolicy> parseBalancePolicy(std::string_view name) {
  if (name == "weighted")
    return BalancePolicy::Weighted;
  if (name == "least-outstanding")
    return BalancePolicy::LeastOutstanding;
  if (name == "round-robin")
    return BalancePolicy::RoundRobin;
  return std::nullopt;
}

const char *replicaStateName(ReplicaState state) {
  return state == ReplicaState::Ready ? "ready" : "draining";
}

namespace {

/// Forwards steps and measures the replica's speed (computed tokens per
/// second of step time, smoothed) for capability-weighted balancing.
class MeasuredBackend final : public ReplicaBackend {
public:
  explicit MeasuredBackend(std::shared_ptr<ReplicaBackend> inner)
      : inner_(std::move(inner)) {}
  ReplicaInfo info() const override { return inner_->info(); }
  void submit(const proto::StepRequest &request, StepDone done) override {
    int64_t tokens = 0;
    for (const auto &seq : request.sequences())
      tokens += seq.token_ids_size();
    const auto start = std::chrono::steady_clock::now();
    inner_->submit(request, [this, tokens, start,
                             done = std::move(done)](Result<proto::StepResponse> r) {
      if (r) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (seconds > 0) {
          const double sample = static_cast<double>(tokens) / seconds;
          const double old = tokensPerSecond_.load();
          tokensPerSecond_.store(old == 0 ? sample : 0.8 * old + 0.2 * sample);
        }
      }
      done(std::move(r));
    });
  }
  void loadBlocks(const proto::KvLoadRequest &request, LoadDone done) override {
    inner_->loadBlocks(request, std::move(done));
  }
  double tokensPerSecond() const { return tokensPerSecond_.load(); }

private:
  std::shared_ptr<ReplicaBackend> inner_;
  std::atomic<double> tokensPerSecond_{0.0};
};

uint64_t prefixKey(const std::vector<int32_t> &prompt, int32_t tokens) {
  uint64_t hash = 1469598103934665603ull; // FNV-1a
  for (int32_t i = 0; i < tokens; ++i) {
    hash ^= static_cast<uint32_t>(prompt[static_cast<size_t>(i)]);
    hash *= 1099511628211ull;
  }
  return hash;
}

/// The counters that only grow (a replica's since it started), added into
/// `to`: the router's totals, and what retired replicas had counted.
void addCounters(SchedulerStats &to, const SchedulerStats &from) {
  to.prefixQueryTokens += from.prefixQueryTokens;
  to.prefixHitTokens += from.prefixHitTokens;
  to.numPreemptions += from.numPreemptions;
  to.numStepFailures += from.numStepFailures;
  to.kvStoreLoads += from.kvStoreLoads;
  to.kvStoreLoadFailures += from.kvStoreLoadFailures;
  to.kvStoreLoadedTokens += from.kvStoreLoadedTokens;
  to.kvStoreWrittenBlocks += from.kvStoreWrittenBlocks;
  to.adoptedTokensReused += from.adoptedTokensReused;
  to.adoptedTokensRecomputed += from.adoptedTokensRecomputed;
}

} // namespace

struct ReplicaRouter::Replica {
  std::string id;
  std::unique_ptr<MeasuredBackend> backend;
  std::unique_ptr<BatchScheduler> scheduler;
  // Guarded by the router's mutex_.
  ReplicaState state = ReplicaState::Ready;
  Clock::time_point drainDeadline;
  std::function<void()> drainDone;
  std::map<uint64_t, uint64_t> localToRouter; // request ids
};

struct ReplicaRouter::Route {
  std::shared_ptr<Replica> replica; // null while waiting for one
  uint64_t localId = 0;
  int32_t unfinished = 0;
  bool cancelled = false;
};

struct ReplicaRouter::Waiting {
  uint64_t id = 0;
  std::optional<RequestParams> fresh;   // never placed yet
  EventCallback onEvent;                // for `fresh`
  std::optional<DetachedRequest> moved; // from a replica that went away
  Clock::time_point deadline;
};

ReplicaRouter::ReplicaRouter(const model::Tokenizer &tokenizer, RouterOptions options)
    : tokenizer_(tokenizer), options_(std::move(options)) {
  assert(options_.scheduler.maxModelLen > 0 && "the router needs maxModelLen");
  thread_ = std::thread([this] { loop(); });
}

ReplicaRouter::~ReplicaRouter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
  std::vector<std::shared_ptr<Replica>> replicas;
  std::deque<Waiting> waiting;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    replicas.swap(replicas_);
    waiting.swap(waiting_);
  }
  for (auto &replica : replicas) {
    replica->scheduler->stop();
    for (DetachedRequest &request : replica->scheduler->detachAll())
      request.finish(FinishReason::Abort, "");
  }
  for (Waiting &w : waiting)
    if (w.moved)
      w.moved->finish(FinishReason::Abort, "");
}

RequestLimits ReplicaRouter::limits() const {
  return RequestLimits{options_.scheduler.maxModelLen, options_.vocabSize};
}

std::shared_ptr<ReplicaRouter::Replica>
ReplicaRouter::pickLocked(const std::vector<int32_t> &prompt, bool requeue) {
  std::vector<std::shared_ptr<Replica>> ready;
  for (const auto &replica : replicas_)
    if (replica->state == ReplicaState::Ready)
      ready.push_back(replica);
  if (ready.empty())
    return nullptr;
  auto decide = [&](const std::shared_ptr<Replica> &replica, const char *reason) {
    ++counters_.decisions[{replica->id, requeue ? "requeue" : reason}];
    return replica;
  };
  if (ready.size() == 1)
    return decide(ready.front(), "only_replica");
  if (options_.policy == BalancePolicy::RoundRobin)
    return decide(ready[roundRobin_++ % ready.size()], "round_robin");

  std::vector<SchedulerStats> stats;
  for (const auto &replica : ready)
    stats.push_back(replica->scheduler->stats());
  if (options_.policy == BalancePolicy::LeastOutstanding) {
    size_t best = 0;
    for (size_t i = 1; i < ready.size(); ++i)
      if (stats[i].outstandingTokens < stats[best].outstandingTokens)
        best = i;
    return decide(ready[best], "least_outstanding");
  }

  // Weighted: expected time to clear the replica's work at its speed.
  double fastest = 0;
  for (const auto &replica : ready)
    fastest = std::max(fastest, replica->backend->tokensPerSecond());
  std::vector<double> cost(ready.size());
  size_t best = 0;
  for (size_t i = 0; i < ready.size(); ++i) {
    double speed = ready[i]->backend->tokensPerSecond();
    if (speed <= 0)
      speed = fastest > 0 ? fastest : 1.0; // not measured yet: assume the best
    cost[i] = static_cast<double>(stats[i].outstandingTokens + 1) *
              (1.0 + stats[i].kvUsage) / speed;
    if (cost[i] < cost[best])
      best = i;
  }
  const int32_t keyTokens = options_.affinityPrefixTokens;
  if (requeue || keyTokens <= 0 || static_cast<int32_t>(prompt.size()) < keyTokens)
    return decide(ready[best], "least_load");
  const uint64_t key = prefixKey(prompt, keyTokens);
  auto known = affinity_.find(key);
  if (known != affinity_.end())
    for (size_t i = 0; i < ready.size(); ++i)
      if (ready[i]->id == known->second && cost[i] <= options_.affinitySlack * cost[best])
        return decide(ready[i], "prefix_affinity");
  affinity_[key] = ready[best]->id;
  return decide(ready[best], "least_load");
}

uint64_t ReplicaRouter::addRequest(RequestParams params, EventCallback onEvent) {
  std::lock_guard<std::mutex> change(changeMutex_);
  uint64_t id;
  std::shared_ptr<Replica> replica;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    id = nextId_++;
    routes_[id].unfinished = params.n;
    onEvent = [this, id, onEvent = std::move(onEvent)](const SequenceEvent &event) {
      if (event.finish) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = routes_.find(id);
        if (it != routes_.end() && --it->second.unfinished <= 0) {
          if (it->second.replica)
            it->second.replica->localToRouter.erase(it->second.localId);
          routes_.erase(it);
        }
      }
      SequenceEvent routed = event;
      routed.requestId = id;
      onEvent(routed);
    };
    replica = pickLocked(params.promptIds, false);
    if (!replica) {
      Waiting waiting;
      waiting.id = id;
      waiting.fresh = std::move(params);
      waiting.onEvent = std::move(onEvent);
      waiting.deadline = Clock::now() + options_.noReplicaTimeout;
      waiting_.push_back(std::move(waiting));
      return id;
    }
  }
  const uint64_t local = replica->scheduler->addRequest(std::move(params), std::move(onEvent));
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = routes_.find(id); it != routes_.end()) {
    it->second.replica = replica;
    it->second.localId = local;
    replica->localToRouter[local] = id;
  }
  return id;
}

void ReplicaRouter::cancel(uint64_t requestId) {
  std::lock_guard<std::mutex> change(changeMutex_);
  std::shared_ptr<Replica> replica;
  uint64_t local = 0;
  std::optional<Waiting> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = routes_.find(requestId);
    if (it == routes_.end())
      return;
    it->second.cancelled = true;
    replica = it->second.replica;
    local = it->second.localId;
    if (!replica)
      for (auto w = waiting_.begin(); w != waiting_.end(); ++w)
        if (w->id == requestId) {
          dropped = std::move(*w);
          waiting_.erase(w);
          break;
        }
  }
  if (replica) {
    replica->scheduler->cancel(local);
  } else if (dropped && dropped->moved) {
    dropped->moved->finish(FinishReason::Abort, "");
  } else if (dropped) {
    for (int32_t i = 0; i < dropped->fresh->n; ++i) {
      SequenceEvent event;
      event.index = static_cast<uint32_t>(i);
      event.finish = FinishReason::Abort;
      dropped->onEvent(event);
    }
  }
}

bool ReplicaRouter::waitForReplica(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return std::any_of(replicas_.begin(), replicas_.end(), [](const auto &r) {
      return r->state == ReplicaState::Ready;
    });
  });
}

void ReplicaRouter::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.push_back(std::move(task));
    ++postedTasks_;
  }
  changed_.notify_all();
}

void ReplicaRouter::sync() {
  std::unique_lock<std::mutex> lock(mutex_);
  const uint64_t target = postedTasks_;
  changed_.wait(lock, [&] { return doneTasks_ >= target || stopping_; });
}

void ReplicaRouter::addReplica(std::string id, std::shared_ptr<ReplicaBackend> backend) {
  post([this, id = std::move(id), backend = std::move(backend)] {
    auto replica = std::make_shared<Replica>();
    replica->id = id;
    replica->backend = std::make_unique<MeasuredBackend>(backend);
    replica->scheduler = std::make_unique<BatchScheduler>(*replica->backend, tokenizer_,
                                                          options_.scheduler);
    replica->scheduler->setStepObserver([this](const StepStats &step) {
      std::function<void(const StepStats &)> observer;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        observer = stepObserver_;
      }
      if (observer)
        observer(step);
    });
    replica->scheduler->start();
    {
      std::lock_guard<std::mutex> change(changeMutex_);
      std::lock_guard<std::mutex> lock(mutex_);
      replicas_.push_back(std::move(replica));
    }
    changed_.notify_all();
  });
}

void ReplicaRouter::moveAway(Replica &replica, bool keepFailures) {
  // changeMutex_ is held: no request is added to or cancelled on it now.
  std::vector<DetachedRequest> detached = replica.scheduler->detachAll(keepFailures);
  std::lock_guard<std::mutex> lock(mutex_);
  addCounters(retired_, replica.scheduler->stats());
  std::erase_if(replicas_, [&](const auto &r) { return r.get() == &replica; });
  for (DetachedRequest &request : detached) {
    auto id = replica.localToRouter.find(request.id());
    assert(id != replica.localToRouter.end());
    auto route = routes_.find(id->second);
    assert(route != routes_.end());
    route->second.replica = nullptr;
    Waiting waiting;
    waiting.id = id->second;
    waiting.moved = std::move(request);
    waiting.deadline = Clock::now() + options_.noReplicaTimeout;
    // Ahead of requests that never started: these clients are mid-stream.
    waiting_.push_front(std::move(waiting));
  }
  replica.localToRouter.clear();
}

void ReplicaRouter::removeReplica(std::string id, std::function<void()> abortInFlight,
                                  bool keepFailures) {
  post([this, id = std::move(id), abortInFlight = std::move(abortInFlight), keepFailures] {
    std::lock_guard<std::mutex> change(changeMutex_);
    std::shared_ptr<Replica> replica;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto &r : replicas_)
        if (r->id == id)
          replica = r;
      if (replica) {
        ++counters_.replicaFailures;
        replica->state = ReplicaState::Draining; // picked no more
      }
    }
    if (!replica) {
      if (abortInFlight)
        abortInFlight();
      return;
    }
    replica->scheduler->requestStop();
    if (abortInFlight)
      abortInFlight();
    replica->scheduler->stop();
    moveAway(*replica, keepFailures);
  });
}

void ReplicaRouter::drainReplica(std::string id, std::chrono::milliseconds grace,
                                 std::function<void()> done) {
  post([this, id = std::move(id), grace, done = std::move(done)]() mutable {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto &r : replicas_)
        if (r->id == id && r->state == ReplicaState::Ready) {
          r->state = ReplicaState::Draining;
          r->drainDeadline = Clock::now() + grace;
          r->drainDone = std::move(done);
          ++counters_.replicaDrains;
          return;
        }
    }
    if (done)
      done(); // unknown or already going: nothing to wait for
  });
}

void ReplicaRouter::tick() {
  // Drains that are over: nothing left running, or the grace has passed.
  std::vector<std::shared_ptr<Replica>> drained;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = Clock::now();
    for (const auto &r : replicas_) {
      if (r->state != ReplicaState::Draining || !r->drainDone)
        continue;
      const SchedulerStats s = r->scheduler->stats();
      if (s.numRunning + s.numWaiting == 0 || now >= r->drainDeadline)
        drained.push_back(r);
    }
  }
  for (const auto &replica : drained) {
    std::function<void()> done;
    {
      std::lock_guard<std::mutex> change(changeMutex_);
      replica->scheduler->stop(); // the steps in flight complete normally
      moveAway(*replica);
      std::lock_guard<std::mutex> lock(mutex_);
      done = std::move(replica->drainDone);
    }
    done();
  }

  // Requests waiting for a replica: place them, or fail them when late.
  std::lock_guard<std::mutex> change(changeMutex_);
  std::deque<Waiting> todo;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    todo.swap(waiting_);
  }
  const auto now = Clock::now();
  for (Waiting &w : todo) {
    std::shared_ptr<Replica> replica;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      replica = pickLocked(w.fresh ? w.fresh->promptIds : std::vector<int32_t>{},
                           w.moved.has_value());
      if (!replica && now < w.deadline) {
        waiting_.push_back(std::move(w));
        continue;
      }
      if (!replica)
        ++counters_.noReplicaTimeouts;
      else if (w.moved)
        counters_.requeuedSequences += static_cast<uint64_t>(w.moved->numUnfinished());
    }
    if (!replica) {
      const std::string error =
          "no replica became available within " +
          std::to_string(options_.noReplicaTimeout.count()) + " ms";
      if (w.moved) {
        w.moved->finish(FinishReason::Error, error);
      } else {
        for (int32_t i = 0; i < w.fresh->n; ++i) {
          SequenceEvent event;
          event.index = static_cast<uint32_t>(i);
          event.finish = FinishReason::Error;
          event.error = error;
          w.onEvent(event);
        }
      }
      continue;
    }
    const uint64_t local = w.moved
                               ? replica->scheduler->adopt(std::move(*w.moved))
                               : replica->scheduler->addRequest(std::move(*w.fresh),
                                                                std::move(w.onEvent));
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = routes_.find(w.id); it != routes_.end()) {
      it->second.replica = replica;
      it->second.localId = local;
      replica->localToRouter[local] = w.id;
    }
  }
}

void ReplicaRouter::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    changed_.wait_for(lock, std::chrono::milliseconds(20),
                      [&] { return stopping_ || !tasks_.empty(); });
    while (!stopping_ && !tasks_.empty()) {
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
      ++doneTasks_;
      changed_.notify_all();
    }
    if (stopping_)
      break;
    lock.unlock();
    tick();
    lock.lock();
  }
  changed_.notify_all();
}

SchedulerStats ReplicaRouter::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  SchedulerStats total = retired_;
  total.numRunning = total.numWaiting = 0;
  total.kvUsage = 0;
  total.outstandingTokens = 0;
  for (const auto &replica : replicas_) {
    const SchedulerStats s = replica->scheduler->stats();
    total.numRunning += s.numRunning;
    total.numWaiting += s.numWaiting;
    total.kvUsage += s.kvUsage / static_cast<double>(replicas_.size());
    addCounters(total, s);
    total.outstandingTokens += s.outstandingTokens;
  }
  for (const Waiting &w : waiting_)
    total.numWaiting += w.moved ? w.moved->numUnfinished() : w.fresh->n;
  return total;
}

RouterStats ReplicaRouter::routerStats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  RouterStats out = counters_;
  for (const auto &replica : replicas_)
    out.replicas.push_back({replica->id, replica->state,
                            replica->backend->tokensPerSecond(),
                            replica->scheduler->stats()});
  out.waitingForReplica = static_cast<int32_t>(waiting_.size());
  return out;
}

void ReplicaRouter::setStepObserver(std::function<void(const StepStats &)> observer) {
  std::lock_guard<std::mutex> lock(mutex_);
  stepObserver_ = std::move(observer);
}

} // namespace llmir::serving
