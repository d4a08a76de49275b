//===- LLMTypes.cpp - types of the llm dialect ----------------------------===//
#include "llmir/IR/LLMTypes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::llm;

#define GET_TYPEDEF_CLASSES
#include "llmir/IR/LLMTypes.cpp.inc"

void LLMDialect::registerTypes() {
  addTypes<
#define GET_TYPEDEF_LIST
#include "llmir/IR/LLMTypes.cpp.inc"
      >();
}

namespace {
struct NamedSize {
  const char *name;
  int64_t value;
};

/// Checks the parameters every KV cache type shares: a float element type and
/// strictly positive sizes.
LogicalResult verifyCacheParams(function_ref<InFlightDiagnostic()> emitError,
                                StringRef typeName, Type elementType,
                                ArrayRef<NamedSize> sizes) {
  if (!elementType.isa<FloatType>())
    return emitError() << typeName << " element type is " << elementType
                       << ", expected a float type";
  for (const NamedSize &size : sizes)
    if (size.value <= 0)
      return emitError() << typeName << " " << size.name << " is "
                         << size.value << ", expected > 0";
  return success();
}
} // namespace

LogicalResult ShardedKVCacheType::verify(
    function_ref<InFlightDiagnostic()> emitError, Type elementType,
    int64_t numLayers, int64_t numHeads, int64_t headDim, int64_t blockSize,
    int64_t maxSeqLen, int64_t shards) {
  if (failed(verifyCacheParams(emitError, "sharded_kv_cache", elementType,
                               {{"numLayers", numLayers},
                                {"numHeads", numHeads},
                                {"headDim", headDim},
                                {"blockSize", blockSize},
                                {"maxSeqLen", maxSeqLen},
                                {"shards", shards}})))
    return failure();
  // The split is along the sequence: heads need not divide by shards (a
  // TP x SP rank may hold a single KV head in a 2-shard cache).
  if (maxSeqLen % shards != 0)
    return emitError() << "sharded_kv_cache maxSeqLen (" << maxSeqLen
                       << ") is not divisible by shards (" << shards << ")";
  return success();
}

LogicalResult PagedKVCacheType::verify(
    function_ref<InFlightDiagnostic()> emitError, Type elementType,
    int64_t numLayers, int64_t numKvHeads, int64_t headDim, int64_t blockSize,
    int64_t maxSeqLen) {
  return verifyCacheParams(emitError, "paged_kv_cache", elementType,
                           {{"numLayers", numLayers},
                            {"numKvHeads", numKvHeads},
                            {"headDim", headDim},
                            {"blockSize", blockSize},
                            {"maxSeqLen", maxSeqLen}});
}
