#include "llmir/kvstore/Client.h"

#include "IdleCpu.h"
#include "SharedArena.h"
#include "SharedIndex.h"
#include "Ucx.h"
#include "Wire.h"

#include "llmir/support/ClusterAuth.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <poll.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

namespace llmir::kvstore {

// Parts on the wire are what PartChecksum hashes part by part.
static_assert(wire::kPartAlignment == PartChecksum::kPartAlignment);

using Clock = std::chrono::steady_clock;
using wire::BlockMeta;
using wire::Code;
using wire::MessageHeader;

const char *blockStatusName(BlockStatus status) {
  switch (status) {
  case BlockStatus::Stored: return "stored";
  case BlockStatus::Found: return "found";
  case BlockStatus::Missing: return "missing";
  case BlockStatus::Rejected: return "rejected";
  case BlockStatus::NoSpace: return "no-space";
  }
  return "?";
}

namespace {

// A block's bytes larger than this in a reply mark the reply as malformed
// (the store's own limit is far below).
constexpr uint64_t kMaxReplyBlockBytes = 1ull << 32;

constexpr uint32_t kNoRecord = UINT32_MAX;

// One request message of the current call, awaiting its reply.
struct Message {
  uint64_t id = 0;
  wire::Op op = wire::Op::Get;
  size_t first = 0;   // index of its first block in the call
  uint32_t count = 0;
  std::vector<uint8_t> header;
  std::vector<std::vector<uint8_t>> partHeaders; // PutPart: one per part, alive while sent
  std::vector<ucp_dt_iov_t> iov;  // put payload / get destinations
  // get: the reply record of each destination in `iov` (kNoRecord: scratch
  // for bytes that are not what was asked for).
  std::vector<uint32_t> iovRecord;
  std::vector<BlockMeta> replies; // get: for checksum verification
  bool done = false;
  bool verified = false;          // get: checksums already compared
  Client::Impl *owner = nullptr;  // rendezvous: the client verifying on arrival
  void *descriptor = nullptr;     // rendezvous reply data still to pull
  // GetParts: a reply in parts being received (the first part set them):
  // the XXH3 so far, where the bytes go (the caller's destination, or
  // partScratch for a block that is not what was asked for), the offset due.
  std::unique_ptr<PartChecksum> partSum;
  uint8_t *partTarget = nullptr;
  uint64_t partNext = 0;
  std::vector<uint8_t> partScratch;
};

} // namespace

class Client::Impl {
public:
  explicit Impl(const ClientOptions &options) : options_(options) {}
  ~Impl() {
    // The last pipelined put's commit reaches the store before we go (it
    // would free the room with our endpoint otherwise).
    if (pipelinedPending_) {
      auto limit = std::min<std::chrono::milliseconds>(options_.timeout, std::chrono::seconds(1));
      (void)finishPipelined(Clock::now() + limit, limit.count());
    }
    disconnect(/*force=*/false); // a clean close, seen by the store
    worker_.reset();
  }

  Result<std::vector<BlockStatus>> call(wire::Op op, size_t n, Timeout timeout);
  /// Connects, authenticates and learns whether the store's segment can be
  /// mapped; then sends one call's messages and waits for their replies.
  Status prepare(Clock::time_point deadline, int64_t limitMs);
  Status exchange(wire::Op op, size_t n, Clock::time_point deadline, int64_t limitMs);
  /// Whether a put's block of `bytes` goes in parts (ClientOptions::partBytes):
  /// more than two parts' worth (a block of exactly two measured no faster
  /// in parts, docs/performance.md "kv12").
  bool inParts_(uint64_t bytes) const {
    return options_.partBytes > 0 && bytes > 2 * options_.partBytes;
  }
  /// A shared put's copy of a block into its room in the segment, hashed
  /// (ClientOptions::streamingPutBytes: past the caches from that size).
  uint64_t copyIntoRoom(uint8_t *room, const void *block, uint64_t bytes) const {
    if (options_.streamingPutBytes > 0 && bytes >= options_.streamingPutBytes)
      return copyWithChecksumStreaming(room, block, bytes);
    return copyWithChecksum(room, block, bytes);
  }
  /// Whether a shared get of a block of `bytes` writes its destination past
  /// the caches (ClientOptions::streamingGetBytes).
  bool getStreams(uint64_t bytes) const {
    return options_.streamingGetBytes > 0 && bytes >= options_.streamingGetBytes;
  }
  /// Whether a put's block of `bytes` sends its checksum in a trailing part
  /// (ClientOptions::trailingChecksumBytes).
  bool trailingChecksum_(uint64_t bytes) const {
    return options_.trailingChecksumBytes > 0 && bytes >= options_.trailingChecksumBytes &&
           bytes >= 2 * wire::kPartAlignment;
  }
  /// Sends put block `index` as PutPart messages; false (failure_ set) when
  /// a send fails. With a trailing checksum each part is hashed after it is
  /// handed to UCX and the last (1-2 KiB) carries the block's XXH3;
  /// otherwise each part is hashed just before it goes.
  bool sendInParts(size_t index, Clock::time_point deadline, int64_t limitMs);
  /// Hashes `bytes` of a part already handed to UCX, progressing the worker
  /// between slices while its send is in progress (partSendsPending_), so
  /// that UCX keeps writing a send the socket took only in part.
  void hashSentPart(PartChecksum &sum, const uint8_t *bytes, uint64_t length);
  /// Sends of a block's parts (with a trailing checksum) not yet complete.
  /// Each part goes only when the one before it is sent: with the worker
  /// progressed between sends (while the client hashes), UCX 1.13 sent a
  /// part at once while an earlier one of the same endpoint waited in its
  /// pending queue (observed: the store received a 1 KiB checksum part, or
  /// a block's third part, before its first).
  uint32_t partSendsPending_ = 0;
  static void onPartSent(void *request, ucs_status_t status, void *user);
  /// One part of a GetParts reply (record `m`, its offset `at`): copied into
  /// the destination while hashed; the last compares the block's XXH3.
  ucs_status_t receivePart(Message &message, const BlockMeta &m, uint64_t at, const void *data,
                           size_t length, bool rendezvous);
  Status hello(Clock::time_point deadline, int64_t limitMs);
  /// A request of only a header (`op`) and its reply, within `deadline`;
  /// `what` names it in errors.
  Status headerOnlyCall(wire::Op op, const std::string &what, Clock::time_point deadline,
                        int64_t limitMs);
  /// Asks for a request channel in the mapped segment; without one (an
  /// older store, no room) requests stay on the endpoint.
  Status openChannel(Clock::time_point deadline, int64_t limitMs);
  /// Publishes the request of `length` bytes already in the request area;
  /// its sequence number.
  uint32_t postOnChannel(uint32_t length);
  /// Waits for the reply to `seq`; sets failure_ when none comes.
  void awaitOnChannel(uint32_t seq, Clock::time_point deadline, int64_t limitMs);
  /// A put served by rooms the store handed out ahead (PutPipelined):
  /// copied in and committed without waiting; nullopt when the rooms are
  /// not there (the call then takes the round trip).
  Result<std::optional<std::vector<BlockStatus>>> putPipelined(size_t n,
                                                               Clock::time_point deadline,
                                                               int64_t limitMs);
  /// Posts a PutPipelined of `records` (left pending: its reply is read by
  /// finishPipelined, before the channel carries anything else).
  void postPipelined(std::vector<BlockMeta> records);
  /// Reads the pending PutPipelined's reply: its rooms join rooms_; a
  /// commit the store did not store is counted (pipelinedRefused_).
  Status finishPipelined(Clock::time_point deadline, int64_t limitMs);
  /// Gives back to the store the rooms whose size no block of the current
  /// put has (every room with `all`), as many per request as the channel
  /// carries, waiting for each.
  Status giveBackRooms(bool all, size_t n, Clock::time_point deadline, int64_t limitMs);
  /// One message's request and reply through the channel.
  Status exchangeOnChannel(wire::Op op, size_t n, Clock::time_point deadline,
                           int64_t limitMs);
  void closeChannel();
  bool sharedMemoryAllowed() const;
  /// A get served from the store's index where it can be (SharedIndex.h);
  /// the other blocks go to the store through the channel.
  Result<std::vector<BlockStatus>> getFromIndex(size_t n, Clock::time_point deadline,
                                                int64_t limitMs);
  /// Whether the store behind the mapped segment stopped serving it: it
  /// said so (a clean stop), or its liveness lock shows no live holder and
  /// its process exited (a pidfd of it polls readable) or, without a pidfd,
  /// the endpoint reported the peer lost.
  bool storeGone();

