// LINEAR with 16-bit weights read in their stored dtype.
//
// Few tokens (decode): a GEMV, one warp per output feature n computing all
// of the step's tokens (up to kMaxTokens at a time; at one token, rows of
// K >= 4,096 two features a warp), its lanes striding over K eight weights
// (16 bytes) per load, eight loads in flight per lane before any arithmetic
// so the memory system always has enough bytes requested;
// f32 accumulation, then a warp reduction. Decode reads each weight once,
// which is what bounds it. Several projections of the same input (Q, K, V;
// gate, up) run as one launch of "segments", so small matrices share the
// GPU instead of each leaving most SMs idle.
//
// Many tokens: tensor cores through cuBLAS (Kernels.cpp). The f32
// activations are split into two bf16 halves, x = hi + lo, and multiplied
// with the (exact) bf16 weights as 2T columns of one GEMM; adding the two
// halves of the f32 result gives ~16 mantissa bits of x, so the product
// stays within f32 rounding of the exact one (HF-exact references hold)
// while the weights are read once.
#include "Bf16Halves.cuh"
#include "DependentLaunch.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kLoadsInFlight = 8;

__device__ __forceinline__ float toFloat(unsigned short bits, bool bf16) {
  return bf16 ? __uint_as_float(static_cast<unsigned>(bits) << 16)
              : __half2float(__ushort_as_half(bits));
}

// Eight weights (one 16-byte load) times x[0..8) = a, b.
__device__ __forceinline__ float dot8(const uint4 packed, bool bf16, float4 a, float4 b) {
  const unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
  float wv[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    wv[2 * j] = toFloat(static_cast<unsigned short>(words[j] & 0xffffu), bf16);
    wv[2 * j + 1] = toFloat(static_cast<unsigned short>(words[j] >> 16), bf16);
  }
  return wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x + wv[5] * b.y +
         wv[6] * b.z + wv[7] * b.w;
}

template <int Tokens>
__device__ __forceinline__ void accumulate8(const uint4 packed, bool bf16,
                                            const float *x, int64_t K,
                                            int tokens, float *acc) {
#pragma unroll
  for (int i = 0; i < Tokens; ++i) {
    if (i < tokens) {
      const float4 *xv = reinterpret_cast<const float4 *>(x + i * K);
      acc[i] += dot8(packed, bf16, xv[0], xv[1]);
    }
  }
}

// Elements one warp-wide round of 16-byte loads covers.
constexpr int64_t kRoundStride = 32 * 8;

// Round k of a weight row: Loads warp-wide loads, those past K skipped.
template <int Loads = kLoadsInFlight>
__device__ __forceinline__ void loadRound(const unsigned short *row, int64_t k, int64_t K,
                                          uint4 (&packed)[Loads]) {
#pragma unroll
  for (int j = 0; j < Loads; ++j)
    packed[j] = k + j * kRoundStride < K
                    ? __ldg(reinterpret_cast<const uint4 *>(row + k + j * kRoundStride))
                    : make_uint4(0, 0, 0, 0);
}

// One warp's dot products of weight row `row` with the block's tokens,
// added to acc. `packed` holds the first round of the row's loads when
// `loaded` (issued before the kernel waited for its input); each round's
// kLoadsInFlight loads are issued before any product of it, and the last
// round's missing ones (past K) are skipped, not run one at a time.
template <int Tokens, int Loads = kLoadsInFlight>
__device__ __forceinline__ void dotRow(const unsigned short *row, int64_t K, int lane, bool bf16,
                                       const float *xs, int tokens, uint4 (&packed)[Loads],
                                       bool loaded, float (&acc)[Tokens]) {
  if (K % 8 == 0) {
    int64_t k = int64_t(lane) * 8;
    if (!loaded && k < K)
      loadRound<Loads>(row, k, K, packed);
    for (; k < K; k += Loads * kRoundStride) {
#pragma unroll
      for (int j = 0; j < Loads; ++j)
        if (k + j * kRoundStride < K)
          accumulate8<Tokens>(packed[j], bf16, xs + k + j * kRoundStride, K, tokens, acc);
      if (k + Loads * kRoundStride < K)
        loadRound<Loads>(row, k + Loads * kRoundStride, K, packed);
    }
    return;
  }
  for (int64_t k = lane; k < K; k += 32) {
    const float wv = toFloat(row[k], bf16);
#pragma unroll
    for (int i = 0; i < Tokens; ++i)
      if (i < tokens)
        acc[i] += wv * xs[i * K + k];
  }
}

// One token's dot products of `active` of Rows weight rows (K % 8 == 0) with
// x, added to acc: each round of every row requested before any of them is
// used, each 32 bytes of x read from shared memory once for all the rows.
// Every row sums in dotRow's order (the same bits). `packed` holds the first
// round of the active rows when `loaded`.
template <int Rows, int Loads>
__device__ __forceinline__ void dotRows(const unsigned short *const (&row)[Rows], int active,
                                        int64_t K, int lane, bool bf16, const float *xs,
                                        uint4 (&packed)[Rows][Loads], bool loaded,
                                        float (&acc)[Rows]) {
  int64_t k = int64_t(lane) * 8;
  if (!loaded && k < K) {
#pragma unroll
    for (int r = 0; r < Rows; ++r)
      if (r < active)
        loadRound<Loads>(row[r], k, K, packed[r]);
  }
  for (; k < K; k += Loads * kRoundStride) {
#pragma unroll
    for (int j = 0; j < Loads; ++j)
      if (k + j * kRoundStride < K) {
        const float4 *xv = reinterpret_cast<const float4 *>(xs + k + j * kRoundStride);
        const float4 a = xv[0], b = xv[1];
#pragma unroll
        for (int r = 0; r < Rows; ++r)
          if (r < active)
            acc[r] += dot8(packed[r][j], bf16, a, b);
      }
    if (k + Loads * kRoundStride < K) {
#pragma unroll
      for (int r = 0; r < Rows; ++r)
        if (r < active)
          loadRound<Loads>(row[r], k + Loads * kRoundStride, K, packed[r]);
    }
  }
}

