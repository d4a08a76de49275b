// The worker's side of the store against a real Server on loopback (UCX over
// TCP): blocks written through in the background come back by load() under
// the same token prefix and not under another one; a run stops at the first
// missing block; a full queue drops blocks without blocking; a store that is
// down makes puts and loads fail in the counters and errors, never a hang.
#include "llmir/kvstore/Server.h"
#include "llmir/kvstore/WorkerBlockStore.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <cstdlib>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <numeric>

using namespace llmir;
using namespace llmir::kvstore;
using namespace std::chrono_literals;

namespace {

constexpr uint32_t kBlockTokens = 4;
constexpr uint64_t kBlockBytes = 4096;

RankBlockFields rankFields(uint32_t shard = 0) {
  RankBlockFields f;
  f.model = "plan-abc";
  f.layerEnd = 2;
  f.shard = shard;
  f.shardCount = 2;
  f.dtype = "f32";
  f.blockTokens = kBlockTokens;
  return f;
}

std::vector<std::byte> blockBytes(uint32_t seed) {
  std::vector<std::byte> b(kBlockBytes);
  for (size_t i = 0; i < b.size(); ++i)
    b[i] = static_cast<std::byte>((seed * 131 + i * 7) & 0xff);
  return b;
}

class WorkerBlockStoreTest : public ::testing::Test {
protected:
  void SetUp() override {
    setenv("UCX_TLS", "tcp", 1);
    ServerOptions o;
    o.host = "127.0.0.1";
    o.capacityBytes = 1 << 20;
    auto s = Server::start(o);
    ASSERT_TRUE(s) << s.message();
    server = std::move(*s);
  }

  std::unique_ptr<WorkerBlockStore> store(uint16_t port, RankBlockFields fields = rankFields(),
                                          uint64_t maxQueued = 1 << 20) {
    WorkerBlockStoreOptions o;
    o.client.host = "127.0.0.1";
    o.client.port = port;
    o.client.timeout = 2s;
    o.maxQueuedBytes = maxQueued;
    auto s = WorkerBlockStore::create(o, std::move(fields), kBlockBytes);
    EXPECT_TRUE(s) << s.message();
    return s ? std::move(*s) : nullptr;
  }

  // Writes blocks 0..n-1 of `tokens` through `s` (block i = blockBytes(i)).
  void writeThrough(WorkerBlockStore &s, const std::vector<int32_t> &tokens, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
      auto queued = s.enqueue(std::span(tokens).first((i + 1) * kBlockTokens),
                              [&](std::span<std::byte> out) {
                                auto b = blockBytes(i);
                                std::copy(b.begin(), b.end(), out.begin());
                                return Status::ok();
                              });
      ASSERT_TRUE(queued) << queued.message();
      EXPECT_TRUE(*queued);
    }
    ASSERT_TRUE(s.waitIdle(10s));
  }

  std::unique_ptr<Server> server;
};

TEST_F(WorkerBlockStoreTest, WrittenThroughBlocksLoadUnderTheSamePrefixOnly) {
  std::vector<int32_t> tokens(4 * kBlockTokens + 2);
  std::iota(tokens.begin(), tokens.end(), 100);
  auto writer = store(server->port());
  ASSERT_TRUE(writer);
  writeThrough(*writer, tokens, 3);
  EXPECT_EQ(writer->counters().blocksStored, 3u);
  EXPECT_EQ(writer->counters().bytesStored, 3 * kBlockBytes);

  // Another worker of the same rank (another replica) loads blocks 1..3:
  // 1 and 2 were stored, 3 was not, so the run is 2.
  auto reader = store(server->port());
  ASSERT_TRUE(reader);
  std::vector<std::vector<std::byte>> got;
  auto loaded = reader->load(tokens, 1, 3, [&](uint32_t i, std::span<const std::byte> b) {
    EXPECT_EQ(i, got.size());
    got.emplace_back(b.begin(), b.end());
    return Status::ok();
  });
  ASSERT_TRUE(loaded) << loaded.message();
  EXPECT_EQ(*loaded, 2u);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], blockBytes(1));
  EXPECT_EQ(got[1], blockBytes(2));
  EXPECT_EQ(reader->counters().blocksLoaded, 2u);
  EXPECT_EQ(reader->counters().blocksMissed, 1u);

  // A different earlier token changes every later key: nothing is found.
  std::vector<int32_t> other = tokens;
  other[0] = 7;
  auto none = reader->load(other, 0, 3, [&](uint32_t, std::span<const std::byte>) {
    ADD_FAILURE() << "a block of another prefix was handed out";
    return Status::ok();
  });
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, 0u);
  // Another shard of the same prefix is another block.
  auto shard1 = store(server->port(), rankFields(1));
  auto noShard = shard1->load(tokens, 0, 1, [](uint32_t, std::span<const std::byte>) {
    return Status::error("must not be called");
  });
  ASSERT_TRUE(noShard);
  EXPECT_EQ(*noShard, 0u);
  // A request beyond the tokens is an error, not a guess.
  EXPECT_FALSE(reader->load(tokens, 3, 2, [](uint32_t, std::span<const std::byte>) {
    return Status::ok();
  }));
}

