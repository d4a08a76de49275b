// The store's server and client over real UCX on loopback, once with
// UCX_TLS=tcp (block bytes in active messages) and once with UCX_TLS=shm,tcp:
// requests and replies stay on the TCP endpoint (UCX 1.13 reports peer
// failure on TCP only) and block bytes move through the store's
// shared-memory segment, mapped by the client (docs/kv-store.md).
#include "llmir/kvstore/Client.h"
#include "llmir/kvstore/Server.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <algorithm>
#include <array>
#include <atomic>
#include <thread>
#include <vector>

using namespace llmir::kvstore;
using namespace std::chrono_literals;

namespace {

BlockKey keyFor(const std::string &model, int32_t firstToken) {
  std::vector<int32_t> tokens(16);
  std::iota(tokens.begin(), tokens.end(), firstToken);
  BlockKeyFields f;
  f.model = model;
  f.layerEnd = 2;
  f.dtype = "f32";
  f.blockTokens = 16;
  f.tokenPrefix = tokens;
  return *makeBlockKey(f);
}

std::vector<uint8_t> bytesOf(size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n);
  std::mt19937 rng(seed);
  for (auto &b : out)
    b = static_cast<uint8_t>(rng());
  return out;
}

class KvStore : public ::testing::TestWithParam<const char *> {
protected:
  void SetUp() override {
    // UCX reads its configuration when a context is created.
    setenv("UCX_TLS", GetParam(), 1);
  }
  bool sharedMemory() const { return std::string(GetParam()).find("shm") == 0; }

  static ServerOptions serverOptions(uint64_t capacity, uint16_t port = 0,
                                     bool withSegment = true) {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = port;
    o.capacityBytes = capacity;
    o.sharedMemory = withSegment;
    return o;
  }
  std::unique_ptr<Server> startServer(const ServerOptions &o) {
    auto s = Server::start(o);
    EXPECT_TRUE(s) << s.message();
    return s ? std::move(*s) : nullptr;
  }
  std::unique_ptr<Server> startServer(uint64_t capacity, uint16_t port = 0,
                                      bool withSegment = true) {
    return startServer(serverOptions(capacity, port, withSegment));
  }
  std::unique_ptr<Client> connect(uint16_t port, std::chrono::milliseconds timeout = 5s) {
    ClientOptions o;
    o.port = port;
    o.timeout = timeout;
    auto c = Client::create(o);
    EXPECT_TRUE(c) << c.message();
    return c ? std::move(*c) : nullptr;
  }
};

TEST_P(KvStore, PutGetExistsRoundTripAcrossSizes) {
  auto server = startServer(64ull << 20);
  ASSERT_TRUE(server);
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  // Over TCP blocks up to 4 MiB travel eagerly in one segment each
  // (ucx::kTcpSegmentSize), 6 MiB by rendezvous.
  std::vector<size_t> sizes = {64, 4096, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 6 << 20};
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutBlock> puts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    data.push_back(bytesOf(sizes[i], static_cast<uint32_t>(i)));
    puts.push_back({keyFor("m", int32_t(i)), "f32", data.back().data(), sizes[i]});
  }
  auto stored = client->put(puts);
  ASSERT_TRUE(stored) << stored.message();
  for (BlockStatus s : *stored)
    EXPECT_EQ(s, BlockStatus::Stored);
  EXPECT_EQ(client->usesSharedMemory(), sharedMemory()) << client->describeConnection();
  EXPECT_EQ(client->usesRequestChannel(), sharedMemory()) << client->describeConnection();

  std::vector<BlockQuery> queries;
  for (size_t i = 0; i < sizes.size(); ++i)
    queries.push_back({keyFor("m", int32_t(i)), "f32", sizes[i]});
  queries.push_back({keyFor("other", 0), "f32", 64});
  auto present = client->exists(queries);
  ASSERT_TRUE(present) << present.message();
  for (size_t i = 0; i < sizes.size(); ++i)
    EXPECT_EQ((*present)[i], BlockStatus::Found) << i;
  EXPECT_EQ(present->back(), BlockStatus::Missing);

  std::vector<std::vector<uint8_t>> out;
  std::vector<GetBlock> gets;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.emplace_back(sizes[i], 0);
    gets.push_back({keyFor("m", int32_t(i)), "f32", out.back().data(), sizes[i]});
  }
  std::vector<uint8_t> missingOut(64);
  gets.push_back({keyFor("other", 0), "f32", missingOut.data(), 64});
  auto got = client->get(gets);
  ASSERT_TRUE(got) << got.message();
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ((*got)[i], BlockStatus::Found) << i;
    EXPECT_EQ(out[i], data[i]) << "block " << i << " of " << sizes[i] << " bytes";
  }
  EXPECT_EQ(got->back(), BlockStatus::Missing);

  PoolStats s = server->stats();
  EXPECT_EQ(s.blocks, sizes.size());
  EXPECT_EQ(s.bytesHeld, std::accumulate(sizes.begin(), sizes.end(), size_t(0)));
  EXPECT_EQ(s.hits, sizes.size());
  EXPECT_EQ(s.misses, 1u);
}

TEST_P(KvStore, BatchesLargerThanOneMessageAreSplit) {
  auto server = startServer(64ull << 20);
  ASSERT_TRUE(server);
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  size_t n = client->maxBlocksPerMessage() * 2 + 3;
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutBlock> puts;
  for (size_t i = 0; i < n; ++i) {
    data.push_back(bytesOf(1024, uint32_t(1000 + i)));
    puts.push_back({keyFor("batch", int32_t(i)), "bf16", data.back().data(), 1024});
  }
  auto stored = client->put(puts);
  ASSERT_TRUE(stored) << stored.message();
  ASSERT_EQ(stored->size(), n);
  std::vector<std::vector<uint8_t>> out(n, std::vector<uint8_t>(1024));
  std::vector<GetBlock> gets;
  for (size_t i = 0; i < n; ++i)
    gets.push_back({keyFor("batch", int32_t(i)), "bf16", out[i].data(), 1024});
  auto got = client->get(gets);
  ASSERT_TRUE(got) << got.message();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ((*got)[i], BlockStatus::Found) << i;
    ASSERT_EQ(out[i], data[i]) << i;
  }
  EXPECT_EQ(server->stats().blocks, n);
}

