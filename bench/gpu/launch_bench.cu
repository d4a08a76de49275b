// llmir-launch-bench: what one phase boundary of a batch-1 decode step
// costs on this GPU, apart from any arithmetic. A step is ~7 dependent
// launches a layer; whether fusing phases into one persistent kernel
// (grid-wide barriers instead of launch boundaries, the "megakernel"
// route) can shorten it depends on how a barrier compares with a dependent
// launch, which this measures side by side (nccl-tests' way: one harness,
// one line a case):
//
//   chain of launches, each case `--launches` kernels recorded in one CUDA
//   graph and replayed (best of `--replays`), microseconds a launch:
//     empty        1 block: griddepcontrol.wait, then launch_dependents
//     grid         a GEMV's grid (4 blocks of 256 threads a multiprocessor)
//     read         1 block reading the float the kernel before wrote
//     grid-read    the GEMV's grid, every block reading the 2,048 floats the
//                  kernel before wrote (a decode product's x)
//   each with dependent launch (pdl) and without (plain);
//     grid-counted grid-read with dependent launches whose hand-over is a
//                  counter (each block of a kernel counts itself done, the
//                  next kernel's blocks poll it) instead of griddepcontrol.wait
//   one persistent kernel, microseconds a barrier:
//     barrier      all its blocks (as many as fit at once) meeting at
//                  `--launches` grid-wide barriers (an atomic count and a
//                  generation flag)
//     barrier-read the same, every block reading the 2,048 floats block 0
//                  wrote before the barrier
//     flag-read    block 0 writing the floats and raising a flag, the others
//                  waiting for the flag and reading them, then counting
//                  themselves done (the dependency as a counter, not a
//                  barrier of all blocks)
//
//   llmir-launch-bench [--launches 2000] [--replays 10]
#include "DependentLaunch.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

constexpr int kRow = 2048; // floats of a 1.1B decode row (hidden size)

bool check(cudaError_t e, const char *what) {
  if (e == cudaSuccess)
    return true;
  std::fprintf(stderr, "llmir-launch-bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

__device__ __forceinline__ void waitForPrevious() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}
__device__ __forceinline__ void allowNext() { asm volatile("griddepcontrol.launch_dependents;" :::); }

__global__ void emptyKernel() {
  waitForPrevious();
  allowNext();
}

// Thread 0 of block 0 reads in[0] and writes out[0] = in[0] + 1; with
// `row`, every block first reads the whole row (kRow floats, as a GEMV stages
// x), so the kernel cannot finish before the previous one's writes arrive.
__global__ void readKernel(const float *in, float *out, bool row) {
  waitForPrevious();
  allowNext();
  __shared__ float partial[8];
  float sum = 0.0f;
  if (row)
    for (int i = threadIdx.x; i < kRow; i += blockDim.x)
      sum += in[i];
  else if (threadIdx.x == 0)
    sum = in[0];
  for (int offset = 16; offset > 0; offset /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0)
    partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x < (row ? kRow : 1)) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
      total += partial[w];
    out[threadIdx.x] = total * 1e-9f + 1.0f; // depends on every value read
  }
}

__device__ __forceinline__ unsigned loadAcquire(const unsigned *p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// grid-read with the hand-over as a counter instead of griddepcontrol.wait:
// kernel `index` lets the next one launch at once, waits until every block
// of the kernel before has counted itself in done[index - 1], reads the row
// it wrote, writes its own (block 0) and counts itself in done[index]. The
// next kernel's blocks become resident while this one runs (dependent
// launch), so a hand-over is an atomic and a poll in L2, not a grid's
// completion.
__global__ void countedReadKernel(const float *in, float *out, unsigned *done, int index) {
  allowNext();
  if (threadIdx.x == 0 && index > 0)
    while (loadAcquire(done + index - 1) < gridDim.x) {
    }
  __syncthreads();
  __shared__ float partial[8];
  float sum = 0.0f;
  for (int i = threadIdx.x; i < kRow; i += blockDim.x)
    sum += __ldcg(in + i);
  for (int offset = 16; offset > 0; offset /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0)
    partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (blockIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
      total += partial[w];
    for (int i = threadIdx.x; i < kRow; i += blockDim.x)
      out[i] = total * 1e-9f + 1.0f;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(done + index, 1u);
  }
}

// All blocks meet `barriers` times. count: arrivals of this generation;
// generation: bumped by the last arrival. With `row`, block 0 writes the row
// before each barrier and every block reads it after.
__global__ void barrierKernel(unsigned *count, unsigned *generation, int barriers, float *rows,
                              bool row, float *sink) {
  const unsigned blocks = gridDim.x;
  float sum = 0.0f;
  for (int b = 0; b < barriers; ++b) {
    float *now = rows + (b % 2) * kRow;
    if (row && blockIdx.x == 0)
      for (int i = threadIdx.x; i < kRow; i += blockDim.x)
        now[i] = sum + static_cast<float>(b);
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned seen = loadAcquire(generation);
      __threadfence();
      if (atomicAdd(count, 1u) == blocks - 1) {
        atomicExch(count, 0u);
        __threadfence();
        atomicAdd(generation, 1u);
      } else {
        while (loadAcquire(generation) == seen) {
        }
      }
      __threadfence();
    }
    __syncthreads();
    if (row)
      for (int i = threadIdx.x; i < kRow; i += blockDim.x)
        sum += __ldcg(now + i);
  }
  if (sum == -1.0f) // never: keeps the reads
    sink[0] = sum;
}

