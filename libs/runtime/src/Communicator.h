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

Result<std::unique_ptr<Backend>> createGlooBackend(const RuntimeConfig &config);
/// Fails with "no CUDA device" when none is visible, and with a clear
/// message when the library was built without CUDA.
Result<std::unique_ptr<Backend>> createNcclBackend(const RuntimeConfig &config);

} // namespace llmir::runtime::detail
