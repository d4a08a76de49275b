// LINEAR: y[T, N] = x[T, K] w[N, K]^T + b. Weights stay in their stored
// dtype. Few tokens (decode) run a GEMV that widens weights in registers,
// rows split over the pool: it is bound by memory bandwidth. Many tokens
// (prefill) run AMX tile products for bf16 weights where the CPU has them
// (AmxMatmul.h), else a register-blocked GEMM where the ISA has one
// (AVX-512), else OpenBLAS sgemm, on tiles of widened rows for half
// weights. With bf16 products (medium precision) bf16 weights meet x
// rounded to bf16.
#include "AmxMatmul.h"
#include "Simd.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/proto/shard_program.pb.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <span>
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

constexpr size_t kGemvMinChunk = 64; // rows

// Read-ahead per thread (ThreadPool::parallelFor): a share of a 1 MiB L2
// that a worker fills in the few microseconds it waits between two GEMVs,
// and that the GEMV after it reads before the lines are evicted.
// LLMIR_READ_AHEAD_KIB sets it (0: none), for A/B runs.
size_t readAheadBytes() {
  static const size_t bytes = [] {
    const char *v = std::getenv("LLMIR_READ_AHEAD_KIB");
    return v ? static_cast<size_t>(std::atol(v)) * 1024 : size_t{256} * 1024;
  }();
  return bytes;
}

// The rows of every output of a group as one range split over the pool:
// one barrier for Q, K and V (or gate and up) instead of one each, and
// chunks that balance across threads even for narrow outputs (K and V of
// grouped-query attention: 3 chunks of 64 rows split 2:1 over 2 threads).
// xBf16: x rounded to bf16 for the `vdpbf16ps` GEMV (medium precision).
// next: the weights of the group after this one, whose start each thread
// reads ahead once it has no rows left here.
void groupGemv(const float *x, const uint16_t *xBf16, int64_t T,
               std::span<const LinearOutput> outputs, ThreadPool &pool,
               std::span<const WeightView> next) {
  const simd::Kernels &k = simd::gemvKernels(pool.numThreads());
  std::vector<size_t> offsets = {0}; // first row of each output in the range
  for (const LinearOutput &o : outputs)
    offsets.push_back(offsets.back() + static_cast<size_t>(o.w.rows));
  // The next group's rows that thread `slot` claims first, as byte ranges
  // of its weights (the same split as below: groupGemv of those weights).
  size_t nextRows = 0;
  for (const WeightView &w : next)
    nextRows += static_cast<size_t>(w.rows);
  std::array<ReadAhead, ThreadPool::kMaxReadAhead> ranges;
  auto readAheadOf = [&](unsigned slot) {
    auto [b, e] = pool.segmentOf(nextRows, kGemvMinChunk, slot);
    size_t budget = readAheadBytes(), count = 0, first = 0;
    for (const WeightView &w : next) {
      const size_t rows = static_cast<size_t>(w.rows);
      const size_t lo = std::max(b, first), hi = std::min(e, first + rows);
      first += rows;
      if (lo >= hi || budget == 0 || count == ranges.size())
        continue;
      const size_t rowBytes = static_cast<size_t>(w.cols) * weightElementSize(w.dtype);
      const size_t bytes = std::min(budget, (hi - lo) * rowBytes);
      ranges[count++] = {w.data + (lo - (first - rows)) * rowBytes, bytes};
      budget -= bytes;
    }
    return std::span<const ReadAhead>(ranges.data(), count);
  };
  std::function<std::span<const ReadAhead>(unsigned)> readAhead;
  if (nextRows > 0 && readAheadBytes() > 0)
    readAhead = readAheadOf;
  pool.parallelFor(offsets.back(), kGemvMinChunk, [&](size_t b, size_t e) {
    for (size_t m = 0; m < outputs.size(); ++m) {
      const size_t lo = std::max(b, offsets[m]), hi = std::min(e, offsets[m + 1]);
      if (lo >= hi)
        continue;
      const WeightView &w = outputs[m].w;
      const int64_t nBegin = static_cast<int64_t>(lo - offsets[m]);
      const int64_t nEnd = static_cast<int64_t>(hi - offsets[m]);
      if (xBf16)
        k.gemvBf16Dot(xBf16, T, w.data, w.cols, nBegin, nEnd, outputs[m].y, w.rows);
      else
        k.gemv[kindOf(w.dtype)](x, T, w.data, w.cols, nBegin, nEnd, outputs[m].y,
                                w.rows);
    }
  }, readAhead);
}

