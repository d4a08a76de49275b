// What the Executor needs from a backend (ggml-backend's idea): the backend
// owns its buffers (weights, activations, KV cache), its kernel table and its
// synchronisation; the Executor owns the bound program and the step loop.
#pragma once

#include "Binding.h"
#include "llmir/engine/Device.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Sampler.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/Tensor.h"

#include <deque>
#include <memory>
#include <span>

namespace llmir::engine {

class Communicator;

class ExecutionBackend {
public:
  virtual ~ExecutionBackend() = default;

  /// Takes one weight slot's tensor (shape and dtype already checked).
  virtual Status loadWeight(uint32_t slot, WeightTensor weight) = 0;
  /// After the weights: allocates the KV cache. `shape.numBlocks` 0 lets the
  /// backend size it (CUDA: from free memory), otherwise it is exact.
  virtual Status allocateKvCache(const KvCacheShape &shape) = 0;
  virtual const KvCacheShape &kvCacheShape() const = 0;
  /// Bytes of one element of the KV cache (4 for f32, 2 for bf16).
  virtual size_t kvElementBytes() const = 0;
  /// Copies physical block `block` (in range) out of / into the cache, in
  /// the layout of Executor::readKvBlock. Waits for the device.
  virtual Status readKvBlock(int32_t block, std::byte *out) = 0;
  virtual Status writeKvBlock(int32_t block, const std::byte *in) = 0;

  /// Makes the step's tables available to the kernels (validated step).
  virtual Status beginStep(const StepInput &step) = 0;
  virtual Status run(const BoundInstruction &inst) = 0;
  /// Every instruction of the program, in order (after beginStep). A
  /// backend may replay a recorded step instead (CUDA graphs); this one
  /// runs them one by one.
  virtual Status runAll(const std::vector<BoundInstruction> &instructions) {
    for (const BoundInstruction &inst : instructions)
      LLMIR_RETURN_IF_ERROR(run(inst).withContext(inst.name));
    return Status::ok();
  }
  /// A host copy of activation slot `slot` as the last instruction left it
  /// (waits for the device).
  virtual Result<Tensor> read(uint32_t slot) = 0;
  /// Greedy ids of the rows of slot `slot` ([rows, vocab] logits): the
  /// lowest index of each row's maximum, as engine::argmax.
  virtual Result<std::vector<int32_t>> argmaxRows(uint32_t slot);
  /// The token of each row of slot `slot` as Sampler::sample(row, uniform)
  /// draws it (rows.size() == the slot's rows), with its logprob when asked.
  virtual Result<std::vector<SampledToken>> sampleRows(uint32_t slot,
                                                       std::span<const RowSampling> rows);

  /// The tokens of slot `slot`'s rows, drawn as sampleRows(slot, rows)
  /// draws them (with `rows` empty, the greedy ids of argmaxRows) but not
  /// waited for (Executor::launchStep): collectTokens() returns the oldest
  /// launched ones. Returns the rows. This one draws them at once and keeps
  /// them.
  virtual Result<int64_t> launchTokens(uint32_t slot, std::span<const RowSampling> rows);
  virtual Result<std::vector<SampledToken>> collectTokens();
  /// Whether beginStep takes a step's tokens from the last launched ones
  /// itself (StepInput::tokensFromLastLaunch, on the device); when not, the
  /// executor puts lastLaunchedIds() in the step on the host.
  virtual bool takesTokensFromLastLaunch() const { return false; }
  const std::vector<int32_t> &lastLaunchedIds() const { return lastLaunched_; }
  /// What runs a prompt's attention beside the backend's own kernels (the
  /// CUDA backend's cuDNN, its plans or why not); empty for none.
  virtual std::string promptAttentionLibrary() { return {}; }

private:
  std::deque<std::vector<SampledToken>> launched_; // not yet collected, oldest first
  std::vector<int32_t> lastLaunched_;
};

struct BackendOptions {
  unsigned numThreads = 0;         // CPU kernel threads (0: hardware)
  double gpuMemoryFraction = 0.9;  // CUDA: share of the device's memory
  bool bf16KvCache = false;        // KV cache elements bf16 instead of f32
  bool bf16Products = false;       // medium matmul precision: bf16 activations x bf16 weights
};

std::unique_ptr<ExecutionBackend>
createCpuBackend(const BoundProgram &program, const BackendOptions &options,
                 Communicator *comm);

/// Fails when this build has no CUDA backend, when no such device exists, or
/// when it cannot be initialised. Defined by CudaBackend.cpp, or by
/// CudaUnavailable.cpp in a build without the CUDA toolkit.
Result<std::unique_ptr<ExecutionBackend>>
createCudaBackend(const BoundProgram &program, int deviceIndex,
                  const BackendOptions &options, Communicator *comm);

} // namespace llmir::engine