  ClientOptions options_;
  // Whether the host has a CPU to spare for polling (ClientOptions::idlePoll).
  IdleCpuProbe idleCpu_;
  std::unique_ptr<ucx::Worker> worker_;
  size_t maxBlocksPerMessage_ = 0;
  ucp_ep_h ep_ = nullptr;
  bool authenticated_ = false;            // the current endpoint passed the handshake
  std::optional<std::string> authReply_;  // the store's last handshake message
  std::string authOut_[2];                // hello and proof, alive while sent
  bool endpointFailed_ = false;
  ucs_status_t endpointError_ = UCS_OK;
  uint64_t nextId_ = 1;
  std::map<uint64_t, Message> messages_;
  std::vector<Message *> toReceive_;
  std::string failure_;
  std::vector<uint8_t> scratch_;
  wire::Op op_ = wire::Op::Get; // of the messages being built
  // The store's shared-memory segment, mapped (null: bytes go in messages),
  // and what the Hello on the current endpoint found.
  std::unique_ptr<ArenaMapping> arena_;
  bool helloDone_ = false;
  std::optional<wire::ArenaOffer> offer_;
  std::string arenaNote_;
  std::vector<uint32_t> slots_;      // shared put: the reserved slot per block
  std::vector<uint64_t> checksums_;  // shared put: checksum of what was copied
  // Room the store reserved ahead for our next shared put (slot, bytes),
  // from the last PutCommitAhead reply; the store frees it at our next commit.
  std::vector<std::pair<uint32_t, uint64_t>> spares_;
  // The request channel in the mapped segment (null: requests go on the
  // endpoint), the store's wake pipe, opened read-write so that it always
  // has a reader (a write then never raises SIGPIPE, even after the store
  // died), and the last request's sequence number.
  uint8_t *channel_ = nullptr;
  uint32_t channelBytes_ = 0;
  int wakeFd_ = -1;
  uint32_t channelSeq_ = 0;
  std::optional<wire::ChannelOffer> channelOffer_;
  std::vector<uint8_t> channelReply_;
  // The store's index in the mapped segment (gets served here without a
  // request; needs the channel, whose header carries their counters), and
  // a pidfd of the store's process (-1: none), which tells that it died.
  std::optional<index::Reader> index_;
  int storePidFd_ = -1;
  std::vector<GetBlock> askStore_;
  std::vector<size_t> askIndex_;
  // Pipelined puts: rooms the store reserved for ours (slot, bytes), the
  // PutPipelined whose reply is still to read, commits it did not store
  // (never in normal operation: the client checked size and dtype, the
  // budget was reserved with the room), and whether the store refused
  // rooms on this connection (then puts take the round trip).
  std::vector<std::pair<uint32_t, uint64_t>> rooms_;
  bool pipelinedPending_ = false;
  uint32_t pendingSeq_ = 0;
  uint64_t pendingId_ = 0;
  std::vector<BlockMeta> pendingRecords_;
  uint64_t pipelinedRefused_ = 0;
  bool pipelinedOff_ = false;

  // The blocks of the current call (one of them is set).
  std::span<const PutBlock> putBlocks_;
  std::span<const GetBlock> getBlocks_;
  std::span<const BlockQuery> queries_;
  std::vector<BlockStatus> statuses_;

  std::string where() const {
    return "kv store " + options_.host + ":" + std::to_string(options_.port);
  }
  /// The failure of a call whose endpoint failed (endpointFailed_).
  std::string connectionLost() const {
    return where() + " is unreachable or the connection was lost: " +
           ucx::errorText(endpointError_);
  }
  Status ensureWorker();
  Status connect();
  /// The cluster handshake on a fresh endpoint, within `deadline`.
  Status authenticate(Clock::time_point deadline);
  Status sendAuth(std::string &bytes);
  /// Progresses until `done`, the endpoint fails or `deadline`; `what` names
  /// the awaited step in the error.
  Status progressUntil(const std::function<bool()> &done, Clock::time_point deadline,
                       const std::string &what);
  void disconnect(bool force);
  void fillRecord(size_t index, BlockMeta &m) const;
  void verify(Message &message);
  void receivePending();

  static void onEndpointError(void *arg, ucp_ep_h ep, ucs_status_t status);
  static void onSent(void *request, ucs_status_t status, void *user);
  /// An active-message send of this endpoint: completion to onSent, the
  /// store may reply.
  ucp_request_param_t sendParams(ucp_datatype_t datatype) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = &Impl::onSent;
    param.user_data = this;
    param.flags = UCP_AM_SEND_FLAG_REPLY;
    param.datatype = datatype;
    return param;
  }
  static void onReceived(void *request, ucs_status_t status, size_t length, void *user);
  static ucs_status_t onReply(void *arg, const void *header, size_t headerLength,
                              void *data, size_t length, const ucp_am_recv_param_t *param);
  static ucs_status_t onAuthReply(void *arg, const void *header, size_t headerLength,
                                  void *data, size_t length,
                                  const ucp_am_recv_param_t *param);
  ucs_status_t handleReply(const void *header, size_t headerLength, void *data,
                           size_t length, bool rendezvous);
};

Status Client::Impl::ensureWorker() {
  if (worker_)
    return Status::ok();
  auto worker = ucx::Worker::create(/*listener=*/false, options_.tcpCongestion);
  if (!worker)
    return worker.status();
  worker_ = std::move(*worker);
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  handler.id = wire::kAmReply;
  handler.cb = &Impl::onReply;
  handler.arg = this;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  ucs_status_t st = ucp_worker_set_am_recv_handler(worker_->handle(), &handler);
  if (st != UCS_OK)
    return Status::error("UCX active-message handler: " + ucx::errorText(st));
  handler.id = wire::kAmAuthReply;
  handler.cb = &Impl::onAuthReply;
  st = ucp_worker_set_am_recv_handler(worker_->handle(), &handler);
  if (st != UCS_OK)
    return Status::error("UCX active-message handler: " + ucx::errorText(st));
  size_t room = worker_->maxAmHeader() > sizeof(MessageHeader)
                    ? (worker_->maxAmHeader() - sizeof(MessageHeader)) / sizeof(BlockMeta)
                    : 0;
  maxBlocksPerMessage_ = std::min<size_t>(room, 4096);
  if (maxBlocksPerMessage_ == 0)
    return Status::error("UCX transport allows active-message headers of only " +
                         std::to_string(worker_->maxAmHeader()) + " bytes");
  return Status::ok();
}

Status Client::Impl::connect() {
  LLMIR_RETURN_IF_ERROR(ensureWorker());
  if (ep_)
    return Status::ok();
  socklen_t length = 0;
  auto address = ucx::resolve(options_.host, options_.port, length);
  if (!address)
    return address.status().withContext(where());
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                  UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr *>(&*address);
  ep.sockaddr.addrlen = length;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &Impl::onEndpointError;
  ep.err_handler.arg = this;
  endpointFailed_ = false;
  ucs_status_t st = ucp_ep_create(worker_->handle(), &ep, &ep_);
  if (st != UCS_OK) {
    ep_ = nullptr;
    return Status::error(where() + ": cannot connect: " + ucx::errorText(st));
  }
  return Status::ok();
}

// Drops the connection and the worker: no operation of a failed call can
// write into its caller's buffers after this returns.
void Client::Impl::disconnect(bool force) {
  if (ep_ && worker_)
    ucx::closeEndpoint(*worker_, ep_, force || endpointFailed_);
  ep_ = nullptr;
  authenticated_ = false;
  authReply_.reset();
  // A restarted store has another segment; a dead one's pages are freed.
  index_.reset();
  rooms_.clear();
  pipelinedPending_ = false;
  pendingRecords_.clear();
  pipelinedOff_ = false;
  if (storePidFd_ >= 0)
    ::close(storePidFd_);
  storePidFd_ = -1;
  closeChannel();
  arena_.reset();
  spares_.clear();
  helloDone_ = false;
  offer_.reset();
  for (Message *m : toReceive_)
    if (m->descriptor)
      ucp_am_data_release(worker_->handle(), m->descriptor);
  toReceive_.clear();
  // Destroying the worker completes (cancels) its requests, whose callbacks
  // still see their messages; only then are the messages freed.
  if (force)
    worker_.reset();
  else if (worker_)
    worker_->progress();
  messages_.clear();
  partSendsPending_ = 0; // their requests went with the endpoint
}

ucs_status_t Client::Impl::onAuthReply(void *arg, const void *header, size_t headerLength,
                                       void *, size_t, const ucp_am_recv_param_t *) {
  static_cast<Impl *>(arg)->authReply_ =
      std::string(static_cast<const char *>(header), headerLength);
  return UCS_OK;
}

Status Client::Impl::progressUntil(const std::function<bool()> &done,
                                   Clock::time_point deadline, const std::string &what) {
  auto lastActivity = Clock::now();
  for (;;) {
    bool busy = worker_->progress();
    if (done())
      return Status::ok();
    if (!failure_.empty())
      return Status::error(failure_);
    if (endpointFailed_)
      return Status::error(where() + " closed the connection " + what + ": " +
                           ucx::errorText(endpointError_));
    auto now = Clock::now();
    if (now >= deadline)
      return Status::error(where() + ": no answer " + what);
    if (busy)
      lastActivity = now;
    else if (now - lastActivity >= options_.pollBeforeSleep) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      worker_->wait(static_cast<int>(std::clamp<int64_t>(left.count(), 1, 10)));
    }
  }
}

Status Client::Impl::sendAuth(std::string &bytes) {
  ucp_request_param_t param = sendParams(ucp_dt_make_contig(1));
  ucs_status_ptr_t req = ucp_am_send_nbx(ep_, wire::kAmAuth, bytes.data(), bytes.size(),
                                         nullptr, 0, &param);
  if (UCS_PTR_IS_ERR(req))
    return Status::error(where() + ": cluster handshake: send failed: " +
                         ucx::errorText(UCS_PTR_STATUS(req)));
  return Status::ok();
}

