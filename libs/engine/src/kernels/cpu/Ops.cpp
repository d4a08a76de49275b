// Binds instruction operands to the CPU math kernels: checks the runtime
// shapes (activations depend on the step), sizes the outputs, and routes the
// collectives through the Communicator.
#include "SequenceParallel.h"

#include "llmir/engine/Communicator.h"
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/model/Safetensors.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <string>

namespace llmir::engine {
namespace {

const Tensor &act(const KernelCall &call, size_t i) {
  return *call.inputs[i].activation;
}
const WeightTensor &weight(const KernelCall &call, size_t i) {
  return *call.inputs[i].weight;
}
// The weight's elements: the backend keeps its own copy (on huge pages), so
// kernels read them through this view, never through WeightTensor::data.
const WeightView &weightView(const KernelCall &call, size_t i) {
  return call.inputs[i].view;
}

Status expectRows(const Tensor &x, int64_t rows, const char *what) {
  if (x.shape.empty() || x.rows() != rows)
    return Status::error(std::string(what) + " has shape " +
                         model::formatShape(x.shape) + "; expected " +
                         std::to_string(rows) + " rows (one per token)");
  return Status::ok();
}

Status expectWeightRank(const WeightTensor &w, size_t rank, const char *what) {
  if (w.shape.size() != rank)
    return Status::error(std::string(what) + " has shape " +
                         model::formatShape(w.shape) + "; expected " +
                         std::to_string(rank) + " dimensions");
  return Status::ok();
}

std::vector<float> widened(const WeightView &view) {
  std::vector<float> out(static_cast<size_t>(view.rows * view.cols));
  view.widenRows(0, view.rows, out.data());
  return out;
}

Status runEmbedding(KernelCall &call) {
  const WeightTensor &table = weight(call, 0);
  LLMIR_RETURN_IF_ERROR(expectWeightRank(table, 2, "embedding table"));
  const int64_t T = call.step->numTokens();
  Tensor &y = *call.outputs[0];
  y.reshape({T, table.shape[1]});
  cpu::embedding(call.step->tokenIds.data(), T, weightView(call, 0),
                 call.params->vocabOffset, y.data.data());
  return Status::ok();
}

Status runRmsNorm(KernelCall &call) {
  const Tensor &x = act(call, 0);
  const WeightTensor &w = weight(call, 1);
  LLMIR_RETURN_IF_ERROR(expectWeightRank(w, 1, "norm weight"));
  // A weight shorter than the row normalises each group of its length
  // (a per-head norm: Qwen3's q_norm / k_norm over head_dim).
  const int64_t group = w.shape[0];
  if (group <= 0 || x.rowSize() % group != 0)
    return Status::error("norm weight of " + std::to_string(group) +
                         " elements for rows of " + std::to_string(x.rowSize()) +
                         " (expected the row width or a divisor of it)");
  Tensor &y = *call.outputs[0];
  y.reshape(x.shape);
  // An f32 weight is read in place; a 16-bit one widened into reused
  // scratch (a decode token runs 61 norms: no allocation per call).
  const WeightView &view = weightView(call, 1);
  const float *normWeight = reinterpret_cast<const float *>(view.data);
  if (view.dtype != proto::F32) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(view.rows * view.cols));
    view.widenRows(0, view.rows, scratch.data());
    normWeight = scratch.data();
  }
  cpu::rmsNorm(x.data.data(), x.rows() * (x.rowSize() / group), group, normWeight,
               call.params->eps, y.data.data());
  return Status::ok();
}

