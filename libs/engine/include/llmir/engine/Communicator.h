// Collective communication as the executor needs it. The runtime library
// implements it over Gloo/NCCL; tests use in-process fakes.
#pragma once

#include "llmir/engine/PeerExchange.h"
#include "llmir/support/Status.h"

#include <cstddef>
#include <cstdint>

namespace llmir::engine {

/// A tensor-parallel residual branch's all-reduce with the residual add and
/// RMS norm after it (see allReduceAddRmsNormOn): rows x width floats,
/// device memory.
struct AllReduceAddRmsNorm {
  const float *partial = nullptr;  // this rank's share of the branch
  const float *residual = nullptr; // the other operand of the ADD
  float *sum = nullptr;            // the ADD's output
  const float *weight = nullptr;   // the RMS_NORM's weight, [width]
  float *normed = nullptr;         // the RMS_NORM's output
  int64_t rows = 0;
  int64_t width = 0;
  float eps = 1e-6f;
  /// Whether the kernel may start while the one before it finishes
  /// (Hopper's programmatic dependent launch, as the engine's kernels).
  bool dependentLaunch = false;
};

class Communicator {
public:
  virtual ~Communicator() = default;

  /// In place: data[i] = sum over the group's ranks of data[i].
  virtual Status allReduceSum(float *data, size_t count, uint32_t groupId) = 0;
  /// out holds groupSize * count floats: rank r's `in` at out + r * count
  /// (group-rank order).
  virtual Status allGather(const float *in, size_t count, float *out,
                           uint32_t groupId) = 0;
  /// Point-to-point to/from a global rank.
  virtual Status send(const float *data, size_t count, uint32_t peerRank) = 0;
  virtual Status recv(float *data, size_t count, uint32_t peerRank) = 0;

  /// True when buffers are device memory of the rank's CUDA device (NCCL);
  /// false for host memory (Gloo), which a CUDA executor stages through.
  virtual bool takesDeviceMemory() const { return false; }

  // Stream-ordered collectives (NCCL): enqueued on `stream`, a cudaStream_t
  // of the rank's device, behind the work already there, and returning
  // without waiting, so that a CUDA executor keeps its steps free of host
  // synchronisation and can record them as CUDA graphs. Only when
  // ordersOnStream(); the others fail.
  virtual bool ordersOnStream() const { return false; }
  virtual Status allReduceSumOn(void *stream, float *data, size_t count, uint32_t groupId);
  virtual Status allGatherOn(void *stream, const float *in, size_t count, float *out,
                             uint32_t groupId);
  virtual Status sendOn(void *stream, const float *data, size_t count, uint32_t peerRank);
  virtual Status recvOn(void *stream, float *data, size_t count, uint32_t peerRank);
  /// sum = (the group's sum of `partial`) + residual, normed = RMS norm of
  /// sum, in one stream-ordered step where fusesAllReduceAddRmsNorm says the
  /// communicator can (TensorRT-LLM's all-reduce + residual + RMSNorm
  /// fusion); the arithmetic and the result's bits are those of the
  /// all-reduce, ADD and fused ADD+RMS_NORM one after the other, up to the
  /// order of the sum of squares. Every rank of the group must decide alike:
  /// the answer depends on the shape (and the group) only.
  virtual bool fusesAllReduceAddRmsNorm(const AllReduceAddRmsNorm &, uint32_t) const {
    return false;
  }
  virtual Status allReduceAddRmsNormOn(void *stream, const AllReduceAddRmsNorm &op,
                                       uint32_t groupId);
  /// The group's PeerExchange (PeerExchange.h), through which a CUDA
  /// executor's one-token products hand each other their rows where an
  /// ALL_REDUCE, ADD and RMS_NORM sit between two of them; ranks 0: none.
  /// Every rank of the group gets the same answer but its own rank.
  virtual PeerExchange peerExchange(uint32_t /*groupId*/) const { return {}; }
  /// Waits until `stream` ran its work, bounded: a peer that died fails the
  /// wait (and the communicator) instead of hanging it.
  virtual Status synchronize(void *stream);
  /// synchronize() up to `event`, a cudaEvent_t recorded on the stream: the
  /// work enqueued after it (the next step) may still run.
  virtual Status synchronizeEvent(void *event);
};

} // namespace llmir::engine
