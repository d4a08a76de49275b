// Temperature / top-k / top-p sampling on the device, the algorithm of
// engine::sampleWithUniform (Sampler.cpp) without sorting the vocabulary:
// the candidates are cut and the token drawn by radix selection over the
// logits' order-preserving bit patterns.
//
// CPU, for one row (probabilities p_i = exp((l_i - max) / T) in logit
// order, ties by lower id): keep the top-k, then the shortest prefix whose
// mass reaches top-p, then walk the kept prefix until the running mass
// passes uniform * kept mass. Here each of those cuts is "the largest logit
// x whose mass at or above x reaches a target" — found 8 bits at a time from
// a histogram of mass per digit — plus, among equal logits at x, the n-th
// by id. Masses are sums of p_i in 2^-44 fixed point, so a row's result
// does not depend on the order threads add them; it can differ from the
// CPU's double sums only when the draw lands within ~1e-9 of a boundary.
//
// A row is split over several blocks (a slice of its ids each) where the
// device has room for them: one block a row did every pass over the whole
// vocabulary on one multiprocessor, and the first digits' histograms, where
// most logits share a few bins, serialised their shared-memory atomics. On
// an H200 a draw at temperature 1 / with top-p 0.95 added to a batch-1 step
// (llmir-gpu-bench --temperature, c247): 32,000 ids 0.42 / 0.79 ms on one
// block, 0.04 / 0.08 split over 32; 128,256 ids 1.71 / 2.94 ms, 0.06 / 0.10
// over 64. The blocks of a row merge their histograms and reductions in
// global memory (RowState) and wait for each other at a barrier of their
// own; a cooperative launch keeps them all resident, so the barrier cannot
// wait for a block that never starts. Each barrier costs a few
// microseconds, so a cut takes its target from its first round's histogram
// (the whole set's weight: no pass of its own) and a key's ties are counted
// and their first id found behind one barrier; a warp scans a histogram,
// eight bins a lane, where one thread walked the 256.
#include "Launch.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kThreads = 512;
constexpr int kMaxBlocksPerRow = 64;
constexpr int64_t kMinIdsPerBlock = 1024;
/// Shorter rows stay on one block: the demo model's 2,048 ids took 10-24%
/// longer split in two (the barriers and the state's reset), on an H200.
constexpr int64_t kSplitFromIds = 8192;
constexpr double kFixedOne = 17592186044416.0; // 2^44: 2^18 ids of mass 1 fit in 64 bits

/// Ascending floats give ascending keys.
__device__ uint32_t orderKey(float v) {
  const uint32_t bits = __float_as_uint(v == 0.0f ? 0.0f : v); // -0 == +0, as for the CPU
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

/// op over the block's values; `identity` fills the lanes past the warps.
template <typename T, typename Op>
__device__ T blockReduce(T value, Op op, T *shared, T identity) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads(); // `shared` may still be read by the previous reduction
  if (lane == 0)
    shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset /= 2)
      value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    if (lane == 0)
      shared[0] = value;
  }
  __syncthreads();
  return shared[0];
}

