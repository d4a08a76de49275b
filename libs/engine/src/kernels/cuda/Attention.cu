// Paged causal grouped-query attention. The step's k, v are stored first;
// then one block of kWarps warps per (token, query head). Each warp takes
// 32 keys at a time, one per lane: the lane reads its key row with 16-byte
// loads and scores it against the query (in shared memory), the warp
// updates its online (running-max) softmax with the 32 scores at once, then
// accumulates their value rows with the lanes holding strided slices of the
// head dimension (coalesced reads). Walking keys one per warp instead left
// every load's latency exposed (decode attention was ~40 us a layer). The
// warps' partial results are merged exactly at the end.
#include "Launch.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = static_cast<int>(kMaxHeadDim / 32);

// 32-bit division (positions and block sizes fit; 64-bit division is a long
// instruction sequence on the GPU), 64-bit offsets.
__device__ int64_t cacheRow(const AttentionGeometry &g, int32_t seq,
                            int64_t position) {
  const int32_t p = static_cast<int32_t>(position);
  const int32_t blockSize = static_cast<int32_t>(g.blockSize);
  const int32_t block = g.blockTables[seq * g.blockTableStride + p / blockSize];
  return (int64_t(block) * blockSize + p % blockSize) * g.numKvHeads * g.headDim;
}

// The cache's element type: f32, or bf16 rounded to nearest even on store.
__device__ __forceinline__ float loadCached(const float *p) { return *p; }
__device__ __forceinline__ float loadCached(const __nv_bfloat16 *p) {
  return __bfloat162float(*p);
}
__device__ __forceinline__ void storeCached(float *p, float v) { *p = v; }
__device__ __forceinline__ void storeCached(__nv_bfloat16 *p, float v) {
  *p = __float2bfloat16_rn(v);
}

// One block per token, threads over the row's Hkv * D floats.
template <typename C>
__global__ void storeKernel(const float *k, const float *v,
                            AttentionGeometry g) {
  const int64_t t = blockIdx.x;
  const int64_t position = g.positions[t];
  if ((position / g.blockSize) % g.kvShards != g.kvShard)
    return; // another sequence-parallel rank's block
  const int64_t width = g.numKvHeads * g.headDim;
  const int64_t row = cacheRow(g, g.tokenSeq[t], position);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    storeCached(static_cast<C *>(g.keys) + row + i, k[t * g.kvRowStride + i]);
    storeCached(static_cast<C *>(g.values) + row + i, v[t * g.kvRowStride + i]);
  }
}

// q . key over D, key in the cache's element type; 16-byte loads when the
// row allows (D a multiple of 8: rows start 16-byte aligned).
__device__ __forceinline__ float dotKey(const float *key, const float *query, int64_t D) {
  float dot = 0.0f;
  if (D % 4 == 0) {
#pragma unroll 8
    for (int64_t d = 0; d < D; d += 4) {
      const float4 k = *reinterpret_cast<const float4 *>(key + d);
      dot += query[d] * k.x + query[d + 1] * k.y + query[d + 2] * k.z + query[d + 3] * k.w;
    }
    return dot;
  }
  for (int64_t d = 0; d < D; ++d)
    dot += query[d] * key[d];
  return dot;
}
__device__ __forceinline__ float dotKey(const __nv_bfloat16 *key, const float *query,
                                        int64_t D) {
  float dot = 0.0f;
  if (D % 8 == 0) {
    // Unrolled: the loads of one key row are issued together (a loop
    // waiting for each made the score a chain of memory latencies).
#pragma unroll 8
    for (int64_t d = 0; d < D; d += 8) {
      const uint4 packed = *reinterpret_cast<const uint4 *>(key + d);
      const unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        dot += query[d + 2 * j] * __uint_as_float(words[j] << 16);
        dot += query[d + 2 * j + 1] * __uint_as_float(words[j] & 0xffff0000u);
      }
    }
    return dot;
  }
  for (int64_t d = 0; d < D; ++d)
    dot += query[d] * __bfloat162float(key[d]);
  return dot;
}

