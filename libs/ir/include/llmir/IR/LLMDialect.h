//===- LLMDialect.h - the llm dialect ---------------------------*- C++ -*-===//
#ifndef LLMIR_IR_LLMDIALECT_H
#define LLMIR_IR_LLMDIALECT_H

#include "mlir/IR/Dialect.h"

#include "llmir/IR/LLMDialect.h.inc"

namespace mlir {
class DialectRegistry;
namespace llm {
/// Adds the llm dialect to `registry` (tools call this before parsing).
void registerLLMDialect(DialectRegistry &registry);
} // namespace llm
} // namespace mlir

#endif // LLMIR_IR_LLMDIALECT_H
