// llm-plan-memory: after communication insertion, sums what each device of
// each pipeline stage holds, from the partitioned IR itself: its (sharded)
// llm.weight tensors, the activations of max_batch_tokens (the largest op
// working set plus the residual stream) and its local KV cache; the KV cache
// takes the memory left (kMemoryUtilization of the device). A stage that
// cannot hold its weights, activations and one max_context sequence of KV
// cache is an error naming the device, the need and the capacity.
#include "MemoryPlan.h"
#include "Partition.h"
#include "PassDetail.h"
#include "PlanSearch.h"
#include "llmir/compiler/Passes.h"

#include "llmir/IR/LLMOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"

#include <algorithm>
#include <set>
#include <string>
#include <tuple>
#include <utility>

using namespace mlir;

namespace llmir::compiler {
namespace {

constexpr double kActivationBytes = 4;

double byteSize(Type type) {
  auto shaped = type.cast<ShapedType>();
  return static_cast<double>(shaped.getNumElements()) *
         std::max<unsigned>(1, shaped.getElementTypeBitWidth() / 8);
}

double activationWidth(Value v) {
  auto type = v.getType().dyn_cast<RankedTensorType>();
  if (!type || type.getRank() != 2 || v.getDefiningOp<llm::WeightOp>())
    return 0;
  return static_cast<double>(type.getShape().back());
}

struct StageNeed {
  double weights = 0, peakPerToken = 0, hiddenPerToken = 0, kvPerToken = 0;
};

StageNeed measure(Region &region) {
  StageNeed need;
  // The lowering loads identical slices once (a tied LM head reads the
  // embedding's slot), so each is counted once.
  std::set<std::tuple<std::string, int32_t, int32_t>> loadedSlices;
  region.walk([&](Operation *op) {
    if (auto w = dyn_cast<llm::WeightOp>(op)) {
      if (loadedSlices
              .emplace(w.getName().str(), w.getShardDim().value_or(-1),
                       w.getNumShards().value_or(1))
              .second)
        need.weights += byteSize(w.getType());
      return;
    }
    double working = 0;
    for (Value in : op->getOperands())
      working += activationWidth(in);
    for (Value out : op->getResults())
      working += activationWidth(out);
    need.peakPerToken = std::max(need.peakPerToken, working * kActivationBytes);
    if (auto add = dyn_cast<llm::AddOp>(op))
      need.hiddenPerToken = activationWidth(add.getResult()) * kActivationBytes;
    auto cacheElementBytes = [](Value cache) -> double {
      auto paged = cache.getType().dyn_cast<llm::PagedKVCacheType>();
      Type element = paged ? paged.getElementType()
                           : cache.getType().cast<llm::ShardedKVCacheType>().getElementType();
      return std::max<unsigned>(1, element.getIntOrFloatBitWidth() / 8);
    };
    if (auto a = dyn_cast<llm::PagedAttentionOp>(op))
      need.kvPerToken += 2.0 * a.getNumKvHeads() * a.getHeadDim() * cacheElementBytes(a.getCache());
    if (auto a = dyn_cast<llm::DistributedAttentionOp>(op); a && a.isDecoderForm())
      need.kvPerToken +=
          2.0 * *a.getNumKvHeads() * a.getHeadDim() * cacheElementBytes(a.getKvCache());
    if (auto a = dyn_cast<llm::SequenceParallelAttentionOp>(op); a && a.isDecoderForm())
      need.kvPerToken +=
          2.0 * *a.getNumKvHeads() * *a.getHeadDim() * cacheElementBytes(a.getKvCache());
  });
  return need;
}

struct MemoryPlanningPass : MemoryPlanningBase<MemoryPlanningPass> {
  MemoryPlanningPass() = default;
  explicit MemoryPlanningPass(std::optional<ClusterSpec> spec) : spec(std::move(spec)) {}

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (!spec && !cluster.empty()) {
      auto loaded = loadClusterSpec(cluster);
      if (!loaded) {
        module.emitError() << loaded.message();
        return signalPassFailure();
      }
      spec = *loaded;
    }
    auto partition = readPartition(module);
    if (failed(partition))
      return signalPassFailure();
    ClusterSpec cluster = spec ? *spec : ClusterSpec{};
    if (!spec)
      cluster.devicesPerNode = partition->tp * partition->pp * partition->sp;
    auto step = module.lookupSymbol<func::FuncOp>("prefill");
    if (!step) {
      module.emitError("llm-plan-memory needs func.func @prefill");
      return signalPassFailure();
    }
    // The cache argument: paged, or sharded along the sequence (sp > 1).
    int64_t cacheMaxSeqLen = 0, blockSize = 0;
    for (BlockArgument arg : step.getArguments()) {
      if (auto c = arg.getType().dyn_cast<llm::PagedKVCacheType>())
        std::tie(cacheMaxSeqLen, blockSize) = std::pair(c.getMaxSeqLen(), c.getBlockSize());
      if (auto c = arg.getType().dyn_cast<llm::ShardedKVCacheType>())
        std::tie(cacheMaxSeqLen, blockSize) = std::pair(c.getMaxSeqLen(), c.getBlockSize());
    }
    if (blockSize == 0) {
      step.emitError("has no !llm.paged_kv_cache or !llm.sharded_kv_cache argument");
      return signalPassFailure();
    }
    SmallVector<std::pair<Operation *, Region *>> stages;
    for (auto stage : step.getBody().front().getOps<llm::PipelineStageOp>())
      stages.push_back({stage, &stage.getBody()});
    if (stages.empty())
      stages.push_back({step, &step.getBody()});