template <int Tokens>
__device__ __forceinline__ float warpTotal(float (&acc)[Tokens], int i) {
  float v = acc[i];
  for (int offset = 16; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// 1 / rms of a row of H from each thread's partial sum of squares (double):
// summed across each warp, then the warps in order by thread 0 (the same
// bits in every block); every thread gets the scale.
__device__ float blockInverseRms(double squares, int64_t H, float eps) {
  __shared__ double partial[32];
  __shared__ float scale;
  for (int offset = 16; offset > 0; offset /= 2)
    squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  if (threadIdx.x % 32 == 0)
    partial[threadIdx.x / 32] = squares;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
      total += partial[w];
    scale = 1.0f / sqrtf(static_cast<float>(total / static_cast<double>(H)) + eps);
  }
  __syncthreads();
  return scale;
}

// ResidualNorm, consumer side: x (the residual sum) staged normalised,
// weight * (x * scale), with addRmsNorm's formula for the scale from the
// producer's per-block sums of squares (summed here in a fixed order: the
// same in every block and every run). Block 0 also stores the normed row,
// which later instructions may read. Replaces the norm's own launch: at
// batch-1 decode a phase boundary costs ~2.2 us (llmir-launch-bench), and
// the norm kernel's body as much again.
// Each thread's loads are issued together, then used in the loop's order
// (the same sums, bit for bit): read one at a time, a block's staging was a
// chain of L2 round trips (4 at an 8B shape's H = 4,096), paid again by
// every block of a consumer grid of several waves (gate/up, the LM head),
// and at that shape made batch-1 decode 5% slower than the norm's own
// launch.
// Two rows' worth a batch: the unpaired one-token kernel keeps its first
// round of weights in registers meanwhile, under a 64-register bound.
constexpr int kStagedBatch = 2;
// earlyX: the thread's first batch of x and of the norm's weight is
// requested with the partials, before the scale that only their store
// needs, so the staging waits for one L2 round trip where it waited for
// two; off unless LLMIR_CUDA_NORM_EARLY_X=1 (measuring): a step at main's
// code was faster without (Kernels.cpp, onDevice).
__device__ void stageNormed(const ResidualNormDevice &c, const float *x, int64_t H,
                            float4 *staged, bool earlyX) {
  const float4 *from = reinterpret_cast<const float4 *>(x);
  const float4 *weight = reinterpret_cast<const float4 *>(c.weight);
  float4 h[kStagedBatch], w[kStagedBatch];
  const auto loadBatch = [&](int64_t first) {
#pragma unroll
    for (int k = 0; k < kStagedBatch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i < H / 4) {
        h[k] = __ldcg(from + i);
        w[k] = weight[i];
      }
    }
  };
  if (earlyX)
    loadBatch(threadIdx.x);
  double squares = 0.0;
  for (int first = threadIdx.x; first < c.count; first += kStagedBatch * blockDim.x) {
    double v[kStagedBatch];
#pragma unroll
    for (int k = 0; k < kStagedBatch; ++k) {
      const int i = first + k * blockDim.x;
      v[k] = i < c.count ? __ldcg(c.partials + i) : 0.0;
    }
#pragma unroll
    for (int k = 0; k < kStagedBatch; ++k)
      if (first + k * int(blockDim.x) < c.count)
        squares += v[k];
  }
  const float s = blockInverseRms(squares, H, c.eps);
  const bool stores = blockIdx.x == 0 && blockIdx.y == 0;
  float4 *normed = reinterpret_cast<float4 *>(c.normed);
  for (int64_t first = threadIdx.x; first < H / 4; first += kStagedBatch * blockDim.x) {
    if (!earlyX || first != threadIdx.x)
      loadBatch(first);
#pragma unroll
    for (int k = 0; k < kStagedBatch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i < H / 4) {
        const float4 v = make_float4(w[k].x * (h[k].x * s), w[k].y * (h[k].y * s),
                                     w[k].z * (h[k].z * s), w[k].w * (h[k].w * s));
        staged[i] = v;
        if (stores)
          normed[i] = v;
      }
    }
  }
}

constexpr int kNoExchange = 0, kExchangeOut = 1, kExchangeIn = 2;

// PeerExchange, consumer side: stages weight * (x * scale) for x = the
// ranks' rows summed in rank order + residual (the IPC all-reduce's and
// ADD's arithmetic), the scale from x's squares summed in double. Block 0
// stores x (the ADD's output) and the normed row. No flag says the rows
// are there: a row element still holding kExchangeEmpty has not arrived, so
// each vector is read again until none of its lanes does (one-shot
// "Lamport" exchange: the data is its own signal, no fence or barrier on
// either side). A peer whose rows do not come within the runtime's timeout
// is recorded in timedOut and the staging goes on with what they hold (the
// step's outputs are void). Flags raised by the producer's last block after
// system fences made an 8B step at TP=2 13% slower than the all-reduce
// launch (c165-c168: the fence held every producer block ~2.7 us).
__device__ __forceinline__ float4 loadVolatile(const float4 *p) {
  float4 v;
  asm volatile("ld.volatile.global.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ bool stillEmpty(float4 v) {
  return __float_as_uint(v.x) == kExchangeEmpty || __float_as_uint(v.y) == kExchangeEmpty ||
         __float_as_uint(v.z) == kExchangeEmpty || __float_as_uint(v.w) == kExchangeEmpty;
}
__device__ __forceinline__ uint64_t globalNanoseconds() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
/// v (loaded from p) once every lane has arrived, read again until then;
/// `since` is when this thread first waited (0: not yet).
__device__ __forceinline__ float4 arrived(const float4 *p, float4 v, const ExchangeDevice &e,
                                          int rank, uint64_t &since) {
  while (stillEmpty(v)) {
    const uint64_t now = globalNanoseconds();
    if (since == 0) {
      since = now;
    } else if (now - since > e.timeoutNs) {
      // A plain store: timedOut may be host-mapped memory, where atomics
      // need support PCIe hosts lack (blocks giving up at once may mix
      // their reports, each naming a peer that did not come).
      if (e.timedOut)
        *static_cast<volatile int *>(e.timedOut) = rank + 1;
      break;
    }
    v = loadVolatile(p);
  }
  return v;
}

// Batch vectors a thread at a time, every load of a batch issued before any
// is used (one L2 round trip a batch when the rows are there); 1 in the
// 64-register unpaired consumers, where 2 spilled 416 bytes. Measured and
// dropped (c170-c172, two H200s, ms a step at TP=2, 8B / 1.1B, against this
// form's 2.918 / 0.793): the rows, residual and norm weight copied into
// shared memory by cp.async in one round trip, 2.944 / 0.933; a batch's
// missing vectors read again together, 2.947 / 0.803; two ranks' rows
// loaded at once, 2.99 / 0.84; the norm's weight copied before the
// dependent-launch wait, 2.945 / 0.88.
template <int Batch>
__device__ void stageExchanged(const ExchangeDevice &e, int64_t H, float4 *staged) {
  const float4 *residual = reinterpret_cast<const float4 *>(e.residual);
  const float4 *rows = reinterpret_cast<const float4 *>(e.slots[e.rank]);
  const int64_t vectors = H / 4, rowVectors = e.width / 4;
  const bool stores = blockIdx.x == 0 && blockIdx.y == 0;
  uint64_t since = 0;
  double squares = 0.0;
  for (int64_t first = threadIdx.x; first < vectors; first += Batch * blockDim.x) {
    float4 h[Batch], x[Batch];
#pragma unroll
    for (int k = 0; k < Batch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i < vectors) {
        h[k] = loadVolatile(rows + i);
        x[k] = residual[i];
      }
    }
#pragma unroll
    for (int k = 0; k < Batch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i < vectors)
        h[k] = arrived(rows + i, h[k], e, 0, since);
    }
    for (int r = 1; r < e.ranks; ++r) {
      float4 p[Batch];
#pragma unroll
      for (int k = 0; k < Batch; ++k) {
        const int64_t i = first + k * int64_t(blockDim.x);
        if (i < vectors)
          p[k] = loadVolatile(rows + r * rowVectors + i);
      }
#pragma unroll
      for (int k = 0; k < Batch; ++k) {
        const int64_t i = first + k * int64_t(blockDim.x);
        if (i < vectors)
          p[k] = arrived(rows + r * rowVectors + i, p[k], e, r, since);
        h[k] = make_float4(h[k].x + p[k].x, h[k].y + p[k].y, h[k].z + p[k].z, h[k].w + p[k].w);
      }
    }
#pragma unroll
    for (int k = 0; k < Batch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i >= vectors)
        continue;
      const float4 v = make_float4(h[k].x + x[k].x, h[k].y + x[k].y, h[k].z + x[k].z,
                                   h[k].w + x[k].w);
      squares += static_cast<double>(v.x) * v.x;
      squares += static_cast<double>(v.y) * v.y;
      squares += static_cast<double>(v.z) * v.z;
      squares += static_cast<double>(v.w) * v.w;
      staged[i] = v;
      if (stores)
        reinterpret_cast<float4 *>(e.sum)[i] = v;
    }
  }
  const float scale = blockInverseRms(squares, H, e.eps);
  const float4 *weight = reinterpret_cast<const float4 *>(e.weight);
  for (int64_t first = threadIdx.x; first < vectors; first += Batch * blockDim.x) {
    float4 w[Batch];
#pragma unroll
    for (int k = 0; k < Batch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i < vectors)
        w[k] = weight[i];
    }