Status Client::Impl::authenticate(Clock::time_point deadline) {
  auth::ClientHandshake handshake(*options_.clusterSecret);
  authReply_.reset();
  authOut_[0] = handshake.hello();
  LLMIR_RETURN_IF_ERROR(sendAuth(authOut_[0]));
  LLMIR_RETURN_IF_ERROR(progressUntil([&] { return authReply_.has_value(); }, deadline,
                                      "to the cluster handshake"));
  if (*authReply_ == std::string(1, wire::kNoSecret))
    return Status::error(where() + " holds no cluster secret; a client with one does not "
                                   "use it (the handshake proves the store, too)");
  auto proof = handshake.answer(*authReply_);
  if (!proof)
    return proof.status().withContext(where());
  authReply_.reset();
  authOut_[1] = std::move(*proof);
  LLMIR_RETURN_IF_ERROR(sendAuth(authOut_[1]));
  LLMIR_RETURN_IF_ERROR(progressUntil([&] { return authReply_.has_value(); }, deadline,
                                      "accepting our cluster proof"));
  if (*authReply_ != std::string(1, auth::kAcceptByte))
    return Status::error(where() + ": cluster handshake: the store did not accept our proof");
  authenticated_ = true;
  return Status::ok();
}

void Client::Impl::onEndpointError(void *arg, ucp_ep_h, ucs_status_t status) {
  auto *self = static_cast<Impl *>(arg);
  self->endpointFailed_ = true;
  self->endpointError_ = status;
}

void Client::Impl::onSent(void *request, ucs_status_t status, void *user) {
  auto *self = static_cast<Impl *>(user);
  if (status != UCS_OK && status != UCS_ERR_CANCELED && self->failure_.empty())
    self->failure_ = self->where() + ": send failed: " + ucx::errorText(status);
  if (request)
    ucp_request_free(request);
}

ucs_status_t Client::Impl::onReply(void *arg, const void *header, size_t headerLength,
                                   void *data, size_t length,
                                   const ucp_am_recv_param_t *param) {
  return static_cast<Impl *>(arg)->handleReply(header, headerLength, data, length,
                                               param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV);
}

ucs_status_t Client::Impl::receivePart(Message &message, const BlockMeta &m, uint64_t at,
                                       const void *data, size_t length, bool rendezvous) {
  auto malformed = [&](const std::string &why) {
    failure_ = where() + ": malformed reply (" + why + ")";
    message.done = true;
    return UCS_OK;
  };
  const size_t index = message.first;
  if (rendezvous)
    return malformed("a get reply's part by rendezvous");
  if (!message.partSum) {
    if (at != 0)
      return malformed("a get reply's part before its first");
    if (m.bytes > kMaxReplyBlockBytes || m.bytes < 2 * wire::kPartAlignment)
      return malformed("a block in parts of " + std::to_string(m.bytes) + " bytes");
    const GetBlock &g = getBlocks_[index];
    message.replies.assign(1, m);
    if (std::memcmp(m.key, g.key.bytes.data(), sizeof m.key) == 0 && wire::dtypeOf(m) == g.dtype &&
        m.bytes == g.bytes) {
      message.partTarget = static_cast<uint8_t *>(g.destination);
      statuses_[index] = BlockStatus::Found; // until its checksum is verified
    } else {
      // Not what was asked for: its bytes go to scratch, never to the caller.
      message.partScratch.resize(m.bytes);
      message.partTarget = message.partScratch.data();
      statuses_[index] = BlockStatus::Rejected;
    }
    message.partSum = std::make_unique<PartChecksum>();
    message.partNext = 0;
  } else {
    const BlockMeta &first = message.replies[0];
    if (std::memcmp(m.key, first.key, sizeof m.key) != 0 ||
        std::memcmp(m.dtype, first.dtype, sizeof m.dtype) != 0 || m.bytes != first.bytes ||
        m.checksum != first.checksum)
      return malformed("a get reply's part unlike its first");
  }
  if (at != message.partNext)
    return malformed("a get reply's part at offset " + std::to_string(at) + " where " +
                     std::to_string(message.partNext) + " was due");
  const bool last = at + length == m.bytes;
  if (length < wire::kPartAlignment || at + length > m.bytes ||
      (!last && length % wire::kPartAlignment != 0))
    return malformed("a get reply's part of " + std::to_string(length) + " bytes");
  if (!last) {
    message.partSum->add(message.partTarget + at, data, length);
    message.partNext += length;
    return UCS_OK; // more to come
  }
  uint64_t sum = message.partSum->finish(message.partTarget + at, data, length, m.bytes);
  if (sum != m.checksum)
    statuses_[index] = BlockStatus::Rejected;
  message.partSum.reset();
  message.partScratch = {};
  message.verified = true;
  message.done = true;
  return UCS_OK;
}

ucs_status_t Client::Impl::handleReply(const void *header, size_t headerLength, void *data,
                                       size_t length, bool rendezvous) {
  MessageHeader h{};
  if (headerLength < sizeof h)
    return UCS_OK;
  std::memcpy(&h, header, sizeof h);
  auto it = messages_.find(h.requestId);
  if (h.magic != wire::kMagic || it == messages_.end() || it->second.done)
    return UCS_OK; // a late reply to a call that already failed: dropped
  Message &message = it->second;
  if (message.op == wire::Op::GetParts && h.op == uint16_t(wire::Op::GetParts) &&
      h.errorLength == 0 && h.count == 1 && headerLength == sizeof h + sizeof(BlockMeta)) {
    BlockMeta m;
    std::memcpy(&m, static_cast<const uint8_t *>(header) + sizeof h, sizeof m);
    uint64_t at = uint64_t(m.slot) * wire::kPartAlignment;
    if (static_cast<Code>(m.code) == Code::Found && (at != 0 || length < m.bytes))
      return receivePart(message, m, at, data, length, rendezvous);
  }
  message.done = true;
  const auto *bytes = static_cast<const uint8_t *>(header);
  if (message.op == wire::Op::OpenChannel) {
    // A store that predates the channel refuses it: requests stay on UCX.
    if (!h.errorLength && headerLength == sizeof h + sizeof(wire::ChannelOffer)) {
      wire::ChannelOffer offer;
      std::memcpy(&offer, bytes + sizeof h, sizeof offer);
      channelOffer_ = offer;
    }
    return UCS_OK;
  }
  if (message.op == wire::Op::Hello) {
    // A store without a segment (or one that predates Hello and refuses it)
    // leaves offer_ empty: bytes then travel in messages.
    if (!h.errorLength && headerLength == sizeof h + sizeof(wire::ArenaOffer)) {
      wire::ArenaOffer offer;
      std::memcpy(&offer, bytes + sizeof h, sizeof offer);
      offer_ = offer;
    }
    return UCS_OK;
  }
  if (h.errorLength) {
    if (headerLength != sizeof h + h.errorLength)
      failure_ = where() + ": malformed error reply";
    else
      failure_ = where() + " refused the request: " +
                 std::string(reinterpret_cast<const char *>(bytes + sizeof h), h.errorLength);
    return UCS_OK;
  }
  if (h.count != message.count || h.op != static_cast<uint16_t>(message.op) ||
      headerLength != sizeof h + size_t(h.count) * sizeof(BlockMeta)) {
    failure_ = where() + ": malformed reply (" + std::to_string(h.count) +
               " records for a request of " + std::to_string(message.count) + ")";
    return UCS_OK;
  }
  message.replies.resize(h.count);
  if (h.count > 0) // an empty vector's data() may be null
    std::memcpy(message.replies.data(), bytes + sizeof h, h.count * sizeof(BlockMeta));
  uint64_t expectedPayload = 0;
  for (uint32_t i = 0; i < h.count; ++i) {
    BlockMeta &m = message.replies[i];
    size_t index = message.first + i;
    BlockStatus status;
    switch (static_cast<Code>(m.code)) {
    case Code::Stored: status = BlockStatus::Stored; break;
    case Code::Found: status = BlockStatus::Found; break;
    case Code::Missing: status = BlockStatus::Missing; break;
    case Code::NoSpace: status = BlockStatus::NoSpace; break;
    default: status = BlockStatus::Rejected; break;
    }
    bool commit = message.op == wire::Op::PutCommit || message.op == wire::Op::PutCommitAhead;
    if ((message.op == wire::Op::Put || message.op == wire::Op::PutPart || commit) &&
        status != BlockStatus::Stored &&
        status != BlockStatus::NoSpace)
      status = BlockStatus::Rejected;
    if (message.op == wire::Op::PutCommitAhead && m.slot != 0) {
      uint64_t at = uint64_t(m.slot) * kArenaAlignment;
      if (!arena_ || m.bytes != putBlocks_[index].bytes || at + m.bytes > arena_->size()) {
        failure_ = where() + ": malformed reply (room ahead outside the segment)";
        return UCS_OK;
      }
      spares_.emplace_back(m.slot, m.bytes);
    }
    if (message.op == wire::Op::PutReserve) {
      if (static_cast<Code>(m.code) == Code::Reserved) {
        uint64_t at = uint64_t(m.slot) * kArenaAlignment;
        const PutBlock &p = putBlocks_[index];
        if (!arena_ || m.slot == 0 || m.bytes != p.bytes || at + p.bytes > arena_->size()) {
          failure_ = where() + ": malformed reply (reserved room outside the segment)";
          return UCS_OK;
        }
        slots_[index] = m.slot;
        status = BlockStatus::Stored; // until committed
      } else if (status != BlockStatus::NoSpace) {
        status = BlockStatus::Rejected;
      }
      statuses_[index] = status;
      continue;
    }
    if (message.op == wire::Op::GetShared) {
      if (status != BlockStatus::Found) {
        statuses_[index] = status == BlockStatus::Missing ? status : BlockStatus::Rejected;
        continue;
      }
      const GetBlock &g = getBlocks_[index];
      uint64_t at = uint64_t(m.slot) * kArenaAlignment;
      if (std::memcmp(m.key, g.key.bytes.data(), sizeof m.key) != 0 ||
          wire::dtypeOf(m) != g.dtype || m.bytes != g.bytes || !arena_ || m.slot == 0 ||
          at + g.bytes > arena_->size()) {
        statuses_[index] = BlockStatus::Rejected; // never copied to the caller
        continue;
      }
      // The store keeps the block alive until our next request; a mismatch
      // (a corrupted segment) is still caught by the checksum.
      const uint8_t *from = arena_->base() + at;
      uint64_t sum = getStreams(g.bytes) ? copyWithChecksumStreaming(g.destination, from, g.bytes)
                                         : copyWithChecksum(g.destination, from, g.bytes);
      statuses_[index] = sum == m.checksum ? BlockStatus::Found : BlockStatus::Rejected;
      continue;
    }
    if (message.op != wire::Op::Get && message.op != wire::Op::GetParts) {
      if (status == BlockStatus::Found) {
        const BlockQuery &q = queries_[index];
        if (std::memcmp(m.key, q.key.bytes.data(), sizeof m.key) != 0 ||
            wire::dtypeOf(m) != q.dtype || m.bytes != q.bytes)
          status = BlockStatus::Rejected;
      }
      statuses_[index] = status;
      continue;
    }
    if (status != BlockStatus::Found) {
      statuses_[index] = status == BlockStatus::Missing ? status : BlockStatus::Rejected;
      continue;
    }
    if (m.bytes > kMaxReplyBlockBytes) {
      failure_ = where() + ": malformed reply (block of " + std::to_string(m.bytes) +
                 " bytes)";
      return UCS_OK;
    }
    const GetBlock &g = getBlocks_[index];
    expectedPayload += m.bytes;
    if (std::memcmp(m.key, g.key.bytes.data(), sizeof m.key) == 0 &&
        wire::dtypeOf(m) == g.dtype && m.bytes == g.bytes) {
      statuses_[index] = BlockStatus::Found; // until its checksum is verified
      message.iov.push_back({g.destination, g.bytes});
      message.iovRecord.push_back(i);
    } else {
      // Not what was asked for: its bytes go to scratch, never to the caller.
      statuses_[index] = BlockStatus::Rejected;
      m.code = static_cast<uint32_t>(Code::Rejected);
      if (scratch_.size() < m.bytes)
        scratch_.resize(m.bytes);
      message.iov.push_back({scratch_.data(), m.bytes});
      message.iovRecord.push_back(kNoRecord);
    }
  }
  if (expectedPayload != length) {
    failure_ = where() + ": malformed reply (" + std::to_string(length) +
               " payload bytes for " + std::to_string(expectedPayload) + ")";
    return UCS_OK;
  }
  if (length == 0)
    return UCS_OK;
  if (rendezvous) {
    message.done = false; // until the bytes have arrived
    message.descriptor = data;
    toReceive_.push_back(&message);
    return UCS_INPROGRESS;
  }
  // Eager: the bytes are in UCX's buffer. Copy each block out and hash it in
  // one pass (as the shared-memory get does): a copy and then a hash read
  // every byte twice (docs/performance.md, "TCP, branch kv8").
  const auto *src = static_cast<const uint8_t *>(data);
  for (size_t v = 0; v < message.iov.size(); ++v) {
    uint32_t record = message.iovRecord[v];
    if (record != kNoRecord) {
      size_t index = message.first + record;
      uint64_t sum = copyWithChecksum(message.iov[v].buffer, src, message.iov[v].length);
      if (sum != message.replies[record].checksum)
        statuses_[index] = BlockStatus::Rejected;
    }
    src += message.iov[v].length;
  }
  message.verified = true;
  return UCS_OK;
}

