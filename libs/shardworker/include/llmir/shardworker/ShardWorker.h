// One shard worker's rank: set up from an AssignRank (fetch the program from
// the compiler service, join the replica's collectives, load the weight
// slices), then run StepRequests. Stateless between steps apart from its KV
// cache: the scheduler sends every sequence's tokens, positions, block table
// and sampling seed.
#pragma once

#include "llmir/engine/Communicator.h"
#include "llmir/engine/Executor.h"
#include "llmir/kvstore/RankKvStore.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/proto/shard_program.pb.h"
#include "llmir/proto/worker.pb.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/EngineCommunicator.h"
#include "llmir/serving/DecodePipeline.h"
#include "llmir/serving/StepSampling.h"

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

namespace llmir::shard_worker {

/// What the service measures (exported by the service as Prometheus metrics).
struct WorkerObserver {
  std::function<void(const char *phase, double seconds)> stepSeconds;
  std::function<void(double seconds)> collectiveSeconds;
};

/// Forwards every call to the runtime's communicator and times the
/// host-side collectives (Gloo; a CUDA rank whose communicator cannot order
/// on its stream). Stream-ordered ones (NCCL, the IPC all-reduce, the
/// PeerExchange) return before they run and are part of the step's time,
/// not timed here. Each of engine::Communicator's virtuals must be
/// forwarded: one left to the base's default turns a capability off (until
/// the stream-ordered ones were forwarded, GPU workers at tp=2 ran every
/// all-reduce host-synchronously, without CUDA graphs: an 8B served at
/// concurrency 64 at 0.4x of tp=1, docs/performance.md).
class TimedCommunicator final : public engine::Communicator {
public:
  TimedCommunicator(engine::Communicator &inner, const WorkerObserver &observer)
      : inner_(inner), observer_(observer) {}
  Status allReduceSum(float *data, size_t count, uint32_t groupId) override;
  Status allGather(const float *in, size_t count, float *out,
                   uint32_t groupId) override;
  Status send(const float *data, size_t count, uint32_t peerRank) override;
  Status recv(float *data, size_t count, uint32_t peerRank) override;
  bool takesDeviceMemory() const override { return inner_.takesDeviceMemory(); }

  bool ordersOnStream() const override { return inner_.ordersOnStream(); }
  Status allReduceSumOn(void *stream, float *data, size_t count, uint32_t groupId) override {
    return inner_.allReduceSumOn(stream, data, count, groupId);
  }
  Status allGatherOn(void *stream, const float *in, size_t count, float *out,
                     uint32_t groupId) override {
    return inner_.allGatherOn(stream, in, count, out, groupId);
  }
  Status sendOn(void *stream, const float *data, size_t count, uint32_t peerRank) override {
    return inner_.sendOn(stream, data, count, peerRank);
  }
  Status recvOn(void *stream, float *data, size_t count, uint32_t peerRank) override {
    return inner_.recvOn(stream, data, count, peerRank);
  }
  bool fusesAllReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op,
                                uint32_t groupId) const override {
    return inner_.fusesAllReduceAddRmsNorm(op, groupId);
  }
  Status allReduceAddRmsNormOn(void *stream, const engine::AllReduceAddRmsNorm &op,
                               uint32_t groupId) override {
    return inner_.allReduceAddRmsNormOn(stream, op, groupId);
  }
  engine::PeerExchange peerExchange(uint32_t groupId) const override {
    return inner_.peerExchange(groupId);
  }
  Status synchronize(void *stream) override { return inner_.synchronize(stream); }
  Status synchronizeEvent(void *event) override { return inner_.synchronizeEvent(event); }

private:
  template <typename Op> Status timed(Op op);
  engine::Communicator &inner_;
  const WorkerObserver &observer_;
};

struct ShardWorkerOptions {
  /// Address peers reach this worker's collectives on.
  std::string advertiseHost = "127.0.0.1";
  std::chrono::milliseconds collectiveTimeout{30000};
  std::chrono::milliseconds fetchTimeout{60000};
  unsigned threads = 0; // kernel threads; 0 = all cores
  engine::Device device;
  bool ncclCollectives = false; // else Gloo (host memory)
  double gpuMemoryFraction = 0.9;
  engine::KvCacheDType kvCacheDtype = engine::KvCacheDType::Auto;
  engine::MatmulPrecision matmulPrecision = engine::MatmulPrecision::Highest;
  /// The internal plane's secret: proves this worker to the rendezvous store
  /// and the compiler service.
  std::optional<std::string> clusterSecret;
  /// Decodes of a one-rank replica launched behind the running one
  /// (launchStepBehind): Auto where the executor launches ahead of the
  /// device (Executor::launchesAhead: CUDA) and either the scheduler keeps
  /// two or more chained decodes queued (StepRequest.chain_depth) or the
  /// last decode took at least pipelineMinStepSeconds; On always (tests,
  /// A/B runs); Off never.
  enum class PipelineDecodes { Auto, On, Off };
  PipelineDecodes pipelineDecodes = PipelineDecodes::Auto;
  /// Auto's shortest decode worth pipelining behind a scheduler that queues
  /// one chained decode. Behind a pipelined step the next one waits for
  /// the scheduler's answer-to-request round trip (~0.1 ms on an H200
  /// host's loopback), which the synchronous path hides behind its own
  /// step: the demo model's 0.1 ms steps served 18% slower pipelined, the
  /// 1.1B shape's 0.95 ms ones 7% faster; with two queued, both at the
  /// engine's step (docs/performance.md, forty-first session).
  double pipelineMinStepSeconds = 250e-6;
  /// Fault injection (tests): the Nth step this worker is sent, counted over
  /// every assignment, fails before it runs, as a step failing on one rank
  /// before its collectives does (0: never).
  uint64_t failStep = 0;
};

