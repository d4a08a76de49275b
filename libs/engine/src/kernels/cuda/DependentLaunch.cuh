// Programmatic dependent launch (Hopper's griddepcontrol): a kernel of the
// backend may begin while the kernel before it on the stream finishes, so
// its launch and its prologue (the GEMV's first weight loads) overlap the
// other's tail instead of following it. At batch-1 decode a step is ~250
// short kernels whose launch gaps and ramp-ups were half of its time.
//
// The rule every kernel launched with launchDependent() keeps: nothing it
// reads that an earlier kernel writes (activations, the KV cache), and
// nothing it writes, is touched before waitForPrecedingKernels(); only data
// no kernel writes may be read before it: weights, and the step's tables
// (ids, positions, block tables), which the host uploads ahead of the
// step's first kernel (a copy, never a dependent launch: every kernel of the
// step starts after it). The wait returns once the preceding kernels have
// completed and their writes are visible, whatever they signalled, so the
// early signal (allowDependentLaunch) each kernel gives at its start only
// lets the next kernel's blocks be placed once all of this kernel's blocks
// are running; it never lets them read early. Without the attribute (or
// before sm_90) both calls do nothing.
#pragma once

#include "Launch.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <utility>

namespace llmir::engine::cuda::detail {

#if defined(LLMIR_CUDA_KERNEL_CLOCK)
// LLMIR_CUDA_KERNEL_CLOCK (KernelClock.h; built with the CMake option of
// that name): when the table's slots are set, block 0 of each grid records
// when it left the wait, in the grid's slot (%gridid modulo the slot count;
// the key tells a grid from one that took its slot before). A CUDA graph's
// kernel keeps its grid id from replay to replay: its slot sums them.
// recordKernelMark(m) adds, in the same slot, how long after that release
// block 0 reached mark m of its kernel (where one kernel's time goes).
namespace {
struct KernelClockTable {
  unsigned long long *slots = nullptr; // kKernelClockWords words a slot (Launch.h)
  unsigned long long mask = 0;         // slot count - 1
};
// Block 0's release in this run, for its marks (thread 0 writes and reads it).
__shared__ unsigned long long kernelClockReleased;
__device__ KernelClockTable kernelClockTable; // this unit's copy

int setThisUnitsKernelClock(void *slots, uint64_t mask) {
  const KernelClockTable table{static_cast<unsigned long long *>(slots), mask};
  return static_cast<int>(cudaMemcpyToSymbol(kernelClockTable, &table, sizeof table));
}
[[maybe_unused]] const bool kernelClockRegistered =
    (registerKernelClockSetter(&setThisUnitsKernelClock), true);

// The grid's slot and id, and the global timer, for thread 0 of block 0
// while the table is set; null otherwise.
__device__ __forceinline__ unsigned long long *kernelClockSlot(unsigned long long &grid,
                                                               unsigned long long &now) {
  if ((threadIdx.x | threadIdx.y | threadIdx.z | blockIdx.x | blockIdx.y | blockIdx.z) != 0)
    return nullptr;
  unsigned long long *slots = kernelClockTable.slots;
  if (!slots)
    return nullptr;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  asm("mov.u64 %0, %%gridid;" : "=l"(grid));
  return slots + kKernelClockWords * (grid & kernelClockTable.mask);
}

__device__ __forceinline__ void recordKernelClock() {
  unsigned long long grid, released;
  unsigned long long *slot = kernelClockSlot(grid, released);
  if (!slot)
    return;
  kernelClockReleased = released;
  const unsigned long long held = atomicCAS(slot, 0ull, grid + 1);
  if (held == 0) { // this grid's first run: its release and shape
    slot[1] = released;
    slot[4] = static_cast<unsigned long long>(gridDim.x) * gridDim.y * gridDim.z;
    slot[5] = static_cast<unsigned long long>(blockDim.x) * blockDim.y * blockDim.z;
    atomicAdd(slot + 3, 1ull);
  } else if (held == grid + 1) { // a replay: its release past the first run's
    atomicAdd(slot + 2, released - *reinterpret_cast<volatile unsigned long long *>(slot + 1));
    atomicAdd(slot + 3, 1ull);
  } // else another grid's slot: this one goes unrecorded
}
} // namespace
#endif

/// Mark `mark` (0 .. 7) of a dependent kernel, after its wait: in a build
/// with the kernel clock, block 0 adds how long past its release it got
/// here to its grid's slot (KernelClock.h); otherwise nothing.
__device__ __forceinline__ void recordKernelMark([[maybe_unused]] int mark) {
#if defined(LLMIR_CUDA_KERNEL_CLOCK)
  if (mark < 0 || mark >= kKernelClockMarks)
    return;
  unsigned long long grid, now;
  unsigned long long *slot = kernelClockSlot(grid, now);
  if (slot && *reinterpret_cast<volatile unsigned long long *>(slot) == grid + 1)
    atomicAdd(slot + kKernelClockWords - kKernelClockMarks + mark, now - kernelClockReleased);
#endif
}

__device__ __forceinline__ void waitForPrecedingKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#if defined(LLMIR_CUDA_KERNEL_CLOCK)
  recordKernelClock();
#endif
}

