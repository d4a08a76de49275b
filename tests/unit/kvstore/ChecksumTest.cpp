// Block checksums: blockChecksum (AVX2 when the CPU has it, else Debian's
// SSE2 libxxhash) and copyWithChecksum (the shared-memory path's copy that
// hashes as it goes) must both give XXH3-64 exactly, whichever computes it:
// the values below came from libxxhash's own XXH3_64bits.
#include "SharedArena.h"

#include "llmir/kvstore/BlockKey.h"

#include <gtest/gtest.h>

#include <cstdint>
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
}

} // namespace
