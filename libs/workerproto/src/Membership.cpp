#include "llmir/workerproto/Membership.h"

#include "llmir/net/Log.h"
#include "llmir/serving/RemoteBackend.h"
#include "llmir/workerproto/Messages.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace llmir::workerproto {

namespace {
using Clock = std::chrono::steady_clock;

// Leaving: a rank of a replica torn down before it was ready, still inside
// its own join (the rendezvous, NCCL's communicator, the weights) until it
// answers RankReady for that replica or the replica's join deadline passes.
// Assigned again before then, it took the next AssignRank only after its
// join ran out, by which time its new peer had given up on it: on GPUs
// (NCCL's init) the two stayed a replica apart, every join failing.
enum class WorkerState { Unregistered, Idle, Joining, Leaving, Serving, Draining };

struct Worker {
  net::FramedConnectionPtr conn;
  std::string workerId;
  WorkerState state = WorkerState::Unregistered;
  std::string replicaId; // Leaving: the torn-down replica it still joins
  Clock::time_point leaveBy; // Leaving: idle from then on, answered or not
  Clock::time_point connectedAt = Clock::now();
  Clock::time_point lastSeen = Clock::now();
  uint64_t order = 0; // registration order: the pool is first come, first assigned
};

struct MeshReplica {
  std::string id;
  std::vector<uint64_t> ranks; // connection ids, rank order
  std::vector<bool> rankReady; // by rank: each counts once
  uint32_t numReady = 0;
  bool ready = false;
  bool draining = false;
  std::shared_ptr<serving::RemoteBackend> backend;
  Clock::time_point joinDeadline;
};

/// Sends `envelope`; a failed send drops the connection at once (its
/// onClose then treats the worker as lost): a worker we cannot reach must
/// not keep a place in a replica. Thread-safe; never calls back inline.
bool sendOrDrop(const net::FramedConnectionPtr &conn, const proto::Envelope &envelope,
                const char *what, std::atomic<uint64_t> &failures) {
  Status sent = conn->send(envelope);
  if (sent)
    return true;
  ++failures;
  net::logWarn("send to a worker failed; dropping its connection",
               {{"peer", conn->peer()}, {"message", what}, {"error", sent.message()}});
  conn->abort(Status::error(std::string("send of ") + what + " failed: " + sent.message()));
  return false;
}
} // namespace

struct WorkerMembership::Impl {
  MembershipOptions options;
  serving::ReplicaRouter &router;
  std::unique_ptr<WorkerListener> listener;

  mutable std::mutex mutex;
  std::condition_variable wake;
  std::map<uint64_t, Worker> workers;
  std::map<std::string, MeshReplica> replicas;
  std::vector<std::weak_ptr<serving::RemoteBackend>> backends; // failed on stop
  uint64_t nextReplica = 1;
  uint64_t nextOrder = 1;
  uint64_t lost = 0;
  std::atomic<uint64_t> sendFailures{0};
  bool stopping = false;
  std::thread monitor;

  Impl(MembershipOptions o, serving::ReplicaRouter &r) : options(std::move(o)), router(r) {}

