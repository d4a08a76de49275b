// Collective communication as the executor needs it. The runtime library
// implements it over Gloo/NCCL; tests use in-process fakes.
#pragma once

#include "llmir/support/Status.h"

#include <cstddef>
#include <cstdint>

namespace llmir::engine {

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
  /// Waits until `stream` ran its work, bounded: a peer that died fails the
  /// wait (and the communicator) instead of hanging it.
  virtual Status synchronize(void *stream);
};

} // namespace llmir::engine