// The pair-packed panel GEMM of `vdpbf16ps` on x rounded to bf16 (even K).
void bf16DotGemm(const uint16_t *xBf16, int64_t T, const WeightView &w,
                 float *y, ThreadPool &pool) {
  constexpr int64_t kPanel = 32;
  auto fn = simd::kernels().gemmPanelBf16Dot;
  const int64_t N = w.rows, K = w.cols;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  pool.parallelFor(static_cast<size_t>(panels), 1, [&](size_t b, size_t e) {
    thread_local std::vector<uint32_t> packed;
    packed.resize(static_cast<size_t>(K / 2 * kPanel));
    for (size_t p = b; p < e; ++p) {
      const int64_t n0 = static_cast<int64_t>(p) * kPanel;
      fn(xBf16, T, w.data, K, n0, std::min(kPanel, N - n0), y, N, packed.data());
    }
  });
}

// AMX takes bf16 and f32 weights of tile-sized shapes in prefill.
bool amxTakes(const WeightView &w) {
  return (w.dtype == proto::BF16 || w.dtype == proto::F32) && amx::fits(w.cols, w.rows);
}

void addBias(const LinearOutput &o, int64_t T) {
  if (!o.bias)
    return;
  const int64_t N = o.w.rows;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      o.y[t * N + n] += o.bias[n];
}

} // namespace

void linearGroup(const float *x, int64_t T, std::span<const LinearOutput> outputs,
                 ThreadPool &pool, bool bf16Products, std::span<const WeightView> next) {
  if (T <= 0 || outputs.empty())
    return;
  const simd::Kernels &kernels = simd::kernels();
  const int64_t K = outputs.front().w.cols;
  const bool bf16 = bf16Products && outputs.front().w.dtype == proto::BF16;
  if (T > kGemvMaxTokens && amx::available()) {
    // The outputs AMX takes, x split once for them (one bf16 term at medium
    // precision with bf16 weights, else three exact ones); the rest as below.
    std::vector<LinearOutput> rest, tiled;
    std::vector<amx::Output> products;
    bool f32Weights = false;
    for (const LinearOutput &o : outputs) {
      if (!amxTakes(o.w)) {
        rest.push_back(o);
        continue;
      }
      tiled.push_back(o);
      f32Weights |= o.w.dtype == proto::F32;
      products.push_back({o.w.data, o.w.dtype == proto::F32, o.w.rows, o.y, o.w.rows});
    }
    if (!tiled.empty()) {
      thread_local amx::Activations terms;
      amx::split(x, T, K, bf16Products && !f32Weights ? 1 : 3, terms, pool);
      amx::gemm(terms, products, pool);
      for (const LinearOutput &o : tiled)
        addBias(o, T);
      linearGroup(x, T, rest, pool, bf16Products, next);
      return;
    }
  }
  if (bf16 && !(kernels.gemvBf16Dot && (T <= kGemvMaxTokens || K % 2 == 0))) {
    // Medium precision without `vdpbf16ps`: the f32 kernels on x rounded to
    // bf16 values compute the same products (each exact in f32).
    thread_local std::vector<uint16_t> bits;
    thread_local std::vector<float> rounded;
    bits.resize(static_cast<size_t>(T * K));
    rounded.resize(static_cast<size_t>(T * K));
    kernels.toBf16(x, bits.data(), T * K);
    kernels.widen[simd::kBf16](bits.data(), rounded.data(), T * K);
    linearGroup(rounded.data(), T, outputs, pool, false, next);
    return;
  }
  const uint16_t *xBf16 = nullptr;
  if (bf16) { // rounded once for the whole group (split over the pool for prefill)
    thread_local std::vector<uint16_t> storage;
    storage.resize(static_cast<size_t>(T * K));
    uint16_t *rounded = storage.data(); // the pool sees this thread's copy
    if (T <= kGemvMaxTokens)
      kernels.toBf16(x, rounded, T * K);
    else
      pool.parallelFor(static_cast<size_t>(T), 8, [&](size_t b, size_t e) {
        kernels.toBf16(x + b * K, rounded + b * K, static_cast<int64_t>(e - b) * K);
      });
    xBf16 = rounded;
  }
  if (T <= kGemvMaxTokens)
    groupGemv(x, xBf16, T, outputs, pool, next);
  for (const LinearOutput &o : outputs) {
    const WeightView &w = o.w;
    const int64_t N = w.rows;
    if (T > kGemvMaxTokens) {
      if (xBf16)
        bf16DotGemm(xBf16, T, w, o.y, pool);
      else if (kernels.hasFastGemm)
        panelGemm(x, T, w, o.y, pool);
      else if (w.dtype == proto::F32)
        sgemm(x, T, reinterpret_cast<const float *>(w.data), N, K, o.y, N, pool);
      else
        halfGemm(x, T, w, o.y, pool);
    }
    addBias(o, T);
  }
}

void linear(const float *x, int64_t T, const WeightView &w, const float *bias,
            float *y, ThreadPool &pool, bool bf16Products) {
  if (w.rows <= 0)
    return;
  const LinearOutput output{w, bias, y};
  linearGroup(x, T, std::span<const LinearOutput>(&output, 1), pool, bf16Products);
}

} // namespace llmir::engine::cpu