#pragma unroll
    for (int k = 0; k < Batch; ++k) {
      const int64_t i = first + k * int64_t(blockDim.x);
      if (i >= vectors)
        continue;
      const float4 h = staged[i];
      const float4 v = make_float4(w[k].x * (h.x * scale), w[k].y * (h.y * scale),
                                   w[k].z * (h.z * scale), w[k].w * (h.w * scale));
      staged[i] = v;
      if (stores)
        reinterpret_cast<float4 *>(e.normed)[i] = v;
    }
  }
}

// PeerExchange, consumer side, at the end of a block that staged the site
// (`count`: what its thread 0's atomicAdd on the site's counter returned,
// plus one, issued once its threads had read the rows): the grid's last
// block empties this rank's site for the next call and resets the counter.
// Every block has read the rows by then; no peer writes them again before
// this kernel has finished (its next rows for this site follow, at the
// earliest, this rank's next rows for the site before, which come after
// this kernel on this rank's stream).
__device__ void emptyExchanged(const ExchangeDevice &e, int64_t H, unsigned count) {
  __shared__ bool last;
  if (threadIdx.x == 0)
    last = count == gridDim.x * gridDim.y;
  __syncthreads();
  if (!last)
    return;
  uint4 *rows = reinterpret_cast<uint4 *>(e.slots[e.rank]);
  const uint4 empty = make_uint4(kExchangeEmpty, kExchangeEmpty, kExchangeEmpty, kExchangeEmpty);
  const int64_t vectors = H / 4, rowVectors = e.width / 4;
  for (int r = 0; r < e.ranks; ++r)
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x)
      rows[r * rowVectors + i] = empty;
  if (threadIdx.x == 0)
    *e.arrivals = 0;
}

// ResidualNorm, producer side, after the block's rows of y are computed:
// `square` is lane 0's (h = y + residual)^2 of its row (0 past N); the
// block's sum, in warp order, goes to partials[rowBlock].
template <int Warps>
__device__ void storeSquares(const ResidualNormDevice &p, double square, unsigned rowBlock) {
  __shared__ double rowSquares[Warps];
  if (threadIdx.x % 32 == 0)
    rowSquares[threadIdx.x / 32] = square;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < Warps; ++w)
      total += rowSquares[w];
    p.partials[rowBlock] = total;
  }
}

// Block b of the grid belongs to the segment whose [firstBlock, next) holds
// it; grid.y walks the tokens Tokens at a time. When a block's tokens fit
// (kSharedXBytes; stageX), x is staged in shared memory first: every warp of the block
// reads all of it, and shared loads keep the weight loads the only global
// traffic in flight. Paired (SwiGLU fused): segments 0 and 1 are gate and
// up of one width; each warp computes row n of both and writes
// silu(gate) * up to segment 0's y, with the SWIGLU kernel's arithmetic.
// 64 KiB: the down projection of an 8B shape (K = 14,336) at one token; past
// the default 48 KiB a kernel must opt in (allowDynamicShared), and 64 KiB still
// leaves three blocks per multiprocessor.
constexpr int64_t kSharedXBytes = 64 * 1024;

// One token's unpaired GEMV kept to 64 registers (66 unbounded): four blocks
// of 8 rows a multiprocessor instead of three, an 8B shape's O projection
// (512 blocks) in one wave instead of 1.3. Two rows a warp (kTwoRows) to 128:
// two blocks of 16 rows. The others are left to the compiler (0): bounded,
// they spill. Warps: warps a block (kWarpsPerBlock, or kWideWarps where x's
// staging lets few blocks share a multiprocessor). Loads: 16-byte loads a
// lane in flight; kLongRowLoads for long rows (launchLinear16), without the
// register bound. Rows: rows a warp (one token, unpaired: 1 or kTwoRows).
template <int Tokens, bool Paired, int Warps, int Loads, int Rows>
constexpr int linear16MinBlocks(bool exchangeIn = false) {
  // The exchange's paired consumer held to main's three blocks a
  // multiprocessor (its staging took it from 78 to 95 registers).
  if (Tokens == 1 && Paired && exchangeIn && Loads == kLoadsInFlight)
    return 3;
  if (Tokens != 1 || Paired)
    return 0;
  if (Rows > 1)
    return 2;
  return Loads == kLoadsInFlight ? 4 * kWarpsPerBlock / Warps : 0;
}

// Exchange: a PeerExchange side compiled in, kExchangeOut (the producer's
// stores into every rank's site) or kExchangeIn (the consumer's staging and
// emptying); a build with them taken where none is used made every GEMV of a
// step slower (an H200: 1.1B batch 1 +2.8%, 8B +3.2%), and each side's code
// in the other's build cost it registers, so each is a build of its own.
template <int Tokens, bool Paired, int Warps = kWarpsPerBlock, int Loads = kLoadsInFlight,
          int Rows = 1, int Exchange = kNoExchange>
