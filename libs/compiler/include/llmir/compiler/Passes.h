// The llm compiler passes (MLIR interface; Compile.h is the RTTI-free one).
#pragma once

#include "llmir/compiler/ClusterSpec.h"

#include "mlir/Pass/Pass.h"

#include <memory>
#include <optional>
#include <string>

namespace llmir::compiler {

struct PartitionOptions {
  /// Fixed degrees, used when there is no cluster spec (a spec of
  /// tp * pp * sp default devices on one node stands in).
  int tp = 1, pp = 1, sp = 1;
  std::optional<ClusterSpec> cluster;
  /// When set, receives the candidates table (else it is not printed).
  std::string *explanation = nullptr;
};

std::unique_ptr<mlir::Pass> createCostModelPass();
std::unique_ptr<mlir::Pass> createModelPartitioningPass();
std::unique_ptr<mlir::Pass> createModelPartitioningPass(PartitionOptions options);
std::unique_ptr<mlir::Pass> createCommunicationInsertionPass();
std::unique_ptr<mlir::Pass> createMemoryPlanningPass();
std::unique_ptr<mlir::Pass> createMemoryPlanningPass(std::optional<ClusterSpec> cluster);
std::unique_ptr<mlir::Pass> createKvTransferInsertionPass();

#define GEN_PASS_REGISTRATION
#include "llmir/compiler/Passes.h.inc"

} // namespace llmir::compiler
