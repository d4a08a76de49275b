#include "OpSpec.h"

#include <map>

namespace llmir::engine {

const OpSpec *findOpSpec(proto::Opcode op) {
  static const std::map<proto::Opcode, OpSpec> specs = {
      {proto::EMBEDDING, {"EMBEDDING", 1, 1, 1, {0}, {}, {}, false, {"vocab_offset"}}},
      {proto::RMS_NORM, {"RMS_NORM", 2, 2, 1, {1}, {}, {"eps"}, false}},
      {proto::LINEAR, {"LINEAR", 2, 3, 1, {1, 2}, {}, {}, false}},
      {proto::ROPE,
       {"ROPE",
        1,
        1,
        1,
        {},
        {"head_dim"},
        {"theta"},
        false,
        {"sp_size", "sp_index", "rope_scaling", "rope_original_max_position"},
        {"rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"}}},
      {proto::ATTENTION,
       {"ATTENTION",
        3,
        3,
        1,
        {},
        {"layer", "num_heads", "num_kv_heads", "head_dim"},
        {"scale"},
        false,
        {"sliding_window", "kv_group", "head_offset"}}},
      {proto::SWIGLU, {"SWIGLU", 2, 2, 1, {}, {}, {}, false}},
      {proto::ADD, {"ADD", 2, 2, 1, {}, {}, {}, false}},
      {proto::ALL_REDUCE, {"ALL_REDUCE", 1, 1, 1, {}, {"group"}, {}, true}},
      {proto::ALL_GATHER, {"ALL_GATHER", 1, 1, 1, {}, {"group"}, {}, true, {"padding"}}},
      {proto::SEND, {"SEND", 1, 1, 0, {}, {"peer"}, {}, true}},
      {proto::RECV, {"RECV", 0, 0, 1, {}, {"peer"}, {}, true, {"sp_size", "sp_index"}}},
      {proto::SELECT_ROWS, {"SELECT_ROWS", 1, 1, 1, {}, {}, {}, false}},
      {proto::ATTENTION_PARTIAL,
       {"ATTENTION_PARTIAL",
        3,
        3,
        1,
        {},
        {"layer", "num_heads", "num_kv_heads", "head_dim", "sp_size", "sp_index"},
        {"scale"},
        false,
        {"sliding_window", "kv_group", "head_offset"}}},
      {proto::ATTENTION_MERGE,
       {"ATTENTION_MERGE", 1, 1, 1, {}, {"num_heads", "head_dim", "sp_size"}, {}, false}},
      {proto::SP_SCATTER_ROWS,
       {"SP_SCATTER_ROWS", 1, 1, 1, {}, {"sp_size", "sp_index"}, {}, false}},
      {proto::ALL_GATHER_ROWS,
       {"ALL_GATHER_ROWS", 1, 2, 1, {}, {"group", "sp_size", "sp_index"}, {}, true}},
      {proto::SP_ATTENTION,
       {"SP_ATTENTION",
        2,
        2,
        1,
        {},
        {"layer", "num_heads", "num_kv_heads", "head_dim", "sp_size", "sp_index"},
        {"scale"},
        false,
        {"sliding_window", "kv_group", "head_offset"}}},
      {proto::KV_LOAD, {"KV_LOAD", 0, 0, 0, {}, {"layer_begin", "layer_end"}, {}, false}},
      {proto::KV_STORE, {"KV_STORE", 0, 0, 0, {}, {"layer_begin", "layer_end"}, {}, false}},
  };
  auto it = specs.find(op);
  return it == specs.end() ? nullptr : &it->second;
}

} // namespace llmir::engine
