// The CUDA backend: weights resident on the device in their stored dtype,
// activations and the paged KV cache in device memory, the kernels of
// CudaKernels.h on the context's stream. Collectives get device pointers
// when the communicator takes them (NCCL), and are staged through host
// memory otherwise (Gloo). Per step the host uploads one packed table
// (ids, positions, sequences, block tables) and reads back the output slot
// (logits) or only its greedy ids.
//
// Decode steps (every sequence contributes one token) of a program without
// collectives are recorded as a CUDA graph on their second occurrence and
// replayed afterwards, keyed by what the host bakes into the launches: the
// token count, the block-table stride (rounded up to a power of two so it
// changes rarely) and how many rows SELECT_ROWS keeps (which ones, the
// graph reads from the step's upload). A graph holds device
// addresses, so it is replayed only while the buffers it recorded are still
// the backend's (a larger step may have grown them: then it is recorded
// again).
#include "ExecutionBackend.h"
#include "KernelClock.h"
#include "Launch.h"

#include "llmir/engine/Communicator.h"
#include "llmir/engine/CudaKernels.h"
#include "llmir/model/Safetensors.h"
#include "llmir/support/Strings.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>

namespace llmir::engine {
namespace {

/// The fewest rows of a prompt whose attention runs on cuDNN
/// (attentionOnCudnn); shorter prompts keep the prefill kernel. On an H200
/// cuDNN was no faster up to ~1,100 rows (300: 2.39 against 2.38 ms a 1.1B
/// prefill) and a bucket's first prompt builds its plan (0.2-1.0 s): the
/// scheduler's default 512-token chunks stay on the kernel
/// (docs/performance.md, forty-first session).
constexpr size_t kCudnnAttentionMinRows = 768;

Status check(cudaError_t error, const std::string &what) {
  if (error == cudaSuccess)
    return Status::ok();
  return Status::error("CUDA " + what + ": " + cudaGetErrorString(error));
}

int64_t product(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

/// Device memory that grows on demand and keeps its capacity across steps.
template <typename T> struct DeviceArray {
  T *data = nullptr;
  size_t capacity = 0; // elements

  Status reserve(size_t count) {
    if (count <= capacity)
      return Status::ok();
    if (data)
      LLMIR_RETURN_IF_ERROR(check(cudaFree(data), "free"));
    data = nullptr;
    capacity = 0;
    LLMIR_RETURN_IF_ERROR(check(
        cudaMalloc(reinterpret_cast<void **>(&data), std::max<size_t>(count, 1) * sizeof(T)),
        "allocating " + std::to_string(count * sizeof(T)) + " bytes"));
    capacity = count;
    return Status::ok();
  }
  void release() {
    if (data)
      cudaFree(data);
    data = nullptr;
    capacity = 0;
  }
};

/// An f32 activation on the device: [T, ...] like Tensor.
struct DeviceTensor {
  std::vector<int64_t> shape;
  DeviceArray<float> storage;

  float *data() { return storage.data; }
  const float *data() const { return storage.data; }
  int64_t numel() const { return product(shape); }
  int64_t rows() const { return shape.empty() ? 1 : shape.front(); }
  int64_t rowSize() const { return rows() ? numel() / rows() : 0; }
  Status reshape(std::vector<int64_t> newShape) {
    shape = std::move(newShape);
    return storage.reserve(static_cast<size_t>(numel()));
  }
};

/// Page-locked host memory: copies from and to it are truly asynchronous.
template <typename T> struct PinnedArray {
  T *data = nullptr;
  size_t capacity = 0;

  Status reserve(size_t count) {
    if (count <= capacity)
      return Status::ok();
    release();
    LLMIR_RETURN_IF_ERROR(check(cudaMallocHost(reinterpret_cast<void **>(&data),
                                               std::max<size_t>(count, 1) * sizeof(T)),
                                "allocating pinned host memory"));
    capacity = count;
    return Status::ok();
  }
  void release() {
    if (data)
      cudaFreeHost(data);
    data = nullptr;
    capacity = 0;
  }
};

size_t roundUpPow2(size_t n, size_t minimum) {
  size_t r = minimum;
  while (r < n)
    r *= 2;
  return r;
}

struct DeviceWeight {
  proto::DType dtype{};
  std::vector<int64_t> shape;
  DeviceArray<std::byte> stored;
  /// Where the weight's bytes are: stored's, or its place in a linear
  /// group's packed allocation (CudaBackend::packLinearGroups).
  const std::byte *bytes = nullptr;
  /// 1-D weights (norm scales, biases) also as f32: the kernels take them
  /// widened, and they are a few KB.
  DeviceArray<float> widened;

  WeightView view() const {
    WeightView v;
    v.dtype = dtype;
    v.data = bytes;
    v.rows = shape.size() == 2 ? shape[0] : 1;
    v.cols = shape.empty() ? 0 : shape.back();
    return v;
  }
};

class CudaBackend final : public ExecutionBackend {
public:
  CudaBackend(const BoundProgram &program, int device, double memoryFraction,
              bool bf16KvCache, bool bf16Products, cuda::Context context, Communicator *comm)
      : program_(program), device_(device), memoryFraction_(memoryFraction),
        bf16KvCache_(bf16KvCache), bf16Products_(bf16Products),
        context_(std::move(context)), comm_(comm),
        weights_(program.slots.size()), activations_(program.slots.size()) {
    // Collectives through the host (Gloo) cannot be recorded; NCCL's run on
    // this stream and can. LLMIR_CUDA_GRAPHS=0 turns graphs off.
    graphsAllowed_ = !cuda::detail::switchedOff("LLMIR_CUDA_GRAPHS");
    for (const BoundInstruction &inst : program.instructions)
      if (inst.op == proto::ATTENTION) {
        const cpu::AttentionParams &a = inst.params.attention;
        attentionHeads_ = std::max(attentionHeads_, a.numHeads);
        attentionKvHeads_ = std::max(attentionKvHeads_, a.numKvHeads);
        partialRow_ = std::max(partialRow_, a.numHeads * a.headDim + a.numHeads);
      }
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    multiprocessors_ = std::max(sms, 1);
    for (const BoundInstruction &inst : program.instructions)
      switch (inst.op) {
      case proto::SEND:
      case proto::RECV:
        transfers_ = true;
        [[fallthrough]];
      case proto::ALL_REDUCE:
      case proto::ALL_GATHER:
      case proto::ALL_GATHER_ROWS:
        collectives_ = true;
        graphsAllowed_ = graphsAllowed_ && streamCollectives();
        break;
      default:
        break;
      }
    stepsAhead_ = !collectives_ || (streamCollectives() && !transfers_);
    kernelClock_ = cuda::KernelClock::fromEnvironment();
  }

  ~CudaBackend() override {
    if (hostTimes_.on && hostTimes_.steps > 0)
      std::fprintf(stderr,
                   "cuda backend: %ld replayed steps: %.1f us a step on the host before the "
                   "graph launch returned (%.1f of it in beginStep), %.1f us waiting for the "
                   "greedy ids\n",
                   hostTimes_.steps, 1e6 * hostTimes_.beforeLaunch / hostTimes_.steps,
                   1e6 * hostTimes_.beginningStep / hostTimes_.steps,
                   1e6 * hostTimes_.waiting / hostTimes_.steps);
    if (hostTimes_.on && hostTimes_.eagerTokens > 0)
      std::fprintf(stderr,
                   "cuda backend: the last eager step (%ld tokens), from beginStep: its wait "
                   "returned at %.1f us, beginStep at %.1f us, its last launch at %.1f us, "
                   "read() at %.1f us\n",
                   static_cast<long>(hostTimes_.eagerTokens), 1e6 * hostTimes_.eagerWaited,
                   1e6 * hostTimes_.eagerBegun,
                   1e6 * hostTimes_.eagerLaunched, 1e6 * hostTimes_.eagerRead);
    cudaSetDevice(device_);
    kernelClock_.reset(); // writes its file once the device is done
    for (DeviceWeight &w : weights_) {
      w.stored.release();
      w.widened.release();
    }
    for (DeviceArray<std::byte> &pack : linearPacks_)
      pack.release();
    for (DeviceTensor &t : activations_)
      t.storage.release();
    for (auto &[inst, table] : ropeFrequencies_)
      table.release();
    aliased_.storage.release();
    scratch_.storage.release();
    keys_.release();
    values_.release();
    stepTables_.release();
    for (int i = 0; i < 2; ++i) {
      hostStep_[i].release();
      if (stagingUploaded_[i])
        cudaEventDestroy(stagingUploaded_[i]);
      launchedIds_[i].host.release();
      launchedIds_[i].hostLogprobs.release();
      launchedIds_[i].sampling.release();
      if (launchedIds_[i].arrived)
        cudaEventDestroy(launchedIds_[i].arrived);
    }
    greedyIds_.release();
    hostIds_.release();
    sampling_.release();
    hostSampling_.release();
    logprobs_.release();
    hostLogprobs_.release();
    samplingScratch_.release();
    attentionScratch_.release();
    splitCounters_.release();
    keptQueries_.release();
    keptScratch_.release();
    keptCounters_.release();
    normPartials_.release();
    dropGraphs();
  }

  Status loadWeight(uint32_t slot, WeightTensor weight) override {
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(device_), "selecting the device"));
    DeviceWeight &w = weights_[slot];
    w.dtype = weight.dtype;
    w.shape = weight.shape;
    LLMIR_RETURN_IF_ERROR(w.stored.reserve(weight.data.size()));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(w.stored.data, weight.data.data(),
                                           weight.data.size(), cudaMemcpyHostToDevice),
                                "uploading a weight"));
    w.bytes = w.stored.data;
    if (weight.shape.size() == 1) {
      std::vector<float> f32(static_cast<size_t>(weight.shape[0]));
      WeightView::of(weight).widenRow(0, f32.data());
      LLMIR_RETURN_IF_ERROR(w.widened.reserve(f32.size()));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(w.widened.data, f32.data(),
                                             f32.size() * sizeof(float),
                                             cudaMemcpyHostToDevice),
                                  "uploading a weight"));
    }
    return Status::ok();
  }

  Status allocateKvCache(const KvCacheShape &requested) override {
    KvCacheShape shape = requested;
    if (shape.numLayers <= 0 || shape.numKvHeads <= 0 || shape.headDim <= 0 ||
        shape.blockSize <= 0)
      return Status::error("KV cache dimensions must be positive");
    const size_t elementBytes = bf16KvCache_ ? 2 : sizeof(float);
    const size_t blockBytes = static_cast<size_t>(2 * shape.numLayers * shape.blockSize *
                                                  shape.numKvHeads * shape.headDim) *
                              elementBytes;
    if (shape.numBlocks == 0) {
      size_t freeBytes = 0, totalBytes = 0;
      LLMIR_RETURN_IF_ERROR(check(cudaMemGetInfo(&freeBytes, &totalBytes), "memory info"));
      // vLLM's gpu_memory_utilization: this process may use `fraction` of
      // the device; what is in use now (weights, other processes) counts,
      // and a reserve stays for activations.
      const double budget = memoryFraction_ * static_cast<double>(totalBytes) -
                            static_cast<double>(totalBytes - freeBytes) -
                            static_cast<double>(kActivationReserve);
      shape.numBlocks = budget > 0 ? static_cast<int64_t>(budget / blockBytes) : 0;
      if (shape.numBlocks < 1)
        return Status::error(
            "no room for a KV block on cuda:" + std::to_string(device_) + ": " +
            std::to_string(freeBytes >> 20) + " MiB free of " +
            std::to_string(totalBytes >> 20) + " MiB with gpu memory fraction " +
            std::to_string(memoryFraction_));
    }
    if (shape.numBlocks <= 0)
      return Status::error("KV cache needs at least one block");
    const size_t bytes = blockBytes / 2 * static_cast<size_t>(shape.numBlocks);
    LLMIR_RETURN_IF_ERROR(keys_.reserve(bytes).withContext("KV cache keys"));
    LLMIR_RETURN_IF_ERROR(values_.reserve(bytes).withContext("KV cache values"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemset(keys_.data, 0, bytes), "clearing the KV cache"));
    LLMIR_RETURN_IF_ERROR(check(cudaMemset(values_.data, 0, bytes), "clearing the KV cache"));
    cache_ = {shape, keys_.data, values_.data, bf16KvCache_};
    return Status::ok();
  }

  const KvCacheShape &kvCacheShape() const override { return cache_.shape; }
  size_t kvElementBytes() const override { return bf16KvCache_ ? 2 : sizeof(float); }

  // Layer l's part of a block is contiguous in keys_ and in values_ (layout
  // [layer][block][block_size][kv_heads][head_dim]).
  Status readKvBlock(int32_t block, std::byte *out) override {
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(device_), "selecting the device"));
    LLMIR_RETURN_IF_ERROR(waitStream("finishing the step before a KV block copy"));
    const size_t chunk = kvLayerChunkBytes();
    for (int64_t layer = 0; layer < cache_.shape.numLayers; ++layer) {
      const size_t offset = kvChunkOffset(layer, block);
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(out, keys_.data + offset, chunk,
                                             cudaMemcpyDeviceToHost), "reading a KV block"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(out + chunk, values_.data + offset, chunk,
                                             cudaMemcpyDeviceToHost), "reading a KV block"));
      out += 2 * chunk;
    }
    return Status::ok();
  }

  Status writeKvBlock(int32_t block, const std::byte *in) override {
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(device_), "selecting the device"));
    LLMIR_RETURN_IF_ERROR(waitStream("finishing the step before a KV block copy"));
    const size_t chunk = kvLayerChunkBytes();
    for (int64_t layer = 0; layer < cache_.shape.numLayers; ++layer) {
      const size_t offset = kvChunkOffset(layer, block);
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(keys_.data + offset, in, chunk,
                                             cudaMemcpyHostToDevice), "writing a KV block"));
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(values_.data + offset, in + chunk, chunk,
                                             cudaMemcpyHostToDevice), "writing a KV block"));
      in += 2 * chunk;
    }
    return Status::ok();
  }

  Status beginStep(const StepInput &step) override {
    if (hostTimes_.on) {
      hostTimes_.stepBegan = std::chrono::steady_clock::now();
      hostTimes_.replayed = false;
    }
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(device_), "selecting the device"));
    step_ = &step;
    packedRope_ = kNone;
    denseAttentionAt_ = kNone;
    const size_t T = step.tokenIds.size();
    freshPrompt_ = T >= kCudnnAttentionMinRows;
    for (size_t t = 0; freshPrompt_ && t < T; ++t)
      freshPrompt_ = step.positions[t] == static_cast<int32_t>(t) &&
                     step.tokenSeq[t] == step.tokenSeq[0];
    size_t needed = 1;
    for (const auto &table : step.blockTables)
      needed = std::max(needed, table.size());
    // A stride that changes rarely: CUDA graphs are keyed by it.
    const size_t stride = roundUpPow2(needed, 8);
    const size_t tableEntries = step.blockTables.size() * stride;
    const std::vector<int32_t> tiles = cuda::prefillTiles(step.tokenSeq);
    selected_ = selectedRows(step);
    // One packed upload [ids | positions | sequences | prefill tiles |
    // whether the embedding takes the last argmax's ids | selected rows |
    // tables], each part at a capacity that only grows (its device
    // addresses are in the graphs).
    if (T > tokenCapacity_ || tableEntries > tableCapacity_ ||
        selected_.size() > selectedCapacity_) {
      tokenCapacity_ = std::max(tokenCapacity_, roundUpPow2(T, 256));
      tableCapacity_ = std::max(tableCapacity_, roundUpPow2(tableEntries, 1024));
      selectedCapacity_ = std::max(selectedCapacity_, roundUpPow2(selected_.size(), 256));
      LLMIR_RETURN_IF_ERROR(waitStream("synchronize"));
      stepTables_.release();
      hostStep_[0].release();
      hostStep_[1].release();
    }
    const size_t idsInsteadAt = 5 * tokenCapacity_;
    const size_t selectedAt = idsInsteadAt + 8; // 32-byte aligned parts
    const size_t tablesAt = selectedAt + selectedCapacity_;
    // The kept rows' positions and sequences (keptRowsAttention) last, so
    // that a step keeping every row (a decode step) uploads nothing more.
    const size_t keptAt = tablesAt + tableCapacity_;
    const size_t total = keptAt + 2 * selectedCapacity_;
    LLMIR_RETURN_IF_ERROR(stepTables_.reserve(total));
    const int turn = stagingTurn_;
    stagingTurn_ ^= 1;
    PinnedArray<int32_t> &staging = hostStep_[turn];
    LLMIR_RETURN_IF_ERROR(staging.reserve(total));
    if (!stepsAhead_) {
      // The host waits for every step here (a stage without output reads
      // nothing back): the group's failures surface (Communicator::synchronize).
      LLMIR_RETURN_IF_ERROR(waitStream("synchronize"));
    } else if (stagingUploaded_[turn]) {
      // The upload from this staging two steps ago may still be reading it.
      LLMIR_RETURN_IF_ERROR(waitEvent(stagingUploaded_[turn], "waiting for an upload"));
    } else {
      LLMIR_RETURN_IF_ERROR(check(
          cudaEventCreateWithFlags(&stagingUploaded_[turn], cudaEventDisableTiming), "an event"));
    }
    if (hostTimes_.on)
      hostTimes_.waited = secondsSince(hostTimes_.stepBegan);
    int32_t *host = staging.data;
    std::copy(step.tokenIds.begin(), step.tokenIds.end(), host);
    std::copy(step.positions.begin(), step.positions.end(), host + tokenCapacity_);
    std::copy(step.tokenSeq.begin(), step.tokenSeq.end(), host + 2 * tokenCapacity_);
    std::copy(tiles.begin(), tiles.end(), host + 3 * tokenCapacity_);
    host[idsInsteadAt] = step.tokensFromLastLaunch ? 1 : 0;
    std::copy(selected_.begin(), selected_.end(), host + selectedAt);
    keptRowsInStep_ = selected_.size() < T;
    for (size_t i = 0; keptRowsInStep_ && i < selected_.size(); ++i) {
      const auto row = static_cast<size_t>(selected_[i]); // a negative one wraps past T
      keptRowsInStep_ = row < T;
      if (keptRowsInStep_) {
        host[keptAt + i] = step.positions[row];
        host[keptAt + selectedCapacity_ + i] = step.tokenSeq[row];
      }
    }
    int32_t *tables = host + tablesAt;
    std::fill(tables, tables + tableEntries, 0);
    for (size_t s = 0; s < step.blockTables.size(); ++s)
      std::copy(step.blockTables[s].begin(), step.blockTables[s].end(), tables + s * stride);
    // Read from the pinned staging by a kernel: the copy engine's memcpy
    // between the argmax and the graph left ~18 us a 1.1B batch-1 step on
    // an H200 to the gaps around it (docs/performance.md, thirty-seventh
    // session).
    const size_t uploaded = keptRowsInStep_ ? keptAt + selectedCapacity_ + selected_.size()
                                            : tablesAt + tableEntries;
    LLMIR_RETURN_IF_ERROR(check(static_cast<cudaError_t>(cuda::detail::copyWords(
                                    stream(), host, stepTables_.data,
                                    static_cast<int64_t>(uploaded))),
                                "uploading the step"));
    if (stepsAhead_)
      LLMIR_RETURN_IF_ERROR(
          check(cudaEventRecord(stagingUploaded_[turn], stream()), "recording an upload"));
    // The last launched argmax's ids (Executor::launchStep checked their
    // count), after it on the stream: no host round trip, and the embedding
    // reads them where the argmax left them (cuda::IdsInstead): their copy
    // over the upload's ids was one more memcpy before the graph, 0.8 us
    // behind a gap of 8.7 on an H200 (docs/performance.md, thirty-seventh
    // session).
    if (step.tokensFromLastLaunch && (!stepsAhead_ || launchedRows_ != static_cast<int64_t>(T)))
      return Status::error("beginStep: no launched greedy ids for the step's " +
                           std::to_string(T) + " tokens");
    // At the upload's token capacity, so that an argmax seldom moves them
    // (a graph holds their address: fixedBuffers); not while they are the
    // step's tokens (a grown array loses them).
    if (!step.tokensFromLastLaunch)
      LLMIR_RETURN_IF_ERROR(greedyIds_.reserve(std::max(tokenCapacity_, selectedCapacity_)));
    ids_ = stepTables_.data;
    takeGreedyIds_ = ids_ + idsInsteadAt;
    positions_ = ids_ + tokenCapacity_;
    tokenSeq_ = ids_ + 2 * tokenCapacity_;
    selectedRows_ = ids_ + selectedAt;
    deviceStep_ = {static_cast<int64_t>(T), positions_, tokenSeq_, ids_ + tablesAt,
                   static_cast<int64_t>(stride), ids_ + 3 * tokenCapacity_,
                   static_cast<int64_t>(tiles.size() / 2)};
    deviceStep_.bf16Queries = bf16Products_;
    // The kept rows as a decode step's queries (keptRowsAttention).
    keptStep_ = {static_cast<int64_t>(selected_.size()), ids_ + keptAt,
                 ids_ + keptAt + selectedCapacity_, ids_ + tablesAt, static_cast<int64_t>(stride)};
    keptStep_.bf16Queries = bf16Products_;
    // Flash-decoding when a decode step's (token, head) pairs would leave
    // most multiprocessors idle: each pair's keys over up to 8 blocks. It
    // depends on T only, so a recorded graph stays valid.
    decodeStep_ = isDecodeStep();
    if (tiles.empty() && decodeStep_)
      return splitKeys(deviceStep_, attentionScratch_, splitCounters_);
    return Status::ok();
  }

  /// Flash-decoding's splits for `step`, a decode step's rows (one query row
  /// a sequence), when its (row, head) pairs would leave most
  /// multiprocessors idle: each pair's keys over up to maxDecodeSplits()
  /// blocks, partials in `scratch`, merged by the last split to finish
  /// (`counters`). The splits depend on the row count only.
  Status splitKeys(cuda::DeviceStep &step, DeviceArray<float> &scratch,
                   DeviceArray<unsigned> &counters) {
    const int64_t rows = step.numTokens;
    // The group kernel runs a block per (token, KV head) where
    // attendKernel ran one per (token, query head).
    const int64_t pairs =
        rows * (cuda::detail::groupDecodeEnabled() ? attentionKvHeads_ : attentionHeads_);
    if (pairs <= 0)
      return Status::ok();
    const int64_t splits =
        std::clamp<int64_t>((2 * multiprocessors_ + pairs - 1) / pairs, 1, maxDecodeSplits());
    if (splits <= 1)
      return Status::ok();
    LLMIR_RETURN_IF_ERROR(scratch.reserve(static_cast<size_t>(rows * splits * partialRow_)));
    const size_t counted = static_cast<size_t>(rows * attentionHeads_);
    if (counted > counters.capacity) { // zeroed once: the kernels leave them zero
      LLMIR_RETURN_IF_ERROR(counters.reserve(counted));
      LLMIR_RETURN_IF_ERROR(
          check(cudaMemset(counters.data, 0, counters.capacity * sizeof(unsigned)),
                "clearing the split counters"));
    }
    step.decodeSplits = splits;
    step.attentionScratch = scratch.data;
    step.splitCounters = counters.data;
    return Status::ok();
  }

  Status run(const BoundInstruction &inst) override {
    inst_ = &inst;
    const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
    if (index == pruneAttention_ && keptRowsAttentionApplies()) {
      Result<bool> began = beginPrunedRows(true);
      if (!began)
        return began.status();
      if (*began)
        return keptRowsAttention(index);
    }
    if (index == pruneFrom_ && !pruning_)
      if (Result<bool> began = beginPrunedRows(false); !began)
        return began.status();
    if (index == pruneSelect_ && pruning_) { // its input holds the selected rows already
      endPrunedRows();
      if (index == selectDoneAt_) { // the LM head normalises the one row (planResidualNorms)
        selectDoneAt_ = kNone;
        return Status::ok();
      }
      const DeviceTensor &x = activations_[inst.inputs[0]];
      DeviceTensor &y = activations_[inst.outputs[0]];
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
      return check(cudaMemcpyAsync(y.data(), x.data(), x.numel() * sizeof(float),
                                   cudaMemcpyDeviceToDevice, stream()),
                   "copying the selected rows");
    }
    if (index < computedEarlier_.size() && computedEarlier_[index])
      return Status::ok(); // computed with an instruction before it (planFusions)
    if (wholeProgram_ && index < swigluComputedEarlier_.size() && swigluComputedEarlier_[index])
      return Status::ok();
    if (index == residualAddDoneAt_) { // done by the product before it (planResidualNorms)
      residualAddDoneAt_ = kNone;
      return Status::ok();
    }
    if (index == selectDoneAt_) { // the one row, normed by the LM head (planResidualNorms)
      selectDoneAt_ = kNone;
      return Status::ok();
    }
    if (index == exchangeSkips_.first || index == exchangeSkips_.second) { // planExchanges
      (index == exchangeSkips_.first ? exchangeSkips_.first : exchangeSkips_.second) = kNone;
      return Status::ok();
    }
    if (capturing_ && skippedForMeasuring(inst.op))
      return Status::ok();
    LLMIR_RETURN_IF_ERROR(dispatch(inst));
    for (size_t o = 0; o < inst.outputs.size(); ++o)
      if (inst.outputAliasesInput[o])
        std::swap(aliased_, activations_[inst.outputs[o]]);
    return check(cudaGetLastError(), "launch");
  }

  Status runAll(const std::vector<BoundInstruction> &instructions) override {
    if (hostTimes_.on)
      hostTimes_.inBeginStep = secondsSince(hostTimes_.stepBegan);
    if (linearGroupSize_.empty())
      planFusions();
    // Fusions whose skipped instructions' outputs are never written apply
    // only while the whole program runs here (not one by one with an
    // observer reading every output).
    wholeProgram_ = true;
    const Status ran = runAllWhole(instructions);
    wholeProgram_ = false;
    if (hostTimes_.on && !hostTimes_.replayed) {
      hostTimes_.eagerTokens = T();
      hostTimes_.eagerWaited = hostTimes_.waited;
      hostTimes_.eagerBegun = hostTimes_.inBeginStep;
      hostTimes_.eagerLaunched = secondsSince(hostTimes_.stepBegan);
    }
    endPrunedRows(); // a step that failed inside the range
    return ran;
  }

  Status runAllWhole(const std::vector<BoundInstruction> &instructions) {
    if (!graphsAllowed_ || !decodeStep_)
      return ExecutionBackend::runAll(instructions);
    GraphKey key{step_->numTokens(), deviceStep_.blockTableStride,
                 static_cast<int64_t>(selected_.size())};
    auto found = graphs_.find(key);
    if (found != graphs_.end() && restoreLayout(found->second)) {
      const Status launched = check(cudaGraphLaunch(found->second.exec, stream()), "graph launch");
      if (hostTimes_.on) {
        hostTimes_.beforeLaunch += secondsSince(hostTimes_.stepBegan);
        hostTimes_.beginningStep += hostTimes_.inBeginStep;
        hostTimes_.replayed = true;
        ++hostTimes_.steps;
      }
      return launched;
    }
    if (found != graphs_.end()) { // recorded over buffers since replaced
      cudaGraphExecDestroy(found->second.exec);
      graphs_.erase(found);
    }
    // The first time eagerly: buffers grow to this step's size outside any
    // recording; the second time recorded, then replayed.
    if (seenKeys_.insert(key).second)
      return ExecutionBackend::runAll(instructions);
    if (graphs_.size() >= kMaxGraphs)
      dropGraphs();
    LLMIR_RETURN_IF_ERROR(check(
        cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal), "begin capture"));
    capturing_ = true;
    Status ran = ExecutionBackend::runAll(instructions);
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream(), &graph);
    if (!ran.isOk()) {
      if (graph)
        cudaGraphDestroy(graph);
      return ran;
    }
    LLMIR_RETURN_IF_ERROR(check(ended, "end capture"));
    Graph recorded;
    const cudaError_t instantiated = cudaGraphInstantiate(&recorded.exec, graph, 0);
    cudaGraphDestroy(graph);
    LLMIR_RETURN_IF_ERROR(check(instantiated, "instantiating a graph"));
    recorded.layout = layout();
    Graph &stored = graphs_[key] = std::move(recorded);
    return check(cudaGraphLaunch(stored.exec, stream()), "graph launch");
  }

  Result<Tensor> read(uint32_t slot) override {
    const DeviceTensor &d = activations_[slot];
    Tensor t(d.shape);
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(t.data.data(), d.data(),
                                                t.data.size() * sizeof(float),
                                                cudaMemcpyDeviceToHost, stream()),
                                "reading slot " + std::to_string(slot)));
    LLMIR_RETURN_IF_ERROR(waitStream("reading slot " + std::to_string(slot)));
    if (hostTimes_.on && !hostTimes_.replayed)
      hostTimes_.eagerRead = secondsSince(hostTimes_.stepBegan);
    return t;
  }

  Result<std::vector<int32_t>> argmaxRows(uint32_t slot) override {
    const DeviceTensor &d = activations_[slot];
    const int64_t rows = d.shape.size() == 2 ? d.shape[0] : 0;
    if (rows == 0)
      return std::vector<int32_t>();
    launchedRows_ = -1; // greedyIds_ no longer holds the launched ids
    LLMIR_RETURN_IF_ERROR(greedyIds_.reserve(static_cast<size_t>(rows)));
    LLMIR_RETURN_IF_ERROR(hostIds_.reserve(static_cast<size_t>(rows)));
    LLMIR_RETURN_IF_ERROR(
        cuda::argmaxRows(stream(), d.data(), rows, d.shape[1], greedyIds_.data));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(hostIds_.data, greedyIds_.data,
                                                static_cast<size_t>(rows) * sizeof(int32_t),
                                                cudaMemcpyDeviceToHost, stream()),
                                "reading greedy ids"));
    LLMIR_RETURN_IF_ERROR(waitingForIds(hostTimes_.replayed,
                                        [&] { return waitStream("reading greedy ids"); }));
    return std::vector<int32_t>(hostIds_.data, hostIds_.data + rows);
  }

  /// The launched ids stay on the device for the next step where the host
  /// may run steps ahead (stepsAhead_); pipeline stages keep the executor's
  /// host path.
  bool takesTokensFromLastLaunch() const override { return stepsAhead_; }
  std::string promptAttentionLibrary() override {
    return cuda::cudnnAttentionDescription(context_);
  }

  Result<int64_t> launchTokens(uint32_t slot, std::span<const RowSampling> rows) override {
    if (!stepsAhead_)
      return ExecutionBackend::launchTokens(slot, rows);
    if (launchedTurns_.size() >= 2)
      return Status::error("launchTokens: two launched steps' tokens not collected");
    const DeviceTensor &d = activations_[slot];
    const int64_t count = d.shape.size() == 2 ? d.shape[0] : 0;
    if (!rows.empty() && count != static_cast<int64_t>(rows.size()))
      return Status::error("launchTokens: " + std::to_string(rows.size()) +
                           " rows of sampling parameters for logits " +
                           model::formatShape(d.shape));
    LaunchedIds &launched = launchedIds_[launchTurn_];
    launched.logprobs.assign(rows.size(), false);
    bool draws = false, logprobs = false;
    for (size_t r = 0; r < rows.size(); ++r) {
      launched.logprobs[r] = rows[r].logprob;
      logprobs |= rows[r].logprob;
      draws |= rows[r].logprob || !rows[r].params.greedy();
    }
    if (count > 0) {
      const size_t n = static_cast<size_t>(count);
      LLMIR_RETURN_IF_ERROR(greedyIds_.reserve(n));
      LLMIR_RETURN_IF_ERROR(launched.host.reserve(n));
      if (!draws) {
        // The kernel writes the host's copy itself: a memcpy behind it held
        // the next step's upload ~18 us (with the upload's, c212: a 1.1B
        // batch-1 step 0.913 -> 0.898 ms, batch 32 -7%; docs/performance.md).
        LLMIR_RETURN_IF_ERROR(cuda::argmaxRows(stream(), d.data(), count, d.shape[1],
                                               greedyIds_.data, launched.host.data));
      } else {
        // The parameters from this turn's own pinned rows: the other turn's
        // upload may still wait behind the step running now. One device
        // copy serves both turns, its upload ordered after the sampling
        // that read it before.
        LLMIR_RETURN_IF_ERROR(launched.sampling.reserve(n));
        LLMIR_RETURN_IF_ERROR(sampling_.reserve(n));
        if (logprobs) {
          LLMIR_RETURN_IF_ERROR(launched.hostLogprobs.reserve(n));
          LLMIR_RETURN_IF_ERROR(logprobs_.reserve(n));
        }
        for (size_t r = 0; r < n; ++r) {
          const SamplingParams &p = rows[r].params;
          launched.sampling.data[r] = {p.temperature, p.topP, p.topK, 0, rows[r].uniform};
        }
        LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(sampling_.data, launched.sampling.data,
                                                    n * sizeof(cuda::SamplingRow),
                                                    cudaMemcpyHostToDevice, stream()),
                                    "uploading sampling parameters"));
        LLMIR_RETURN_IF_ERROR(samplingScratch_.reserve(cuda::samplingScratchBytes(count)));
        LLMIR_RETURN_IF_ERROR(cuda::sampleRows(
            stream(), d.data(), count, d.shape[1], sampling_.data, greedyIds_.data,
            logprobs ? logprobs_.data : nullptr, launched.host.data,
            logprobs ? launched.hostLogprobs.data : nullptr, samplingScratch_.data,
            samplingScratch_.capacity));
      }
    }
    if (!launched.arrived)
      LLMIR_RETURN_IF_ERROR(check(
          cudaEventCreateWithFlags(&launched.arrived, cudaEventDisableTiming), "an event"));
    LLMIR_RETURN_IF_ERROR(check(cudaEventRecord(launched.arrived, stream()), "recording ids"));
    launched.rows = count;
    launched.replayed = hostTimes_.replayed;
    launchedRows_ = count;
    launchedTurns_.push_back(launchTurn_);
    launchTurn_ ^= 1;
    return count;
  }

  Result<std::vector<SampledToken>> collectTokens() override {
    if (!stepsAhead_)
      return ExecutionBackend::collectTokens();
    if (launchedTurns_.empty())
      return Status::error("collectTokens: nothing launched");
    LaunchedIds &launched = launchedIds_[launchedTurns_.front()];
    launchedTurns_.pop_front();
    LLMIR_RETURN_IF_ERROR(waitingForIds(
        launched.replayed, [&] { return waitEvent(launched.arrived, "reading the tokens"); }));
    std::vector<SampledToken> tokens(static_cast<size_t>(launched.rows));
    for (size_t r = 0; r < tokens.size(); ++r) {
      tokens[r].id = launched.host.data[r];
      if (r < launched.logprobs.size() && launched.logprobs[r])
        tokens[r].logprob = launched.hostLogprobs.data[r];
    }
    return tokens;
  }

  Result<std::vector<SampledToken>> sampleRows(uint32_t slot,
                                               std::span<const RowSampling> rows) override {
    const DeviceTensor &d = activations_[slot];
    const int64_t count = d.shape.size() == 2 ? d.shape[0] : 0;
    if (count != static_cast<int64_t>(rows.size()) || count == 0)
      return Status::error("sampleRows: " + std::to_string(rows.size()) +
                           " rows of sampling parameters for logits " +
                           model::formatShape(d.shape));
    const size_t n = rows.size();
    bool logprobs = false, greedy = true;
    for (const RowSampling &row : rows) {
      logprobs |= row.logprob;
      greedy &= row.params.temperature <= 0.0f || row.params.topK == 1;
    }
    if (greedy && !logprobs) { // one pass per row instead of the cuts
      Result<std::vector<int32_t>> ids = argmaxRows(slot);
      if (!ids)
        return ids.status();
      std::vector<SampledToken> tokens(n);
      for (size_t r = 0; r < n; ++r)
        tokens[r].id = (*ids)[r];
      return tokens;
    }
    LLMIR_RETURN_IF_ERROR(sampling_.reserve(n));
    LLMIR_RETURN_IF_ERROR(hostSampling_.reserve(n));
    launchedRows_ = -1; // greedyIds_ no longer holds the launched ids
    LLMIR_RETURN_IF_ERROR(greedyIds_.reserve(n));
    LLMIR_RETURN_IF_ERROR(hostIds_.reserve(n));
    LLMIR_RETURN_IF_ERROR(logprobs_.reserve(n));
    LLMIR_RETURN_IF_ERROR(hostLogprobs_.reserve(n));
    // (The previous call waited for its upload: the pinned rows are free.)
    for (size_t r = 0; r < n; ++r) {
      const SamplingParams &p = rows[r].params;
      hostSampling_.data[r] = {p.temperature, p.topP, p.topK, 0, rows[r].uniform};
    }
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(sampling_.data, hostSampling_.data,
                                                n * sizeof(cuda::SamplingRow),
                                                cudaMemcpyHostToDevice, stream()),
                                "uploading sampling parameters"));
    LLMIR_RETURN_IF_ERROR(samplingScratch_.reserve(cuda::samplingScratchBytes(count)));
    LLMIR_RETURN_IF_ERROR(cuda::sampleRows(stream(), d.data(), count, d.shape[1],
                                           sampling_.data, greedyIds_.data,
                                           logprobs ? logprobs_.data : nullptr, nullptr,
                                           nullptr, samplingScratch_.data,
                                           samplingScratch_.capacity));
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(hostIds_.data, greedyIds_.data,
                                                n * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                                stream()),
                                "reading sampled ids"));
    if (logprobs)
      LLMIR_RETURN_IF_ERROR(check(cudaMemcpyAsync(hostLogprobs_.data, logprobs_.data,
                                                  n * sizeof(float), cudaMemcpyDeviceToHost,
                                                  stream()),
                                  "reading logprobs"));
    LLMIR_RETURN_IF_ERROR(waitStream("reading sampled ids"));
    std::vector<SampledToken> tokens(n);
    for (size_t r = 0; r < n; ++r) {
      tokens[r].id = hostIds_.data[r];
      if (rows[r].logprob)
        tokens[r].logprob = hostLogprobs_.data[r];
    }
    return tokens;
  }