__global__ void __launch_bounds__(Warps * 32,
                                  linear16MinBlocks<Tokens, Paired, Warps, Loads, Rows>(
                                      Exchange == kExchangeIn))
    linear16Kernel(const float *x, int64_t T, int64_t K, bool bf16, bool stageX,
                   LinearSegments segments) {
  static_assert(Rows == 1 || (Tokens == 1 && !Paired), "rows a warp: one token, unpaired");
  static_assert(Exchange == kNoExchange ||
                    (Tokens == 1 && (Exchange == kExchangeIn || !Paired)),
                "exchange builds: one token; the producer unpaired");
  extern __shared__ float4 staged[];
  // Row block `rowBlock` of the segments: its segment s, this warp's first
  // row n (its others n + Warps, n + 2 Warps, ...).
  const auto rowOf = [&](unsigned rowBlock, int &s, int64_t &n) {
    s = 0;
    while (!Paired && s + 1 < segments.count && rowBlock >= segments.firstBlock[s + 1])
      ++s;
    n = (rowBlock - segments.firstBlock[s]) * int64_t(Warps * Rows) + threadIdx.x / 32;
  };
  // The warp's rows within N, from n.
  const auto activeRows = [&](int64_t n, int64_t N) {
    const int64_t within = n >= N ? 0 : (N - n + Warps - 1) / Warps;
    return static_cast<int>(within < Rows ? within : Rows);
  };
  const int lane = threadIdx.x % 32;
  unsigned rowBlock = blockIdx.x; // a looped grid takes segments.rowBlocks in strides
  int s;
  int64_t n;
  rowOf(rowBlock, s, n);
  // The weights are written by no kernel: the first row block's first round
  // is requested while the kernel producing x may still run
  // (DependentLaunch.cuh).
  uint4 packed[Rows][Loads];
  bool loaded = n < segments.segment[s].N && K % 8 == 0;
  if (loaded) {
    const int active = activeRows(n, segments.segment[s].N);
#pragma unroll
    for (int r = 0; r < Rows; ++r)
      if (r < active)
        loadRound<Loads>(static_cast<const unsigned short *>(segments.segment[s].w) +
                             (n + r * Warps) * K,
                         int64_t(lane) * 8, K, packed[r]);
  }
  waitForPrecedingKernels();
  allowDependentLaunch();
  const int64_t t0 = blockIdx.y * int64_t(Tokens);
  const int tokens = static_cast<int>(T - t0 < Tokens ? T - t0 : Tokens);
  const float *xs = x + t0 * K;
  [[maybe_unused]] unsigned exchangeCount = 0;
  if (stageX) {
    if constexpr (Exchange == kExchangeIn) {
      stageExchanged<!Paired && Rows == 1 && Loads == kLoadsInFlight ? 1 : 2>(
          segments.exchangeIn, K, staged);
    } else if (Tokens == 1 && segments.consume.weight) {
      // x early only where registers allow: the unpaired kernel, under its
      // 64-register bound, spilled 108 bytes with it.
      stageNormed(segments.consume, xs, K, staged, Paired && segments.consume.earlyX);
    } else {
      // kStagedLoads loads a thread issued before their stores: a
      // load-then-store loop waited out an L2 round trip per float4 a thread
      // staged, five and a half at a 1.1B shape's down projection (K =
      // 5,632). Not cp.async: issued behind the first round of weights, the
      // same copies made a 1.1B batch-1 step 10% slower (docs/performance.md).
      constexpr int kStagedLoads = 4;
      const float4 *from = reinterpret_cast<const float4 *>(xs);
      const int64_t units = tokens * K / 4;
      for (int64_t first = threadIdx.x; first < units; first += kStagedLoads * blockDim.x) {
        float4 v[kStagedLoads];
#pragma unroll
        for (int k = 0; k < kStagedLoads; ++k) {
          const int64_t i = first + k * int64_t(blockDim.x);
          if (i < units)
            v[k] = __ldcg(from + i);
        }
#pragma unroll
        for (int k = 0; k < kStagedLoads; ++k) {
          const int64_t i = first + k * int64_t(blockDim.x);
          if (i < units)
            staged[i] = v[k];
        }
      }
    }
    __syncthreads();
    xs = reinterpret_cast<const float *>(staged);
    // Counted as soon as the block's threads have read the site (the result
    // is used only at the block's end: emptyExchanged).
    if constexpr (Exchange == kExchangeIn)
      if (threadIdx.x == 0)
        exchangeCount = atomicAdd(segments.exchangeIn.arrivals, 1u) + 1;
  }
  recordKernelMark(0); // kernel clock builds: x staged (block 0)
  // The producer's block sum needs every warp: rows past N skip to it.
  const bool produces = Tokens == 1 && !Paired && segments.produce.sum != nullptr;
  // Unpaired: row n's total v, its bias added, into y at `at`; a producer
  // (one token: at is n) also stores the residual sum and returns its
  // square (else 0).
  const auto storeRow = [&](const LinearSegment &seg, float v, int64_t n, int64_t at) {
    if (seg.bias)
      v += seg.bias[n];
    seg.y[at] = v;
    if constexpr (Exchange == kExchangeOut) {
      const ExchangeDevice &e = segments.exchangeOut;
      // A NaN with kExchangeEmpty's bits (arithmetic makes none) would read
      // as not arrived: the canonical NaN goes instead.
      const float out = __float_as_uint(v) == kExchangeEmpty ? __uint_as_float(0x7fffffffu) : v;
      for (int q = 0; q < e.ranks; ++q)
        e.slots[q][e.rank * e.width + n] = out;
    }
    if (!produces)
      return 0.0;
    const float h = v + segments.produce.residual[n];
    segments.produce.sum[n] = h;
    return static_cast<double>(h) * h;
  };
  for (;;) {
    const LinearSegment seg = segments.segment[s];
    const bool active = n < seg.N;
    const unsigned short *row = static_cast<const unsigned short *>(seg.w) + n * K;
    double square = 0.0;
    if constexpr (Rows > 1) {
      const int count = activeRows(n, seg.N);
      const unsigned short *rows[Rows];
      float acc[Rows];
#pragma unroll
      for (int r = 0; r < Rows; ++r) {
        rows[r] = row + int64_t(r) * Warps * K;
        acc[r] = 0.0f;
      }
      if (count > 0)
        dotRows<Rows, Loads>(rows, count, K, lane, bf16, xs, packed, loaded, acc);
#pragma unroll
      for (int r = 0; r < Rows; ++r) {
        const float v = warpTotal(acc, r);
        if (lane == 0 && r < count)
          square += storeRow(seg, v, n + int64_t(r) * Warps, n + int64_t(r) * Warps);
      }
    } else if (active) {
      float acc[Tokens];
#pragma unroll
      for (int i = 0; i < Tokens; ++i)
        acc[i] = 0.0f;
      dotRow<Tokens, Loads>(row, K, lane, bf16, xs, tokens, packed[0], loaded, acc);
      if constexpr (Paired) {
        const LinearSegment upSeg = segments.segment[1];
        float up[Tokens];
#pragma unroll
        for (int i = 0; i < Tokens; ++i)
          up[i] = 0.0f;
        dotRow<Tokens, Loads>(static_cast<const unsigned short *>(upSeg.w) + n * K, K, lane, bf16,
                              xs, tokens, packed[0], false, up);
#pragma unroll
        for (int i = 0; i < Tokens; ++i) {
          float g = warpTotal(acc, i), u = warpTotal(up, i);
          if (lane == 0 && i < tokens) {
            if (seg.bias)
              g += seg.bias[n];
            if (upSeg.bias)
              u += upSeg.bias[n];
            seg.y[(t0 + i) * seg.N + n] = g / (1.0f + expf(-g)) * u;
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < Tokens; ++i) {
          const float v = warpTotal(acc, i);
          if (lane == 0 && i < tokens)
            square = storeRow(seg, v, n, (t0 + i) * seg.N + n);
        }
      }
    }
    if (produces)
      storeSquares<Warps>(segments.produce, square, rowBlock);
    // A looped grid (linear16's rowBlocks past one wave): the block's next
    // row block, its x staged already.
    rowBlock += gridDim.x;
    if (rowBlock >= segments.rowBlocks)
      break;
    rowOf(rowBlock, s, n);
    loaded = false;
    if (produces)
      __syncthreads(); // thread 0 has summed rowSquares before the warps rewrite it
  }
  if constexpr (Exchange == kExchangeIn)
    if (stageX)
      emptyExchanged(segments.exchangeIn, K, exchangeCount);
  recordKernelMark(1); // the block's rows written
}

// The current device's multiprocessors, asked once a device; 0 where the
// device does not say (asked again next time).
int64_t currentMultiprocessors() {
  static std::atomic<int> known[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    cudaGetLastError(); // not sticky
    return 0;
  }
  if (const int count = known[device].load(); count > 0)
    return count;
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError(); // not sticky
    return 0;
  }
  known[device].store(count);
  return count;
}

