// The CPU math kernels, on raw row-major buffers. All arithmetic is f32;
// weights are widened from their stored dtype (except linear's opt-in bf16
// products). Callers guarantee sizes (the
// executor validates programs and steps before calling these).
#pragma once

#include "llmir/engine/Tensor.h"

#include <cstdint>
#include <span>
#include <vector>

namespace llmir::engine {

class KvCache;
class ThreadPool;
struct RowRange;
struct StepInput;

namespace cpu {

/// y[T, N] = x[T, K] * w[N, K]^T + bias[N] (bias may be null).
/// bf16Products (the medium matmul precision): with bf16 weights, x is
/// rounded to bf16 (nearest even) and the products summed in f32, as
/// llama.cpp and PyTorch compute a bf16 model (AVX512-BF16 `vdpbf16ps`
/// where the CPU has it); other weights are unaffected.
void linear(const float *x, int64_t T, const WeightView &w, const float *bias,
            float *y, ThreadPool &pool, bool bf16Products = false);

/// One output of linearGroup: y[T, w.rows] = x w^T + bias (bias may be null).
struct LinearOutput {
  WeightView w;
  const float *bias = nullptr;
  float *y = nullptr;
};
/// linear for several weights of one input (Q, K, V; gate, up), each of
/// x's K columns and one dtype: the decode GEMVs split all their rows over
/// the pool at once, and x is rounded (bf16Products) once.
/// `next`: the weights of the linear group that runs next, if known (a
/// decode step's next GEMV): once a thread has no rows left here, it
/// prefetches the start of its rows there while it waits
/// (ThreadPool::parallelFor's read-ahead).
void linearGroup(const float *x, int64_t T, std::span<const LinearOutput> outputs,
                 ThreadPool &pool, bool bf16Products = false,
                 std::span<const WeightView> next = {});

/// y = x * rsqrt(mean(x^2) + eps) * weight, per row of H. A per-head norm
/// (weight of G elements, G dividing the row) passes T * (row / G) rows of G.
void rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
             float eps, float *y);

/// RoPE frequency scaling (ROPE's rope_* attributes, shard_program.proto).
struct RopeScaling {
  enum Type : int64_t { None = 0, Linear = 1, Llama3 = 2 };
  int64_t type = None;
  float factor = 1.0f;
  float lowFreqFactor = 0.0f, highFreqFactor = 0.0f;
  int64_t originalMaxPosition = 0;
};

/// The headDim / 2 inverse frequencies, f32, as transformers computes them:
/// theta^(-2i/headDim), then the scaling (linear: / factor; llama3: Llama
/// 3.1's wavelength-dependent blend). A device backend uploads these.
std::vector<float> ropeInverseFrequencies(int64_t headDim, float theta,
                                          const RopeScaling &scaling);

/// In place HF rotate_half RoPE of x[T, numHeads * headDim]; token t is at
/// positions[t]; inverseFrequencies has headDim / 2 entries.
void rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, const float *inverseFrequencies);
/// The same from x into y (y may be x).
void rope(const float *x, float *y, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, const float *inverseFrequencies);
/// The same with unscaled ("default") frequencies of `theta`.
void rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, float theta);

/// y = silu(gate) * up.
void swiglu(const float *gate, const float *up, float *y, int64_t n);
/// y = a + b.
void add(const float *a, const float *b, float *y, int64_t n);

/// y[T, H] = rows of table[V_local, H] for ids - vocabOffset; ids outside
/// the local vocabulary give zero rows.
void embedding(const int32_t *ids, int64_t T, const WeightView &table,
               int64_t vocabOffset, float *y);

struct AttentionParams {
  int64_t layer = 0;
  int64_t numHeads = 0;
  int64_t numKvHeads = 0;
  int64_t headDim = 0;
  float scale = 1.0f;
  /// Sliding window (0: none): a token at position p attends to positions
  /// j with p - slidingWindow < j <= p (Mistral, Qwen2 sliding layers).
  int64_t slidingWindow = 0;
  /// Uneven head split (kvGroup > 0): local query head h is global head
  /// headOffset + h and uses global KV head (headOffset + h) / kvGroup, local
  /// KV head that minus headOffset / kvGroup. 0: h / (numHeads / numKvHeads).
  int64_t headOffset = 0;
  int64_t kvGroup = 0;
  /// Sequence parallelism: this rank holds logical block b of a sequence
  /// when b % kvShards == kvShard (1 and 0: every block).
  int64_t kvShards = 1;
  int64_t kvShard = 0;
};

/// The local KV head of local query head h (AttentionParams::kvGroup).
inline int64_t kvHeadOf(const AttentionParams &p, int64_t h) {
  if (p.kvGroup > 0)
    return (p.headOffset + h) / p.kvGroup - p.headOffset / p.kvGroup;
  return h / (p.numHeads / p.numKvHeads);
}

/// The first position a token at `position` sees: 0, or with a sliding
/// window W, max(0, position - W + 1).
int64_t firstVisiblePosition(int64_t position, int64_t slidingWindow);

/// Writes this step's k, v (row t of each at t * rowStride, Hkv * D floats)
/// into the cache at the positions of the blocks this rank holds (all of
/// them unless params.kvShards > 1).
void storeKeysAndValues(const float *k, const float *v, int64_t rowStride,
                        const StepInput &step, const AttentionParams &params,
                        KvCache &cache);

/// Causal (grouped-query) attention of the step's rows `rows` over each
/// token's sequence in the cache (positions 0..p through its block table),
/// whose k, v are already stored: q and out [rows.size(), Hq * D].
void attendCached(const float *q, const StepInput &step, RowRange rows,
                  const AttentionParams &params, const KvCache &cache,
                  float *out, ThreadPool &pool);

/// Writes this step's k, v [T, Hkv * D] into the cache at each token's
/// position, then causal (grouped-query) attention of q [T, Hq * D] over each
/// token's sequence through its block table; out [T, Hq * D]. The step must
/// be validated against the cache.
void pagedAttention(const float *q, const float *k, const float *v,
                    const StepInput &step, const AttentionParams &params,
                    KvCache &cache, float *out, ThreadPool &pool);

/// Sequence-parallel partial attention: stores k, v of this rank's blocks,
/// then for each (token, query head) attends causally over the visible
/// positions of this rank's blocks only. out [T, Hq * D + Hq]: per token the
/// normalised partial output of every head, then the log-sum-exp of the
/// scaled scores of every head (-inf and a zero output when the rank holds
/// no visible position).
void partialAttention(const float *q, const float *k, const float *v,
                      const StepInput &step, const AttentionParams &params,
                      KvCache &cache, float *out, ThreadPool &pool);

/// Token-split sequence-parallel attention: stores k, v of every row of the
/// step (kv [T, 2 * Hkv * D], k then v per row) in the cache, then attends
/// the rows `rows` of the step: q and out [rows.size(), Hq * D].
void sliceAttention(const float *q, const float *kv, const StepInput &step,
                    RowRange rows, const AttentionParams &params,
                    KvCache &cache, float *out, ThreadPool &pool);

/// Exact merge of `shards` partials: gathered [T, shards * (H * D + H)]
/// (each shard's row as partialAttention writes it) -> out [T, H * D].
void mergeAttention(const float *gathered, int64_t T, int64_t shards,
                    int64_t numHeads, int64_t headDim, float *out);

} // namespace cpu
} // namespace llmir::engine