__device__ __forceinline__ float warpMaximum(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
__device__ __forceinline__ float warpSumOf(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// PerLane: head-dimension elements per lane (D <= 32 * PerLane), a template
// argument so that acc and the value loads take only the registers D needs.
template <typename C, int PerLane>
__global__ void __launch_bounds__(kWarps * 32) attendKernel(const float *q, AttentionGeometry g, float *out) {
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  __shared__ float warpMax[kWarps], warpSum[kWarps];
  __shared__ float warpOut[kWarps][kMaxHeadDim];
  __shared__ float query[kMaxHeadDim];
  const int64_t r = blockIdx.x, t = g.firstQuery + r, h = blockIdx.y;
  const int64_t D = g.headDim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kvHead = g.kvGroup > 0
                            ? (g.headOffset + h) / g.kvGroup - g.headOffset / g.kvGroup
                            : h / (g.numHeads / g.numKvHeads);
  const int32_t seq = g.tokenSeq[t];
  const int64_t length = static_cast<int64_t>(g.positions[t]) + 1;
  // A sliding window W shows positions length - W .. length - 1 only.
  const int64_t first =
      g.slidingWindow > 0 && length > g.slidingWindow ? length - g.slidingWindow : 0;
  // Partial results (a sequence-parallel shard's, or one of `splits` key
  // ranges of a flash-decoding split) are each head's normalised output then
  // each head's log-sum-exp; splits are side by side in a row, as
  // mergeKernel reads shards.
  const bool partial = g.partial || g.splits > 1;
  const int64_t partialRow = g.numHeads * D + g.numHeads;
  const int64_t outRow = partial ? g.splits * partialRow : g.numHeads * D;
  float *rowOut = out + r * outRow + (g.splits > 1 ? blockIdx.z * partialRow : 0);
  // This block's keys: the visible range, or its split's part of it.
  int64_t begin = first, end = length;
  if (g.splits > 1) {
    const int64_t part = (length - first + g.splits - 1) / g.splits;
    begin = first + blockIdx.z * part;
    end = begin + part < length ? begin + part : length;
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    query[d] = q[(r * g.numHeads + h) * D + d];
  __syncthreads();

  float acc[PerLane];
#pragma unroll
  for (int i = 0; i < PerLane; ++i)
    acc[i] = 0.0f;
  float runningMax = -INFINITY, runningSum = 0.0f;
  for (int64_t chunk = begin + int64_t(warp) * 32; chunk < end; chunk += kWarps * 32) {
    const int64_t j = chunk + lane;
    // Another sequence-parallel rank's block, or past the end: no score.
    const bool visible =
        j < end && (!g.partial || (j / g.blockSize) % g.kvShards == g.kvShard);
    const int64_t row = visible ? cacheRow(g, seq, j) + kvHead * D : 0;
    const float score = visible ? dotKey(keys + row, query, D) * g.scale : -INFINITY;
    const float chunkMax = warpMaximum(score);
    if (chunkMax == -INFINITY)
      continue; // the same for every lane
    const float newMax = fmaxf(runningMax, chunkMax);
    const float correction = expf(runningMax - newMax);
    const float weight = visible ? expf(score - newMax) : 0.0f;
    runningSum = runningSum * correction + warpSumOf(weight);
#pragma unroll
    for (int i = 0; i < PerLane; ++i)
      acc[i] *= correction;
    // Sixteen keys' value loads in flight before their products (issued
    // one at a time, each load's latency was exposed).
    constexpr int kKeys = 16;
    for (int k0 = 0; k0 < 32; k0 += kKeys) {
      float w[kKeys];
      int64_t rows[kKeys];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        w[u] = __shfl_sync(0xffffffffu, weight, k0 + u);
        rows[u] = __shfl_sync(0xffffffffu, row, k0 + u);
      }
#pragma unroll
      for (int i = 0; i < PerLane; ++i) {
        const int64_t d = lane + 32 * i;
        if (d < D) {
          float v[kKeys];
#pragma unroll
          for (int u = 0; u < kKeys; ++u)
            v[u] = w[u] != 0.0f ? loadCached(values + rows[u] + d) : 0.0f;
#pragma unroll
          for (int u = 0; u < kKeys; ++u)
            acc[i] += w[u] * v[u];
        }
      }
    }
    runningMax = newMax;
  }
  if (lane == 0) {
    warpMax[warp] = runningMax;
    warpSum[warp] = runningSum;
  }
#pragma unroll
  for (int i = 0; i < PerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < D)
      warpOut[warp][d] = acc[i];
  }
  __syncthreads();
  // Without a shard filter or a split warp 0 saw the first visible key, so
  // the maximum is finite; a partial rank or a split may see no position.
  float maximum = warpMax[0];
  for (int w = 1; w < kWarps; ++w)
    maximum = fmaxf(maximum, warpMax[w]);
  float *o = rowOut + h * D;
  if (maximum == -INFINITY) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      o[d] = 0.0f;
    if (threadIdx.x == 0)
      rowOut[g.numHeads * D + h] = -INFINITY;
    return;
  }
  float factor[kWarps], total = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    factor[w] = expf(warpMax[w] - maximum); // 0 for a warp that saw no key
    total += warpSum[w] * factor[w];
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      sum += warpOut[w][d] * factor[w];
    o[d] = sum / total;
  }
  if (partial && threadIdx.x == 0)
    rowOut[g.numHeads * D + h] = maximum + logf(total);
}

