#include "llmir/runtime/DistributedRuntime.h"

#include "Communicator.h"

#include <algorithm>
#include <set>
#include <thread>

namespace llmir::runtime {

size_t dataTypeSize(DataType type) {
  switch (type) {
  case DataType::F32:
  case DataType::I32:
    return 4;
  case DataType::F16:
  case DataType::BF16:
    return 2;
  }
  return 0;
}

const char *dataTypeName(DataType type) {
  switch (type) {
  case DataType::F32:
    return "f32";
  case DataType::F16:
    return "f16";
  case DataType::BF16:
    return "bf16";
  case DataType::I32:
    return "i32";
  }
  return "?";
}

namespace detail {
namespace {
Status notStreamOrdered(const char *operation) {
  return Status::error(std::string(operation) +
                       ": this backend has no stream-ordered operations (nccl has)");
}
} // namespace
Status Communicator::allReduceOn(void *, void *, size_t, DataType, ReduceOp) {
  return notStreamOrdered("allReduceOn");
}
Status Communicator::allGatherOn(void *, const void *, void *, size_t, DataType) {
  return notStreamOrdered("allGatherOn");
}
Status Communicator::sendOn(void *, const void *, size_t, int) {
  return notStreamOrdered("sendOn");
}
Status Communicator::recvOn(void *, void *, size_t, int) { return notStreamOrdered("recvOn"); }
} // namespace detail

int DeviceGroup::groupRankOf(int globalRank) const {
  auto it = std::find(ranks_.begin(), ranks_.end(), globalRank);
  return it == ranks_.end() ? -1 : static_cast<int>(it - ranks_.begin());
}

namespace {

std::string joinRanks(const std::vector<int> &ranks, const char *separator) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i)
    out += (i ? separator : "") + std::to_string(ranks[i]);
  return out;
}

std::string describe(const DeviceGroup &group) {
  return "group [" + joinRanks(group.ranks(), ", ") + "]";
}

std::string formatDuration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0)
    return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

Status validate(const RuntimeConfig &c) {
  if (c.worldSize < 1)
    return Status::error("worldSize must be >= 1, got " +
                         std::to_string(c.worldSize));
  if (c.rank < 0 || c.rank >= c.worldSize)
    return Status::error("rank " + std::to_string(c.rank) +
                         " out of range for worldSize " +
                         std::to_string(c.worldSize));
  if (c.timeout.count() <= 0)
    return Status::error("timeout must be positive");
  if (c.storePort == 0)
    return Status::error("storePort must name the rendezvous server's port");
  if (c.storePrefix.empty())
    return Status::error("storePrefix must not be empty");
  if (c.backend != "gloo" && c.backend != "nccl")
    return Status::error("unknown backend '" + c.backend +
                         "'; expected 'gloo' or 'nccl'");
  return Status::ok();
}

} // namespace

DistributedRuntime::DistributedRuntime(RuntimeConfig config,
                                       std::unique_ptr<RendezvousClient> store,
                                       std::unique_ptr<detail::Backend> backend)
    : config_(std::move(config)), store_(std::move(store)),
      backend_(std::move(backend)) {}

DistributedRuntime::~DistributedRuntime() {
  // Communicators hold transport resources of the backend: drop them first.
  world_ = DeviceGroup();
}

Result<std::unique_ptr<DistributedRuntime>>
DistributedRuntime::init(const RuntimeConfig &config) {
  std::string where = "runtime init (rank " + std::to_string(config.rank) +
                      " of " + std::to_string(config.worldSize) + ")";
  if (Status s = validate(config); !s.isOk())
    return s.withContext(where);
  auto store =
      RendezvousClient::connect(config.storeHost, config.storePort, config.timeout,
                                config.clusterSecret);
  if (!store)
    return store.status().withContext(where);
  auto backend = config.backend == "nccl" ? detail::createNcclBackend(config)
                                          : detail::createGlooBackend(config);
  if (!backend)
    return backend.status().withContext(where);
  std::unique_ptr<DistributedRuntime> runtime(new DistributedRuntime(
      config, std::move(store).value(), std::move(backend).value()));
  std::vector<int> everyone(config.worldSize);
  for (int r = 0; r < config.worldSize; ++r)
    everyone[r] = r;
  auto world =
      runtime->connectGroup(config.storePrefix + "/world", everyone, "world");
  if (!world)
    return world.status().withContext(where);
  runtime->world_ = std::move(world).value();
  return runtime;
}

