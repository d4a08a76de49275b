// The store's index in its shared-memory segment (SharedIndex.h), read the
// way a client reads it: through a second mapping of the segment. The store
// side is the real index::Writer over a real SharedArena; the threads below
// play the store (publishing, withdrawing and freeing blocks, reusing their
// ranges for other blocks) and the client (copying blocks out meanwhile).
#include "SharedArena.h"
#include "SharedIndex.h"

#include "llmir/kvstore/BlockKey.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <csignal>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace llmir::kvstore;

namespace {

BlockKey keyOf(int32_t i) {
  std::vector<int32_t> tokens(16);
  std::iota(tokens.begin(), tokens.end(), i * 16);
  BlockKeyFields f;
  f.model = "index";
  f.layerEnd = 1;
  f.dtype = "f32";
  f.blockTokens = 16;
  f.tokenPrefix = tokens;
  return *makeBlockKey(f);
}

std::vector<uint8_t> contentOf(int32_t i, size_t n) {
  std::vector<uint8_t> out(n);
  std::mt19937 rng(uint32_t(i) * 7919u + 1);
  for (auto &b : out)
    b = static_cast<uint8_t>(rng());
  return out;
}

// A block in the arena as the store holds one (its range is freed by the
// test, in the store's order: withdrawn from the index first).
StoredBlock placed(SharedArena &arena, int32_t i, const std::vector<uint8_t> &bytes) {
  auto at = arena.allocate(bytes.size());
  EXPECT_TRUE(at);
  std::memcpy(arena.base() + *at, bytes.data(), bytes.size());
  StoredBlock b;
  b.key = keyOf(i);
  b.dtype = "f32";
  b.bytes = bytes.size();
  b.checksum = blockChecksum(bytes.data(), bytes.size());
  b.arenaOffset = *at;
  return b;
}

struct Segment {
  std::unique_ptr<SharedArena> arena;
  std::unique_ptr<ArenaMapping> client; // the client's own mapping
};

Segment segmentOf(uint64_t bytes) {
  Segment s;
  auto arena = SharedArena::create(bytes);
  EXPECT_TRUE(arena) << arena.message();
  s.arena = std::move(*arena);
  auto mapped = ArenaMapping::open(getpid(), s.arena->fd(), s.arena->size(), s.arena->nonce());
  EXPECT_TRUE(mapped) << mapped.message();
  s.client = std::move(*mapped);
  return s;
}

TEST(SharedIndex, AFoundBlockIsTheBlockAndAnythingElseIsRejectedOrAskedOfTheStore) {
  Segment seg = segmentOf(8 << 20);
  // A segment without a published index offers none.
  EXPECT_FALSE(index::Reader::open(seg.client->base(), seg.client->size()));
  auto writer = index::Writer::create(*seg.arena, 4 << 20);
  ASSERT_TRUE(writer);
  auto reader = index::Reader::open(seg.client->base(), seg.client->size());
  ASSERT_TRUE(reader);
  EXPECT_FALSE(reader->closed());

  const size_t n = (1 << 20) + 100; // ends mid-region and mid-stripe
  std::vector<uint8_t> content = contentOf(1, n);
  StoredBlock block = placed(*seg.arena, 1, content);
  writer->publish(block);

  std::vector<uint8_t> out(n);
  EXPECT_EQ(reader->get(keyOf(1), "f32", out.data(), n), index::LocalGet::Found);
  EXPECT_EQ(out, content);
  EXPECT_TRUE(writer->takeTouched(keyOf(1))) << "a client's hit is visible to the store";
  EXPECT_FALSE(writer->takeTouched(keyOf(1))) << "and cleared once taken";

  // Held with another dtype or size: rejected, as the store answers.
  EXPECT_EQ(reader->get(keyOf(1), "bf16", out.data(), n), index::LocalGet::Rejected);
  EXPECT_EQ(reader->get(keyOf(1), "f32", out.data(), n - 1), index::LocalGet::Rejected);
  // Never stored, in a bucket that holds every key it has: missing.
  EXPECT_EQ(reader->get(keyOf(2), "f32", out.data(), n), index::LocalGet::Missing);

  // A block whose bytes were changed in the segment (a buggy or hostile
  // process mapping it) no longer hashes to its checksum: rejected.
  seg.client->base()[block.arenaOffset + n / 2] ^= 0x40;
  EXPECT_EQ(reader->get(keyOf(1), "f32", out.data(), n), index::LocalGet::Rejected);
  seg.client->base()[block.arenaOffset + n / 2] ^= 0x40;
  EXPECT_EQ(reader->get(keyOf(1), "f32", out.data(), n), index::LocalGet::Found);

  // Withdrawn (evicted): missing; its range may then be reused.
  writer->withdraw(keyOf(1));
  EXPECT_EQ(reader->get(keyOf(1), "f32", out.data(), n), index::LocalGet::Missing);
  seg.arena->free(block.arenaOffset, n);

  // Replaced under the same key: the new block is the one found.
  std::vector<uint8_t> shorter = contentOf(3, 4096);
  StoredBlock other = placed(*seg.arena, 1, shorter);
  writer->publish(other);
  std::vector<uint8_t> small(4096);
  EXPECT_EQ(reader->get(keyOf(1), "f32", small.data(), 4096), index::LocalGet::Found);
  EXPECT_EQ(small, shorter);

  writer->close();
  EXPECT_TRUE(reader->closed()) << "a stopped store's segment is not served from";
}

TEST(SharedIndex, AKeyHeldWithoutAnEntryIsAskedOfTheStoreNeverMissing) {
  // A small index (64 entries: 8 buckets of 8 ways); nine keys of one
  // bucket: the ninth is held without an entry, so no key of that bucket
  // may be reported missing by the client until it is gone.
  Segment seg = segmentOf(4 << 20);
  auto writer = index::Writer::create(*seg.arena, 64 << 10);
  ASSERT_TRUE(writer);
  ASSERT_EQ(writer->buckets(), 8u);
  auto reader = index::Reader::open(seg.client->base(), seg.client->size());
  ASSERT_TRUE(reader);
  auto bucketOf = [&](int32_t i) {
    uint64_t h;
    std::memcpy(&h, keyOf(i).bytes.data(), sizeof h);
    return h & 7;
  };
  std::vector<int32_t> same;
  int32_t other = -1;
  for (int32_t i = 100; same.size() < 10; ++i)
    if (bucketOf(i) == bucketOf(100))
      same.push_back(i);
    else if (other < 0)
      other = i;
  std::vector<uint8_t> content = contentOf(0, 4096), out(4096);
  for (size_t k = 0; k < 9; ++k)
    writer->publish(placed(*seg.arena, same[k], content));
  EXPECT_EQ(reader->get(keyOf(same[0]), "f32", out.data(), 4096), index::LocalGet::Found);
  EXPECT_EQ(reader->get(keyOf(same[8]), "f32", out.data(), 4096), index::LocalGet::AskTheStore)
      << "held without an entry";
  EXPECT_EQ(reader->get(keyOf(same[9]), "f32", out.data(), 4096), index::LocalGet::AskTheStore)
      << "its bucket holds a key without an entry: not known to be missing";
  EXPECT_EQ(reader->get(keyOf(other), "f32", out.data(), 4096), index::LocalGet::Missing)
      << "another bucket";
  writer->withdraw(keyOf(same[8]));
  EXPECT_EQ(reader->get(keyOf(same[9]), "f32", out.data(), 4096), index::LocalGet::Missing);
  // A way freed later does not index the key that had none (it stays
  // counted until withdrawn): publish it again once its old entry is gone.
  writer->withdraw(keyOf(same[0]));
  writer->publish(placed(*seg.arena, same[9], content));
  EXPECT_EQ(reader->get(keyOf(same[9]), "f32", out.data(), 4096), index::LocalGet::Found);
}

TEST(SharedIndex, ABlockFreedOrReusedDuringTheCopyIsNeverFound) {
  // The "store" thread keeps publishing blocks and withdrawing and freeing
  // them, so that the next block is placed in a freed range at once (the
  // arena allocates first-fit from the lowest address); the "client" thread
  // copies blocks out meanwhile. Every block's bytes depend on its key only,
  // so a copy that caught another block's bytes would hash wrong: the
  // generations must turn every such race into AskTheStore before the hash
  // sees it (no block is ever corrupted here, so no Rejected), and a Found
  // block must be exactly its bytes.
  constexpr size_t kBlock = 192 << 10; // not a multiple of the 64 KiB regions
  constexpr int kKeys = 6;
  Segment seg = segmentOf(16 << 20);
  auto writer = index::Writer::create(*seg.arena, 8 << 20);
  ASSERT_TRUE(writer);
  auto reader = index::Reader::open(seg.client->base(), seg.client->size());
  ASSERT_TRUE(reader);
  std::vector<std::vector<uint8_t>> content;
  for (int k = 0; k < kKeys; ++k)
    content.push_back(contentOf(k, kBlock));

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> published{0};
  std::thread store([&] {
    std::map<int, uint64_t> held; // key -> offset
    std::mt19937 rng(42);
    while (!stop) {
      int k = int(rng() % kKeys);
      if (auto it = held.find(k); it != held.end()) {
        writer->withdraw(keyOf(k)); // the store's order: withdraw, then free
        seg.arena->free(it->second, kBlock);
        held.erase(it);
      } else {
        StoredBlock b = placed(*seg.arena, k, content[k]);
        writer->publish(b);
        held[k] = b.arenaOffset;
        ++published;
      }
    }
  });
  uint64_t found = 0, asked = 0, rejected = 0, wrong = 0;
  std::vector<uint8_t> out(kBlock);
  std::mt19937 rng(7);
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < until || found < 50) {
    int k = int(rng() % kKeys);
    switch (reader->get(keyOf(k), "f32", out.data(), kBlock)) {
    case index::LocalGet::Found:
      ++found;
      if (out != content[k])
        ++wrong;
      break;
    case index::LocalGet::Rejected: ++rejected; break;
    case index::LocalGet::Missing: ++asked; break; // withdrawn: as good as asking
    case index::LocalGet::AskTheStore: ++asked; break;
    }
    if (found + asked + rejected > 5'000'000)
      break;
  }
  stop = true;
  store.join();
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(rejected, 0u) << "a block freed or reused during the copy must be asked of the store";
  EXPECT_GT(found, 0u);
  EXPECT_GT(asked, 0u);
  EXPECT_GT(published.load(), 100u);
  RecordProperty("found", std::to_string(found));
  RecordProperty("asked", std::to_string(asked));
}

