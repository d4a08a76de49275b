//===- DistributedOps.cpp - verifiers of the distributed llm ops ----------===//
// Semantics and rules: docs/ir.md. Tensor shapes are local (per device).
#include "VerifyHelpers.h"
#include "llmir/IR/LLMOps.h"

using namespace mlir;
using namespace mlir::llm;
using namespace mlir::llm::detail;

LogicalResult ShardedLinearOp::verify() {
  Operation *op = getOperation();
  if (failed(verifyAtLeast(op, "num_shards", getNumShards(), 1)) ||
      failed(verifyIndex(op, "shard_id", getShardId(), "num_shards",
                         getNumShards())))
    return failure();
  if (getShardDim() != 0 && getShardDim() != 1)
    return emitOpError() << "shard_dim is " << getShardDim()
                         << ", expected 0 (column-parallel) or 1 (row-parallel)";
  return verifyLinearShapes(op, getInput().getType().cast<ShapedType>(),
                            getWeight().getType().cast<ShapedType>(),
                            getBias(), getType().cast<ShapedType>());
}

LogicalResult AllGatherOp::verify() {
  Operation *op = getOperation();
  auto input = getInput().getType().cast<ShapedType>();
  auto result = getType().cast<ShapedType>();
  int64_t gatherDim = getDim();
  if (failed(verifyAtLeast(op, "group_size", getGroupSize(), 1)) ||
      failed(verifyIndex(op, "dim", gatherDim, "input rank", input.getRank())))
    return failure();
  if (result.getRank() != input.getRank())
    return emitOpError() << "result has rank " << result.getRank()
                         << ", expected the input rank " << input.getRank();
  if (result.getElementType() != input.getElementType())
    return emitOpError() << "result element type " << result.getElementType()
                         << " differs from input element type "
                         << input.getElementType() << ", expected them equal";
  for (int64_t d = 0; d < input.getRank(); ++d) {
    int64_t inDim = input.getDimSize(d);
    if (d != gatherDim) {
      if (failed(verifyDim(op, "result", result, d, inDim,
                           "input dim " + Twine(d))))
        return failure();
      continue;
    }
    const int64_t padding = getPadding().value_or(0);
    if (padding < 0 || (!ShapedType::isDynamic(inDim) &&
                        padding >= inDim * getGroupSize()))
      return emitOpError() << "padding is " << padding
                           << ", expected >= 0 and below the gathered size";
    int64_t gathered =
        ShapedType::isDynamic(inDim) ? inDim : inDim * getGroupSize() - padding;
    if (failed(verifyDim(op, "result", result, d, gathered,
                         "group_size (" + Twine(getGroupSize()) +
                             ") x input dim (" + Twine(inDim) + ")" +
                             (padding ? " - padding (" + Twine(padding) + ")"
                                      : Twine()))))
      return failure();
  }
  return success();
}

LogicalResult AllReduceOp::verify() {
  Operation *op = getOperation();
  if (failed(verifyAtLeast(op, "group_size", getGroupSize(), 1)) ||
      failed(verifyOneOf(op, "reduction", getReduction(),
                         {"sum", "max", "min", "prod"})))
    return failure();
  return verifySameType(op, "result", getType(), "input", getInput().getType());
}

LogicalResult PipelineStageOp::verify() {
  Operation *op = getOperation();
  if (failed(verifyAtLeast(op, "num_stages", getNumStages(), 1)) ||
      failed(verifyIndex(op, "stage_id", getStageId(), "num_stages",
                         getNumStages())) ||
      failed(verifyOneOf(op, "schedule", getSchedule(), {"1f1b", "gpipe"})))
    return failure();
  Region &body = getBody();
  if (body.empty())
    return success();
  if (!body.hasOneBlock())
    return emitOpError() << "body has " << body.getBlocks().size()
                         << " blocks, expected 1";
  Block &block = body.front();
  if (block.getArgumentTypes() != getInputs().getTypes())
    return emitOpError() << "body argument types (" << block.getArgumentTypes()
                         << ") differ from the operand types ("
                         << getInputs().getTypes() << "), expected them equal";
  // Op verifiers run before block verification, so the block may still lack
  // a terminator here.
  auto yield = block.empty() ? YieldOp() : dyn_cast<YieldOp>(block.back());
  if (!yield)
    return emitOpError() << "body does not end in 'llm.yield', expected it "
                            "to yield the results";
  if (yield.getValues().getTypes() != getOutputs().getTypes())
    return emitOpError() << "body yields types (" << yield.getValues().getTypes()
                         << ") that differ from the result types ("
                         << getOutputs().getTypes() << "), expected them equal";
  return success();
}

LogicalResult PipelineSendOp::verify() {
  return verifyAtLeast(getOperation(), "dest_stage", getDestStage(), 0);
}

LogicalResult PipelineRecvOp::verify() {
  return verifyAtLeast(getOperation(), "source_stage", getSourceStage(), 0);
}