// Prefill: the step's rows in tiles of up to kTileQueries consecutive rows of
// one sequence (tiles[2 i] = first row, tiles[2 i + 1] = count), one block
// per (tile, head). Key and value tiles of kTileKeys rows are read from the
// paged cache once into shared memory (widened to f32) and used by every
// query of the tile, flash-attention style: each warp owns kTileQueries /
// kWarps queries, each lane one key of the tile for the scores and strided
// head dimensions for the outputs, with an online softmax per query. The
// per-(token, head) kernel read every key once per query.
constexpr int kTileQueries = 32;
constexpr int kTileKeys = 32;
constexpr int kQueriesPerWarp = kTileQueries / kWarps;
constexpr int64_t kTiledMaxHeadDim = 128;

template <typename C, int PerLane>
__global__ void __launch_bounds__(kWarps * 32)
    prefillAttendKernel(const float *q, AttentionGeometry g, const int32_t *tiles,
                        float *out) {
  extern __shared__ float shared[];
  const int64_t D = g.headDim, pitch = D + 1; // +1: lanes read their own key rows
  float *queries = shared;                            // [kTileQueries][D]
  float *keyTile = queries + kTileQueries * D;        // [kTileKeys][D + 1]
  float *valueTile = keyTile + kTileKeys * pitch;     // [kTileKeys][D]
  const int64_t firstRow = tiles[2 * blockIdx.x], count = tiles[2 * blockIdx.x + 1];
  const int64_t h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  const int64_t kvHead = g.kvGroup > 0
                            ? (g.headOffset + h) / g.kvGroup - g.headOffset / g.kvGroup
                            : h / (g.numHeads / g.numKvHeads);
  const int32_t seq = g.tokenSeq[firstRow];
  for (int64_t i = threadIdx.x; i < kTileQueries * D; i += blockDim.x) {
    const int64_t r = i / D;
    queries[i] = r < count ? q[((firstRow + r) * g.numHeads + h) * D + i % D] : 0.0f;
  }
  // The keys any query of the tile sees: [first, last].
  int64_t last = 0, first = INT64_MAX;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t p = g.positions[firstRow + r];
    last = p > last ? p : last;
    const int64_t from = g.slidingWindow > 0 && p + 1 > g.slidingWindow ? p + 1 - g.slidingWindow : 0;
    first = from < first ? from : first;
  }
  int64_t position[kQueriesPerWarp], windowStart[kQueriesPerWarp];
  float runningMax[kQueriesPerWarp], runningSum[kQueriesPerWarp];
  float acc[kQueriesPerWarp][PerLane];
