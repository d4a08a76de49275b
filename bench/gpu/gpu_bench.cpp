// llmir-gpu-bench: LLMIR's engine measured as the compiled-PyTorch peer
// measures itself (../shared/peers/compiled_torch_decoder.py): decode at
// several batch sizes (each sequence a 128-token prompt, then 128 new tokens;
// tok/s summed over the batch, decode steps only), and one prefill of 2,048
// tokens. Prints one JSON object with the numbers, the cost model's
// prediction of each timed step (compiler::predictStepSeconds on the cluster
// spec's device, for the calibration in docs/performance.md) and, on a GPU,
// the device's copy bandwidth measured in the same run and the batch-1
// roofline (bandwidth / weight bytes read per token).
//
//   llmir-gpu-bench --model DIR [--device cuda|cuda:N|cpu] [--tp N] [--pp M]
//                   [--batches 1,8,32,128] [--prompt 128] [--new-tokens 128]
//                   [--prefill 2048] [--warmup-steps 3] [--cluster-spec FILE] [--predict-only]
//                   [--matmul-precision highest|medium] [--threads N]
//                   [--broadcast-ids-every-step] [--synchronous-decode]
//                   [--temperature T] [--top-p P]
//
// With tp * pp > 1 the process becomes a launcher, as llmir-generate does: it
// compiles once, publishes each rank's ShardProgram in a rendezvous store on
// loopback and re-runs itself once per rank (rank r on cuda:r with --device
// cuda, NCCL between the GPUs; CPU ranks over Gloo). Every rank steps its
// program with the same inputs and the same greedy ids, so the ranks stay in
// lockstep and rank 0's clock times whole steps: with pipeline stages the
// deciding rank (the last stage's first TP rank) broadcasts the ids after
// each step; without, every rank holds the gathered logits and takes the
// same ids itself (compared once a batch). The broadcast, a host round trip
// through NCCL, cost an 8B TP=2 step on two H200s 0.15-0.3 ms of ~3.5
// (--broadcast-ids-every-step keeps it, for comparing with runs before it).
// Each batch's decode ids go into an FNV-1a hash (`decode_ids_hash`), the
// same whichever decode loop ran (the host a step ahead, or
// --synchronous-decode): the multi-rank test compares the two. With
// --temperature the decode's tokens are drawn on the device (the sampling
// kernel after each step, as a server's sampled request) instead of greedy.
// Rank 0 prints the JSON. The same run also times the collectives at the model's message sizes: the all-reduce of the TP
// group and the send between pipeline stages, beside the cost model's
// alpha-beta prediction of each.
//
// A pipeline-parallel decode step runs the whole batch through the stages
// (no micro-batches in flight, as llmir-generate); the prefill is cut into pp
// chunks of the one prompt, so that stage s works on chunk c while stage s+1
// works on chunk c-1, as the cost model prices a prefill.
#include "llmir/compiler/ClusterSpec.h"
#include "llmir/compiler/Compile.h"
#include "llmir/engine/CheckpointWeights.h"
#include "llmir/engine/Executor.h"
#include "llmir/engine/Sampler.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/runtime/EngineCommunicator.h"
#include "llmir/runtime/LocalLauncher.h"
#include "llmir/runtime/RendezvousStore.h"

#if LLMIR_GPU_BENCH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace llmir;
using Clock = std::chrono::steady_clock;

/// Store keys the launcher and its ranks share.
const std::string kStorePrefix = "llmir-gpu-bench";
std::string programKey(int rank) { return kStorePrefix + "/program/" + std::to_string(rank); }
const std::string kPredictedKey = kStorePrefix + "/predicted";

struct Options {
  std::string device = "cuda";
  std::vector<int> batches = {1, 8, 32, 128};
  int prompt = 128, newTokens = 128, prefill = 2048;
  int warmupSteps = 3;
  std::string model;
  std::string clusterSpec; // the cost model's device (default: the ideal H100)
  bool predictOnly = false;
  bool broadcastIdsEveryStep = false;
  bool synchronousDecode = false;
  std::string matmulPrecision = "highest";
  double temperature = 0.0, topP = 1.0; // the decode's draws (0: greedy)
  int tp = 1, pp = 1;
  int threads = 0; // CPU kernel threads per rank (0: the cores / ranks)
  int timeoutSeconds = 300;
  // Hidden: set by the launcher on its ranks.
  int workerRank = -1;
  int worldSize = 0;
  uint16_t storePort = 0;

  bool isWorker() const { return workerRank >= 0; }
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-gpu-bench: %s\n", why.c_str());
  std::exit(2);
}

