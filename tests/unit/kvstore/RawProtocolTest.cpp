// The server's own validation, seen from a raw UCX peer that speaks the wire
// format directly (the library's Client always sends correct checksums): a
// block whose bytes do not match its checksum is rejected and never stored,
// while the good block of the same batch is stored; malformed requests get
// an error reply instead of a crash.
#include "SharedArena.h"
#include "Ucx.h"
#include "Wire.h"
#include "llmir/kvstore/Client.h"
#include "llmir/kvstore/Server.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>
#include <atomic>
#include <chrono>
#include <thread>
#include <cstring>
#include <optional>
#include <vector>

using namespace llmir::kvstore;
namespace wire = llmir::kvstore::wire;

namespace {

struct RawPeer {
  std::unique_ptr<ucx::Worker> worker;
  ucp_ep_h ep = nullptr;
  std::optional<std::vector<uint8_t>> reply; // the reply's AM header

  static ucs_status_t onReply(void *arg, const void *header, size_t length, void *,
                              size_t, const ucp_am_recv_param_t *) {
    auto *self = static_cast<RawPeer *>(arg);
    const auto *bytes = static_cast<const uint8_t *>(header);
    self->reply.emplace(bytes, bytes + length);
    return UCS_OK;
  }

  void connect(uint16_t port) {
    auto w = ucx::Worker::create();
    ASSERT_TRUE(w) << w.message();
    worker = std::move(*w);
    ucp_am_handler_param_t h{};
    h.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    h.id = wire::kAmReply;
    h.cb = &RawPeer::onReply;
    h.arg = this;
    ASSERT_EQ(ucp_worker_set_am_recv_handler(worker->handle(), &h), UCS_OK);
    socklen_t len = 0;
    auto addr = ucx::resolve("127.0.0.1", port, len);
    ASSERT_TRUE(addr);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr *>(&*addr);
    p.sockaddr.addrlen = len;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ASSERT_EQ(ucp_ep_create(worker->handle(), &p, &ep), UCS_OK);
  }

  // Sends one request and waits up to 10 s for its reply header;
  // `rendezvous` forces UCX's rendezvous protocol for the payload (with the
  // library's TCP segments a message of up to 4 MiB otherwise goes eagerly).
  std::optional<std::vector<uint8_t>> roundTrip(const std::vector<uint8_t> &header,
                                                const std::vector<uint8_t> &payload,
                                                bool rendezvous = false) {
    reply.reset();
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_REPLY | (rendezvous ? UCP_AM_SEND_FLAG_RNDV : 0);
    ucs_status_ptr_t req =
        ucp_am_send_nbx(ep, wire::kAmRequest, header.data(), header.size(),
                        payload.empty() ? nullptr : payload.data(), payload.size(), &param);
    EXPECT_FALSE(UCS_PTR_IS_ERR(req));
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!reply && std::chrono::steady_clock::now() < until) {
      if (!worker->progress())
        worker->wait(5);
    }
    if (req && !UCS_PTR_IS_ERR(req)) {
      while (ucp_request_check_status(req) == UCS_INPROGRESS)
        worker->progress();
      ucp_request_free(req);
    }
    return reply;
  }

  // Sends one message without waiting for a reply (a put part before the
  // last, which the store does not answer), until UCX has it.
  void post(const std::vector<uint8_t> &header, const uint8_t *payload, size_t length,
            bool rendezvous = false) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_REPLY |
                  (rendezvous ? UCP_AM_SEND_FLAG_RNDV : UCP_AM_SEND_FLAG_EAGER);
    ucs_status_ptr_t req = ucp_am_send_nbx(ep, wire::kAmRequest, header.data(), header.size(),
                                           payload, length, &param);
    EXPECT_FALSE(UCS_PTR_IS_ERR(req));
    if (req && !UCS_PTR_IS_ERR(req)) {
      while (ucp_request_check_status(req) == UCS_INPROGRESS)
        worker->progress();
      ucp_request_free(req);
    }
  }
  // Progresses until a reply comes (up to `seconds`).
  std::optional<std::vector<uint8_t>> awaitReply(int seconds = 10) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (!reply && std::chrono::steady_clock::now() < until) {
      if (!worker->progress())
        worker->wait(5);
    }
    return reply;
  }

  ~RawPeer() {
    if (ep)
      ucx::closeEndpoint(*worker, ep, /*force=*/true);
  }
};

std::vector<uint8_t> request(wire::Op op, uint64_t id, const std::vector<wire::BlockMeta> &metas) {
  wire::MessageHeader h;
  h.op = static_cast<uint16_t>(op);
  h.requestId = id;
  h.count = static_cast<uint32_t>(metas.size());
  std::vector<uint8_t> out(sizeof h + metas.size() * sizeof(wire::BlockMeta));
  std::memcpy(out.data(), &h, sizeof h);
  if (!metas.empty()) // an empty vector's data() may be null: memcpy's UB
    std::memcpy(out.data() + sizeof h, metas.data(), metas.size() * sizeof(wire::BlockMeta));
  return out;
}

wire::BlockMeta meta(uint8_t keyByte, uint64_t bytes, uint64_t checksum) {
  wire::BlockMeta m{};
  std::memset(m.key, keyByte, sizeof m.key);
  wire::setDtype(m, "f32");
  m.bytes = bytes;
  m.checksum = checksum;
  return m;
}

std::vector<wire::BlockMeta> records(const std::vector<uint8_t> &reply) {
  wire::MessageHeader h;
  std::memcpy(&h, reply.data(), sizeof h);
  std::vector<wire::BlockMeta> out(h.count);
  if (reply.size() == sizeof h + h.count * sizeof(wire::BlockMeta))
    std::memcpy(out.data(), reply.data() + sizeof h, h.count * sizeof(wire::BlockMeta));
  return out;
}

