// LINEAR with 16-bit weights read in their stored dtype: one warp per output
// feature n computes kTokens tokens at a time, its lanes striding over K
// eight weights (16 bytes) per load when rows are 16-byte aligned; f32
// accumulation, then a warp reduction. Decode (T = 1) reads each weight once,
// which is what bounds it; larger T re-reads the row per group of kTokens
// tokens (tensor-core GEMMs for prefill are the next step, docs/cuda.md).
#include "Launch.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kTokens = 8;
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float toFloat(unsigned short bits, bool bf16) {
  return bf16 ? __uint_as_float(static_cast<unsigned>(bits) << 16)
              : __half2float(__ushort_as_half(bits));
}

__global__ void linear16Kernel(const float *x, int64_t T,
                               const unsigned short *w, bool bf16, int64_t N,
                               int64_t K, float *y) {
  const int64_t n = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t0 = blockIdx.y * int64_t(kTokens);
  if (n >= N)
    return;
  const int tokens = static_cast<int>(T - t0 < kTokens ? T - t0 : kTokens);
  const unsigned short *row = w + n * K;
  float acc[kTokens];
#pragma unroll
  for (int i = 0; i < kTokens; ++i)
    acc[i] = 0.0f;
  const bool vectorised = K % 8 == 0;
  if (vectorised) {
    for (int64_t k = int64_t(lane) * 8; k < K; k += 32 * 8) {
      const uint4 packed = *reinterpret_cast<const uint4 *>(row + k);
      const unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
      float wv[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wv[2 * j] = toFloat(static_cast<unsigned short>(words[j] & 0xffffu), bf16);
        wv[2 * j + 1] = toFloat(static_cast<unsigned short>(words[j] >> 16), bf16);
      }
#pragma unroll
      for (int i = 0; i < kTokens; ++i) {
        if (i >= tokens)
          break;
        const float4 *xv = reinterpret_cast<const float4 *>(x + (t0 + i) * K + k);
        const float4 a = xv[0], b = xv[1];
        acc[i] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w +
                  wv[4] * b.x + wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = toFloat(row[k], bf16);
#pragma unroll
      for (int i = 0; i < kTokens; ++i)
        if (i < tokens)
          acc[i] += wv * x[(t0 + i) * K + k];
    }
  }
#pragma unroll
  for (int i = 0; i < kTokens; ++i) {
    float v = acc[i];
    for (int offset = 16; offset > 0; offset /= 2)
      v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && i < tokens)
      y[(t0 + i) * N + n] = v;
  }
}

} // namespace

int linear16(const float *x, int64_t T, const void *w, Storage storage,
             int64_t N, int64_t K, float *y) {
  if (T > 0 && N > 0) {
    const dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock),
                    static_cast<unsigned>((T + kTokens - 1) / kTokens));
    linear16Kernel<<<grid, kWarpsPerBlock * 32>>>(
        x, T, static_cast<const unsigned short *>(w), storage == Storage::BF16,
        N, K, y);
  }
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