private:
  static constexpr size_t kActivationReserve = size_t(512) << 20;
  static constexpr size_t kMaxGraphs = 64;
  static constexpr size_t kMaxLinearGroup = 4;
  static constexpr int64_t kMaxDecodeSplits = 8;

  cudaStream_t stream() const { return context_.stream(); }

  /// A decode step: every sequence of the step has exactly one token.
  bool isDecodeStep() const {
    const std::vector<int32_t> &seq = step_->tokenSeq;
    if (seq.empty() || seq.size() != step_->blockTables.size())
      return false;
    std::vector<bool> seen(step_->blockTables.size(), false);
    for (int32_t s : seq) {
      if (s < 0 || static_cast<size_t>(s) >= seen.size() || seen[static_cast<size_t>(s)])
        return false;
      seen[static_cast<size_t>(s)] = true;
    }
    return true;
  }

  /// Fewer launches for the same arithmetic, planned once the weights are
  /// known: consecutive LINEARs of one input with 16-bit weights of one
  /// dtype and width (Q, K, V; gate, up) run as one linearGroup
  /// (linearGroupSize_: the group's size at its first instruction), and a
  /// residual ADD followed by the RMS_NORM of its sum runs as one addRmsNorm
  /// (addNormFused_). computedEarlier_ marks the instructions whose outputs
  /// an earlier one wrote.
  void planFusions() {
    const auto &insts = program_.instructions;
    addNormFused_.assign(insts.size(), false);
    computedEarlier_.assign(insts.size(), false);
    linearGroupSize_ = planLinearGroups(
        insts,
        [&](size_t i) {
          const BoundInstruction &inst = insts[i];
          if (inst.op != proto::LINEAR || inst.outputAliasesInput[0])
            return false;
          const DeviceWeight &w = weights_[inst.inputs[1]];
          return w.shape.size() == 2 && (w.dtype == proto::BF16 || w.dtype == proto::F16);
        },
        [&](size_t i) {
          const DeviceWeight &w = weights_[insts[i].inputs[1]];
          return std::make_pair(w.dtype, w.shape[1]);
        },
        kMaxLinearGroup);
    for (size_t j = 0; j < insts.size(); ++j)
      computedEarlier_[j] = linearGroupSize_[j] == 0;
    packLinearGroups();
    for (size_t i = 0; i + 1 < insts.size(); ++i) {
      const BoundInstruction &add = insts[i], &norm = insts[i + 1];
      if (add.op != proto::ADD || norm.op != proto::RMS_NORM || computedEarlier_[i + 1] ||
          norm.inputs[0] != add.outputs[0] || norm.outputAliasesInput[0] ||
          norm.outputs[0] == add.outputs[0] || norm.outputs[0] == add.inputs[0] ||
          norm.outputs[0] == add.inputs[1])
        continue;
      // A per-head norm (weight shorter than the row) keeps its own kernel.
      const DeviceWeight &w = weights_[norm.inputs[1]];
      const std::vector<int64_t> &width = program_.slots[add.outputs[0]].shape;
      if (w.shape.size() != 1 || width.size() != 2 || width[1] != w.shape[0])
        continue;
      addNormFused_[i] = true;
      computedEarlier_[i + 1] = true;
    }
    planSwigluFusions();
    planRopeStores();
    planPackedProducts();
    planAllReduceNorms();
    planSplitsInProducers();
    planResidualNorms();
    planResidualsInProducts();
    planExchanges();
    planRowPruning();
  }

  /// The rows no logit needs, left out of the last layer from its
  /// attention on (llama.cpp's inp_out_ids): the row-wise instructions that
  /// only the SELECT_ROWS before the LM head depends on (the O projection,
  /// the residual ADDs and norms, the MLP and the final norm) run on the
  /// selected rows, their inputs from before (the attention's output, the
  /// residual) gathered first (beginPrunedRows), and the attention before
  /// them attends the selected rows' queries only (keptRowsAttention). A
  /// 2,048-token prefill of which one row's logits are wanted computes
  /// that layer's attention and products for one row. Whole-program, uncaptured steps that select fewer rows than
  /// they have; LLMIR_CUDA_PRUNE_ROWS=0 turns it off (for measuring).
  /// The range is engine::planRowPruning's: under tensor parallelism it
  /// stops at the last ALL_REDUCE, and without a LINEAR in it nothing is
  /// planned (gathers for an ADD and a norm would not pay).
  void planRowPruning() {
    pruneFrom_ = pruneSelect_ = pruneAttention_ = kNone;
    pruneInputs_.clear();
    if (!fusionsEnabled() || cuda::detail::switchedOff("LLMIR_CUDA_PRUNE_ROWS"))
      return;
    RowPruning tail = engine::planRowPruning(program_);
    if (tail.empty())
      return;
    const size_t from = tail.from, select = tail.select;
    pruneFrom_ = from;
    pruneSelect_ = select;
    pruneInputs_ = std::move(tail.inputs);
    // A producer before the range (the attention) writes every row of its
    // output, not the bf16 halves of the product in the range.
    for (size_t i = 0; i < from; ++i)
      if (splitBy_[i] != kNone && splitBy_[i] >= from && splitBy_[i] < select) {
        splitBy_[i] = kNone;
        halvesOnly_[i] = false;
      }
    // The attention right before the range on the kept rows too
    // (keptRowsAttention), where a ropeStore_ pair stored its keys and
    // values and only the range reads its output.
    const auto &insts = program_.instructions;
    const size_t a = from - 1;
    if (from >= 3 && insts[a].op == proto::ATTENTION && keysStored_[a] && ropeStore_[a - 2] &&
        !insts[a].outputAliasesInput[0] &&
        std::count(pruneInputs_.begin(), pruneInputs_.end(), insts[a].outputs[0]) == 1 &&
        !cuda::detail::switchedOff("LLMIR_CUDA_PRUNE_ATTENTION"))
      pruneAttention_ = a;
  }

  /// Whether this step's pruning starts at pruneAttention_: its kept rows
  /// are rows of the step and the attention's keys are stored before it
  /// (not a decode step's fused launch).
  bool keptRowsAttentionApplies() {
    return pruneAttention_ != kNone && keptRowsInStep_ &&
           !ropeFoldedIntoAttention(pruneAttention_ - 2);
  }

  /// The ATTENTION at pruneAttention_ for the kept rows only, into its
  /// output slot (the range's buffer of those rows): their queries gathered
  /// (and rotated, where the prefill kernel would have rotated them
  /// itself), then attended over the cache as a decode step's rows are
  /// (keptStep_: flash-decoding's splits over each row's keys). A 2,048-token
  /// prefill's last attention computed 2,048 rows to keep one.
  Status keptRowsAttention(size_t index) {
    const cpu::AttentionParams &a = program_.instructions[index].params.attention;
    const int64_t S = keptStep_.numTokens, qWidth = a.numHeads * a.headDim;
    DeviceTensor &o = out(0);
    LLMIR_RETURN_IF_ERROR(o.reshape({S, qWidth}));
    LLMIR_RETURN_IF_ERROR(keptQueries_.reserve(static_cast<size_t>(S * qWidth)));
    const size_t rope = index - 2;
    if (ropeFoldedIntoPrefill(rope)) { // the queries were left unrotated
      Result<RopeStoreOperands> r = ropeStoreOperands(rope);
      LLMIR_RETURN_IF_ERROR(r.status());
      const bool packed = packedRope_ == rope;
      packedRope_ = kNone;
      LLMIR_RETURN_IF_ERROR(cuda::selectRows(packed ? packedProduct_.data + packedQ_ : r->q, T(),
                                             qWidth, selectedRows_, S, keptQueries_.data,
                                             stream(), packed ? packedStride_ : 0));
      LLMIR_RETURN_IF_ERROR(cuda::rope(keptQueries_.data, keptQueries_.data, S, a.numHeads,
                                       a.headDim, keptStep_.positions, r->qFrequencies,
                                       stream()));
    } else {
      LLMIR_RETURN_IF_ERROR(cuda::selectRows(act(0).data(), T(), qWidth, selectedRows_, S,
                                             keptQueries_.data, stream()));
    }
    // Their own scratch and counters: the decode graphs hold the step's.
    cuda::DeviceStep step = keptStep_;
    LLMIR_RETURN_IF_ERROR(splitKeys(step, keptScratch_, keptCounters_));
    return cuda::pagedAttention(keptQueries_.data, nullptr, nullptr, step, a, cache_, o.data(),
                                stream(), /*keysStored=*/true);
  }

  /// planRowPruning's start, at instruction pruneFrom_ (or pruneAttention_,
  /// `attention`): the range's inputs gathered to the selected rows and
  /// swapped into their slots for the range (the slots' own buffers kept
  /// aside, so that no buffer moves between steps: the decode graphs'
  /// layout); with `attention` its output slot is not gathered but written
  /// by keptRowsAttention. False where it does not apply to this step.
  Result<bool> beginPrunedRows(bool attention) {
    const int64_t S = static_cast<int64_t>(selected_.size());
    if (!wholeProgram_ || capturing_ || S == 0 || S >= T())
      return false;
    const uint32_t attended =
        attention ? program_.instructions[pruneAttention_].outputs[0] : UINT32_MAX;
    for (uint32_t slot : pruneInputs_)
      if (slot != attended &&
          (activations_[slot].shape.size() != 2 || activations_[slot].rows() != T()))
        return false;
    prunedInputs_.resize(pruneInputs_.size());
    for (size_t k = 0; k < pruneInputs_.size(); ++k) {
      if (pruneInputs_[k] == attended)
        continue; // its shape from keptRowsAttention
      const DeviceTensor &x = activations_[pruneInputs_[k]];
      DeviceTensor &y = prunedInputs_[k];
      LLMIR_RETURN_IF_ERROR(y.reshape({S, x.rowSize()}));
      LLMIR_RETURN_IF_ERROR(
          cuda::selectRows(x.data(), x.rows(), x.rowSize(), selectedRows_, S, y.data(), stream()));
    }
    for (size_t k = 0; k < pruneInputs_.size(); ++k)
      std::swap(activations_[pruneInputs_[k]], prunedInputs_[k]);
    pruning_ = true;
    return true;
  }

  /// The slots' own buffers back, after the range or a failed step.
  void endPrunedRows() {
    if (!pruning_)
      return;
    for (size_t k = 0; k < pruneInputs_.size(); ++k)
      std::swap(activations_[pruneInputs_[k]], prunedInputs_[k]);
    pruning_ = false;
  }

  /// A tensor-parallel layer's LINEAR of partial sums (O, down), the
  /// ALL_REDUCE of them, the fused ADD+RMS_NORM and the LINEAR group reading
  /// the norm (gate/up, the next Q/K/V, the LM head): at one token the two
  /// GEMVs hand each other the ranks' rows through the group's PeerExchange
  /// (cuda::ExchangedNorm) and do the ADD and the norm, where the
  /// all-reduce+norm was a launch of its own between them. Leaving those
  /// launches out took an 8B step at TP=2 on two H200s 2.808 -> 2.387 ms
  /// (docs/performance.md, thirtieth session). Sites: the ALL_REDUCE's
  /// ordinal among its group's, the same on every rank. Whole-program runs
  /// only (the ALL_REDUCE's output is never written); LLMIR_PEER_EXCHANGE=0
  /// (the communicator's) turns it off.
  /// Rows up to kExchangeMaxWidth (LLMIR_PEER_EXCHANGE_MAX_WIDTH): every
  /// consumer block sums and normalises the whole row itself, and on two
  /// H200s (c169-c174) that paid at H = 2,048 (1.1B step 0.815-0.831 ->
  /// 0.792-0.803 ms) but not at 4,096 (8B 2.80 -> 2.92).
  /// A group with one site is left to the all-reduce: a consumer empties
  /// its site for the next call, and only another site's wait orders that
  /// before a peer's next rows there (PeerExchange.h).
  static constexpr int64_t kExchangeMaxWidth = 2048;
  void planExchanges() {
    const auto &insts = program_.instructions;
    exchangeConsumer_.assign(insts.size(), kNone);
    exchangeSite_.assign(insts.size(), -1);
    if (!fusionsEnabled() || !streamCollectives())
      return;
    static const int64_t maxWidth =
        cuda::detail::countFromEnv("LLMIR_PEER_EXCHANGE_MAX_WIDTH", kExchangeMaxWidth);
    std::map<uint32_t, int> sites;   // a group's all-reduces so far
    std::map<uint32_t, int> planned; // ... and those planned as exchanges
    std::vector<int> siteOf(insts.size(), -1);
    for (size_t i = 0; i < insts.size(); ++i)
      if (insts[i].op == proto::ALL_REDUCE)
        siteOf[i] = sites[insts[i].params.group]++;
    for (size_t p = 0; p + 4 < insts.size(); ++p) {
      const BoundInstruction &linear = insts[p], &ar = insts[p + 1], &add = insts[p + 2],
                             &norm = insts[p + 3], &next = insts[p + 4];
      if (linear.op != proto::LINEAR || linearGroupSize_[p] != 1 ||
          linear.outputAliasesInput[0] || linear.inputs.size() < 2 ||
          !allReduceBeforeAddNorm_[p + 1] || ar.inputs[0] != linear.outputs[0] ||
          !addNormFused_[p + 2] || norm.op != proto::RMS_NORM || next.op != proto::LINEAR ||
          linearGroupSize_[p + 4] == 0 || next.inputs.size() < 2 ||
          next.inputs[0] != norm.outputs[0])
        continue;
      const PeerExchange exchange = comm_->peerExchange(ar.params.group);
      if (exchange.ranks < 2 || siteOf[p + 1] >= exchange.sites ||
          weights_[linear.inputs[1]].view().rows > maxWidth ||
          !cuda::takesExchangedNorm(weights_[linear.inputs[1]].view(),
                                    weights_[next.inputs[1]].view(), exchange))
        continue;
      exchangeConsumer_[p] = p + 4;
      exchangeSite_[p] = siteOf[p + 1];
      ++planned[ar.params.group];
    }
    for (size_t p = 0; p < insts.size(); ++p)
      if (exchangeConsumer_[p] != kNone && planned[insts[p + 1].params.group] < 2) {
        exchangeConsumer_[p] = kNone;
        exchangeSite_[p] = -1;
      }
  }

  /// The producer's side of planExchanges at LINEAR `index` over x: false
  /// where it does not apply to this step (the ALL_REDUCE runs as usual).
  Result<bool> produceExchange(size_t index, const DeviceTensor &x,
                               std::span<const cuda::LinearOutput> outputs) {
    if (!wholeProgram_ || index >= exchangeConsumer_.size() || exchangeConsumer_[index] == kNone ||
        x.rows() != 1 || outputs.size() != 1)
      return false;
    const auto &insts = program_.instructions;
    const BoundInstruction &ar = insts[index + 1], &add = insts[index + 2],
                           &norm = insts[index + 3];
    const int64_t H = outputs[0].w.rows;
    const uint32_t reduced = ar.outputs[0];
    const DeviceTensor &residual = activations_[add.inputs[0] == reduced ? add.inputs[1]
                                                                         : add.inputs[0]];
    if (residual.shape != std::vector<int64_t>{1, H})
      return false; // the ADD reports a mismatch
    DeviceTensor &sum = activations_[add.outputs[0]], &normed = activations_[norm.outputs[0]];
    LLMIR_RETURN_IF_ERROR(sum.reshape({1, H}));
    LLMIR_RETURN_IF_ERROR(normed.reshape({1, H}));
    cuda::ExchangedNorm e;
    e.exchange = comm_->peerExchange(ar.params.group);
    e.site = exchangeSite_[index];
    e.residual = residual.data();
    e.sum = sum.data();
    e.weight = weights_[norm.inputs[1]].widened.data;
    e.eps = norm.params.eps;
    e.normed = normed.data();
    LLMIR_RETURN_IF_ERROR(cuda::linearExchanging(context_, x.data(), outputs[0], e));
    pendingExchange_ = e;
    pendingExchangeAt_ = exchangeConsumer_[index];
    exchangeSkips_ = {index + 1, index + 2};
    return true;
  }

  /// A LINEAR of one product whose output only the fused ADD+RMS_NORM right
  /// after it reads (a layer's O and down projections): on cuBLAS (a
  /// prefill) the product adds the residual itself, writing the ADD's sum
  /// (cuda::linearAddResidual), and the ADD+RMS_NORM only normalises it: the
  /// norm's pass reads one [T, H] where it read two and wrote the sum.
  /// residualInProduct_ at the LINEAR; LLMIR_CUDA_RESIDUAL_IN_PRODUCTS=0
  /// turns it off (for measuring).
  void planResidualsInProducts() {
    const auto &insts = program_.instructions;
    residualInProduct_.assign(insts.size(), false);
    if (!fusionsEnabled() || cuda::detail::switchedOff("LLMIR_CUDA_RESIDUAL_IN_PRODUCTS"))
      return;
    for (size_t p = 0; p + 1 < insts.size(); ++p) {
      const BoundInstruction &linear = insts[p], &add = insts[p + 1];
      if (linear.op != proto::LINEAR || linearGroupSize_[p] != 1 ||
          linear.outputAliasesInput[0] || linear.inputs.size() < 2 || !addNormFused_[p + 1] ||
          add.outputAliasesInput[0] || add.inputs.size() != 2)
        continue;
      const uint32_t y = linear.outputs[0];
      if ((add.inputs[0] == y) == (add.inputs[1] == y) || readBeforeWritten(program_, p + 1, y))
        continue;
      const DeviceWeight &w = weights_[linear.inputs[1]];
      residualInProduct_[p] = w.dtype == proto::BF16 && w.shape.size() == 2;
    }
  }

  /// The fused ADD+RMS_NORM at `index`: sum = a + b (b null: a is the sum
  /// already, its product added the residual) and the norm of the sum, whose
  /// bf16 halves the product reading it on cuBLAS takes from this launch
  /// (planSplitsInProducers), with or instead of the f32 row.
  Status addAndNormalise(size_t index, const float *a, const float *b, DeviceTensor &sum) {
    const BoundInstruction &norm = program_.instructions[index + 1];
    const DeviceWeight &w = weights_[norm.inputs[1]];
    DeviceTensor &normed = activations_[norm.outputs[0]];
    LLMIR_RETURN_IF_ERROR(normed.reshape(sum.shape));
    Result<ProducedSplit> split = splitInProducer(index, normed);
    LLMIR_RETURN_IF_ERROR(split.status());
    return cuda::addRmsNorm(a, b, b ? sum.data() : nullptr, sum.rows(), sum.rowSize(),
                            w.widened.data, norm.params.eps,
                            split->halvesOnly ? nullptr : normed.data(), stream(), split->split);
  }

  /// planResidualsInProducts' product at LINEAR `index`: false where it does
  /// not apply to this step (the LINEAR and the ADD run as usual).
  Result<bool> addResidualInProduct(size_t index, const DeviceTensor &x, const float *xData,
                                    bool xSplit, std::span<const cuda::LinearOutput> outputs) {
    if (!wholeProgram_ || index >= residualInProduct_.size() || !residualInProduct_[index] ||
        outputs.size() != 1 || !cuda::takesResidualInProduct(outputs[0].w, x.rows()))
      return false;
    const auto &insts = program_.instructions;
    const BoundInstruction &linear = insts[index], &add = insts[index + 1];
    const DeviceTensor &residual =
        activations_[add.inputs[0] == linear.outputs[0] ? add.inputs[1] : add.inputs[0]];
    const int64_t T = x.rows(), N = outputs[0].w.rows;
    if (residual.shape != std::vector<int64_t>{T, N})
      return false; // the ADD reports the mismatch
    DeviceTensor &sum = activations_[add.outputs[0]];
    LLMIR_RETURN_IF_ERROR(sum.reshape({T, N}));
    cuda::LinearOutput into = outputs[0];
    into.y = sum.data();
    LLMIR_RETURN_IF_ERROR(
        cuda::linearAddResidual(context_, xData, T, into, residual.data(), xSplit));
    sumInProductAt_ = index + 1;
    return true;
  }

  /// A LINEAR of one product (the producer), the fused ADD+RMS_NORM of its
  /// output and a residual, and the LINEAR group reading the norm (the
  /// consumer): at one token the two GEMVs do the ADD and the norm
  /// (cuda::ResidualNorm), two phases fewer a layer (normConsumer_ at the
  /// producer). Every output is still written. On an H200, 1.1B shape,
  /// batch 1: 1.344 -> 1.267 ms a step (medium), 1.335 -> 1.269 (highest),
  /// six alternations (docs/performance.md). LLMIR_CUDA_NORM_IN_PRODUCTS=0
  /// turns it off (for measuring).
  /// The last layer's down projection and the LM head too, where only a
  /// SELECT_ROWS stands between the final norm and the head and nothing
  /// else reads what it selects: a step of one token whose row it keeps
  /// (produceResidualNorm) leaves out its launch, the head reading the
  /// normed row as it stages it.
  void planResidualNorms() {
    const auto &insts = program_.instructions;
    normConsumer_.assign(insts.size(), kNone);
    selectBeforeConsumer_.assign(insts.size(), false);
    if (!fusionsEnabled() || cuda::detail::switchedOff("LLMIR_CUDA_NORM_IN_PRODUCTS"))
      return;
    int64_t partials = 0;
    for (size_t p = 0; p + 3 < insts.size(); ++p) {
      const BoundInstruction &linear = insts[p], &add = insts[p + 1], &norm = insts[p + 2];
      const BoundInstruction &select = insts[p + 3];
      const bool selects = select.op == proto::SELECT_ROWS && p + 4 < insts.size() &&
                           select.inputs[0] == norm.outputs[0] &&
                           !select.outputAliasesInput[0] &&
                           !readBeforeWritten(program_, p + 4, select.outputs[0]);
      const size_t c = selects ? p + 4 : p + 3; // the consumer
      const BoundInstruction &next = insts[c];
      const uint32_t normed = selects ? select.outputs[0] : norm.outputs[0];
      if (linear.op != proto::LINEAR || linearGroupSize_[p] != 1 ||
          linear.outputAliasesInput[0] || linear.inputs.size() < 2 || !addNormFused_[p + 1] ||
          add.outputAliasesInput[0] || add.inputs.size() != 2 ||
          (add.inputs[0] == linear.outputs[0]) == (add.inputs[1] == linear.outputs[0]) ||
          next.op != proto::LINEAR || linearGroupSize_[c] == 0 || next.inputs.size() < 2 ||
          next.inputs[0] != normed || (selects && linearGroupSize_[c] != 1))
        continue;
      const DeviceWeight &produced = weights_[linear.inputs[1]];
      const DeviceWeight &consumed = weights_[next.inputs[1]];
      if (!cuda::takesResidualNorm(produced.view(), consumed.view(), 1))
        continue;
      // The consumer's rows: a gate/up pair's (planSwigluFusions), else its group's.
      const bool paired = linearSwiglu_[c];
      int64_t rows = 0;
      for (size_t j = c; j < c + (paired ? 1 : linearGroupSize_[c]); ++j)
        rows += weights_[insts[j].inputs[1]].shape[0];
      if (!cuda::residualNormConsumerPays(consumed.shape[1], rows, paired))
        continue;
      normConsumer_[p] = c;
      selectBeforeConsumer_[p] = selects;
      partials = std::max(partials,
                          cuda::residualNormPartials(produced.shape[1], produced.shape[0]));
    }
    if (partials > 0 && !normPartials_.reserve(static_cast<size_t>(partials)).isOk()) {
      cudaGetLastError(); // not sticky: no fusion
      normConsumer_.assign(insts.size(), kNone);
    }
  }

  /// The producer's side of planResidualNorms at LINEAR `index` over x:
  /// false where it does not apply to this step (the ADD runs as usual).
  Result<bool> produceResidualNorm(size_t index, const DeviceTensor &x,
                                   std::span<const cuda::LinearOutput> outputs) {
    // Whole-program runs only: the normed row is written by the consumer,
    // after the RMS_NORM's turn, where an observer would read it.
    if (!wholeProgram_ || index >= normConsumer_.size() || normConsumer_[index] == kNone ||
        x.rows() != 1 || outputs.size() != 1)
      return false;
    const auto &insts = program_.instructions;
    const BoundInstruction &linear = insts[index], &add = insts[index + 1],
                           &norm = insts[index + 2];
    const DeviceWeight &produced = weights_[linear.inputs[1]];
    const int64_t H = produced.shape[0];
    const DeviceTensor &residual =
        activations_[add.inputs[0] == linear.outputs[0] ? add.inputs[1] : add.inputs[0]];
    // The weights were checked when planned (takesResidualNorm at one token).
    if (residual.shape != std::vector<int64_t>{1, H})
      return false; // the ADD reports a mismatch
    if (selectBeforeConsumer_[index] && (selected_.size() != 1 || selected_[0] != 0))
      return false; // the SELECT_ROWS runs: it keeps more than the one row
    DeviceTensor &sum = activations_[add.outputs[0]], &normed = activations_[norm.outputs[0]];
    LLMIR_RETURN_IF_ERROR(sum.reshape({1, H}));
    LLMIR_RETURN_IF_ERROR(normed.reshape({1, H}));
    const DeviceWeight &w = weights_[norm.inputs[1]];
    cuda::ResidualNorm n;
    n.residual = residual.data();
    n.sum = sum.data();
    n.partials = normPartials_.data;
    n.partialCount = cuda::residualNormPartials(produced.shape[1], H);
    n.weight = w.widened.data;
    n.eps = norm.params.eps;
    n.normed = normed.data();
    LLMIR_RETURN_IF_ERROR(
        cuda::linearGroupWithNorm(context_, x.data(), 1, outputs, &n, nullptr));
    pendingNorm_ = n;
    pendingNormAt_ = normConsumer_[index];
    residualAddDoneAt_ = index + 1;
    if (selectBeforeConsumer_[index]) { // the head's x: the normed row, as it stages it
      LLMIR_RETURN_IF_ERROR(activations_[insts[index + 3].outputs[0]].reshape({1, H}));
      selectDoneAt_ = index + 3;
    }
    return true;
  }

  /// A fused ADD+RMS_NORM whose normed row the LINEAR group right after it
  /// reads (a layer's Q/K/V or gate/up) writes that row's bf16 halves for
  /// the group's cuBLAS products too (cuda::splitInputFor: steps of more
  /// tokens than the GEMVs take), so the product does not launch its own
  /// split (a launch a group: ~2.5 us at batch 32, 8 us a 2,048-token
  /// prefill's). The normed row is still written. Not after a deferred
  /// all-reduce (planAllReduceNorms: that ADD runs inside the collective).
  /// Likewise the SWIGLU of a fused gate/up pair (planSwigluFusions) for
  /// the down projection that reads its output (splitBy_ at the gate's
  /// LINEAR; a 2,048-token prefill of the 1.1B shape split it for ~17 us a
  /// layer), and a prefill ATTENTION for the O projection after it.
  void planSplitsInProducers() {
    const auto &insts = program_.instructions;
    splitBy_.assign(insts.size(), kNone);
    halvesOnly_.assign(insts.size(), false);
    if (!fusionsEnabled())
      return;
    const auto readsFirst = [&](size_t linear, uint32_t value) {
      return linear < insts.size() && insts[linear].op == proto::LINEAR &&
             linearGroupSize_[linear] != 0 && !insts[linear].inputs.empty() &&
             insts[linear].inputs[0] == value;
    };
    // The halves only where no instruction after the consumer's group reads
    // the value (whole-program runs: an observer reads every output).
    const auto readsBy = [&](size_t i, size_t consumer, uint32_t value) {
      splitBy_[i] = consumer;
      halvesOnly_[i] = halvesOnlyEnabled() &&
                       !readBeforeWritten(program_, consumer + linearGroupSize_[consumer] - 1, value);
    };
    // A prefill attention (the tensor-core kernel with RoPE folded in)
    // writes the O projection's halves (~8 us a layer of splitting at 2,048
    // tokens of the 1.1B shape); LLMIR_CUDA_ATTENTION_HALVES=0 off (measuring).
    const bool attentionHalves = !cuda::detail::switchedOff("LLMIR_CUDA_ATTENTION_HALVES");
    for (size_t i = 0; i + 1 < insts.size(); ++i) {
      if (attentionHalves && insts[i].op == proto::ATTENTION &&
          readsFirst(i + 1, insts[i].outputs[0]))
        readsBy(i, i + 1, insts[i].outputs[0]);
      // A plain norm (the first layer's, after the embedding) as the
      // residual norms after it: its kernel writes the product's halves.
      if (insts[i].op == proto::RMS_NORM && readsFirst(i + 1, insts[i].outputs[0]))
        readsBy(i, i + 1, insts[i].outputs[0]);
      if (i + 2 >= insts.size())
        continue;
      if (linearSwiglu_[i] && readsFirst(i + 3, insts[i + 2].outputs[0]))
        readsBy(i, i + 3, insts[i + 2].outputs[0]);
      if (!addNormFused_[i] || (i > 0 && allReduceBeforeAddNorm_[i - 1]) ||
          !readsFirst(i + 2, insts[i + 1].outputs[0]))
        continue;
      readsBy(i, i + 2, insts[i + 1].outputs[0]);
    }
  }

  /// Where the instruction at `index` writes the halves of its output x for
  /// the product planSplitsInProducers paired it with, this step (null hi:
  /// it does not; the product splits x itself), and whether it writes the
  /// halves only. Tells that product (splitLinear_). roomRows > x's rows:
  /// the halves have room for that many rows (a producer writing rows past
  /// x's: cuDNN's padded ones); the scratch only grows, so the product's
  /// halves stay where they are.
  struct ProducedSplit {
    cuda::SplitInput split;
    bool halvesOnly = false;
  };
  Result<ProducedSplit> splitInProducer(size_t index, const DeviceTensor &x,
                                        int64_t roomRows = 0) {
    ProducedSplit produced;
    if (index >= splitBy_.size() || splitBy_[index] == kNone)
      return produced;
    const size_t linear = splitBy_[index];
    Result<std::vector<cuda::LinearOutput>> outputs = linearOutputs(linear, x);
    LLMIR_RETURN_IF_ERROR(outputs.status());
    if (roomRows > x.rows())
      LLMIR_RETURN_IF_ERROR(cuda::splitInputFor(context_, roomRows, *outputs).status());
    Result<cuda::SplitInput> into = cuda::splitInputFor(context_, x.rows(), *outputs);
    LLMIR_RETURN_IF_ERROR(into.status());
    produced.split = *into;
    if (produced.split.hi) {
      produced.halvesOnly = wholeProgram_ && halvesOnly_[index];
      splitLinear_ = linear;
      splitHalvesOnly_ = produced.halvesOnly;
    }
    return produced;
  }

  /// The weight shape of the LINEAR right after the instruction at `index`
  /// when it reads that instruction's output with 16-bit weights alone in its
  /// group (the one-token GEMV's product: the decode attention's O
  /// projection), else none (cuda::ReaderShape's N = 0). None where the
  /// product's partial sums are all-reduced next (tensor parallelism): there
  /// the attention's whole multiprocessors made a 1.1B step at TP=2 slower
  /// on two H200s (0.823 -> 0.840 ms, docs/performance.md, thirtieth
  /// session), though the O grid fits beside it as at TP=1.
  cuda::ReaderShape oneTokenReaderOf(size_t index) const {
    const auto &insts = program_.instructions;
    if (index + 1 >= insts.size())
      return {};
    const BoundInstruction &reader = insts[index + 1];
    if (reader.op != proto::LINEAR || reader.inputs.size() < 2 ||
        reader.inputs[0] != insts[index].outputs[0] || index + 1 >= linearGroupSize_.size() ||
        linearGroupSize_[index + 1] != 1)
      return {};
    if (index + 2 < insts.size() && insts[index + 2].op == proto::ALL_REDUCE &&
        !insts[index + 2].inputs.empty() && insts[index + 2].inputs[0] == reader.outputs[0])
      return {};
    const DeviceWeight &w = weights_[reader.inputs[1]];
    if (w.shape.size() != 2 || (w.dtype != proto::BF16 && w.dtype != proto::F16))
      return {};
    return {w.shape[0], w.shape[1]};
  }

  /// LLMIR_CUDA_HALVES_ONLY=0: the producers still write the f32 values
  /// beside the halves (measuring).
  static bool halvesOnlyEnabled() {
    return !cuda::detail::switchedOff("LLMIR_CUDA_HALVES_ONLY");
  }

  /// The outputs of the LINEAR group starting at `index` over x (shaped).
  Result<std::vector<cuda::LinearOutput>> linearOutputs(size_t index, const DeviceTensor &x) {
    const size_t groupSize = index < linearGroupSize_.size() ? linearGroupSize_[index] : 1;
    std::vector<cuda::LinearOutput> outputs;
    for (size_t j = index; j < index + groupSize; ++j) {
      const BoundInstruction &member = program_.instructions[j];
      const DeviceWeight &w = weights_[member.inputs[1]];
      if (w.shape.size() != 2 || x.rowSize() != w.shape[1])
        return Status::error("input " + model::formatShape(x.shape) +
                             " does not match weight [N, K] = " + model::formatShape(w.shape));
      const float *bias =
          member.inputs.size() == 3 ? weights_[member.inputs[2]].widened.data : nullptr;
      DeviceTensor &y =
          member.outputAliasesInput[0] ? aliased_ : activations_[member.outputs[0]];
      LLMIR_RETURN_IF_ERROR(y.reshape({x.rows(), w.shape[0]}));
      outputs.push_back({w.view(), bias, y.data()});
    }
    return outputs;
  }

  static size_t weightBytes(const DeviceWeight &w) {
    return static_cast<size_t>(w.shape[0] * w.shape[1]) * 2; // 2-D, 16-bit
  }

  /// Each linear group's bf16 weights moved side by side into one
  /// allocation, in the group's order, so that a step with more tokens than
  /// the GEMV takes multiplies the group as one matrix (cuda::linearGroup).
  /// A group whose weights could not be packed (a weight used twice, no
  /// memory for the copy) keeps them where they are and runs as before;
  /// LLMIR_CUDA_PACK_GROUPS=0 packs none (for measuring).
  void packLinearGroups() {
    if (cuda::detail::switchedOff("LLMIR_CUDA_PACK_GROUPS"))
      return;
    const auto &insts = program_.instructions;
    for (size_t i = 0; i < linearGroupSize_.size(); ++i) {
      const size_t size = linearGroupSize_[i];
      if (size < 2)
        continue;
      std::vector<uint32_t> slots;
      size_t bytes = 0;
      for (size_t j = i; j < i + size; ++j) {
        const uint32_t slot = insts[j].inputs[1];
        if (weights_[slot].dtype != proto::BF16 ||
            std::find(slots.begin(), slots.end(), slot) != slots.end())
          break;
        slots.push_back(slot);
        bytes += weightBytes(weights_[slot]);
      }
      if (slots.size() != size)
        continue;
      DeviceArray<std::byte> pack;
      if (!pack.reserve(bytes).isOk()) {
        cudaGetLastError(); // not sticky: the group runs unpacked
        continue;
      }
      size_t at = 0;
      bool copied = true;
      for (uint32_t slot : slots) {
        DeviceWeight &w = weights_[slot];
        copied = copied && cudaMemcpy(pack.data + at, w.bytes, weightBytes(w),
                                      cudaMemcpyDeviceToDevice) == cudaSuccess;
        at += weightBytes(w);
      }
      if (!copied) {
        pack.release();
        continue;
      }
      at = 0;
      for (uint32_t slot : slots) {
        DeviceWeight &w = weights_[slot];
        w.bytes = pack.data + at;
        at += weightBytes(w);
        w.stored.release();
      }
      linearPacks_.push_back(pack);
    }
  }

  /// An ALL_REDUCE whose output only the fused ADD+RMS_NORM right after it
  /// reads (a tensor-parallel residual branch) may run with them as one
  /// collective (Communicator::allReduceAddRmsNormOn): the ALL_REDUCE is
  /// then deferred to the ADD (deferredAllReduce_), which decides by the
  /// step's size, and its output is never written; whole-program runs only.
  void planAllReduceNorms() {
    const auto &insts = program_.instructions;
    allReduceBeforeAddNorm_.assign(insts.size(), false);
    if (!fusionsEnabled())
      return;
    for (size_t i = 0; i + 1 < insts.size(); ++i) {
      const BoundInstruction &ar = insts[i], &add = insts[i + 1];
      if (ar.op != proto::ALL_REDUCE || add.op != proto::ADD || !addNormFused_[i + 1] ||
          ar.outputAliasesInput[0] || add.inputs.size() != 2 || ar.inputs.empty())
        continue;
      const uint32_t partial = ar.inputs[0], reduced = ar.outputs[0];
      const int uses = (add.inputs[0] == reduced) + (add.inputs[1] == reduced);
      const uint32_t residual = add.inputs[0] == reduced ? add.inputs[1] : add.inputs[0];
      if (uses != 1 || residual == partial || readBeforeWritten(program_, i + 1, reduced))
        continue;
      allReduceBeforeAddNorm_[i] = true;
    }
  }

  /// The ALL_REDUCE at `arIndex`, deferred to the ADD after it (whose output
  /// is `sum`) and the RMS_NORM fused with that ADD: one collective doing
  /// all three where the communicator takes the step's size (true), else
  /// the all-reduce alone into its own output (false), the ADD+RMS_NORM
  /// then running as without the deferral.
  Result<bool> runDeferredAllReduce(size_t arIndex, DeviceTensor &sum, const DeviceWeight &w,
                                    float eps, DeviceTensor &normed) {
    const BoundInstruction &ar = program_.instructions[arIndex];
    const BoundInstruction &add = program_.instructions[arIndex + 1];
    const DeviceTensor &partial = activations_[ar.inputs[0]];
    const uint32_t residual = add.inputs[add.inputs[0] == ar.outputs[0] ? 1 : 0];
    AllReduceAddRmsNorm op;
    op.partial = partial.data();
    op.residual = activations_[residual].data();
    op.sum = sum.data();
    op.weight = w.widened.data;
    op.normed = normed.data();
    op.rows = partial.rows();
    op.width = partial.rowSize();
    op.eps = eps;
    op.dependentLaunch = cuda::detail::dependentLaunchEnabled();
    if (partial.numel() > 0 && comm_->fusesAllReduceAddRmsNorm(op, ar.params.group)) {
      LLMIR_RETURN_IF_ERROR(comm_->allReduceAddRmsNormOn(stream(), op, ar.params.group));
      return true;
    }
    DeviceTensor &reduced = activations_[ar.outputs[0]];
    LLMIR_RETURN_IF_ERROR(copy(reduced.data(), partial.data(), partial.numel()));
    if (partial.numel() > 0)
      LLMIR_RETURN_IF_ERROR(allReduce(reduced.data(), reduced.numel(), ar.params.group));
    return false;
  }

  /// A LINEAR pair (gate, up) whose outputs no instruction after the SWIGLU
  /// right after it reads runs as one linearSwiglu writing the SWIGLU's output
  /// (linearSwiglu_ at the pair's first instruction, swigluComputedEarlier_
  /// at the SWIGLU): gate and up are then never written, which is why this
  /// applies only to whole-program runs (wholeProgram_).
  void planSwigluFusions() {
    const auto &insts = program_.instructions;
    linearSwiglu_.assign(insts.size(), false);
    swigluComputedEarlier_.assign(insts.size(), false);
    if (!fusionsEnabled())
      return;
    for (size_t i = 0; i + 2 < insts.size(); ++i) {
      if (linearGroupSize_[i] != 2)
        continue;
      const BoundInstruction &gate = insts[i], &up = insts[i + 1], &act = insts[i + 2];
      const uint32_t g = gate.outputs[0], u = up.outputs[0];
      if (act.op != proto::SWIGLU || act.inputs.size() != 2 || act.inputs[0] != g ||
          act.inputs[1] != u || g == u || act.outputAliasesInput[0] ||
          readBeforeWritten(program_, i + 2, g) || readBeforeWritten(program_, i + 2, u))
        continue;
      linearSwiglu_[i] = true;
      swigluComputedEarlier_[i + 2] = true;
    }
  }

  /// Two ROPEs (queries, keys) right before the plain ATTENTION that reads
  /// them run as one ropeAndStore, which also stores the keys and values
  /// the attention would store first (ropeStore_ at the first ROPE;
  /// keysStored_ at the ATTENTION). Every output is still written, except
  /// rotated queries that no instruction after the ATTENTION reads
  /// (rotatedQueriesUnread_ at the first ROPE; ropeFoldedIntoPrefill).
  void planRopeStores() {
    const auto &insts = program_.instructions;
    ropeStore_.assign(insts.size(), false);
    keysStored_.assign(insts.size(), false);
    rotatedQueriesUnread_.assign(insts.size(), false);
    if (!fusionsEnabled())
      return;
    for (size_t i = 0; i + 2 < insts.size(); ++i) {
      const BoundInstruction &a = insts[i], &b = insts[i + 1], &att = insts[i + 2];
      if (a.op != proto::ROPE || b.op != proto::ROPE || att.op != proto::ATTENTION ||
          computedEarlier_[i] || computedEarlier_[i + 1] || computedEarlier_[i + 2] ||
          a.outputAliasesInput[0] || b.outputAliasesInput[0] || att.inputs.size() < 3 ||
          a.params.spSize > 1 || b.params.spSize > 1 ||
          a.params.headDim != att.params.attention.headDim ||
          b.params.headDim != att.params.attention.headDim)
        continue;
      const uint32_t q = att.inputs[0], k = att.inputs[1];
      const bool ordered = a.outputs[0] == q && b.outputs[0] == k;
      const bool swapped = a.outputs[0] == k && b.outputs[0] == q;
      if (!ordered && !swapped)
        continue;
      ropeStore_[i] = true;
      computedEarlier_[i + 1] = true;
      keysStored_[i + 2] = true;
      rotatedQueriesUnread_[i] = !readBeforeWritten(program_, i + 2, q);
    }
  }

  /// LLMIR_CUDA_SKIP_OPS=ATTENTION,ROPE,...: those instructions (with what
  /// is fused into them) are left out of the decode steps' CUDA graphs
  /// (the eager steps before a graph is recorded still run them and give
  /// the outputs their shapes). For measuring only: a step's time with and
  /// without a kind of op, inside its graph, is that op's share of the step
  /// where no timeline profiler runs; the outputs are garbage.
  static bool skippedForMeasuring(proto::Opcode op) {
    static const std::set<std::string> skipped = [] {
      const char *text = std::getenv("LLMIR_CUDA_SKIP_OPS");
      const std::vector<std::string> names = splitNonEmpty(text ? text : "");
      return std::set<std::string>(names.begin(), names.end());
    }();
    return !skipped.empty() && skipped.count(proto::Opcode_Name(op)) > 0;
  }

  /// kMaxDecodeSplits, or fewer with LLMIR_CUDA_DECODE_SPLITS=N (measuring).
  static int64_t maxDecodeSplits() {
    static const int64_t most = std::min<int64_t>(
        cuda::detail::countFromEnv("LLMIR_CUDA_DECODE_SPLITS", kMaxDecodeSplits), kMaxDecodeSplits);
    return most;
  }

  static bool fusionsEnabled() {
    // LLMIR_CUDA_FUSIONS=0: each instruction its own kernels (for measuring).
    return !cuda::detail::switchedOff("LLMIR_CUDA_FUSIONS");
  }

  /// The binding's inverse frequencies of a ROPE (scaled for llama3 /
  /// linear RoPE; the same f32 values the CPU rotates with), uploaded on
  /// first use.
  Result<const float *> ropeFrequencies(const BoundInstruction &inst) {
    DeviceArray<float> &frequencies = ropeFrequencies_[&inst];
    const std::vector<float> &host = inst.params.ropeInverseFrequencies;
    if (!frequencies.data) {
      LLMIR_RETURN_IF_ERROR(frequencies.reserve(host.size()));
      LLMIR_RETURN_IF_ERROR(
          toDevice(frequencies.data, host.data(), static_cast<int64_t>(host.size())));
    }
    return static_cast<const float *>(frequencies.data);
  }

  /// The ROPE pair at `index` (ropeStore_) and the ATTENTION after it: the
  /// operands of their fused launches, the ROPEs' outputs shaped.
  struct RopeStoreOperands {
    const float *q, *qFrequencies, *k, *kFrequencies, *v;
    float *qOut, *kOut;
  };
  Result<RopeStoreOperands> ropeStoreOperands(size_t index) {
    const auto &insts = program_.instructions;
    const BoundInstruction &att = insts[index + 2];
    const bool queryFirst = insts[index].outputs[0] == att.inputs[0];
    const BoundInstruction &qi = insts[queryFirst ? index : index + 1];
    const BoundInstruction &ki = insts[queryFirst ? index + 1 : index];
    const cpu::AttentionParams &a = att.params.attention;
    const DeviceTensor &q = activations_[qi.inputs[0]], &k = activations_[ki.inputs[0]];
    const DeviceTensor &v = activations_[att.inputs[2]];
    LLMIR_RETURN_IF_ERROR(expectMatrix(q, T(), a.numHeads * a.headDim, "query"));
    LLMIR_RETURN_IF_ERROR(expectMatrix(k, T(), a.numKvHeads * a.headDim, "key"));
    LLMIR_RETURN_IF_ERROR(expectMatrix(v, T(), a.numKvHeads * a.headDim, "value"));
    Result<const float *> qFrequencies = ropeFrequencies(qi);
    LLMIR_RETURN_IF_ERROR(qFrequencies.status());
    Result<const float *> kFrequencies = ropeFrequencies(ki);
    LLMIR_RETURN_IF_ERROR(kFrequencies.status());
    DeviceTensor &qy = activations_[qi.outputs[0]], &ky = activations_[ki.outputs[0]];
    LLMIR_RETURN_IF_ERROR(qy.reshape(q.shape));
    LLMIR_RETURN_IF_ERROR(ky.reshape(k.shape));
    return RopeStoreOperands{q.data(), *qFrequencies, k.data(), *kFrequencies, v.data(),
                             qy.data(), ky.data()};
  }

  /// ropeStore_ at `index` in a decode step the group decode kernel takes:
  /// the ATTENTION two instructions on runs the ROPEs and the store itself
  /// (ropeStoreAttention), one launch a layer fewer. On an H200, 1.1B batch
  /// 32: ropeStoreKernel was 5.4 us a layer.
  bool ropeFoldedIntoAttention(size_t index) {
    return (T() == 1 || decodeStep_) && cuda::ropeStoreAttentionApplies(
                           deviceStep_, program_.instructions[index + 2].params.attention, cache_);
  }

  /// ropeStore_ at `index` in a step whose attention runs on the
  /// tensor-core prefill kernel, where no instruction after the ATTENTION
  /// reads the rotated queries (whole-program runs: an observer reads every
  /// output): the ROPE launch rotates and stores the keys and writes the
  /// queries' rotations, the attention's blocks rotate their query rows
  /// (prefillRopeAttention), and the rotated queries are never written.
  bool ropeFoldedIntoPrefill(size_t index) {
    return wholeProgram_ && rotatedQueriesUnread_[index] &&
           cuda::prefillRopeAttentionApplies(
               deviceStep_, program_.instructions[index + 2].params.attention, cache_);
  }

  /// ropeStore_ at `rope` in a step whose ATTENTION after it runs on cuDNN's
  /// fused flash attention (cuda::cudnnAttention; on an H200 its causal
  /// attention of 2,048 rows took 61 us against the prefill kernel's 89):
  /// the prefill kernel's case (ropeFoldedIntoPrefill) at medium precision
  /// for one prompt from position 0 (freshPrompt_), its output read only as
  /// the O product's bf16 halves, with no sliding window, uneven head split
  /// or sequence-parallel keys; not the last layer's kept rows
  /// (keptRowsAttention). Elsewhere, or without cuDNN, the prefill kernel.
  bool attentionOnCudnn(size_t rope) {
    const size_t att = rope + 2;
    if (!freshPrompt_ || !bf16Products_ || !ropeFoldedIntoPrefill(rope) ||
        att >= splitBy_.size() || splitBy_[att] == kNone || !halvesOnly_[att] ||
        (att == pruneAttention_ && keptRowsAttentionApplies()))
      return false;
    const cpu::AttentionParams &a = program_.instructions[att].params.attention;
    if (a.slidingWindow != 0 || a.kvGroup != 0 || a.kvShards != 1)
      return false;
    return cuda::cudnnAttentionTakes(context_, denseShape(a));
  }
  /// The step's attention as cuda::DenseAttention over denseRows_, output
  /// `out` (its pointers null without).
  cuda::DenseAttention denseShape(const cpu::AttentionParams &a, void *out = nullptr) {
    cuda::DenseAttention d;
    d.tokens = T();
    d.heads = a.numHeads;
    d.kvHeads = a.numKvHeads;
    d.headDim = a.headDim;
    d.scale = a.scale;
    d.rowStride = (a.numHeads + 2 * a.numKvHeads) * a.headDim;
    if (out) {
      const auto *rows = reinterpret_cast<const uint16_t *>(denseRows_.data); // bf16
      d.q = rows;
      d.k = rows + a.numHeads * a.headDim;
      d.v = rows + (a.numHeads + a.numKvHeads) * a.headDim;
      d.out = out;
    }
    return d;
  }

  /// ropeStore_: the ROPE at `index`, the one after it and the ATTENTION's
  /// store in one launch (or in the ATTENTION's, ropeFoldedIntoAttention;
  /// the keys only, ropeFoldedIntoPrefill).
  Status ropeAndStore(size_t index) {
    Result<RopeStoreOperands> o = ropeStoreOperands(index);
    LLMIR_RETURN_IF_ERROR(o.status());
    if (T() == 0 || ropeFoldedIntoAttention(index))
      return Status::ok();
    const cpu::AttentionParams &a = program_.instructions[index + 2].params.attention;
    if (ropeFoldedIntoPrefill(index)) {
      LLMIR_RETURN_IF_ERROR(queryRotations_.reserve(static_cast<size_t>(T() * a.headDim)));
      if (attentionOnCudnn(index)) {
        // Rows for the plan's padded count, finite past the step's (zeroed
        // when allocated; later steps leave their own rows there).
        const cuda::DenseAttention shape = denseShape(a);
        const size_t capacity = denseRows_.capacity;
        LLMIR_RETURN_IF_ERROR(denseRows_.reserve(static_cast<size_t>(
            (cuda::cudnnAttentionRows(T()) * shape.rowStride + 1) / 2)));
        if (denseRows_.capacity != capacity)
          LLMIR_RETURN_IF_ERROR(check(cudaMemsetAsync(denseRows_.data, 0,
                                                      denseRows_.capacity * sizeof(float),
                                                      stream()),
                                      "clearing the dense attention rows"));
        denseAttentionAt_ = index + 2;
        const bool packed = packedRope_ == index;
        const float *columns = packedProduct_.data;
        return cuda::ropeStoreDense(
            packed ? columns + packedQ_ : o->q, o->qFrequencies, packed ? columns + packedK_ : o->k,
            packed ? nullptr : o->kOut, o->kFrequencies, packed ? columns + packedV_ : o->v,
            deviceStep_, a, cache_, denseRows_.data, queryRotations_.data, stream(),
            packed ? packedStride_ : 0, packed ? packedStride_ : 0);
      }
      if (packedRope_ == index) { // the keys rotated in place in the packed product
        float *k = packedProduct_.data + packedK_;
        return cuda::ropeAndStore(nullptr, nullptr, o->qFrequencies, k, k, o->kFrequencies,
                                  packedProduct_.data + packedV_, deviceStep_, a, cache_,
                                  stream(), queryRotations_.data, packedStride_);
      }
      return cuda::ropeAndStore(nullptr, nullptr, o->qFrequencies, o->k, o->kOut, o->kFrequencies,
                                o->v, deviceStep_, a, cache_, stream(), queryRotations_.data);
    }
    return cuda::ropeAndStore(o->q, o->qOut, o->qFrequencies, o->k, o->kOut, o->kFrequencies,
                              o->v, deviceStep_, a, cache_, stream());
  }

  /// A Q/K/V group (three LINEARs of one x, linearGroupSize_) whose outputs
  /// only the ROPE pair and ATTENTION of a ropeStore_ read, and whose
  /// rotated keys nothing after that ATTENTION reads: in a step where that
  /// attention is folded into the tensor-core prefill
  /// (ropeFoldedIntoPrefill) the group is one GEMM into packedProduct_
  /// (cuda::linearGroupPacked), the keys are rotated in place there and the
  /// store and the attention read the columns; q, k, v and the rotated keys
  /// are not written. LLMIR_CUDA_PACKED_PRODUCTS=0 turns it off (measuring).
  void planPackedProducts() {
    const auto &insts = program_.instructions;
    packedQkv_.assign(insts.size(), PackedQkv{});
    if (cuda::detail::switchedOff("LLMIR_CUDA_PACKED_PRODUCTS"))
      return;
    for (size_t i = 0; i + 2 < insts.size(); ++i) {
      if (linearGroupSize_[i] != 3)
        continue;
      // The group member (0-2) that writes `slot`, 3 for none.
      const auto memberOf = [&](uint32_t slot) {
        size_t j = 0;
        while (j < 3 && insts[i + j].outputs[0] != slot)
          ++j;
        return j;
      };
      const auto inGroup = [&](uint32_t slot) { return memberOf(slot) < 3; };
      // The first instruction after the group that reads one of its outputs
      // must be a ropeStore_ pair's first ROPE.
      size_t r = i + 3;
      while (r < insts.size() &&
             std::none_of(insts[r].inputs.begin(), insts[r].inputs.end(), inGroup))
        ++r;
      if (r + 2 >= insts.size() || !ropeStore_[r])
        continue;
      const BoundInstruction &att = insts[r + 2];
      const bool queryFirst = insts[r].outputs[0] == att.inputs[0];
      const BoundInstruction &qi = insts[queryFirst ? r : r + 1];
      const BoundInstruction &ki = insts[queryFirst ? r + 1 : r];
      const uint32_t q = qi.inputs[0], k = ki.inputs[0], v = att.inputs[2];
      if (!inGroup(q) || !inGroup(k) || !inGroup(v) || q == k || k == v || q == v ||
          readBeforeWritten(program_, r + 2, q) || readBeforeWritten(program_, r + 2, k) ||
          readBeforeWritten(program_, r + 2, v) ||
          readBeforeWritten(program_, r + 2, ki.outputs[0]) ||
          std::find(att.inputs.begin(), att.inputs.end(), q) != att.inputs.end() ||
          std::find(att.inputs.begin(), att.inputs.end(), k) != att.inputs.end())
        continue;
      packedQkv_[i] = PackedQkv{r, memberOf(q), memberOf(k), memberOf(v)};
    }
  }

  /// packedQkv_ at `index` in this step: the group's product into
  /// packedProduct_, the pair's operands its columns.
  Result<bool> producePacked(size_t index, const float *x, bool xSplit,
                             const std::vector<cuda::LinearOutput> &outputs) {
    if (index >= packedQkv_.size() || packedQkv_[index].rope == kNone)
      return false;
    const PackedQkv &plan = packedQkv_[index];
    if (!ropeFoldedIntoPrefill(plan.rope) || !cuda::takesPackedGroup(T(), outputs))
      return false;
    int64_t width = 0, column[3] = {};
    for (size_t j = 0; j < outputs.size(); ++j) {
      column[j] = width;
      width += outputs[j].w.rows;
    }
    // Without memory for it (the KV cache took its share first) the group
    // runs apart, as before.
    if (!packedProduct_.reserve(static_cast<size_t>(T() * width)).isOk()) {
      cudaGetLastError(); // not sticky
      return false;
    }
    LLMIR_RETURN_IF_ERROR(
        cuda::linearGroupPacked(context_, x, T(), outputs, xSplit, packedProduct_.data));
    packedRope_ = plan.rope;
    packedStride_ = width;
    packedQ_ = column[plan.q];
    packedK_ = column[plan.k];
    packedV_ = column[plan.v];
    return true;
  }

  // --- CUDA graphs -----------------------------------------------------------
  struct GraphKey {
    int64_t tokens;
    int64_t tableStride;
    int64_t selectedRows;
    bool operator<(const GraphKey &o) const {
      return std::tie(tokens, tableStride, selectedRows) <
             std::tie(o.tokens, o.tableStride, o.selectedRows);
    }
  };
  /// Where each activation slot (and the spare aliased_) lived, and with
  /// what shape, when a graph was recorded; plus the other buffers whose
  /// addresses the graph holds.
  /// Buffers outside the activation slots whose addresses a graph holds.
  // The buffers a graph's launches hold: the step's upload by its parts'
  // addresses (a part's offset moves with the capacities before it, and a
  // grown upload may come back at its old address), the cache, the scratch.
  using FixedBuffers = std::array<const void *, 10>;
  struct Layout {
    std::vector<std::tuple<float *, size_t, std::vector<int64_t>>> slots;
    FixedBuffers fixed{};
  };
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    Layout layout;
  };

  FixedBuffers fixedBuffers() const {
    return {stepTables_.data,       positions_,          selectedRows_,
            deviceStep_.blockTables, keys_.data,          values_.data,
            context_.scratchAddress(), attentionScratch_.data, splitCounters_.data,
            greedyIds_.data};
  }

  /// Whether every slot (and the spare aliased_) is where, with the shape,
  /// `recorded` has it, and the fixed buffers are the recorded ones.
  bool inRecordedLayout(const Layout &recorded) const {
    if (recorded.slots.size() != activations_.size() + 1)
      return false;
    auto same = [](const DeviceTensor &t, const auto &slot) {
      return t.storage.data == std::get<0>(slot) && t.storage.capacity == std::get<1>(slot) &&
             t.shape == std::get<2>(slot);
    };
    for (size_t i = 0; i < activations_.size(); ++i)
      if (!same(activations_[i], recorded.slots[i]))
        return false;
    return same(aliased_, recorded.slots.back()) && fixedBuffers() == recorded.fixed;
  }

  Layout layout() const {
    Layout l;
    for (const DeviceTensor &t : activations_)
      l.slots.emplace_back(t.storage.data, t.storage.capacity, t.shape);
    l.slots.emplace_back(aliased_.storage.data, aliased_.storage.capacity, aliased_.shape);
    l.fixed = fixedBuffers();
    return l;
  }

  /// Puts every activation slot back where `graph` recorded it, when the
  /// same buffers still exist (they only move between slots, by aliasing
  /// outputs of eager steps); false when one was replaced.
  bool restoreLayout(const Graph &graph) {
    // Replay after replay nothing has moved since the recording: checked
    // in place, slot by slot. Building the layout and sorting its buffers
    // (below) cost the host ~50 us a step before the launch, with the GPU
    // idle (a 1.1B decode step's graph has ~300 activation slots).
    if (inRecordedLayout(graph.layout))
      return true;
    const Layout now = layout();
    if (now.fixed != graph.layout.fixed)
      return false;
    auto buffers = [](const Layout &l) {
      std::vector<std::pair<float *, size_t>> b;
      for (const auto &[data, capacity, shape] : l.slots)
        b.emplace_back(data, capacity);
      std::sort(b.begin(), b.end());
      return b;
    };
    if (buffers(now) != buffers(graph.layout))
      return false;
    auto place = [](DeviceTensor &t, const auto &recorded) {
      t.storage.data = std::get<0>(recorded);
      t.storage.capacity = std::get<1>(recorded);
      t.shape = std::get<2>(recorded);
    };
    for (size_t i = 0; i < activations_.size(); ++i)
      place(activations_[i], graph.layout.slots[i]);
    place(aliased_, graph.layout.slots.back());
    return true;
  }

  void dropGraphs() {
    for (auto &[key, graph] : graphs_)
      cudaGraphExecDestroy(graph.exec);
    graphs_.clear();
    seenKeys_.clear();
  }

  const DeviceTensor &act(size_t i) const { return activations_[inst_->inputs[i]]; }
  const DeviceWeight &weight(size_t i) const { return weights_[inst_->inputs[i]]; }
  DeviceTensor &out(size_t o) {
    return inst_->outputAliasesInput[o] ? aliased_ : activations_[inst_->outputs[o]];
  }
  int64_t T() const { return step_->numTokens(); }
  RowRange rows() const {
    return sequenceParallelRows(T(), inst_->params.spSize, inst_->params.spIndex);
  }

  static Status expectMatrix(const DeviceTensor &x, int64_t rows, int64_t width,
                             const char *what) {
    if (x.shape.size() == 2 && x.shape[0] == rows && x.shape[1] == width)
      return Status::ok();
    return Status::error(std::string(what) + " has shape " + model::formatShape(x.shape) +
                         "; expected " + model::formatShape({rows, width}));
  }

  Status copy(float *dst, const float *src, int64_t count) {
    if (count == 0)
      return Status::ok();
    return check(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream()),
                 "copy");
  }

  // --- collectives: device pointers for NCCL, host staging for Gloo --------
  // Stream-ordered (NCCL) collectives are enqueued behind the kernels that
  // produce their inputs; the host waits only where it reads results
  // (waitStream), and a step with them can be recorded as a graph.
  bool deviceCollectives() const { return comm_->takesDeviceMemory(); }
  bool streamCollectives() const { return comm_ && comm_->ordersOnStream(); }

  /// Waits for this stream; bounded by the communicator's timeout when
  /// collectives are on it (a dead peer would hang it).
  Status waitStream(const std::string &what) {
    if (collectives_ && streamCollectives())
      return comm_->synchronize(stream()).withContext(what);
    return check(cudaStreamSynchronize(stream()), what);
  }

  /// waitStream up to an event recorded on the stream.
  Status waitEvent(cudaEvent_t event, const char *what) {
    if (collectives_ && streamCollectives())
      return comm_->synchronizeEvent(event).withContext(what);
    return check(cudaEventSynchronize(event), what);
  }

  Status allReduce(float *data, int64_t count, uint32_t group) {
    if (streamCollectives())
      return comm_->allReduceSumOn(stream(), data, static_cast<size_t>(count), group);
    if (deviceCollectives()) {
      // NCCL runs on its own stream: the inputs must be complete.
      LLMIR_RETURN_IF_ERROR(check(cudaDeviceSynchronize(), "synchronize"));
      return comm_->allReduceSum(data, static_cast<size_t>(count), group);
    }
    host_.resize(static_cast<size_t>(count));
    LLMIR_RETURN_IF_ERROR(toHost(host_.data(), data, count));
    LLMIR_RETURN_IF_ERROR(comm_->allReduceSum(host_.data(), host_.size(), group));
    return toDevice(data, host_.data(), count);
  }

  Status allGather(const float *in, int64_t count, float *outData, int64_t groupSize,
                   uint32_t group) {
    if (streamCollectives())
      return comm_->allGatherOn(stream(), in, static_cast<size_t>(count), outData, group);
    if (deviceCollectives()) {
      LLMIR_RETURN_IF_ERROR(check(cudaDeviceSynchronize(), "synchronize"));
      return comm_->allGather(in, static_cast<size_t>(count), outData, group);
    }
    host_.resize(static_cast<size_t>(count));
    hostGathered_.resize(static_cast<size_t>(count * groupSize));
    LLMIR_RETURN_IF_ERROR(toHost(host_.data(), in, count));
    LLMIR_RETURN_IF_ERROR(
        comm_->allGather(host_.data(), host_.size(), hostGathered_.data(), group));
    return toDevice(outData, hostGathered_.data(), count * groupSize);
  }

  Status toHost(float *dst, const float *src, int64_t count) {
    if (count == 0)
      return Status::ok();
    return check(cudaMemcpy(dst, src, static_cast<size_t>(count) * sizeof(float),
                            cudaMemcpyDeviceToHost),
                 "copy to host");
  }
  Status toDevice(float *dst, const float *src, int64_t count) {
    if (count == 0)
      return Status::ok();
    return check(cudaMemcpy(dst, src, static_cast<size_t>(count) * sizeof(float),
                            cudaMemcpyHostToDevice),
                 "copy to device");
  }

  Status dispatch(const BoundInstruction &inst) {
    const InstructionParams &p = inst.params;
    switch (inst.op) {
    case proto::EMBEDDING: {
      const DeviceWeight &table = weight(0);
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape({T(), table.shape[1]}));
      return cuda::embedding(ids_, T(), table.view(), p.vocabOffset, y.data(), stream(),
                             {greedyIds_.data, takeGreedyIds_});
    }
    case proto::RMS_NORM: {
      const DeviceTensor &x = act(0);
      const DeviceWeight &w = weight(1);
      // A weight shorter than the row: a per-head norm (Qwen3's q/k norm),
      // each group of its length normalised apart (contiguous rows of it).
      if (w.shape.size() != 1 || w.shape[0] <= 0 || x.rowSize() % w.shape[0] != 0)
        return Status::error("norm weight " + model::formatShape(w.shape) +
                             " for rows of " + std::to_string(x.rowSize()));
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
      // Whole rows normalised for the product after it (planSplitsInProducers):
      // the halves written by the norm, as the fused ADD+RMS_NORM writes them
      // (the split launch's ~8 us at a 2,048-token prefill of the 1.1B shape).
      const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
      if (x.rowSize() == w.shape[0] && index < splitBy_.size() && splitBy_[index] != kNone) {
        Result<ProducedSplit> split = splitInProducer(index, y);
        LLMIR_RETURN_IF_ERROR(split.status());
        if (split->split.hi)
          return cuda::addRmsNorm(x.data(), nullptr, nullptr, x.rows(), x.rowSize(),
                                  w.widened.data, p.eps, split->halvesOnly ? nullptr : y.data(),
                                  stream(), split->split);
      }
      return cuda::rmsNorm(x.data(), x.rows() * (x.rowSize() / w.shape[0]), w.shape[0],
                           w.widened.data, p.eps, y.data(), stream());
    }
    case proto::LINEAR: {
      const DeviceTensor &x = act(0);
      const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
      Result<std::vector<cuda::LinearOutput>> outputs = linearOutputs(index, x);
      LLMIR_RETURN_IF_ERROR(outputs.status());
      // x's bf16 halves written by its producer (planSplitsInProducers),
      // maybe instead of x.
      const bool xSplit = splitLinear_ == index;
      const float *xData = xSplit && splitHalvesOnly_ ? nullptr : x.data();
      splitLinear_ = kNone;
      splitHalvesOnly_ = false;
      // The ranks' rows before this group, from the product before it
      // (planExchanges): summed, added and normalised as they are staged.
      if (index == pendingExchangeAt_) {
        pendingExchangeAt_ = kNone;
        if (index < linearSwiglu_.size() && linearSwiglu_[index]) {
          DeviceTensor &y = activations_[program_.instructions[index + 2].outputs[0]];
          LLMIR_RETURN_IF_ERROR(y.reshape({x.rows(), (*outputs)[0].w.rows}));
          return cuda::linearSwigluExchanged(context_, (*outputs)[0], (*outputs)[1], y.data(),
                                             pendingExchange_);
        }
        return cuda::linearGroupExchanged(context_, *outputs, pendingExchange_);
      }
      // The residual norm before this group, from the product before it
      // (planResidualNorms): x is the sum, normalised as it is staged.
      if (index == pendingNormAt_) {
        pendingNormAt_ = kNone;
        if (wholeProgram_ && index < linearSwiglu_.size() && linearSwiglu_[index]) {
          DeviceTensor &y = activations_[program_.instructions[index + 2].outputs[0]];
          LLMIR_RETURN_IF_ERROR(y.reshape({x.rows(), (*outputs)[0].w.rows}));
          return cuda::linearSwigluWithNorm(context_, pendingNorm_.sum, x.rows(), (*outputs)[0],
                                            (*outputs)[1], y.data(), pendingNorm_);
        }
        return cuda::linearGroupWithNorm(context_, pendingNorm_.sum, x.rows(), *outputs,
                                         nullptr, &pendingNorm_);
      }
      if (Result<bool> packed = producePacked(index, xData, xSplit, *outputs);
          !packed || *packed)
        return packed.status();
      if (Result<bool> produced = produceResidualNorm(index, x, *outputs); !produced || *produced)
        return produced.status();
      if (Result<bool> produced = produceExchange(index, x, *outputs); !produced || *produced)
        return produced.status();
      if (Result<bool> added = addResidualInProduct(index, x, xData, xSplit, *outputs);
          !added || *added)
        return added.status();
      // gate, up and the SWIGLU after them (planSwigluFusions).
      if (wholeProgram_ && index < linearSwiglu_.size() && linearSwiglu_[index]) {
        DeviceTensor &y = activations_[program_.instructions[index + 2].outputs[0]];
        LLMIR_RETURN_IF_ERROR(y.reshape({x.rows(), (*outputs)[0].w.rows}));
        // The down projection's halves written by the SWIGLU (planSplitsInProducers).
        const size_t down = index < splitBy_.size() ? splitBy_[index] : kNone;
        if (down == kNone)
          return cuda::linearSwiglu(context_, xData, x.rows(), (*outputs)[0], (*outputs)[1],
                                    y.data(), xSplit);
        Result<std::vector<cuda::LinearOutput>> downOutputs = linearOutputs(down, y);
        LLMIR_RETURN_IF_ERROR(downOutputs.status());
        cuda::NextProduct next{*downOutputs, halvesOnly_[index]};
        LLMIR_RETURN_IF_ERROR(cuda::linearSwiglu(context_, xData, x.rows(), (*outputs)[0],
                                                 (*outputs)[1], y.data(), xSplit, &next));
        if (next.split) {
          splitLinear_ = down;
          splitHalvesOnly_ = next.halvesOnly;
        }
        return Status::ok();
      }
      return cuda::linearGroup(context_, xData, x.rows(), *outputs, xSplit);
    }
    case proto::ROPE: {
      const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
      if (index < ropeStore_.size() && ropeStore_[index])
        return ropeAndStore(index);
      const DeviceTensor &x = act(0);
      const RowRange r = rows();
      if (x.shape.empty() || x.rows() != r.size() || x.rowSize() % p.headDim != 0)
        return Status::error("ROPE input " + model::formatShape(x.shape) + " for " +
                             std::to_string(r.size()) + " rows of whole heads of " +
                             std::to_string(p.headDim));
      Result<const float *> frequencies = ropeFrequencies(inst);
      LLMIR_RETURN_IF_ERROR(frequencies.status());
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
      if (r.size() == 0)
        return Status::ok();
      return cuda::rope(x.data(), y.data(), r.size(), y.rowSize() / p.headDim, p.headDim,
                        positions_ + r.begin, *frequencies, stream());
    }
    case proto::ATTENTION:
    case proto::ATTENTION_PARTIAL: {
      const cpu::AttentionParams &a = p.attention;
      const int64_t qWidth = a.numHeads * a.headDim, kvWidth = a.numKvHeads * a.headDim;
      LLMIR_RETURN_IF_ERROR(expectMatrix(act(0), T(), qWidth, "query"));
      LLMIR_RETURN_IF_ERROR(expectMatrix(act(1), T(), kvWidth, "key"));
      LLMIR_RETURN_IF_ERROR(expectMatrix(act(2), T(), kvWidth, "value"));
      DeviceTensor &o = out(0);
      if (inst.op == proto::ATTENTION) {
        LLMIR_RETURN_IF_ERROR(o.reshape({T(), qWidth}));
        const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
        const bool keysStored = index < keysStored_.size() && keysStored_[index];
        if (keysStored && ropeFoldedIntoAttention(index - 2)) {
          Result<RopeStoreOperands> r = ropeStoreOperands(index - 2);
          LLMIR_RETURN_IF_ERROR(r.status());
          return cuda::ropeStoreAttention(r->q, r->qOut, r->qFrequencies, r->k, r->kOut,
                                          r->kFrequencies, r->v, deviceStep_, a, cache_,
                                          o.data(), stream(), oneTokenReaderOf(index));
        }
        if (keysStored && ropeFoldedIntoPrefill(index - 2)) {
          Result<RopeStoreOperands> r = ropeStoreOperands(index - 2);
          LLMIR_RETURN_IF_ERROR(r.status());
          const bool onCudnn = denseAttentionAt_ == index; // rows from the ROPE launch
          denseAttentionAt_ = kNone;
          // The O projection's halves from this launch (planSplitsInProducers),
          // with room for the rows cuDNN's plan may write past the step's.
          Result<ProducedSplit> split =
              splitInProducer(index, o, onCudnn ? cuda::cudnnAttentionRows(T()) : 0);
          LLMIR_RETURN_IF_ERROR(split.status());
          const bool packed = packedRope_ == index - 2;
          packedRope_ = kNone;
          if (onCudnn && split->split.hi && !split->split.lo && split->halvesOnly)
            return cuda::cudnnAttention(context_, denseShape(a, split->split.hi));
          return cuda::prefillRopeAttention(
              packed ? packedProduct_.data + packedQ_ : r->q, queryRotations_.data, deviceStep_, a,
              cache_, split->halvesOnly ? nullptr : o.data(), stream(), split->split,
              packed ? packedStride_ : 0);
        }
        return cuda::pagedAttention(act(0).data(), act(1).data(), act(2).data(), deviceStep_, a,
                                    cache_, o.data(), stream(), keysStored);
      }
      LLMIR_RETURN_IF_ERROR(o.reshape({T(), qWidth + a.numHeads}));
      return cuda::partialAttention(act(0).data(), act(1).data(), act(2).data(),
                                    deviceStep_, a, cache_, o.data(), stream());
    }
    case proto::ATTENTION_MERGE: {
      const int64_t heads = p.attention.numHeads, headDim = p.attention.headDim;
      const DeviceTensor &gathered = act(0);
      LLMIR_RETURN_IF_ERROR(expectMatrix(gathered, T(),
                                         p.spSize * (heads * headDim + heads),
                                         "gathered partials"));
      DeviceTensor &o = out(0);
      LLMIR_RETURN_IF_ERROR(o.reshape({T(), heads * headDim}));
      return cuda::mergeAttention(gathered.data(), T(), p.spSize, heads, headDim,
                                  o.data(), stream());
    }
    case proto::SWIGLU:
    case proto::ADD: {
      const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
      if (index == sumInProductAt_) { // the sum written by the product (planResidualsInProducts)
        sumInProductAt_ = kNone;
        DeviceTensor &sum = out(0);
        return addAndNormalise(index, sum.data(), nullptr, sum);
      }
      const DeviceTensor &a = act(0), &b = act(1);
      if (a.shape != b.shape)
        return Status::error("operand shapes differ: " + model::formatShape(a.shape) +
                             " and " + model::formatShape(b.shape));
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(a.shape));
      if (inst.op == proto::ADD && index < addNormFused_.size() && addNormFused_[index]) {
        if (deferredAllReduce_ + 1 == index) { // planAllReduceNorms
          deferredAllReduce_ = kNone;
          const BoundInstruction &norm = program_.instructions[index + 1];
          DeviceTensor &normed = activations_[norm.outputs[0]];
          LLMIR_RETURN_IF_ERROR(normed.reshape(a.shape));
          Result<bool> fused = runDeferredAllReduce(index - 1, y, weights_[norm.inputs[1]],
                                                    norm.params.eps, normed);
          if (!fused || *fused)
            return fused.status();
        }
        return addAndNormalise(index, a.data(), b.data(), y);
      }
      return inst.op == proto::SWIGLU
                 ? cuda::swiglu(a.data(), b.data(), y.data(), a.numel(), stream())
                 : cuda::add(a.data(), b.data(), y.data(), a.numel(), stream());
    }
    case proto::ALL_REDUCE: {
      const DeviceTensor &x = act(0);
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
      const size_t index = static_cast<size_t>(&inst - program_.instructions.data());
      if (wholeProgram_ && streamCollectives() && index < allReduceBeforeAddNorm_.size() &&
          allReduceBeforeAddNorm_[index]) {
        deferredAllReduce_ = index; // run by the ADD after it (planAllReduceNorms)
        return Status::ok();
      }
      LLMIR_RETURN_IF_ERROR(copy(y.data(), x.data(), x.numel()));
      if (x.numel() == 0) // an empty token-split slice: so is every peer's
        return Status::ok();
      return allReduce(y.data(), y.numel(), p.group);
    }
    case proto::ALL_GATHER: {
      const DeviceTensor &x = act(0);
      const int64_t rowsN = x.rows(), width = x.rowSize(), G = p.groupSize;
      LLMIR_RETURN_IF_ERROR(scratch_.reshape({G * rowsN * width}));
      LLMIR_RETURN_IF_ERROR(allGather(x.data(), x.numel(), scratch_.data(), G, p.group));
      // Rank-major [G][T][N_local] -> [T][G * N_local - padding]: the last
      // `padding` columns (vocabulary padding) are dropped.
      const int64_t outWidth = width * G - p.gatherPadding;
      if (p.gatherPadding < 0 || outWidth < 0)
        return Status::error("ALL_GATHER padding " + std::to_string(p.gatherPadding) +
                             " outside the " + std::to_string(width * G) + " columns");
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape({rowsN, outWidth}));
      for (int64_t r = 0; r < G && rowsN > 0 && width > 0; ++r) {
        const int64_t columns = std::clamp<int64_t>(outWidth - r * width, 0, width);
        if (columns == 0)
          continue;
        LLMIR_RETURN_IF_ERROR(check(
            cudaMemcpy2DAsync(y.data() + r * width, static_cast<size_t>(outWidth) * sizeof(float),
                              scratch_.data() + r * rowsN * width,
                              static_cast<size_t>(width) * sizeof(float),
                              static_cast<size_t>(columns) * sizeof(float),
                              static_cast<size_t>(rowsN), cudaMemcpyDeviceToDevice, stream()),
            "all-gather layout"));
      }
      return Status::ok();
    }
    case proto::SEND: {
      const DeviceTensor &x = act(0);
      if (streamCollectives())
        return comm_->sendOn(stream(), x.data(), static_cast<size_t>(x.numel()), p.peer);
      if (deviceCollectives()) {
        LLMIR_RETURN_IF_ERROR(check(cudaDeviceSynchronize(), "synchronize"));
        return comm_->send(x.data(), static_cast<size_t>(x.numel()), p.peer);
      }
      host_.resize(static_cast<size_t>(x.numel()));
      LLMIR_RETURN_IF_ERROR(toHost(host_.data(), x.data(), x.numel()));
      return comm_->send(host_.data(), host_.size(), p.peer);
    }
    case proto::RECV: {
      std::vector<int64_t> shape = program_.slots[inst.outputs[0]].shape;
      if (!shape.empty() && shape[0] == -1)
        shape[0] = rows().size();
      if (shape.empty() ||
          std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d <= 0; }))
        return Status::error("RECV output slot shape " + model::formatShape(shape) +
                             " does not say how much to receive");
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(std::move(shape)));
      if (streamCollectives())
        return comm_->recvOn(stream(), y.data(), static_cast<size_t>(y.numel()), p.peer);
      if (deviceCollectives()) {
        LLMIR_RETURN_IF_ERROR(check(cudaDeviceSynchronize(), "synchronize"));
        return comm_->recv(y.data(), static_cast<size_t>(y.numel()), p.peer);
      }
      host_.resize(static_cast<size_t>(y.numel()));
      LLMIR_RETURN_IF_ERROR(comm_->recv(host_.data(), host_.size(), p.peer));
      return toDevice(y.data(), host_.data(), y.numel());
    }
    case proto::SELECT_ROWS: {
      const DeviceTensor &x = act(0);
      if (x.shape.empty() || x.rows() != T())
        return Status::error("SELECT_ROWS input " + model::formatShape(x.shape) +
                             " needs one row per token of the step");
      // One gather launch over the rows in the step's upload: a copy a row
      // was a graph's memcpy node a row, ~1.4 us each at batch 128 (174 us
      // of a 2.18 ms 1.1B step on an H200), and a memcpy ends the
      // dependent launches' chain into the LM head (docs/performance.md,
      // thirty-seventh session).
      std::vector<int64_t> shape = x.shape;
      shape[0] = static_cast<int64_t>(selected_.size());
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(std::move(shape)));
      return cuda::selectRows(x.data(), x.rows(), x.rowSize(), selectedRows_,
                              static_cast<int64_t>(selected_.size()),
                              y.data(), stream());
    }
    case proto::SP_SCATTER_ROWS: {
      const DeviceTensor &x = act(0);
      if (x.shape.size() != 2 || x.shape[0] != T())
        return Status::error("SP_SCATTER_ROWS input needs one row per token of the step");
      const RowRange r = rows();
      const int64_t width = x.rowSize();
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape({r.size(), width}));
      return copy(y.data(), x.data() + r.begin * width, r.size() * width);
    }
    case proto::ALL_GATHER_ROWS: {
      const RowRange mine = rows();
      int64_t width = 0;
      for (size_t i = 0; i < inst.inputs.size(); ++i) {
        const DeviceTensor &x = act(i);
        if (x.shape.size() != 2 || x.shape[0] != mine.size())
          return Status::error("ALL_GATHER_ROWS input needs this rank's " +
                               std::to_string(mine.size()) + " rows of the step");
        width += x.shape[1];
      }
      // Every slice padded to the longest one: the collective moves equal counts.
      const int64_t longest = sequenceParallelRows(T(), p.spSize, 0).size();
      LLMIR_RETURN_IF_ERROR(packed_.reshape({longest, width}));
      LLMIR_RETURN_IF_ERROR(check(
          cudaMemsetAsync(packed_.data(), 0, static_cast<size_t>(longest * width) * sizeof(float),
                          stream()),
          "clear"));
      int64_t column = 0;
      for (size_t i = 0; i < inst.inputs.size(); ++i) {
        const DeviceTensor &x = act(i);
        const int64_t w = x.shape[1];
        if (mine.size() > 0 && w > 0)
          LLMIR_RETURN_IF_ERROR(check(
              cudaMemcpy2DAsync(packed_.data() + column, static_cast<size_t>(width) * sizeof(float),
                                x.data(), static_cast<size_t>(w) * sizeof(float),
                                static_cast<size_t>(w) * sizeof(float),
                                static_cast<size_t>(mine.size()), cudaMemcpyDeviceToDevice, stream()),
              "pack rows"));
        column += w;
      }
      LLMIR_RETURN_IF_ERROR(scratch_.reshape({p.spSize * longest * width}));
      LLMIR_RETURN_IF_ERROR(allGather(packed_.data(), longest * width, scratch_.data(),
                                      p.spSize, p.group));
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape({T(), width}));
      for (int64_t r = 0; r < p.spSize; ++r) {
        const RowRange theirs = sequenceParallelRows(T(), p.spSize, r);
        LLMIR_RETURN_IF_ERROR(copy(y.data() + theirs.begin * width,
                                   scratch_.data() + r * longest * width,
                                   theirs.size() * width));
      }
      return Status::ok();
    }
    case proto::SP_ATTENTION: {
      const cpu::AttentionParams &a = p.attention;
      const RowRange r = rows();
      const int64_t qWidth = a.numHeads * a.headDim;
      LLMIR_RETURN_IF_ERROR(expectMatrix(act(0), r.size(), qWidth, "query slice"));
      LLMIR_RETURN_IF_ERROR(expectMatrix(act(1), T(), 2 * a.numKvHeads * a.headDim,
                                         "gathered key/value rows"));
      DeviceTensor &o = out(0);
      LLMIR_RETURN_IF_ERROR(o.reshape({r.size(), qWidth}));
      return cuda::sliceAttention(act(0).data(), act(1).data(), deviceStep_, r.begin,
                                  r.size(), a, cache_, o.data(), stream());
    }
    default:
      return Status::error("no CUDA kernel for opcode " + std::to_string(inst.op));
    }
  }

  const BoundProgram &program_;
  int device_;
  double memoryFraction_;
  size_t kvLayerChunkBytes() const {
    const KvCacheShape &shape = cache_.shape;
    return static_cast<size_t>(shape.blockSize * shape.numKvHeads * shape.headDim) *
           kvElementBytes();
  }
  size_t kvChunkOffset(int64_t layer, int32_t block) const {
    return static_cast<size_t>(layer * cache_.shape.numBlocks + block) * kvLayerChunkBytes();
  }

  bool bf16KvCache_;
  bool bf16Products_; // medium matmul precision
  cuda::Context context_;
  Communicator *comm_;
  bool collectives_ = false; // the program has collectives or transfers
  bool transfers_ = false;   // ... transfers between pipeline stages
  /// The host may enqueue a step while the one before it runs (two
  /// stagings of the step's tables in turn, the greedy ids kept on the
  /// device for the next step: Executor::launchStep). One rank, or ranks
  /// with stream-ordered collectives and no stages (TP: every rank holds the
  /// logits), whose waits on events still check the group. Pipeline stages
  /// wait for each step in beginStep, where a stage without output learns of
  /// a failed peer.
  bool stepsAhead_ = false;
  std::unique_ptr<cuda::KernelClock> kernelClock_; // LLMIR_CUDA_KERNEL_CLOCK
  std::vector<DeviceWeight> weights_;     // by slot id
  std::vector<DeviceTensor> activations_; // by slot id
  DeviceTensor aliased_, scratch_, packed_;
  DeviceArray<std::byte> keys_, values_;
  cuda::DeviceKvCache cache_;
  // The step's tables on the device.
  const StepInput *step_ = nullptr;
  /// [ids | positions | sequences | block tables] at these capacities.
  DeviceArray<int32_t> stepTables_;
  /// Two host stagings of the step's tables, in turn: one rank's step may
  /// be written while the step before it still runs (Executor::launchStep),
  /// once the upload from the same staging two steps ago is done.
  PinnedArray<int32_t> hostStep_[2];
  cudaEvent_t stagingUploaded_[2] = {nullptr, nullptr};
  int stagingTurn_ = 0;
  size_t tokenCapacity_ = 0, tableCapacity_ = 0, selectedCapacity_ = 0;
  const int32_t *ids_ = nullptr, *positions_ = nullptr, *tokenSeq_ = nullptr;
  const int32_t *takeGreedyIds_ = nullptr; // the upload's flag: greedyIds_ as the tokens
  /// The rows SELECT_ROWS keeps (selectedRows), on the host and uploaded.
  std::vector<int32_t> selected_;
  const int32_t *selectedRows_ = nullptr;
  DeviceArray<int32_t> greedyIds_;
  /// Flash-decoding partials (beginStep); the program's widest partial row
  /// and most query heads over its ATTENTIONs.
  DeviceArray<float> attentionScratch_;
  DeviceArray<unsigned> splitCounters_; // attend's merge counters (DeviceStep::splitCounters)
  /// ropeFoldedIntoPrefill: the step's query rotations [T][D / 2][cos, sin],
  /// written by the keys' ROPE launch, read by the prefill attention.
  DeviceArray<float> queryRotations_;
  /// planPackedProducts: at a Q/K/V group's first LINEAR, the ROPE pair
  /// (ropeStore_) that consumes it and which members write q, k and v; in a
  /// step, the pair whose operands are this step's packed product
  /// (packedRope_), and their columns.
  struct PackedQkv {
    size_t rope = kNone;        // the ROPE pair's first; kNone: not packed
    size_t q = 0, k = 0, v = 0; // the group members writing q, k and v
  };
  std::vector<PackedQkv> packedQkv_;
  DeviceArray<float> packedProduct_;
  size_t packedRope_ = kNone;
  int64_t packedStride_ = 0, packedQ_ = 0, packedK_ = 0, packedV_ = 0;
  /// A prompt's attention on cuDNN (attentionOnCudnn): this step is one
  /// sequence from position 0 with enough rows (freshPrompt_, beginStep);
  /// the ATTENTION whose bf16 q, k, v rows the ROPE launch wrote into
  /// denseRows_ (kNone: none).
  bool freshPrompt_ = false;
  size_t denseAttentionAt_ = kNone;
  DeviceArray<float> denseRows_;
  /// planResidualNorms: the consumer of each producer LINEAR (kNone: none),
  /// the producer's blocks' sums of squares, and this step's hand-over.
  std::vector<size_t> normConsumer_;
  DeviceArray<double> normPartials_;
  cuda::ResidualNorm pendingNorm_;
  size_t pendingNormAt_ = kNone, residualAddDoneAt_ = kNone, selectDoneAt_ = kNone;
  /// planResidualNorms: a SELECT_ROWS between the producer's norm and its consumer.
  std::vector<bool> selectBeforeConsumer_;
  /// planExchanges: the consumer and site of each producer LINEAR (kNone /
  /// -1: none), and this step's hand-over (the ALL_REDUCE and ADD it skips).
  std::vector<size_t> exchangeConsumer_;
  std::vector<int> exchangeSite_;
  cuda::ExchangedNorm pendingExchange_;
  size_t pendingExchangeAt_ = kNone;
  std::pair<size_t, size_t> exchangeSkips_{kNone, kNone};
  /// The fused ADD+RMS_NORM whose sum its product wrote (planResidualsInProducts).
  size_t sumInProductAt_ = kNone;
  int64_t partialRow_ = 0, attentionHeads_ = 0, attentionKvHeads_ = 0;
  int multiprocessors_ = 1;
  PinnedArray<int32_t> hostIds_;
  /// launchTokens: two host copies of launched tokens in turn (ids, and
  /// logprobs where rows asked), each with the event that says they arrived
  /// and the sampling parameters its upload read; the launched turns,
  /// oldest first.
  struct LaunchedIds {
    PinnedArray<int32_t> host;
    PinnedArray<float> hostLogprobs;
    PinnedArray<cuda::SamplingRow> sampling;
    std::vector<bool> logprobs; // per row: its logprob was asked
    cudaEvent_t arrived = nullptr;
    int64_t rows = 0;
    bool replayed = false; // its step's graph was replayed (HostTimes)
  };
  LaunchedIds launchedIds_[2];
  std::deque<int> launchedTurns_;
  int launchTurn_ = 0;
  int64_t launchedRows_ = -1; // rows of the last launched ids (greedyIds_)
  // sampleRows: the rows' parameters and the sampled tokens' logprobs.
  DeviceArray<cuda::SamplingRow> sampling_;
  PinnedArray<cuda::SamplingRow> hostSampling_;
  DeviceArray<float> logprobs_;
  PinnedArray<float> hostLogprobs_;
  DeviceArray<std::byte> samplingScratch_; // the rows' blocks' merges (samplingScratchBytes)
  /// Per instruction: see planFusions (empty until the first runAll).
  std::vector<size_t> linearGroupSize_;
  std::vector<DeviceArray<std::byte>> linearPacks_; // packLinearGroups

  std::vector<bool> addNormFused_, computedEarlier_;
  /// planResidualsInProducts: per LINEAR, whether its product may add the residual.
  std::vector<bool> residualInProduct_;
  std::vector<bool> allReduceBeforeAddNorm_; // planAllReduceNorms
  static constexpr size_t kNone = static_cast<size_t>(-1);
  size_t deferredAllReduce_ = kNone;
  bool capturing_ = false; // recording a decode step's graph (skippedForMeasuring)
  /// LLMIR_CUDA_HOST_TIMES=1 (measuring): the host's time in replayed
  /// decode steps before their graph launch returned (and in beginStep),
  /// and waiting for their greedy ids, and the last eager step's times
  /// (a prefill's), printed when the backend goes.
  struct HostTimes {
    bool on = std::getenv("LLMIR_CUDA_HOST_TIMES") != nullptr;
    std::chrono::steady_clock::time_point stepBegan;
    double inBeginStep = 0.0;  // this step's
    double waited = 0.0;       // this step's, when beginStep's wait returned
    bool replayed = false;     // this step's graph was replayed
    double beginningStep = 0.0, beforeLaunch = 0.0, waiting = 0.0;
    long steps = 0;
    /// The last step that ran eagerly (a prefill): its tokens, and when
    /// (from beginStep) beginStep returned, its last launch returned and
    /// its read() returned.
    int64_t eagerTokens = 0;
    double eagerWaited = 0.0, eagerBegun = 0.0, eagerLaunched = 0.0, eagerRead = 0.0;
  } hostTimes_;
  static double secondsSince(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }
  /// `wait` for a step's greedy ids, its time counted in hostTimes_.waiting
  /// when measuring and the step's graph was replayed.
  template <typename Wait> Status waitingForIds(bool replayed, Wait &&wait) {
    if (!hostTimes_.on || !replayed)
      return wait();
    const auto began = std::chrono::steady_clock::now();
    const Status waited = wait();
    hostTimes_.waiting += secondsSince(began);
    return waited;
  }
  std::vector<bool> linearSwiglu_, swigluComputedEarlier_;
  std::vector<bool> ropeStore_, keysStored_, rotatedQueriesUnread_; // planRopeStores
  /// planSplitsInProducers: per fused ADD, the LINEAR whose x's halves it
  /// writes; the LINEAR whose halves this step's producer wrote.
  std::vector<size_t> splitBy_;
  size_t splitLinear_ = kNone;
  /// planSplitsInProducers: per producer, whether it writes the halves
  /// only (no later reader of the f32 value); whether this step's did.
  std::vector<bool> halvesOnly_;
  bool splitHalvesOnly_ = false;
  bool wholeProgram_ = false; // inside runAll (planSwigluFusions)
  /// planRowPruning: the range [pruneFrom_, pruneSelect_) and its inputs
  /// from before it; while pruning_, those slots hold the selected rows and
  /// prunedInputs_ their own buffers.
  size_t pruneFrom_ = kNone, pruneSelect_ = kNone;
  /// The ATTENTION before the range that runs on the kept rows too
  /// (keptRowsAttention), kNone for none; keptStep_: the kept rows as a
  /// decode step's (their positions and sequences uploaded with the step),
  /// keptRowsInStep_: every kept row is a row of the step.
  size_t pruneAttention_ = kNone;
  cuda::DeviceStep keptStep_;
  bool keptRowsInStep_ = false;
  DeviceArray<float> keptQueries_, keptScratch_;
  DeviceArray<unsigned> keptCounters_;
  std::vector<uint32_t> pruneInputs_;
  std::vector<DeviceTensor> prunedInputs_;
  bool pruning_ = false;
  bool graphsAllowed_ = false;
  bool decodeStep_ = false; // this step's isDecodeStep(), from beginStep
  std::map<GraphKey, Graph> graphs_;
  std::set<GraphKey> seenKeys_;
  cuda::DeviceStep deviceStep_;
  const BoundInstruction *inst_ = nullptr;
  std::unordered_map<const BoundInstruction *, DeviceArray<float>> ropeFrequencies_;
  std::vector<float> host_, hostGathered_; // staging for host collectives
};

} // namespace

