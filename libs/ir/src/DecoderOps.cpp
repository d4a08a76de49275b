//===- DecoderOps.cpp - verifiers of the decoder llm ops ------------------===//
// Activations are [tokens, features] (tokens usually dynamic); weights have
// static shapes in checkpoint layout. Semantics and rules: docs/ir.md.
#include "VerifyHelpers.h"
#include "llmir/IR/LLMOps.h"

using namespace mlir;
using namespace mlir::llm;
using namespace mlir::llm::detail;

static ShapedType shapedType(Value value) {
  return value.getType().cast<ShapedType>();
}

LogicalResult WeightOp::verify() {
  Operation *op = getOperation();
  if (getName().empty())
    return emitOpError() << "name is empty, expected a checkpoint tensor name";
  auto type = getType().cast<ShapedType>();
  if (failed(verifyStaticShape(op, "result", type)))
    return failure();
  Optional<int32_t> shardDim = getShardDim(), numShards = getNumShards();
  if (shardDim.has_value() != numShards.has_value())
    return emitOpError() << "has only one of shard_dim and num_shards, "
                            "expected both or neither";
  Optional<int64_t> rowOffset = getRowOffset(), tensorRows = getTensorRows();
  if (rowOffset && !tensorRows)
    return emitOpError() << "has only one of row_offset and tensor_rows, "
                            "expected both or neither";
  if (tensorRows && !rowOffset)
    return emitOpError() << "has tensor_rows without row_offset, expected both";
  if (Optional<int64_t> unpadded = getUnpaddedSize()) { // padded shards
    if (!shardDim)
      return emitOpError() << "has unpadded_size, expected a shard";
    const int64_t local = type.getDimSize(*shardDim);
    const int64_t padded = getKvGroup() ? -1 : local * *numShards;
    if (*unpadded < 1 || (padded > 0 && *unpadded > padded))
      return emitOpError() << "unpadded_size is " << *unpadded
                           << ", expected 1 to num_shards x dim " << *shardDim
                           << " (" << padded << ")";
  }
  const bool anyHeads = getShardQueryHeads() || getKvGroup() || getHeadDim();
  if (anyHeads) {
    if (!(getShardQueryHeads() && getKvGroup() && getHeadDim() && shardDim &&
          *shardDim == 0 && getUnpaddedSize()))
      return emitOpError() << "has part of shard_query_heads, kv_group, head_dim; "
                              "expected all three with unpadded_size on a dim-0 shard";
    if (*getShardQueryHeads() < 1 || *getKvGroup() < 1 || *getHeadDim() < 1 ||
        type.getDimSize(0) % *getHeadDim() != 0)
      return emitOpError() << "shard_query_heads, kv_group and head_dim must be "
                              "positive, with dim 0 whole heads";
  }
  if (rowOffset) {
    if (shardDim && *shardDim != 0)
      return emitOpError() << "reads a row range (row_offset) and is sharded "
                              "along dim "
                           << *shardDim << ", expected dim 0";
    // A padded part (unpadded_size: the part's real rows) reads only those.
    const int64_t rows = getUnpaddedSize()
                             ? *getUnpaddedSize()
                             : type.getDimSize(0) * (shardDim ? *numShards : 1);
    if (*rowOffset < 0 || *rowOffset + rows > *tensorRows)
      return emitOpError() << "rows [" << *rowOffset << ", " << *rowOffset + rows
                           << ") are outside the tensor's " << *tensorRows
                           << " rows (tensor_rows)";
  }
  if (!shardDim)
    return success();
  if (failed(verifyAtLeast(op, "num_shards", *numShards, 1)))
    return failure();
  return verifyIndex(op, "shard_dim", *shardDim, "result rank",
                     type.getRank());
}

LogicalResult EmbeddingOp::verify() {
  Operation *op = getOperation();
  ShapedType table = shapedType(getTable()), result = shapedType(getResult());
  if (failed(verifyStaticShape(op, "table", table)) ||
      failed(verifyDim(op, "result", result, 0,
                       shapedType(getTokens()).getDimSize(0),
                       "tokens dim 0")))
    return failure();
  return verifyDim(op, "result", result, 1, table.getDimSize(1),
                   "table dim 1 (hidden size)");
}

LogicalResult RMSNormOp::verify() {
  Operation *op = getOperation();
  if (failed(verifyPositive(op, "epsilon", getEpsilon())))
    return failure();
  // The weight spans the row (hidden size) or one group of it: a per-head
  // norm (Qwen3's q_norm / k_norm) normalises each head_dim group apart.
  const int64_t groups = shapedType(getWeight()).getDimSize(0);
  const int64_t features = shapedType(getInput()).getDimSize(1);
  if (!ShapedType::isDynamic(groups) && !ShapedType::isDynamic(features) &&
      (groups <= 0 || features % groups != 0))
    return emitOpError() << "weight dim 0 is " << groups
                         << ", expected input dim 1 (" << features
                         << ") or a divisor of it (a per-head norm)";
  return verifySameType(op, "result", getType(), "input", getInput().getType());
}

