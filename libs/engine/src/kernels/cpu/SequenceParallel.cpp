// Sequence-parallel attention: sp ranks share a replica's KV cache along the
// sequence (logical block b of a sequence belongs to rank b % sp). Each rank
// writes k/v into its own blocks and attends over them only, returning the
// partial output normalised over its keys with the log-sum-exp (lse) of its
// scaled scores; after an all-gather, the merge is exact:
//   o = sum_r exp(lse_r - lse) o_r,  lse = log sum_r exp(lse_r).
// Every rank gets the same block table and touches only the blocks it owns.
#include "SequenceParallel.h"

#include "Simd.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/model/Safetensors.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace llmir::engine {
namespace cpu {
namespace {

constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();

/// Attention of token t, query head h over the visible positions of this
/// rank's blocks; writes the normalised output and returns the lse.
float attendOwnedPositions(const float *q, int64_t t, int64_t h,
                           const StepInput &step, const AttentionParams &p,
                           const KvCache &cache, float *o,
                           std::vector<float> &scores) {
  const simd::Kernels &k = simd::kernels();
  const int64_t D = p.headDim, B = cache.shape().blockSize;
  const int64_t kvHead = kvHeadOf(p, h);
  const auto &table = step.blockTables[static_cast<size_t>(step.tokenSeq[t])];
  const int64_t length = static_cast<int64_t>(step.positions[t]) + 1;
  const int64_t first = firstVisiblePosition(length - 1, p.slidingWindow);
  const float *query = q + (t * p.numHeads + h) * D;
  // Visible positions of the owned blocks, in order.
  auto forEachOwned = [&](auto &&fn) {
    for (int64_t b = p.kvShard; b * B < length; b += p.kvShards)
      for (int64_t j = std::max(first, b * B); j < std::min(length, (b + 1) * B); ++j)
        fn(table[static_cast<size_t>(b)], j % B);
  };
  // A bf16 cache's rows are widened into `row` first.
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(D));
  const size_t headOffset = static_cast<size_t>(kvHead * D) * cache.elementSize();
  auto asF32 = [&](const void *data) {
    data = static_cast<const char *>(data) + headOffset;
    if (cache.element() == KvElement::F32)
      return static_cast<const float *>(data);
    k.widen[simd::kBf16](data, row.data(), D);
    return static_cast<const float *>(row.data());
  };
  scores.clear();
  forEachOwned([&](int32_t block, int64_t slot) {
    scores.push_back(k.dot(query, asF32(cache.keyData(p.layer, block, slot)), D));
  });
  std::fill(o, o + D, 0.0f);
  if (scores.empty())
    return kNegativeInfinity;
  const auto top = std::max_element(scores.begin(), scores.end());
  const float max = *top * p.scale;
  const size_t topIndex = static_cast<size_t>(top - scores.begin());
  // The same softmax as ATTENTION; its largest weight is 1 / sum of
  // exp(s * scale - max), which gives the log-sum-exp.
  k.softmax(scores.data(), static_cast<int64_t>(scores.size()), p.scale);
  size_t i = 0;
  forEachOwned([&](int32_t block, int64_t slot) {
    k.axpy(scores[i++], asF32(cache.valueData(p.layer, block, slot)), o, D);
  });
  return max - std::log(scores[topIndex]);
}

} // namespace

void partialAttention(const float *q, const float *k, const float *v,
                      const StepInput &step, const AttentionParams &params,
                      KvCache &cache, float *out, ThreadPool &pool) {
  storeKeysAndValues(k, v, params.numKvHeads * params.headDim, step, params, cache);
  const int64_t Hq = params.numHeads, D = params.headDim;
  const int64_t row = Hq * D + Hq;
  const size_t items = static_cast<size_t>(step.numTokens() * Hq);
  pool.parallelFor(items, 1, [&](size_t b, size_t e) {
    thread_local std::vector<float> scores;
    for (size_t i = b; i < e; ++i) {
      const int64_t t = static_cast<int64_t>(i) / Hq, h = static_cast<int64_t>(i) % Hq;
      float *partial = out + t * row;
      partial[Hq * D + h] = attendOwnedPositions(q, t, h, step, params, cache,
                                                 partial + h * D, scores);
    }
  });
}

void mergeAttention(const float *gathered, int64_t T, int64_t shards,
                    int64_t numHeads, int64_t headDim, float *out) {
  const int64_t row = numHeads * headDim + numHeads;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < numHeads; ++h) {
      const float *shard0 = gathered + t * shards * row;
      float lse = kNegativeInfinity;
      for (int64_t r = 0; r < shards; ++r)
        lse = std::max(lse, shard0[r * row + numHeads * headDim + h]);
      float *o = out + (t * numHeads + h) * headDim;
      std::fill(o, o + headDim, 0.0f);
      if (lse == kNegativeInfinity)
        continue; // no shard saw a key (cannot happen causally: block 0)
      float total = 0;
      for (int64_t r = 0; r < shards; ++r)
        total += std::exp(shard0[r * row + numHeads * headDim + h] - lse);
      for (int64_t r = 0; r < shards; ++r) {
        const float weight =
            std::exp(shard0[r * row + numHeads * headDim + h] - lse) / total;
        const float *partial = shard0 + r * row + h * headDim;
        for (int64_t d = 0; d < headDim; ++d)
          o[d] += weight * partial[d];
      }
    }
}

} // namespace cpu

Status expectMatrix(const Tensor &x, int64_t rows, int64_t width, const char *what) {
  if (x.shape.size() == 2 && x.shape[0] == rows && x.shape[1] == width)
    return Status::ok();
  return Status::error(std::string(what) + " has shape " + model::formatShape(x.shape) +
                       "; expected " + model::formatShape({rows, width}));
}

Status runAttentionPartial(KernelCall &call) {
  const cpu::AttentionParams &params = call.params->attention;
  const Tensor &q = *call.inputs[0].activation, &k = *call.inputs[1].activation,
               &v = *call.inputs[2].activation;
  const int64_t T = call.step->numTokens();
  const int64_t kvWidth = params.numKvHeads * params.headDim;
  LLMIR_RETURN_IF_ERROR(expectMatrix(q, T, params.numHeads * params.headDim, "query"));
  LLMIR_RETURN_IF_ERROR(expectMatrix(k, T, kvWidth, "key"));
  LLMIR_RETURN_IF_ERROR(expectMatrix(v, T, kvWidth, "value"));
  Tensor &out = *call.outputs[0];
  out.reshape({T, params.numHeads * params.headDim + params.numHeads});
  cpu::partialAttention(q.data.data(), k.data.data(), v.data.data(), *call.step,
                        params, *call.kvCache, out.data.data(), *call.pool);
  return Status::ok();
}

Status runAttentionMerge(KernelCall &call) {
  const int64_t heads = call.params->attention.numHeads;
  const int64_t headDim = call.params->attention.headDim;
  const int64_t shards = call.params->spSize;
  const Tensor &gathered = *call.inputs[0].activation;
  const int64_t T = call.step->numTokens();
  LLMIR_RETURN_IF_ERROR(
      expectMatrix(gathered, T, shards * (heads * headDim + heads), "gathered partials"));
  Tensor &out = *call.outputs[0];
  out.reshape({T, heads * headDim});
  cpu::mergeAttention(gathered.data.data(), T, shards, heads, headDim, out.data.data());
  return Status::ok();
}

} // namespace llmir::engine