/// The seed's form (q, k, v) over [B, S, H, D] chunks.
static LogicalResult verifySeedForm(SequenceParallelAttentionOp op) {
  Operation *operation = op.getOperation();
  for (auto [name, present] :
       {std::pair{"layer", bool(op.getLayer())}, {"num_heads", bool(op.getNumHeads())},
        {"num_kv_heads", bool(op.getNumKvHeads())}, {"head_dim", bool(op.getHeadDim())},
        {"scale", bool(op.getScale())}, {"sliding_window", bool(op.getSlidingWindow())}})
    if (present)
      return op.emitOpError() << "has " << name << " without kv_cache, expected it "
                              << "only in the decoder form (q, k, v, kv_cache)";
  if (!op.getSeqStart() || !op.getSeqLength() || !op.getTotalLength())
    return op.emitOpError() << "(q, k, v) form lacks seq_start, seq_length or "
                               "total_length, expected all three";
  int64_t start = *op.getSeqStart(), length = *op.getSeqLength(),
          total = *op.getTotalLength();
  if (failed(verifyAtLeast(operation, "seq_start", start, 0)) ||
      failed(verifyAtLeast(operation, "seq_length", length, 1)))
    return failure();
  if (start + length > total)
    return op.emitOpError() << "seq_start (" << start << ") + seq_length ("
                            << length << ") = " << start + length
                            << " exceeds total_length (" << total
                            << "), expected the chunk inside the sequence";
  auto query = op.getQuery().getType().cast<ShapedType>();
  auto key = op.getKey().getType().cast<ShapedType>();
  if (failed(verifyRank(operation, "query", query, 4, "[batch, seq, heads, head_dim]")) ||
      failed(verifyRank(operation, "key", key, 4, "[batch, seq, heads, head_dim]")) ||
      failed(verifyDim(operation, "query", query, 1, length, "seq_length")) ||
      failed(verifyDim(operation, "key", key, 1, total, "total_length")))
    return failure();
  // Batch, heads and head dim are shared by q, k and v.
  for (int64_t d : {0, 2, 3})
    if (failed(verifyDim(operation, "key", key, d, query.getDimSize(d),
                         "query dim " + Twine(d))))
      return failure();
  if (failed(verifySameType(operation, "value", op.getValue().getType(), "key",
                            op.getKey().getType())))
    return failure();
  return verifySameType(operation, "result", op.getType(), "query",
                        op.getQuery().getType());
}

/// The decoder form (q, k, v, kv_cache) over this device's rows: the
/// paged_attention rules against the sharded cache.
static LogicalResult verifyDecoderForm(SequenceParallelAttentionOp op) {
  if (op.getSeqStart() || op.getSeqLength() || op.getTotalLength())
    return op.emitOpError() << "decoder form (q, k, v, kv_cache) has seq_start, "
                               "seq_length or total_length, expected none (the "
                               "rows of a step are known at run time)";
  if (!op.getLayer() || !op.getNumHeads() || !op.getNumKvHeads() ||
      !op.getHeadDim() || !op.getScale())
    return op.emitOpError() << "decoder form (q, k, v, kv_cache) lacks layer, "
                               "num_heads, num_kv_heads, head_dim or scale, "
                               "expected all five";
  if (failed(verifyRank(op, "query", op.getQuery().getType().cast<ShapedType>(),
                        2, "[tokens, num_heads x head_dim]")) ||
      failed(verifyRank(op, "key", op.getKey().getType().cast<ShapedType>(), 2,
                        "[tokens, num_kv_heads x head_dim]")))
    return failure();
  ShardedKVCacheType cache = op.getKvCache().getType().cast<ShardedKVCacheType>();
  return verifyDecoderAttention(
      op, op.getQuery(), op.getKey(), op.getValue(), op.getType(), *op.getLayer(),
      *op.getNumHeads(), *op.getNumKvHeads(), *op.getHeadDim(), *op.getScale(),
      {"kv_cache", cache.getNumLayers(), cache.getNumHeads(), cache.getHeadDim()});
}

LogicalResult SequenceParallelAttentionOp::verify() {
  return isDecoderForm() ? verifyDecoderForm(*this) : verifySeedForm(*this);
}

/// The decoder form (q, k, v, kv_cache): the paged_attention rules against
/// the sharded cache, whose heads are the KV heads.
static LogicalResult verifyDecoderForm(DistributedAttentionOp op) {
  if (!op.getLayer() || !op.getNumKvHeads())
    return op.emitOpError() << "decoder form (q, k, v, kv_cache) lacks "
                            << (op.getLayer() ? "num_kv_heads" : "layer")
                            << ", expected layer and num_kv_heads";
  if (failed(verifyRank(op, "query", op.getQuery().getType().cast<ShapedType>(),
                        2, "[tokens, num_heads x head_dim]")))
    return failure();
  ShardedKVCacheType cache = op.getKvCache().getType().cast<ShardedKVCacheType>();
  return verifyDecoderAttention(
      op, op.getQuery(), op.getKeyValue()[0], op.getKeyValue()[1], op.getType(),
      *op.getLayer(), op.getNumHeads(), *op.getNumKvHeads(), op.getHeadDim(),
      op.getScale(),
      {"kv_cache", cache.getNumLayers(), cache.getNumHeads(), cache.getHeadDim()});
}

