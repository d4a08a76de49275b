#include "llmir/runtime/EngineCommunicator.h"

#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace llmir::runtime {

Result<std::unique_ptr<EngineCommunicator>>
EngineCommunicator::create(DistributedRuntime &runtime,
                           const proto::ShardProgram &program) {
  if (static_cast<int>(program.rank()) != runtime.rank() ||
      static_cast<int>(program.world_size()) != runtime.worldSize())
    return Status::error("program for rank " + std::to_string(program.rank()) +
                         " of " + std::to_string(program.world_size()) +
                         " loaded by runtime rank " + std::to_string(runtime.rank()) +
                         " of " + std::to_string(runtime.worldSize()));
  std::vector<const proto::CollectiveGroup *> ordered;
  for (const proto::CollectiveGroup &g : program.groups())
    ordered.push_back(&g);
  std::sort(ordered.begin(), ordered.end(),
            [](auto *a, auto *b) { return a->id() < b->id(); });

  std::unique_ptr<EngineCommunicator> comm(new EngineCommunicator(runtime));
  for (const proto::CollectiveGroup *g : ordered) {
    std::string what = g->kind() + " group " + std::to_string(g->id());
    if (comm->groups_.count(g->id()))
      return Status::error("program of rank " + std::to_string(runtime.rank()) +
                           " lists " + what + " twice");
    std::vector<int> ranks(g->ranks().begin(), g->ranks().end());
    auto group = runtime.createGroup(std::move(ranks));
    if (!group)
      return group.status().withContext("creating " + what);
    comm->groups_.emplace(g->id(), std::move(group).value());
  }
  for (const auto &[id, group] : comm->groups_)
    comm->watched_.push_back(&group);
  LLMIR_RETURN_IF_ERROR(comm->connectIpcAllReduce(program));
  return comm;
}

namespace {
/// Whether the environment variable `name` is "0": how the IPC all-reduce's
/// switches (on by default) are turned off.
bool switchedOff(const char *name) {
  const char *value = std::getenv(name);
  return value && std::string(value) == "0";
}
} // namespace

bool ipcAllReduceRequested() { return !switchedOff("LLMIR_IPC_ALLREDUCE"); }
bool peerExchangeRequested() { return !switchedOff("LLMIR_PEER_EXCHANGE"); }

Status EngineCommunicator::connectIpcAllReduce(const proto::ShardProgram &program) {
  // On by default (LLMIR_IPC_ALLREDUCE=0: NCCL alone): whole models' greedy
  // ids were checked with it at TP=2, TP=4 and TP=2 x PP=2, and a peer that
  // dies mid-call makes the kernel give up and return after the timeout, as
  // NCCL's bounded wait does, so the process keeps its CUDA context.
  if (runtime_.backend() != "nccl" || !ipcAllReduceRequested())
    return Status::ok();
  // Each group's all-reduces: as many PeerExchange sites (a CUDA executor
  // may fold any of them into the products around it; a site a step each).
  std::map<uint32_t, int> reduced;
  for (const proto::Instruction &inst : program.instructions())
    if (inst.op() == proto::ALL_REDUCE) {
      auto group = inst.int_attrs().find("group");
      if (group != inst.int_attrs().end())
        ++reduced[static_cast<uint32_t>(group->second)];
    }
  // Ascending group ids on every rank, as the groups themselves.
  for (const auto &[id, allReduces] : reduced) {
    auto g = groups_.find(id);
    if (g == groups_.end() || g->second.size() < 2)
      continue;
    IpcAllReduceOptions options;
    options.exchangeSites = peerExchangeRequested() ? allReduces : 0;
    auto ipc = runtime_.createIpcAllReduce(g->second, options);
    if (ipc) {
      ipc_.emplace(id, std::move(ipc).value());
      continue;
    }
    // Every member failed together (create agrees on the outcome): NCCL
    // carries this group's all-reduces.
    std::fprintf(stderr, "rank %d: group %u all-reduces over NCCL only: %s\n",
                 runtime_.rank(), id, ipc.message().c_str());
  }
  return Status::ok();
}

Result<const DeviceGroup *> EngineCommunicator::group(uint32_t groupId,
                                                      const char *operation) const {
  auto it = groups_.find(groupId);
  if (it == groups_.end())
    return Status::error(std::string(operation) + ": group " +
                         std::to_string(groupId) + " is not one of rank " +
                         std::to_string(runtime_.rank()) + "'s program groups");
  return &it->second;
}

