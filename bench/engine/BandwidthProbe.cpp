#include "BandwidthProbe.h"

#include "llmir/engine/HugePages.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace llmir::bench {
namespace {

// Four independent 32-byte sums keep several cache lines in flight. The
// AVX2 build streams at full width; the baseline one is the fallback. The
// result is returned so that the reads cannot be dropped.
typedef float v8f __attribute__((vector_size(32)));
#pragma clang diagnostic ignored "-Wpsabi" // v8f never crosses a call

// One body, compiled for AVX2 and for the baseline.
#define LLMIR_SUM_STREAM_BODY                                                  \
  v8f a[4] = {};                                                               \
  size_t i = 0;                                                                \
  for (; i + 32 <= n; i += 32)                                                 \
    for (int j = 0; j < 4; ++j) {                                              \
      v8f v;                                                                   \
      __builtin_memcpy(&v, data + i + 8 * j, sizeof v);                        \
      a[j] += v;                                                               \
    }                                                                          \
  v8f sum = a[0] + a[1] + a[2] + a[3];                                         \
  float total = 0.0f;                                                          \
  for (int j = 0; j < 8; ++j)                                                  \
    total += sum[j];                                                           \
  for (; i < n; ++i)                                                           \
    total += data[i];                                                          \
  return total;

float sumBaseline(const float *data, size_t n) { LLMIR_SUM_STREAM_BODY }
#if defined(__x86_64__)
__attribute__((target("avx2"))) float sumAvx2(const float *data, size_t n) {
  LLMIR_SUM_STREAM_BODY
}
#endif
#undef LLMIR_SUM_STREAM_BODY

float sumStream(const float *data, size_t n) {
#if defined(__x86_64__)
  static const bool hasAvx2 = __builtin_cpu_supports("avx2");
  if (hasAvx2)
    return sumAvx2(data, n);
#endif
  return sumBaseline(data, n);
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
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < numThreads; ++t)
      threads.emplace_back([&, t] {
        sinks[t] += sumStream(buffer + t * perThread, perThread);
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