Status runLinear(KernelCall &call) {
  const Tensor &x = act(call, 0);
  const WeightTensor &w = weight(call, 1);
  LLMIR_RETURN_IF_ERROR(expectWeightRank(w, 2, "linear weight"));
  const int64_t N = w.shape[0], K = w.shape[1];
  if (x.rowSize() != K)
    return Status::error("input " + model::formatShape(x.shape) +
                         " does not match weight [N, K] = " +
                         model::formatShape(w.shape) + " (K differs)");
  std::vector<float> bias;
  if (call.inputs.size() == 3) {
    const WeightTensor &b = weight(call, 2);
    if (b.shape.size() != 1 || b.shape[0] != N)
      return Status::error("bias has shape " + model::formatShape(b.shape) +
                           "; expected [" + std::to_string(N) + "]");
    bias = widened(weightView(call, 2));
  }
  Tensor &y = *call.outputs[0];
  y.reshape({x.rows(), N});
  cpu::linear(x.data.data(), x.rows(), weightView(call, 1),
              bias.empty() ? nullptr : bias.data(), y.data.data(), *call.pool,
              call.bf16Products);
  return Status::ok();
}

/// The step's rows this rank computes: all of them, or its slice under
/// token-split sequence parallelism (sp_size / sp_index attributes).
RowRange rowsOf(const KernelCall &call) {
  return sequenceParallelRows(call.step->numTokens(), call.params->spSize,
                              call.params->spIndex);
}

Status runRope(KernelCall &call) {
  const Tensor &x = act(call, 0);
  const int64_t headDim = call.params->headDim;
  const RowRange rows = rowsOf(call);
  LLMIR_RETURN_IF_ERROR(expectRows(x, rows.size(), "ROPE input"));
  if (x.rowSize() % headDim != 0)
    return Status::error("rows of " + std::to_string(x.rowSize()) +
                         " are not whole heads of " + std::to_string(headDim));
  Tensor &y = *call.outputs[0];
  y.reshape(x.shape); // rotated from x, not copied and rotated in place
  cpu::rope(x.data.data(), y.data.data(), x.rows(), x.rowSize() / headDim, headDim,
            call.step->positions.data() + rows.begin,
            call.params->ropeInverseFrequencies.data());
  return Status::ok();
}

Status runAttention(KernelCall &call) {
  const cpu::AttentionParams &params = call.params->attention;
  const Tensor &q = act(call, 0), &k = act(call, 1), &v = act(call, 2);
  const int64_t T = call.step->numTokens();
  const int64_t qWidth = params.numHeads * params.headDim;
  const int64_t kvWidth = params.numKvHeads * params.headDim;
  LLMIR_RETURN_IF_ERROR(expectRows(q, T, "query"));
  LLMIR_RETURN_IF_ERROR(expectRows(k, T, "key"));
  LLMIR_RETURN_IF_ERROR(expectRows(v, T, "value"));
  if (q.rowSize() != qWidth || k.rowSize() != kvWidth ||
      v.rowSize() != kvWidth)
    return Status::error("q/k/v rows of " + std::to_string(q.rowSize()) + "/" +
                         std::to_string(k.rowSize()) + "/" +
                         std::to_string(v.rowSize()) + "; expected " +
                         std::to_string(qWidth) + "/" +
                         std::to_string(kvWidth) + "/" +
                         std::to_string(kvWidth));
  Tensor &o = *call.outputs[0];
  o.reshape({T, qWidth});
  cpu::pagedAttention(q.data.data(), k.data.data(), v.data.data(), *call.step,
                      params, *call.kvCache, o.data.data(), *call.pool);
  return Status::ok();
}

template <void (*Fn)(const float *, const float *, float *, int64_t)>
Status runBinary(KernelCall &call) {
  const Tensor &a = act(call, 0), &b = act(call, 1);
  if (a.shape != b.shape)
    return Status::error("operand shapes differ: " + model::formatShape(a.shape) +
                         " and " + model::formatShape(b.shape));
  Tensor &y = *call.outputs[0];
  y.reshape(a.shape);
  Fn(a.data.data(), b.data.data(), y.data.data(), a.numel());
  return Status::ok();
}

Status runAllReduce(KernelCall &call) {
  Tensor &y = *call.outputs[0];
  y = act(call, 0);
  if (y.data.empty()) // an empty token-split slice: so is every peer's
    return Status::ok();
  return call.comm->allReduceSum(y.data.data(), y.data.size(), call.params->group);
}