TEST(KvStoreRawProtocol, ABlockWhoseChecksumDoesNotMatchIsRejected) {
  setenv("UCX_TLS", "tcp", 1);
  ServerOptions o;
  o.host = "127.0.0.1";
  o.capacityBytes = 1 << 20;
  auto server = Server::start(o);
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());

  for (size_t bytes : {size_t(512), size_t(256 << 10)}) { // eager and rendezvous
    bool rendezvous = bytes > 512;
    std::vector<uint8_t> payload(2 * bytes);
    for (size_t i = 0; i < payload.size(); ++i)
      payload[i] = uint8_t(i * 7);
    uint64_t good = blockChecksum(payload.data(), bytes);
    uint64_t second = blockChecksum(payload.data() + bytes, bytes);
    auto reply = peer.roundTrip(
        request(wire::Op::Put, 1, {meta(1, bytes, good), meta(2, bytes, second ^ 1)}),
        payload, rendezvous);
    ASSERT_TRUE(reply);
    auto r = records(*reply);
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].code, uint32_t(wire::Code::Stored)) << bytes;
    EXPECT_EQ(r[1].code, uint32_t(wire::Code::Rejected)) << bytes;

    auto exists = peer.roundTrip(
        request(wire::Op::Exists, 2, {meta(1, bytes, 0), meta(2, bytes, 0)}), {});
    ASSERT_TRUE(exists);
    r = records(*exists);
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].code, uint32_t(wire::Code::Found));
    EXPECT_EQ(r[1].code, uint32_t(wire::Code::Missing)) << "a rejected block was stored";
  }
  PoolStats s = (*server)->stats();
  EXPECT_EQ(s.rejected, 2u);
  EXPECT_EQ(s.bytesReserved, 0u) << "a rejected put's reservation leaked";

  // Malformed requests: an error reply naming the problem, and the server
  // keeps serving.
  auto mismatched = peer.roundTrip(request(wire::Op::Put, 3, {meta(3, 100, 0)}),
                                   std::vector<uint8_t>(50));
  ASSERT_TRUE(mismatched);
  wire::MessageHeader h;
  std::memcpy(&h, mismatched->data(), sizeof h);
  ASSERT_GT(h.errorLength, 0u);
  std::string why(reinterpret_cast<const char *>(mismatched->data() + sizeof h), h.errorLength);
  EXPECT_NE(why.find("does not match"), std::string::npos) << why;

  std::vector<uint8_t> truncated = request(wire::Op::Get, 4, {meta(4, 100, 0)});
  truncated.resize(truncated.size() - 10);
  auto bad = peer.roundTrip(truncated, {});
  ASSERT_TRUE(bad);
  std::memcpy(&h, bad->data(), sizeof h);
  EXPECT_GT(h.errorLength, 0u);
  EXPECT_EQ(h.requestId, 4u);

  // Key 1 now holds the 256 KiB block of the second round.
  auto stillServing = peer.roundTrip(request(wire::Op::Exists, 5, {meta(1, 256 << 10, 0)}), {});
  ASSERT_TRUE(stillServing);
  EXPECT_EQ(records(*stillServing)[0].code, uint32_t(wire::Code::Found));
}

std::string errorOf(const std::vector<uint8_t> &reply) {
  wire::MessageHeader h;
  std::memcpy(&h, reply.data(), sizeof h);
  if (h.errorLength == 0 || reply.size() != sizeof h + h.errorLength)
    return "";
  return std::string(reinterpret_cast<const char *>(reply.data() + sizeof h), h.errorLength);
}

