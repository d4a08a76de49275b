// Backend interface behind DistributedRuntime: a Backend connects the members
// of one group into a Communicator; ranks here are group ranks.
#pragma once

#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/RendezvousStore.h"

#include <memory>
#include <string>

namespace llmir::runtime::detail {

class Communicator {
public:
  virtual ~Communicator() = default;

  virtual Status allReduce(void *data, size_t count, DataType type,
                           ReduceOp op) = 0;
  virtual Status allGather(const void *send, void *recv, size_t count,
                           DataType type) = 0;
  virtual Status broadcast(void *data, size_t count, DataType type,
                           int rootGroupRank) = 0;
  virtual Status barrier() = 0;
  virtual Status send(const void *data, size_t bytes, int peerGroupRank) = 0;
  virtual Status recv(void *data, size_t bytes, int peerGroupRank) = 0;

  // Stream-ordered operations (NCCL): enqueued on `stream` (a cudaStream_t)
  // behind the work already there, returning once enqueued, so that a CUDA
  // graph can capture them. Buffers are device memory. Gloo has none.
  virtual Status allReduceOn(void *stream, void *data, size_t count, DataType type,
                             ReduceOp op);
  virtual Status allGatherOn(void *stream, const void *send, void *recv, size_t count,
                             DataType type);
  virtual Status sendOn(void *stream, const void *data, size_t bytes, int peerGroupRank);
  virtual Status recvOn(void *stream, void *data, size_t bytes, int peerGroupRank);
  /// An error an enqueued operation reported since (a peer died); ok otherwise.
  virtual Status asyncError() { return Status::ok(); }
  /// Gives the group up: its enqueued kernels return, its peers see it fail,
  /// and every later operation fails with `why`.
  void giveUp(const Status &why) {
    if (failure_.isOk())
      failure_ = why;
    abortTransport();
  }

  /// Runs one operation unless an earlier one failed, and remembers a
  /// failure: peers may be stuck mid-operation, so the group is done.
  template <typename Operation>
  Status guarded(const std::string &what, Operation &&operation) {
    if (!failure_.isOk())
      return Status::error(what + ": group unusable after an earlier failure (" +
                           failure_.message() + ")");
    Status status = operation();
    if (!status.isOk())
      failure_ = status = status.withContext(what);
    return status;
  }

  /// The first failure, or ok.
  const Status &failure() const { return failure_; }

protected:
  virtual void abortTransport() {}

private:
  Status failure_;
};

class Backend {
public:
  virtual ~Backend() = default;
  /// Connects `groupSize` processes that all call this with the same
  /// `prefix` (their store namespace for this group) and distinct ranks.
  virtual Result<std::unique_ptr<Communicator>>
  connect(RendezvousClient &store, const std::string &prefix, int groupRank,
          int groupSize) = 0;
};

/// Whether a CUDA stream has run everything enqueued on it (cudaStreamQuery);
/// an error without CUDA.
Result<bool> streamIdle(void *stream);
/// Whether the work before a recorded CUDA event has run (cudaEventQuery);
/// an error without CUDA.
Result<bool> eventDone(void *event);

Result<std::unique_ptr<Backend>> createGlooBackend(const RuntimeConfig &config);
/// Fails with "no CUDA device" when none is visible, and with a clear
/// message when the library was built without CUDA.
Result<std::unique_ptr<Backend>> createNcclBackend(const RuntimeConfig &config);

} // namespace llmir::runtime::detail