// Block 0 writes the row, then bumps a flag; the other blocks wait for the
// flag and read the row (one producer, many consumers: a fused kernel's
// dependency tracked by a counter instead of a barrier of all blocks).
// Each round, block 0 then waits for every reader (a second counter) before
// it writes the next row, so a round is one hand-over each way.
__global__ void flagKernel(unsigned *flag, unsigned *readers, int rounds, float *rows,
                           float *sink) {
  float sum = 0.0f;
  for (int b = 0; b < rounds; ++b) {
    float *now = rows + (b % 2) * kRow;
    if (blockIdx.x == 0) {
      if (threadIdx.x == 0) // every reader is done with the row written two rounds ago
        while (b > 0 && loadAcquire(readers) < static_cast<unsigned>(b) * (gridDim.x - 1)) {
        }
      __syncthreads();
      for (int i = threadIdx.x; i < kRow; i += blockDim.x)
        now[i] = sum + static_cast<float>(b);
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(flag, 1u);
      }
      continue;
    }
    if (threadIdx.x == 0)
      while (loadAcquire(flag) <= static_cast<unsigned>(b)) {
      }
    __syncthreads();
    for (int i = threadIdx.x; i < kRow; i += blockDim.x)
      sum += __ldcg(now + i);
    __syncthreads();
    if (threadIdx.x == 0)
      atomicAdd(readers, 1u);
  }
  if (sum == -1.0f)
    sink[0] = sum;
}

// `kernel<<<grid, block, 0, stream>>>(args...)`, allowed to overlap the
// kernel before it (dependent launch) when `pdl`.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl,
            Args... args) {
  check(llmir::bench::launchDependent(kernel, grid, block, 0, stream, pdl, args...), "launch");
}

// Microseconds a launch: `record` issues `launches` launches on the stream,
// captured once into a graph, replayed; the best replay.
template <typename Record>
double perLaunch(cudaStream_t stream, int launches, int replays, Record record) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  record();
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaGraphLaunch(exec, stream), "warm-up");
  double best = 1e30;
  for (int r = 0; r < replays; ++r) {
    check(cudaEventRecord(start, stream), "record");
    check(cudaGraphLaunch(exec, stream), "replay");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "synchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    best = std::min(best, 1e3 * ms / launches);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return best;
}

// Microseconds a step of one persistent kernel running `steps` steps in
// `blocks` blocks of 256 threads, launched cooperatively (every block
// resident at once) after `before` (on the stream); the best of `replays`
// after a warm-up launch.
template <typename Before>
double perStep(cudaStream_t stream, void *kernel, int blocks, void **args, int steps, int replays,
               const Before &before) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  double best = 1e30;
  for (int r = 0; r <= replays; ++r) { // the first: warm-up
    before();
    check(cudaEventRecord(start, stream), "record");
    check(cudaLaunchCooperativeKernel(kernel, dim3(blocks), dim3(256), args, 0, stream),
          "cooperative launch");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "synchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    if (r > 0)
      best = std::min(best, 1e3 * ms / steps);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

int intFlag(int argc, char **argv, const std::string &name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == "--" + name)
      return std::atoi(argv[i + 1]);
  return fallback;
}

} // namespace

