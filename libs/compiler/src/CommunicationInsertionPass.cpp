// llm-insert-communication: applies `llm.partition` to every entry point.
//
// Tensor parallelism (Megatron): a linear fed by a norm (q/k/v, gate/up) is
// column-parallel (weight sliced on dim 0, local output); a linear fed by
// attention or SwiGLU (o_proj, down_proj) is row-parallel (weight sliced on
// dim 1, partial sum) and followed by the block's single llm.all_reduce.
// Attention keeps heads / tp local heads; when tp exceeds the KV heads, the
// k/v projections are split by KV head and each KV head is replicated on the
// tp / KV-heads consecutive ranks whose query heads use it (vLLM does the
// same). The embedding table and the LM head
// are vocabulary-parallel: the embedding's partial rows are all-reduced, the
// logits' vocabulary slices all-gathered on the last dim (a vocabulary tp
// does not divide is padded to tp x ceil(V / tp) rows, the padding's logits
// dropped by the gather). `shard_id` is 0 in
// this rank-independent module; the lowering picks each rank's slice.
//
// Pipeline parallelism: the body becomes one llm.pipeline_stage per stage
// holding its layers (and their weights); a stage starts with
// llm.pipeline_recv from the previous one and ends with llm.pipeline_send to
// the next.
//
// Sequence parallelism (sp > 1): the cache argument becomes a
// !llm.sharded_kv_cache with shards = sp. In @prefill (the step function the
// engine runs for every step) the tokens are split: every llm.paged_attention
// becomes the decoder form of llm.sequence_parallel_attention (each sp rank
// computes the linears of its contiguous slice of the step's rows, the K/V
// rows are gathered, each rank attends its own query rows) and the hidden
// rows are gathered back (llm.all_gather on dim 0) before llm.logits. Other
// functions (@decode) split the keys: llm.distributed_attention, linears
// replicated, block b of a sequence owned by sp index b % sp, partials
// merged exactly (docs/compiler.md).
#include "DecoderSegments.h"
#include "Partition.h"
#include "PassDetail.h"
#include "llmir/compiler/Passes.h"

#include "llmir/IR/LLMOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "llvm/ADT/SmallPtrSet.h"

using namespace mlir;

namespace llmir::compiler {
namespace {

RankedTensorType withDim(Type type, unsigned dim, int64_t size) {
  auto ranked = type.cast<RankedTensorType>();
  SmallVector<int64_t> shape(ranked.getShape().begin(), ranked.getShape().end());
  shape[dim] = size;
  return RankedTensorType::get(shape, ranked.getElementType());
}

class TensorParallelRewriter {
public:
  TensorParallelRewriter(func::FuncOp step, int tp)
      : step(step), tp(tp), b(step.getContext()) {}

  LogicalResult run() {
    SmallVector<Operation *> ops;
    for (Operation &op : step.getBody().front())
      ops.push_back(&op);
    if (failed(planHeads()))
      return failure();
    for (Operation *op : ops)
      if (failed(rewrite(op)))
        return failure();
    return localizeCache();
  }

private:
  /// Follows `v` back through RoPE and a per-head norm to its projection.
  static llm::LinearOp projectionOf(Value v) {
    while (Operation *producer = v.getDefiningOp()) {
      if (!isa<llm::RotaryEmbeddingOp, llm::RMSNormOp>(producer))
        break;
      v = producer->getOperand(0);
    }
    return v.getDefiningOp<llm::LinearOp>();
  }