Status EngineCommunicator::allReduceSum(float *data, size_t count,
                                        uint32_t groupId) {
  auto g = group(groupId, "allReduceSum");
  if (!g)
    return g.status();
  return runtime_.allReduce(data, count, DataType::F32, ReduceOp::Sum, **g);
}

Status EngineCommunicator::allGather(const float *in, size_t count, float *out,
                                     uint32_t groupId) {
  auto g = group(groupId, "allGather");
  if (!g)
    return g.status();
  return runtime_.allGather(in, out, count, DataType::F32, **g);
}

Status EngineCommunicator::send(const float *data, size_t count,
                                uint32_t peerRank) {
  return runtime_.send(data, count * sizeof(float), static_cast<int>(peerRank));
}

Status EngineCommunicator::recv(float *data, size_t count, uint32_t peerRank) {
  return runtime_.recv(data, count * sizeof(float), static_cast<int>(peerRank));
}

bool EngineCommunicator::takesDeviceMemory() const {
  return runtime_.backend() == "nccl";
}

bool EngineCommunicator::ordersOnStream() const { return runtime_.backend() == "nccl"; }

Status EngineCommunicator::allReduceSumOn(void *stream, float *data, size_t count,
                                          uint32_t groupId) {
  auto g = group(groupId, "allReduceSum");
  if (!g)
    return g.status();
  // Small messages (a decode step's rows) through the IPC buffers: one
  // kernel instead of NCCL's protocol.
  if (auto ipc = ipc_.find(groupId); ipc != ipc_.end() && ipc->second->handles(count))
    return ipc->second->allReduceSum(data, count, static_cast<CUstream_st *>(stream));
  return runtime_.allReduceOn(stream, data, count, DataType::F32, ReduceOp::Sum, **g);
}

bool EngineCommunicator::fusesAllReduceAddRmsNorm(const engine::AllReduceAddRmsNorm &op,
                                                  uint32_t groupId) const {
  static const bool off = switchedOff("LLMIR_IPC_FUSED_NORM");
  auto ipc = ipc_.find(groupId);
  return !off && ipc != ipc_.end() && op.rows > 0 && op.width > 0 &&
         ipc->second->fusesAddRmsNorm(static_cast<size_t>(op.rows),
                                      static_cast<size_t>(op.width));
}

engine::PeerExchange EngineCommunicator::peerExchange(uint32_t groupId) const {
  auto ipc = ipc_.find(groupId);
  return ipc == ipc_.end() ? engine::PeerExchange{} : ipc->second->peerExchange();
}

Status EngineCommunicator::allReduceAddRmsNormOn(void *stream,
                                                 const engine::AllReduceAddRmsNorm &op,
                                                 uint32_t groupId) {
  auto ipc = ipc_.find(groupId);
  if (ipc == ipc_.end())
    return Status::error("group " + std::to_string(groupId) +
                         " has no IPC all-reduce for the fused add + RMS norm");
  return ipc->second->allReduceAddRmsNorm(op, static_cast<CUstream_st *>(stream));
}

Status EngineCommunicator::allGatherOn(void *stream, const float *in, size_t count,
                                       float *out, uint32_t groupId) {
  auto g = group(groupId, "allGather");
  if (!g)
    return g.status();
  return runtime_.allGatherOn(stream, in, out, count, DataType::F32, **g);
}

Status EngineCommunicator::sendOn(void *stream, const float *data, size_t count,
                                  uint32_t peerRank) {
  return runtime_.sendOn(stream, data, count * sizeof(float), static_cast<int>(peerRank));
}

Status EngineCommunicator::recvOn(void *stream, float *data, size_t count,
                                  uint32_t peerRank) {
  return runtime_.recvOn(stream, data, count * sizeof(float), static_cast<int>(peerRank));
}

Status EngineCommunicator::synchronize(void *stream) {
  LLMIR_RETURN_IF_ERROR(runtime_.synchronize(stream, watched_));
  return ipcErrors();
}

Status EngineCommunicator::synchronizeEvent(void *event) {
  LLMIR_RETURN_IF_ERROR(runtime_.synchronizeEvent(event, watched_));
  return ipcErrors();
}

Status EngineCommunicator::ipcErrors() const {
  // An IPC all-reduce that gave up on a peer returns without its sums (it
  // no longer traps): the step's results are void.
  for (const auto &[id, ipc] : ipc_)
    LLMIR_RETURN_IF_ERROR(ipc->lastDeviceError());
  return Status::ok();
}

} // namespace llmir::runtime