// A block in parts (PutPart, docs/kv-store.md "Blocks in parts"): stored
// only when every part came, in order, under one record, and the XXH3 taken
// across the parts equals the checksum of the last; anything else is
// refused or rejected without storing it or keeping its reservation, and
// the store serves on.
TEST(KvStoreRawProtocol, ABlockInPartsIsStoredOnlyWholeInOrderAndMatchingItsChecksum) {
  setenv("UCX_TLS", "tcp", 1);
  ServerOptions o;
  o.host = "127.0.0.1";
  o.capacityBytes = 8 << 20;
  auto server = Server::start(o);
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());
  constexpr size_t kBytes = (64 << 10) + 3000, kPart = 16 << 10;
  std::vector<uint8_t> block(kBytes);
  for (size_t i = 0; i < kBytes; ++i)
    block[i] = uint8_t(i * 13 + (i >> 9));
  const uint64_t sum = blockChecksum(block.data(), kBytes);
  // Sends parts [0, upTo) of the block (the last one the rest) as `id`,
  // the last carrying `lastSum`; the reply to the last.
  auto putInParts = [&](uint8_t key, uint64_t id, uint64_t lastSum) {
    std::optional<std::vector<uint8_t>> reply;
    for (size_t at = 0; at < kBytes; at += kPart) {
      bool last = kBytes - at < kPart + 1024;
      size_t length = last ? kBytes - at : kPart;
      wire::BlockMeta m = meta(key, kBytes, last ? lastSum : 0);
      m.slot = uint32_t(at / 1024);
      peer.reply.reset();
      if (last) {
        peer.post(request(wire::Op::PutPart, id, {m}), block.data() + at, length);
        reply = peer.awaitReply();
        break;
      }
      peer.post(request(wire::Op::PutPart, id, {m}), block.data() + at, length);
    }
    return reply;
  };
  auto found = [&](uint8_t key) {
    auto r = peer.roundTrip(request(wire::Op::Exists, 900 + key, {meta(key, kBytes, 0)}), {});
    return r && records(*r).size() == 1 && records(*r)[0].code == uint32_t(wire::Code::Found);
  };

  // Whole and matching: Stored, and a client reads back exactly its bytes
  // (the store kept the XXH3 of the whole block, which the client checks).
  auto stored = putInParts(1, 10, sum);
  ASSERT_TRUE(stored);
  ASSERT_EQ(records(*stored).size(), 1u) << errorOf(*stored);
  EXPECT_EQ(records(*stored)[0].code, uint32_t(wire::Code::Stored));
  {
    ClientOptions co;
    co.port = (*server)->port();
    auto client = Client::create(co);
    ASSERT_TRUE(client);
    std::vector<uint8_t> out(kBytes);
    BlockKey key;
    std::memset(key.bytes.data(), 1, key.bytes.size());
    GetBlock g{key, "f32", out.data(), kBytes};
    auto got = (*client)->get(std::span(&g, 1));
    ASSERT_TRUE(got) << got.message();
    EXPECT_EQ((*got)[0], BlockStatus::Found);
    EXPECT_EQ(out, block);
  }
  // Its checksum off by a bit: Rejected, not stored, nothing left reserved.
  auto rejected = putInParts(2, 11, sum ^ 1);
  ASSERT_TRUE(rejected);
  ASSERT_EQ(records(*rejected).size(), 1u) << errorOf(*rejected);
  EXPECT_EQ(records(*rejected)[0].code, uint32_t(wire::Code::Rejected));
  EXPECT_FALSE(found(2));
  // A changed byte in a middle part, the checksum of the original: Rejected.
  block[kPart + 5] ^= 0x40;
  auto changed = putInParts(3, 12, sum);
  block[kPart + 5] ^= 0x40;
  ASSERT_TRUE(changed);
  ASSERT_EQ(records(*changed).size(), 1u) << errorOf(*changed);
  EXPECT_EQ(records(*changed)[0].code, uint32_t(wire::Code::Rejected));
  EXPECT_FALSE(found(3));
  EXPECT_EQ((*server)->stats().bytesReserved, 0u);

  // Refused with an error reply, the block dropped with its reservation:
  auto part = [&](uint8_t key, uint64_t id, size_t at, size_t length, uint64_t bytes = kBytes,
                  bool rendezvous = false) {
    wire::BlockMeta m = meta(key, bytes, 0);
    m.slot = uint32_t(at / 1024);
    peer.reply.reset();
    peer.post(request(wire::Op::PutPart, id, {m}), block.data() + at, length, rendezvous);
  };
  auto refusal = [&](const char *what) {
    auto r = peer.awaitReply(5);
    EXPECT_TRUE(r) << what;
    return r ? errorOf(*r) : std::string();
  };
  // a part out of order (the second skipped),
  part(4, 20, 0, kPart);
  auto reservedSoon = [&] { // the store reads the part on its own thread
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((*server)->stats().bytesReserved == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return (*server)->stats().bytesReserved;
  };
  EXPECT_GT(reservedSoon(), 0u); // the first part reserved the block
  part(4, 20, 2 * kPart, kPart);
  EXPECT_NE(refusal("out of order").find("was due"), std::string::npos);
  // a later part of a block not begun,
  part(5, 21, kPart, kPart);
  EXPECT_NE(refusal("not begun").find("not begun"), std::string::npos);
  // a part whose record is another block's,
  part(6, 22, 0, kPart);
  part(6, 22, kPart, kPart, kBytes + 1024);
  EXPECT_NE(refusal("another record").find("differs"), std::string::npos);
  // a part before the last that is not a multiple of 1 KiB,
  part(7, 23, 0, kPart - 8);
  EXPECT_NE(refusal("unaligned").find("multiples of 1024"), std::string::npos);
  // and a part by rendezvous (they come eagerly, copied as they arrive).
  part(8, 24, 0, kPart, kBytes, /*rendezvous=*/true);
  EXPECT_NE(refusal("rendezvous").find("eagerly"), std::string::npos);
  for (uint8_t key : {4, 5, 6, 7, 8})
    EXPECT_FALSE(found(key)) << int(key);
  EXPECT_EQ((*server)->stats().bytesReserved, 0u) << "a refused block's reservation leaked";

  // A peer that begins more blocks than the store keeps half-received: the
  // one beyond the bound is refused (the others stay begun). Blocks larger
  // than the store: NoSpace at their end, so they evict nothing meanwhile.
  {
    RawPeer many;
    many.connect((*server)->port());
    for (size_t i = 0; i < wire::kMaxBlocksInParts; ++i)
      many.post(request(wire::Op::PutPart, 1000 + i, {meta(10, 16 << 20, 0)}), block.data(),
                1024);
    many.reply.reset();
    many.post(request(wire::Op::PutPart, 999, {meta(11, 16 << 20, 0)}), block.data(), 1024);
    auto r = many.awaitReply(10);
    ASSERT_TRUE(r);
    EXPECT_NE(errorOf(*r).find("blocks begun in parts"), std::string::npos) << errorOf(*r);
  }
  // A peer that goes away in the middle of a block: its reservation returns.
  {
    RawPeer leaving;
    leaving.connect((*server)->port());
    wire::BlockMeta m = meta(9, kBytes, 0);
    leaving.post(request(wire::Op::PutPart, 30, {m}), block.data(), kPart);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((*server)->stats().bytesReserved == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_GT((*server)->stats().bytesReserved, 0u);
  }
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((*server)->stats().bytesReserved != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ((*server)->stats().bytesReserved, 0u);
  EXPECT_TRUE(found(1)); // and the store serves on
}

// UCX's short protocol carries an active-message header's length in 16 bits
// (ucx::Worker::create), so the store answers no request whose reply (as
// many records) would need a header of 64 KiB or more: a peer with large
// TCP segments that sends one gets a short error reply naming the limit,
// not a reply cut to its length mod 65536, and the store keeps serving.
TEST(KvStoreRawProtocol, ARequestWhoseReplyHeaderWouldNotArriveWholeIsRefused) {
  setenv("UCX_TLS", "tcp", 1);
  setenv("UCX_TCP_TX_SEG_SIZE", "256k", 1);
  setenv("UCX_TCP_RX_SEG_SIZE", "256k", 1);
  ServerOptions o;
  o.host = "127.0.0.1";
  o.capacityBytes = 16 << 20;
  o.sharedMemory = false;
  auto server = Server::start(o);
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());
  unsetenv("UCX_TCP_TX_SEG_SIZE");
  unsetenv("UCX_TCP_RX_SEG_SIZE");

  // 1000 records: a 72,024-byte header. The payload (1000 x 512 bytes, more
  // than a segment) keeps the request itself off the short protocol.
  constexpr size_t kRecords = 1000, kBytes = 512;
  std::vector<uint8_t> payload(kRecords * kBytes, 0x33);
  std::vector<wire::BlockMeta> metas;
  for (size_t i = 0; i < kRecords; ++i) {
    wire::BlockMeta m = meta(uint8_t(i), kBytes, blockChecksum(payload.data(), kBytes));
    std::memcpy(m.key + 1, &i, sizeof i); // distinct keys
    metas.push_back(m);
  }
  auto reply = peer.roundTrip(request(wire::Op::Put, 7, metas), payload);
  ASSERT_TRUE(reply) << "no reply";
  wire::MessageHeader h;
  ASSERT_GE(reply->size(), sizeof h);
  std::memcpy(&h, reply->data(), sizeof h);
  EXPECT_EQ(h.magic, wire::kMagic) << "a reply cut by UCX's short protocol";
  EXPECT_EQ(h.requestId, 7u);
  ASSERT_GT(h.errorLength, 0u);
  ASSERT_EQ(reply->size(), sizeof h + h.errorLength);
  std::string why(reinterpret_cast<const char *>(reply->data() + sizeof h), h.errorLength);
  EXPECT_NE(why.find("1000 block records"), std::string::npos) << why;
  EXPECT_EQ((*server)->stats().blocks, 0u);

  // Within the limit the same peer is served.
  metas.resize(100);
  payload.resize(100 * kBytes);
  auto served = peer.roundTrip(request(wire::Op::Put, 8, metas), payload);
  ASSERT_TRUE(served);
  auto r = records(*served);
  ASSERT_EQ(r.size(), 100u);
  for (const auto &m : r)
    EXPECT_EQ(m.code, uint32_t(wire::Code::Stored));
}

// A 4 MiB store on loopback whose blocks live in its shared-memory segment.
ServerOptions sharedStoreOptions() {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.capacityBytes = 4 << 20;
  return o;
}

// Hello, then the store's segment mapped as the library's client maps it.
llmir::Result<std::unique_ptr<ArenaMapping>> mapStoreSegment(RawPeer &peer) {
  auto hello = peer.roundTrip(request(wire::Op::Hello, 1, {}), {});
  if (!hello || hello->size() != sizeof(wire::MessageHeader) + sizeof(wire::ArenaOffer))
    return llmir::Status::error("Hello was not answered with an arena offer");
  wire::ArenaOffer offer;
  std::memcpy(&offer, hello->data() + sizeof(wire::MessageHeader), sizeof offer);
  ArenaNonce nonce;
  std::memcpy(nonce.data(), offer.nonce, nonce.size());
  return ArenaMapping::open(static_cast<pid_t>(offer.pid), offer.fd, offer.bytes, nonce);
}

// A shared-memory put is committed under the checksum its client computed
// while copying into the segment; the store does not hash the bytes again.
// A client whose bytes in the segment do not match that checksum (a buggy or
// hostile one) therefore gets its block stored, but no reader ever uses it:
// every get, through the segment or in messages, verifies the bytes it copied.
TEST(KvStoreRawProtocol, ASharedPutWhoseBytesDoNotMatchItsChecksumNeverReachesAReader) {
  setenv("UCX_TLS", "shm,tcp", 1);
  auto server = Server::start(sharedStoreOptions());
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());
  auto arena = mapStoreSegment(peer);
  ASSERT_TRUE(arena) << arena.message();

  const size_t bytes = 256 << 10;
  std::vector<uint8_t> good(bytes), bad(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    good[i] = uint8_t(i * 7);
    bad[i] = uint8_t(i * 13);
  }
  auto reserved = peer.roundTrip(
      request(wire::Op::PutReserve, 2, {meta(1, bytes, 0), meta(2, bytes, 0)}), {});
  ASSERT_TRUE(reserved);
  auto slots = records(*reserved);
  ASSERT_EQ(slots.size(), 2u);
  for (const auto &m : slots)
    ASSERT_EQ(m.code, uint32_t(wire::Code::Reserved));
  // Block 1 honestly; block 2 claims the checksum of other bytes than it wrote.
  std::memcpy((*arena)->base() + uint64_t(slots[0].slot) * kArenaAlignment, good.data(), bytes);
  std::memcpy((*arena)->base() + uint64_t(slots[1].slot) * kArenaAlignment, bad.data(), bytes);
  wire::BlockMeta first = meta(1, bytes, blockChecksum(good.data(), bytes));
  wire::BlockMeta second = meta(2, bytes, blockChecksum(good.data(), bytes));
  first.slot = slots[0].slot;
  second.slot = slots[1].slot;
  auto committed = peer.roundTrip(request(wire::Op::PutCommit, 3, {first, second}), {});
  ASSERT_TRUE(committed);
  auto codes = records(*committed);
  ASSERT_EQ(codes.size(), 2u);
  EXPECT_EQ(codes[0].code, uint32_t(wire::Code::Stored));

  for (bool shared : {true, false}) {
    SCOPED_TRACE(shared ? "read through the segment" : "read in messages");
    ClientOptions co;
    co.port = (*server)->port();
    co.timeout = std::chrono::seconds(10);
    co.sharedMemory = shared;
    auto reader = Client::create(co);
    ASSERT_TRUE(reader) << reader.message();
    std::vector<uint8_t> out1(bytes, 0), out2(bytes, 0);
    BlockKey k1, k2;
    k1.bytes.fill(1);
    k2.bytes.fill(2);
    GetBlock gets[2] = {{k1, "f32", out1.data(), bytes}, {k2, "f32", out2.data(), bytes}};
    auto got = (*reader)->get(std::span(gets, 2));
    ASSERT_TRUE(got) << got.message();
    EXPECT_EQ((*reader)->usesSharedMemory(), shared);
    EXPECT_EQ((*got)[0], BlockStatus::Found);
    EXPECT_EQ(out1, good);
    EXPECT_EQ((*got)[1], BlockStatus::Rejected) << "bytes that do not match their checksum";
  }
}

