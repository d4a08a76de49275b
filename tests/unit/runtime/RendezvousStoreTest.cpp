#include "llmir/runtime/RendezvousStore.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <dirent.h>
#include <cstdint>
#include <functional>
#include <thread>

using namespace llmir::runtime;
using namespace std::chrono_literals;

namespace {

class RendezvousStoreTest : public ::testing::Test {
protected:
  void SetUp() override {
    auto server = RendezvousServer::start("127.0.0.1", 0);
    ASSERT_TRUE(server.isOk()) << server.message();
    server_ = std::move(server).value();
    ASSERT_NE(server_->port(), 0);
  }
  std::unique_ptr<RendezvousClient> client() {
    auto c = RendezvousClient::connect("127.0.0.1", server_->port(), 5s);
    EXPECT_TRUE(c.isOk()) << c.message();
    return c.isOk() ? std::move(c).value() : nullptr;
  }
  std::unique_ptr<RendezvousServer> server_;
};

TEST_F(RendezvousStoreTest, SetThenGetReturnsBinaryValue) {
  auto c = client();
  std::vector<char> value = {'a', '\0', '\xff', 'z'};
  ASSERT_TRUE(c->set("k", value).isOk());
  auto got = c->get("k", 1s);
  ASSERT_TRUE(got.isOk()) << got.message();
  EXPECT_EQ(*got, value);
}

TEST_F(RendezvousStoreTest, GetOfMissingKeyTimesOutNamingTheKey) {
  auto c = client();
  auto got = c->get("never-set", 200ms);
  ASSERT_FALSE(got.isOk());
  EXPECT_NE(got.message().find("never-set"), std::string::npos) << got.message();
  // The connection stays usable after a timeout.
  EXPECT_TRUE(c->set("after", "1").isOk());
}

TEST_F(RendezvousStoreTest, GetBlocksUntilAnotherClientSets) {
  auto reader = client();
  auto writer = client();
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(writer->set("late", "value").isOk());
  });
  auto got = reader->get("late", 10s);
  later.join();
  ASSERT_TRUE(got.isOk()) << got.message();
  EXPECT_EQ(std::string(got->begin(), got->end()), "value");
}

TEST_F(RendezvousStoreTest, AddCountsAcrossClients) {
  auto a = client();
  auto b = client();
  EXPECT_EQ(*a->add("counter", 1), 1);
  EXPECT_EQ(*b->add("counter", 5), 6);
  EXPECT_EQ(*a->add("counter", -2), 4);
  auto text = b->get("counter", 1s);
  ASSERT_TRUE(text.isOk());
  EXPECT_EQ(std::string(text->begin(), text->end()), "4");
  ASSERT_TRUE(a->set("not-a-number", "x").isOk());
  auto bad = a->add("not-a-number", 1);
  ASSERT_FALSE(bad.isOk());
  EXPECT_NE(bad.message().find("not-a-number"), std::string::npos);
}

TEST_F(RendezvousStoreTest, WaitAndCheck) {
  auto c = client();
  ASSERT_TRUE(c->set("x", "1").isOk());
  EXPECT_TRUE(c->wait({"x"}, 1s).isOk());
  EXPECT_FALSE(c->wait({"x", "y"}, 200ms).isOk());
  auto present = c->check({"x", "y"});
  ASSERT_TRUE(present.isOk()) << present.message();
  EXPECT_EQ(*present, (std::vector<bool>{true, false}));
  std::thread later([&, w = client()] { EXPECT_TRUE(w->set("y", "2").isOk()); });
  EXPECT_TRUE(c->wait({"x", "y"}, 10s).isOk());
  later.join();
}

TEST_F(RendezvousStoreTest, WrongProtocolVersionIsRejected) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server_->port());
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)), 0);
  const unsigned char frame[] = {9, 1, 0, 0, 0, 0};
  ASSERT_EQ(::write(fd, frame, sizeof(frame)), 6);
  unsigned char header[6];
  ASSERT_EQ(::recv(fd, header, sizeof(header), MSG_WAITALL), 6);
  EXPECT_EQ(header[0], 1);
  EXPECT_EQ(header[1], 2); // bad request
  std::string message(header[2], '\0');
  ASSERT_EQ(::recv(fd, message.data(), message.size(), MSG_WAITALL),
            static_cast<ssize_t>(message.size()));
  EXPECT_NE(message.find("version 9"), std::string::npos) << message;
  ::close(fd);
  // The server keeps serving others.
  EXPECT_TRUE(client()->set("still", "up").isOk());
}