#pragma unroll
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    const int64_t r = warp * kQueriesPerWarp + j;
    position[j] = r < count ? g.positions[firstRow + r] : -1; // -1: sees nothing
    windowStart[j] = g.slidingWindow > 0 && position[j] + 1 > g.slidingWindow
                         ? position[j] + 1 - g.slidingWindow
                         : 0;
    runningMax[j] = -INFINITY;
    runningSum[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < PerLane; ++i)
      acc[j][i] = 0.0f;
  }
  for (int64_t base = first - first % kTileKeys; base <= last; base += kTileKeys) {
    __syncthreads(); // the previous tile is no longer read
    // Each warp loads every kWarps-th key of the tile, its lanes along the
    // head dimension (one block-table lookup per key, coalesced reads, all
    // of a lane's loads issued before the stores).
    constexpr int kKeysPerWarp = kTileKeys / kWarps;
    float keyPart[kKeysPerWarp][PerLane], valuePart[kKeysPerWarp][PerLane];
#pragma unroll
    for (int m = 0; m < kKeysPerWarp; ++m) {
      const int64_t j = base + warp + int64_t(kWarps) * m;
      const int64_t row = j <= last ? cacheRow(g, seq, j) + kvHead * D : -1;
#pragma unroll
      for (int i = 0; i < PerLane; ++i) {
        const int64_t d = lane + 32 * i;
        const bool load = row >= 0 && d < D;
        keyPart[m][i] = load ? loadCached(keys + row + d) : 0.0f;
        valuePart[m][i] = load ? loadCached(values + row + d) : 0.0f;
      }
    }
#pragma unroll
    for (int m = 0; m < kKeysPerWarp; ++m) {
      const int k = warp + kWarps * m;
#pragma unroll
      for (int i = 0; i < PerLane; ++i) {
        const int64_t d = lane + 32 * i;
        if (d < D) {
          keyTile[k * pitch + d] = keyPart[m][i];
          valueTile[k * D + d] = valuePart[m][i];
        }
      }
    }
    __syncthreads();
    // Scores: lane = key of the tile, every query of this warp.
    float score[kQueriesPerWarp];
#pragma unroll
    for (int j = 0; j < kQueriesPerWarp; ++j)
      score[j] = 0.0f;
    const float *myKey = keyTile + lane * pitch;
    const float *myQueries = queries + warp * kQueriesPerWarp * D;
#pragma unroll 8
    for (int64_t d = 0; d < D; ++d) {
      const float k = myKey[d];
#pragma unroll
      for (int j = 0; j < kQueriesPerWarp; ++j)
        score[j] += myQueries[j * D + d] * k;
    }
    const int64_t j0 = base + lane;
#pragma unroll
    for (int j = 0; j < kQueriesPerWarp; ++j) {
      const bool visible = j0 <= position[j] && j0 >= windowStart[j];
      const float s = visible ? score[j] * g.scale : -INFINITY;
      const float tileMax = warpMaximum(s);
      if (tileMax == -INFINITY)
        continue; // the same for every lane
      const float newMax = fmaxf(runningMax[j], tileMax);
      const float correction = expf(runningMax[j] - newMax);
      const float weight = visible ? expf(s - newMax) : 0.0f;
      runningSum[j] = runningSum[j] * correction + warpSumOf(weight);
      runningMax[j] = newMax;
#pragma unroll
      for (int i = 0; i < PerLane; ++i)
        acc[j][i] *= correction;
      for (int k = 0; k < kTileKeys; ++k) {
        const float w = __shfl_sync(0xffffffffu, weight, k);
        if (w == 0.0f)
          continue; // the same for every lane
#pragma unroll
        for (int i = 0; i < PerLane; ++i) {
          const int64_t d = lane + 32 * i;
          if (d < D)
            acc[j][i] += w * valueTile[k * D + d];
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kQueriesPerWarp; ++j) {
    const int64_t r = warp * kQueriesPerWarp + j;
    if (r >= count)
      continue;
    float *o = out + ((firstRow + r) * g.numHeads + h) * D;
#pragma unroll
    for (int i = 0; i < PerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D)
        o[d] = acc[j][i] / runningSum[j];
    }
  }
}

// One block per (token, head): the exact merge of the shards' partials,
// o = sum_r exp(lse_r - lse) o_r / sum_r exp(lse_r - lse), as the CPU's.
__global__ void mergeKernel(const float *gathered, int64_t shards,
                            int64_t numHeads, int64_t headDim, float *out) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int64_t row = numHeads * headDim + numHeads;
  const float *shard0 = gathered + t * shards * row;
  float lse = -INFINITY;
  for (int64_t r = 0; r < shards; ++r)
    lse = fmaxf(lse, shard0[r * row + numHeads * headDim + h]);
  float *o = out + (t * numHeads + h) * headDim;
  if (lse == -INFINITY) {
    for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x)
      o[d] = 0.0f;
    return;
  }
  float total = 0.0f;
  for (int64_t r = 0; r < shards; ++r)
    total += expf(shard0[r * row + numHeads * headDim + h] - lse);
  for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t r = 0; r < shards; ++r) {
      const float weight =
          expf(shard0[r * row + numHeads * headDim + h] - lse) / total;
      sum += weight * shard0[r * row + h * headDim + d];
    }
    o[d] = sum;
  }
}

} // namespace

