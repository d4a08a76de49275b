#include "RawSocket.h"
#include "llmir/net/Framed.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <thread>

#include <unistd.h>
#include <mutex>

using namespace llmir;
using namespace llmir::net;
using llmir::net::testing::RawSocket;

namespace {
using namespace std::chrono_literals;

// A server that answers every Heartbeat with a Heartbeat carrying the same
// worker id, and records why connections closed.
struct EchoServer {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> closeReasons;
  std::unique_ptr<FramedServer> server;

  explicit EchoServer(FramedOptions options = {}) {
    FramedHandlers h;
    h.onMessage = [](const FramedConnectionPtr &c, proto::Envelope e) {
      if (e.has_heartbeat())
        EXPECT_TRUE(c->send(e).isOk());
    };
    h.onClose = [this](const FramedConnectionPtr &, const Status &s) {
      std::lock_guard lock(mu);
      closeReasons.push_back(s.isOk() ? "ok" : s.message());
      cv.notify_all();
    };
    auto s = FramedServer::start("127.0.0.1", 0, std::move(h), options);
    EXPECT_TRUE(s.isOk()) << s.message();
    server = std::move(*s);
  }

  std::string waitForClose() {
    std::unique_lock lock(mu);
    cv.wait_for(lock, 10s, [&] { return !closeReasons.empty(); });
    return closeReasons.empty() ? "<none>" : closeReasons.front();
  }
};

proto::Envelope heartbeat(const std::string &id) {
  proto::Envelope e;
  e.mutable_heartbeat()->set_worker_id(id);
  return e;
}

std::string frame(const std::string &payload) {
  std::string f(4, '\0');
  uint32_t n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i)
    f[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return f + payload;
}

TEST(FramedTest, RoundTripManyFramesInOrder) {
  EchoServer echo;
  auto client = FramedClient::connect("127.0.0.1", echo.server->port(), 5s);
  ASSERT_TRUE(client.isOk()) << client.message();
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE((*client)->send(heartbeat("w" + std::to_string(i))).isOk());
  for (int i = 0; i < 100; ++i) {
    auto e = (*client)->receive(5s);
    ASSERT_TRUE(e.isOk()) << e.message();
    EXPECT_EQ(e->protocol_version(), proto::WORKER_PROTOCOL_VERSION_1);
    EXPECT_EQ(e->heartbeat().worker_id(), "w" + std::to_string(i));
  }
}

TEST(FramedTest, SendIsSafeFromManyThreads) {
  EchoServer echo;
  auto client = FramedClient::connect("127.0.0.1", echo.server->port(), 5s);
  ASSERT_TRUE(client.isOk());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i)
        EXPECT_TRUE((*client)->send(heartbeat(std::to_string(t))).isOk());
    });
  for (auto &t : threads)
    t.join();
  int counts[4] = {};
  for (int i = 0; i < 200; ++i) {
    auto e = (*client)->receive(5s);
    ASSERT_TRUE(e.isOk()) << e.message();
    counts[std::stoi(e->heartbeat().worker_id())]++;
  }
  for (int c : counts)
    EXPECT_EQ(c, 50);
}

// send() writes a frame from the caller's thread when nothing is queued; a
// frame larger than the socket buffer is only partly written there and its
// rest goes through the I/O thread. Frames after it, from this thread or
// others, must neither overtake it nor interleave with it.
TEST(FramedTest, FramesLargerThanTheSocketBufferStayWholeAndInOrder) {
  EchoServer echo;
  auto client = FramedClient::connect("127.0.0.1", echo.server->port(), 5s);
  ASSERT_TRUE(client.isOk()) << client.message();
  auto id = [](int thread, int i) {
    // Every third frame is 3 MB: far past a loopback socket's buffer.
    const size_t size = i % 3 == 0 ? (3u << 20) : 8;
    std::string s = std::to_string(thread) + ":" + std::to_string(i) + ":";
    s.resize(size, static_cast<char>('a' + (thread * 7 + i) % 26));
    return s;
  };
  constexpr int kThreads = 3, kFrames = 12;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kFrames; ++i)
        EXPECT_TRUE((*client)->send(heartbeat(id(t, i))).isOk());
    });
  for (auto &t : threads)
    t.join();
  int next[kThreads] = {};
  for (int n = 0; n < kThreads * kFrames; ++n) {
    auto e = (*client)->receive(10s);
    ASSERT_TRUE(e.isOk()) << e.message();
    const std::string &got = e->heartbeat().worker_id();
    const int t = std::stoi(got);
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(got, id(t, next[t])) << "frame " << next[t] << " of thread " << t;
    ++next[t];
  }
  for (int c : next)
    EXPECT_EQ(c, kFrames);
}

TEST(FramedTest, ReceiveTimesOut) {
  EchoServer echo;
  auto client = FramedClient::connect("127.0.0.1", echo.server->port(), 5s);
  ASSERT_TRUE(client.isOk());
  auto e = (*client)->receive(50ms);
  EXPECT_FALSE(e.isOk());
  EXPECT_NE(e.message().find("nothing within"), std::string::npos) << e.message();
}

