#include "llmir/kvstore/Server.h"

#include "SharedArena.h"
#include "IdleCpu.h"
#include "SharedIndex.h"
#include "Ucx.h"
#include "Wire.h"

#include "llmir/support/ClusterAuth.h"

#include <arpa/inet.h>
#include <algorithm>
#include <atomic>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unistd.h>
#include <vector>

namespace llmir::kvstore {

using Clock = std::chrono::steady_clock;
using wire::BlockMeta;
using wire::Code;
using wire::MessageHeader;

const char *operationName(Operation op) {
  switch (op) {
  case Operation::Put: return "put";
  case Operation::Get: return "get";
  case Operation::Exists: return "exists";
  }
  return "?";
}

namespace {

// A reply in flight: owns its header bytes, the blocks it sends (an eviction
// meanwhile does not free them) and the iov describing them.
struct Reply {
  Server::Impl *owner = nullptr;
  std::vector<uint8_t> header;
  std::vector<std::shared_ptr<const StoredBlock>> hold;
  std::vector<ucp_dt_iov_t> iov;
  Operation op = Operation::Get;
  Clock::time_point start;
  uint64_t bytes = 0;
  uint32_t blocks = 0;
  bool sharedMemory = false;
};

// A put whose bytes arrive by rendezvous after the request header.
struct PendingPut {
  Server::Impl *owner = nullptr;
  MessageHeader header;
  std::vector<BlockMeta> metas;
  std::vector<std::shared_ptr<StoredBlock>> blocks; // null: not stored (code set)
  std::vector<Code> codes;
  std::vector<ucp_dt_iov_t> iov;
  // Eager: each block's XXH3, taken while copying it out of UCX's buffer
  // (empty: finishPut hashes the received blocks).
  std::vector<uint64_t> sums;
  ucp_ep_h ep = nullptr;
  void *descriptor = nullptr; // rendezvous data descriptor
  Clock::time_point start;
  uint64_t bytes = 0;
};

} // namespace

class Server::Impl {
public:
  Impl(const ServerOptions &options, OperationObserver observer)
      : options_(options), observer_(std::move(observer)),
        pool_(options.capacityBytes) {}
  ~Impl() {
    for (int fd : wakePipe_)
      if (fd >= 0)
        close(fd);
  }

  Status open();
  void run();
  void stop();

  uint16_t port_ = 0;

  ServerOptions options_;
  OperationObserver observer_;
  // Before the pool: its blocks return their memory to the segment.
  std::unique_ptr<SharedArena> arena_;
  std::string arenaStatus_ = "off";
  // The blocks of the segment by key, for clients that serve gets
  // themselves (SharedIndex.h); kept by the pool's hooks.
  std::optional<index::Writer> index_;
  BlockPool pool_;
  // Per endpoint: blocks of its last shared get (alive until its next
  // request) and room reserved by its shared puts (until committed or the
  // endpoint goes away).
  std::map<ucp_ep_h, std::vector<std::shared_ptr<const StoredBlock>>> pins_;
  std::map<ucp_ep_h, std::map<uint32_t, std::shared_ptr<StoredBlock>>> reservations_;
  // Room in the segment reserved ahead for an endpoint's next put
  // (PutCommitAhead): not counted against the budget until committed; at
  // most one commit's records per endpoint.
  std::map<ucp_ep_h, std::map<uint32_t, std::shared_ptr<StoredBlock>>> spares_;
  // Rooms for an endpoint's pipelined puts (PutPipelined): budget reserved
  // when handed out, so their commit cannot fail; returned when the
  // endpoint goes away. With the bytes they hold per endpoint.
  std::map<ucp_ep_h, std::map<uint32_t, std::shared_ptr<StoredBlock>>> rooms_;
  std::map<ucp_ep_h, uint64_t> roomBytes_;
  // Blocks arriving in parts (PutPart), per endpoint and request id: the
  // first part reserved the block's room (null block: NoSpace or Rejected,
  // the rest of its parts are read and dropped); released if the endpoint
  // goes away before the last part.
  struct PartialPut {
    BlockMeta first{};
    std::shared_ptr<StoredBlock> block;
    Code code = Code::None;
    uint64_t next = 0; // the offset the next part must have
    std::unique_ptr<PartChecksum> sum;
    Clock::time_point start;
  };
  std::map<ucp_ep_h, std::map<uint64_t, PartialPut>> partial_;
  // Same-host clients' request channels in the segment (wire::ChannelHeader),
  // per endpoint; freed when it goes away.
  struct Channel {
    uint64_t offset = 0;
    wire::ChannelHeader *header = nullptr;
    uint32_t lastSeq = 0; // of the last request served
  };
  std::map<ucp_ep_h, Channel> channels_;
  // The gets clients served themselves, as their channels count them
  // (ChannelHeader::local*), read by stats() on another thread: per live
  // channel the largest values seen (a client's counters only grow; one
  // that writes smaller ones cannot make ours shrink), plus those of
  // channels already freed.
  struct LocalGets {
    uint64_t hits = 0, bytes = 0, rejected = 0, misses = 0;
  };
  mutable std::mutex localMu_;
  mutable std::map<ucp_ep_h, std::pair<const wire::ChannelHeader *, LocalGets>> localLive_;
  LocalGets localRetired_;
  static void foldLocal(const wire::ChannelHeader *h, LocalGets &seen) {
    seen.hits = std::max(seen.hits, __atomic_load_n(&h->localHits, __ATOMIC_RELAXED));
    seen.bytes = std::max(seen.bytes, __atomic_load_n(&h->localBytes, __ATOMIC_RELAXED));
    seen.rejected =
        std::max(seen.rejected, __atomic_load_n(&h->localRejected, __ATOMIC_RELAXED));
    seen.misses = std::max(seen.misses, __atomic_load_n(&h->localMisses, __ATOMIC_RELAXED));
  }
  PoolStats stats() const {
    PoolStats s = pool_.stats();
    std::lock_guard lock(localMu_);
    LocalGets sum = localRetired_;
    for (auto &[ep, live] : localLive_) {
      foldLocal(live.first, live.second);
      sum.hits += live.second.hits;
      sum.bytes += live.second.bytes;
      sum.rejected += live.second.rejected;
      sum.misses += live.second.misses;
    }
    s.hits += sum.hits;
    s.misses += sum.misses;
    s.rejected += sum.rejected;
    s.clientServedBytes = sum.bytes;
    return s;
  }
  // Clients write a byte here to wake the progress thread while it sleeps
  // (the word at wire::kStoreSleepingOffset says so); they open the write
  // end through /proc/<pid>/fd.
  int wakePipe_[2] = {-1, -1};
  // Set while a channel's request is handled: send() answers there.
  Channel *replyChannel_ = nullptr;
  std::vector<uint8_t> channelRequest_;
  Clock::time_point lastChannelRequest_;
  // How long to look for the next channel request after the last one:
  // channelSpin, or idleChannelSpin when the host had a CPU to spare then.
  std::chrono::microseconds channelSpinNow_{0};
  IdleCpuProbe idleCpu_;
  // A reply woke a client sleeping on its channel: it is about to run but
  // /proc/loadavg may not count it yet.
  bool wokeChannelClient_ = false;
  // Whether the host had a CPU to spare at the last look for idlePoll, and
  // when that was (a look is a read of /proc/loadavg, so at most one a
  // millisecond: its runnable count changes at the scheduler's pace).
  bool idlePollSpare_ = false;
  Clock::time_point idlePollChecked_;
  std::unique_ptr<ucx::Worker> worker_;
  ucp_listener_h listener_ = nullptr;
  std::set<ucp_ep_h> endpoints_;
  // Endpoints still in the cluster handshake (only with a secret): nothing
  // but its messages is served to them.
  struct Handshake {
    auth::ServerHandshake steps;
    bool helloSeen = false;
    Clock::time_point deadline;
  };
  std::map<ucp_ep_h, Handshake> handshakes_;
  std::vector<ucp_ep_h> failedEndpoints_;
  std::vector<PendingPut *> toReceive_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> connections_{0};
  std::thread thread_;
  std::vector<uint8_t> scratch_; // sink for the bytes of blocks not stored
  bool stopped_ = false;

