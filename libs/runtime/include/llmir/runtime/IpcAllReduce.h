// IpcAllReduce: an f32 sum all-reduce between the GPUs of one host through
// CUDA IPC peer-to-peer buffers, for the small messages of tensor-parallel
// decode (vLLM's custom all-reduce and TensorRT-LLM's do the same). An NCCL
// all-reduce of 8 KiB costs about 10 us inside a CUDA graph; here a call is
// one kernel that copies the rank's input into its own exchange buffer,
// meets the peers at a device-side barrier, and reads their buffers over
// NVLink.
//
// Each rank (one process per GPU) allocates one device buffer: per-block
// barrier flags, then two halves of `maxBytes` used by alternate calls. The
// ranks exchange cudaIpcMemHandle_t through the rendezvous store and map each
// other's buffers. A call is stream-ordered: no host synchronisation, no
// allocation, no host-side wait, so it can be captured in a CUDA graph and
// replayed any number of times (the barrier's epochs are counters in device
// memory, not kernel arguments).
//
//   one-shot  every rank reads every peer's whole message and sums it;
//   two-shot  rank r sums chunk r of every peer's message (reduce-scatter),
//             then every rank reads each chunk from its owner (all-gather):
//             each byte crosses NVLink twice instead of n - 1 times.
//
// Both sum in rank order 0, 1, ..., n-1, so every rank gets bit-identical
// results, and one-shot and two-shot give the same bits.
//
// Contract (as for any collective): every rank makes the same sequence of
// calls with the same counts and algorithms, each rank's calls on one stream
// (or streams ordered with each other). A rank that stops calling leaves the
// others spinning in their barrier until `timeout`; then the kernel gives
// up and returns without its sums, lastDeviceError() names the rank that
// never arrived, and every later call returns at once (its results void)
// and is refused on the host. The CUDA context survives: the caller gives
// the group up as it would after an NCCL error.
#pragma once

#include "llmir/engine/Communicator.h"
#include "llmir/engine/PeerExchange.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

struct CUstream_st; // cudaStream_t is CUstream_st *

namespace llmir::runtime {

class RendezvousClient;

enum class IpcAllReduceAlgorithm { OneShot, TwoShot };
const char *ipcAllReduceAlgorithmName(IpcAllReduceAlgorithm algorithm);

/// Largest group IpcAllReduce connects (one host's GPUs).
constexpr int kIpcAllReduceMaxRanks = 8;

struct IpcAllReduceOptions {
  /// Largest message, in bytes; larger ones are refused (use NCCL). Each
  /// rank allocates twice this (alternate calls use alternate halves) plus
  /// a few KiB of flags. Every rank must pass the same value.
  size_t maxBytes = 8u << 20;
  /// Messages up to this many bytes go one-shot, larger ones two-shot. Unset:
  /// always one-shot with 2 ranks (two-shot moves the same bytes with one
  /// more barrier), up to 512 KiB with 3-4 ranks, 256 KiB with 5-8 (vLLM's
  /// thresholds). Every rank must pass the same value.
  std::optional<size_t> oneShotMaxBytes;
  /// CUDA device of this rank; -1: the calling thread's current device.
  int device = -1;
  /// Bounds the rendezvous and each device-side barrier wait.
  std::chrono::milliseconds timeout{30000};
  /// Sites of the PeerExchange (engine/PeerExchange.h) in the same buffer,
  /// rows of up to exchangeWidth floats; 0: none. Every rank must pass the
  /// same values.
  int exchangeSites = 0;
  int64_t exchangeWidth = 8192;
};

/// Widest row allReduceAddRmsNorm normalises (its block keeps a row in
/// registers).
constexpr size_t kIpcAddRmsNormMaxWidth = 8192;

/// Why `rows` x `width` cannot take the fused path (ok when it can): the row
/// must be whole float4s and at most kIpcAddRmsNormMaxWidth, the message
/// within the one-shot size, and every rank's rows must fit one half of the
/// exchange buffer (each rank pushes its rows into every peer's). Also in
/// builds without CUDA.
Status checkIpcAddRmsNormShape(size_t rows, size_t width, int groupSize,
                               const IpcAllReduceOptions &options);

/// What create() checks before touching CUDA (also in builds without CUDA).
Status validateIpcAllReduceConfig(int groupRank, int groupSize,
                                  const IpcAllReduceOptions &options);

/// The algorithm allReduceSum(data, count, stream) uses for `count` floats,
/// or an error saying why the message is refused (callers then use NCCL).
Result<IpcAllReduceAlgorithm>
chooseIpcAllReduceAlgorithm(size_t count, int groupSize,
                            const IpcAllReduceOptions &options);

class IpcAllReduce {
public:
  /// Connects `groupSize` processes on one host that all call this with the
  /// same `prefix` (a fresh store namespace) and options, and distinct
  /// `groupRank`s. Fails on every rank, naming the rank and the cause, when
  /// any rank cannot take part: ranks on different hosts, two ranks on one
  /// GPU, no peer-to-peer access between two GPUs (PCIe without P2P, a peer's
  /// GPU hidden by CUDA_VISIBLE_DEVICES), no CUDA. Callers then use NCCL.
  /// Leaves the rank's device current (allReduceSum expects it).
  static Result<std::unique_ptr<IpcAllReduce>>
  create(RendezvousClient &store, const std::string &prefix, int groupRank,
         int groupSize, const IpcAllReduceOptions &options = {});
  /// Frees the buffers. Destroy only after the last all-reduce finished on
  /// every rank (a peer may still be reading this rank's buffer).
  ~IpcAllReduce();
  IpcAllReduce(const IpcAllReduce &) = delete;
  IpcAllReduce &operator=(const IpcAllReduce &) = delete;

