//===- VerifyHelpers.h - shared checks of the llm op verifiers --*- C++ -*-===//
//
// Each helper emits one op error that says what was wrong and what was
// expected, e.g. "'llm.all_gather' op result dim 1 is 1000, expected
// group_size (8) x input dim (128) = 1024". Dynamic dims match anything.
//
//===----------------------------------------------------------------------===//
#ifndef LLMIR_IR_SRC_VERIFYHELPERS_H
#define LLMIR_IR_SRC_VERIFYHELPERS_H

#include "mlir/IR/BuiltinTypes.h"
#include "llvm/ADT/APFloat.h"
#include "mlir/IR/Operation.h"
#include "mlir/Support/LogicalResult.h"

namespace mlir::llm::detail {

/// `name` (an attribute) must be >= `min`.
LogicalResult verifyAtLeast(Operation *op, StringRef name, int64_t value,
                            int64_t min);

/// `name` (a float attribute) must be > 0 (NaN fails too).
LogicalResult verifyPositive(Operation *op, StringRef name,
                             const llvm::APFloat &value);

/// `name` (a float attribute) must be >= 0 (NaN fails too).
LogicalResult verifyNonNegative(Operation *op, StringRef name,
                                const llvm::APFloat &value);

/// 0 <= `name` < `boundName` (whose value is `bound`).
LogicalResult verifyIndex(Operation *op, StringRef name, int64_t value,
                          StringRef boundName, int64_t bound);

/// `name` (a string attribute) must be one of `allowed`.
LogicalResult verifyOneOf(Operation *op, StringRef name, StringRef value,
                          ArrayRef<StringRef> allowed);

/// `what` must have rank `rank`; `layout` describes the expected dims.
LogicalResult verifyRank(Operation *op, StringRef what, ShapedType type,
                         int64_t rank, StringRef layout);

/// `what` must have a fully static shape.
LogicalResult verifyStaticShape(Operation *op, StringRef what, ShapedType type);

/// Dim `dim` of `what` must be `expected`, described by `expectedWhy`.
/// Passes when either size is dynamic.
LogicalResult verifyDim(Operation *op, StringRef what, ShapedType type,
                        int64_t dim, int64_t expected, const Twine &expectedWhy);

/// `what` must have exactly the type `expected` (that of `expectedWhat`).
LogicalResult verifySameType(Operation *op, StringRef what, Type actual,
                             StringRef expectedWhat, Type expected);

/// y = x * W^T + b over the last dim, with W [out, in] static and b [out]:
/// result is the input shape with the last dim replaced by out.
LogicalResult verifyLinearShapes(Operation *op, ShapedType input,
                                 ShapedType weight, Value bias,
                                 ShapedType result);

/// The cache a decoder attention op reads, as its verifier sees it.
struct AttentionCacheShape {
  StringRef what; // operand name in messages: "cache", "kv_cache"
  int64_t numLayers, numKvHeads, headDim;
};

/// Rules shared by llm.paged_attention and the decoder form of
/// llm.distributed_attention: positive sizes, grouped heads, the layer
/// inside the cache, cache heads/head dim equal to the attributes,
/// q [T, H*D], k and v [T, Hkv*D], result typed as q.
LogicalResult verifyDecoderAttention(Operation *op, Value query, Value key,
                                     Value value, Type result, int64_t layer,
                                     int64_t numHeads, int64_t numKvHeads,
                                     int64_t headDim, const llvm::APFloat &scale,
                                     const AttentionCacheShape &cache);

} // namespace mlir::llm::detail

#endif // LLMIR_IR_SRC_VERIFYHELPERS_H
