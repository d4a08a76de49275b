// llmir-chain-bench: the products of a batch-1 decode step chained as the
// engine launches them (one dependent launch a product, a CUDA graph) against
// one persistent kernel whose blocks hand each product over through a
// counter and fetch their rows of the next product's weights into shared
// memory while they wait for its input. llmir-launch-bench measured a
// hand-over without arithmetic (a dependent launch 2.18 us, a flag ~1.6-1.8
// one way); this measures what the persistent route would give the real
// shapes, before anyone builds it into the engine (docs/performance.md).
//
// A layer is the 1.1B shape's four products with bf16 weights, f32 x and
// accumulation: Q/K/V [2,560 x 2,048], O [2,048 x 2,048], gate/up [11,264 x
// 2,048], down [2,048 x 5,632]; each reads the first K outputs of the one
// before (no attention, norm or SwiGLU: the products and their hand-overs
// only), `--layers` of them (22) with weights of their own, 1.94 GB in all.
// Every variant computes each row with the same loads in the same order
// (one warp a row, eight 16-byte loads a lane in flight, a fixed warp
// reduction), so the last product's outputs must agree bit for bit; the
// bench fails otherwise.
//
//   llmir-chain-bench [--shape 1b|8b] [--layers N] [--replays 10] [--per-sm 2]
//                     [--prefetch-kib 0,32,64] [--mix rrrl,trrl,...]
//
// --mix: after the variants, one line a mix of kernels by product (a letter
// each for Q/K/V, O, gate/up, down: r one row a warp, l one row with 16
// loads, t two rows a warp), e.g. `--mix rrrl,rtrl,tttt`: the engine took
// two rows a warp at 1.1B slower than one although this bench's "two rows a
// warp" chain was faster; mixes say which product's choice decides it.
// --shape 8b: the 8B (Llama-3) shape's products instead, Q/K/V [6,144 x
// 4,096], O [4,096 x 4,096], gate/up [28,672 x 4,096], down [4,096 x
// 14,336], 32 layers (14 GB). Lines: launched (what the engine does: the
// first round of a row's weights requested before griddepcontrol.wait),
// then its variants: 16 loads a lane in flight for rows past two rounds of
// 8 (K > 4,096; what the engine now does for the 1.1B down projection), the
// same from K = 4,096, grids of at most one wave looping over row blocks,
// two rows a warp (both rows' rounds requested together: 16 loads in
// flight a lane at K = 2,048), blocks of 4 and of 16 rows, x read by each
// lane from global memory instead of staged in shared memory (alone and
// with the long rows' 16 loads), and each block's rows requested by one
// TMA bulk copy before the wait (tmaKernel); then one line a persistent variant
// (prefetch 0: the first round in registers before the counter, as
// launched; else up to N KiB of the block's rows in shared memory by
// cp.async).
#include "DependentLaunch.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kLoads = 8;                 // 16-byte loads a lane a round
constexpr int kRoundStride = 32 * 8;      // bf16 elements between a lane's loads of a round
constexpr int kMaxK = 14336;              // the 8B down projection's K

