#include "WorkerMesh.h"

#include "llmir/net/Framed.h"
#include "llmir/net/HttpClient.h"
#include "llmir/net/Log.h"
#include "llmir/runtime/RendezvousStore.h"
#include "llmir/serving/RemoteBackend.h"
#include "llmir/support/ClusterAuth.h"

#include <boost/json.hpp>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace llmir::scheduler {

namespace {
using Clock = std::chrono::steady_clock;

// What a worker sends that ends up in log lines is bounded.
constexpr size_t kMaxWorkerIdBytes = 256;
constexpr size_t kMaxLoggedErrorBytes = 4096;

enum class WorkerState { Unregistered, Idle, Joining, Serving, Draining };

struct Worker {
  net::FramedConnectionPtr conn;
  std::string workerId;
  WorkerState state = WorkerState::Unregistered;
  std::string replicaId;
  Clock::time_point connectedAt = Clock::now();
  Clock::time_point lastSeen = Clock::now();
  uint64_t order = 0; // registration order: the pool is first come, first assigned
};

struct MeshReplica {
  std::string id;
  std::vector<uint64_t> ranks; // connection ids, rank order
  uint32_t numReady = 0;
  bool ready = false;
  bool draining = false;
  std::shared_ptr<serving::RemoteBackend> backend;
  Clock::time_point joinDeadline;
};

proto::Envelope drainEnvelope(const std::string &reason) {
  proto::Envelope e;
  e.set_protocol_version(net::kWorkerProtocolVersion);
  e.mutable_drain()->set_reason(reason);
  return e;
}
} // namespace

struct WorkerMesh::Impl {
  MeshOptions options;
  serving::ReplicaRouter &router;
  std::string planId;
  uint32_t worldSize = 1;
  std::unique_ptr<runtime::RendezvousServer> store;
  std::unique_ptr<net::FramedServer> server;

  mutable std::mutex mutex;
  std::condition_variable wake;
  std::map<uint64_t, Worker> workers;
  std::map<std::string, MeshReplica> replicas;
  std::vector<std::weak_ptr<serving::RemoteBackend>> backends; // failed on stop
  uint64_t nextReplica = 1;
  uint64_t nextOrder = 1;
  uint64_t lost = 0;
  bool stopping = false;
  std::thread monitor;

  Impl(MeshOptions o, serving::ReplicaRouter &r) : options(std::move(o)), router(r) {}

  Status compile() {
    boost::json::object body{{"model_dir", options.modelDir},
                             {"tp", options.tp},
                             {"pp", options.pp},
                             {"kv_block_size", options.kvBlockSize}};
    const std::string url = options.compilerUrl + "/v1/compile";
    net::HttpClientRequest request;
    request.method = "POST";
    request.url = url;
    request.body = boost::json::serialize(body);
    request.timeout = options.compileTimeout;
    if (options.clusterSecret)
      request.headers.emplace_back(
          "Authorization",
          "Bearer " + auth::bearerToken(*options.clusterSecret, auth::kCompilerAudience));
    auto response = net::httpRequest(request);
    if (!response)
      return response.status().withContext("POST " + url);
    if (response->status != 200)
      return Status::error("POST " + url + " answered " + std::to_string(response->status) +
                           ": " + response->body);
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(response->body, ec);
    const boost::json::object *o = ec ? nullptr : v.if_object();
    const boost::json::value *id = o ? o->if_contains("plan_id") : nullptr;
    const boost::json::value *plan = o ? o->if_contains("plan") : nullptr;
    const boost::json::value *world =
        plan && plan->is_object() ? plan->as_object().if_contains("world_size") : nullptr;
    if (!id || !id->is_string() || !world || !world->is_int64() || world->as_int64() < 1)
      return Status::error("POST " + url +
                           ": expected {plan_id, plan: {world_size}}, got " + response->body);
    planId = std::string(id->as_string());
    worldSize = static_cast<uint32_t>(world->as_int64());
    return Status::ok();
  }

