// MLIR parsing: the input is MLIR source text, parsed with the dialects
// llmir-opt registers (llm, func, arith, tensor) and verified, then printed
// back as llmir-opt would. Input nested beyond the IR nesting bound is refused
// before parsing, as llmir-opt, llmir-compile and compileModule refuse it
// (MLIR's parser, verifier and printer recurse once per level).
#include "llmir/IR/LLMDialect.h"
#include "llmir/support/NestingDepth.h"
#include "mlir/Dialect/Arithmetic/IR/Arithmetic.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>
#include <string>

namespace {
const mlir::DialectRegistry &registry() {
  static mlir::DialectRegistry *dialects = [] {
    auto *registry = new mlir::DialectRegistry; // lives as long as the process
    mlir::llm::registerLLMDialect(*registry);
    registry->insert<mlir::func::FuncDialect, mlir::arith::ArithmeticDialect,
                     mlir::tensor::TensorDialect>();
    return registry;
  }();
  return *dialects;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  // MLIR's lexer stops at the NUL after the buffer, not at its length: the
  // callers hand it a std::string or a MemoryBuffer (both NUL-terminated), so
  // the fuzzer's bytes are copied into one too (without, ASan reports reads
  // past the input that no real caller can cause).
  const std::string text(reinterpret_cast<const char *>(data), size);
  if (!llmir::checkNestingDepth(text, "fuzz.mlir"))
    return 0;
  // A fresh context per input, as compileModule uses: uniqued types and
  // attributes of one input do not pile up across inputs. Single-threaded
  // (the verifier would otherwise start a thread pool per context).
  mlir::MLIRContext context(registry(), mlir::MLIRContext::Threading::DISABLED);
  context.loadAllAvailableDialects();
  context.printOpOnDiagnostic(false);
  mlir::ScopedDiagnosticHandler quiet(&context, [](mlir::Diagnostic &) {
    return mlir::success(); // errors are expected; only crashes count
  });
  mlir::OwningOpRef<mlir::ModuleOp> module =
      mlir::parseSourceString<mlir::ModuleOp>(text, mlir::ParserConfig(&context));
  if (!module || mlir::failed(mlir::verify(*module)))
    return 0;
  std::string printed;
  llvm::raw_string_ostream os(printed);
  module->print(os);
  return 0;
}