  void tryFormLocked() {
    std::erase_if(backends, [](const auto &b) { return b.expired(); });
    std::vector<std::pair<uint64_t, uint64_t>> idle; // (order, connection id)
    for (const auto &[conn, w] : workers)
      if (w.state == WorkerState::Idle)
        idle.emplace_back(w.order, conn);
    std::sort(idle.begin(), idle.end());
    const uint32_t worldSize = options.worldSize;
    for (size_t first = 0; first + worldSize <= idle.size(); first += worldSize) {
      MeshReplica replica;
      replica.id = "replica-" + std::to_string(nextReplica++);
      replica.joinDeadline = Clock::now() + options.joinTimeout;
      replica.rankReady.assign(worldSize, false);
      std::vector<net::FramedConnectionPtr> conns;
      for (uint32_t rank = 0; rank < worldSize; ++rank) {
        Worker &w = workers.at(idle[first + rank].second);
        replica.ranks.push_back(idle[first + rank].second);
        conns.push_back(w.conn);
        w.state = WorkerState::Joining;
        w.replicaId = replica.id;
        proto::Envelope e;
        proto::AssignRank *a = e.mutable_assign_rank();
        a->set_replica_id(replica.id);
        a->set_rank(rank);
        a->set_world_size(worldSize);
        a->set_plan_id(options.planId);
        a->set_compiler_url(options.compilerUrl);
        a->set_store_host(options.storeHost);
        a->set_store_port(options.storePort);
        // Replica ids are never reused: a rebuilt replica meets no stale keys.
        a->set_store_prefix("llmir/" + replica.id);
        a->set_model_dir(options.modelDir);
        a->set_num_kv_blocks(static_cast<uint32_t>(options.kvBlocks));
        if (options.kvStore)
          *a->mutable_kv_store() = *options.kvStore;
        // A failed send drops the connection; its onClose tears this
        // replica down once it is registered below.
        sendOrDrop(w.conn, e, "AssignRank", sendFailures);
      }
      serving::ReplicaInfo info;
      info.numKvBlocks = static_cast<int32_t>(options.kvBlocks);
      info.blockSize = options.kvBlockSize;
      info.vocabSize = options.vocabSize;
      info.pipelineDepth = options.pp;
      info.kvStore = options.kvStore.has_value();
      // Every rank of one stage holds the gathered logits and samples every
      // step, in the order sent (ShardWorker): each fills its chained inputs.
      info.chainsDecode = options.pp == 1;
      std::atomic<uint64_t> *failures = &sendFailures;
      // A failed send fails the step or load (RemoteBackend) and drops the
      // rank's connection: its replica is torn down and its sequences move.
      auto sendToRank = [conns, failures](uint32_t rank, const proto::Envelope &e,
                                          const char *what) -> Status {
        Status sent = conns[rank]->send(e);
        if (!sent) {
          ++*failures;
          net::logWarn("send to a worker failed; dropping its connection",
                       {{"peer", conns[rank]->peer()}, {"message", what},
                        {"error", sent.message()}});
          conns[rank]->abort(
              Status::error(std::string("send of ") + what + " failed: " + sent.message()));
        }
        return sent;
      };
      replica.backend = std::make_shared<serving::RemoteBackend>(
          info, worldSize,
          [sendToRank](uint32_t rank, const proto::StepRequest &request) {
            return sendToRank(rank, stepRequestMessage(request), "StepRequest");
          },
          [sendToRank](uint32_t rank, const proto::KvLoadRequest &request) {
            return sendToRank(rank, kvLoadRequestMessage(request), "KvLoadRequest");
          },
          // Called from onResponse, which this membership runs outside its
          // lock (onMessage), only while it lives.
          [this, id = replica.id](const std::string &why) { onRanksDisagree(id, why); });
      backends.push_back(replica.backend);
      net::logInfo("forming replica", {{"replica_id", replica.id},
                                       {"world_size", worldSize},
                                       {"plan_id", options.planId}});
      replicas.emplace(replica.id, std::move(replica));
    }
  }

  /// The replica's workers leave it: draining ones are released, ranks
  /// still joining it finish that first (Leaving), the others go back to
  /// the pool.
  void disbandLocked(MeshReplica &replica) {
    for (size_t rank = 0; rank < replica.ranks.size(); ++rank) {
      auto it = workers.find(replica.ranks[rank]);
      if (it == workers.end())
        continue;
      Worker &w = it->second;
      if (w.state == WorkerState::Joining && !replica.rankReady[rank]) {
        w.state = WorkerState::Leaving;
        w.leaveBy = replica.joinDeadline;
        continue; // keeps replicaId: its answer names it
      }
      w.replicaId.clear();
      if (w.state == WorkerState::Draining)
        sendOrDrop(w.conn, drainMessage("its replica handed back its work"), "Drain",
                   sendFailures);
      else
        w.state = WorkerState::Idle;
    }
    replicas.erase(replica.id);
  }

