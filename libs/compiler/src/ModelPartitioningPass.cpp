// llm-partition: decides (tp, pp, sp) and the stage split and writes
// `llm.partition`. Fixed degrees (pass options, or the spec's fixed keys) are
// checked (heads, KV heads and MLP width divide by tp, a vocabulary that
// does not is padded; at least
// one layer per stage; the model fits) and applied; with "auto" degrees every
// feasible candidate is evaluated (PlanSearch) and the best predicted decode
// throughput within the latency target wins. Stages are balanced by
// predicted cost, not by layer count.
#include "ModelProfile.h"
#include "Partition.h"
#include "PassDetail.h"
#include "PlanSearch.h"
#include "llmir/compiler/Passes.h"

#include "llvm/Support/raw_ostream.h"

using namespace mlir;

namespace llmir::compiler {
namespace {

struct ModelPartitioningPass : ModelPartitioningBase<ModelPartitioningPass> {
  ModelPartitioningPass() = default;
  explicit ModelPartitioningPass(PartitionOptions options)
      : spec(std::move(options.cluster)), explanation(options.explanation) {
    tp = options.tp;
    pp = options.pp;
    sp = options.sp;
    explain = options.explanation != nullptr;
  }

  LogicalResult initialize(MLIRContext *) override {
    if (cluster.empty() || spec)
      return success();
    auto loaded = loadClusterSpec(cluster);
    if (!loaded) {
      loadError = loaded.message();
      return success(); // reported on the module in runOnOperation
    }
    spec = *loaded;
    return success();
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (!loadError.empty()) {
      module.emitError() << loadError;
      return signalPassFailure();
    }
    auto step = module.lookupSymbol<func::FuncOp>("prefill");
    if (!step) {
      module.emitError("llm-partition needs func.func @prefill, the entry "
                       "point llmir-import writes");
      return signalPassFailure();
    }
    ClusterSpec cluster = spec ? *spec : fixedDegreeSpec();
    if (!spec && (tp < 1 || pp < 1 || sp < 1)) {
      module.emitError() << "parallel degrees must be >= 1, got tp=" << tp
                         << " pp=" << pp << " sp=" << sp;
      return signalPassFailure();
    }
    auto model = profileModel(step);
    if (failed(model))
      return signalPassFailure();
    SearchResult result = searchPartitions(*model, cluster);
    std::string table = formatCandidates(result, cluster);
    if (explanation)
      *explanation = table;
    else if (explain)
      llvm::outs() << table;
    if (result.chosen < 0) {
      if (result.candidates.size() == 1)
        module.emitError() << result.candidates.front().rejected;
      else
        module.emitError() << "no feasible partition for the "
                           << cluster.numDevices() << " devices of "
                           << (cluster.source.empty() ? "the cluster" : cluster.source)
                           << ":\n" << table;
      return signalPassFailure();
    }
    const Candidate &best = result.candidates[result.chosen];
    Partition p;
    p.tp = best.tp;
    p.pp = best.pp;
    p.sp = best.sp;
    p.stageLayers = best.stageLayers;
    p.stageCosts = best.stageSeconds;
    p.replicas = best.replicas;
    p.prefillSeconds = best.prefillSeconds;
    p.decodeSeconds = best.decodeSeconds;
    writePartition(module, p);
  }

  /// Without a spec: tp * pp * sp default devices on one node, degrees fixed.
  ClusterSpec fixedDegreeSpec() const {
    ClusterSpec s;
    s.devicesPerNode = std::max(1, tp * pp * sp);
    s.tensor = tp;
    s.pipeline = pp;
    s.sequence = sp;
    return s;
  }

  std::optional<ClusterSpec> spec;
  std::string *explanation = nullptr;
  std::string loadError;
};

} // namespace

std::unique_ptr<Pass> createModelPartitioningPass() {
  return std::make_unique<ModelPartitioningPass>();
}

std::unique_ptr<Pass> createModelPartitioningPass(PartitionOptions options) {
  return std::make_unique<ModelPartitioningPass>(std::move(options));
}

} // namespace llmir::compiler
