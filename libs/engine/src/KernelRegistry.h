// Opcode -> CPU kernel. The CPU backend binds each instruction's operands
// into a KernelCall and runs the kernel registered for its opcode; the
// instruction's attributes arrive decoded (Binding.h).
#pragma once

#include "Binding.h"
#include "llmir/engine/Tensor.h"
#include "llmir/support/Status.h"

#include <functional>
#include <unordered_map>
#include <vector>

namespace llmir::engine {

class Communicator;
class KvCache;
class ThreadPool;
struct StepInput;

/// One instruction input: an activation or a weight (exactly one is set).
struct Operand {
  const Tensor *activation = nullptr;
  const WeightTensor *weight = nullptr; // dtype and shape
  WeightView view;                      // a weight's elements (the backend's copy)
};

/// Everything a kernel may use.
struct KernelCall {
  const InstructionParams *params = nullptr;
  std::vector<Operand> inputs;
  std::vector<Tensor *> outputs;
  /// Declared shapes of the output slots (-1 in dim 0: the step's T).
  std::vector<const std::vector<int64_t> *> outputSlotShapes;
  const StepInput *step = nullptr;
  KvCache *kvCache = nullptr;
  ThreadPool *pool = nullptr;
  Communicator *comm = nullptr; // null when the program has no collectives
  /// Medium matmul precision: LINEAR with bf16 weights rounds x to bf16.
  bool bf16Products = false;
};

using Kernel = std::function<Status(KernelCall &)>;

class KernelRegistry {
public:
  void add(proto::Opcode op, Kernel kernel);
  /// Null when no kernel is registered for `op`.
  const Kernel *find(proto::Opcode op) const;

private:
  std::unordered_map<int, Kernel> kernels_;
};

/// A registry holding the CPU kernel of every ShardProgram v1 opcode.
KernelRegistry cpuKernelRegistry();

} // namespace llmir::engine