Status DistributedRuntime::awaitMembers(const std::string &prefix,
                                        const std::vector<int> &ranks,
                                        const std::string &what) {
  std::vector<std::string> keys;
  for (int r : ranks)
    keys.push_back(prefix + "/joined/" + std::to_string(r));
  LLMIR_RETURN_IF_ERROR(
      store_->set(prefix + "/joined/" + std::to_string(config_.rank), "1"));
  Status waited = store_->wait(keys, config_.timeout);
  if (waited.isOk())
    return waited;
  auto present = store_->check(keys);
  if (!present)
    return waited.withContext("rendezvous for " + what);
  std::vector<int> missing;
  for (size_t i = 0; i < ranks.size(); ++i)
    if (!(*present)[i])
      missing.push_back(ranks[i]);
  if (missing.empty()) // everyone arrived just after the deadline
    return Status::ok();
  return Status::error("rendezvous for " + what + ": " +
                       (missing.size() == 1 ? "rank " : "ranks ") +
                       joinRanks(missing, ", ") + " of " +
                       std::to_string(ranks.size()) + " did not join within " +
                       formatDuration(config_.timeout) + " (store prefix '" +
                       prefix + "')");
}

void DistributedRuntime::releaseRendezvousKeys(const std::string &prefix, int members) {
  // Every member counts itself once it is connected; the last one has seen
  // everyone connected, so no member will read the group's keys again and it
  // deletes them (the store's memory is bounded; a long-lived scheduler
  // forms groups for as long as it runs). Best effort: a failure here leaves
  // keys behind, it does not fail a group that works.
  auto done = store_->add(prefix + "/connected", 1);
  if (done && *done == members)
    (void)store_->removePrefix(prefix + "/");
}

Result<DeviceGroup> DistributedRuntime::connectGroup(const std::string &prefix,
                                                     std::vector<int> ranks,
                                                     const std::string &what) {
  DeviceGroup group;
  group.ranks_ = std::move(ranks);
  group.groupRank_ = group.groupRankOf(config_.rank);
  LLMIR_RETURN_IF_ERROR(awaitMembers(prefix, group.ranks_, what));
  auto comm = backend_->connect(*store_, prefix + "/" + config_.backend + "/",
                                group.groupRank_, group.size());
  if (!comm)
    return comm.status().withContext("rendezvous for " + what);
  group.comm_ = std::move(comm).value();
  releaseRendezvousKeys(prefix, group.size());
  return group;
}

Result<DeviceGroup> DistributedRuntime::createGroup(std::vector<int> ranks) {
  std::string what = "group [" + joinRanks(ranks, ", ") + "]";
  if (ranks.empty())
    return Status::error("createGroup: empty rank list");
  std::set<int> seen;
  for (int r : ranks) {
    if (r < 0 || r >= config_.worldSize)
      return Status::error("createGroup " + what + ": rank " +
                           std::to_string(r) + " out of range for worldSize " +
                           std::to_string(config_.worldSize));
    if (!seen.insert(r).second)
      return Status::error("createGroup " + what + ": rank " +
                           std::to_string(r) + " listed twice");
  }
  if (!seen.count(config_.rank))
    return Status::error("createGroup " + what + ": calling rank " +
                         std::to_string(config_.rank) +
                         " is not a member; only members create a group");
  std::string key = joinRanks(ranks, "-");
  int generation = groupGenerations_[key]++;
  return connectGroup(config_.storePrefix + "/group/" + key + "/" +
                          std::to_string(generation),
                      std::move(ranks), what);
}

