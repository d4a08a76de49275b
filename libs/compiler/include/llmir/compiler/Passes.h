// The llm compiler passes (MLIR interface; Compile.h is the RTTI-free one).
#pragma once

#include "mlir/Pass/Pass.h"

#include <memory>

namespace llmir::compiler {

std::unique_ptr<mlir::Pass> createCostModelPass();
std::unique_ptr<mlir::Pass> createModelPartitioningPass();
std::unique_ptr<mlir::Pass> createModelPartitioningPass(int tp, int pp, int sp);
std::unique_ptr<mlir::Pass> createCommunicationInsertionPass();

#define GEN_PASS_REGISTRATION
#include "llmir/compiler/Passes.h.inc"

} // namespace llmir::compiler
