// Runs one rank's ShardProgram: validates and binds it and loads its weights
// at create(), then executes its instructions in order for each step, on the
// backend of ExecutorOptions::device (CPU kernels, or CUDA).
#pragma once

#include "llmir/engine/Device.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/ProtoFwd.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/Sampler.h"
#include "llmir/engine/Tensor.h"
#include "llmir/support/Status.h"

#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace llmir::engine {

class Communicator;
class ExecutionBackend;
struct BoundProgram;

/// Element type of the KV cache. Auto follows the model, as vLLM's "auto":
/// bf16 on a CUDA device when the weights are 16-bit, f32 otherwise (on the
/// CPU auto is f32; bf16 there halves attention's reads at some accuracy).
enum class KvCacheDType { Auto, F32, BF16 };
/// "auto", "f32" (or "float32"), "bf16" (or "bfloat16").
Result<KvCacheDType> parseKvCacheDType(std::string_view text);

/// Precision of the products with 16-bit weights, as PyTorch's
/// float32_matmul_precision: Highest keeps them within f32 rounding (the
/// activations go in as two bf16 halves; the Hugging Face references hold
/// at 1e-4); Medium rounds the activations to bf16 for the tensor cores, as
/// a bf16 model computes (about half the work of large steps; logits within
/// ~1e-2). CUDA only: the CPU computes in f32 either way.
enum class MatmulPrecision { Highest, Medium };
/// "highest" or "medium".
Result<MatmulPrecision> parseMatmulPrecision(std::string_view text);

struct ExecutorOptions {
  /// KV blocks to allocate; 0 uses program.kv_cache().num_blocks, and on a
  /// CUDA device with gpuMemoryFraction > 0 fills that share of its memory.
  int64_t numKvBlocks = 0;
  /// CPU kernel threads; 0 uses std::thread::hardware_concurrency().
  unsigned numThreads = 0;
  Device device;
  /// CUDA: the share of the device's memory this executor may use (weights,
  /// activations and KV cache), vLLM's gpu_memory_utilization. 0 keeps the
  /// program's planned block count.
  double gpuMemoryFraction = 0.0;
  KvCacheDType kvCacheDtype = KvCacheDType::Auto;
  MatmulPrecision matmulPrecision = MatmulPrecision::Highest;
};

/// Sees each instruction's first output after it ran (a host copy): for
/// comparing backends instruction by instruction. Slows every step.
using InstructionObserver =
    std::function<void(size_t instruction, const Tensor &output)>;

class Executor {
public:
  /// Fails when the program is malformed (unknown version, bad slot ids,
  /// operand counts, missing or unknown attributes, collectives without
  /// `comm`), when the device cannot be used, when a weight cannot be loaded
  /// or has the wrong shape, or when the KV cache has no size. `comm` must
  /// outlive the executor; on a CUDA device it receives device pointers when
  /// it says it takes them (Communicator::takesDeviceMemory).
  static Result<std::unique_ptr<Executor>>
  create(const proto::ShardProgram &program, const WeightProvider &weights,
         const ExecutorOptions &options, Communicator *comm = nullptr);

  ~Executor();
  Executor(const Executor &) = delete;
  Executor &operator=(const Executor &) = delete;

  /// Validates `step` (against the KV cache and, when the program names it,
  /// the vocabulary size), runs every instruction and returns the output slot (logits
  /// [S, vocab]); an empty tensor on a stage without output.
  Result<Tensor> step(const StepInput &step,
                      const InstructionObserver &observer = {});
  /// The same step, then the greedy id (engine::argmax) of each output row.
  /// On a CUDA device the argmax runs there and only the ids cross to the
  /// host. Fails on a stage without output.
  Result<std::vector<int32_t>> stepGreedy(const StepInput &step);
  /// The same step, then one token per output row drawn as
  /// Sampler::sample(row, rows[r].uniform) draws it (and its logprob when
  /// rows[r].logprob). On a CUDA device the sampling runs there and only ids
  /// and logprobs cross to the host. Fails on a stage without output, or
  /// when rows.size() is not the number of output (logits) rows.
  Result<std::vector<SampledToken>> stepSample(const StepInput &step,
                                               std::span<const RowSampling> rows);

  const KvCacheShape &kvCacheShape() const;

  /// The KV cache's element type: "f32" or "bf16".
  const char *kvCacheDtypeName() const;
  /// Bytes of one physical KV block: for every layer, its keys then its
  /// values ([block_size][kv_heads][head_dim] each).
  size_t kvBlockBytes() const;
  /// Copies physical block `block` out of the cache into `out` (exactly
  /// kvBlockBytes()), or from `in` into it (the KV store's block transfers).
  /// Fails on a block id out of range or a buffer of another size; must not
  /// run concurrently with step().
  Status readKvBlock(int32_t block, std::span<std::byte> out);
  Status writeKvBlock(int32_t block, std::span<const std::byte> in);
  const Device &device() const { return device_; }

private:
  Executor(std::unique_ptr<BoundProgram> program, Device device);
  Status runStep(const StepInput &step, const InstructionObserver &observer);

  std::unique_ptr<BoundProgram> program_;
  std::unique_ptr<ExecutionBackend> backend_;
  Device device_;
};

} // namespace llmir::engine
