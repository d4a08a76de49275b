// The CUDA math kernels: the entry points of CpuKernels.h on raw DEVICE
// pointers, with the same math (f32 arithmetic, weights widened from their
// stored dtype, HF rotate_half RoPE, paged causal GQA attention over a cache
// laid out as KvCache). Work is queued on the current device's default
// stream; a Status reports a rejected argument or a failed launch, and
// Context::synchronize() the errors of the work itself. Callers guarantee
// sizes, as for the CPU kernels.
#pragma once

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <memory>

namespace llmir::engine::cuda {

/// The cuBLAS handle (f32 weights go through SGEMM).
class Context {
public:
  /// Fails when no CUDA device is usable or cuBLAS cannot start.
  static Result<Context> create();
  Context(Context &&) noexcept;
  Context &operator=(Context &&) noexcept;
  ~Context();

  /// Waits for all queued work; returns the first error it raised.
  Status synchronize();

  struct State;
  State &state() { return *state_; }

private:
  explicit Context(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

/// y[T, N] = x[T, K] * w[N, K]^T + bias[N] (bias may be null): cuBLAS SGEMM
/// for f32 weights; bf16/f16 weights read in place with f32 accumulation.
Status linear(Context &context, const float *x, int64_t T, const WeightView &w,
              const float *bias, float *y);

/// y = x * rsqrt(mean(x^2) + eps) * weight, per row of H.
Status rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
               float eps, float *y);

/// In place HF rotate_half RoPE of x[T, numHeads * headDim]; token t is at
/// positions[t] (a device array).
Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, float theta);
/// The same with the headDim / 2 inverse frequencies given (a device array;
/// cpu::ropeInverseFrequencies computes them, scaled or not).
Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies);

/// y = silu(gate) * up.
Status swiglu(const float *gate, const float *up, float *y, int64_t n);
/// y = a + b.
Status add(const float *a, const float *b, float *y, int64_t n);

/// y[T, H] = rows of table[V_local, H] for ids - vocabOffset; ids outside
/// the local vocabulary give zero rows.
Status embedding(const int32_t *ids, int64_t T, const WeightView &table,
                 int64_t vocabOffset, float *y);

/// A paged KV cache in device memory, laid out as KvCache: per layer, for K
/// and for V, [numBlocks][blockSize][numKvHeads][headDim] f32, or bf16 when
/// `bf16` (stored rounded to nearest even, read back widened).
struct DeviceKvCache {
  KvCacheShape shape;
  void *keys = nullptr;
  void *values = nullptr;
  bool bf16 = false;
};

/// A step's per-token tables in device memory (see StepInput).
struct DeviceStep {
  int64_t numTokens = 0;
  const int32_t *positions = nullptr; // [numTokens]
  const int32_t *tokenSeq = nullptr;  // [numTokens]
  /// [numSequences][blockTableStride]: sequence s's block table is row s.
  const int32_t *blockTables = nullptr;
  int64_t blockTableStride = 0;
};

/// Writes this step's k, v [T, Hkv * D] into the cache (the blocks of this
/// rank when params.kvShards > 1), then causal grouped-query attention of
/// q [T, Hq * D] over each token's positions 0..p; out [T, Hq * D]. The step
/// must be valid for the cache. headDim must be at most 256.
Status pagedAttention(const float *q, const float *k, const float *v,
                      const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out);

/// ATTENTION_PARTIAL: stores k, v in this rank's blocks (params.kvShards /
/// kvShard), then attends each token over the visible positions of those
/// blocks; out [T, Hq * D + Hq] as cpu::partialAttention writes it.
Status partialAttention(const float *q, const float *k, const float *v,
                        const DeviceStep &step,
                        const cpu::AttentionParams &params,
                        DeviceKvCache &cache, float *out);

/// SP_ATTENTION: stores every row of kv [T, 2 * Hkv * D] (k then v), then
/// attends the step's rows [firstRow, firstRow + numRows): q and out hold
/// only those rows.
Status sliceAttention(const float *q, const float *kv, const DeviceStep &step,
                      int64_t firstRow, int64_t numRows,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out);

/// ATTENTION_MERGE, as cpu::mergeAttention.
Status mergeAttention(const float *gathered, int64_t T, int64_t shards,
                      int64_t numHeads, int64_t headDim, float *out);

} // namespace llmir::engine::cuda
