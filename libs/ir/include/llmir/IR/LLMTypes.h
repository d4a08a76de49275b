//===- LLMTypes.h - types of the llm dialect --------------------*- C++ -*-===//
#ifndef LLMIR_IR_LLMTYPES_H
#define LLMIR_IR_LLMTYPES_H

#include "llmir/IR/LLMDialect.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Types.h"

#define GET_TYPEDEF_CLASSES
#include "llmir/IR/LLMTypes.h.inc"

#endif // LLMIR_IR_LLMTYPES_H