  /// How the heads go over the ranks, from the first attention (every layer
  /// of an imported model has the same heads):
  /// - tp divides the query and KV heads: heads / tp each;
  /// - tp divides the query heads, the KV heads divide tp: each KV head is
  ///   replicated on the tp / KV heads ranks whose query heads use it;
  /// - otherwise (uneven): rank r holds query heads [r * Lq, (r + 1) * Lq)
  ///   with Lq = ceil(heads / tp) (past the last head: zero padding heads,
  ///   whose o_proj columns are zero) and the Lkv KV heads from
  ///   (r * Lq) / group on that those use; attention maps its heads to KV
  ///   heads by global index (kv_group).
  LogicalResult planHeads() {
    llm::PagedAttentionOp first;
    step.walk([&](llm::PagedAttentionOp a) {
      if (!first)
        first = a;
      if (auto q = projectionOf(a.getQuery()))
        queryProjections.insert(q);
      for (Value v : {a.getKey(), a.getValue()})
        if (auto kv = projectionOf(v))
          keyValueProjections.insert(kv);
    });
    if (!first)
      return success();
    heads = first.getNumHeads();
    kvHeads = first.getNumKvHeads();
    headDim = first.getHeadDim();
    uneven = heads % tp != 0 || (kvHeads % tp != 0 && tp % kvHeads != 0);
    if (!uneven) {
      localHeads = heads / tp;
      localKvHeads = std::max<int64_t>(1, kvHeads / tp);
      return success();
    }
    group = heads / kvHeads;
    localHeads = (heads + tp - 1) / tp;
    localKvHeads = 0;
    for (int64_t r = 0; r < tp; ++r)
      localKvHeads = std::max(localKvHeads, ((r + 1) * localHeads - 1) / group -
                                                (r * localHeads) / group + 1);
    return success();
  }

  /// Slices the weight `w` (an llm.weight) `ways` ways along `dim`, `local`
  /// entries each; when ways x local exceeds the tensor, the excess is zero
  /// padding (unpadded_size).
  FailureOr<llm::WeightOp> shard(Value w, unsigned dim, int64_t local, int ways) {
    auto weight = w.getDefiningOp<llm::WeightOp>();
    if (!weight)
      return step.emitError("a sharded operand is not an llm.weight");
    if (!weight->hasOneUse())
      return weight.emitError("weight '") << weight.getName()
                                          << "' has several users, expected one";
    auto type = weight.getType().cast<RankedTensorType>();
    const int64_t full = type.getDimSize(dim);
    if (local * ways != full) {
      if (local * ways < full)
        return weight.emitError("weight '")
               << weight.getName() << "' dim " << dim << " is " << full
               << ", more than tp = " << tp << " x " << local;
      // A part of a fused tensor (row_offset) pads within the part.
      weight.setUnpaddedSizeAttr(b.getI64IntegerAttr(full));
    }
    weight.getResult().setType(withDim(type, dim, local));
    weight.setShardDimAttr(b.getI32IntegerAttr(dim));
    weight.setNumShardsAttr(b.getI32IntegerAttr(ways));
    return weight;
  }

  /// Splits `w` evenly, or padded to tp x ceil(size / tp).
  LogicalResult shardPadded(Value w, unsigned dim) {
    const int64_t full = w.getType().cast<RankedTensorType>().getDimSize(dim);
    return shard(w, dim, (full + tp - 1) / tp, tp);
  }

  /// The output features of a column-parallel linear (and its bias).
  LogicalResult shardColumns(llm::LinearOp l, int &ways, int64_t &local) {
    const int64_t full = l.getType().cast<RankedTensorType>().getDimSize(1);
    const bool kv = keyValueProjections.contains(l);
    ways = tp;
    if (kv && !uneven && kvHeads < tp)
      ways = static_cast<int>(kvHeads); // replicated KV heads
    if (queryProjections.contains(l) && uneven)
      local = localHeads * headDim;
    else if (kv && uneven)
      local = localKvHeads * headDim;
    else
      local = (full + ways - 1) / ways;
    for (Value w : {l.getWeight(), l.getBias()}) {
      if (!w)
        continue;
      auto sharded = shard(w, 0, local, ways);
      if (failed(sharded))
        return failure();
      if (kv && uneven) { // shard r starts at KV head (r * Lq) / group
        sharded->setUnpaddedSizeAttr(b.getI64IntegerAttr(full));
        sharded->setShardQueryHeadsAttr(b.getI64IntegerAttr(localHeads));
        sharded->setKvGroupAttr(b.getI64IntegerAttr(group));
        sharded->setHeadDimAttr(b.getI64IntegerAttr(headDim));
      }
    }
    return success();
  }