int connectRaw(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// A GET of `key` with a one-hour timeout, as raw bytes.
std::string rawGet(const std::string &key) {
  std::string payload;
  auto le = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
      payload += static_cast<char>((v >> (8 * i)) & 0xff);
  };
  le(key.size(), 4);
  payload += key;
  le(3600 * 1000, 8);
  std::string frame = {1, 2};
  for (int i = 0; i < 4; ++i)
    frame += static_cast<char>((payload.size() >> (8 * i)) & 0xff);
  return frame + payload;
}

bool eventually(const std::function<bool()> &condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition())
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return condition();
}

// Issue 14, finding 4: 200 abandoned GETs left 213 threads for 10+ minutes.
TEST_F(RendezvousStoreTest, AnAbandonedWaitEndsWithItsClient) {
  for (int i = 0; i < 20; ++i) {
    int fd = connectRaw(server_->port());
    ASSERT_GE(fd, 0);
    const std::string get = rawGet("never-set");
    ASSERT_EQ(::write(fd, get.data(), get.size()), static_cast<ssize_t>(get.size()));
    ::close(fd);
  }
  EXPECT_TRUE(eventually([&] { return server_->numConnections() == 0; }))
      << server_->numConnections() << " connections still served";
}

TEST_F(RendezvousStoreTest, AddRefusesToOverflow) {
  auto c = client();
  ASSERT_TRUE(c->add("n", INT64_MAX).isOk());
  auto wrapped = c->add("n", 1);
  ASSERT_FALSE(wrapped.isOk());
  EXPECT_NE(wrapped.message().find("overflows"), std::string::npos) << wrapped.message();
  EXPECT_EQ(*client()->add("n", 0), INT64_MAX);
}

TEST(RendezvousStoreBoundsTest, ConnectionsOverTheBoundAreRefused) {
  StoreServerOptions options;
  options.maxConnections = 4;
  auto server = RendezvousServer::start("127.0.0.1", 0, options);
  ASSERT_TRUE(server.isOk()) << server.message();
  std::vector<std::unique_ptr<RendezvousClient>> clients;
  for (int i = 0; i < 4; ++i) {
    auto c = RendezvousClient::connect("127.0.0.1", (*server)->port(), 5s);
    ASSERT_TRUE(c.isOk()) << c.message();
    ASSERT_TRUE((*c)->set("k" + std::to_string(i), "v").isOk());
    clients.push_back(std::move(*c));
  }
  auto fifth = RendezvousClient::connect("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(fifth.isOk()); // TCP connects; the server closes it at once
  EXPECT_FALSE((*fifth)->set("k", "v").isOk());
  EXPECT_LE((*server)->numConnections(), 4u);
  clients.pop_back(); // a slot frees up
  EXPECT_TRUE(eventually([&] {
    auto c = RendezvousClient::connect("127.0.0.1", (*server)->port(), 5s);
    return c.isOk() && (*c)->set("again", "v").isOk();
  }));
}

TEST(RendezvousStoreAuthTest, OnlyClientsWithTheSecretAreServed) {
  const std::string secret = "store-test-secret-0123456789";
  StoreServerOptions options;
  options.clusterSecret = secret;
  options.handshakeTimeout = 500ms;
  auto server = RendezvousServer::start("127.0.0.1", 0, options);
  ASSERT_TRUE(server.isOk()) << server.message();
  const uint16_t port = (*server)->port();

  auto good = RendezvousClient::connect("127.0.0.1", port, 5s, secret);
  ASSERT_TRUE(good.isOk()) << good.message();
  ASSERT_TRUE((*good)->set("addr/0", "10.0.0.1:1234").isOk());

  auto wrong = RendezvousClient::connect("127.0.0.1", port, 5s,
                                         std::string("wrong-secret-0123456789"));
  ASSERT_FALSE(wrong.isOk());
  EXPECT_NE(wrong.message().find("did not prove the cluster secret"), std::string::npos)
      << wrong.message();

  // Without the handshake: a plain GET is never answered, the connection closes.
  int fd = connectRaw(port);
  ASSERT_GE(fd, 0);
  const std::string get = rawGet("addr/0");
  ASSERT_EQ(::write(fd, get.data(), get.size()), static_cast<ssize_t>(get.size()));
  char buffer[256];
  ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
  ::close(fd);
  EXPECT_LE(n, 0) << "a client without the secret got " << n << " bytes";
  // Silent connections are dropped after the handshake timeout.
  fd = connectRaw(port);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::recv(fd, buffer, sizeof buffer, 0), 0);
  ::close(fd);
  EXPECT_TRUE((*good)->get("addr/0", 1s).isOk());
}