/// The inverse of orderKey.
__device__ float keyValue(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

/// What the blocks of one row share (zeroed before each launch): their
/// barrier, one slot per merged reduction (each used once), histograms in
/// turn (a round's merges go to one while the next is cleared: every block
/// read the one before last before the barrier this block passed), and
/// per-block values merged in block order (deterministic sums).
constexpr int kSlots = 24;
struct RowState {
  unsigned arrived;
  unsigned generation;
  unsigned long long slots[kSlots];
  unsigned long long histograms[3][256];
  long long counts[kMaxBlocksPerRow];
  double partials[kMaxBlocksPerRow];
};

struct Shared {
  unsigned long long histogram[256];
  unsigned long long u64[kThreads / 32];
  double f64[kThreads / 32];
  float f32[kThreads / 32];
  long long i64[kThreads / 32];
  uint32_t digit;
  unsigned long long above;
};

/// One row's blocks: this block's slice [begin, end) of the ids, and the
/// merges of values over all of them (returned to every thread of every
/// block of the row). With one block a row (state null) the merges are
/// the block's own.
struct RowGroup {
  RowState *state;
  int blocks, rank;
  int64_t begin, end;
  int slot = 0, round = 0;

  /// Every block of the row has reached it (and what they wrote before it
  /// is visible).
  __device__ void sync() {
    __syncthreads();
    if (!state)
      return;
    if (threadIdx.x == 0) {
      volatile unsigned *generation = &state->generation;
      const unsigned seen = *generation; // cannot move before this block arrives
      __threadfence();
      if (atomicAdd(&state->arrived, 1u) == static_cast<unsigned>(blocks - 1)) {
        atomicExch(&state->arrived, 0u);
        __threadfence();
        atomicAdd(&state->generation, 1u);
      } else {
        while (*generation == seen)
          ;
      }
      __threadfence();
    }
    __syncthreads();
  }

  /// The row's maximum of each block's `value` (the block's own, the
  /// same in all its threads).
  __device__ unsigned long long merge(unsigned long long value) {
    if (!state)
      return value;
    unsigned long long *at = &state->slots[slot++];
    if (threadIdx.x == 0)
      atomicMax(at, value);
    sync();
    return *reinterpret_cast<volatile unsigned long long *>(at);
  }
  /// The sum of `count` and the minimum of `id` (non-negative) over the
  /// row, behind one barrier.
  __device__ void sumAndMin(long long count, long long id, long long &sum, long long &min) {
    if (!state) {
      sum = count;
      min = id;
      return;
    }
    unsigned long long *at = &state->slots[slot];
    slot += 2;
    if (threadIdx.x == 0) {
      atomicAdd(&at[0], static_cast<unsigned long long>(count));
      atomicMax(&at[1], ~static_cast<unsigned long long>(id));
    }
    sync();
    sum = static_cast<long long>(reinterpret_cast<volatile unsigned long long *>(at)[0]);
    min = static_cast<long long>(~reinterpret_cast<volatile unsigned long long *>(at)[1]);
  }
  /// Of non-negative values.
  __device__ long long max(long long value) {
    return static_cast<long long>(merge(static_cast<unsigned long long>(value + 1))) - 1;
  }
  __device__ long long min(long long value) {
    return static_cast<long long>(~merge(~static_cast<unsigned long long>(value)));
  }
  /// Of the blocks' values added in block order, so that the row's sum
  /// does not depend on which block finished first.
  __device__ double orderedSum(double value) {
    if (!state)
      return value;
    if (threadIdx.x == 0)
      state->partials[rank] = value;
    sync();
    double total = 0;
    for (int b = 0; b < blocks; ++b)
      total += reinterpret_cast<volatile double *>(state->partials)[b];
    return total;
  }
  /// The row's histogram of the blocks' `local` ones (in shared memory,
  /// replaced by the row's).
  __device__ void mergeHistogram(unsigned long long *local) {
    if (!state)
      return;
    unsigned long long *row = state->histograms[round % 3];
    unsigned long long *next = state->histograms[(round + 1) % 3];
    ++round;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      if (local[d])
        atomicAdd(&row[d], local[d]);
      if (rank == 0)
        next[d] = 0;
    }
    sync();
    for (int d = threadIdx.x; d < 256; d += blockDim.x)
      local[d] = reinterpret_cast<volatile unsigned long long *>(row)[d];
    __syncthreads();
  }
};

struct Row {
  const float *logits;
  int64_t V;
  float maxLogit;
  double temperature;

  __device__ uint64_t mass(int64_t i) const {
    const float p = static_cast<float>(
        exp((static_cast<double>(logits[i]) - static_cast<double>(maxLogit)) / temperature));
    return static_cast<uint64_t>(static_cast<double>(p) * kFixedOne);
  }
};

/// A set of ids: those whose key is above `key`, and those equal to it with
/// an id at most `lastTie` (all ids when `all`).
struct Cut {
  bool all = true;
  uint32_t key = 0;
  int64_t lastTie = 0;
  __device__ bool contains(uint32_t k, int64_t i) const {
    return all || k > key || (k == key && i <= lastTie);
  }
};

/// The first digit d, from 255 down, at which weightAbove plus the
/// histogram's weight from 255 to d reaches target, into s.digit (256:
/// none) and the weight above it into s.above; a warp's scan of eight bins
/// a lane.
__device__ void chooseDigit(Shared &s, uint64_t weightAbove, uint64_t target) {
  if (threadIdx.x >= 32)
    return;
  const int lane = threadIdx.x;
  unsigned long long bins[8], own = 0;
  for (int j = 0; j < 8; ++j) {
    bins[j] = s.histogram[255 - 8 * lane - j];
    own += bins[j];
  }
  unsigned long long inclusive = own;
  for (int offset = 1; offset < 32; offset *= 2) {
    const unsigned long long below = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset)
      inclusive += below;
  }
  const unsigned reaching = __ballot_sync(0xffffffffu, weightAbove + inclusive >= target);
  if (reaching == 0) {
    if (lane == 31) {
      s.digit = 256u;
      s.above = weightAbove + inclusive;
    }
    return;
  }
  if (lane != __ffs(reaching) - 1)
    return;
  unsigned long long acc = weightAbove + inclusive - own;
  for (int j = 0; j < 8; ++j) {
    if (acc + bins[j] >= target) {
      s.digit = static_cast<uint32_t>(255 - 8 * lane - j);
      s.above = acc;
      return;
    }
    acc += bins[j];
  }
}

