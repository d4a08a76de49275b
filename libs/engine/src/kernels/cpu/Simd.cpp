// Instantiates SimdKernels.inc for AVX-512, AVX2+FMA and baseline x86-64
// (or only the portable set elsewhere), and picks one from CPU features.
#include "Simd.h"

#include "llmir/engine/Tensor.h"

#include <algorithm>
#include <cmath>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace llmir::engine::cpu::simd {

// The 16-float vectors pass between inlined helpers only, never across an
// ABI boundary, so the psabi note about their calling convention is moot.
#pragma clang diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__clang__)
#define LLMIR_SIMD_X86 1
namespace avx512 {
constexpr const char *kIsaName = "avx512";
constexpr bool kIsaHasGemm = true;
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#include "SimdKernels.inc"
#pragma clang attribute pop
} // namespace avx512

// avx512 plus AVX512-BF16's `vdpbf16ps` for the medium matmul precision.
namespace avx512bf16 {
constexpr const char *kIsaName = "avx512bf16";
constexpr bool kIsaHasGemm = true;
#define LLMIR_SIMD_BF16_DOT 1
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c"))), apply_to = function)
#include "SimdKernels.inc"
#pragma clang attribute pop
#undef LLMIR_SIMD_BF16_DOT
} // namespace avx512bf16

namespace avx2 {
constexpr const char *kIsaName = "avx2";
constexpr bool kIsaHasGemm = false;
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#include "SimdKernels.inc"
#pragma clang attribute pop
} // namespace avx2
#endif

namespace generic {
constexpr const char *kIsaName = "generic";
constexpr bool kIsaHasGemm = false;
#include "SimdKernels.inc"
} // namespace generic

namespace {

// AMD family 1Ah (Zen 5), where the decode GEMVs' prefetch into L2 was
// measured slower on one thread: a plain 512-bit read of the bench model's
// weights 36.8 GB/s with it against 43.7 without, the 1-thread decode 8-21%
// slower (docs/performance.md, "Thirteenth round"); the form is chosen per
// GEMV there (zen5Set). On Zen 4 (family 19h) it
// took one core from 19-20 to 25-29 GB/s; elsewhere it stays on, as it was
// everywhere before.
bool isZen5() {
#ifdef LLMIR_SIMD_X86
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__builtin_cpu_is("amd") && __get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    unsigned family = (eax >> 8) & 0xf;
    if (family == 0xf)
      family += (eax >> 20) & 0xff;
    return family == 0x1a;
  }
#endif
  return false;
}

// The chosen ISA's set with the decode GEMVs prefetching into L2, without
// software prefetch, and prefetching non-temporally.
struct Sets {
  const Kernels *prefetching, *plain, *nta;
};

Sets select() {
  const char *forced = std::getenv("LLMIR_CPU_ISA");
#ifdef LLMIR_SIMD_X86
  __builtin_cpu_init();
  const bool hasAvx2 = __builtin_cpu_supports("avx2") &&
                       __builtin_cpu_supports("fma");
  const bool hasAvx512 = hasAvx2 && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512dq");
  // Every CPU with AVX2 and FMA also has F16C (Haswell, Piledriver on).
  if (forced && std::strcmp(forced, "generic") == 0)
    return {&generic::table, &generic::tableWithoutGemvPrefetch,
            &generic::tableWithNtaGemvPrefetch};
  const bool hasAvx512Bf16 = hasAvx512 && __builtin_cpu_supports("avx512bf16");
  if (forced && std::strcmp(forced, "avx2") == 0 && hasAvx2)
    return {&avx2::table, &avx2::tableWithoutGemvPrefetch,
            &avx2::tableWithNtaGemvPrefetch};
  if (forced && std::strcmp(forced, "avx512") == 0 && hasAvx512)
    return {&avx512::table, &avx512::tableWithoutGemvPrefetch,
            &avx512::tableWithNtaGemvPrefetch};
  if (hasAvx512Bf16)
    return {&avx512bf16::table, &avx512bf16::tableWithoutGemvPrefetch,
            &avx512bf16::tableWithNtaGemvPrefetch};
  if (hasAvx512)
    return {&avx512::table, &avx512::tableWithoutGemvPrefetch,
            &avx512::tableWithNtaGemvPrefetch};
  if (hasAvx2)
    return {&avx2::table, &avx2::tableWithoutGemvPrefetch,
            &avx2::tableWithNtaGemvPrefetch};
#endif
  (void)forced;
  return {&generic::table, &generic::tableWithoutGemvPrefetch,
          &generic::tableWithNtaGemvPrefetch};
}

const Sets &sets() {
  static const Sets chosen = select();
  return chosen;
}

/// LLMIR_CPU_GEMV_PREFETCH: 0, 1 or nta forces a form (GemvPrefetch), -1
/// (unset) lets the CPU and the thread count decide.
int forcedGemvPrefetch() {
  const char *forced = std::getenv("LLMIR_CPU_GEMV_PREFETCH");
  if (!forced)
    return -1;
  if (std::strcmp(forced, "nta") == 0)
    return kPrefetchNta;
  return std::strcmp(forced, "0") != 0 ? kPrefetchL2 : kNoPrefetch;
}

const Kernels &setOf(int prefetch) {
  return prefetch == kNoPrefetch    ? *sets().plain
         : prefetch == kPrefetchNta ? *sets().nta
                                    : *sets().prefetching;
}

// Zen 5, one process alternating the forms every 8 decode tokens
// (docs/performance.md, "Sixteenth round"): the f32 GEMV (3 instructions
// per 64 bytes of weights) reads fastest with the hardware prefetchers
// alone, the four-stream bf16 GEMV (about 6) with the non-temporal
// prefetch, on one thread and on two (where it beat `prefetcht1` as well);
// `vdpbf16ps`'s (3) with the non-temporal prefetch on two threads, alone on
// one (no difference measured there); f16, not measured, keeps what it had
// (no prefetch on one thread, into L2 on more).
Kernels zen5Set(unsigned threads) {
  Kernels set = *sets().plain;
  set.gemv[kBf16] = sets().nta->gemv[kBf16];
  if (threads > 1) {
    set.gemvBf16Dot = sets().nta->gemvBf16Dot;
    set.gemv[kF16] = sets().prefetching->gemv[kF16];
  }
  set.gemvPrefetch = kPrefetchNta;
  return set;
}

} // namespace

const Kernels &kernels() {
  static const int forced = forcedGemvPrefetch();
  static const Kernels &chosen = setOf(forced < 0 ? kPrefetchL2 : forced);
  return chosen;
}

const Kernels &gemvKernelsWith(int prefetch) { return setOf(prefetch); }

int decodeAttentionOrder(int kind) {
  static const int forced = [] {
    const char *order = std::getenv("LLMIR_CPU_ATTENTION_ORDER");
    if (!order)
      return -1;
    return std::strcmp(order, "groups") == 0 ? int{kGroupsOuter} : int{kPositionsOuter};
  }();
  static const bool zen5 = isZen5();
  if (forced >= 0)
    return forced;
  return zen5 && kind == kF32 ? kGroupsOuter : kPositionsOuter;
}

const Kernels &gemvKernels(unsigned threads) {
  static const int forced = forcedGemvPrefetch();
  static const bool zen5 = isZen5();
  static const Kernels zen5One = zen5Set(1), zen5Pool = zen5Set(2);
  if (forced >= 0)
    return setOf(forced);
  if (zen5)
    return threads <= 1 ? zen5One : zen5Pool;
  return *sets().prefetching;
}

} // namespace llmir::engine::cpu::simd