TEST_P(KvStore, EvictsLeastRecentlyUsedUnderTheMemoryBound) {
  constexpr size_t kBlock = 256 << 10;
  auto server = startServer(4 * kBlock);
  ASSERT_TRUE(server);
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < 6; ++i)
    data.push_back(bytesOf(kBlock, uint32_t(i)));
  auto putOne = [&](int i) {
    PutBlock p{keyFor("lru", i), "f32", data[i].data(), kBlock};
    auto r = client->put(std::span(&p, 1));
    ASSERT_TRUE(r) << r.message();
    EXPECT_EQ((*r)[0], BlockStatus::Stored);
  };
  auto status = [&](int i) {
    std::vector<uint8_t> out(kBlock);
    GetBlock g{keyFor("lru", i), "f32", out.data(), kBlock};
    auto r = client->get(std::span(&g, 1));
    EXPECT_TRUE(r) << r.message();
    if (r && (*r)[0] == BlockStatus::Found)
      EXPECT_EQ(out, data[i]);
    return r ? (*r)[0] : BlockStatus::Rejected;
  };
  for (int i = 0; i < 4; ++i)
    putOne(i);
  EXPECT_EQ(status(0), BlockStatus::Found); // 0 becomes the most recent
  putOne(4);                                // evicts 1
  putOne(5);                                // evicts 2
  EXPECT_EQ(status(1), BlockStatus::Missing);
  EXPECT_EQ(status(2), BlockStatus::Missing);
  for (int i : {0, 3, 4, 5})
    EXPECT_EQ(status(i), BlockStatus::Found) << i;
  PoolStats s = server->stats();
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.blocks, 4u);
  EXPECT_LE(s.bytesHeld, 4 * kBlock);

  // A block larger than the whole store is refused, not stored.
  std::vector<uint8_t> huge = bytesOf(5 * kBlock, 7);
  PutBlock p{keyFor("lru", 99), "f32", huge.data(), huge.size()};
  auto r = client->put(std::span(&p, 1));
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ((*r)[0], BlockStatus::NoSpace);
  EXPECT_EQ(server->stats().blocks, 4u);
}

TEST_P(KvStore, MismatchedBlocksAreRejectedNeverReturned) {
  auto server = startServer(16ull << 20);
  ASSERT_TRUE(server);
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  std::vector<uint8_t> data = bytesOf(64 << 10, 3);
  PutBlock p{keyFor("strict", 0), "f16", data.data(), data.size()};
  ASSERT_TRUE(client->put(std::span(&p, 1)));

  const std::vector<uint8_t> poison(128 << 10, 0xAB);
  std::vector<uint8_t> wrongDtype = poison, shorter = poison, longer = poison;
  std::vector<GetBlock> gets = {
      {keyFor("strict", 0), "bf16", wrongDtype.data(), data.size()},
      {keyFor("strict", 0), "f16", shorter.data(), data.size() / 2},
      {keyFor("strict", 0), "f16", longer.data(), data.size() * 2},
  };
  auto got = client->get(gets);
  ASSERT_TRUE(got) << got.message();
  for (size_t i = 0; i < gets.size(); ++i)
    EXPECT_EQ((*got)[i], BlockStatus::Rejected) << i;
  // No byte of the stored block reached the caller's buffers.
  EXPECT_EQ(wrongDtype, poison);
  EXPECT_EQ(shorter, poison);
  EXPECT_EQ(longer, poison);
  std::vector<BlockQuery> queries = {{keyFor("strict", 0), "bf16", data.size()},
                                     {keyFor("strict", 0), "f16", data.size()}};
  auto present = client->exists(queries);
  ASSERT_TRUE(present) << present.message();
  EXPECT_EQ((*present)[0], BlockStatus::Rejected);
  EXPECT_EQ((*present)[1], BlockStatus::Found);
  EXPECT_GE(server->stats().rejected, 4u);

  // Bad input from the caller is refused before anything is sent.
  PutBlock badDtype{keyFor("strict", 1), "F16!", data.data(), data.size()};
  auto refused = client->put(std::span(&badDtype, 1));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("dtype"), std::string::npos) << refused.message();
}

