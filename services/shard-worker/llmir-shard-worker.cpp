// llmir-shard-worker: a stateless worker. Connects to the scheduler and runs
// the worker protocol (libs/workerproto: register, heartbeat, AssignRank ->
// RankReady, StepRequests, drain); on AssignRank its ShardWorker fetches the
// ShardProgram from the compiler service, joins the replica's collectives and
// loads its weight slices.
//
// SIGTERM: the worker sends Drain{reason} to the scheduler and keeps running
// steps until the scheduler answers with Drain (it has moved this replica's
// sequences away), the connection closes, or timeouts.drain-grace-ms passes; then it
// exits 0. A lost scheduler connection exits 1 (an orchestrator restarts it).
#include "llmir/shardworker/ShardWorker.h"

#include "llmir/net/ClusterSecret.h"
#include "llmir/net/Config.h"
#include "llmir/net/Http.h"
#include "llmir/net/Log.h"
#include "llmir/net/Signals.h"
#include "llmir/workerproto/WorkerSession.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <iostream>
#include <random>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;
namespace net = llmir::net;
namespace proto = llmir::proto;

namespace {

struct Settings {
  std::string schedulerHost = "127.0.0.1";
  uint16_t schedulerPort = 8090;
  std::string workerId; // default host:pid:nonce
  std::string advertiseHost = "127.0.0.1";
  std::string device = "cpu";
  std::string collectives = "auto";
  double gpuMemoryFraction = 0.9;
  std::string kvCacheDtype = "auto";
  std::string matmulPrecision = "highest";
  std::string httpHost = "0.0.0.0";
  uint16_t httpPort = 0;
  uint32_t connectTimeoutMs = 60000;
  uint32_t heartbeatMs = 1000;
  uint32_t collectiveTimeoutMs = 30000;
  uint32_t drainGraceMs = 30000;
  unsigned threads = 0;
  net::LogLevel logLevel = net::LogLevel::Info;
  std::string clusterSecretFile;
  std::string pipelineDecodes = "auto";
  uint64_t failStep = 0; // fault injection: 0 never
};

struct Metrics {
  std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Histogram> &stepSeconds =
      prometheus::BuildHistogram()
          .Name("llmir:worker_step_seconds")
          .Help("Time of one step on this rank, by phase (prefill, decode).")
          .Register(*registry);
  prometheus::Histogram &collectiveSeconds =
      prometheus::BuildHistogram()
          .Name("llmir:worker_collective_seconds")
          .Help("Time of one host-side collective or pipeline transfer (Gloo); "
                "stream-ordered ones (NCCL, IPC) are part of the step's time.")
          .Register(*registry)
          .Add({}, prometheus::Histogram::BucketBoundaries{
                       1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1});
  prometheus::Gauge &loadedBytes =
      prometheus::BuildGauge()
          .Name("llmir:worker_loaded_bytes")
          .Help("Bytes of weight slices this rank holds.")
          .Register(*registry)
          .Add({});
  prometheus::Family<prometheus::Counter> &steps =
      prometheus::BuildCounter()
          .Name("llmir:worker_steps_total")
          .Help("Steps run, by outcome (ok, error).")
          .Register(*registry);
  prometheus::Counter &stepsLaunchedBehind =
      prometheus::BuildCounter()
          .Name("llmir:worker_steps_launched_behind_total")
          .Help("Decodes launched behind the running step (worker.pipeline-decodes).")
          .Register(*registry)
          .Add({});

  // The KV-block store (docs/kv-store.md): mirrors of the worker's counters,
  // brought up to date at every scrape.
  struct KvStoreMetrics {
    prometheus::Family<prometheus::Counter> &blocks;
    prometheus::Family<prometheus::Counter> &bytes;
    prometheus::Family<prometheus::Counter> &failedCalls;
    prometheus::Family<prometheus::Counter> &instructions;
    llmir::kvstore::WorkerBlockStoreCounters seen;

