#include "llmir/model/ModelConfig.h"

#include "JsonFields.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <sstream>

namespace llmir::model {
namespace {

constexpr std::array<std::string_view, 5> kSupportedArchitectures = {
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
    "Qwen3ForCausalLM", "Phi3ForCausalLM"};

/// Typed access to config keys; every error names the source and the key.
class ConfigReader {
public:
  ConfigReader(const boost::json::object &object, std::string_view source)
      : object_(object), source_(source) {}

  Status error(std::string_view key, std::string_view problem) const {
    return Status::error(source_ + ": key '" + std::string(key) + "' " +
                         std::string(problem));
  }
  std::string got(const boost::json::value &value) const {
    return ", got " + boost::json::serialize(value);
  }
  const boost::json::value *find(std::string_view key) const {
    return json::member(object_, key);
  }

  /// A positive integer; `fallback` when absent (nullopt = required).
  Result<int64_t> positiveInt(std::string_view key,
                              std::optional<int64_t> fallback = std::nullopt) const {
    const boost::json::value *value = find(key);
    if (!value) {
      if (fallback)
        return *fallback;
      return error(key, "is required (a positive integer)");
    }
    std::optional<int64_t> number = json::asInt64(*value);
    if (!number || *number <= 0)
      return error(key, "must be a positive integer" + got(*value));
    return *number;
  }

  Result<double> positiveNumber(std::string_view key, double fallback) const {
    const boost::json::value *value = find(key);
    if (!value)
      return fallback;
    std::optional<double> number = json::asDouble(*value);
    if (!number || !(*number > 0))
      return error(key, "must be a positive number" + got(*value));
    if (!std::isfinite(*number))
      return error(key, "must be finite" + got(*value));
    return *number;
  }

  Result<bool> boolean(std::string_view key, bool fallback) const {
    const boost::json::value *value = find(key);
    if (!value)
      return fallback;
    if (!value->is_bool())
      return error(key, "must be true or false" + got(*value));
    return value->get_bool();
  }

  Result<std::string> string(std::string_view key) const {
    const boost::json::value *value = find(key);
    if (!value)
      return std::string();
    if (!value->is_string())
      return error(key, "must be a string" + got(*value));
    return std::string(value->get_string());
  }