  /// `padding`: trailing gathered columns to drop (vocabulary padding).
  Value collectiveAfter(Operation *op, bool gather, int64_t padding = 0) {
    b.setInsertionPointAfter(op);
    Value local = op->getResult(0);
    Operation *collective;
    if (gather) {
      auto type = local.getType().cast<RankedTensorType>();
      unsigned last = type.getRank() - 1;
      collective = b.create<llm::AllGatherOp>(
          op->getLoc(), withDim(type, last, type.getDimSize(last) * tp - padding),
          local, b.getI32IntegerAttr(last), b.getI32IntegerAttr(tp),
          padding ? b.getI64IntegerAttr(padding) : IntegerAttr());
    } else {
      collective = b.create<llm::AllReduceOp>(op->getLoc(), local.getType(), local,
                                              b.getStringAttr("sum"),
                                              b.getI32IntegerAttr(tp));
    }
    local.replaceAllUsesExcept(collective->getResult(0), collective);
    return collective->getResult(0);
  }

  LogicalResult rewriteLinear(llm::LinearOp l) {
    Operation *producer = l.getInput().getDefiningOp();
    bool column = producer && isa<llm::RMSNormOp>(producer);
    bool row = producer && isa<llm::PagedAttentionOp, llm::SwiGLUOp>(producer);
    if (!column && !row)
      return success(); // not part of a Megatron block: stays replicated
    unsigned dim = column ? 0 : 1;
    int ways = tp;
    int64_t local = 0;
    if (column) {
      if (failed(shardColumns(l, ways, local)))
        return failure();
    } else {
      // o_proj takes this rank's (padded) heads, down_proj its MLP columns.
      const int64_t full = l.getWeight().getType().cast<RankedTensorType>().getDimSize(1);
      local = isa<llm::PagedAttentionOp>(producer) && uneven ? localHeads * headDim
                                                             : (full + tp - 1) / tp;
      if (failed(shard(l.getWeight(), 1, local, tp)))
        return failure();
    }
    auto resultType = l.getType().cast<RankedTensorType>();
    if (column)
      resultType = withDim(resultType, 1, local);
    b.setInsertionPoint(l);
    auto sharded = b.create<llm::ShardedLinearOp>(
        l.getLoc(), resultType, l.getInput(), l.getWeight(), l.getBias(),
        b.getI32IntegerAttr(dim), b.getI32IntegerAttr(ways), b.getI32IntegerAttr(0));
    l.getResult().replaceAllUsesWith(sharded.getResult());
    l.erase();
    if (row)
      collectiveAfter(sharded, /*gather=*/false);
    return success();
  }

  LogicalResult rewrite(Operation *op) {
    if (auto l = dyn_cast<llm::LinearOp>(op))
      return rewriteLinear(l);
    // Vocabulary-parallel: a vocabulary tp does not divide is padded (the
    // embedding never looks padding rows up; the gather drops their logits).
    if (auto e = dyn_cast<llm::EmbeddingOp>(op)) {
      if (failed(shardPadded(e.getTable(), 0)))
        return failure();
      collectiveAfter(e, /*gather=*/false);
      return success();
    }
    if (auto l = dyn_cast<llm::LogitsOp>(op)) {
      if (failed(shardPadded(l.getWeight(), 0)))
        return failure();
      auto type = l.getType().cast<RankedTensorType>();
      const int64_t vocab = type.getDimSize(1), local = (vocab + tp - 1) / tp;
      l.getResult().setType(withDim(type, 1, local));
      collectiveAfter(l, /*gather=*/true, local * tp - vocab);
      return success();
    }
    if (auto a = dyn_cast<llm::PagedAttentionOp>(op)) {
      if (a.getNumHeads() != heads || a.getNumKvHeads() != kvHeads)
        return a.emitError() << "has " << a.getNumHeads() << "/" << a.getNumKvHeads()
                             << " heads, layer 0 " << heads << "/" << kvHeads
                             << "; tensor parallelism needs the same in every layer";
      a.setNumHeadsAttr(b.getI32IntegerAttr(localHeads));
      a.setNumKvHeadsAttr(b.getI32IntegerAttr(localKvHeads));
      if (uneven)
        a.setKvGroupAttr(b.getI32IntegerAttr(group));
      a.getResult().setType(a.getQuery().getType());
      return success();
    }
    // Per-token ops follow their (possibly now local) input; a per-head
    // rms_norm (Qwen3's q/k norm) keeps its whole head_dim weight.
    if (isa<llm::RotaryEmbeddingOp, llm::SwiGLUOp, llm::RMSNormOp>(op))
      op->getResult(0).setType(op->getOperand(0).getType());
    return success();
  }