TEST_F(WorkerBlockStoreTest, BadFieldsAndPrefixesAreRefused) {
  RankBlockFields bad = rankFields();
  bad.shard = 2; // of 2
  WorkerBlockStoreOptions o;
  o.client.port = server->port();
  auto s = WorkerBlockStore::create(o, bad, kBlockBytes);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("shard"), std::string::npos) << s.message();
  auto good = store(server->port());
  std::vector<int32_t> ragged(kBlockTokens + 1, 1);
  auto queued = good->enqueue(ragged, [](std::span<std::byte>) { return Status::ok(); });
  EXPECT_FALSE(queued);
}

TEST_F(WorkerBlockStoreTest, FullQueueDropsInsteadOfBlocking) {
  // A "store" that never answers (a TCP listener nobody accepts from): the
  // writer's put waits for its deadline while the queue, bounded at two
  // blocks, fills.
  int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(silent, reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(silent, 16), 0);
  socklen_t len = sizeof addr;
  ::getsockname(silent, reinterpret_cast<sockaddr *>(&addr), &len);
  auto s = store(ntohs(addr.sin_port), rankFields(), 2 * kBlockBytes);
  std::vector<int32_t> tokens(8 * kBlockTokens, 3);
  int queued = 0, dropped = 0;
  for (uint32_t i = 0; i < 8; ++i) {
    auto r = s->enqueue(std::span(tokens).first((i + 1) * kBlockTokens),
                        [](std::span<std::byte>) { return Status::ok(); });
    ASSERT_TRUE(r) << r.message();
    (*r ? queued : dropped) += 1;
  }
  EXPECT_GE(dropped, 1) << "a full queue drops: enqueue never waits for the store";
  EXPECT_EQ(s->counters().blocksDropped, static_cast<uint64_t>(dropped));
  ASSERT_TRUE(s->waitIdle(20s));
  const auto c = s->counters();
  EXPECT_EQ(c.blocksStored, 0u);
  EXPECT_EQ(c.blocksPutFailed, static_cast<uint64_t>(queued));
  EXPECT_GE(c.putCallsFailed, 1u);
  // The failed puts started a backoff: a load is refused without asking.
  auto skipped = s->load(tokens, 0, 2, [](uint32_t, std::span<const std::byte>) {
    return Status::ok();
  });
  ASSERT_FALSE(skipped);
  EXPECT_NE(skipped.message().find("backoff"), std::string::npos) << skipped.message();
  EXPECT_EQ(s->counters().loadsSkipped, 1u);
  EXPECT_EQ(s->counters().loadCallsFailed, 0u);

  // A fresh rank's first load asks the silent store and fails at its
  // deadline with an error naming the store; the next one is refused at once.
  auto fresh = store(ntohs(addr.sin_port));
  auto loaded = fresh->load(tokens, 0, 2, [](uint32_t, std::span<const std::byte>) {
    return Status::ok();
  });
  ASSERT_FALSE(loaded);
  EXPECT_NE(loaded.message().find("kv store"), std::string::npos) << loaded.message();
  EXPECT_EQ(fresh->counters().loadCallsFailed, 1u);
  auto again = fresh->load(tokens, 0, 2, [](uint32_t, std::span<const std::byte>) {
    return Status::ok();
  });
  ASSERT_FALSE(again);
  EXPECT_EQ(fresh->counters().loadsSkipped, 1u);
  EXPECT_EQ(fresh->counters().loadCallsFailed, 1u);
  fresh.reset();
  s.reset();
  ::close(silent);
}

} // namespace
