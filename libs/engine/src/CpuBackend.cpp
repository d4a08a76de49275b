// The CPU backend: host tensors, the CPU kernels of cpuKernelRegistry() and a
// thread pool; collectives on host memory (Gloo).
#include "ExecutionBackend.h"
#include "KernelRegistry.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/HugePages.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/model/Safetensors.h"
#include "llmir/proto/shard_program.pb.h"

#include <cstring>
#include <optional>
#include <string>

namespace llmir::engine {
namespace {

class CpuBackend final : public ExecutionBackend {
public:
  CpuBackend(const BoundProgram &program, const BackendOptions &options,
             Communicator *comm)
      : program_(program), kernels_(cpuKernelRegistry()),
        pool_(std::make_unique<ThreadPool>(options.numThreads)), comm_(comm),
        kvElement_(options.bf16KvCache ? KvElement::BF16 : KvElement::F32),
        bf16Products_(options.bf16Products),
        weights_(program.slots.size()), views_(program.slots.size()),
        activations_(program.slots.size()) {}

  // The elements move to the huge-page arena (decode streams them once per
  // token; see HugePages.h); weights_ keeps dtype and shape.
  Status loadWeight(uint32_t slot, WeightTensor weight) override {
    Result<const std::byte *> copy = arena_.copy(weight.data.data(), weight.data.size());
    if (!copy)
      return copy.status().withContext("weights");
    WeightView view = WeightView::of(weight);
    view.data = *copy;
    views_[slot] = view;
    std::vector<std::byte>().swap(weight.data); // the arena holds them now
    weights_[slot] = std::move(weight);
    return Status::ok();
  }

  Status allocateKvCache(const KvCacheShape &shape) override {
    Result<KvCache> cache = KvCache::create(shape, kvElement_);
    if (!cache)
      return cache.status();
    cache_ = std::move(*cache);
    return Status::ok();
  }

  const KvCacheShape &kvCacheShape() const override { return cache_->shape(); }
  size_t kvElementBytes() const override { return cache_->elementSize(); }

  // A block of one layer is contiguous ([block_size][kv_heads][head_dim]).
  Status readKvBlock(int32_t block, std::byte *out) override {
    const size_t chunk = layerChunkBytes();
    for (int64_t layer = 0; layer < cache_->shape().numLayers; ++layer) {
      std::memcpy(out, cache_->keyData(layer, block, 0), chunk);
      std::memcpy(out + chunk, cache_->valueData(layer, block, 0), chunk);
      out += 2 * chunk;
    }
    return Status::ok();
  }

  Status writeKvBlock(int32_t block, const std::byte *in) override {
    const size_t chunk = layerChunkBytes();
    for (int64_t layer = 0; layer < cache_->shape().numLayers; ++layer) {
      std::memcpy(cache_->keyData(layer, block, 0), in, chunk);
      std::memcpy(cache_->valueData(layer, block, 0), in + chunk, chunk);
      in += 2 * chunk;
    }
    return Status::ok();
  }

  Status beginStep(const StepInput &step) override {
    call_.step = &step;
    if (linearGroupSize_.empty()) { // the weights are loaded by now
      planLinearGroups();
      planBuffers();
    }
    releaseBuffers(program_.instructions.size()); // those the last instruction read
    return Status::ok();
  }

  Status run(const BoundInstruction &inst) override {
    const auto &insts = program_.instructions;
    const bool planned = &inst >= insts.data() && &inst < insts.data() + insts.size() &&
                         !linearGroupSize_.empty();
    if (planned) {
      const size_t index = static_cast<size_t>(&inst - insts.data());
      releaseBuffers(index);
      for (size_t o = 0; o < inst.outputs.size(); ++o)
        if (!inst.outputAliasesInput[o])
          takeBuffer(inst.outputs[o]);
      if (inst.op == proto::LINEAR && linearGroupSize_[index] == 0)
        return Status::ok(); // computed with its group's first instruction
      if (inst.op == proto::LINEAR && groupable_[index])
        return runLinearGroup(index, linearGroupSize_[index]);
    }
    KernelCall &call = call_;
    call.params = &inst.params;
    call.kvCache = &*cache_;
    call.pool = pool_.get();
    call.comm = comm_;
    call.bf16Products = bf16Products_;
    call.inputs.clear();
    for (size_t i = 0; i < inst.inputs.size(); ++i) {
      const uint32_t id = inst.inputs[i];
      if (inst.inputIsWeight[i])
        call.inputs.push_back({nullptr, &weights_[id], views_[id]});
      else
        call.inputs.push_back({&activations_[id], nullptr, {}});
    }
    call.outputs.clear();
    call.outputSlotShapes.clear();
    for (size_t o = 0; o < inst.outputs.size(); ++o) {
      const uint32_t id = inst.outputs[o];
      call.outputs.push_back(inst.outputAliasesInput[o] ? &aliasedOutput_
                                                        : &activations_[id]);
      call.outputSlotShapes.push_back(&program_.slots[id].shape);
    }
    const Kernel *kernel = kernels_.find(inst.op);
    if (!kernel)
      return Status::error("no CPU kernel for this opcode");
    LLMIR_RETURN_IF_ERROR((*kernel)(call));
    for (size_t o = 0; o < inst.outputs.size(); ++o)
      if (inst.outputAliasesInput[o])
        std::swap(aliasedOutput_, activations_[inst.outputs[o]]);
    return Status::ok();
  }