Status runAllGather(KernelCall &call) {
  const Tensor &x = act(call, 0);
  const uint32_t group = call.params->group;
  const int64_t groupSize = call.params->groupSize;
  const int64_t T = x.rows(), width = x.rowSize();
  std::vector<float> gathered(static_cast<size_t>(groupSize * T * width));
  LLMIR_RETURN_IF_ERROR(call.comm->allGather(x.data.data(), x.data.size(),
                                             gathered.data(), group));
  // Rank-major [G][T][N_local] -> [T][G * N_local - padding]: the trailing
  // `padding` columns (vocabulary padding of the last ranks) are dropped.
  const int64_t padding = call.params->gatherPadding;
  const int64_t outWidth = width * groupSize - padding;
  if (padding < 0 || outWidth < 0)
    return Status::error("padding " + std::to_string(padding) + " outside the " +
                         std::to_string(width * groupSize) + " gathered columns");
  Tensor &y = *call.outputs[0];
  y.reshape({T, outWidth});
  for (int64_t r = 0; r < groupSize; ++r) {
    const int64_t columns = std::clamp<int64_t>(outWidth - r * width, 0, width);
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(gathered.data() + (r * T + t) * width, columns,
                  y.data.data() + t * outWidth + r * width);
  }
  return Status::ok();
}

Status runSend(KernelCall &call) {
  const Tensor &x = act(call, 0);
  return call.comm->send(x.data.data(), x.data.size(),
                         call.params->peer);
}

Status runRecv(KernelCall &call) {
  std::vector<int64_t> shape = *call.outputSlotShapes[0];
  if (!shape.empty() && shape[0] == -1)
    shape[0] = rowsOf(call).size();
  if (shape.empty() || std::any_of(shape.begin(), shape.end(),
                                   [](int64_t d) { return d <= 0; }))
    return Status::error("RECV output slot shape " + model::formatShape(shape) +
                         " does not say how much to receive");
  Tensor &y = *call.outputs[0];
  y.reshape(std::move(shape));
  return call.comm->recv(y.data.data(), y.data.size(),
                         call.params->peer);
}

Status runSelectRows(KernelCall &call) {
  const Tensor &x = act(call, 0);
  LLMIR_RETURN_IF_ERROR(
      expectRows(x, call.step->numTokens(), "SELECT_ROWS input"));
  const std::vector<int32_t> rows = selectedRows(*call.step);
  const int64_t width = x.rowSize();
  Tensor &y = *call.outputs[0];
  std::vector<int64_t> shape = x.shape;
  shape[0] = static_cast<int64_t>(rows.size());
  y.reshape(std::move(shape));
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(x.data.data() + rows[i] * width, width,
                y.data.data() + static_cast<int64_t>(i) * width);
  return Status::ok();
}

} // namespace

KernelRegistry cpuKernelRegistry() {
  KernelRegistry registry;
  registry.add(proto::EMBEDDING, runEmbedding);
  registry.add(proto::RMS_NORM, runRmsNorm);
  registry.add(proto::LINEAR, runLinear);
  registry.add(proto::ROPE, runRope);
  registry.add(proto::ATTENTION, runAttention);
  registry.add(proto::SWIGLU, runBinary<cpu::swiglu>);
  registry.add(proto::ADD, runBinary<cpu::add>);
  registry.add(proto::ALL_REDUCE, runAllReduce);
  registry.add(proto::ALL_GATHER, runAllGather);
  registry.add(proto::SEND, runSend);
  registry.add(proto::RECV, runRecv);
  registry.add(proto::SELECT_ROWS, runSelectRows);
  registry.add(proto::ATTENTION_PARTIAL, runAttentionPartial);
  registry.add(proto::ATTENTION_MERGE, runAttentionMerge);
  registry.add(proto::SP_SCATTER_ROWS, runSpScatterRows);
  registry.add(proto::ALL_GATHER_ROWS, runAllGatherRows);
  registry.add(proto::SP_ATTENTION, runSpAttention);
  return registry;
}

} // namespace llmir::engine