TEST_F(RendezvousStoreTest, StoppedServerGivesErrorsNotHangs) {
  auto c = client();
  std::thread blocked([&] { EXPECT_FALSE(c->get("never", 30s).isOk()); });
  std::this_thread::sleep_for(100ms);
  server_->stop();
  blocked.join();
  EXPECT_FALSE(c->set("k", "v").isOk());
  auto again = RendezvousClient::connect("127.0.0.1", server_->port(), 300ms);
  EXPECT_FALSE(again.isOk());
}

// Threads of this process now (/proc/self/task).
size_t threadCount() {
  size_t n = 0;
  if (DIR *dir = ::opendir("/proc/self/task")) {
    while (dirent *e = ::readdir(dir))
      if (e->d_name[0] != '.')
        ++n;
    ::closedir(dir);
  }
  return n;
}

// Issue 14, finding 4: a thread per connection (200 abandoned GETs, 213
// threads). Served from one event loop, 200 connections with a GET blocked
// on each add no thread, and a SET still answers all of them.
TEST_F(RendezvousStoreTest, ManyBlockedWaitsAddNoThreads) {
  const size_t before = threadCount();
  constexpr int kConnections = 200;
  std::vector<int> fds;
  for (int i = 0; i < kConnections; ++i) {
    int fd = connectRaw(server_->port());
    ASSERT_GE(fd, 0);
    const std::string get = rawGet("released");
    ASSERT_EQ(::write(fd, get.data(), get.size()), static_cast<ssize_t>(get.size()));
    fds.push_back(fd);
  }
  ASSERT_TRUE(eventually([&] { return server_->numConnections() == kConnections; }))
      << server_->numConnections();
  EXPECT_EQ(threadCount(), before) << "the store started threads for its connections";
  ASSERT_TRUE(client()->set("released", "yes").isOk());
  for (int fd : fds) {
    char answer[6 + 3];
    ASSERT_EQ(::recv(fd, answer, sizeof answer, MSG_WAITALL), 9);
    EXPECT_EQ(answer[1], 0); // ok
    EXPECT_EQ(std::string(answer + 6, 3), "yes");
    ::close(fd);
  }
  EXPECT_TRUE(eventually([&] { return server_->numConnections() == 0; }));
}

// Requests pipelined behind a blocked GET wait for it, then run in order.
TEST_F(RendezvousStoreTest, RequestsPipelinedBehindABlockedGetRunAfterIt) {
  int fd = connectRaw(server_->port());
  ASSERT_GE(fd, 0);
  const std::string twoGets = rawGet("first") + rawGet("first");
  ASSERT_EQ(::write(fd, twoGets.data(), twoGets.size()), static_cast<ssize_t>(twoGets.size()));
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(client()->set("first", "1").isOk());
  char answers[2 * 7];
  ASSERT_EQ(::recv(fd, answers, sizeof answers, MSG_WAITALL), 14);
  EXPECT_EQ(answers[6], '1');
  EXPECT_EQ(answers[13], '1');
  ::close(fd);
}

TEST_F(RendezvousStoreTest, DeleteRemovesKeysAndFreesTheirBytes) {
  auto c = client();
  ASSERT_TRUE(c->set("llmir/7/world/joined/0", "1").isOk());
  ASSERT_TRUE(c->set("llmir/7/world/joined/1", "1").isOk());
  ASSERT_TRUE(c->set("llmir/7/world/gloo/rank_0", "addr").isOk());
  ASSERT_TRUE(c->set("llmir/70/kept", "x").isOk());
  ASSERT_TRUE(c->set("other", "y").isOk());
  const uint64_t full = server_->storedBytes();
  EXPECT_GT(full, 0u);

  auto removed = c->remove({"other", "absent"});
  ASSERT_TRUE(removed.isOk()) << removed.message();
  EXPECT_EQ(*removed, 1u);
  EXPECT_FALSE((*c->check({"other"}))[0]);

  auto byPrefix = c->removePrefix("llmir/7/");
  ASSERT_TRUE(byPrefix.isOk()) << byPrefix.message();
  EXPECT_EQ(*byPrefix, 3u);
  EXPECT_EQ(*c->check({"llmir/7/world/joined/0", "llmir/7/world/gloo/rank_0", "llmir/70/kept"}),
            (std::vector<bool>{false, false, true}));
  EXPECT_LT(server_->storedBytes(), full);
  EXPECT_FALSE(c->removePrefix("").isOk()) << "an empty prefix would delete everything";
  // A deleted key can be waited for and set again.
  EXPECT_FALSE(c->get("other", 50ms).isOk());
  ASSERT_TRUE(c->set("other", "z").isOk());
  EXPECT_EQ(*c->get("other", 1s), std::vector<char>{'z'});
}