void Client::Impl::verify(Message &message) {
  message.verified = true;
  for (uint32_t i = 0; i < message.count; ++i) {
    size_t index = message.first + i;
    if (statuses_[index] != BlockStatus::Found)
      continue;
    const GetBlock &g = getBlocks_[index];
    if (blockChecksum(g.destination, g.bytes) != message.replies[i].checksum)
      statuses_[index] = BlockStatus::Rejected;
  }
}

void Client::Impl::onReceived(void *request, ucs_status_t status, size_t, void *user) {
  auto *message = static_cast<Message *>(user);
  ucp_request_free(request);
  message->done = true;
  if (status != UCS_OK) {
    message->iov.clear();
    message->replies.clear();
    message->count = 0; // verify() then has nothing to pass
    message->first = SIZE_MAX;
    return;
  }
  // Hash the blocks now, while the call's other messages are still
  // arriving and these bytes were just written, rather than all after the
  // last reply.
  message->owner->verify(*message);
}

void Client::Impl::receivePending() {
  std::vector<Message *> pending;
  pending.swap(toReceive_);
  for (Message *message : pending) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FIELD_DATATYPE;
    param.cb.recv_am = &Impl::onReceived;
    param.user_data = message;
    message->owner = this;
    // One destination: a contiguous buffer, not a one-element iov (UCX's
    // rendezvous takes another path for contiguous data). With the store
    // sending one block contiguously too, a 1 MiB get over TCP measured
    // 1.3x faster, 4 MiB 1.35x (docs/performance.md, "TCP segments"); each
    // side alone gave part of it. (Puts up to 1 MiB go eagerly with an iov,
    // a contiguous 1 MiB put having measured slower, p50 610 against 430
    // us; a larger one is contiguous too: exchange().)
    bool contig = message->iov.size() == 1;
    param.datatype = contig ? ucp_dt_make_contig(1) : UCP_DATATYPE_IOV;
    void *descriptor = message->descriptor;
    message->descriptor = nullptr;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(
        worker_->handle(), descriptor,
        contig ? message->iov[0].buffer : static_cast<void *>(message->iov.data()),
        contig ? message->iov[0].length : message->iov.size(), &param);
    if (UCS_PTR_IS_ERR(req)) {
      failure_ = where() + ": receiving a reply failed: " +
                 ucx::errorText(UCS_PTR_STATUS(req));
      message->done = true;
    } else if (req == nullptr) {
      message->done = true;
      verify(*message);
    }
  }
}

void Client::Impl::fillRecord(size_t index, BlockMeta &m) const {
  std::memset(&m, 0, sizeof m);
  const BlockKey *key;
  const std::string *dtype;
  if (!putBlocks_.empty()) {
    key = &putBlocks_[index].key;
    dtype = &putBlocks_[index].dtype;
    m.bytes = putBlocks_[index].bytes;
    if (op_ == wire::Op::Put)
      m.checksum = blockChecksum(putBlocks_[index].data, m.bytes);
    else if (op_ == wire::Op::PutCommit || op_ == wire::Op::PutCommitAhead) {
      m.checksum = checksums_[index];
      m.slot = slots_[index];
    }
  } else if (!getBlocks_.empty()) {
    key = &getBlocks_[index].key;
    dtype = &getBlocks_[index].dtype;
    m.bytes = getBlocks_[index].bytes;
  } else {
    key = &queries_[index].key;
    dtype = &queries_[index].dtype;
    m.bytes = queries_[index].bytes;
  }
  std::memcpy(m.key, key->bytes.data(), sizeof m.key);
  wire::setDtype(m, *dtype);
}

bool Client::Impl::sharedMemoryAllowed() const {
  if (!options_.sharedMemory)
    return false;
  return ucx::transportsAllow({"shm", "sm", "posix", "sysv", "cma", "mm"});
}

Status Client::Impl::headerOnlyCall(wire::Op op, const std::string &what,
                                    Clock::time_point deadline, int64_t limitMs) {
  uint64_t id = nextId_++;
  Message &message = messages_[id];
  message.id = id;
  message.op = op;
  MessageHeader h;
  h.op = static_cast<uint16_t>(op);
  h.requestId = id;
  message.header.resize(sizeof h);
  std::memcpy(message.header.data(), &h, sizeof h);
  ucp_request_param_t param = sendParams(ucp_dt_make_contig(1));
  ucs_status_ptr_t req = ucp_am_send_nbx(ep_, wire::kAmRequest, message.header.data(),
                                         message.header.size(), nullptr, 0, &param);
  if (UCS_PTR_IS_ERR(req))
    return Status::error(where() + ": send failed: " + ucx::errorText(UCS_PTR_STATUS(req)));
  Status answered = progressUntil([&] { return message.done; }, deadline, "to " + what);
  messages_.erase(id);
  if (!answered && Clock::now() >= deadline) // worded as any call's deadline
    return Status::error(where() + ": no reply within " + std::to_string(limitMs) + " ms (to " +
                         what + ")");
  return answered;
}

