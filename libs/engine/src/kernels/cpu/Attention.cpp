// ATTENTION over the paged KV cache: the step's k/v are stored first, then
// each (token, query head) attends causally to positions 0..p of its
// sequence (with a sliding window W: positions p - W < j <= p, as
// transformers masks them). Softmax is the numerically stable form (max
// subtracted), f32. A bf16 cache rounds k and v when they are stored and
// widens them when read; the arithmetic is f32 either way.
//
// Two schedules, same math:
// - a run of >= 4 tokens of one sequence (prefill): its keys are gathered
//   once per KV head, transposed, and each block of 4 queries computes its
//   scores and weighted values with register-blocked kernels (no horizontal
//   sums, every key and value load shared by 4 queries);
// - fewer tokens (decode): each token reads its keys and values through the
//   block table in one pass for all its query heads, in groups of up to 4
//   that share a KV head (grouped-query attention), scores, softmax and
//   weighted values together (online softmax, simd::Kernels::decodeAttention;
//   block by block for every group, or group by group over every block,
//   whichever simd::decodeAttentionOrder says reads faster here).
#include "Simd.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace llmir::engine::cpu {
namespace {

constexpr int64_t kQueryBlock = 4; // rows of simd::Kernels::scores4

struct Geometry {
  const StepInput &step;
  const AttentionParams &params;
  const KvCache &cache;
  int64_t blockSize;
  int64_t firstRow; // step row of q's and out's row 0
  /// The cache's element as a simd::WeightKind (kF32 or kBf16).
  int kind() const {
    return cache.element() == KvElement::BF16 ? simd::kBf16 : simd::kF32;
  }
  const void *key(int32_t seq, int64_t position, int64_t kvHead) const {
    const auto &table = step.blockTables[static_cast<size_t>(seq)];
    return static_cast<const char *>(cache.keyData(
               params.layer, table[static_cast<size_t>(position / blockSize)],
               position % blockSize)) +
           kvHead * params.headDim * cache.elementSize();
  }
  const void *value(int32_t seq, int64_t position, int64_t kvHead) const {
    const auto &table = step.blockTables[static_cast<size_t>(seq)];
    return static_cast<const char *>(cache.valueData(
               params.layer, table[static_cast<size_t>(position / blockSize)],
               position % blockSize)) +
           kvHead * params.headDim * cache.elementSize();
  }
  /// A row of D cache elements as f32: the row itself, or widened into
  /// `buffer` (D floats) for a bf16 cache.
  const float *asF32(const void *row, float *buffer) const {
    if (cache.element() == KvElement::F32)
      return static_cast<const float *>(row);
    simd::kernels().widen[simd::kBf16](row, buffer, params.headDim);
    return buffer;
  }
};

} // namespace

int64_t firstVisiblePosition(int64_t position, int64_t slidingWindow) {
  return slidingWindow > 0 ? std::max<int64_t>(0, position - slidingWindow + 1) : 0;
}

