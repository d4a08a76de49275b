// Paged causal grouped-query attention. The step's k, v are stored first;
// then one block of kWarps warps per (token, query head). Each warp takes
// 32 keys at a time, one per lane: the lane reads its key row with 16-byte
// loads and scores it against the query (in shared memory), the warp
// updates its online (running-max) softmax with the 32 scores at once, then
// accumulates their value rows with the lanes holding strided slices of the
// head dimension (coalesced reads). Walking keys one per warp instead left
// every load's latency exposed (decode attention was ~40 us a layer). The
// warps' partial results are merged exactly at the end.
#include "DependentLaunch.cuh"
#include "Rope.cuh"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

// The KV head query head h reads: grouped-query attention, or an uneven
// head split's (cpu::kvHeadOf).
__device__ __forceinline__ int64_t kvHeadOf(const AttentionGeometry &g, int64_t h) {
  return g.kvGroup > 0 ? (g.headOffset + h) / g.kvGroup - g.headOffset / g.kvGroup
                       : h / (g.numHeads / g.numKvHeads);
}

// The keys any of a prefill tile's rows sees, [first, last] (each row p
// sees up to p, from its sliding window's start).
__device__ __forceinline__ void tileKeyRange(const AttentionGeometry &g, int64_t firstRow, int64_t count,
                             int64_t &first, int64_t &last) {
  last = 0;
  first = INT64_MAX;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t p = g.positions[firstRow + r];
    last = p > last ? p : last;
    const int64_t from = g.slidingWindow > 0 && p + 1 > g.slidingWindow ? p + 1 - g.slidingWindow : 0;
    first = from < first ? from : first;
  }
}

// The cache's element type: f32, or bf16 rounded to nearest even on store.
__device__ __forceinline__ float loadCached(const float *p) { return *p; }
__device__ __forceinline__ float loadCached(const __nv_bfloat16 *p) {
  return __bfloat162float(*p);
}
__device__ __forceinline__ void setCached(float &to, float v) { to = v; }
__device__ __forceinline__ void setCached(__nv_bfloat16 &to, float v) {
  to = __float2bfloat16_rn(v);
}
template <typename C> __device__ __forceinline__ void storeCached(C *p, float v) {
  setCached(*p, v);
}

// One block per token, threads over the row's Hkv * D floats.
template <typename C>
__global__ void storeKernel(const float *k, const float *v,
                            AttentionGeometry g) {
  beginDependentKernel();
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

// The ROPEs of an attention's queries and keys and its store in one pass:
// blocks (token, part) of kRopeThreads threads, thread l on pair l % (D/2)
// of heads (l / (D/2)) + k * lanes of the part's share, the queries' heads
// first, then the keys'; the thread rotating a key pair also writes it into
// the cache, and the values are copied as storeKernel does. Same rotation
// (rotatePair) and the same cache rows as the three kernels. A thread takes
// the double sin and cos of its pair once for the queries and once for the
// keys, not once a head: with a thread per (head, pair) a 2,048-token
// prefill of the 1.1B shape took 28-34 us a layer for ~40 MB of traffic.
// The angles depend on the step's positions and the frequencies only, which
// no kernel writes: they are computed before the wait, while the projection
// before still runs. Few tokens (decode) spread a token's heads over parts
// (one block a token ran them on one multiprocessor, ~6-7 us a layer).
// Indices in 32 bits (64-bit `%` and `/` are long routines), offsets in 64.
constexpr int kRopeThreads = 128;
template <typename C>
__global__ void __launch_bounds__(kRopeThreads)
    ropeStoreKernel(const float *q, float *qOut, int64_t qHeads, const float *qFrequencies,
                    const float *k, float *kOut, const float *kFrequencies, const float *v,
                    Rotation *queryRotations, __nv_bfloat16 *dense, AttentionGeometry g,
                    int headsPerPart) {
  const int64_t t = blockIdx.x;
  const int D = static_cast<int>(g.headDim), half = D / 2, lanes = kRopeThreads / half;
  const int queryHeads = static_cast<int>(qHeads), kHeads = static_cast<int>(g.numKvHeads);
  const int32_t position = g.positions[t];
  const bool mine = (position / static_cast<int32_t>(g.blockSize)) % static_cast<int32_t>(g.kvShards) ==
                    static_cast<int32_t>(g.kvShard);
  const int64_t row = mine ? cacheRow(g, g.tokenSeq[t], position) : 0;
  C *keys = static_cast<C *>(g.keys) + row;
  const int tid = static_cast<int>(threadIdx.x), i = tid % half, lane = tid / half;
  const int first = static_cast<int>(blockIdx.y) * headsPerPart;
  const int end = min(first + headsPerPart, queryHeads + kHeads);
  const bool active = lane < lanes && first + lane < end;
  const float angle = static_cast<float>(position);
  const bool anyQuery = active && first + lane < queryHeads;
  const bool anyKey = active && end > queryHeads;
  // The queries' rotations as a table (the prefill attention rotates its
  // rows with them): a lane of each token's first part writes the pairs.
  const bool tabled = queryRotations && blockIdx.y == 0 && lane == 0;
  const Rotation queryRotation =
      anyQuery || tabled ? rotationBy(angle * qFrequencies[i]) : Rotation{};
  const Rotation keyRotation = anyKey ? rotationBy(angle * kFrequencies[i]) : Rotation{};
  waitForPrecedingKernels(); // the table's last reader was the attention before
  allowDependentLaunch();
  if (tabled)
    queryRotations[t * half + i] = queryRotation;
  // cuDNN's attention reads bf16 rows [q heads | k heads | v heads] (dense).
  __nv_bfloat16 *denseRow = dense ? dense + t * int64_t(queryHeads + 2 * kHeads) * D : nullptr;
  for (int head = first + lane; active && head < end; head += lanes) {
    if (head < queryHeads && denseRow) {
      const float *x = q + t * g.qRowStride + int64_t(head) * D;
      const RotatedPair p = rotate(x[i], x[i + half], queryRotation);
      denseRow[head * D + i] = __float2bfloat16_rn(p.first);
      denseRow[head * D + i + half] = __float2bfloat16_rn(p.second);
    } else if (head < queryHeads) {
      const int64_t at = (t * qHeads + head) * D;
      rotatePair(q + at, qOut + at, i, half, queryRotation);
    } else {
      const int h = head - queryHeads;
      const int64_t at = t * g.kvRowStride + int64_t(h) * D;
      const RotatedPair p = rotate(k[at + i], k[at + i + half], keyRotation);
      if (kOut) { // null: only the cache and the dense rows read them
        kOut[at + i] = p.first;
        kOut[at + i + half] = p.second;
      }
      if (mine) {
        storeCached(keys + h * D + i, p.first);
        storeCached(keys + h * D + i + half, p.second);
      }
      if (denseRow) {
        denseRow[head * D + i] = __float2bfloat16_rn(p.first);
        denseRow[head * D + i + half] = __float2bfloat16_rn(p.second);
      }
    }
  }
  const int valueEnd = mine || denseRow ? kHeads * D : 0;
  for (int e = static_cast<int>(blockIdx.y) * kRopeThreads + tid; e < valueEnd;
       e += static_cast<int>(gridDim.y) * kRopeThreads) {
    const float value = v[t * g.kvRowStride + e];
    if (mine)
      storeCached(static_cast<C *>(g.values) + row + e, value);
    if (denseRow)
      denseRow[(queryHeads + kHeads) * D + e] = __float2bfloat16_rn(value);
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

// Head h of one row of shards' partials (each shard's normalised outputs
// then its log-sum-exps, side by side): o = sum_r exp(lse_r - lse) o_r /
// sum_r exp(lse_r - lse), as the CPU's merge; the block's threads stride
// over the head dimension. Partials written by other blocks are read
// through L2 (__ldcg): they are never in this block's L1.
__device__ void mergeHead(const float *shard0, int64_t shards, int64_t numHeads,
                          int64_t headDim, int64_t h, float *o) {
  const int64_t row = numHeads * headDim + numHeads;
  float lse = -INFINITY;
  for (int64_t r = 0; r < shards; ++r)
    lse = fmaxf(lse, __ldcg(shard0 + r * row + numHeads * headDim + h));
  if (lse == -INFINITY) {
    for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x)
      o[d] = 0.0f;
    return;
  }
  float total = 0.0f;
  for (int64_t r = 0; r < shards; ++r)
    total += expf(__ldcg(shard0 + r * row + numHeads * headDim + h) - lse);
  for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t r = 0; r < shards; ++r) {
      const float weight = expf(__ldcg(shard0 + r * row + numHeads * headDim + h) - lse) / total;
      sum += weight * __ldcg(shard0 + r * row + h * headDim + d);
    }
    o[d] = sum;
  }
}

// A decode block's keys and the row it writes: query row r's visible
// positions (a sliding window W shows length - W .. length - 1 only), or
// split blockIdx.z's part of them. Partial results (a sequence-parallel
// shard's, or one of `splits` key ranges of a flash-decoding split) are
// each head's normalised output then each head's log-sum-exp; splits are
// side by side in a row, as mergeKernel reads shards.
struct DecodeBlock {
  int64_t begin, end; // keys [begin, end)
  bool partial;       // writes a partial row (output, log-sum-exp)
  int64_t outRow;     // floats per query row of `out`
  float *rowOut;      // this block's row (its split's part)
};
__device__ __forceinline__ DecodeBlock decodeBlock(const AttentionGeometry &g, int64_t r,
                                                   int64_t length, int64_t D, float *out) {
  DecodeBlock b;
  b.begin = g.slidingWindow > 0 && length > g.slidingWindow ? length - g.slidingWindow : 0;
  b.end = length;
  b.partial = g.partial || g.splits > 1;
  const int64_t partialRow = g.numHeads * D + g.numHeads;
  b.outRow = b.partial ? g.splits * partialRow : g.numHeads * D;
  b.rowOut = out + r * b.outRow + (g.splits > 1 ? blockIdx.z * partialRow : 0);
  if (g.splits > 1) {
    const int64_t first = b.begin;
    // 32-bit: a 64-bit division is a long instruction sequence on the GPU.
    const int64_t part = static_cast<int32_t>(length - first + g.splits - 1) /
                         static_cast<int32_t>(g.splits);
    b.begin = first + blockIdx.z * part;
    b.end = b.begin + part < length ? b.begin + part : length;
  }
  return b;
}

// Flash-decoding's merge in the split block that finishes last (the
// threadfence-reduction pattern): every split's partial is written and
// fenced before it is counted in `counter`, so the last one reads all of
// them; it resets the counter for the next step. One kernel fewer per layer
// than a merge launch. True in every thread of the last block.
__device__ __forceinline__ bool lastSplitToFinish(unsigned *counter, int64_t splits) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == static_cast<unsigned>(splits - 1);
    if (last)
      *counter = 0;
  }
  __syncthreads();
  if (last)
    __threadfence();
  return last;
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
  beginDependentKernel();
  const int64_t r = blockIdx.x, t = g.firstQuery + r, h = blockIdx.y;
  const int64_t D = g.headDim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kvHead = kvHeadOf(g, h);
  const int32_t seq = g.tokenSeq[t];
  // decodeBlock's and lastSplitToFinish's arithmetic written out here: with
  // the two calls (commit 68655f2) nvcc 13 compiled this kernel differently
  // (80 registers instead of 96 at D = 64) and batched decode lost 17-22% on
  // an H200 (1.1B batch 128 29.0k -> 22.4k tok/s); written out, its PTX is
  // the one before that commit again.
  const int64_t length = static_cast<int64_t>(g.positions[t]) + 1;
  const int64_t first =
      g.slidingWindow > 0 && length > g.slidingWindow ? length - g.slidingWindow : 0;
  const bool partial = g.partial || g.splits > 1;
  const int64_t partialRow = g.numHeads * D + g.numHeads;
  const int64_t outRow = partial ? g.splits * partialRow : g.numHeads * D;
  float *rowOut = out + r * outRow + (g.splits > 1 ? blockIdx.z * partialRow : 0);
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
  } else {
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
  if (g.splits <= 1 || !g.mergedOut)
    return;
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned *counter = g.splitCounters + r * g.numHeads + h;
    last = atomicAdd(counter, 1u) == static_cast<unsigned>(g.splits - 1);
    if (last)
      *counter = 0;
  }
  __syncthreads();
  if (!last)
    return;
  __threadfence();
  mergeHead(out + r * outRow, g.splits, g.numHeads, D, h, g.mergedOut + (r * g.numHeads + h) * D);
}