  void leftLocked(Worker &w) {
    w.state = WorkerState::Idle;
    w.replicaId.clear();
    tryFormLocked();
  }

  /// A rank is gone (or failed to join, or the ranks disagree on a step):
  /// tear the replica down. keepFailures: a step of its requests is why
  /// (ReplicaRouter::removeReplica).
  void failReplicaLocked(MeshReplica &replica, const std::string &why,
                         bool keepFailures = false) {
    net::logWarn("replica torn down", {{"replica_id", replica.id}, {"reason", why}});
    if (replica.ready)
      router.removeReplica(
          replica.id, [backend = replica.backend, why] { backend->fail(why); }, keepFailures);
    else
      replica.backend->fail(why);
    disbandLocked(replica);
    tryFormLocked();
  }

  /// The ranks of replica `id` answered one step differently (one failed
  /// where another did not, or with another error): one may have stopped
  /// before collectives its peers went into, so later steps would pair
  /// them wrongly. A fresh replica of the same workers (new store prefix,
  /// new communicators) takes its place; the step's failure stays counted
  /// against its sequences, so a request that breaks every replica it
  /// reaches still ends after maxStepRetries.
  void onRanksDisagree(const std::string &id, const std::string &why) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = replicas.find(id);
    if (it == replicas.end() || !it->second.ready)
      return; // gone already (a rank lost, a drain)
    failReplicaLocked(it->second, why, /*keepFailures=*/true);
  }

  void onReplicaDrained(const std::string &id) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = replicas.find(id);
    if (it == replicas.end())
      return;
    net::logInfo("replica drained", {{"replica_id", id}});
    disbandLocked(it->second);
    tryFormLocked();
  }

  void onDrainLocked(Worker &w, const std::string &reason) {
    net::logInfo("worker draining", {{"worker_id", w.workerId},
                                     {"reason", reason.substr(0, kMaxLoggedErrorBytes)}});
    const WorkerState was = w.state;
    w.state = WorkerState::Draining;
    if (was == WorkerState::Leaving)
      w.replicaId.clear(); // holds no replica: released, not lost, when it goes
    auto it = replicas.find(w.replicaId);
    if (was == WorkerState::Serving && it != replicas.end() && it->second.ready) {
      MeshReplica &replica = it->second;
      if (!replica.draining) {
        replica.draining = true;
        router.drainReplica(replica.id, options.drainGrace,
                            [this, id = replica.id] { onReplicaDrained(id); });
      }
      return;
    }
    if (it != replicas.end()) // still joining: nothing to hand back
      failReplicaLocked(it->second, "worker " + w.workerId + " drains while joining");
    else
      sendOrDrop(w.conn, drainMessage("the worker holds no work"), "Drain", sendFailures);
  }

  void onRegisterLocked(const net::FramedConnectionPtr &conn, Worker &w,
                        const proto::RegisterWorker &registration) {
    if (w.state != WorkerState::Unregistered)
      return;
    const std::string &id = registration.worker_id();
    if (id.empty() || id.size() > kMaxWorkerIdBytes) {
      // Refused before it reaches a log line or a metric label.
      (void)conn->send(errorMessage("worker_id must have 1 to " +
                                    std::to_string(kMaxWorkerIdBytes) + " bytes, got " +
                                    std::to_string(id.size())));
      conn->close(); // the refusal's send failing changes nothing: it goes anyway
      return;
    }
    w.workerId = id;
    w.state = WorkerState::Idle;
    w.order = nextOrder++;
    net::logInfo("worker registered", {{"worker_id", w.workerId}, {"peer", conn->peer()}});
    tryFormLocked();
  }

  void onRankReadyLocked(const net::FramedConnectionPtr &conn, Worker &w,
                         const proto::RankReady &ready) {
    if (w.state == WorkerState::Leaving) {
      if (ready.replica_id() == w.replicaId)
        leftLocked(w); // its join is over: it takes the next assignment at once
      return;
    }
    auto it = replicas.find(w.replicaId);
    if (it == replicas.end() || it->first != ready.replica_id() || it->second.ready ||
        w.state != WorkerState::Joining)
      return;
    MeshReplica &replica = it->second;
    // The rank is the one this connection was assigned, whatever it claims.
    const auto rank = std::find(replica.ranks.begin(), replica.ranks.end(), conn->id());
    if (rank == replica.ranks.end())
      return;
    if (!ready.ok()) {
      w.state = WorkerState::Idle; // its join is over: disbanding keeps it in the pool
      failReplicaLocked(replica, "rank " + std::to_string(rank - replica.ranks.begin()) +
                                     " failed to join: " +
                                     ready.error().substr(0, kMaxLoggedErrorBytes));
      return;
    }
    // Counted once per rank: a rank answering twice does not stand in for another.
    const size_t index = static_cast<size_t>(rank - replica.ranks.begin());
    if (replica.rankReady[index])
      return;
    replica.rankReady[index] = true;
    if (++replica.numReady < options.worldSize)
      return;
    replica.ready = true;
    for (uint64_t id : replica.ranks)
      workers.at(id).state = WorkerState::Serving;
    net::logInfo("replica ready", {{"replica_id", replica.id}});
    router.addReplica(replica.id, replica.backend);
  }

  void onMessage(const net::FramedConnectionPtr &conn, proto::Envelope e) {
    std::shared_ptr<serving::RemoteBackend> deliverTo;
    uint32_t fromRank = 0;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto found = workers.find(conn->id());
      if (found == workers.end())
        return;
      Worker &w = found->second;
      if (w.state == WorkerState::Unregistered && !e.has_register_worker())
        return; // nothing counts before registration, not even as a heartbeat
      w.lastSeen = Clock::now();
      if (e.has_register_worker()) {
        onRegisterLocked(conn, w, e.register_worker());
      } else if (e.has_rank_ready()) {
        onRankReadyLocked(conn, w, e.rank_ready());
      } else if (e.has_step_response() || e.has_kv_load_response()) {
        // Only a rank of the ready replica the step (or load) went to may
        // answer it, once (RemoteBackend counts distinct ranks). A draining
        // rank still answers: its replica finishes its sequences.
        auto it = replicas.find(w.replicaId);
        if (it != replicas.end() && it->second.ready) {
          const auto &ranks = it->second.ranks;
          auto rank = std::find(ranks.begin(), ranks.end(), conn->id());
          if (rank != ranks.end()) {
            deliverTo = it->second.backend;
            fromRank = static_cast<uint32_t>(rank - ranks.begin());
          }
        }
      } else if (e.has_drain()) {
        if (w.state != WorkerState::Draining)
          onDrainLocked(w, e.drain().reason());
      } else if (e.has_error()) {
        net::logWarn("worker reported an error",
                     {{"worker_id", w.workerId},
                      {"error", e.error().message().substr(0, kMaxLoggedErrorBytes)}});
      }
    }
    // Completes the step or load: the router's work, not under our lock.
    if (deliverTo && e.has_kv_load_response())
      deliverTo->onLoadResponse(fromRank, e.kv_load_response());
    else if (deliverTo)
      deliverTo->onResponse(fromRank, e.step_response());
  }

  void onOpen(const net::FramedConnectionPtr &conn) {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopping) {
      conn->abort(Status::error("the scheduler is stopping"));
      return;
    }
    workers[conn->id()].conn = conn;
  }

  void onClose(const net::FramedConnectionPtr &conn, const Status &why) {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = workers.find(conn->id());
    if (found == workers.end())
      return;
    Worker w = std::move(found->second);
    workers.erase(found);
    if (w.state == WorkerState::Unregistered)
      return;
    const bool released = w.state == WorkerState::Draining && w.replicaId.empty();
    if (!released) {
      ++lost;
      net::logWarn("worker lost", {{"worker_id", w.workerId},
                                   {"reason", why ? "connection closed" : why.message()}});
    }
    auto it = replicas.find(w.replicaId);
    if (it != replicas.end())
      failReplicaLocked(it->second, "worker " + w.workerId + " was lost");
  }

  void monitorLoop() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!wake.wait_for(lock, options.monitorPeriod, [&] { return stopping; })) {
      const auto now = Clock::now();
      for (auto &[id, w] : workers)
        if (w.state == WorkerState::Unregistered) {
          if (now - w.connectedAt > options.registerTimeout && w.conn->isOpen()) {
            net::logWarn("connection did not register in time; closing",
                         {{"peer", w.conn->peer()}});
            w.conn->abort(Status::error("did not register in time"));
          }
        } else if (now - w.lastSeen > options.heartbeatTimeout && w.conn->isOpen()) {
          net::logWarn("heartbeat timeout", {{"worker_id", w.workerId}});
          w.conn->abort(Status::error("heartbeat timeout")); // onClose tears its replica down
        }
      for (auto &[id, w] : workers)
        if (w.state == WorkerState::Leaving && now > w.leaveBy) {
          net::logWarn("a torn-down replica's rank never answered its join; idle again",
                       {{"worker_id", w.workerId}, {"replica_id", w.replicaId}});
          leftLocked(w);
        }
      for (auto &[id, replica] : replicas)
        if (!replica.ready && now > replica.joinDeadline) {
          for (uint64_t conn : replica.ranks)
            if (auto it = workers.find(conn); it != workers.end())
              it->second.conn->abort(Status::error("did not join in time")); // treated as lost
          break; // the closes reshape `replicas` as they arrive
        }
    }
  }
};

