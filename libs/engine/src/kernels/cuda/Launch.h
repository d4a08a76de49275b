// Kernel launchers of the .cu files, on plain types only so that nvcc never
// sees protobuf or the engine's headers. Each returns the launch's
// cudaError_t as an int (0: queued).
#pragma once

#include <cstdint>

namespace llmir::engine::cuda::detail {

enum class Storage { F32, F16, BF16 };

int widen(const void *src, Storage storage, int64_t n, float *dst);
/// y[T, N] = x[T, K] * w[N, K]^T for 16-bit w, read in its stored dtype with
/// f32 accumulation (no widened copy of the weights).
int linear16(const float *x, int64_t T, const void *w, Storage storage,
             int64_t N, int64_t K, float *y);
int addBias(float *y, const float *bias, int64_t T, int64_t N);
int rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
            float eps, float *y);
int rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
         const int32_t *positions, float theta);
int ropeWithFrequencies(float *x, int64_t T, int64_t numHeads, int64_t headDim,
                        const int32_t *positions, const float *inverseFrequencies);
int swiglu(const float *gate, const float *up, float *y, int64_t n);
int add(const float *a, const float *b, float *y, int64_t n);
int embedding(const int32_t *ids, int64_t T, const void *table, Storage storage,
              int64_t rows, int64_t cols, int64_t vocabOffset, float *y);

struct AttentionGeometry {
  int64_t numTokens, numHeads, numKvHeads, headDim;
  float scale;
  int64_t kvShards, kvShard;
  int64_t blockSize;
  const int32_t *positions, *tokenSeq, *blockTables;
  int64_t blockTableStride;
  /// This layer's [numBlocks][blockSize][Hkv][D], f32 or (bf16Cache)
  /// bf16 elements.
  void *keys, *values;
  bool bf16Cache;
  /// Floats between consecutive rows of the step's k and v (Hkv * D, or
  /// 2 * Hkv * D for the gathered [k | v] rows of SP_ATTENTION).
  int64_t kvRowStride;
  /// Query rows [firstQuery, firstQuery + numQueries) of the step are
  /// attended; q and out hold only those rows.
  int64_t firstQuery, numQueries;
  /// ATTENTION_PARTIAL: attend only the positions of this rank's blocks
  /// (kvShards / kvShard) and write, per row, every head's normalised
  /// output then every head's log-sum-exp (-inf and zeros when none).
  bool partial;
  /// Sliding window W (0: none): token at p sees p - W < j <= p.
  int64_t slidingWindow;
  /// Uneven head split (kvGroup > 0): query head h uses KV head
  /// (headOffset + h) / kvGroup - headOffset / kvGroup (cpu::kvHeadOf).
  int64_t kvGroup, headOffset;
};

constexpr int64_t kMaxHeadDim = 256;

int storeKeysAndValues(const float *k, const float *v,
                       const AttentionGeometry &g);
int attend(const float *q, const AttentionGeometry &g, float *out);
/// ATTENTION_MERGE: gathered [T, shards * (H * D + H)] -> out [T, H * D].
int mergeAttention(const float *gathered, int64_t T, int64_t shards,
                   int64_t numHeads, int64_t headDim, float *out);

} // namespace llmir::engine::cuda::detail
