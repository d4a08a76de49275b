//===- llmir-opt.cpp - mlir-opt for programs in the llm dialect -----------===//
//
// Parses, verifies, transforms and prints IR made of the llm dialect plus the
// builtin func, arith and tensor dialects. The llm passes join here as the
// compiler library grows; today the core MLIR transforms (canonicalize, cse,
// inline, ...) are available.
//
//===----------------------------------------------------------------------===//
#include "llmir/IR/LLMDialect.h"
#include "mlir/Dialect/Arithmetic/IR/Arithmetic.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::registerTransformsPasses();
  mlir::DialectRegistry registry;
  mlir::llm::registerLLMDialect(registry);
  registry.insert<mlir::func::FuncDialect, mlir::arith::ArithmeticDialect,
                  mlir::tensor::TensorDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "LLMIR optimizer driver\n", registry));
}