  Result<Tensor> read(uint32_t slot) override { return activations_[slot]; }

private:
  /// Consecutive LINEARs of one input whose weights share dtype and width
  /// (Q, K, V; gate, up) run as one cpu::linearGroup: one split over the
  /// pool for all their rows (linearGroupSize_: the group's size at its
  /// first instruction, 0 at the others, 1 alone).
  /// A LINEAR of a 2-D weight runs through runLinearGroup even alone
  /// (groupable_), so that each knows the weights of the one after it
  /// (nextLinear_: the next group's first instruction; the last group's is
  /// the first, the next step's).
  void planLinearGroups() {
    const auto &insts = program_.instructions;
    auto groupable = [&](size_t i) {
      const BoundInstruction &inst = insts[i];
      return inst.op == proto::LINEAR && inst.inputs.size() >= 2 && inst.inputIsWeight[1] &&
             !inst.inputIsWeight[0] && !inst.outputAliasesInput[0] &&
             weights_[inst.inputs[1]].shape.size() == 2;
    };
    groupable_.assign(insts.size(), false);
    for (size_t i = 0; i < insts.size(); ++i)
      groupable_[i] = groupable(i);
    linearGroupSize_ = engine::planLinearGroups(
        insts, groupable,
        [&](size_t i) {
          const WeightTensor &w = weights_[insts[i].inputs[1]];
          return std::make_pair(w.dtype, w.shape[1]);
        });
    constexpr size_t kNone = ~size_t{0};
    nextLinear_.assign(insts.size(), kNone);
    size_t first = kNone, last = kNone;
    for (size_t i = 0; i < insts.size(); ++i) {
      if (!groupable_[i] || linearGroupSize_[i] == 0)
        continue;
      if (last != kNone)
        nextLinear_[last] = i;
      else
        first = i;
      last = i;
    }
    if (last != kNone)
      nextLinear_[last] = first;
  }

  // The checks of the LINEAR kernel (Ops.cpp) for every member, then one
  // cpu::linearGroup.
  Status runLinearGroup(size_t first, size_t count) {
    const auto &insts = program_.instructions;
    const Tensor &x = activations_[insts[first].inputs[0]];
    std::vector<cpu::LinearOutput> outputs;
    groupBiases_.resize(count);
    for (size_t j = 0; j < count; ++j) {
      const BoundInstruction &member = insts[first + j];
      const WeightTensor &w = weights_[member.inputs[1]];
      const int64_t N = w.shape[0], K = w.shape[1];
      if (x.rowSize() != K)
        return Status::error("input " + model::formatShape(x.shape) +
                             " does not match weight [N, K] = " + model::formatShape(w.shape) +
                             " (K differs)")
            .withContext(member.name);
      groupBiases_[j].clear();
      if (member.inputs.size() == 3) {
        const WeightTensor &b = weights_[member.inputs[2]];
        if (b.shape.size() != 1 || b.shape[0] != N)
          return Status::error("bias has shape " + model::formatShape(b.shape) + "; expected [" +
                               std::to_string(N) + "]")
              .withContext(member.name);
        groupBiases_[j].resize(static_cast<size_t>(N));
        const WeightView &bias = views_[member.inputs[2]];
        bias.widenRows(0, bias.rows, groupBiases_[j].data());
      }
      takeBuffer(member.outputs[0]);
      Tensor &y = activations_[member.outputs[0]];
      y.reshape({x.rows(), N});
      outputs.push_back({views_[member.inputs[1]], groupBiases_[j].empty() ? nullptr : groupBiases_[j].data(),
                         y.data.data()});
    }
    nextWeights_.clear();
    if (const size_t next = nextLinear_[first]; next < insts.size())
      for (size_t j = next; j < next + linearGroupSize_[next]; ++j)
        nextWeights_.push_back(views_[insts[j].inputs[1]]);
    cpu::linearGroup(x.data.data(), x.rows(), outputs, *pool_, bf16Products_, nextWeights_);
    return Status::ok();
  }

