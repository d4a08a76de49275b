//===- LLMOps.cpp - generated op classes of the llm dialect ---------------===//
// The verifiers are in DistributedOps.cpp and DecoderOps.cpp.
#include "llmir/IR/LLMOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace mlir::llm;

#define GET_OP_CLASSES
#include "llmir/IR/LLMOps.cpp.inc"