TEST_P(KvStore, AServerThatIsDownIsAnErrorWithinTheDeadline) {
  uint16_t port;
  {
    auto server = startServer(1 << 20);
    ASSERT_TRUE(server);
    port = server->port(); // free again once the server stops
  }
  auto client = connect(port, 1500ms);
  ASSERT_TRUE(client);
  std::vector<uint8_t> out(4096);
  GetBlock g{keyFor("down", 0), "f32", out.data(), out.size()};
  auto start = std::chrono::steady_clock::now();
  auto got = client->get(std::span(&g, 1));
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(got);
  EXPECT_NE(got.message().find("kv store 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << got.message();
  // Not a hang: the error comes by the deadline (with slack for a loaded CI).
  EXPECT_LT(elapsed, 1500ms + 5s) << got.message();
}

TEST_P(KvStore, ARestartedServerIsAnErrorThenUsedAgain) {
  auto server = startServer(1 << 20);
  ASSERT_TRUE(server);
  uint16_t port = server->port();
  auto client = connect(port, 1500ms);
  ASSERT_TRUE(client);
  std::vector<uint8_t> data = bytesOf(8192, 5);
  PutBlock p{keyFor("restart", 0), "f32", data.data(), data.size()};
  auto stored = client->put(std::span(&p, 1));
  ASSERT_TRUE(stored) << stored.message();

  server->stop();
  std::vector<uint8_t> out(data.size());
  GetBlock g{keyFor("restart", 0), "f32", out.data(), out.size()};
  auto whileDown = client->get(std::span(&g, 1));
  ASSERT_FALSE(whileDown);
  EXPECT_NE(whileDown.message().find("kv store"), std::string::npos) << whileDown.message();

  server = startServer(1 << 20, port);
  ASSERT_TRUE(server);
  // The new store is empty: the block is missing, not an error, and the same
  // client stores and reads it again.
  auto afterRestart = client->get(std::span(&g, 1));
  ASSERT_TRUE(afterRestart) << afterRestart.message();
  EXPECT_EQ((*afterRestart)[0], BlockStatus::Missing);
  stored = client->put(std::span(&p, 1));
  ASSERT_TRUE(stored) << stored.message();
  auto again = client->get(std::span(&g, 1));
  ASSERT_TRUE(again) << again.message();
  EXPECT_EQ((*again)[0], BlockStatus::Found);
  EXPECT_EQ(out, data);
  // The restarted store's segment is another one; the client mapped it and
  // uses the new store's channel.
  EXPECT_EQ(client->usesSharedMemory(), sharedMemory()) << client->describeConnection();
  EXPECT_EQ(client->usesRequestChannel(), sharedMemory()) << client->describeConnection();
}

// With shm,tcp a get of blocks the store's index holds is served by the
// client itself (docs/kv-store.md, "Gets served by the client"): no request
// reaches the store, yet its hits, bytes and recency count them; a block
// not held is missing without asking it.
TEST_P(KvStore, GetsOfIndexedBlocksAreServedByTheClientAndStillCounted) {
  std::atomic<int> getRequests{0};
  ServerOptions so;
  so.capacityBytes = 3 * (1 << 20);
  auto started = Server::start(so, [&](const OperationRecord &r) {
    if (r.op == Operation::Get)
      ++getRequests;
  });
  ASSERT_TRUE(started) << started.message();
  auto server = std::move(*started);
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < 4; ++i)
    data.push_back(bytesOf(1 << 20, uint32_t(40 + i)));
  auto putOne = [&](int i) {
    PutBlock p{keyFor("indexed", 16 * i), "f32", data[i].data(), data[i].size()};
    auto r = client->put(std::span(&p, 1));
    ASSERT_TRUE(r) << r.message();
    EXPECT_EQ((*r)[0], BlockStatus::Stored);
  };
  for (int i = 0; i < 3; ++i)
    putOne(i);
  EXPECT_EQ(client->usesIndexedGets(), sharedMemory()) << client->describeConnection();

  std::vector<uint8_t> out(1 << 20), other(64);
  GetBlock g{keyFor("indexed", 0), "f32", out.data(), out.size()};
  auto got = client->get(std::span(&g, 1));
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(out, data[0]);
  if (sharedMemory()) // (over TCP the store counts requests as their replies complete)
    EXPECT_EQ(getRequests.load(), 0);
  PoolStats s = server->stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.clientServedBytes, sharedMemory() ? uint64_t(1 << 20) : 0u);

  // A held block and one never stored: both answered by the client (the
  // miss too: its bucket holds every key it has); the store counts both.
  std::vector<GetBlock> two = {g, {keyFor("indexed", 999), "f32", other.data(), 64}};
  auto mixed = client->get(two);
  ASSERT_TRUE(mixed) << mixed.message();
  EXPECT_EQ((*mixed)[0], BlockStatus::Found);
  EXPECT_EQ((*mixed)[1], BlockStatus::Missing);
  s = server->stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 1u);
  if (sharedMemory())
    EXPECT_EQ(getRequests.load(), 0);
  // Held with another size: rejected, counted, never copied.
  GetBlock wrongSize{keyFor("indexed", 0), "f32", other.data(), 64};
  auto rejected = client->get(std::span(&wrongSize, 1));
  ASSERT_TRUE(rejected) << rejected.message();
  EXPECT_EQ((*rejected)[0], BlockStatus::Rejected);
  EXPECT_EQ(server->stats().rejected, 1u);

  // Recency: block 0 was found last (by the client, not the store), so the
  // put that needs room evicts block 1, the least recently used.
  putOne(3);
  std::vector<BlockQuery> q;
  for (int i = 0; i < 4; ++i)
    q.push_back({keyFor("indexed", 16 * i), "f32", data[i].size()});
  auto present = client->exists(q);
  ASSERT_TRUE(present) << present.message();
  EXPECT_EQ((*present)[0], BlockStatus::Found);
  EXPECT_EQ((*present)[1], BlockStatus::Missing);
  EXPECT_EQ((*present)[2], BlockStatus::Found);
  EXPECT_EQ((*present)[3], BlockStatus::Found);
  // An evicted block is no longer served from the index.
  GetBlock evicted{keyFor("indexed", 16), "f32", out.data(), out.size()};
  auto gone = client->get(std::span(&evicted, 1));
  ASSERT_TRUE(gone) << gone.message();
  EXPECT_EQ((*gone)[0], BlockStatus::Missing);
}

// The client's mapping of a stopped store's segment stays readable (its
// pages live until unmapped), index included: the client must not serve
// gets from it. After the restart the same key holds other bytes in the new
// store, and only those may come back.
TEST_P(KvStore, ARestartedStoreInvalidatesTheMappedIndex) {
  auto server = startServer(8 << 20);
  ASSERT_TRUE(server);
  uint16_t port = server->port();
  auto client = connect(port, 2s);
  ASSERT_TRUE(client);
  std::vector<uint8_t> before = bytesOf(256 << 10, 60), after = bytesOf(256 << 10, 61);
  PutBlock p{keyFor("incarnation", 0), "f32", before.data(), before.size()};
  ASSERT_TRUE(client->put(std::span(&p, 1)));
  std::vector<uint8_t> out(before.size());
  GetBlock g{keyFor("incarnation", 0), "f32", out.data(), out.size()};
  auto got = client->get(std::span(&g, 1));
  ASSERT_TRUE(got) << got.message();
  ASSERT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(client->usesIndexedGets(), sharedMemory());

  server->stop();
  server = startServer(8 << 20, port);
  ASSERT_TRUE(server);
  auto first = client->get(std::span(&g, 1));
  if (first) // the error of the call that meets the restart, or the new store's answer
    EXPECT_EQ((*first)[0], BlockStatus::Missing) << "served from the old store's segment";
  else
    EXPECT_NE(first.message().find("kv store"), std::string::npos) << first.message();
  PutBlock q{keyFor("incarnation", 0), "f32", after.data(), after.size()};
  auto stored = client->put(std::span(&q, 1));
  ASSERT_TRUE(stored) << stored.message();
  auto again = client->get(std::span(&g, 1));
  ASSERT_TRUE(again) << again.message();
  EXPECT_EQ((*again)[0], BlockStatus::Found);
  EXPECT_EQ(out, after) << "the old store's bytes came back";
  EXPECT_EQ(client->usesIndexedGets(), sharedMemory()) << client->describeConnection();
}

