#include "Partition.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"

using namespace mlir;

namespace llmir::compiler {

void writePartition(ModuleOp module, const Partition &p) {
  Builder b(module.getContext());
  SmallVector<Attribute> layers, costs;
  for (int64_t n : p.stageLayers)
    layers.push_back(b.getI64IntegerAttr(n));
  for (double c : p.stageCosts)
    costs.push_back(b.getF64FloatAttr(c));
  NamedAttrList attrs;
  attrs.set("tp", b.getI64IntegerAttr(p.tp));
  attrs.set("pp", b.getI64IntegerAttr(p.pp));
  attrs.set("sp", b.getI64IntegerAttr(p.sp));
  attrs.set("stage_layers", b.getArrayAttr(layers));
  attrs.set("stage_costs", b.getArrayAttr(costs));
  attrs.set("replicas", b.getI64IntegerAttr(p.replicas));
  attrs.set("prefill_seconds", b.getF64FloatAttr(p.prefillSeconds));
  attrs.set("decode_seconds", b.getF64FloatAttr(p.decodeSeconds));
  module->setAttr(kPartitionAttr, attrs.getDictionary(module.getContext()));
}

FailureOr<Partition> readPartition(ModuleOp module) {
  Partition p;
  auto dict = module->getAttrOfType<DictionaryAttr>(kPartitionAttr);
  if (!dict)
    return p;
  auto degree = [&](StringRef key, int &out) {
    auto attr = dict.getAs<IntegerAttr>(key);
    if (!attr || attr.getInt() < 1)
      return false;
    out = static_cast<int>(attr.getInt());
    return true;
  };
  auto layers = dict.getAs<ArrayAttr>("stage_layers");
  if (!degree("tp", p.tp) || !degree("pp", p.pp) || !degree("sp", p.sp) || !layers)
    return module.emitError() << kPartitionAttr
                              << " needs positive tp, pp, sp and stage_layers";
  for (Attribute a : layers) {
    auto n = a.dyn_cast<IntegerAttr>();
    if (!n || n.getInt() < 1)
      return module.emitError() << kPartitionAttr
                                << ".stage_layers holds " << a
                                << ", expected positive integers";
    p.stageLayers.push_back(n.getInt());
  }
  if (static_cast<int>(p.stageLayers.size()) != p.pp)
    return module.emitError() << kPartitionAttr << " has " << p.stageLayers.size()
                              << " stage_layers entries for pp = " << p.pp;
  if (auto costs = dict.getAs<ArrayAttr>("stage_costs"))
    for (Attribute a : costs)
      if (auto c = a.dyn_cast<FloatAttr>())
        p.stageCosts.push_back(c.getValueAsDouble());
  if (auto replicas = dict.getAs<IntegerAttr>("replicas"))
    p.replicas = replicas.getInt();
  if (auto t = dict.getAs<FloatAttr>("prefill_seconds"))
    p.prefillSeconds = t.getValueAsDouble();
  if (auto t = dict.getAs<FloatAttr>("decode_seconds"))
    p.decodeSeconds = t.getValueAsDouble();
  return p;
}

} // namespace llmir::compiler
