// Temperature / top-k / top-p sampling on the device, the algorithm of
// engine::sampleWithUniform (Sampler.cpp) without sorting the vocabulary:
// the candidates are cut and the token drawn by radix selection over the
// logits' order-preserving bit patterns, one block per row.
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
#include "Launch.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace llmir::engine::cuda::detail {
namespace {

constexpr int kThreads = 512;
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

struct Shared {
  unsigned long long histogram[256];
  unsigned long long u64[kThreads / 32];
  double f64[kThreads / 32];
  float f32[kThreads / 32];
  long long i64[kThreads / 32];
  uint32_t digit;
  unsigned long long above;
};

/// The largest key x such that the weight of the ids of `within` with a key
/// at or above x reaches `target` (weight: 1 per id when byCount, else the
/// id's mass); `above` gets the weight strictly above x. False when the
/// whole set weighs less than target.
__device__ bool selectKey(const Row &row, const Cut &within, bool byCount, uint64_t target,
                          Shared &s, uint32_t &key, uint64_t &above) {
  uint32_t prefix = 0, mask = 0;
  uint64_t weightAbove = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x)
      s.histogram[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x) {
      const uint32_t k = orderKey(row.logits[i]);
      if ((k & mask) == prefix && within.contains(k, i))
        atomicAdd(&s.histogram[(k >> shift) & 255u],
                  static_cast<unsigned long long>(byCount ? 1 : row.mass(i)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t acc = weightAbove;
      int chosen = -1;
      for (int d = 255; d >= 0; --d) {
        if (acc + s.histogram[d] >= target) {
          chosen = d;
          break;
        }
        acc += s.histogram[d];
      }
      s.digit = chosen < 0 ? 256u : static_cast<uint32_t>(chosen);
      s.above = acc;
    }
    __syncthreads();
    if (s.digit == 256u)
      return false;
    prefix |= s.digit << shift;
    mask |= 255u << shift;
    weightAbove = s.above;
  }
  key = prefix;
  above = weightAbove;
  return true;
}

/// The id of the n-th (from 1, by increasing id) member of `within` whose
/// key is `key`.
__device__ int64_t nthTie(const Row &row, const Cut &within, uint32_t key, int64_t n,
                          Shared &s) {
  auto isTie = [&](int64_t i) {
    if (i >= row.V)
      return false;
    const uint32_t k = orderKey(row.logits[i]);
    return k == key && within.contains(k, i);
  };
  long long count = 0;
  for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x)
    count += isTie(i) ? 1 : 0;
  count = blockReduce(count, [](long long a, long long b) { return a + b; }, s.i64, 0LL);
  if (n <= 1) { // the usual case, one id with the key, among others
    long long id = row.V;
    for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x)
      if (isTie(i))
        id = min(id, static_cast<long long>(i));
    return blockReduce(id, [](long long a, long long b) { return a < b ? a : b; }, s.i64,
                       static_cast<long long>(row.V));
  }
  if (n >= count) {
    long long id = -1;
    for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x)
      if (isTie(i))
        id = max(id, static_cast<long long>(i));
    return blockReduce(id, [](long long a, long long b) { return a > b ? a : b; }, s.i64, -1LL);
  }
  // Several equal logits and not all of them: count in id order, a block of
  // ids at a time.
  long long seen = 0;
  for (int64_t base = 0; base < row.V; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool tie = isTie(i);
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0)
      s.i64[warp] = __popc(ballot);
    __syncthreads();
    long long before = seen;
    for (int w = 0; w < warp; ++w)
      before += s.i64[w];
    before += __popc(ballot & ((1u << lane) - 1u));
    long long inBlock = 0;
    for (int w = 0; w < kThreads / 32; ++w)
      inBlock += s.i64[w];
    __syncthreads();
    if (tie && before + 1 == n)
      s.above = static_cast<unsigned long long>(i);
    __syncthreads();
    if (seen < n && seen + inBlock >= n)
      return static_cast<int64_t>(s.above);
    seen += inBlock;
  }
  return row.V - 1; // not reached: n <= count
}

