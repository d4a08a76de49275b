// Token-split sequence parallelism (a long prefill's linears divided over
// the sp ranks): each rank computes the rows of its contiguous slice of the
// step (sequenceParallelRows), the K/V rows are gathered so that every rank
// stores every row's k, v (each sp rank holds the whole cache) and attends
// its own query rows over their causal prefix, and the hidden rows are
// gathered back before the logits. A rank with an empty slice (fewer rows
// than ranks) still takes part in every collective.
#include "SequenceParallel.h"

#include "llmir/engine/Communicator.h"
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/Step.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace llmir::engine {
namespace cpu {

void sliceAttention(const float *q, const float *kv, const StepInput &step,
                    RowRange rows, const AttentionParams &params,
                    KvCache &cache, float *out, ThreadPool &pool) {
  const int64_t width = params.numKvHeads * params.headDim;
  AttentionParams everyBlock = params;
  everyBlock.kvShards = 1;
  everyBlock.kvShard = 0;
  storeKeysAndValues(kv, kv + width, 2 * width, step, everyBlock, cache);
  attendCached(q, step, rows, everyBlock, cache, out, pool);
}

} // namespace cpu

namespace {

RowRange sliceOf(const KernelCall &call) {
  return sequenceParallelRows(call.step->numTokens(), call.params->spSize,
                              call.params->spIndex);
}

} // namespace

Status runSpScatterRows(KernelCall &call) {
  const Tensor &x = *call.inputs[0].activation;
  const int64_t T = call.step->numTokens();
  if (x.shape.size() != 2 || x.shape[0] != T)
    return Status::error("SP_SCATTER_ROWS input needs one row per token of the step (" +
                         std::to_string(T) + ")");
  const RowRange rows = sliceOf(call);
  const int64_t width = x.rowSize();
  Tensor &y = *call.outputs[0];
  y.reshape({rows.size(), width});
  std::copy_n(x.data.data() + rows.begin * width, rows.size() * width, y.data.data());
  return Status::ok();
}

Status runAllGatherRows(KernelCall &call) {
  const int64_t T = call.step->numTokens();
  const int64_t spSize = call.params->spSize;
  const RowRange mine = sliceOf(call);
  int64_t width = 0;
  for (const Operand &in : call.inputs) {
    const Tensor &x = *in.activation;
    if (x.shape.size() != 2 || x.shape[0] != mine.size())
      return Status::error("ALL_GATHER_ROWS input needs this rank's " +
                           std::to_string(mine.size()) + " rows of the step");
    width += x.shape[1];
  }
  // Every slice padded to the longest one: the collective moves equal counts.
  const int64_t longest = sequenceParallelRows(T, spSize, 0).size();
  std::vector<float> packed(static_cast<size_t>(longest * width), 0.0f);
  for (int64_t t = 0; t < mine.size(); ++t) {
    float *row = packed.data() + t * width;
    for (const Operand &in : call.inputs) {
      const int64_t w = in.activation->shape[1];
      row = std::copy_n(in.activation->data.data() + t * w, w, row);
    }
  }
  std::vector<float> gathered(static_cast<size_t>(spSize * longest * width));
  LLMIR_RETURN_IF_ERROR(call.comm->allGather(packed.data(), packed.size(),
                                             gathered.data(),
                                             call.params->group));
  Tensor &y = *call.outputs[0];
  y.reshape({T, width});
  for (int64_t r = 0; r < spSize; ++r) {
    const RowRange rows = sequenceParallelRows(T, spSize, r);
    std::copy_n(gathered.data() + r * longest * width, rows.size() * width,
                y.data.data() + rows.begin * width);
  }
  return Status::ok();
}

Status runSpAttention(KernelCall &call) {
  const cpu::AttentionParams &params = call.params->attention;
  const Tensor &q = *call.inputs[0].activation, &kv = *call.inputs[1].activation;
  const RowRange rows = sliceOf(call);
  const int64_t qWidth = params.numHeads * params.headDim;
  LLMIR_RETURN_IF_ERROR(expectMatrix(q, rows.size(), qWidth, "query slice"));
  LLMIR_RETURN_IF_ERROR(expectMatrix(kv, call.step->numTokens(),
                                    2 * params.numKvHeads * params.headDim,
                                    "gathered key/value rows"));
  Tensor &out = *call.outputs[0];
  out.reshape({rows.size(), qWidth});
  cpu::sliceAttention(q.data.data(), kv.data.data(), *call.step, rows, params,
                      *call.kvCache, out.data.data(), *call.pool);
  return Status::ok();
}

} // namespace llmir::engine