// The request channel (docs/kv-store.md, "Request channel"), driven by hand:
// it answers the shared-memory operations exactly as the endpoint does,
// refuses others and requests longer than its area with an error reply (the
// store keeps serving), and a second OpenChannel returns the same channel.
TEST(KvStoreRawProtocol, TheRequestChannelServesItsOperationsAndRefusesTheRest) {
  setenv("UCX_TLS", "shm,tcp", 1);
  auto server = Server::start(sharedStoreOptions());
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());
  auto arena = mapStoreSegment(peer);
  ASSERT_TRUE(arena) << arena.message();
  auto opened = peer.roundTrip(request(wire::Op::OpenChannel, 2, {}), {});
  ASSERT_TRUE(opened);
  ASSERT_EQ(opened->size(), sizeof(wire::MessageHeader) + sizeof(wire::ChannelOffer));
  wire::ChannelOffer offer;
  std::memcpy(&offer, opened->data() + sizeof(wire::MessageHeader), sizeof offer);
  ASSERT_NE(offer.slot, 0u);
  ASSERT_EQ(offer.messageBytes, wire::kChannelMessageBytes);
  ASSERT_LE(uint64_t(offer.slot) * kArenaAlignment + sizeof(wire::ChannelHeader) +
                2 * offer.messageBytes,
            (*arena)->size());
  auto again = peer.roundTrip(request(wire::Op::OpenChannel, 3, {}), {});
  ASSERT_TRUE(again);
  ASSERT_EQ(again->size(), opened->size());
  EXPECT_EQ(std::memcmp(again->data() + sizeof(wire::MessageHeader), &offer, sizeof offer), 0);

  // The store's wake pipe, opened as the client opens it.
  std::string pipePath = "/proc/" + std::to_string(getpid()) + "/fd/" +
                         std::to_string(offer.wakeFd);
  int wake = open(pipePath.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(wake, 0) << pipePath;
  uint8_t *base = (*arena)->base() + uint64_t(offer.slot) * kArenaAlignment;
  auto *channel = reinterpret_cast<wire::ChannelHeader *>(base);
  uint8_t *requestArea = base + sizeof(wire::ChannelHeader);
  const uint8_t *replyArea = requestArea + offer.messageBytes;
  uint32_t seq = 0;
  auto onChannel = [&](const std::vector<uint8_t> &message, uint32_t length) {
    std::memcpy(requestArea, message.data(), std::min<size_t>(message.size(), offer.messageBytes));
    std::atomic_ref<uint32_t>(channel->requestLength).store(length);
    std::atomic_ref<uint32_t>(channel->requestSeq).store(++seq);
    char byte = 1;
    EXPECT_EQ(write(wake, &byte, 1), 1);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::atomic_ref<uint32_t>(channel->replySeq).load() != seq &&
           std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    EXPECT_EQ(std::atomic_ref<uint32_t>(channel->replySeq).load(), seq) << "no reply";
    uint32_t replyLength = std::atomic_ref<uint32_t>(channel->replyLength).load();
    EXPECT_LE(replyLength, offer.messageBytes);
    return std::vector<uint8_t>(replyArea, replyArea + std::min(replyLength, offer.messageBytes));
  };
  auto errorOf = [](const std::vector<uint8_t> &reply) {
    wire::MessageHeader h;
    std::memcpy(&h, reply.data(), sizeof h);
    if (!h.errorLength || reply.size() != sizeof h + h.errorLength)
      return std::string();
    return std::string(reinterpret_cast<const char *>(reply.data() + sizeof h), h.errorLength);
  };

  auto exists = request(wire::Op::Exists, 4, {meta(7, 4096, 0)});
  auto reply = onChannel(exists, uint32_t(exists.size()));
  auto r = records(reply);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Missing));

  // A get in messages carries block bytes: not through the channel.
  auto get = request(wire::Op::Get, 5, {meta(7, 4096, 0)});
  EXPECT_NE(errorOf(onChannel(get, uint32_t(get.size()))).find("not carried by the request channel"),
            std::string::npos);
  // A length beyond the area, and one shorter than a header.
  EXPECT_NE(errorOf(onChannel(exists, offer.messageBytes + 1)).find("bytes in a channel"),
            std::string::npos);
  EXPECT_NE(errorOf(onChannel(exists, 3)).find("bytes in a channel"), std::string::npos);

  // Still serving: a block reserved, written and committed through the channel
  // is read back by a library client.
  const size_t bytes = 64 << 10;
  std::vector<uint8_t> block(bytes);
  for (size_t i = 0; i < bytes; ++i)
    block[i] = uint8_t(i * 5 + 1);
  auto reserve = request(wire::Op::PutReserve, 6, {meta(8, bytes, 0)});
  r = records(onChannel(reserve, uint32_t(reserve.size())));
  ASSERT_EQ(r.size(), 1u);
  ASSERT_EQ(r[0].code, uint32_t(wire::Code::Reserved));
  std::memcpy((*arena)->base() + uint64_t(r[0].slot) * kArenaAlignment, block.data(), bytes);
  wire::BlockMeta m = meta(8, bytes, blockChecksum(block.data(), bytes));
  m.slot = r[0].slot;
  auto commit = request(wire::Op::PutCommit, 7, {m});
  r = records(onChannel(commit, uint32_t(commit.size())));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Stored));

  // PutPipelined: its client does not wait for the reply, so only the
  // channel (read in order) carries it.
  auto overUcx = peer.roundTrip(request(wire::Op::PutPipelined, 8, {meta(9, bytes, 0)}), {});
  ASSERT_TRUE(overUcx);
  EXPECT_NE(errorOf(*overUcx).find("request channel only"), std::string::npos);
  // A room (slot 0 asks for one): its budget is reserved at once.
  auto askRoom = request(wire::Op::PutPipelined, 9, {meta(9, bytes, 0)});
  r = records(onChannel(askRoom, uint32_t(askRoom.size())));
  ASSERT_EQ(r.size(), 1u);
  ASSERT_EQ(r[0].code, uint32_t(wire::Code::Reserved));
  uint32_t room = r[0].slot;
  ASSERT_NE(room, 0u);
  EXPECT_EQ((*server)->stats().bytesReserved, bytes);
  // Past the endpoint's share of the budget (4 MiB / 16): no room.
  auto tooMuch = request(wire::Op::PutPipelined, 10, {meta(9, 512 << 10, 0)});
  r = records(onChannel(tooMuch, uint32_t(tooMuch.size())));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::NoSpace));
  // A commit into a room the endpoint does not hold, or of another size, is
  // Rejected (the second frees the room and its budget).
  wire::BlockMeta stray = meta(9, bytes, 0);
  stray.slot = room + 1;
  auto strayCommit = request(wire::Op::PutPipelined, 11, {stray});
  r = records(onChannel(strayCommit, uint32_t(strayCommit.size())));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Rejected));
  wire::BlockMeta shorter = meta(9, bytes - 64, 0);
  shorter.slot = room;
  auto shortCommit = request(wire::Op::PutPipelined, 12, {shorter});
  r = records(onChannel(shortCommit, uint32_t(shortCommit.size())));
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Rejected));
  EXPECT_EQ((*server)->stats().bytesReserved, 0u);
  // A room, the block written into it and committed, with a room for the
  // next put in the same request: Stored, and a new room Reserved.
  r = records(onChannel(askRoom, uint32_t(askRoom.size())));
  ASSERT_EQ(r[0].code, uint32_t(wire::Code::Reserved));
  room = r[0].slot;
  std::vector<uint8_t> piped(bytes);
  for (size_t i = 0; i < bytes; ++i)
    piped[i] = uint8_t(i * 3 + 7);
  std::memcpy((*arena)->base() + uint64_t(room) * kArenaAlignment, piped.data(), bytes);
  wire::BlockMeta pipedCommit = meta(9, bytes, blockChecksum(piped.data(), bytes));
  pipedCommit.slot = room;
  auto commitAndRoom = request(wire::Op::PutPipelined, 13, {pipedCommit, meta(0, bytes, 0)});
  r = records(onChannel(commitAndRoom, uint32_t(commitAndRoom.size())));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Stored));
  EXPECT_EQ(r[1].code, uint32_t(wire::Code::Reserved));
  EXPECT_EQ((*server)->stats().bytesReserved, bytes) << "the new room's budget";
  // Given back (0 bytes): its budget is the store's again.
  wire::BlockMeta giveBack{};
  giveBack.slot = r[1].slot;
  auto back = request(wire::Op::PutPipelined, 14, {giveBack});
  r = records(onChannel(back, uint32_t(back.size())));
  EXPECT_EQ(r[0].code, uint32_t(wire::Code::Missing));
  EXPECT_EQ((*server)->stats().bytesReserved, 0u);
  close(wake);

  ClientOptions co;
  co.port = (*server)->port();
  co.timeout = std::chrono::seconds(10);
  auto reader = Client::create(co);
  ASSERT_TRUE(reader) << reader.message();
  std::vector<uint8_t> out(bytes, 0);
  BlockKey k;
  k.bytes.fill(8);
  GetBlock g{k, "f32", out.data(), bytes};
  auto got = (*reader)->get(std::span(&g, 1));
  ASSERT_TRUE(got) << got.message();
  EXPECT_TRUE((*reader)->usesRequestChannel()) << (*reader)->describeConnection();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(out, block);
  k.bytes.fill(9);
  GetBlock gp{k, "f32", out.data(), bytes};
  got = (*reader)->get(std::span(&gp, 1));
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(out, piped);
}

