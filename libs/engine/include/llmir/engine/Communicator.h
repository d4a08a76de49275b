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
};

} // namespace llmir::engine
