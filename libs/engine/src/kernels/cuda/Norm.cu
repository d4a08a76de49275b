// RMS_NORM (sum of squares in double, as the CPU kernel) and ROPE (angles
// formed in f32 from an inverse frequency computed in double, cos/sin in
// double, as the CPU kernel does).
#include "Bf16Halves.cuh"
#include "DependentLaunch.cuh"
#include "Rope.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace llmir::engine::cuda::detail {
namespace {

// 1024 threads: a decode row (H of a few thousand) is one round of loads
// per thread, its latency paid once.
constexpr int kNormThreads = 1024;

// 1 / rms of a row from each thread's partial sum of squares (in double, as
// the CPU kernel): reduced across each warp with shuffles, then across the
// warps. Every thread of the block calls it and gets the result.
__device__ float inverseRms(double sum, int64_t H, float eps) {
  __shared__ double partial[kNormThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0)
    partial[threadIdx.x / 32] = sum;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
    total += partial[w];
  const float meanSquare = static_cast<float>(total / static_cast<double>(H));
  return 1.0f / sqrtf(meanSquare + eps);
}

// Where a row has at most kNormPerThread elements a thread (H up to 8,192),
// a thread keeps its elements and their weights in registers: the weights
// (written by no kernel) are loaded before the dependent-launch wait, so
// the only memory latency after it is the row's, and the row is not read
// twice. The arithmetic is the loop's, element for element.
// load(i) reads element i; keep(i, h) stores what the row's instruction
// writes besides the norm (the residual sum), once every load is issued: a
// store between two loads through pointers the compiler cannot tell apart
// kept the next load behind it, one memory latency an element a thread (4
// at an 8B shape's decode norm).
constexpr int kNormPerThread = 8;

// y[i] = v, and with hi its bf16 halves for the product that reads y,
// splitBf16's arithmetic (Bf16Halves.cuh); y null: the halves only.
__device__ __forceinline__ void storeNormed(float *y, __nv_bfloat16 *hi, __nv_bfloat16 *lo,
                                            int64_t i, float v) {
  if (y)
    y[i] = v;
  if (hi)
    splitOne(v, hi[i], lo ? &lo[i] : nullptr);
}

template <typename Load, typename Keep>
__device__ __forceinline__ void normalizeInRegisters(Load load, Keep keep, int64_t H,
                                                     const float *weight, float eps, float *y,
                                                     __nv_bfloat16 *hi = nullptr,
                                                     __nv_bfloat16 *lo = nullptr) {
  float w[kNormPerThread], h[kNormPerThread];
#pragma unroll
  for (int j = 0; j < kNormPerThread; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    w[j] = i < H ? weight[i] : 0.0f;
  }
  beginDependentKernel();
#pragma unroll
  for (int j = 0; j < kNormPerThread; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if (i < H)
      h[j] = load(i);
  }
  double sum = 0.0;
#pragma unroll
  for (int j = 0; j < kNormPerThread; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if (i < H) {
      keep(i, h[j]);
      sum += static_cast<double>(h[j]) * h[j];
    }
  }
  recordKernelMark(0); // kernel clock builds (block 0): the row read
  const float scale = inverseRms(sum, H, eps);
  recordKernelMark(1); // its scale
#pragma unroll
  for (int j = 0; j < kNormPerThread; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if (i < H)
      storeNormed(y, hi, lo, i, w[j] * (h[j] * scale));
  }
  recordKernelMark(2); // the normed row stored
}

// normalizeInRegisters with 16-byte loads and stores, four elements a
// vector: thread l holds vectors l + j * blockDim (the sum of squares in
// double, element by element in each vector's order). A prefill's rows
// (many tokens) take it: with 4-byte accesses a 2,048-token prefill of the
// 1.1B shape moved ~2.7 TB/s in addRmsNorm (28 us a call, 44 a prefill).
template <typename Load4, typename Keep4>
__device__ __forceinline__ void normalizeVectorsInRegisters(Load4 load, Keep4 keep, int64_t H,
                                                            const float *weight, float eps,
                                                            float *y, __nv_bfloat16 *hi,
                                                            __nv_bfloat16 *lo) {
  constexpr int kVectors = kNormPerThread / 4;
  const int64_t vectors = H / 4;
  float4 w[kVectors], h[kVectors];
#pragma unroll
  for (int j = 0; j < kVectors; ++j) {
    const int64_t q = threadIdx.x + int64_t(j) * blockDim.x;
    w[j] = q < vectors ? reinterpret_cast<const float4 *>(weight)[q] : make_float4(0, 0, 0, 0);
  }
  beginDependentKernel();
#pragma unroll
  for (int j = 0; j < kVectors; ++j) {
    const int64_t q = threadIdx.x + int64_t(j) * blockDim.x;
    if (q < vectors)
      h[j] = load(q);
  }
  double sum = 0.0;
#pragma unroll
  for (int j = 0; j < kVectors; ++j) {
    const int64_t q = threadIdx.x + int64_t(j) * blockDim.x;
    if (q < vectors) {
      keep(q, h[j]);
      sum += static_cast<double>(h[j].x) * h[j].x;
      sum += static_cast<double>(h[j].y) * h[j].y;
      sum += static_cast<double>(h[j].z) * h[j].z;
      sum += static_cast<double>(h[j].w) * h[j].w;
    }
  }
  const float scale = inverseRms(sum, H, eps);
#pragma unroll
  for (int j = 0; j < kVectors; ++j) {
    const int64_t q = threadIdx.x + int64_t(j) * blockDim.x;
    if (q < vectors) {
      const float4 v = make_float4(w[j].x * (h[j].x * scale), w[j].y * (h[j].y * scale),
                                   w[j].z * (h[j].z * scale), w[j].w * (h[j].w * scale));
      if (y)
        reinterpret_cast<float4 *>(y)[q] = v;
      if (hi)
        splitFour(v, hi, lo, q);
    }
  }
}

// One block per row.
__global__ void rmsNormKernel(const float *x, int64_t H, const float *weight,
                              float eps, float *y) {
  const float *row = x + blockIdx.x * H;
  if (H <= kNormPerThread * int64_t(blockDim.x))
    return normalizeInRegisters([&](int64_t i) { return row[i]; }, [](int64_t, float) {}, H,
                                weight, eps, y + blockIdx.x * H);
  beginDependentKernel();
  double sum = 0.0;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
    sum += static_cast<double>(row[i]) * row[i];
  const float scale = inverseRms(sum, H, eps);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
    y[blockIdx.x * H + i] = weight[i] * (row[i] * scale);
}

// The residual ADD and the RMS_NORM after it in one pass: sum = a + b is
// stored (later instructions read it) and normalised into y, the same
// arithmetic as the two kernels one after the other.
// With hi (and lo), y's bf16 halves are written too, or instead of y when
// y is null (storeNormed).
// Vectors: every row of H floats four at a time in registers (addRmsNorm's
// choice: many rows, H a multiple of 4 within the block's kNormPerThread
// elements a thread, 16-byte aligned rows, 8-byte aligned halves).
// Added: b and sumOut null, a is the sum already (its product added the
// residual: linearAddResidual), normalised as the sum is.
template <bool Vectors, bool Added = false>
__global__ void addRmsNormKernel(const float *a, const float *b, float *sumOut, int64_t H,
                                 const float *weight, float eps, float *y, __nv_bfloat16 *hi,
                                 __nv_bfloat16 *lo) {
  const int64_t base = blockIdx.x * H;
  if (hi) {
    hi += base;
    if (lo)
      lo += base;
  }
  if constexpr (Vectors && Added)
    return normalizeVectorsInRegisters(
        [&](int64_t q) { return reinterpret_cast<const float4 *>(a + base)[q]; },
        [](int64_t, float4) {}, H, weight, eps, y ? y + base : nullptr, hi, lo);
  if constexpr (Vectors && !Added)
    return normalizeVectorsInRegisters(
        [&](int64_t q) {
          const float4 x = reinterpret_cast<const float4 *>(a + base)[q];
          const float4 r = reinterpret_cast<const float4 *>(b + base)[q];
          return make_float4(x.x + r.x, x.y + r.y, x.z + r.z, x.w + r.w);
        },
        [&](int64_t q, float4 h) { reinterpret_cast<float4 *>(sumOut + base)[q] = h; }, H,
        weight, eps, y ? y + base : nullptr, hi, lo);
  if constexpr (Added) {
    if (H <= kNormPerThread * int64_t(blockDim.x))
      return normalizeInRegisters([&](int64_t i) { return a[base + i]; }, [](int64_t, float) {},
                                  H, weight, eps, y ? y + base : nullptr, hi, lo);
    beginDependentKernel();
    double sum = 0.0;
#pragma unroll 8
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
      sum += static_cast<double>(a[base + i]) * a[base + i];
    const float scale = inverseRms(sum, H, eps);
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
      storeNormed(y ? y + base : nullptr, hi, lo, i, weight[i] * (a[base + i] * scale));
    return;
  }
  if (H <= kNormPerThread * int64_t(blockDim.x))
    return normalizeInRegisters([&](int64_t i) { return a[base + i] + b[base + i]; },
                                [&](int64_t i, float h) { sumOut[base + i] = h; }, H, weight,
                                eps, y ? y + base : nullptr, hi, lo);
  beginDependentKernel();
  double sum = 0.0;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    const float h = a[base + i] + b[base + i];
    sumOut[base + i] = h;
    sum += static_cast<double>(h) * h;
  }
  const float scale = inverseRms(sum, H, eps);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) // sumOut: this thread's own store
    storeNormed(y ? y + base : nullptr, hi, lo, i, weight[i] * (sumOut[base + i] * scale));
}