Status Client::Impl::hello(Clock::time_point deadline, int64_t limitMs) {
  helloDone_ = true;
  offer_.reset();
  LLMIR_RETURN_IF_ERROR(
      headerOnlyCall(wire::Op::Hello, "the shared-memory hello", deadline, limitMs));
  if (!offer_) {
    arenaNote_ = "the store offers no shared-memory segment";
    return Status::ok();
  }
  ArenaNonce nonce;
  std::memcpy(nonce.data(), offer_->nonce, nonce.size());
  auto mapped = ArenaMapping::open(static_cast<pid_t>(offer_->pid), offer_->fd,
                                   offer_->bytes, nonce);
  if (!mapped) { // another host, pid namespace or user: messages it is
    arenaNote_ = mapped.status().message();
    return Status::ok();
  }
  arena_ = std::move(*mapped);
  arenaNote_.clear();
  if (options_.requestChannel)
    return openChannel(deadline, limitMs);
  arenaNote_ = "the request channel is off for this client";
  return Status::ok();
}

Status Client::Impl::openChannel(Clock::time_point deadline, int64_t limitMs) {
  channelOffer_.reset();
  LLMIR_RETURN_IF_ERROR(
      headerOnlyCall(wire::Op::OpenChannel, "the request-channel offer", deadline, limitMs));
  if (!channelOffer_) {
    arenaNote_ = "the store offers no request channel";
    return Status::ok();
  }
  const wire::ChannelOffer &offer = *channelOffer_;
  uint64_t at = uint64_t(offer.slot) * kArenaAlignment;
  uint64_t bytes = sizeof(wire::ChannelHeader) + 2ull * offer.messageBytes;
  if (offer.slot == 0 || offer.messageBytes < sizeof(MessageHeader) + sizeof(BlockMeta) ||
      at + bytes > arena_->size()) {
    arenaNote_ = "the store's request channel lies outside its segment";
    return Status::ok();
  }
  std::string path = "/proc/" + std::to_string(offer_->pid) + "/fd/" +
                     std::to_string(offer.wakeFd);
  int fd = ::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    arenaNote_ = "cannot open the store's wake pipe " + path + ": " + std::strerror(errno);
    return Status::ok();
  }
  wakeFd_ = fd;
  channel_ = arena_->base() + at;
  channelBytes_ = offer.messageBytes;
  channelSeq_ = 0;
  if (options_.indexedGets) {
    index_ = index::Reader::open(arena_->base(), arena_->size());
#ifdef SYS_pidfd_open
    if (index_)
      storePidFd_ = static_cast<int>(syscall(SYS_pidfd_open, offer_->pid, 0));
#endif
  }
  return Status::ok();
}

bool Client::Impl::storeGone() {
  if (index_->closed())
    return true;
  // The store's progress thread holds its liveness lock: alive, known
  // without a system call (a poll of the pidfd per get cost a 1 MiB get
  // 2-3 us and its TLB: docs/performance.md, "branch kv15").
  if (index_->storeHoldsLivenessLock())
    return false;
  if (storePidFd_ >= 0) {
    pollfd p{storePidFd_, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }
  worker_->progress();
  return endpointFailed_;
}

Result<std::vector<BlockStatus>> Client::Impl::getFromIndex(size_t n, Clock::time_point deadline,
                                                            int64_t limitMs) {
  if (storeGone()) {
    std::string why = where() + " is unreachable or the connection was lost: " +
                      (index_->closed() ? "the store stopped serving its segment"
                                        : "the store's process exited");
    disconnect(/*force=*/true); // the next call reconnects
    return Status::error(why);
  }
  std::span<const GetBlock> blocks = getBlocks_;
  std::vector<BlockStatus> out(n, BlockStatus::Missing);
  askStore_.clear();
  askIndex_.clear();
  uint64_t hits = 0, bytes = 0, rejected = 0, misses = 0;
  for (size_t i = 0; i < n; ++i) {
    const GetBlock &g = blocks[i];
    switch (index_->get(g.key, g.dtype, g.destination, g.bytes, getStreams(g.bytes))) {
    case index::LocalGet::Found:
      out[i] = BlockStatus::Found;
      ++hits;
      bytes += g.bytes;
      break;
    case index::LocalGet::Missing:
      if (pipelinedPending_) { // perhaps our own put, not read by the store yet
        askStore_.push_back(g);
        askIndex_.push_back(i);
        break;
      }
      out[i] = BlockStatus::Missing;
      ++misses;
      break;
    case index::LocalGet::Rejected:
      out[i] = BlockStatus::Rejected;
      ++rejected;
      break;
    case index::LocalGet::AskTheStore:
      askStore_.push_back(g);
      askIndex_.push_back(i);
      break;
    }
  }
  // The store adds these to its metrics (the client is the only writer).
  auto *counters = reinterpret_cast<wire::ChannelHeader *>(channel_);
  if (hits)
    __atomic_store_n(&counters->localHits, counters->localHits + hits, __ATOMIC_RELAXED);
  if (bytes)
    __atomic_store_n(&counters->localBytes, counters->localBytes + bytes, __ATOMIC_RELAXED);
  if (rejected)
    __atomic_store_n(&counters->localRejected, counters->localRejected + rejected,
                     __ATOMIC_RELAXED);
  if (misses)
    __atomic_store_n(&counters->localMisses, counters->localMisses + misses,
                     __ATOMIC_RELAXED);
  if (askStore_.empty())
    return out;
  // Perhaps held without an entry, or changed or freed around the copy: the
  // store answers for those (GetShared through the channel).
  std::vector<size_t> where = askIndex_;
  getBlocks_ = askStore_;
  Status st = exchange(wire::Op::GetShared, askStore_.size(), deadline, limitMs);
  getBlocks_ = blocks;
  LLMIR_RETURN_IF_ERROR(st);
  for (size_t k = 0; k < where.size(); ++k)
    out[where[k]] = statuses_[k];
  return out;
}

void Client::Impl::closeChannel() {
  if (wakeFd_ >= 0)
    ::close(wakeFd_);
  wakeFd_ = -1;
  channel_ = nullptr;
  channelBytes_ = 0;
  channelSeq_ = 0;
  channelOffer_.reset();
}

uint32_t Client::Impl::postOnChannel(uint32_t length) {
  auto *channel = reinterpret_cast<wire::ChannelHeader *>(channel_);
  std::atomic_ref<uint32_t>(channel->requestLength)
      .store(length, std::memory_order_relaxed);
  uint32_t seq = ++channelSeq_;
  std::atomic_ref<uint32_t>(channel->requestSeq).store(seq, std::memory_order_seq_cst);
  auto &storeSleeping =
      *reinterpret_cast<uint32_t *>(arena_->base() + wire::kStoreSleepingOffset);
  if (std::atomic_ref<uint32_t>(storeSleeping).load(std::memory_order_seq_cst)) {
    char byte = 1;
    (void)!::write(wakeFd_, &byte, 1); // a full pipe already wakes it
  }

  return seq;
}

void Client::Impl::awaitOnChannel(uint32_t seq, Clock::time_point deadline, int64_t limitMs) {
  auto *channel = reinterpret_cast<wire::ChannelHeader *>(channel_);
  // Wait for the reply: a brief spin, then a futex in short slices between
  // which the UCX endpoint is progressed: a store that died is reported
  // there (its pages stay mapped here, so nothing else notices).
  std::atomic_ref<uint32_t> replySeq(channel->replySeq);
  std::atomic_ref<uint32_t> waiting(channel->clientWaiting);
  auto spinUntil = Clock::now() + options_.channelSpin;
  for (;;) {
    if (replySeq.load(std::memory_order_acquire) == seq)
      break;
    auto now = Clock::now();
    if (now < spinUntil) {
      for (int i = 0; i < 64; ++i)
        wire::cpuRelax();
      continue;
    }
    worker_->progress();
    if (endpointFailed_) {
      failure_ = connectionLost();
      break;
    }
    if (!failure_.empty())
      break;
    if (now >= deadline) {
      failure_ = where() + ": no reply within " + std::to_string(limitMs) + " ms";
      break;
    }
    waiting.store(1, std::memory_order_seq_cst);
    uint32_t seen = replySeq.load(std::memory_order_seq_cst);
    if (seen != seq) {
      timespec slice{0, 1'000'000}; // 1 ms
      syscall(SYS_futex, &channel->replySeq, FUTEX_WAIT, seen, &slice, nullptr, 0);
    }
    waiting.store(0, std::memory_order_relaxed);
  }
}

void Client::Impl::postPipelined(std::vector<BlockMeta> records) {
  uint64_t id = nextId_++;
  MessageHeader h;
  h.op = static_cast<uint16_t>(wire::Op::PutPipelined);
  h.requestId = id;
  h.count = static_cast<uint32_t>(records.size());
  uint8_t *request = channel_ + sizeof(wire::ChannelHeader);
  std::memcpy(request, &h, sizeof h);
  std::memcpy(request + sizeof h, records.data(), records.size() * sizeof(BlockMeta));
  pendingSeq_ = postOnChannel(static_cast<uint32_t>(sizeof h + records.size() * sizeof(BlockMeta)));
  pendingId_ = id;
  pendingRecords_ = std::move(records);
  pipelinedPending_ = true;
}

Status Client::Impl::finishPipelined(Clock::time_point deadline, int64_t limitMs) {
  if (!pipelinedPending_)
    return Status::ok();
  pipelinedPending_ = false;
  failure_.clear();
  awaitOnChannel(pendingSeq_, deadline, limitMs);
  if (failure_.empty()) {
    auto *channel = reinterpret_cast<wire::ChannelHeader *>(channel_);
    uint32_t length =
        std::atomic_ref<uint32_t>(channel->replyLength).load(std::memory_order_relaxed);
    const uint8_t *reply = channel_ + sizeof(wire::ChannelHeader) + channelBytes_;
    MessageHeader h{};
    size_t count = pendingRecords_.size();
    if (length >= sizeof h)
      std::memcpy(&h, reply, sizeof h);
    bool onlyRooms = std::all_of(pendingRecords_.begin(), pendingRecords_.end(),
                                 [](const BlockMeta &m) { return m.slot == 0; });
    if (length >= sizeof h && h.magic == wire::kMagic && h.requestId == pendingId_ &&
        h.errorLength != 0 && onlyRooms) {
      // A store that predates PutPipelined refuses it ("unknown operation
      // 10"): nothing was committed; puts take the round trip with it.
      pipelinedOff_ = true;
    } else if (length > channelBytes_ || length != sizeof h + count * sizeof(BlockMeta) ||
        h.magic != wire::kMagic || h.requestId != pendingId_ || h.count != count ||
        h.errorLength != 0) {
      failure_ = where() + ": malformed reply to a pipelined put";
    } else {
      std::vector<BlockMeta> replies(count); // copied out: the segment is writable by others
      std::memcpy(replies.data(), reply + sizeof h, count * sizeof(BlockMeta));
      for (size_t i = 0; i < count; ++i) {
        const BlockMeta &asked = pendingRecords_[i];
        const BlockMeta &m = replies[i];
        if (asked.slot != 0) { // a commit, or a room given back (bytes 0)
          if (asked.bytes != 0 && static_cast<Code>(m.code) != Code::Stored)
            ++pipelinedRefused_;
          continue;
        }
        uint64_t at = uint64_t(m.slot) * kArenaAlignment;
        if (static_cast<Code>(m.code) == Code::Reserved) {
          if (m.slot == 0 || m.bytes != asked.bytes || at + m.bytes > arena_->size()) {
            failure_ = where() + ": malformed reply (a room outside the segment)";
            break;
          }
          rooms_.emplace_back(m.slot, m.bytes);
        }
      }
    }
  }
  pendingRecords_.clear();
  if (!failure_.empty()) {
    std::string why = failure_;
    disconnect(/*force=*/true); // the next call reconnects
    return Status::error(why);
  }
  return Status::ok();
}

Status Client::Impl::giveBackRooms(bool all, size_t n, Clock::time_point deadline,
                                   int64_t limitMs) {
  std::vector<std::pair<uint32_t, uint64_t>> keep, back;
  for (auto room : rooms_) {
    bool wanted = false;
    for (size_t i = 0; i < n && !all && !wanted; ++i)
      wanted = putBlocks_[i].bytes == room.second;
    (wanted ? keep : back).push_back(room);
  }
  rooms_ = std::move(keep);
  const size_t perRequest = (channelBytes_ - sizeof(MessageHeader)) / sizeof(BlockMeta);
  for (size_t first = 0; first < back.size(); first += perRequest) {
    std::vector<BlockMeta> records;
    for (size_t i = first; i < std::min(back.size(), first + perRequest); ++i) {
      BlockMeta m{};
      m.slot = back[i].first; // bytes 0: given back
      records.push_back(m);
    }
    postPipelined(std::move(records));
    LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limitMs));
  }
  return Status::ok();
}