// The liveness lock: held by the store's progress thread while it runs, so
// a client tells a live store without a system call. Another process that
// holds it (the store) and is killed, or a thread that holds it and ends,
// leaves it showing no live holder; a segment whose store never took it
// tells nothing (the client then polls the store's pidfd).
TEST(SharedIndex, TheLivenessLockShowsWhetherTheStoresThreadStillRuns) {
  Segment seg = segmentOf(8 << 20);
  auto writer = index::Writer::create(*seg.arena, 4 << 20);
  ASSERT_TRUE(writer);
  auto before = index::Reader::open(seg.client->base(), seg.client->size());
  ASSERT_TRUE(before);
  EXPECT_FALSE(before->storeHoldsLivenessLock()) << "no store has taken it yet";

  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t store = fork();
  ASSERT_GE(store, 0);
  if (store == 0) { // the store: takes the lock and runs until killed
    writer->holdLivenessLock();
    char c = 1;
    (void)!write(ready[1], &c, 1);
    for (;;)
      pause();
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  close(ready[1]);
  auto reader = index::Reader::open(seg.client->base(), seg.client->size());
  ASSERT_TRUE(reader);
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(reader->storeHoldsLivenessLock()) << "the store runs";
  kill(store, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(store, &status, 0), store);
  for (int i = 0; i < 3; ++i)
    EXPECT_FALSE(reader->storeHoldsLivenessLock()) << "the store was killed";

  // A thread of this process as the store: it ends holding the lock.
  Segment seg2 = segmentOf(8 << 20);
  auto writer2 = index::Writer::create(*seg2.arena, 4 << 20);
  ASSERT_TRUE(writer2);
  std::atomic<bool> held{false}, end{false};
  std::thread thread([&] {
    writer2->holdLivenessLock();
    held = true;
    while (!end)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!held)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto reader2 = index::Reader::open(seg2.client->base(), seg2.client->size());
  ASSERT_TRUE(reader2);
  EXPECT_TRUE(reader2->storeHoldsLivenessLock());
  end = true;
  thread.join();
  EXPECT_FALSE(reader2->storeHoldsLivenessLock()) << "the store's thread ended";
  EXPECT_FALSE(reader2->storeHoldsLivenessLock());
}

} // namespace
