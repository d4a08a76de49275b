#include "ModelProfile.h"

#include "DecoderSegments.h"

#include "llmir/IR/LLMOps.h"

#include "mlir/IR/BuiltinTypes.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>

using namespace mlir;

namespace llmir::compiler {
namespace {

constexpr double kActivationBytes = 4; // activations are f32 (ShardProgram v1)

double width(Value v) {
  return static_cast<double>(v.getType().cast<ShapedType>().getShape().back());
}

double byteSize(Type type) {
  auto shaped = type.cast<ShapedType>();
  return static_cast<double>(shaped.getNumElements()) *
         std::max<unsigned>(1, shaped.getElementTypeBitWidth() / 8);
}

bool isActivation(Value v) {
  auto type = v.getType().dyn_cast<RankedTensorType>();
  return type && type.getRank() == 2 && !v.getDefiningOp<llm::WeightOp>();
}

/// The linears whose outputs are an attention's k and v (through RoPE and a
/// per-head norm).
llvm::SmallPtrSet<Operation *, 8> keyValueProjections(const DecoderSegments::Ops &ops) {
  llvm::SmallPtrSet<Operation *, 8> linears;
  for (Operation *op : ops)
    if (auto a = dyn_cast<llm::PagedAttentionOp>(op))
      for (Value v : {a.getKey(), a.getValue()}) {
        while (Operation *producer = v.getDefiningOp()) {
          if (!isa<llm::RotaryEmbeddingOp, llm::RMSNormOp>(producer))
            break;
          v = producer->getOperand(0);
        }
        if (Operation *linear = v.getDefiningOp<llm::LinearOp>())
          linears.insert(linear);
      }
  return linears;
}

SegmentProfile profileSegment(const DecoderSegments::Ops &ops) {
  SegmentProfile p;
  const llvm::SmallPtrSet<Operation *, 8> keyValue = keyValueProjections(ops);
  for (Operation *op : ops) {
    if (auto w = dyn_cast<llm::WeightOp>(op)) {
      bool replicated = llvm::all_of(w->getUsers(), [](Operation *u) {
        return isa<llm::RMSNormOp>(u);
      });
      (replicated ? p.replicatedWeightBytes : p.shardedWeightBytes) += byteSize(w.getType());
      if (!replicated && llvm::all_of(w->getUsers(), [&](Operation *u) {
            return keyValue.contains(u);
          }))
        p.keyValueWeightBytes += byteSize(w.getType());
      continue;
    }
    double working = 0;
    for (Value in : op->getOperands())
      if (isActivation(in))
        working += width(in) * kActivationBytes;
    for (Value out : op->getResults())
      if (isActivation(out))
        working += width(out) * kActivationBytes;
    p.activationBytesPerToken += working;
    p.peakActivationBytesPerToken = std::max(p.peakActivationBytesPerToken, working);
    if (isa<llm::LinearOp, llm::LogitsOp, llm::EmbeddingOp, llm::PagedAttentionOp,
            llm::RMSNormOp, llm::RotaryEmbeddingOp, llm::SwiGLUOp, llm::AddOp>(op))
      ++p.ops;
    llvm::TypeSwitch<Operation *>(op)
        .Case([&](llm::LinearOp l) {
          auto shape = l.getWeight().getType().cast<ShapedType>().getShape();
          p.flopsPerToken += 2.0 * static_cast<double>(shape[0] * shape[1]);
          p.matmulFlopsPerToken += 2.0 * static_cast<double>(shape[0] * shape[1]);
          // o_proj and down_proj become row-parallel: one all-reduce each.
          Operation *producer = l.getInput().getDefiningOp();
          if (producer && isa<llm::PagedAttentionOp, llm::SwiGLUOp>(producer)) {
            p.allReduceBytesPerToken += width(l.getResult()) * kActivationBytes;
            ++p.allReduces;
          }
        })
        .Case([&](llm::LogitsOp l) {
          auto shape = l.getWeight().getType().cast<ShapedType>().getShape();
          p.flopsPerToken += 2.0 * static_cast<double>(shape[0] * shape[1]);
          p.matmulFlopsPerToken += 2.0 * static_cast<double>(shape[0] * shape[1]);
          p.allGatherBytesPerToken += width(l.getResult()) * kActivationBytes;
          ++p.allGathers;
        })
        .Case([&](llm::EmbeddingOp e) {
          p.allReduceBytesPerToken += width(e.getResult()) * kActivationBytes;
          ++p.allReduces;
        })
        .Case([&](llm::PagedAttentionOp a) {
          auto cache = a.getCache().getType().cast<llm::PagedKVCacheType>();
          double d = a.getHeadDim(), hq = a.getNumHeads(), hkv = a.getNumKvHeads();
          double elem = std::max<unsigned>(1, cache.getElementType().getIntOrFloatBitWidth() / 8);
          p.hasAttention = true;
          p.attentionFlopsPerPair += 4.0 * hq * d;
          p.kvBytesPerToken += 2.0 * hkv * d * elem;
          p.spKeyValueBytesPerToken += 2.0 * hkv * d * kActivationBytes;
        })
        .Case([&](llm::RMSNormOp n) { p.flopsPerToken += 4 * width(n.getResult()); })
        .Case([&](llm::RotaryEmbeddingOp r) { p.flopsPerToken += 6 * width(r.getResult()); })
        .Case([&](llm::SwiGLUOp s) { p.flopsPerToken += 5 * width(s.getResult()); })
        .Case([&](llm::AddOp a) { p.flopsPerToken += width(a.getResult()); });
  }
  return p;
}

} // namespace

FailureOr<ModelProfile> profileModel(func::FuncOp step) {
  auto segments = segmentDecoder(step);
  if (failed(segments))
    return failure();
  ModelProfile m;
  m.prologue = profileSegment(segments->prologue);
  for (const auto &layer : segments->layers)
    m.layers.push_back(profileSegment(layer));
  m.epilogue = profileSegment(segments->epilogue);
  m.hiddenBytesPerToken = width(segments->prologueOutput) * kActivationBytes;
  for (BlockArgument arg : step.getArguments())
    if (auto cache = arg.getType().dyn_cast<llm::PagedKVCacheType>()) {
      m.kvBlockSize = cache.getBlockSize();
      m.maxSeqLen = cache.getMaxSeqLen();
    }
  step.walk([&](llm::PagedAttentionOp a) {
    m.numHeads = a.getNumHeads();
    m.numKvHeads = a.getNumKvHeads();
  });
  step.walk([&](llm::SwiGLUOp s) { m.mlpWidth = static_cast<int64_t>(width(s.getResult())); });
  step.walk([&](llm::LogitsOp l) { m.vocabSize = static_cast<int64_t>(width(l.getResult())); });
  return m;
}

} // namespace llmir::compiler
