#include "KernelClock.h"

#include "Launch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

namespace llmir::engine::cuda {
namespace detail {
namespace {
std::mutex setterLock;
std::vector<KernelClockSetter> &setters() {
  static std::vector<KernelClockSetter> registered;
  return registered;
}
} // namespace

void registerKernelClockSetter(KernelClockSetter setter) {
  std::lock_guard<std::mutex> lock(setterLock);
  setters().push_back(setter);
}

int setKernelClock(void *slots, uint64_t mask) {
  std::lock_guard<std::mutex> lock(setterLock);
  for (KernelClockSetter setter : setters())
    if (int error = setter(slots, mask))
      return error;
  return 0;
}
} // namespace detail

namespace {
// 2^18 slots (32 MiB): a few thousand decode steps of ~300 kernels.
constexpr uint64_t kSlotCount = uint64_t{1} << 18;
// Launch.h's slot layout.
constexpr int kWords = detail::kKernelClockWords;
constexpr int kMarks = detail::kKernelClockMarks;
// The device tables are per process (each translation unit's one copy):
// the first backend with the variable set records, later ones while it
// lives do not.
std::atomic<bool> recording{false};
} // namespace

std::unique_ptr<KernelClock> KernelClock::fromEnvironment() {
  const char *variable = std::getenv("LLMIR_CUDA_KERNEL_CLOCK");
  if (!variable || !*variable)
    return nullptr;
  // "%p": the process id, one file a rank (as LLVM_PROFILE_FILE).
  std::string path = variable;
  if (const size_t at = path.find("%p"); at != std::string::npos)
    path.replace(at, 2, std::to_string(getpid()));
#if !defined(LLMIR_CUDA_KERNEL_CLOCK)
  std::fprintf(stderr, "LLMIR_CUDA_KERNEL_CLOCK: this build records no kernel times "
                       "(configure with -DLLMIR_CUDA_KERNEL_CLOCK=ON)\n");
  return nullptr;
#endif
  if (recording.exchange(true)) {
    std::fprintf(stderr, "LLMIR_CUDA_KERNEL_CLOCK: another backend of this process records; "
                         "this one does not\n");
    return nullptr;
  }
  void *slots = nullptr;
  const size_t bytes = kSlotCount * kWords * sizeof(uint64_t);
  if (cudaMalloc(&slots, bytes) != cudaSuccess || cudaMemset(slots, 0, bytes) != cudaSuccess ||
      detail::setKernelClock(slots, kSlotCount - 1) != 0) {
    std::fprintf(stderr, "LLMIR_CUDA_KERNEL_CLOCK: no device table (%s); not recording\n",
                 cudaGetErrorString(cudaGetLastError()));
    if (slots)
      cudaFree(slots);
    recording = false;
    return nullptr;
  }
  return std::unique_ptr<KernelClock>(new KernelClock(path, static_cast<uint64_t *>(slots)));
}

KernelClock::KernelClock(std::string path, uint64_t *slots)
    : path_(std::move(path)), slots_(slots) {}

KernelClock::~KernelClock() {
  std::vector<uint64_t> host(kSlotCount * kWords);
  const bool read = cudaDeviceSynchronize() == cudaSuccess &&
                    cudaMemcpy(host.data(), slots_, host.size() * sizeof(uint64_t),
                               cudaMemcpyDeviceToHost) == cudaSuccess;
  detail::setKernelClock(nullptr, 0);
  cudaFree(slots_);
  recording = false;
  std::FILE *out = read ? std::fopen(path_.c_str(), "w") : nullptr;
  if (!out) {
    std::fprintf(stderr, "LLMIR_CUDA_KERNEL_CLOCK: could not %s %s\n",
                 read ? "write" : "read the device table for", path_.c_str());
    return;
  }
  struct Grid {
    uint64_t first, runs, size, block;
    double mean;
    double marks[kMarks]; // mean ns past the release; 0: not marked
  };
  std::vector<Grid> grids;
  for (uint64_t i = 0; i < kSlotCount; ++i) {
    const uint64_t *slot = &host[i * kWords];
    if (slot[0] == 0 || slot[3] == 0)
      continue;
    const double runs = static_cast<double>(slot[3]);
    Grid g{slot[1], slot[3], slot[4], slot[5], static_cast<double>(slot[2]) / runs, {}};
    for (int m = 0; m < kMarks; ++m)
      g.marks[m] = static_cast<double>(slot[kWords - kMarks + m]) / runs;
    grids.push_back(g);
  }
  std::sort(grids.begin(), grids.end(),
            [](const Grid &a, const Grid &b) { return a.first < b.first; });
  std::fprintf(out, "first_release_ns\tmean_release_past_first_ns\truns\tgrid\tblock");
  for (int m = 0; m < kMarks; ++m)
    std::fprintf(out, "\tmark%d_ns", m);
  std::fprintf(out, "\n");
  for (const Grid &g : grids) {
    std::fprintf(out, "%llu\t%.1f\t%llu\t%llu\t%llu", (unsigned long long)g.first, g.mean,
                 (unsigned long long)g.runs, (unsigned long long)g.size,
                 (unsigned long long)g.block);
    for (double mark : g.marks)
      std::fprintf(out, "\t%.1f", mark);
    std::fprintf(out, "\n");
  }
  std::fclose(out);
  std::fprintf(stderr, "LLMIR_CUDA_KERNEL_CLOCK: %zu grids written to %s\n", grids.size(),
               path_.c_str());
}

} // namespace llmir::engine::cuda
