// LINEAR: y[T, N] = x[T, K] w[N, K]^T + b. Weights stay in their stored
// dtype. Few tokens (decode) run a GEMV that widens weights in registers,
// rows split over the pool: it is bound by memory bandwidth. Many tokens
// (prefill) run a register-blocked GEMM where the ISA has one (AVX-512),
// else OpenBLAS sgemm, on tiles of widened rows for half weights. With bf16
// products (medium precision) bf16 weights meet x rounded to bf16.
#include "Simd.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/proto/shard_program.pb.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

namespace llmir::engine::cpu {
namespace {

// Below this many tokens each weight row is read once for all of them by
// the GEMV; above it sgemm's blocking wins.
constexpr int64_t kGemvMaxTokens = 8;

simd::WeightKind kindOf(proto::DType dtype) {
  switch (dtype) {
  case proto::BF16:
    return simd::kBf16;
  case proto::F16:
    return simd::kF16;
  default:
    return simd::kF32;
  }
}

void gemv(const float *x, int64_t T, const WeightView &w, float *y,
          ThreadPool &pool) {
  simd::GemvFn fn = simd::kernels().gemv[kindOf(w.dtype)];
  pool.parallelFor(static_cast<size_t>(w.rows), 64, [&](size_t b, size_t e) {
    fn(x, T, w.data, w.cols, static_cast<int64_t>(b), static_cast<int64_t>(e),
       y, w.rows);
  });
}

// OpenBLAS runs its own threads; match them to the pool so the two never
// oversubscribe the cores (the pool waits while sgemm runs).
void sgemm(const float *x, int64_t T, const float *w, int64_t N, int64_t K,
           float *y, int64_t ldy, ThreadPool &pool) {
  const int threads = static_cast<int>(pool.numThreads());
  if (openblas_get_num_threads() != threads)
    openblas_set_num_threads(threads);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T),
              static_cast<int>(N), static_cast<int>(K), 1.0f, x,
              static_cast<int>(K), w, static_cast<int>(K), 0.0f, y,
              static_cast<int>(ldy));
}

void halfGemm(const float *x, int64_t T, const WeightView &w, float *y,
              ThreadPool &pool) {
  const int64_t N = w.rows, K = w.cols;
  const size_t elementSize = weightElementSize(w.dtype);
  auto widenFn = simd::kernels().widen[kindOf(w.dtype)];
  // About 4 MiB of widened weights per tile: cache-sized, few sgemm calls.
  const int64_t tileRows = std::min(
      N, std::max<int64_t>(64, (int64_t{1} << 20) / std::max<int64_t>(K, 1)));
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(tileRows * K));
  float *tile = scratch.data(); // the pool threads must see this thread's copy
  for (int64_t n0 = 0; n0 < N; n0 += tileRows) {
    const int64_t rows = std::min(tileRows, N - n0);
    pool.parallelFor(static_cast<size_t>(rows), 16, [&](size_t b, size_t e) {
      widenFn(w.data + (n0 + static_cast<int64_t>(b)) * K * elementSize,
              tile + b * K, static_cast<int64_t>(e - b) * K);
    });
    sgemm(x, T, tile, rows, K, y + n0, N, pool);
  }
}

// Panels of 32 output columns split over the pool; each thread packs its
// panel (widening half weights) into its own scratch.
void panelGemm(const float *x, int64_t T, const WeightView &w, float *y,
               ThreadPool &pool) {
  constexpr int64_t kPanel = 32;
  auto fn = simd::kernels().gemmPanel[kindOf(w.dtype)];
  const int64_t N = w.rows, K = w.cols;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  pool.parallelFor(static_cast<size_t>(panels), 1, [&](size_t b, size_t e) {
    thread_local std::vector<float> packed;
    packed.resize(static_cast<size_t>(K * kPanel));
    for (size_t p = b; p < e; ++p) {
      const int64_t n0 = static_cast<int64_t>(p) * kPanel;
      fn(x, T, w.data, K, n0, std::min(kPanel, N - n0), y, N, packed.data());
    }
  });
}

// Medium precision with `vdpbf16ps`: x rounded to bf16 once (split over
// the pool for prefill), then the GEMV or the pair-packed panel GEMM.
void bf16DotLinear(const float *x, int64_t T, const WeightView &w, float *y,
                   ThreadPool &pool) {
  const simd::Kernels &k = simd::kernels();
  const int64_t N = w.rows, K = w.cols;
  thread_local std::vector<uint16_t> roundedStorage;
  roundedStorage.resize(static_cast<size_t>(T * K));
  uint16_t *rounded = roundedStorage.data(); // the pool sees this thread's copy
  if (T <= kGemvMaxTokens) {
    k.toBf16(x, rounded, T * K);
    pool.parallelFor(static_cast<size_t>(N), 64, [&](size_t b, size_t e) {
      k.gemvBf16Dot(rounded, T, w.data, K, static_cast<int64_t>(b),
                    static_cast<int64_t>(e), y, N);
    });
    return;
  }
  pool.parallelFor(static_cast<size_t>(T), 8, [&](size_t b, size_t e) {
    k.toBf16(x + b * K, rounded + b * K, static_cast<int64_t>(e - b) * K);
  });
  constexpr int64_t kPanel = 32;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  pool.parallelFor(static_cast<size_t>(panels), 1, [&](size_t b, size_t e) {
    thread_local std::vector<uint32_t> packed;
    packed.resize(static_cast<size_t>(K / 2 * kPanel));
    for (size_t p = b; p < e; ++p) {
      const int64_t n0 = static_cast<int64_t>(p) * kPanel;
      k.gemmPanelBf16Dot(rounded, T, w.data, K, n0, std::min(kPanel, N - n0),
                         y, N, packed.data());
    }
  });
}

// Medium precision without `vdpbf16ps`: the f32 kernels on x rounded to
// bf16 values compute the same products (each exact in f32).
void roundedLinear(const float *x, int64_t T, const WeightView &w, float *y,
                   ThreadPool &pool) {
  const int64_t K = w.cols;
  thread_local std::vector<float> roundedStorage;
  thread_local std::vector<uint16_t> bits;
  roundedStorage.resize(static_cast<size_t>(T * K));
  bits.resize(static_cast<size_t>(T * K));
  simd::kernels().toBf16(x, bits.data(), T * K);
  simd::kernels().widen[simd::kBf16](bits.data(), roundedStorage.data(), T * K);
  linear(roundedStorage.data(), T, w, nullptr, y, pool, false);
}

} // namespace

void linear(const float *x, int64_t T, const WeightView &w, const float *bias,
            float *y, ThreadPool &pool, bool bf16Products) {
  const int64_t N = w.rows, K = w.cols;
  if (T <= 0 || N <= 0)
    return;
  const simd::Kernels &kernels = simd::kernels();
  if (bf16Products && w.dtype == proto::BF16) {
    if (kernels.gemvBf16Dot && (T <= kGemvMaxTokens || K % 2 == 0))
      bf16DotLinear(x, T, w, y, pool);
    else
      roundedLinear(x, T, w, y, pool);
  } else if (T <= kGemvMaxTokens)
    gemv(x, T, w, y, pool);
  else if (kernels.hasFastGemm)
    panelGemm(x, T, w, y, pool);
  else if (w.dtype == proto::F32)
    sgemm(x, T, reinterpret_cast<const float *>(w.data), N, K, y, N, pool);
  else
    halfGemm(x, T, w, y, pool);
  if (bias)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n)
        y[t * N + n] += bias[n];
}

} // namespace llmir::engine::cpu
