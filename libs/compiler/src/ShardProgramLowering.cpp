#include "llmir/compiler/ShardProgramLowering.h"

#include "llmir/IR/LLMOps.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>
#include <map>
#include <tuple>

using namespace mlir;

namespace llmir::compiler {
namespace {

llvm::Error errorAt(Operation *op, const llvm::Twine &message) {
  std::string where;
  llvm::raw_string_ostream os(where);
  os << op->getLoc();
  return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                 "'" + op->getName().getStringRef().str() +
                                     "' at " + os.str() + ": " + message.str());
}

proto::DType protoDType(Type elementType) {
  if (elementType.isBF16())
    return proto::BF16;
  if (elementType.isF16())
    return proto::F16;
  if (elementType.isInteger(32))
    return proto::I32;
  return proto::F32;
}

/// Builds the program: one slot per SSA tensor value, one instruction (two
/// for llm.logits) per op. Function arguments (tokens, positions, cache) are
/// the step's implicit inputs and get no slot.
class Lowering {
public:
  Lowering(const RankPlacement &placement) : placement(placement) {
    program.set_format_version(proto::FORMAT_VERSION_1);
    program.set_rank(placement.rank);
    program.set_world_size(placement.worldSize);
    program.set_stage_id(placement.stageId);
    program.set_num_stages(placement.numStages);
    for (const proto::CollectiveGroup &group : placement.groups)
      *program.add_groups() = group;
  }

  llvm::Expected<proto::ShardProgram> run(func::FuncOp step) {
    if (auto model = step->getParentOfType<ModuleOp>()->getAttrOfType<DictionaryAttr>("llm.model")) {
      if (auto vocab = model.getAs<IntegerAttr>("vocab_size"))
        program.set_vocab_size(vocab.getInt());
      if (auto source = model.getAs<StringAttr>("source"))
        program.set_model_name(source.getValue().str());
    }
    Block *body = &step.getBody().front();
    bool staged = false;
    for (auto stage : body->getOps<llm::PipelineStageOp>()) {
      staged = true;
      if (stage.getNumStages() != static_cast<int32_t>(placement.numStages))
        return errorAt(stage, "module has " + llvm::Twine(stage.getNumStages()) +
                                  " pipeline stages, the rank's placement " +
                                  llvm::Twine(placement.numStages));
      if (stage.getStageId() == static_cast<int32_t>(placement.stageId))
        body = &stage.getBody().front();
    }
    if (staged && body == &step.getBody().front())
      return errorAt(step, "has no llm.pipeline_stage with stage_id " +
                               llvm::Twine(placement.stageId));
    step.walk([&](llm::SequenceParallelAttentionOp a) {
      tokenSplit = tokenSplit || a.isDecoderForm();
    });
    if (tokenSplit && placement.spSize < 2)
      return errorAt(step, "splits tokens (llm.sequence_parallel_attention) on "
                           "a rank outside a sequence-parallel group");
    for (Operation &op : *body) {
      if (staged && isa<func::ReturnOp>(op))
        continue;
      if (llvm::Error err = lower(&op))
        return std::move(err);
    }
    if (pendingLoadEnd > numAttentionLayers)
      return errorAt(step, "loads KV blocks of " + llvm::Twine(pendingLoadEnd) +
                               " layers, the rank runs attention over " +
                               llvm::Twine(numAttentionLayers));
    return std::move(program);
  }

private:
  uint32_t addSlot(RankedTensorType type, bool isWeight, const std::string &name) {
    proto::TensorSlot *slot = program.add_slots();
    slot->set_id(program.slots_size() - 1);
    slot->set_name(name);
    slot->set_dtype(isWeight ? protoDType(type.getElementType()) : proto::F32);
    for (int64_t dim : type.getShape())
      slot->add_shape(ShapedType::isDynamic(dim) ? -1 : dim);
    slot->set_is_weight(isWeight);
    return slot->id();
  }

  uint32_t newSlot(Value value, bool isWeight, const std::string &name) {
    uint32_t id = addSlot(value.getType().cast<RankedTensorType>(), isWeight, name);
    slots[value] = id;
    return id;
  }

