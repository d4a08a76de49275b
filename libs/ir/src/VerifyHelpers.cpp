//===- VerifyHelpers.cpp - shared checks of the llm op verifiers ----------===//
#include "VerifyHelpers.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallString.h"

namespace mlir::llm::detail {

LogicalResult verifyAtLeast(Operation *op, StringRef name, int64_t value,
                            int64_t min) {
  if (value >= min)
    return success();
  return op->emitOpError() << name << " is " << value << ", expected >= "
                           << min;
}

/// Shortest decimal form of `value` ("0.5", "-1"), as a user would write it.
static std::string toDecimal(const llvm::APFloat &value) {
  SmallString<16> text;
  value.toString(text);
  return std::string(text);
}

LogicalResult verifyPositive(Operation *op, StringRef name,
                             const llvm::APFloat &value) {
  if (value.isFiniteNonZero() && !value.isNegative())
    return success();
  return op->emitOpError() << name << " is " << toDecimal(value)
                           << ", expected > 0";
}

LogicalResult verifyNonNegative(Operation *op, StringRef name,
                                const llvm::APFloat &value) {
  if (value.isFinite() && (value.isZero() || !value.isNegative()))
    return success();
  return op->emitOpError() << name << " is " << toDecimal(value)
                           << ", expected >= 0";
}

LogicalResult verifyIndex(Operation *op, StringRef name, int64_t value,
                          StringRef boundName, int64_t bound) {
  if (value >= 0 && value < bound)
    return success();
  return op->emitOpError() << name << " is " << value << ", expected 0 <= "
                           << name << " < " << boundName << " (" << bound
                           << ")";
}

LogicalResult verifyOneOf(Operation *op, StringRef name, StringRef value,
                          ArrayRef<StringRef> allowed) {
  if (llvm::is_contained(allowed, value))
    return success();
  InFlightDiagnostic diag = op->emitOpError()
                            << name << " is \"" << value << "\", expected one of ";
  llvm::interleaveComma(allowed, diag,
                        [&](StringRef s) { diag << "\"" << s << "\""; });
  return diag;
}

LogicalResult verifyRank(Operation *op, StringRef what, ShapedType type,
                         int64_t rank, StringRef layout) {
  if (type.getRank() == rank)
    return success();
  return op->emitOpError() << what << " has rank " << type.getRank()
                           << ", expected rank " << rank << " " << layout;
}

LogicalResult verifyStaticShape(Operation *op, StringRef what,
                                ShapedType type) {
  if (type.hasStaticShape())
    return success();
  return op->emitOpError() << what << " type " << type
                           << " has a dynamic dim, expected a static shape";
}

LogicalResult verifyDim(Operation *op, StringRef what, ShapedType type,
                        int64_t dim, int64_t expected,
                        const Twine &expectedWhy) {
  int64_t actual = type.getDimSize(dim);
  if (ShapedType::isDynamic(actual) || ShapedType::isDynamic(expected) ||
      actual == expected)
    return success();
  return op->emitOpError() << what << " dim " << dim << " is " << actual
                           << ", expected " << expectedWhy << " = "
                           << expected;
}

LogicalResult verifySameType(Operation *op, StringRef what, Type actual,
                             StringRef expectedWhat, Type expected) {
  if (actual == expected)
    return success();
  return op->emitOpError() << what << " type " << actual << " differs from "
                           << expectedWhat << " type " << expected
                           << ", expected them equal";
}

LogicalResult verifyLinearShapes(Operation *op, ShapedType input,
                                 ShapedType weight, Value bias,
                                 ShapedType result) {
  if (failed(verifyRank(op, "weight", weight, 2, "[out_features, in_features]")) ||
      failed(verifyStaticShape(op, "weight", weight)))
    return failure();
  if (input.getRank() < 1)
    return op->emitOpError() << "input has rank 0, expected rank >= 1";
  int64_t last = input.getRank() - 1;
  int64_t outFeatures = weight.getDimSize(0);
  if (failed(verifyDim(op, "input", input, last, weight.getDimSize(1),
                       "weight dim 1 (in_features)")))
    return failure();
  if (result.getRank() != input.getRank())
    return op->emitOpError() << "result has rank " << result.getRank()
                             << ", expected the input rank " << input.getRank();
  for (int64_t d = 0; d < last; ++d)
    if (failed(verifyDim(op, "result", result, d, input.getDimSize(d),
                         "input dim " + Twine(d))))
      return failure();
  if (failed(verifyDim(op, "result", result, last, outFeatures,
                       "weight dim 0 (out_features)")))
    return failure();
  if (result.getElementType() != input.getElementType())
    return op->emitOpError() << "result element type " << result.getElementType()
                             << " differs from input element type "
                             << input.getElementType() << ", expected them equal";
  if (!bias)
    return success();
  auto biasType = bias.getType().cast<ShapedType>();
  if (failed(verifyRank(op, "bias", biasType, 1, "[out_features]")))
    return failure();
  return verifyDim(op, "bias", biasType, 0, outFeatures,
                   "weight dim 0 (out_features)");
}

LogicalResult verifyDecoderAttention(Operation *op, Value query, Value key,
                                     Value value, Type result, int64_t layer,
                                     int64_t numHeads, int64_t numKvHeads,
                                     int64_t headDim, const llvm::APFloat &scale,
                                     const AttentionCacheShape &cache) {
  // The optional sliding window (every decoder attention op may carry it).
  if (auto window = op->getAttrOfType<IntegerAttr>("sliding_window"))
    if (failed(verifyAtLeast(op, "sliding_window", window.getInt(), 1)))
      return failure();
  if (failed(verifyAtLeast(op, "num_heads", numHeads, 1)) ||
      failed(verifyAtLeast(op, "num_kv_heads", numKvHeads, 1)) ||
      failed(verifyAtLeast(op, "head_dim", headDim, 1)) ||
      failed(verifyPositive(op, "scale", scale)))
    return failure();
  // kv_group: an uneven head split, where this shard's query heads map to
  // its KV heads by their global index (docs/ir.md), not by num_heads /
  // num_kv_heads.
  auto kvGroup = op->getAttrOfType<IntegerAttr>("kv_group");
  if (kvGroup && failed(verifyAtLeast(op, "kv_group", kvGroup.getInt(), 1)))
    return failure();
  if (!kvGroup && numHeads % numKvHeads != 0)
    return op->emitOpError() << "num_heads (" << numHeads
                             << ") is not a multiple of num_kv_heads ("
                             << numKvHeads << ")";
  if (failed(verifyIndex(op, "layer", layer, (cache.what + " numLayers").str(),
                         cache.numLayers)))
    return failure();
  if (cache.numKvHeads != numKvHeads)
    return op->emitOpError() << cache.what << " has " << cache.numKvHeads
                             << " kv heads, expected num_kv_heads ("
                             << numKvHeads << ")";
  if (cache.headDim != headDim)
    return op->emitOpError() << cache.what << " head dim is " << cache.headDim
                             << ", expected head_dim (" << headDim << ")";
  auto queryType = query.getType().cast<ShapedType>();
  auto keyType = key.getType().cast<ShapedType>();
  if (failed(verifyDim(op, "query", queryType, 1, numHeads * headDim,
                       "num_heads x head_dim")) ||
      failed(verifyDim(op, "key", keyType, 1, numKvHeads * headDim,
                       "num_kv_heads x head_dim")) ||
      failed(verifyDim(op, "key", keyType, 0, queryType.getDimSize(0),
                       "query dim 0 (tokens)")) ||
      failed(verifySameType(op, "value", value.getType(), "key", key.getType())))
    return failure();
  return verifySameType(op, "result", result, "query", query.getType());
}

} // namespace mlir::llm::detail