// One block per token, one thread per (head, pair).
__global__ void ropeKernel(const float *x, float *y, int64_t numHeads, int64_t headDim,
                           const int32_t *positions, float theta) {
  beginDependentKernel();
  const int64_t half = headDim / 2;
  const float position = static_cast<float>(positions[blockIdx.x]);
  for (int64_t p = threadIdx.x; p < numHeads * half; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    const float exponent =
        static_cast<float>(2 * i) / static_cast<float>(headDim);
    const float inverseFrequency =
        1.0f / static_cast<float>(pow(static_cast<double>(theta),
                                      static_cast<double>(exponent)));
    const int64_t head = (blockIdx.x * numHeads + h) * headDim;
    rotatePair(x + head, y + head, i, half,
               position * inverseFrequency);
  }
}

// The same rotation with given inverse frequencies (f32, as the CPU's).
__global__ void ropeFrequenciesKernel(const float *x, float *y, int64_t numHeads, int64_t headDim,
                                      const int32_t *positions,
                                      const float *inverseFrequencies) {
  beginDependentKernel();
  const int64_t half = headDim / 2;
  const float position = static_cast<float>(positions[blockIdx.x]);
  for (int64_t p = threadIdx.x; p < numHeads * half; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    const int64_t head = (blockIdx.x * numHeads + h) * headDim;
    rotatePair(x + head, y + head, i, half,
               position * inverseFrequencies[i]);
  }
}

} // namespace

