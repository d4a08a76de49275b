// Kernel launchers of the .cu files, on plain types only so that nvcc never
// sees protobuf or the engine's headers. Each returns the launch's
// cudaError_t as an int (0: queued).
#pragma once

#include <cstdint>

namespace llmir::engine::cuda::detail {

enum class Storage { F32, F16, BF16 };

int widen(const void *src, Storage storage, int64_t n, float *dst);
int addBias(float *y, const float *bias, int64_t T, int64_t N);
int rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
            float eps, float *y);
int rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
         const int32_t *positions, float theta);
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
  float *keys, *values; // this layer's [numBlocks][blockSize][Hkv][D]
};

constexpr int64_t kMaxHeadDim = 256;

int storeKeysAndValues(const float *k, const float *v,
                       const AttentionGeometry &g);
int attend(const float *q, const AttentionGeometry &g, float *out);

} // namespace llmir::engine::cuda::detail