  uint32_t activationSlot(Value value) {
    return newSlot(value, /*isWeight=*/false,
                   "%" + std::to_string(program.slots_size()));
  }

  llvm::Expected<uint32_t> slotOf(Operation *user, Value value) {
    auto it = slots.find(value);
    if (it == slots.end())
      return errorAt(user, "operand is not produced by a lowered llm op");
    return it->second;
  }

  proto::Instruction *emit(proto::Opcode opcode) {
    proto::Instruction *inst = program.add_instructions();
    inst->set_op(opcode);
    return inst;
  }

  /// Emits `opcode` with the op's tensor operands as inputs and a fresh
  /// activation slot for its single result.
  llvm::Expected<proto::Instruction *> emitUnary(Operation *op, proto::Opcode opcode,
                                                 ValueRange inputs) {
    proto::Instruction *inst = emit(opcode);
    for (Value input : inputs) {
      auto slot = slotOf(op, input);
      if (!slot)
        return slot.takeError();
      inst->add_inputs(*slot);
    }
    if (op->getNumResults() == 1)
      inst->add_outputs(activationSlot(op->getResult(0)));
    return inst;
  }

  /// Identical slices (a tied embedding read by the embedding and the LM
  /// head) share one slot, so the engine loads the tensor once.
  llvm::Error lowerWeight(llm::WeightOp op) {
    auto type = op.getType().cast<RankedTensorType>();
    std::vector<int64_t> full(type.getShape().begin(), type.getShape().end());
    int64_t dim = -1, offset = 0, length = 0, paddedLength = 0;
    if (auto shardDim = op.getShardDim()) {
      // num_shards slices over the tp group: with fewer slices than ranks
      // (KV heads replicated when tp exceeds them), tp / num_shards
      // consecutive ranks share a slice.
      int64_t numShards = *op.getNumShards();
      if (numShards > placement.tpSize || placement.tpSize % numShards != 0)
        return errorAt(op, "weight sharded " + llvm::Twine(numShards) +
                               " ways on a rank of a tensor-parallel group of " +
                               llvm::Twine(placement.tpSize) +
                               " (expected a divisor of it)");
      dim = *shardDim;
      length = full[dim];
      offset = length * (placement.tpRank / (placement.tpSize / numShards));
      full[dim] = length * numShards;
      if (auto group = op.getKvGroup()) // uneven heads: this rank's first KV head
        offset = (placement.tpRank * *op.getShardQueryHeads() / *group) * *op.getHeadDim();
    }
    if (auto unpadded = op.getUnpaddedSize()) {
      // Padding (vocabulary, uneven heads or MLP): past the tensor, zeros.
      paddedLength = length;
      length = std::clamp<int64_t>(*unpadded - offset, 0, length);
      offset = std::min(offset, *unpadded);
      full[dim] = *unpadded;
    }
    if (auto rowOffset = op.getRowOffset()) { // a part of a fused tensor
      if (dim > 0)
        return errorAt(op, "reads a row range and is sharded along dim " +
                               llvm::Twine(dim) + "; only dim 0 slices compose");
      if (dim < 0) {
        dim = 0;
        length = full[0];
      }
      offset += *rowOffset;
      full[0] = *op.getTensorRows();
    }
    WeightKey key{op.getName().str(), dim, offset, length,
                  type.getAsOpaquePointer()};
    if (auto loaded = weightSlots.find(key); loaded != weightSlots.end()) {
      slots[op.getResult()] = loaded->second;
      return llvm::Error::success();
    }
    uint32_t slot = newSlot(op.getResult(), /*isWeight=*/true, op.getName().str());
    weightSlots.emplace(std::move(key), slot);
    proto::WeightSlice *slice = program.add_weights();
    slice->set_slot(slot);
    slice->set_tensor_name(op.getName().str());
    slice->set_dim(dim);
    slice->set_offset(offset);
    slice->set_length(length);
    if (paddedLength > length)
      slice->set_padded_length(paddedLength);
    for (int64_t d : full)
      slice->add_full_shape(d);
    return llvm::Error::success();
  }

