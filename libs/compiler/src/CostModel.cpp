#include "CostModel.h"

#include "llmir/IR/LLMOps.h"

#include "mlir/IR/BuiltinTypes.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>

using namespace mlir;

namespace llmir::compiler {
namespace {

constexpr double kActivationBytes = 4; // activations are f32 (ShardProgram v1)

double elementsPerToken(Value v) {
  auto type = v.getType().cast<ShapedType>();
  return static_cast<double>(type.getShape().back());
}

double weightBytes(Value w) {
  auto type = w.getType().cast<ShapedType>();
  return static_cast<double>(type.getNumElements()) *
         std::max<unsigned>(1, type.getElementTypeBitWidth() / 8);
}

OpCost linearCost(Value input, Value weight, Value result, double t) {
  auto shape = weight.getType().cast<ShapedType>().getShape();
  OpCost c;
  c.flops = 2.0 * t * static_cast<double>(shape[0]) * static_cast<double>(shape[1]);
  c.bytes = weightBytes(weight) +
            t * (elementsPerToken(input) + elementsPerToken(result)) * kActivationBytes;
  return c;
}

/// Element-wise ops: `flopsPerElement` per output element, every operand and
/// the result pass through memory once.
OpCost elementwise(Operation *op, double t, double flopsPerElement) {
  OpCost c;
  double out = t * elementsPerToken(op->getResult(0));
  c.flops = flopsPerElement * out;
  for (Value in : op->getOperands())
    if (auto type = in.getType().dyn_cast<RankedTensorType>(); type && type.getRank() == 2)
      c.bytes += t * elementsPerToken(in) * kActivationBytes;
  c.bytes += out * kActivationBytes;
  return c;
}

} // namespace

OpCost costOf(Operation *op, int64_t tokens) {
  const double t = static_cast<double>(tokens);
  return llvm::TypeSwitch<Operation *, OpCost>(op)
      .Case([&](llm::LinearOp l) {
        return linearCost(l.getInput(), l.getWeight(), l.getResult(), t);
      })
      .Case([&](llm::ShardedLinearOp l) {
        return linearCost(l.getInput(), l.getWeight(), l.getResult(), t);
      })
      .Case([&](llm::LogitsOp l) {
        return linearCost(l.getInput(), l.getWeight(), l.getResult(), t);
      })
      .Case([&](llm::EmbeddingOp e) {
        OpCost c;
        c.bytes = 2 * t * elementsPerToken(e.getResult()) * kActivationBytes;
        return c;
      })
      .Case([&](llm::PagedAttentionOp a) {
        // Causal self-attention over `tokens` positions: QK^T and PV, half
        // of the square; K and V are written once and read back per head group.
        double d = a.getHeadDim(), hq = a.getNumHeads(), hkv = a.getNumKvHeads();
        OpCost c;
        c.flops = 2.0 * t * t * hq * d;
        c.bytes = t * (2 * hq * d + 4 * hkv * d) * kActivationBytes;
        return c;
      })
      .Case([&](llm::RMSNormOp n) { return elementwise(n, t, 4); })
      .Case([&](llm::RotaryEmbeddingOp r) { return elementwise(r, t, 6); })
      .Case([&](llm::SwiGLUOp s) { return elementwise(s, t, 5); })
      .Case([&](llm::AddOp a) { return elementwise(a, t, 1); })
      .Case([&](llm::AllReduceOp r) {
        OpCost c;
        double n = r.getGroupSize();
        c.commBytes = 2 * (n - 1) / n * t * elementsPerToken(r.getResult()) * kActivationBytes;
        return c;
      })
      .Case([&](llm::AllGatherOp g) {
        OpCost c;
        double n = g.getGroupSize();
        c.commBytes = (n - 1) / n * t * elementsPerToken(g.getResult()) * kActivationBytes;
        return c;
      })
      .Case([&](llm::PipelineSendOp s) {
        OpCost c;
        c.commBytes = t * elementsPerToken(s.getInput()) * kActivationBytes;
        return c;
      })
      .Default([](Operation *) { return OpCost{}; });
}

double predictSeconds(const OpCost &cost, const DeviceModel &device, int groupSize) {
  double compute = std::max(cost.flops / device.peakFlops,
                            cost.bytes / device.memoryBandwidth);
  double comm = 0;
  if (cost.commBytes > 0)
    comm = 2.0 * (groupSize - 1) * device.linkLatency +
           cost.commBytes / device.linkBandwidth;
  return compute + comm;
}

} // namespace llmir::compiler