/// The flags through net::Config, as every service reads its own.
Options parse(int argc, char **argv) {
  Options o;
  net::Config config("llmir-gpu-bench");
  config.add("model", &o.model, "Hugging Face checkpoint directory (required)");
  config.add("device", &o.device,
             "cuda (rank r on cuda:r), cuda:N (every rank on N) or cpu (ranks over Gloo)");
  config.add("tp", &o.tp, "tensor-parallel ranks");
  config.add("pp", &o.pp, "pipeline stages");
  config.add("batches", &o.batches, "decode batch sizes, comma-separated");
  config.add("prompt", &o.prompt, "prompt tokens per sequence before decoding");
  config.add("new-tokens", &o.newTokens, "decode steps timed per batch size");
  config.add("prefill", &o.prefill, "tokens of the timed single prefill");
  config.add("warmup-steps", &o.warmupSteps,
             "untimed decode steps after an untimed prefill of the same batch, before the "
             "timed pass (as the peer compiles and warms on the shapes it times; 0: the first "
             "eager step and the graph's recording are timed too)");
  config.add("cluster-spec", &o.clusterSpec,
             "cluster spec YAML whose device and intra-node link price the predicted steps "
             "(bench/gpu/h100-calibrated.yaml; default: the ideal H100 roofline)");
  config.add("predict-only", &o.predictOnly,
             "print the cost model's predictions only (no GPU needed)");
  config.add("synchronous-decode", &o.synchronousDecode,
             "wait for each decode step's ids before preparing the next (default: "
             "Executor::launchStep, the host a step ahead where the backend allows it "
             "and no rank waits for a broadcast)");
  config.add("broadcast-ids-every-step", &o.broadcastIdsEveryStep,
             "send the deciding rank's ids to every rank after each decode step even where "
             "every rank holds the logits (TP without PP)");
  config.add("matmul-precision", &o.matmulPrecision,
             "highest (products within f32 rounding) or medium (activations rounded to bf16 "
             "for the tensor cores, as the peer's bf16 model computes)");
  config.add("temperature", &o.temperature,
             "decode tokens drawn at this temperature on the device, as a server's sampled "
             "request (0: greedy; needs the launched decode)");
  config.add("top-p", &o.topP, "the draws' nucleus mass in (0, 1]");
  config.add("threads", &o.threads, "CPU kernel threads per rank (0: the cores / ranks)");
  config.add("timeout-s", &o.timeoutSeconds,
             "collective and rendezvous timeout (ranks load their weights in between)");
  config.add("worker-rank", &o.workerRank, "internal: this rank");
  config.add("world-size", &o.worldSize, "internal: ranks of the replica");
  config.add("store-port", &o.storePort, "internal: the launcher's rendezvous store");
  config.loadOrExit(argc, argv);
  if (o.model.empty())
    fail("model is required (--model DIR)");
  if (o.warmupSteps < 0)
    fail("warmup-steps must not be negative");
  if (o.prompt <= 0 || o.newTokens <= 0 || o.prefill <= 0)
    fail("prompt, new-tokens and prefill must be positive");
  if (o.tp < 1 || o.pp < 1)
    fail("tp and pp must be >= 1");
  if (o.prefill < o.pp)
    fail("prefill must have at least one token per pipeline stage (its chunks)");
  if (o.threads < 0 || o.timeoutSeconds < 1)
    fail("threads must be >= 0 and timeout-s >= 1");
  if (!(o.temperature >= 0) || !(o.topP > 0 && o.topP <= 1))
    fail("temperature must be >= 0 and top-p in (0, 1]");
  if (o.isWorker() && (o.workerRank >= o.worldSize || o.storePort == 0))
    fail("worker-rank needs world-size > rank and store-port");
  return o;
}

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// "key": value pairs of a JSON object, in key order.
template <typename Value> std::string jsonObject(const std::map<int64_t, Value> &values) {
  std::string out;
  for (const auto &[key, value] : values)
    out += (out.empty() ? "" : ", ") + std::string("\"") + std::to_string(key) +
           "\": " + std::to_string(value);
  return "{" + out + "}";
}

/// Floats per token each instruction `op` moves: the last dimension of its
/// input slot (of its output for RECV, which has none), once per distinct
/// width (a Llama's all-reduces and sends all carry the hidden size).
std::set<int64_t> collectiveWidths(const proto::ShardProgram &program, proto::Opcode op) {
  std::set<int64_t> widths;
  for (const proto::Instruction &inst : program.instructions()) {
    if (inst.op() != op)
      continue;
    const auto &operands = inst.inputs_size() > 0 ? inst.inputs() : inst.outputs();
    if (operands.empty())
      continue;
    const proto::TensorSlot &slot = program.slots(static_cast<int>(operands[0]));
    if (slot.shape_size() > 0)
      widths.insert(slot.shape(slot.shape_size() - 1));
  }
  return widths;
}

int countOps(const proto::ShardProgram &program, proto::Opcode op) {
  return static_cast<int>(std::count_if(
      program.instructions().begin(), program.instructions().end(),
      [op](const proto::Instruction &inst) { return inst.op() == op; }));
}

/// The cost model's spec: the file's, or the ideal H100. Every rank of the
/// bench runs on one machine, so a node narrower than tp * pp is widened
/// (otherwise the model would price the groups on the inter-node link).
Result<compiler::ClusterSpec> benchClusterSpec(const Options &o) {
  compiler::ClusterSpec spec;
  if (!o.clusterSpec.empty()) {
    auto loaded = compiler::loadClusterSpec(o.clusterSpec);
    if (!loaded)
      return loaded.status();
    spec = *loaded;
  }
  spec.devicesPerNode = std::max<int64_t>(spec.devicesPerNode, int64_t{o.tp} * o.pp);
  return spec;
}

