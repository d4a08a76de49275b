// llm-partition: checks that the degrees fit the model (heads, KV heads and
// MLP width divide by tp) and splits the decoder layers into pp contiguous
// stages that minimise the most expensive stage, by predicted cost rather
// than by layer count. Writes `llm.partition`.
#include "CostModel.h"
#include "DecoderSegments.h"
#include "Partition.h"
#include "PassDetail.h"
#include "llmir/compiler/Passes.h"

#include "llmir/IR/LLMOps.h"

#include <limits>

using namespace mlir;

namespace llmir::compiler {
namespace {

constexpr int64_t kCostTokens = 2048; // prefill chunk the stages are balanced for

double segmentSeconds(const DecoderSegments::Ops &ops, const DeviceModel &device) {
  double s = 0;
  for (Operation *op : ops)
    s += predictSeconds(costOf(op, kCostTokens), device);
  return s;
}

/// Contiguous split of `layerCosts` into `stages` parts minimising the
/// largest part (stage 0 also pays `first`, the last one `last`). Exact DP;
/// ties go to the earliest split, so the result is deterministic.
std::vector<int64_t> balanceStages(const std::vector<double> &layerCosts,
                                   int stages, double first, double last,
                                   std::vector<double> &stageCosts) {
  const int n = static_cast<int>(layerCosts.size());
  std::vector<double> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i)
    prefix[i + 1] = prefix[i] + layerCosts[i];
  const double inf = std::numeric_limits<double>::infinity();
  // best[s][i]: minimal max cost placing the first i layers on s stages.
  std::vector<std::vector<double>> best(stages + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int>> cut(stages + 1, std::vector<int>(n + 1, 0));
  best[0][0] = 0;
  for (int s = 1; s <= stages; ++s)
    for (int i = s; i <= n; ++i)
      for (int j = s - 1; j < i; ++j) {
        double stage = prefix[i] - prefix[j] + (s == 1 ? first : 0) +
                       (s == stages && i == n ? last : 0);
        double worst = std::max(best[s - 1][j], stage);
        if (worst < best[s][i]) {
          best[s][i] = worst;
          cut[s][i] = j;
        }
      }
  std::vector<int64_t> layers(stages);
  stageCosts.assign(stages, 0);
  for (int s = stages, i = n; s >= 1; --s) {
    int j = cut[s][i];
    layers[s - 1] = i - j;
    stageCosts[s - 1] = prefix[i] - prefix[j] + (s == 1 ? first : 0) + (s == stages ? last : 0);
    i = j;
  }
  return layers;
}

struct ModelPartitioningPass : ModelPartitioningBase<ModelPartitioningPass> {
  ModelPartitioningPass() = default;
  ModelPartitioningPass(int tpDegree, int ppDegree, int spDegree) {
    tp = tpDegree;
    pp = ppDegree;
    sp = spDegree;
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    const int tp = this->tp, pp = this->pp, sp = this->sp;
    auto step = module.lookupSymbol<func::FuncOp>("prefill");
    if (!step) {
      module.emitError("llm-partition needs func.func @prefill, the entry "
                       "point llmir-import writes");
      return signalPassFailure();
    }
    if (tp < 1 || pp < 1 || sp < 1) {
      module.emitError() << "parallel degrees must be >= 1, got tp=" << tp
                         << " pp=" << pp << " sp=" << sp;
      return signalPassFailure();
    }
    if (failed(checkTensorParallel(step)))
      return signalPassFailure();
    auto segments = segmentDecoder(step);
    if (failed(segments))
      return signalPassFailure();
    const int layers = static_cast<int>(segments->layers.size());
    if (pp > layers) {
      module.emitError() << "pp = " << pp << " exceeds the model's " << layers
                         << " layers, expected at least one layer per stage";
      return signalPassFailure();
    }
    DeviceModel device;
    std::vector<double> layerCosts;
    for (const auto &layer : segments->layers)
      layerCosts.push_back(segmentSeconds(layer, device) / tp);
    Partition p;
    p.tp = tp;
    p.pp = pp;
    p.sp = sp;
    p.stageLayers =
        balanceStages(layerCosts, pp, segmentSeconds(segments->prologue, device) / tp,
                      segmentSeconds(segments->epilogue, device) / tp, p.stageCosts);
    writePartition(module, p);
  }

  /// Every attention's heads and KV heads, and every MLP width, must split
  /// evenly over the tensor-parallel group.
  LogicalResult checkTensorParallel(func::FuncOp step) {
    const int tp = this->tp;
    auto result = step.walk([&](llm::PagedAttentionOp a) {
      if (a.getNumHeads() % tp != 0 || a.getNumKvHeads() % tp != 0) {
        a.emitError() << "tp = " << tp << " is infeasible: layer " << a.getLayer()
                      << " has " << a.getNumHeads() << " heads and "
                      << a.getNumKvHeads()
                      << " KV heads, expected both divisible by tp";
        return WalkResult::interrupt();
      }
      return WalkResult::advance();
    });
    if (result.wasInterrupted())
      return failure();
    result = step.walk([&](llm::SwiGLUOp s) {
      int64_t width = s.getType().cast<ShapedType>().getShape().back();
      if (width % tp != 0) {
        s.emitError() << "tp = " << tp << " is infeasible: MLP width " << width
                      << " is not divisible by tp";
        return WalkResult::interrupt();
      }
      return WalkResult::advance();
    });
    return failure(result.wasInterrupted());
  }
};

} // namespace

std::unique_ptr<Pass> createModelPartitioningPass() {
  return std::make_unique<ModelPartitioningPass>();
}

std::unique_ptr<Pass> createModelPartitioningPass(int tp, int pp, int sp) {
  return std::make_unique<ModelPartitioningPass>(tp, pp, sp);
}

} // namespace llmir::compiler
