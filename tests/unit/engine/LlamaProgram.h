// A Llama-style ShardProgram built by hand (what the compiler would emit for
// one rank holding the whole model), with HF checkpoint tensor names.
#pragma once

#include "llmir/proto/shard_program.pb.h"

#include <cmath>
#include <string>
#include <vector>

namespace llmir::engine::testing {

struct TinyLlama { // defaults: the small model of the executor tests
  int64_t vocab = 48, hidden = 32, heads = 4, kvHeads = 2, headDim = 8,
          ffn = 40, layers = 2;
  double eps = 1e-5, theta = 10000.0;
};

class ProgramBuilder {
public:
  ProgramBuilder() { program.set_format_version(proto::FORMAT_VERSION_1); }

  uint32_t activation(const std::string &name, int64_t width) {
    return addSlot(name, {-1, width}, false);
  }
  uint32_t weight(const std::string &name, std::vector<int64_t> shape) {
    uint32_t id = addSlot(name, shape, true);
    proto::WeightSlice *slice = program.add_weights();
    slice->set_slot(id);
    slice->set_tensor_name(name);
    for (int64_t d : shape)
      slice->add_full_shape(d);
    slice->set_dim(-1);
    return id;
  }
  proto::Instruction &emit(proto::Opcode op, std::vector<uint32_t> inputs,
                           std::vector<uint32_t> outputs) {
    proto::Instruction *inst = program.add_instructions();
    inst->set_op(op);
    for (uint32_t i : inputs)
      inst->add_inputs(i);
    for (uint32_t o : outputs)
      inst->add_outputs(o);
    return *inst;
  }

  proto::ShardProgram program;

private:
  uint32_t addSlot(const std::string &name, const std::vector<int64_t> &shape,
                   bool isWeight) {
    proto::TensorSlot *slot = program.add_slots();
    slot->set_id(static_cast<uint32_t>(program.slots_size() - 1));
    slot->set_name(name);
    slot->set_dtype(proto::F32);
    for (int64_t d : shape)
      slot->add_shape(d);
    slot->set_is_weight(isWeight);
    return slot->id();
  }
};

inline std::string layerName(int64_t layer, const std::string &suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

inline proto::ShardProgram buildLlama(const TinyLlama &c) {
  ProgramBuilder b;
  const int64_t qWidth = c.heads * c.headDim, kvWidth = c.kvHeads * c.headDim;
  uint32_t x = b.activation("x", c.hidden);
  b.emit(proto::EMBEDDING, {b.weight("model.embed_tokens.weight", {c.vocab, c.hidden})}, {x});
  for (int64_t l = 0; l < c.layers; ++l) {
    auto w = [&](const std::string &s, std::vector<int64_t> shape) {
      return b.weight(layerName(l, s), std::move(shape));
    };
    uint32_t h = b.activation("h", c.hidden), q = b.activation("q", qWidth);
    uint32_t k = b.activation("k", kvWidth), v = b.activation("v", kvWidth);
    uint32_t a = b.activation("attn", qWidth), o = b.activation("o", c.hidden);
    b.emit(proto::RMS_NORM, {x, w("input_layernorm.weight", {c.hidden})}, {h})
        .mutable_float_attrs()->insert({"eps", c.eps});
    b.emit(proto::LINEAR, {h, w("self_attn.q_proj.weight", {qWidth, c.hidden})}, {q});
    b.emit(proto::LINEAR, {h, w("self_attn.k_proj.weight", {kvWidth, c.hidden})}, {k});
    b.emit(proto::LINEAR, {h, w("self_attn.v_proj.weight", {kvWidth, c.hidden})}, {v});
    for (uint32_t rotated : {q, k}) { // in place: output slot == input slot
      proto::Instruction &rope = b.emit(proto::ROPE, {rotated}, {rotated});
      rope.mutable_int_attrs()->insert({"head_dim", c.headDim});
      rope.mutable_float_attrs()->insert({"theta", c.theta});
    }
    proto::Instruction &attn = b.emit(proto::ATTENTION, {q, k, v}, {a});
    attn.mutable_int_attrs()->insert({"layer", l});
    attn.mutable_int_attrs()->insert({"num_heads", c.heads});
    attn.mutable_int_attrs()->insert({"num_kv_heads", c.kvHeads});
    attn.mutable_int_attrs()->insert({"head_dim", c.headDim});
    attn.mutable_float_attrs()->insert({"scale", 1.0 / std::sqrt(double(c.headDim))});
    b.emit(proto::LINEAR, {a, w("self_attn.o_proj.weight", {c.hidden, qWidth})}, {o});
    b.emit(proto::ADD, {x, o}, {x});
    uint32_t h2 = b.activation("h2", c.hidden), g = b.activation("gate", c.ffn);
    uint32_t u = b.activation("up", c.ffn), s = b.activation("act", c.ffn);
    uint32_t d = b.activation("down", c.hidden);
    b.emit(proto::RMS_NORM, {x, w("post_attention_layernorm.weight", {c.hidden})}, {h2})
        .mutable_float_attrs()->insert({"eps", c.eps});
    b.emit(proto::LINEAR, {h2, w("mlp.gate_proj.weight", {c.ffn, c.hidden})}, {g});
    b.emit(proto::LINEAR, {h2, w("mlp.up_proj.weight", {c.ffn, c.hidden})}, {u});
    b.emit(proto::SWIGLU, {g, u}, {s});
    b.emit(proto::LINEAR, {s, w("mlp.down_proj.weight", {c.hidden, c.ffn})}, {d});
    b.emit(proto::ADD, {x, d}, {x});
  }
  uint32_t n = b.activation("norm", c.hidden), sel = b.activation("sel", c.hidden);
  uint32_t logits = b.activation("logits", c.vocab);
  b.emit(proto::RMS_NORM, {x, b.weight("model.norm.weight", {c.hidden})}, {n})
      .mutable_float_attrs()->insert({"eps", c.eps});
  b.emit(proto::SELECT_ROWS, {n}, {sel});
  b.emit(proto::LINEAR, {sel, b.weight("lm_head.weight", {c.vocab, c.hidden})}, {logits});
  b.program.set_has_output(true);
  b.program.set_output_slot(logits);
  b.program.set_vocab_size(static_cast<uint32_t>(c.vocab));
  b.program.set_world_size(1);
  b.program.set_num_stages(1);
  proto::KvCacheSpec *kv = b.program.mutable_kv_cache();
  kv->set_num_layers(static_cast<uint32_t>(c.layers));
  kv->set_num_kv_heads(static_cast<uint32_t>(c.kvHeads));
  kv->set_head_dim(static_cast<uint32_t>(c.headDim));
  kv->set_block_size(4);
  kv->set_num_blocks(16);
  return b.program;
}

} // namespace llmir::engine::testing