/// The last id of `within` (in logit order, ties by id) at which the
/// running weight reaches `target`, as a cut that keeps up to it.
__device__ Cut cutAt(const Row &row, const Cut &within, bool byCount, uint64_t target,
                     Shared &s) {
  uint32_t key = 0;
  uint64_t above = 0;
  Cut cut;
  if (!selectKey(row, within, byCount, target, s, key, above))
    return within; // rounding left the target past the whole set
  // Ties at `key` all weigh the same: how many are needed to reach target.
  int64_t any = row.V;
  for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x) {
    const uint32_t k = orderKey(row.logits[i]);
    if (k == key && within.contains(k, i)) {
      any = i;
      break;
    }
  }
  any = blockReduce<long long>(any, [](long long a, long long b) { return a < b ? a : b; },
                               s.i64, row.V);
  const uint64_t each = byCount ? 1 : row.mass(any);
  const int64_t needed =
      each == 0 ? INT64_MAX : static_cast<int64_t>((target - above + each - 1) / each);
  cut.all = false;
  cut.key = key;
  cut.lastTie = nthTie(row, within, key, needed, s);
  return cut;
}

__global__ void sampleKernel(const float *logits, int64_t V, const RowSampling *params,
                             int32_t *ids, float *logprobs, int32_t *hostIds,
                             float *hostLogprobs) {
  __shared__ Shared s;
  const RowSampling p = params[blockIdx.x];
  Row row{logits + blockIdx.x * V, V, -INFINITY, p.temperature};
  auto fmax2 = [](float a, float b) { return fmaxf(a, b); };
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
    m = fmaxf(m, row.logits[i]);
  row.maxLogit = blockReduce(m, fmax2, s.f32, -INFINITY);

  int64_t chosen;
  const bool greedy = !(p.temperature > 0.0f) || p.topK == 1;
  const uint32_t maxKey = orderKey(row.maxLogit);
  if (greedy) {
    chosen = nthTie(row, Cut{}, maxKey, 1, s);
  } else {
    Cut kept;
    if (p.topK > 0 && p.topK < V)
      kept = cutAt(row, Cut{}, true, static_cast<uint64_t>(p.topK), s);
    auto sum = [](unsigned long long a, unsigned long long b) { return a + b; };
    auto massOf = [&](const Cut &cut) {
      unsigned long long total = 0;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
        if (cut.contains(orderKey(row.logits[i]), i))
          total += row.mass(i);
      return blockReduce(total, sum, s.u64, 0ULL);
    };
    if (p.topP < 1.0f) {
      const double total = static_cast<double>(massOf(kept));
      kept = cutAt(row, kept, false,
                   static_cast<uint64_t>(ceil(static_cast<double>(p.topP) * total)), s);
    }
    const uint64_t keptMass = massOf(kept);
    // The first id whose running mass exceeds uniform * kept mass.
    const uint64_t draw =
        static_cast<uint64_t>(static_cast<double>(keptMass) * p.uniform) + 1;
    const Cut drawn = cutAt(row, kept, false, draw, s);
    chosen = drawn.all ? -1 : drawn.lastTie;
    if (chosen < 0) { // past the last kept id: the CPU takes that one
      uint32_t lowestKey = 0xffffffffu;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        const uint32_t k = orderKey(row.logits[i]);
        if (kept.contains(k, i) && k < lowestKey)
          lowestKey = k;
      }
      lowestKey = static_cast<uint32_t>(blockReduce<long long>(
          lowestKey, [](long long a, long long b) { return a < b ? a : b; }, s.i64,
          0xffffffffLL));
      chosen = nthTie(row, kept, lowestKey, INT64_MAX, s);
    }
  }
  chosen = chosen >= 0 && chosen < V ? chosen : 0;
  if (logprobs) { // log-softmax of the raw logits at the chosen id
    double z = 0;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
      z += exp(static_cast<double>(row.logits[i]) - static_cast<double>(row.maxLogit));
    z = blockReduce(z, [](double a, double b) { return a + b; }, s.f64, 0.0);
    if (threadIdx.x == 0) {
      const float logprob = static_cast<float>(static_cast<double>(row.logits[chosen]) -
                                               (row.maxLogit + log(z)));
      logprobs[blockIdx.x] = logprob;
      if (hostLogprobs)
        hostLogprobs[blockIdx.x] = logprob;
    }
  }
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = static_cast<int32_t>(chosen);
    if (hostIds)
      hostIds[blockIdx.x] = static_cast<int32_t>(chosen);
  }
}

} // namespace

int sampleRows(Stream stream, const float *logits, int64_t rows, int64_t V,
               const RowSampling *params, int32_t *ids, float *logprobs, int32_t *hostIds,
               float *hostLogprobs) {
  if (rows > 0 && V > 0)
    sampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        logits, V, params, ids, logprobs, hostIds, hostLogprobs);
  return cudaGetLastError();
}

} // namespace llmir::engine::cuda::detail
