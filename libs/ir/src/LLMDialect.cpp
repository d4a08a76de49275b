//===- LLMDialect.cpp - the llm dialect -----------------------------------===//
#include "llmir/IR/LLMDialect.h"

#include "llmir/IR/LLMOps.h"
#include "llmir/IR/LLMTypes.h"
#include "mlir/IR/DialectRegistry.h"

using namespace mlir;
using namespace mlir::llm;

#include "llmir/IR/LLMDialect.cpp.inc"

void LLMDialect::initialize() {
  registerTypes();
  addOperations<
#define GET_OP_LIST
#include "llmir/IR/LLMOps.cpp.inc"
      >();
}

void mlir::llm::registerLLMDialect(DialectRegistry &registry) {
  registry.insert<LLMDialect>();
}
