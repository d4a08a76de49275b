//===- LLMDialect.td - the llm dialect and its shared ODS pieces -*- tablegen -*-===//
//
// The `llm` dialect describes LLM inference programs: decoder building blocks
// (weights, norms, linear layers, paged attention) and their distributed forms
// (sharded linear layers, collectives, pipeline stages, sharded KV caches).
//
//===----------------------------------------------------------------------===//

#ifndef LLMIR_IR_LLMDIALECT_TD
#define LLMIR_IR_LLMDIALECT_TD

include "mlir/IR/OpBase.td"

def LLM_Dialect : Dialect {
  let name = "llm";
  let cppNamespace = "::mlir::llm";
  let summary = "Distributed large language model inference";
  let description = [{
    Ops and types for LLM inference programs. All tensor types are local,
    per-device shapes; see docs/ir.md for the semantics of each op.
  }];
  let emitAccessorPrefix = kEmitAccessorPrefix_Prefixed;
  let useDefaultTypePrinterParser = 1;
  let extraClassDeclaration = [{
  private:
    // Defined beside the type storage classes, which addTypes needs complete.
    void registerTypes();
  public:
  }];
}

// The seed syntax prints integer attributes as `2 : i32`. MLIR's I32Attr hands
// them out as uint32_t, which hides negative values from the verifiers, so the
// accessors return the sign-extended value instead.
def LLM_I32Attr : TypedSignlessIntegerAttrBase<
    I32, "int32_t", "32-bit signless integer attribute"> {
  let convertFromStorage = "static_cast<int32_t>($_self.getValue().getSExtValue())";
}
def LLM_I64Attr : TypedSignlessIntegerAttrBase<
    I64, "int64_t", "64-bit signless integer attribute"> {
  let convertFromStorage = "$_self.getValue().getSExtValue()";
}

#endif // LLMIR_IR_LLMDIALECT_TD