void check(cudaError_t e, const char *what) {
  if (e == cudaSuccess)
    return;
  std::fprintf(stderr, "llmir-chain-bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

struct Phase {
  const unsigned short *w; // [N, K] bf16 bits
  int N, K;
  const float *x;          // K floats
  float *y;                // N floats
};

template <int Loads = kLoads>
__device__ __forceinline__ void loadRound(const unsigned short *row, int k, int K,
                                          uint4 (&p)[Loads]) {
#pragma unroll
  for (int j = 0; j < Loads; ++j)
    p[j] = k + j * kRoundStride < K ? *reinterpret_cast<const uint4 *>(row + k + j * kRoundStride)
                                    : make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ float dot8(uint4 w, const float *x) {
  const unsigned words[4] = {w.x, w.y, w.z, w.w};
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    s += __uint_as_float(words[j] << 16) * x[2 * j] +
         __uint_as_float(words[j] & 0xffff0000u) * x[2 * j + 1];
  return s;
}

// One warp's dot product of `row` (global or shared, through a generic
// pointer) with the staged x; `p` holds its first round when `loaded`.
template <int Loads = kLoads>
__device__ float dotRow(const unsigned short *row, const float *xs, int K, int lane,
                        uint4 (&p)[Loads], bool loaded) {
  float acc = 0.0f;
  int k = lane * 8;
  if (!loaded)
    loadRound<Loads>(row, k, K, p);
  for (; k < K; k += Loads * kRoundStride) {
#pragma unroll
    for (int j = 0; j < Loads; ++j)
      if (k + j * kRoundStride < K)
        acc += dot8(p[j], xs + k + j * kRoundStride);
    if (k + Loads * kRoundStride < K)
      loadRound<Loads>(row, k + Loads * kRoundStride, K, p);
  }
  for (int offset = 16; offset > 0; offset /= 2)
    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  return acc;
}

// Two rows at once (row1 null: one), each round of both requested before
// either is used; each row's sums in dotRow's order (the same bits). The
// first row's total is returned, the second's left as the bits of
// p[1][0].x (no second return value to carry through the caller's loop).
template <int Loads>
__device__ float dotRow2(const unsigned short *row0, const unsigned short *row1, const float *xs,
                         int K, int lane, uint4 (&p)[2][Loads], bool loaded) {
  float acc0 = 0.0f, acc1 = 0.0f;
  int k = lane * 8;
  if (!loaded) {
    loadRound<Loads>(row0, k, K, p[0]);
    if (row1)
      loadRound<Loads>(row1, k, K, p[1]);
  }
  for (; k < K; k += Loads * kRoundStride) {
#pragma unroll
    for (int j = 0; j < Loads; ++j)
      if (k + j * kRoundStride < K) {
        acc0 += dot8(p[0][j], xs + k + j * kRoundStride);
        if (row1)
          acc1 += dot8(p[1][j], xs + k + j * kRoundStride);
      }
    if (k + Loads * kRoundStride < K) {
      loadRound<Loads>(row0, k + Loads * kRoundStride, K, p[0]);
      if (row1)
        loadRound<Loads>(row1, k + Loads * kRoundStride, K, p[1]);
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    acc0 += __shfl_xor_sync(0xffffffffu, acc0, offset);
    acc1 += __shfl_xor_sync(0xffffffffu, acc1, offset);
  }
  p[1][0].x = __float_as_uint(acc1);
  return acc0;
}

// x [K] into shared memory, four loads a thread before their stores, from
// L2 (__ldcg: another block wrote it).
__device__ void stageX(const float *x, int K, float *xs) {
  const float4 *from = reinterpret_cast<const float4 *>(x);
  float4 *to = reinterpret_cast<float4 *>(xs);
  const int threads = static_cast<int>(blockDim.x);
  for (int first = threadIdx.x; first < K / 4; first += 4 * threads) {
    float4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (first + i * threads < K / 4)
        v[i] = __ldcg(from + first + i * threads);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (first + i * threads < K / 4)
        to[first + i * threads] = v[i];
  }
  __syncthreads();
}

// What the engine does: a product a launch, its rows' first round
// requested before the wait for the launch before. Loads: 16-byte loads a
// lane in flight (the engine's 8; 16 for long rows). Looped: a grid of at
// most one wave whose blocks take row blocks in strides. Rows: 2, a warp
// computes two rows (r and r + Warps of a block), both rounds requested
// before either is used. Warps: rows a block (the engine's 8). Staged: x
// copied into shared memory after the wait (the engine's way), else read
// by each lane from global memory as it multiplies (L1 after the block's
// first warp). Every variant sums a row in the same order (the same bits).
template <int Loads, bool Looped, int Rows, int Warps = kWarps, bool Staged = true>
__global__ void __launch_bounds__(Warps * 32) launchedKernel(Phase ph) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kBlockRows = Warps * Rows;
  const int rowBlocks = (ph.N + kBlockRows - 1) / kBlockRows;
  uint4 p[Rows][Loads];
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
    const int n = blockIdx.x * kBlockRows + r * Warps + warp;
    if (n < ph.N)
      loadRound<Loads>(ph.w + size_t(n) * ph.K, lane * 8, ph.K, p[r]);
  }
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
  const float *xs = ph.x;
  if constexpr (Staged) {
    stageX(ph.x, ph.K, reinterpret_cast<float *>(shared));
    xs = reinterpret_cast<const float *>(shared);
  }
  for (int rb = blockIdx.x; rb < rowBlocks; rb += Looped ? gridDim.x : rowBlocks) {
    const bool loaded = rb == int(blockIdx.x);
    if constexpr (Rows == 1) {
      const int n = rb * kBlockRows + warp;
      if (n < ph.N) {
        const float v = dotRow<Loads>(ph.w + size_t(n) * ph.K, xs, ph.K, lane, p[0], loaded);
        if (lane == 0)
          ph.y[n] = v;
      }
    } else {
      const int n0 = rb * kBlockRows + warp, n1 = n0 + Warps;
      if (n0 < ph.N) {
        const float v0 = dotRow2<Loads>(ph.w + size_t(n0) * ph.K,
                                        n1 < ph.N ? ph.w + size_t(n1) * ph.K : nullptr, xs,
                                        ph.K, lane, p, loaded);
        // dotRow2 leaves the second row's total in p[1][0].x's place: see there.
        if (lane == 0) {
          ph.y[n0] = v0;
          if (n1 < ph.N)
            ph.y[n1] = __uint_as_float(p[1][0].x);
        }
      }
    }
  }
}

// Weights by the TMA: thread 0 of the block requests its whole row block (8
// rows, contiguous in memory) into shared memory with one
// cp.async.bulk before the wait, its completion counted on an mbarrier; no
// register holds a weight in flight, so a multiprocessor's bytes in flight
// are bounded by its shared memory, not its registers. After the wait x is
// staged as usual, then every thread waits for the weights' bytes and the
// warps multiply from shared memory (the same sums as dotRow over global
// memory). Shared memory: x (K floats), then the row block.
__device__ __forceinline__ unsigned sharedAddress(const void *p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__global__ void __launch_bounds__(kThreads) tmaKernel(Phase ph) {
  extern __shared__ __align__(16) unsigned char shared[];
  __shared__ __align__(8) unsigned long long arrived;
  float *xs = reinterpret_cast<float *>(shared);
  unsigned short *rows = reinterpret_cast<unsigned short *>(shared + size_t(ph.K) * sizeof(float));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = blockIdx.x * kWarps;
  const int count = min(kWarps, ph.N - first);
  const unsigned bytes = static_cast<unsigned>(count) * ph.K * 2;
  const unsigned bar = sharedAddress(&arrived);
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];" ::"r"(sharedAddress(rows)),
                 "l"(ph.w + size_t(first) * ph.K), "r"(bytes), "r"(bar)
                 : "memory");
  }
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
  stageX(ph.x, ph.K, xs); // ends with __syncthreads: the barrier's init is visible
  asm volatile("{\n"
               ".reg .pred done;\n"
               "WAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n"
               "@!done bra WAIT;\n"
               "}\n" ::"r"(bar)
               : "memory");
  if (warp < count) {
    uint4 p[kLoads];
    const float v = dotRow(rows + size_t(warp) * ph.K, xs, ph.K, lane, p, false);
    if (lane == 0)
      ph.y[first + warp] = v;
  }
}