namespace {

// Tokens [begin, end) of the step, all of sequence `seq`.
struct Run {
  int64_t begin, end;
  int32_t seq;
  int64_t keys;   // max position + 1: keys every token of the run may see
  int64_t padded; // keys rounded up to 32 (scores4 works in 32 columns)
  size_t gathered; // offset of its [kvHead] gathered K^T and V in scratch
};

void attendOne(const Geometry &g, const float *q, int64_t t, int64_t h,
               float *out, std::vector<float> &scores) {
  const simd::Kernels &k = simd::kernels();
  const int64_t D = g.params.headDim;
  const int64_t kvHead = kvHeadOf(g.params, h);
  const int32_t seq = g.step.tokenSeq[t];
  const int64_t length = static_cast<int64_t>(g.step.positions[t]) + 1;
  const int64_t first = firstVisiblePosition(length - 1, g.params.slidingWindow);
  const float *query = q + ((t - g.firstRow) * g.params.numHeads + h) * D;
  scores.resize(static_cast<size_t>(length - first + D));
  float *row = scores.data() + (length - first); // a widened bf16 row
  for (int64_t j = first; j < length; ++j)
    scores[static_cast<size_t>(j - first)] =
        k.dot(query, g.asF32(g.key(seq, j, kvHead), row), D);
  k.softmax(scores.data(), length - first, g.params.scale);
  float *o = out + ((t - g.firstRow) * g.params.numHeads + h) * D;
  std::fill(o, o + D, 0.0f);
  for (int64_t j = first; j < length; ++j)
    k.axpy(scores[static_cast<size_t>(j - first)],
           g.asF32(g.value(seq, j, kvHead), row), o, D);
}

// Part `part` of `parts` of the visible positions [first, length), in 16s.
std::pair<int64_t, int64_t> partOf(int64_t first, int64_t length, int64_t part,
                                   int64_t parts) {
  const int64_t chunk = ((length - first + parts - 1) / parts + 15) / 16 * 16;
  const int64_t begin = std::min(length, first + part * chunk);
  return {begin, std::min(length, begin + chunk)};
}

// The query heads of a decode token in groups of up to 4 that share one KV
// head (grouped-query attention; more than 4 heads per KV head split into
// several groups), as the decode kernels take them.
struct DecodeGroups {
  std::vector<int64_t> heads;   // [groups][kQueryBlock] query heads
  std::vector<int64_t> counts;  // heads in each group (1..4)
  std::vector<int64_t> offsets; // first element of its KV head in a cache row
  int64_t size() const { return static_cast<int64_t>(counts.size()); }
};

DecodeGroups decodeGroupsOf(const AttentionParams &params) {
  DecodeGroups groups;
  for (int64_t kv = 0; kv < params.numKvHeads; ++kv) {
    int64_t count = 0;
    for (int64_t h = 0; h < params.numHeads; ++h) {
      if (kvHeadOf(params, h) != kv)
        continue;
      if (count == 0) {
        groups.heads.resize(groups.heads.size() + kQueryBlock, 0);
        groups.offsets.push_back(kv * params.headDim);
        groups.counts.push_back(0);
      }
      groups.heads[groups.heads.size() - kQueryBlock + static_cast<size_t>(count)] = h;
      groups.counts.back() = ++count;
      if (count == kQueryBlock)
        count = 0;
    }
  }
  return groups;
}

// Every query head of token t, in one pass over its cache rows for all KV
// heads (simd::Kernels::decodeAttention). With parts > 1 only part `part` of the positions,
// written to partial (per group and head D outputs, normalised over the
// part, then its log-sum-exp of the scaled scores; [group][kQueryBlock]
// rows of D + 1) for mergeParts.
void attendToken(const Geometry &g, const float *q, int64_t t, const DecodeGroups &groups,
                 float *out, int64_t part = 0, int64_t parts = 1,
                 float *partial = nullptr) {
  const simd::Kernels &k = simd::kernels();
  const int64_t D = g.params.headDim, Hq = g.params.numHeads;
  const int64_t G = groups.size();
  const int32_t seq = g.step.tokenSeq[t];
  int64_t length = static_cast<int64_t>(g.step.positions[t]) + 1;
  int64_t first = firstVisiblePosition(length - 1, g.params.slidingWindow);
  if (parts > 1) {
    std::tie(first, length) = partOf(first, length, part, parts);
    if (first >= length) { // nothing visible in this part
      for (int64_t r = 0; r < G * kQueryBlock; ++r) {
        std::fill(partial + r * (D + 1), partial + r * (D + 1) + D, 0.0f);
        partial[r * (D + 1) + D] = -std::numeric_limits<float>::infinity();
      }
      return;
    }
  }
  const int64_t L = length - first;
  thread_local std::vector<const void *> rows;
  rows.resize(static_cast<size_t>(2 * L));
  const void **keys = rows.data(), **values = rows.data() + L;
  // Block by block: one table lookup per block, then a stride per slot.
  const int64_t rowBytes = g.params.numKvHeads * D * static_cast<int64_t>(g.cache.elementSize());
  for (int64_t j = first; j < length;) {
    const char *key = static_cast<const char *>(g.key(seq, j, 0));
    const char *value = static_cast<const char *>(g.value(seq, j, 0));
    const int64_t end = std::min(length, (j / g.blockSize + 1) * g.blockSize);
    for (; j < end; ++j, key += rowBytes, value += rowBytes) {
      keys[j - first] = key;
      values[j - first] = value;
    }
  }
  thread_local std::vector<const float *> queries;
  thread_local std::vector<float *> outputs;
  thread_local std::vector<float> lse;
  queries.assign(static_cast<size_t>(G * kQueryBlock), nullptr);
  outputs.assign(static_cast<size_t>(G * kQueryBlock), nullptr);
  lse.resize(static_cast<size_t>(G * kQueryBlock));
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t r = 0; r < groups.counts[static_cast<size_t>(gi)]; ++r) {
      const size_t i = static_cast<size_t>(gi * kQueryBlock + r);
      const int64_t h = groups.heads[i];
      queries[i] = q + ((t - g.firstRow) * Hq + h) * D;
      outputs[i] = parts > 1 ? partial + static_cast<int64_t>(i) * (D + 1)
                             : out + ((t - g.firstRow) * Hq + h) * D;
    }
  k.decodeAttention[simd::decodeAttentionOrder(g.kind())][g.kind()](
      queries.data(), groups.counts.data(), groups.offsets.data(), G, keys, values, L, D,
      g.params.scale, outputs.data(), parts > 1 ? lse.data() : nullptr);
  if (parts > 1) // the part's log-sum-exp of the scaled scores
    for (int64_t gi = 0; gi < G; ++gi)
      for (int64_t r = 0; r < groups.counts[static_cast<size_t>(gi)]; ++r) {
        const int64_t i = gi * kQueryBlock + r;
        partial[i * (D + 1) + D] = lse[static_cast<size_t>(i)];
      }
}