int main(int argc, char **argv) {
  const int launches = std::max(1, intFlag(argc, argv, "launches", 2000));
  const int replays = std::max(1, intFlag(argc, argv, "replays", 10));
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "device");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  float *rows = nullptr;
  check(cudaMalloc(&rows, 2 * kRow * sizeof(float)), "malloc");
  check(cudaMemset(rows, 0, 2 * kRow * sizeof(float)), "memset");
  unsigned *counters = nullptr;
  check(cudaMalloc(&counters, 2 * sizeof(unsigned)), "malloc");
  check(cudaMemset(counters, 0, 2 * sizeof(unsigned)), "memset");
  const dim3 gemvGrid(prop.multiProcessorCount * 4), gemvBlock(256);
  std::printf("# llmir-launch-bench on %s (%d multiprocessors), %d launches a graph, best of "
              "%d replays\n",
              prop.name, prop.multiProcessorCount, launches, replays);
  std::printf("%-14s %10s %10s\n", "case", "pdl (us)", "plain (us)");
  struct Case {
    const char *name;
    dim3 grid;
    int kind; // 0 empty, 1 read, 2 grid read
  };
  for (const Case c : {Case{"empty", dim3(1), 0}, Case{"grid", gemvGrid, 0},
                       Case{"read", dim3(1), 1}, Case{"grid-read", gemvGrid, 2}}) {
    double us[2];
    for (int pdl = 1; pdl >= 0; --pdl)
      us[1 - pdl] = perLaunch(stream, launches, replays, [&] {
        for (int i = 0; i < launches; ++i) {
          if (c.kind == 0)
            launch(emptyKernel, c.grid, c.kind == 0 && c.grid.x == 1 ? dim3(32) : gemvBlock,
                   stream, pdl);
          else
            launch(readKernel, c.grid, gemvBlock, stream, pdl,
                   static_cast<const float *>(rows + (i % 2) * kRow),
                   rows + ((i + 1) % 2) * kRow, c.kind == 2);
        }
      });
    std::printf("%-14s %10.2f %10.2f\n", c.name, us[0], us[1]);
  }
  {
    unsigned *done = nullptr;
    check(cudaMalloc(&done, launches * sizeof(unsigned)), "malloc");
    const double us = perLaunch(stream, launches, replays, [&] {
      check(cudaMemsetAsync(done, 0, launches * sizeof(unsigned), stream), "memset");
      for (int i = 0; i < launches; ++i)
        launch(countedReadKernel, gemvGrid, gemvBlock, stream, true,
               static_cast<const float *>(rows + (i % 2) * kRow), rows + ((i + 1) % 2) * kRow,
               done, i);
    });
    std::printf("%-14s %10.2f %10s   (grid-read, the hand-over a counter in L2)\n",
                "grid-counted", us, "-");
    cudaFree(done);
  }
  int perSm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, barrierKernel, 256, 0),
        "occupancy");
  for (int blocksPerSm : {1, std::min(perSm, 4)})
    for (bool row : {false, true}) {
      const int blocks = prop.multiProcessorCount * blocksPerSm;
      unsigned *generation = counters + 1;
      int barriers = launches;
      bool rowArg = row;
      void *args[] = {&counters, &generation, &barriers, &rows, &rowArg, &rows};
      const double us = perStep(stream, reinterpret_cast<void *>(barrierKernel), blocks, args,
                                barriers, replays, [] {});
      std::printf("%-14s %10.2f %10s   (%d blocks of 256 threads, %d a multiprocessor)\n",
                  row ? "barrier-read" : "barrier", us, "-", blocks, blocksPerSm);
    }
  for (int blocksPerSm : {1, std::min(perSm, 4)}) {
    const int blocks = prop.multiProcessorCount * blocksPerSm;
    int rounds = launches;
    unsigned *flag = counters, *readers = counters + 1;
    void *args[] = {&flag, &readers, &rounds, &rows, &rows};
    const double us =
        perStep(stream, reinterpret_cast<void *>(flagKernel), blocks, args, rounds, replays, [&] {
          check(cudaMemsetAsync(counters, 0, 2 * sizeof(unsigned), stream), "memset");
        });
    std::printf("%-14s %10.2f %10s   (%d blocks of 256 threads, %d a multiprocessor; a round "
                "is a hand-over each way)\n",
                "flag-read", us, "-", blocks, blocksPerSm);
  }
  return 0;
}
