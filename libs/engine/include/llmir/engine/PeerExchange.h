// PeerExchange: the buffers through which the ranks of a tensor-parallel
// group on one host hand each other a one-token product's partial rows
// without an all-reduce launch of their own. The producing GEMV (a layer's
// O or down projection) stores its rows into every rank's buffer and then a
// flag a block; the consuming GEMV (gate/up, the next layer's Q/K/V, the LM
// head) waits for the peers' flags, sums the ranks' rows in rank order with
// the residual and normalises the sum as it stages it: the ALL_REDUCE, ADD
// and RMS_NORM between two products, two phases a layer fewer (on two
// H200s an 8B step at TP=2 without those phases ran 2.808 -> 2.387 ms,
// docs/performance.md, thirtieth session).
//
// Each rank owns one device buffer of `sites` sites, mapped by every peer
// (CUDA IPC: runtime::IpcAllReduce); a step's k-th exchange uses site k, so
// a site is written again only a step later, after every rank has read it
// (each rank's later consumers wait for the peers' later producers). A
// site of rank q's buffer holds the ranks' rows, [ranks][width] floats
// (rank r's producer writes row r), one flag a rank (a counter: rank r's
// producer adds one a call once all its blocks' rows are out, so a
// consumer waits for a peer's flag to reach its own rank's), and the count
// of q's own producer blocks done with this call.
//
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
  /// Device memory of this rank: the peer rank + 1 a consumer waited for in
  /// vain (it then gives up: its outputs are void), else 0.
  int *timedOut = nullptr;
};

/// The layout of one site: the rows, then 256 bytes of flags (one a rank)
/// and the arrivals counter (at 128).
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
inline uint32_t *exchangeFlags(void *buffer, int ranks, int64_t width, int site) {
  return reinterpret_cast<uint32_t *>(reinterpret_cast<char *>(exchangeSlots(buffer, ranks, width, site)) +
                                      exchangeRowsBytes(ranks, width));
}
inline uint32_t *exchangeArrivals(void *buffer, int ranks, int64_t width, int site) {
  return reinterpret_cast<uint32_t *>(reinterpret_cast<char *>(exchangeFlags(buffer, ranks, width, site)) +
                                      128);
}

} // namespace llmir::engine
