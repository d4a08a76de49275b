#include "llmir/model/TensorNames.h"

#include "llmir/model/Checkpoint.h"

#include <filesystem>

namespace llmir::model {
namespace {

std::string_view layerSuffix(LayerTensor tensor) {
  switch (tensor) {
  case LayerTensor::InputNorm:
    return "input_layernorm.weight";
  case LayerTensor::QProj:
    return "self_attn.q_proj.weight";
  case LayerTensor::KProj:
    return "self_attn.k_proj.weight";
  case LayerTensor::VProj:
    return "self_attn.v_proj.weight";
  case LayerTensor::OProj:
    return "self_attn.o_proj.weight";
  case LayerTensor::QBias:
    return "self_attn.q_proj.bias";
  case LayerTensor::KBias:
    return "self_attn.k_proj.bias";
  case LayerTensor::VBias:
    return "self_attn.v_proj.bias";
  case LayerTensor::OBias:
    return "self_attn.o_proj.bias";
  case LayerTensor::PostAttentionNorm:
    return "post_attention_layernorm.weight";
  case LayerTensor::GateProj:
    return "mlp.gate_proj.weight";
  case LayerTensor::UpProj:
    return "mlp.up_proj.weight";
  case LayerTensor::DownProj:
    return "mlp.down_proj.weight";
  case LayerTensor::QNorm:
    return "self_attn.q_norm.weight";
  case LayerTensor::KNorm:
    return "self_attn.k_norm.weight";
  case LayerTensor::QKVProj:
    return "self_attn.qkv_proj.weight";
  case LayerTensor::GateUpProj:
    return "mlp.gate_up_proj.weight";
  }
  return "";
}

std::string fileName(const std::string &path) {
  return std::filesystem::path(path).filename().string();
}

} // namespace

std::string layerTensorName(int64_t layer, LayerTensor tensor) {
  return "model.layers." + std::to_string(layer) + "." + std::string(layerSuffix(tensor));
}

std::vector<ExpectedTensor> expectedTensors(const ModelConfig &config) {
  const int64_t hidden = config.hiddenSize;
  const int64_t qWidth = config.numHeads * config.headDim;
  const int64_t kvWidth = config.numKvHeads * config.headDim;
  const std::string hiddenText = "hidden_size=" + std::to_string(hidden);
  const std::string vocabText = "vocab_size=" + std::to_string(config.vocabSize);
  const std::string headDimText = "head_dim=" + std::to_string(config.headDim);
  const std::string qText =
      "num_attention_heads=" + std::to_string(config.numHeads) + " x " + headDimText;
  const std::string kvText =
      "num_key_value_heads=" + std::to_string(config.numKvHeads) + " x " + headDimText;
  const std::string mlpText =
      "intermediate_size=" + std::to_string(config.intermediateSize);

  std::vector<ExpectedTensor> expected;
  expected.push_back({std::string(kEmbedTokensName),
                      {config.vocabSize, hidden},
                      vocabText + ", " + hiddenText});
  for (int64_t layer = 0; layer < config.numLayers; ++layer) {
    auto add = [&](LayerTensor tensor, std::vector<int64_t> shape, std::string why) {
      expected.push_back({layerTensorName(layer, tensor), std::move(shape), std::move(why)});
    };
    add(LayerTensor::InputNorm, {hidden}, hiddenText);
    if (config.fusedProjections) {
      add(LayerTensor::QKVProj, {qWidth + 2 * kvWidth, hidden},
          qText + " + 2 x " + kvText + ", " + hiddenText);
    } else {
      add(LayerTensor::QProj, {qWidth, hidden}, qText + ", " + hiddenText);
      add(LayerTensor::KProj, {kvWidth, hidden}, kvText + ", " + hiddenText);
      add(LayerTensor::VProj, {kvWidth, hidden}, kvText + ", " + hiddenText);
    }
    if (config.qkNorm) {
      add(LayerTensor::QNorm, {config.headDim}, headDimText);
      add(LayerTensor::KNorm, {config.headDim}, headDimText);
    }
    add(LayerTensor::OProj, {hidden, qWidth}, hiddenText + ", " + qText);
    if (config.qkvBias) {
      add(LayerTensor::QBias, {qWidth}, qText);
      add(LayerTensor::KBias, {kvWidth}, kvText);
      add(LayerTensor::VBias, {kvWidth}, kvText);
    }
    if (config.outputBias)
      add(LayerTensor::OBias, {hidden}, hiddenText);
    add(LayerTensor::PostAttentionNorm, {hidden}, hiddenText);
    if (config.fusedProjections) {
      add(LayerTensor::GateUpProj, {2 * config.intermediateSize, hidden},
          "2 x " + mlpText + ", " + hiddenText);
    } else {
      add(LayerTensor::GateProj, {config.intermediateSize, hidden}, mlpText + ", " + hiddenText);
      add(LayerTensor::UpProj, {config.intermediateSize, hidden}, mlpText + ", " + hiddenText);
    }
    add(LayerTensor::DownProj, {hidden, config.intermediateSize}, hiddenText + ", " + mlpText);
  }
  expected.push_back({std::string(kFinalNormName), {hidden}, hiddenText});
  if (!config.tieWordEmbeddings)
    expected.push_back({std::string(kLmHeadName),
                        {config.vocabSize, hidden},
                        vocabText + ", " + hiddenText});
  return expected;
}

Status checkCheckpointShapes(const ModelConfig &config, const Checkpoint &checkpoint) {
  const std::string configName = fileName(config.source);
  for (const ExpectedTensor &expected : expectedTensors(config)) {
    const TensorInfo *info = checkpoint.find(expected.name);
    if (!info) {
      std::string hint;
      if (expected.name == kLmHeadName)
        hint = " (" + configName + " says tie_word_embeddings=false)";
      return Status::error("checkpoint has no tensor '" + expected.name + "', which " +
                           configName + " requires" + hint);
    }
    const std::string file = fileName(*checkpoint.fileOf(expected.name));
    if (info->shape != expected.shape)
      return Status::error(file + ": tensor '" + expected.name + "' has shape " +
                           formatShape(info->shape) + ", " + configName + " implies " +
                           formatShape(expected.shape) + " (" + expected.derivation + ")");
    if (!isFloatDType(info->dtype))
      return Status::error(file + ": tensor '" + expected.name + "' has dtype " +
                           std::string(dtypeName(info->dtype)) +
                           ", expected F32, F16 or BF16");
  }
  return Status::ok();
}

} // namespace llmir::model
