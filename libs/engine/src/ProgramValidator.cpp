#include "ProgramValidator.h"

#include "OpSpec.h"

#include <algorithm>
#include <string>
#include <vector>

namespace llmir::engine {
namespace {

Status validateSlots(const proto::ShardProgram &program) {
  for (int i = 0; i < program.slots_size(); ++i) {
    const proto::TensorSlot &slot = program.slots(i);
    if (slot.id() != static_cast<uint32_t>(i))
      return Status::error("slot at index " + std::to_string(i) + " ('" +
                           slot.name() + "') has id " +
                           std::to_string(slot.id()) +
                           "; slot ids must equal their index");
    for (int d = 0; d < slot.shape_size(); ++d) {
      int64_t dim = slot.shape(d);
      bool tokenDim = d == 0 && dim == -1 && !slot.is_weight();
      if (dim < 0 && !tokenDim)
        return Status::error("slot " + std::to_string(i) + " ('" +
                             slot.name() + "') has dimension " +
                             std::to_string(d) + " = " + std::to_string(dim) +
                             "; only an activation's dim 0 may be -1");
    }
  }
  return Status::ok();
}

Status validateWeights(const proto::ShardProgram &program) {
  std::vector<int> loads(static_cast<size_t>(program.slots_size()), 0);
  for (const proto::WeightSlice &slice : program.weights()) {
    if (slice.slot() >= static_cast<uint32_t>(program.slots_size()) ||
        !program.slots(static_cast<int>(slice.slot())).is_weight())
      return Status::error("weight '" + slice.tensor_name() + "' targets slot " +
                           std::to_string(slice.slot()) +
                           ", which is not a weight slot of the program");
    ++loads[slice.slot()];
  }
  for (int i = 0; i < program.slots_size(); ++i)
    if (program.slots(i).is_weight() && loads[static_cast<size_t>(i)] != 1)
      return Status::error("weight slot " + std::to_string(i) + " ('" +
                           program.slots(i).name() + "') is loaded by " +
                           std::to_string(loads[static_cast<size_t>(i)]) +
                           " weight entries; expected exactly 1");
  return Status::ok();
}

bool hasGroup(const proto::ShardProgram &program, int64_t id) {
  return std::any_of(
      program.groups().begin(), program.groups().end(),
      [&](const proto::CollectiveGroup &g) {
        return static_cast<int64_t>(g.id()) == id && g.ranks_size() > 0;
      });
}

/// Checks beyond presence: values the kernels rely on.
Status validateAttributeValues(const proto::Instruction &inst,
                               const proto::ShardProgram &program) {
  const auto &ints = inst.int_attrs();
  const auto &kv = program.kv_cache();
  if (ints.contains("sp_size") || ints.contains("sp_index")) {
    const int64_t size = ints.contains("sp_size") ? ints.at("sp_size") : 0;
    const int64_t index = ints.contains("sp_index") ? ints.at("sp_index") : -1;
    if (size < 1 || index < 0 || index >= size)
      return Status::error("sp_index " + std::to_string(index) +
                           " outside a sequence-parallel group of sp_size " +
                           std::to_string(size) + " (both are needed)");
  }
  switch (inst.op()) {
  case proto::ROPE: {
    if (ints.at("head_dim") <= 0 || ints.at("head_dim") % 2 != 0)
      return Status::error("head_dim must be positive and even, got " +
                           std::to_string(ints.at("head_dim")));
    const auto &floats = inst.float_attrs();
    auto positive = [&](const char *key) {
      return floats.contains(key) && floats.at(key) > 0;
    };
    const int64_t scaling = ints.contains("rope_scaling") ? ints.at("rope_scaling") : 0;
    if (scaling < 0 || scaling > 2)
      return Status::error("rope_scaling " + std::to_string(scaling) +
                           " is not 0 (none), 1 (linear) or 2 (llama3)");
    if (scaling != 0 && !positive("rope_factor"))
      return Status::error("rope_scaling needs a positive rope_factor");
    if (scaling == 2 &&
        !(positive("rope_low_freq_factor") && positive("rope_high_freq_factor") &&
          floats.at("rope_high_freq_factor") > floats.at("rope_low_freq_factor") &&
          ints.contains("rope_original_max_position") &&
          ints.at("rope_original_max_position") > 0))
      return Status::error("llama3 rope_scaling needs rope_low_freq_factor < "
                           "rope_high_freq_factor (both positive) and a positive "
                           "rope_original_max_position");
    return Status::ok();
  }
  case proto::ATTENTION_PARTIAL: // sp_size / sp_index checked above
  case proto::SP_ATTENTION:
  case proto::ATTENTION: {
    if (ints.contains("sliding_window") && ints.at("sliding_window") < 0)
      return Status::error("sliding_window must be >= 0 (0: none), got " +
                           std::to_string(ints.at("sliding_window")));
    int64_t layer = ints.at("layer"), heads = ints.at("num_heads");
    int64_t kvHeads = ints.at("num_kv_heads"), headDim = ints.at("head_dim");
    if (layer < 0 || layer >= kv.num_layers())
      return Status::error("layer " + std::to_string(layer) +
                           " outside the KV cache's " +
                           std::to_string(kv.num_layers()) + " layers");
    if (kvHeads != kv.num_kv_heads() || headDim != kv.head_dim())
      return Status::error(
          "num_kv_heads=" + std::to_string(kvHeads) + " head_dim=" +
          std::to_string(headDim) + " differ from the KV cache's " +
          std::to_string(kv.num_kv_heads()) + " and " +
          std::to_string(kv.head_dim()));
    if (ints.contains("kv_group")) { // an uneven head split
      const int64_t group = ints.at("kv_group");
      const int64_t offset = ints.contains("head_offset") ? ints.at("head_offset") : -1;
      if (heads <= 0 || kvHeads <= 0 || group < 1 || offset < 0 ||
          (offset + heads - 1) / group - offset / group >= kvHeads)
        return Status::error("kv_group=" + std::to_string(group) + " head_offset=" +
                             std::to_string(offset) + " map num_heads=" +
                             std::to_string(heads) + " outside num_kv_heads=" +
                             std::to_string(kvHeads) + " (both are needed)");
      return Status::ok();
    }
    if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0)
      return Status::error("num_heads=" + std::to_string(heads) +
                           " must be a positive multiple of num_kv_heads=" +
                           std::to_string(kvHeads));
    return Status::ok();
  }
  case proto::KV_LOAD:
  case proto::KV_STORE: {
    const int64_t begin = ints.at("layer_begin"), end = ints.at("layer_end");
    if (begin < 0 || begin >= end || end > kv.num_layers())
      return Status::error("layers [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") are not a non-empty range of the KV cache's " +
                           std::to_string(kv.num_layers()) + " layers");
    return Status::ok();
  }
  case proto::ATTENTION_MERGE:
    if (ints.at("num_heads") <= 0 || ints.at("head_dim") <= 0 || ints.at("sp_size") < 1)
      return Status::error("num_heads, head_dim and sp_size must be positive, got " +
                           std::to_string(ints.at("num_heads")) + ", " +
                           std::to_string(ints.at("head_dim")) + ", " +
                           std::to_string(ints.at("sp_size")));
    return Status::ok();
  case proto::ALL_GATHER_ROWS: {
    auto group = std::find_if(
        program.groups().begin(), program.groups().end(),
        [&](const proto::CollectiveGroup &g) {
          return static_cast<int64_t>(g.id()) == ints.at("group");
        });
    if (group == program.groups().end() || group->ranks_size() != ints.at("sp_size"))
      return Status::error("group " + std::to_string(ints.at("group")) +
                           " is not a group of sp_size " +
                           std::to_string(ints.at("sp_size")) + " ranks of the program");
    return Status::ok();
  }
  case proto::ALL_REDUCE:
  case proto::ALL_GATHER:
    if (!hasGroup(program, ints.at("group")))
      return Status::error("group " + std::to_string(ints.at("group")) +
                           " is not a non-empty group of the program");
    return Status::ok();
  case proto::SEND:
  case proto::RECV:
    if (ints.at("peer") < 0 || ints.at("peer") >= program.world_size())
      return Status::error("peer " + std::to_string(ints.at("peer")) +
                           " outside the world of " +
                           std::to_string(program.world_size()) + " ranks");
    return Status::ok();
  default:
    return Status::ok();
  }
}

