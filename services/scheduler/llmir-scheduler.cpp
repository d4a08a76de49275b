// llmir-scheduler --model HF_DIR [--http.port N] [--http.port-file PATH] [--api-key K] ...
//
// Serves the OpenAI API. Without --compiler-url: over one in-process replica
// (tp = 1, the checkpoint compiled and loaded here). With --compiler-url
// (mesh mode): shard workers register on --worker-port and are grouped into
// replicas of tp x pp ranks (docs/services.md, docs/reliability.md). Every
// request goes through the replica router (continuous batching per replica,
// load balancing, re-queue on failure). `--help` lists every key; each is
// also settable from a YAML file (--config) or LLMIR_<KEY> environment
// variables.
#include "llmir/scheduler/Metrics.h"
#include "llmir/scheduler/ModelFiles.h"
#include "llmir/scheduler/OpenAiServer.h"
#include "llmir/scheduler/WorkerMesh.h"

#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/Tokenizer.h"
#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"
#include "llmir/serving/BatchScheduler.h"
#include "llmir/serving/InProcessBackend.h"
#include "llmir/serving/ReplicaRouter.h"

#include <boost/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace {

using namespace llmir;
namespace fs = std::filesystem;

struct Settings {
  std::string model;
  std::string servedModelName;
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::string portFile;
  std::string apiKey;
  std::string apiKeysFile;
  uint32_t maxConcurrentPerKey = 0;
  uint32_t keyLimitRetryAfterS = 1;
  int maxNumSeqs = 64;
  int maxBatchTokens = 512;
  int64_t kvBlocks = 1024;
  int64_t maxModelLen = 0;
  bool prefixCaching = true;
  bool chainDecode = true;
  int chainDepth = 2;
  int engineThreads = 0;
  std::string device = "cpu";
  std::string kvCacheDtype = "auto";
  int httpThreads = 4;
  uint64_t maxBodyBytes = 1 << 20;
  net::LogLevel logLevel = net::LogLevel::Info;
  std::string toolCallParser; // empty: tool calls stay text
  // Mesh mode.
  std::string compilerUrl;
  std::string workerHost = "127.0.0.1";
  uint16_t workerPort = 8090;
  std::string workerPortFile;
  std::string storeHost = "127.0.0.1";
  uint16_t storePort = 0;
  int tp = 1;
  int pp = 1;
  int kvBlockSize = 16;
  uint32_t heartbeatTimeoutMs = 5000;
  uint32_t joinTimeoutMs = 120000;
  uint32_t drainGraceMs = 30000;
  uint32_t noReplicaTimeoutMs = 10000;
  int64_t maxWaitingRequests = 0;
  uint32_t shedRetryAfterS = 1;
  uint32_t noReplicaRetryAfterS = 5;
  std::string lbPolicy = "weighted";
  std::string clusterSecretFile;
  uint32_t workerMaxFrameBytes = 64u << 20;
  uint32_t registerTimeoutMs = 5000;
  // KV-block store (mesh mode).
  std::string kvStoreHost;
  uint16_t kvStorePort = 13337;
  uint32_t kvStoreTimeoutMs = 1000;
  uint64_t kvStoreMaxQueuedBytes = 64ull << 20;
  std::string kvStoreWritePolicy = "write-through";
};