  void tryFormLocked() {
    std::erase_if(backends, [](const auto &b) { return b.expired(); });
    std::vector<std::pair<uint64_t, uint64_t>> idle; // (order, connection id)
    for (const auto &[conn, w] : workers)
      if (w.state == WorkerState::Idle)
        idle.emplace_back(w.order, conn);
    std::sort(idle.begin(), idle.end());
    for (size_t first = 0; first + worldSize <= idle.size(); first += worldSize) {
      MeshReplica replica;
      replica.id = "replica-" + std::to_string(nextReplica++);
      replica.joinDeadline = Clock::now() + options.joinTimeout;
      std::vector<net::FramedConnectionPtr> conns;
      for (uint32_t rank = 0; rank < worldSize; ++rank) {
        Worker &w = workers.at(idle[first + rank].second);
        replica.ranks.push_back(idle[first + rank].second);
        conns.push_back(w.conn);
        w.state = WorkerState::Joining;
        w.replicaId = replica.id;
        proto::Envelope e;
        e.set_protocol_version(net::kWorkerProtocolVersion);
        proto::AssignRank *a = e.mutable_assign_rank();
        a->set_replica_id(replica.id);
        a->set_rank(rank);
        a->set_world_size(worldSize);
        a->set_plan_id(planId);
        a->set_compiler_url(options.compilerUrl);
        a->set_store_host(options.storeHost);
        a->set_store_port(store->port());
        // Replica ids are never reused: a rebuilt replica meets no stale keys.
        a->set_store_prefix("llmir/" + replica.id);
        a->set_model_dir(options.modelDir);
        a->set_num_kv_blocks(static_cast<uint32_t>(options.kvBlocks));
        if (!options.kvStoreHost.empty()) {
          proto::KvStoreConfig *kv = a->mutable_kv_store();
          kv->set_host(options.kvStoreHost);
          kv->set_port(options.kvStorePort);
          kv->set_timeout_ms(options.kvStoreTimeoutMs);
          kv->set_max_queued_bytes(options.kvStoreMaxQueuedBytes);
        }
        (void)w.conn->send(e); // a closed connection shows up in onClose
      }
      serving::ReplicaInfo info;
      info.numKvBlocks = static_cast<int32_t>(options.kvBlocks);
      info.blockSize = options.kvBlockSize;
      info.vocabSize = options.vocabSize;
      info.pipelineDepth = options.pp;
      info.kvStore = !options.kvStoreHost.empty();
      replica.backend = std::make_shared<serving::RemoteBackend>(
          info, worldSize,
          [conns](uint32_t rank, const proto::StepRequest &request) {
            proto::Envelope e;
            e.set_protocol_version(net::kWorkerProtocolVersion);
            *e.mutable_step_request() = request;
            return conns[rank]->send(e);
          },
          [conns](uint32_t rank, const proto::KvLoadRequest &request) {
            proto::Envelope e;
            e.set_protocol_version(net::kWorkerProtocolVersion);
            *e.mutable_kv_load_request() = request;
            return conns[rank]->send(e);
          });
      backends.push_back(replica.backend);
      net::logInfo("forming replica", {{"replica_id", replica.id},
                                       {"world_size", worldSize},
                                       {"plan_id", planId}});
      replicas.emplace(replica.id, std::move(replica));
    }
  }

  /// The replica's workers leave it: draining ones are released, the others
  /// go back to the pool.
  void disbandLocked(MeshReplica &replica) {
    for (uint64_t conn : replica.ranks) {
      auto it = workers.find(conn);
      if (it == workers.end())
        continue;
      Worker &w = it->second;
      w.replicaId.clear();
      if (w.state == WorkerState::Draining)
        (void)w.conn->send(drainEnvelope("its replica handed back its work"));
      else
        w.state = WorkerState::Idle;
    }
    replicas.erase(replica.id);
  }

  /// A rank is gone (or failed to join): tear the replica down.
  void failReplicaLocked(MeshReplica &replica, const std::string &why) {
    net::logWarn("replica torn down", {{"replica_id", replica.id}, {"reason", why}});
    if (replica.ready)
      router.removeReplica(replica.id, [backend = replica.backend, why] {
        backend->fail(why);
      });
    else
      replica.backend->fail(why);
    disbandLocked(replica);
    tryFormLocked();
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
    net::logInfo("worker draining", {{"worker_id", w.workerId}, {"reason", reason}});
    const WorkerState was = w.state;
    w.state = WorkerState::Draining;
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
      (void)w.conn->send(drainEnvelope("the worker holds no work"));
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
      w.lastSeen = Clock::now();
      if (e.has_register_worker()) {
        if (w.state != WorkerState::Unregistered)
          return;
        const std::string &id = e.register_worker().worker_id();
        if (id.empty() || id.size() > kMaxWorkerIdBytes) {
          // Refused before it reaches a log line or a metric label.
          proto::Envelope error;
          error.set_protocol_version(net::kWorkerProtocolVersion);
          error.mutable_error()->set_message(
              "worker_id must have 1 to " + std::to_string(kMaxWorkerIdBytes) + " bytes, got " +
              std::to_string(id.size()));
          (void)conn->send(error);
          conn->close();
          return;
        }
        w.workerId = id;
        w.state = WorkerState::Idle;
        w.order = nextOrder++;
        net::logInfo("worker registered", {{"worker_id", w.workerId},
                                           {"peer", conn->peer()}});
        tryFormLocked();
      } else if (e.has_rank_ready()) {
        const proto::RankReady &ready = e.rank_ready();
        auto it = replicas.find(w.replicaId);
        if (it == replicas.end() || it->first != ready.replica_id() || it->second.ready ||
            w.state != WorkerState::Joining)
          return;
        MeshReplica &replica = it->second;
        if (!ready.ok()) {
          failReplicaLocked(replica, "rank " + std::to_string(ready.rank()) +
                                         " failed to join: " + ready.error());
          return;
        }
        if (++replica.numReady < worldSize)
          return;
        replica.ready = true;
        for (uint64_t rank : replica.ranks)
          workers.at(rank).state = WorkerState::Serving;
        net::logInfo("replica ready", {{"replica_id", replica.id}});
        router.addReplica(replica.id, replica.backend);
      } else if (e.has_step_response() || e.has_kv_load_response()) {
        // Only a rank of the replica the step went to may answer it, once
        // (RemoteBackend counts distinct ranks).
        auto it = replicas.find(w.replicaId);
        // (A draining rank still answers: its replica finishes its sequences.)
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
    if (deliverTo && e.has_kv_load_response())
      deliverTo->onLoadResponse(fromRank, e.kv_load_response());
    else if (deliverTo) // completes the step: the router's work, not under our lock
      deliverTo->onResponse(fromRank, e.step_response());
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
    while (!wake.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping; })) {
      const auto now = Clock::now();
      for (auto &[id, w] : workers)
        if (w.state == WorkerState::Unregistered) {
          if (now - w.connectedAt > options.registerTimeout && w.conn->isOpen()) {
            net::logWarn("connection did not register in time; closing",
                         {{"peer", w.conn->peer()}});
            w.conn->close();
          }
        } else if (now - w.lastSeen > options.heartbeatTimeout) {
          net::logWarn("heartbeat timeout", {{"worker_id", w.workerId}});
          w.conn->close(); // onClose tears its replica down
        }
      for (auto &[id, replica] : replicas)
        if (!replica.ready && now > replica.joinDeadline) {
          for (uint64_t conn : replica.ranks)
            if (auto it = workers.find(conn); it != workers.end())
              it->second.conn->close(); // did not join in time: treat as lost
          break; // the closes reshape `replicas` as they arrive
        }
    }
  }
};