LogicalResult LinearOp::verify() {
  return verifyLinearShapes(getOperation(), shapedType(getInput()),
                            shapedType(getWeight()), getBias(),
                            shapedType(getResult()));
}

LogicalResult RotaryEmbeddingOp::verify() {
  Operation *op = getOperation();
  int64_t headDim = getHeadDim();
  if (headDim <= 0 || headDim % 2 != 0)
    return emitOpError() << "head_dim is " << headDim
                         << ", expected an even number > 0";
  if (failed(verifyPositive(op, "theta", getTheta())))
    return failure();
  if (Optional<StringRef> scaling = getScaling()) {
    if (failed(verifyOneOf(op, "scaling", *scaling, {"linear", "llama3"})))
      return failure();
    if (!getScalingFactor())
      return emitOpError() << "has scaling \"" << *scaling
                           << "\" without scaling_factor";
    if (failed(verifyPositive(op, "scaling_factor", *getScalingFactor())))
      return failure();
    const bool llama3 = *scaling == "llama3";
    const bool hasLlama3 = getLowFreqFactor() || getHighFreqFactor() ||
                           getOriginalMaxPosition();
    if (llama3 && !(getLowFreqFactor() && getHighFreqFactor() &&
                    getOriginalMaxPosition()))
      return emitOpError() << "has scaling \"llama3\", expected low_freq_factor, "
                              "high_freq_factor and original_max_position";
    if (!llama3 && hasLlama3)
      return emitOpError() << "has llama3 scaling attributes with scaling \""
                           << *scaling << "\"";
    if (llama3 && (failed(verifyPositive(op, "low_freq_factor", *getLowFreqFactor())) ||
                   failed(verifyAtLeast(op, "original_max_position",
                                        *getOriginalMaxPosition(), 1))))
      return failure();
    if (llama3 && !(getHighFreqFactor()->convertToFloat() >
                    getLowFreqFactor()->convertToFloat()))
      return emitOpError() << "high_freq_factor must exceed low_freq_factor";
  } else if (getScalingFactor() || getLowFreqFactor() || getHighFreqFactor() ||
             getOriginalMaxPosition()) {
    return emitOpError() << "has scaling attributes without scaling";
  }
  ShapedType input = shapedType(getInput());
  int64_t features = input.getDimSize(1);
  if (!ShapedType::isDynamic(features) && features % headDim != 0)
    return emitOpError() << "input dim 1 is " << features
                         << ", expected a multiple of head_dim (" << headDim
                         << ")";
  if (failed(verifyDim(op, "positions", shapedType(getPositions()), 0,
                       input.getDimSize(0), "input dim 0 (tokens)")))
    return failure();
  return verifySameType(op, "result", getType(), "input", getInput().getType());
}

LogicalResult PagedAttentionOp::verify() {
  PagedKVCacheType cache = getCache().getType().cast<PagedKVCacheType>();
  return verifyDecoderAttention(
      getOperation(), getQuery(), getKey(), getValue(), getType(), getLayer(),
      getNumHeads(), getNumKvHeads(), getHeadDim(), getScale(),
      {"cache", cache.getNumLayers(), cache.getNumKvHeads(), cache.getHeadDim()});
}

LogicalResult SwiGLUOp::verify() {
  Operation *op = getOperation();
  if (failed(verifySameType(op, "up", getUp().getType(), "gate",
                            getGate().getType())))
    return failure();
  return verifySameType(op, "result", getType(), "gate", getGate().getType());
}

LogicalResult AddOp::verify() {
  Operation *op = getOperation();
  if (failed(verifySameType(op, "rhs", getRhs().getType(), "lhs",
                            getLhs().getType())))
    return failure();
  return verifySameType(op, "result", getType(), "lhs", getLhs().getType());
}

LogicalResult LogitsOp::verify() {
  Operation *op = getOperation();
  ShapedType weight = shapedType(getWeight());
  if (failed(verifyStaticShape(op, "weight", weight)) ||
      failed(verifyDim(op, "input", shapedType(getInput()), 1,
                       weight.getDimSize(1), "weight dim 1 (hidden size)")))
    return failure();
  return verifyDim(op, "result", shapedType(getResult()), 1,
                   weight.getDimSize(0), "weight dim 0 (vocab size)");
}