// Decode attention for a group of query heads sharing one KV head (D a
// multiple of 32 up to 128, at most kMaxGroup heads a group): one block per
// (query row, KV head, split). Decode attention moves little data (an 8B
// shape's step reads ~1 MB of cache) and is bound by latency: attendKernel,
// a block per query head, spent ~26 us a layer in chains of dependent loads
// and read each key once per query head of its group. Here the block copies
// a chunk of up to GroupChunk<C>::Keys keys and values into shared memory
// with every load in flight at once (cp.async), scores them against all of
// the group's queries, updates one online softmax per head and accumulates
// the values, so a chunk costs one memory latency and each key is read once.
// Partial rows, splits and the in-kernel merge are attendKernel's. It is a
// serial chain (ncu: ~2,000 instructions a warp at one warp per scheduler
// with 128 threads): 256 threads halve each thread's share of the scores
// and sums, and the first chunk's rows are requested before the
// dependent-launch wait. On an H200, alone, 8B shape 22.3 -> 18.1 us a layer
// (attendKernel 26.5), 1.1B 17 us; end to end, with the wait hiding a
// memory latency, 1.1B batch 1 +4-5%, 8B +2.5% (docs/performance.md).
constexpr int kMaxGroup = 8;
constexpr int kGroupThreads = 256;

// D[16x8] += A[16x16] B[16x8], bf16 operands, f32 accumulators.
__device__ __forceinline__ void mmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// (x, y) as bf16 pairs hi and lo with hi + lo = (x, y) to ~16 bits.
__device__ __forceinline__ void splitPair(float x, float y, uint32_t &hi, uint32_t &lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  const __nv_bfloat162 l =
      __floats2bfloat162_rn(x - __low2float(h), y - __high2float(h));
  hi = *reinterpret_cast<const uint32_t *>(&h);
  lo = *reinterpret_cast<const uint32_t *>(&l);
}


template <typename C> struct GroupChunk {
  // Keys a chunk: two tiles of Keys x (D + pad) elements stay under the
  // 48 KiB of static shared memory at D = 128.
  static constexpr int Keys = sizeof(C) == 2 ? 64 : 32;
  // Padding of 16 bytes a row: 16-byte reads of consecutive rows by
  // consecutive threads fall on distinct banks.
  static constexpr int Pad = 16 / sizeof(C);
};

__device__ __forceinline__ void copyAsync16To(uint32_t shared, const void *global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared), "l"(global));
}
__device__ __forceinline__ void copyAsync16(void *shared, const void *global) {
  copyAsync16To(static_cast<uint32_t>(__cvta_generic_to_shared(shared)), global);
}
__device__ __forceinline__ void waitAsyncCopies() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// Eight elements of a cached row as floats, from a 16-byte (bf16) or two
// 16-byte (f32) shared-memory reads.
__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float (&x)[8]) {
  const uint4 packed = *reinterpret_cast<const uint4 *>(p);
  const unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    x[2 * j] = __uint_as_float(words[j] << 16);
    x[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const float *p, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4 *>(p);
  const float4 b = *reinterpret_cast<const float4 *>(p + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
  x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

// The fused RoPE's rotations of the step's position, for the D / 2 pairs of
// the queries (rotations[0]) and of the keys (rotations[1]), a thread a
// pair; they depend on the position and the frequencies only (written by no
// kernel), so the decode kernels compute them before their wait, as
// ropeStoreKernel does.
template <int Half>
__device__ __forceinline__ void stepRotations(const FusedRope &rope, int64_t position,
                                              Rotation (&rotations)[2][Half]) {
  static_assert(2 * Half <= kGroupThreads, "a pair a thread");
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < 2 * Half) {
    const float *frequencies = tid < Half ? rope.qFrequencies : rope.kFrequencies;
    rotations[tid / Half][tid % Half] =
        rotationBy(static_cast<float>(position) * frequencies[tid % Half]);
  }
}

// A key row of a chunk's tile (shared memory) dotted with a query (shared
// memory, f32), D known at compile time: two partial sums halve the
// dependent chain (the group and warp decode kernels' order of sums; the
// dotKey overloads above keep the plain decode kernel's).
template <int D, typename C>
__device__ __forceinline__ float tileKeyDot(const C *key, const float *query) {
  float even = 0.0f, odd = 0.0f;
#pragma unroll
  for (int d = 0; d < D; d += 16) {
    float k8[8], k8b[8];
    load8(key + d, k8);
    load8(key + d + 8, k8b);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      even += query[d + e] * k8[e];
      odd += query[d + 8 + e] * k8b[e];
    }
  }
  return even + odd;
}

// mergeHead for the group's heads [firstHead, firstHead + heads) at once,
// its arithmetic in its order (the merge kernel's sums, bit for bit): the
// splits' log-sum-exps and weights by a thread a (head, split), then the
// outputs by consecutive threads on consecutive d, each split's load
// issued before any product. Merging head after head, each a chain of
// dependent L2 reads, cost ~4 us a head.
constexpr int kMaxGroupSplits = 16;
// D a template argument and the indices 32-bit: `o / D` and `o % D` of a
// 64-bit D were calls to a 64-bit division routine, twice an output.
// The merge's arithmetic for outputs [begin, end) of `heads` heads, split
// r's log-sum-exp of head t and output o read by lseOf(r, t) and
// partialOf(r, o): mergeGroup reads the partials from global memory,
// mergeCluster from the cluster's shared memory; the same sums in the same
// order either way.
template <int D, typename LseOf, typename PartialOf>
__device__ void mergeWeighted(int splits, int heads, int begin, int end, LseOf lseOf,
                              PartialOf partialOf, float *out) {
  __shared__ float weight[kMaxGroup][kMaxGroupSplits];
  __shared__ bool none[kMaxGroup];
  static_assert(kMaxGroup * kMaxGroupSplits <= kGroupThreads, "a thread per (head, split)");
  static_assert(32 % kMaxGroupSplits == 0, "a head's splits in one warp");
  const int tid = static_cast<int>(threadIdx.x);
  // A thread a (head, split): lanes 16 h' .. 16 h' + 15 of a warp hold one
  // head's splits. The maximum by shuffles (exact in any order), the total
  // summed in split order from its lanes' terms, so the weights are the
  // bits one thread a head computed; with one thread a head doing every
  // split, a chain of ~300 instructions, the block's other warps waited at
  // the barrier below for a third of a one-token decode kernel (ncu, 1.1B
  // shape, 8 splits).
  if (tid < kMaxGroup * kMaxGroupSplits) {
    const int h = tid / kMaxGroupSplits, r = tid % kMaxGroupSplits;
    const bool mine = h < heads && r < splits;
    const float lse = mine ? lseOf(r, h) : -INFINITY;
    float maximum = lse;
#pragma unroll
    for (int offset = kMaxGroupSplits / 2; offset > 0; offset /= 2)
      maximum = fmaxf(maximum, __shfl_xor_sync(0xffffffffu, maximum, offset));
    const float term = expf(lse - maximum);
    const int splitZero = (tid % 32) & ~(kMaxGroupSplits - 1); // the lane of split 0
    float total = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxGroupSplits; ++s) {
      const float t = __shfl_sync(0xffffffffu, term, splitZero + s);
      if (s < splits)
        total += t;
    }
    if (mine)
      weight[h][r] = term / total;
    if (h < heads && r == 0)
      none[h] = maximum == -INFINITY;
  }
  __syncthreads();
  for (int o = begin + tid; o < end; o += static_cast<int>(blockDim.x)) {
    const int h = o / D;
    float partial[kMaxGroupSplits];
#pragma unroll
    for (int r = 0; r < kMaxGroupSplits; ++r)
      if (r < splits)
        partial[r] = partialOf(r, o);
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxGroupSplits; ++r)
      if (r < splits)
        sum += weight[h][r] * partial[r];
    out[o] = none[h] ? 0.0f : sum;
  }
}

template <int D>
__device__ void mergeGroup(const float *shard0, int shards, int numHeads, int firstHead,
                           int heads, float *out) {
  const int row = numHeads * D + numHeads;
  const float *first = shard0 + firstHead * D; // the group's first output of split 0
  mergeWeighted<D>(
      shards, heads, 0, heads * D,
      [&](int r, int t) { return __ldcg(shard0 + r * row + numHeads * D + firstHead + t); },
      [&](int r, int o) { return __ldcg(first + r * row + o); }, out + firstHead * D);
}

// mergeGroup for a cluster of the `splits` blocks of one (query row, group)
// (clusterMerge): each split's normalised outputs (partialOut, heads * D)
// and log-sum-exps (partialLse) stay in its shared memory; after a cluster
// barrier every block merges a slice of the outputs, reading the splits'
// partials through distributed shared memory, with mergeGroup's arithmetic
// in its order (the same bits). No fence, counter or L2 round trip: the
// threadfence-reduction merge put three memory latencies after the last
// split's sums.
template <int D>
__device__ void mergeCluster(const float *partialOut, const float *partialLse, int splits,
                             int heads, float *out) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync(); // every split's partial is in its shared memory
  recordKernelMark(6);
  const int outputs = heads * D, share = (outputs + splits - 1) / splits;
  const int first = static_cast<int>(cluster.block_rank()) * share;
  const auto inSplit = [&](const float *p, int r) {
    return *cluster.map_shared_rank(p, static_cast<unsigned>(r));
  };
  mergeWeighted<D>(
      splits, heads, first, first + share < outputs ? first + share : outputs,
      [&](int r, int t) { return inSplit(partialLse + t, r); },
      [&](int r, int o) { return inSplit(partialOut + o, r); }, out);
  // No block leaves while another reads its shared memory. Every read of
  // it is done (its value used), so the arrive needs no release:
  // cluster.sync()'s fence would first wait for this block's output stores.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n"
               "barrier.cluster.wait.aligned;\n" ::: "memory");
}