Status validateInstruction(const proto::Instruction &inst,
                           const proto::ShardProgram &program,
                           bool hasCommunicator, std::vector<bool> &written) {
  const OpSpec *spec = findOpSpec(inst.op());
  if (!spec)
    return Status::error("unknown opcode " + std::to_string(inst.op()));
  const std::string name = spec->name;
  if (inst.inputs_size() < spec->minInputs ||
      inst.inputs_size() > spec->maxInputs)
    return Status::error(
        name + " has " + std::to_string(inst.inputs_size()) +
        " inputs; expected " + std::to_string(spec->minInputs) +
        (spec->maxInputs != spec->minInputs
             ? " to " + std::to_string(spec->maxInputs)
             : std::string()));
  if (inst.outputs_size() != spec->numOutputs)
    return Status::error(name + " has " + std::to_string(inst.outputs_size()) +
                         " outputs; expected " +
                         std::to_string(spec->numOutputs));
  for (int i = 0; i < inst.inputs_size(); ++i) {
    uint32_t id = inst.inputs(i);
    if (id >= static_cast<uint32_t>(program.slots_size()))
      return Status::error(name + " input " + std::to_string(i) + " is slot " +
                           std::to_string(id) + ", outside the program's " +
                           std::to_string(program.slots_size()) + " slots");
    bool wantWeight = std::count(spec->weightInputs.begin(),
                                 spec->weightInputs.end(), i) > 0;
    if (program.slots(static_cast<int>(id)).is_weight() != wantWeight)
      return Status::error(name + " input " + std::to_string(i) + " (slot " +
                           std::to_string(id) + ") must be " +
                           (wantWeight ? "a weight" : "an activation"));
    if (!wantWeight && !written[id])
      return Status::error(name + " reads slot " + std::to_string(id) +
                           " ('" + program.slots(static_cast<int>(id)).name() +
                           "') before any instruction writes it");
  }
  for (uint32_t id : inst.outputs()) {
    if (id >= static_cast<uint32_t>(program.slots_size()))
      return Status::error(name + " output is slot " + std::to_string(id) +
                           ", outside the program's " +
                           std::to_string(program.slots_size()) + " slots");
    if (program.slots(static_cast<int>(id)).is_weight())
      return Status::error(name + " writes weight slot " + std::to_string(id));
    written[id] = true;
  }
  for (const char *attr : spec->intAttrs)
    if (!inst.int_attrs().contains(attr))
      return Status::error(name + " lacks int attribute '" +
                           std::string(attr) + "'");
  for (const char *attr : spec->floatAttrs)
    if (!inst.float_attrs().contains(attr))
      return Status::error(name + " lacks float attribute '" +
                           std::string(attr) + "'");
  if (spec->needsCommunicator && !hasCommunicator)
    return Status::error(name +
                         " is a collective but the executor has no "
                         "communicator");
  return validateAttributeValues(inst, program).withContext(name);
}

