// The engine's Communicator over a DistributedRuntime: the collectives and
// pipeline transfers of one rank's ShardProgram become Gloo/NCCL operations.
//
// A ShardProgram names its groups by global id (program.groups: id + global
// ranks); create() makes one DeviceGroup per listed group, in ascending id
// order on every rank, so members of several groups never wait on each other
// in different orders.
#pragma once

#include "llmir/engine/Communicator.h"
#include "llmir/engine/ProtoFwd.h"
#include "llmir/runtime/DistributedRuntime.h"
#include "llmir/runtime/IpcAllReduce.h"

#include <map>
#include <memory>
#include <vector>

namespace llmir::runtime {

/// Whether the engine's TP all-reduces go through IpcAllReduce on NCCL
/// groups (the default; LLMIR_IPC_ALLREDUCE=0 keeps NCCL alone).
bool ipcAllReduceRequested();
/// LLMIR_PEER_EXCHANGE=0: the IPC all-reduce without PeerExchange sites, so
/// a CUDA executor keeps the all-reduce+norm launches (for measuring).
bool peerExchangeRequested();

class EngineCommunicator : public engine::Communicator {
public:
  /// Creates the program's groups and, on NCCL, an IpcAllReduce for each
  /// group the program all-reduces over (unless LLMIR_IPC_ALLREDUCE=0; a
  /// group whose GPUs cannot map each other's memory keeps NCCL alone).
  /// Fails when the program's rank or world
  /// size disagree with the runtime's, when a group does not list this rank,
  /// or when a group cannot be connected within the runtime's timeout.
  /// `runtime` must outlive the communicator.
  static Result<std::unique_ptr<EngineCommunicator>>
  create(DistributedRuntime &runtime, const proto::ShardProgram &program);

  Status allReduceSum(float *data, size_t count, uint32_t groupId) override;
  Status allGather(const float *in, size_t count, float *out,
                   uint32_t groupId) override;
  Status send(const float *data, size_t count, uint32_t peerRank) override;
  Status recv(float *data, size_t count, uint32_t peerRank) override;
  bool takesDeviceMemory() const override;
  /// NCCL: collectives on the executor's stream (graph-capturable).
  bool ordersOnStream() const override;
  Status allReduceSumOn(void *stream, float *data, size_t count, uint32_t groupId) override;
  Status allGatherOn(void *stream, const float *in, size_t count, float *out,
                     uint32_t groupId) override;
  Status sendOn(void *stream, const float *data, size_t count, uint32_t peerRank) override;
  Status recvOn(void *stream, float *data, size_t count, uint32_t peerRank) override;
  /// Through the group's IpcAllReduce (its fused kernel) when it has one
  /// that takes the shape; LLMIR_IPC_FUSED_NORM=0 turns it off (A/B).
  bool fusesAllReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op,
                                uint32_t groupId) const override;
  engine::PeerExchange peerExchange(uint32_t groupId) const override;
  Status allReduceAddRmsNormOn(void *stream, const engine::AllReduceAddRmsNorm &op,
                               uint32_t groupId) override;
  /// Bounded by the runtime's timeout; watches every group of the program.
  Status synchronize(void *stream) override;
  Status synchronizeEvent(void *event) override;

private:
  explicit EngineCommunicator(DistributedRuntime &runtime) : runtime_(runtime) {}
  Result<const DeviceGroup *> group(uint32_t groupId, const char *operation) const;
  Status connectIpcAllReduce(const proto::ShardProgram &program);
  /// A failure any group's IPC all-reduce reported from the device.
  Status ipcErrors() const;

  DistributedRuntime &runtime_;
  std::map<uint32_t, DeviceGroup> groups_;
  std::vector<const DeviceGroup *> watched_; // every group: synchronize's list
  /// Per group that all-reduces, on GPUs of one host with peer access: the
  /// IPC all-reduce its small messages take (allReduceSumOn), NCCL beyond.
  std::map<uint32_t, std::unique_ptr<IpcAllReduce>> ipc_;
};

} // namespace llmir::runtime
