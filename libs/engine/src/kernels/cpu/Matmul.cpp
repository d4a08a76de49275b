// LINEAR: y[T, N] = x[T, K] w[N, K]^T + b. F32 weights go to OpenBLAS. Half
// weights (BF16/F16) stay half in memory: decode (T == 1) uses a GEMV that
// widens in registers (AVX2/FMA when the CPU has it), prefill widens tiles of
// w into a scratch buffer and runs sgemm on them.
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/proto/shard_program.pb.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

namespace llmir::engine::cpu {
namespace {

using HalfDot = float (*)(const float *x, const uint16_t *w, int64_t K);

template <float (*Widen)(uint16_t)>
float dotHalfScalar(const float *x, const uint16_t *w, int64_t K) {
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k)
    sum += x[k] * Widen(w[k]);
  return sum;
}

__attribute__((target("avx2,fma"))) float horizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) __m256 loadBf16(const uint16_t *w) {
  __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i *>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

__attribute__((target("avx2,fma,f16c"))) __m256 loadF16(const uint16_t *w) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(w)));
}

// Two accumulators hide the FMA latency; the tail is scalar.
#define LLMIR_DEFINE_HALF_DOT_AVX2(Name, Target, Load, Widen)                  \
  __attribute__((target(Target))) float Name(const float *x,                   \
                                             const uint16_t *w, int64_t K) {   \
    __m256 acc0 = _mm256_setzero_ps();                                         \
    __m256 acc1 = _mm256_setzero_ps();                                         \
    int64_t k = 0;                                                             \
    for (; k + 16 <= K; k += 16) {                                             \
      acc0 = _mm256_fmadd_ps(Load(w + k), _mm256_loadu_ps(x + k), acc0);       \
      acc1 = _mm256_fmadd_ps(Load(w + k + 8), _mm256_loadu_ps(x + k + 8),      \
                             acc1);                                            \
    }                                                                          \
    for (; k + 8 <= K; k += 8)                                                 \
      acc0 = _mm256_fmadd_ps(Load(w + k), _mm256_loadu_ps(x + k), acc0);       \
    float sum = horizontalSum(_mm256_add_ps(acc0, acc1));                      \
    for (; k < K; ++k)                                                         \
      sum += x[k] * Widen(w[k]);                                               \
    return sum;                                                                \
  }

LLMIR_DEFINE_HALF_DOT_AVX2(dotBf16Avx2, "avx2,fma", loadBf16, bf16ToF32)
LLMIR_DEFINE_HALF_DOT_AVX2(dotF16Avx2, "avx2,fma,f16c", loadF16, f16ToF32)
#undef LLMIR_DEFINE_HALF_DOT_AVX2

HalfDot selectHalfDot(proto::DType dtype) {
  static const bool hasAvx2Fma =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // clang 15's __builtin_cpu_supports does not know "f16c"; every AVX2 CPU
  // (Haswell and later, Zen) has it, and the AVX2 kernel is gated on AVX2.
  static const bool hasF16c = hasAvx2Fma;
  if (dtype == proto::BF16)
    return hasAvx2Fma ? dotBf16Avx2 : dotHalfScalar<bf16ToF32>;
  return hasAvx2Fma && hasF16c ? dotF16Avx2 : dotHalfScalar<f16ToF32>;
}

void halfGemv(const float *x, const WeightView &w, float *y,
              ThreadPool &pool) {
  HalfDot dot = selectHalfDot(w.dtype);
  const auto *rows = reinterpret_cast<const uint16_t *>(w.data);
  const int64_t K = w.cols;
  pool.parallelFor(static_cast<size_t>(w.rows), 16, [&](size_t b, size_t e) {
    for (size_t n = b; n < e; ++n)
      y[n] = dot(x, rows + n * K, K);
  });
}

void halfGemm(const float *x, int64_t T, const WeightView &w, float *y,
              ThreadPool &pool) {
  const int64_t N = w.rows, K = w.cols;
  // About 16 MiB of widened weights per tile.
  const int64_t tileRows = std::min(
      N, std::max<int64_t>(64, (int64_t{4} << 20) / std::max<int64_t>(K, 1)));
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(tileRows * K));
  float *tile = scratch.data(); // the pool threads must see this thread's copy
  for (int64_t n0 = 0; n0 < N; n0 += tileRows) {
    const int64_t rows = std::min(tileRows, N - n0);
    pool.parallelFor(static_cast<size_t>(rows), 16, [&](size_t b, size_t e) {
      w.widenRows(n0 + static_cast<int64_t>(b), static_cast<int64_t>(e - b),
                  tile + b * K);
    });
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T),
                static_cast<int>(rows), static_cast<int>(K), 1.0f, x,
                static_cast<int>(K), tile, static_cast<int>(K), 0.0f,
                y + n0, static_cast<int>(N));
  }
}

} // namespace

void linear(const float *x, int64_t T, const WeightView &w, const float *bias,
            float *y, ThreadPool &pool) {
  const int64_t N = w.rows, K = w.cols;
  if (T <= 0 || N <= 0)
    return;
  if (w.dtype == proto::F32) {
    const auto *wf = reinterpret_cast<const float *>(w.data);
    if (T == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N),
                  static_cast<int>(K), 1.0f, wf, static_cast<int>(K), x, 1,
                  0.0f, y, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T),
                  static_cast<int>(N), static_cast<int>(K), 1.0f, x,
                  static_cast<int>(K), wf, static_cast<int>(K), 0.0f, y,
                  static_cast<int>(N));
  } else if (T == 1) {
    halfGemv(x, w, y, pool);
  } else {
    halfGemm(x, T, w, y, pool);
  }
  if (bias)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n)
        y[t * N + n] += bias[n];
}

} // namespace llmir::engine::cpu
