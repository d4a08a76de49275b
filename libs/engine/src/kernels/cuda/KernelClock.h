// LLMIR_CUDA_KERNEL_CLOCK=FILE (measuring; a build configured with
// `cmake -DLLMIR_CUDA_KERNEL_CLOCK=ON`, off by default: the hook costs the
// batch-1 GEMV a few spilled registers): where a step's time goes kernel by
// kernel, in place. No timeline profiler runs on the lent GPU machines (no
// nsys), and ncu times each kernel alone. Here thread 0 of block 0 of every
// kernel launched as a programmatic dependent (DependentLaunch.cuh) records
// the device's global timer as it leaves the wait for the kernels before
// it, in its grid's slot (%gridid modulo the slot count). The wait of
// kernel k + 1 returns once kernel k has ended, so the difference of two
// consecutive releases is what kernel k added to the step, overlaps and
// all. A CUDA graph's kernel node keeps its grid id across replays: its
// slot holds its first release and the sum of the later ones' distances
// from it, so the mean release of each node, and the differences of
// consecutive nodes' means, are averages over the replays. At exit the clock
// writes one line a grid (or graph node), in order of first release: first
// and mean release (ns), runs recorded, grid and block sizes, and for each
// of the kernel's marks 0-7 (recordKernelMark) the mean time past the
// release at which block 0 reached it, 0 where it has none
// (bench/gpu/kernel_clock.py reads it). Kernels that are not dependent
// launches (cuBLAS, NCCL, the IPC all-reduce) are not recorded: their time
// shows in the kernel before them. In a build without the option the
// variable is ignored, with a warning. A "%p" in FILE becomes the
// process id (a file a rank). One backend of a process records at a time
// (the device tables are the process's): the first created while none is.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace llmir::engine::cuda {

class KernelClock {
public:
  /// A clock writing to $LLMIR_CUDA_KERNEL_CLOCK, or null when it is unset
  /// (or the device table cannot be set up: a warning says why).
  static std::unique_ptr<KernelClock> fromEnvironment();
  /// Writes the file (after the device finished) and unhooks the kernels.
  ~KernelClock();

private:
  KernelClock(std::string path, uint64_t *slots);
  std::string path_;
  uint64_t *slots_; // device memory: KernelClock.cpp's kSlotCount slots of 8 words
};

} // namespace llmir::engine::cuda
