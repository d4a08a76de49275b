// Vectorised inner loops of the CPU kernels, compiled once per instruction
// set (AVX-512, AVX2+FMA, baseline x86-64) from one source (SimdKernels.inc)
// and picked at run time from the CPU's features. All arithmetic is f32;
// half weights are widened in registers.
#pragma once

#include <cstdint>

namespace llmir::engine::cpu::simd {

/// Weight element encodings the GEMV reads directly.
enum WeightKind : int { kF32 = 0, kBf16 = 1, kF16 = 2 };

/// How a decode GEMV prefetches its weights in software: not at all (the
/// hardware prefetchers alone), into L2 (`prefetcht1`), or non-temporal
/// (`prefetchnta`: on Zen 5 a line so fetched is not kept in the caches
/// beyond L1 once evicted).
enum GemvPrefetch : int { kNoPrefetch = 0, kPrefetchL2 = 1, kPrefetchNta = 2 };

/// The order in which decode attention walks a token's cache rows (the same
/// sums either way): each block of positions for every group of query
/// heads in turn, or each group over all the positions in turn.
enum DecodeAttentionOrder : int { kPositionsOuter = 0, kGroupsOuter = 1 };

using GemvFn = void (*)(const float *x, int64_t T, const void *w, int64_t K,
                        int64_t nBegin, int64_t nEnd, float *y, int64_t ldy);
/// Medium matmul precision: x already rounded to bf16 (bits), w bf16.
using GemvBf16DotFn = void (*)(const uint16_t *x, int64_t T, const void *w,
                               int64_t K, int64_t nBegin, int64_t nEnd,
                               float *y, int64_t ldy);

struct Kernels {
  const char *isa;
  /// y[t * ldy + n] = dot(x[t * K, +K), row n of w[N, K]) for n in
  /// [nBegin, nEnd), t in [0, T); indexed by WeightKind.
  GemvFn gemv[3];
  /// dst[i] = widen(src[i]) for i in [0, n), src of WeightKind kBf16/kF16.
  void (*widen[3])(const void *src, float *dst, int64_t n);
  /// Columns [n0, n0 + cols) (cols <= 32) of y[T, N] = x[T, K] w[N, K]^T,
  /// rows at y + t * ldy; panel is scratch of K * 32 floats.
  void (*gemmPanel[3])(const float *x, int64_t T, const void *w, int64_t K,
                       int64_t n0, int64_t cols, float *y, int64_t ldy,
                       float *panel);
  /// gemmPanel is register-blocked for this ISA (32 vector registers);
  /// elsewhere a BLAS sgemm is faster.
  bool hasFastGemm;
  float (*dot)(const float *a, const float *b, int64_t n);
  /// y += a * x.
  void (*axpy)(float a, const float *x, float *y, int64_t n);
  /// In place s[i] = exp(s[i] * scale - max) / sum over [0, n).
  void (*softmax)(float *s, int64_t n, float scale);
  /// y = silu(gate) * up.
  void (*swiglu)(const float *gate, const float *up, float *y, int64_t n);
  /// s[r][j] = q[r] . kt[., j] for 4 query rows over D, keys transposed
  /// kt[D][ldk], j in [0, L); L a multiple of 32.
  void (*scores4)(const float *const *q, const float *kt, int64_t ldk,
                  int64_t D, int64_t L, float *s, int64_t lds);
  /// o[r][d] = sum_j p[r][j] * v[j][d] for r < 4, j in [0, L), d in [0, D);
  /// D a multiple of 16; v is [L][D] contiguous.
  void (*weightedSum4)(const float *p, int64_t ldp, const float *v, int64_t L,
                       int64_t D, float *const *o);
  /// Decode attention over every query head of one token, each cache row
  /// read once for all of them: `groups` groups of counts[g] (1..4) query
  /// heads that share one KV head, whose elements start offsets[g] elements
  /// into a position's row (keys[j], values[j]: the rows of position j, all
  /// KV heads, as the cache stores them; indexed by the cache's element,
  /// kF32 or kBf16). For r < counts[g], head i = g * 4 + r:
  /// o[i][d] = sum_j softmax_j(scale * q[i] . key j) * value j [d] over
  /// j < L (L >= 1), and, when lse is not null, lse[i] = log sum_j
  /// exp(scale * q[i] . key j). D a multiple of 16. Indexed by
  /// DecodeAttentionOrder, then the element; every order gives the same
  /// results.
  void (*decodeAttention[2][2])(const float *const *q, const int64_t *counts,
                             const int64_t *offsets, int64_t groups,
                             const void *const *keys, const void *const *values,
                             int64_t L, int64_t D, float scale, float *const *o,
                             float *lse);
  /// dst[i] = src[i] rounded to the nearest bf16 (ties to even; NaN stays
  /// NaN), as model::f32ToBf16.
  void (*toBf16)(const float *src, uint16_t *dst, int64_t n);
  /// Products of bf16 activations and bf16 weights with f32 accumulation
  /// (AVX512-BF16 `vdpbf16ps`, two products per lane and instruction), for
  /// the medium matmul precision; null where the set has no such
  /// instruction (the caller then rounds x to bf16 and runs the f32 kernels,
  /// which compute the same products exactly). gemvBf16Dot is gemv[kBf16]
  /// on rounded x; gemmPanelBf16Dot is gemmPanel[kBf16] on rounded x for
  /// even K, its panel scratch K * 16 uint32 (pairs of bf16).
  GemvBf16DotFn gemvBf16Dot;
  void (*gemmPanelBf16Dot)(const uint16_t *x, int64_t T, const void *w,
                           int64_t K, int64_t n0, int64_t cols, float *y,
                           int64_t ldy, uint32_t *panel);
  /// How the decode GEMVs (gemv, gemvBf16, gemvBf16Dot) prefetch their
  /// weights (GemvPrefetch; gemvKernels may mix forms). Every form computes
  /// the same sums in the same order.
  int gemvPrefetch;
};

/// The fastest set this CPU runs. LLMIR_CPU_ISA=avx512bf16|avx512|avx2|generic
/// forces one (tests use it to cover every path on one machine); avx512bf16
/// is avx512 plus the `vdpbf16ps` products, picked where the CPU has them.
/// Prefill products of bf16 weights run on AMX tiles (AmxMatmul.h) where
/// the CPU has AMX-BF16 unless LLMIR_CPU_ISA names a set (`amx`: the best
/// set with AMX, as unset).
const Kernels &kernels();
/// kernels() with the decode GEMVs (gemv, gemvBf16, gemvBf16Dot) for a pool of
/// `threads`: they prefetch into L2 except on AMD family 1Ah (Zen 5), where
/// the f32 GEMV leaves it to the hardware prefetchers, the bf16 one
/// prefetches non-temporally and `vdpbf16ps`'s does so on two threads and
/// more (as measured there;
/// docs/performance.md, "Thirteenth round", "Sixteenth round").
/// LLMIR_CPU_GEMV_PREFETCH=0|1|nta forces one form for all, here and in
/// kernels() (the results are the same).
const Kernels &gemvKernels(unsigned threads);
/// kernels() with every decode GEMV in form `prefetch` (GemvPrefetch).
const Kernels &gemvKernelsWith(int prefetch);

/// The DecodeAttentionOrder for a cache of `kind` (kF32 or kBf16): groups
/// outer for an f32 cache on AMD family 1Ah (Zen 5), where it read the KV
/// faster, positions outer elsewhere (docs/performance.md, "Seventeenth
/// round"). LLMIR_CPU_ATTENTION_ORDER=positions|groups forces one.
int decodeAttentionOrder(int kind);

} // namespace llmir::engine::cpu::simd
