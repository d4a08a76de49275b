// llm-cost-model: records each op's cost as `llm.cost = {flops, bytes,
// comm_bytes}` (a discardable attribute: llm.cost_annotation needs an !llm.op
// handle that no op produces yet).
#include "CostModel.h"
#include "PassDetail.h"
#include "llmir/compiler/Passes.h"

#include "mlir/IR/Builders.h"

using namespace mlir;

namespace llmir::compiler {
namespace {

struct CostModelPass : CostModelBase<CostModelPass> {
  void runOnOperation() override {
    Builder b(&getContext());
    getOperation().walk([&](Operation *op) {
      if (op->getDialect() == nullptr ||
          op->getDialect()->getNamespace() != llm::LLMDialect::getDialectNamespace())
        return;
      OpCost c = costOf(op, tokens);
      if (c.flops == 0 && c.bytes == 0 && c.commBytes == 0)
        return;
      NamedAttrList attrs;
      attrs.set("flops", b.getF64FloatAttr(c.flops));
      attrs.set("bytes", b.getI64IntegerAttr(static_cast<int64_t>(c.bytes)));
      attrs.set("comm_bytes", b.getI64IntegerAttr(static_cast<int64_t>(c.commBytes)));
      op->setAttr("llm.cost", attrs.getDictionary(&getContext()));
    });
  }
};

} // namespace

std::unique_ptr<Pass> createCostModelPass() {
  return std::make_unique<CostModelPass>();
}

} // namespace llmir::compiler