// PutCommitAhead: the reply reserves room of each record's size for the
// endpoint's next put, which commits into it without a PutReserve; room
// ahead that the next commit does not name is freed by it (a later commit
// naming it is Rejected), and a commit into room of another size is Rejected.
TEST(KvStoreRawProtocol, RoomReservedAheadTakesTheNextPutAndIsFreedByTheCommitAfter) {
  setenv("UCX_TLS", "shm,tcp", 1);
  auto server = Server::start(sharedStoreOptions());
  ASSERT_TRUE(server) << server.message();
  RawPeer peer;
  peer.connect((*server)->port());
  auto arena = mapStoreSegment(peer);
  ASSERT_TRUE(arena) << arena.message();

  const size_t bytes = 64 << 10;
  auto block = [&](uint8_t seed) {
    std::vector<uint8_t> b(bytes);
    for (size_t i = 0; i < bytes; ++i)
      b[i] = uint8_t(i * seed + seed);
    return b;
  };
  auto write = [&](uint32_t slot, const std::vector<uint8_t> &b) {
    std::memcpy((*arena)->base() + uint64_t(slot) * kArenaAlignment, b.data(), b.size());
  };
  auto commit = [&](wire::Op op, uint64_t id, uint8_t key, uint32_t slot,
                    const std::vector<uint8_t> &b) {
    wire::BlockMeta m = meta(key, b.size(), blockChecksum(b.data(), b.size()));
    m.slot = slot;
    auto reply = peer.roundTrip(request(op, id, {m}), {});
    EXPECT_TRUE(reply);
    auto r = reply ? records(*reply) : std::vector<wire::BlockMeta>{};
    EXPECT_EQ(r.size(), 1u);
    return r.empty() ? wire::BlockMeta{} : r[0];
  };

  // Block 1 the two-step way, asking for room ahead.
  auto reserved = peer.roundTrip(request(wire::Op::PutReserve, 2, {meta(1, bytes, 0)}), {});
  ASSERT_TRUE(reserved);
  uint32_t slot1 = records(*reserved).at(0).slot;
  ASSERT_NE(slot1, 0u);
  std::vector<uint8_t> b1 = block(3), b2 = block(5), b3 = block(7);
  write(slot1, b1);
  wire::BlockMeta r = commit(wire::Op::PutCommitAhead, 3, 1, slot1, b1);
  EXPECT_EQ(r.code, uint32_t(wire::Code::Stored));
  uint32_t ahead1 = r.slot;
  ASSERT_NE(ahead1, 0u) << "no room reserved ahead";
  EXPECT_NE(ahead1, slot1);
  EXPECT_EQ((*server)->stats().bytesReserved, 0u) << "room ahead is not budget";

  // Block 2 straight into that room: one round trip.
  write(ahead1, b2);
  r = commit(wire::Op::PutCommitAhead, 4, 2, ahead1, b2);
  EXPECT_EQ(r.code, uint32_t(wire::Code::Stored));
  uint32_t ahead2 = r.slot;
  ASSERT_NE(ahead2, 0u);

  // A commit into room ahead of another size is rejected (and frees it).
  wire::BlockMeta wrongSize = meta(5, bytes / 2, 0);
  wrongSize.slot = ahead2;
  auto wrong = peer.roundTrip(request(wire::Op::PutCommitAhead, 5, {wrongSize}), {});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(records(*wrong).at(0).code, uint32_t(wire::Code::Rejected));
  uint32_t ahead3 = records(*wrong).at(0).slot; // room of bytes / 2 now

  // Block 3 the two-step way without room ahead: the commit frees ahead3,
  // so a later commit naming it finds nothing reserved there.
  reserved = peer.roundTrip(request(wire::Op::PutReserve, 6, {meta(3, bytes, 0)}), {});
  ASSERT_TRUE(reserved);
  uint32_t slot3 = records(*reserved).at(0).slot;
  write(slot3, b3);
  r = commit(wire::Op::PutCommit, 7, 3, slot3, b3);
  EXPECT_EQ(r.code, uint32_t(wire::Code::Stored));
  std::vector<uint8_t> half(bytes / 2, 9);
  r = commit(wire::Op::PutCommitAhead, 8, 4, ahead3, half);
  EXPECT_EQ(r.code, uint32_t(wire::Code::Rejected)) << "freed room ahead was still taken";

  PoolStats s = (*server)->stats();
  EXPECT_EQ(s.blocks, 3u);
  EXPECT_EQ(s.bytesReserved, 0u);

  ClientOptions co;
  co.port = (*server)->port();
  co.timeout = std::chrono::seconds(10);
  auto reader = Client::create(co);
  ASSERT_TRUE(reader) << reader.message();
  std::vector<uint8_t> o1(bytes), o2(bytes), o3(bytes), o4(bytes / 2);
  BlockKey k1, k2, k3, k4;
  k1.bytes.fill(1);
  k2.bytes.fill(2);
  k3.bytes.fill(3);
  k4.bytes.fill(4);
  GetBlock gets[4] = {{k1, "f32", o1.data(), bytes},
                      {k2, "f32", o2.data(), bytes},
                      {k3, "f32", o3.data(), bytes},
                      {k4, "f32", o4.data(), bytes / 2}};
  auto got = (*reader)->get(std::span(gets, 4));
  ASSERT_TRUE(got) << got.message();
  EXPECT_TRUE((*reader)->usesSharedMemory());
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ((*got)[1], BlockStatus::Found);
  EXPECT_EQ((*got)[2], BlockStatus::Found);
  EXPECT_EQ((*got)[3], BlockStatus::Missing);
  EXPECT_EQ(o1, b1);
  EXPECT_EQ(o2, b2);
  EXPECT_EQ(o3, b3);
}

} // namespace

