#include "llmir/model/ModelConfig.h"

#include "JsonFields.h"

#include <algorithm>
#include <array>
#include <filesystem>

namespace llmir::model {
namespace {

constexpr std::array<std::string_view, 3> kSupportedArchitectures = {
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};

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

/// rope_type values other than "default" change the frequencies; refuse them
/// rather than silently computing wrong positions.
Status checkRopeType(const ConfigReader &reader, std::string_view key,
                     const boost::json::object &rope) {
  for (std::string_view typeKey : {"rope_type", "type"}) {
    const boost::json::value *type = json::member(rope, typeKey);
    if (type && !(type->is_string() && type->get_string() == "default"))
      return reader.error(key, "has " + std::string(typeKey) + " " +
                                   boost::json::serialize(*type) +
                                   ": only \"default\" RoPE is supported "
                                   "(scaled RoPE variants are not supported)");
  }
  return Status::ok();
}

Result<double> readRopeTheta(const ConfigReader &reader) {
  double theta = 10000.0;
  bool haveTopLevel = false;
  if (reader.find("rope_theta")) {
    LLMIR_ASSIGN_OR_RETURN(theta, reader.positiveNumber("rope_theta", 10000.0));
    haveTopLevel = true;
  }
  if (const boost::json::value *scaling = reader.find("rope_scaling")) {
    if (!scaling->is_object())
      return reader.error("rope_scaling", "must be an object or null" +
                                              reader.got(*scaling));
    LLMIR_RETURN_IF_ERROR(checkRopeType(reader, "rope_scaling", scaling->get_object()));
  }
  const boost::json::value *parameters = reader.find("rope_parameters");
  if (!parameters)
    return theta;
  if (!parameters->is_object())
    return reader.error("rope_parameters", "must be an object" + reader.got(*parameters));
  LLMIR_RETURN_IF_ERROR(
      checkRopeType(reader, "rope_parameters", parameters->get_object()));
  const boost::json::value *nested = json::member(parameters->get_object(), "rope_theta");
  if (!nested)
    return theta;
  std::optional<double> nestedTheta = json::asDouble(*nested);
  if (!nestedTheta || !(*nestedTheta > 0))
    return reader.error("rope_parameters.rope_theta",
                        "must be a positive number" + reader.got(*nested));
  if (haveTopLevel && *nestedTheta != theta)
    return reader.error("rope_parameters.rope_theta",
                        "disagrees with top-level rope_theta (" +
                            std::to_string(*nestedTheta) + " vs " +
                            std::to_string(theta) + ")");
  return *nestedTheta;
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
  LLMIR_ASSIGN_OR_RETURN(config.ropeTheta, readRopeTheta(reader));
  LLMIR_ASSIGN_OR_RETURN(config.tieWordEmbeddings,
                         reader.boolean("tie_word_embeddings", false));
  bool attentionBias = false;
  LLMIR_ASSIGN_OR_RETURN(attentionBias, reader.boolean("attention_bias", isQwen2));
  config.qkvBias = attentionBias;
  config.outputBias = isQwen2 ? false : attentionBias;
  bool mlpBias = false;
  LLMIR_ASSIGN_OR_RETURN(mlpBias, reader.boolean("mlp_bias", false));
  if (mlpBias)
    return reader.error("mlp_bias", "is true: MLP biases are not supported");
  std::string activation;
  LLMIR_ASSIGN_OR_RETURN(activation, reader.string("hidden_act"));
  if (!activation.empty() && activation != "silu")
    return reader.error("hidden_act", "is '" + activation + "': only \"silu\" is supported");
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

  bool useSlidingWindow = !isQwen2;
  if (isQwen2)
    LLMIR_ASSIGN_OR_RETURN(useSlidingWindow, reader.boolean("use_sliding_window", false));
  if (useSlidingWindow && reader.find("sliding_window")) {
    int64_t window = 0;
    LLMIR_ASSIGN_OR_RETURN(window, reader.positiveInt("sliding_window"));
    config.slidingWindow = window;
  }
  return config;
}

Result<ModelConfig> loadModelConfig(const std::string &hfDir) {
  const std::string path = (std::filesystem::path(hfDir) / "config.json").string();
  Result<std::string> text = json::readFile(path);
  if (!text)
    return text.status();
  return parseModelConfig(*text, path);
}

} // namespace llmir::model
