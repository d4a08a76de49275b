// Paged causal grouped-query attention. The step's k, v are stored first;
// then one block of kWarps warps per (token, query head): each warp walks
// every kWarps-th visible key with an online (running-max) softmax, its
// lanes holding strided slices of the head dimension, and the warps' partial
// results are merged exactly at the end.
#include "Launch.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = static_cast<int>(kMaxHeadDim / 32);

__device__ int64_t cacheRow(const AttentionGeometry &g, int32_t seq,
                            int64_t position) {
  const int32_t block =
      g.blockTables[seq * g.blockTableStride + position / g.blockSize];
  return (block * g.blockSize + position % g.blockSize) * g.numKvHeads *
         g.headDim;
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

template <typename C>
__global__ void attendKernel(const float *q, AttentionGeometry g, float *out) {
  const C *keys = static_cast<const C *>(g.keys);
  const C *values = static_cast<const C *>(g.values);
  __shared__ float warpMax[kWarps], warpSum[kWarps];
  __shared__ float warpOut[kWarps][kMaxHeadDim];
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
  const float *query = q + (r * g.numHeads + h) * D;
  const int64_t outRow = g.partial ? g.numHeads * D + g.numHeads : g.numHeads * D;

  float queryPart[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    queryPart[i] = d < D ? query[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float runningMax = -INFINITY, runningSum = 0.0f;
  for (int64_t j = first + warp; j < length; j += kWarps) {
    if (g.partial && (j / g.blockSize) % g.kvShards != g.kvShard)
      continue; // another sequence-parallel rank's block
    const int64_t row = cacheRow(g, seq, j) + kvHead * D;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D)
        dot += queryPart[i] * loadCached(keys + row + d);
    }
    for (int offset = 16; offset > 0; offset /= 2)
      dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    const float score = dot * g.scale;
    const float newMax = fmaxf(runningMax, score);
    const float correction = expf(runningMax - newMax);
    const float weight = expf(score - newMax);
    runningSum = runningSum * correction + weight;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D)
        acc[i] = acc[i] * correction + weight * loadCached(values + row + d);
    }
    runningMax = newMax;
  }
  if (lane == 0) {
    warpMax[warp] = runningMax;
    warpSum[warp] = runningSum;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < D)
      warpOut[warp][d] = acc[i];
  }
  __syncthreads();
  // Without a shard filter warp 0 saw the first visible key, so the maximum
  // is finite; a partial rank may own no visible position.
  float maximum = warpMax[0];
  for (int w = 1; w < kWarps; ++w)
    maximum = fmaxf(maximum, warpMax[w]);
  float *o = out + r * outRow + h * D;
  if (maximum == -INFINITY) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      o[d] = 0.0f;
    if (threadIdx.x == 0)
      out[r * outRow + g.numHeads * D + h] = -INFINITY;
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
  if (g.partial && threadIdx.x == 0)
    out[r * outRow + g.numHeads * D + h] = maximum + logf(total);
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

int storeKeysAndValues(const float *k, const float *v,
                       const AttentionGeometry &g) {
  if (g.numTokens > 0 && g.bf16Cache)
    storeKernel<__nv_bfloat16><<<static_cast<unsigned>(g.numTokens), 128>>>(k, v, g);
  else if (g.numTokens > 0)
    storeKernel<float><<<static_cast<unsigned>(g.numTokens), 128>>>(k, v, g);
  return cudaGetLastError();
}

int attend(const float *q, const AttentionGeometry &g, float *out) {
  if (g.numQueries > 0) {
    const dim3 grid(static_cast<unsigned>(g.numQueries),
                    static_cast<unsigned>(g.numHeads));
    if (g.bf16Cache)
      attendKernel<__nv_bfloat16><<<grid, kWarps * 32>>>(q, g, out);
    else
      attendKernel<float><<<grid, kWarps * 32>>>(q, g, out);
  }
  return cudaGetLastError();
}

int mergeAttention(const float *gathered, int64_t T, int64_t shards,
                   int64_t numHeads, int64_t headDim, float *out) {
  if (T > 0) {
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(numHeads));
    mergeKernel<<<grid, 64>>>(gathered, shards, numHeads, headDim, out);
  }
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