// With shm,tcp puts go through rooms the store reserved ahead and their
// commits are not waited for (docs/kv-store.md, "Pipelined puts"): the
// client that put a block reads it back at once, another client finds it
// once the store has read the commit, and the rooms' budget goes back with
// the client.
// A store that keeps looking for channel requests after each one (as
// idleChannelSpin does while the host has a CPU to spare) is awake when its
// clients post: they write no wake-up, so the spin alone must find every
// request. It lasts longer than the clients' deadline here: a request the
// spinning store missed fails its call instead of waiting for the sleep.
TEST_P(KvStore, ASpinningStoreServesEveryRequestItsClientsPostWithoutWakingIt) {
  ServerOptions o = serverOptions(64ull << 20);
  o.channelSpin = 3s;
  auto server = startServer(o);
  ASSERT_TRUE(server);
  auto writer = connect(server->port(), 1s);
  auto reader = connect(server->port(), 1s);
  ASSERT_TRUE(writer && reader);
  constexpr size_t kBlock = 256 << 10;
  std::vector<uint8_t> out(kBlock);
  for (int i = 0; i < 40; ++i) {
    auto data = bytesOf(kBlock, uint32_t(500 + i));
    PutBlock p{keyFor("spun", i), "f32", data.data(), kBlock};
    auto stored = writer->put(std::span(&p, 1)); // pipelined through the channel
    ASSERT_TRUE(stored) << i << ": " << stored.message();
    EXPECT_EQ((*stored)[0], BlockStatus::Stored);
    BlockQuery q{keyFor("spun", i), "f32", kBlock};
    auto held = writer->exists(std::span(&q, 1)); // reads the commit's reply first
    ASSERT_TRUE(held) << i << ": " << held.message();
    EXPECT_EQ((*held)[0], BlockStatus::Found) << i;
    GetBlock g{keyFor("spun", i), "f32", out.data(), kBlock};
    auto got = reader->get(std::span(&g, 1));
    ASSERT_TRUE(got) << i << ": " << got.message();
    EXPECT_EQ((*got)[0], BlockStatus::Found) << i;
    EXPECT_EQ(out, data) << i;
  }
  EXPECT_EQ(writer->usesRequestChannel(), sharedMemory()) << writer->describeConnection();
  EXPECT_EQ(writer->pipelinedPutsRefused(), 0u);
}

// With no channel open the store polls UCX after each request while the
// host has a CPU to spare (ServerOptions::idlePoll), here longer than the
// clients' deadline: every request is served whether it polls or sleeps
// (a loaded host), and a polling store still stops at once.
TEST_P(KvStore, APollingStoreServesEveryRequestOfItsUcxClientsAndStops) {
  ServerOptions o = serverOptions(64ull << 20);
  o.idlePoll = 3s;
  auto server = startServer(o);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 2; ++i) {
    ClientOptions co;
    co.port = server->port();
    co.timeout = 1s;
    co.requestChannel = false; // requests over UCX: no channel spin
    auto c = Client::create(co);
    ASSERT_TRUE(c) << c.message();
    clients.push_back(std::move(*c));
  }
  for (size_t kBlock : {size_t(4096), size_t(1) << 20}) {
    std::vector<uint8_t> out(kBlock);
    for (int i = 0; i < 20; ++i) {
      auto data = bytesOf(kBlock, uint32_t(900 + i));
      PutBlock p{keyFor("polled", i), "f32", data.data(), kBlock};
      auto stored = clients[i % 2]->put(std::span(&p, 1));
      ASSERT_TRUE(stored) << i << ": " << stored.message();
      EXPECT_EQ((*stored)[0], BlockStatus::Stored);
      GetBlock g{keyFor("polled", i), "f32", out.data(), kBlock};
      auto got = clients[(i + 1) % 2]->get(std::span(&g, 1));
      ASSERT_TRUE(got) << i << ": " << got.message();
      EXPECT_EQ((*got)[0], BlockStatus::Found) << i;
      EXPECT_EQ(out, data) << i;
    }
  }
  EXPECT_FALSE(clients[0]->usesRequestChannel());
  clients.clear();
  auto t0 = std::chrono::steady_clock::now();
  server.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

