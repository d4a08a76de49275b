// The CUDA backend: weights resident on the device in their stored dtype,
// activations and the paged KV cache in device memory, the kernels of
// CudaKernels.h on the default stream. Collectives get device pointers when
// the communicator takes them (NCCL), and are staged through host memory
// otherwise (Gloo). Only the output slot (logits) is copied back per step.
#include "ExecutionBackend.h"

#include "llmir/engine/Communicator.h"
#include "llmir/engine/CudaKernels.h"
#include "llmir/model/Safetensors.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>
#include <unordered_map>

namespace llmir::engine {
namespace {

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

struct DeviceWeight {
  proto::DType dtype{};
  std::vector<int64_t> shape;
  DeviceArray<std::byte> stored;
  /// 1-D weights (norm scales, biases) also as f32: the kernels take them
  /// widened, and they are a few KB.
  DeviceArray<float> widened;

  WeightView view() const {
    WeightView v;
    v.dtype = dtype;
    v.data = stored.data;
    v.rows = shape.size() == 2 ? shape[0] : 1;
    v.cols = shape.empty() ? 0 : shape.back();
    return v;
  }
};

class CudaBackend final : public ExecutionBackend {
public:
  CudaBackend(const BoundProgram &program, int device, double memoryFraction,
              bool bf16KvCache, cuda::Context context, Communicator *comm)
      : program_(program), device_(device), memoryFraction_(memoryFraction),
        bf16KvCache_(bf16KvCache),
        context_(std::move(context)), comm_(comm),
        weights_(program.slots.size()), activations_(program.slots.size()) {}

  ~CudaBackend() override {
    cudaSetDevice(device_);
    for (DeviceWeight &w : weights_) {
      w.stored.release();
      w.widened.release();
    }
    for (DeviceTensor &t : activations_)
      t.storage.release();
    for (auto &[inst, table] : ropeFrequencies_)
      table.release();
    aliased_.storage.release();
    scratch_.storage.release();
    keys_.release();
    values_.release();
    ids_.release();
    positions_.release();
    tokenSeq_.release();
    blockTables_.release();
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

  Status beginStep(const StepInput &step) override {
    LLMIR_RETURN_IF_ERROR(check(cudaSetDevice(device_), "selecting the device"));
    step_ = &step;
    const size_t T = step.tokenIds.size();
    size_t stride = 1;
    for (const auto &table : step.blockTables)
      stride = std::max(stride, table.size());
    hostTables_.assign(step.blockTables.size() * stride, 0);
    for (size_t s = 0; s < step.blockTables.size(); ++s)
      std::copy(step.blockTables[s].begin(), step.blockTables[s].end(),
                hostTables_.begin() + static_cast<std::ptrdiff_t>(s * stride));
    LLMIR_RETURN_IF_ERROR(upload(ids_, step.tokenIds));
    LLMIR_RETURN_IF_ERROR(upload(positions_, step.positions));
    LLMIR_RETURN_IF_ERROR(upload(tokenSeq_, step.tokenSeq));
    LLMIR_RETURN_IF_ERROR(upload(blockTables_, hostTables_));
    deviceStep_ = {static_cast<int64_t>(T), positions_.data, tokenSeq_.data,
                   blockTables_.data, static_cast<int64_t>(stride)};
    return Status::ok();
  }

  Status run(const BoundInstruction &inst) override {
    inst_ = &inst;
    LLMIR_RETURN_IF_ERROR(dispatch(inst));
    for (size_t o = 0; o < inst.outputs.size(); ++o)
      if (inst.outputAliasesInput[o])
        std::swap(aliased_, activations_[inst.outputs[o]]);
    return check(cudaGetLastError(), "launch");
  }

  Result<Tensor> read(uint32_t slot) override {
    const DeviceTensor &d = activations_[slot];
    Tensor t(d.shape);
    LLMIR_RETURN_IF_ERROR(check(cudaMemcpy(t.data.data(), d.data(),
                                           t.data.size() * sizeof(float),
                                           cudaMemcpyDeviceToHost),
                                "reading slot " + std::to_string(slot)));
    return t;
  }

private:
  static constexpr size_t kActivationReserve = size_t(512) << 20;

  template <typename T>
  Status upload(DeviceArray<T> &dst, const std::vector<T> &src) {
    LLMIR_RETURN_IF_ERROR(dst.reserve(src.size()));
    if (src.empty())
      return Status::ok();
    return check(cudaMemcpy(dst.data, src.data(), src.size() * sizeof(T),
                            cudaMemcpyHostToDevice),
                 "uploading the step");
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
                                 cudaMemcpyDeviceToDevice),
                 "copy");
  }

  // --- collectives: device pointers for NCCL, host staging for Gloo --------
  bool deviceCollectives() const { return comm_->takesDeviceMemory(); }