/// A cut's target weight, from the weight of the whole set it cuts (the
/// first round's histogram: no pass of its own): top-k's count, top-p's
/// share of the mass rounded up, or the draw's uniform share plus one.
struct Target {
  enum Kind { Count, Share, Draw } kind;
  double value;
  __device__ uint64_t of(uint64_t total) const {
    switch (kind) {
    case Count:
      return static_cast<uint64_t>(value);
    case Share:
      return static_cast<uint64_t>(ceil(value * static_cast<double>(total)));
    default:
      return static_cast<uint64_t>(static_cast<double>(total) * value) + 1;
    }
  }
};

/// The largest key x such that the weight of the ids of `within` with a key
/// at or above x reaches the target (weight: 1 per id when byCount, else
/// the id's mass); `above` gets the weight strictly above x, `target` the
/// target. False when the whole set weighs less than the target.
__device__ bool selectKey(const Row &row, RowGroup &group, const Cut &within, bool byCount,
                          const Target &rule, Shared &s, uint32_t &key, uint64_t &above,
                          uint64_t &target) {
  uint32_t prefix = 0, mask = 0;
  uint64_t weightAbove = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x)
      s.histogram[d] = 0;
    __syncthreads();
    for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x) {
      const uint32_t k = orderKey(row.logits[i]);
      if ((k & mask) == prefix && within.contains(k, i))
        atomicAdd(&s.histogram[(k >> shift) & 255u],
                  static_cast<unsigned long long>(byCount ? 1 : row.mass(i)));
    }
    __syncthreads();
    group.mergeHistogram(s.histogram);
    if (shift == 24) { // the whole set's weight: the first round's bins
      if (threadIdx.x < 32) {
        unsigned long long total = 0;
        for (int d = threadIdx.x; d < 256; d += 32)
          total += s.histogram[d];
        for (int offset = 16; offset > 0; offset /= 2)
          total += __shfl_down_sync(0xffffffffu, total, offset);
        if (threadIdx.x == 0)
          s.above = rule.of(total);
      }
      __syncthreads();
      target = s.above;
      __syncthreads(); // chooseDigit writes s.above
    }
    chooseDigit(s, weightAbove, target);
    __syncthreads();
    if (s.digit == 256u)
      return false;
    prefix |= s.digit << shift;
    mask |= 255u << shift;
    weightAbove = s.above;
    __syncthreads(); // s.digit and s.above are written again next round
  }
  key = prefix;
  above = weightAbove;
  return true;
}

/// The members of `within` whose key is `key`: this block's count, the
/// row's, and the lowest id among them (row.V: none), behind one barrier.
struct Ties {
  long long mine, count, first;
};
__device__ Ties tiesAt(const Row &row, RowGroup &group, const Cut &within, uint32_t key,
                       Shared &s) {
  long long mine = 0, first = row.V;
  for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x) {
    const uint32_t k = orderKey(row.logits[i]);
    if (k == key && within.contains(k, i)) {
      ++mine;
      first = ::min(first, static_cast<long long>(i));
    }
  }
  mine = blockReduce(mine, [](long long a, long long b) { return a + b; }, s.i64, 0LL);
  first = blockReduce(first, [](long long a, long long b) { return a < b ? a : b; }, s.i64,
                      static_cast<long long>(row.V));
  Ties ties{mine, 0, 0};
  group.sumAndMin(mine, first, ties.count, ties.first);
  return ties;
}

