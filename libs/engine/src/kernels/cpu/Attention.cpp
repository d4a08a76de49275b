// ATTENTION over the paged KV cache: the step's k/v are stored first, then
// each (token, query head) attends causally to positions 0..p of its
// sequence, reading keys and values through the block table. Softmax is the
// numerically stable form (max subtracted) in f32.
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace llmir::engine::cpu {

void pagedAttention(const float *q, const float *k, const float *v,
                    const StepInput &step, const AttentionParams &params,
                    KvCache &cache, float *out, ThreadPool &pool) {
  const int64_t T = step.numTokens();
  const int64_t Hq = params.numHeads, Hkv = params.numKvHeads;
  const int64_t D = params.headDim;
  const int64_t blockSize = cache.shape().blockSize;
  const int64_t layer = params.layer;
  const size_t kvRowBytes = static_cast<size_t>(Hkv * D) * sizeof(float);

  for (int64_t t = 0; t < T; ++t) {
    const auto &table = step.blockTables[static_cast<size_t>(step.tokenSeq[t])];
    const int64_t pos = step.positions[t];
    const int32_t block = table[static_cast<size_t>(pos / blockSize)];
    std::memcpy(cache.keyRow(layer, block, pos % blockSize), k + t * Hkv * D,
                kvRowBytes);
    std::memcpy(cache.valueRow(layer, block, pos % blockSize), v + t * Hkv * D,
                kvRowBytes);
  }

  const int64_t queriesPerKvHead = Hq / Hkv;
  pool.parallelFor(static_cast<size_t>(T * Hq), 1, [&](size_t b, size_t e) {
    std::vector<float> scores;
    for (size_t index = b; index < e; ++index) {
      const int64_t t = static_cast<int64_t>(index) / Hq;
      const int64_t h = static_cast<int64_t>(index) % Hq;
      const int64_t kvHead = h / queriesPerKvHead;
      const float *query = q + (t * Hq + h) * D;
      const auto &table =
          step.blockTables[static_cast<size_t>(step.tokenSeq[t])];
      const int64_t length = static_cast<int64_t>(step.positions[t]) + 1;

      scores.resize(static_cast<size_t>(length));
      float maxScore = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < length; ++j) {
        const float *key =
            cache.keyRow(layer, table[static_cast<size_t>(j / blockSize)],
                         j % blockSize) +
            kvHead * D;
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d)
          dot += query[d] * key[d];
        scores[static_cast<size_t>(j)] = dot * params.scale;
        maxScore = std::max(maxScore, scores[static_cast<size_t>(j)]);
      }
      float total = 0.0f;
      for (float &s : scores) {
        s = std::exp(s - maxScore);
        total += s;
      }

      float *o = out + (t * Hq + h) * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t j = 0; j < length; ++j) {
        const float *value =
            cache.valueRow(layer, table[static_cast<size_t>(j / blockSize)],
                           j % blockSize) +
            kvHead * D;
        const float weight = scores[static_cast<size_t>(j)] / total;
        for (int64_t d = 0; d < D; ++d)
          o[d] += weight * value[d];
      }
    }
  });
}

} // namespace llmir::engine::cpu