  static void onConnect(ucp_conn_request_h request, void *arg);
  static void onEndpointError(void *arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t onRequest(void *arg, const void *header, size_t headerLength,
                                void *data, size_t length,
                                const ucp_am_recv_param_t *param);
  static ucs_status_t onAuth(void *arg, const void *header, size_t headerLength,
                             void *data, size_t length, const ucp_am_recv_param_t *param);
  static void onReplySent(void *request, ucs_status_t status, void *user);
  static void onPutReceived(void *request, ucs_status_t status, size_t length,
                            void *user);

  void handleRequest(const void *header, size_t headerLength, void *data,
                     size_t length, const ucp_am_recv_param_t *param,
                     ucs_status_t &result);
  void serve(ucp_ep_h ep, const void *header, size_t headerLength, void *data,
             size_t length, bool rendezvous, ucs_status_t &result);
  void openChannel(ucp_ep_h ep, const MessageHeader &h);
  void freeChannel(ucp_ep_h ep);
  /// Serves every channel's pending request; true when there was one.
  bool serveChannels();
  bool channelPending() const;
  /// Writes `reply` into replyChannel_'s reply area and wakes its client.
  void answerOnChannel(Reply *reply);
  uint32_t &storeSleeping() const {
    return *reinterpret_cast<uint32_t *>(arena_->base() + wire::kStoreSleepingOffset);
  }
  void refuse(ucp_ep_h ep, const MessageHeader &request, const std::string &why);
  void handleAuth(ucp_ep_h ep, std::string_view bytes, size_t payloadLength);
  /// Disconnects `ep` without answering (closed outside the callback).
  void drop(ucp_ep_h ep);
  void sendAuthReply(ucp_ep_h ep, std::string bytes);
  void send(ucp_ep_h ep, Reply *reply);
  void startPut(ucp_ep_h ep, const MessageHeader &h, const BlockMeta *metas,
                void *data, size_t length, bool rendezvous, ucs_status_t &result);
  void finishPut(PendingPut *put, bool received);
  void putPart(ucp_ep_h ep, const MessageHeader &h, const BlockMeta &record, const void *data,
               size_t length, bool rendezvous, Clock::time_point start);
  /// Sends a get reply of one Found block (GetParts) as parts.
  void sendInParts(ucp_ep_h ep, Reply *whole);
  void receivePending();
  /// A block of `bytes` whose pool reservation is already made, in the
  /// segment when there is one (evicting while the segment is fragmented);
  /// null when no room was found (the reservation is then returned).
  std::shared_ptr<StoredBlock> allocateBlock(uint64_t bytes);
  /// Forgets an endpoint's pins and returns its reservations.
  void forgetEndpoint(ucp_ep_h ep);
  void hello(ucp_ep_h ep, const MessageHeader &h);
  void getShared(ucp_ep_h ep, const MessageHeader &h, std::vector<BlockMeta> &records,
                 Clock::time_point start);
  void reserveShared(ucp_ep_h ep, const MessageHeader &h, std::vector<BlockMeta> &records);
  void putPipelined(ucp_ep_h ep, const MessageHeader &h, std::vector<BlockMeta> &records,
                    Clock::time_point start);
  /// `ahead`: reserve room of each record's size for the endpoint's next put.
  void commitShared(ucp_ep_h ep, const MessageHeader &h, std::vector<BlockMeta> &records,
                    Clock::time_point start, bool ahead);
  Reply *replyFor(const MessageHeader &h, const std::vector<BlockMeta> &records);
  /// Counts `rejected` and sends the reply of a shared-memory get or put.
  void replyShared(ucp_ep_h ep, const MessageHeader &h, const std::vector<BlockMeta> &records,
                   Operation op, Clock::time_point start, uint64_t bytes, uint64_t rejected) {
    if (rejected)
      pool_.countRejected(rejected);
    Reply *reply = replyFor(h, records);
    reply->op = op;
    reply->start = start;
    reply->blocks = h.count;
    reply->bytes = bytes;
    reply->sharedMemory = true;
    send(ep, reply);
  }
};

// ---------------------------------------------------------------------------

Status Server::Impl::open() {
  auto worker = ucx::Worker::create(/*listener=*/true, options_.tcpCongestion);
  if (!worker)
    return worker.status();
  worker_ = std::move(*worker);
  scratch_.resize(options_.maxBlockBytes);
  if (options_.sharedMemory) {
    // Twice the budget, sparse: fragmentation rarely forces an eviction.
    auto arena = SharedArena::create(2 * options_.capacityBytes);
    if (arena) {
      arena_ = std::move(*arena);
      arenaStatus_ = std::to_string(arena_->size()) + " bytes";
      index_ = index::Writer::create(*arena_, options_.capacityBytes);
      if (index_) {
        index::Writer *w = &*index_;
        pool_.setIndexHooks({[w](const StoredBlock &b) { w->publish(b); },
                             [w](const BlockKey &k) { w->withdraw(k); },
                             [w](const BlockKey &k) { return w->takeTouched(k); }});
      }
      // No wake pipe: clients then keep their requests on UCX.
      if (pipe2(wakePipe_, O_NONBLOCK | O_CLOEXEC) != 0)
        wakePipe_[0] = wakePipe_[1] = -1;
    } else {
      arenaStatus_ = arena.status().message();
    }
  }

  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  handler.id = wire::kAmRequest;
  handler.cb = &Impl::onRequest;
  handler.arg = this;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  ucs_status_t st = ucp_worker_set_am_recv_handler(worker_->handle(), &handler);
  if (st != UCS_OK)
    return Status::error("UCX active-message handler: " + ucx::errorText(st));
  handler.id = wire::kAmAuth;
  handler.cb = &Impl::onAuth;
  st = ucp_worker_set_am_recv_handler(worker_->handle(), &handler);
  if (st != UCS_OK)
    return Status::error("UCX active-message handler: " + ucx::errorText(st));

  socklen_t length = 0;
  auto address = ucx::resolve(options_.host, options_.port, length);
  if (!address)
    return address.status();
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr *>(&*address);
  lp.sockaddr.addrlen = length;
  lp.conn_handler.cb = &Impl::onConnect;
  lp.conn_handler.arg = this;
  st = ucp_listener_create(worker_->handle(), &lp, &listener_);
  if (st != UCS_OK)
    return Status::error("cannot listen on " + options_.host + ":" +
                         std::to_string(options_.port) + ": " + ucx::errorText(st));
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  st = ucp_listener_query(listener_, &attr);
  if (st != UCS_OK)
    return Status::error("UCX listener query: " + ucx::errorText(st));
  if (attr.sockaddr.ss_family == AF_INET)
    port_ = ntohs(reinterpret_cast<const sockaddr_in *>(&attr.sockaddr)->sin_port);
  else
    port_ = ntohs(reinterpret_cast<const sockaddr_in6 *>(&attr.sockaddr)->sin6_port);
  return Status::ok();
}

void Server::Impl::onConnect(ucp_conn_request_h request, void *arg) {
  auto *self = static_cast<Impl *>(arg);
  if (self->stopping_) {
    ucp_listener_reject(self->listener_, request);
    return;
  }
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.conn_request = request;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &Impl::onEndpointError;
  ep.err_handler.arg = self;
  ucp_ep_h handle = nullptr;
  if (ucp_ep_create(self->worker_->handle(), &ep, &handle) == UCS_OK) {
    self->endpoints_.insert(handle);
    self->connections_ = self->endpoints_.size();
    if (self->options_.clusterSecret)
      self->handshakes_.emplace(
          handle, Handshake{auth::ServerHandshake(*self->options_.clusterSecret), false,
                            Clock::now() + self->options_.handshakeTimeout});
  }
}

void Server::Impl::forgetEndpoint(ucp_ep_h ep) {
  pins_.erase(ep);
  freeChannel(ep);
  spares_.erase(ep);
  if (auto it = rooms_.find(ep); it != rooms_.end()) {
    for (auto &[slot, block] : it->second)
      pool_.release(block->bytes);
    rooms_.erase(it);
  }
  roomBytes_.erase(ep);
  if (auto parts = partial_.find(ep); parts != partial_.end()) {
    for (auto &[id, put] : parts->second)
      if (put.block)
        pool_.release(put.block->bytes);
    partial_.erase(parts);
  }
  auto it = reservations_.find(ep);
  if (it == reservations_.end())
    return;
  for (auto &[slot, block] : it->second)
    pool_.release(block->bytes);
  reservations_.erase(it);
}

void Server::Impl::drop(ucp_ep_h ep) {
  forgetEndpoint(ep);
  handshakes_.erase(ep);
  if (ep && endpoints_.erase(ep)) {
    failedEndpoints_.push_back(ep);
    connections_ = endpoints_.size();
  }
}

void Server::Impl::sendAuthReply(ucp_ep_h ep, std::string bytes) {
  auto *reply = new Reply(); // blocks = 0: not an operation the observer sees
  reply->owner = this;
  reply->header.assign(bytes.begin(), bytes.end());
  reply->start = Clock::now();
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE;
  param.cb.send = &Impl::onReplySent;
  param.user_data = reply;
  param.datatype = ucp_dt_make_contig(1);
  if (!endpoints_.count(ep)) {
    delete reply;
    return;
  }
  ucs_status_ptr_t req = ucp_am_send_nbx(ep, wire::kAmAuthReply, reply->header.data(),
                                         reply->header.size(), nullptr, 0, &param);
  if (req == nullptr)
    onReplySent(nullptr, UCS_OK, reply);
  else if (UCS_PTR_IS_ERR(req))
    onReplySent(nullptr, UCS_PTR_STATUS(req), reply);
}

ucs_status_t Server::Impl::onAuth(void *arg, const void *header, size_t headerLength, void *,
                                  size_t length, const ucp_am_recv_param_t *param) {
  ucp_ep_h ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep
                                                                     : nullptr;
  static_cast<Impl *>(arg)->handleAuth(
      ep, std::string_view(static_cast<const char *>(header), headerLength), length);
  return UCS_OK; // any payload (there should be none) is released
}

void Server::Impl::handleAuth(ucp_ep_h ep, std::string_view bytes, size_t payloadLength) {
  if (!ep || !endpoints_.count(ep))
    return;
  if (!options_.clusterSecret) {
    // Say so: a client holding a secret refuses a store that cannot prove it.
    if (bytes.size() == auth::kHelloBytes && payloadLength == 0)
      sendAuthReply(ep, std::string(1, wire::kNoSecret));
    return;
  }
  auto it = handshakes_.find(ep);
  if (it == handshakes_.end() || payloadLength != 0)
    return drop(ep); // a second handshake, or one with a payload: not a client of ours
  Handshake &h = it->second;
  if (!h.helloSeen) {
    auto answer = h.steps.hello(bytes);
    if (!answer)
      return drop(ep);
    h.helloSeen = true;
    return sendAuthReply(ep, std::move(*answer));
  }
  if (!h.steps.proof(bytes))
    return drop(ep); // wrong secret: no answer, disconnected
  handshakes_.erase(it);
  sendAuthReply(ep, std::string(1, auth::kAcceptByte));
}

void Server::Impl::onEndpointError(void *arg, ucp_ep_h ep, ucs_status_t) {
  // A client went away (closed, crashed, or the network failed). Replies to
  // it are dropped from now on; the endpoint is closed outside the callback.
  auto *self = static_cast<Impl *>(arg);
  self->forgetEndpoint(ep);
  self->handshakes_.erase(ep);
  if (self->endpoints_.erase(ep)) {
    self->failedEndpoints_.push_back(ep);
    self->connections_ = self->endpoints_.size();
  }
}

ucs_status_t Server::Impl::onRequest(void *arg, const void *header, size_t headerLength,
                                     void *data, size_t length,
                                     const ucp_am_recv_param_t *param) {
  ucs_status_t result = UCS_OK;
  static_cast<Impl *>(arg)->handleRequest(header, headerLength, data, length, param,
                                          result);
  return result;
}

void Server::Impl::refuse(ucp_ep_h ep, const MessageHeader &request,
                          const std::string &why) {
  auto *reply = new Reply();
  reply->owner = this;
  MessageHeader h;
  h.op = request.op;
  h.requestId = request.requestId;
  h.errorLength = static_cast<uint32_t>(why.size());
  reply->header.resize(sizeof h + why.size());
  std::memcpy(reply->header.data(), &h, sizeof h);
  std::memcpy(reply->header.data() + sizeof h, why.data(), why.size());
  reply->op = static_cast<Operation>(request.op >= 1 && request.op <= 3 ? request.op - 1 : 0);
  reply->start = Clock::now();
  send(ep, reply);
}

void Server::Impl::send(ucp_ep_h ep, Reply *reply) {
  if (replyChannel_)
    return answerOnChannel(reply);
  if (!ep || !endpoints_.count(ep)) {
    delete reply; // the client is gone
    return;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE;
  param.cb.send = &Impl::onReplySent;
  param.user_data = reply;
  const void *buffer = nullptr;
  size_t count = 0;
  if (reply->iov.empty()) {
    param.datatype = ucp_dt_make_contig(1);
  } else if (reply->iov.size() == 1) {
    // One block: a contiguous buffer, not a one-element iov (with the
    // client's contiguous receive, Client::Impl::receivePending, a 1 MiB get
    // over TCP measured 1.3x faster, docs/performance.md).
    param.datatype = ucp_dt_make_contig(1);
    buffer = reply->iov[0].buffer;
    count = reply->iov[0].length;
  } else {
    param.datatype = UCP_DATATYPE_IOV;
    buffer = reply->iov.data();
    count = reply->iov.size();
  }
  uint64_t payload = 0;
  for (const ucp_dt_iov_t &v : reply->iov)
    payload += v.length;
  if (payload > 0 && payload <= ucx::kEagerPayloadBytes) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
  }
  ucs_status_ptr_t req = ucp_am_send_nbx(ep, wire::kAmReply, reply->header.data(),
                                         reply->header.size(), buffer, count, &param);
  if (req == nullptr)
    onReplySent(nullptr, UCS_OK, reply);
  else if (UCS_PTR_IS_ERR(req))
    onReplySent(nullptr, UCS_PTR_STATUS(req), reply);
}

void Server::Impl::onReplySent(void *request, ucs_status_t status, void *user) {
  auto *reply = static_cast<Reply *>(user);
  if (request)
    ucp_request_free(request);
  if (status == UCS_OK && reply->blocks > 0 && reply->owner->observer_)
    reply->owner->observer_(OperationRecord{
        reply->op,
        std::chrono::duration<double>(Clock::now() - reply->start).count(),
        reply->bytes, reply->blocks, reply->sharedMemory});
  delete reply;
}

void Server::Impl::handleRequest(const void *header, size_t headerLength, void *data,
                                 size_t length, const ucp_am_recv_param_t *param,
                                 ucs_status_t &result) {
  bool rendezvous = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
  ucp_ep_h ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep
                                                                     : nullptr;
  serve(ep, header, headerLength, data, length, rendezvous, result);
}

void Server::Impl::serve(ucp_ep_h ep, const void *header, size_t headerLength, void *data,
                         size_t length, bool rendezvous, ucs_status_t &result) {
  Clock::time_point start = Clock::now();
  if (options_.clusterSecret && (!ep || handshakes_.count(ep)))
    return drop(ep); // before the handshake: nothing is served or answered
  MessageHeader h{};
  if (headerLength < sizeof h) {
    return; // not ours: no request id to answer
  }
  std::memcpy(&h, header, sizeof h);
  if (h.magic != wire::kMagic || h.version != wire::kVersion)
    return refuse(ep, h, "not a kv-store request of protocol version " +
                             std::to_string(wire::kVersion));
  if (headerLength != sizeof h + size_t(h.count) * sizeof(BlockMeta))
    return refuse(ep, h, "request header length " + std::to_string(headerLength) +
                             " does not match its " + std::to_string(h.count) +
                             " block records");
  // A reply carries as many records as its request. One whose header is
  // larger than this worker sends would not arrive whole (ucx::Worker::
  // create: UCX's short protocol cuts headers of 64 KiB or more), so such a
  // request (a client with larger UCX segments than the store, or not ours)
  // is refused in a short error reply instead of answered with one the
  // client cannot read.
  if (!replyChannel_ && headerLength > worker_->maxAmHeader())
    return refuse(ep, h, "request of " + std::to_string(h.count) + " block records (" +
                             std::to_string(headerLength) +
                             " header bytes): this store sends at most " +
                             std::to_string(worker_->maxAmHeader()) +
                             " header bytes per message, " +
                             std::to_string((worker_->maxAmHeader() - sizeof h) /
                                            sizeof(BlockMeta)) +
                             " records");
  const auto *metas = reinterpret_cast<const BlockMeta *>(
      static_cast<const uint8_t *>(header) + sizeof h);
  std::vector<BlockMeta> records(metas, metas + h.count); // header may be unaligned
  // The client sends a request only after copying its last shared get out.
  pins_.erase(ep);

  auto op = static_cast<wire::Op>(h.op);
  if (replyChannel_ && !wire::carriedByChannel(h.op))
    return refuse(ep, h, "operation " + std::to_string(h.op) +
                             " is not carried by the request channel");
  if (op == wire::Op::Put)
    return startPut(ep, h, records.data(), data, length, rendezvous, result);
  if (op == wire::Op::PutPart) {
    if (replyChannel_ || h.count != 1)
      return refuse(ep, h, "a put part carries one record, over UCX");
    return putPart(ep, h, records[0], data, length, rendezvous, start);
  }
  if (op == wire::Op::OpenChannel)
    return openChannel(ep, h);
  if (op == wire::Op::PutPipelined) {
    if (!replyChannel_ || !arena_) // its client does not wait: only where it reads replies in order
      return refuse(ep, h, "pipelined puts travel through the request channel only");
    return putPipelined(ep, h, records, start);
  }
  if (op >= wire::Op::Hello && op <= wire::Op::PutCommitAhead) {
    if (length != 0)
      return refuse(ep, h, "shared-memory requests carry no payload");
    if (op == wire::Op::Hello)
      return hello(ep, h);
    if (!arena_)
      return refuse(ep, h, "this store has no shared-memory segment");
    if (op == wire::Op::GetShared)
      return getShared(ep, h, records, start);
    if (op == wire::Op::PutReserve)
      return reserveShared(ep, h, records);
    return commitShared(ep, h, records, start, op == wire::Op::PutCommitAhead);
  }
  if (op != wire::Op::Get && op != wire::Op::Exists && op != wire::Op::GetParts)
    return refuse(ep, h, "unknown operation " + std::to_string(h.op));
  if (length != 0)
    return refuse(ep, h, "get and exists requests carry no payload");

  auto *reply = new Reply();
  reply->owner = this;
  const bool get = op == wire::Op::Get || op == wire::Op::GetParts;
  reply->op = get ? Operation::Get : Operation::Exists;
  reply->start = start;
  reply->blocks = h.count;
  MessageHeader rh;
  rh.op = h.op;
  rh.requestId = h.requestId;
  rh.count = h.count;
  reply->header.resize(sizeof rh + h.count * sizeof(BlockMeta));
  std::memcpy(reply->header.data(), &rh, sizeof rh);
  uint32_t rejected = 0;
  for (uint32_t i = 0; i < h.count; ++i) {
    BlockMeta m = records[i];
    BlockKey key;
    std::memcpy(key.bytes.data(), m.key, sizeof m.key);
    std::shared_ptr<const StoredBlock> block =
        get ? pool_.find(key) : pool_.peek(key);
    Code code = Code::Missing;
    if (block) {
      if (block->dtype != wire::dtypeOf(m) || block->bytes != m.bytes) {
        code = Code::Rejected; // never hand out a block the caller cannot use
        ++rejected;
      } else {
        code = Code::Found;
        m.checksum = block->checksum;
        if (get) {
          reply->iov.push_back({block->data.get(), block->bytes});
          reply->bytes += block->bytes;
          reply->hold.push_back(block);
        }
      }
    }
    m.code = static_cast<uint32_t>(code);
    std::memcpy(reply->header.data() + sizeof rh + i * sizeof(BlockMeta), &m, sizeof m);
  }
  if (rejected)
    pool_.countRejected(rejected);
  if (op == wire::Op::GetParts && h.count == 1 && reply->hold.size() == 1 &&
      options_.partBytes > 0 &&
      reply->bytes > 2 * options_.partBytes)
    return sendInParts(ep, reply);
  send(ep, reply);
}

void Server::Impl::sendInParts(ucp_ep_h ep, Reply *whole) {
  // One message per part, each holding the block; the observer sees the
  // last (blocks and bytes set there only).
  std::unique_ptr<Reply> owned(whole);
  MessageHeader rh;
  std::memcpy(&rh, whole->header.data(), sizeof rh);
  BlockMeta m;
  std::memcpy(&m, whole->header.data() + sizeof rh, sizeof m);
  const auto *bytes = static_cast<const uint8_t *>(whole->iov[0].buffer);
  const uint64_t total = whole->iov[0].length, part = options_.partBytes;
  for (uint64_t at = 0; at < total;) {
    bool last = total - at < part + wire::kPartAlignment;
    uint64_t length = last ? total - at : part;
    m.slot = static_cast<uint32_t>(at / wire::kPartAlignment);
    Reply *reply = replyFor(rh, {m});
    reply->op = Operation::Get;
    reply->start = whole->start;
    reply->hold = whole->hold;
    reply->iov.push_back({const_cast<uint8_t *>(bytes + at), length});
    if (last) {
      reply->blocks = whole->blocks;
      reply->bytes = total;
    }
    send(ep, reply);
    at += length;
  }
}

void Server::Impl::startPut(ucp_ep_h ep, const MessageHeader &h, const BlockMeta *metas,
                            void *data, size_t length, bool rendezvous,
                            ucs_status_t &result) {
  uint64_t total = 0;
  for (uint32_t i = 0; i < h.count; ++i) {
    if (metas[i].bytes == 0 || metas[i].bytes > options_.maxBlockBytes)
      return refuse(ep, h, "block " + std::to_string(i) + " has " +
                               std::to_string(metas[i].bytes) +
                               " bytes; blocks hold 1.." +
                               std::to_string(options_.maxBlockBytes) + " bytes");
    total += metas[i].bytes;
  }
  if (total != length)
    return refuse(ep, h, "payload of " + std::to_string(length) +
                             " bytes does not match the records' " +
                             std::to_string(total) + " bytes");
  auto *put = new PendingPut();
  put->owner = this;
  put->header = h;
  put->metas.assign(metas, metas + h.count);
  put->ep = ep;
  put->start = Clock::now();
  put->bytes = total;
  put->blocks.resize(h.count);
  put->codes.assign(h.count, Code::None);
  for (uint32_t i = 0; i < h.count; ++i) {
    const BlockMeta &m = metas[i];
    std::string dtype = wire::dtypeOf(m);
    if (!isValidDtype(dtype)) {
      put->codes[i] = Code::Rejected;
      pool_.countRejected();
    } else if (!pool_.reserve(m.bytes)) {
      put->codes[i] = Code::NoSpace;
    } else {
      auto block = allocateBlock(m.bytes);
      if (!block) {
        put->codes[i] = Code::NoSpace;
      } else {
        std::memcpy(block->key.bytes.data(), m.key, sizeof m.key);
        block->dtype = dtype;
        block->checksum = m.checksum;
        put->blocks[i] = std::move(block);
      }
    }
    void *target = put->blocks[i] ? put->blocks[i]->data.get() : scratch_.data();
    put->iov.push_back({target, m.bytes});
  }
  if (!rendezvous) {
    // Copy and hash in one pass (a copy, then a hash, read each byte twice).
    const auto *src = static_cast<const uint8_t *>(data);
    put->sums.assign(h.count, 0);
    for (uint32_t i = 0; i < h.count; ++i) {
      if (put->blocks[i])
        put->sums[i] = copyWithChecksum(put->blocks[i]->data.get(), src, metas[i].bytes);
      src += metas[i].bytes;
    }
    finishPut(put, true);
    return;
  }
  // Rendezvous: the bytes are pulled into the blocks once the callback
  // returns (ucp_am_recv_data_nbx is not called from inside it).
  put->descriptor = data;
  toReceive_.push_back(put);
  result = UCS_INPROGRESS;
}

std::shared_ptr<StoredBlock> Server::Impl::allocateBlock(uint64_t bytes) {
  auto block = std::make_shared<StoredBlock>();
  block->bytes = bytes;
  if (!arena_) {
    block->data.reset(new uint8_t[bytes]); // uninitialised: filled by the put
    return block;
  }
  for (;;) {
    if (auto offset = arena_->allocate(bytes)) {
      SharedArena *arena = arena_.get();
      uint64_t at = *offset;
      block->data = std::unique_ptr<uint8_t[], BlockMemory>(
          arena->base() + at,
          BlockMemory{[arena, at, bytes](uint8_t *) { arena->free(at, bytes); }});
      block->arenaOffset = at;
      return block;
    }
    // The budget has room but the segment has no range that large: evict
    // until one forms (blocks still pinned or sending free theirs later).
    if (!pool_.evictOne()) {
      pool_.release(bytes);
      return nullptr;
    }
  }
}

Reply *Server::Impl::replyFor(const MessageHeader &h, const std::vector<BlockMeta> &records) {
  auto *reply = new Reply();
  reply->owner = this;
  MessageHeader rh;
  rh.op = h.op;
  rh.requestId = h.requestId;
  rh.count = static_cast<uint32_t>(records.size());
  reply->header.resize(sizeof rh + records.size() * sizeof(BlockMeta));
  std::memcpy(reply->header.data(), &rh, sizeof rh);
  if (!records.empty())
    std::memcpy(reply->header.data() + sizeof rh, records.data(),
                records.size() * sizeof(BlockMeta));
  return reply;
}

void Server::Impl::hello(ucp_ep_h ep, const MessageHeader &h) {
  Reply *reply = replyFor(h, {});
  if (arena_) {
    wire::ArenaOffer offer{};
    offer.pid = static_cast<uint32_t>(getpid());
    offer.fd = arena_->fd();
    offer.bytes = arena_->size();
    std::memcpy(offer.nonce, arena_->nonce().data(), sizeof offer.nonce);
    size_t at = reply->header.size();
    reply->header.resize(at + sizeof offer);
    std::memcpy(reply->header.data() + at, &offer, sizeof offer);
  }
  reply->start = Clock::now();
  send(ep, reply);
}

void Server::Impl::getShared(ucp_ep_h ep, const MessageHeader &h,
                             std::vector<BlockMeta> &records, Clock::time_point start) {
  uint32_t rejected = 0;
  uint64_t bytes = 0;
  auto &pins = pins_[ep];
  for (BlockMeta &m : records) {
    BlockKey key;
    std::memcpy(key.bytes.data(), m.key, sizeof m.key);
    std::shared_ptr<const StoredBlock> block = pool_.find(key);
    Code code = Code::Missing;
    m.slot = 0;
    if (block && (block->dtype != wire::dtypeOf(m) || block->bytes != m.bytes)) {
      code = Code::Rejected;
      ++rejected;
    } else if (block && block->arenaOffset != 0) {
      code = Code::Found;
      m.checksum = block->checksum;
      m.slot = static_cast<uint32_t>(block->arenaOffset / kArenaAlignment);
      bytes += block->bytes;
      pins.push_back(std::move(block));
    }
    m.code = static_cast<uint32_t>(code);
  }
  replyShared(ep, h, records, Operation::Get, start, bytes, rejected);
}

void Server::Impl::reserveShared(ucp_ep_h ep, const MessageHeader &h,
                                 std::vector<BlockMeta> &records) {
  for (size_t i = 0; i < records.size(); ++i)
    if (records[i].bytes == 0 || records[i].bytes > options_.maxBlockBytes)
      return refuse(ep, h, "block " + std::to_string(i) + " has " +
                               std::to_string(records[i].bytes) +
                               " bytes; blocks hold 1.." +
                               std::to_string(options_.maxBlockBytes) + " bytes");
  auto &held = reservations_[ep];
  for (BlockMeta &m : records) {
    m.slot = 0;
    std::string dtype = wire::dtypeOf(m);
    if (!isValidDtype(dtype)) {
      m.code = static_cast<uint32_t>(Code::Rejected);
      pool_.countRejected();
      continue;
    }
    std::shared_ptr<StoredBlock> block;
    if (pool_.reserve(m.bytes))
      block = allocateBlock(m.bytes);
    if (!block) {
      m.code = static_cast<uint32_t>(Code::NoSpace);
      continue;
    }
    std::memcpy(block->key.bytes.data(), m.key, sizeof m.key);
    block->dtype = dtype;
    m.slot = static_cast<uint32_t>(block->arenaOffset / kArenaAlignment);
    m.code = static_cast<uint32_t>(Code::Reserved);
    held[m.slot] = std::move(block);
  }
  Reply *reply = replyFor(h, records); // blocks = 0: observed at the commit
  reply->start = Clock::now();
  send(ep, reply);
}

void Server::Impl::commitShared(ucp_ep_h ep, const MessageHeader &h,
                                std::vector<BlockMeta> &records, Clock::time_point start,
                                bool ahead) {
  auto &held = reservations_[ep];
  // This commit may name room reserved ahead by the previous one; the rest
  // of that room is freed below, whatever this commit asks for.
  std::map<uint32_t, std::shared_ptr<StoredBlock>> spare;
  if (auto it = spares_.find(ep); it != spares_.end()) {
    spare = std::move(it->second);
    spares_.erase(it);
  }
  uint32_t rejected = 0;
  uint64_t bytes = 0;
  for (BlockMeta &m : records) {
    std::shared_ptr<StoredBlock> block;
    if (auto it = held.find(m.slot); m.slot != 0 && it != held.end()) {
      block = std::move(it->second);
      held.erase(it);
    } else if (auto ahead = spare.find(m.slot); m.slot != 0 && ahead != spare.end()) {
      // Room reserved ahead: it has a size but no key yet, and its budget is
      // taken only now (evicting as a PutReserve would).
      block = std::move(ahead->second);
      spare.erase(ahead);
      std::string dtype = wire::dtypeOf(m);
      if (block->bytes != m.bytes || !isValidDtype(dtype)) {
        m.code = static_cast<uint32_t>(Code::Rejected); // freed with `block`
        ++rejected;
        continue;
      }
      if (!pool_.reserve(m.bytes)) {
        m.code = static_cast<uint32_t>(Code::NoSpace);
        continue;
      }
      std::memcpy(block->key.bytes.data(), m.key, sizeof m.key);
      block->dtype = dtype;
    } else {
      m.code = static_cast<uint32_t>(Code::Rejected); // nothing reserved there
      continue;
    }
    // The bytes are not hashed again here: the client hashed them in the
    // segment while copying them in, and every reader (shared or in messages)
    // verifies that checksum over the bytes it copies, so bytes that do not
    // match it are rejected by the reader, never used. Hashing here would
    // only move that rejection earlier, at the cost of reading every byte a
    // second time (docs/kv-store.md, "Shared memory").
    if (std::memcmp(block->key.bytes.data(), m.key, sizeof m.key) != 0 ||
        block->dtype != wire::dtypeOf(m) || block->bytes != m.bytes) {
      pool_.release(block->bytes); // not what was reserved: never stored
      m.code = static_cast<uint32_t>(Code::Rejected);
      ++rejected;
      continue;
    }
    block->checksum = m.checksum;
    bytes += block->bytes;
    pool_.insert(std::move(block));
    m.code = static_cast<uint32_t>(Code::Stored);
  }
  if (held.empty())
    reservations_.erase(ep);
  spare.clear(); // room ahead this commit did not use goes back now
  for (BlockMeta &m : records) {
    m.slot = 0;
    if (!ahead || m.bytes == 0 || m.bytes > options_.maxBlockBytes)
      continue;
    // From the segment's slack only: never evicts for room that may not be
    // used (the segment is twice the budget).
    auto offset = arena_->allocate(m.bytes);
    if (!offset)
      continue;
    auto block = std::make_shared<StoredBlock>();
    SharedArena *arena = arena_.get();
    uint64_t at = *offset, size = m.bytes;
    block->bytes = size;
    block->data = std::unique_ptr<uint8_t[], BlockMemory>(
        arena->base() + at,
        BlockMemory{[arena, at, size](uint8_t *) { arena->free(at, size); }});
    block->arenaOffset = at;
    m.slot = static_cast<uint32_t>(at / kArenaAlignment);
    spares_[ep][m.slot] = std::move(block);
  }
  replyShared(ep, h, records, Operation::Put, start, bytes, rejected);
}

void Server::Impl::putPipelined(ucp_ep_h ep, const MessageHeader &h,
                                std::vector<BlockMeta> &records, Clock::time_point start) {
  auto &held = rooms_[ep];
  uint64_t &heldBytes = roomBytes_[ep];
  const uint64_t share = options_.capacityBytes / wire::kPipelinedShareDivisor;
  uint32_t rejected = 0;
  uint64_t bytes = 0, blocks = 0;
  // Commits first (in record order), then the rooms asked for: a room
  // freed by a commit's replacement can serve the next request.
  for (BlockMeta &m : records) {
    if (m.slot == 0)
      continue;
    auto it = held.find(m.slot);
    std::string dtype = wire::dtypeOf(m);
    if (it == held.end()) {
      m.code = static_cast<uint32_t>(Code::Rejected); // not a room of ours
      ++rejected;
      continue;
    }
    std::shared_ptr<StoredBlock> block = std::move(it->second);
    held.erase(it);
    heldBytes -= block->bytes;
    if (m.bytes == 0) { // the client gives the room back
      pool_.release(block->bytes);
      m.code = static_cast<uint32_t>(Code::Missing);
      continue;
    }
    if (block->bytes != m.bytes || !isValidDtype(dtype)) {
      pool_.release(block->bytes); // freed with `block`
      m.code = static_cast<uint32_t>(Code::Rejected);
      ++rejected;
      continue;
    }
    // As every shared-memory commit: stored under the client's checksum,
    // which every reader verifies ("Shared memory").
    std::memcpy(block->key.bytes.data(), m.key, sizeof m.key);
    block->dtype = dtype;
    block->checksum = m.checksum;
    bytes += block->bytes;
    ++blocks;
    pool_.insert(std::move(block)); // its budget was reserved with the room
    m.code = static_cast<uint32_t>(Code::Stored);
  }
  for (BlockMeta &m : records) {
    if (m.slot != 0)
      continue;
    m.code = static_cast<uint32_t>(Code::NoSpace);
    if (m.bytes == 0 || m.bytes > options_.maxBlockBytes || heldBytes + m.bytes > share)
      continue;
    if (!pool_.reserve(m.bytes))
      continue;
    auto block = allocateBlock(m.bytes); // returns the reservation when it fails
    if (!block)
      continue;
    m.slot = static_cast<uint32_t>(block->arenaOffset / kArenaAlignment);
    m.code = static_cast<uint32_t>(Code::Reserved);
    heldBytes += m.bytes;
    held[m.slot] = std::move(block);
  }
  if (held.empty()) {
    rooms_.erase(ep);
    roomBytes_.erase(ep);
  }
  if (rejected)
    pool_.countRejected(rejected);
  Reply *reply = replyFor(h, records);
  reply->op = Operation::Put;
  reply->start = start;
  reply->blocks = static_cast<uint32_t>(blocks); // 0 (rooms only): not a put the observer sees
  reply->bytes = bytes;
  reply->sharedMemory = true;
  send(ep, reply);
}

void Server::Impl::openChannel(ucp_ep_h ep, const MessageHeader &h) {
  if (!arena_ || wakePipe_[1] < 0)
    return refuse(ep, h, "this store has no shared-memory segment");
  if (!channels_.count(ep)) {
    uint64_t bytes = sizeof(wire::ChannelHeader) + 2ull * wire::kChannelMessageBytes;
    auto offset = arena_->allocate(bytes); // from the slack, never evicting
    if (!offset)
      return refuse(ep, h, "no room for a request channel in the segment");
    Channel channel;
    channel.offset = *offset;
    channel.header = reinterpret_cast<wire::ChannelHeader *>(arena_->base() + *offset);
    std::memset(channel.header, 0, sizeof(wire::ChannelHeader));
    channels_[ep] = channel;
    std::lock_guard lock(localMu_);
    localLive_[ep] = {channel.header, LocalGets{}};
  }
  Reply *reply = replyFor(h, {});
  wire::ChannelOffer offer{};
  offer.slot = static_cast<uint32_t>(channels_[ep].offset / kArenaAlignment);
  offer.wakeFd = wakePipe_[1];
  offer.messageBytes = wire::kChannelMessageBytes;
  size_t at = reply->header.size();
  reply->header.resize(at + sizeof offer);
  std::memcpy(reply->header.data() + at, &offer, sizeof offer);
  reply->start = Clock::now();
  send(ep, reply);
}

void Server::Impl::freeChannel(ucp_ep_h ep) {
  auto it = channels_.find(ep);
  if (it == channels_.end())
    return;
  {
    std::lock_guard lock(localMu_);
    if (auto live = localLive_.find(ep); live != localLive_.end()) {
      foldLocal(live->second.first, live->second.second);
      localRetired_.hits += live->second.second.hits;
      localRetired_.bytes += live->second.second.bytes;
      localRetired_.rejected += live->second.second.rejected;
      localRetired_.misses += live->second.second.misses;
      localLive_.erase(live);
    }
  }
  arena_->free(it->second.offset,
               sizeof(wire::ChannelHeader) + 2ull * wire::kChannelMessageBytes);
  channels_.erase(it);
}

bool Server::Impl::channelPending() const {
  for (const auto &[ep, channel] : channels_)
    if (std::atomic_ref<uint32_t>(channel.header->requestSeq).load(std::memory_order_seq_cst) !=
        channel.lastSeq)
      return true;
  return false;
}

bool Server::Impl::serveChannels() {
  bool served = false;
  // A request may close its endpoint (drop): iterate over a copy of the keys.
  std::vector<ucp_ep_h> eps;
  for (const auto &[ep, channel] : channels_)
    eps.push_back(ep);
  for (ucp_ep_h ep : eps) {
    auto it = channels_.find(ep);
    if (it == channels_.end())
      continue;
    Channel &channel = it->second;
    uint32_t seq =
        std::atomic_ref<uint32_t>(channel.header->requestSeq).load(std::memory_order_acquire);
    if (seq == channel.lastSeq)
      continue;
    served = true;
    channel.lastSeq = seq;
    // Copied out first: the client could change the area while it is parsed.
    uint32_t length = std::atomic_ref<uint32_t>(channel.header->requestLength)
                          .load(std::memory_order_relaxed);
    const uint8_t *area = reinterpret_cast<const uint8_t *>(channel.header + 1);
    channelRequest_.assign(area, area + std::min(length, wire::kChannelMessageBytes));
    replyChannel_ = &channel;
    if (length > wire::kChannelMessageBytes || length < sizeof(MessageHeader)) {
      MessageHeader h{};
      if (length >= sizeof h)
        std::memcpy(&h, channelRequest_.data(), sizeof h);
      refuse(ep, h, "request of " + std::to_string(length) + " bytes in a channel of " +
                        std::to_string(wire::kChannelMessageBytes));
    } else {
      ucs_status_t ignored = UCS_OK;
      serve(ep, channelRequest_.data(), channelRequest_.size(), nullptr, 0, false, ignored);
    }
    replyChannel_ = nullptr;
  }
  return served;
}

void Server::Impl::answerOnChannel(Reply *reply) {
  Channel &channel = *replyChannel_;
  if (!reply->iov.empty() || reply->header.size() > wire::kChannelMessageBytes) {
    // Not a reply the channel carries (refused before it is built; kept as
    // a guard): say so rather than leave the client waiting.
    MessageHeader h;
    std::memcpy(&h, reply->header.data(), sizeof h);
    static const std::string why = "reply too large for the request channel";
    h.count = 0;
    h.errorLength = static_cast<uint32_t>(why.size());
    reply->header.resize(sizeof h + why.size());
    std::memcpy(reply->header.data(), &h, sizeof h);
    std::memcpy(reply->header.data() + sizeof h, why.data(), why.size());
    reply->iov.clear();
    reply->blocks = 0;
  }
  uint8_t *area = reinterpret_cast<uint8_t *>(channel.header + 1) + wire::kChannelMessageBytes;
  std::memcpy(area, reply->header.data(), reply->header.size());
  std::atomic_ref<uint32_t>(channel.header->replyLength)
      .store(static_cast<uint32_t>(reply->header.size()), std::memory_order_relaxed);
  std::atomic_ref<uint32_t>(channel.header->replySeq)
      .store(channel.lastSeq, std::memory_order_seq_cst);
  if (std::atomic_ref<uint32_t>(channel.header->clientWaiting).load(std::memory_order_seq_cst)) {
    syscall(SYS_futex, &channel.header->replySeq, FUTEX_WAKE, 1, nullptr, nullptr, 0);
    wokeChannelClient_ = true;
  }
  onReplySent(nullptr, UCS_OK, reply); // the observer sees it; freed
}

void Server::Impl::receivePending() {
  std::vector<PendingPut *> puts;
  puts.swap(toReceive_);
  for (PendingPut *put : puts) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FIELD_DATATYPE;
    param.cb.recv_am = &Impl::onPutReceived;
    param.user_data = put;
    // One block (a rendezvous put carries one, Client: "contiguous"): a
    // contiguous buffer, which UCX receives without unpacking an iov.
    bool contig = put->iov.size() == 1;
    param.datatype = contig ? ucp_dt_make_contig(1) : UCP_DATATYPE_IOV;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(
        worker_->handle(), put->descriptor,
        contig ? put->iov[0].buffer : static_cast<void *>(put->iov.data()),
        contig ? put->iov[0].length : put->iov.size(), &param);
    if (req == nullptr)
      finishPut(put, true);
    else if (UCS_PTR_IS_ERR(req))
      finishPut(put, false);
  }
}

void Server::Impl::onPutReceived(void *request, ucs_status_t status, size_t, void *user) {
  auto *put = static_cast<PendingPut *>(user);
  ucp_request_free(request);
  put->owner->finishPut(put, status == UCS_OK);
}

void Server::Impl::putPart(ucp_ep_h ep, const MessageHeader &h, const BlockMeta &m,
                           const void *data, size_t length, bool rendezvous,
                           Clock::time_point start) {
  auto &parts = partial_[ep];
  auto it = parts.find(h.requestId);
  uint64_t offset = uint64_t(m.slot) * wire::kPartAlignment;
  auto fail = [&](const std::string &why) {
    if (it != parts.end()) {
      if (it->second.block)
        pool_.release(it->second.block->bytes);
      parts.erase(it);
    }
    if (parts.empty())
      partial_.erase(ep);
    refuse(ep, h, why);
  };
  // The bytes are copied out of UCX's buffer as they come; a part that
  // comes by rendezvous (the client sends them eagerly) is not ours.
  if (rendezvous)
    return fail("put parts come eagerly");
  if (it == parts.end()) {
    if (offset != 0)
      return fail("put part at offset " + std::to_string(offset) + " of a block not begun");
    if (parts.size() >= wire::kMaxBlocksInParts)
      return fail("more than " + std::to_string(wire::kMaxBlocksInParts) +
                  " blocks begun in parts and not finished");
    if (m.bytes < 2 * wire::kPartAlignment || m.bytes > options_.maxBlockBytes)
      return fail("a block in parts has " + std::to_string(m.bytes) + " bytes; 2048.." +
                  std::to_string(options_.maxBlockBytes));
    PartialPut put;
    put.first = m;
    put.start = start;
    std::string dtype = wire::dtypeOf(m);
    if (!isValidDtype(dtype)) {
      put.code = Code::Rejected;
      pool_.countRejected();
    } else if (!pool_.reserve(m.bytes)) {
      put.code = Code::NoSpace;
    } else if (!(put.block = allocateBlock(m.bytes))) {
      put.code = Code::NoSpace;
    } else {
      std::memcpy(put.block->key.bytes.data(), m.key, sizeof m.key);
      put.block->dtype = dtype;
      put.sum = std::make_unique<PartChecksum>();
    }
    it = parts.emplace(h.requestId, std::move(put)).first;
  }
  PartialPut &put = it->second;
  if (std::memcmp(m.key, put.first.key, sizeof m.key) != 0 ||
      std::memcmp(m.dtype, put.first.dtype, sizeof m.dtype) != 0 || m.bytes != put.first.bytes)
    return fail("a put part's record differs from its block's first part");
  if (offset != put.next)
    return fail("put part at offset " + std::to_string(offset) + " where " +
                std::to_string(put.next) + " was due");
  bool last = offset + length == m.bytes;
  if (length < wire::kPartAlignment || offset + length > m.bytes ||
      (!last && length % wire::kPartAlignment != 0))
    return fail("a put part of " + std::to_string(length) + " bytes at offset " +
                std::to_string(offset) + " of a " + std::to_string(m.bytes) +
                "-byte block (parts: multiples of 1024 bytes but the last, of at least 1024)");
  put.next += length;
  uint64_t sum = 0;
  if (put.block) {
    uint8_t *to = put.block->data.get() + offset;
    if (last)
      sum = put.sum->finish(to, data, length, m.bytes);
    else
      put.sum->add(to, data, length);
  }
  if (!last)
    return;
  Code code = put.code;
  if (put.block) {
    if (sum != m.checksum) {
      pool_.release(put.block->bytes); // corrupted or mislabelled: never stored
      pool_.countRejected();
      code = Code::Rejected;
    } else {
      put.block->checksum = sum;
      pool_.insert(std::move(put.block));
      code = Code::Stored;
    }
  }
  BlockMeta record = put.first;
  record.checksum = m.checksum;
  record.slot = 0;
  record.code = static_cast<uint32_t>(code);
  Reply *reply = replyFor(h, {record});
  reply->op = Operation::Put;
  reply->start = put.start;
  reply->bytes = m.bytes;
  reply->blocks = 1;
  parts.erase(it);
  if (parts.empty())
    partial_.erase(ep);
  send(ep, reply);
}

void Server::Impl::finishPut(PendingPut *put, bool received) {
  uint32_t rejected = 0;
  for (size_t i = 0; i < put->blocks.size(); ++i) {
    auto &block = put->blocks[i];
    if (!block)
      continue;
    if (!received) {
      pool_.release(block->bytes);
      put->codes[i] = Code::Rejected;
      ++rejected;
    } else if ((put->sums.empty() ? blockChecksum(block->data.get(), block->bytes)
                                  : put->sums[i]) != block->checksum) {
      pool_.release(block->bytes); // corrupted or mislabelled: never stored
      put->codes[i] = Code::Rejected;
      ++rejected;
    } else {
      pool_.insert(std::move(block));
      put->codes[i] = Code::Stored;
    }
  }
  if (rejected)
    pool_.countRejected(rejected);

  auto *reply = new Reply();
  reply->owner = this;
  reply->op = Operation::Put;
  reply->start = put->start;
  reply->bytes = put->bytes;
  reply->blocks = put->header.count;
  MessageHeader rh;
  rh.op = put->header.op;
  rh.requestId = put->header.requestId;
  rh.count = put->header.count;
  reply->header.resize(sizeof rh + rh.count * sizeof(BlockMeta));
  std::memcpy(reply->header.data(), &rh, sizeof rh);
  for (uint32_t i = 0; i < rh.count; ++i) {
    BlockMeta m = put->metas[i];
    m.code = static_cast<uint32_t>(put->codes[i]);
    std::memcpy(reply->header.data() + sizeof rh + i * sizeof m, &m, sizeof m);
  }
  ucp_ep_h ep = put->ep;
  delete put;
  send(ep, reply);
}

void Server::Impl::run() {
  // Clients know this thread runs while it holds the lock (before any
  // Hello is answered, so every client that maps the segment finds it).
  if (index_)
    index_->holdLivenessLock();
  auto lastActivity = Clock::now();
  while (!stopping_) {
    bool busy = worker_->progress();
    if (!channels_.empty() && serveChannels()) {
      busy = true;
      lastChannelRequest_ = Clock::now();
      // Decided after the reply went out, off the client's path.
      // A client that posted without waiting (a pipelined put) is running,
      // counted; one just woken is counted here.
      channelSpinNow_ = options_.channelSpin;
      if (options_.idleChannelSpin > channelSpinNow_ && idleCpu_.spare(wokeChannelClient_ ? 1 : 0))
        channelSpinNow_ = options_.idleChannelSpin;
      wokeChannelClient_ = false;
    }
    if (!toReceive_.empty()) {
      receivePending();
      busy = true;
    }
    // Endpoints that did not finish the handshake in time are dropped.
    if (!handshakes_.empty()) {
      const auto now = Clock::now();
      std::vector<ucp_ep_h> late;
      for (const auto &[ep, h] : handshakes_)
        if (now >= h.deadline)
          late.push_back(ep);
      for (ucp_ep_h ep : late)
        drop(ep);
    }
    for (ucp_ep_h ep : failedEndpoints_)
      ucx::closeEndpoint(*worker_, ep, /*force=*/true);
    failedEndpoints_.clear();
    // Sleep on the event fd when idle (network events or ucp_worker_signal
    // from stop() wake it); spinning without bound measured slower on a
    // shared machine, so at most pollBeforeSleep after the last activity.
    if (busy) {
      lastActivity = Clock::now();
      continue;
    }
    auto now = Clock::now();
    if (!channels_.empty() && now - lastChannelRequest_ < channelSpinNow_) {
      // A channel client's next request usually comes within its copy of a
      // block: look for it with memory loads only, progressing UCX (a
      // system call) every few microseconds.
      for (int i = 0; i < 512 && !channelPending(); ++i)
        wire::cpuRelax();
      continue;
    }
    if (now - lastActivity < options_.pollBeforeSleep)
      continue;
    if (channels_.empty()) {
      if (options_.idlePoll > options_.pollBeforeSleep && now - lastActivity < options_.idlePoll) {
        if (now - idlePollChecked_ >= std::chrono::milliseconds(1)) {
          idlePollChecked_ = now;
          idlePollSpare_ = idleCpu_.spare(0);
        }
        if (idlePollSpare_)
          continue;
      }
      worker_->wait(100);
      continue;
    }
    // Say that we sleep, then look once more: a client that wrote its
    // request before seeing the word is caught here, one that saw it
    // writes to the wake pipe (both sides' accesses are seq_cst).
    std::atomic_ref<uint32_t>(storeSleeping()).store(1, std::memory_order_seq_cst);
    if (!channelPending())
      worker_->wait(100, wakePipe_[0]);
    std::atomic_ref<uint32_t>(storeSleeping()).store(0, std::memory_order_seq_cst);
    char drain[64];
    while (read(wakePipe_[0], drain, sizeof drain) > 0) {
    }
  }
  // Shut down on the thread that owns the worker. Clients stop serving
  // gets from the segment first (they fail the call, as on a lost store).
  if (index_)
    index_->close();
  for (ucp_ep_h ep : endpoints_)
    ucx::closeEndpoint(*worker_, ep, /*force=*/true);
  endpoints_.clear();
  handshakes_.clear();
  pins_.clear();
  spares_.clear();
  for (auto &[ep, held] : rooms_)
    for (auto &[slot, block] : held)
      pool_.release(block->bytes);
  rooms_.clear();
  roomBytes_.clear();
  while (!channels_.empty())
    freeChannel(channels_.begin()->first);
  for (auto &[ep, held] : reservations_)
    for (auto &[slot, block] : held)
      pool_.release(block->bytes);
  reservations_.clear();
  connections_ = 0;
  if (listener_)
    ucp_listener_destroy(listener_);
  listener_ = nullptr;
  worker_->progress();
  for (PendingPut *put : toReceive_) {
    for (auto &block : put->blocks)
      if (block)
        pool_.release(block->bytes);
    ucp_am_data_release(worker_->handle(), put->descriptor);
    delete put;
  }
  toReceive_.clear();
}

void Server::Impl::stop() {
  if (stopped_)
    return;
  stopped_ = true;
  stopping_ = true;
  ucp_worker_signal(worker_->handle());
  if (thread_.joinable())
    thread_.join();
  worker_.reset();
}

// ---------------------------------------------------------------------------

Status validate(const ServerOptions &options) {
  if (options.capacityBytes == 0)
    return Status::error("kv store capacity (capacityBytes, store.capacity-bytes) must be at "
                         "least one byte");
  if (options.maxBlockBytes == 0)
    return Status::error("kv store max block size (maxBlockBytes, store.max-block-bytes) must "
                         "be at least one byte");
  if (!wire::validPartBytes(options.partBytes))
    return Status::error("kv store: the part size (partBytes, store.part-bytes) must be a "
                         "multiple of 1024 up to 1 MiB (0: whole blocks), not " +
                         std::to_string(options.partBytes));
  if (options.clusterSecret && options.clusterSecret->size() < auth::kMinSecretBytes)
    return Status::error("kv store: the cluster secret must have at least " +
                         std::to_string(auth::kMinSecretBytes) + " bytes");
  return Status::ok();
}

Result<std::unique_ptr<Server>> Server::start(const ServerOptions &options,
                                              OperationObserver observer) {
  if (auto st = validate(options); !st)
    return st;
  auto impl = std::make_unique<Impl>(options, std::move(observer));
  if (auto st = impl->open(); !st)
    return st;
  Impl *raw = impl.get();
  impl->thread_ = std::thread([raw] { raw->run(); });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { stop(); }
void Server::stop() { impl_->stop(); }
uint16_t Server::port() const { return impl_->port_; }
PoolStats Server::stats() const { return impl_->stats(); }
uint64_t Server::connections() const { return impl_->connections_; }
std::string Server::sharedMemoryStatus() const { return impl_->arenaStatus_; }

} // namespace llmir::kvstore