/// The cost model's step times for the bench's steps at (tp, pp), as a JSON
/// fragment: "predicted_decode_ms": {batch: ms}, "predicted_prefill_N_ms": ms.
Result<std::string> predictions(const Options &o) {
  auto spec = benchClusterSpec(o);
  if (!spec)
    return spec.status();
  std::vector<compiler::StepShape> steps;
  for (int batch : o.batches) {
    compiler::StepShape step;
    step.tp = o.tp;
    step.pp = o.pp;
    step.tokens = batch;
    // The timed decode steps' mean context: prompt + half the new tokens.
    step.context = o.prompt + o.newTokens / 2;
    steps.push_back(step);
  }
  compiler::StepShape prefill;
  prefill.tp = o.tp;
  prefill.pp = o.pp;
  prefill.tokens = o.prefill;
  prefill.decode = false;
  steps.push_back(prefill);
  auto seconds = compiler::predictStepSeconds(o.model, *spec, steps);
  if (!seconds)
    return seconds.status();
  std::map<int64_t, double> decode;
  for (size_t i = 0; i < o.batches.size(); ++i)
    decode[o.batches[i]] = (*seconds)[i] * 1e3;
  return "\"predicted_decode_ms\": " + jsonObject(decode) + ", \"predicted_prefill_" +
         std::to_string(o.prefill) + "_ms\": " + std::to_string(seconds->back() * 1e3);
}

#if LLMIR_GPU_BENCH_CUDA
/// Device-to-device copy bandwidth, bytes read plus written per second.
double copyBandwidth(int device) {
  cudaSetDevice(device);
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess)
    return 0;
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    auto start = Clock::now();
    for (int i = 0; i < 10; ++i)
      cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    best = std::max(best, 2.0 * 10 * bytes / since(start));
  }
  cudaFree(a);
  cudaFree(b);
  return best;
}

std::string gpuName(int device) {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  return prop.name;
}
#endif

/// A buffer the runtime's collectives take: device memory of the rank's GPU
/// under NCCL (as the engine hands them; a host buffer would be staged
/// through a copy), host memory under Gloo.
class CollectiveBuffer {
public:
  CollectiveBuffer() = default;
  CollectiveBuffer(const CollectiveBuffer &) = delete;
  CollectiveBuffer &operator=(const CollectiveBuffer &) = delete;
  ~CollectiveBuffer() {
#if LLMIR_GPU_BENCH_CUDA
    if (device_)
      cudaFree(device_);
#endif
  }

  Status allocate(size_t bytes, bool onDevice, int device) {
    if (!onDevice) {
      host_.assign(bytes / sizeof(float) + 1, 1.0f);
      return Status::ok();
    }
#if LLMIR_GPU_BENCH_CUDA
    cudaSetDevice(device);
    if (cudaMalloc(&device_, bytes) != cudaSuccess)
      return Status::error("cudaMalloc of " + std::to_string(bytes) + " bytes failed");
    cudaMemset(device_, 0, bytes);
    return Status::ok();
#else
    (void)device;
    return Status::error("NCCL buffers need a CUDA build");
#endif
  }
  float *data() { return device_ ? static_cast<float *>(device_) : host_.data(); }

private:
  void *device_ = nullptr;
  std::vector<float> host_;
};

/// Where this process's rank stands: the whole model in one process, or one
/// rank of a replica joined to the others.
struct RankContext {
  const proto::ShardProgram *program = nullptr;
  engine::Device device;
  runtime::DistributedRuntime *runtime = nullptr; // null: one process
  int decider = 0;                                // the rank that holds the ids
  /// Every rank holds the step's gathered logits (one stage): each takes its
  /// own greedy ids, the same bits on every rank, without a broadcast a step
  /// (checked once a batch: idsAgree).
  bool idsOnEveryRank = false;
  bool nccl = false;

  bool printer() const { return runtime == nullptr || runtime->rank() == 0; }
};

/// One greedy decode step on every rank: the ranks holding logits take
/// their argmax on the device, the deciding rank's ids go to every rank.
/// `broadcastSeconds` gains the time this rank spent in that broadcast.
Result<std::vector<int32_t>> greedyStep(engine::Executor &executor, const RankContext &ctx,
                                        const engine::StepInput &step,
                                        double &broadcastSeconds) {
  std::vector<int32_t> ids(static_cast<size_t>(step.numTokens()), 0);
  if (ctx.program->has_output()) {
    auto greedy = executor.stepGreedy(step);
    if (!greedy)
      return greedy.status();
    ids = std::move(*greedy);
  } else if (auto sent = executor.step(step); !sent) {
    return sent.status();
  }
  if (ctx.runtime && !ctx.idsOnEveryRank) {
    const auto start = Clock::now();
    LLMIR_RETURN_IF_ERROR(ctx.runtime->broadcast(ids.data(), ids.size(),
                                                 runtime::DataType::I32, ctx.decider,
                                                 ctx.runtime->world()));
    broadcastSeconds += since(start);
  }
  return ids;
}

/// Whether every rank took the same ids over a batch's decode steps (their
/// running hash against the deciding rank's), where each took its own.
Status idsAgree(const RankContext &ctx, uint32_t hash) {
  if (!ctx.runtime || !ctx.idsOnEveryRank)
    return Status::ok();
  int32_t decided = static_cast<int32_t>(hash);
  LLMIR_RETURN_IF_ERROR(ctx.runtime->broadcast(&decided, 1, runtime::DataType::I32, ctx.decider,
                                               ctx.runtime->world()));
  if (decided != static_cast<int32_t>(hash))
    return Status::error("rank " + std::to_string(ctx.runtime->rank()) +
                         "'s greedy ids differ from the deciding rank's");
  return Status::ok();
}