// Blocks of Kernel the current device holds at once (its multiprocessors
// times the blocks a multiprocessor holds at this size, the shared memory
// opted in first); 0 where the device does not say. The answer depends on
// the kernel, the device, the block and the shared memory only, so each is
// asked once: eager one-token launches ask on every launch (oneTokenGemv's
// choice, launchRows' looped consumers), and the occupancy query and the
// device attributes were host work each time.
template <auto Kernel> int64_t residentBlocks(int threads, size_t shared) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, size_t>, int64_t> known;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError(); // not sticky
    return 0;
  }
  const auto key = std::make_tuple(device, threads, shared);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (const auto found = known.find(key); found != known.end())
      return found->second;
  }
  allowDynamicShared<Kernel>(shared);
  const int64_t multiprocessors = currentMultiprocessors();
  int perMultiprocessor = 0;
  if (multiprocessors <= 0 ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perMultiprocessor, Kernel, threads, shared) !=
          cudaSuccess) {
    cudaGetLastError(); // not sticky; asked again next time
    return 0;
  }
  const int64_t resident = multiprocessors * perMultiprocessor;
  const std::lock_guard<std::mutex> lock(mutex);
  known.emplace(key, resident);
  return resident;
}

// Past 48 KiB of staged x (an 8B shape's down projection, K = 14,336) only
// three blocks fit a multiprocessor: 512 blocks of 8 rows were 1.3 waves,
// the second mostly idle. Blocks of kWideWarps rows (one token, unpaired)
// put the whole grid in one wave: on an H200 the down projection alone
// 39.0 -> 35.7 us (45.3 before the 64-register bound), 8B batch 1 +1%.
// Two rows a warp (kTwoRows) now takes such rows; this where it is off.
constexpr int kWideWarps = 16;

// Long rows (one token, unpaired, K past two rounds of kLoadsInFlight: the
// 1.1B down projection, K = 5,632): 16 loads a lane in flight, twice the
// bytes a warp requests at a time, where its grid still fits one wave with
// the registers that takes (101 against 64 in llmir-chain-bench). The 8-load
// GEMV read such a row in three dependent rounds; in llmir-chain-bench's
// chain of a 1.1B layer's products, 16 loads took a layer 31.1 -> 30.1 us
// (docs/performance.md). LLMIR_CUDA_LONG_ROW_LOADS=0 keeps 8 (measuring).
constexpr int kLongRowLoads = 16;

// One token, unpaired, x staged, rows of at least two rounds (K >= 4,096):
// each warp computes two rows (r and r + 8 of a 16-row block), both rows'
// rounds requested before either is used and x read from shared memory
// once for both; 8 loads a lane, so 16 in flight. On an H200 (c120-c121,
// docs/performance.md): an 8B batch-1 step 4.488 -> 4.274 ms with every
// product two rows a warp (O and down alone -2.8%, Q/K/V and the LM head
// alone -0.4%); at the 1.1B shape (K = 2,048, one round a row) +1.0%, and
// its down projection (K = 5,632) +2.8% against kLongRowLoads, which is kept
// where it applies. Grids of many waves take it whatever K (the 1.1B's LM
// head, 7.6 waves of 8-row blocks: alone 39.1 -> 36.3 us, a step -0.3%,
// c126/c130). LLMIR_CUDA_TWO_ROWS=0 keeps one row a warp (measuring).
constexpr int kTwoRows = 2;
// The least grid, in waves of 8-row blocks, that takes two rows a warp at
// any K (LLMIR_CUDA_TWO_ROWS_FROM_WAVES; measured at 4 against never).
constexpr int64_t kTwoRowsFromWaves = 4;
constexpr int64_t kTwoRounds = 2 * kLoadsInFlight * kRoundStride;

// The GEMV launchLinear16 runs for one token, unpaired (blocks8: its row
// blocks at 8 rows a block; consumer: a residual norm's consumer).
enum class OneTokenGemv { kRows, kWideRows, kLongRows, kTwoRows };
OneTokenGemv oneTokenGemv(int64_t K, int64_t blocks8, bool consumer) {
  static const bool longRows = !switchedOff("LLMIR_CUDA_LONG_ROW_LOADS");
  static const bool twoRows = !switchedOff("LLMIR_CUDA_TWO_ROWS");
  static const int64_t twoRowsFromWaves =
      countFromEnv("LLMIR_CUDA_TWO_ROWS_FROM_WAVES", kTwoRowsFromWaves);
  const bool staged = oneTokenStagesX(K);
  const size_t shared = staged ? static_cast<size_t>(K) * sizeof(float) : 0;
  if (longRows && !consumer && K > kTwoRounds && shared <= kDefaultSharedBytes &&
      blocks8 <= residentBlocks<linear16Kernel<1, false, kWarpsPerBlock, kLongRowLoads>>(
                     kWarpsPerBlock * 32, shared))
    return OneTokenGemv::kLongRows;
  if (twoRows && staged &&
      (K >= kTwoRounds ||
       blocks8 >= twoRowsFromWaves * residentBlocks<linear16Kernel<1, false, kWarpsPerBlock>>(
                                         kWarpsPerBlock * 32, shared)))
    return OneTokenGemv::kTwoRows;
  return shared > kDefaultSharedBytes ? OneTokenGemv::kWideRows : OneTokenGemv::kRows;
}

// The paired gate/up at one token with rows of two rounds or more (an 8B
// shape's, K = 4,096): 16 loads a lane, each row of the pair read in one
// round where 8 loads took two. On an H200, an 8B batch-1 step 4.300 ->
// 4.278 ms (-0.5%, three pairs of runs, c123). LLMIR_CUDA_PAIRED_LONG=0
// keeps 8.
bool pairedLongRows(int64_t K) {
  static const bool enabled = !switchedOff("LLMIR_CUDA_PAIRED_LONG");
  return enabled && oneTokenStagesX(K) && K >= kTwoRounds;
}

// Rows a block of oneTokenGemv's choice.
int64_t blockRows(OneTokenGemv gemv) {
  switch (gemv) {
  case OneTokenGemv::kWideRows:
    return kWideWarps;
  case OneTokenGemv::kTwoRows:
    return kTwoRows * kWarpsPerBlock;
  default:
    return kWarpsPerBlock;
  }
}

template <int Tokens, bool Paired, int Warps, int Loads, int Rows, int Exchange>
void launchRowsAs(Stream stream, const float *x, int64_t T, int64_t K, bool bf16, bool stageX,
                  size_t shared, LinearSegments segments) {
  using Kernel = decltype(&linear16Kernel<Tokens, Paired, Warps, Loads, Rows, Exchange>);
  constexpr Kernel kernel = linear16Kernel<Tokens, Paired, Warps, Loads, Rows, Exchange>;
  allowDynamicShared<kernel>(shared);
  int64_t blocks = 0;
  for (int s = 0; s < segments.count; ++s) {
    segments.firstBlock[s] = static_cast<unsigned>(blocks);
    if (!Paired || s == 0) // paired: segment 0's rows carry both
      blocks += (segments.segment[s].N + Warps * Rows - 1) / (Warps * Rows);
  }
  segments.rowBlocks = static_cast<unsigned>(blocks);
  // A norm consumer's blocks each stage and normalise x before their rows:
  // past one wave, a block of the next wave paid that again (an 8B shape's
  // gate/up, 4.5 waves, kept the norm's own launch for it: ~6.8 us a layer).
  // One wave of blocks that loop over the row blocks pays it once a block.
  if (Tokens == 1 && (segments.consume.weight || segments.exchangeIn.ranks > 0) &&
      loopedNormConsumers()) {
    const int64_t resident = residentBlocks<kernel>(Warps * 32, shared);
    if (resident > 0 && blocks > resident)
      blocks = resident;
  }
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>((T + Tokens - 1) / Tokens));
  launchDependent(kernel, grid, Warps * 32, shared, stream, x, T, K, bf16, stageX, segments);
}

