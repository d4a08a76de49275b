#include "llmir/compiler/Importer.h"
#include "llmir/compiler/Compile.h"

#include "llmir/IR/LLMDialect.h"
#include "llmir/IR/LLMOps.h"
#include "llmir/model/Checkpoint.h"
#include "llmir/model/ModelConfig.h"
#include "llmir/model/TensorNames.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"

#include "llvm/ADT/StringMap.h"

#include <cmath>
#include <fstream>
#include <sstream>

using namespace mlir;
using llmir::model::LayerTensor;

namespace llmir::compiler {
namespace {

llvm::Error makeError(const std::string &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

Type elementTypeOf(MLIRContext *ctx, model::DType dtype) {
  switch (dtype) {
  case model::DType::BF16:
    return BFloat16Type::get(ctx);
  case model::DType::F16:
    return Float16Type::get(ctx);
  default:
    return Float32Type::get(ctx);
  }
}

/// Emits the decoder body of one entry point. Both entry points share it:
/// every op is per token, so prefill chunks and decode tokens of many
/// sequences run through the same instructions.
/// Type of every weight the config requires, by checkpoint tensor name.
using WeightTypes = llvm::StringMap<RankedTensorType>;

class DecoderEmitter {
public:
  DecoderEmitter(OpBuilder &builder, const model::ModelConfig &config,
                 const WeightTypes &weightTypes, const std::function<bool()> &cancelled)
      : b(builder), config(config), weightTypes(weightTypes), cancelled(cancelled),
        loc(builder.getUnknownLoc()), f32(builder.getF32Type()) {}

  /// False when cancelled between two layers (the function is left partial).
  bool emit(func::FuncOp func) {
    Block *entry = func.addEntryBlock();
    b.setInsertionPointToStart(entry);
    Value tokens = entry->getArgument(0);
    Value positions = entry->getArgument(1);
    Value cache = entry->getArgument(2);

    std::string embedName(model::kEmbedTokensName);
    Value table = weight(embedName);
    Value hidden = b.create<llm::EmbeddingOp>(
        loc, activation(config.hiddenSize), tokens, table);
    for (int64_t layer = 0; layer < config.numLayers; ++layer) {
      if (cancelled && cancelled())
        return false;
      hidden = emitLayer(layer, hidden, positions, cache);
    }
    Value normed = rmsNorm(hidden, std::string(model::kFinalNormName));
    std::string headName = config.tieWordEmbeddings
                               ? embedName
                               : std::string(model::kLmHeadName);
    Value logits = b.create<llm::LogitsOp>(
        loc, activation(config.vocabSize), normed, weight(headName));
    b.create<func::ReturnOp>(loc, logits);
    return true;
  }

private:
  RankedTensorType activation(int64_t width) {
    return RankedTensorType::get({ShapedType::kDynamicSize, width}, f32);
  }

  Value weight(const std::string &name) {
    auto it = weightTypes.find(name);
    assert(it != weightTypes.end() && "expectedTensors lists every weight emitted");
    return b.create<llm::WeightOp>(loc, it->second, b.getStringAttr(name),
                                   IntegerAttr(), IntegerAttr(), IntegerAttr(),
                                   IntegerAttr(), IntegerAttr(), IntegerAttr(),
                                   IntegerAttr(), IntegerAttr());
  }

  /// Rows [offset, offset + rows) of a fused checkpoint tensor (Phi-3's
  /// qkv_proj and gate_up_proj), as their own weight: the linears stay
  /// separate, so tensor parallelism shards each part (q, k, v; gate, up)
  /// like the unfused tensors.
  Value weightRows(const std::string &name, int64_t offset, int64_t rows) {
    auto it = weightTypes.find(name);
    assert(it != weightTypes.end() && "expectedTensors lists every weight emitted");
    RankedTensorType full = it->second;
    auto type = RankedTensorType::get({rows, full.getDimSize(1)}, full.getElementType());
    return b.create<llm::WeightOp>(loc, type, b.getStringAttr(name), IntegerAttr(),
                                   IntegerAttr(), b.getI64IntegerAttr(offset),
                                   b.getI64IntegerAttr(full.getDimSize(0)), IntegerAttr(),
                                   IntegerAttr(), IntegerAttr(), IntegerAttr());
  }

  Value layerWeight(int64_t layer, LayerTensor tensor) {
    return weight(model::layerTensorName(layer, tensor));
  }

  Value rmsNorm(Value x, const std::string &weightName) {
    return b.create<llm::RMSNormOp>(
        loc, x.getType(), x, weight(weightName),
        b.getF32FloatAttr(static_cast<float>(config.rmsNormEps)));
  }

  Value linear(int64_t layer, Value x, LayerTensor w, int64_t outFeatures,
               std::optional<LayerTensor> bias) {
    Value biasValue = bias ? layerWeight(layer, *bias) : Value();
    return b.create<llm::LinearOp>(loc, activation(outFeatures), x,
                                   layerWeight(layer, w), biasValue);
  }

  /// A linear over rows [offset, offset + outFeatures) of a fused tensor.
  Value fusedLinear(int64_t layer, Value x, LayerTensor fused, int64_t offset,
                    int64_t outFeatures) {
    return b.create<llm::LinearOp>(
        loc, activation(outFeatures), x,
        weightRows(model::layerTensorName(layer, fused), offset, outFeatures), Value());
  }

  Value rope(Value x, Value positions) {
    const model::RopeScaling &s = config.ropeScaling;
    StringAttr scaling;
    FloatAttr factor, low, high;
    IntegerAttr original;
    if (s.type != model::RopeScalingType::None) {
      scaling = b.getStringAttr(s.type == model::RopeScalingType::Linear ? "linear" : "llama3");
      factor = b.getF32FloatAttr(static_cast<float>(s.factor));
    }
    if (s.type == model::RopeScalingType::Llama3) {
      low = b.getF32FloatAttr(static_cast<float>(s.lowFreqFactor));
      high = b.getF32FloatAttr(static_cast<float>(s.highFreqFactor));
      original = b.getI32IntegerAttr(static_cast<int32_t>(s.originalMaxPositionEmbeddings));
    }
    return b.create<llm::RotaryEmbeddingOp>(
        loc, x.getType(), x, positions, b.getI32IntegerAttr(config.headDim),
        b.getF32FloatAttr(static_cast<float>(config.ropeTheta)), scaling, factor,
        low, high, original);
  }

  Value emitLayer(int64_t layer, Value hidden, Value positions, Value cache) {
    const int64_t qWidth = config.numHeads * config.headDim;
    const int64_t kvWidth = config.numKvHeads * config.headDim;
    auto qkvBias = [&](LayerTensor t) -> std::optional<LayerTensor> {
      if (config.qkvBias)
        return t;
      return std::nullopt;
    };

    Value x = rmsNorm(hidden, model::layerTensorName(layer, LayerTensor::InputNorm));
    Value q, k, v;
    if (config.fusedProjections) {
      q = fusedLinear(layer, x, LayerTensor::QKVProj, 0, qWidth);
      k = fusedLinear(layer, x, LayerTensor::QKVProj, qWidth, kvWidth);
      v = fusedLinear(layer, x, LayerTensor::QKVProj, qWidth + kvWidth, kvWidth);
    } else {
      q = linear(layer, x, LayerTensor::QProj, qWidth, qkvBias(LayerTensor::QBias));
      k = linear(layer, x, LayerTensor::KProj, kvWidth, qkvBias(LayerTensor::KBias));
      v = linear(layer, x, LayerTensor::VProj, kvWidth, qkvBias(LayerTensor::VBias));
    }
    if (config.qkNorm) { // per head (weights of head_dim), before RoPE
      q = rmsNorm(q, model::layerTensorName(layer, LayerTensor::QNorm));
      k = rmsNorm(k, model::layerTensorName(layer, LayerTensor::KNorm));
    }
    q = rope(q, positions);
    k = rope(k, positions);
    const int64_t window = config.layerSlidingWindow.empty()
                               ? 0
                               : config.layerSlidingWindow[static_cast<size_t>(layer)];
    Value attn = b.create<llm::PagedAttentionOp>(
        loc, q.getType(), q, k, v, cache, b.getI32IntegerAttr(layer),
        b.getI32IntegerAttr(config.numHeads),
        b.getI32IntegerAttr(config.numKvHeads),
        b.getI32IntegerAttr(config.headDim),
        b.getF32FloatAttr(1.0f / std::sqrt(static_cast<float>(config.headDim))),
        window > 0 ? b.getI32IntegerAttr(static_cast<int32_t>(window)) : IntegerAttr(),
        IntegerAttr());
    std::optional<LayerTensor> oBias;
    if (config.outputBias)
      oBias = LayerTensor::OBias;
    Value o = linear(layer, attn, LayerTensor::OProj, config.hiddenSize, oBias);
    hidden = b.create<llm::AddOp>(loc, hidden.getType(), hidden, o);

    x = rmsNorm(hidden, model::layerTensorName(layer, LayerTensor::PostAttentionNorm));
    const int64_t F = config.intermediateSize;
    Value gate = config.fusedProjections
                     ? fusedLinear(layer, x, LayerTensor::GateUpProj, 0, F)
                     : linear(layer, x, LayerTensor::GateProj, F, std::nullopt);
    Value up = config.fusedProjections
                   ? fusedLinear(layer, x, LayerTensor::GateUpProj, F, F)
                   : linear(layer, x, LayerTensor::UpProj, F, std::nullopt);
    Value act = b.create<llm::SwiGLUOp>(loc, gate.getType(), gate, up);
    Value down = linear(layer, act, LayerTensor::DownProj, config.hiddenSize, std::nullopt);
    return b.create<llm::AddOp>(loc, hidden.getType(), hidden, down);
  }

  OpBuilder &b;
  const model::ModelConfig &config;
  const WeightTypes &weightTypes;
  const std::function<bool()> &cancelled;
  Location loc;
  Type f32;
};

void setModelAttributes(ModuleOp module, const model::ModelConfig &config,
                        const std::string &hfDir) {
  OpBuilder b(module.getContext());
  NamedAttrList attrs;
  attrs.set("architecture", b.getStringAttr(config.architecture));
  attrs.set("source", b.getStringAttr(hfDir));
  attrs.set("vocab_size", b.getI64IntegerAttr(config.vocabSize));
  attrs.set("hidden_size", b.getI64IntegerAttr(config.hiddenSize));
  attrs.set("intermediate_size", b.getI64IntegerAttr(config.intermediateSize));
  attrs.set("num_layers", b.getI64IntegerAttr(config.numLayers));
  attrs.set("num_heads", b.getI64IntegerAttr(config.numHeads));
  attrs.set("num_kv_heads", b.getI64IntegerAttr(config.numKvHeads));
  attrs.set("head_dim", b.getI64IntegerAttr(config.headDim));
  attrs.set("tie_word_embeddings", b.getBoolAttr(config.tieWordEmbeddings));
  if (!config.eosTokenIds.empty())
    attrs.set("eos_token_id", b.getI64IntegerAttr(config.eosTokenIds.front()));
  module->setAttr("llm.model", attrs.getDictionary(module.getContext()));
}

/// Builds the module of `config` with the given weight types.
llvm::Expected<OwningOpRef<ModuleOp>>
buildModule(MLIRContext &context, const model::ModelConfig &config,
            const WeightTypes &weightTypes, const std::string &source,
            const ImportOptions &options) {
  context.getOrLoadDialect<llm::LLMDialect>();
  context.getOrLoadDialect<func::FuncDialect>();
  if (options.kvBlockSize <= 0)
    return makeError("kv block size must be positive, got " +
                     std::to_string(options.kvBlockSize));

  OpBuilder b(&context);
  OwningOpRef<ModuleOp> module = ModuleOp::create(b.getUnknownLoc());
  setModelAttributes(*module, config, source);

  auto i32Vector =
      RankedTensorType::get({ShapedType::kDynamicSize}, b.getI32Type());
  auto cacheType = llm::PagedKVCacheType::get(
      &context, b.getF32Type(), config.numLayers, config.numKvHeads,
      config.headDim, options.kvBlockSize, config.maxPositionEmbeddings);
  auto logitsType = RankedTensorType::get(
      {ShapedType::kDynamicSize, config.vocabSize}, b.getF32Type());
  auto funcType =
      b.getFunctionType({i32Vector, i32Vector, cacheType}, {logitsType});

  DecoderEmitter emitter(b, config, weightTypes, options.cancelled);
  for (llvm::StringRef phase : {"prefill", "decode"}) {
    b.setInsertionPointToEnd(module->getBody());
    auto func = b.create<func::FuncOp>(b.getUnknownLoc(), phase, funcType);
    func->setAttr("llm.phase", b.getStringAttr(phase));
    func.setArgAttr(0, "llm.name", b.getStringAttr("tokens"));
    func.setArgAttr(1, "llm.name", b.getStringAttr("positions"));
    func.setArgAttr(2, "llm.name", b.getStringAttr("kv_cache"));
    if (!emitter.emit(func))
      return makeError(std::string(kCompileCancelled) + " while importing the layers of '" +
                       source + "'");
  }
  if (failed(module->verify()))
    return makeError("internal error: imported module of '" + source +
                     "' does not verify");
  return module;
}

} // namespace

llvm::Expected<OwningOpRef<ModuleOp>>
importHuggingFace(MLIRContext &context, const std::string &hfDir,
                  const ImportOptions &options) {
  auto config = model::loadModelConfig(hfDir);
  if (!config)
    return makeError(config.message());
  auto checkpoint = model::Checkpoint::open(hfDir);
  if (!checkpoint)
    return makeError(checkpoint.message());
  if (Status shapes = model::checkCheckpointShapes(*config, *checkpoint); !shapes)
    return makeError(shapes.message());
  WeightTypes types;
  for (const model::ExpectedTensor &t : model::expectedTensors(*config)) {
    const model::TensorInfo *info = checkpoint->find(t.name);
    types[t.name] = RankedTensorType::get(info->shape,
                                          elementTypeOf(&context, info->dtype));
  }
  return buildModule(context, *config, types, hfDir, options);
}

llvm::Expected<OwningOpRef<ModuleOp>>
importSyntheticConfig(MLIRContext &context, const std::string &configPath,
                      const ImportOptions &options) {
  std::ifstream in(configPath);
  if (!in)
    return makeError("cannot read model config '" + configPath + "'");
  std::stringstream text;
  text << in.rdbuf();
  auto config = model::parseModelConfig(text.str(), configPath);
  if (!config)
    return makeError(config.message());
  WeightTypes types;
  for (const model::ExpectedTensor &t : model::expectedTensors(*config))
    types[t.name] = RankedTensorType::get(t.shape, BFloat16Type::get(&context));
  return buildModule(context, *config, types, "synthetic:" + configPath, options);
}

} // namespace llmir::compiler