// out = the parts' outputs weighted by exp(lse - max lse), normalised; a
// part's rows are `stride` rows of D + 1 apart, row r its own.
void mergeParts(const float *partial, int64_t parts, int64_t stride, int64_t r, int64_t D,
                float *o) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < parts; ++p)
    top = std::max(top, partial[(p * stride + r) * (D + 1) + D]);
  std::fill(o, o + D, 0.0f);
  float total = 0;
  for (int64_t p = 0; p < parts; ++p) {
    const float *part = partial + (p * stride + r) * (D + 1);
    if (part[D] == -std::numeric_limits<float>::infinity())
      continue;
    const float weight = std::exp(part[D] - top);
    total += weight;
    simd::kernels().axpy(weight, part, o, D);
  }
  for (int64_t d = 0; d < D; ++d)
    o[d] /= total;
}

// K^T [D][padded] then V [padded][D] of one KV head, zero past `keys`.
void gather(const Geometry &g, const Run &run, int64_t kvHead, float *dst) {
  const int64_t D = g.params.headDim;
  float *kt = dst, *v = dst + D * run.padded;
  std::fill(dst, dst + 2 * D * run.padded, 0.0f);
  thread_local std::vector<float> widened;
  widened.resize(static_cast<size_t>(D));
  for (int64_t j = 0; j < run.keys; ++j) {
    const float *key = g.asF32(g.key(run.seq, j, kvHead), widened.data());
    for (int64_t d = 0; d < D; ++d)
      kt[d * run.padded + j] = key[d];
    if (g.cache.element() == KvElement::F32)
      std::memcpy(v + j * D, g.value(run.seq, j, kvHead),
                  static_cast<size_t>(D) * sizeof(float));
    else
      simd::kernels().widen[simd::kBf16](g.value(run.seq, j, kvHead), v + j * D, D);
  }
}

// Queries [t0, t0 + rows) (rows <= 4) of head h against the gathered keys.
void attendBlock(const Geometry &g, const Run &run, const float *gathered,
                 const float *q, int64_t t0, int64_t rows, int64_t h,
                 float *out, std::vector<float> &scratch) {
  const simd::Kernels &k = simd::kernels();
  const int64_t D = g.params.headDim, Hq = g.params.numHeads;
  const int64_t kvHead = kvHeadOf(g.params, h);
  const float *kt = gathered + kvHead * 2 * D * run.padded;
  const float *v = kt + D * run.padded;
  // Keys this block needs: up to its last query's position, in 32s.
  int64_t needed = 0;
  for (int64_t r = 0; r < rows; ++r)
    needed = std::max<int64_t>(needed, g.step.positions[t0 + r] + 1);
  const int64_t columns = std::min(run.padded, (needed + 31) / 32 * 32);
  scratch.resize(static_cast<size_t>(kQueryBlock * run.padded + D));
  float *s = scratch.data();
  float *discard = s + kQueryBlock * run.padded; // output of padding rows
  const float *queries[kQueryBlock];
  float *outputs[kQueryBlock];
  for (int64_t r = 0; r < kQueryBlock; ++r) {
    const int64_t t = t0 + std::min(r, rows - 1);
    queries[r] = q + ((t - g.firstRow) * Hq + h) * D;
    outputs[r] = r < rows ? out + ((t - g.firstRow) * Hq + h) * D : discard;
  }
  k.scores4(queries, kt, run.padded, D, columns, s, run.padded);
  for (int64_t r = 0; r < kQueryBlock; ++r) {
    float *row = s + r * run.padded;
    const int64_t length =
        static_cast<int64_t>(g.step.positions[t0 + std::min(r, rows - 1)]) + 1;
    const int64_t first = firstVisiblePosition(length - 1, g.params.slidingWindow);
    k.softmax(row + first, length - first, g.params.scale);
    std::fill(row, row + first, 0.0f);             // sliding window
    std::fill(row + length, row + columns, 0.0f); // causal mask
  }
  k.weightedSum4(s, run.padded, v, needed, D, outputs);
}

} // namespace

