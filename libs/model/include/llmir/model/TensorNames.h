// The canonical Hugging Face tensor names and shapes of a Llama-family
// checkpoint, shared by the importer (what to read) and the shape checker.
#pragma once

#include "llmir/model/ModelConfig.h"

#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {

class Checkpoint;

inline constexpr std::string_view kEmbedTokensName = "model.embed_tokens.weight";
inline constexpr std::string_view kFinalNormName = "model.norm.weight";
inline constexpr std::string_view kLmHeadName = "lm_head.weight";

/// Per-layer tensors, named model.layers.{i}.<suffix>.
enum class LayerTensor {
  InputNorm,         // input_layernorm.weight
  QProj,             // self_attn.q_proj.weight
  KProj,             // self_attn.k_proj.weight
  VProj,             // self_attn.v_proj.weight
  OProj,             // self_attn.o_proj.weight
  QBias,             // self_attn.q_proj.bias
  KBias,             // self_attn.k_proj.bias
  VBias,             // self_attn.v_proj.bias
  OBias,             // self_attn.o_proj.bias
  PostAttentionNorm, // post_attention_layernorm.weight
  GateProj,          // mlp.gate_proj.weight
  UpProj,            // mlp.up_proj.weight
  DownProj,          // mlp.down_proj.weight
  QNorm,             // self_attn.q_norm.weight (Qwen3: per-head RMSNorm of q)
  KNorm,             // self_attn.k_norm.weight (Qwen3: per-head RMSNorm of k)
  QKVProj,           // self_attn.qkv_proj.weight (Phi-3: rows q, k, v)
  GateUpProj,        // mlp.gate_up_proj.weight (Phi-3: rows gate, up)
};

/// "model.layers.3.self_attn.k_proj.weight" for (3, KProj).
std::string layerTensorName(int64_t layer, LayerTensor tensor);

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  /// How the config implies the shape, e.g.
  /// "num_key_value_heads=2 x head_dim=16, hidden_size=128".
  std::string derivation;
};

/// Every tensor the config requires, in checkpoint-like order: embeddings,
/// each layer, final norm, then lm_head unless embeddings are tied. Biases
/// appear only when the config says the projections have them.
std::vector<ExpectedTensor> expectedTensors(const ModelConfig &config);

/// Checks that every expected tensor exists with the expected shape and a
/// float dtype. Extra tensors (e.g. lm_head when tied) are ignored.
Status checkCheckpointShapes(const ModelConfig &config, const Checkpoint &checkpoint);

} // namespace llmir::model