/// The id of the n-th (from 1, by increasing id) member of `within` whose
/// key is `key` (`ties`: tiesAt's for it).
__device__ int64_t nthTie(const Row &row, RowGroup &group, const Cut &within, uint32_t key,
                          int64_t n, const Ties &ties, Shared &s) {
  if (n <= 1) // the usual case, one id with the key, among others
    return ties.first;
  auto isTie = [&](int64_t i) {
    if (i >= group.end)
      return false;
    const uint32_t k = orderKey(row.logits[i]);
    return k == key && within.contains(k, i);
  };
  if (n >= ties.count) {
    long long id = -1;
    for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x)
      if (isTie(i))
        id = ::max(id, static_cast<long long>(i));
    id = blockReduce(id, [](long long a, long long b) { return a > b ? a : b; }, s.i64, -1LL);
    return group.max(id);
  }
  // Several equal logits and not all of them: the block whose slice holds
  // the n-th counts in id order, a block of ids at a time.
  long long before = 0;
  if (group.state) {
    if (threadIdx.x == 0)
      group.state->counts[group.rank] = ties.mine;
    group.sync();
    for (int b = 0; b < group.rank; ++b)
      before += reinterpret_cast<volatile long long *>(group.state->counts)[b];
  }
  long long found = -1;
  if (n > before && n <= before + ties.mine) {
    const long long wanted = n - before;
    long long seen = 0;
    for (int64_t base = group.begin; base < group.end; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      const bool tie = isTie(i);
      const unsigned ballot = __ballot_sync(0xffffffffu, tie);
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      __syncthreads();
      if (lane == 0)
        s.i64[warp] = __popc(ballot);
      __syncthreads();
      long long earlier = seen;
      for (int w = 0; w < warp; ++w)
        earlier += s.i64[w];
      earlier += __popc(ballot & ((1u << lane) - 1u));
      long long inBlock = 0;
      for (int w = 0; w < kThreads / 32; ++w)
        inBlock += s.i64[w];
      __syncthreads();
      if (tie && earlier + 1 == wanted)
        s.above = static_cast<unsigned long long>(i);
      __syncthreads();
      if (seen < wanted && seen + inBlock >= wanted) {
        found = static_cast<long long>(s.above);
        break;
      }
      seen += inBlock;
    }
  }
  found = group.max(found);
  return found >= 0 ? found : row.V - 1; // not reached: n <= count
}

/// The last id of `within` (in logit order, ties by id) at which the
/// running weight reaches the target, as a cut that keeps up to it.
__device__ Cut cutAt(const Row &row, RowGroup &group, const Cut &within, bool byCount,
                     const Target &rule, Shared &s) {
  uint32_t key = 0;
  uint64_t above = 0, target = 0;
  Cut cut;
  if (!selectKey(row, group, within, byCount, rule, s, key, above, target))
    return within; // rounding left the target past the whole set
  // Ties at `key` all weigh the same: how many are needed to reach target.
  const Ties ties = tiesAt(row, group, within, key, s);
  const uint64_t each = byCount ? 1 : row.mass(ties.first);
  const int64_t needed =
      each == 0 ? INT64_MAX : static_cast<int64_t>((target - above + each - 1) / each);
  cut.all = false;
  cut.key = key;
  cut.lastTie = nthTie(row, group, within, key, needed, ties, s);
  return cut;
}