void storeKeysAndValues(const float *k, const float *v, int64_t rowStride,
                        const StepInput &step, const AttentionParams &params,
                        KvCache &cache) {
  const int64_t blockSize = cache.shape().blockSize;
  const int64_t width = params.numKvHeads * params.headDim;
  for (int64_t t = 0; t < step.numTokens(); ++t) {
    const auto &table = step.blockTables[static_cast<size_t>(step.tokenSeq[t])];
    const int64_t pos = step.positions[t];
    if ((pos / blockSize) % params.kvShards != params.kvShard)
      continue; // another sequence-parallel rank's block
    const int32_t block = table[static_cast<size_t>(pos / blockSize)];
    void *keyRow = cache.keyData(params.layer, block, pos % blockSize);
    void *valueRow = cache.valueData(params.layer, block, pos % blockSize);
    if (cache.element() == KvElement::BF16) {
      simd::kernels().toBf16(k + t * rowStride, static_cast<uint16_t *>(keyRow), width);
      simd::kernels().toBf16(v + t * rowStride, static_cast<uint16_t *>(valueRow), width);
    } else {
      std::memcpy(keyRow, k + t * rowStride, static_cast<size_t>(width) * sizeof(float));
      std::memcpy(valueRow, v + t * rowStride, static_cast<size_t>(width) * sizeof(float));
    }
  }
}

void pagedAttention(const float *q, const float *k, const float *v,
                    const StepInput &step, const AttentionParams &params,
                    KvCache &cache, float *out, ThreadPool &pool) {
  storeKeysAndValues(k, v, params.numKvHeads * params.headDim, step, params, cache);
  attendCached(q, step, {0, step.numTokens()}, params, cache, out, pool);
}