TEST(FramedTest, OversizedFrameIsRejected) {
  FramedOptions options;
  options.maxFrameBytes = 1024;
  EchoServer echo(options);
  RawSocket sock(echo.server->port());
  ASSERT_TRUE(sock.connected());
  std::string header = frame(std::string(2048, 'x')).substr(0, 4);
  ASSERT_TRUE(sock.sendAll(header));
  EXPECT_TRUE(sock.peerClosed());
  EXPECT_NE(echo.waitForClose().find("exceeds the limit of 1024"), std::string::npos);

  // And our own sender refuses to build one.
  auto client = FramedClient::connect("127.0.0.1", echo.server->port(), 5s, {}, options);
  ASSERT_TRUE(client.isOk());
  EXPECT_FALSE((*client)->send(heartbeat(std::string(2048, 'y'))).isOk());
}

TEST(FramedTest, GarbageFrameIsRejectedWithAnErrorEnvelope) {
  EchoServer echo;
  RawSocket sock(echo.server->port());
  ASSERT_TRUE(sock.sendAll(frame("\xff\xff\xff\xff garbage")));
  std::string reply = sock.readUntilClosed();
  ASSERT_GE(reply.size(), 4u);
  proto::Envelope e;
  ASSERT_TRUE(e.ParseFromString(reply.substr(4)));
  EXPECT_TRUE(e.has_error());
  EXPECT_NE(echo.waitForClose().find("not a valid llmir.proto.Envelope"), std::string::npos);
}

TEST(FramedTest, UnknownProtocolVersionIsRejected) {
  EchoServer echo;
  RawSocket sock(echo.server->port());
  proto::Envelope e = heartbeat("w");
  e.set_protocol_version(static_cast<proto::WorkerProtocolVersion>(7));
  ASSERT_TRUE(sock.sendAll(frame(e.SerializeAsString())));
  std::string reply = sock.readUntilClosed();
  proto::Envelope err;
  ASSERT_GE(reply.size(), 4u);
  ASSERT_TRUE(err.ParseFromString(reply.substr(4)));
  EXPECT_NE(err.error().message().find("protocol_version 7"), std::string::npos)
      << err.error().message();
}

TEST(FramedTest, PeerDeathIsDetectedOnBothSides) {
  auto echo = std::make_unique<EchoServer>();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<std::string> clientSaw;
  FramedHandlers h;
  h.onClose = [&](const FramedConnectionPtr &, const Status &s) {
    std::lock_guard lock(mu);
    clientSaw = s.isOk() ? "ok" : s.message();
    cv.notify_all();
  };
  auto client = FramedClient::connect("127.0.0.1", echo->server->port(), 5s, h);
  ASSERT_TRUE(client.isOk());
  ASSERT_TRUE((*client)->send(heartbeat("x")).isOk());
  ASSERT_TRUE((*client)->receive(5s).isOk());

  // A raw peer that vanishes is seen by the server.
  {
    RawSocket raw(echo->server->port());
    ASSERT_TRUE(raw.connected());
  }
  EXPECT_NE(echo->waitForClose().find("closed the connection"), std::string::npos);

  // The server going away is seen by the client.
  echo->server->stop();
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, 10s, [&] { return clientSaw.has_value(); });
  }
  ASSERT_TRUE(clientSaw.has_value());
  EXPECT_NE(*clientSaw, "ok");
  EXPECT_FALSE((*client)->connection()->isOpen());
  EXPECT_FALSE((*client)->send(heartbeat("late")).isOk());
  EXPECT_FALSE((*client)->receive(1s).isOk());
}

TEST(FramedTest, ConnectTimesOutWhenNobodyListens) {
  auto c = FramedClient::connect("127.0.0.1", 1, 200ms);
  EXPECT_FALSE(c.isOk());
}

} // namespace

// ---------------------------------------------------------------- issue 14

namespace llmir::net {
namespace {

const std::string kSecret = "framed-test-secret-0123456789";

FramedOptions withSecret(std::string secret) {
  FramedOptions o;
  o.clusterSecret = std::move(secret);
  o.handshakeTimeout = 500ms;
  return o;
}

// A server that records what it opened and received.
struct RecordingServer {
  std::mutex mu;
  std::condition_variable cv;
  int opened = 0;
  std::vector<proto::Envelope> received;
  std::vector<std::string> closeReasons;
  std::unique_ptr<FramedServer> server;

