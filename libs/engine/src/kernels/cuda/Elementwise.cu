// Elementwise kernels: widening of stored weights, bias, SWIGLU, ADD,
// EMBEDDING. Grid-stride; SWIGLU four elements a thread where it can.
#include "Bf16Halves.cuh"
#include "DependentLaunch.cuh"

#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

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

__device__ __forceinline__ float siluTimes(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

// Four elements a thread with 16-byte loads and stores (Vector: every
// pointer 16-byte aligned, hi and lo 8-byte, and n a multiple of 4), else
// one. One element a thread moved 2.1 TB/s on an H200 (a 2,048-token
// prefill of the 1.1B shape: 66 us a call). With hi, y's bf16 halves too,
// for the product that reads y (the down projection on cuBLAS): its own
// split launch re-read y, ~17 us a layer of that prefill. y null: the
// halves only (no later instruction reads y).
template <bool Vector>
__global__ void swigluKernel(const float *gate, const float *up, float *y, int64_t n,
                             __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
  beginDependentKernel();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if constexpr (Vector) {
    for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n / 4; q += stride) {
      const float4 g = reinterpret_cast<const float4 *>(gate)[q];
      const float4 u = reinterpret_cast<const float4 *>(up)[q];
      const float4 v = make_float4(siluTimes(g.x, u.x), siluTimes(g.y, u.y),
                                   siluTimes(g.z, u.z), siluTimes(g.w, u.w));
      if (y)
        reinterpret_cast<float4 *>(y)[q] = v;
      if (hi)
        splitFour(v, hi, lo, q);
    }
  } else {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
      const float v = siluTimes(gate[i], up[i]);
      if (y)
        y[i] = v;
      if (hi)
        splitOne(v, hi[i], lo ? &lo[i] : nullptr);
    }
  }
}

// silu(gate) * up from bf16 gate and up products (medium precision's
// prefill: swigluBf16): row t of gate at gate + t * stride, of up at up +
// t * stride. Half the bytes of the f32 products swigluKernel reads. A
// block's threads over a row's octets (16-byte loads; N a multiple of 8),
// rows by blockIdx.y, kSwigluBf16Rows at a time, every load issued before
// any store; 32-bit column indices (one flat 64-bit index split into row
// and column cost two 64-bit divisions an octet). y and the halves as
// swigluKernel writes them (the halves of an octet in one 16-byte store
// where there is no lo).
constexpr int kSwigluBf16Rows = 2;
__global__ void swigluBf16Kernel(const __nv_bfloat16 *gate, const __nv_bfloat16 *up,
                                 int64_t stride, int64_t T, int N, float *y, __nv_bfloat16 *hi,
                                 __nv_bfloat16 *lo) {
  beginDependentKernel();
  const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (c >= N)
    return;
  for (int64_t first = int64_t(blockIdx.y) * kSwigluBf16Rows; first < T;
       first += int64_t(gridDim.y) * kSwigluBf16Rows) {
    uint4 g[kSwigluBf16Rows], u[kSwigluBf16Rows];
#pragma unroll
    for (int r = 0; r < kSwigluBf16Rows; ++r)
      if (first + r < T) {
        g[r] = *reinterpret_cast<const uint4 *>(gate + (first + r) * stride + c);
        u[r] = *reinterpret_cast<const uint4 *>(up + (first + r) * stride + c);
      }
#pragma unroll
    for (int r = 0; r < kSwigluBf16Rows; ++r) {
      if (first + r >= T)
        break;
      const auto *gh = reinterpret_cast<const __nv_bfloat162 *>(&g[r]);
      const auto *uh = reinterpret_cast<const __nv_bfloat162 *>(&u[r]);
      float v[8];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 gf = __bfloat1622float2(gh[k]), uf = __bfloat1622float2(uh[k]);
        v[2 * k] = siluTimes(gf.x, uf.x);
        v[2 * k + 1] = siluTimes(gf.y, uf.y);
      }
      const int64_t at = (first + r) * N + c; // y's element, a multiple of 8
      if (y) {
        reinterpret_cast<float4 *>(y + at)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4 *>(y + at)[1] = make_float4(v[4], v[5], v[6], v[7]);
      }
      if (hi && !lo) {
        __align__(16) __nv_bfloat16 h[8];
#pragma unroll
        for (int k = 0; k < 8; ++k)
          splitOne(v[k], h[k], nullptr);
        *reinterpret_cast<uint4 *>(hi + at) = *reinterpret_cast<const uint4 *>(h);
      } else if (hi) {
        splitFour(make_float4(v[0], v[1], v[2], v[3]), hi, lo, at / 4);
        splitFour(make_float4(v[4], v[5], v[6], v[7]), hi, lo, at / 4 + 1);
      }
    }
  }
}

