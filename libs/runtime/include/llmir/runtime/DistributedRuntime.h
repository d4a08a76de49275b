// DistributedRuntime: collectives and point-to-point transfers between the
// ranks of one replica, over Gloo (CPU memory, TCP) or NCCL (GPU memory).
//
// Ranks find each other through a RendezvousServer: each rank registers under
// `<storePrefix>/...`, so a fresh prefix gives a fresh rendezvous (a new
// replica, or a retry after a failure). Every call is bounded by
// RuntimeConfig::timeout; a rank that never joins or dies makes the others
// fail with an error instead of hanging. After a failed operation a group is
// unusable (its peers may be mid-operation): every later call on it fails
// with the original error, and recovery means a new runtime under a new prefix.
//
// A runtime is used from one thread at a time. For the gloo backend buffers
// are host memory; for nccl they are device memory of the rank's CUDA device
// (a host buffer is staged through a device copy: fine for a token, slow for
// tensors).
#pragma once

#include "llmir/runtime/IpcAllReduce.h"
#include "llmir/support/Status.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace llmir::runtime {

class RendezvousClient;

enum class DataType { F32, F16, BF16, I32 };
enum class ReduceOp { Sum, Max, Min };

size_t dataTypeSize(DataType type);
const char *dataTypeName(DataType type);

struct RuntimeConfig {
  int worldSize = 1;
  int rank = 0;
  std::string storeHost = "127.0.0.1";
  uint16_t storePort = 0;
  /// "gloo" or "nccl".
  std::string backend = "gloo";
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  /// Address this rank's Gloo TCP device binds and advertises to peers.
  std::string hostname = "127.0.0.1";
  /// Namespace of every store key this runtime uses.
  std::string storePrefix = "llmir";
  /// CUDA device for nccl; -1 picks rank % (number of visible devices).
  int cudaDevice = -1;
  /// The store's cluster secret, when it requires one.
  std::optional<std::string> clusterSecret;
};

namespace detail {
class Backend;
class Communicator;
} // namespace detail

/// A set of ranks that run collectives together. Group rank i is ranks()[i];
/// collectives order data by group rank.
class DeviceGroup {
public:
  DeviceGroup() = default;
  const std::vector<int> &ranks() const { return ranks_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  /// This rank's position in ranks().
  int groupRank() const { return groupRank_; }
  /// Position of a global rank in ranks(), or -1 when it is not a member.
  int groupRankOf(int globalRank) const;

private:
  friend class DistributedRuntime;
  std::vector<int> ranks_;
  int groupRank_ = -1;
  std::shared_ptr<detail::Communicator> comm_;
};

class DistributedRuntime {
public:
  /// Joins the world: waits (up to the timeout) for all worldSize ranks to
  /// register, then connects them. Errors name the ranks that did not join.
  static Result<std::unique_ptr<DistributedRuntime>> init(const RuntimeConfig &config);
  ~DistributedRuntime();
  DistributedRuntime(const DistributedRuntime &) = delete;
  DistributedRuntime &operator=(const DistributedRuntime &) = delete;

  int rank() const { return config_.rank; }
  int worldSize() const { return config_.worldSize; }
  const std::string &backend() const { return config_.backend; }
  /// All ranks, in rank order.
  const DeviceGroup &world() const { return world_; }

  Status barrier();
  Status barrier(const DeviceGroup &group);

  /// Creates a sub-group; every member must call it with the same `ranks`
  /// (distinct global ranks, this rank among them). Non-members do not call
  /// it. Creating the same rank list again makes a new, independent group.
  Result<DeviceGroup> createGroup(std::vector<int> ranks);

  /// An f32 sum all-reduce over CUDA IPC buffers for `group`'s small
  /// messages (llmir/runtime/IpcAllReduce.h), rendezvoused through this
  /// runtime's store. Every member calls it (non-members do not); creating
  /// it again for the same ranks makes a new, independent one. The device is
  /// options.device, else RuntimeConfig::cudaDevice, else the current one;
  /// the timeout is the runtime's. Fails on every member when any member
  /// cannot take part (then use allReduce).
  Result<std::unique_ptr<IpcAllReduce>>
  createIpcAllReduce(const DeviceGroup &group, IpcAllReduceOptions options = {});

  /// In-place all-reduce of `count` elements.
  Status allReduce(void *data, size_t count, DataType type, ReduceOp op,
                   const DeviceGroup &group);
  /// `recv` holds group.size() x count elements, in group-rank order.
  Status allGather(const void *send, void *recv, size_t count, DataType type,
                   const DeviceGroup &group);
  /// `rootRank` is a global rank and must be a member of `group`.
  Status broadcast(void *data, size_t count, DataType type, int rootRank,
                   const DeviceGroup &group);

  /// Point-to-point over the world group (pipeline stages); the peer's
  /// matching call must use the same byte count.
  Status send(const void *data, size_t bytes, int peerRank);
  Status recv(void *data, size_t bytes, int peerRank);

  // Stream-ordered operations (nccl; device memory): enqueued on `stream`
  // (a cudaStream_t) behind the work already there, returning without
  // waiting, so that a CUDA graph can capture them. Wait with synchronize().
  Status allReduceOn(void *stream, void *data, size_t count, DataType type, ReduceOp op,
                     const DeviceGroup &group);
  Status allGatherOn(void *stream, const void *send, void *recv, size_t count,
                     DataType type, const DeviceGroup &group);
  Status sendOn(void *stream, const void *data, size_t bytes, int peerRank);
  Status recvOn(void *stream, void *data, size_t bytes, int peerRank);
  /// Waits until `stream` has run what was enqueued on it, within the
  /// timeout, watching `groups` and the world group: an asynchronous error in
  /// one of them (a peer died) or the timeout fails the wait and gives those
  /// groups up, which makes their pending kernels on the stream return.
  Status synchronize(void *stream, const std::vector<const DeviceGroup *> &groups);
  /// synchronize() up to `event` (a cudaEvent_t recorded on a stream) only:
  /// the host may wait for one step while the next is already enqueued.
  Status synchronizeEvent(void *event, const std::vector<const DeviceGroup *> &groups);

private:
  /// synchronize's loop: polls `done` within the timeout, watching `groups`.
  Status waitUntil(const std::function<Result<bool>()> &done, const char *what,
                   const std::vector<const DeviceGroup *> &groups);
  DistributedRuntime(RuntimeConfig config, std::unique_ptr<RendezvousClient> store,
                     std::unique_ptr<detail::Backend> backend);
  /// Registers `rank` under `prefix`, waits for every member of `ranks`, and
  /// on timeout names the members that never registered.
  Status awaitMembers(const std::string &prefix, const std::vector<int> &ranks,
                      const std::string &what);
  Result<DeviceGroup> connectGroup(const std::string &prefix,
                                   std::vector<int> ranks,
                                   const std::string &what);
  /// Deletes the group's keys from the store once every member connected.
  void releaseRendezvousKeys(const std::string &prefix, int members);
  Status checkGroup(const DeviceGroup &group, const char *operation) const;
  Status checkPeer(int peerRank, const char *operation) const;

  RuntimeConfig config_;
  std::unique_ptr<RendezvousClient> store_;
  std::unique_ptr<detail::Backend> backend_;
  DeviceGroup world_;
  /// How often each rank list was made into a group, so that re-creating
  /// the same group rendezvouses under a fresh key.
  std::map<std::string, int> groupGenerations_;
};

} // namespace llmir::runtime
