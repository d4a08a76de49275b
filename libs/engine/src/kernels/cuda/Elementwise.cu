// Elementwise kernels: widening of stored weights, bias, SWIGLU, ADD,
// EMBEDDING. One thread per element, grid-stride.
#include "DependentLaunch.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kThreads = 256;

unsigned gridFor(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1)
                                              : 65535);
}

__device__ float load(const void *src, Storage storage, int64_t i) {
  switch (storage) {
  case Storage::F16:
    return __half2float(static_cast<const __half *>(src)[i]);
  case Storage::BF16: // bf16 is the upper half of an f32
    return __uint_as_float(
        static_cast<unsigned>(static_cast<const unsigned short *>(src)[i])
        << 16);
  default:
    return static_cast<const float *>(src)[i];
  }
}

__global__ void widenKernel(const void *src, Storage storage, int64_t n,
                            float *dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = load(src, storage, i);
}

__global__ void addBiasKernel(float *y, const float *bias, int64_t n,
                              int64_t N) {
  beginDependentKernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % N];
}

__global__ void swigluKernel(const float *gate, const float *up, float *y,
                             int64_t n) {
  beginDependentKernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float g = gate[i];
    y[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void addKernel(const float *a, const float *b, float *y, int64_t n) {
  beginDependentKernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void embeddingKernel(const int32_t *ids, int64_t n,
                                const void *table, Storage storage,
                                int64_t rows, int64_t cols, int64_t vocabOffset,
                                float *y) {
  beginDependentKernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = static_cast<int64_t>(ids[i / cols]) - vocabOffset;
    y[i] = row >= 0 && row < rows ? load(table, storage, row * cols + i % cols)
                                  : 0.0f;
  }
}

// One block per row: each thread's best (value, lowest index), then a tree
// reduction with the same tie rule as the CPU's argmax.
constexpr int kArgmaxThreads = 512;
__global__ void argmaxKernel(const float *logits, int64_t V, int32_t *ids) {
  beginDependentKernel();
  __shared__ float bestValue[kArgmaxThreads];
  __shared__ int64_t bestIndex[kArgmaxThreads];
  const float *row = logits + blockIdx.x * V;
  float value = -INFINITY;
  int64_t index = V; // none yet
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (index == V || v > value) {
      value = v;
      index = i;
    }
  }
  bestValue[threadIdx.x] = value;
  bestIndex[threadIdx.x] = index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float v = bestValue[threadIdx.x + stride];
      const int64_t i = bestIndex[threadIdx.x + stride];
      if (i < V && (bestIndex[threadIdx.x] == V || v > bestValue[threadIdx.x] ||
                    (v == bestValue[threadIdx.x] && i < bestIndex[threadIdx.x]))) {
        bestValue[threadIdx.x] = v;
        bestIndex[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0)
    ids[blockIdx.x] = static_cast<int32_t>(bestIndex[0] < V ? bestIndex[0] : 0);
}

} // namespace

int argmaxRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               int32_t *ids) {
  if (rows > 0 && V > 0)
    launchDependent(argmaxKernel, static_cast<unsigned>(rows), kArgmaxThreads, 0, stream,
                    logits, V, ids);
  return cudaGetLastError();
}

int widen(Stream stream, const void *src, Storage storage, int64_t n, float *dst) {
  widenKernel<<<gridFor(n), kThreads, 0, stream>>>(src, storage, n, dst);
  return cudaGetLastError();
}

int addBias(Stream stream, float *y, const float *bias, int64_t T, int64_t N) {
  launchDependent(addBiasKernel, gridFor(T * N), kThreads, 0, stream, y, bias, T * N, N);
  return cudaGetLastError();
}

int swiglu(Stream stream, const float *gate, const float *up, float *y, int64_t n) {
  launchDependent(swigluKernel, gridFor(n), kThreads, 0, stream, gate, up, y, n);
  return cudaGetLastError();
}

int add(Stream stream, const float *a, const float *b, float *y, int64_t n) {
  launchDependent(addKernel, gridFor(n), kThreads, 0, stream, a, b, y, n);
  return cudaGetLastError();
}

int embedding(Stream stream, const int32_t *ids, int64_t T, const void *table, Storage storage,
              int64_t rows, int64_t cols, int64_t vocabOffset, float *y) {
  launchDependent(embeddingKernel, gridFor(T * cols), kThreads, 0, stream, ids, T * cols,
                  table, storage, rows, cols, vocabOffset, y);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