  explicit RecordingServer(FramedOptions options) {
    FramedHandlers h;
    h.onOpen = [this](const FramedConnectionPtr &c) {
      {
        std::lock_guard lock(mu);
        ++opened;
      }
      // What a scheduler would send a new worker: must reach only peers that
      // proved the secret.
      proto::Envelope assign;
      assign.mutable_assign_rank()->set_model_dir("/secret/model/dir");
      EXPECT_TRUE(c->send(assign).isOk());
    };
    h.onMessage = [this](const FramedConnectionPtr &, proto::Envelope e) {
      std::lock_guard lock(mu);
      received.push_back(std::move(e));
      cv.notify_all();
    };
    h.onClose = [this](const FramedConnectionPtr &, const Status &s) {
      std::lock_guard lock(mu);
      closeReasons.push_back(s.isOk() ? "ok" : s.message());
      cv.notify_all();
    };
    auto s = FramedServer::start("127.0.0.1", 0, std::move(h), std::move(options));
    EXPECT_TRUE(s.isOk()) << s.message();
    server = std::move(*s);
  }
  std::string waitForClose() {
    std::unique_lock lock(mu);
    cv.wait_for(lock, 10s, [&] { return !closeReasons.empty(); });
    return closeReasons.empty() ? "<none>" : closeReasons.front();
  }
};

TEST(FramedAuthTest, PeersWithTheSecretTalk) {
  RecordingServer server(withSecret(kSecret));
  auto client = FramedClient::connect("127.0.0.1", server.server->port(), 2s, {},
                                      withSecret(kSecret));
  ASSERT_TRUE(client.isOk()) << client.message();
  auto first = (*client)->receive(5s);
  ASSERT_TRUE(first.isOk()) << first.message();
  EXPECT_EQ(first->assign_rank().model_dir(), "/secret/model/dir");
  ASSERT_TRUE((*client)->send(heartbeat("w1")).isOk());
  std::unique_lock lock(server.mu);
  ASSERT_TRUE(server.cv.wait_for(lock, 5s, [&] { return !server.received.empty(); }));
  EXPECT_EQ(server.received[0].heartbeat().worker_id(), "w1");
  EXPECT_EQ(server.opened, 1);
}

TEST(FramedAuthTest, AWrongSecretFailsConnectAndOpensNothing) {
  RecordingServer server(withSecret(kSecret));
  auto client = FramedClient::connect("127.0.0.1", server.server->port(), 2s, {},
                                      withSecret("another-secret-0123456789"));
  ASSERT_FALSE(client.isOk());
  EXPECT_NE(client.message().find("did not prove the cluster secret"), std::string::npos)
      << client.message();
  server.waitForClose();
  std::lock_guard lock(server.mu);
  EXPECT_EQ(server.opened, 0);
  EXPECT_TRUE(server.received.empty());
}

TEST(FramedAuthTest, APeerWithoutTheSecretReceivesNothingAndIsDropped) {
  RecordingServer server(withSecret(kSecret));
  // A rogue worker: registers as the protocol says, without the handshake.
  RawSocket rogue(server.server->port());
  ASSERT_TRUE(rogue.connected());
  proto::Envelope reg;
  reg.set_protocol_version(proto::WORKER_PROTOCOL_VERSION_1);
  reg.mutable_register_worker()->set_worker_id("rogue");
  ASSERT_TRUE(rogue.sendAll(frame(reg.SerializeAsString())));
  EXPECT_EQ(rogue.readUntilClosed(), "") << "nothing is sent to a peer without the secret";
  EXPECT_NE(server.waitForClose().find("cluster handshake"), std::string::npos);
  std::lock_guard lock(server.mu);
  EXPECT_EQ(server.opened, 0);
  EXPECT_TRUE(server.received.empty());
}

TEST(FramedAuthTest, ASilentConnectionIsClosedAfterTheHandshakeTimeout) {
  RecordingServer server(withSecret(kSecret));
  RawSocket silent(server.server->port());
  ASSERT_TRUE(silent.connected());
  EXPECT_TRUE(silent.peerClosed());
  EXPECT_NE(server.waitForClose().find("did not complete the cluster handshake"),
            std::string::npos);
}

TEST(FramedAuthTest, AClientWithASecretRefusesAServerWithout) {
  RecordingServer server(FramedOptions{});
  auto client = FramedClient::connect("127.0.0.1", server.server->port(), 2s, {},
                                      withSecret(kSecret));
  ASSERT_FALSE(client.isOk());
}

long residentBytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// Issue 14, finding 3: ten connections each announcing a 64 MiB frame took
// the scheduler from 64 to 704 MB before a byte of the bodies arrived.
TEST(FramedBoundsTest, AnAnnouncedFrameCostsNoMemoryBeforeItsBytes) {
  EchoServer server;
  const long before = residentBytes();
  std::vector<std::unique_ptr<RawSocket>> peers;
  for (int i = 0; i < 10; ++i) {
    peers.push_back(std::make_unique<RawSocket>(server.server->port(), 300));
    ASSERT_TRUE(peers.back()->sendAll(std::string("\xff\xff\xff\x03", 4) + "abc"));
  }
  std::this_thread::sleep_for(300ms); // the server has read the headers
  const long grown = residentBytes() - before;
  EXPECT_LT(grown, 64l << 20) << "resident memory grew by " << grown << " bytes";
}

} // namespace
} // namespace llmir::net
