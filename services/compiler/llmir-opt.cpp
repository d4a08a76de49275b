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
#include "llmir/support/NestingDepth.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sys/mman.h>
#include <unistd.h>

namespace {

// MLIR's parser recurses once per nesting level: input nested deep enough
// overflows the stack (issue 14). The input is checked before MlirOptMain
// parses it: a file named on the command line is read here; standard input
// is read whole and handed on through an in-memory file.
bool inputNestsWithinBounds(int argc, char **argv) {
  std::string path = "-";
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-o") { // the only option whose value comes separately
      ++i;
      continue;
    }
    if (arg == "-" || !arg.starts_with("-")) {
      path = std::string(arg);
      break;
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (path == "-" && (arg.starts_with("--help") || arg.starts_with("-help") ||
                        arg == "-h" || arg == "--version" || arg == "--show-dialects"))
      return true; // answers without reading input
  }
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
    int fd = ::memfd_create("llmir-opt-stdin", 0);
    if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
        ::lseek(fd, 0, SEEK_SET) != 0 || ::dup2(fd, 0) < 0) {
      std::fprintf(stderr, "llmir-opt: cannot buffer standard input: %s\n", std::strerror(errno));
      return false;
    }
    ::close(fd);
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      return true; // MlirOptMain reports the unreadable file
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  llmir::Status depth = llmir::checkNestingDepth(text, path == "-" ? "<stdin>" : path);
  if (!depth) {
    std::fprintf(stderr, "llmir-opt: %s\n", depth.message().c_str());
    return false;
  }
  return true;
}

} // namespace

int main(int argc, char **argv) {
  if (!inputNestsWithinBounds(argc, argv))
    return 1;
  mlir::registerTransformsPasses();
  llmir::compiler::registerCompilerPasses();
  mlir::DialectRegistry registry;
  mlir::llm::registerLLMDialect(registry);
  registry.insert<mlir::func::FuncDialect, mlir::arith::ArithmeticDialect,
                  mlir::tensor::TensorDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "LLMIR optimizer driver\n", registry));
}
