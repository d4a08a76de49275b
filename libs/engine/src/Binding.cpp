#include "Binding.h"

#include "OpSpec.h"
#include "ProgramValidator.h"

#include <algorithm>
#include <cstring>
#include <set>

namespace llmir::engine {
namespace {

bool listed(const std::vector<const char *> &names, const std::string &key) {
  return std::any_of(names.begin(), names.end(),
                     [&](const char *n) { return key == n; });
}

/// Every attribute key must be one the opcode reads: a misspelt optional
/// attribute would otherwise fall back to its default without a word.
Status checkKnownAttributes(const proto::Instruction &inst, const OpSpec &spec) {
  for (const auto &[key, value] : inst.int_attrs())
    if (!listed(spec.intAttrs, key) && !listed(spec.optionalIntAttrs, key))
      return Status::error(std::string(spec.name) + " has unknown int attribute '" +
                           key + "'");
  for (const auto &[key, value] : inst.float_attrs())
    if (!listed(spec.floatAttrs, key) && !listed(spec.optionalFloatAttrs, key))
      return Status::error(std::string(spec.name) +
                           " has unknown float attribute '" + key + "'");
  return Status::ok();
}

InstructionParams decode(const proto::Instruction &inst,
                         const proto::ShardProgram &program) {
  auto intAttr = [&](const char *key, int64_t fallback = 0) {
    auto it = inst.int_attrs().find(key);
    return it == inst.int_attrs().end() ? fallback : it->second;
  };
  auto floatAttr = [&](const char *key) {
    auto it = inst.float_attrs().find(key);
    return it == inst.float_attrs().end() ? 0.0f : static_cast<float>(it->second);
  };
  InstructionParams p;
  p.vocabOffset = intAttr("vocab_offset");
  p.eps = floatAttr("eps");
  p.headDim = intAttr("head_dim");
  p.theta = floatAttr("theta");
  p.spSize = intAttr("sp_size", 1);
  p.spIndex = intAttr("sp_index", 0);
  cpu::AttentionParams &a = p.attention;
  a.layer = intAttr("layer");
  a.numHeads = intAttr("num_heads");
  a.numKvHeads = intAttr("num_kv_heads");
  a.headDim = p.headDim;
  a.scale = floatAttr("scale");
  a.slidingWindow = intAttr("sliding_window", 0);
  a.kvGroup = intAttr("kv_group", 0);
  a.headOffset = intAttr("head_offset", 0);
  if (inst.op() == proto::ROPE) {
    cpu::RopeScaling &r = p.ropeScaling;
    r.type = intAttr("rope_scaling", cpu::RopeScaling::None);
    r.factor = r.type == cpu::RopeScaling::None ? 1.0f : floatAttr("rope_factor");
    r.lowFreqFactor = floatAttr("rope_low_freq_factor");
    r.highFreqFactor = floatAttr("rope_high_freq_factor");
    r.originalMaxPosition = intAttr("rope_original_max_position");
    p.ropeInverseFrequencies = cpu::ropeInverseFrequencies(p.headDim, p.theta, r);
  }
  p.gatherPadding = intAttr("padding", 0);
  if (inst.op() == proto::ATTENTION_PARTIAL || inst.op() == proto::ATTENTION_MERGE) {
    a.kvShards = p.spSize;
    a.kvShard = p.spIndex;
  }
  p.group = static_cast<uint32_t>(intAttr("group"));
  for (const proto::CollectiveGroup &g : program.groups())
    if (g.id() == p.group)
      p.groupSize = g.ranks_size();
  p.peer = static_cast<uint32_t>(intAttr("peer"));
  return p;
}

} // namespace

Result<BoundProgram> bindProgram(const proto::ShardProgram &program,
                                 bool hasCommunicator) {
  LLMIR_RETURN_IF_ERROR(validateProgram(program, hasCommunicator));
  BoundProgram bound;
  for (const proto::TensorSlot &slot : program.slots())
    bound.slots.push_back({slot.name(), slot.is_weight(), slot.dtype(),
                           {slot.shape().begin(), slot.shape().end()}});
  for (int i = 0; i < program.instructions_size(); ++i) {
    const proto::Instruction &inst = program.instructions(i);
    const OpSpec &spec = *findOpSpec(inst.op()); // validated
    BoundInstruction b;
    b.op = inst.op();
    b.name = "instruction " + std::to_string(i) + " (" + spec.name + ")";
    LLMIR_RETURN_IF_ERROR(checkKnownAttributes(inst, spec).withContext(b.name));
    if (inst.op() == proto::KV_LOAD || inst.op() == proto::KV_STORE) {
      // Validated: both attributes present, 0 <= begin < end <= layers.
      bound.kvTransfers.push_back(
          {inst.op(), b.name, bound.instructions.size(),
           static_cast<uint32_t>(inst.int_attrs().at("layer_begin")),
           static_cast<uint32_t>(inst.int_attrs().at("layer_end"))});
      continue;
    }
    b.inputs.assign(inst.inputs().begin(), inst.inputs().end());
    for (uint32_t id : b.inputs)
      b.inputIsWeight.push_back(bound.slots[id].isWeight);
    b.outputs.assign(inst.outputs().begin(), inst.outputs().end());
    for (uint32_t id : b.outputs)
      b.outputAliasesInput.push_back(
          std::find(b.inputs.begin(), b.inputs.end(), id) != b.inputs.end());
    b.params = decode(inst, program);
    bound.instructions.push_back(std::move(b));
  }
  bound.hasOutput = program.has_output();
  bound.outputSlot = program.output_slot();
  bound.vocabSize = program.vocab_size();
  const proto::KvCacheSpec &kv = program.kv_cache();
  bound.kvCache = {kv.num_layers(), kv.num_kv_heads(), kv.head_dim(),
                   kv.block_size(), kv.num_blocks()};
  return bound;
}

std::vector<size_t> planLinearGroups(const std::vector<BoundInstruction> &insts,
                                     const std::function<bool(size_t)> &groupable,
                                     const LinearWeightOf &weightOf, size_t maxSize) {
  std::vector<size_t> groupSize(insts.size(), 1);
  for (size_t i = 0; i < insts.size();) {
    size_t end = i + 1;
    if (groupable(i)) {
      const auto first = weightOf(i);
      while (end < insts.size() && end - i < maxSize && groupable(end) &&
             insts[end].inputs[0] == insts[i].inputs[0] && weightOf(end) == first) {
        // The shared input must not be overwritten inside the group.
        bool overwrites = false;
        for (size_t j = i; j < end; ++j)
          overwrites |= insts[j].outputs[0] == insts[i].inputs[0];
        if (overwrites)
          break;
        ++end;
      }
    }
    groupSize[i] = end - i;
    for (size_t j = i + 1; j < end; ++j)
      groupSize[j] = 0;
    i = end;
  }
  return groupSize;
}

bool readBeforeWritten(const BoundProgram &program, size_t after, uint32_t slot) {
  const std::vector<BoundInstruction> &insts = program.instructions;
  for (size_t j = after + 1; j < insts.size(); ++j) {
    const BoundInstruction &inst = insts[j];
    if (std::find(inst.inputs.begin(), inst.inputs.end(), slot) != inst.inputs.end())
      return true;
    if (std::find(inst.outputs.begin(), inst.outputs.end(), slot) != inst.outputs.end())
      return false;
  }
  return program.hasOutput && program.outputSlot == slot;
}

RowPruning planRowPruning(const BoundProgram &program) {
  const std::vector<BoundInstruction> &insts = program.instructions;
  size_t select = insts.size();
  for (size_t i = insts.size(); i-- > 0;)
    if (insts[i].op == proto::SELECT_ROWS) {
      select = i;
      break;
    }
  if (select == insts.size() || insts[select].inputs.empty() ||
      insts[select].outputAliasesInput[0])
    return {};
  // Backwards from the SELECT_ROWS: `live` holds the activations the
  // instructions from i on read before writing them.
  std::set<uint32_t> live = {insts[select].inputs[0]};
  size_t from = select;
  bool products = false;
  for (size_t i = select; i-- > 0;) {
    const BoundInstruction &inst = insts[i];
    const bool rowWise = inst.op == proto::LINEAR || inst.op == proto::ADD ||
                         inst.op == proto::RMS_NORM || inst.op == proto::SWIGLU;
    bool onlyForTheSelect = rowWise && !inst.outputs.empty();
    for (size_t o = 0; o < inst.outputs.size() && onlyForTheSelect; ++o)
      onlyForTheSelect = !inst.outputAliasesInput[o] && live.count(inst.outputs[o]) &&
                         !readBeforeWritten(program, select, inst.outputs[o]);
    if (!onlyForTheSelect)
      break;
    for (uint32_t o : inst.outputs)
      live.erase(o);
    for (size_t k = 0; k < inst.inputs.size(); ++k)
      if (k >= inst.inputIsWeight.size() || !inst.inputIsWeight[k])
        live.insert(inst.inputs[k]);
    products = products || inst.op == proto::LINEAR;
    from = i;
  }
  if (!products)
    return {};
  for (uint32_t slot : live)
    if (readBeforeWritten(program, select, slot))
      return {}; // read after the head: it must keep every row
  return {from, select, std::vector<uint32_t>(live.begin(), live.end())};
}

} // namespace llmir::engine
