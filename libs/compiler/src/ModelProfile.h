// What the partition search needs to know of a model, read once from the
// unpartitioned @prefill: per segment (prologue, each decoder layer,
// epilogue) its weights, its per-token compute and traffic, its attention
// and KV cache, and what tensor parallelism would all-reduce / all-gather.
// Evaluating a candidate (PlanSearch) is then arithmetic on these numbers.
#pragma once

#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <cstdint>
#include <vector>

namespace llmir::compiler {

struct SegmentProfile {
  double shardedWeightBytes = 0;    // sliced tp ways (linears, embedding, LM head)
  double replicatedWeightBytes = 0; // kept whole on every rank (norm weights)
  /// Of shardedWeightBytes, the k/v projections': split min(tp, KV heads)
  /// ways (KV heads are replicated when tp exceeds them).
  double keyValueWeightBytes = 0;
  double flopsPerToken = 0;         // linears and element-wise ops, whole model width
  double activationBytesPerToken = 0; // activations read + written per token
  double peakActivationBytesPerToken = 0; // largest op working set per token
  double attentionFlopsPerPair = 0; // per (query, key) pair: 4 * heads * head_dim
  double kvBytesPerToken = 0;       // K and V of one cached token, all KV heads
  double allReduceBytesPerToken = 0; // tensors tp would all-reduce (f32)
  double allGatherBytesPerToken = 0; // tensors tp would all-gather (f32)
  int allReduces = 0, allGathers = 0; // how many collectives tp would add
  double spKeyValueBytesPerToken = 0; // k and v rows (f32) a token-split sp gathers
  bool hasAttention = false;
  int64_t ops = 0;                  // compute ops (kernels, before fusion)
  /// Of flopsPerToken, the matrix products' (linears, LM head).
  double matmulFlopsPerToken = 0;
};

struct ModelProfile {
  SegmentProfile prologue;
  std::vector<SegmentProfile> layers;
  SegmentProfile epilogue;
  double hiddenBytesPerToken = 0;   // what a pipeline boundary sends per token
  int64_t numHeads = 0, numKvHeads = 0, mlpWidth = 0, vocabSize = 0;
  int64_t kvBlockSize = 16;
  int64_t maxSeqLen = 0;            // the KV cache type's maxSeqLen
};

/// Fails (with a diagnostic) when `step` is not the importer's decoder shape.
mlir::FailureOr<ModelProfile> profileModel(mlir::func::FuncOp step);

} // namespace llmir::compiler