// With rope.q set (ropeStoreAttend), the kernel also does what
// ropeStoreKernel does for its KV head: the queries of its group are rotated
// from rope.q as they are read (q is not read), and the block whose keys
// hold the step's own row rotates that key, stores it and the value into the
// cache and puts both straight into its tiles. Same rotation (rotationBy,
// the pair's arithmetic) and cache rows as ropeStoreKernel; one launch and
// one global round trip a layer fewer.
// The tensor-core form is held to four blocks a multiprocessor (64
// registers, as it had unbounded before the merge's weights changed form;
// nvcc then gave it 68 at D = 64 and 101 at D = 128). Batched decode is
// sensitive to it: on an H200, 68 registers (three blocks) made a 1.1B
// batch-128 step 5% slower. The others are left to the compiler (0):
// bounded, they spill.
template <typename C, int D, bool Mma>
__global__ void __launch_bounds__(kGroupThreads, Mma ? 4 : 0)
    groupDecodeKernel(const float *q, AttentionGeometry g, float *out, FusedRope rope,
                      bool clusterMerge) {
  using Chunk = GroupChunk<C>;
  constexpr int kKeys = Chunk::Keys, kPitch = D + Chunk::Pad;
  constexpr int kPieces = D * int(sizeof(C)) / 16; // 16-byte pieces a row
  constexpr int kOctets = D / 8; // 8-element pieces of an output row
  __shared__ __align__(16) C keyTile[kKeys * kPitch];
  __shared__ __align__(16) C valueTile[kKeys * kPitch];
  __shared__ __align__(16) float query[kMaxGroup * D];
  __shared__ float score[kMaxGroup * kKeys];
  __shared__ float headMax[kMaxGroup], headSum[kMaxGroup], headCorrection[kMaxGroup];
  __shared__ int64_t rowAt[kKeys];
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  const int64_t r = blockIdx.x, t = g.firstQuery + r, kvHead = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // The group's query heads [firstHead, firstHead + heads): kvHeadOf's
  // inverse (an uneven split's global KV head kvHead + headOffset / kvGroup
  // covers global heads of kvGroup, some of them on other ranks).
  int64_t firstHead, heads;
  if (g.kvGroup > 0) {
    const int64_t global =
        (kvHead + static_cast<int32_t>(g.headOffset) / static_cast<int32_t>(g.kvGroup)) *
            g.kvGroup -
        g.headOffset;
    firstHead = global > 0 ? global : 0;
    const int64_t past = global + g.kvGroup < g.numHeads ? global + g.kvGroup : g.numHeads;
    heads = past - firstHead;
  } else {
    heads = g.numHeads / g.numKvHeads;
    firstHead = kvHead * heads;
  }
  if (heads <= 0)
    return; // an uneven split's KV head without a query head here
  const int32_t seq = g.tokenSeq[t];
  const DecodeBlock block = decodeBlock(g, r, static_cast<int64_t>(g.positions[t]) + 1, D, out);
  const int64_t begin = block.begin, end = block.end; // (the lambda below captures end)
  // Cache row offsets of the chunk of keys from `chunk` (-1: another
  // sequence-parallel rank's block).
  auto findRows = [&](int64_t chunk) {
    const int n = static_cast<int>(end - chunk < kKeys ? end - chunk : kKeys);
    for (int j = tid; j < n; j += kGroupThreads) {
      const int64_t position = chunk + j;
      rowAt[j] = !g.partial || (position / g.blockSize) % g.kvShards == g.kvShard
                     ? cacheRow(g, seq, position) + kvHead * D
                     : -1;
    }
  };
  // Every 16-byte piece of the chunk's key and value rows, all in flight at
  // once; rows of another sequence-parallel rank become zeros. `which`
  // picks the rows: positions before `written` (0), from it (1), all (2).
  const int64_t written = g.positions[t]; // the row this step stores
  const bool fused = rope.q != nullptr;
  auto copyChunk = [&](int64_t chunk, int which) {
    const int n = static_cast<int>(end - chunk < kKeys ? end - chunk : kKeys);
    for (int p = tid; p < n * kPieces; p += kGroupThreads) {
      const int j = p / kPieces, piece = p % kPieces;
      if (which != 2 && (chunk + j >= written) != (which == 1))
        continue;
      C *key = keyTile + j * kPitch + piece * (16 / sizeof(C));
      C *value = valueTile + j * kPitch + piece * (16 / sizeof(C));
      if (rowAt[j] < 0) {
        *reinterpret_cast<uint4 *>(key) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4 *>(value) = make_uint4(0, 0, 0, 0);
        continue;
      }
      const int64_t at = rowAt[j] + piece * (16 / int(sizeof(C)));
      copyAsync16(key, keys + at);
      copyAsync16(value, values + at);
    }
  };
  // The step's tables are uploaded before its first kernel and written by
  // none, and the only cache row the kernel before may still be writing is
  // the one this step stores (DependentLaunch.cuh: every kernel before that
  // one has finished): the first chunk's other rows are in flight before
  // the wait, its last memory latency hidden behind the kernel before.
  // Fused RoPE: the rotations before the wait (stepRotations).
  constexpr int kHalf = D / 2;
  __shared__ Rotation rotations[2][kHalf];
  if (fused)
    stepRotations(rope, written, rotations);
  const bool storesRow = fused && begin <= written && written < end;
  const int64_t writtenRow = storesRow ? cacheRow(g, seq, written) + kvHead * D : 0;
  findRows(begin);
  __syncthreads();
  copyChunk(begin, 0);
  waitForPrecedingKernels();
  allowDependentLaunch();
  // The step's own key (rotated) and value, cached in registers until the
  // chunk that holds the row: thread i < D / 2 the key pair (i, i + D / 2),
  // thread d < D the value d.
  C newKey[2] = {}, newValue = {};
  if (!fused) {
    copyChunk(begin, 1);
    for (int64_t i = tid; i < heads * D; i += kGroupThreads)
      query[i] = q[(r * g.numHeads + firstHead) * D + i];
  } else {
    for (int p = tid; p < static_cast<int>(heads) * kHalf; p += kGroupThreads) {
      const int h = p / kHalf, i = p % kHalf;
      const int64_t at = (r * g.numHeads + firstHead + h) * D + i;
      const RotatedPair x = rotate(rope.q[at], rope.q[at + kHalf], rotations[0][i]);
      query[h * D + i] = x.first;
      query[h * D + i + kHalf] = x.second;
      if (blockIdx.z == 0) { // every output still written, once
        rope.qOut[at] = x.first;
        rope.qOut[at + kHalf] = x.second;
      }
    }
    if (storesRow) {
      const int64_t at = t * g.kvRowStride + kvHead * D;
      if (tid < kHalf) {
        const RotatedPair x = rotate(rope.k[at + tid], rope.k[at + tid + kHalf], rotations[1][tid]);
        rope.kOut[at + tid] = x.first;
        rope.kOut[at + tid + kHalf] = x.second;
        setCached(newKey[0], x.first);
        setCached(newKey[1], x.second);
        static_cast<C *>(g.keys)[writtenRow + tid] = newKey[0];
        static_cast<C *>(g.keys)[writtenRow + tid + kHalf] = newKey[1];
      }
      if (tid < D) {
        setCached(newValue, rope.v[at + tid]);
        static_cast<C *>(g.values)[writtenRow + tid] = newValue;
      }
    }
  }
  // Kernel clock marks (block 0, the first chunk; nothing in other builds):
  // 0 the queries read, 1 the chunk's rows in shared memory, 2 the scores,
  // 3 the softmax, 4 the values, 5-7 the cluster merge (mergeCluster).
  recordKernelMark(0);
  if (tid < kMaxGroup) {
    headMax[tid] = -INFINITY;
    headSum[tid] = 0.0f;
  }
  // The values' sums: a thread owns 8 consecutive outputs (head h, octet)
  // and one of `parts` interleaved shares of each chunk's keys; the parts
  // of an output are lanes of one warp (lane / itemsPerWarp), summed by
  // shuffles at the end. Eight lanes on eight octets of one row read 128
  // contiguous bytes (no bank conflict), and a key costs a thread one
  // 16-byte read and 8 FMAs for 8 outputs (with a thread per output it
  // cost two scalar shared reads an FMA, a quarter of a step's attention).
  const int items = static_cast<int>(heads) * kOctets;
  int parts = 1;
  while (parts < 8 && items * parts * 2 <= kGroupThreads)
    parts *= 2;
  const int itemsPerWarp = 32 / parts, part = lane / itemsPerWarp;
  const int item = warp * itemsPerWarp + lane % itemsPerWarp;
  const bool owner = item < items;
  const int outHead = owner ? item / kOctets : 0, octet = item % kOctets;
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e)
    acc[e] = 0.0f;
  // Mma with a bf16 cache: scores and value sums on tensor cores (mma m16n8k16, the
  // group's heads as rows 0-7 of A; rows 8-15 are zeros). Warp w scores keys
  // 8w .. 8w + 7 of the chunk and sums the values of d-tiles w, w + 8, ..
  // (8 columns each); the queries and probabilities go in as two bf16
  // halves, hi + lo, as the prefill kernel's, so the products keep ~16 bits
  // of the f32 operand. On CUDA cores a score cost ~8 instructions of shared
  // reads, bf16 widening and FMAs per 8 elements: ncu at 1.1B batch 32 saw
  // ~1,900 instructions a warp and 16 cycles between issues. On an H200
  // (ms a step, CUDA cores -> tensor cores): 1.1B batch 32 2.05-2.13 ->
  // 1.87-1.93, batch 128 2.67-2.74 -> 2.42-2.44 (medium); 8B batch 32 6.43
  // -> 5.99; but batch 1, a chain of latencies over a few keys a split, got
  // slower (1.1B 1.24-1.27 -> 1.33-1.37 highest, 8B 4.81 -> 5.07): the
  // launch takes this path from mmaDecodeRows() query rows.
  constexpr bool kMma = Mma && std::is_same_v<C, __nv_bfloat16>;
  constexpr int kDTiles = D / 8, kWarpDTiles = (kDTiles + 7) / 8;
  const int quad = lane / 4, pairLane = lane % 4; // a fragment's row and column pair
  const bool liveRow = quad < heads;
  float accTile[kWarpDTiles][4];
#pragma unroll
  for (int i = 0; i < kWarpDTiles; ++i)
    accTile[i][0] = accTile[i][1] = accTile[i][2] = accTile[i][3] = 0.0f;

  for (int64_t chunk = begin; chunk < end; chunk += kKeys) {
    const int n = static_cast<int>(end - chunk < kKeys ? end - chunk : kKeys);
    if (chunk != begin)
      copyChunk(chunk, fused ? 0 : 2);
    if (storesRow && written < chunk + kKeys) { // fused: the step's row from registers
      const int j = static_cast<int>(written - chunk);
      if (tid < kHalf) {
        keyTile[j * kPitch + tid] = newKey[0];
        keyTile[j * kPitch + tid + kHalf] = newKey[1];
      }
      if (tid < D)
        valueTile[j * kPitch + tid] = newValue;
    }
    if constexpr (kMma) {
      // The value rows past n up to a multiple of 16 enter the sums with
      // probability 0: zeros, not a previous chunk's rows or uninitialised
      // memory (0 * NaN).
      const int tail = ((n + 15) & ~15) - n;
      for (int p = tid; p < tail * kPieces; p += kGroupThreads)
        *reinterpret_cast<uint4 *>(valueTile + (n + p / kPieces) * kPitch +
                                   (p % kPieces) * (16 / int(sizeof(C)))) = make_uint4(0, 0, 0, 0);
    }
    waitAsyncCopies();
    __syncthreads();
    if (chunk == begin)
      recordKernelMark(1);
    // Scores, consecutive threads on consecutive keys of one head (the
    // query read is a broadcast, the key rows distinct banks), over the
    // chunk's keys rounded up to 32 (whole warps past n skip, where
    // kKeys rows a head left two thirds of the threads masked); two
    // partial dot products halve the dependent chain.
    const int keyShift = n > 32 ? 6 : 5, paddedKeys = 1 << keyShift;
    if constexpr (kMma) {
      if (warp < paddedKeys / 8) {
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int c = 0; c < D / 16; ++c) {
          // The query's A fragment, split again each chunk: kept in
          // registers, 4 a 16 dimensions, it cost the kernel its third
          // block a multiprocessor (88 registers at D = 64) and so whole
          // clusters at batch 8.
          uint32_t hi[4] = {0u, 0u, 0u, 0u}, lo[4] = {0u, 0u, 0u, 0u};
          if (liveRow) {
            const float *row = query + quad * D + 16 * c + 2 * pairLane;
            splitPair(row[0], row[1], hi[0], lo[0]);
            splitPair(row[8], row[9], hi[2], lo[2]);
          }
          const C *key = keyTile + (8 * warp + quad) * kPitch + 16 * c + 2 * pairLane;
          const uint32_t b0 = *reinterpret_cast<const uint32_t *>(key);
          const uint32_t b1 = *reinterpret_cast<const uint32_t *>(key + 8);
          mmaBf16(sc, hi, b0, b1);
          mmaBf16(sc, lo, b0, b1);
        }
        if (liveRow)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = 8 * warp + 2 * pairLane + e;
            score[quad * kKeys + j] = j < n && rowAt[j] >= 0 ? sc[e] * g.scale : -INFINITY;
          }
      }
    }
    for (int p = tid; !kMma && p < static_cast<int>(heads) << keyShift; p += kGroupThreads) {
      const int h = p >> keyShift, j = p & (paddedKeys - 1);
      float dot = -INFINITY;
      if (j < n && rowAt[j] >= 0) {
        dot = tileKeyDot<D>(keyTile + j * kPitch, query + h * D) * g.scale;
      }
      score[h * kKeys + j] = dot;
    }
    __syncthreads();
    if (chunk == begin)
      recordKernelMark(2);
    // One warp a head: the chunk's maximum, the running sum's correction,
    // and the scores turned into unnormalised probabilities.
    for (int h = warp; h < heads; h += kGroupThreads / 32) {
      float m = -INFINITY;
      for (int j = lane; j < paddedKeys; j += 32)
        m = fmaxf(m, score[h * kKeys + j]);
      m = warpMaximum(m);
      const float newMax = fmaxf(headMax[h], m);
      float sum = 0.0f;
      for (int j = lane; j < paddedKeys; j += 32) {
        const float s = score[h * kKeys + j];
        const float e = s == -INFINITY ? 0.0f : expf(s - newMax);
        score[h * kKeys + j] = e;
        sum += e;
      }
      sum = warpSumOf(sum);
      if (lane == 0) {
        const float correction =
            headMax[h] == -INFINITY ? 0.0f : expf(headMax[h] - newMax);
        headCorrection[h] = correction;
        headSum[h] = headSum[h] * correction + sum;
        headMax[h] = newMax;
      }
    }
    __syncthreads();
    if (chunk == begin)
      recordKernelMark(3);
    // The scores no longer need this chunk's rows: the next chunk's are
    // looked up while the values are summed.
    if (chunk + kKeys < end)
      findRows(chunk + kKeys);
    // The values (see acc). A masked key's p is 0 and its row zeros.
    if constexpr (kMma) {
      const float correction = liveRow ? headCorrection[quad] : 1.0f;
#pragma unroll
      for (int i = 0; i < kWarpDTiles; ++i) {
        accTile[i][0] *= correction;
        accTile[i][1] *= correction;
      }
      for (int kc = 0; kc < (n + 15) / 16; ++kc) {
        uint32_t hi[4] = {0u, 0u, 0u, 0u}, lo[4] = {0u, 0u, 0u, 0u};
        if (liveRow) {
          const float *p = score + quad * kKeys + 16 * kc + 2 * pairLane;
          splitPair(p[0], p[1], hi[0], lo[0]);
          splitPair(p[8], p[9], hi[2], lo[2]);
        }
#pragma unroll
        for (int i = 0; i < kWarpDTiles; ++i) {
          const int t = warp + 8 * i;
          if (t >= kDTiles)
            break;
          // Lanes 0-15 address keys 16 kc + 0 .. 15 at column 8 t; the
          // transposed 8x8 matrices are the B fragment's two halves.
          const C *v = valueTile + (16 * kc + lane % 16) * kPitch + 8 * t;
          const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(v));
          uint32_t b0, b1;
          asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                       : "=r"(b0), "=r"(b1)
                       : "r"(address));
          mmaBf16(accTile[i], hi, b0, b1);
          mmaBf16(accTile[i], lo, b0, b1);
        }
      }
    }
    if (!kMma && owner) {
      const float correction = headCorrection[outHead];
#pragma unroll
      for (int e = 0; e < 8; ++e)
        acc[e] *= correction;
      const float *p = score + outHead * kKeys;
      const C *column = valueTile + octet * 8;
#pragma unroll 2
      for (int j = part; j < n; j += parts) {
        float v8[8];
        load8(column + j * kPitch, v8);
        const float weight = p[j];
#pragma unroll
        for (int e = 0; e < 8; ++e)
          acc[e] += weight * v8[e];
      }
    }
    __syncthreads(); // before the next chunk's copies overwrite the tiles
  }
  recordKernelMark(4);
  if constexpr (!kMma)
    for (int offset = itemsPerWarp; offset < 32; offset *= 2) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], offset);
    }
  // f(h, d, sum) for each output sum this thread holds (unnormalised).
  const auto eachOutput = [&](auto f) {
    if constexpr (kMma) {
      if (liveRow)
#pragma unroll
        for (int i = 0; i < kWarpDTiles; ++i) {
          const int t = warp + 8 * i;
          if (t < kDTiles) {
            f(quad, 8 * t + 2 * pairLane, accTile[i][0]);
            f(quad, 8 * t + 2 * pairLane + 1, accTile[i][1]);
          }
        }
    } else if (owner && part == 0) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        f(outHead, octet * 8 + e, acc[e]);
    }
  };
  if (clusterMerge) {
    // The queries are no longer read: their shared memory holds this
    // split's outputs for mergeCluster.
    __shared__ float partialLse[kMaxGroup];
    __syncthreads();
    eachOutput([&](int h, int d, float sum) {
      const float total = headSum[h];
      query[h * D + d] = total > 0.0f ? sum / total : 0.0f;
    });
    if (tid < heads)
      partialLse[tid] = headSum[tid] > 0.0f ? headMax[tid] + logf(headSum[tid]) : -INFINITY;
    recordKernelMark(5);
    mergeCluster<D>(query, partialLse, static_cast<int>(g.splits), static_cast<int>(heads),
                    g.mergedOut + (r * g.numHeads + firstHead) * D);
    recordKernelMark(7);
    return;
  }
  eachOutput([&](int h, int d, float sum) {
    const float total = headSum[h];
    block.rowOut[(firstHead + h) * D + d] = total > 0.0f ? sum / total : 0.0f;
  });
  if (block.partial && tid < heads)
    block.rowOut[g.numHeads * D + firstHead + tid] =
        headSum[tid] > 0.0f ? headMax[tid] + logf(headSum[tid]) : -INFINITY;
  // The last split block of this (query row, group) merges.
  if (g.splits <= 1 || !g.mergedOut ||
      !lastSplitToFinish(g.splitCounters + r * g.numHeads + firstHead, g.splits))
    return;
  mergeGroup<D>(out + r * block.outRow, static_cast<int>(g.splits), static_cast<int>(g.numHeads),
                static_cast<int>(firstHead), static_cast<int>(heads), g.mergedOut + r * g.numHeads * D);
}