  Status allReduce(float *data, int64_t count, uint32_t group) {
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
      return cuda::embedding(ids_.data, T(), table.view(), p.vocabOffset, y.data());
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
      return cuda::rmsNorm(x.data(), x.rows() * (x.rowSize() / w.shape[0]), w.shape[0],
                           w.widened.data, p.eps, y.data());
    }
    case proto::LINEAR: {
      const DeviceTensor &x = act(0);
      const DeviceWeight &w = weight(1);
      if (w.shape.size() != 2 || x.rowSize() != w.shape[1])
        return Status::error("input " + model::formatShape(x.shape) +
                             " does not match weight [N, K] = " +
                             model::formatShape(w.shape));
      const float *bias = inst.inputs.size() == 3 ? weight(2).widened.data : nullptr;
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape({x.rows(), w.shape[0]}));
      return cuda::linear(context_, x.data(), x.rows(), w.view(), bias, y.data());
    }
    case proto::ROPE: {
      const DeviceTensor &x = act(0);
      const RowRange r = rows();
      if (x.shape.empty() || x.rows() != r.size() || x.rowSize() % p.headDim != 0)
        return Status::error("ROPE input " + model::formatShape(x.shape) + " for " +
                             std::to_string(r.size()) + " rows of whole heads of " +
                             std::to_string(p.headDim));
      // The binding's inverse frequencies (scaled for llama3 / linear RoPE),
      // the same f32 values the CPU rotates with, uploaded on first use.
      DeviceArray<float> &frequencies = ropeFrequencies_[&inst];
      if (!frequencies.data) {
        LLMIR_RETURN_IF_ERROR(frequencies.reserve(p.ropeInverseFrequencies.size()));
        LLMIR_RETURN_IF_ERROR(toDevice(frequencies.data, p.ropeInverseFrequencies.data(),
                                       static_cast<int64_t>(p.ropeInverseFrequencies.size())));
      }
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
      LLMIR_RETURN_IF_ERROR(copy(y.data(), x.data(), x.numel()));
      if (r.size() == 0)
        return Status::ok();
      return cuda::rope(y.data(), r.size(), y.rowSize() / p.headDim, p.headDim,
                        positions_.data + r.begin, frequencies.data);
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
        return cuda::pagedAttention(act(0).data(), act(1).data(), act(2).data(),
                                    deviceStep_, a, cache_, o.data());
      }
      LLMIR_RETURN_IF_ERROR(o.reshape({T(), qWidth + a.numHeads}));
      return cuda::partialAttention(act(0).data(), act(1).data(), act(2).data(),
                                    deviceStep_, a, cache_, o.data());
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
                                  o.data());
    }
    case proto::SWIGLU:
    case proto::ADD: {
      const DeviceTensor &a = act(0), &b = act(1);
      if (a.shape != b.shape)
        return Status::error("operand shapes differ: " + model::formatShape(a.shape) +
                             " and " + model::formatShape(b.shape));
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(a.shape));
      return inst.op == proto::SWIGLU
                 ? cuda::swiglu(a.data(), b.data(), y.data(), a.numel())
                 : cuda::add(a.data(), b.data(), y.data(), a.numel());
    }
    case proto::ALL_REDUCE: {
      const DeviceTensor &x = act(0);
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(x.shape));
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
                              static_cast<size_t>(rowsN), cudaMemcpyDeviceToDevice),
            "all-gather layout"));
      }
      return Status::ok();
    }
    case proto::SEND: {
      const DeviceTensor &x = act(0);
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
      const std::vector<int32_t> selected = selectedRows(*step_);
      const int64_t width = x.rowSize();
      std::vector<int64_t> shape = x.shape;
      shape[0] = static_cast<int64_t>(selected.size());
      DeviceTensor &y = out(0);
      LLMIR_RETURN_IF_ERROR(y.reshape(std::move(shape)));
      for (size_t i = 0; i < selected.size(); ++i)
        LLMIR_RETURN_IF_ERROR(copy(y.data() + static_cast<int64_t>(i) * width,
                                   x.data() + selected[i] * width, width));
      return Status::ok();
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
          cudaMemsetAsync(packed_.data(), 0, static_cast<size_t>(longest * width) * sizeof(float)),
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
                                static_cast<size_t>(mine.size()), cudaMemcpyDeviceToDevice),
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
                                  r.size(), a, cache_, o.data());
    }
    default:
      return Status::error("no CUDA kernel for opcode " + std::to_string(inst.op));
    }
  }

  const BoundProgram &program_;
  int device_;
  double memoryFraction_;
  bool bf16KvCache_;
  cuda::Context context_;
  Communicator *comm_;
  std::vector<DeviceWeight> weights_;     // by slot id
  std::vector<DeviceTensor> activations_; // by slot id
  DeviceTensor aliased_, scratch_, packed_;
  DeviceArray<std::byte> keys_, values_;
  cuda::DeviceKvCache cache_;
  // The step's tables on the device.
  const StepInput *step_ = nullptr;
  DeviceArray<int32_t> ids_, positions_, tokenSeq_, blockTables_;
  std::vector<int32_t> hostTables_;
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
  return std::unique_ptr<ExecutionBackend>(std::make_unique<CudaBackend>(
      program, deviceIndex, fraction, options.bf16KvCache, std::move(*context), comm));
}

} // namespace llmir::engine
