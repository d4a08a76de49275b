#include "llmir/shardworker/ShardWorker.h"

#include "llmir/engine/CheckpointWeights.h"
#include "llmir/net/HttpClient.h"
#include "llmir/net/Log.h"
#include "llmir/serving/StepSampling.h"
#include "llmir/support/ClusterAuth.h"

namespace llmir::shard_worker {
namespace {
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

uint64_t dtypeBytes(proto::DType dtype) {
  switch (dtype) {
  case proto::F16:
  case proto::BF16:
    return 2;
  default:
    return 4;
  }
}

/// The rank that samples: the first rank of the last pipeline stage (rank
/// order puts the stage outermost, docs/compiler.md).
uint32_t decidingRank(const proto::ShardProgram &program) {
  uint32_t stages = std::max(1u, program.num_stages());
  return program.world_size() / stages * (stages - 1);
}
} // namespace

template <typename Op> Status TimedCommunicator::timed(Op op) {
  auto start = Clock::now();
  Status status = op();
  if (observer_.collectiveSeconds)
    observer_.collectiveSeconds(secondsSince(start));
  return status;
}

Status TimedCommunicator::allReduceSum(float *data, size_t count, uint32_t groupId) {
  return timed([&] { return inner_.allReduceSum(data, count, groupId); });
}
Status TimedCommunicator::allGather(const float *in, size_t count, float *out,
                                    uint32_t groupId) {
  return timed([&] { return inner_.allGather(in, count, out, groupId); });
}
Status TimedCommunicator::send(const float *data, size_t count, uint32_t peerRank) {
  return timed([&] { return inner_.send(data, count, peerRank); });
}
Status TimedCommunicator::recv(float *data, size_t count, uint32_t peerRank) {
  return timed([&] { return inner_.recv(data, count, peerRank); });
}

uint64_t weightSliceBytes(const proto::ShardProgram &program) {
  uint64_t total = 0;
  for (const auto &w : program.weights()) {
    uint64_t elements = 1;
    for (int d = 0; d < w.full_shape_size(); ++d)
      elements *= static_cast<uint64_t>(
          (w.dim() == d) ? w.length() : w.full_shape(d));
    proto::DType dtype = w.slot() < static_cast<uint32_t>(program.slots_size())
                             ? program.slots(static_cast<int>(w.slot())).dtype()
                             : proto::F32;
    total += elements * dtypeBytes(dtype);
  }
  return total;
}

namespace {
void addCounters(kvstore::WorkerBlockStoreCounters &to, const kvstore::WorkerBlockStoreCounters &c) {
  to.blocksStored += c.blocksStored;
  to.blocksRefused += c.blocksRefused;
  to.blocksPutFailed += c.blocksPutFailed;
  to.blocksDropped += c.blocksDropped;
  to.putCallsFailed += c.putCallsFailed;
  to.blocksLoaded += c.blocksLoaded;
  to.blocksMissed += c.blocksMissed;
  to.loadCallsFailed += c.loadCallsFailed;
  to.loadsSkipped += c.loadsSkipped;
  to.bytesStored += c.bytesStored;
  to.bytesLoaded += c.bytesLoaded;
  to.loadInstructions += c.loadInstructions;
  to.storeInstructions += c.storeInstructions;
}
} // namespace

kvstore::WorkerBlockStoreCounters ShardWorker::kvStoreCounters() const {
  std::lock_guard<std::mutex> lock(kvStoreMutex_);
  kvstore::WorkerBlockStoreCounters total = retiredKvStoreCounters_;
  if (kvStore_)
    addCounters(total, kvStore_->counters());
  return total;
}

proto::KvLoadResponse ShardWorker::loadKvBlocks(const proto::KvLoadRequest &request) {
  if (!kvStore_) {
    // No store here (none configured, or it could not be set up): nothing
    // loaded, the scheduler computes the blocks.
    proto::KvLoadResponse response;
    response.set_load_id(request.load_id());
    response.set_rank(rank_);
    response.set_ok(true);
    return response;
  }
  std::string error;
  proto::KvLoadResponse response = kvStore_->load(request, rank_, &error);
  if (!error.empty() && request.store())
    net::logWarn("kv store write skipped a block", {{"load_id", request.load_id()},
                                                    {"error", error}});
  else if (!error.empty())
    net::logWarn("kv store load failed; the blocks are recomputed",
                 {{"load_id", request.load_id()}, {"error", error}});
  return response;
}

void ShardWorker::tearDown() {
  {
    std::lock_guard<std::mutex> lock(kvStoreMutex_);
    if (kvStore_)
      addCounters(retiredKvStoreCounters_, kvStore_->counters());
    kvStore_.reset(); // before the executor it reads
  }
  pipeline_.reset(); // answers what it launched, before the executor goes
  executor_.reset();
  timedComm_.reset();
  comm_.reset();
  runtime_.reset();
  checkpoint_.reset();
  chain_.forget();
  loadedBytes_ = 0;
}

Status ShardWorker::trySetUp(const proto::AssignRank &assign) {
  tearDown();
  rank_ = assign.rank();
  const std::string url = assign.compiler_url() + "/v1/plans/" + assign.plan_id() +
                          "/ranks/" + std::to_string(assign.rank());
  net::HttpClientRequest request;
  request.url = url;
  request.timeout = options_.fetchTimeout;
  if (options_.clusterSecret)
    request.headers.emplace_back(
        "Authorization",
        "Bearer " + auth::bearerToken(*options_.clusterSecret, auth::kCompilerAudience));
  auto fetched = net::httpRequest(request);
  if (!fetched)
    return fetched.status().withContext("fetching this rank's program");
  if (fetched->status != 200)
    return Status::error("GET " + url + " answered " + std::to_string(fetched->status) +
                         ": " + fetched->body);
  if (!program_.ParseFromString(fetched->body))
    return Status::error("GET " + url + ": the body is not a ShardProgram");
  if (program_.rank() != assign.rank() || program_.world_size() != assign.world_size())
    return Status::error("program from " + url + " is for rank " +
                         std::to_string(program_.rank()) + " of " +
                         std::to_string(program_.world_size()) + ", assigned rank " +
                         std::to_string(assign.rank()) + " of " +
                         std::to_string(assign.world_size()));

  auto checkpoint = model::Checkpoint::open(assign.model_dir());
  if (!checkpoint)
    return checkpoint.status().withContext("opening model_dir " + assign.model_dir());
  checkpoint_.emplace(std::move(*checkpoint));

  runtime::RuntimeConfig config;
  config.worldSize = static_cast<int>(assign.world_size());
  config.rank = static_cast<int>(assign.rank());
  config.storeHost = assign.store_host();
  config.storePort = static_cast<uint16_t>(assign.store_port());
  config.storePrefix = assign.store_prefix();
  config.hostname = options_.advertiseHost;
  config.timeout = options_.collectiveTimeout;
  config.clusterSecret = options_.clusterSecret;
  if (options_.ncclCollectives) {
    config.backend = "nccl";
    config.cudaDevice = options_.device.index;
  }
  auto rt = runtime::DistributedRuntime::init(config);
  if (!rt)
    return rt.status().withContext("joining replica " + assign.replica_id());
  runtime_ = std::move(*rt);
  auto comm = runtime::EngineCommunicator::create(*runtime_, program_);
  if (!comm)
    return comm.status().withContext("creating the program's groups");
  comm_ = std::move(*comm);
  timedComm_ = std::make_unique<TimedCommunicator>(*comm_, observer_);

  engine::ExecutorOptions executorOptions;
  executorOptions.numKvBlocks = assign.num_kv_blocks();
  executorOptions.numThreads = options_.threads;
  executorOptions.device = options_.device;
  executorOptions.gpuMemoryFraction = options_.gpuMemoryFraction;
  executorOptions.kvCacheDtype = options_.kvCacheDtype;
  executorOptions.matmulPrecision = options_.matmulPrecision;
  auto executor = engine::Executor::create(
      program_, engine::checkpointWeights(*checkpoint_), executorOptions,
      timedComm_.get());
  if (!executor)
    return executor.status().withContext("loading rank " + std::to_string(rank_));
  executor_ = std::move(*executor);
  decides_ = assign.rank() == decidingRank(program_);
  // One stage: every rank has the gathered logits and draws the same token
  // (the same bits, the same seeded uniform), which its chained decodes need.
  samples_ = decides_ || program_.num_stages() <= 1;
  // Pipelined decodes on a replica of one rank (with collectives,
  // every rank would have to launch the same steps behind);
  // pipelinesNextDecode then says which decodes it takes.
  using Pipeline = ShardWorkerOptions::PipelineDecodes;
  const bool pipelines =
      options_.pipelineDecodes == Pipeline::On ||
      (options_.pipelineDecodes == Pipeline::Auto && executor_->launchesAhead());
  lastDecodeSeconds_ = 0;
  if (pipelines && assign.world_size() == 1 && decides_)
    pipeline_ = std::make_unique<serving::DecodePipeline>(*executor_, chain_);
  loadedBytes_ = weightSliceBytes(program_);
  if (assign.has_kv_store()) {
    // The store is a cache: a rank that cannot use it still serves.
    auto store = kvstore::RankKvStore::create(assign.kv_store(), assign, *executor_,
                                              options_.clusterSecret);
    // It becomes the executor's KvTransferHook: the program's KV_LOAD /
    // KV_STORE move the blocks.
    if (!store) {
      net::logWarn("kv store not used", {{"error", store.message()}});
    } else {
      std::lock_guard<std::mutex> lock(kvStoreMutex_);
      kvStore_ = std::move(*store);
      net::logInfo("kv store", {{"address", assign.kv_store().host() + ":" +
                                                std::to_string(assign.kv_store().port())},
                                {"block_bytes", executor_->kvBlockBytes()},
                                {"dtype", executor_->kvCacheDtypeName()}});
    }
  }
  return Status::ok();
}

proto::RankReady ShardWorker::setUp(const proto::AssignRank &assign) {
  proto::RankReady ready;
  ready.set_replica_id(assign.replica_id());
  ready.set_rank(assign.rank());
  Status status = trySetUp(assign);
  if (!status) {
    tearDown();
    ready.set_ok(false);
    ready.set_error(status.message());
    return ready;
  }
  ready.set_ok(true);
  ready.set_loaded_bytes(loadedBytes_);
  return ready;
}

bool ShardWorker::launchStep(const proto::StepRequest &request) {
  return pipelineTakes(request) && counted(pipeline_->launch(request));
}

bool ShardWorker::launchStepBehind(const proto::StepRequest &request) {
  return pipelineTakes(request) && counted(pipeline_->launchBehind(request));
}

bool ShardWorker::pipelineTakes(const proto::StepRequest &request) const {
  // The step failing on purpose (failStep) takes step()'s path, and so do
  // decodes that would not gain (pipelinesNextDecode).
  return pipeline_ && steps_ + 1 != options_.failStep &&
         pipelinesNextDecode(options_, executor_->launchesAhead(), request.chain_depth(),
                             lastDecodeSeconds_);
}

Result<ShardWorkerOptions::PipelineDecodes> parsePipelineDecodes(std::string_view text) {
  using Pipeline = ShardWorkerOptions::PipelineDecodes;
  if (text == "auto")
    return Pipeline::Auto;
  if (text == "on")
    return Pipeline::On;
  if (text == "off")
    return Pipeline::Off;
  return Status::error("worker.pipeline-decodes '" + std::string(text) +
                       "' is not one of auto, on, off");
}

bool pipelinesNextDecode(const ShardWorkerOptions &options, bool launchesAhead,
                         uint32_t chainDepth, double lastDecodeSeconds) {
  using Pipeline = ShardWorkerOptions::PipelineDecodes;
  switch (options.pipelineDecodes) {
  case Pipeline::On:
    return true;
  case Pipeline::Off:
    return false;
  case Pipeline::Auto:
    // With one chained decode queued, the step launched behind waits for
    // the scheduler's round trip: worth it only behind a longer step. A
    // pipelined step's own time stays near the device's, so a model whose
    // decodes get short falls back by itself.
    return launchesAhead &&
           (chainDepth >= 2 || lastDecodeSeconds >= options.pipelineMinStepSeconds);
  }
  return false;
}

bool ShardWorker::counted(bool launched) {
  steps_ += launched ? 1 : 0;
  return launched;
}

proto::StepResponse ShardWorker::finishStep() {
  if (!pipeline_) {
    proto::StepResponse response;
    response.set_ok(false);
    response.set_error("this rank launches no steps");
    return response;
  }
  double seconds = 0;
  proto::StepResponse response = pipeline_->finish(seconds);
  response.set_rank(rank_);
  if (response.ok()) {
    response.set_step_seconds(seconds);
    lastDecodeSeconds_ = seconds;
    if (observer_.stepSeconds)
      observer_.stepSeconds("decode", seconds);
  }
  return response;
}

proto::StepResponse ShardWorker::step(const proto::StepRequest &request) {
  auto start = Clock::now();
  proto::StepResponse response;
  response.set_step_id(request.step_id());
  response.set_rank(rank_);
  auto fail = [&](const Status &status) {
    response.set_ok(false);
    response.set_error(status.message()); // the scheduler names the rank
    response.clear_tokens();
    return response;
  };
  if (!executor_)
    return fail(Status::error("no rank assigned (step before a successful AssignRank)"));
  if (++steps_ == options_.failStep)
    return fail(Status::error("step " + std::to_string(steps_) +
                              " of this worker failed on purpose (debug.fail-step)"));
  bool prefill = false;
  for (const auto &seq : request.sequences())
    prefill |= seq.token_ids_size() > 1;
  if (Status ran = serving::stepAndSample(*executor_, request, samples_, response, &chain_); !ran)
    return fail(ran);
  if (!decides_) { // the scheduler takes the deciding rank's tokens
    response.clear_tokens();
    response.clear_prompt_logprobs();
  }
  if (kvStore_) {
    // The step's KV_STORE copied the filled blocks (store_blocks) into the
    // write-through queue; the puts run in the background.
    const uint64_t putFailures = kvStore_->counters().putCallsFailed;
    if (putFailures != warnedPutFailures_ &&
        Clock::now() - lastKvStoreWarning_ > std::chrono::seconds(10)) {
      net::logWarn("kv store puts failing; blocks are not stored",
                   {{"failed_put_calls", putFailures}});
      warnedPutFailures_ = putFailures;
      lastKvStoreWarning_ = Clock::now();
    }
  }
  response.set_ok(true);
  double seconds = secondsSince(start);
  response.set_step_seconds(seconds);
  if (!prefill)
    lastDecodeSeconds_ = seconds;
  if (observer_.stepSeconds)
    observer_.stepSeconds(prefill ? "prefill" : "decode", seconds);
  return response;
}

} // namespace llmir::shard_worker
