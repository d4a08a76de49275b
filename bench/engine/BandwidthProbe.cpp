#include "BandwidthProbe.h"

#include "llmir/engine/HugePages.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace llmir::bench {
namespace {

// Four independent sums keep several cache lines in flight. The result is
// returned so that the reads cannot be dropped. Which load width streams
// fastest depends on the core: 256-bit loads read 34.5 GB/s on one Zen 4
// core where 512-bit ones read 31.7 (docs/performance.md, "Eleventh
// round"), and 38.1 on one Zen 5 core where 512-bit ones read 43.7
// ("Thirteenth round"), so with AVX-512 the probe times both and keeps the
// faster; the baseline build is the fallback.
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
#pragma clang diagnostic ignored "-Wpsabi" // v8f never crosses a call

// One body, compiled for AVX-512 (V = v16f), AVX2 and the baseline (v8f).
#define LLMIR_SUM_STREAM_BODY(V)                                               \
  constexpr size_t lanes = sizeof(V) / sizeof(float);                          \
  V a[4] = {};                                                                 \
  size_t i = 0;                                                                \
  for (; i + 4 * lanes <= n; i += 4 * lanes)                                   \
    for (size_t j = 0; j < 4; ++j) {                                           \
      V v;                                                                     \
      __builtin_memcpy(&v, data + i + lanes * j, sizeof v);                    \
      a[j] += v;                                                               \
    }                                                                          \
  V sum = a[0] + a[1] + a[2] + a[3];                                           \
  float total = 0.0f;                                                          \
  for (size_t j = 0; j < lanes; ++j)                                           \
    total += sum[j];                                                           \
  for (; i < n; ++i)                                                           \
    total += data[i];                                                          \
  return total;

float sumBaseline(const float *data, size_t n) { LLMIR_SUM_STREAM_BODY(v8f) }
#if defined(__x86_64__)
__attribute__((target("avx2"))) float sumAvx2(const float *data, size_t n) {
  LLMIR_SUM_STREAM_BODY(v8f)
}
__attribute__((target("avx512f"))) float sumAvx512(const float *data, size_t n) {
  LLMIR_SUM_STREAM_BODY(v16f)
}
#endif
#undef LLMIR_SUM_STREAM_BODY

using SumFn = float (*)(const float *, size_t);

/// The load widths to time: 256- and 512-bit where the CPU has them.
std::vector<SumFn> sumForms() {
#if defined(__x86_64__)
  std::vector<SumFn> forms;
  if (__builtin_cpu_supports("avx2"))
    forms.push_back(sumAvx2);
  if (__builtin_cpu_supports("avx512f"))
    forms.push_back(sumAvx512);
  if (!forms.empty())
    return forms;
#endif
  return {sumBaseline};
}

} // namespace

Result<ReadBandwidthProbe> ReadBandwidthProbe::create(size_t bytes) {
  Result<engine::HugePageRegion> region = engine::HugePageRegion::allocate(bytes);
  if (!region)
    return region.status().withContext("bandwidth probe");
  float *buffer = reinterpret_cast<float *>(region->data());
  std::fill(buffer, buffer + bytes / sizeof(float), 1.0f); // touches every page
  return ReadBandwidthProbe(std::move(*region));
}

double ReadBandwidthProbe::measure(unsigned numThreads, int repeats) {
  const size_t words = region_.size() / sizeof(float);
  const float *buffer = reinterpret_cast<const float *>(region_.data());
  numThreads = std::max(1u, numThreads);
  const size_t perThread = words / numThreads;
  std::vector<float> sinks(numThreads);
  static const std::vector<SumFn> forms = sumForms();
  double best = 0.0;
  for (int pass = 0; pass < repeats * static_cast<int>(forms.size()); ++pass) {
    const SumFn sum = forms[static_cast<size_t>(pass) % forms.size()]; // alternated
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < numThreads; ++t)
      threads.emplace_back([&, t] {
        sinks[t] += sum(buffer + t * perThread, perThread);
      });
    for (std::thread &t : threads)
      t.join();
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    best = std::max(best, static_cast<double>(perThread * numThreads *
                                              sizeof(float)) /
                              seconds);
  }
  volatile float keep = 0;
  for (float s : sinks)
    keep = keep + s;
  (void)keep;
  return best;
}

} // namespace llmir::bench