// A decode step of few query rows (fewer than mmaDecodeRows) with fused
// RoPE over a bf16 cache, head dimension 64 or 128: a warp a query head of
// the group (or more, below). groupDecodeKernel spreads each phase of a
// chunk over all of its threads (scores by (head, key), the softmax by
// head, the values by (head, octet)) with a barrier between phases, four a
// chunk; at batch 1 with 8 splits a block holds ~18 keys, and the kernel
// clock measured ~6.4 us of its 8.2 a layer as fixed (docs/performance.md,
// twentieth session). Here the block meets once a chunk, when its rows are
// in shared memory (the next chunk's copies then go to the other buffer);
// each warp scores its head's keys a lane a key, updates its online
// softmax with shuffles, and sums the value rows with its lanes on
// consecutive dimensions. Same RoPE, cache rows and merge as
// groupDecodeKernel (the rotated queries and keys, the cache and, with a
// cluster, the merge's arithmetic are the same bits); the attention's sums
// are grouped by 32 keys, not 64, so its outputs may differ in the last
// bits. Needs an even head split (ropeStoreAttendApplies).
//
// On an H200 at batch 1 it made the 1.1B (D 64, groups of 8 heads) 6.6%
// faster a step and, a warp a head, the 8B (D 128, groups of 4) 2.5%
// slower (docs/performance.md, twenty-first session): half of its eight
// warps had no head, and each live one walked every key of the chunk in
// turn. Where a group has fewer heads than the block warps, each head
// takes kGroupThreads / 32 / heads warps (warpsPerHead), each a contiguous
// share of the chunk's keys with its own online softmax; the shares merge
// in shared memory before the split merge. With one block a multiprocessor
// at one row (MinBlocks, below) an 8B step went 4.275 -> 4.174 ms on an
// H200 (-2.4%; after 1,024 tokens 4.513 -> 4.415), where the twenty-
// seventh session's build, held to 64 registers with a spill, was 3.2%
// slower (docs/performance.md, twenty-eighth session). Its sums differ in
// the last bits from the group kernel's, and greedy ids on random weights
// may part where two logits nearly tie (the 8B bench's hash after 128
// tokens). LLMIR_CUDA_WARP_DECODE_128=0 keeps the group kernel at 128.
//
// MinBlocks is the launch bound's: 1 for one query row (a batch-1 step's 32
// blocks, one a multiprocessor), where the thread count alone had ptxas
// hold the kernel to 64 registers (12 bytes spilled with the two chunk
// buffers; two other small changes came out at 48 with spills, slower).
// With 1 it takes ~100: on an H200 a 1.1B step after a 1,024-token prompt
// 1.112 -> 1.096 ms from the bound alone, 1.080 with the chunks ahead
// (-2.9%; after 128 tokens, one chunk a split, the same). At batch 8 the
// bound made a step 7.7% slower (what runs beside the kernel's blocks
// under dependent launch has fewer registers left), so more rows keep
// ptxas's choice (0): the chunks ahead there the same after 128 tokens,
// -2.0% after 1,024 (docs/performance.md, twenty-eighth session).
template <int D, int MinBlocks>
__global__ void __launch_bounds__(kGroupThreads, MinBlocks)
    warpDecodeKernel(AttentionGeometry g, float *out, FusedRope rope, bool clusterMerge) {
  using C = __nv_bfloat16;
  using Chunk = GroupChunk<C>;
  constexpr int kKeys = Chunk::Keys, kPitch = D + Chunk::Pad;
  constexpr int kPieces = D * int(sizeof(C)) / 16; // 16-byte pieces a row
  constexpr int kHalf = D / 2;
  constexpr int kDims = D / 32; // a lane's consecutive output dimensions
  static_assert(kDims == 2 || kDims == 4, "D = 64 or 128: a lane's dimensions in one load");
  constexpr int kWarps = kGroupThreads / 32;
  // Two chunks' rows where they fit the 48 KiB of static shared memory (D =
  // 64): the next chunk's copies in flight while this one's are scored
  // (with one, a block of a long context waited a memory latency a chunk
  // with nothing to do).
  constexpr int kBuffers = D == 64 ? 2 : 1;
  __shared__ __align__(16) C keyTiles[kBuffers][kKeys * kPitch];
  __shared__ __align__(16) C valueTiles[kBuffers][kKeys * kPitch];
  C *keyTile = keyTiles[0], *valueTile = valueTiles[0]; // the first chunk's
  // Warp w's rotated query, then (cluster merge) its normalised output.
  __shared__ __align__(16) float query[kMaxGroup * D];
  __shared__ float partialLse[kMaxGroup];
  __shared__ __align__(16) C newRow[2][D]; // the step's key and value
  __shared__ Rotation rotations[2][kHalf];
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  const int64_t r = blockIdx.x, t = g.firstQuery + r, kvHead = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t heads = g.numHeads / g.numKvHeads, firstHead = kvHead * heads;
  const int32_t seq = g.tokenSeq[t];
  const DecodeBlock block = decodeBlock(g, r, static_cast<int64_t>(g.positions[t]) + 1, D, out);
  const int64_t begin = block.begin, end = block.end;
  const int64_t written = g.positions[t]; // the row this step stores
  // Before the wait: the rotations (positions and frequencies, written by
  // no kernel) and the chunk's cached rows but the step's own (every kernel
  // before the one this waits for has finished: DependentLaunch.cuh).
  stepRotations(rope, written, rotations);
  const bool storesRow = begin <= written && written < end;
  const int64_t writtenRow = storesRow ? cacheRow(g, seq, written) + kvHead * D : 0;
  auto copyChunk = [&](int64_t chunk, C *keyTile, C *valueTile) {
    const int n = static_cast<int>(end - chunk < kKeys ? end - chunk : kKeys);
    for (int p = tid; p < n * kPieces; p += kGroupThreads) {
      const int j = p / kPieces, piece = p % kPieces;
      if (chunk + j == written)
        continue; // from newRow
      const int64_t at = cacheRow(g, seq, chunk + j) + kvHead * D + piece * 8;
      copyAsync16(keyTile + j * kPitch + piece * 8, keys + at);
      copyAsync16(valueTile + j * kPitch + piece * 8, values + at);
    }
  };
  copyChunk(begin, keyTile, valueTile);
  __syncthreads(); // the rotations
  waitForPrecedingKernels();
  allowDependentLaunch();
  // Warp w: head w / warpsPerHead of the group, share w % warpsPerHead of
  // each chunk's keys.
  // (Head dim 64 keeps a warp a head: its groups of 8 fill the block.)
  const int warpsPerHead =
      D == 128 && heads > 0 && heads < kWarps ? kWarps / static_cast<int>(heads) : 1;
  const int head = warp / warpsPerHead, share = warp % warpsPerHead;
  const bool live = head < heads;
  float *myQuery = query + head * D;
  const bool rowInFirst = storesRow && written < begin + kKeys;
  const int64_t at = t * g.kvRowStride + kvHead * D; // the step's key and value
  // Every thread's reads of the step's query, key and value before any of
  // its stores (which may alias them, for all the compiler knows): one L2
  // round trip a thread. The key's pairs go to the block's last kHalf
  // threads and the value to the D before them, so no warp holds a query
  // head's pairs and the key's and the value's in a row. Warp 0 did all
  // three in turn, three round trips: on an H200 a 1.1B step after 1,024
  // tokens 1.058 -> 1.050 ms, after 128 0.934 -> 0.932 (the same ids).
  // The twenty-first session's reads first (every read by the same
  // threads) was slower when ptxas held the kernel to 64 registers; it has
  // ~105 under MinBlocks 1 (docs/performance.md, thirty-sixth session).
  constexpr int kQueryPairs = kHalf / 32;
  const bool rotatesQuery = live && share == 0;
  const int keyPair = tid - (kGroupThreads - kHalf);
  const int valueAt = tid - (kGroupThreads - kHalf - D);
  static_assert(kHalf + D <= kGroupThreads, "a thread a key pair and a value");
  const bool rotatesKey = storesRow && keyPair >= 0;
  const bool storesValue = storesRow && valueAt >= 0 && valueAt < D;
  const int64_t queryAt = (r * g.numHeads + firstHead + head) * D;
  float queryPairs[kQueryPairs][2], keyPairs[2] = {0.0f, 0.0f}, value = 0.0f;
  if (rotatesQuery)
#pragma unroll
    for (int p = 0; p < kQueryPairs; ++p) {
      queryPairs[p][0] = rope.q[queryAt + lane + 32 * p];
      queryPairs[p][1] = rope.q[queryAt + lane + 32 * p + kHalf];
    }
  if (rotatesKey) {
    keyPairs[0] = rope.k[at + keyPair];
    keyPairs[1] = rope.k[at + keyPair + kHalf];
  }
  if (storesValue)
    value = rope.v[at + valueAt];
  if (rotatesQuery)
#pragma unroll
    for (int p = 0; p < kQueryPairs; ++p) {
      const int i = lane + 32 * p;
      const RotatedPair x = rotate(queryPairs[p][0], queryPairs[p][1], rotations[0][i]);
      myQuery[i] = x.first;
      myQuery[i + kHalf] = x.second;
      if (blockIdx.z == 0) { // every output still written, once
        rope.qOut[queryAt + i] = x.first;
        rope.qOut[queryAt + i + kHalf] = x.second;
      }
    }
  const int j = static_cast<int>(written - begin);
  if (rotatesKey) {
    const int i = keyPair;
    const RotatedPair x = rotate(keyPairs[0], keyPairs[1], rotations[1][i]);
    rope.kOut[at + i] = x.first;
    rope.kOut[at + i + kHalf] = x.second;
    C first, second;
    setCached(first, x.first);
    setCached(second, x.second);
    static_cast<C *>(g.keys)[writtenRow + i] = first;
    static_cast<C *>(g.keys)[writtenRow + i + kHalf] = second;
    newRow[0][i] = first;
    newRow[0][i + kHalf] = second;
    if (rowInFirst) {
      keyTile[j * kPitch + i] = first;
      keyTile[j * kPitch + i + kHalf] = second;
    }
  }
  if (storesValue) {
    C v;
    setCached(v, value);
    static_cast<C *>(g.values)[writtenRow + valueAt] = v;
    newRow[1][valueAt] = v;
    if (rowInFirst)
      valueTile[j * kPitch + valueAt] = v;
  }
  recordKernelMark(0); // kernel clock builds: the queries and the step's row
  // A later chunk's rows into its buffer: the cached ones copied, the
  // step's own from newRow (written before a barrier above; these stores
  // are seen after the chunk's own barrier).
  const auto fillChunk = [&](int64_t chunk, C *keyTile, C *valueTile) {
    copyChunk(chunk, keyTile, valueTile);
    if (storesRow && written >= chunk && written < chunk + kKeys) {
      const int j = static_cast<int>(written - chunk);
      for (int i = tid; i < D; i += kGroupThreads) {
        keyTile[j * kPitch + i] = newRow[0][i];
        valueTile[j * kPitch + i] = newRow[1][i];
      }
    }
  };
  // The warp's online softmax and its lane's output dimensions.
  float runningMax = -INFINITY, runningSum = 0.0f, acc[kDims];
#pragma unroll
  for (int e = 0; e < kDims; ++e)
    acc[e] = 0.0f;
  for (int64_t chunk = begin, buffer = 0; chunk < end; chunk += kKeys, buffer ^= 1) {
    const int n = static_cast<int>(end - chunk < kKeys ? end - chunk : kKeys);
    keyTile = keyTiles[kBuffers == 2 ? buffer : 0];
    valueTile = valueTiles[kBuffers == 2 ? buffer : 0];
    if (kBuffers == 1 && chunk != begin) {
      __syncthreads(); // every warp is done with the previous chunk's rows
      fillChunk(chunk, keyTile, valueTile);
    }
    waitAsyncCopies(); // this chunk's copies (the only ones in flight)
    // This chunk's rows for every warp; every warp done with the other
    // buffer (the chunk before), which the next chunk's copies take.
    __syncthreads();
    if (chunk == begin)
      recordKernelMark(1);
    if (const int64_t next = chunk + kKeys; kBuffers == 2 && next < end)
      fillChunk(next, keyTiles[(buffer ^ 1) % kBuffers], valueTiles[(buffer ^ 1) % kBuffers]);
    if (!live)
      continue;
    // This warp's share of the chunk's keys: [from, to).
    const int from = n * share / warpsPerHead, to = n * (share + 1) / warpsPerHead;
    for (int base = from; base < to; base += 32) {
      // Scores, a lane a key (tileKeyDot, as groupDecodeKernel's).
      const int j = base + lane;
      float score = -INFINITY;
      if (j < to) {
        score = tileKeyDot<D>(keyTile + j * kPitch, myQuery) * g.scale;
      }
      const float newMax = fmaxf(runningMax, warpMaximum(score));
      const float weight = j < to ? expf(score - newMax) : 0.0f;
      const float correction = runningMax == -INFINITY ? 0.0f : expf(runningMax - newMax);
      runningSum = runningSum * correction + warpSumOf(weight);
      runningMax = newMax;
#pragma unroll
      for (int e = 0; e < kDims; ++e)
        acc[e] *= correction;
      // Values: lane l sums dimensions kDims l .. kDims l + kDims - 1.
      const int count = to - base < 32 ? to - base : 32;
      for (int k = 0; k < count; ++k) {
        const float p = __shfl_sync(0xffffffffu, weight, k);
        const C *v = valueTile + (base + k) * kPitch + lane * kDims;
        float x[kDims];
        if constexpr (kDims == 2) {
          const unsigned word = *reinterpret_cast<const unsigned *>(v);
          x[0] = __uint_as_float(word << 16);
          x[1] = __uint_as_float(word & 0xffff0000u);
        } else {
          const uint2 words = *reinterpret_cast<const uint2 *>(v);
          x[0] = __uint_as_float(words.x << 16);
          x[1] = __uint_as_float(words.x & 0xffff0000u);
          x[2] = __uint_as_float(words.y << 16);
          x[3] = __uint_as_float(words.y & 0xffff0000u);
        }
#pragma unroll
        for (int e = 0; e < kDims; ++e)
          acc[e] += p * x[e];
      }
    }
  }
  recordKernelMark(4);
  if (D == 128 && warpsPerHead > 1) {
    // A head's shares: share s > 0 leaves its state in row `warp` of the
    // queries (no longer read once every warp is past the loop), share 0
    // folds them in, in share order.
    __shared__ float shareMax[kWarps], shareSum[kWarps];
    __syncthreads();
    if (live && share > 0) {
#pragma unroll
      for (int e = 0; e < kDims; ++e)
        query[warp * D + lane * kDims + e] = acc[e];
      if (lane == 0) {
        shareMax[warp] = runningMax;
        shareSum[warp] = runningSum;
      }
    }
    __syncthreads();
    if (live && share == 0)
      for (int other = warp + 1; other < warp + warpsPerHead; ++other) {
        const float otherMax = shareMax[other], newMax = fmaxf(runningMax, otherMax);
        if (newMax == -INFINITY)
          continue; // neither has seen a key
        const float mine = runningMax == -INFINITY ? 0.0f : expf(runningMax - newMax);
        const float theirs = otherMax == -INFINITY ? 0.0f : expf(otherMax - newMax);
        runningSum = runningSum * mine + shareSum[other] * theirs;
#pragma unroll
        for (int e = 0; e < kDims; ++e)
          acc[e] = acc[e] * mine + query[other * D + lane * kDims + e] * theirs;
        runningMax = newMax;
      }
    __syncthreads(); // the shares' rows are read before row `head` is written below
  }
  const bool writes = live && share == 0;
  const float lse = runningSum > 0.0f ? runningMax + logf(runningSum) : -INFINITY;
  if (clusterMerge) {
    // The queries are no longer read: the warp's row holds its output.
    if (writes) {
#pragma unroll
      for (int e = 0; e < kDims; ++e)
        myQuery[lane * kDims + e] = runningSum > 0.0f ? acc[e] / runningSum : 0.0f;
      if (lane == 0)
        partialLse[head] = lse;
    }
    recordKernelMark(5);
    mergeCluster<D>(query, partialLse, static_cast<int>(g.splits), static_cast<int>(heads),
                    g.mergedOut + (r * g.numHeads + firstHead) * D);
    recordKernelMark(7);
    return;
  }
  if (writes) {
#pragma unroll
    for (int e = 0; e < kDims; ++e)
      block.rowOut[(firstHead + head) * D + lane * kDims + e] =
          runningSum > 0.0f ? acc[e] / runningSum : 0.0f;
    if (block.partial && lane == 0)
      block.rowOut[g.numHeads * D + firstHead + head] = lse;
  }
  // The last split block of this (query row, group) merges.
  if (g.splits <= 1 || !g.mergedOut ||
      !lastSplitToFinish(g.splitCounters + r * g.numHeads + firstHead, g.splits))
    return;
  mergeGroup<D>(out + r * block.outRow, static_cast<int>(g.splits), static_cast<int>(g.numHeads),
                static_cast<int>(firstHead), static_cast<int>(heads),
                g.mergedOut + r * g.numHeads * D);
}