    void add(prometheus::Family<prometheus::Counter> &family, const char *labelName,
             const char *label, uint64_t now, uint64_t &before) {
      if (now > before)
        family.Add({{labelName, label}}).Increment(static_cast<double>(now - before));
      else
        family.Add({{labelName, label}}); // present from the start
      before = now;
    }
    void update(const llmir::kvstore::WorkerBlockStoreCounters &c) {
      add(blocks, "outcome", "stored", c.blocksStored, seen.blocksStored);
      add(blocks, "outcome", "refused", c.blocksRefused, seen.blocksRefused);
      add(blocks, "outcome", "put_failed", c.blocksPutFailed, seen.blocksPutFailed);
      add(blocks, "outcome", "dropped", c.blocksDropped, seen.blocksDropped);
      add(blocks, "outcome", "loaded", c.blocksLoaded, seen.blocksLoaded);
      add(bytes, "op", "put", c.bytesStored, seen.bytesStored);
      add(bytes, "op", "get", c.bytesLoaded, seen.bytesLoaded);
      add(failedCalls, "op", "put", c.putCallsFailed, seen.putCallsFailed);
      add(failedCalls, "op", "get", c.loadCallsFailed, seen.loadCallsFailed);
      add(failedCalls, "op", "get_skipped", c.loadsSkipped, seen.loadsSkipped);
      add(instructions, "op", "KV_LOAD", c.loadInstructions, seen.loadInstructions);
      add(instructions, "op", "KV_STORE", c.storeInstructions, seen.storeInstructions);
    }
  };
  KvStoreMetrics kvStore{
      prometheus::BuildCounter()
          .Name("llmir:worker_kv_store_blocks_total")
          .Help("KV blocks by outcome: stored (write-through), refused (store full or "
                "rejected), put_failed (store unreachable or past its deadline), dropped "
                "(write queue full), loaded (from the store into the cache).")
          .Register(*registry),
      prometheus::BuildCounter()
          .Name("llmir:worker_kv_store_bytes_total")
          .Help("KV block bytes moved to (put) and from (get) the store.")
          .Register(*registry),
      prometheus::BuildCounter()
          .Name("llmir:worker_kv_store_failed_calls_total")
          .Help("Store calls that failed (store down, restarted or past the deadline) by op: "
                "put, get, get_skipped (not tried: backing off after a failure); the worker "
                "goes on without the store.")
          .Register(*registry),
      prometheus::BuildCounter()
          .Name("llmir:worker_kv_transfer_instructions_total")
          .Help("KV_LOAD / KV_STORE instructions of the rank's program that moved KV blocks "
                "to or from the store, by op (every block moves through them).")
          .Register(*registry),
      {}};

  static prometheus::Histogram::BucketBoundaries stepBuckets() {
    return {1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  }
};

std::string defaultWorkerId() {
  char host[256] = "worker";
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  return std::string(host) + ":" + std::to_string(getpid()) + ":" +
         std::to_string(rd() % 1000000);
}

/// The shard worker's engine as the protocol session runs it, with its
/// metrics, log lines and readiness.
class MeteredRank final : public llmir::workerproto::RankRunner {
public:
  MeteredRank(llmir::shard_worker::ShardWorker &worker, Metrics &metrics,
              std::atomic<bool> &ready)
      : worker_(worker), metrics_(metrics), ready_(ready) {}

  proto::RankReady setUp(const proto::AssignRank &assign) override {
    ready_ = false;
    proto::RankReady result = worker_.setUp(assign);
    ready_ = result.ok();
    metrics_.loadedBytes.Set(static_cast<double>(worker_.loadedBytes()));
    if (result.ok())
      net::logInfo("rank ready", {{"rank", assign.rank()},
                                  {"loaded_bytes", worker_.loadedBytes()}});
    else
      net::logError("rank setup failed", {{"error", result.error()}});
    return result;
  }

  proto::StepResponse step(const proto::StepRequest &request) override {
    return counted(worker_.step(request));
  }
  bool launchStep(const proto::StepRequest &request) override {
    return worker_.launchStep(request);
  }
  bool launchStepBehind(const proto::StepRequest &request) override {
    if (!worker_.launchStepBehind(request))
      return false;
    metrics_.stepsLaunchedBehind.Increment();
    return true;
  }
  proto::StepResponse finishStep() override { return counted(worker_.finishStep()); }

  proto::KvLoadResponse loadKvBlocks(const proto::KvLoadRequest &request) override {
    return worker_.loadKvBlocks(request);
  }

private:
  proto::StepResponse counted(proto::StepResponse response) {
    metrics_.steps.Add({{"outcome", response.ok() ? "ok" : "error"}}).Increment();
    if (!response.ok())
      net::logError("step failed", {{"step_id", response.step_id()},
                                    {"rank", response.rank()},
                                    {"error", response.error()}});
    return response;
  }