void bind(net::Config &config, Settings &s) {
  config.add("model", &s.model, "Hugging Face checkpoint directory to serve (required)");
  config.add("served-model-name", &s.servedModelName,
             "model id in the API (default: the directory's name)");
  config.add("http.host", &s.host, "address the OpenAI API listens on");
  config.add("http.port", &s.port, "HTTP port (0: any free port)");
  config.add("http.port-file", &s.portFile, "write the bound port to this file once serving");
  config.add("api-key", &s.apiKey, "require 'Authorization: Bearer <key>' when set");
  config.add("api-keys-file", &s.apiKeysFile,
             "file of accepted API keys (with api-key), one per line, each optionally "
             "followed by its own limits.max-concurrent-requests-per-key ('KEY 8')");
  config.add("limits.max-concurrent-requests-per-key", &s.maxConcurrentPerKey,
             "requests in flight per API key (the bearer token) when the key has no limit "
             "of its own; past it 429 with Retry-After (0: no limit)");
  config.add("limits.concurrency-retry-after-s", &s.keyLimitRetryAfterS,
             "Retry-After of the per-key 429 (seconds)");
  config.add("max-num-seqs", &s.maxNumSeqs, "sequences running at once");
  config.add("max-batch-tokens", &s.maxBatchTokens, "tokens per step (chunked prefill)");
  config.add("kv-blocks", &s.kvBlocks, "KV-cache blocks of the replica");
  config.add("max-model-len", &s.maxModelLen,
             "tokens per sequence (0: the model's max_position_embeddings)");
  config.add("enable-prefix-caching", &s.prefixCaching, "reuse KV blocks of equal prefixes");
  config.add("chain-decode", &s.chainDecode,
             "send a one-stage replica's next decode step before this one answers");
  config.add("chain-depth", &s.chainDepth,
             "chained decode steps a sequence may have queued behind the one in flight "
             "(2 keeps a worker that pipelines its decodes fed through the round trip)");
  config.add("engine-threads", &s.engineThreads, "CPU kernel threads (0: all cores)");
  config.add("kv-cache-dtype", &s.kvCacheDtype,
             "single-process mode: auto (bf16 on cuda for 16-bit weights), f32 or bf16");
  config.add("device", &s.device,
             "single-process mode: cpu, cuda or cuda:<i> (mesh: each worker's worker.device)");
  config.add("http.threads", &s.httpThreads,
             "HTTP handler threads (a request waiting for a replica holds one; /healthz, "
             "/readyz and /metrics are answered on the I/O thread regardless)");
  config.add("http.max-body-bytes", &s.maxBodyBytes, "larger request bodies get 413");
  config.add("log.level", &s.logLevel, "the lowest level of the lines logged");
  config.add("tool-call-parser", &s.toolCallParser,
             "chat: parse tool calls out of the output (hermes, llama3_json or mistral)");
  config.add("compiler-url", &s.compilerUrl,
             "mesh mode: llmir-compiler-service URL (empty: one in-process replica)");
  config.add("worker-host", &s.workerHost,
             "mesh: address the workers' endpoint and the rendezvous store listen on");
  config.add("worker-port", &s.workerPort, "mesh: port workers register on (0: any free port)");
  config.add("worker-port-file", &s.workerPortFile,
             "mesh: write the workers' port to this file once listening");
  config.add("store-host", &s.storeHost,
             "mesh: address workers reach the rendezvous store on");
  config.add("store-port", &s.storePort,
             "mesh: rendezvous store port (0: any free port; set it when a Service fronts it)");
  config.add("tp", &s.tp, "mesh: tensor-parallel ranks per replica");
  config.add("pp", &s.pp, "mesh: pipeline stages per replica");
  config.add("kv-block-size", &s.kvBlockSize, "mesh: tokens per KV block");
  config.add("heartbeat-timeout-ms", &s.heartbeatTimeoutMs,
             "mesh: a worker silent this long is lost");
  config.add("join-timeout-ms", &s.joinTimeoutMs,
             "mesh: a replica not ready this long after assignment is torn down");
  config.add("drain-grace-ms", &s.drainGraceMs,
             "mesh: a draining replica finishes its sequences this long, then hands them back");
  config.add("no-replica-timeout-ms", &s.noReplicaTimeoutMs,
             "with no replica ready, requests wait this long, then 503");
  config.add("lb-policy", &s.lbPolicy, "weighted, least-outstanding or round-robin");
  config.add("max-waiting-requests", &s.maxWaitingRequests,
             "load shedding: with this many sequences waiting, new requests get 429 with "
             "Retry-After (0: never)");
  config.add("shed-retry-after-s", &s.shedRetryAfterS, "Retry-After of the 429 (seconds)");
  config.add("no-replica-retry-after-s", &s.noReplicaRetryAfterS,
             "Retry-After of the no-replica 503 (seconds)");
  config.add("cluster.secret-file", &s.clusterSecretFile,
             "mesh: file holding the cluster secret workers, the store and the compiler "
             "service must share (else $LLMIR_CLUSTER_SECRET; docs/reliability.md)");
  config.add("worker-max-frame-bytes", &s.workerMaxFrameBytes,
             "mesh: larger frames from a worker close its connection");
  config.add("kv-store.host", &s.kvStoreHost,
             "mesh: llmir-kv-store host the workers write full KV blocks through to and load "
             "prefixes from (empty: no store; docs/kv-store.md)");
  config.add("kv-store.port", &s.kvStorePort, "mesh: llmir-kv-store UCX port");
  config.add("kv-store.timeout-ms", &s.kvStoreTimeoutMs,
             "mesh: deadline of one store operation on a worker (past it: recompute)");
  config.add("kv-store.max-queued-bytes", &s.kvStoreMaxQueuedBytes,
             "mesh: block bytes a worker queues for write-through; past it blocks are dropped");
  config.add("kv-store.write-policy", &s.kvStoreWritePolicy,
             "mesh: when workers write full KV blocks to the store: off, on-finish (a "
             "sequence's blocks once it finishes) or write-through (as steps fill them)");
  config.add("register-timeout-ms", &s.registerTimeoutMs,
             "mesh: a connection that has not authenticated and registered this long is closed");
}