Status barrier(const RankContext &ctx) {
  return ctx.runtime ? ctx.runtime->barrier() : Status::ok();
}

/// Microseconds of one collective, best of a few rounds after a warm-up.
template <typename Op> Result<double> timeCollective(size_t bytes, const Op &op) {
  for (int i = 0; i < 3; ++i)
    LLMIR_RETURN_IF_ERROR(op());
  const int iterations =
      static_cast<int>(std::clamp<size_t>((size_t(256) << 20) / std::max<size_t>(bytes, 1), 5, 100));
  double best = 1e30;
  for (int round = 0; round < 3; ++round) {
    auto start = Clock::now();
    for (int i = 0; i < iterations; ++i)
      LLMIR_RETURN_IF_ERROR(op());
    best = std::min(best, since(start) / iterations);
  }
  return best * 1e6;
}

/// Microseconds of one all-reduce as a decode step pays it on GPUs: queued
/// on a stream back to back (as the engine's stream-ordered collectives,
/// without a host wait each), the stream waited for once per round.
Result<double> timeStreamAllReduce(runtime::DistributedRuntime &rt,
                                   const runtime::DeviceGroup &group, runtime::IpcAllReduce *ipc,
                                   void *data, size_t count) {
#if LLMIR_GPU_BENCH_CUDA
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess)
    return Status::error("creating a stream");
  auto once = [&]() -> Status {
    if (ipc && ipc->handles(count))
      return ipc->allReduceSum(static_cast<float *>(data), count, stream);
    return rt.allReduceOn(stream, data, count, runtime::DataType::F32, runtime::ReduceOp::Sum,
                          group);
  };
  double best = 1e30;
  Status status = Status::ok();
  for (int round = 0; round < 4 && status.isOk(); ++round) {
    const int iterations = 50;
    auto start = Clock::now();
    for (int i = 0; i < iterations && status.isOk(); ++i)
      status = once();
    if (status.isOk())
      status = rt.synchronize(stream, {&group});
    if (round > 0) // the first round warms up
      best = std::min(best, since(start) / iterations);
  }
  cudaStreamDestroy(stream);
  if (!status.isOk())
    return status;
  return best * 1e6;
#else
  (void)rt, (void)group, (void)ipc, (void)data, (void)count;
  return Status::error("stream-ordered all-reduce timing needs a CUDA build");
#endif
}

/// The collectives of the model's steps, timed on their own: the TP group's
/// all-reduce of [tokens, width] f32 (every rank of every stage, each group
/// on its own) and a stage's send of [tokens, hidden] to the next (stage 0
/// and 1 ranks, as a ping-pong halved). Rank 0's times, with the cost
/// model's, as a JSON fragment; empty in one process.
Result<std::string> timeCollectives(const Options &o, const RankContext &ctx,
                                    const std::vector<int64_t> &stepTokens) {
  if (!ctx.runtime)
    return std::string();
  runtime::DistributedRuntime &rt = *ctx.runtime;
  const proto::ShardProgram &program = *ctx.program;
  auto spec = benchClusterSpec(o);
  if (!spec)
    return spec.status();
  std::map<int64_t, double> allReduceUs, predictedAllReduceUs, sendUs, predictedSendUs;

  const proto::CollectiveGroup *tpGroup = nullptr;
  for (const proto::CollectiveGroup &group : program.groups())
    if (group.kind() == "tp" && group.ranks_size() > 1)
      tpGroup = &group;
  if (tpGroup) {
    auto group = rt.createGroup(std::vector<int>(tpGroup->ranks().begin(), tpGroup->ranks().end()));
    if (!group)
      return group.status();
    // As the engine sends a TP group's small all-reduces (EngineCommunicator):
    // through the IPC all-reduce where the GPUs can, else NCCL.
    std::unique_ptr<runtime::IpcAllReduce> ipc;
    if (ctx.nccl && runtime::ipcAllReduceRequested())
      if (auto made = rt.createIpcAllReduce(*group))
        ipc = std::move(made).value();
    for (int64_t width : collectiveWidths(program, proto::ALL_REDUCE))
      for (int64_t tokens : stepTokens) {
        const size_t count = static_cast<size_t>(tokens * width);
        const size_t bytes = count * sizeof(float);
        CollectiveBuffer buffer;
        LLMIR_RETURN_IF_ERROR(buffer.allocate(bytes, ctx.nccl, ctx.device.index));
        auto us = ctx.nccl ? timeStreamAllReduce(rt, *group, ipc.get(), buffer.data(), count)
                           : timeCollective(bytes, [&] {
                               return rt.allReduce(buffer.data(), count, runtime::DataType::F32,
                                                   runtime::ReduceOp::Sum, *group);
                             });
        if (!us)
          return us.status().withContext("all-reduce of " + std::to_string(bytes) + " bytes");
        allReduceUs[static_cast<int64_t>(bytes)] = *us;
        predictedAllReduceUs[static_cast<int64_t>(bytes)] =
            1e6 * compiler::predictAllReduceSeconds(*spec, static_cast<double>(bytes),
                                                    group->size());
      }
  }
  LLMIR_RETURN_IF_ERROR(rt.barrier());

  const int perStage = static_cast<int>(program.world_size() / program.num_stages());
  if (program.num_stages() > 1 && program.stage_id() <= 1) {
    const bool first = program.stage_id() == 0;
    // Stage 0 sends what stage 1 receives.
    const std::set<int64_t> widths =
        collectiveWidths(program, first ? proto::SEND : proto::RECV);
    const int peer = first ? rt.rank() + perStage : rt.rank() - perStage;
    for (int64_t width : widths)
      for (int64_t tokens : stepTokens) {
        const size_t count = static_cast<size_t>(tokens * width);
        const size_t bytes = count * sizeof(float);
        CollectiveBuffer buffer;
        LLMIR_RETURN_IF_ERROR(buffer.allocate(bytes, ctx.nccl, ctx.device.index));
        auto us = timeCollective(bytes, [&]() -> Status {
          if (first) {
            LLMIR_RETURN_IF_ERROR(rt.send(buffer.data(), bytes, peer));
            return rt.recv(buffer.data(), bytes, peer);
          }
          LLMIR_RETURN_IF_ERROR(rt.recv(buffer.data(), bytes, peer));
          return rt.send(buffer.data(), bytes, peer);
        });
        if (!us)
          return us.status().withContext("send of " + std::to_string(bytes) + " bytes");
        sendUs[static_cast<int64_t>(bytes)] = *us / 2; // one way of the round trip
        predictedSendUs[static_cast<int64_t>(bytes)] =
            1e6 * compiler::predictSendSeconds(*spec, static_cast<double>(bytes));
      }
  }
  LLMIR_RETURN_IF_ERROR(rt.barrier());
  return ", \"all_reduce_us\": " + jsonObject(allReduceUs) +
         ", \"predicted_all_reduce_us\": " + jsonObject(predictedAllReduceUs) +
         ", \"send_us\": " + jsonObject(sendUs) +
         ", \"predicted_send_us\": " + jsonObject(predictedSendUs) +
         ", \"collectives_per_step\": {\"all_reduce\": " +
         std::to_string(countOps(program, proto::ALL_REDUCE)) +
         ", \"all_gather\": " + std::to_string(countOps(program, proto::ALL_GATHER)) +
         ", \"send\": " + std::to_string(countOps(program, proto::SEND)) + "}";
}