__device__ __forceinline__ unsigned loadAcquire(const unsigned *p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every product in one launch of co-resident blocks. Block b takes row
// blocks (8 rows) b, b + G, ...; before waiting for a product's input (the
// blocks of the product before all counted in done[p - 1]) it requests its
// rows' weights: up to prefetchBytes of whole row blocks into shared memory
// (cp.async), or with none the first round of its first row in registers.
__global__ void __launch_bounds__(kThreads)
    persistentKernel(const Phase *phases, int count, unsigned *done, int prefetchBytes, int maxK) {
  extern __shared__ __align__(16) unsigned char shared[];
  float *xs = reinterpret_cast<float *>(shared);
  unsigned short *rows = reinterpret_cast<unsigned short *>(shared + size_t(maxK) * sizeof(float));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned blocks = gridDim.x;
  for (int f = 0; f < count; ++f) {
    const Phase ph = phases[f];
    const int rowBlocks = (ph.N + kWarps - 1) / kWarps;
    const int mine = rowBlocks > int(blockIdx.x) ? (rowBlocks - 1 - int(blockIdx.x)) / blocks + 1 : 0;
    const int blockBytes = kWarps * ph.K * 2;
    const int held = min(mine, prefetchBytes / blockBytes); // row blocks in shared memory
    for (int i = threadIdx.x; i < held * (blockBytes / 16); i += kThreads) {
      const int j = i / (blockBytes / 16), piece = i % (blockBytes / 16);
      const int firstRow = (blockIdx.x + j * blocks) * kWarps;
      if (firstRow + piece / (ph.K * 2 / 16) < ph.N) {
        const unsigned to =
            static_cast<unsigned>(__cvta_generic_to_shared(rows + size_t(j) * blockBytes / 2)) +
            piece * 16;
        const void *from = reinterpret_cast<const unsigned char *>(ph.w + size_t(firstRow) * ph.K) +
                           size_t(piece) * 16;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(from));
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
    uint4 p[kLoads];
    const int n0 = blockIdx.x * kWarps + warp;
    const bool registers = held == 0 && mine > 0 && n0 < ph.N;
    if (registers)
      loadRound(ph.w + size_t(n0) * ph.K, lane * 8, ph.K, p);
    if (f > 0) {
      if (threadIdx.x == 0)
        while (loadAcquire(done + f - 1) < blocks) {
        }
      __syncthreads();
    }
    stageX(ph.x, ph.K, xs);
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    for (int j = 0; j < mine; ++j) {
      const int n = (blockIdx.x + j * blocks) * kWarps + warp;
      if (n >= ph.N)
        continue;
      const unsigned short *row = j < held ? rows + size_t(j) * blockBytes / 2 + size_t(warp) * ph.K
                                            : ph.w + size_t(n) * ph.K;
      const float v = dotRow(row, xs, ph.K, lane, p, j == 0 && registers);
      if (lane == 0)
        ph.y[n] = v;
    }
    __syncthreads(); // the block's rows written, its shared buffers free
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(done + f, 1u);
    }
  }
}

__global__ void fillKernel(unsigned short *w, size_t n, unsigned seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float v = (static_cast<float>(h & 0xffffu) / 65536.0f - 0.5f) * scale;
    const __nv_bfloat16 b = __float2bfloat16(v);
    w[i] = *reinterpret_cast<const unsigned short *>(&b);
  }
}