  /// A token id: a non-negative integer below vocabSize.
  Result<int64_t> tokenId(std::string_view key, const boost::json::value &value,
                          int64_t vocabSize) const {
    std::optional<int64_t> id = json::asInt64(value);
    if (!id || *id < 0 || *id >= vocabSize)
      return error(key, "must be a token id in [0, vocab_size=" +
                            std::to_string(vocabSize) + ")" + got(value));
    return *id;
  }

private:
  const boost::json::object &object_;
  std::string source_;
};

#define LLMIR_ASSIGN_OR_RETURN(target, expr)                                   \
  do {                                                                         \
    auto llmir_result_ = (expr);                                               \
    if (!llmir_result_)                                                        \
      return llmir_result_.status();                                          \
    target = std::move(llmir_result_).value();                                 \
  } while (0)

/// A JSON value for a message: numbers as people write them (0.75, not
/// boost's 7.5E-1).
std::string describe(const boost::json::value &value) {
  if (value.is_double()) {
    std::ostringstream text;
    text << value.get_double();
    return text.str();
  }
  return boost::json::serialize(value);
}

/// A number > 0 inside a RoPE object, named `key`.`member` in errors.
Result<double> ropeNumber(const ConfigReader &reader, std::string_view key,
                          const boost::json::object &rope, std::string_view member) {
  const std::string name = std::string(key) + "." + std::string(member);
  const boost::json::value *value = json::member(rope, member);
  if (!value)
    return reader.error(name, "is required by this rope_type");
  std::optional<double> number = json::asDouble(*value);
  if (!number || !(*number > 0))
    return reader.error(name, "must be a positive number" + reader.got(*value));
  return *number;
}

/// The scaling of one RoPE object (rope_scaling or rope_parameters). Types
/// other than default, linear and llama3 change the frequencies (or the
/// attention) in ways the engine does not implement: refuse them rather
/// than compute wrong positions.
Result<RopeScaling> readRopeScaling(const ConfigReader &reader, std::string_view key,
                                    const boost::json::object &rope) {
  RopeScaling scaling;
  std::string type = "default";
  for (std::string_view typeKey : {"rope_type", "type"}) {
    const boost::json::value *value = json::member(rope, typeKey);
    if (!value)
      continue;
    if (!value->is_string())
      return reader.error(std::string(key) + "." + std::string(typeKey),
                          "must be a string" + reader.got(*value));
    type = std::string(value->get_string());
    break;
  }
  if (const boost::json::value *partial = json::member(rope, "partial_rotary_factor")) {
    std::optional<double> factor = json::asDouble(*partial);
    if (!factor || *factor != 1.0)
      return reader.error(std::string(key) + ".partial_rotary_factor",
                          "is " + describe(*partial) +
                              ": only 1.0 (RoPE over the whole head) is supported");
  }
  if (type == "default")
    return scaling;
  if (type == "linear") {
    scaling.type = RopeScalingType::Linear;
    LLMIR_ASSIGN_OR_RETURN(scaling.factor, ropeNumber(reader, key, rope, "factor"));
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScalingType::Llama3;
    LLMIR_ASSIGN_OR_RETURN(scaling.factor, ropeNumber(reader, key, rope, "factor"));
    LLMIR_ASSIGN_OR_RETURN(scaling.lowFreqFactor,
                           ropeNumber(reader, key, rope, "low_freq_factor"));
    LLMIR_ASSIGN_OR_RETURN(scaling.highFreqFactor,
                           ropeNumber(reader, key, rope, "high_freq_factor"));
    double original = 0;
    LLMIR_ASSIGN_OR_RETURN(original,
                           ropeNumber(reader, key, rope, "original_max_position_embeddings"));
    scaling.originalMaxPositionEmbeddings = static_cast<int64_t>(original);
    if (static_cast<double>(scaling.originalMaxPositionEmbeddings) != original)
      return reader.error(std::string(key) + ".original_max_position_embeddings",
                          "must be an integer, got " + std::to_string(original));
    if (!(scaling.highFreqFactor > scaling.lowFreqFactor))
      return reader.error(std::string(key) + ".high_freq_factor",
                          "must exceed low_freq_factor");
    return scaling;
  }
  return reader.error(std::string(key) + ".rope_type",
                      "is \"" + type +
                          "\": supported RoPE types are \"default\", \"linear\" "
                          "and \"llama3\"");
}

struct Rope {
  double theta = 10000.0;
  RopeScaling scaling;
};

/// rope_theta and the scaling, in the transformers 4 form (top-level
/// rope_theta, rope_scaling object or null) or the transformers 5 form
/// (rope_parameters {rope_theta, rope_type, ...}); both may appear and must
/// then agree.
Result<Rope> readRope(const ConfigReader &reader) {
  Rope rope;
  bool haveTopLevel = false;
  if (reader.find("rope_theta")) {
    LLMIR_ASSIGN_OR_RETURN(rope.theta, reader.positiveNumber("rope_theta", 10000.0));
    haveTopLevel = true;
  }
  if (const boost::json::value *partial = reader.find("partial_rotary_factor")) {
    std::optional<double> factor = json::asDouble(*partial);
    if (!factor || *factor != 1.0)
      return reader.error("partial_rotary_factor",
                          "is " + describe(*partial) +
                              ": only 1.0 (RoPE over the whole head) is supported");
  }
  std::optional<RopeScaling> fromScaling;
  if (const boost::json::value *scaling = reader.find("rope_scaling")) {
    if (!scaling->is_object())
      return reader.error("rope_scaling", "must be an object or null" +
                                              reader.got(*scaling));
    RopeScaling parsed;
    LLMIR_ASSIGN_OR_RETURN(parsed,
                           readRopeScaling(reader, "rope_scaling", scaling->get_object()));
    fromScaling = parsed;
    rope.scaling = parsed;
  }
  const boost::json::value *parameters = reader.find("rope_parameters");
  if (!parameters)
    return rope;
  if (!parameters->is_object())
    return reader.error("rope_parameters", "must be an object" + reader.got(*parameters));
  const boost::json::object &object = parameters->get_object();
  for (const auto &member : object)
    if (member.value().is_object())
      return reader.error("rope_parameters." + std::string(member.key()),
                          "is an object: per-layer-type RoPE parameters are not supported");
  RopeScaling parsed;
  LLMIR_ASSIGN_OR_RETURN(parsed, readRopeScaling(reader, "rope_parameters", object));
  if (fromScaling && fromScaling->type != RopeScalingType::None &&
      parsed.type != fromScaling->type)
    return reader.error("rope_parameters.rope_type",
                        "disagrees with rope_scaling's type");
  if (!fromScaling || parsed.type != RopeScalingType::None)
    rope.scaling = parsed;
  const boost::json::value *nested = json::member(object, "rope_theta");
  if (!nested)
    return rope;
  std::optional<double> nestedTheta = json::asDouble(*nested);
  if (!nestedTheta || !(*nestedTheta > 0))
    return reader.error("rope_parameters.rope_theta",
                        "must be a positive number" + reader.got(*nested));
  if (haveTopLevel && *nestedTheta != rope.theta)
    return reader.error("rope_parameters.rope_theta",
                        "disagrees with top-level rope_theta (" +
                            std::to_string(*nestedTheta) + " vs " +
                            std::to_string(rope.theta) + ")");
  rope.theta = *nestedTheta;
  return rope;
}

/// Which layers attend through a sliding window, as transformers decides it
/// for each architecture (see ModelConfig::layerSlidingWindow).
Status readSlidingWindow(const ConfigReader &reader, ModelConfig &config) {
  const std::string &arch = config.architecture;
  const bool isQwen = arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM";
  config.layerSlidingWindow.assign(static_cast<size_t>(config.numLayers), 0);
  // LlamaAttention has no window: transformers ignores the key for Llama.
  bool useSlidingWindow = arch != "LlamaForCausalLM";
  if (isQwen)
    LLMIR_ASSIGN_OR_RETURN(useSlidingWindow, reader.boolean("use_sliding_window", false));
  if (useSlidingWindow && reader.find("sliding_window")) {
    int64_t window = 0;
    LLMIR_ASSIGN_OR_RETURN(window, reader.positiveInt("sliding_window"));
    config.slidingWindow = window;
  }
  if (!isQwen) {
    if (config.slidingWindow)
      config.layerSlidingWindow.assign(static_cast<size_t>(config.numLayers),
                                       *config.slidingWindow);
    return Status::ok();
  }
  if (const boost::json::value *types = reader.find("layer_types")) {
    if (!types->is_array() ||
        types->get_array().size() != static_cast<size_t>(config.numLayers))
      return reader.error("layer_types", "must be a list of num_hidden_layers (" +
                                             std::to_string(config.numLayers) +
                                             ") names" + reader.got(*types));
    for (size_t i = 0; i < types->get_array().size(); ++i) {
      const boost::json::value &type = types->get_array()[i];
      const std::string key = "layer_types[" + std::to_string(i) + "]";
      if (type.is_string() && type.get_string() == "full_attention")
        continue;
      if (!(type.is_string() && type.get_string() == "sliding_attention"))
        return reader.error(key, "is " + boost::json::serialize(type) +
                                     ": supported layer types are \"full_attention\" "
                                     "and \"sliding_attention\"");
      if (!config.slidingWindow)
        return reader.error(key, "is \"sliding_attention\" but there is no "
                                 "sliding_window (or use_sliding_window is false)");
      config.layerSlidingWindow[i] = *config.slidingWindow;
    }
    return Status::ok();
  }
  if (!config.slidingWindow)
    return Status::ok();
  int64_t maxWindowLayers = 28; // transformers' default; 0: every layer slides
  if (const boost::json::value *value = reader.find("max_window_layers")) {
    std::optional<int64_t> layers = json::asInt64(*value);
    if (!layers || *layers < 0)
      return reader.error("max_window_layers",
                          "must be a non-negative integer" + reader.got(*value));
    maxWindowLayers = *layers;
  }
  for (int64_t i = maxWindowLayers; i < config.numLayers; ++i)
    config.layerSlidingWindow[static_cast<size_t>(i)] = *config.slidingWindow;
  return Status::ok();
}

/// Sizes far beyond any real checkpoint are refused before anything is
/// allocated from them (a num_hidden_layers of 1e9 aborted the import).
Status checkBounds(const ModelConfig &config, const ConfigReader &reader) {
  const struct {
    std::string_view key;
    int64_t value, max;
  } bounds[] = {
      {"vocab_size", config.vocabSize, kMaxVocabSize},
      {"hidden_size", config.hiddenSize, int64_t(1) << 17},
      {"intermediate_size", config.intermediateSize, int64_t(1) << 20},
      {"num_hidden_layers", config.numLayers, 4096},
      {"num_attention_heads", config.numHeads, 4096},
      {"num_key_value_heads", config.numKvHeads, 4096},
      {"head_dim", config.headDim, 16384},
      {"max_position_embeddings", config.maxPositionEmbeddings, int64_t(1) << 24},
  };
  for (const auto &b : bounds)
    if (b.value > b.max)
      return reader.error(b.key, "is " + std::to_string(b.value) + ", over the limit of " +
                                     std::to_string(b.max) + " (docs/reliability.md)");
  return Status::ok();
}

} // namespace

Result<ModelConfig> parseModelConfig(std::string_view text, std::string_view source) {
  Result<boost::json::value> parsed = json::parse(text, source);
  if (!parsed)
    return parsed.status();
  if (!parsed->is_object())
    return Status::error(std::string(source) + ": expected a JSON object");
  const ConfigReader reader(parsed->get_object(), source);

  ModelConfig config;
  config.source = std::string(source);

  const boost::json::value *architectures = reader.find("architectures");
  std::string supported;
  for (std::string_view name : kSupportedArchitectures)
    supported += (supported.empty() ? "" : ", ") + std::string(name);
  if (!architectures || !architectures->is_array() ||
      architectures->get_array().empty() ||
      !architectures->get_array()[0].is_string())
    return reader.error("architectures",
                        "must be a non-empty list of names (supported: " + supported + ")");
  config.architecture = std::string(architectures->get_array()[0].get_string());
  if (std::find(kSupportedArchitectures.begin(), kSupportedArchitectures.end(),
                config.architecture) == kSupportedArchitectures.end())
    return reader.error("architectures", "names unsupported architecture '" +
                                             config.architecture +
                                             "' (supported: " + supported + ")");
  const bool isQwen2 = config.architecture == "Qwen2ForCausalLM";
  const bool isPhi3 = config.architecture == "Phi3ForCausalLM";
  config.qkNorm = config.architecture == "Qwen3ForCausalLM";
  config.fusedProjections = isPhi3;

  LLMIR_ASSIGN_OR_RETURN(config.modelType, reader.string("model_type"));
  LLMIR_ASSIGN_OR_RETURN(config.vocabSize, reader.positiveInt("vocab_size"));
  LLMIR_ASSIGN_OR_RETURN(config.hiddenSize, reader.positiveInt("hidden_size"));
  LLMIR_ASSIGN_OR_RETURN(config.intermediateSize, reader.positiveInt("intermediate_size"));
  LLMIR_ASSIGN_OR_RETURN(config.numLayers, reader.positiveInt("num_hidden_layers"));
  LLMIR_ASSIGN_OR_RETURN(config.numHeads, reader.positiveInt("num_attention_heads"));
  LLMIR_ASSIGN_OR_RETURN(config.numKvHeads,
                         reader.positiveInt("num_key_value_heads", config.numHeads));
  if (config.numHeads % config.numKvHeads != 0)
    return reader.error("num_key_value_heads",
                        "(" + std::to_string(config.numKvHeads) +
                            ") must divide num_attention_heads (" +
                            std::to_string(config.numHeads) + ")");
  if (!reader.find("head_dim") && config.hiddenSize % config.numHeads != 0)
    return reader.error("hidden_size", "(" + std::to_string(config.hiddenSize) +
                                           ") must be divisible by num_attention_heads (" +
                                           std::to_string(config.numHeads) +
                                           ") when head_dim is absent");
  LLMIR_ASSIGN_OR_RETURN(config.headDim,
                         reader.positiveInt("head_dim", config.hiddenSize / config.numHeads));
  LLMIR_ASSIGN_OR_RETURN(config.rmsNormEps, reader.positiveNumber("rms_norm_eps", 1e-6));
  Rope rope;
  LLMIR_ASSIGN_OR_RETURN(rope, readRope(reader));
  config.ropeTheta = rope.theta;
  config.ropeScaling = rope.scaling;
  LLMIR_ASSIGN_OR_RETURN(config.tieWordEmbeddings,
                         reader.boolean("tie_word_embeddings", false));
  bool attentionBias = false;
  LLMIR_ASSIGN_OR_RETURN(attentionBias, reader.boolean("attention_bias", isQwen2));
  // Qwen2: biases on q, k, v only; Phi-3: no biases (its fused projections
  // ignore attention_bias); Llama, Mistral, Qwen3: attention_bias on all four.
  config.qkvBias = isPhi3 ? false : attentionBias;
  config.outputBias = (isQwen2 || isPhi3) ? false : attentionBias;
  bool mlpBias = false;
  LLMIR_ASSIGN_OR_RETURN(mlpBias, reader.boolean("mlp_bias", false));
  if (mlpBias)
    return reader.error("mlp_bias", "is true: MLP biases are not supported");
  std::string activation;
  LLMIR_ASSIGN_OR_RETURN(activation, reader.string("hidden_act"));
  if (!activation.empty() && activation != "silu")
    return reader.error("hidden_act", "is \"" + activation +
                                          "\": only \"silu\" (SwiGLU MLP) is supported");
  LLMIR_ASSIGN_OR_RETURN(config.maxPositionEmbeddings,
                         reader.positiveInt("max_position_embeddings", 2048));

  if (const boost::json::value *bos = reader.find("bos_token_id")) {
    int64_t id = 0;
    LLMIR_ASSIGN_OR_RETURN(id, reader.tokenId("bos_token_id", *bos, config.vocabSize));
    config.bosTokenId = id;
  }
  if (const boost::json::value *eos = reader.find("eos_token_id")) {
    if (eos->is_array()) {
      for (const boost::json::value &item : eos->get_array()) {
        int64_t id = 0;
        LLMIR_ASSIGN_OR_RETURN(id, reader.tokenId("eos_token_id", item, config.vocabSize));
        config.eosTokenIds.push_back(id);
      }
    } else {
      int64_t id = 0;
      LLMIR_ASSIGN_OR_RETURN(id, reader.tokenId("eos_token_id", *eos, config.vocabSize));
      config.eosTokenIds.push_back(id);
    }
  }

  LLMIR_ASSIGN_OR_RETURN(config.torchDtype, reader.string("dtype"));
  if (config.torchDtype.empty())
    LLMIR_ASSIGN_OR_RETURN(config.torchDtype, reader.string("torch_dtype"));

  // Before anything is sized from them (layerSlidingWindow has numLayers entries).
  LLMIR_RETURN_IF_ERROR(checkBounds(config, reader));
  LLMIR_RETURN_IF_ERROR(readSlidingWindow(reader, config));
  return config;
}

Result<ModelConfig> loadModelConfig(const std::string &hfDir) {
  const std::string path = (std::filesystem::path(hfDir) / "config.json").string();
  Result<std::string> text = json::readFile(path, kMaxConfigFileBytes);
  if (!text)
    return text.status();
  return parseModelConfig(*text, path);
}

} // namespace llmir::model