Result<std::unique_ptr<WorkerMembership>>
WorkerMembership::start(MembershipOptions options, serving::ReplicaRouter &router,
                        const ListenFunction &listen) {
  if (options.worldSize < 1)
    return Status::error("worker membership: world size must be at least 1");
  auto impl = std::make_unique<Impl>(std::move(options), router);
  Impl *self = impl.get();
  net::FramedHandlers handlers;
  handlers.onOpen = [self](const net::FramedConnectionPtr &conn) { self->onOpen(conn); };
  handlers.onMessage = [self](const net::FramedConnectionPtr &conn, proto::Envelope e) {
    self->onMessage(conn, std::move(e));
  };
  handlers.onClose = [self](const net::FramedConnectionPtr &conn, const Status &why) {
    self->onClose(conn, why);
  };
  auto listener = listen(std::move(handlers));
  if (!listener)
    return listener.status().withContext("starting the workers' endpoint");
  impl->listener = std::move(*listener);
  impl->monitor = std::thread([self] { self->monitorLoop(); });
  return std::unique_ptr<WorkerMembership>(new WorkerMembership(std::move(impl)));
}

WorkerMembership::WorkerMembership(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerMembership::~WorkerMembership() { stop(); }

uint16_t WorkerMembership::port() const { return impl_->listener->port(); }

MeshCounts WorkerMembership::counts() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  MeshCounts c;
  for (const auto &[id, w] : impl_->workers)
    switch (w.state) {
    case WorkerState::Unregistered:
      break;
    case WorkerState::Idle:
      ++c.workersIdle;
      break;
    case WorkerState::Joining:
    case WorkerState::Leaving: // still inside a join
      ++c.workersJoining;
      break;
    case WorkerState::Serving:
      ++c.workersServing;
      break;
    case WorkerState::Draining:
      ++c.workersDraining;
      break;
    }
  for (const auto &[id, r] : impl_->replicas)
    c.replicasJoining += r.ready ? 0 : 1;
  c.workersLost = impl_->lost;
  c.sendFailures = impl_->sendFailures;
  return c;
}

void WorkerMembership::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->stopping)
      return;
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->monitor.joinable())
    impl_->monitor.join();
  if (impl_->listener)
    impl_->listener->stop();
  std::vector<std::shared_ptr<serving::RemoteBackend>> backends;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    for (auto &weak : impl_->backends)
      if (auto backend = weak.lock())
        backends.push_back(backend);
  }
  for (auto &backend : backends)
    backend->fail("the scheduler is stopping"); // nothing waits on dead steps
}

} // namespace llmir::workerproto