void writePortFile(const std::string &path, uint16_t port) {
  if (path.empty())
    return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  fs::rename(tmp, path);
}

/// What can be checked without reading the model or binding a port: the
/// checks `--check-config` runs and every start runs first.
Status validate(const Settings &s) {
  if (s.model.empty())
    return Status::error("'model' is required (see --help)");
  if (!serving::parseBalancePolicy(s.lbPolicy))
    return Status::error("'lb-policy' must be weighted, least-outstanding or round-robin, got '" +
                         s.lbPolicy + "'");
  if (auto device = engine::Device::parse(s.device); !device)
    return Status::error("'device': " + device.message());
  if (s.tp < 1 || s.pp < 1)
    return Status::error("'tp' and 'pp' must be at least 1");
  if (s.maxNumSeqs < 1 || s.maxBatchTokens < 1 || s.kvBlocks < 1 || s.kvBlockSize < 1)
    return Status::error(
        "'max-num-seqs', 'max-batch-tokens', 'kv-blocks' and 'kv-block-size' must be at least 1");
  if (s.chainDepth < 1)
    return Status::error("'chain-depth' must be at least 1");
  if (s.maxWaitingRequests < 0)
    return Status::error("'max-waiting-requests' must be 0 (no bound) or positive");
  if (s.shedRetryAfterS < 1 || s.noReplicaRetryAfterS < 1)
    return Status::error("'shed-retry-after-s' and 'no-replica-retry-after-s' must be at least 1");
  if (s.httpThreads < 1)
    return Status::error("'http.threads' must be at least 1");
  if (s.keyLimitRetryAfterS < 1)
    return Status::error("'limits.concurrency-retry-after-s' must be at least 1");
  if (!s.apiKeysFile.empty())
    if (auto keys = scheduler::loadApiKeys(s.apiKeysFile); !keys)
      return keys.status();
  if (!s.toolCallParser.empty())
    if (auto format = serving::toolCallFormat(s.toolCallParser); !format)
      return Status::error("'tool-call-parser': " + format.message());
  if (!s.compilerUrl.empty() && !s.compilerUrl.starts_with("http://"))
    return Status::error("'compiler-url' must be an http:// URL, got '" + s.compilerUrl + "'");
  if (!s.kvStoreHost.empty()) {
    if (s.compilerUrl.empty())
      return Status::error("'kv-store.host' needs mesh mode ('compiler-url'): the workers use "
                           "the store");
    if (s.kvStorePort == 0)
      return Status::error("'kv-store.port' must be a port (1-65535), got 0");
    if (s.kvStoreTimeoutMs == 0 || s.kvStoreMaxQueuedBytes == 0)
      return Status::error("'kv-store.timeout-ms' and 'kv-store.max-queued-bytes' must be "
                           "positive");
  }
  if (auto policy = serving::parseKvStoreWritePolicy(s.kvStoreWritePolicy); !policy)
    return Status::error("'kv-store.write-policy': " + policy.message());
  return Status::ok();
}

