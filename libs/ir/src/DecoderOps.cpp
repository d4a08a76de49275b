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
  if (failed(verifyPositive(op, "epsilon", getEpsilon())) ||
      failed(verifyDim(op, "weight", shapedType(getWeight()), 0,
                       shapedType(getInput()).getDimSize(1),
                       "input dim 1 (hidden size)")))
    return failure();
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