  llvm::Error lower(Operation *op) {
    using Inst = llvm::Expected<proto::Instruction *>;
    auto done = [](Inst inst) -> llvm::Error {
      return inst ? llvm::Error::success() : inst.takeError();
    };
    return llvm::TypeSwitch<Operation *, llvm::Error>(op)
        .Case([&](llm::WeightOp w) { return lowerWeight(w); })
        .Case([&](llm::EmbeddingOp e) -> llvm::Error {
          Inst inst = emitUnary(op, proto::EMBEDDING, e.getTable());
          if (!inst)
            return inst.takeError();
          (*(*inst)->mutable_int_attrs())["vocab_offset"] = vocabOffset(e);
          if (tokenSplit)
            scatterRows(e.getResult());
          return llvm::Error::success();
        })
        .Case([&](llm::AllReduceOp r) {
          return lowerTensorParallelCollective(op, proto::ALL_REDUCE, r.getGroupSize());
        })
        .Case([&](llm::AllGatherOp g) -> llvm::Error {
          auto type = g.getInput().getType().cast<RankedTensorType>();
          if (tokenSplit && g.getDim() == 0 && type.getRank() == 2)
            return lowerRowGather(op, g.getInput(), g.getGroupSize());
          if (g.getDim() != type.getRank() - 1)
            return errorAt(op, "gathers dim " + llvm::Twine(g.getDim()) +
                                   ", ALL_GATHER concatenates the last dim only "
                                   "(and ALL_GATHER_ROWS dim 0 of a token-split "
                                   "function's rows)");
          if (llvm::Error err =
                  lowerTensorParallelCollective(op, proto::ALL_GATHER, g.getGroupSize()))
            return err;
          if (auto padding = g.getPadding()) // the vocabulary padding's logits
            (*program.mutable_instructions()->rbegin()->mutable_int_attrs())["padding"] =
                *padding;
          return llvm::Error::success();
        })
        .Case([&](llm::PipelineRecvOp r) -> llvm::Error {
          if (placement.prevStageRank < 0)
            return errorAt(op, "receives on the first pipeline stage");
          proto::Instruction *inst = emit(proto::RECV);
          inst->add_outputs(activationSlot(r.getResult()));
          (*inst->mutable_int_attrs())["peer"] = placement.prevStageRank;
          setRowSlice(*inst); // the previous stage sends this rank's rows
          return llvm::Error::success();
        })
        .Case([&](llm::PipelineSendOp s) -> llvm::Error {
          if (placement.nextStageRank < 0)
            return errorAt(op, "sends on the last pipeline stage");
          Inst inst = emitUnary(op, proto::SEND, s.getInput());
          if (inst)
            (*(*inst)->mutable_int_attrs())["peer"] = placement.nextStageRank;
          return done(std::move(inst));
        })
        .Case([&](llm::YieldOp y) -> llvm::Error {
          // Only the last stage's result (the logits) leaves the replica;
          // earlier stages hand theirs on with SEND.
          if (placement.stageId + 1 != placement.numStages)
            return llvm::Error::success();
          return setOutput(op, y.getValues().front());
        })
        .Case([&](llm::RMSNormOp n) {
          Inst inst = emitUnary(op, proto::RMS_NORM, {n.getInput(), n.getWeight()});
          if (inst)
            (*(*inst)->mutable_float_attrs())["eps"] = n.getEpsilon().convertToFloat();
          return done(std::move(inst));
        })
        .Case([&](llm::LinearOp l) {
          SmallVector<Value> inputs{l.getInput(), l.getWeight()};
          if (l.getBias())
            inputs.push_back(l.getBias());
          return done(emitUnary(op, proto::LINEAR, inputs));
        })
        .Case([&](llm::ShardedLinearOp l) {
          SmallVector<Value> inputs{l.getInput(), l.getWeight()};
          // A row-parallel bias is the full [out] vector; shard 0 adds it so
          // the all-reduced sum contains it exactly once.
          bool rowParallel = l.getShardDim() == 1;
          if (l.getBias() && (!rowParallel || placement.tpRank == 0))
            inputs.push_back(l.getBias());
          return done(emitUnary(op, proto::LINEAR, inputs));
        })
        .Case([&](llm::RotaryEmbeddingOp r) {
          Inst inst = emitUnary(op, proto::ROPE, r.getInput());
          if (inst) {
            auto &ints = *(*inst)->mutable_int_attrs();
            auto &floats = *(*inst)->mutable_float_attrs();
            ints["head_dim"] = r.getHeadDim();
            floats["theta"] = r.getTheta().convertToFloat();
            if (auto scaling = r.getScaling()) {
              ints["rope_scaling"] = *scaling == "llama3" ? 2 : 1;
              floats["rope_factor"] = r.getScalingFactor()->convertToFloat();
            }
            if (r.getScaling() && *r.getScaling() == "llama3") {
              floats["rope_low_freq_factor"] = r.getLowFreqFactor()->convertToFloat();
              floats["rope_high_freq_factor"] = r.getHighFreqFactor()->convertToFloat();
              ints["rope_original_max_position"] = *r.getOriginalMaxPosition();
            }
            setRowSlice(**inst); // rotates by the positions of its rows
          }
          return done(std::move(inst));
        })
        .Case([&](llm::PagedAttentionOp a) { return lowerAttention(a); })
        .Case([&](llm::DistributedAttentionOp a) {
          return lowerDistributedAttention(a);
        })
        .Case([&](llm::SequenceParallelAttentionOp a) {
          return lowerSequenceParallelAttention(a);
        })
        .Case([&](llm::RemoteLoadOp l) {
          return lowerKvTransfer(op, proto::KV_LOAD, l.isCacheForm(), l.getLayerBegin(),
                                 l.getLayerEnd(), /*beforeAttention=*/true);
        })
        .Case([&](llm::RemoteStoreOp s) {
          return lowerKvTransfer(op, proto::KV_STORE, s.isCacheForm(), s.getLayerBegin(),
                                 s.getLayerEnd(), /*beforeAttention=*/false);
        })
        .Case([&](llm::SwiGLUOp s) {
          return done(emitUnary(op, proto::SWIGLU, {s.getGate(), s.getUp()}));
        })
        .Case([&](llm::AddOp a) {
          return done(emitUnary(op, proto::ADD, {a.getLhs(), a.getRhs()}));
        })
        .Case([&](llm::LogitsOp l) { return lowerLogits(l); })
        .Case([&](func::ReturnOp ret) -> llvm::Error {
          if (ret.getNumOperands() == 0)
            return llvm::Error::success();
          return setOutput(op, ret.getOperand(0));
        })
        .Default([&](Operation *) {
          return errorAt(op, "has no ShardProgram lowering");
        });
  }

