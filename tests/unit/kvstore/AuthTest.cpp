// Issue 14: the kv store's UCX listener behind the cluster secret. Real UCX
// on loopback: the store's own client with the right, a wrong and no secret,
// and raw UCX peers that skip or fake the handshake. A peer without the
// secret gets no reply to anything and is disconnected; nothing it sends is
// stored.
#include "llmir/kvstore/Client.h"
#include "llmir/kvstore/Server.h"

#include "Ucx.h"
#include "Wire.h"

#include "llmir/support/ClusterAuth.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <thread>

using namespace llmir::kvstore;
using namespace std::chrono_literals;
namespace wire = llmir::kvstore::wire;
namespace auth = llmir::auth;

namespace {

const std::string kSecret = "kv-store-test-secret-0123456789";

BlockKey keyFor(int32_t firstToken) {
  std::vector<int32_t> tokens(16);
  std::iota(tokens.begin(), tokens.end(), firstToken);
  BlockKeyFields f;
  f.model = "auth-test";
  f.layerEnd = 1;
  f.dtype = "f32";
  f.blockTokens = 16;
  f.tokenPrefix = tokens;
  return *makeBlockKey(f);
}

bool eventually(const std::function<bool()> &condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition())
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return condition();
}

class KvStoreAuth : public ::testing::Test {
protected:
  void SetUp() override { setenv("UCX_TLS", "tcp", 1); }

  std::unique_ptr<Server> startServer(std::optional<std::string> secret,
                                      std::chrono::milliseconds handshakeTimeout = 5s) {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.capacityBytes = 16 << 20;
    o.clusterSecret = std::move(secret);
    o.handshakeTimeout = handshakeTimeout;
    auto s = Server::start(o);
    EXPECT_TRUE(s) << s.message();
    return s ? std::move(*s) : nullptr;
  }
  std::unique_ptr<Client> client(uint16_t port, std::optional<std::string> secret) {
    ClientOptions o;
    o.port = port;
    o.timeout = 3s;
    o.clusterSecret = std::move(secret);
    auto c = Client::create(o);
    EXPECT_TRUE(c) << c.message();
    return c ? std::move(*c) : nullptr;
  }
  // Puts one 4 KiB block; the call's result.
  static llmir::Result<std::vector<BlockStatus>> putOne(Client &c, int32_t token,
                                                        std::vector<float> &data) {
    data.assign(1024, static_cast<float>(token));
    PutBlock put{keyFor(token), "f32", data.data(), data.size() * sizeof(float)};
    return c.put(std::span(&put, 1));
  }
};

TEST_F(KvStoreAuth, AClientWithTheSecretIsServed) {
  auto server = startServer(kSecret);
  ASSERT_TRUE(server);
  auto c = client(server->port(), kSecret);
  std::vector<float> data;
  auto put = putOne(*c, 1, data);
  ASSERT_TRUE(put) << put.message();
  EXPECT_EQ((*put)[0], BlockStatus::Stored);
  std::vector<float> back(1024);
  GetBlock get{keyFor(1), "f32", back.data(), back.size() * sizeof(float)};
  auto got = c->get(std::span(&get, 1));
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(back, data);
}

TEST_F(KvStoreAuth, AClientWithoutTheSecretGetsNothingAndIsDisconnected) {
  auto server = startServer(kSecret);
  ASSERT_TRUE(server);
  auto stranger = client(server->port(), std::nullopt);
  std::vector<float> data;
  auto put = putOne(*stranger, 2, data);
  EXPECT_FALSE(put) << "a put without the secret was answered";
  EXPECT_EQ(server->stats().blocks, 0u);
  EXPECT_TRUE(eventually([&] { return server->connections() == 0; }))
      << server->connections() << " endpoints still open";
  // Its get is not answered either, even for a block a member stored.
  auto member = client(server->port(), kSecret);
  ASSERT_TRUE(putOne(*member, 3, data));
  std::vector<float> back(1024);
  GetBlock get{keyFor(3), "f32", back.data(), back.size() * sizeof(float)};
  EXPECT_FALSE(stranger->get(std::span(&get, 1)));
  EXPECT_NE(back, data);
}

TEST_F(KvStoreAuth, AClientWithAWrongSecretGetsNothing) {
  auto server = startServer(kSecret);
  ASSERT_TRUE(server);
  auto wrong = client(server->port(), std::string("a-wrong-secret-0123456789"));
  std::vector<float> data;
  auto put = putOne(*wrong, 4, data);
  ASSERT_FALSE(put);
  EXPECT_NE(put.message().find("did not prove the cluster secret"), std::string::npos)
      << put.message();
  EXPECT_EQ(server->stats().blocks, 0u);
}

TEST_F(KvStoreAuth, AClientWithASecretRefusesAStoreWithout) {
  auto server = startServer(std::nullopt);
  ASSERT_TRUE(server);
  auto c = client(server->port(), kSecret);
  std::vector<float> data;
  auto put = putOne(*c, 5, data);
  ASSERT_FALSE(put);
  EXPECT_NE(put.message().find("holds no cluster secret"), std::string::npos) << put.message();
  EXPECT_EQ(server->stats().blocks, 0u);
  // Without secrets on either side the store serves as before.
  auto open = client(server->port(), std::nullopt);
  EXPECT_TRUE(putOne(*open, 5, data));
}

// A UCX peer that speaks the wire format itself.
struct RawPeer {
  std::unique_ptr<ucx::Worker> worker;
  ucp_ep_h ep = nullptr;
  bool failed = false;
  std::optional<std::string> reply, authReply;

