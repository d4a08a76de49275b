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

__device__ __forceinline__ void waitForPrecedingKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
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
/// template share a type.
template <auto Kernel> void allowDynamicShared(size_t bytes) {
  static std::atomic<size_t> allowed[64] = {};
  int device = 0;
  if (bytes <= kDefaultSharedBytes || cudaGetDevice(&device) != cudaSuccess || device >= 64)
    return;
  if (bytes <= allowed[device].load())
    return;
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) == cudaSuccess)
    allowed[device].store(bytes);
}

} // namespace llmir::engine::cuda::detail