  llvm::Error setOutput(Operation *op, Value result) {
    auto slot = slotOf(op, result);
    if (!slot)
      return slot.takeError();
    program.set_has_output(true);
    program.set_output_slot(*slot);
    return llvm::Error::success();
  }

  /// First vocabulary row of this rank's embedding table slice.
  int64_t vocabOffset(llm::EmbeddingOp e) {
    auto table = e.getTable().getDefiningOp<llm::WeightOp>();
    if (!table || !table.getShardDim() || *table.getShardDim() != 0)
      return 0;
    return e.getTable().getType().cast<RankedTensorType>().getDimSize(0) *
           placement.tpRank;
  }

  /// The group of `kind` ("tp" or "sp") holding this rank, which must have
  /// `groupSize` ranks.
  llvm::Expected<uint32_t> groupOf(Operation *op, const char *kind, int64_t groupSize) {
    const proto::CollectiveGroup *group = nullptr;
    for (const proto::CollectiveGroup &g : placement.groups)
      if (g.kind() == kind)
        group = &g;
    if (!group || group->ranks_size() != groupSize) {
      std::string has = group ? "one of " + std::to_string(group->ranks_size())
                              : std::string("none");
      return errorAt(op, "needs a " + llvm::Twine(kind) + " group of " +
                             llvm::Twine(groupSize) + " ranks; rank " +
                             llvm::Twine(placement.rank) + " is in " + has);
    }
    return group->id();
  }

