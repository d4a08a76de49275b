#include "RawSocket.h"
#include "llmir/net/Framed.h"

#include <gtest/gtest.h>

#include <condition_variable>
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