  /// Activation buffers passed from slot to slot: a slot gives its buffer
  /// back after its last reader and an output takes the buffer given back
  /// last. Each layer's activations otherwise had buffers of their own, last
  /// touched a token (the whole weight stream) earlier, so a decode token's
  /// small kernels (norms, adds, RoPE, SwiGLU) and the GEMVs' outputs waited
  /// on memory for every line they read or wrote; passed on, they are the
  /// few most recently used buffers, in cache. A slot keeps its buffer when
  /// it is the program's output, read before any instruction writes it
  /// (state from an earlier step), or written by none.
  void planBuffers() {
    const auto &insts = program_.instructions;
    constexpr size_t kNever = ~size_t{0};
    std::vector<size_t> lastUse(program_.slots.size(), kNever),
        firstWrite(program_.slots.size(), kNever);
    std::vector<bool> keep(program_.slots.size(), false);
    for (size_t i = 0; i < insts.size(); ++i) {
      const BoundInstruction &inst = insts[i];
      for (size_t k = 0; k < inst.inputs.size(); ++k) {
        if (inst.inputIsWeight[k])
          continue;
        const uint32_t id = inst.inputs[k];
        if (firstWrite[id] == kNever || firstWrite[id] >= i)
          keep[id] = true; // read before this step writes it
        lastUse[id] = i;
      }
      for (uint32_t id : inst.outputs) {
        if (firstWrite[id] == kNever)
          firstWrite[id] = i;
        if (lastUse[id] == kNever || lastUse[id] < i)
          lastUse[id] = i;
      }
    }
    if (program_.hasOutput)
      keep[program_.outputSlot] = true;
    recycled_.assign(program_.slots.size(), false);
    releaseAfter_.assign(insts.size() + 1, {});
    for (uint32_t id = 0; id < program_.slots.size(); ++id) {
      if (program_.slots[id].isWeight || keep[id] || firstWrite[id] == kNever)
        continue;
      recycled_[id] = true;
      releaseAfter_[lastUse[id] + 1].push_back(id);
    }
  }

  /// Gives back the buffers of the slots last read by instruction index - 1
  /// (run() calls it before instruction `index`, so an observer still reads
  /// the previous instruction's outputs).
  void releaseBuffers(size_t index) {
    if (index >= releaseAfter_.size())
      return;
    for (uint32_t id : releaseAfter_[index]) {
      std::vector<float> &data = activations_[id].data;
      if (data.capacity() == 0)
        continue;
      freeBuffers_.emplace_back();
      freeBuffers_.back().swap(data);
    }
  }

  /// An output slot without a buffer takes the one given back last.
  void takeBuffer(uint32_t id) {
    if (!recycled_.empty() && recycled_[id] && activations_[id].data.capacity() == 0 &&
        !freeBuffers_.empty()) {
      activations_[id].data.swap(freeBuffers_.back());
      freeBuffers_.pop_back();
    }
  }

  size_t layerChunkBytes() const {
    const KvCacheShape &shape = cache_->shape();
    return static_cast<size_t>(shape.blockSize * shape.numKvHeads * shape.headDim) *
           cache_->elementSize();
  }

  const BoundProgram &program_;
  KernelRegistry kernels_;
  std::unique_ptr<ThreadPool> pool_;
  Communicator *comm_;
  KvElement kvElement_;
  bool bf16Products_;
  std::optional<KvCache> cache_;
  HugePageArena arena_;                // every weight's elements
  std::vector<WeightTensor> weights_;  // by slot id: dtype and shape (elements in arena_)
  std::vector<WeightView> views_;      // by slot id: the elements in arena_
  std::vector<Tensor> activations_;    // by slot id (empty for weights)
  Tensor aliasedOutput_;
  KernelCall call_;
  // planLinearGroups
  std::vector<size_t> linearGroupSize_;
  std::vector<bool> groupable_;
  std::vector<size_t> nextLinear_;
  std::vector<WeightView> nextWeights_; // runLinearGroup's, reused
  std::vector<std::vector<float>> groupBiases_;
  // planBuffers
  std::vector<bool> recycled_;                     // by slot: passes its buffer on
  std::vector<std::vector<uint32_t>> releaseAfter_; // by instruction: slots given back before it
  std::vector<std::vector<float>> freeBuffers_;    // given back, the last one last
};

} // namespace

std::unique_ptr<ExecutionBackend>
createCpuBackend(const BoundProgram &program, const BackendOptions &options,
                 Communicator *comm) {
  return std::make_unique<CpuBackend>(program, options, comm);
}

} // namespace llmir::engine