__device__ __forceinline__ void allowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/// Both, at the top of a kernel without a prologue of its own.
__device__ __forceinline__ void beginDependentKernel() {
  waitForPrecedingKernels();
  allowDependentLaunch();
}

/// `kernel<<<grid, block, shared, stream>>>(args...)` with the grid in
/// thread-block clusters of `cluster` blocks (compute capability 9.0;
/// cluster (1, 1, 1): none), allowed to overlap the stream's previous
/// kernel when dependentLaunchEnabled().
template <typename... Params, typename... Args>
void launchDependentCluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                            Stream stream, dim3 cluster, Args &&...args) {
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = dependentLaunchEnabled() ? 1 : 0;
  attribute[1].id = cudaLaunchAttributeClusterDimension;
  attribute[1].val.clusterDim.x = cluster.x;
  attribute[1].val.clusterDim.y = cluster.y;
  attribute[1].val.clusterDim.z = cluster.z;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = cluster.x * cluster.y * cluster.z > 1 ? 2 : 1;
  cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

/// launchDependentCluster without clusters.
template <typename... Params, typename... Args>
void launchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                     Stream stream, Args &&...args) {
  launchDependentCluster(kernel, grid, block, shared, stream, dim3(1, 1, 1),
                         std::forward<Args>(args)...);
}

/// The shared memory a kernel gets without asking (allowDynamicShared).
constexpr size_t kDefaultSharedBytes = 48 * 1024;

/// Lets `Kernel` take `bytes` of dynamic shared memory past the
/// kDefaultSharedBytes a kernel gets without asking: the attribute is the
/// device's, set again only when a launch needs more than any before on
/// that device (a kernel launched with several sizes, e.g. linear16's
/// staged rows, would otherwise keep the first size and refuse a larger
/// one with "invalid argument"); the first launch of a shape runs eagerly,
/// before any graph records it. One record per kernel (the template
/// argument), not per function type: two instantiations of one kernel
/// template share a type. The kernel's static shared memory counts against
/// the default too (48 KiB of dynamic beside 64 bytes of static is refused).
template <auto Kernel> void allowDynamicShared(size_t bytes) {
  static std::atomic<size_t> allowed[64] = {};
  static const size_t staticBytes = [] {
    cudaFuncAttributes attributes{};
    return cudaFuncGetAttributes(&attributes, Kernel) == cudaSuccess ? attributes.sharedSizeBytes
                                                                     : size_t(0);
  }();
  int device = 0;
  if (bytes + staticBytes <= kDefaultSharedBytes || cudaGetDevice(&device) != cudaSuccess ||
      device >= 64)
    return;
  if (bytes <= allowed[device].load())
    return;
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) == cudaSuccess)
    allowed[device].store(bytes);
}

} // namespace llmir::engine::cuda::detail