/// KV_LOAD must come before any attention over its layers (attention reads
/// the loaded blocks), KV_STORE after the attention of every one of them
/// (it copies what attention wrote). Only attention writes the cache, so a
/// KV_STORE copies the same bytes anywhere after that: the executor may run
/// it after the step's last instruction. Attributes already validated.
Status validateKvTransferOrder(const proto::ShardProgram &program) {
  std::vector<bool> attended(program.kv_cache().num_layers(), false);
  for (int i = 0; i < program.instructions_size(); ++i) {
    const proto::Instruction &inst = program.instructions(i);
    const auto &ints = inst.int_attrs();
    switch (inst.op()) {
    case proto::ATTENTION:
    case proto::ATTENTION_PARTIAL:
    case proto::SP_ATTENTION:
      attended[static_cast<size_t>(ints.at("layer"))] = true;
      break;
    case proto::KV_LOAD:
    case proto::KV_STORE: {
      const bool load = inst.op() == proto::KV_LOAD;
      for (int64_t l = ints.at("layer_begin"); l < ints.at("layer_end"); ++l)
        if (attended[static_cast<size_t>(l)] == load)
          return Status::error(
              "instruction " + std::to_string(i) + ": " + (load ? "KV_LOAD" : "KV_STORE") +
              " of layer " + std::to_string(l) + (load ? " after" : " before") +
              " the attention over it (a load must precede it, a store follow it)");
      break;
    }
    default:
      break;
    }
  }
  return Status::ok();
}

} // namespace

Status validateProgram(const proto::ShardProgram &program,
                       bool hasCommunicator) {
  if (program.format_version() != proto::FORMAT_VERSION_1)
    return Status::error("ShardProgram format_version " +
                         std::to_string(program.format_version()) +
                         " is not supported; expected " +
                         std::to_string(proto::FORMAT_VERSION_1));
  LLMIR_RETURN_IF_ERROR(validateSlots(program));
  LLMIR_RETURN_IF_ERROR(validateWeights(program));
  std::vector<bool> written(static_cast<size_t>(program.slots_size()), false);
  for (int i = 0; i < program.instructions_size(); ++i)
    LLMIR_RETURN_IF_ERROR(
        validateInstruction(program.instructions(i), program, hasCommunicator,
                            written)
            .withContext("instruction " + std::to_string(i)));
  LLMIR_RETURN_IF_ERROR(validateKvTransferOrder(program));
  if (program.has_output()) {
    uint32_t out = program.output_slot();
    if (out >= static_cast<uint32_t>(program.slots_size()) || !written[out])
      return Status::error("output slot " + std::to_string(out) +
                           " is not an activation written by the program");
  }
  return Status::ok();
}

} // namespace llmir::engine