/// worker.pipeline-decodes: "auto", "on" or "off".
Result<ShardWorkerOptions::PipelineDecodes> parsePipelineDecodes(std::string_view text);

/// Whether a one-rank replica's next decode is pipelined (the
/// options' PipelineDecodes and pipelineMinStepSeconds): `launchesAhead` is
/// the executor's, `chainDepth` the request's (StepRequest.chain_depth),
/// `lastDecodeSeconds` the last decode's time (0: none yet).
bool pipelinesNextDecode(const ShardWorkerOptions &options, bool launchesAhead,
                         uint32_t chainDepth, double lastDecodeSeconds);

class ShardWorker {
public:
  ShardWorker(ShardWorkerOptions options, WorkerObserver observer)
      : options_(std::move(options)), observer_(std::move(observer)) {}

  /// Joins the replica named by `assign`; the RankReady to send back says
  /// whether it worked (and why not). A worker can be set up again later.
  proto::RankReady setUp(const proto::AssignRank &assign);
  /// Runs one step on this rank. The deciding rank (first rank of the last
  /// pipeline stage) samples; the others answer with an empty token list.
  proto::StepResponse step(const proto::StepRequest &request);
  /// Pipelined decodes on a one-rank replica (serving::DecodePipeline;
  /// workerproto::RankRunner's launchStep / launchStepBehind / finishStep):
  /// a chained decode launched behind the running one, its tokens those
  /// that step drew on the device. False: nothing launched (step() answers it).
  bool launchStep(const proto::StepRequest &request);
  bool launchStepBehind(const proto::StepRequest &request);
  proto::StepResponse finishStep();

  /// Fills blocks from the KV-block store (KvLoadRequest, between steps).
  proto::KvLoadResponse loadKvBlocks(const proto::KvLoadRequest &request);
  /// KV-block store counters of every rank this worker set up (metrics).
  kvstore::WorkerBlockStoreCounters kvStoreCounters() const;

  bool ready() const { return executor_ != nullptr; }
  uint64_t loadedBytes() const { return loadedBytes_; }

private:
  Status trySetUp(const proto::AssignRank &assign);
  void tearDown();
  /// Whether `request` may go to pipeline_ (there is one, it is not the
  /// step failStep fails, pipelinesNextDecode); counted() counts a launched
  /// one.
  bool pipelineTakes(const proto::StepRequest &request) const;
  bool counted(bool launched);

  ShardWorkerOptions options_;
  WorkerObserver observer_;
  uint32_t rank_ = 0;
  bool decides_ = false; // its tokens go in the response
  bool samples_ = false; // samples every step: decides_, or every rank of one stage
  uint64_t loadedBytes_ = 0;
  uint64_t steps_ = 0; // steps sent to this worker (failStep)
  double lastDecodeSeconds_ = 0; // pipelinesNextDecode's
  proto::ShardProgram program_;
  // Destroyed in reverse: executor, communicators, runtime, checkpoint.
  std::optional<model::Checkpoint> checkpoint_;
  std::unique_ptr<runtime::DistributedRuntime> runtime_;
  std::unique_ptr<runtime::EngineCommunicator> comm_;
  std::unique_ptr<TimedCommunicator> timedComm_;
  std::unique_ptr<engine::Executor> executor_;
  // This rank's samples for chained decodes (a one-stage replica's scheduler
  // sends them; ReplicaInfo::chainsDecode): every rank of one stage holds
  // the gathered logits and samples, so each fills its own chained inputs.
  serving::DecodeChain chain_;
  // A one-rank replica's pipelined decodes (over executor_ and chain_;
  // reset before the executor).
  std::unique_ptr<serving::DecodePipeline> pipeline_;
  // The KV-block store (AssignRank.kv_store); null without one or when it
  // could not be set up (the rank then serves without it).
  mutable std::mutex kvStoreMutex_; // kvStore_ and retired counters vs. metrics
  std::unique_ptr<kvstore::RankKvStore> kvStore_;
  kvstore::WorkerBlockStoreCounters retiredKvStoreCounters_;
  std::chrono::steady_clock::time_point lastKvStoreWarning_{};
  uint64_t warnedPutFailures_ = 0;
};

/// Bytes of the weight slices `program` loads (slot dtype x slice elements).
uint64_t weightSliceBytes(const proto::ShardProgram &program);

} // namespace llmir::shard_worker
