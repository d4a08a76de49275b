// PeerExchange: the buffers through which the ranks of a tensor-parallel
// group on one host hand each other a one-token product's partial rows
// without an all-reduce launch of their own. The producing GEMV (a layer's
// O or down projection) stores its rows into every rank's buffer; the
// consuming GEMV (gate/up, the next layer's Q/K/V, the LM head) waits for
// the peers' rows to arrive, sums the ranks' rows in rank order with
// the residual and normalises the sum as it stages it: the ALL_REDUCE, ADD
// and RMS_NORM between two products, two phases a layer fewer (on two
// H200s an 8B step at TP=2 without those phases ran 2.808 -> 2.387 ms,
// docs/performance.md, thirtieth session).
//
// Each rank owns one device buffer of `sites` sites, mapped by every peer
// (CUDA IPC: runtime::IpcAllReduce); a step's k-th exchange uses site k. A
// site of rank q's buffer holds the ranks' rows, [ranks][width] floats
// (rank r's producer writes row r into every rank's site), then a counter
// of q's consumer blocks done with the call. No flag: a row element holds
// kExchangeEmpty until its value arrives, which is what a consumer waits
// for, and the consumer's last block empties the site again before any
// rank can write it again: a peer's rows for site k in the next step
// follow its consumer of the site used before k (in that step, or the
// previous step's last), which waits for this rank's rows there, which
// this rank's stream orders after its consumer of site k. That takes two
// sites or more a step, used in the same order every step (the backend
// plans none for a group with one).

// Plain types only: nvcc compiles kernels against it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmir::engine {

constexpr int kMaxExchangeRanks = 8;

struct PeerExchange {
  int rank = 0;
  int ranks = 0; // 0: no exchange
  /// Rank q's buffer as this process addresses it (q = rank: its own).
  void *buffers[kMaxExchangeRanks] = {};
  int64_t width = 0; // the widest row a site holds
  int sites = 0;
  /// Where a consumer that waited timeoutNs in vain writes the peer rank +
  /// 1 (it then goes on: its outputs are void), else 0: device or
  /// host-mapped memory (the runtime's failure record, read after each step).
  int *timedOut = nullptr;
  /// How long a consumer waits for a peer's rows before it gives up (the
  /// runtime's timeout).
  uint64_t timeoutNs = 10'000'000'000ull;
};

/// The bits of a row element not yet written for this call (a NaN no
/// arithmetic produces; a producer writes the canonical NaN instead).
constexpr uint32_t kExchangeEmpty = 0xffffffffu;

/// The layout of one site: the rows, then 256 bytes holding the consumer's
/// counter. A new buffer has every row byte 0xff (empty) and the counters 0.
constexpr size_t exchangeRowsBytes(int ranks, int64_t width) {
  return (size_t(ranks) * size_t(width) * sizeof(float) + 255) / 256 * 256;
}
constexpr size_t exchangeSiteBytes(int ranks, int64_t width) {
  return exchangeRowsBytes(ranks, width) + 256;
}
/// A buffer's bytes for `sites` sites.
constexpr size_t exchangeBufferBytes(int ranks, int64_t width, int sites) {
  return exchangeSiteBytes(ranks, width) * size_t(sites);
}
inline float *exchangeSlots(void *buffer, int ranks, int64_t width, int site) {
  return reinterpret_cast<float *>(static_cast<char *>(buffer) +
                                   exchangeSiteBytes(ranks, width) * size_t(site));
}
inline uint32_t *exchangeArrivals(void *buffer, int ranks, int64_t width, int site) {
  return reinterpret_cast<uint32_t *>(reinterpret_cast<char *>(exchangeSlots(buffer, ranks, width, site)) +
                                      exchangeRowsBytes(ranks, width));
}

} // namespace llmir::engine