  static ucs_status_t onReply(void *arg, const void *header, size_t length, void *, size_t,
                              const ucp_am_recv_param_t *) {
    static_cast<RawPeer *>(arg)->reply.emplace(static_cast<const char *>(header), length);
    return UCS_OK;
  }
  static ucs_status_t onAuthReply(void *arg, const void *header, size_t length, void *,
                                  size_t, const ucp_am_recv_param_t *) {
    static_cast<RawPeer *>(arg)->authReply.emplace(static_cast<const char *>(header), length);
    return UCS_OK;
  }
  static void onError(void *arg, ucp_ep_h, ucs_status_t) {
    static_cast<RawPeer *>(arg)->failed = true;
  }

  void connect(uint16_t port) {
    auto w = ucx::Worker::create();
    ASSERT_TRUE(w) << w.message();
    worker = std::move(*w);
    ucp_am_handler_param_t h{};
    h.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    h.arg = this;
    h.id = wire::kAmReply;
    h.cb = &RawPeer::onReply;
    ASSERT_EQ(ucp_worker_set_am_recv_handler(worker->handle(), &h), UCS_OK);
    h.id = wire::kAmAuthReply;
    h.cb = &RawPeer::onAuthReply;
    ASSERT_EQ(ucp_worker_set_am_recv_handler(worker->handle(), &h), UCS_OK);
    socklen_t len = 0;
    auto addr = ucx::resolve("127.0.0.1", port, len);
    ASSERT_TRUE(addr);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr *>(&*addr);
    p.sockaddr.addrlen = len;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &RawPeer::onError;
    p.err_handler.arg = this;
    ASSERT_EQ(ucp_ep_create(worker->handle(), &p, &ep), UCS_OK);
  }

  void send(uint16_t id, const std::string &header, const std::vector<char> &payload = {}) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_REPLY;
    ucs_status_ptr_t req =
        ucp_am_send_nbx(ep, id, header.data(), header.size(),
                        payload.empty() ? nullptr : payload.data(), payload.size(), &param);
    if (req && !UCS_PTR_IS_ERR(req)) {
      auto until = std::chrono::steady_clock::now() + 5s;
      while (ucp_request_check_status(req) == UCS_INPROGRESS &&
             std::chrono::steady_clock::now() < until)
        worker->progress();
      ucp_request_free(req);
    }
  }

  // Progresses until `done` or 5 s.
  bool progressUntil(const std::function<bool()> &done) {
    auto until = std::chrono::steady_clock::now() + 5s;
    while (!done() && std::chrono::steady_clock::now() < until)
      if (!worker->progress())
        worker->wait(5);
    return done();
  }

  ~RawPeer() {
    if (ep)
      ucx::closeEndpoint(*worker, ep, /*force=*/true);
  }
};

std::string putRequestHeader(const std::vector<char> &payload) {
  wire::MessageHeader h;
  h.op = static_cast<uint16_t>(wire::Op::Put);
  h.requestId = 1;
  h.count = 1;
  wire::BlockMeta m{};
  BlockKey key = keyFor(9);
  std::memcpy(m.key, key.bytes.data(), sizeof m.key);
  wire::setDtype(m, "f32");
  m.bytes = payload.size();
  m.checksum = blockChecksum(payload.data(), payload.size());
  std::string out(sizeof h + sizeof m, '\0');
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, &m, sizeof m);
  return out;
}

TEST_F(KvStoreAuth, ARawPeerSkippingTheHandshakeIsDisconnectedUnanswered) {
  auto server = startServer(kSecret);
  ASSERT_TRUE(server);
  RawPeer peer;
  peer.connect(server->port());
  std::vector<char> payload(4096, 'x');
  peer.send(wire::kAmRequest, putRequestHeader(payload), payload);
  EXPECT_TRUE(peer.progressUntil([&] { return peer.failed; }))
      << "the store kept an unauthenticated endpoint open";
  EXPECT_FALSE(peer.reply.has_value()) << "a request before the handshake was answered";
  EXPECT_EQ(server->stats().blocks, 0u);
  EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

TEST_F(KvStoreAuth, ARawPeerWithAForgedProofIsDisconnectedUnanswered) {
  auto server = startServer(kSecret);
  ASSERT_TRUE(server);
  RawPeer peer;
  peer.connect(server->port());
  auth::ClientHandshake handshake("not-the-cluster-secret-0123");
  peer.send(wire::kAmAuth, handshake.hello());
  ASSERT_TRUE(peer.progressUntil([&] { return peer.authReply.has_value(); }));
  EXPECT_EQ(peer.authReply->size(), auth::kAnswerBytes);
  // It cannot verify the answer; it sends a proof anyway.
  peer.authReply.reset();
  peer.send(wire::kAmAuth, std::string(auth::kProofBytes, '\x42'));
  EXPECT_TRUE(peer.progressUntil([&] { return peer.failed; }));
  EXPECT_FALSE(peer.authReply.has_value()) << "a forged proof was accepted";
  EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

TEST_F(KvStoreAuth, ASilentPeerIsDisconnectedAfterTheHandshakeTimeout) {
  auto server = startServer(kSecret, 300ms);
  ASSERT_TRUE(server);
  RawPeer peer;
  peer.connect(server->port());
  // Connected (the server sees the endpoint), then silent.
  EXPECT_TRUE(peer.progressUntil([&] { return peer.failed; }))
      << "a silent endpoint stayed open past the handshake timeout";
  EXPECT_TRUE(eventually([&] { return server->connections() == 0; }));
}

} // namespace
