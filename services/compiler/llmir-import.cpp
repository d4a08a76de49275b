// llmir-import (HF_DIR | --synthetic-config config.json) [-o model.mlir]
//              [--kv-block-size N]
// Reads a Hugging Face Llama-family checkpoint (config.json and safetensors
// headers) and writes the `llm` module that the compiler partitions. With
// --synthetic-config, only a config.json: weights are typed bf16 from it.
#include "llmir/compiler/Importer.h"
#include "llmir/compiler/MlirThreading.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace llvm;

static cl::opt<std::string> hfDir(cl::Positional, cl::desc("<hugging-face-dir>"));
static cl::opt<std::string> syntheticConfig(
    "synthetic-config", cl::desc("Import a config.json without a checkpoint"),
    cl::value_desc("config.json"));
static cl::opt<std::string> outputFile("o", cl::desc("Output file ('-' = stdout)"),
                                       cl::value_desc("file"), cl::init("-"));
static cl::opt<int64_t> kvBlockSize("kv-block-size",
                                    cl::desc("Tokens per paged KV-cache block"),
                                    cl::init(16));

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::ParseCommandLineOptions(argc, argv, "LLMIR Hugging Face importer\n");

  mlir::MLIRContext context(llmir::compiler::contextThreading());
  llmir::compiler::ImportOptions options;
  options.kvBlockSize = kvBlockSize;
  if (hfDir.empty() == syntheticConfig.empty()) {
    WithColor::error(errs(), "llmir-import")
        << "expected either a Hugging Face directory or --synthetic-config\n";
    return 1;
  }
  auto module = syntheticConfig.empty()
                    ? llmir::compiler::importHuggingFace(context, hfDir, options)
                    : llmir::compiler::importSyntheticConfig(context, syntheticConfig,
                                                             options);
  if (!module) {
    WithColor::error(errs(), "llmir-import") << toString(module.takeError()) << "\n";
    return 1;
  }
  // IR that does not verify is not written (issue 14: a config with an
  // infinite epsilon gave an invalid module and exit 0).
  if (mlir::failed(mlir::verify(**module))) {
    WithColor::error(errs(), "llmir-import")
        << "the imported module does not verify (diagnostics above); nothing written\n";
    return 1;
  }
  std::error_code ec;
  ToolOutputFile out(outputFile, ec, sys::fs::OF_None);
  if (ec) {
    WithColor::error(errs(), "llmir-import")
        << "cannot open '" << outputFile << "': " << ec.message() << "\n";
    return 1;
  }
  (*module)->print(out.os());
  out.os() << "\n";
  out.keep();
  return 0;
}