  llvm::Error lowerTensorParallelCollective(Operation *op, proto::Opcode opcode,
                                            int64_t groupSize) {
    auto group = groupOf(op, "tp", groupSize);
    if (!group)
      return group.takeError();
    auto inst = emitUnary(op, opcode, op->getOperand(0));
    if (!inst)
      return inst.takeError();
    (*(*inst)->mutable_int_attrs())["group"] = *group;
    return llvm::Error::success();
  }

  /// The attributes every attention opcode carries, and the KV cache spec:
  /// one more local layer (a pipeline stage holds only its own layers).
  void describeAttention(proto::Instruction &inst, int64_t numHeads,
                         int64_t numKvHeads, int64_t headDim,
                         const llvm::APFloat &scale, int64_t blockSize,
                         Optional<int32_t> slidingWindow, Optional<int32_t> kvGroup) {
    auto &ints = *inst.mutable_int_attrs();
    if (slidingWindow)
      ints["sliding_window"] = *slidingWindow;
    if (kvGroup) { // uneven heads: this rank's heads start at tp_index x heads
      ints["kv_group"] = *kvGroup;
      ints["head_offset"] = static_cast<int64_t>(placement.tpRank) * numHeads;
    }
    ints["layer"] = numAttentionLayers++;
    ints["num_heads"] = numHeads;
    ints["num_kv_heads"] = numKvHeads;
    ints["head_dim"] = headDim;
    (*inst.mutable_float_attrs())["scale"] = scale.convertToFloat();
    proto::KvCacheSpec *spec = program.mutable_kv_cache();
    spec->set_num_layers(numAttentionLayers);
    spec->set_num_kv_heads(numKvHeads);
    spec->set_head_dim(headDim);
    spec->set_block_size(blockSize);
  }

  llvm::Error lowerAttention(llm::PagedAttentionOp a) {
    auto inst = emitUnary(a, proto::ATTENTION, {a.getQuery(), a.getKey(), a.getValue()});
    if (!inst)
      return inst.takeError();
    auto cache = a.getCache().getType().cast<llm::PagedKVCacheType>();
    describeAttention(**inst, a.getNumHeads(), a.getNumKvHeads(), a.getHeadDim(),
                      a.getScale(), cache.getBlockSize(), a.getSlidingWindow(),
                      a.getKvGroup());
    return llvm::Error::success();
  }

  /// The KV cache of a decoder-form sequence-parallel attention op, sharded
  /// over the rank's sequence-parallel group.
  llvm::Expected<llm::ShardedKVCacheType> shardedCacheOf(Operation *op, bool decoderForm,
                                                         Value kvCache) {
    if (!decoderForm)
      return errorAt(op, "is the seed's 4-D form; only the decoder form "
                         "(q, k, v, kv_cache) lowers to a ShardProgram");
    auto cache = kvCache.getType().cast<llm::ShardedKVCacheType>();
    if (cache.getShards() != placement.spSize)
      return errorAt(op, "kv_cache has " + llvm::Twine(cache.getShards()) +
                             " shards, the rank's sequence-parallel group " +
                             llvm::Twine(placement.spSize) + " ranks");
    return cache;
  }