// Prefill (an f32 cache, or head dimensions the tensor-core kernel below
// does not take): the step's rows in tiles of up to kPrefillTileRows
// consecutive rows of one sequence (tiles[2 i] = first row, tiles[2 i + 1] =
// count), one block per (half tile of kTileQueries rows, head). Key and value tiles of kTileKeys rows are read from the
// paged cache once into shared memory (widened to f32) and used by every
// query of the tile, flash-attention style: each warp owns kTileQueries /
// kWarps queries, each lane one key of the tile for the scores and strided
// head dimensions for the outputs, with an online softmax per query. The
// per-(token, head) kernel read every key once per query.
constexpr int kTileQueries = 32;
static_assert(kPrefillTileRows == 2 * kTileQueries, "a tile is two blocks' rows");
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
  // A tile of kPrefillTileRows rows is two of this kernel's: blockIdx.z
  // picks the half.
  const int64_t firstRow = tiles[2 * blockIdx.x] + int64_t(kTileQueries) * blockIdx.z;
  const int64_t count = min(int64_t(kTileQueries),
                            tiles[2 * blockIdx.x + 1] - int64_t(kTileQueries) * blockIdx.z);
  if (count <= 0)
    return;
  const int64_t h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  const int64_t kvHead = kvHeadOf(g, h);
  const int32_t seq = g.tokenSeq[firstRow];
  for (int64_t i = threadIdx.x; i < kTileQueries * D; i += blockDim.x) {
    const int64_t r = i / D;
    queries[i] = r < count ? q[((firstRow + r) * g.numHeads + h) * D + i % D] : 0.0f;
  }
  int64_t first = 0, last = 0;
  tileKeyRange(g, firstRow, count, first, last);
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

// Prefill on tensor cores, for a bf16 cache and a head dimension a multiple
// of 16 (at most 128): FlashAttention-2's loop with mma.sync m16n8k16, one
// block of 4 warps per (tile of up to 64 rows, head), each warp 16 rows, key
// and value tiles of 64 rows read from the paged cache into shared memory.
// The f32 queries and probabilities go in as two bf16 halves (hi + lo, as
// the split GEMM's activations) against the cache's exact bf16 keys and
// values, so the products keep ~16 bits of the f32 operand: within 1e-5 of
// the f32 kernels, where bf16 queries would be off by ~4e-3 (what medium
// matmul precision, bf16Queries, accepts for half the work). The CUDA-core
// tiled kernel ran at ~3.4 TFLOP/s, most of a 2,048-token prefill.
constexpr int kMmaKeys = 64;

// bf16 per shared row of a key or value tile: fragment reads hit distinct
// banks.
__host__ __device__ constexpr int mmaPrefillPitch(int D) { return D + 8; }
// Two tiles of keys and two of values: 36 KiB at D = 64, 68 KiB at 128 (past
// the 48 KiB a kernel gets without asking: allowDynamicShared).
constexpr size_t mmaPrefillSharedBytes(int D) {
  return size_t(4) * kMmaKeys * mmaPrefillPitch(D) * sizeof(__nv_bfloat16);
}

// 2^x on the special-function unit with a subnormal result flushed to
// zero: exp2f adds a rescaling for subnormal results, instructions a
// probability below 2^-126 does not need.
__device__ __forceinline__ float exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// (x, y) rounded to a bf16 pair, x in the low half.
__device__ __forceinline__ uint32_t packBf16(float x, float y) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<const uint32_t *>(&h);
}