void attendCached(const float *q, const StepInput &step, RowRange rows,
                  const AttentionParams &params, const KvCache &cache,
                  float *out, ThreadPool &pool) {
  const Geometry g{step, params, cache, cache.shape().blockSize, rows.begin};
  const int64_t T = rows.end, Hq = params.numHeads; // T: one past the last row
  const int64_t Hkv = params.numKvHeads, D = params.headDim;

  // Split the step into runs of one sequence; long runs use the blocked path.
  std::vector<Run> runs;
  std::vector<int64_t> singles; // tokens attended one at a time
  size_t gatheredFloats = 0;
  for (int64_t t = rows.begin; t < T;) {
    int64_t end = t + 1;
    while (end < T && step.tokenSeq[end] == step.tokenSeq[t])
      ++end;
    if (end - t >= kQueryBlock && D % 16 == 0) {
      int64_t keys = 0;
      for (int64_t i = t; i < end; ++i)
        keys = std::max<int64_t>(keys, step.positions[i] + 1);
      const int64_t padded = (keys + 31) / 32 * 32;
      runs.push_back({t, end, step.tokenSeq[t], keys, padded, gatheredFloats});
      gatheredFloats += static_cast<size_t>(Hkv * 2 * D * padded);
    } else {
      for (int64_t i = t; i < end; ++i)
        singles.push_back(i);
    }
    t = end;
  }

  thread_local std::vector<float> gatheredStorage;
  gatheredStorage.resize(gatheredFloats);
  float *gathered = gatheredStorage.data(); // shared with the pool threads
  pool.parallelFor(runs.size() * static_cast<size_t>(Hkv), 1,
                   [&](size_t b, size_t e) {
                     for (size_t i = b; i < e; ++i) {
                       const Run &run = runs[i / static_cast<size_t>(Hkv)];
                       const int64_t kvHead = static_cast<int64_t>(i) % Hkv;
                       gather(g, run, kvHead,
                              gathered + run.gathered + kvHead * 2 * D * run.padded);
                     }
                   });

  // Work items: (query block, head) of the runs, then (token, head) or,
  // with D in 16s, (token, part of its positions) over all query heads.
  struct Item {
    int32_t run; // -1 for a single token
    int64_t t, rows, h;
    int64_t part = 0, parts = 1; // of the positions (grouped decode)
    size_t partial = 0;          // its floats in `partials` when parts > 1
  };
  const bool grouped = D % 16 == 0;
  const DecodeGroups groups = grouped ? decodeGroupsOf(params) : DecodeGroups{};
  std::vector<Item> items;
  for (size_t r = 0; r < runs.size(); ++r)
    for (int64_t t = runs[r].begin; t < runs[r].end; t += kQueryBlock)
      for (int64_t h = 0; h < Hq; ++h)
        items.push_back({static_cast<int32_t>(r), t,
                         std::min(kQueryBlock, runs[r].end - t), h});
  // Fewer decode tokens than twice the threads (one token on 2 threads):
  // split their positions into parts, merged by log-sum-exp
  // (flash-decoding), so that every thread has a share.
  const size_t decodeItems = grouped ? singles.size() : 0;
  const int64_t parts =
      runs.empty() && decodeItems > 0 && pool.numThreads() > 1
          ? std::clamp<int64_t>(static_cast<int64_t>((2 * pool.numThreads() + decodeItems - 1) /
                                                     decodeItems),
                                1, 4)
          : 1;
  constexpr int64_t kMinPartKeys = 128; // shorter parts cost more to merge
  const size_t partialFloats = static_cast<size_t>(groups.size() * kQueryBlock * (D + 1));
  thread_local std::vector<float> partials;
  size_t partialsUsed = 0;
  struct Split {
    int64_t t, parts;
    size_t partial;
  };
  std::vector<Split> splits;
  for (int64_t t : singles) {
    if (grouped) {
      const int64_t length = static_cast<int64_t>(step.positions[t]) + 1;
      const int64_t visible = length - firstVisiblePosition(length - 1, params.slidingWindow);
      const int64_t n = std::min(parts, std::max<int64_t>(1, visible / kMinPartKeys));
      if (n > 1)
        splits.push_back({t, n, partialsUsed});
      for (int64_t p = 0; p < n; ++p) {
        items.push_back({-1, t, 0, 0, p, n, partialsUsed});
        if (n > 1)
          partialsUsed += partialFloats;
      }
    } else {
      for (int64_t h = 0; h < Hq; ++h)
        items.push_back({-1, t, 1, h});
    }
  }

  partials.resize(partialsUsed);
  float *partialData = partials.data(); // shared with the pool threads
  pool.parallelFor(items.size(), 1, [&](size_t b, size_t e) {
    thread_local std::vector<float> scratch;
    for (size_t i = b; i < e; ++i) {
      const Item &item = items[i];
      if (item.run < 0 && grouped) {
        attendToken(g, q, item.t, groups, out, item.part, item.parts,
                    partialData + item.partial);
      } else if (item.run < 0) {
        attendOne(g, q, item.t, item.h, out, scratch);
      } else {
        const Run &run = runs[static_cast<size_t>(item.run)];
        attendBlock(g, run, gathered + run.gathered, q, item.t, item.rows,
                    item.h, out, scratch);
      }
    }
  });
  const int64_t stride = groups.size() * kQueryBlock; // rows of a part
  for (const Split &split : splits)
    for (int64_t gi = 0; gi < groups.size(); ++gi)
      for (int64_t r = 0; r < groups.counts[static_cast<size_t>(gi)]; ++r) {
        const int64_t i = gi * kQueryBlock + r;
        const int64_t h = groups.heads[static_cast<size_t>(i)];
        mergeParts(partialData + split.partial, split.parts, stride, i, D,
                   out + ((split.t - rows.begin) * Hq + h) * D);
      }
}

} // namespace llmir::engine::cpu