namespace {

// A fake store that answers every get with the bytes it was built with,
// claiming they are the requested blocks, with a checksum and key chosen by
// the test: the client must reject what does not match.
struct LyingStore {
  std::unique_ptr<ucx::Worker> worker;
  ucp_listener_h listener = nullptr;
  std::vector<ucp_ep_h> eps;
  std::vector<uint8_t> bytes;        // sent for every Found block
  bool corruptChecksum = false;      // record's checksum != bytes
  bool wrongKey = false;             // record's key != requested key
  bool rendezvous = false;           // force UCX's rendezvous for the reply's bytes
  // GetParts requests are answered in parts of this many bytes (0: whole),
  // with `partFault`: 1 the second part left out, 2 the second part under
  // another checksum, 3 the second part by rendezvous.
  size_t partBytes = 0;
  int partFault = 0;
  std::vector<std::vector<uint8_t>> partHeaders; // kept until sent
  std::vector<uint8_t> replyHeader;  // kept until the send completes
  std::vector<ucp_dt_iov_t> iov;     // so is the iov array (UCX reads it later)
  std::atomic<bool> stop{false};
  std::thread thread;

  static void onConnect(ucp_conn_request_h request, void *arg) {
    auto *self = static_cast<LyingStore *>(arg);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.conn_request = request;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = [](void *, ucp_ep_h, ucs_status_t) {}; // the client left
    p.err_handler.arg = nullptr;
    ucp_ep_h ep;
    if (ucp_ep_create(self->worker->handle(), &p, &ep) == UCS_OK)
      self->eps.push_back(ep);
  }

