//===- Passes.td - the llm compiler passes ------------------*- tablegen -*-===//
//
// Run in this order (llmir-compile and Compile.h do): llm-cost-model,
// llm-partition, llm-insert-communication, llm-plan-memory, and
// llm-insert-kv-transfers when the ranks' caches are connected to the
// KV-block store (CompileOptions::kvStore). They talk through module
// attributes: `llm.partition` (degrees and layers per stage) and
// `llm.memory_plan` (bytes and KV blocks per stage); docs/compiler.md.
//
//===----------------------------------------------------------------------===//

#ifndef LLMIR_COMPILER_PASSES_TD
#define LLMIR_COMPILER_PASSES_TD

include "mlir/Pass/PassBase.td"

def CostModel : Pass<"llm-cost-model", "mlir::ModuleOp"> {
  let summary = "annotate each llm op with its FLOPs and bytes (llm.cost)";
  let constructor = "llmir::compiler::createCostModelPass()";
  let options = [
    Option<"tokens", "tokens", "int64_t", "2048",
           "tokens of the step the costs are computed for">,
  ];
}

def ModelPartitioning : Pass<"llm-partition", "mlir::ModuleOp"> {
  let summary = "choose tensor/pipeline/sequence degrees and balance stages by cost";
  let constructor = "llmir::compiler::createModelPartitioningPass()";
  let options = [
    Option<"tp", "tp", "int", "1", "tensor-parallel degree (without a cluster spec)">,
    Option<"pp", "pp", "int", "1", "pipeline-parallel degree (without a cluster spec)">,
    Option<"sp", "sp", "int", "1", "sequence-parallel degree (without a cluster spec)">,
    Option<"cluster", "cluster", "std::string", "\"\"",
           "cluster spec (YAML): its fixed degrees or the automatic search decide">,
    Option<"explain", "explain", "bool", "false",
           "print the candidates table (degrees, memory, predicted times, why rejected)">,
  ];
}

def CommunicationInsertion : Pass<"llm-insert-communication", "mlir::ModuleOp"> {
  let summary = "shard linears Megatron-style, insert collectives and pipeline stages";
  let constructor = "llmir::compiler::createCommunicationInsertionPass()";
  let dependentDialects = ["mlir::llm::LLMDialect"];
}

def MemoryPlanning : Pass<"llm-plan-memory", "mlir::ModuleOp"> {
  let summary = "weights, activations and KV-cache blocks per device; fails when a stage does not fit";
  let constructor = "llmir::compiler::createMemoryPlanningPass()";
  let options = [
    Option<"cluster", "cluster", "std::string", "\"\"",
           "cluster spec (YAML) giving the device memory and serving targets">,
  ];
}

def KvTransferInsertion : Pass<"llm-insert-kv-transfers", "mlir::ModuleOp"> {
  let summary = "move the step's KV blocks between the cache and the KV-block store: "
                "llm.remote_load before a block's first attention, llm.remote_store after its last";
  let constructor = "llmir::compiler::createKvTransferInsertionPass()";
  let dependentDialects = ["mlir::llm::LLMDialect"];
}

#endif // LLMIR_COMPILER_PASSES_TD