// The loop's instructions a 64-key tile, halved (ncu, 1.1B shape, 2,048
// tokens, medium: 79.8M -> 38.8M instructions, 229 -> 158 us a layer at
// base clocks; a whole prefill 13.3 -> 12.0 ms, highest 20.7 -> 19.6 on an
// H200): key fragments by ldmatrix (four 8x8 matrices a load, where each
// mma took two 32-bit shared reads); the mask only on tiles some row of
// the block must not see whole (the block's bounds, so the branch is
// uniform); the running maximum over unscaled scores, each probability
// one FFMA and one MUFU.EX2 (exp2f's subnormal rescaling dropped: a
// probability below 2^-126 flushes to 0); cache rows found with a shift
// where the block size is a power of two, in 32-bit arithmetic; the tile's
// key range by warp reductions over the rows' positions, not a serial loop
// in every thread. The tile copies without a branch a copy (requestTile):
// 126 -> 114 us a layer (medium), 171 -> 156 (highest). 131 registers at
// D = 64 (three blocks a multiprocessor; bounding it to four spilled and
// measured the same). AlignedCopies (D <= 64): the copies' offsets
// hoisted out of the loop, 121 -> 112 us at medium, bounded to three blocks
// (168 registers and 32 bytes spilled at either precision; 176 unbounded).
// Needs g.scale > 0 (the maximum is taken before scaling).
template <int D, bool Split, bool AlignedCopies>
__global__ void __launch_bounds__(128, AlignedCopies ? 3 : 0)
    mmaPrefillAttendKernel(const float *q, AttentionGeometry g, const int32_t *tiles,
                           float *out, bool headsFirst, bool sumByMma) {
  constexpr int kPitch = mmaPrefillPitch(D);
  constexpr int kChunks = D / 16, kDTiles = D / 8, kKeyTiles = kMmaKeys / 8;
  constexpr int kPieces = D / 8; // 16-byte pieces of a cached row
  constexpr int kCopies = kMmaKeys * kPieces / 128; // a thread's pieces of a tile
  static_assert(kMmaKeys * kPieces % 128 == 0, "whole pieces per thread");
  extern __shared__ __align__(16) __nv_bfloat16 tileBuffers[];
  __shared__ int32_t warpBounds[4][4];
  // The last tiles of a sequence see the most keys: they start first
  // (headsFirst: the heads in x, the tiles in y; launchMmaPrefillAttend).
  const int tile = static_cast<int>(headsFirst ? gridDim.y - 1 - blockIdx.y
                                               : gridDim.x - 1 - blockIdx.x);
  const int firstRow = tiles[2 * tile], count = tiles[2 * tile + 1];
  const int h = static_cast<int>(headsFirst ? blockIdx.x : blockIdx.y);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int quad = lane / 4, pair = lane % 4;
  const auto *keys = static_cast<const __nv_bfloat16 *>(g.keys);
  const auto *values = static_cast<const __nv_bfloat16 *>(g.values);
  const int64_t kvOffset = kvHeadOf(g, h) * D;
  const int32_t *blockTable = g.blockTables + g.tokenSeq[firstRow] * g.blockTableStride;
  const int32_t blockSize = static_cast<int32_t>(g.blockSize);
  const bool pow2Blocks = (blockSize & (blockSize - 1)) == 0;
  const int blockShift = __ffs(blockSize) - 1;
  const int64_t rowStride = g.numKvHeads * D;
  // The cache row (element offset) of key position j.
  const auto rowOf = [&](int32_t j) {
    const int32_t index = pow2Blocks ? j >> blockShift : j / blockSize;
    const int32_t within = pow2Blocks ? j & (blockSize - 1) : j % blockSize;
    return (int64_t(blockTable[index]) * blockSize + within) * rowStride;
  };
  // This thread's rows (the fragments' row and row + 8 of the warp's 16);
  // a row past count sees nothing (-1) and is not written.
  const int32_t window = static_cast<int32_t>(g.slidingWindow);
  int32_t position[2], windowStart[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + quad + 8 * i;
    position[i] = r < count ? g.positions[firstRow + r] : -1;
    windowStart[i] = window > 0 && position[i] + 1 > window ? position[i] + 1 - window : 0;
  }
  // The block's bounds over its rows: keys [first, last] are seen by some
  // row, keys [seesFrom, seesUpTo] by every row.
  {
    const bool valid0 = position[0] >= 0, valid1 = position[1] >= 0;
    const int32_t last = __reduce_max_sync(0xffffffffu, max(position[0], position[1]));
    const int32_t first = __reduce_min_sync(
        0xffffffffu, min(valid0 ? windowStart[0] : INT_MAX, valid1 ? windowStart[1] : INT_MAX));
    const int32_t upTo = __reduce_min_sync(
        0xffffffffu, min(valid0 ? position[0] : INT_MAX, valid1 ? position[1] : INT_MAX));
    const int32_t from = __reduce_max_sync(0xffffffffu, max(windowStart[0], windowStart[1]));
    if (lane == 0) {
      warpBounds[warp][0] = last;
      warpBounds[warp][1] = first;
      warpBounds[warp][2] = upTo;
      warpBounds[warp][3] = from;
    }
  }
  __syncthreads();
  int32_t last = -1, first = INT_MAX, seesUpTo = INT_MAX, seesFrom = 0;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    last = max(last, warpBounds[w][0]);
    first = min(first, warpBounds[w][1]);
    seesUpTo = min(seesUpTo, warpBounds[w][2]);
    seesFrom = max(seesFrom, warpBounds[w][3]);
  }
  // The step's tables above; the queries, rotations and cache rows below
  // are the kernels' before it (launchMmaPrefillAttend: a dependent launch).
  waitForPrecedingKernels();
  allowDependentLaunch();
  const float scaleLog2 = g.scale * 1.4426950408889634f; // log2(e)
  // Q as A fragments: register k holds row (k % 2 ? +8), columns 16 c + 8
  // (k / 2) + 2 pair and the next; the lo halves only for Split.
  uint32_t qHi[kChunks][4], qLo[Split ? kChunks : 1][4];
  const auto queryPair = [&](int c, int k) {
    const int r = warp * 16 + quad + 8 * (k % 2);
    return r < count ? *reinterpret_cast<const float2 *>(
                           q + int64_t(firstRow + r) * g.qRowStride + int64_t(h) * D + 16 * c +
                           8 * (k / 2) + 2 * pair)
                     : make_float2(0.0f, 0.0f);
  };
  const auto setQuery = [&](int c, int k, float2 v) {
    if constexpr (Split)
      splitPair(v.x, v.y, qHi[c][k], qLo[c][k]);
    else
      qHi[c][k] = packBf16(v.x, v.y);
  };
  if (g.queryRotations) {
    // RoPE folded in (the ROPE wrote no rotated q): the pair (d, d + D/2)
    // of a row lies in chunks c and c + D/32 of the same register k, so
    // each thread rotates its own values by ropeStoreKernel's rotations.
    // They come from its table: computed here, every head's blocks took the
    // same double-precision sincos again (2M a layer at 2,048 tokens) and
    // the kernel got slower by what the ROPE launch saved.
    static_assert(D % 32 == 0 || D == 16, "the rotation's pairs in one thread");
    if constexpr (D % 32 == 0) {
      constexpr int kHalfChunks = kChunks / 2;
#pragma unroll
      for (int c = 0; c < kHalfChunks; ++c)
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 a = queryPair(c, k), b = queryPair(c + kHalfChunks, k);
          const int r = warp * 16 + quad + 8 * (k % 2);
          const int column = 16 * c + 8 * (k / 2) + 2 * pair;
          // Rows past count read row 0's rotations (their values are zeros).
          const int64_t row = firstRow + (r < count ? r : 0);
          const float4 rotations = *reinterpret_cast<const float4 *>(
              g.queryRotations + (row * (D / 2) + column) * 2);
          const RotatedPair x = rotate(a.x, b.x, Rotation{rotations.x, rotations.y});
          const RotatedPair y = rotate(a.y, b.y, Rotation{rotations.z, rotations.w});
          setQuery(c, k, make_float2(x.first, y.first));
          setQuery(c + kHalfChunks, k, make_float2(x.second, y.second));
        }
    }
  } else {
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
#pragma unroll
      for (int k = 0; k < 4; ++k)
        setQuery(c, k, queryPair(c, k));
  }
  float acc[kDTiles][4];