  static ucs_status_t onRequest(void *arg, const void *header, size_t length, void *,
                                size_t, const ucp_am_recv_param_t *param) {
    auto *self = static_cast<LyingStore *>(arg);
    wire::MessageHeader h;
    std::memcpy(&h, header, sizeof h);
    self->replyHeader.assign(static_cast<const uint8_t *>(header),
                             static_cast<const uint8_t *>(header) + length);
    std::vector<ucp_dt_iov_t> &iov = self->iov;
    iov.clear();
    for (uint32_t i = 0; i < h.count; ++i) {
      wire::BlockMeta m;
      uint8_t *at = self->replyHeader.data() + sizeof h + i * sizeof m;
      std::memcpy(&m, at, sizeof m);
      m.code = uint32_t(wire::Code::Found);
      m.checksum = blockChecksum(self->bytes.data(), self->bytes.size()) ^
                   (self->corruptChecksum ? 1 : 0);
      if (self->wrongKey)
        m.key[0] ^= 0xff;
      std::memcpy(at, &m, sizeof m);
      iov.push_back({self->bytes.data(), self->bytes.size()});
    }
    if (h.op == uint16_t(wire::Op::GetParts) && self->partBytes > 0 && h.count == 1) {
      wire::BlockMeta m;
      std::memcpy(&m, self->replyHeader.data() + sizeof h, sizeof m);
      self->partHeaders.clear();
      self->partHeaders.reserve(self->bytes.size() / self->partBytes + 1);
      size_t index = 0;
      for (size_t at = 0; at < self->bytes.size(); ++index) {
        bool last = self->bytes.size() - at < self->partBytes + 1024;
        size_t length = last ? self->bytes.size() - at : self->partBytes;
        wire::BlockMeta pm = m;
        pm.slot = uint32_t(at / 1024);
        if (self->partFault == 2 && index == 1)
          pm.checksum ^= 2;
        auto &header = self->partHeaders.emplace_back(sizeof h + sizeof pm);
        std::memcpy(header.data(), self->replyHeader.data(), sizeof h);
        std::memcpy(header.data() + sizeof h, &pm, sizeof pm);
        ucp_request_param_t pp{};
        pp.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS;
        pp.datatype = ucp_dt_make_contig(1);
        pp.flags = self->partFault == 3 && index == 1 ? UCP_AM_SEND_FLAG_RNDV
                                                      : UCP_AM_SEND_FLAG_EAGER;
        if (!(self->partFault == 1 && index == 1)) {
          ucs_status_ptr_t req =
              ucp_am_send_nbx(param->reply_ep, wire::kAmReply, header.data(), header.size(),
                              self->bytes.data() + at, length, &pp);
          if (req && !UCS_PTR_IS_ERR(req))
            ucp_request_free(req);
        }
        at += length;
      }
      return UCS_OK;
    }
    ucp_request_param_t rp{};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS;
    rp.datatype = UCP_DATATYPE_IOV;
    rp.flags = self->rendezvous ? UCP_AM_SEND_FLAG_RNDV : 0;
    ucs_status_ptr_t req =
        ucp_am_send_nbx(param->reply_ep, wire::kAmReply, self->replyHeader.data(),
                        self->replyHeader.size(), iov.data(), iov.size(), &rp);
    if (req && !UCS_PTR_IS_ERR(req))
      ucp_request_free(req); // completes on later progress
    return UCS_OK;
  }