  llmir::shard_worker::ShardWorker &worker_;
  Metrics &metrics_;
  std::atomic<bool> &ready_;
};

} // namespace

int main(int argc, char **argv) {
  net::installTerminationHandler();
  Settings s;
  net::Config config("llmir-shard-worker");
  config.add("scheduler.host", &s.schedulerHost, "scheduler's worker endpoint host");
  config.add("scheduler.port", &s.schedulerPort, "scheduler's worker endpoint port");
  config.add("worker.id", &s.workerId, "unique id (default host:pid:nonce)");
  config.add("worker.advertise-host", &s.advertiseHost,
             "address peers reach this worker's collectives on");
  config.add("worker.device", &s.device, "cpu, cuda or cuda:<i>");
  config.add("worker.collectives", &s.collectives,
             "auto (nccl on cuda, gloo on cpu), gloo or nccl; equal across a replica");
  config.add("worker.kv-cache-dtype", &s.kvCacheDtype,
             "auto (bf16 on cuda for 16-bit weights, else f32), f32 or bf16");
  config.add("worker.matmul-precision", &s.matmulPrecision,
             "highest (products within f32 rounding) or medium (activations rounded to bf16 "
             "in products with bf16 weights, as bf16 models compute: cuda's tensor cores, "
             "the cpu's vdpbf16ps)");
  config.add("worker.gpu-memory-fraction", &s.gpuMemoryFraction,
             "cuda: share of the device's memory for weights, activations and KV "
             "blocks when the scheduler does not fix the block count");
  config.add("worker.threads", &s.threads, "kernel threads (0 = all cores)");
  config.add("http.host", &s.httpHost, "health/metrics listen address");
  config.add("http.port", &s.httpPort, "health/metrics port (0 = ephemeral)");
  config.add("timeouts.connect-ms", &s.connectTimeoutMs,
             "how long to retry connecting to the scheduler");
  config.add("timeouts.heartbeat-ms", &s.heartbeatMs, "heartbeat period");
  config.add("timeouts.collective-ms", &s.collectiveTimeoutMs,
             "bound on joining the replica and on every collective");
  config.add("timeouts.drain-grace-ms", &s.drainGraceMs,
             "after SIGTERM, keep serving steps this long at most");
  config.add("log.level", &s.logLevel, "the lowest level of the lines logged");
  config.add("cluster.secret-file", &s.clusterSecretFile,
             "file holding the cluster secret (else $LLMIR_CLUSTER_SECRET; "
             "docs/reliability.md)");
  config.add("worker.pipeline-decodes", &s.pipelineDecodes,
             "off, auto or on: a one-rank replica's decodes launched behind the "
             "running one (auto: where the device runs ahead of the host, CUDA, behind a "
             "scheduler chaining two decodes or decodes of 0.25 ms or more)");
  config.add("debug.fail-step", &s.failStep,
             "fault injection for tests: this worker's Nth step fails before it runs "
             "(0: never)");
  // --check-config checks the settings, not this machine: whether the CUDA
  // device exists is a start-time check (CI has no GPU, GPU nodes do).
  std::optional<llmir::engine::Device> device;
  std::optional<llmir::engine::KvCacheDType> kvCacheDtype;
  std::optional<llmir::engine::MatmulPrecision> matmulPrecision;
  std::optional<llmir::shard_worker::ShardWorkerOptions::PipelineDecodes> pipelineDecodes;
  auto validate = [&]() -> llmir::Status {
    if (s.heartbeatMs == 0 || s.collectiveTimeoutMs == 0)
      return llmir::Status::error(
          "timeouts.heartbeat-ms and timeouts.collective-ms must be positive");
    auto parsedDevice = llmir::engine::Device::parse(s.device);
    if (!parsedDevice)
      return parsedDevice.status().withContext("worker.device");
    device = *parsedDevice;
    if (s.collectives != "auto" && s.collectives != "gloo" && s.collectives != "nccl")
      return llmir::Status::error("worker.collectives '" + s.collectives +
                                  "' is not one of auto, gloo, nccl");
    auto parsedDtype = llmir::engine::parseKvCacheDType(s.kvCacheDtype);
    if (!parsedDtype)
      return parsedDtype.status().withContext("worker.kv-cache-dtype");
    kvCacheDtype = *parsedDtype;
    auto parsedPrecision = llmir::engine::parseMatmulPrecision(s.matmulPrecision);
    if (!parsedPrecision)
      return parsedPrecision.status().withContext("worker.matmul-precision");
    matmulPrecision = *parsedPrecision;
    auto parsedPipeline = llmir::shard_worker::parsePipelineDecodes(s.pipelineDecodes);
    if (!parsedPipeline)
      return parsedPipeline.status();
    pipelineDecodes = *parsedPipeline;
    return llmir::Status::ok();
  };
  if (std::optional<int> exitCode = config.loadService(argc, argv, validate))
    return *exitCode;
  if (s.workerId.empty())
    s.workerId = defaultWorkerId();
  net::initLogging("shard-worker", s.logLevel);

  Metrics metrics;
  llmir::shard_worker::WorkerObserver observer;
  observer.stepSeconds = [&](const char *phase, double seconds) {
    metrics.stepSeconds.Add({{"phase", phase}}, Metrics::stepBuckets()).Observe(seconds);
  };
  observer.collectiveSeconds = [&](double seconds) {
    metrics.collectiveSeconds.Observe(seconds);
  };
  if (device->isCuda() && !llmir::engine::cudaBackendBuilt()) {
    std::cerr << "llmir-shard-worker: worker.device " << s.device
              << ": this build has no CUDA backend\n";
    return 2;
  }
  if (device->isCuda() && device->index >= llmir::engine::cudaDeviceCount()) {
    std::cerr << "llmir-shard-worker: worker.device " << s.device << ": "
              << llmir::engine::cudaDeviceCount() << " CUDA device(s) visible\n";
    return 2;
  }
  // The worker only connects (its HTTP port serves probes and metrics).
  auto clusterSecret = net::loadServiceClusterSecret(
      {.secretFile = s.clusterSecretFile,
       .withoutSecret = "the scheduler, store and compiler service must run without one "
                        "(loopback only)"});
  if (!clusterSecret) {
    std::cerr << "llmir-shard-worker: " << clusterSecret.message() << "\n";
    return 2;
  }
  llmir::shard_worker::ShardWorkerOptions options;
  options.clusterSecret = *clusterSecret;
  options.device = *device;
  options.kvCacheDtype = *kvCacheDtype;
  options.matmulPrecision = *matmulPrecision;
  options.ncclCollectives =
      s.collectives == "nccl" || (s.collectives == "auto" && device->isCuda());
  options.gpuMemoryFraction = s.gpuMemoryFraction;
  options.advertiseHost = s.advertiseHost;
  options.collectiveTimeout = std::chrono::milliseconds(s.collectiveTimeoutMs);
  options.threads = s.threads;
  options.failStep = s.failStep;
  options.pipelineDecodes = *pipelineDecodes;
  llmir::shard_worker::ShardWorker worker(options, observer);

  std::atomic<bool> ready{false};
  net::HttpServer http;
  net::addProbeRoutes(http, {.notReady = [&]() -> std::optional<std::string> {
                               if (ready)
                                 return std::nullopt;
                               return "no rank assigned yet";
                             },
                             .metricsText = [&] {
                               metrics.kvStore.update(worker.kvStoreCounters());
                               return prometheus::TextSerializer().Serialize(
                                   metrics.registry->Collect());
                             }});
  net::HttpServerConfig httpConfig;
  httpConfig.host = s.httpHost;
  httpConfig.port = s.httpPort;
  httpConfig.threads = 1;
  if (auto st = http.start(httpConfig); !st) {
    net::logError("cannot start HTTP", {{"error", st.message()}});
    return 1;
  }

  net::FramedOptions framedOptions;
  framedOptions.clusterSecret = *clusterSecret;
  auto link = llmir::workerproto::connectTcp(s.schedulerHost, s.schedulerPort,
                                             std::chrono::milliseconds(s.connectTimeoutMs),
                                             framedOptions);
  if (!link) {
    net::logError("cannot reach the scheduler", {{"error", link.message()}});
    return 1;
  }
  net::logInfo("connected", {{"worker_id", s.workerId},
                             {"scheduler", (*link)->peer()},
                             {"http_port", unsigned(http.port())}});
  MeteredRank rank(worker, metrics, ready);
  llmir::workerproto::WorkerSessionOptions session;
  session.workerId = s.workerId;
  session.host = s.advertiseHost;
  session.device = device->name();
  session.heartbeatPeriod = std::chrono::milliseconds(s.heartbeatMs);
  session.drainGrace = std::chrono::milliseconds(s.drainGraceMs);
  session.terminationRequested = [] { return net::waitForTerminationSignal(0ms).has_value(); };
  const auto end = llmir::workerproto::runWorkerSession(**link, rank, session);
  const int exitCode = llmir::workerproto::exitCode(end);
  net::logInfo("session ended", {{"how", llmir::workerproto::describe(end)}});
  http.stop();
  net::logInfo("stopped", {{"exit_code", exitCode}});
  return exitCode;
}