Result<std::optional<std::vector<BlockStatus>>> Client::Impl::putPipelined(
    size_t n, Clock::time_point deadline, int64_t limitMs) {
  // Every block needs a room of its size.
  std::vector<size_t> roomOf(n);
  auto match = [&] {
    std::vector<bool> taken(rooms_.size(), false);
    for (size_t i = 0; i < n; ++i) {
      bool found = false;
      for (size_t r = 0; r < rooms_.size() && !found; ++r)
        if (!taken[r] && rooms_[r].second == putBlocks_[i].bytes) {
          taken[r] = found = true;
          roomOf[i] = r;
        }
      if (!found)
        return false;
    }
    return true;
  };
  if (!match()) {
    LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limitMs)); // its rooms may do
    if (!match()) {
      // Rooms of sizes this put does not have hold the store's budget for
      // nothing (the client's blocks changed size): back they go.
      LLMIR_RETURN_IF_ERROR(giveBackRooms(/*all=*/false, n, deadline, limitMs));
      // Two rooms per block, waiting for them: this put and the next one
      // copy while the store answers the commit before.
      std::vector<BlockMeta> asks;
      for (size_t i = 0; i < n; ++i)
        for (int twice = 0; twice < 2; ++twice) {
          BlockMeta m{};
          m.bytes = putBlocks_[i].bytes;
          asks.push_back(m);
        }
      postPipelined(std::move(asks));
      LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limitMs));
      if (!match()) {
        // The store keeps its budget for blocks: round trips from now on,
        // and the rooms it did hand out go back.
        pipelinedOff_ = true;
        LLMIR_RETURN_IF_ERROR(giveBackRooms(/*all=*/true, n, deadline, limitMs));
        return std::optional<std::vector<BlockStatus>>();
      }
    }
  }
  // Copy each block into its room, hashing as it goes, while the store
  // answers the previous commit.
  std::vector<BlockMeta> records;
  std::vector<bool> used(rooms_.size(), false);
  for (size_t i = 0; i < n; ++i) {
    const PutBlock &p = putBlocks_[i];
    auto [slot, bytes] = rooms_[roomOf[i]];
    used[roomOf[i]] = true;
    BlockMeta m{};
    std::memcpy(m.key, p.key.bytes.data(), sizeof m.key);
    wire::setDtype(m, p.dtype);
    m.bytes = bytes;
    m.slot = slot;
    m.checksum = copyIntoRoom(arena_->base() + uint64_t(slot) * kArenaAlignment, p.data, p.bytes);
    records.push_back(m);
  }
  std::vector<std::pair<uint32_t, uint64_t>> left;
  for (size_t r = 0; r < rooms_.size(); ++r)
    if (!used[r])
      left.push_back(rooms_[r]);
  rooms_ = std::move(left);
  // The channel carries one request at a time: the previous commit's reply
  // first (usually in by now), then this commit with a room per block for
  // the put after the next.
  LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limitMs));
  for (size_t i = 0; i < n; ++i) {
    BlockMeta m{};
    m.bytes = putBlocks_[i].bytes;
    records.push_back(m);
  }
  postPipelined(std::move(records));
  // Stored: the room's budget is the store's already and its size and the
  // dtype were checked here, so the commit stores the block when the store
  // reads it (the next call, or the client's destruction, reads its reply).
  return std::optional<std::vector<BlockStatus>>(std::vector<BlockStatus>(n, BlockStatus::Stored));
}

Status Client::Impl::exchangeOnChannel(wire::Op op, size_t n, Clock::time_point deadline,
                                       int64_t limitMs) {
  op_ = op;
  statuses_.assign(n, BlockStatus::Missing);
  uint64_t id = nextId_++;
  Message &message = messages_[id];
  message.id = id;
  message.op = op;
  message.first = 0;
  message.count = static_cast<uint32_t>(n);
  auto *channel = reinterpret_cast<wire::ChannelHeader *>(channel_);
  uint8_t *request = channel_ + sizeof(wire::ChannelHeader);
  const uint8_t *reply = request + channelBytes_;
  MessageHeader h;
  h.op = static_cast<uint16_t>(op);
  h.requestId = id;
  h.count = message.count;
  std::memcpy(request, &h, sizeof h);
  for (uint32_t i = 0; i < message.count; ++i) {
    BlockMeta m;
    fillRecord(i, m);
    std::memcpy(request + sizeof h + i * sizeof m, &m, sizeof m);
  }
  uint32_t seq = postOnChannel(static_cast<uint32_t>(sizeof h + n * sizeof(BlockMeta)));
  awaitOnChannel(seq, deadline, limitMs);
  if (failure_.empty()) {
    uint32_t length =
        std::atomic_ref<uint32_t>(channel->replyLength).load(std::memory_order_relaxed);
    if (length > channelBytes_) {
      failure_ = where() + ": malformed reply (" + std::to_string(length) +
                 " bytes in a channel of " + std::to_string(channelBytes_) + ")";
    } else {
      // Copied out first: the segment is writable by others.
      channelReply_.assign(reply, reply + length);
      handleReply(channelReply_.data(), length, nullptr, 0, /*rendezvous=*/false);
      if (failure_.empty() && !message.done)
        failure_ = where() + ": malformed reply (not the request's id)";
    }
  }
  if (!failure_.empty()) {
    disconnect(/*force=*/true); // the next call reconnects
    return Status::error(failure_);
  }
  messages_.clear();
  return Status::ok();
}

Status Client::Impl::prepare(Clock::time_point deadline, int64_t limitMs) {
  failure_.clear();
  LLMIR_RETURN_IF_ERROR(connect());
  Status ready = Status::ok();
  if (options_.clusterSecret && !authenticated_)
    ready = authenticate(deadline);
  if (ready && !helloDone_) {
    if (sharedMemoryAllowed())
      ready = hello(deadline, limitMs);
    else {
      helloDone_ = true;
      arenaNote_ = options_.sharedMemory ? "UCX_TLS excludes shared memory"
                                         : "shared memory is off for this client";
    }
  }
  if (!ready)
    disconnect(/*force=*/true); // the next call starts over
  return ready;
}

