// llm-insert-kv-transfers: connects each rank's paged KV cache to the
// KV-block store (docs/kv-store.md). In every block that runs attention over
// a cache (a function body, or a pipeline stage's body after partitioning)
// it puts one `llm.remote_load(%cache) {layer_begin, layer_end}` right
// before the first attention and one `llm.remote_store` of the same layers
// right after the last, the layers being those the block's attention ops
// use. Which blocks move is not in the IR: it is data of each step (the
// lowering's KV_LOAD / KV_STORE read it from the step input).
//
// One range per block, not one per layer: the store keys a rank's block over
// all of its layers ([0, layers held), BlockKeyFields), so a per-layer split
// would change every key; the ops take any range for when it does.
#include "PassDetail.h"
#include "llmir/IR/LLMOps.h"
#include "llmir/compiler/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/MapVector.h"

#include <algorithm>

using namespace mlir;

namespace llmir::compiler {
namespace {

/// The cache an attention op writes and the (global) layer it uses; a null
/// cache for ops that are not cache attention.
struct CacheUse {
  Value cache;
  Optional<int32_t> layer;
};

CacheUse cacheUseOf(Operation *op) {
  if (auto a = dyn_cast<llm::PagedAttentionOp>(op))
    return {a.getCache(), a.getLayer()};
  if (auto a = dyn_cast<llm::DistributedAttentionOp>(op))
    return {a.getKvCache(), a.getLayer()};
  if (auto a = dyn_cast<llm::SequenceParallelAttentionOp>(op))
    if (a.getKvCache())
      return {a.getKvCache(), a.getLayer()};
  return {};
}

bool movesBlocksOf(Operation *op, Value cache) {
  if (auto load = dyn_cast<llm::RemoteLoadOp>(op))
    return load.isCacheForm() && load.getAddress() == cache;
  if (auto store = dyn_cast<llm::RemoteStoreOp>(op))
    return store.isCacheForm() && store.getAddress() == cache;
  return false;
}

struct KvTransferInsertionPass : KvTransferInsertionBase<KvTransferInsertionPass> {
  void runOnOperation() override {
    bool failed = false;
    getOperation().walk([&](func::FuncOp func) {
      // Blocks in walk order; per block, its attention ops per cache.
      llvm::MapVector<Block *, llvm::MapVector<Value, SmallVector<Operation *>>> uses;
      func.walk([&](Operation *op) {
        CacheUse use = cacheUseOf(op);
        if (use.cache)
          uses[op->getBlock()][use.cache].push_back(op);
      });
      for (auto &[block, perCache] : uses)
        for (auto &[cache, attentions] : perCache)
          failed |= ::mlir::failed(insertTransfers(block, cache, attentions));
    });
    if (failed)
      signalPassFailure();
  }

  LogicalResult insertTransfers(Block *block, Value cache, ArrayRef<Operation *> attentions) {
    for (Operation &op : *block)
      if (movesBlocksOf(&op, cache))
        return op.emitOpError() << "is already here: llm-insert-kv-transfers runs once";
    SmallVector<int32_t> layers;
    for (Operation *op : attentions) {
      Optional<int32_t> layer = cacheUseOf(op).layer;
      if (!layer)
        return op->emitOpError()
               << "has no 'layer': llm-insert-kv-transfers needs the layer of every "
                  "attention over the cache";
      layers.push_back(*layer);
    }
    // Blocks of the store hold one range of layers: the block's attention
    // ops must cover it exactly once, in order (the lowering numbers a
    // rank's layers by the order of its attention ops).
    for (size_t i = 1; i < layers.size(); ++i)
      if (layers[i] != layers[i - 1] + 1)
        return attentions[i]->emitOpError()
               << "uses layer " << layers[i] << " after layer " << layers[i - 1]
               << "; llm-insert-kv-transfers needs the attention ops of a block "
                  "over consecutive layers in order";
    OpBuilder b(attentions.front());
    auto begin = b.getI32IntegerAttr(layers.front());
    auto end = b.getI32IntegerAttr(layers.back() + 1);
    const Location loc = attentions.front()->getLoc();
    b.create<llm::RemoteLoadOp>(loc, /*result=*/Type(), cache, /*device=*/IntegerAttr(),
                                begin, end);
    b.setInsertionPointAfter(attentions.back());
    b.create<llm::RemoteStoreOp>(attentions.back()->getLoc(), /*data=*/Value(), cache,
                                 /*device=*/IntegerAttr(), begin, end);
    return success();
  }
};

} // namespace

std::unique_ptr<Pass> createKvTransferInsertionPass() {
  return std::make_unique<KvTransferInsertionPass>();
}

} // namespace llmir::compiler