Result<std::unique_ptr<IpcAllReduce>>
DistributedRuntime::createIpcAllReduce(const DeviceGroup &group,
                                       IpcAllReduceOptions options) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "createIpcAllReduce"));
  if (options.device < 0)
    options.device = config_.cudaDevice;
  options.timeout = config_.timeout;
  // Its own namespace per rank list and generation, like createGroup's.
  std::string key = joinRanks(group.ranks(), "-");
  int generation = groupGenerations_["ipc/" + key]++;
  return IpcAllReduce::create(*store_,
                              config_.storePrefix + "/ipc/" + key + "/" +
                                  std::to_string(generation) + "/",
                              group.groupRank(), group.size(), options);
}

Status DistributedRuntime::checkGroup(const DeviceGroup &group,
                                      const char *operation) const {
  if (!group.comm_)
    return Status::error(std::string(operation) +
                         ": the DeviceGroup is empty; use world() or "
                         "createGroup()");
  return Status::ok();
}

Status DistributedRuntime::checkPeer(int peerRank, const char *operation) const {
  if (peerRank < 0 || peerRank >= config_.worldSize || peerRank == config_.rank)
    return Status::error(std::string(operation) + ": peer rank " +
                         std::to_string(peerRank) + " invalid for rank " +
                         std::to_string(config_.rank) + " of " +
                         std::to_string(config_.worldSize));
  return Status::ok();
}

Status DistributedRuntime::barrier() { return barrier(world_); }

Status DistributedRuntime::barrier(const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "barrier"));
  return group.comm_->guarded("barrier over " + describe(group),
                              [&] { return group.comm_->barrier(); });
}

Status DistributedRuntime::allReduce(void *data, size_t count, DataType type,
                                     ReduceOp op, const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "allReduce"));
  if (count == 0)
    return Status::ok();
  if (!data)
    return Status::error("allReduce: null buffer for " + std::to_string(count) +
                         " elements");
  return group.comm_->guarded(
      "allReduce of " + std::to_string(count) + " " + dataTypeName(type) +
          " over " + describe(group),
      [&] { return group.comm_->allReduce(data, count, type, op); });
}

Status DistributedRuntime::allGather(const void *send, void *recv, size_t count,
                                     DataType type, const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "allGather"));
  if (count == 0)
    return Status::ok();
  if (!send || !recv)
    return Status::error("allGather: null buffer for " + std::to_string(count) +
                         " elements");
  return group.comm_->guarded(
      "allGather of " + std::to_string(count) + " " + dataTypeName(type) +
          " over " + describe(group),
      [&] { return group.comm_->allGather(send, recv, count, type); });
}

Status DistributedRuntime::broadcast(void *data, size_t count, DataType type,
                                     int rootRank, const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "broadcast"));
  int root = group.groupRankOf(rootRank);
  if (root < 0)
    return Status::error("broadcast: root rank " + std::to_string(rootRank) +
                         " is not a member of " + describe(group));
  if (count == 0)
    return Status::ok();
  if (!data)
    return Status::error("broadcast: null buffer for " + std::to_string(count) +
                         " elements");
  return group.comm_->guarded(
      "broadcast of " + std::to_string(count) + " " + dataTypeName(type) +
          " from rank " + std::to_string(rootRank) + " over " + describe(group),
      [&] { return group.comm_->broadcast(data, count, type, root); });
}

Status DistributedRuntime::send(const void *data, size_t bytes, int peerRank) {
  LLMIR_RETURN_IF_ERROR(checkPeer(peerRank, "send"));
  if (bytes == 0)
    return Status::ok();
  if (!data)
    return Status::error("send: null buffer");
  return world_.comm_->guarded(
      "send of " + std::to_string(bytes) + " bytes to rank " +
          std::to_string(peerRank),
      [&] { return world_.comm_->send(data, bytes, peerRank); });
}

Status DistributedRuntime::recv(void *data, size_t bytes, int peerRank) {
  LLMIR_RETURN_IF_ERROR(checkPeer(peerRank, "recv"));
  if (bytes == 0)
    return Status::ok();
  if (!data)
    return Status::error("recv: null buffer");
  return world_.comm_->guarded(
      "recv of " + std::to_string(bytes) + " bytes from rank " +
          std::to_string(peerRank),
      [&] { return world_.comm_->recv(data, bytes, peerRank); });
}

