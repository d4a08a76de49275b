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
struct BoundKvTransfer;

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
/// ~1e-2). On the CPU medium rounds the activations of every product with
/// bf16 weights to bf16, prefill and decode alike, and multiplies them with
/// AVX512-BF16 `vdpbf16ps` (f32 sums), as llama.cpp's bf16 path does (the
/// demo model's prompt logits within 4e-3); other weights stay f32.
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

/// Moves KV blocks between an executor's cache and the KV-block store for
/// the program's KV_LOAD / KV_STORE instructions (docs/kv-store.md);
/// kvstore::RankKvStore implements it over its store client. The engine
/// knows no store: this is its only view of one. Called on the thread that
/// runs the step, between instructions; it may call the executor's
/// readKvBlock / writeKvBlock.
class KvTransferHook {
public:
  virtual ~KvTransferHook() = default;
  /// Fills the blocks of `runs` (local layers [layerBegin, layerEnd)) and
  /// returns, per run, how many of its leading blocks it wrote; the others
  /// are untouched. An error: none is usable (the store failed).
  virtual Result<std::vector<uint32_t>> loadKvBlocks(const std::vector<KvBlockRun> &runs,
                                                     uint32_t layerBegin, uint32_t layerEnd) = 0;
  /// Copies the blocks of `runs` out of the cache for the store and returns
  /// how many it took (a full queue drops blocks: not an error).
  virtual Result<uint32_t> storeKvBlocks(const std::vector<KvBlockRun> &runs,
                                         uint32_t layerBegin, uint32_t layerEnd) = 0;
};

/// What Executor::transferKvBlocks moved.
struct KvTransferResult {
  /// Per load run: the leading blocks every KV_LOAD of the program filled.
  std::vector<uint32_t> loaded;
  /// Blocks the KV_STOREs took (summed over them).
  uint32_t stored = 0;
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

  /// Decode with the host a step ahead of the device: runs `step` and
  /// draws its rows' tokens as stepSample(step, sampling) does (with
  /// `sampling` empty, each row's greedy id as stepGreedy) but returns
  /// without waiting for them, so the host can prepare and launch the next
  /// step while this one runs; collectStep() returns the oldest launched
  /// step's tokens (logprobs where its rows asked).
  /// A step with tokensFromLastLaunch takes its tokens from those of the
  /// step launched just before it (one token per output row of that step):
  /// on the device, without a host round trip, where the backend takes them
  /// itself (ExecutionBackend::takesTokensFromLastLaunch); otherwise the
  /// backend draws the tokens at launch and the executor puts them in the
  /// next step on the host (the CPU backend, CUDA pipeline stages).
  /// At most kMaxLaunchedSteps steps wait to be collected; step(),
  /// stepGreedy() and stepSample() fail while any does.
  static constexpr int kMaxLaunchedSteps = 2;
  Status launchStep(const StepInput &step, std::span<const RowSampling> sampling = {});
  Result<std::vector<SampledToken>> collectStep();
  /// Whether launchStep returns before the step has run and a
  /// tokensFromLastLaunch step takes its tokens on the device (a CUDA
  /// backend of one stage): then launching a step behind the running one
  /// keeps the device busy. Elsewhere the step runs at launch, and a step
  /// launched behind only delays the answer of the one before it.
  bool launchesAhead() const;
  /// What runs a prompt's attention beside the backend's own kernels: on a
  /// CUDA device cuDNN's version and the plans built so far, or why cuDNN
  /// is not used; empty on the CPU.
  std::string promptAttentionLibrary();

  const KvCacheShape &kvCacheShape() const;

  /// The KV_LOAD / KV_STORE instructions run through `hook` (null: they do
  /// nothing, and a step that names blocks to load fails). `hook` must
  /// outlive its use; set it between steps.
  void setKvTransferHook(KvTransferHook *hook) { kvTransferHook_ = hook; }
  /// Whether the program has KV_LOAD / KV_STORE instructions (compiled with
  /// CompileOptions::kvStore).
  bool hasKvTransfers() const;
  /// Runs only the program's KV_LOAD and KV_STORE instructions, in program
  /// order, for `loads` and `stores`: a transfer between steps (no tokens;
  /// none of the blocks may be used by a step in flight). Unlike in a step,
  /// a load that fills only a leading part of a run is no error: the result
  /// says how much, and later KV_LOADs are asked for that part only. Fails
  /// without a hook, when the program has no KV_LOAD (loads) or KV_STORE
  /// (stores), on runs outside the cache, or when the hook fails.
  Result<KvTransferResult> transferKvBlocks(const std::vector<KvBlockRun> &loads,
                                            const std::vector<KvBlockRun> &stores);

  /// The KV cache's element type: "f32" or "bf16", and its bytes (4 or 2).
  const char *kvCacheDtypeName() const;
  size_t kvElementBytes() const;
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
  /// Fails while launchStep steps wait to be collected.
  Status noStepLaunched(const char *what) const;
  /// One KV_LOAD / KV_STORE inside a step.
  Status runKvTransfer(const BoundKvTransfer &transfer, const StepInput &step);

  std::unique_ptr<BoundProgram> program_;
  std::unique_ptr<ExecutionBackend> backend_;
  int launchedInFlight_ = 0;       // launchStep steps not yet collected
  int64_t lastLaunchedRows_ = -1;  // output rows of the last launchStep step
  StepInput withTokens_;           // launchStep: a step given the last tokens on the host
  Device device_;
  KvTransferHook *kvTransferHook_ = nullptr;
};

} // namespace llmir::engine