std::vector<int> listFlag(int argc, char **argv, const std::string &name, std::vector<int> fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == "--" + name) {
      std::vector<int> values;
      for (const char *s = argv[i + 1]; *s;) {
        values.push_back(std::atoi(s));
        const char *comma = std::strchr(s, ',');
        if (!comma)
          break;
        s = comma + 1;
      }
      return values;
    }
  return fallback;
}

} // namespace

// A launched variant: 16 loads for rows from longFromK (0: never), grids of
// one wave (looped), rows a warp, warps a block, x staged.
struct Variant {
  const char *name;
  int longFromK;
  bool looped;
  int rows;
  int warps;
  bool staged;
  bool tma = false; // weights by the TMA where a row block fits (tmaKernel)
};

// The launched kernel of variant v for a product of K, and its rows a block.
using Launched = void (*)(Phase);
Launched launchedFor(const Variant &v, int K, int &blockRows) {
  blockRows = v.warps * v.rows;
  const bool longRows = v.longFromK > 0 && K >= v.longFromK;
  if (!v.staged)
    return longRows ? launchedKernel<16, false, 1, kWarps, false>
                    : launchedKernel<kLoads, false, 1, kWarps, false>;
  if (longRows)
    return launchedKernel<16, false, 1>;
  if (v.looped)
    return launchedKernel<kLoads, true, 1>;
  if (v.rows == 2)
    return launchedKernel<kLoads, false, 2>;
  if (v.warps == 4)
    return launchedKernel<kLoads, false, 1, 4>;
  if (v.warps == 16)
    return launchedKernel<kLoads, false, 1, 16>;
  return launchedKernel<kLoads, false, 1>;
}