int storeKeysAndValues(Stream stream, const float *k, const float *v,
                       const AttentionGeometry &g) {
  if (g.numTokens > 0 && g.bf16Cache)
    storeKernel<__nv_bfloat16><<<static_cast<unsigned>(g.numTokens), 128, 0, stream>>>(k, v, g);
  else if (g.numTokens > 0)
    storeKernel<float><<<static_cast<unsigned>(g.numTokens), 128, 0, stream>>>(k, v, g);
  return cudaGetLastError();
}

namespace {
template <int PerLane>
void launchAttend(Stream stream, const float *q, const AttentionGeometry &g, float *out) {
  const dim3 grid(static_cast<unsigned>(g.numQueries), static_cast<unsigned>(g.numHeads),
                  static_cast<unsigned>(g.splits > 1 ? g.splits : 1));
  if (g.bf16Cache)
    attendKernel<__nv_bfloat16, PerLane><<<grid, kWarps * 32, 0, stream>>>(q, g, out);
  else
    attendKernel<float, PerLane><<<grid, kWarps * 32, 0, stream>>>(q, g, out);
}
} // namespace

namespace {
template <int PerLane>
void launchPrefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                         const int32_t *tiles, int64_t numTiles, float *out) {
  const dim3 grid(static_cast<unsigned>(numTiles), static_cast<unsigned>(g.numHeads));
  const size_t shared =
      static_cast<size_t>((kTileQueries + kTileKeys) * g.headDim + kTileKeys * (g.headDim + 1)) *
      sizeof(float);
  // Head dim 128 needs a little over the default 48 KiB of shared memory.
  if (g.bf16Cache) {
    cudaFuncSetAttribute(prefillAttendKernel<__nv_bfloat16, PerLane>,
                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    prefillAttendKernel<__nv_bfloat16, PerLane><<<grid, kWarps * 32, shared, stream>>>(
        q, g, tiles, out);
  } else {
    cudaFuncSetAttribute(prefillAttendKernel<float, PerLane>,
                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    prefillAttendKernel<float, PerLane><<<grid, kWarps * 32, shared, stream>>>(q, g, tiles,
                                                                              out);
  }
}
} // namespace

bool prefillAttendApplies(const AttentionGeometry &g) {
  return !g.partial && g.firstQuery == 0 && g.numQueries == g.numTokens &&
         g.headDim <= kTiledMaxHeadDim;
}

int prefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                  const int32_t *tiles, int64_t numTiles, float *out) {
  if (numTiles > 0) {
    if (g.headDim <= 64)
      launchPrefillAttend<2>(stream, q, g, tiles, numTiles, out);
    else
      launchPrefillAttend<4>(stream, q, g, tiles, numTiles, out);
  }
  return cudaGetLastError();
}

int attend(Stream stream, const float *q, const AttentionGeometry &g, float *out) {
  if (g.numQueries > 0) {
    if (g.headDim <= 64)
      launchAttend<2>(stream, q, g, out);
    else if (g.headDim <= 128)
      launchAttend<4>(stream, q, g, out);
    else
      launchAttend<kPerLane>(stream, q, g, out);
  }
  return cudaGetLastError();
}

int mergeAttention(Stream stream, const float *gathered, int64_t T, int64_t shards,
                   int64_t numHeads, int64_t headDim, float *out) {
  if (T > 0) {
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(numHeads));
    mergeKernel<<<grid, 64, 0, stream>>>(gathered, shards, numHeads, headDim, out);
  }
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