#pragma unroll
  for (int t = 0; t < kDTiles; ++t)
    acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  float runningMax[2] = {-INFINITY, -INFINITY}, runningSum[2] = {0.0f, 0.0f};
  // sumByMma: the rows' sums of P as one more product, P times a column of
  // ones (an n8 tile of B, all 1.0: 0x3F80 pairs), in C fragments like
  // acc's (elements 0, 1: row; 2, 3: row + 8), rescaled with acc; each
  // thread holds its rows' whole sums, no shuffles. Where the FADDs of
  // the scores were a tile's 32 instructions a warp, it is 4 mma.
  float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  constexpr uint32_t kOnes = 0x3F803F80u;

  // A tile's key and value rows, 16 bytes a copy, asynchronously; past
  // `last` zeros (their probabilities are 0, and 0 * garbage could be NaN).
  // One commit group a tile.
  //
  // A tile every key of which is seen (all but a sequence's last) takes
  // the branch-free path: the thread's block-table entries are requested
  // together and each copy's address is one 32 x 32 -> 64-bit multiply-add
  // (a block's elements and a row's offset within it fit 32 bits: the
  // host's blockElements check). With a branch per copy, each copy waited
  // for its own table entry in turn, and its 64-bit row arithmetic made
  // the copies a third of the kernel's stall samples (ncu, 2,048 tokens).
  const int32_t blockElements = blockSize * static_cast<int32_t>(rowStride);
  const int32_t headColumn = static_cast<int32_t>(kvOffset);
  // Where a cache block's rows divide a tile (a power of two up to 64 rows,
  // the usual case), a thread's copies read the same row of their blocks
  // and write the same shared rows in every tile: only the blocks' table
  // entries change. Those parts are computed once (the copies' index
  // arithmetic was a third of the loop's instructions, ncu and SASS).
  const bool tileAligned = AlignedCopies && pow2Blocks && blockSize <= kMmaKeys;
  // Copy i of a thread: key firstKey + i kKeysAPass of the tile, the same
  // 16-byte piece of every row.
  constexpr int kKeysAPass = 128 / kPieces;
  const int firstKey = tid / kPieces, piece = tid % kPieces;
  const uint32_t copyTo = // shared byte address of copy 0 in buffer 0's key tile
      static_cast<uint32_t>(__cvta_generic_to_shared(tileBuffers + firstKey * kPitch + piece * 8));
  const int32_t pieceColumn = headColumn + piece * 8;
  constexpr uint32_t kTileBytes = kMmaKeys * kPitch * sizeof(__nv_bfloat16);
  const auto requestTile = [&](int32_t tileBase, int buffer) {
    __nv_bfloat16 *keyTile = tileBuffers + buffer * 2 * kMmaKeys * kPitch;
    __nv_bfloat16 *valueTile = keyTile + kMmaKeys * kPitch;
    if (tileAligned && tileBase + kMmaKeys - 1 <= last) {
      const int32_t *entries = blockTable + (tileBase >> blockShift);
      int32_t entry[kCopies];
#pragma unroll
      for (int i = 0; i < kCopies; ++i)
        entry[i] = entries[(firstKey + i * kKeysAPass) >> blockShift];
      const uint32_t to = copyTo + buffer * 2 * kTileBytes;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int32_t within = (firstKey + i * kKeysAPass) & (blockSize - 1);
        const int64_t at = int64_t(entry[i]) * blockElements +
                           (within * static_cast<int32_t>(rowStride) + pieceColumn);
        const uint32_t row = to + i * kKeysAPass * kPitch * sizeof(__nv_bfloat16);
        copyAsync16To(row, keys + at);
        copyAsync16To(row + kTileBytes, values + at);
      }
    } else if (tileBase + kMmaKeys - 1 <= last) {
      int32_t entry[kCopies], within[kCopies];
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int32_t j = tileBase + (tid + 128 * i) / kPieces;
        entry[i] = blockTable[pow2Blocks ? j >> blockShift : j / blockSize];
        within[i] = pow2Blocks ? j & (blockSize - 1) : j % blockSize;
      }
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int p = tid + 128 * i, key = p / kPieces, piece = p % kPieces;
        const int64_t at = int64_t(entry[i]) * blockElements +
                           (within[i] * static_cast<int32_t>(rowStride) + headColumn + piece * 8);
        copyAsync16(keyTile + key * kPitch + piece * 8, keys + at);
        copyAsync16(valueTile + key * kPitch + piece * 8, values + at);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int p = tid + 128 * i, key = p / kPieces, piece = p % kPieces;
        const int32_t j = tileBase + key;
        __nv_bfloat16 *k = keyTile + key * kPitch + piece * 8, *v = valueTile + key * kPitch + piece * 8;
        if (j <= last) {
          const int64_t at = rowOf(j) + kvOffset + piece * 8;
          copyAsync16(k, keys + at);
          copyAsync16(v, values + at);
        } else {
          *reinterpret_cast<uint4 *>(k) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4 *>(v) = make_uint4(0, 0, 0, 0);
        }
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  const int32_t firstBase = first - first % kMmaKeys;
  requestTile(firstBase, 0);
  int buffer = 0;
  for (int32_t base = firstBase; base <= last; base += kMmaKeys, buffer ^= 1) {
    __syncthreads(); // the other buffer (the previous tile) is no longer read
    if (base + kMmaKeys <= last)
      requestTile(base + kMmaKeys, buffer ^ 1);
    else
      asm volatile("cp.async.commit_group;\n" ::); // an empty group: the wait below is the same
    asm volatile("cp.async.wait_group 1;\n" ::: "memory"); // this tile's copies, not the next's
    __syncthreads();
    const __nv_bfloat16 *keyTile = tileBuffers + buffer * 2 * kMmaKeys * kPitch;
    const __nv_bfloat16 *valueTile = keyTile + kMmaKeys * kPitch;
    // Scores: C fragments, element e of n-tile t is row (e / 2 ? +8) and
    // key base + 8 t + 2 pair + e % 2. Lane l addresses row l % 8 of
    // matrix l / 8 of an ldmatrix: keys 8 t .., columns 16 c + 8 (l / 8),
    // so one load is the B fragments of chunks c and c + 1.
    float s[kKeyTiles][4];
#pragma unroll
    for (int t = 0; t < kKeyTiles; ++t) {
      s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
      const __nv_bfloat16 *keyRow = keyTile + (8 * t + lane % 8) * kPitch;
#pragma unroll
      for (int c = 0; c < kChunks; c += 2) {
        uint32_t b[4];
        const uint32_t address = static_cast<uint32_t>(
            __cvta_generic_to_shared(keyRow + 16 * c + 8 * (c + 1 < kChunks ? lane / 8 : (lane / 8) % 2)));
        if (c + 1 < kChunks)
          asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                       : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                       : "r"(address));
        else
          asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                       : "=r"(b[0]), "=r"(b[1])
                       : "r"(address));
        mmaBf16(s[t], qHi[c], b[0], b[1]);
        if constexpr (Split)
          mmaBf16(s[t], qLo[c], b[0], b[1]);
        if (c + 1 < kChunks) {
          mmaBf16(s[t], qHi[c + 1], b[2], b[3]);
          if constexpr (Split)
            mmaBf16(s[t], qLo[c + 1], b[2], b[3]);
        }
      }
    }
    // The mask only where some row of the block must not see the whole
    // tile (the diagonal tiles, a sliding window's edge): block-uniform.
    float tileMax[2] = {-INFINITY, -INFINITY};
    if (base + kMmaKeys - 1 <= seesUpTo && base >= seesFrom) {
#pragma unroll
      for (int t = 0; t < kKeyTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          tileMax[e / 2] = fmaxf(tileMax[e / 2], s[t][e]);
    } else {
#pragma unroll
      for (int t = 0; t < kKeyTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e / 2;
          const int32_t j = base + 8 * t + 2 * pair + e % 2;
          s[t][e] = j <= position[i] && j >= windowStart[i] ? s[t][e] : -INFINITY;
          tileMax[i] = fmaxf(tileMax[i], s[t][e]);
        }
    }
    // Base 2, the scale folded in: p = 2^(s scaleLog2 - max scaleLog2), one
    // FFMA and one MUFU.EX2; a masked score (-inf) gives 0, and a row that
    // has seen no key yet takes 0 as its scaled maximum (not -inf - -inf).
    float scaledMax[2], correction[2], tileSum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // The four lanes of a row hold its 64 keys between them.
      tileMax[i] = fmaxf(tileMax[i], __shfl_xor_sync(0xffffffffu, tileMax[i], 1));
      tileMax[i] = fmaxf(tileMax[i], __shfl_xor_sync(0xffffffffu, tileMax[i], 2));
      const float newMax = fmaxf(runningMax[i], tileMax[i]);
      scaledMax[i] = newMax == -INFINITY ? 0.0f : newMax * scaleLog2;
      correction[i] = exp2Approx(fmaf(runningMax[i], scaleLog2, -scaledMax[i]));
      runningMax[i] = newMax;
    }
#pragma unroll
    for (int t = 0; t < kKeyTiles; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[t][e] = exp2Approx(fmaf(s[t][e], scaleLog2, -scaledMax[e / 2]));
        if (!sumByMma)
          tileSum[e / 2] += s[t][e];
      }
    // Each lane's share of its rows' sums (the lanes are summed at the end).
    if (!sumByMma) {
      runningSum[0] = runningSum[0] * correction[0] + tileSum[0];
      runningSum[1] = runningSum[1] * correction[1] + tileSum[1];
    }
#pragma unroll
    for (int t = 0; t < kDTiles; ++t) {
      acc[t][0] *= correction[0];
      acc[t][1] *= correction[0];
      acc[t][2] *= correction[1];
      acc[t][3] *= correction[1];
    }
    if (sumByMma) {
      sums[0] *= correction[0];
      sums[1] *= correction[0];
      sums[2] *= correction[1];
      sums[3] *= correction[1];
    }
    // acc += P V: two adjacent score tiles are one A fragment (16 keys);
    // the value fragments come transposed out of the row-major tile.
#pragma unroll
    for (int kc = 0; kc < kMmaKeys / 16; ++kc) {
      uint32_t pHi[4], pLo[4];
      if constexpr (Split) {
        splitPair(s[2 * kc][0], s[2 * kc][1], pHi[0], pLo[0]);
        splitPair(s[2 * kc][2], s[2 * kc][3], pHi[1], pLo[1]);
        splitPair(s[2 * kc + 1][0], s[2 * kc + 1][1], pHi[2], pLo[2]);
        splitPair(s[2 * kc + 1][2], s[2 * kc + 1][3], pHi[3], pLo[3]);
      } else {
        pHi[0] = packBf16(s[2 * kc][0], s[2 * kc][1]);
        pHi[1] = packBf16(s[2 * kc][2], s[2 * kc][3]);
        pHi[2] = packBf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        pHi[3] = packBf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
      }
      if (sumByMma) {
        mmaBf16(sums, pHi, kOnes, kOnes);
        if constexpr (Split)
          mmaBf16(sums, pLo, kOnes, kOnes);
      }
#pragma unroll
      for (int t = 0; t < kDTiles; t += 2) {
        // Lane l addresses row l % 8 of matrix l / 8: keys 16 kc + 8 (m % 2),
        // columns 8 (t + m / 2).
        const int m = lane / 8;
        const __nv_bfloat16 *v =
            valueTile + (16 * kc + 8 * (m % 2) + lane % 8) * kPitch + 8 * (t + m / 2);
        const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(v));
        uint32_t b[4];
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                     : "r"(address));
        mmaBf16(acc[t], pHi, b[0], b[1]);
        mmaBf16(acc[t + 1], pHi, b[2], b[3]);
        if constexpr (Split) {
          mmaBf16(acc[t], pLo, b[0], b[1]);
          mmaBf16(acc[t + 1], pLo, b[2], b[3]);
        }
      }
    }
  }
  if (sumByMma) {
    runningSum[0] = sums[0];
    runningSum[1] = sums[2];
  } else {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      runningSum[i] += __shfl_xor_sync(0xffffffffu, runningSum[i], 1);
      runningSum[i] += __shfl_xor_sync(0xffffffffu, runningSum[i], 2);
    }
  }
  auto *hi = static_cast<uint32_t *>(g.outHi), *lo = static_cast<uint32_t *>(g.outLo);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + quad + 8 * i;
    if (r >= count)
      continue;
    const int64_t at = (int64_t(firstRow + r) * g.numHeads + h) * D + 2 * pair;
#pragma unroll
    for (int t = 0; t < kDTiles; ++t) {
      const float2 o =
          make_float2(acc[t][2 * i] / runningSum[i], acc[t][2 * i + 1] / runningSum[i]);
      if (out)
        *reinterpret_cast<float2 *>(out + at + 8 * t) = o;
      // The O projection's halves (two bf16 a 32-bit word): its split
      // launch's arithmetic.
      if (hi) {
        uint32_t h, l;
        splitPair(o.x, o.y, h, l);
        hi[(at + 8 * t) / 2] = h;
        if (lo)
          lo[(at + 8 * t) / 2] = l;
      }
    }
  }
}

// One block per (token, head): the exact merge of the shards' partials,
// o = sum_r exp(lse_r - lse) o_r / sum_r exp(lse_r - lse), as the CPU's.
__global__ void mergeKernel(const float *gathered, int64_t shards,
                            int64_t numHeads, int64_t headDim, float *out) {
  beginDependentKernel();
  const int64_t t = blockIdx.x, h = blockIdx.y;
  mergeHead(gathered + t * shards * (numHeads * headDim + numHeads), shards, numHeads, headDim,
            h, out + (t * numHeads + h) * headDim);
}

} // namespace

int storeKeysAndValues(Stream stream, const float *k, const float *v,
                       const AttentionGeometry &g) {
  if (g.numTokens > 0 && g.bf16Cache)
    launchDependent(storeKernel<__nv_bfloat16>, static_cast<unsigned>(g.numTokens), 128, 0,
                    stream, k, v, g);
  else if (g.numTokens > 0)
    launchDependent(storeKernel<float>, static_cast<unsigned>(g.numTokens), 128, 0, stream, k,
                    v, g);
  return cudaGetLastError();
}

int ropeAndStore(Stream stream, const float *q, float *qOut, int64_t qHeads,
                 const float *qFrequencies, const float *k, float *kOut,
                 const float *kFrequencies, const float *v, const AttentionGeometry &g,
                 float *queryRotations, void *dense) {
  if (g.numTokens <= 0)
    return cudaGetLastError();
  // Parts of a token's heads, one a block: as many as give the grid ~4
  // blocks a multiprocessor of an H100/H200 (a head a thread lane at most),
  // one from 528 tokens (a prefill: a rotation a thread serves many heads).
  constexpr int64_t kBlocksWanted = 4 * 132;
  const int64_t heads = qHeads + g.numKvHeads, lanes = kRopeThreads / (g.headDim / 2);
  const int64_t mostParts = (heads + lanes - 1) / lanes;
  const int64_t parts =
      std::clamp<int64_t>((kBlocksWanted + g.numTokens - 1) / g.numTokens, 1, mostParts);
  const int headsPerPart = static_cast<int>((heads + parts - 1) / parts);
  const dim3 blocks(static_cast<unsigned>(g.numTokens),
                    static_cast<unsigned>((heads + headsPerPart - 1) / headsPerPart));
  auto *rotations = reinterpret_cast<Rotation *>(queryRotations); // [cos, sin] pairs
  auto *denseRows = static_cast<__nv_bfloat16 *>(dense);
  if (g.bf16Cache)
    launchDependent(ropeStoreKernel<__nv_bfloat16>, blocks, kRopeThreads, 0, stream, q, qOut,
                    qHeads, qFrequencies, k, kOut, kFrequencies, v, rotations, denseRows, g,
                    headsPerPart);
  else
    launchDependent(ropeStoreKernel<float>, blocks, kRopeThreads, 0, stream, q, qOut, qHeads,
                    qFrequencies, k, kOut, kFrequencies, v, rotations, denseRows, g,
                    headsPerPart);
  return cudaGetLastError();
}

namespace {
template <int PerLane>
void launchAttend(Stream stream, const float *q, const AttentionGeometry &g, float *out) {
  const dim3 grid(static_cast<unsigned>(g.numQueries), static_cast<unsigned>(g.numHeads),
                  static_cast<unsigned>(g.splits > 1 ? g.splits : 1));
  if (g.bf16Cache)
    launchDependent(attendKernel<__nv_bfloat16, PerLane>, grid, kWarps * 32, 0, stream, q, g,
                    out);
  else
    launchDependent(attendKernel<float, PerLane>, grid, kWarps * 32, 0, stream, q, g, out);
}
} // namespace

