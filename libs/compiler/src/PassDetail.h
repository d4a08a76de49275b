// Generated pass base classes, for the pass implementations only.
#pragma once

#include "llmir/IR/LLMDialect.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace llmir::compiler {
#define GEN_PASS_CLASSES
#include "llmir/compiler/Passes.h.inc"
} // namespace llmir::compiler