  /// The paged KV cache argument holds this rank's KV heads only.
  LogicalResult localizeCache() {
    Block &entry = step.getBody().front();
    SmallVector<Type> inputs;
    for (BlockArgument arg : entry.getArguments()) {
      if (auto cache = arg.getType().dyn_cast<llm::PagedKVCacheType>()) {
        arg.setType(llm::PagedKVCacheType::get(
            step.getContext(), cache.getElementType(), cache.getNumLayers(),
            localKvHeads, cache.getHeadDim(), cache.getBlockSize(),
            cache.getMaxSeqLen()));
      }
      inputs.push_back(arg.getType());
    }
    step.setType(FunctionType::get(step.getContext(), inputs,
                                   step.getFunctionType().getResults()));
    return success();
  }

  func::FuncOp step;
  int tp;
  OpBuilder b;
  /// The q and the k/v projections of the attentions.
  llvm::SmallPtrSet<Operation *, 16> queryProjections, keyValueProjections;
  /// The head split (planHeads).
  int64_t heads = 0, kvHeads = 0, headDim = 0, group = 1;
  int64_t localHeads = 0, localKvHeads = 0;
  bool uneven = false;
};

/// Moves the segments of each stage into an llm.pipeline_stage.
LogicalResult splitIntoStages(func::FuncOp step, const Partition &p) {
  auto segments = segmentDecoder(step);
  if (failed(segments))
    return failure();
  int64_t total = 0;
  for (int64_t n : p.stageLayers)
    total += n;
  if (total != static_cast<int64_t>(segments->layers.size()))
    return step.emitError() << "llm.partition places " << total << " layers, @"
                            << step.getName() << " has " << segments->layers.size();
  OpBuilder b(step.getContext());
  Operation *ret = step.getBody().front().getTerminator();
  Type hiddenType = segments->prologueOutput.getType();
  Value previous;
  size_t nextLayer = 0;
  for (int s = 0; s < p.pp; ++s) {
    bool last = s == p.pp - 1;
    DecoderSegments::Ops ops;
    if (s == 0)
      ops.append(segments->prologue);
    Value boundaryIn = s == 0 ? Value() : segments->layerOutputs[nextLayer - 1];
    for (int64_t i = 0; i < p.stageLayers[s]; ++i, ++nextLayer)
      ops.append(segments->layers[nextLayer]);
    if (last)
      ops.append(segments->epilogue);
    Value out = last ? ret->getOperand(0) : segments->layerOutputs[nextLayer - 1];

    b.setInsertionPoint(ret);
    SmallVector<Value> inputs;
    if (previous)
      inputs.push_back(previous);
    auto stage = b.create<llm::PipelineStageOp>(
        step.getLoc(), TypeRange{out.getType()}, inputs, b.getI32IntegerAttr(s),
        b.getI32IntegerAttr(p.pp), b.getStringAttr("1f1b"));
    Block *body = new Block();
    stage.getBody().push_back(body);
    for (Value in : inputs)
      body->addArgument(in.getType(), step.getLoc());
    for (Operation *op : ops)
      op->moveBefore(body, body->end());
    b.setInsertionPointToStart(body);
    if (boundaryIn) {
      auto recv = b.create<llm::PipelineRecvOp>(step.getLoc(), hiddenType,
                                                b.getI32IntegerAttr(s - 1));
      boundaryIn.replaceUsesWithIf(recv.getResult(), [&](OpOperand &use) {
        return stage->isProperAncestor(use.getOwner());
      });
    }
    b.setInsertionPointToEnd(body);
    if (!last)
      b.create<llm::PipelineSendOp>(step.getLoc(), out, b.getI32IntegerAttr(s + 1));
    b.create<llm::YieldOp>(step.getLoc(), out);
    previous = stage.getResult(0);
  }
  ret->setOperand(0, previous);
  return success();
}

/// Attention over a KV cache split `sp` ways along the sequence.
void shardCacheAlongSequence(func::FuncOp step, int sp) {
  MLIRContext *context = step.getContext();
  Block &entry = step.getBody().front();
  SmallVector<Type> inputs;
  for (BlockArgument arg : entry.getArguments()) {
    if (auto cache = arg.getType().dyn_cast<llm::PagedKVCacheType>())
      arg.setType(llm::ShardedKVCacheType::get(
          context, cache.getElementType(), cache.getNumLayers(),
          cache.getNumKvHeads(), cache.getHeadDim(), cache.getBlockSize(),
          cache.getMaxSeqLen(), sp));
    inputs.push_back(arg.getType());
  }
  step.setType(FunctionType::get(context, inputs, step.getFunctionType().getResults()));
  SmallVector<llm::PagedAttentionOp> attentions;
  step.walk([&](llm::PagedAttentionOp a) { attentions.push_back(a); });
  const bool splitTokens = step.getName() == "prefill";
  OpBuilder b(context);
  for (llm::PagedAttentionOp a : attentions) {
    b.setInsertionPoint(a);
    Operation *replacement;
    if (splitTokens)
      replacement = b.create<llm::SequenceParallelAttentionOp>(
          a.getLoc(), a.getType(), a.getQuery(), a.getKey(), a.getValue(),
          a.getCache(), /*seq_start=*/nullptr, /*seq_length=*/nullptr,
          /*total_length=*/nullptr, a.getLayerAttr(), a.getNumHeadsAttr(),
          a.getNumKvHeadsAttr(), a.getHeadDimAttr(), a.getScaleAttr(),
          a.getSlidingWindowAttr(), a.getKvGroupAttr());
    else
      replacement = b.create<llm::DistributedAttentionOp>(
          a.getLoc(), a.getType(), a.getQuery(), ValueRange{a.getKey(), a.getValue()},
          a.getCache(), a.getLayerAttr(), a.getNumHeadsAttr(), a.getNumKvHeadsAttr(),
          a.getHeadDimAttr(), a.getScaleAttr(), a.getSlidingWindowAttr(),
          a.getKvGroupAttr());
    a.getResult().replaceAllUsesWith(replacement->getResult(0));
    a.erase();
  }
  if (!splitTokens)
    return;
  // The logits need every row: gather the (normalised) hidden rows back.
  step.walk([&](llm::LogitsOp logits) {
    b.setInsertionPoint(logits);
    Value rows = logits.getInput();
    auto gathered = b.create<llm::AllGatherOp>(
        logits.getLoc(), rows.getType(), rows, b.getI32IntegerAttr(0),
        b.getI32IntegerAttr(sp), IntegerAttr());
    logits.getInputMutable().assign(gathered.getResult());
  });
}

struct CommunicationInsertionPass
    : CommunicationInsertionBase<CommunicationInsertionPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto partition = readPartition(module);
    if (failed(partition))
      return signalPassFailure();
    for (auto step : module.getOps<func::FuncOp>()) {
      if (step.isExternal())
        continue;
      if (partition->tp > 1 && failed(TensorParallelRewriter(step, partition->tp).run()))
        return signalPassFailure();
      if (partition->pp > 1 && failed(splitIntoStages(step, *partition)))
        return signalPassFailure();
      // Last: the stage split recognises layers by their paged_attention.
      if (partition->sp > 1)
        shardCacheAlongSequence(step, partition->sp);
    }
  }
};

} // namespace

std::unique_ptr<Pass> createCommunicationInsertionPass() {
  return std::make_unique<CommunicationInsertionPass>();
}

} // namespace llmir::compiler
