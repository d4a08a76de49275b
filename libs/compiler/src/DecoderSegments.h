// Splits a decoder step function into prologue (token embedding), one
// segment per decoder layer, and epilogue (final norm, logits): the units
// that pipeline stages are made of. Weight ops belong to the segment of
// their user, so a stage holds exactly the weights it uses.
#pragma once

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/SmallVector.h"

namespace llmir::compiler {

struct DecoderSegments {
  using Ops = llvm::SmallVector<mlir::Operation *>;
  Ops prologue;
  llvm::SmallVector<Ops> layers;
  Ops epilogue; // without the terminator
  /// The hidden state leaving the prologue and each layer.
  mlir::Value prologueOutput;
  llvm::SmallVector<mlir::Value> layerOutputs;
};

/// A layer runs from its input norm to the residual add after its MLP (the
/// second llm.add after its llm.paged_attention). Fails with a diagnostic on
/// a function that does not have that shape.
mlir::FailureOr<DecoderSegments> segmentDecoder(mlir::func::FuncOp step);

} // namespace llmir::compiler
