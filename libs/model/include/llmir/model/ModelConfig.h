// The subset of a Hugging Face config.json that a Llama-family decoder needs,
// typed, defaulted like transformers does, and validated.
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {

/// Limits on what a model directory may hold (docs/reliability.md): files
/// beyond them are refused with an error naming the limit, before memory is
/// allocated from their contents.
constexpr uint64_t kMaxConfigFileBytes = uint64_t(16) << 20;     // config.json, tokenizer_config.json
constexpr uint64_t kMaxTokenizerFileBytes = uint64_t(256) << 20; // tokenizer.json
constexpr int64_t kMaxVocabSize = int64_t(1) << 22;              // also bounds token ids

/// RoPE frequency scaling (rope_scaling / rope_parameters rope_type).
enum class RopeScalingType {
  None,   // "default": inv_freq_i = theta^(-2i/head_dim)
  Linear, // "linear": inv_freq_i / factor
  Llama3, // "llama3": Llama 3.1's frequency-dependent scaling
};

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  /// factor (linear and llama3).
  double factor = 1.0;
  /// low_freq_factor, high_freq_factor, original_max_position_embeddings
  /// (llama3 only).
  double lowFreqFactor = 0.0;
  double highFreqFactor = 0.0;
  int64_t originalMaxPositionEmbeddings = 0;
};

struct ModelConfig {
  /// Where the config came from (file path), for error messages.
  std::string source;
  /// architectures[0]: "LlamaForCausalLM", "MistralForCausalLM",
  /// "Qwen2ForCausalLM", "Qwen3ForCausalLM" or "Phi3ForCausalLM" (docs/models.md).
  std::string architecture;
  /// model_type ("llama", "mistral", "qwen2", ...); empty when absent.
  std::string modelType;
  /// vocab_size: rows of the embedding and of lm_head.
  int64_t vocabSize = 0;
  /// hidden_size: the residual stream width.
  int64_t hiddenSize = 0;
  /// intermediate_size: the SwiGLU MLP width.
  int64_t intermediateSize = 0;
  /// num_hidden_layers: decoder blocks.
  int64_t numLayers = 0;
  /// num_attention_heads: query heads.
  int64_t numHeads = 0;
  /// num_key_value_heads (default numHeads): K/V heads, shared by groups of
  /// numHeads / numKvHeads query heads (grouped-query attention).
  int64_t numKvHeads = 0;
  /// head_dim (default hiddenSize / numHeads).
  int64_t headDim = 0;
  /// rms_norm_eps (default 1e-6, the transformers default).
  double rmsNormEps = 1e-6;
  /// rope_theta, top-level or rope_parameters.rope_theta (default 10000).
  double ropeTheta = 10000.0;
  /// rope_scaling (transformers 4) or rope_parameters (5): "default",
  /// "linear" and "llama3" are supported; any other type is an error.
  RopeScaling ropeScaling;
  /// Qwen3: q and k are RMS-normalised per head (q_norm / k_norm weights of
  /// head_dim elements) before RoPE.
  bool qkNorm = false;
  /// Phi-3: q, k, v come from one fused qkv_proj tensor (rows q, then k,
  /// then v) and gate, up from one gate_up_proj (rows gate, then up).
  bool fusedProjections = false;
  /// tie_word_embeddings (default false): lm_head reuses embed_tokens.
  bool tieWordEmbeddings = false;
  /// q/k/v projections carry a bias: attention_bias for Llama/Mistral
  /// (default false); Qwen2 always has them (default true).
  bool qkvBias = false;
  /// o_proj carries a bias: attention_bias for Llama/Mistral; never for Qwen2.
  bool outputBias = false;
  /// max_position_embeddings (default 2048).
  int64_t maxPositionEmbeddings = 2048;
  /// bos_token_id, when given.
  std::optional<int64_t> bosTokenId;
  /// eos_token_id: a single id or a list; empty when absent.
  std::vector<int64_t> eosTokenIds;
  /// "dtype" (transformers 5) or "torch_dtype" (4): the stored precision
  /// ("bfloat16", "float32", ...); empty when absent.
  std::string torchDtype;
  /// sliding_window for attention (Mistral, Phi-3; Qwen2/Qwen3 only when
  /// use_sliding_window is true); nullopt = full attention everywhere.
  std::optional<int64_t> slidingWindow;
  /// Per layer, the sliding window it applies (0: full attention), as
  /// Hugging Face decides it: every layer for Mistral and Phi-3; for Qwen2
  /// and Qwen3 the layers `layer_types` marks "sliding_attention", or, without
  /// layer_types, layers >= max_window_layers. A token at position p attends
  /// to positions j with p - window < j <= p.
  std::vector<int64_t> layerSlidingWindow;
};

/// Parses config.json text; `source` names it in error messages.
Result<ModelConfig> parseModelConfig(std::string_view json, std::string_view source);

/// Reads `<hfDir>/config.json`.
Result<ModelConfig> loadModelConfig(const std::string &hfDir);

} // namespace llmir::model
