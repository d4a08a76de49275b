#include "llmir/engine/Executor.h"

#include "ProgramValidator.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/model/Safetensors.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <string>

namespace llmir::engine {
namespace {

Result<WeightTensor> loadWeight(const proto::WeightSlice &slice,
                                const proto::TensorSlot &slot,
                                const WeightProvider &provider) {
  Result<WeightTensor> loaded = provider(slice);
  if (!loaded)
    return loaded.status();
  WeightTensor &w = *loaded;
  std::vector<int64_t> expected(slot.shape().begin(), slot.shape().end());
  if (w.shape != expected)
    return Status::error("provider returned shape " + model::formatShape(w.shape) +
                         "; the slot expects " + model::formatShape(expected));
  const size_t elementSize = weightElementSize(w.dtype);
  if (elementSize == 0)
    return Status::error(std::string("provider returned dtype ") +
                         dtypeName(w.dtype) +
                         "; weights must be F32, BF16 or F16");
  int64_t numel = 1;
  for (int64_t d : w.shape)
    numel *= d;
  if (w.data.size() != static_cast<size_t>(numel) * elementSize)
    return Status::error("provider returned " + std::to_string(w.data.size()) +
                         " bytes; shape " + model::formatShape(w.shape) + " of " +
                         dtypeName(w.dtype) + " needs " +
                         std::to_string(numel * elementSize));
  return loaded;
}

} // namespace

Result<std::unique_ptr<Executor>>
Executor::create(const proto::ShardProgram &program,
                 const WeightProvider &weights, const ExecutorOptions &options,
                 Communicator *comm) {
  return create(program, weights, options, cpuKernelRegistry(), comm);
}

Result<std::unique_ptr<Executor>>
Executor::create(const proto::ShardProgram &program,
                 const WeightProvider &weights, const ExecutorOptions &options,
                 KernelRegistry kernels, Communicator *comm) {
  LLMIR_RETURN_IF_ERROR(validateProgram(program, comm != nullptr)
                            .withContext("invalid ShardProgram"));
  for (const proto::Instruction &inst : program.instructions())
    if (!kernels.find(inst.op()))
      return Status::error("no kernel registered for opcode " +
                           std::to_string(inst.op()));

  const proto::KvCacheSpec &spec = program.kv_cache();
  KvCacheShape cacheShape{spec.num_layers(), spec.num_kv_heads(),
                          spec.head_dim(), spec.block_size(),
                          options.numKvBlocks ? options.numKvBlocks
                                              : spec.num_blocks()};
  Result<KvCache> cache = KvCache::create(cacheShape);
  if (!cache)
    return cache.status().withContext(
        "KV cache (kv_cache spec, blocks from ExecutorOptions.numKvBlocks or "
        "kv_cache.num_blocks)");

  std::unique_ptr<Executor> executor(
      new Executor(std::make_unique<proto::ShardProgram>(program),
                   std::move(*cache), std::move(kernels), options.numThreads,
                   comm));
  const size_t numSlots = static_cast<size_t>(program.slots_size());
  executor->weights_.resize(numSlots);
  executor->activations_.resize(numSlots);
  for (const proto::TensorSlot &slot : program.slots())
    executor->slotShapes_.emplace_back(slot.shape().begin(),
                                       slot.shape().end());
  for (const proto::WeightSlice &slice : program.weights()) {
    const proto::TensorSlot &slot = program.slots(static_cast<int>(slice.slot()));
    Result<WeightTensor> w = loadWeight(slice, slot, weights);
    if (!w)
      return w.status().withContext("loading weight '" + slice.tensor_name() +
                                    "' into slot " +
                                    std::to_string(slice.slot()));
    executor->weights_[slice.slot()] = std::move(*w);
  }
  return executor;
}

Executor::Executor(std::unique_ptr<proto::ShardProgram> program, KvCache cache,
                   KernelRegistry kernels, unsigned numThreads,
                   Communicator *comm)
    : program_(std::move(program)), cache_(std::move(cache)),
      kernels_(std::move(kernels)),
      pool_(std::make_unique<ThreadPool>(numThreads)), comm_(comm) {}

Executor::~Executor() = default;

Result<Tensor> Executor::step(const StepInput &input) {
  LLMIR_RETURN_IF_ERROR(
      validateStepInput(input, cache_.shape()).withContext("invalid step"));
  const int64_t vocab = program_->vocab_size();
  for (size_t t = 0; vocab > 0 && t < input.tokenIds.size(); ++t)
    if (input.tokenIds[t] < 0 || input.tokenIds[t] >= vocab)
      return Status::error("invalid step: token " + std::to_string(t) +
                           " has id " + std::to_string(input.tokenIds[t]) +
                           ", outside the vocabulary of " +
                           std::to_string(vocab));
  KernelCall call;
  call.program = program_.get();
  call.step = &input;
  call.kvCache = &cache_;
  call.pool = pool_.get();
  call.comm = comm_;
  for (int i = 0; i < program_->instructions_size(); ++i) {
    const proto::Instruction &inst = program_->instructions(i);
    call.instruction = &inst;
    call.inputs.clear();
    for (uint32_t id : inst.inputs()) {
      if (program_->slots(static_cast<int>(id)).is_weight())
        call.inputs.push_back({nullptr, &weights_[id]});
      else
        call.inputs.push_back({&activations_[id], nullptr});
    }
    // An output that is also an input is computed aside, then swapped in.
    call.outputs.clear();
    call.outputSlotShapes.clear();
    for (uint32_t id : inst.outputs()) {
      bool aliased = std::find(inst.inputs().begin(), inst.inputs().end(),
                               id) != inst.inputs().end();
      call.outputs.push_back(aliased ? &aliasedOutput_ : &activations_[id]);
      call.outputSlotShapes.push_back(&slotShapes_[id]);
    }
    const Kernel &kernel = *kernels_.find(inst.op());
    LLMIR_RETURN_IF_ERROR(kernel(call).withContext(
        "instruction " + std::to_string(i) + " (" +
        proto::Opcode_Name(inst.op()) + ")"));
    for (size_t o = 0; o < call.outputs.size(); ++o)
      if (call.outputs[o] == &aliasedOutput_)
        std::swap(aliasedOutput_, activations_[inst.outputs(static_cast<int>(o))]);
  }
  if (!program_->has_output())
    return Tensor();
  return activations_[program_->output_slot()];
}

} // namespace llmir::engine