  /// ATTENTION_PARTIAL over this rank's blocks, ALL_GATHER of the partials
  /// (output ‖ log-sum-exp per head) over the sp group, ATTENTION_MERGE.
  llvm::Error lowerDistributedAttention(llm::DistributedAttentionOp a) {
    auto cache = shardedCacheOf(a, a.isDecoderForm(), a.getKvCache());
    if (!cache)
      return cache.takeError();
    auto group = groupOf(a, "sp", cache->getShards());
    if (!group)
      return group.takeError();
    const int64_t heads = a.getNumHeads(), headDim = a.getHeadDim();
    auto query = a.getQuery().getType().cast<RankedTensorType>();
    auto partialType = RankedTensorType::get(
        {query.getDimSize(0), heads * headDim + heads}, query.getElementType());
    auto gatheredType = RankedTensorType::get(
        {query.getDimSize(0), cache->getShards() * (heads * headDim + heads)},
        query.getElementType());

    proto::Instruction *partial = emit(proto::ATTENTION_PARTIAL);
    for (Value input : {a.getQuery(), a.getKeyValue()[0], a.getKeyValue()[1]}) {
      auto slot = slotOf(a, input);
      if (!slot)
        return slot.takeError();
      partial->add_inputs(*slot);
    }
    uint32_t partialSlot = addSlot(partialType, false, "attention_partial");
    partial->add_outputs(partialSlot);
    describeAttention(*partial, heads, *a.getNumKvHeads(), headDim, a.getScale(),
                      cache->getBlockSize(), a.getSlidingWindow(), a.getKvGroup());
    auto &partialInts = *partial->mutable_int_attrs();
    partialInts["sp_size"] = cache->getShards();
    partialInts["sp_index"] = placement.spIndex;

    proto::Instruction *gather = emit(proto::ALL_GATHER);
    gather->add_inputs(partialSlot);
    uint32_t gatheredSlot = addSlot(gatheredType, false, "attention_partials");
    gather->add_outputs(gatheredSlot);
    (*gather->mutable_int_attrs())["group"] = *group;

    proto::Instruction *merge = emit(proto::ATTENTION_MERGE);
    merge->add_inputs(gatheredSlot);
    merge->add_outputs(activationSlot(a.getResult()));
    auto &mergeInts = *merge->mutable_int_attrs();
    mergeInts["num_heads"] = heads;
    mergeInts["head_dim"] = headDim;
    mergeInts["sp_size"] = cache->getShards();
    return llvm::Error::success();
  }

  /// Under token split, the rows an instruction sees are this rank's slice.
  void setRowSlice(proto::Instruction &inst) {
    if (!tokenSplit)
      return;
    auto &ints = *inst.mutable_int_attrs();
    ints["sp_size"] = placement.spSize;
    ints["sp_index"] = placement.spIndex;
  }

  /// From the embedding on, `value` and what follows are this rank's rows.
  void scatterRows(Value value) {
    proto::Instruction *scatter = emit(proto::SP_SCATTER_ROWS);
    scatter->add_inputs(slots.lookup(value));
    uint32_t slice = addSlot(value.getType().cast<RankedTensorType>(), false, "sp_rows");
    scatter->add_outputs(slice);
    setRowSlice(*scatter);
    slots[value] = slice;
  }

  /// ALL_GATHER_ROWS of `inputs` (side by side) over the sp group into a
  /// fresh slot of `type`.
  llvm::Expected<uint32_t> gatherRows(Operation *op, ValueRange inputs,
                                      int64_t groupSize, RankedTensorType type,
                                      const std::string &name) {
    auto group = groupOf(op, "sp", groupSize);
    if (!group)
      return group.takeError();
    proto::Instruction *gather = emit(proto::ALL_GATHER_ROWS);
    for (Value input : inputs) {
      auto slot = slotOf(op, input);
      if (!slot)
        return slot.takeError();
      gather->add_inputs(*slot);
    }
    uint32_t out = addSlot(type, false, name);
    gather->add_outputs(out);
    (*gather->mutable_int_attrs())["group"] = *group;
    setRowSlice(*gather);
    return out;
  }

  llvm::Error lowerRowGather(Operation *op, Value input, int64_t groupSize) {
    auto out = gatherRows(op, input, groupSize,
                          op->getResult(0).getType().cast<RankedTensorType>(),
                          "%" + std::to_string(program.slots_size()));
    if (!out)
      return out.takeError();
    slots[op->getResult(0)] = *out;
    return llvm::Error::success();
  }

