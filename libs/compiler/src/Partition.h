// The `llm.partition` module attribute: the decision of ModelPartitioningPass
// that CommunicationInsertionPass, MemoryPlanningPass and the plan read.
//   llm.partition = {tp = 2 : i64, pp = 2 : i64, sp = 1 : i64,
//                    stage_layers = [3, 1], stage_costs = [...], replicas = 1,
//                    prefill_seconds = .., decode_seconds = ..}
#pragma once

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LogicalResult.h"

#include <cstdint>
#include <vector>

namespace llmir::compiler {

struct Partition {
  int tp = 1, pp = 1, sp = 1;
  /// Decoder layers of each pipeline stage, in order; sums to the layers.
  std::vector<int64_t> stageLayers;
  /// Predicted seconds of one prefill step of each stage.
  std::vector<double> stageCosts;
  /// Copies of the model on the cluster and the predicted step times
  /// (0 when unknown).
  int64_t replicas = 1;
  double prefillSeconds = 0, decodeSeconds = 0;
};

inline constexpr const char *kPartitionAttr = "llm.partition";

void writePartition(mlir::ModuleOp module, const Partition &partition);
/// The module's partition; an unpartitioned module is one stage on one
/// device. Fails (with a diagnostic) on a malformed attribute.
mlir::FailureOr<Partition> readPartition(mlir::ModuleOp module);

} // namespace llmir::compiler
