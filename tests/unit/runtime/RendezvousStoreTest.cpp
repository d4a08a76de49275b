#include "llmir/runtime/RendezvousStore.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

} // namespace