Result<std::vector<BlockStatus>> Client::Impl::call(wire::Op op, size_t n, Timeout timeout) {
  auto limit = timeout.value_or(options_.timeout);
  auto deadline = Clock::now() + limit;
  statuses_.assign(n, BlockStatus::Missing);
  if (n == 0)
    return statuses_;
  LLMIR_RETURN_IF_ERROR(prepare(deadline, limit.count()));
  if (index_ && op == wire::Op::Get) {
    auto got = getFromIndex(n, deadline, limit.count());
    if (got)
      statuses_ = *got;
    return got;
  }
  if (arena_ && op == wire::Op::Get)
    op = wire::Op::GetShared;
  if (!arena_ || op != wire::Op::Put) {
    LLMIR_RETURN_IF_ERROR(exchange(op, n, deadline, limit.count()));
    return statuses_;
  }
  if (channel_ && options_.pipelinedPuts && !pipelinedOff_ &&
      sizeof(MessageHeader) + 2 * n * sizeof(BlockMeta) <= channelBytes_) {
    auto piped = putPipelined(n, deadline, limit.count());
    if (!piped)
      return piped.status();
    if (*piped) {
      statuses_ = **piped;
      return statuses_;
    }
  }
  LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limit.count()));
  // A shared put: room in the segment (reserved ahead by our last commit,
  // or else asked for now), the blocks copied into it (hashed as they go),
  // then committed under their checksums. A call in one message asks for
  // room ahead for the next one, so puts of the same block sizes take one
  // round trip instead of two. (Several messages' replies could not tell
  // which room the store still holds, so those calls take none.)
  slots_.assign(n, 0);
  checksums_.assign(n, 0);
  bool oneMessage = n <= maxBlocksPerMessage_;
  bool useAhead = oneMessage && !spares_.empty();
  if (useAhead) {
    std::vector<bool> taken(spares_.size(), false);
    for (size_t i = 0; i < n && useAhead; ++i) {
      useAhead = false;
      for (size_t s = 0; s < spares_.size(); ++s)
        if (!taken[s] && spares_[s].second == putBlocks_[i].bytes) {
          taken[s] = true;
          slots_[i] = spares_[s].first;
          useAhead = true;
          break;
        }
    }
  }
  spares_.clear(); // our next commit frees what it does not name
  std::vector<BlockStatus> reserved(n, BlockStatus::Stored);
  if (!useAhead) {
    slots_.assign(n, 0);
    LLMIR_RETURN_IF_ERROR(exchange(wire::Op::PutReserve, n, deadline, limit.count()));
    reserved = statuses_;
  }
  for (size_t i = 0; i < n; ++i)
    if (slots_[i] != 0)
      checksums_[i] = copyIntoRoom(arena_->base() + uint64_t(slots_[i]) * kArenaAlignment,
                                   putBlocks_[i].data, putBlocks_[i].bytes);
  LLMIR_RETURN_IF_ERROR(exchange(oneMessage ? wire::Op::PutCommitAhead : wire::Op::PutCommit, n,
                                 deadline, limit.count()));
  for (size_t i = 0; i < n; ++i)
    if (slots_[i] == 0)
      statuses_[i] = reserved[i];
  return statuses_;
}

Status Client::Impl::exchange(wire::Op op, size_t n, Clock::time_point deadline,
                              int64_t limitMs) {
  // A pipelined put's commit is served before anything this call asks.
  LLMIR_RETURN_IF_ERROR(finishPipelined(deadline, limitMs));
  if (channel_ && wire::carriedByChannel(static_cast<uint16_t>(op)) &&
      n <= maxBlocksPerMessage_ && sizeof(MessageHeader) + n * sizeof(BlockMeta) <= channelBytes_)
    return exchangeOnChannel(op, n, deadline, limitMs);
  op_ = op;
  statuses_.assign(n, BlockStatus::Missing);
  // Every message goes out before any reply is awaited.
  // A message holds at most maxBlocksPerMessage_ records and, for puts and
  // gets, at most ucx::kEagerPayloadBytes of block bytes (a larger block
  // goes alone): every message of small blocks then goes eagerly, and a
  // batch of large blocks is several messages in flight together, as
  // ucx_perftest keeps several sends in flight, instead of one rendezvous
  // with an iov over all of them (8 x 1 MiB per call over TCP measured
  // 1.3-1.6x faster, docs/performance.md "TCP segments").
  size_t step = 0;
  for (size_t first = 0; first < n; first += step) {
    step = 0;
    uint64_t planned = 0;
    bool inParts = false;
    while (first + step < n && step < maxBlocksPerMessage_) {
      uint64_t b = op == wire::Op::Put   ? putBlocks_[first + step].bytes
                   : op == wire::Op::Get ? getBlocks_[first + step].bytes
                                         : 0;
      bool parts = op == wire::Op::Put && (inParts_(b) || trailingChecksum_(b));
      if (step > 0 && (parts || planned + b > ucx::kEagerPayloadBytes))
        break;
      planned += b;
      ++step;
      if ((inParts = parts))
        break;
    }
    if (inParts) {
      if (!sendInParts(first, deadline, limitMs))
        break;
      continue;
    }
    uint64_t id = nextId_++;
    Message &message = messages_[id];
    message.id = id;
    message.op = op;
    // One large block: the store may answer in parts (GetParts).
    if (op == wire::Op::Get && step == 1 && inParts_(getBlocks_[first].bytes))
      message.op = wire::Op::GetParts;
    message.first = first;
    message.count = static_cast<uint32_t>(step);
    MessageHeader h;
    h.op = static_cast<uint16_t>(message.op);
    h.requestId = id;
    h.count = message.count;
    message.header.resize(sizeof h + message.count * sizeof(BlockMeta));
    std::memcpy(message.header.data(), &h, sizeof h);
    for (uint32_t i = 0; i < message.count; ++i) {
      BlockMeta m;
      fillRecord(first + i, m);
      std::memcpy(message.header.data() + sizeof h + i * sizeof m, &m, sizeof m);
      if (op == wire::Op::Put)
        message.iov.push_back({const_cast<void *>(putBlocks_[first + i].data),
                               putBlocks_[first + i].bytes});
    }
    uint64_t payload = 0;
    for (const ucp_dt_iov_t &v : message.iov)
      payload += v.length;
    bool eager = payload > 0 && payload <= ucx::kEagerPayloadBytes;
    // A message going by rendezvous carries one block (larger messages are
    // split by block): send it as a contiguous buffer. With an iov, UCX
    // 1.13's rendezvous over TCP packs the bytes into bounce segments
    // (ucp_rndv_progress_am_bcopy, ucp_dt_iov_gather) and the store unpacks
    // them (ucp_dt_iov_scatter): a copy on each side (docs/performance.md,
    // "TCP, branch kv8").
    bool contig = !eager && message.iov.size() == 1;
    ucp_request_param_t param = sendParams(
        message.iov.empty() || contig ? ucp_dt_make_contig(1) : UCP_DATATYPE_IOV);
    if (eager)
      param.flags |= UCP_AM_SEND_FLAG_EAGER;
    const void *buffer = message.iov.empty() ? nullptr
                         : contig            ? message.iov[0].buffer
                                             : static_cast<const void *>(message.iov.data());
    size_t count = contig ? message.iov[0].length : message.iov.size();
    ucs_status_ptr_t req = ucp_am_send_nbx(ep_, wire::kAmRequest, message.header.data(),
                                           message.header.size(), buffer, count, &param);
    if (UCS_PTR_IS_ERR(req)) {
      failure_ = where() + ": send failed: " + ucx::errorText(UCS_PTR_STATUS(req));
      break;
    }
  }

  // Progress until every reply is in, the connection fails, or the deadline.
  auto lastActivity = Clock::now();
  // Polling where a CPU is spare reads a reply as it arrives (a get's
  // block: the wake-up was a large part of the call); on a busy host a
  // polling client would take the core its store needs, so it sleeps.
  auto pollFor = options_.pollBeforeSleep;
  if (options_.idlePoll > pollFor && idleCpu_.spare())
    pollFor = options_.idlePoll;
  while (failure_.empty()) {
    bool busy = worker_->progress();
    if (!toReceive_.empty()) {
      receivePending();
      busy = true;
    }
    if (!failure_.empty())
      break;
    if (std::all_of(messages_.begin(), messages_.end(),
                    [](const auto &kv) { return kv.second.done; }))
      break;
    if (endpointFailed_) {
      failure_ = connectionLost();
      break;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      failure_ = where() + ": no reply within " + std::to_string(limitMs) + " ms";
      break;
    }
    // Sleep on the event fd rather than spin: on a machine shared by
    // several processes a spinning client starves the store it waits for
    // (docs/performance.md measured both). Short slices keep the deadline.
    // A reply that comes within pollBeforeSleep of the last activity is
    // caught without a wake-up.
    if (busy)
      lastActivity = now;
    else if (now - lastActivity >= pollFor) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      worker_->wait(static_cast<int>(std::clamp<int64_t>(left.count(), 1, 10)));
    }
  }
  if (!failure_.empty()) {
    disconnect(/*force=*/true); // the next call reconnects
    return Status::error(failure_);
  }
  if (op == wire::Op::Get)
    for (auto &kv : messages_)
      if (kv.second.first != SIZE_MAX && !kv.second.verified)
        verify(kv.second);
  for (auto &kv : messages_)
    if (kv.second.first == SIZE_MAX) { // a rendezvous receive failed
      messages_.clear();
      disconnect(/*force=*/true);
      return Status::error(where() + ": a reply's block bytes did not arrive");
    }
  messages_.clear();
  return Status::ok();
}