// One GEMM's product of a group's side-by-side weights, product [T, total]
// (and its remainder half [T, total] after it when `halves`), handed out to
// the group's outputs with joinHalvesKernel's arithmetic (hi + lo, then the
// bias), or for a gate+up pair as silu(gate) * up into segment 0's y, the
// SWIGLU's arithmetic.
__global__ void scatterProductKernel(const float *product, int64_t T, int64_t total,
                                     bool halves, LinearSegments s) {
  beginDependentKernel();
  const int64_t cols = s.pairedSwiglu ? s.segment[0].N : total;
  const int64_t n = T * cols;
  const int64_t lo = T * total; // the remainder half's offset
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / cols, c = i % cols;
    const int64_t at = t * total + c;
    float v = product[at];
    if (halves)
      v += product[lo + at];
    if (s.pairedSwiglu) {
      float u = product[at + cols];
      if (halves)
        u += product[lo + at + cols];
      if (s.segment[0].bias)
        v += s.segment[0].bias[c];
      if (s.segment[1].bias)
        u += s.segment[1].bias[c];
      s.segment[0].y[i] = siluTimes(v, u);
      continue;
    }
    int k = 0;
    int64_t first = 0; // segment k's first column
    while (k + 1 < s.count && c >= first + s.segment[k].N)
      first += s.segment[k++].N;
    if (s.segment[k].bias)
      v += s.segment[k].bias[c - first];
    s.segment[k].y[t * s.segment[k].N + c - first] = v;
  }
}

__global__ void addKernel(const float *a, const float *b, float *y, int64_t n) {
  beginDependentKernel();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

// Token t's row of the table into y's row t (and SELECT_ROWS', cuda::selectRows,
// over an f32 table of the step's rows): blocks (part of the row, token)
// in a grid-stride loop over the tokens, kEmbeddingColumns columns a thread
// in 32-bit arithmetic, each thread's loads issued before its stores. An
// element a thread with a 64-bit division and remainder each took 24 us
// for a 2,048-token prefill of a 2,048-wide bf16 table on an H200; this
// takes 8 (docs/performance.md, thirty-sixth session).
constexpr int kEmbeddingColumns = 4;
__global__ void embeddingKernel(const int32_t *ids, int64_t T, const void *table,
                                Storage storage, int64_t rows, int cols, int64_t tableStride,
                                int64_t vocabOffset, float *y, const int32_t *idsInstead,
                                const int32_t *takeInstead) {
  beginDependentKernel();
  const int first = (blockIdx.x * blockDim.x + threadIdx.x) * kEmbeddingColumns;
  if (first >= cols)
    return;
  if (takeInstead && *takeInstead)
    ids = idsInstead;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const int64_t row = static_cast<int64_t>(ids[t]) - vocabOffset;
    const bool known = row >= 0 && row < rows;
    float v[kEmbeddingColumns];
#pragma unroll
    for (int c = 0; c < kEmbeddingColumns; ++c)
      v[c] = known && first + c < cols ? load(table, storage, row * tableStride + first + c)
                                       : 0.0f;
#pragma unroll
    for (int c = 0; c < kEmbeddingColumns; ++c)
      if (first + c < cols)
        y[t * cols + first + c] = v[c];
  }
}

// One word, its value a launch argument.
__global__ void setWordKernel(int32_t *to, int32_t value) {
  beginDependentKernel();
  *to = value;
}

// Sixteen bytes a thread where both sides allow, else a word; one pass.
__global__ void copyWordsKernel(const int32_t *from, int32_t *to, int64_t n, bool wide) {
  beginDependentKernel();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (wide) {
    for (int64_t i = first; i < n / 4; i += stride)
      reinterpret_cast<int4 *>(to)[i] = reinterpret_cast<const int4 *>(from)[i];
    for (int64_t i = n / 4 * 4 + first; i < n; i += stride)
      to[i] = from[i];
  } else {
    for (int64_t i = first; i < n; i += stride)
      to[i] = from[i];
  }
}

// One block per row: each thread's best (value, lowest index) over a
// strided part of the row, four 16-byte loads in flight at a time when the
// row allows them (a single block reading a 32,000-entry row one float at a
// time took 27 us of a 1.4 ms decode step), then a warp-shuffle and a
// shared-memory reduction with the same tie rule as the CPU's argmax.
constexpr int kArgmaxThreads = 1024;

struct Best {
  float value;
  int64_t index; // V: none yet
};

// Whether (v, i) replaces best: the first candidate, a larger value, or an
// equal one at a lower index (engine::argmax's rule; a thread's own indices
// come in ascending order, so within a thread only a larger value wins).
__device__ __forceinline__ bool better(float v, int64_t i, const Best &best, int64_t V) {
  return i < V && (best.index == V || v > best.value || (v == best.value && i < best.index));
}