/// The seed's form (q [B, S, H, D], kv_cache): no GQA, cache heads = heads.
static LogicalResult verifySeedForm(DistributedAttentionOp op) {
  Operation *operation = op.getOperation();
  int64_t numHeads = op.getNumHeads(), headDim = op.getHeadDim();
  if (op.getSlidingWindow())
    return op.emitOpError() << "has sliding_window without k and v, expected it "
                               "only in the decoder form (q, k, v, kv_cache)";
  if (op.getLayer() || op.getNumKvHeads())
    return op.emitOpError() << "has " << (op.getLayer() ? "layer" : "num_kv_heads")
                            << " without k and v, expected it only in the "
                               "decoder form (q, k, v, kv_cache)";
  if (failed(verifyAtLeast(operation, "num_heads", numHeads, 1)) ||
      failed(verifyAtLeast(operation, "head_dim", headDim, 1)) ||
      failed(verifyPositive(operation, "scale", op.getScale())))
    return failure();
  auto query = op.getQuery().getType().cast<ShapedType>();
  if (failed(verifyRank(operation, "query", query, 4,
                        "[batch, seq, heads, head_dim]")) ||
      failed(verifyDim(operation, "query", query, 2, numHeads, "num_heads")) ||
      failed(verifyDim(operation, "query", query, 3, headDim, "head_dim")))
    return failure();
  ShardedKVCacheType cache = op.getKvCache().getType().cast<ShardedKVCacheType>();
  if (cache.getNumHeads() != numHeads)
    return op.emitOpError() << "kv_cache has " << cache.getNumHeads()
                            << " heads, expected num_heads (" << numHeads << ")";
  if (cache.getHeadDim() != headDim)
    return op.emitOpError() << "kv_cache head dim is " << cache.getHeadDim()
                            << ", expected head_dim (" << headDim << ")";
  return verifySameType(operation, "result", op.getType(), "query",
                        op.getQuery().getType());
}

LogicalResult DistributedAttentionOp::verify() {
  switch (getKeyValue().size()) {
  case 0:
    return verifySeedForm(*this);
  case 2:
    return verifyDecoderForm(*this);
  default:
    return emitOpError() << "has " << getNumOperands()
                         << " operands, expected (q, kv_cache) or (q, k, v, "
                            "kv_cache)";
  }
}

namespace {

/// The layers of a KV cache type (paged or sharded).
int64_t cacheLayers(Type cache) {
  if (auto paged = cache.dyn_cast<PagedKVCacheType>())
    return paged.getNumLayers();
  return cache.cast<ShardedKVCacheType>().getNumLayers();
}

/// Both forms of remote_load / remote_store: the seed's needs `device` (and
/// a tensor), the cache form `layer_begin` < `layer_end` within the cache.
LogicalResult verifyRemoteForm(Operation *op, Type target, Optional<int32_t> device,
                               Optional<int32_t> layerBegin, Optional<int32_t> layerEnd,
                               bool hasTensor, StringRef tensorRole) {
  const bool cacheForm = !target.isa<DevicePtrType>();
  if (!cacheForm) {
    if (!device)
      return op->emitOpError() << "on a !llm.device_ptr needs 'device'";
    if (layerBegin || layerEnd)
      return op->emitOpError()
             << "on a !llm.device_ptr takes no layer_begin / layer_end (those name "
                "the layers of a KV cache)";
    if (!hasTensor)
      return op->emitOpError() << "on a !llm.device_ptr needs a tensor " << tensorRole;
    return verifyAtLeast(op, "device", *device, 0);
  }
  if (device)
    return op->emitOpError() << "on a KV cache takes no 'device' (the store is "
                                "content-keyed)";
  if (hasTensor)
    return op->emitOpError() << "on a KV cache has no tensor " << tensorRole
                             << ": the step's blocks move in place";
  if (!layerBegin || !layerEnd)
    return op->emitOpError() << "on a KV cache needs layer_begin and layer_end";
  const int64_t layers = cacheLayers(target);
  if (*layerBegin < 0 || *layerBegin >= *layerEnd || *layerEnd > layers)
    return op->emitOpError() << "layers [" << *layerBegin << ", " << *layerEnd
                             << ") are not a non-empty range within the cache's "
                             << layers << " layers";
  return success();
}

} // namespace

LogicalResult RemoteLoadOp::verify() {
  return verifyRemoteForm(getOperation(), getAddress().getType(), getDevice(),
                          getLayerBegin(), getLayerEnd(),
                          static_cast<bool>(getResult()), "result");
}

LogicalResult RemoteStoreOp::verify() {
  return verifyRemoteForm(getOperation(), getAddress().getType(), getDevice(),
                          getLayerBegin(), getLayerEnd(),
                          static_cast<bool>(getData()), "operand");
}

LogicalResult CostAnnotationOp::verify() {
  Operation *op = getOperation();
  if (failed(verifyNonNegative(op, "compute_flops", getComputeFlops())) ||
      failed(verifyAtLeast(op, "memory_bytes", getMemoryBytes(), 0)))
    return failure();
  return verifyAtLeast(op, "communication_bytes", getCommunicationBytes(), 0);
}