/// Loads this rank's weights, times decode at every batch size and the
/// prefill, then the collectives; the printing rank prints the JSON.
Status measure(const Options &o, const RankContext &ctx, const std::string &predicted,
               engine::Communicator *comm) {
  const proto::ShardProgram &program = *ctx.program;
  auto config = model::loadModelConfig(o.model);
  if (!config)
    return config.status();
  auto checkpoint = model::Checkpoint::open(o.model);
  if (!checkpoint)
    return checkpoint.status();
  // Bytes a decode token reads on this rank: every weight but the embedding
  // table.
  std::set<uint32_t> embedding;
  for (const proto::Instruction &inst : program.instructions())
    if (inst.op() == proto::EMBEDDING)
      embedding.insert(inst.inputs(0));
  double weightBytes = 0;
  for (const proto::WeightSlice &slice : program.weights()) {
    if (embedding.count(slice.slot()))
      continue;
    const double whole = static_cast<double>(checkpoint->find(slice.tensor_name())->byteSize);
    double share = 1;
    if (slice.dim() >= 0 && slice.dim() < slice.full_shape_size() &&
        slice.full_shape(slice.dim()) > 0)
      share = static_cast<double>(slice.length()) /
              static_cast<double>(slice.full_shape(slice.dim()));
    weightBytes += whole * share;
  }

  const int64_t blockSize = program.kv_cache().block_size();
  const int maxBatch = *std::max_element(o.batches.begin(), o.batches.end());
  const int64_t perSequence = (o.prompt + o.newTokens + blockSize - 1) / blockSize;
  const int64_t prefillBlocks = (o.prefill + blockSize - 1) / blockSize;
  engine::ExecutorOptions options;
  options.device = ctx.device;
  options.numKvBlocks = std::max(perSequence * maxBatch, prefillBlocks);
  unsigned threads = static_cast<unsigned>(o.threads);
  if (threads == 0 && !ctx.device.isCuda()) // the cores are shared by the ranks
    threads = std::max(1u, std::thread::hardware_concurrency() /
                               static_cast<unsigned>(program.world_size()));
  options.numThreads = threads;
  auto precision = engine::parseMatmulPrecision(o.matmulPrecision);
  if (!precision)
    return precision.status().withContext("--matmul-precision");
  options.matmulPrecision = *precision;
  auto start = Clock::now();
  auto executor =
      engine::Executor::create(program, engine::checkpointWeights(*checkpoint), options, comm);
  if (!executor)
    return executor.status();
  LLMIR_RETURN_IF_ERROR(barrier(ctx)); // every rank loaded
  const double loadSeconds = since(start);
  std::string deviceFields = "\"device\": \"" + ctx.device.name() + "\"";
#if LLMIR_GPU_BENCH_CUDA
  if (ctx.device.isCuda() && ctx.printer()) {
    const double bandwidth = copyBandwidth(ctx.device.index);
    char text[256];
    std::snprintf(text, sizeof text,
                  ", \"gpu\": \"%s\", \"copy_bandwidth_gbs\": %.1f, "
                  "\"roofline_batch1_tok_s\": %.1f",
                  gpuName(ctx.device.index).c_str(), bandwidth / 1e9, bandwidth / weightBytes);
    deviceFields += text;
  }
#endif
  LLMIR_RETURN_IF_ERROR(barrier(ctx));

  std::mt19937 rng(1234); // the same on every rank: the same inputs
  std::uniform_int_distribution<int32_t> anyToken(
      0, static_cast<int32_t>(config->vocabSize - 1));
  std::map<int64_t, double> tokPerS, msPerStep;
  std::map<int64_t, uint32_t> idsHashes; // each batch's decode ids: the same either loop
  for (int batch : o.batches) {
    engine::StepInput prefill, decode;
    for (int s = 0; s < batch; ++s) {
      std::vector<int32_t> table(static_cast<size_t>(perSequence));
      for (int64_t b = 0; b < perSequence; ++b)
        table[static_cast<size_t>(b)] = static_cast<int32_t>(s * perSequence + b);
      prefill.blockTables.push_back(table);
      for (int p = 0; p < o.prompt; ++p) {
        prefill.tokenIds.push_back(anyToken(rng));
        prefill.positions.push_back(p);
        prefill.tokenSeq.push_back(s);
      }
      decode.tokenIds.push_back(anyToken(rng));
      decode.positions.push_back(o.prompt);
      decode.tokenSeq.push_back(s);
    }
    decode.blockTables = prefill.blockTables;
    const std::vector<int32_t> firstTokens = decode.tokenIds;
    const bool pipelined = !o.synchronousDecode && ctx.program->has_output() &&
                           (!ctx.runtime || ctx.idsOnEveryRank);
    if (o.temperature > 0 && !pipelined)
      return Status::error("--temperature needs the launched decode (no --synchronous-decode, "
                           "and every rank holding the logits)");
    // Step n's draws (none when greedy): seeded by sequence and position,
    // as a server's sampled requests.
    const auto samplingOf = [&](int n) {
      std::vector<engine::RowSampling> rows;
      for (int s = 0; o.temperature > 0 && s < batch; ++s) {
        engine::RowSampling row;
        row.params = {static_cast<float>(o.temperature), static_cast<float>(o.topP), 0,
                      static_cast<uint64_t>(s) * 1000003u + static_cast<uint64_t>(n)};
        row.uniform = engine::Sampler(row.params).nextUniform();
        rows.push_back(row);
      }
      return rows;
    };
    double broadcastSeconds = 0.0;
    uint32_t idsHash = 2166136261u; // FNV-1a over the timed steps' ids
    // `steps` decode steps after the batch's prefill, the host a step ahead
    // (Executor::launchStep: step n is launched, its tokens the ids of
    // step n - 1, before step n - 1's ids are read back, where the backend
    // keeps them on the device; else at launch) or synchronous.
    const auto prefillAndDecode = [&](int steps, bool timed) -> Status {
      decode.tokenIds = firstTokens;
      if (auto logits = (*executor)->step(prefill); !logits)
        return logits.status().withContext("prefill");
      LLMIR_RETURN_IF_ERROR(barrier(ctx));
      start = Clock::now();
      const auto hashIds = [&](const std::vector<int32_t> &ids) {
        if (timed)
          for (int32_t id : ids)
            idsHash = (idsHash ^ static_cast<uint32_t>(id)) * 16777619u;
      };
      for (int n = 0; pipelined && n <= steps; ++n) {
        if (n < steps) {
          for (int s = 0; s < batch; ++s)
            decode.positions[static_cast<size_t>(s)] = o.prompt + n;
          decode.tokensFromLastLaunch = n > 0;
          LLMIR_RETURN_IF_ERROR(
              (*executor)->launchStep(decode, samplingOf(n)).withContext("decode"));
        }
        if (n > 0) {
          auto tokens = (*executor)->collectStep();
          if (!tokens)
            return tokens.status().withContext("decode");
          std::vector<int32_t> ids;
          for (const engine::SampledToken &token : *tokens)
            ids.push_back(token.id);
          hashIds(ids);
        }
      }
      decode.tokensFromLastLaunch = false;
      double waited = 0.0;
      for (int n = 0; !pipelined && n < steps; ++n) {
        for (int s = 0; s < batch; ++s)
          decode.positions[static_cast<size_t>(s)] = o.prompt + n;
        // Greedy on the device, as a server's greedy request: only the ids
        // come back (synchronous), and they are the next step's tokens.
        auto ids = greedyStep(**executor, ctx, decode, waited);
        if (!ids)
          return ids.status().withContext("decode");
        hashIds(*ids);
        decode.tokenIds = std::move(*ids);
      }
      if (timed)
        broadcastSeconds = waited;
      return Status::ok();
    };
    // As the peer (compiled_torch_decoder.py's run() once to compile and
    // warm on the very shapes it then times): the first eager step and the
    // graph's recording (a decode step's second occurrence) are paid before
    // the clock, as a server pays them in its warm-up.
    if (o.warmupSteps > 0)
      LLMIR_RETURN_IF_ERROR(prefillAndDecode(std::min(o.warmupSteps, o.newTokens), false));
    LLMIR_RETURN_IF_ERROR(prefillAndDecode(o.newTokens, true));
    const double seconds = since(start);
    LLMIR_RETURN_IF_ERROR(idsAgree(ctx, idsHash).withContext("decode"));
    tokPerS[batch] = double(batch) * o.newTokens / seconds;
    idsHashes[batch] = idsHash;
    msPerStep[batch] = 1e3 * seconds / o.newTokens;
    if (ctx.printer())
      std::fprintf(stderr, "decode batch %d: %.1f tok/s, %.3f ms/step, ids hash %08x\n", batch,
                   tokPerS[batch], msPerStep[batch], idsHash);
    // Each rank's wait in the step's id broadcast: the transfer, plus the
    // time the other ranks' steps took longer than this one's.
    if (ctx.runtime && !ctx.idsOnEveryRank)
      std::fprintf(stderr, "decode batch %d: rank %d waited %.3f ms/step in the ids' broadcast\n",
                   batch, ctx.runtime->rank(), 1e3 * broadcastSeconds / o.newTokens);
  }

  // The prefill in pp chunks of the one prompt (one chunk without stages):
  // a stage starts on the next chunk while the following stage works on
  // this one.
  const int chunks = static_cast<int>(program.num_stages());
  std::vector<engine::StepInput> prefillChunks(static_cast<size_t>(chunks));
  std::vector<int32_t> table(static_cast<size_t>(prefillBlocks));
  for (int64_t b = 0; b < prefillBlocks; ++b)
    table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
  for (int p = 0; p < o.prefill; ++p) {
    engine::StepInput &chunk =
        prefillChunks[static_cast<size_t>(int64_t{p} * chunks / o.prefill)];
    chunk.blockTables = {table};
    chunk.tokenIds.push_back(anyToken(rng));
    chunk.positions.push_back(p);
    chunk.tokenSeq.push_back(0);
  }
  // The first of the three also pays what a prefill of a new length pays
  // once (the products' algorithms timed for its bucket of token counts).
  double prefillMs = 1e30, firstPrefillMs = 0.0;
  for (int r = 0; r < 3; ++r) {
    LLMIR_RETURN_IF_ERROR(barrier(ctx));
    start = Clock::now();
    for (const engine::StepInput &chunk : prefillChunks)
      if (auto logits = (*executor)->step(chunk); !logits)
        return logits.status().withContext("prefill");
    LLMIR_RETURN_IF_ERROR(barrier(ctx)); // the last stage's last chunk ended
    prefillMs = std::min(prefillMs, 1e3 * since(start));
    if (r == 0)
      firstPrefillMs = prefillMs;
  }

  std::vector<int64_t> stepTokens(o.batches.begin(), o.batches.end());
  stepTokens.push_back((o.prefill + chunks - 1) / chunks);
  std::sort(stepTokens.begin(), stepTokens.end());
  stepTokens.erase(std::unique(stepTokens.begin(), stepTokens.end()), stepTokens.end());
  auto collectives = timeCollectives(o, ctx, stepTokens);
  if (!collectives)
    return collectives.status();

  if (!ctx.printer())
    return Status::ok();
  const int world = static_cast<int>(program.world_size());
  std::printf("{\"engine\": \"llmir\", %s, \"tp\": %d, \"pp\": %d, \"world_size\": %d, "
              "\"collectives\": \"%s\", \"matmul_precision\": \"%s\", \"weight_bytes\": %.0f, "
              "\"load_s\": %.2f, \"prompt\": %d, \"new_tokens\": %d, \"decode_tok_s\": %s, "
              "\"decode_ms\": %s, \"decode_ids_hash\": %s, \"prefill_%d_ms\": %.3f, "
              "\"first_prefill_ms\": %.3f, \"prompt_attention\": %s, %s%s}\n",
              deviceFields.c_str(), o.tp, o.pp, world,
              ctx.runtime ? (ctx.nccl ? "nccl" : "gloo") : "none", o.matmulPrecision.c_str(),
              weightBytes, loadSeconds, o.prompt, o.newTokens, jsonObject(tokPerS).c_str(),
              jsonObject(msPerStep).c_str(), jsonObject(idsHashes).c_str(), o.prefill, prefillMs,
              firstPrefillMs, boost::json::serialize(boost::json::string((*executor)->promptAttentionLibrary()))
                  .c_str(),
              predicted.c_str(), collectives->c_str());
  std::fflush(stdout);
  return Status::ok();
}

