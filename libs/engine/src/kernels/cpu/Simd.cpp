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

// Whether the decode GEMVs' software prefetch pays on this CPU. It was
// measured to on Zen 4 (AMD family 19h: one core streamed a bf16 decode's
// weights at 25-29 GB/s with it against 19-20 without) and not on Zen 5
// (family 1Ah: a plain 512-bit read of the same weights 36.8 GB/s with the
// prefetch against 43.7 without; docs/performance.md, "Thirteenth round");
// elsewhere it stays on, as it was everywhere before.
bool gemvPrefetchPays() {
  if (const char *forced = std::getenv("LLMIR_CPU_GEMV_PREFETCH"))
    return std::strcmp(forced, "0") != 0;
#ifdef LLMIR_SIMD_X86
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__builtin_cpu_is("amd") && __get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    unsigned family = (eax >> 8) & 0xf;
    if (family == 0xf)
      family += (eax >> 20) & 0xff;
    return family < 0x1a;
  }
#endif
  return true;
}

const Kernels &select(bool gemvPrefetch) {
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
    return gemvPrefetch ? generic::table : generic::tableWithoutGemvPrefetch;
  const bool hasAvx512Bf16 = hasAvx512 && __builtin_cpu_supports("avx512bf16");
  if (forced && std::strcmp(forced, "avx2") == 0 && hasAvx2)
    return gemvPrefetch ? avx2::table : avx2::tableWithoutGemvPrefetch;
  if (forced && std::strcmp(forced, "avx512") == 0 && hasAvx512)
    return gemvPrefetch ? avx512::table : avx512::tableWithoutGemvPrefetch;
  if (hasAvx512Bf16)
    return gemvPrefetch ? avx512bf16::table : avx512bf16::tableWithoutGemvPrefetch;
  if (hasAvx512)
    return gemvPrefetch ? avx512::table : avx512::tableWithoutGemvPrefetch;
  if (hasAvx2)
    return gemvPrefetch ? avx2::table : avx2::tableWithoutGemvPrefetch;
#endif
  (void)forced;
  return gemvPrefetch ? generic::table : generic::tableWithoutGemvPrefetch;
}

} // namespace

const Kernels &kernels() {
  static const Kernels &chosen = select(gemvPrefetchPays());
  return chosen;
}

} // namespace llmir::engine::cpu::simd