  uint16_t start() {
    auto w = ucx::Worker::create(/*listener=*/true);
    EXPECT_TRUE(w) << w.message();
    worker = std::move(*w);
    ucp_am_handler_param_t h{};
    h.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    h.id = wire::kAmRequest;
    h.cb = &LyingStore::onRequest;
    h.arg = this;
    EXPECT_EQ(ucp_worker_set_am_recv_handler(worker->handle(), &h), UCS_OK);
    socklen_t len = 0;
    auto addr = ucx::resolve("127.0.0.1", 0, len);
    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr *>(&*addr);
    lp.sockaddr.addrlen = len;
    lp.conn_handler.cb = &LyingStore::onConnect;
    lp.conn_handler.arg = this;
    EXPECT_EQ(ucp_listener_create(worker->handle(), &lp, &listener), UCS_OK);
    ucp_listener_attr_t attr{};
    attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    EXPECT_EQ(ucp_listener_query(listener, &attr), UCS_OK);
    thread = std::thread([this] {
      while (!stop)
        if (!worker->progress())
          worker->wait(5);
    });
    return ntohs(reinterpret_cast<const sockaddr_in *>(&attr.sockaddr)->sin_port);
  }

  ~LyingStore() {
    stop = true;
    if (thread.joinable())
      thread.join();
    for (ucp_ep_h ep : eps)
      ucx::closeEndpoint(*worker, ep, /*force=*/true);
    if (listener)
      ucp_listener_destroy(listener);
  }
};

// One get of the block LyingStore answers for (key 7 .. 7, "f32") into
// `out`, through a fresh client with `options` (its port set here).
llmir::Result<std::vector<BlockStatus>> getFrom(LyingStore &store, std::vector<uint8_t> &out,
                                                ClientOptions options = {}) {
  options.port = store.start();
  options.timeout = std::chrono::seconds(10);
  auto client = Client::create(options);
  if (!client)
    return client.status();
  BlockKey key;
  key.bytes.fill(7);
  GetBlock g{key, "f32", out.data(), out.size()};
  return (*client)->get(std::span(&g, 1));
}

TEST(KvStoreRawProtocol, TheClientRejectsBlocksThatDoNotMatch) {
  setenv("UCX_TLS", "tcp", 1);
  for (size_t size : {size_t(512), size_t(256 << 10)}) { // eager and rendezvous
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE("size " + std::to_string(size) + " mode " + std::to_string(mode));
      LyingStore store;
      store.bytes.assign(size, 0x5a);
      store.corruptChecksum = mode == 1;
      store.wrongKey = mode == 2;
      store.rendezvous = size > 512;
      std::vector<uint8_t> out(size, 0);
      auto got = getFrom(store, out);
      ASSERT_TRUE(got) << got.message();
      if (mode == 0) {
        EXPECT_EQ((*got)[0], BlockStatus::Found) << "an honest reply is accepted";
        EXPECT_EQ(out, store.bytes);
      } else {
        EXPECT_EQ((*got)[0], BlockStatus::Rejected)
            << (mode == 1 ? "corrupted bytes" : "another key") << ", " << size << " bytes";
        if (mode == 2)
          EXPECT_EQ(out, std::vector<uint8_t>(size, 0)) << "another key's bytes reached the caller";
      }
    }
  }
}

// A block a store sends in parts (GetParts): the client copies each part
// into the caller's destination while hashing across them and returns
// Found only when the XXH3 of the whole equals the record's; a record for
// another key sends every part to scratch; a part out of order, under
// another record or by rendezvous fails the call (never a Found block).
TEST(KvStoreRawProtocol, TheClientChecksEveryPartOfABlockInParts) {
  setenv("UCX_TLS", "tcp", 1);
  const size_t size = (3 << 20) + 4096;
  struct Case {
    const char *name;
    bool corrupt, wrongKey;
    int fault;
    const char *failure; // the call's error, or null: a status
  };
  for (const Case &c : {Case{"honest", false, false, 0, nullptr},
                        Case{"corrupted bytes", true, false, 0, nullptr},
                        Case{"another key", false, true, 0, nullptr},
                        Case{"a part left out", false, false, 1, "was due"},
                        Case{"a part under another record", false, false, 2, "unlike its first"},
                        Case{"a part by rendezvous", false, false, 3, "by rendezvous"}}) {
    SCOPED_TRACE(c.name);
    LyingStore store;
    store.bytes.resize(size);
    for (size_t i = 0; i < size; ++i)
      store.bytes[i] = uint8_t(i * 31 + (i >> 12));
    store.corruptChecksum = c.corrupt;
    store.wrongKey = c.wrongKey;
    store.partBytes = 512 << 10;
    store.partFault = c.fault;
    std::vector<uint8_t> out(size, 0);
    auto got = getFrom(store, out);
    if (c.failure) {
      ASSERT_FALSE(got);
      EXPECT_NE(got.message().find(c.failure), std::string::npos) << got.message();
      continue;
    }
    ASSERT_TRUE(got) << got.message();
    if (!c.corrupt && !c.wrongKey) {
      EXPECT_EQ((*got)[0], BlockStatus::Found);
      EXPECT_EQ(out, store.bytes);
    } else {
      EXPECT_EQ((*got)[0], BlockStatus::Rejected);
      if (c.wrongKey)
        EXPECT_EQ(out, std::vector<uint8_t>(size, 0)) << "another key's bytes reached the caller";
    }
  }
  // A client that takes no parts asks with Get: one message, as before.
  LyingStore whole;
  whole.bytes.assign(size, 0x3c);
  whole.partBytes = 512 << 10;
  ClientOptions wholeBlocks;
  wholeBlocks.partBytes = 0;
  std::vector<uint8_t> out(size, 0);
  auto got = getFrom(whole, out, wholeBlocks);
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(out, whole.bytes);
}

} // namespace