// Gets that write their destination with non-temporal stores
// (ClientOptions::streamingGetBytes; here from 64 KiB), into destinations on
// a cache line, 16 and 4 bytes past one (each line put together from two
// source stripes) and 1 byte past (the cached pass), while a writer replaces
// the block back to back: every get that reports Found holds one of the
// versions put, whole, and nothing before or after the destination is
// written.
TEST_P(KvStore, StreamingGetsHandBackWholeBlocksAtAnyDestination) {
  auto server = startServer(64ull << 20);
  ASSERT_TRUE(server);
  auto writer = connect(server->port());
  ClientOptions ro;
  ro.port = server->port();
  ro.timeout = 5s;
  ro.streamingGetBytes = 64 << 10;
  auto reader = Client::create(ro);
  ASSERT_TRUE(writer && reader) << reader.message();
  constexpr size_t kBlock = (256 << 10) + 100; // whole 1 KiB blocks and a rest
  constexpr int kVersions = 4, kPuts = 150;
  std::vector<std::vector<uint8_t>> versions;
  for (int v = 0; v < kVersions; ++v)
    versions.push_back(bytesOf(kBlock, uint32_t(7000 + v)));
  std::atomic<bool> done{false};
  std::atomic<int> found{0}, wrong{0}, outside{0};
  std::string failure;
  std::thread readerThread([&] {
    std::vector<uint8_t> buffer(kBlock + 256, 0xee), out(kBlock);
    auto *line = reinterpret_cast<uint8_t *>(
        (reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
    for (int i = 0; !done.load() || i < 8; ++i) {
      uint8_t *at = line + size_t(std::array<int, 4>{0, 16, 4, 1}[i % 4]);
      std::fill(buffer.begin(), buffer.end(), uint8_t(0xee));
      GetBlock g{keyFor("streamed", 0), "f32", at, kBlock};
      auto got = (*reader)->get(std::span(&g, 1));
      if (!got) {
        failure = got.message();
        return;
      }
      if (std::any_of(buffer.data(), at, [](uint8_t c) { return c != 0xee; }) ||
          std::any_of(at + kBlock, buffer.data() + buffer.size(),
                      [](uint8_t c) { return c != 0xee; }))
        ++outside;
      if ((*got)[0] != BlockStatus::Found)
        continue; // Missing before the first commit is read
      ++found;
      std::memcpy(out.data(), at, kBlock);
      if (std::find(versions.begin(), versions.end(), out) == versions.end())
        ++wrong;
    }
  });
  for (int i = 0; i < kPuts; ++i) {
    PutBlock p{keyFor("streamed", 0), "f32", versions[i % kVersions].data(), kBlock};
    auto stored = writer->put(std::span(&p, 1));
    ASSERT_TRUE(stored) << i << ": " << stored.message();
    EXPECT_EQ((*stored)[0], BlockStatus::Stored) << i;
  }
  BlockQuery q{keyFor("streamed", 0), "f32", kBlock};
  ASSERT_TRUE(writer->exists(std::span(&q, 1))); // the last commit is read
  done = true;
  readerThread.join();
  EXPECT_TRUE(failure.empty()) << failure;
  EXPECT_GT(found.load(), 0);
  EXPECT_EQ(wrong.load(), 0) << "of " << found.load() << " gets";
  EXPECT_EQ(outside.load(), 0);
  EXPECT_EQ((*reader)->usesIndexedGets(), sharedMemory()) << (*reader)->describeConnection();
}

TEST_P(KvStore, PipelinedPutsAreReadBackByTheirClientAndByOthers) {
  constexpr size_t kBlock = 1 << 20;
  auto server = startServer(64ull << 20); // an endpoint's rooms: up to 4 MiB
  ASSERT_TRUE(server);
  auto writer = connect(server->port());
  auto reader = connect(server->port());
  ASSERT_TRUE(writer && reader);
  std::vector<std::vector<uint8_t>> data;
  std::vector<uint8_t> out(kBlock);
  for (int i = 0; i < 8; ++i) {
    data.push_back(bytesOf(kBlock, uint32_t(70 + i)));
    PutBlock p{keyFor("piped", 16 * i), "f32", data[i].data(), kBlock};
    auto stored = writer->put(std::span(&p, 1));
    ASSERT_TRUE(stored) << stored.message();
    EXPECT_EQ((*stored)[0], BlockStatus::Stored);
    // Its own client reads it back at once (the commit is read first).
    GetBlock g{keyFor("piped", 16 * i), "f32", out.data(), kBlock};
    auto got = writer->get(std::span(&g, 1));
    ASSERT_TRUE(got) << got.message();
    EXPECT_EQ((*got)[0], BlockStatus::Found) << i;
    EXPECT_EQ(out, data[i]) << i;
  }
  // Put again without reading: the last commit may still be on its way.
  for (int i = 0; i < 8; ++i) {
    PutBlock p{keyFor("piped", 16 * i), "f32", data[i].data(), kBlock};
    ASSERT_TRUE(writer->put(std::span(&p, 1)));
  }
  // Blocks of other sizes, 100 per call: the rooms of the old size go back,
  // the budget held in rooms stays within the endpoint's share.
  for (int round = 0; round < 3; ++round) {
    size_t small = round == 1 ? 8 << 10 : 16 << 10;
    std::vector<std::vector<uint8_t>> many;
    std::vector<PutBlock> puts;
    std::vector<std::vector<uint8_t>> back(100, std::vector<uint8_t>(small));
    std::vector<GetBlock> gets;
    for (int i = 0; i < 100; ++i) {
      many.push_back(bytesOf(small, uint32_t(1000 * round + i)));
      puts.push_back({keyFor("piped-small-" + std::to_string(round), i), "f32",
                      many.back().data(), small});
      gets.push_back({puts.back().key, "f32", back[i].data(), small});
    }
    auto stored = writer->put(puts);
    ASSERT_TRUE(stored) << stored.message();
    auto got = writer->get(gets);
    ASSERT_TRUE(got) << got.message();
    for (int i = 0; i < 100; ++i) {
      EXPECT_EQ((*stored)[i], BlockStatus::Stored) << i;
      EXPECT_EQ((*got)[i], BlockStatus::Found) << i;
      EXPECT_EQ(back[i], many[i]) << i;
    }
    EXPECT_LE(server->stats().bytesReserved, (64ull << 20) / 16);
  }
  for (int i = 0; i < 8; ++i) {
    PutBlock p{keyFor("piped", 16 * i), "f32", data[i].data(), kBlock};
    ASSERT_TRUE(writer->put(std::span(&p, 1)));
  }
  EXPECT_EQ(writer->pipelinedPutsRefused(), 0u);
  auto until = std::chrono::steady_clock::now() + 5s;
  size_t found = 0;
  while (found < 8 && std::chrono::steady_clock::now() < until) {
    found = 0;
    for (int i = 0; i < 8; ++i) {
      GetBlock g{keyFor("piped", 16 * i), "f32", out.data(), kBlock};
      auto got = reader->get(std::span(&g, 1));
      ASSERT_TRUE(got) << got.message();
      if ((*got)[0] == BlockStatus::Found) {
        EXPECT_EQ(out, data[i]) << i;
        ++found;
      }
    }
  }
  EXPECT_EQ(found, 8u) << "another client finds every block once the store read the commits";
  PoolStats s = server->stats();
  EXPECT_EQ(s.blocks, 308u);
  EXPECT_LE(s.bytesReserved, (64ull << 20) / 16) << "rooms ahead: at most the endpoint's share";
  // The rooms' budget goes back with the client (the store notices the
  // closed endpoint on its thread).
  writer.reset();
  until = std::chrono::steady_clock::now() + 5s;
  while (server->stats().bytesReserved != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(server->stats().bytesReserved, 0u);
  EXPECT_EQ(server->stats().blocks, 308u) << "the last commit was read before the client went";
}

TEST_P(KvStore, AStoreWithoutASegmentMovesBytesInMessages) {
  auto server = startServer(8 << 20, 0, /*withSegment=*/false);
  ASSERT_TRUE(server);
  EXPECT_EQ(server->sharedMemoryStatus(), "off");
  auto client = connect(server->port());
  ASSERT_TRUE(client);
  std::vector<uint8_t> data = bytesOf(1 << 20, 9);
  PutBlock p{keyFor("no-segment", 0), "f32", data.data(), data.size()};
  auto stored = client->put(std::span(&p, 1));
  ASSERT_TRUE(stored) << stored.message();
  EXPECT_EQ((*stored)[0], BlockStatus::Stored);
  EXPECT_FALSE(client->usesSharedMemory());
  EXPECT_NE(client->describeConnection().find("active messages"), std::string::npos)
      << client->describeConnection();
  std::vector<uint8_t> out(data.size());
  GetBlock g{keyFor("no-segment", 0), "f32", out.data(), out.size()};
  auto got = client->get(std::span(&g, 1));
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(out, data);
}

// Over UCX a block of at least twice ClientOptions::partBytes goes in parts
// (PutPart), and one of at least trailingChecksumBytes as parts whose last
// (1-2 KiB) carries the checksum; whole or in parts of any size, every
// client reads the same bytes, and a part size the protocol does not allow
// is refused up front.
TEST_P(KvStore, BlocksPutInPartsOrWholeReadTheSame) {
  auto server = startServer(64 << 20);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<Client>> clients;
  const std::pair<uint64_t, uint64_t> layouts[] = {
      {0, 0}, {1024, 0}, {64 << 10, 0}, {512 << 10, 0}, // {partBytes, trailingChecksumBytes}
      {0, 2048}, {1024, 2048}, {64 << 10, 4096}, {512 << 10, 512 << 10}, {512 << 10, 1}};
  for (auto [part, trailing] : layouts) {
    ClientOptions o;
    o.port = server->port();
    o.timeout = 5s;
    o.partBytes = part;
    o.trailingChecksumBytes = trailing;
    auto c = Client::create(o);
    ASSERT_TRUE(c) << c.message();
    clients.push_back(std::move(*c));
  }
  std::vector<size_t> sizes = {2048, 2049, (128 << 10) + 5, 1 << 20, (3 << 20) + 1000};
  for (size_t w = 0; w < clients.size(); ++w) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<PutBlock> puts;
    for (size_t i = 0; i < sizes.size(); ++i) {
      data.push_back(bytesOf(sizes[i], uint32_t(100 * w + i)));
      puts.push_back({keyFor("parts-" + std::to_string(w), int32_t(16 * i)), "f32",
                      data.back().data(), sizes[i]});
    }
    auto stored = clients[w]->put(puts);
    ASSERT_TRUE(stored) << stored.message();
    for (BlockStatus st : *stored)
      EXPECT_EQ(st, BlockStatus::Stored);
    for (size_t r = 0; r < clients.size(); ++r) {
      std::vector<std::vector<uint8_t>> out;
      std::vector<GetBlock> gets;
      for (size_t i = 0; i < sizes.size(); ++i) {
        out.emplace_back(sizes[i]);
        gets.push_back({puts[i].key, "f32", out.back().data(), sizes[i]});
      }
      auto got = clients[r]->get(gets);
      ASSERT_TRUE(got) << got.message();
      for (size_t i = 0; i < sizes.size(); ++i) {
        EXPECT_EQ((*got)[i], BlockStatus::Found) << w << " " << r << " " << i;
        EXPECT_EQ(out[i], data[i]) << "written by client " << w << ", read by " << r;
      }
    }
  }
  for (uint64_t bad : {uint64_t(1000), uint64_t(2 << 20)}) {
    ClientOptions o;
    o.port = server->port();
    o.partBytes = bad;
    auto c = Client::create(o);
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(c.message().find("partBytes"), std::string::npos) << c.message();
  }
}

// Large blocks whose checksum trails them (the default client over TCP): the
// client progresses UCX while it hashes a sent part, and a part sent then
// overtook an earlier one waiting in UCX's pending queue (the store refused
// "a block not begun") until each part waited for the one before it. Single
// blocks and several per call, again and again, all stored and read back.
TEST_P(KvStore, LargeBlocksWithTrailingChecksumsArriveInOrder) {
  auto server = startServer(64 << 20);
  ASSERT_TRUE(server);
  std::vector<size_t> sizes = {2 << 20, (4 << 20) + 1000, 1 << 20, (512 << 10) + 3};
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutBlock> puts;
  for (size_t i = 0; i < sizes.size(); ++i) {
    data.push_back(bytesOf(sizes[i], uint32_t(4000 + i)));
    puts.push_back({keyFor("in-order", int32_t(16 * i)), "f32", data[i].data(), sizes[i]});
  }
  std::unique_ptr<Client> client;
  for (int round = 0; round < 8; ++round) {
    // A new connection's first put: its TCP window is small, so sends wait.
    client = connect(server->port());
    ASSERT_TRUE(client);
    auto first = client->put(std::span(&puts[round % sizes.size()], 1));
    ASSERT_TRUE(first) << round << ": " << first.message();
    auto all = client->put(puts);
    ASSERT_TRUE(all) << round << ": " << all.message();
    for (size_t i = 0; i < sizes.size(); ++i) {
      EXPECT_EQ((*all)[i], BlockStatus::Stored) << round << " " << i;
      auto one = client->put(std::span(&puts[i], 1));
      ASSERT_TRUE(one) << round << " " << i << ": " << one.message();
      EXPECT_EQ((*one)[0], BlockStatus::Stored) << round << " " << i;
    }
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> out(sizes[i]);
    GetBlock g{puts[i].key, "f32", out.data(), sizes[i]};
    auto got = client->get(std::span(&g, 1));
    ASSERT_TRUE(got) << got.message();
    EXPECT_EQ((*got)[0], BlockStatus::Found) << i;
    EXPECT_EQ(out, data[i]) << i;
  }
}

// A client that polls UCX while it waits for replies (ClientOptions::idlePoll
// where the host has a CPU to spare, pollBeforeSleep always) gets every reply
// of single and batched calls, whole blocks and blocks in parts, and meets its
// deadline: the poll lasts longer than the calls' timeout here. Negative poll
// times are refused.
TEST_P(KvStore, APollingClientGetsEveryReply) {
  auto server = startServer(64ull << 20);
  ASSERT_TRUE(server);
  for (bool always : {false, true}) {
    ClientOptions o;
    o.port = server->port();
    o.timeout = 2s;
    o.sharedMemory = false; // the wait on UCX is what polls
    (always ? o.pollBeforeSleep : o.idlePoll) = std::chrono::microseconds(3s);
    auto client = Client::create(o);
    ASSERT_TRUE(client) << client.message();
    for (int i = 0; i < 12; ++i) {
      const size_t n = i % 3 == 2 ? 3 : 1;
      const size_t bytes = i % 2 ? (2 << 20) + 4096 : 256 << 10; // in parts and whole
      std::vector<std::vector<uint8_t>> data, out;
      std::vector<PutBlock> puts;
      std::vector<GetBlock> gets;
      for (size_t b = 0; b < n; ++b) {
        data.push_back(bytesOf(bytes, uint32_t(900 + i * 8 + b + (always ? 100 : 0))));
        out.emplace_back(bytes);
      }
      for (size_t b = 0; b < n; ++b) {
        BlockKey key = keyFor(always ? "poll-always" : "poll-idle", i * 8 + int(b));
        puts.push_back({key, "f32", data[b].data(), bytes});
        gets.push_back({key, "f32", out[b].data(), bytes});
      }
      auto stored = (*client)->put(puts);
      ASSERT_TRUE(stored) << i << ": " << stored.message();
      auto got = (*client)->get(gets);
      ASSERT_TRUE(got) << i << ": " << got.message();
      for (size_t b = 0; b < n; ++b) {
        EXPECT_EQ((*stored)[b], BlockStatus::Stored) << i << " " << b;
        EXPECT_EQ((*got)[b], BlockStatus::Found) << i << " " << b;
        EXPECT_EQ(out[b], data[b]) << i << " " << b;
      }
    }
  }
  ClientOptions bad;
  bad.port = server->port();
  bad.idlePoll = std::chrono::microseconds(-1);
  auto refused = Client::create(bad);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("idlePoll"), std::string::npos) << refused.message();
}

TEST_P(KvStore, BlocksPutInMessagesAreReadThroughTheSegmentAndBack) {
  // One client moves bytes in messages, the other through the segment: each
  // reads what the other wrote, byte for byte.
  auto server = startServer(16 << 20);
  ASSERT_TRUE(server);
  ClientOptions o;
  o.port = server->port();
  o.timeout = 5s;
  o.sharedMemory = false;
  auto messages = Client::create(o);
  ASSERT_TRUE(messages) << messages.message();
  auto segment = connect(server->port());
  ASSERT_TRUE(segment);
  std::vector<uint8_t> a = bytesOf(300 << 10, 11), b = bytesOf(2 << 20, 12);
  PutBlock pa{keyFor("mixed", 0), "f32", a.data(), a.size()};
  PutBlock pb{keyFor("mixed", 16), "f32", b.data(), b.size()};
  ASSERT_TRUE((*messages)->put(std::span(&pa, 1)));
  auto storedB = segment->put(std::span(&pb, 1));
  ASSERT_TRUE(storedB) << storedB.message();
  EXPECT_FALSE((*messages)->usesSharedMemory());
  EXPECT_EQ(segment->usesSharedMemory(), sharedMemory());
  std::vector<uint8_t> outA(a.size()), outB(b.size());
  GetBlock ga{keyFor("mixed", 0), "f32", outA.data(), outA.size()};
  GetBlock gb{keyFor("mixed", 16), "f32", outB.data(), outB.size()};
  auto viaSegment = segment->get(std::span(&ga, 1));
  auto viaMessages = (*messages)->get(std::span(&gb, 1));
  ASSERT_TRUE(viaSegment) << viaSegment.message();
  ASSERT_TRUE(viaMessages) << viaMessages.message();
  EXPECT_EQ((*viaSegment)[0], BlockStatus::Found);
  EXPECT_EQ((*viaMessages)[0], BlockStatus::Found);
  EXPECT_EQ(outA, a);
  EXPECT_EQ(outB, b);
}

TEST_P(KvStore, ConcurrentClientsUnderEvictionNeverSeeWrongBytes) {
  // Four clients (one per thread) put and get their own blocks into a store
  // that holds a fraction of them, so blocks are evicted while others are
  // being sent: every get is Found with exactly the bytes put, or Missing.
  constexpr size_t kBlock = 64 << 10;
  auto server = startServer(12 * kBlock);
  ASSERT_TRUE(server);
  uint16_t port = server->port();
  std::atomic<int> found{0}, missing{0}, wrong{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      ClientOptions o;
      o.port = port;
      o.timeout = 10s;
      auto client = Client::create(o);
      if (!client) {
        ++errors;
        return;
      }
      std::vector<std::vector<uint8_t>> data;
      for (int i = 0; i < 8; ++i)
        data.push_back(bytesOf(kBlock, uint32_t(t * 100 + i)));
      std::vector<uint8_t> out(kBlock);
      for (int round = 0; round < 10; ++round)
        for (int i = 0; i < 8; ++i) {
          BlockKey key = keyFor("concurrent-" + std::to_string(t), i);
          PutBlock p{key, "f32", data[i].data(), kBlock};
          auto stored = (*client)->put(std::span(&p, 1));
          if (!stored) {
            ++errors;
            continue;
          }
          int back = (i + 5) % 8; // an older block, perhaps evicted by now
          GetBlock g{keyFor("concurrent-" + std::to_string(t), back), "f32", out.data(),
                     kBlock};
          auto got = (*client)->get(std::span(&g, 1));
          if (!got)
            ++errors;
          else if ((*got)[0] == BlockStatus::Found)
            (out == data[back] ? found : wrong)++;
          else if ((*got)[0] == BlockStatus::Missing)
            ++missing;
          else
            ++wrong;
        }
    });
  for (auto &th : threads)
    th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(found + missing, 4 * 10 * 8);
  EXPECT_GT(missing.load(), 0) << "the bound should have evicted some blocks";
  PoolStats s = server->stats();
  EXPECT_LE(s.bytesHeld, 12 * kBlock);
  EXPECT_EQ(s.bytesReserved, 0u);
  EXPECT_GT(s.evictions, 0u);
}