// Enough threads for every (head, pair) of a token at once, at most 1024:
// the double sincos per pair is the cost, so one pass beats four.
unsigned ropeThreads(int64_t numHeads, int64_t headDim) {
  const int64_t pairs = numHeads * (headDim / 2);
  return static_cast<unsigned>(std::min<int64_t>(1024, std::max<int64_t>(32, (pairs + 31) / 32 * 32)));
}

int ropeWithFrequencies(Stream stream, const float *x, float *y, int64_t T, int64_t numHeads,
                        int64_t headDim, const int32_t *positions,
                        const float *inverseFrequencies) {
  if (T > 0)
    launchDependent(ropeFrequenciesKernel, static_cast<unsigned>(T),
                    ropeThreads(numHeads, headDim), 0, stream, x, y, numHeads, headDim,
                    positions, inverseFrequencies);
  return cudaGetLastError();
}

// Threads a row's block: kNormThreads where few rows run (a decode step: a
// row's latency is the step's), a multiple of 32 covering the row at
// kNormPerThread elements a thread where many do (a prefill). 1,024-thread
// blocks fit two a multiprocessor, so a 2,048-row prefill ran in eight
// latency-bound waves: an H200, 1.1B shape, addRmsNorm 52 us a call (1.3 TB/s).
constexpr int64_t kManyNormRows = 64;
unsigned normThreads(int64_t T, int64_t H) {
  if (T < kManyNormRows)
    return kNormThreads;
  const int64_t perRow = ((H + kNormPerThread - 1) / kNormPerThread + 31) / 32 * 32;
  return static_cast<unsigned>(std::clamp<int64_t>(perRow, 128, kNormThreads));
}

int rmsNorm(Stream stream, const float *x, int64_t T, int64_t H, const float *weight,
            float eps, float *y) {
  if (T > 0)
    launchDependent(rmsNormKernel, static_cast<unsigned>(T), normThreads(T, H), 0, stream, x, H,
                    weight, eps, y);
  return cudaGetLastError();
}

int addRmsNorm(Stream stream, const float *a, const float *b, float *sum, int64_t T,
               int64_t H, const float *weight, float eps, float *y, void *hi, void *lo) {
  if (T <= 0)
    return cudaGetLastError();
  const unsigned threads = normThreads(T, H);
  const bool vectors = T >= kManyNormRows && H % 4 == 0 && H <= kNormPerThread * int64_t(threads) &&
                       alignedTo(a, 16) && alignedTo(b, 16) && alignedTo(sum, 16) &&
                       alignedTo(y, 16) && alignedTo(weight, 16) && alignedTo(hi, 8) &&
                       alignedTo(lo, 8);
  auto *h = static_cast<__nv_bfloat16 *>(hi), *l = static_cast<__nv_bfloat16 *>(lo);
  const auto kernel = b ? (vectors ? addRmsNormKernel<true> : addRmsNormKernel<false>)
                        : (vectors ? addRmsNormKernel<true, true> : addRmsNormKernel<false, true>);
  launchDependent(kernel, static_cast<unsigned>(T), threads, 0, stream, a, b, b ? sum : nullptr,
                  H, weight, eps, y, h, l);
  return cudaGetLastError();
}

int rope(Stream stream, float *x, int64_t T, int64_t numHeads, int64_t headDim,
         const int32_t *positions, float theta) {
  if (T > 0)
    launchDependent(ropeKernel, static_cast<unsigned>(T), ropeThreads(numHeads, headDim), 0,
                    stream, x, x, numHeads, headDim, positions, theta);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