TEST(RendezvousStoreBoundsTest, StoredBytesAreBounded) {
  StoreServerOptions options;
  options.maxStoredBytes = 64 * 1024;
  auto server = RendezvousServer::start("127.0.0.1", 0, options);
  ASSERT_TRUE(server.isOk()) << server.message();
  auto c = RendezvousClient::connect("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(c.isOk()) << c.message();
  const std::string value(10 * 1024, 'v');
  int stored = 0;
  llmir::Status refused = llmir::Status::ok();
  for (int i = 0; i < 100 && refused.isOk(); ++i) {
    refused = (*c)->set("k" + std::to_string(i), value);
    stored += refused.isOk();
  }
  ASSERT_FALSE(refused.isOk()) << "100 x 10 KiB went into a 64 KiB store";
  EXPECT_EQ(stored, 6);
  EXPECT_NE(refused.message().find("store full"), std::string::npos) << refused.message();
  EXPECT_LE((*server)->storedBytes(), options.maxStoredBytes);
  // An ADD past the bound is refused the same way; the connection stays usable.
  EXPECT_FALSE((*c)->add(std::string(8 * 1024, 'n'), 1).isOk());
  EXPECT_TRUE((*c)->get("k0", 1s).isOk());
  // Overwriting a key counts its new size only; deleting makes room.
  EXPECT_TRUE((*c)->set("k0", value).isOk());
  ASSERT_TRUE((*c)->remove({"k0", "k1"}).isOk());
  EXPECT_TRUE((*c)->set("k-new", value).isOk());
}

// Half-sent requests of all connections together are bounded: a client
// announcing a large SET and sending part of it holds that much; another
// whose piece would pass maxBufferedBytes is closed, and the first can still
// finish its request.
TEST(RendezvousStoreBoundsTest, HalfSentRequestsAreBounded) {
  StoreServerOptions options;
  options.maxBufferedBytes = 1 << 20;
  auto server = RendezvousServer::start("127.0.0.1", 0, options);
  ASSERT_TRUE(server.isOk()) << server.message();
  // A SET frame of `valueBytes`, as raw bytes: [1, 1, len32] [klen32 key] [vlen32 value].
  auto setFrame = [](const std::string &key, size_t valueBytes) {
    std::string payload;
    auto le32 = [&](size_t v) {
      for (int i = 0; i < 4; ++i)
        payload += static_cast<char>((v >> (8 * i)) & 0xff);
    };
    le32(key.size());
    payload += key;
    le32(valueBytes);
    payload += std::string(valueBytes, 'x');
    std::string frame = {1, 1};
    for (int i = 0; i < 4; ++i)
      frame += static_cast<char>((payload.size() >> (8 * i)) & 0xff);
    return frame + payload;
  };
  auto sendAll = [](int fd, const char *data, size_t n) {
    while (n > 0) {
      const ssize_t sent = ::send(fd, data, n, MSG_NOSIGNAL);
      if (sent <= 0)
        return false;
      data += sent;
      n -= static_cast<size_t>(sent);
    }
    return true;
  };
  const std::string first = setFrame("big", 900 * 1024);
  const int a = connectRaw((*server)->port());
  ASSERT_GE(a, 0);
  const size_t part = 800 * 1024;
  ASSERT_TRUE(sendAll(a, first.data(), part));
  ASSERT_TRUE(eventually([&] { return (*server)->bufferedBytes() >= part; }))
      << "buffered " << (*server)->bufferedBytes();

  const std::string second = setFrame("other", 600 * 1024);
  const int b = connectRaw((*server)->port());
  ASSERT_GE(b, 0);
  (void)sendAll(b, second.data(), 300 * 1024); // may fail once the server closes
  // Closed by the server: end of stream or a reset, not the 5 s receive timeout.
  char byte;
  const ssize_t got = ::recv(b, &byte, 1, 0);
  EXPECT_TRUE(got == 0 || (got < 0 && errno == ECONNRESET))
      << "the second half-sent request was not closed (recv " << got << ", errno " << errno << ")";
  ::close(b);
  EXPECT_LE((*server)->bufferedBytes(), options.maxBufferedBytes);

  // The first finishes its SET and is answered; its value is stored.
  ASSERT_TRUE(sendAll(a, first.data() + part, first.size() - part));
  unsigned char header[6];
  ASSERT_EQ(::recv(a, header, sizeof header, MSG_WAITALL), 6);
  EXPECT_EQ(header[1], 0) << "SET answered with code " << int(header[1]);
  ::close(a);
  auto c = RendezvousClient::connect("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(c.isOk()) << c.message();
  auto value = (*c)->get("big", 1s);
  ASSERT_TRUE(value.isOk()) << value.message();
  EXPECT_EQ(value->size(), 900u * 1024);
}

} // namespace
