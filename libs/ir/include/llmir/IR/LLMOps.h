//===- LLMOps.h - ops of the llm dialect ------------------------*- C++ -*-===//
#ifndef LLMIR_IR_LLMOPS_H
#define LLMIR_IR_LLMOPS_H

#include "llmir/IR/LLMDialect.h"
#include "llmir/IR/LLMTypes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#define GET_OP_CLASSES
#include "llmir/IR/LLMOps.h.inc"

#endif // LLMIR_IR_LLMOPS_H
