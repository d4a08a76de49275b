// The CPU backend: host tensors, the CPU kernels of cpuKernelRegistry() and a
// thread pool; collectives on host memory (Gloo).
#include "ExecutionBackend.h"
#include "KernelRegistry.h"

#include "llmir/engine/ThreadPool.h"

#include <cstring>
#include <optional>

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
        weights_(program.slots.size()), activations_(program.slots.size()) {}

  Status loadWeight(uint32_t slot, WeightTensor weight) override {
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
  size_t kvElementBytes() const override { return sizeof(float); }

  // A block of one layer is contiguous ([block_size][kv_heads][head_dim]).
  Status readKvBlock(int32_t block, std::byte *out) override {
    const size_t chunk = layerChunkBytes();
    for (int64_t layer = 0; layer < cache_->shape().numLayers; ++layer) {
      std::memcpy(out, cache_->keyRow(layer, block, 0), chunk);
      std::memcpy(out + chunk, cache_->valueRow(layer, block, 0), chunk);
      out += 2 * chunk;
    }
    return Status::ok();
  }

  Status writeKvBlock(int32_t block, const std::byte *in) override {
    const size_t chunk = layerChunkBytes();
    for (int64_t layer = 0; layer < cache_->shape().numLayers; ++layer) {
      std::memcpy(cache_->keyRow(layer, block, 0), in, chunk);
      std::memcpy(cache_->valueRow(layer, block, 0), in + chunk, chunk);
      in += 2 * chunk;
    }
    return Status::ok();
  }

  Status beginStep(const StepInput &step) override {
    call_.step = &step;
    return Status::ok();
  }

  Status run(const BoundInstruction &inst) override {
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
        call.inputs.push_back({nullptr, &weights_[id]});
      else
        call.inputs.push_back({&activations_[id], nullptr});
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
  size_t layerChunkBytes() const {
    const KvCacheShape &shape = cache_->shape();
    return static_cast<size_t>(shape.blockSize * shape.numKvHeads * shape.headDim) *
           sizeof(float);
  }

  const BoundProgram &program_;
  KernelRegistry kernels_;
  std::unique_ptr<ThreadPool> pool_;
  Communicator *comm_;
  KvElement kvElement_;
  bool bf16Products_;
  std::optional<KvCache> cache_;
  std::vector<WeightTensor> weights_;  // by slot id (empty for activations)
  std::vector<Tensor> activations_;    // by slot id (empty for weights)
  Tensor aliasedOutput_;
  KernelCall call_;
};

} // namespace

std::unique_ptr<ExecutionBackend>
createCpuBackend(const BoundProgram &program, const BackendOptions &options,
                 Communicator *comm) {
  return std::make_unique<CpuBackend>(program, options, comm);
}

} // namespace llmir::engine