  int groupRank() const;
  int groupSize() const;
  int device() const;
  size_t maxBytes() const;

  /// Whether allReduceSum takes `count` floats (count * 4 <= maxBytes).
  bool handles(size_t count) const;

  /// In-place sum of `count` floats at `data` (device memory of device(),
  /// any alignment) over the group, queued on `stream` (nullptr: the legacy
  /// default stream) with the algorithm chooseIpcAllReduceAlgorithm picks.
  /// The calling thread's current device must be device(). Errors (refused
  /// size, launch failure, an earlier barrier timeout) leave `data` as it was.
  Status allReduceSum(float *data, size_t count, CUstream_st *stream);
  /// The same with a given algorithm (tests, benchmarks).
  Status allReduceSum(float *data, size_t count, CUstream_st *stream,
                      IpcAllReduceAlgorithm algorithm);

  /// Whether allReduceAddRmsNorm takes `rows` x `width` (its shape passes
  /// checkIpcAddRmsNormShape). By shape only, so that every rank of the
  /// group decides alike: a rank taking the fused kernel while a peer runs
  /// the plain one would exchange rows in different layouts.
  bool fusesAddRmsNorm(size_t rows, size_t width) const;
  /// The all-reduce fused with the residual add and RMS norm after it
  /// (TensorRT-LLM's all-reduce + residual + RMSNorm fusion), for op.rows
  /// rows of op.width floats, row-major:
  ///
  ///   sum[r]    = (partial[r] of rank 0 + ... + rank n-1) + residual[r]
  ///   normed[r] = weight * (sum[r] * 1 / sqrt(mean(sum[r]^2) + eps))
  ///
  /// with the arithmetic of the engine's ALL_REDUCE, ADD and fused
  /// ADD+RMS_NORM kernels (ranks summed in order, the sum of squares in
  /// double), so every rank gets the same bits of `sum`: one kernel where
  /// three ran (a copy, the all-reduce, the norm) per residual branch of a
  /// tensor-parallel decode step. Out of place (`partial` is left as it
  /// was); every pointer device memory of this rank's device, 16-byte
  /// aligned; with op.dependentLaunch the kernel loads `weight` while the
  /// kernel before it on the stream finishes (Hopper's programmatic
  /// dependent launch). Queued on `stream`, one-shot, each rank pushing its
  /// rows into its peers' buffers so that the reads after the barrier are
  /// local; it counts as a call in the group's sequence like allReduceSum.
  /// Errors (a shape it does not take, an operand not 16-byte aligned)
  /// leave every output as it was.
  Status allReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op, CUstream_st *stream);
  /// This rank's view of the group's PeerExchange (ranks 0 where
  /// options.exchangeSites was 0): the products of a tensor-parallel decode
  /// step hand each other their rows through it without an all-reduce
  /// launch. Its calls count in no sequence of this class's.
  engine::PeerExchange peerExchange() const;
  /// Ok, or which barrier timed out and which rank it waited for (the
  /// kernel wrote it to host memory when it gave up). Reads host memory
  /// only: no synchronisation; read it after the stream's work is done.
  Status lastDeviceError() const;

  struct Impl;

private:
  explicit IpcAllReduce(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace llmir::runtime