// This thread's best over elements [begin, end) of `row` (begin a multiple
// of 4), strided over the block's threads.
__device__ Best bestInRange(const float *row, int64_t begin, int64_t end, int64_t V) {
  Best best{-INFINITY, V};
  auto offer = [&](float v, int64_t i) {
    if (better(v, i, best, V))
      best = {v, i};
  };
  if (V % 4 == 0) { // rows start 16-byte aligned
    const float4 *row4 = reinterpret_cast<const float4 *>(row);
    const int64_t first4 = begin / 4, end4 = end / 4;
    constexpr int kUnroll = 4;
    for (int64_t base = first4 + threadIdx.x; base < end4; base += int64_t(kUnroll) * blockDim.x) {
      float4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t(u) * blockDim.x;
        v[u] = i < end4 ? row4[i] : make_float4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t(u) * blockDim.x;
        if (i < end4) {
          offer(v[u].x, 4 * i);
          offer(v[u].y, 4 * i + 1);
          offer(v[u].z, 4 * i + 2);
          offer(v[u].w, 4 * i + 3);
        }
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      offer(row[i], i);
  }
  return best;
}

// The block's best (every thread's best offered by warp shuffles, then the
// warps in order), valid in thread 0.
__device__ Best blockBest(Best best, int64_t V) {
  __shared__ Best warpBest[kArgmaxThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best.value, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best.index, offset);
    if (better(v, i, best, V))
      best = {v, i};
  }
  if (threadIdx.x % 32 == 0)
    warpBest[threadIdx.x / 32] = best;
  __syncthreads();
  Best total = warpBest[0];
  if (threadIdx.x == 0)
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
      if (better(warpBest[w].value, warpBest[w].index, total, V))
        total = warpBest[w];
  return total;
}

// Row r's id into ids[r] and, given, hostIds[r] (pinned host memory: the
// host reads it after the stream's event, with no copy behind the kernel).
__device__ __forceinline__ void writeId(int32_t *ids, int32_t *hostIds, int64_t row, int32_t id) {
  ids[row] = id;
  if (hostIds) {
    hostIds[row] = id;
    __threadfence_system();
  }
}

__global__ void argmaxKernel(const float *logits, int64_t V, int32_t *ids, int32_t *hostIds) {
  beginDependentKernel();
  const Best best = blockBest(bestInRange(logits + blockIdx.x * V, 0, V, V), V);
  if (threadIdx.x == 0)
    writeId(ids, hostIds, blockIdx.x, static_cast<int32_t>(best.index < V ? best.index : 0));
}

// Long rows (an 8B shape's 128,256 logits: one block took ~27 us, eight
// rounds of loads one after the other) as a cluster of kArgmaxSplits blocks
// a row, each over a slice; block 0 takes the slices' bests from the
// cluster's shared memory. The order of the candidates does not matter:
// `better` is a total order (larger value, then lower index).
constexpr int kArgmaxSplits = 8;
constexpr int64_t kArgmaxSplitMinV = 16384;

__global__ void argmaxSplitKernel(const float *logits, int64_t V, int32_t *ids,
                                  int32_t *hostIds) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  beginDependentKernel();
  __shared__ Best sliceBest;
  const int split = static_cast<int>(cluster.block_rank());
  const int64_t row = blockIdx.x / kArgmaxSplits;
  const int64_t slice = (V + 4 * kArgmaxSplits - 1) / (4 * kArgmaxSplits) * 4; // a multiple of 4
  const int64_t begin = split * slice < V ? split * slice : V;
  const int64_t end = begin + slice < V ? begin + slice : V;
  const Best best = blockBest(bestInRange(logits + row * V, begin, end, V), V);
  if (threadIdx.x == 0)
    sliceBest = best;
  cluster.sync();
  if (split == 0 && threadIdx.x == 0) {
    Best total = sliceBest;
    for (int r = 1; r < kArgmaxSplits; ++r) {
      const Best other = *cluster.map_shared_rank(&sliceBest, static_cast<unsigned>(r));
      if (better(other.value, other.index, total, V))
        total = other;
    }
    writeId(ids, hostIds, row, static_cast<int32_t>(total.index < V ? total.index : 0));
  }
  cluster.sync(); // no block leaves while block 0 reads its shared memory
}

} // namespace

int argmaxRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               int32_t *ids, int32_t *hostIds) {
  // LLMIR_CUDA_ARGMAX_SPLIT_MIN_V: the shortest row split over a cluster (measuring).
  static const int64_t splitMinV = countFromEnv("LLMIR_CUDA_ARGMAX_SPLIT_MIN_V", kArgmaxSplitMinV);
  if (rows > 0 && V >= splitMinV && clusterMergeEnabled())
    launchDependentCluster(argmaxSplitKernel, static_cast<unsigned>(rows * kArgmaxSplits),
                           kArgmaxThreads, 0, stream, dim3(kArgmaxSplits, 1, 1), logits, V, ids,
                           hostIds);
  else if (rows > 0 && V > 0)
    launchDependent(argmaxKernel, static_cast<unsigned>(rows), kArgmaxThreads, 0, stream,
                    logits, V, ids, hostIds);
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

int scatterProduct(Stream stream, const float *product, int64_t T, bool halves,
                   const LinearSegments &segments) {
  int64_t total = 0;
  for (int k = 0; k < segments.count; ++k)
    total += segments.segment[k].N;
  const int64_t n = T * (segments.pairedSwiglu ? segments.segment[0].N : total);
  if (n > 0)
    launchDependent(scatterProductKernel, gridFor(n), kThreads, 0, stream, product, T, total,
                    halves, segments);
  return cudaGetLastError();
}

int swiglu(Stream stream, const float *gate, const float *up, float *y, int64_t n, void *hi,
           void *lo) {
  auto *h = static_cast<__nv_bfloat16 *>(hi), *l = static_cast<__nv_bfloat16 *>(lo);
  if (n % 4 == 0 && alignedTo(gate, 16) && alignedTo(up, 16) && alignedTo(y, 16) &&
      alignedTo(hi, 8) && alignedTo(lo, 8))
    launchDependent(swigluKernel<true>, gridFor(n / 4), kThreads, 0, stream, gate, up, y, n, h,
                    l);
  else
    launchDependent(swigluKernel<false>, gridFor(n), kThreads, 0, stream, gate, up, y, n, h, l);
  return cudaGetLastError();
}

int swigluBf16(Stream stream, const void *gate, const void *up, int64_t stride, int64_t T,
               int64_t N, float *y, void *hi, void *lo) {
  if (N % 8 != 0 || stride % 8 != 0 || N > (int64_t(1) << 30) || !alignedTo(gate, 16) ||
      !alignedTo(up, 16) || !alignedTo(y, 16) || !alignedTo(hi, 16) || !alignedTo(lo, 16))
    return cudaErrorInvalidValue;
  if (T <= 0 || N <= 0)
    return cudaGetLastError();
  constexpr unsigned kOctetThreads = 128;
  const dim3 grid(static_cast<unsigned>((N / 8 + kOctetThreads - 1) / kOctetThreads),
                  static_cast<unsigned>(std::min<int64_t>(
                      (T + kSwigluBf16Rows - 1) / kSwigluBf16Rows, 65535)));
  launchDependent(swigluBf16Kernel, grid, kOctetThreads, 0, stream,
                  static_cast<const __nv_bfloat16 *>(gate), static_cast<const __nv_bfloat16 *>(up),
                  stride, T, static_cast<int>(N), y, static_cast<__nv_bfloat16 *>(hi),
                  static_cast<__nv_bfloat16 *>(lo));
  return cudaGetLastError();
}

int add(Stream stream, const float *a, const float *b, float *y, int64_t n) {
  launchDependent(addKernel, gridFor(n), kThreads, 0, stream, a, b, y, n);
  return cudaGetLastError();
}

int setWord(Stream stream, int32_t *to, int32_t value) {
  launchDependent(setWordKernel, 1, 1, 0, stream, to, value);
  return cudaGetLastError();
}

int copyWords(Stream stream, const int32_t *from, int32_t *to, int64_t n) {
  if (n <= 0)
    return cudaGetLastError();
  const bool wide = reinterpret_cast<uintptr_t>(from) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(to) % 16 == 0;
  launchDependent(copyWordsKernel, gridFor(wide ? (n + 3) / 4 : n), kThreads, 0, stream, from, to,
                  n, wide);
  return cudaGetLastError();
}

int embedding(Stream stream, const int32_t *ids, int64_t T, const void *table, Storage storage,
              int64_t rows, int64_t cols, int64_t vocabOffset, float *y,
              const int32_t *idsInstead, const int32_t *takeInstead, int64_t tableStride) {
  if (T <= 0 || cols <= 0)
    return cudaGetLastError();
  if (cols > INT32_MAX - kThreads * kEmbeddingColumns)
    return cudaErrorInvalidValue; // a row's columns are 32-bit
  const int64_t parts = (cols + kThreads * kEmbeddingColumns - 1) / (kThreads * kEmbeddingColumns);
  const dim3 grid(static_cast<unsigned>(parts), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
  launchDependent(embeddingKernel, grid, kThreads, 0, stream, ids, T, table, storage, rows,
                  static_cast<int>(cols), tableStride > 0 ? tableStride : cols, vocabOffset, y,
                  idsInstead, takeInstead);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