  /// ALL_GATHER_ROWS of this rank's k and v rows over the sp group, then
  /// SP_ATTENTION: store every row's k/v, attend this rank's query rows.
  llvm::Error lowerSequenceParallelAttention(llm::SequenceParallelAttentionOp a) {
    auto cache = shardedCacheOf(a, a.isDecoderForm(), a.getKvCache());
    if (!cache)
      return cache.takeError();
    const int64_t kvWidth = *a.getNumKvHeads() * *a.getHeadDim();
    auto kvType = RankedTensorType::get(
        {ShapedType::kDynamicSize, 2 * kvWidth},
        a.getKey().getType().cast<RankedTensorType>().getElementType());
    auto kv = gatherRows(a, {a.getKey(), a.getValue()}, cache->getShards(), kvType,
                         "sp_key_value_rows");
    if (!kv)
      return kv.takeError();
    proto::Instruction *attention = emit(proto::SP_ATTENTION);
    auto query = slotOf(a, a.getQuery());
    if (!query)
      return query.takeError();
    attention->add_inputs(*query);
    attention->add_inputs(*kv);
    attention->add_outputs(activationSlot(a.getResult()));
    describeAttention(*attention, *a.getNumHeads(), *a.getNumKvHeads(),
                      *a.getHeadDim(), *a.getScale(), cache->getBlockSize(),
                      a.getSlidingWindow(), a.getKvGroup());
    setRowSlice(*attention);
    return llvm::Error::success();
  }

  /// KV_LOAD / KV_STORE of the cache form. The ops name global layers; the
  /// program numbers a rank's layers by the order of its attention ops
  /// (describeAttention), so a load names the next `count` of them and a
  /// store the last `count` lowered.
  llvm::Error lowerKvTransfer(Operation *op, proto::Opcode opcode, bool cacheForm,
                              Optional<int32_t> begin, Optional<int32_t> end,
                              bool beforeAttention) {
    if (!cacheForm)
      return errorAt(op, "moves a tensor through a !llm.device_ptr; only the KV cache "
                         "form lowers to a ShardProgram (KV_LOAD / KV_STORE)");
    const int64_t count = *end - *begin; // verified: begin < end
    const int64_t first = beforeAttention ? numAttentionLayers : numAttentionLayers - count;
    if (first < 0)
      return errorAt(op, "stores " + llvm::Twine(count) + " layers after only " +
                             llvm::Twine(numAttentionLayers) +
                             " attention ops of this rank; it must follow the attention "
                             "of the layers it names");
    proto::Instruction *inst = emit(opcode);
    auto &ints = *inst->mutable_int_attrs();
    ints["layer_begin"] = first;
    ints["layer_end"] = first + count;
    if (beforeAttention)
      pendingLoadEnd = std::max(pendingLoadEnd, first + count);
    return llvm::Error::success();
  }

  llvm::Error lowerLogits(llm::LogitsOp l) {
    // Select the rows the step asks logits for, then project them.
    auto select = emit(proto::SELECT_ROWS);
    auto input = slotOf(l, l.getInput());
    if (!input)
      return input.takeError();
    select->add_inputs(*input);
    uint32_t selected = addSlot(
        l.getInput().getType().cast<RankedTensorType>(), false, "selected_rows");
    select->add_outputs(selected);
    auto weight = slotOf(l, l.getWeight());
    if (!weight)
      return weight.takeError();
    proto::Instruction *project = emit(proto::LINEAR);
    project->add_inputs(selected);
    project->add_inputs(*weight);
    project->add_outputs(activationSlot(l.getResult()));
    return llvm::Error::success();
  }

  const RankPlacement &placement;
  proto::ShardProgram program;
  llvm::DenseMap<Value, uint32_t> slots;
  /// Tensor name, shard dim, offset, length and local type of each loaded
  /// weight slice -> its slot.
  using WeightKey =
      std::tuple<std::string, int64_t, int64_t, int64_t, const void *>;
  std::map<WeightKey, uint32_t> weightSlots;
  int64_t numAttentionLayers = 0;
  /// The end of the layers the KV_LOADs so far named: the program's cache
  /// must hold them (checked once every attention op is lowered).
  int64_t pendingLoadEnd = 0;
  /// The function splits the step's rows over the sp group (it holds the
  /// decoder form of llm.sequence_parallel_attention).
  bool tokenSplit = false;
};

} // namespace

llvm::Expected<proto::ShardProgram>
lowerToShardProgram(func::FuncOp step, const RankPlacement &placement) {
  return Lowering(placement).run(step);
}

} // namespace llmir::compiler