Status DistributedRuntime::allReduceOn(void *stream, void *data, size_t count, DataType type,
                                       ReduceOp op, const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "allReduceOn"));
  if (count == 0)
    return Status::ok();
  if (!data)
    return Status::error("allReduceOn: null buffer for " + std::to_string(count) +
                         " elements");
  return group.comm_->guarded(
      "allReduce of " + std::to_string(count) + " " + dataTypeName(type) + " over " +
          describe(group),
      [&] { return group.comm_->allReduceOn(stream, data, count, type, op); });
}

Status DistributedRuntime::allGatherOn(void *stream, const void *send, void *recv,
                                       size_t count, DataType type,
                                       const DeviceGroup &group) {
  LLMIR_RETURN_IF_ERROR(checkGroup(group, "allGatherOn"));
  if (count == 0)
    return Status::ok();
  if (!send || !recv)
    return Status::error("allGatherOn: null buffer for " + std::to_string(count) +
                         " elements");
  return group.comm_->guarded(
      "allGather of " + std::to_string(count) + " " + dataTypeName(type) + " over " +
          describe(group),
      [&] { return group.comm_->allGatherOn(stream, send, recv, count, type); });
}

Status DistributedRuntime::sendOn(void *stream, const void *data, size_t bytes,
                                  int peerRank) {
  LLMIR_RETURN_IF_ERROR(checkPeer(peerRank, "sendOn"));
  if (bytes == 0)
    return Status::ok();
  if (!data)
    return Status::error("sendOn: null buffer");
  return world_.comm_->guarded(
      "send of " + std::to_string(bytes) + " bytes to rank " + std::to_string(peerRank),
      [&] { return world_.comm_->sendOn(stream, data, bytes, peerRank); });
}

Status DistributedRuntime::recvOn(void *stream, void *data, size_t bytes, int peerRank) {
  LLMIR_RETURN_IF_ERROR(checkPeer(peerRank, "recvOn"));
  if (bytes == 0)
    return Status::ok();
  if (!data)
    return Status::error("recvOn: null buffer");
  return world_.comm_->guarded(
      "recv of " + std::to_string(bytes) + " bytes from rank " + std::to_string(peerRank),
      [&] { return world_.comm_->recvOn(stream, data, bytes, peerRank); });
}

Status DistributedRuntime::synchronize(void *stream,
                                       const std::vector<const DeviceGroup *> &groups) {
  return waitUntil([stream] { return detail::streamIdle(stream); },
                   "waiting for the stream's collectives", groups);
}

Status DistributedRuntime::synchronizeEvent(void *event,
                                            const std::vector<const DeviceGroup *> &groups) {
  return waitUntil([event] { return detail::eventDone(event); },
                   "waiting for the collectives before an event", groups);
}

Status DistributedRuntime::waitUntil(const std::function<Result<bool>()> &done,
                                     const char *what,
                                     const std::vector<const DeviceGroup *> &groups) {
  std::vector<detail::Communicator *> watched;
  auto watch = [&](const DeviceGroup &group) {
    if (group.comm_ && std::find(watched.begin(), watched.end(), group.comm_.get()) ==
                           watched.end())
      watched.push_back(group.comm_.get());
  };
  watch(world_);
  for (const DeviceGroup *group : groups)
    if (group)
      watch(*group);
  auto giveUp = [&](Status why) {
    for (detail::Communicator *comm : watched)
      comm->giveUp(why);
    return why;
  };
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + config_.timeout;
  for (;;) {
    for (detail::Communicator *comm : watched) {
      Status failed = comm->asyncError();
      if (!failed.isOk())
        return giveUp(failed.withContext(what));
    }
    Result<bool> finished = done();
    if (!finished)
      return giveUp(finished.status().withContext(what));
    if (*finished)
      return Status::ok();
    const auto now = std::chrono::steady_clock::now();
    if (now > deadline)
      return giveUp(Status::error("the collectives did not complete within " +
                                  std::to_string(config_.timeout.count()) +
                                  " ms (a peer may have died)")
                        .withContext(what));
    // A decode step ends within milliseconds: spin (yielding) through those,
    // sleep beyond them.
    if (now - started < std::chrono::milliseconds(5))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

} // namespace llmir::runtime