Result<engine::Device> parseDevice(const Options &o) {
  auto device = engine::Device::parse(o.device);
  if (!device)
    return device.status();
  if (device->isCuda() && !engine::cudaBackendBuilt())
    return Status::error("--device " + o.device + ": this build has no CUDA backend");
  return *device;
}

Status runSingleProcess(const Options &o, const std::string &predicted) {
  auto device = parseDevice(o);
  if (!device)
    return device.status();
  auto compiled = compiler::compileHuggingFace(o.model, {});
  if (!compiled)
    return compiled.status();
  RankContext ctx;
  ctx.program = &compiled->programs.front();
  ctx.device = *device;
  return measure(o, ctx, predicted, nullptr);
}

/// The rank that holds the ids: the first rank of the last pipeline stage.
int decidingRank(const proto::ShardProgram &program) {
  const int perStage = static_cast<int>(program.world_size() / program.num_stages());
  return perStage * static_cast<int>(program.num_stages() - 1);
}

/// One rank: fetch its program (and rank 0 the predictions), join the
/// replica, measure.
Status runWorker(const Options &o) {
  const std::chrono::milliseconds timeout = std::chrono::seconds(o.timeoutSeconds);
  auto store = runtime::RendezvousClient::connect("127.0.0.1", o.storePort, timeout);
  if (!store)
    return store.status();
  auto bytes = (*store)->get(programKey(o.workerRank), timeout);
  if (!bytes)
    return bytes.status().withContext("fetching this rank's program");
  proto::ShardProgram program;
  if (!program.ParseFromArray(bytes->data(), static_cast<int>(bytes->size())))
    return Status::error("the launcher's program for this rank does not parse");
  auto predictedBytes = (*store)->get(kPredictedKey, timeout);
  if (!predictedBytes)
    return predictedBytes.status().withContext("fetching the predictions");
  const std::string predicted(predictedBytes->begin(), predictedBytes->end());

  auto device = parseDevice(o);
  if (!device)
    return device.status();
  // `--device cuda` spreads the ranks over the visible GPUs (rank r on
  // device r % count); `cuda:N` puts every rank on device N.
  const int gpus = engine::cudaDeviceCount();
  if (device->isCuda() && o.device.find(':') == std::string::npos && gpus > 0)
    device->index = o.workerRank % gpus;
  runtime::RuntimeConfig config;
  config.worldSize = o.worldSize;
  config.rank = o.workerRank;
  config.storePort = o.storePort;
  config.storePrefix = kStorePrefix;
  config.timeout = timeout;
  // NCCL needs a GPU per rank; otherwise Gloo moves host copies.
  const bool nccl = device->isCuda() && gpus >= o.worldSize;
  if (nccl) {
    config.backend = "nccl";
    config.cudaDevice = device->index;
  }
  auto rt = runtime::DistributedRuntime::init(config);
  if (!rt)
    return rt.status();
  auto comm = runtime::EngineCommunicator::create(**rt, program);
  if (!comm)
    return comm.status();
  RankContext ctx;
  ctx.program = &program;
  ctx.device = *device;
  ctx.runtime = rt->get();
  ctx.decider = decidingRank(program);
  ctx.idsOnEveryRank = program.num_stages() == 1 && !o.broadcastIdsEveryStep;
  ctx.nccl = nccl;
  return measure(o, ctx, predicted, comm->get());
}