bool Client::Impl::sendInParts(size_t index, Clock::time_point deadline, int64_t limitMs) {
  const PutBlock &p = putBlocks_[index];
  uint64_t id = nextId_++;
  Message &message = messages_[id];
  message.id = id;
  message.op = wire::Op::PutPart;
  message.first = index;
  message.count = 1;
  BlockMeta m{};
  std::memcpy(m.key, p.key.bytes.data(), sizeof m.key);
  wire::setDtype(m, p.dtype);
  m.bytes = p.bytes;
  MessageHeader h;
  h.op = static_cast<uint16_t>(wire::Op::PutPart);
  h.requestId = id;
  h.count = 1;
  const auto *bytes = static_cast<const uint8_t *>(p.data);
  // One part from `at`; `counted`: its completion counts in partSendsPending_.
  auto send = [&](uint64_t at, uint64_t length, bool counted = false) -> bool {
    m.slot = static_cast<uint32_t>(at / wire::kPartAlignment);
    std::vector<uint8_t> &header = message.partHeaders.emplace_back(sizeof h + sizeof m);
    std::memcpy(header.data(), &h, sizeof h);
    std::memcpy(header.data() + sizeof h, &m, sizeof m);
    ucp_request_param_t param = sendParams(ucp_dt_make_contig(1));
    param.flags |= UCP_AM_SEND_FLAG_EAGER; // the store copies each part as it comes
    if (counted)
      param.cb.send = &Impl::onPartSent;
    ucs_status_ptr_t req = ucp_am_send_nbx(ep_, wire::kAmRequest, header.data(), header.size(),
                                           bytes + at, length, &param);
    if (UCS_PTR_IS_ERR(req)) {
      failure_ = where() + ": send failed: " + ucx::errorText(UCS_PTR_STATUS(req));
      return false;
    }
    if (counted && req != nullptr)
      ++partSendsPending_;
    return true;
  };
  PartChecksum sum;
  if (trailingChecksum_(p.bytes)) {
    // The checksum's part: the last 1024 bytes plus what does not fill a
    // KiB (parts before it are multiples of 1024, as PartChecksum needs).
    // The rest goes first, whole (a block up to twice partBytes: two
    // parts measured no faster, docs/performance.md "kv12") or in parts
    // of partBytes, each hashed while the kernel and the store move it.
    const uint64_t tail = wire::kPartAlignment + p.bytes % wire::kPartAlignment;
    const uint64_t body = p.bytes - tail;
    const uint64_t part = inParts_(p.bytes) ? options_.partBytes : body;
    // Each part goes once the one before it is sent (see partSendsPending_).
    auto sent = [&] {
      while (partSendsPending_ > 0 && failure_.empty()) {
        if (endpointFailed_) {
          failure_ = connectionLost();
          break;
        }
        if (Clock::now() >= deadline) {
          failure_ = where() + ": a put's bytes not sent within " + std::to_string(limitMs) +
                     " ms";
          break;
        }
        if (!worker_->progress() && partSendsPending_ > 0)
          worker_->wait(1); // the socket is full: the store is not reading
      }
      return failure_.empty();
    };
    for (uint64_t at = 0; at < body;) {
      uint64_t length = std::min(part, body - at);
      if (!sent() || !send(at, length, /*counted=*/true))
        return false;
      hashSentPart(sum, bytes + at, length);
      if (!failure_.empty())
        return false;
      at += length;
    }
    m.checksum = sum.finish(nullptr, bytes + body, tail, p.bytes);
    return sent() && send(body, tail);
  }
  // Parts of partBytes; the last takes the rest (partBytes + 1023 at most,
  // so never less than 1024 bytes).
  const uint64_t part = options_.partBytes;
  for (uint64_t at = 0; at < p.bytes;) {
    bool last = p.bytes - at < part + wire::kPartAlignment;
    uint64_t length = last ? p.bytes - at : part;
    if (last)
      m.checksum = sum.finish(nullptr, bytes + at, length, p.bytes);
    else
      sum.add(nullptr, bytes + at, length);
    if (!send(at, length))
      return false;
    at += length;
  }
  return true;
}

void Client::Impl::hashSentPart(PartChecksum &sum, const uint8_t *bytes, uint64_t length) {
  // 256 KiB slices: a few microseconds of hashing between progress calls,
  // each of which is a system call.
  constexpr uint64_t kSlice = 256 << 10;
  static_assert(kSlice % wire::kPartAlignment == 0);
  for (uint64_t at = 0; at < length;) {
    uint64_t n = partSendsPending_ > 0 ? std::min(kSlice, length - at) : length - at;
    sum.add(nullptr, bytes + at, n);
    at += n;
    if (partSendsPending_ > 0 && at < length)
      worker_->progress();
  }
}

void Client::Impl::onPartSent(void *request, ucs_status_t status, void *user) {
  auto *self = static_cast<Impl *>(user);
  if (self->partSendsPending_ > 0)
    --self->partSendsPending_;
  onSent(request, status, user);
}

// ---------------------------------------------------------------------------

Result<std::unique_ptr<Client>> Client::create(const ClientOptions &options) {
  if (options.port == 0)
    return Status::error("kv store client: port must be set");
  if (options.clusterSecret && options.clusterSecret->size() < auth::kMinSecretBytes)
    return Status::error("kv store client: the cluster secret must have at least " +
                         std::to_string(auth::kMinSecretBytes) + " bytes");
  if (!wire::validPartBytes(options.partBytes))
    return Status::error("kv store client: partBytes must be a multiple of 1024 up to 1 MiB "
                         "(0: no parts), not " + std::to_string(options.partBytes));
  if (options.pollBeforeSleep.count() < 0 || options.idlePoll.count() < 0 ||
      options.channelSpin.count() < 0)
    return Status::error("kv store client: pollBeforeSleep, idlePoll and channelSpin must not "
                         "be negative");
  auto impl = std::make_unique<Impl>(options);
  if (auto st = impl->ensureWorker(); !st)
    return st;
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

size_t Client::maxBlocksPerMessage() const { return impl_->maxBlocksPerMessage_; }

bool Client::usesSharedMemory() const { return impl_->arena_ != nullptr; }
bool Client::usesRequestChannel() const { return impl_->channel_ != nullptr; }
bool Client::usesIndexedGets() const { return impl_->index_.has_value(); }
uint64_t Client::pipelinedPutsRefused() const { return impl_->pipelinedRefused_; }

std::string Client::describeConnection() const {
  if (!impl_->ep_)
    return {};
  std::string bytes =
      impl_->arena_
          ? "block bytes: shared memory (the store's segment of " +
                std::to_string(impl_->arena_->size()) + " bytes, mapped)\n" +
                (impl_->channel_ ? "requests: the channel in the segment\n"
                                 : "requests: UCX active messages (" + impl_->arenaNote_ +
                                       ")\n") +
                (impl_->index_ ? "gets: served from the store's index in the segment\n" : "")
          : "block bytes: UCX active messages" +
                (impl_->arenaNote_.empty() ? "" : " (" + impl_->arenaNote_ + ")") + "\n";
  char *text = nullptr;
  size_t size = 0;
  FILE *stream = open_memstream(&text, &size);
  if (!stream)
    return {};
  ucp_ep_print_info(impl_->ep_, stream);
  std::fclose(stream);
  std::string out(text, size);
  std::free(text);
  return bytes + out;
}

namespace {
template <typename Block> Status checkBlocks(std::span<const Block> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!isValidDtype(blocks[i].dtype))
      return Status::error("block " + std::to_string(i) + ": dtype '" + blocks[i].dtype +
                           "' must be 1-15 characters of [a-z0-9_]");
    if (blocks[i].bytes == 0)
      return Status::error("block " + std::to_string(i) + " is empty");
  }
  return Status::ok();
}
} // namespace

Result<std::vector<BlockStatus>> Client::put(std::span<const PutBlock> blocks,
                                             Timeout timeout) {
  LLMIR_RETURN_IF_ERROR(checkBlocks(blocks));
  for (size_t i = 0; i < blocks.size(); ++i)
    if (!blocks[i].data)
      return Status::error("block " + std::to_string(i) + " has no data");
  impl_->putBlocks_ = blocks;
  impl_->getBlocks_ = {};
  impl_->queries_ = {};
  return impl_->call(wire::Op::Put, blocks.size(), timeout);
}

Result<std::vector<BlockStatus>> Client::get(std::span<const GetBlock> blocks,
                                             Timeout timeout) {
  LLMIR_RETURN_IF_ERROR(checkBlocks(blocks));
  for (size_t i = 0; i < blocks.size(); ++i)
    if (!blocks[i].destination)
      return Status::error("block " + std::to_string(i) + " has no destination");
  impl_->putBlocks_ = {};
  impl_->getBlocks_ = blocks;
  impl_->queries_ = {};
  return impl_->call(wire::Op::Get, blocks.size(), timeout);
}

Result<std::vector<BlockStatus>> Client::exists(std::span<const BlockQuery> blocks,
                                                Timeout timeout) {
  LLMIR_RETURN_IF_ERROR(checkBlocks(blocks));
  impl_->putBlocks_ = {};
  impl_->getBlocks_ = {};
  impl_->queries_ = blocks;
  return impl_->call(wire::Op::Exists, blocks.size(), timeout);
}

} // namespace llmir::kvstore