bool cudaBackendBuilt() { return true; }

int cudaDeviceCount() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError(); // not sticky: clear it
    return 0;
  }
  return devices;
}

Result<std::unique_ptr<ExecutionBackend>>
createCudaBackend(const BoundProgram &program, int deviceIndex,
                  const BackendOptions &options, Communicator *comm) {
  const std::string name = "cuda:" + std::to_string(deviceIndex);
  int devices = 0;
  cudaError_t error = cudaGetDeviceCount(&devices);
  if (error != cudaSuccess || devices == 0)
    return Status::error(
        "device " + name + " requested, but no CUDA device is usable here (" +
        (error != cudaSuccess ? std::string(cudaGetErrorString(error))
                              : std::string("no device")) +
        ")");
  if (deviceIndex >= devices)
    return Status::error("device " + name + " requested, but only " +
                         std::to_string(devices) + " CUDA device(s) are visible");
  LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(deviceIndex), "selecting " + name));
  Result<cuda::Context> context = cuda::Context::create();
  if (!context)
    return context.status().withContext(name);
  double fraction = options.gpuMemoryFraction;
  if (fraction <= 0 || fraction > 1)
    fraction = 0.9;
  context->setBf16Products(options.bf16Products);
  return std::unique_ptr<ExecutionBackend>(std::make_unique<CudaBackend>(
      program, deviceIndex, fraction, options.bf16KvCache, options.bf16Products,
      std::move(*context), comm));
}

} // namespace llmir::engine
