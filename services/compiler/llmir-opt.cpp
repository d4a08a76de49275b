//===- llmir-opt.cpp - mlir-opt for programs in the llm dialect -----------===//
//
// Parses, verifies, transforms and prints IR made of the llm dialect plus the
// builtin func, arith and tensor dialects with the llm compiler passes
// (llm-cost-model, llm-partition, llm-insert-communication) and the core MLIR
// transforms.
//
//===----------------------------------------------------------------------===//
#include "llmir/IR/LLMDialect.h"
#include "llmir/compiler/Passes.h"
#include "mlir/Dialect/Arithmetic/IR/Arithmetic.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::registerTransformsPasses();
  llmir::compiler::registerCompilerPasses();
  mlir::DialectRegistry registry;
  mlir::llm::registerLLMDialect(registry);
  registry.insert<mlir::func::FuncDialect, mlir::arith::ArithmeticDialect,
                  mlir::tensor::TensorDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "LLMIR optimizer driver\n", registry));
}
