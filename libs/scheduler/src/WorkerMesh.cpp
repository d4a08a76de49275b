// Mesh mode's setup around libs/workerproto: the plan compiled on the
// compiler service, the rendezvous store, and the workers' endpoint whose
// protocol (membership, heartbeats, join, drain, steps) is the library's.
#include "llmir/scheduler/WorkerMesh.h"

#include "llmir/compiler/CompileApi.h"

#include "llmir/net/HttpClient.h"
#include "llmir/net/Log.h"
#include "llmir/runtime/RendezvousStore.h"
#include "llmir/support/ClusterAuth.h"


#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

namespace llmir::scheduler {

struct WorkerMesh::Impl {
  MeshOptions options;
  serving::ReplicaRouter &router;
  std::string planId;
  uint32_t worldSize = 1;
  std::unique_ptr<runtime::RendezvousServer> store;
  std::unique_ptr<workerproto::WorkerMembership> membership;

  Impl(MeshOptions o, serving::ReplicaRouter &r) : options(std::move(o)), router(r) {}

  Status compile() {
    proto::CompileRequest body;
    body.set_model_dir(options.modelDir);
    body.set_tp(options.tp);
    body.set_pp(options.pp);
    body.set_kv_block_size(static_cast<int32_t>(options.kvBlockSize));
    // The ranks' programs then move KV blocks (KV_LOAD / KV_STORE).
    if (!options.kvStoreHost.empty())
      body.set_kv_store(true);
    const std::string url = options.compilerUrl + "/v1/compile";
    net::HttpClientRequest request;
    request.method = "POST";
    request.url = url;
    request.body = compiler::compileRequestJson(body);
    request.timeout = options.compileTimeout;
    if (options.clusterSecret)
      request.headers.emplace_back(
          "Authorization",
          "Bearer " + auth::bearerToken(*options.clusterSecret, auth::kCompilerAudience));
    // The compiler service answers 503 + Retry-After while its concurrent
    // compiles are all busy (compile.max-concurrent): wait and ask again
    // until this scheduler's own compile timeout.
    const auto deadline = std::chrono::steady_clock::now() + options.compileTimeout;
    auto response = net::httpRequest(request);
    while (response && response->status == 503 &&
           std::chrono::steady_clock::now() < deadline) {
      const std::string after = response->header("retry-after").value_or("1");
      const int seconds = std::clamp(std::atoi(after.c_str()), 1, 30);
      net::logInfo("compiler service busy; retrying",
                   {{"url", url}, {"retry_after_s", seconds}});
      std::this_thread::sleep_for(std::chrono::seconds(seconds));
      response = net::httpRequest(request);
    }
    if (!response)
      return response.status().withContext("POST " + url);
    if (response->status != 200)
      return Status::error("POST " + url + " answered " + std::to_string(response->status) +
                           ": " + response->body);
    auto compiled = compiler::parseCompileResponse(response->body);
    if (!compiled)
      return compiled.status().withContext("POST " + url + " answered " + response->body);
    planId = compiled->plan_id();
    worldSize = compiled->plan().world_size();
    return Status::ok();
  }
};

Result<std::unique_ptr<WorkerMesh>> WorkerMesh::start(MeshOptions options,
                                                     serving::ReplicaRouter &router) {
  auto impl = std::make_unique<Impl>(std::move(options), router);
  LLMIR_RETURN_IF_ERROR(impl->compile());
  const MeshOptions &o = impl->options;
  // Its exposure without a cluster secret is logged at start with the other
  // cluster-secret warnings (net::loadServiceClusterSecret in the main).
  runtime::StoreServerOptions storeOptions;
  storeOptions.clusterSecret = o.clusterSecret;
  auto store = runtime::RendezvousServer::start(o.workerHost, o.storePort, storeOptions);
  if (!store)
    return store.status().withContext("starting the rendezvous store");
  impl->store = std::move(*store);

  workerproto::MembershipOptions membership;
  membership.planId = impl->planId;
  membership.worldSize = impl->worldSize;
  membership.compilerUrl = o.compilerUrl;
  membership.modelDir = o.modelDir;
  membership.storeHost = o.storeHost;
  membership.storePort = impl->store->port();
  membership.kvBlocks = o.kvBlocks;
  if (!o.kvStoreHost.empty()) {
    proto::KvStoreConfig kv;
    kv.set_host(o.kvStoreHost);
    kv.set_port(o.kvStorePort);
    kv.set_timeout_ms(o.kvStoreTimeoutMs);
    kv.set_max_queued_bytes(o.kvStoreMaxQueuedBytes);
    membership.kvStore = kv;
  }
  membership.kvBlockSize = o.kvBlockSize;
  membership.vocabSize = o.vocabSize;
  membership.pp = o.pp;
  membership.heartbeatTimeout = o.heartbeatTimeout;
  membership.joinTimeout = o.joinTimeout;
  membership.drainGrace = o.drainGrace;
  membership.registerTimeout = o.registerTimeout;
  net::FramedOptions framedOptions;
  framedOptions.clusterSecret = o.clusterSecret;
  framedOptions.maxFrameBytes = o.maxFrameBytes;
  framedOptions.handshakeTimeout = o.registerTimeout;
  auto started = workerproto::WorkerMembership::start(
      membership, router, workerproto::tcpListener(o.workerHost, o.workerPort, framedOptions));
  if (!started)
    return started.status();
  impl->membership = std::move(*started);
  net::logInfo("mesh ready for workers", {{"worker_port", unsigned(impl->membership->port())},
                                          {"plan_id", impl->planId},
                                          {"world_size", impl->worldSize},
                                          {"store_port", unsigned(impl->store->port())}});
  return std::unique_ptr<WorkerMesh>(new WorkerMesh(std::move(impl)));
}

WorkerMesh::WorkerMesh(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerMesh::~WorkerMesh() { stop(); }

uint16_t WorkerMesh::workerPort() const { return impl_->membership->port(); }
const std::string &WorkerMesh::planId() const { return impl_->planId; }
MeshCounts WorkerMesh::counts() const { return impl_->membership->counts(); }

void WorkerMesh::stop() {
  if (impl_->membership)
    impl_->membership->stop(); // fails the replicas' steps in flight
  if (impl_->store)
    impl_->store->stop();
}

} // namespace llmir::scheduler