// UCX's TCP segment size decides the largest active-message header it
// reports (max_am_header, so the records per message) and which messages go
// by its short protocol (header and payload within one segment). That
// protocol carries a header's length in 16 bits: with segments above 64 KiB
// a split batch's replies (header only: put, exists, a get of missing
// blocks) arrived cut, were dropped as malformed and the call waited until
// its deadline. Every size here, the library's default among them, must
// round-trip batches of several full messages.
class KvStoreTcpSegments : public ::testing::TestWithParam<const char *> {
protected:
  void SetUp() override {
    setenv("UCX_TLS", "tcp", 1);
    setenv("UCX_TCP_TX_SEG_SIZE", GetParam(), 1);
    setenv("UCX_TCP_RX_SEG_SIZE", GetParam(), 1);
  }
  void TearDown() override {
    unsetenv("UCX_TCP_TX_SEG_SIZE");
    unsetenv("UCX_TCP_RX_SEG_SIZE");
  }
};

TEST_P(KvStoreTcpSegments, BatchesOfSeveralFullMessagesRoundTrip) {
  ServerOptions so;
  so.host = "127.0.0.1";
  so.capacityBytes = 64ull << 20;
  so.sharedMemory = false;
  auto server = Server::start(so);
  ASSERT_TRUE(server) << server.message();
  ClientOptions co;
  co.port = (*server)->port();
  co.timeout = 5s;
  auto created = Client::create(co);
  ASSERT_TRUE(created) << created.message();
  Client &client = **created;
  size_t perMessage = client.maxBlocksPerMessage();
  ASSERT_GT(perMessage, 0u);
  // A message's header (24 bytes, then 72 per record) stays below 64 KiB.
  EXPECT_LT(24 + perMessage * 72, size_t(1) << 16) << perMessage << " records per message";

  size_t n = perMessage * 2 + 3;
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutBlock> puts;
  for (size_t i = 0; i < n; ++i) {
    data.push_back(bytesOf(256, uint32_t(5000 + i)));
    puts.push_back({keyFor("segments", int32_t(i)), "bf16", data.back().data(), 256});
  }
  auto stored = client.put(puts);
  ASSERT_TRUE(stored) << stored.message();
  ASSERT_EQ(stored->size(), n);
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ((*stored)[i], BlockStatus::Stored) << i;

  std::vector<BlockQuery> queries;
  for (size_t i = 0; i < n; ++i)
    queries.push_back({keyFor("segments", int32_t(i)), "bf16", 256});
  auto present = client.exists(queries);
  ASSERT_TRUE(present) << present.message();
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ((*present)[i], BlockStatus::Found) << i;

  // Replies of records only (every block missing), then of records and bytes.
  std::vector<std::vector<uint8_t>> out(n, std::vector<uint8_t>(256, 0));
  std::vector<GetBlock> misses;
  for (size_t i = 0; i < n; ++i)
    misses.push_back({keyFor("never-stored", int32_t(i)), "bf16", out[i].data(), 256});
  auto missing = client.get(misses);
  ASSERT_TRUE(missing) << missing.message();
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ((*missing)[i], BlockStatus::Missing) << i;
  std::vector<GetBlock> gets;
  for (size_t i = 0; i < n; ++i)
    gets.push_back({keyFor("segments", int32_t(i)), "bf16", out[i].data(), 256});
  auto got = client.get(gets);
  ASSERT_TRUE(got) << got.message();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ((*got)[i], BlockStatus::Found) << i;
    ASSERT_EQ(out[i], data[i]) << i;
  }
  EXPECT_EQ((*server)->stats().blocks, n);

  // Single blocks around and far above the segment (eager and rendezvous,
  // sent and received as one contiguous buffer).
  for (size_t bytes : {size_t(60) << 10, size_t(300) << 10, size_t(4) << 20}) {
    std::vector<uint8_t> block = bytesOf(bytes, uint32_t(bytes));
    PutBlock p{keyFor("single", int32_t(bytes)), "f32", block.data(), bytes};
    auto r = client.put(std::span(&p, 1));
    ASSERT_TRUE(r) << r.message();
    ASSERT_EQ((*r)[0], BlockStatus::Stored) << bytes;
    std::vector<uint8_t> back(bytes, 0);
    GetBlock g{keyFor("single", int32_t(bytes)), "f32", back.data(), bytes};
    auto fetched = client.get(std::span(&g, 1));
    ASSERT_TRUE(fetched) << fetched.message();
    ASSERT_EQ((*fetched)[0], BlockStatus::Found) << bytes;
    EXPECT_EQ(back, block) << bytes;
  }
}

INSTANTIATE_TEST_SUITE_P(SegmentSizes, KvStoreTcpSegments,
                         ::testing::Values("8k", "64k", "256k", "1m"),
                         [](const auto &info) { return std::string(info.param); });

INSTANTIATE_TEST_SUITE_P(Transports, KvStore, ::testing::Values("tcp", "shm,tcp"),
                         [](const auto &info) {
                           return std::string(info.param).find("shm") == 0 ? "shm"
                                                                           : "tcp";
                         });

} // namespace