// launchRowsAs with the exchange's build where the segments use one.
template <int Tokens, bool Paired, int Warps, int Loads = kLoadsInFlight, int Rows = 1>
void launchRows(Stream stream, const float *x, int64_t T, int64_t K, bool bf16, bool stageX,
                size_t shared, const LinearSegments &segments) {
  if constexpr (Tokens == 1) {
    if (segments.exchangeIn.ranks > 0)
      return launchRowsAs<1, Paired, Warps, Loads, Rows, kExchangeIn>(stream, x, T, K, bf16,
                                                                      stageX, shared, segments);
    if constexpr (!Paired)
      if (segments.exchangeOut.ranks > 0)
        return launchRowsAs<1, false, Warps, Loads, Rows, kExchangeOut>(stream, x, T, K, bf16,
                                                                        stageX, shared, segments);
  }
  launchRowsAs<Tokens, Paired, Warps, Loads, Rows, kNoExchange>(stream, x, T, K, bf16, stageX,
                                                                shared, segments);
}

template <int Tokens>
void launchLinear16(Stream stream, const float *x, int64_t T, int64_t K, bool bf16,
                    const LinearSegments &segments) {
  const int64_t xBytes = std::min<int64_t>(T, Tokens) * K * int64_t(sizeof(float));
  const bool stageX = K % 8 == 0 && xBytes <= kSharedXBytes;
  const size_t shared = stageX ? static_cast<size_t>(xBytes) : 0;
  if (segments.pairedSwiglu) {
    if constexpr (Tokens == 1) {
      if (pairedLongRows(K))
        return launchRows<1, true, kWarpsPerBlock, kLongRowLoads>(stream, x, T, K, bf16, stageX,
                                                                  shared, segments);
    }
    return launchRows<Tokens, true, kWarpsPerBlock>(stream, x, T, K, bf16, stageX, shared,
                                                    segments);
  }
  if constexpr (Tokens == 1) {
    int64_t blocks8 = 0;
    for (int s = 0; s < segments.count; ++s)
      blocks8 += (segments.segment[s].N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    switch (oneTokenGemv(K, blocks8,
                         segments.consume.weight != nullptr || segments.exchangeIn.ranks > 0)) {
    case OneTokenGemv::kLongRows:
      return launchRows<1, false, kWarpsPerBlock, kLongRowLoads>(stream, x, T, K, bf16, stageX,
                                                                 shared, segments);
    case OneTokenGemv::kTwoRows:
      return launchRows<1, false, kWarpsPerBlock, kLoadsInFlight, kTwoRows>(
          stream, x, T, K, bf16, stageX, shared, segments);
    case OneTokenGemv::kWideRows:
      return launchRows<1, false, kWideWarps>(stream, x, T, K, bf16, stageX, shared, segments);
    case OneTokenGemv::kRows:
      break;
    }
  }
  launchRows<Tokens, false, kWarpsPerBlock>(stream, x, T, K, bf16, stageX, shared, segments);
}

// Two to eight tokens with bf16 weights (batched decode): tensor cores. The
// GEMV above computes every token of a row in one warp, its lanes reading
// each token's x from shared memory for every 16 bytes of weights: at 4 and
// 8 tokens those x reads, not the weights, bound it (an H200, 1.1B shape:
// batch 4 at 2.4 ms a step against 1.35 at batch 1; batch 8 4.3 ms, which is
// why batch 8 went to cuBLAS, two launches a product with x's conversion).
// Here a warp multiplies an 8-row tile of W by the step's tokens with
// mma.m16n8k16 (A = tokens, zero past T; B = the tile's rows), and the eight
// warps of a block split K, their partial tiles summed in warp order in
// shared memory (deterministic). The reduction order of k does not matter
// to a dot product, so each lane takes 16 contiguous bytes of its row g =
// lane / 4 (and x of token g at the same k) and gives them to the fragment
// slots of logical k {2c, 2c+1, 2c+8, 2c+9} (c = lane % 4) of two mmas: one
// 16-byte load of weights per lane per 32 k, as the GEMV. x is converted in
// registers: medium precision rounds it to bf16, highest adds a second mma
// of the remainder (x = hi + lo, the cuBLAS path's split).
constexpr int kMmaSplits = 8; // warps of a block, each a K range of one tile
constexpr int kMmaRows = 8;   // weight rows a tile (the mma's N)
// 32-k steps whose weights a warp has requested: 128 bytes a lane, of one
// row or (paired) of two.
template <bool Paired> constexpr int kMmaAhead = Paired ? 4 : 8;
constexpr int kMmaXAhead = 4; // ... and whose x (mostly L1 hits: a shorter wait)

// A's rows g (a0, a2) and g + 8 (a1, a3): tokens g and g + 8.
__device__ __forceinline__ void mmaBf16(float (&c)[4], unsigned a0, unsigned a1, unsigned a2,
                                        unsigned a3, unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned bits(__nv_bfloat162 v) {
  return *reinterpret_cast<unsigned *>(&v);
}

// Two x values as a bf16 pair (the first in the low half) and, for highest
// precision, the pair of their remainders.
template <bool Highest>
__device__ __forceinline__ void splitPair(float v0, float v1, unsigned &hi, unsigned &lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
  hi = bits(h);
  if constexpr (Highest) {
    const float2 back = __bfloat1622float2(h);
    lo = bits(__floats2bfloat162_rn(v0 - back.x, v1 - back.y));
  }
}

// Highest is a template argument, not a flag: at medium precision the
// remainders are neither computed nor kept. As a flag (an H200, 8B shape, 8
// tokens, ncu) the kernel issued an instruction every other cycle on each
// scheduler, 127 registers and some spilled, two blocks a multiprocessor:
// 2.2 TB/s where cuBLAS moves the same weights at 3.0.
// Wide: 9 to 16 tokens, the mma's A rows 8-15 carrying tokens 8-15 (zeros
// up to 8 tokens), on the same weight loads; each lane then reads x of two
// tokens, two steps ahead instead of four to keep the registers.
template <bool Paired, bool Highest, bool Wide>
__global__ void __launch_bounds__(kMmaSplits * 32)
    linearMmaKernel(const float *x, int T, int64_t K, LinearSegments segments) {
  constexpr int Ahead = kMmaAhead<Paired>;
  constexpr int XAhead = Wide ? 2 : kMmaXAhead;
  constexpr int Tokens = Wide ? 16 : 8;
  __shared__ float partial[Paired ? 2 : 1][kMmaSplits][Tokens][kMmaRows];
  int s = 0;
  while (!Paired && s + 1 < segments.count && blockIdx.x >= segments.firstBlock[s + 1])
    ++s;
  const LinearSegment seg = segments.segment[s];
  const int64_t rowBase = int64_t(blockIdx.x - segments.firstBlock[s]) * kMmaRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const bool rowActive = rowBase + g < seg.N;
  const int64_t steps = (K + 31) / 32;
  const int64_t per = (steps + kMmaSplits - 1) / kMmaSplits;
  const int64_t first = warp * per, last = first + per < steps ? first + per : steps;
  const unsigned short *gateRow = static_cast<const unsigned short *>(seg.w) + (rowBase + g) * K;
  const unsigned short *upRow =
      Paired ? static_cast<const unsigned short *>(segments.segment[1].w) + (rowBase + g) * K
             : nullptr;
  auto load = [&](const unsigned short *row, int64_t step) {
    const int64_t k = step * 32 + 8 * c;
    return rowActive && step < last && k < K ? __ldg(reinterpret_cast<const uint4 *>(row + k))
                                             : make_uint4(0, 0, 0, 0);
  };
  // The weights are written by no kernel: the first steps' are requested
  // while the kernel producing x may still run (DependentLaunch.cuh).
  uint4 gateAhead[Ahead], upAhead[Paired ? Ahead : 1];
#pragma unroll
  for (int j = 0; j < Ahead; ++j) {
    gateAhead[j] = load(gateRow, first + j);
    if constexpr (Paired)
      upAhead[j] = load(upRow, first + j);
  }
  waitForPrecedingKernels();
  allowDependentLaunch();
  // x of the same steps, requested ahead as the weights are (an L2 read a
  // step, waited for one at a time, was most of a warp's time).
  auto loadX = [&](int token, int64_t step, float4 &a, float4 &b) {
    const int64_t k = step * 32 + 8 * c;
    if (token < T && step < last && k < K) {
      const float *row = x + int64_t(token) * K;
      a = *reinterpret_cast<const float4 *>(row + k);
      b = *reinterpret_cast<const float4 *>(row + k + 4);
    } else {
      a = b = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  // Token g's x (xa, xb) and, Wide, token g + 8's (xc, xd).
  float4 xa[XAhead], xb[XAhead], xc[Wide ? XAhead : 1], xd[Wide ? XAhead : 1];
#pragma unroll
  for (int j = 0; j < XAhead; ++j) {
    loadX(g, first + j, xa[j], xb[j]);
    if constexpr (Wide)
      loadX(g + 8, first + j, xc[j], xd[j]);
  }
  float gate[4] = {0.f, 0.f, 0.f, 0.f}, up[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t base = first; base < last; base += Ahead) {
#pragma unroll
    for (int j = 0; j < Ahead; ++j) {
      const int64_t step = base + j;
      const int xj = j % XAhead; // a constant once unrolled
      unsigned hi[4], lo[4], hi8[4] = {0u, 0u, 0u, 0u}, lo8[4] = {0u, 0u, 0u, 0u};
      splitPair<Highest>(xa[xj].x, xa[xj].y, hi[0], lo[0]);
      splitPair<Highest>(xa[xj].z, xa[xj].w, hi[1], lo[1]);
      splitPair<Highest>(xb[xj].x, xb[xj].y, hi[2], lo[2]);
      splitPair<Highest>(xb[xj].z, xb[xj].w, hi[3], lo[3]);
      loadX(g, step + XAhead, xa[xj], xb[xj]);
      if constexpr (Wide) {
        splitPair<Highest>(xc[xj].x, xc[xj].y, hi8[0], lo8[0]);
        splitPair<Highest>(xc[xj].z, xc[xj].w, hi8[1], lo8[1]);
        splitPair<Highest>(xd[xj].x, xd[xj].y, hi8[2], lo8[2]);
        splitPair<Highest>(xd[xj].z, xd[xj].w, hi8[3], lo8[3]);
        loadX(g + 8, step + XAhead, xc[xj], xd[xj]);
      }
      // One weight tile's products with x's high halves, then (highest)
      // its low halves. Steps past the warp's range hold zeros: their
      // products add nothing.
      auto multiply = [&](float(&acc)[4], uint4 w) {
        mmaBf16(acc, hi[0], hi8[0], hi[1], hi8[1], w.x, w.y);
        mmaBf16(acc, hi[2], hi8[2], hi[3], hi8[3], w.z, w.w);
        if constexpr (Highest) {
          mmaBf16(acc, lo[0], lo8[0], lo[1], lo8[1], w.x, w.y);
          mmaBf16(acc, lo[2], lo8[2], lo[3], lo8[3], w.z, w.w);
        }
      };
      const uint4 w = gateAhead[j];
      gateAhead[j] = load(gateRow, step + Ahead);
      multiply(gate, w);
      if constexpr (Paired) {
        const uint4 u = upAhead[j];
        upAhead[j] = load(upRow, step + Ahead);
        multiply(up, u);
      }
    }
  }
  // c0, c1: token g, rows 2c and 2c + 1 of the tile (c2, c3: tokens 8-15).
  partial[0][warp][g][2 * c] = gate[0];
  partial[0][warp][g][2 * c + 1] = gate[1];
  if constexpr (Wide) {
    partial[0][warp][g + 8][2 * c] = gate[2];
    partial[0][warp][g + 8][2 * c + 1] = gate[3];
  }
  if constexpr (Paired) {
    partial[Paired ? 1 : 0][warp][g][2 * c] = up[0];
    partial[Paired ? 1 : 0][warp][g][2 * c + 1] = up[1];
    if constexpr (Wide) {
      partial[Paired ? 1 : 0][warp][g + 8][2 * c] = up[2];
      partial[Paired ? 1 : 0][warp][g + 8][2 * c + 1] = up[3];
    }
  }
  __syncthreads();
  const int t = threadIdx.x / kMmaRows, r = threadIdx.x % kMmaRows;
  const int64_t n = rowBase + r;
  if (threadIdx.x >= Tokens * kMmaRows || t >= T || n >= seg.N)
    return;
  float v = 0.f, u = 0.f;
#pragma unroll
  for (int w = 0; w < kMmaSplits; ++w) {
    v += partial[0][w][t][r];
    if constexpr (Paired)
      u += partial[Paired ? 1 : 0][w][t][r];
  }
  if (seg.bias)
    v += seg.bias[n];
  if constexpr (Paired) {
    const LinearSegment upSeg = segments.segment[1];
    if (upSeg.bias)
      u += upSeg.bias[n];
    seg.y[int64_t(t) * seg.N + n] = v / (1.0f + expf(-v)) * u;
  } else {
    seg.y[int64_t(t) * seg.N + n] = v;
  }
}

// x's bf16 halves for cuBLAS: four elements a thread (16-byte loads, 8-byte
// stores) where x and both outputs allow it, else one. One element a thread
// (2-byte stores) moved 1.2 TB/s on an H200 (a 2,048-token prefill of the
// 1.1B shape: 22-56 us a call, 66 calls).
template <bool Vector>
__global__ void splitBf16Kernel(const float *x, int64_t n, __nv_bfloat16 *hi,
                                __nv_bfloat16 *lo) {
  beginDependentKernel();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if constexpr (Vector) {
    for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n / 4; q += stride)
      splitFour(reinterpret_cast<const float4 *>(x)[q], hi, lo, q);
  } else {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
      splitOne(x[i], hi[i], lo ? &lo[i] : nullptr);
  }
}

__global__ void joinHalvesKernel(const float *halves, int64_t T, int64_t N,
                                 const float *bias, float *y) {
  beginDependentKernel();
  const int64_t n = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = halves[i] + halves[n + i];
    if (bias)
      v += bias[i % N];
    y[i] = v;
  }
}

unsigned gridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

} // namespace

bool oneTokenStagesX(int64_t K) {
  return K % 8 == 0 && K * int64_t(sizeof(float)) <= kSharedXBytes;
}

int64_t oneTokenBlocks(int64_t K, int64_t N) {
  const int64_t rows = blockRows(oneTokenGemv(K, (N + kWarpsPerBlock - 1) / kWarpsPerBlock, false));
  return (N + rows - 1) / rows;
}

namespace {
// The device's resident blocks (all multiprocessors) of the unpaired
// one-token kernel of kind `gemv`, x staged in `shared` bytes.
int64_t unpairedResident(OneTokenGemv gemv, size_t shared) {
  constexpr int kThreads = kWarpsPerBlock * 32;
  switch (gemv) {
  case OneTokenGemv::kLongRows:
    return residentBlocks<linear16Kernel<1, false, kWarpsPerBlock, kLongRowLoads>>(kThreads,
                                                                                 shared);
  case OneTokenGemv::kTwoRows:
    return residentBlocks<linear16Kernel<1, false, kWarpsPerBlock, kLoadsInFlight, kTwoRows>>(
        kThreads, shared);
  case OneTokenGemv::kWideRows:
    return residentBlocks<linear16Kernel<1, false, kWideWarps>>(kWideWarps * 32, shared);
  case OneTokenGemv::kRows:
    break;
  }
  return residentBlocks<linear16Kernel<1, false, kWarpsPerBlock>>(kThreads, shared);
}
} // namespace

bool oneTokenGemvFitsBeside(int64_t K, int64_t N, int64_t busy) {
  const OneTokenGemv gemv = oneTokenGemv(K, (N + kWarpsPerBlock - 1) / kWarpsPerBlock, false);
  const size_t shared = oneTokenStagesX(K) ? static_cast<size_t>(K) * sizeof(float) : 0;
  const int64_t resident = unpairedResident(gemv, shared);
  const int64_t multiprocessors = currentMultiprocessors();
  if (resident <= 0 || multiprocessors <= 0)
    return false;
  const int64_t perMultiprocessor = resident / multiprocessors;
  return busy < multiprocessors &&
         (multiprocessors - busy) * perMultiprocessor >= oneTokenBlocks(K, N);
}

double oneTokenWaves(int64_t K, int64_t rows, bool paired) {
  const size_t shared = oneTokenStagesX(K) ? static_cast<size_t>(K) * sizeof(float) : 0;
  // The kernel launchLinear16 picks at one token (a consumer: not long rows).
  const OneTokenGemv gemv =
      paired ? OneTokenGemv::kRows
             : oneTokenGemv(K, (rows + kWarpsPerBlock - 1) / kWarpsPerBlock, true);
  const int threads = kWarpsPerBlock * 32;
  const int64_t resident =
      !paired ? unpairedResident(gemv, shared)
      : pairedLongRows(K)
          ? residentBlocks<linear16Kernel<1, true, kWarpsPerBlock, kLongRowLoads>>(threads, shared)
          : residentBlocks<linear16Kernel<1, true, kWarpsPerBlock>>(threads, shared);
  if (resident <= 0)
    return 0.0;
  const int64_t block = blockRows(gemv);
  const int64_t blocks = (rows + block - 1) / block;
  return static_cast<double>(blocks) / static_cast<double>(resident);
}

int linear16(Stream stream, const float *x, int64_t T, int64_t K, Storage storage,
             LinearSegments segments) {
  if (T <= 0 || segments.count <= 0)
    return cudaGetLastError();
  int64_t rows = 0;
  for (int s = 0; s < segments.count; ++s)
    rows += segments.segment[s].N;
  if (segments.pairedSwiglu &&
      (segments.count != 2 || segments.segment[0].N != segments.segment[1].N))
    return cudaErrorInvalidValue;
  if (rows == 0)
    return cudaGetLastError();
  const bool bf16 = storage == Storage::BF16;
  if (T == 1)
    launchLinear16<1>(stream, x, T, K, bf16, segments);
  else if (T == 2)
    launchLinear16<2>(stream, x, T, K, bf16, segments);
  else if (T <= 4)
    launchLinear16<4>(stream, x, T, K, bf16, segments);
  else
    launchLinear16<8>(stream, x, T, K, bf16, segments);
  return cudaGetLastError();
}

int linearMma(Stream stream, const float *x, int64_t T, int64_t K, bool highest,
              LinearSegments segments) {
  if (T <= 0 || segments.count <= 0)
    return cudaGetLastError();
  if (T > 16 || K % 8 != 0 ||
      (segments.pairedSwiglu &&
       (segments.count != 2 || segments.segment[0].N != segments.segment[1].N)))
    return cudaErrorInvalidValue;
  int64_t blocks = 0;
  for (int s = 0; s < segments.count; ++s) {
    segments.firstBlock[s] = static_cast<unsigned>(blocks);
    if (!segments.pairedSwiglu || s == 0)
      blocks += (segments.segment[s].N + kMmaRows - 1) / kMmaRows;
  }
  if (blocks == 0)
    return cudaGetLastError();
  const auto launch = [&](auto kernel) {
    launchDependent(kernel, static_cast<unsigned>(blocks), kMmaSplits * 32, 0, stream, x,
                    static_cast<int>(T), K, segments);
  };
  const auto launchWidth = [&](auto wide) {
    constexpr bool Wide = decltype(wide)::value;
    if (segments.pairedSwiglu)
      highest ? launch(linearMmaKernel<true, true, Wide>)
              : launch(linearMmaKernel<true, false, Wide>);
    else
      highest ? launch(linearMmaKernel<false, true, Wide>)
              : launch(linearMmaKernel<false, false, Wide>);
  };
  if (T > 8)
    launchWidth(std::true_type{});
  else
    launchWidth(std::false_type{});
  return cudaGetLastError();
}

int splitBf16(Stream stream, const float *x, int64_t n, void *hi, void *lo) {
  if (n > 0 && n % 4 == 0 && alignedTo(x, 16) && alignedTo(hi, 8) && alignedTo(lo, 8))
    launchDependent(splitBf16Kernel<true>, gridFor(n / 4, 256), 256, 0, stream, x, n,
                    static_cast<__nv_bfloat16 *>(hi), static_cast<__nv_bfloat16 *>(lo));
  else if (n > 0)
    launchDependent(splitBf16Kernel<false>, gridFor(n, 256), 256, 0, stream, x, n,
                    static_cast<__nv_bfloat16 *>(hi), static_cast<__nv_bfloat16 *>(lo));
  return cudaGetLastError();
}

int joinHalves(Stream stream, const float *halves, int64_t T, int64_t N,
               const float *bias, float *y) {
  if (T * N > 0)
    launchDependent(joinHalvesKernel, gridFor(T * N, 256), 256, 0, stream, halves, T, N, bias,
                    y);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
