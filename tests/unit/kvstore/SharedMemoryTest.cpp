// Block checksums and the shared-memory segment. Checksums: blockChecksum (AVX2 when the CPU has it, else Debian's
// SSE2 libxxhash) and copyWithChecksum (the shared-memory path's copy that
// hashes as it goes) must both give XXH3-64 exactly, whichever computes it:
// the values below came from libxxhash's own XXH3_64bits.
#include "SharedArena.h"
#include "Ucx.h"

#include "llmir/kvstore/BlockKey.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using namespace llmir::kvstore;

namespace {

std::vector<unsigned char> pattern(size_t n) {
  std::vector<unsigned char> d(n);
  for (size_t i = 0; i < n; ++i)
    d[i] = static_cast<unsigned char>((i * 2654435761u) >> 13);
  return d;
}

TEST(BlockChecksum, IsXxh3ForEveryLengthClassAndTheCopyHashesTheSame) {
  const std::vector<std::pair<size_t, uint64_t>> expected = {
      {0, 0x2d06800538d394c2ull},     {1, 0xc44bdff4074eecdbull},
      {3, 0xa1c4a8259b827291ull},     {16, 0x222e9aead6bddd51ull},
      {17, 0x47aad6b375eb4bbaull},    {128, 0x421a9c905c6e66baull},
      {129, 0x9e2414800f83768aull},   {240, 0xb714c5fd22744964ull},
      {241, 0xbc424a2c480dd281ull},   {1000, 0xa067b58e6ea5d2f2ull},
      {1024, 0x1fd15e7d36f5e1bcull},  {65536, 0x32152aa15c5ff65aull},
      {65537, 0x61b429f8bd154060ull}, {1052671, 0x5f1262fb023233e9ull},
  };
  const std::vector<unsigned char> data = pattern(1052671);
  for (const auto &[n, sum] : expected) {
    EXPECT_EQ(blockChecksum(data.data(), n), sum) << n << " bytes";
    std::vector<unsigned char> copy(n + 1, 0xee);
    EXPECT_EQ(copyWithChecksum(copy.data(), data.data(), n), sum) << n << " bytes";
    EXPECT_TRUE(std::equal(data.begin(), data.begin() + n, copy.begin())) << n;
    EXPECT_EQ(copy[n], 0xee) << "wrote past " << n << " bytes";
  }
  // The one-pass copy: lengths that end mid-stripe and mid-block (XXH3 reads
  // its last stripe again) and unaligned ends, compared with the plain hash.
  for (size_t n : {size_t(242), size_t(1087), size_t(2049), size_t(4097 + 13), size_t(1 << 20)})
    for (size_t shift : {size_t(0), size_t(1), size_t(3)}) {
      std::vector<unsigned char> copy(n + 8, 0xee);
      EXPECT_EQ(copyWithChecksum(copy.data() + shift, data.data() + 2 * shift, n),
                blockChecksum(data.data() + 2 * shift, n))
          << n << " bytes, shift " << shift;
      EXPECT_TRUE(std::equal(data.begin() + 2 * shift, data.begin() + 2 * shift + n,
                             copy.begin() + shift))
          << n << " bytes, shift " << shift;
      EXPECT_TRUE(std::all_of(copy.begin(), copy.begin() + shift,
                              [](unsigned char c) { return c == 0xee; }) &&
                  std::all_of(copy.begin() + shift + n, copy.end(),
                              [](unsigned char c) { return c == 0xee; }))
          << "wrote outside " << n << " bytes, shift " << shift;
    }
}

// The copy with non-temporal stores (large shared puts and gets): the same
// bytes and XXH3 into destinations on a cache line and a multiple of 4 bytes
// past one (streamed, each line put together from the two source stripes
// it straddles) and others (the cached copy), from sources on a line or not,
// at the same length classes and ends; nothing written outside.
TEST(BlockChecksum, TheStreamingCopyHashesAndCopiesTheSame) {
  const std::vector<unsigned char> data = pattern((4 << 20) + 300);
  for (size_t n : {size_t(0), size_t(17), size_t(240), size_t(241), size_t(1024), size_t(1025),
                   size_t(2049), size_t(65536), size_t(65537), size_t(1052671),
                   size_t(4 << 20), size_t((4 << 20) + 100)})
    for (size_t shift : {size_t(0), size_t(1), size_t(4), size_t(16), size_t(30), size_t(48),
                         size_t(60), size_t(64)})
      for (size_t from : {shift, size_t(0), size_t(3)}) {
        std::vector<unsigned char> buffer(n + 256, 0xee);
        auto *aligned = reinterpret_cast<unsigned char *>(
            (reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
        unsigned char *to = aligned + shift;
        EXPECT_EQ(copyWithChecksumStreaming(to, data.data() + from, n),
                  blockChecksum(data.data() + from, n))
            << n << " bytes, shift " << shift << ", source at " << from;
        EXPECT_TRUE(std::equal(data.begin() + from, data.begin() + from + n, to))
            << n << " bytes, shift " << shift << ", source at " << from;
        EXPECT_TRUE(std::all_of(buffer.data(), to, [](unsigned char c) { return c == 0xee; }) &&
                    std::all_of(to + n, buffer.data() + buffer.size(),
                                [](unsigned char c) { return c == 0xee; }))
            << "wrote outside " << n << " bytes, shift " << shift << ", source at " << from;
      }
}

// A block hashed in parts (TCP puts of large blocks): the same XXH3 as the
// whole, at every split the protocol allows (parts of multiples of 1 KiB,
// a last part of at least 1 KiB, ending anywhere), copying or not, and the
// copy exactly the bytes.
TEST(BlockChecksum, PartsGiveTheWholeBlocksXxh3) {
  const std::vector<unsigned char> data = pattern(3 << 20);
  for (size_t total : {size_t(2048), size_t(2049), size_t(3000), size_t(65536 + 1023),
                       size_t(1 << 20), size_t((1 << 20) + 77), size_t(3 << 20)})
    for (size_t part : {size_t(1024), size_t(4096), size_t(256 << 10), size_t(1 << 20)}) {
      if (total < part + PartChecksum::kPartAlignment)
        continue; // at least two parts, the last one of 1 KiB or more
      uint64_t whole = blockChecksum(data.data(), total);
      for (bool copying : {false, true}) {
        std::vector<unsigned char> copy(total + 1, 0xee);
        PartChecksum sum;
        size_t at = 0;
        while (total - at >= part + PartChecksum::kPartAlignment) {
          sum.add(copying ? copy.data() + at : nullptr, data.data() + at, part);
          at += part;
        }
        EXPECT_EQ(sum.finish(copying ? copy.data() + at : nullptr, data.data() + at,
                             total - at, total),
                  whole)
            << total << " bytes in parts of " << part << (copying ? ", copying" : "");
        if (copying) {
          EXPECT_TRUE(std::equal(data.begin(), data.begin() + total, copy.begin())) << total;
          EXPECT_EQ(copy[total], 0xee) << "wrote past " << total << " bytes";
        }
      }
    }
  // A changed byte in any part changes the value.
  std::vector<unsigned char> other = data;
  other[(1 << 20) + 5] ^= 1;
  PartChecksum a, b;
  a.add(nullptr, data.data(), 1 << 20);
  b.add(nullptr, other.data(), 1 << 20);
  EXPECT_NE(a.finish(nullptr, data.data() + (1 << 20), 1 << 20, 2 << 20),
            b.finish(nullptr, other.data() + (1 << 20), 1 << 20, 2 << 20));
}

} // namespace

namespace {

// The store's shared-memory segment: first-fit from the lowest address,
// freed neighbours merge, exhaustion is nullopt (the store then evicts), and
// a client maps it only with the right pid, fd and nonce.
TEST(SharedArena, AllocatesFirstFitMergesFreedRangesAndMapsOnlyWithItsNonce) {
  auto arena = SharedArena::create(1024);
  ASSERT_TRUE(arena) << arena.message();
  SharedArena &a = **arena;
  EXPECT_EQ(a.size(), 1024u + kArenaAlignment); // + the nonce header
  auto x = a.allocate(100); // rounded up to 128
  auto y = a.allocate(256);
  auto z = a.allocate(512);
  ASSERT_TRUE(x && y && z);
  EXPECT_EQ(*x, kArenaAlignment);
  EXPECT_EQ(*y, kArenaAlignment + 128);
  EXPECT_EQ(*z, kArenaAlignment + 384);
  EXPECT_FALSE(a.allocate(256)) << "only 128 bytes are left";
  a.free(*x, 100);
  a.free(*y, 256); // merges with x's range: 384 contiguous bytes
  auto w = a.allocate(384);
  ASSERT_TRUE(w);
  EXPECT_EQ(*w, kArenaAlignment);
  a.free(*w, 384);
  a.free(*z, 512);
  auto all = a.allocate(1024); // everything merged back into one range
  ASSERT_TRUE(all);
  EXPECT_EQ(*all, kArenaAlignment);
  a.free(*all, 1024);

  // The client's side: bytes written through the mapping are the store's.
  auto mapped = ArenaMapping::open(getpid(), a.fd(), a.size(), a.nonce());
  ASSERT_TRUE(mapped) << mapped.message();
  (*mapped)->base()[kArenaAlignment + 5] = 0x5a;
  EXPECT_EQ(a.base()[kArenaAlignment + 5], 0x5a);
  ArenaNonce wrong = a.nonce();
  wrong[3] ^= 1;
  auto impostor = ArenaMapping::open(getpid(), a.fd(), a.size(), wrong);
  ASSERT_FALSE(impostor);
  EXPECT_NE(impostor.message().find("nonce"), std::string::npos) << impostor.message();
  auto wrongSize = ArenaMapping::open(getpid(), a.fd(), a.size() * 2, a.nonce());
  EXPECT_FALSE(wrongSize);
  auto noSuchFd = ArenaMapping::open(getpid(), 987654, a.size(), a.nonce());
  ASSERT_FALSE(noSuchFd);
  EXPECT_NE(noSuchFd.message().find("cannot open /proc/"), std::string::npos)
      << noSuchFd.message();
  // A file that is not sealed against shrinking is refused (touching it
  // could raise SIGBUS).
  int plain = memfd_create("not-sealed", MFD_CLOEXEC);
  ASSERT_GE(plain, 0);
  ASSERT_EQ(ftruncate(plain, off_t(a.size())), 0);
  auto unsealed = ArenaMapping::open(getpid(), plain, a.size(), a.nonce());
  ASSERT_FALSE(unsealed);
  EXPECT_NE(unsealed.message().find("sealed"), std::string::npos) << unsealed.message();
  close(plain);
}

} // namespace

namespace llmir::kvstore::ucx {
namespace {

// UCX_TLS as UCX reads it: unset or "all" allows everything, a list allows
// what it names, a "^" list everything it does not name.
TEST(UcxTransports, FollowUcxTls) {
  const char *saved = std::getenv("UCX_TLS");
  const std::string before = saved ? saved : "";
  const std::initializer_list<std::string_view> shm = {"shm", "sm", "posix", "sysv", "cma", "mm"};
  unsetenv("UCX_TLS");
  EXPECT_TRUE(transportsAllow({"tcp"}));
  setenv("UCX_TLS", "all", 1);
  EXPECT_TRUE(transportsAllow(shm));
  setenv("UCX_TLS", "tcp", 1);
  EXPECT_TRUE(transportsAllow({"tcp"}));
  EXPECT_FALSE(transportsAllow(shm));
  setenv("UCX_TLS", "rc,posix,tcp", 1);
  EXPECT_TRUE(transportsAllow(shm));
  setenv("UCX_TLS", "^tcp", 1);
  EXPECT_FALSE(transportsAllow({"tcp"}));
  EXPECT_TRUE(transportsAllow(shm));
  setenv("UCX_TLS", "^all", 1); // excludes nothing by that name
  EXPECT_TRUE(transportsAllow({"tcp"}));
  setenv("UCX_TLS", "tcpx", 1); // whole names only
  EXPECT_FALSE(transportsAllow({"tcp"}));
  if (saved)
    setenv("UCX_TLS", before.c_str(), 1);
  else
    unsetenv("UCX_TLS");
}

} // namespace
} // namespace llmir::kvstore::ucx