/// Block x of the grid: row x / blocksPerRow, slice x % blocksPerRow of its
/// ids.
__global__ void sampleKernel(const float *logits, int64_t V, const RowSampling *params,
                             int32_t *ids, float *logprobs, int32_t *hostIds,
                             float *hostLogprobs, int blocksPerRow, RowState *states) {
  __shared__ Shared s;
  const int64_t r = blockIdx.x / blocksPerRow;
  const int rank = static_cast<int>(blockIdx.x % blocksPerRow);
  const int64_t slice = (V + blocksPerRow - 1) / blocksPerRow;
  RowGroup group{blocksPerRow > 1 ? states + r : nullptr, blocksPerRow, rank,
                 ::min(V, rank * slice), ::min(V, (rank + 1) * slice)};
  const RowSampling p = params[r];
  Row row{logits + r * V, V, -INFINITY, p.temperature};
  uint32_t m = 0; // the key below every float's
  for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x)
    m = ::max(m, orderKey(row.logits[i]));
  m = static_cast<uint32_t>(blockReduce<long long>(
      m, [](long long a, long long b) { return a > b ? a : b; }, s.i64, 0LL));
  const uint32_t maxKey = static_cast<uint32_t>(group.max(m));
  row.maxLogit = keyValue(maxKey);

  int64_t chosen;
  const bool greedy = !(p.temperature > 0.0f) || p.topK == 1;
  if (greedy) {
    chosen = tiesAt(row, group, Cut{}, maxKey, s).first;
  } else {
    Cut kept;
    if (p.topK > 0 && p.topK < V)
      kept = cutAt(row, group, Cut{}, true, {Target::Count, static_cast<double>(p.topK)}, s);
    if (p.topP < 1.0f)
      kept = cutAt(row, group, kept, false, {Target::Share, static_cast<double>(p.topP)}, s);
    // The first id whose running mass exceeds uniform * kept mass.
    const Cut drawn = cutAt(row, group, kept, false, {Target::Draw, p.uniform}, s);
    chosen = drawn.all ? -1 : drawn.lastTie;
    if (chosen < 0) { // past the last kept id: the CPU takes that one
      long long lowestKey = 0xffffffffLL;
      for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x) {
        const uint32_t k = orderKey(row.logits[i]);
        if (kept.contains(k, i) && k < lowestKey)
          lowestKey = k;
      }
      lowestKey = blockReduce<long long>(
          lowestKey, [](long long a, long long b) { return a < b ? a : b; }, s.i64,
          0xffffffffLL);
      lowestKey = group.min(lowestKey);
      const uint32_t key = static_cast<uint32_t>(lowestKey);
      chosen = nthTie(row, group, kept, key, INT64_MAX, tiesAt(row, group, kept, key, s), s);
    }
  }
  chosen = chosen >= 0 && chosen < V ? chosen : 0;
  if (logprobs) { // log-softmax of the raw logits at the chosen id
    double z = 0;
    for (int64_t i = group.begin + threadIdx.x; i < group.end; i += blockDim.x)
      z += exp(static_cast<double>(row.logits[i]) - static_cast<double>(row.maxLogit));
    z = blockReduce(z, [](double a, double b) { return a + b; }, s.f64, 0.0);
    z = group.orderedSum(z);
    if (threadIdx.x == 0 && rank == 0) {
      const float logprob = static_cast<float>(static_cast<double>(row.logits[chosen]) -
                                               (row.maxLogit + log(z)));
      logprobs[r] = logprob;
      if (hostLogprobs)
        hostLogprobs[r] = logprob;
    }
  }
  if (threadIdx.x == 0 && rank == 0) {
    ids[r] = static_cast<int32_t>(chosen);
    if (hostIds)
      hostIds[r] = static_cast<int32_t>(chosen);
  }
}

/// Blocks of sampleKernel the device holds at once (cooperative launches
/// may not ask for more), per device.
int residentBlocks() {
  static int cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64)
    return 0;
  if (cached[device] == 0) {
    int perMultiprocessor = 0, multiprocessors = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perMultiprocessor, sampleKernel,
                                                      kThreads, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
            cudaSuccess)
      return 0;
    cached[device] = perMultiprocessor * multiprocessors;
  }
  return cached[device];
}

} // namespace

size_t samplingScratchBytes(int64_t rows) {
  return rows > 0 ? static_cast<size_t>(rows) * sizeof(RowState) : 0;
}

int sampleRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               const RowSampling *params, int32_t *ids, float *logprobs, int32_t *hostIds,
               float *hostLogprobs, void *scratch, size_t scratchBytes) {
  if (rows <= 0 || V <= 0)
    return cudaGetLastError();
  // Blocks a row: enough ids each to pay for the merges, no more than the
  // device holds beside the other rows' (LLMIR_CUDA_SAMPLE_BLOCKS caps it,
  // for measuring).
  int64_t perRow = std::min<int64_t>(kMaxBlocksPerRow, (V + kMinIdsPerBlock - 1) / kMinIdsPerBlock);
  if (V < kSplitFromIds)
    perRow = 1;
  perRow = std::min<int64_t>(perRow, residentBlocks() / rows);
  if (const int64_t cap = countFromEnv("LLMIR_CUDA_SAMPLE_BLOCKS", 0); cap > 0)
    perRow = std::min(perRow, cap);
  if (scratch == nullptr || scratchBytes < samplingScratchBytes(rows))
    perRow = 1;
  int blocksPerRow = static_cast<int>(std::max<int64_t>(perRow, 1));
  RowState *states = nullptr;
  if (blocksPerRow == 1) {
    sampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        logits, V, params, ids, logprobs, hostIds, hostLogprobs, 1, states);
    return cudaGetLastError();
  }
  states = static_cast<RowState *>(scratch);
  if (cudaError_t error = cudaMemsetAsync(states, 0, samplingScratchBytes(rows), stream))
    return error;
  void *args[] = {&logits, &V,           &params,        &ids,   &logprobs,
                  &hostIds, &hostLogprobs, &blocksPerRow, &states};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void *>(sampleKernel),
                                     dim3(static_cast<unsigned>(rows * blocksPerRow)),
                                     dim3(kThreads), args, 0, stream);
}

} // namespace llmir::engine::cuda::detail