int run(const Settings &s) {
  auto modelConfig = model::loadModelConfig(s.model);
  if (!modelConfig) {
    net::logError("cannot read the model config", {{"error", modelConfig.message()}});
    return 1;
  }
  auto tokenizer = model::Tokenizer::load((fs::path(s.model) / "tokenizer.json").string());
  if (!tokenizer) {
    net::logError("cannot load the tokenizer", {{"error", tokenizer.message()}});
    return 1;
  }
  auto chatFormat = scheduler::loadChatFormat(s.model);
  if (!chatFormat) {
    net::logError("cannot use the model's chat template", {{"error", chatFormat.message()}});
    return 1;
  }
  if (!s.toolCallParser.empty())
    chatFormat->toolCalls = *serving::toolCallFormat(s.toolCallParser); // validate()d
  auto policy = serving::parseBalancePolicy(s.lbPolicy); // validate()d

  serving::RouterOptions routerOptions;
  serving::SchedulerOptions &options = routerOptions.scheduler;
  options.maxNumSeqs = s.maxNumSeqs;
  options.maxBatchTokens = s.maxBatchTokens;
  options.enablePrefixCaching = s.prefixCaching;
  options.chainDecode = s.chainDecode;
  options.chainDepth = s.chainDepth;
  options.kvStoreWritePolicy = *serving::parseKvStoreWritePolicy(s.kvStoreWritePolicy); // validate()d
  options.maxModelLen = s.maxModelLen > 0 ? s.maxModelLen : modelConfig->maxPositionEmbeddings;
  // A sequence must fit one replica's KV cache.
  options.maxModelLen = std::min<int64_t>(options.maxModelLen, s.kvBlocks * s.kvBlockSize);
  for (int64_t eos : modelConfig->eosTokenIds)
    options.eosTokenIds.push_back(static_cast<int32_t>(eos));
  if (auto eos = tokenizer->eosId(); eos && options.eosTokenIds.empty())
    options.eosTokenIds.push_back(*eos);
  routerOptions.vocabSize = static_cast<int32_t>(modelConfig->vocabSize);
  routerOptions.policy = *policy;
  routerOptions.noReplicaTimeout = std::chrono::milliseconds(s.noReplicaTimeoutMs);
  serving::ReplicaRouter router(*tokenizer, routerOptions);

  std::unique_ptr<scheduler::WorkerMesh> mesh;
  if (s.compilerUrl.empty()) {
    auto compiled = compiler::compileHuggingFace(s.model, {});
    if (!compiled) {
      net::logError("cannot compile the model", {{"error", compiled.message()}});
      return 1;
    }
    auto checkpoint = model::Checkpoint::open(s.model);
    if (!checkpoint) {
      net::logError("cannot open the checkpoint", {{"error", checkpoint.message()}});
      return 1;
    }
    auto device = engine::Device::parse(s.device);
    if (!device) {
      net::logError("bad device", {{"error", device.message()}});
      return 2;
    }
    auto kvCacheDtype = engine::parseKvCacheDType(s.kvCacheDtype);
    if (!kvCacheDtype) {
      net::logError("bad kv-cache-dtype", {{"error", kvCacheDtype.message()}});
      return 2;
    }
    auto backend = serving::InProcessBackend::create(
        compiled->programs.at(0), engine::checkpointWeights(*checkpoint),
        {.numKvBlocks = s.kvBlocks,
         .numThreads = static_cast<unsigned>(s.engineThreads),
         .device = *device,
         .kvCacheDtype = *kvCacheDtype});
    if (!backend) {
      net::logError("cannot load the model", {{"error", backend.message()}});
      return 1;
    }
    router.addReplica("local", std::shared_ptr<serving::ReplicaBackend>(std::move(*backend)));
    router.sync();
  } else {
    auto clusterSecret = net::loadServiceClusterSecret(
        {.secretFile = s.clusterSecretFile,
         .listeners = {{"the workers' endpoint and rendezvous store", s.workerHost}},
         .withoutSecret = "any local process can join the mesh as a worker"});
    if (!clusterSecret) {
      net::logError("cannot load the cluster secret", {{"error", clusterSecret.message()}});
      return 2;
    }
    scheduler::MeshOptions meshOptions;
    meshOptions.clusterSecret = *clusterSecret;
    meshOptions.maxFrameBytes = s.workerMaxFrameBytes;
    meshOptions.registerTimeout = std::chrono::milliseconds(s.registerTimeoutMs);
    meshOptions.compilerUrl = s.compilerUrl;
    meshOptions.modelDir = fs::absolute(s.model).string();
    meshOptions.tp = s.tp;
    meshOptions.pp = s.pp;
    meshOptions.kvBlockSize = s.kvBlockSize;
    meshOptions.kvBlocks = s.kvBlocks;
    meshOptions.vocabSize = routerOptions.vocabSize;
    meshOptions.workerHost = s.workerHost;
    meshOptions.workerPort = s.workerPort;
    meshOptions.storeHost = s.storeHost;
    meshOptions.storePort = s.storePort;
    meshOptions.heartbeatTimeout = std::chrono::milliseconds(s.heartbeatTimeoutMs);
    meshOptions.joinTimeout = std::chrono::milliseconds(s.joinTimeoutMs);
    meshOptions.drainGrace = std::chrono::milliseconds(s.drainGraceMs);
    meshOptions.kvStoreHost = s.kvStoreHost;
    meshOptions.kvStorePort = s.kvStorePort;
    meshOptions.kvStoreTimeoutMs = s.kvStoreTimeoutMs;
    meshOptions.kvStoreMaxQueuedBytes = s.kvStoreMaxQueuedBytes;
    auto started = scheduler::WorkerMesh::start(meshOptions, router);
    if (!started) {
      net::logError("cannot start the mesh", {{"error", started.message()}});
      return 1;
    }
    mesh = std::move(*started);
    writePortFile(s.workerPortFile, mesh->workerPort());
  }

  const std::string name = s.servedModelName.empty()
                               ? fs::path(s.model).lexically_normal().filename().string()
                               : s.servedModelName;
  scheduler::Metrics metrics(name);
  router.setStepObserver([&](const serving::StepStats &step) {
    metrics.observeStep(step);
    metrics.update(router.stats());
  });
  serving::KeyLimitOptions keyLimits{.defaultLimit = s.maxConcurrentPerKey,
                                     .retryAfter = std::chrono::seconds(s.keyLimitRetryAfterS)};
  std::vector<std::string> apiKeys;
  if (!s.apiKeysFile.empty()) {
    auto keys = scheduler::loadApiKeys(s.apiKeysFile);
    if (!keys) {
      net::logError("cannot load the API keys", {{"error", keys.message()}});
      return 2;
    }
    for (serving::ApiKeyEntry &entry : *keys) {
      if (entry.maxConcurrentRequests)
        keyLimits.perKey[entry.key] = *entry.maxConcurrentRequests;
      apiKeys.push_back(std::move(entry.key));
    }
  }
  scheduler::OpenAiServer api({.modelName = name,
                               .apiKey = s.apiKey,
                               .apiKeys = std::move(apiKeys),
                               .keyLimits = std::move(keyLimits),
                               .noReplicaTimeout = routerOptions.noReplicaTimeout,
                               .admission = {.maxWaitingRequests = s.maxWaitingRequests,
                                             .shedRetryAfter = std::chrono::seconds(s.shedRetryAfterS),
                                             .noReplicaRetryAfter =
                                                 std::chrono::seconds(s.noReplicaRetryAfterS)},
                               .chatFormat = std::move(*chatFormat),
                               .refreshMetrics =
                                   [&] {
                                     metrics.updateCluster(
                                         router.routerStats(),
                                         mesh ? mesh->counts() : scheduler::MeshCounts{});
                                   }},
                              *tokenizer, router, metrics);
  net::HttpServer server;
  api.addRoutes(server);
  Status started = server.start({.host = s.host,
                                 .port = s.port,
                                 .threads = static_cast<unsigned>(s.httpThreads),
                                 .maxBodyBytes = s.maxBodyBytes});
  if (!started) {
    net::logError("cannot start the HTTP server", {{"error", started.message()}});
    return 1;
  }
  api.setReady(true);
  writePortFile(s.portFile, server.port());
  net::logInfo("serving", {{"model", name},
                           {"url", "http://" + s.host + ":" + std::to_string(server.port())},
                           {"max_model_len", router.limits().maxModelLen}});

  const int received = net::waitForTerminationSignal();
  net::logInfo("shutting down", {{"signal", received}});
  api.setReady(false);
  server.stop(); // open streams see their clients go: their requests cancel
  if (mesh)
    mesh->stop(); // fails the workers' steps in flight, so the router can stop
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  net::installTerminationHandler();
  Settings settings;
  net::Config config("llmir-scheduler");
  bind(config, settings);
  if (std::optional<int> exitCode =
          config.loadService(argc, argv, [&] { return validate(settings); }))
    return *exitCode;
  net::initLogging("scheduler", settings.logLevel);
  return run(settings);
}
