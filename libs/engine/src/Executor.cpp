#include "llmir/engine/Executor.h"

#include "Binding.h"
#include "ExecutionBackend.h"
#include "llmir/engine/Sampler.h"
#include "llmir/model/Safetensors.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <string>

namespace llmir::engine {
namespace {

/// Pads dim `dim` (0 or 1) of `w` with zeros up to `size` (WeightSlice
/// padded_length: vocabulary padding, uneven head and MLP splits).
void padDim(WeightTensor &w, int dim, int64_t size) {
  if (w.shape.empty() || w.shape[static_cast<size_t>(dim)] >= size)
    return;
  const size_t element = weightElementSize(w.dtype);
  int64_t inner = 1; // elements after `dim`
  for (size_t d = static_cast<size_t>(dim) + 1; d < w.shape.size(); ++d)
    inner *= w.shape[d];
  int64_t outer = 1; // elements before `dim`
  for (size_t d = 0; d < static_cast<size_t>(dim); ++d)
    outer *= w.shape[d];
  const size_t have = static_cast<size_t>(w.shape[static_cast<size_t>(dim)] * inner) * element;
  const size_t want = static_cast<size_t>(size * inner) * element;
  std::vector<std::byte> padded(static_cast<size_t>(outer) * want, std::byte{0});
  for (int64_t o = 0; o < outer; ++o)
    std::copy_n(w.data.data() + o * have, have, padded.data() + o * want);
  w.data = std::move(padded);
  w.shape[static_cast<size_t>(dim)] = size;
}

Result<WeightTensor> loadWeight(const proto::WeightSlice &slice,
                                const BoundSlot &slot,
                                const WeightProvider &provider) {
  const std::vector<int64_t> &expected = slot.shape;
  const bool padded = slice.padded_length() > slice.length();
  const int dim = slice.dim();
  if (padded && (dim < 0 || dim > 1 || static_cast<size_t>(dim) >= expected.size() ||
                 expected[static_cast<size_t>(dim)] != slice.padded_length()))
    return Status::error("padded_length " + std::to_string(slice.padded_length()) +
                         " needs dim 0 or 1 of that size in the slot, the slot is " +
                         model::formatShape(expected));
  Result<WeightTensor> loaded = WeightTensor{};
  if (padded && slice.length() == 0) { // a rank holding only padding
    loaded->dtype = slot.dtype;
    loaded->shape = expected;
    loaded->shape[static_cast<size_t>(dim)] = 0;
  } else {
    loaded = provider(slice);
  }
  if (!loaded)
    return loaded.status();
  WeightTensor &w = *loaded;
  if (padded)
    padDim(w, dim, slice.padded_length());
  if (w.shape != slot.shape)
    return Status::error("provider returned shape " + model::formatShape(w.shape) +
                         "; the slot expects " + model::formatShape(slot.shape));
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

Result<KvCacheDType> parseKvCacheDType(std::string_view text) {
  if (text == "auto")
    return KvCacheDType::Auto;
  if (text == "f32" || text == "float32")
    return KvCacheDType::F32;
  if (text == "bf16" || text == "bfloat16")
    return KvCacheDType::BF16;
  return Status::error("KV cache dtype '" + std::string(text) +
                       "' is not one of: auto, f32, bf16");
}

Result<MatmulPrecision> parseMatmulPrecision(std::string_view text) {
  if (text == "highest")
    return MatmulPrecision::Highest;
  if (text == "medium")
    return MatmulPrecision::Medium;
  return Status::error("matmul precision '" + std::string(text) +
                       "' is not one of: highest, medium");
}

Result<std::unique_ptr<Executor>>
Executor::create(const proto::ShardProgram &program,
                 const WeightProvider &weights, const ExecutorOptions &options,
                 Communicator *comm) {
  Result<BoundProgram> bound = bindProgram(program, comm != nullptr);
  if (!bound)
    return bound.status().withContext("invalid ShardProgram");
  std::unique_ptr<Executor> executor(new Executor(
      std::make_unique<BoundProgram>(std::move(*bound)), options.device));
  const BoundProgram &p = *executor->program_;

  BackendOptions backendOptions;
  backendOptions.numThreads = options.numThreads;
  backendOptions.gpuMemoryFraction = options.gpuMemoryFraction;
  backendOptions.bf16Products = options.matmulPrecision == MatmulPrecision::Medium;
  bool sixteenBitWeights = false;
  for (const BoundSlot &slot : p.slots)
    sixteenBitWeights |= slot.isWeight && (slot.dtype == proto::BF16 || slot.dtype == proto::F16);
  switch (options.kvCacheDtype) {
  case KvCacheDType::Auto:
    // On the CPU auto stays f32: the Hugging Face reference accuracy (1e-4)
    // holds only for an f32 cache, and bf16 there is an explicit choice.
    backendOptions.bf16KvCache = options.device.isCuda() && sixteenBitWeights;
    break;
  case KvCacheDType::F32:
    break;
  case KvCacheDType::BF16:
    backendOptions.bf16KvCache = true;
    break;
  }
  if (options.device.isCuda()) {
    auto backend =
        createCudaBackend(p, options.device.index, backendOptions, comm);
    if (!backend)
      return backend.status();
    executor->backend_ = std::move(*backend);
  } else {
    executor->backend_ = createCpuBackend(p, backendOptions, comm);
  }

  for (const proto::WeightSlice &slice : program.weights()) {
    Result<WeightTensor> w = loadWeight(slice, p.slots[slice.slot()], weights);
    Status loaded = w ? executor->backend_->loadWeight(slice.slot(), std::move(*w))
                      : w.status();
    if (!loaded.isOk())
      return loaded.withContext("loading weight '" + slice.tensor_name() +
                                "' into slot " + std::to_string(slice.slot()));
  }
  KvCacheShape cacheShape = p.kvCache;
  if (options.numKvBlocks)
    cacheShape.numBlocks = options.numKvBlocks;
  else if (options.device.isCuda() && options.gpuMemoryFraction > 0)
    cacheShape.numBlocks = 0; // the backend fills its memory share
  LLMIR_RETURN_IF_ERROR(executor->backend_->allocateKvCache(cacheShape).withContext(
      "KV cache (kv_cache spec, blocks from ExecutorOptions.numKvBlocks or "
      "kv_cache.num_blocks)"));
  return executor;
}

Executor::Executor(std::unique_ptr<BoundProgram> program, Device device)
    : program_(std::move(program)), device_(device) {}

Executor::~Executor() = default;

const KvCacheShape &Executor::kvCacheShape() const {
  return backend_->kvCacheShape();
}

const char *Executor::kvCacheDtypeName() const {
  return kvElementBytes() == 2 ? "bf16" : "f32";
}

size_t Executor::kvElementBytes() const { return backend_->kvElementBytes(); }

size_t Executor::kvBlockBytes() const {
  const KvCacheShape &shape = kvCacheShape();
  return static_cast<size_t>(2 * shape.numLayers * shape.blockSize * shape.numKvHeads *
                             shape.headDim) *
         kvElementBytes();
}

namespace {
Status checkBlockTransfer(int32_t block, size_t bytes, const KvCacheShape &shape,
                          size_t blockBytes) {
  if (block < 0 || block >= shape.numBlocks)
    return Status::error("KV block " + std::to_string(block) + " is outside [0, " +
                         std::to_string(shape.numBlocks) + ")");
  if (bytes != blockBytes)
    return Status::error("a KV block has " + std::to_string(blockBytes) +
                         " bytes on this rank, the buffer " + std::to_string(bytes));
  return Status::ok();
}
} // namespace

Status Executor::readKvBlock(int32_t block, std::span<std::byte> out) {
  LLMIR_RETURN_IF_ERROR(checkBlockTransfer(block, out.size(), kvCacheShape(), kvBlockBytes()));
  return backend_->readKvBlock(block, out.data());
}

Status Executor::writeKvBlock(int32_t block, std::span<const std::byte> in) {
  LLMIR_RETURN_IF_ERROR(checkBlockTransfer(block, in.size(), kvCacheShape(), kvBlockBytes()));
  return backend_->writeKvBlock(block, in.data());
}

bool Executor::hasKvTransfers() const { return !program_->kvTransfers.empty(); }

namespace {
bool programHas(const BoundProgram &program, proto::Opcode op) {
  return std::any_of(program.kvTransfers.begin(), program.kvTransfers.end(),
                     [&](const BoundKvTransfer &t) { return t.op == op; });
}
} // namespace

Result<KvTransferResult> Executor::transferKvBlocks(const std::vector<KvBlockRun> &loads,
                                                    const std::vector<KvBlockRun> &stores) {
  LLMIR_RETURN_IF_ERROR(validateKvBlockRuns(loads, kvCacheShape(), "load"));
  LLMIR_RETURN_IF_ERROR(validateKvBlockRuns(stores, kvCacheShape(), "store"));
  if (!kvTransferHook_)
    return Status::error("KV block transfer: the executor has no KV transfer hook");
  if (!loads.empty() && !programHas(*program_, proto::KV_LOAD))
    return Status::error("KV block transfer: the program has no KV_LOAD (compiled "
                         "without kv_store)");
  if (!stores.empty() && !programHas(*program_, proto::KV_STORE))
    return Status::error("KV block transfer: the program has no KV_STORE (compiled "
                         "without kv_store)");
  KvTransferResult result;
  std::vector<KvBlockRun> pending = loads; // shrinks to what every KV_LOAD filled
  result.loaded.resize(loads.size());
  for (size_t r = 0; r < loads.size(); ++r)
    result.loaded[r] = static_cast<uint32_t>(loads[r].blocks.size());
  for (const BoundKvTransfer &t : program_->kvTransfers) {
    if (t.op == proto::KV_STORE) {
      if (stores.empty())
        continue;
      auto stored = kvTransferHook_->storeKvBlocks(stores, t.layerBegin, t.layerEnd);
      if (!stored)
        return stored.status().withContext(t.name);
      result.stored += *stored;
      continue;
    }
    if (loads.empty())
      continue;
    auto loaded = kvTransferHook_->loadKvBlocks(pending, t.layerBegin, t.layerEnd);
    if (!loaded)
      return loaded.status().withContext(t.name);
    if (loaded->size() != pending.size())
      return Status::error(t.name + ": the KV transfer hook answered " +
                           std::to_string(loaded->size()) + " runs of " +
                           std::to_string(pending.size()));
    for (size_t r = 0; r < pending.size(); ++r) {
      result.loaded[r] = std::min(result.loaded[r], (*loaded)[r]);
      pending[r].blocks.resize(result.loaded[r]);
    }
  }
  return result;
}

Status Executor::runKvTransfer(const BoundKvTransfer &t, const StepInput &step) {
  if (t.op == proto::KV_STORE) {
    if (step.kvStores.empty() || !kvTransferHook_)
      return Status::ok(); // nothing to store, or no store: blocks stay local
    auto stored = kvTransferHook_->storeKvBlocks(step.kvStores, t.layerBegin, t.layerEnd);
    return stored ? Status::ok() : stored.status();
  }
  if (step.kvLoads.empty())
    return Status::ok();
  // Attention after this reads the blocks: one that did not come fails the
  // step rather than let attention read whatever the block held.
  auto loaded = kvTransferHook_->loadKvBlocks(step.kvLoads, t.layerBegin, t.layerEnd);
  if (!loaded)
    return loaded.status();
  for (size_t r = 0; r < step.kvLoads.size(); ++r) {
    const size_t want = step.kvLoads[r].blocks.size();
    const size_t got = r < loaded->size() ? (*loaded)[r] : 0;
    if (got < want)
      return Status::error("load run " + std::to_string(r) + ": " + std::to_string(got) +
                           " of its " + std::to_string(want) +
                           " blocks came from the store; the step attends over all of them");
  }
  return Status::ok();
}

Status Executor::runStep(const StepInput &input, const InstructionObserver &observer) {
  LLMIR_RETURN_IF_ERROR(
      validateStepInput(input, kvCacheShape()).withContext("invalid step"));
  LLMIR_RETURN_IF_ERROR(validateKvBlockRuns(input.kvLoads, kvCacheShape(), "load")
                            .withContext("invalid step"));
  LLMIR_RETURN_IF_ERROR(validateKvBlockRuns(input.kvStores, kvCacheShape(), "store")
                            .withContext("invalid step"));
  if (!input.kvLoads.empty() && (!kvTransferHook_ || !programHas(*program_, proto::KV_LOAD)))
    return Status::error(std::string("invalid step: it names KV blocks to load, but ") +
                         (kvTransferHook_ ? "the program has no KV_LOAD (compiled without "
                                            "kv_store)"
                                          : "the executor has no KV transfer hook"));
  const int64_t vocab = program_->vocabSize;
  for (size_t t = 0; vocab > 0 && !input.tokensFromLastLaunch && t < input.tokenIds.size(); ++t)
    if (input.tokenIds[t] < 0 || input.tokenIds[t] >= vocab)
      return Status::error("invalid step: token " + std::to_string(t) +
                           " has id " + std::to_string(input.tokenIds[t]) +
                           ", outside the vocabulary of " +
                           std::to_string(vocab));
  LLMIR_RETURN_IF_ERROR(backend_->beginStep(input));
  // A step that loads no blocks runs the compute instructions as a program
  // without KV_LOAD / KV_STORE would (CUDA graphs included), then its
  // KV_STOREs: only attention writes the cache and a KV_STORE follows the
  // attention of its layers (validated at load), so after the last
  // instruction its blocks hold what they held at the KV_STORE. A step that
  // loads runs the instructions one by one with the transfers in between.
  const bool transfers = kvTransferHook_ && !program_->kvTransfers.empty();
  if (!observer && !(transfers && !input.kvLoads.empty())) {
    LLMIR_RETURN_IF_ERROR(backend_->runAll(program_->instructions));
    for (const BoundKvTransfer &t : program_->kvTransfers)
      if (transfers && t.op == proto::KV_STORE && !input.kvStores.empty())
        LLMIR_RETURN_IF_ERROR(runKvTransfer(t, input).withContext(t.name));
    return Status::ok();
  }
  auto transfer = program_->kvTransfers.begin();
  auto transfersBefore = [&](size_t i) -> Status {
    for (; transfers && transfer != program_->kvTransfers.end() && transfer->before <= i;
         ++transfer)
      LLMIR_RETURN_IF_ERROR(runKvTransfer(*transfer, input).withContext(transfer->name));
    return Status::ok();
  };
  for (size_t i = 0; i < program_->instructions.size(); ++i) {
    LLMIR_RETURN_IF_ERROR(transfersBefore(i));
    const BoundInstruction &inst = program_->instructions[i];
    LLMIR_RETURN_IF_ERROR(backend_->run(inst).withContext(inst.name));
    if (observer && !inst.outputs.empty()) {
      Result<Tensor> out = backend_->read(inst.outputs.front());
      if (!out)
        return out.status().withContext(inst.name);
      observer(i, *out);
    }
  }
  return transfersBefore(program_->instructions.size());
}

Status Executor::noStepLaunched(const char *what) const {
  if (launchedInFlight_ == 0)
    return Status::ok();
  return Status::error(std::string(what) + ": " + std::to_string(launchedInFlight_) +
                       " launched step(s) not collected yet (collectStep)");
}

Status Executor::launchStep(const StepInput &input, std::span<const RowSampling> sampling) {
  if (!program_->hasOutput)
    return Status::error("launchStep: this stage has no output (logits)");
  if (launchedInFlight_ >= kMaxLaunchedSteps)
    return Status::error("launchStep: " + std::to_string(launchedInFlight_) +
                         " steps launched and not collected (at most " +
                         std::to_string(kMaxLaunchedSteps) + ")");
  const StepInput *run = &input;
  if (input.tokensFromLastLaunch) {
    if (lastLaunchedRows_ != input.numTokens())
      return Status::error(
          "launchStep: the step takes its " + std::to_string(input.numTokens()) +
          " tokens from the last launched step's, which " +
          (lastLaunchedRows_ < 0 ? std::string("does not exist")
                                 : "has " + std::to_string(lastLaunchedRows_) + " rows"));
    if (!backend_->takesTokensFromLastLaunch()) {
      // Assigned field by field into a kept step: the vectors keep their
      // capacity, so a decode step copies its tables without allocating.
      withTokens_ = input;
      withTokens_.tokenIds = backend_->lastLaunchedIds();
      withTokens_.tokensFromLastLaunch = false;
      run = &withTokens_;
    }
  }
  LLMIR_RETURN_IF_ERROR(runStep(*run, {}));
  Result<int64_t> rows = backend_->launchTokens(program_->outputSlot, sampling);
  if (!rows)
    return rows.status();
  lastLaunchedRows_ = *rows;
  ++launchedInFlight_;
  return Status::ok();
}

bool Executor::launchesAhead() const { return backend_->takesTokensFromLastLaunch(); }

std::string Executor::promptAttentionLibrary() { return backend_->promptAttentionLibrary(); }

Result<std::vector<SampledToken>> Executor::collectStep() {
  if (launchedInFlight_ == 0)
    return Status::error("collectStep: no launched step to collect");
  --launchedInFlight_;
  return backend_->collectTokens();
}

Result<Tensor> Executor::step(const StepInput &input,
                              const InstructionObserver &observer) {
  LLMIR_RETURN_IF_ERROR(noStepLaunched("step"));
  lastLaunchedRows_ = -1;
  LLMIR_RETURN_IF_ERROR(runStep(input, observer));
  if (!program_->hasOutput)
    return Tensor();
  return backend_->read(program_->outputSlot);
}

Result<std::vector<int32_t>> Executor::stepGreedy(const StepInput &input) {
  if (!program_->hasOutput)
    return Status::error("stepGreedy: this stage has no output (logits)");
  LLMIR_RETURN_IF_ERROR(noStepLaunched("stepGreedy"));
  lastLaunchedRows_ = -1;
  LLMIR_RETURN_IF_ERROR(runStep(input, {}));
  return backend_->argmaxRows(program_->outputSlot);
}

Result<std::vector<SampledToken>> Executor::stepSample(const StepInput &input,
                                                       std::span<const RowSampling> rows) {
  if (!program_->hasOutput)
    return Status::error("stepSample: this stage has no output (logits)");
  LLMIR_RETURN_IF_ERROR(noStepLaunched("stepSample"));
  lastLaunchedRows_ = -1;
  LLMIR_RETURN_IF_ERROR(runStep(input, {}));
  return backend_->sampleRows(program_->outputSlot, rows);
}

Result<std::vector<SampledToken>>
ExecutionBackend::sampleRows(uint32_t slot, std::span<const RowSampling> rows) {
  Result<Tensor> logits = read(slot);
  if (!logits)
    return logits.status();
  const int64_t count = logits->shape.size() == 2 ? logits->shape[0] : 0;
  const int64_t V = count ? logits->shape[1] : 0;
  if (count != static_cast<int64_t>(rows.size()) || V == 0)
    return Status::error("sampleRows: " + std::to_string(rows.size()) +
                         " rows of sampling parameters for logits " +
                         model::formatShape(logits->shape));
  std::vector<SampledToken> tokens(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    std::span<const float> row(logits->data.data() + static_cast<int64_t>(r) * V,
                               static_cast<size_t>(V));
    tokens[r].id = Sampler(rows[r].params).sample(row, rows[r].uniform);
    if (rows[r].logprob)
      tokens[r].logprob = static_cast<float>(row[static_cast<size_t>(tokens[r].id)] -
                                             logNormalizer(row));
  }
  return tokens;
}

Result<int64_t> ExecutionBackend::launchTokens(uint32_t slot,
                                               std::span<const RowSampling> rows) {
  std::vector<SampledToken> tokens;
  if (rows.empty()) {
    Result<std::vector<int32_t>> ids = argmaxRows(slot);
    if (!ids)
      return ids.status();
    tokens.resize(ids->size());
    for (size_t r = 0; r < ids->size(); ++r)
      tokens[r].id = (*ids)[r];
  } else {
    Result<std::vector<SampledToken>> sampled = sampleRows(slot, rows);
    if (!sampled)
      return sampled.status();
    tokens = std::move(*sampled);
  }
  lastLaunched_.resize(tokens.size());
  for (size_t r = 0; r < tokens.size(); ++r)
    lastLaunched_[r] = tokens[r].id;
  launched_.push_back(std::move(tokens));
  return static_cast<int64_t>(lastLaunched_.size());
}

Result<std::vector<SampledToken>> ExecutionBackend::collectTokens() {
  if (launched_.empty())
    return Status::error("collectTokens: nothing launched");
  std::vector<SampledToken> tokens = std::move(launched_.front());
  launched_.pop_front();
  return tokens;
}

Result<std::vector<int32_t>> ExecutionBackend::argmaxRows(uint32_t slot) {
  Result<Tensor> logits = read(slot);
  if (!logits)
    return logits.status();
  std::vector<int32_t> ids;
  const int64_t rows = logits->shape.size() == 2 ? logits->shape[0] : 0;
  const int64_t V = rows ? logits->shape[1] : 0;
  for (int64_t r = 0; r < rows && V > 0; ++r)
    ids.push_back(argmax(std::span<const float>(logits->data.data() + r * V,
                                                static_cast<size_t>(V))));
  return ids;
}

} // namespace llmir::engine
