// The `llm.memory_plan` module attribute written by MemoryPlanningPass: what
// each device of each pipeline stage holds.
//   llm.memory_plan = {kv_block_size = 16, weight_bytes = [..], activation_bytes = [..],
//                      kv_cache_bytes = [..], kv_blocks = [..]}   (one entry per stage)
#pragma once

#include "mlir/IR/BuiltinOps.h"

#include <cstdint>
#include <optional>
#include <vector>

namespace llmir::compiler {

struct StageMemory {
  int64_t weightBytes = 0;
  int64_t activationBytes = 0; // working set of max_batch_tokens
  int64_t kvCacheBytes = 0;    // kvBlocks blocks
  int64_t kvBlocks = 0;        // KV-cache blocks each device of the stage holds
};

struct MemoryPlan {
  int64_t kvBlockSize = 16;
  std::vector<StageMemory> stages;
};

inline constexpr const char *kMemoryPlanAttr = "llm.memory_plan";

void writeMemoryPlan(mlir::ModuleOp module, const MemoryPlan &plan);
/// nullopt when the module has no (well-formed) memory plan.
std::optional<MemoryPlan> readMemoryPlan(mlir::ModuleOp module);

} // namespace llmir::compiler