namespace {
template <int PerLane>
void launchPrefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                         const int32_t *tiles, int64_t numTiles, float *out) {
  const dim3 grid(static_cast<unsigned>(numTiles), static_cast<unsigned>(g.numHeads), 2);
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

namespace {
template <int D>
void launchMmaPrefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                            const int32_t *tiles, int64_t numTiles, float *out) {
  // Blocks start in grid order, x fastest: with the heads in x every head's
  // last tile (the most keys) starts before any head's shorter ones, so the
  // last wave holds the shortest tiles (longest first). Tiles in x started
  // one head's tiles, longest to shortest, then the next head's: a 1.1B
  // prefill of 2,048 tokens 9.34 -> 9.04 ms at medium, 16.8 -> 16.1 at
  // highest (H200). LLMIR_CUDA_PREFILL_HEADS_FIRST=0 keeps tiles in x
  // (measuring).
  static const bool headsFirst = !switchedOff("LLMIR_CUDA_PREFILL_HEADS_FIRST");
  const auto headCount = static_cast<unsigned>(g.numHeads);
  const auto tileCount = static_cast<unsigned>(numTiles);
  const dim3 grid = headsFirst ? dim3(headCount, tileCount) : dim3(tileCount, headCount);
  constexpr size_t shared = mmaPrefillSharedBytes(D);
  // The hoisted copies where they were measured: head dim <= 64, a 1.1B
  // prefill's attention 121 -> 112 us at medium, the whole prefill -2.4% at
  // highest (168 registers under the three-block bound, where the old copies
  // took 184 and two blocks). At head dim 128 (~255 registers either way)
  // an 8B prefill measured the same with them.
  constexpr bool kAligned = D <= 64;
  // A dependent launch: the blocks are placed while the ROPE + store before
  // it runs and read the step's tables meanwhile. On an H200 the gap before
  // the kernel went from 1.4 us to an overlap of 1.4 and a 1.1B prefill of
  // 2,048 tokens 8.48 -> 8.39 ms (three alternations, medium;
  // docs/performance.md, thirty-sixth session).
  // The rows' sums of P on the tensor cores (the kernel's sumByMma);
  // LLMIR_CUDA_PREFILL_SUM_BY_MMA=0 sums them with FADDs (measuring).
  static const bool sumByMma = !switchedOff("LLMIR_CUDA_PREFILL_SUM_BY_MMA");
  if (g.bf16Queries) {
    allowDynamicShared<mmaPrefillAttendKernel<D, false, kAligned>>(shared);
    launchDependent(mmaPrefillAttendKernel<D, false, kAligned>, grid, 128, shared, stream, q, g,
                    tiles, out, headsFirst, sumByMma);
  } else {
    allowDynamicShared<mmaPrefillAttendKernel<D, true, kAligned>>(shared);
    launchDependent(mmaPrefillAttendKernel<D, true, kAligned>, grid, 128, shared, stream, q, g,
                    tiles, out, headsFirst, sumByMma);
  }
}
} // namespace

namespace {
bool mmaPrefillApplies(const AttentionGeometry &g) {
  // The tensor-core kernel addresses a cache block's elements in 32 bits
  // (blockElements).
  const bool blockElementsFit = g.blockSize * g.numKvHeads * g.headDim <= INT32_MAX;
  return g.bf16Cache && g.scale > 0.0f && blockElementsFit &&
         (g.headDim == 16 || g.headDim == 32 || g.headDim == 64 || g.headDim == 96 ||
          g.headDim == 128);
}

} // namespace

bool prefillRotatesQueries(const AttentionGeometry &g) {
  // The tensor-core kernel, whose threads hold both halves of a rotation's
  // pairs where the head dimension is a multiple of 32.
  return prefillAttendApplies(g) && mmaPrefillApplies(g) && g.headDim % 32 == 0;
}

int prefillAttend(Stream stream, const float *q, const AttentionGeometry &g,
                  const int32_t *tiles, int64_t numTiles, float *out) {
  if (g.queryRotations && (numTiles <= 0 || !prefillRotatesQueries(g)))
    return cudaErrorInvalidValue;
  if (g.outHi && (numTiles <= 0 || !mmaPrefillApplies(g)))
    return cudaErrorInvalidValue; // the halves come from the tensor-core kernel only
  if (numTiles > 0 && mmaPrefillApplies(g)) {
    switch (g.headDim) {
    case 16: launchMmaPrefillAttend<16>(stream, q, g, tiles, numTiles, out); break;
    case 32: launchMmaPrefillAttend<32>(stream, q, g, tiles, numTiles, out); break;
    case 64: launchMmaPrefillAttend<64>(stream, q, g, tiles, numTiles, out); break;
    case 96: launchMmaPrefillAttend<96>(stream, q, g, tiles, numTiles, out); break;
    default: launchMmaPrefillAttend<128>(stream, q, g, tiles, numTiles, out); break;
    }
  } else if (numTiles > 0) {
    if (g.headDim <= 64)
      launchPrefillAttend<2>(stream, q, g, tiles, numTiles, out);
    else
      launchPrefillAttend<4>(stream, q, g, tiles, numTiles, out);
  }
  return cudaGetLastError();
}

namespace {
// The largest number of query heads sharing one KV head (uneven head
// splits: kvGroup; else the even ratio).
int64_t largestGroup(const AttentionGeometry &g) {
  if (g.kvGroup <= 0)
    return g.numHeads / g.numKvHeads;
  // Local heads h map to (headOffset + h) / kvGroup - headOffset / kvGroup.
  return std::min(g.kvGroup, g.numHeads);
}

// The splits of one (query row, group) as one thread-block cluster merging
// through distributed shared memory (mergeCluster), where the in-kernel
// merge applies (mergedOut) and the splits fit a portable cluster;
// LLMIR_CUDA_CLUSTER_MERGE=0 keeps the counter merge (for measuring).
constexpr int64_t kMaxClusterSplits = 8;
bool clusterMergeTakes(const AttentionGeometry &g) {
  return g.splits > 1 && g.splits <= kMaxClusterSplits && g.mergedOut && clusterMergeEnabled();
}

// AttentionGeometry::wholeMultiprocessors: dynamic shared memory, unused,
// that pads a block of Kernel to the most a block may have, so that no
// block of another kernel shares its multiprocessor. At batch 1 the decode
// attention is a chain of latencies on a few multiprocessors while the
// next product's blocks, placed by the dependent launch, load their first
// weights; beside it they slowed it (the 8B's attention 11.1 -> 9.9 us a
// layer with fewer of those loads, docs/performance.md). Where the product's
// grid fits the other multiprocessors at once (the 1.1B's O: 256 blocks, 4
// a multiprocessor, on 100) nothing waits for the attention's: on an H200
// a 1.1B step after a 1,024-token prompt 1.086 -> 1.066 ms (-1.7%), after
// 128 -0.3%; at 8B (O's 256 blocks, 2 a multiprocessor, on 68) the same
// padding made a step 12% slower, hence the condition (twenty-ninth
// session). 0 where the device does not say.
template <auto Kernel> size_t wholeMultiprocessorPadding() {
  static const size_t padding = [] {
    int device = 0, most = 0;
    cudaFuncAttributes attributes{};
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess ||
        cudaFuncGetAttributes(&attributes, Kernel) != cudaSuccess) {
      cudaGetLastError(); // not sticky
      return size_t(0);
    }
    return size_t(most) > attributes.sharedSizeBytes ? size_t(most) - attributes.sharedSizeBytes
                                                     : size_t(0);
  }();
  allowDynamicShared<Kernel>(padding);
  return padding;
}

template <int D>
void launchGroupDecode(Stream stream, const float *q, const AttentionGeometry &g, float *out,
                       const FusedRope &rope) {
  const dim3 grid(static_cast<unsigned>(g.numQueries), static_cast<unsigned>(g.numKvHeads),
                  static_cast<unsigned>(g.splits > 1 ? g.splits : 1));
  const bool cluster = clusterMergeTakes(g);
  const dim3 clusterDim(1, 1, cluster ? static_cast<unsigned>(g.splits) : 1);
  // Few rows with fused RoPE: a warp a query head (warpDecodeKernel); at
  // head dim 128 (the 8B's groups of 4: two warps a head) one-row steps
  // only, where it was measured (LLMIR_CUDA_WARP_DECODE_128=0 keeps the
  // group kernel there too).
  static const bool warp128 = !switchedOff("LLMIR_CUDA_WARP_DECODE_128");
  if constexpr (D == 64 || D == 128)
    if (g.bf16Cache && rope.q && g.numQueries < mmaDecodeRows() && warpDecodeEnabled() &&
        (D == 64 || (warp128 && g.numQueries == 1))) {
      if (g.numQueries == 1) {
        constexpr auto kernel = warpDecodeKernel<D, 1>;
        const size_t padding = g.wholeMultiprocessors ? wholeMultiprocessorPadding<kernel>() : 0;
        launchDependentCluster(kernel, grid, kGroupThreads, padding, stream, clusterDim, g, out,
                               rope, cluster);
      }
      else if constexpr (D == 64)
        launchDependentCluster(warpDecodeKernel<D, 0>, grid, kGroupThreads, 0, stream, clusterDim,
                               g, out, rope, cluster);
      return;
    }
  // Head dims 64 and 128 only: the ones BackendOps has run on tensor cores
  // (16- and 17-row cases); 32 and 96 wait for theirs.
  if constexpr (D == 64 || D == 128)
    if (g.bf16Cache && g.numQueries >= mmaDecodeRows()) {
      launchDependentCluster(groupDecodeKernel<__nv_bfloat16, D, true>, grid, kGroupThreads, 0,
                             stream, clusterDim, q, g, out, rope, cluster);
      return;
    }
  if (g.bf16Cache)
    launchDependentCluster(groupDecodeKernel<__nv_bfloat16, D, false>, grid, kGroupThreads, 0,
                           stream, clusterDim, q, g, out, rope, cluster);
  else
    launchDependentCluster(groupDecodeKernel<float, D, false>, grid, kGroupThreads, 0, stream,
                           clusterDim, q, g, out, rope, cluster);
}

// The group kernel for every decode step it can take: each key is read
// once per group of query heads, where attendKernel's block per query head
// reads it once per head. On an H200 (1.1B shape, medium, ms a step, block
// per head -> group): batch 16 1.76 -> 1.65, 32 2.68 -> 2.50, 128 4.33 ->
// 2.99; 8B batch 32 8.92 -> 6.96. (Session 6 measured batch 8 the other
// way, 3.6k against 3.7-3.8k tok/s, before the kernel's cp.async chunks.)
bool groupDecodeTakes(const AttentionGeometry &g) {
  return groupDecodeEnabled() && largestGroup(g) <= kMaxGroup &&
         g.splits <= kMaxGroupSplits &&
         (g.headDim == 32 || g.headDim == 64 || g.headDim == 96 || g.headDim == 128);
}

int launchGroupDecode(Stream stream, const float *q, const AttentionGeometry &g, float *out,
                      const FusedRope &rope) {
  switch (g.headDim) {
  case 32: launchGroupDecode<32>(stream, q, g, out, rope); break;
  case 64: launchGroupDecode<64>(stream, q, g, out, rope); break;
  case 96: launchGroupDecode<96>(stream, q, g, out, rope); break;
  default: launchGroupDecode<128>(stream, q, g, out, rope); break;
  }
  return cudaGetLastError();
}
} // namespace

bool ropeStoreAttendApplies(const AttentionGeometry &g) {
  // A decode step's rows (one token a sequence: the caller's to know) on
  // the group kernel, each block rotating and storing its own row; an
  // uneven head split's KV head may have no query head here (its block
  // would return before storing), and a partial attention stores only some
  // rows.
  return groupDecodeTakes(g) && g.numTokens == g.numQueries && g.kvGroup <= 0 && !g.partial &&
         g.kvShards == 1 && g.firstQuery == 0 && fusedRopeEnabled();
}

int ropeStoreAttend(Stream stream, const FusedRope &rope, const AttentionGeometry &g,
                    float *out) {
  return launchGroupDecode(stream, nullptr, g, out, rope);
}

int attend(Stream stream, const float *q, const AttentionGeometry &g, float *out) {
  if (groupDecodeTakes(g))
    return launchGroupDecode(stream, q, g, out, FusedRope{});
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
    launchDependent(mergeKernel, grid, 64, 0, stream, gathered, shards, numHeads, headDim, out);
  }
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