/// Compiles once, publishes each rank's program and the predictions in a
/// loopback store, runs one process per rank and names the rank that failed
/// first.
Status runLauncher(const Options &o, const std::string &predicted, int argc, char **argv) {
  compiler::CompileOptions compileOptions;
  compileOptions.tp = o.tp;
  compileOptions.pp = o.pp;
  auto compiled = compiler::compileHuggingFace(o.model, compileOptions);
  if (!compiled)
    return compiled.status();
  const int world = static_cast<int>(compiled->programs.size());
  auto server = runtime::RendezvousServer::start("127.0.0.1", 0);
  if (!server)
    return server.status().withContext("starting the rendezvous store");
  auto store = runtime::RendezvousClient::connect("127.0.0.1", (*server)->port(),
                                                  std::chrono::seconds(o.timeoutSeconds));
  if (!store)
    return store.status();
  for (int r = 0; r < world; ++r)
    LLMIR_RETURN_IF_ERROR((*store)->set(
        programKey(r), compiled->programs[static_cast<size_t>(r)].SerializeAsString()));
  LLMIR_RETURN_IF_ERROR((*store)->set(kPredictedKey, predicted));

  runtime::LaunchOptions launch;
  launch.worldSize = world;
  launch.stdoutRank = 0;
  // Survivors fail within the runtime timeout; a little slack for exiting.
  launch.grace = std::chrono::seconds(o.timeoutSeconds + 5);
  launch.argsOf = runtime::selfRankArgs(argc, argv, world, (*server)->port());
  return runtime::launchLocalRanks(launch).withContext(
      std::to_string(world) + " ranks (tp " + std::to_string(o.tp) + ", pp " +
      std::to_string(o.pp) + ")");
}

Status run(const Options &o, int argc, char **argv) {
  if (o.isWorker())
    return runWorker(o);
  auto predicted = predictions(o);
  if (!predicted)
    return predicted.status();
  if (o.predictOnly) {
    std::printf("{\"engine\": \"llmir cost model\", \"tp\": %d, \"pp\": %d, %s}\n", o.tp, o.pp,
                predicted->c_str());
    return Status::ok();
  }
  if (o.tp * o.pp > 1)
    return runLauncher(o, *predicted, argc, argv);
  return runSingleProcess(o, *predicted);
}

} // namespace

int main(int argc, char **argv) {
  const Options options = parse(argc, argv);
  if (Status status = run(options, argc, argv); !status) {
    std::string who = "llmir-gpu-bench";
    if (options.isWorker())
      who += ": rank " + std::to_string(options.workerRank);
    // One write, so the lines of ranks sharing stderr do not interleave.
    const std::string line = who + ": error: " + status.message() + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    return 1;
  }
  return 0;
}
