// RMS_NORM (sum of squares in double, as the CPU kernel) and ROPE (angles
// formed in f32 from an inverse frequency computed in double, cos/sin in
// double, as the CPU kernel does).
#include "Launch.h"

#include <cuda_runtime.h>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kNormThreads = 256;

// One block per row.
__global__ void rmsNormKernel(const float *x, int64_t H, const float *weight,
                              float eps, float *y) {
  __shared__ double partial[kNormThreads];
  const float *row = x + blockIdx.x * H;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
    sum += static_cast<double>(row[i]) * row[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const float meanSquare =
      static_cast<float>(partial[0] / static_cast<double>(H));
  const float inverseRms = 1.0f / sqrtf(meanSquare + eps);
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
    y[blockIdx.x * H + i] = weight[i] * (row[i] * inverseRms);
}

// HF rotate_half of the pair (i, i + D/2) of one head by `angle` (cos and
// sin in double, as the CPU kernel).
__device__ void rotatePair(float *head, int64_t i, int64_t half, float angle) {
  const float c = static_cast<float>(cos(static_cast<double>(angle)));
  const float s = static_cast<float>(sin(static_cast<double>(angle)));
  const float a = head[i], b = head[i + half];
  head[i] = a * c - b * s;
  head[i + half] = b * c + a * s;
}

// One block per token, one thread per (head, pair).
__global__ void ropeKernel(float *x, int64_t numHeads, int64_t headDim,
                           const int32_t *positions, float theta) {
  const int64_t half = headDim / 2;
  const float position = static_cast<float>(positions[blockIdx.x]);
  for (int64_t p = threadIdx.x; p < numHeads * half; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    const float exponent =
        static_cast<float>(2 * i) / static_cast<float>(headDim);
    const float inverseFrequency =
        1.0f / static_cast<float>(pow(static_cast<double>(theta),
                                      static_cast<double>(exponent)));
    rotatePair(x + (blockIdx.x * numHeads + h) * headDim, i, half,
               position * inverseFrequency);
  }
}

// The same rotation with given inverse frequencies (f32, as the CPU's).
__global__ void ropeFrequenciesKernel(float *x, int64_t numHeads, int64_t headDim,
                                      const int32_t *positions,
                                      const float *inverseFrequencies) {
  const int64_t half = headDim / 2;
  const float position = static_cast<float>(positions[blockIdx.x]);
  for (int64_t p = threadIdx.x; p < numHeads * half; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    rotatePair(x + (blockIdx.x * numHeads + h) * headDim, i, half,
               position * inverseFrequencies[i]);
  }
}

} // namespace

int ropeWithFrequencies(float *x, int64_t T, int64_t numHeads, int64_t headDim,
                        const int32_t *positions, const float *inverseFrequencies) {
  if (T > 0)
    ropeFrequenciesKernel<<<static_cast<unsigned>(T), 256>>>(x, numHeads, headDim,
                                                             positions, inverseFrequencies);
  return cudaGetLastError();
}

int rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
            float eps, float *y) {
  if (T > 0)
    rmsNormKernel<<<static_cast<unsigned>(T), kNormThreads>>>(x, H, weight, eps,
                                                              y);
  return cudaGetLastError();
}

int rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
         const int32_t *positions, float theta) {
  if (T > 0)
    ropeKernel<<<static_cast<unsigned>(T), 256>>>(x, numHeads, headDim,
                                                  positions, theta);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