Result<std::unique_ptr<WorkerMesh>> WorkerMesh::start(MeshOptions options,
                                                     serving::ReplicaRouter &router) {
  auto impl = std::make_unique<Impl>(std::move(options), router);
  LLMIR_RETURN_IF_ERROR(impl->compile());
  if (Status exposed = auth::checkExposure(impl->options.clusterSecret, impl->options.workerHost,
                                          "the workers' endpoint and rendezvous store");
      !exposed)
    net::logWarn(exposed.message());
  runtime::StoreServerOptions storeOptions;
  storeOptions.clusterSecret = impl->options.clusterSecret;
  auto store = runtime::RendezvousServer::start(impl->options.workerHost,
                                                impl->options.storePort, storeOptions);
  if (!store)
    return store.status().withContext("starting the rendezvous store");
  impl->store = std::move(*store);
  Impl *self = impl.get();
  net::FramedHandlers handlers;
  handlers.onOpen = [self](const net::FramedConnectionPtr &conn) {
    std::lock_guard<std::mutex> lock(self->mutex);
    self->workers[conn->id()].conn = conn;
  };
  handlers.onMessage = [self](const net::FramedConnectionPtr &conn, proto::Envelope e) {
    self->onMessage(conn, std::move(e));
  };
  handlers.onClose = [self](const net::FramedConnectionPtr &conn, const Status &why) {
    self->onClose(conn, why);
  };
  net::FramedOptions framedOptions;
  framedOptions.clusterSecret = impl->options.clusterSecret;
  framedOptions.maxFrameBytes = impl->options.maxFrameBytes;
  framedOptions.handshakeTimeout = impl->options.registerTimeout;
  auto server = net::FramedServer::start(impl->options.workerHost, impl->options.workerPort,
                                         handlers, framedOptions);
  if (!server)
    return server.status().withContext("starting the workers' endpoint");
  impl->server = std::move(*server);
  impl->monitor = std::thread([self] { self->monitorLoop(); });
  net::logInfo("mesh ready for workers", {{"worker_port", unsigned(impl->server->port())},
                                          {"plan_id", impl->planId},
                                          {"world_size", impl->worldSize},
                                          {"store_port", unsigned(impl->store->port())}});
  return std::unique_ptr<WorkerMesh>(new WorkerMesh(std::move(impl)));
}

WorkerMesh::WorkerMesh(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerMesh::~WorkerMesh() { stop(); }

uint16_t WorkerMesh::workerPort() const { return impl_->server->port(); }
const std::string &WorkerMesh::planId() const { return impl_->planId; }

MeshCounts WorkerMesh::counts() const {
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
  return c;
}

void WorkerMesh::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->stopping)
      return;
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->monitor.joinable())
    impl_->monitor.join();
  if (impl_->server)
    impl_->server->stop();
  std::vector<std::shared_ptr<serving::RemoteBackend>> backends;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    for (auto &weak : impl_->backends)
      if (auto backend = weak.lock())
        backends.push_back(backend);
  }
  for (auto &backend : backends)
    backend->fail("the scheduler is stopping"); // nothing waits on dead steps
  if (impl_->store)
    impl_->store->stop();
}

} // namespace llmir::scheduler
