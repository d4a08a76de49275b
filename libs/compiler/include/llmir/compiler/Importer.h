// llmir-import: a Hugging Face Llama-family checkpoint directory becomes an
// `llm` module. Only config.json and the safetensors headers are read; each
// weight is referred to by its checkpoint tensor name (llm.weight).
#pragma once

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <functional>
#include <string>

namespace llmir::compiler {

struct ImportOptions {
  /// Tokens per paged KV-cache block, recorded in the cache type.
  int64_t kvBlockSize = 16;
  /// Polled between decoder layers; when it returns true the import stops
  /// with kCompileCancelled's error (the compiler service's deadline).
  std::function<bool()> cancelled;
};

/// Builds a module with two entry points over the paged KV cache:
///   @prefill(%tokens, %positions, %kv_cache) -> logits of each sequence's
///   last prompt token, and @decode(...) with one token per sequence.
/// Fails when config.json is unsupported or a checkpoint shape disagrees
/// with it.
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importHuggingFace(mlir::MLIRContext &context, const std::string &hfDir,
                  const ImportOptions &options = {});

/// The same module for a config.json without a checkpoint (cost studies,
/// compile benchmarks): every weight is typed bf16 with the shape the config
/// implies. The module's llm.model source is "synthetic:<configPath>".
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importSyntheticConfig(mlir::MLIRContext &context, const std::string &configPath,
                      const ImportOptions &options = {});

} // namespace llmir::compiler
