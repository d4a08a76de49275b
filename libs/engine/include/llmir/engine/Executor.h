// Runs one rank's ShardProgram: validates it and loads its weights at
// create(), then executes its instructions in order for each step.
#pragma once

#include "llmir/engine/KernelRegistry.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/ProtoFwd.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/Tensor.h"
#include "llmir/support/Status.h"

#include <memory>

namespace llmir::engine {

class Communicator;
class ThreadPool;

struct ExecutorOptions {
  /// KV blocks to allocate; 0 uses program.kv_cache().num_blocks.
  int64_t numKvBlocks = 0;
  /// Kernel threads; 0 uses std::thread::hardware_concurrency().
  unsigned numThreads = 0;
};

class Executor {
public:
  /// Fails when the program is malformed (unknown version, bad slot ids,
  /// operand counts, missing attributes, collectives without `comm`), when a
  /// weight cannot be loaded or has the wrong shape, or when the KV cache
  /// has no size. `comm` must outlive the executor.
  static Result<std::unique_ptr<Executor>>
  create(const proto::ShardProgram &program, const WeightProvider &weights,
         const ExecutorOptions &options, Communicator *comm = nullptr);
  /// As above with another kernel registry (another backend).
  static Result<std::unique_ptr<Executor>>
  create(const proto::ShardProgram &program, const WeightProvider &weights,
         const ExecutorOptions &options, KernelRegistry kernels,
         Communicator *comm);

  ~Executor();
  Executor(const Executor &) = delete;
  Executor &operator=(const Executor &) = delete;

  /// Validates `step` (against the KV cache and, when the program names it,
  /// the vocabulary size), runs every instruction and returns the output slot (logits
  /// [S, vocab]); an empty tensor on a stage without output.
  Result<Tensor> step(const StepInput &step);

  const KvCacheShape &kvCacheShape() const { return cache_.shape(); }

private:
  Executor(std::unique_ptr<proto::ShardProgram> program, KvCache cache,
           KernelRegistry kernels, unsigned numThreads, Communicator *comm);

  std::unique_ptr<proto::ShardProgram> program_;
  KvCache cache_;
  KernelRegistry kernels_;
  std::unique_ptr<ThreadPool> pool_;
  Communicator *comm_;
  std::vector<WeightTensor> weights_;  // by slot id (empty for activations)
  std::vector<Tensor> activations_;    // by slot id (empty for weights)
  std::vector<std::vector<int64_t>> slotShapes_; // declared, by slot id
  Tensor aliasedOutput_; // output of an instruction that also reads it
};

} // namespace llmir::engine