int main(int argc, char **argv) {
  std::string shape = "1b";
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--shape")
      shape = argv[i + 1];
  if (shape != "1b" && shape != "8b") {
    std::fprintf(stderr, "llmir-chain-bench: --shape is 1b or 8b, not %s\n", shape.c_str());
    return 2;
  }
  const bool large = shape == "8b";
  const int layers = std::max(1, listFlag(argc, argv, "layers", {large ? 32 : 22})[0]);
  const int replays = std::max(1, listFlag(argc, argv, "replays", {10})[0]);
  const int perSm = std::max(1, listFlag(argc, argv, "per-sm", {2})[0]);
  const std::vector<int> prefetchKib = listFlag(argc, argv, "prefetch-kib", {0, 32, 64});
  std::vector<std::string> mixes;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--mix")
      for (size_t from = 0; from <= std::string(argv[i + 1]).size();) {
        const std::string list = argv[i + 1];
        const size_t comma = std::min(list.find(',', from), list.size());
        mixes.push_back(list.substr(from, comma - from));
        from = comma + 1;
      }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "device");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");

  struct Shape {
    int N, K;
  };
  const std::vector<Shape> layer =
      large ? std::vector<Shape>{{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}}
            : std::vector<Shape>{{2560, 2048}, {2048, 2048}, {11264, 2048}, {2048, 5632}};
  int maxK = 0;
  for (const Shape s : layer)
    maxK = std::max(maxK, s.K);
  std::vector<Phase> phases;
  size_t weightBytes = 0;
  float *input = nullptr;
  check(cudaMalloc(&input, kMaxK * sizeof(float)), "malloc");
  {
    std::vector<float> x(kMaxK);
    for (int i = 0; i < kMaxK; ++i)
      x[i] = static_cast<float>((i * 37) % 101) / 101.0f - 0.5f;
    check(cudaMemcpy(input, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), "copy");
  }
  const float *x = input;
  for (int l = 0; l < layers; ++l)
    for (const Shape s : layer) {
      unsigned short *w = nullptr;
      float *y = nullptr;
      const size_t n = size_t(s.N) * s.K;
      check(cudaMalloc(&w, n * 2), "malloc weights");
      check(cudaMalloc(&y, size_t(std::max(s.N, kMaxK)) * sizeof(float)), "malloc y");
      check(cudaMemset(y, 0, size_t(std::max(s.N, kMaxK)) * sizeof(float)), "memset");
      // |w| <= 1 / K: each output stays within the largest input's magnitude.
      fillKernel<<<1024, 256, 0, stream>>>(w, n, static_cast<unsigned>(phases.size() * 7919 + 1),
                                          2.0f / s.K);
      phases.push_back({w, s.N, s.K, x, y});
      weightBytes += n * 2;
      x = y;
    }
  check(cudaStreamSynchronize(stream), "fill");
  const int count = static_cast<int>(phases.size());
  Phase *devicePhases = nullptr;
  check(cudaMalloc(&devicePhases, phases.size() * sizeof(Phase)), "malloc");
  check(cudaMemcpy(devicePhases, phases.data(), phases.size() * sizeof(Phase),
                   cudaMemcpyHostToDevice),
        "copy");
  unsigned *done = nullptr;
  check(cudaMalloc(&done, count * sizeof(unsigned)), "malloc");
  const Phase &last = phases.back();
  auto lastOutputs = [&] {
    std::vector<float> y(last.N);
    check(cudaMemcpy(y.data(), last.y, y.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy");
    return y;
  };
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  auto elapsedUs = [&] {
    float ms = 0.0f;
    check(cudaEventSynchronize(stop), "synchronize");
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    return 1e3 * ms;
  };
  std::printf("# llmir-chain-bench on %s (%d multiprocessors): %d layers of the %s shape's four "
              "products, %.2f GB of bf16 weights, best of %d replays\n",
              prop.name, prop.multiProcessorCount, layers, shape.c_str(), weightBytes / 1e9,
              replays);
  std::printf("%-36s %10s %12s %10s\n", "variant", "us a step", "us a layer", "GB/s");

  // Launched: the chain captured once with dependent launches, replayed.
  const size_t xsBytes = size_t(maxK) * sizeof(float);
  for (Launched kernel : {launchedKernel<kLoads, false, 1>, launchedKernel<16, false, 1>,
                          launchedKernel<kLoads, true, 1>, launchedKernel<kLoads, false, 2>,
                          launchedKernel<kLoads, false, 1, 4>, launchedKernel<kLoads, false, 1, 16>})
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(xsBytes)),
          "shared memory");
  check(cudaFuncSetAttribute(tmaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             prop.sharedMemPerBlockOptin - 64),
        "shared memory");
  const Variant variants[] = {
      {"launched (one a product, graph)", 0, false, 1, kWarps, true},
      {"launched, 16 loads from K > 4,096", 4097, false, 1, kWarps, true},
      {"launched, 16 loads from K = 4,096", 4096, false, 1, kWarps, true},
      {"launched, grids of one wave", 0, true, 1, kWarps, true},
      {"launched, two rows a warp", 0, false, 2, kWarps, true},
      {"launched, 4-row blocks", 0, false, 1, 4, true},
      {"launched, 16-row blocks", 0, false, 1, 16, true},
      {"launched, x not staged", 0, false, 1, kWarps, false},
      {"launched, x not staged, 16 > 4,096", 4097, false, 1, kWarps, false},
      {"launched, weights by the TMA", 0, false, 1, kWarps, true, true}};
  std::vector<float> reference;
  bool agree = true;
  // Phase ph by a launched kernel (blockRows rows a block, warps a block,
  // x staged or not), one dependent launch.
  const auto launchPhase = [&](const Phase &ph, Launched kernel, int blockRows, int warps,
                               bool staged) {
    int blocks = (ph.N + blockRows - 1) / blockRows;
    if (kernel == launchedKernel<kLoads, true, 1>) {
      int fits = 0;
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, kernel, kThreads, xsBytes),
            "occupancy");
      blocks = std::min(blocks, fits * prop.multiProcessorCount);
    }
    check(llmir::bench::launchDependent(kernel, dim3(blocks), dim3(warps * 32),
                                        staged ? xsBytes : 0, stream, true, ph),
          "launch");
  };
  // The chain capturePhases launches, captured once, replayed: its best time
  // printed and its last outputs compared with the first chain's.
  const auto timeChain = [&](const std::string &name, auto &&capturePhases) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    capturePhases();
    check(cudaStreamEndCapture(stream, &graph), "end capture");
    check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    double best = 1e30;
    for (int r = 0; r <= replays; ++r) {
      check(cudaEventRecord(start, stream), "record");
      check(cudaGraphLaunch(exec, stream), "replay");
      check(cudaEventRecord(stop, stream), "record");
      const double us = elapsedUs();
      if (r > 0)
        best = std::min(best, us);
    }
    const std::vector<float> got = lastOutputs();
    if (reference.empty())
      reference = got;
    const bool same = std::memcmp(got.data(), reference.data(), got.size() * sizeof(float)) == 0;
    agree = agree && same;
    std::printf("%-36s %10.1f %12.2f %10.0f%s\n", name.c_str(), best, best / layers,
                weightBytes / best / 1e3, same ? "" : "   OUTPUTS DIFFER");
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  };
  for (const Variant &v : variants)
    timeChain(v.name, [&] {
      for (const Phase &ph : phases) {
        // The TMA variant where x and a row block fit a block's shared memory
        // (not the 8B down projection's 229 KiB rows), else the engine's way.
        const size_t tmaBytes = size_t(ph.K) * sizeof(float) + size_t(kWarps) * ph.K * 2;
        if (v.tma && tmaBytes <= size_t(prop.sharedMemPerBlockOptin) - 64) {
          check(llmir::bench::launchDependent(tmaKernel, dim3((ph.N + kWarps - 1) / kWarps),
                                              dim3(kThreads), tmaBytes, stream, true, ph),
                "launch");
          continue;
        }
        int blockRows = 0;
        const Launched kernel = launchedFor(v, ph.K, blockRows);
        launchPhase(ph, kernel, blockRows, v.warps, v.staged);
      }
    });
  // --mix: a kernel a product of the layer, one letter each (r: one row a
  // warp, 8 loads; l: one row, 16 loads; t: two rows a warp), e.g. rrrl (the
  // engine's 1.1B choice) against trrl, rtrl, ...: which product pays where.
  for (const std::string &mix : mixes) {
    if (mix.size() != layer.size() || mix.find_first_not_of("rlt") != std::string::npos) {
      std::fprintf(stderr, "llmir-chain-bench: --mix takes %zu letters of r, l, t, not %s\n",
                   layer.size(), mix.c_str());
      return 2;
    }
    timeChain("mix " + mix, [&] {
      for (size_t p = 0; p < phases.size(); ++p) {
        const char kind = mix[p % layer.size()];
        const Launched kernel = kind == 't'   ? launchedKernel<kLoads, false, 2>
                                : kind == 'l' ? launchedKernel<16, false, 1>
                                              : launchedKernel<kLoads, false, 1>;
        launchPhase(phases[p], kernel, kind == 't' ? 2 * kWarps : kWarps, kWarps, true);
      }
    });
  }

  for (const int kib : prefetchKib) {
    const int prefetchBytes = kib * 1024;
    const size_t shared = xsBytes + size_t(prefetchBytes);
    check(cudaFuncSetAttribute(persistentKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(shared)),
          "shared memory");
    int fits = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, persistentKernel, kThreads, shared),
          "occupancy");
    const int blocksPerSm = std::min(perSm, fits);
    if (blocksPerSm <= 0) {
      std::printf("%-36s does not fit\n", ("persistent, " + std::to_string(kib) + " KiB").c_str());
      continue;
    }
    int blocks = prop.multiProcessorCount * blocksPerSm;
    int prefetchArg = prefetchBytes, countArg = count, maxKArg = maxK;
    void *args[] = {&devicePhases, &countArg, &done, &prefetchArg, &maxKArg};
    double bestP = 1e30;
    for (int r = 0; r <= replays; ++r) {
      check(cudaMemsetAsync(done, 0, count * sizeof(unsigned), stream), "memset");
      check(cudaEventRecord(start, stream), "record");
      check(cudaLaunchCooperativeKernel(reinterpret_cast<void *>(persistentKernel), dim3(blocks),
                                        dim3(kThreads), args, shared, stream),
            "cooperative launch");
      check(cudaEventRecord(stop, stream), "record");
      const double us = elapsedUs();
      if (r > 0)
        bestP = std::min(bestP, us);
    }
    const std::vector<float> got = lastOutputs();
    const bool same = std::memcmp(got.data(), reference.data(), got.size() * sizeof(float)) == 0;
    agree = agree && same;
    const std::string name = "persistent, " + std::to_string(blocksPerSm) + " a SM, " +
                             (kib ? std::to_string(kib) + " KiB" : std::string("registers"));
    std::printf("%-36s %10.1f %12.2f %10.0f%s\n", name.c_str(), bestP, bestP / layers,
                weightBytes / bestP / 1e3, same ? "" : "   OUTPUTS DIFFER");
  }
  return agree ? 0 : 1;
}
