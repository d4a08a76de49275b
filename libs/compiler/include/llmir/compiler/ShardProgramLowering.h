// Lowering of one entry point of a (partitioned) `llm` module to the
// ShardProgram that one rank executes (libs/proto/.../shard_program.proto).
#pragma once

#include "llmir/proto/shard_program.pb.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <string>
#include <vector>

namespace llmir::compiler {

/// Where a rank sits in its replica; decides which weight slices it loads.
struct RankPlacement {
  uint32_t rank = 0;
  uint32_t worldSize = 1;
  /// Index inside the tensor-parallel group and its size: a weight sharded
  /// `num_shards` ways along `shard_dim` yields slice `tpRank`.
  uint32_t tpRank = 0;
  uint32_t tpSize = 1;
  /// Index inside the sequence-parallel group and its size: the rank owns
  /// logical KV block b of every sequence when b % spSize == spIndex.
  uint32_t spIndex = 0;
  uint32_t spSize = 1;
  uint32_t stageId = 0;
  uint32_t numStages = 1;
  /// Global ranks of the same tensor-parallel index in the neighbouring
  /// pipeline stages (RECV / SEND peers); -1 at the ends of the pipeline.
  int64_t prevStageRank = -1;
  int64_t nextStageRank = -1;
  /// Collective groups this rank belongs to. Tensor-parallel collectives
  /// (llm.all_reduce, llm.all_gather) use the one of kind "tp", the merge
  /// of llm.distributed_attention the one of kind "sp".
  std::vector<proto::CollectiveGroup> groups;
};

/// Lowers `step` (llm ops over the paged KV cache, as produced by the
/// importer and the partitioning passes) to one rank's ShardProgram. When
/// the body is split into llm.pipeline_stage ops, only the rank's stage is
/// lowered; pipeline_recv/send become RECV/SEND with the neighbour's rank.
/// llm.distributed_attention (decoder form) becomes ATTENTION_PARTIAL,
/// ALL_GATHER over the sp group and ATTENTION_MERGE.
llvm::Expected<proto::ShardProgram>
lowerToShardProgram(mlir::func::FuncOp step, const RankPlacement &placement);

} // namespace llmir::compiler