    const double usable = kMemoryUtilization * static_cast<double>(cluster.device.memoryBytes);
    const double tokens = static_cast<double>(cluster.serving.maxBatchTokens);
    const int64_t maxContext = std::min<int64_t>(cluster.serving.maxContext, cacheMaxSeqLen);
    MemoryPlan plan;
    plan.kvBlockSize = blockSize;
    for (size_t index = 0; index < stages.size(); ++index) {
      auto &stage = stages[index];
      StageNeed need = measure(*stage.second);
      double activations = tokens * (need.peakPerToken + 2 * need.hiddenPerToken);
      double blockBytes = need.kvPerToken * static_cast<double>(blockSize);
      double left = usable - need.weights - activations;
      int64_t blocks = left > 0 && blockBytes > 0 ? static_cast<int64_t>(left / blockBytes) : 0;
      // Every sp rank gets the same block table and a pool of the same
      // size (it only touches the blocks it owns), so one sequence needs all
      // its blocks on each device; per-rank pools are future work.
      int64_t neededBlocks = (maxContext + blockSize - 1) / blockSize;
      if (left <= 0 || blocks < neededBlocks) {
        int64_t firstRank = static_cast<int64_t>(index) * partition->tp * partition->sp;
        double kv = static_cast<double>(neededBlocks) * blockBytes;
        stage.first->emitError()
            << "stage " << index << " does not fit on " << cluster.device.kind
            << " device " << firstRank % cluster.devicesPerNode << " of node "
            << firstRank / cluster.devicesPerNode << " (ranks " << firstRank << "-"
            << firstRank + partition->tp * partition->sp - 1 << "): needs "
            << formatBytes(need.weights) << " of weights + " << formatBytes(activations)
            << " of activations + " << formatBytes(kv) << " of KV cache for one "
            << maxContext << "-token sequence = "
            << formatBytes(need.weights + activations + kv) << ", capacity "
            << formatBytes(usable) << " (" << static_cast<int>(kMemoryUtilization * 100)
            << "% of " << formatBytes(static_cast<double>(cluster.device.memoryBytes)) << ")";
        return signalPassFailure();
      }
      StageMemory m;
      m.weightBytes = static_cast<int64_t>(need.weights);
      m.activationBytes = static_cast<int64_t>(activations);
      m.kvBlocks = blocks;
      m.kvCacheBytes = static_cast<int64_t>(static_cast<double>(blocks) * blockBytes);
      plan.stages.push_back(m);
    }
    writeMemoryPlan(module, plan);
  }

  std::optional<ClusterSpec> spec;
};

} // namespace

void writeMemoryPlan(ModuleOp module, const MemoryPlan &plan) {
  Builder b(module.getContext());
  SmallVector<int64_t> weights, activations, kv, blocks;
  for (const StageMemory &s : plan.stages) {
    weights.push_back(s.weightBytes);
    activations.push_back(s.activationBytes);
    kv.push_back(s.kvCacheBytes);
    blocks.push_back(s.kvBlocks);
  }
  NamedAttrList attrs;
  attrs.set("kv_block_size", b.getI64IntegerAttr(plan.kvBlockSize));
  attrs.set("weight_bytes", b.getI64ArrayAttr(weights));
  attrs.set("activation_bytes", b.getI64ArrayAttr(activations));
  attrs.set("kv_cache_bytes", b.getI64ArrayAttr(kv));
  attrs.set("kv_blocks", b.getI64ArrayAttr(blocks));
  module->setAttr(kMemoryPlanAttr, attrs.getDictionary(module.getContext()));
}

std::optional<MemoryPlan> readMemoryPlan(ModuleOp module) {
  auto dict = module->getAttrOfType<DictionaryAttr>(kMemoryPlanAttr);
  if (!dict)
    return std::nullopt;
  auto ints = [&](StringRef key) {
    std::vector<int64_t> out;
    if (auto array = dict.getAs<ArrayAttr>(key))
      for (Attribute a : array)
        if (auto i = a.dyn_cast<IntegerAttr>())
          out.push_back(i.getInt());
    return out;
  };
  auto weights = ints("weight_bytes"), activations = ints("activation_bytes"),
       kv = ints("kv_cache_bytes"), blocks = ints("kv_blocks");
  auto blockSize = dict.getAs<IntegerAttr>("kv_block_size");
  if (!blockSize || activations.size() != weights.size() || kv.size() != weights.size() ||
      blocks.size() != weights.size())
    return std::nullopt;
  MemoryPlan plan;
  plan.kvBlockSize = blockSize.getInt();
  for (size_t i = 0; i < weights.size(); ++i)
    plan.stages.push_back({weights[i], activations[i], kv[i], blocks[i]});
  return plan;
}

std::unique_ptr<Pass> createMemoryPlanningPass() {
  return std::make_unique<MemoryPlanningPass>();
}

std::unique_ptr<Pass> createMemoryPlanningPass(std::optional<ClusterSpec> spec) {
  return std::make_unique<MemoryPlanningPass>(std::move(spec));
}

} // namespace llmir::compiler
