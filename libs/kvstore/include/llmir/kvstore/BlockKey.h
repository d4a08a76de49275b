// Content keys of KV blocks. A block of the paged KV cache is identified by
// everything that determines its bytes: the model, the layers and the shard it
// holds, its element type, the block size in tokens and the whole token prefix
// up to and including the block (attention makes a block depend on every
// token before it). Two workers that would compute the same bytes compute the
// same key, so a block stored by one replica is found by another.
#pragma once

#include "llmir/support/Status.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace llmir::kvstore {

/// SHA-256 of the canonical encoding of BlockKeyFields (see makeBlockKey).
struct BlockKey {
  std::array<uint8_t, 32> bytes{};

  std::string hex() const;
  bool operator==(const BlockKey &) const = default;
};

struct BlockKeyHash {
  size_t operator()(const BlockKey &key) const;
};

struct BlockKeyFields {
  std::string model;        // model identity (name or checkpoint digest)
  uint32_t layerBegin = 0;  // first layer held by the block
  uint32_t layerEnd = 0;    // one past the last layer
  uint32_t shard = 0;       // tensor-parallel rank whose heads the block holds
  uint32_t shardCount = 1;  // tensor-parallel degree
  std::string dtype;        // element type of the cache, e.g. "f32", "bf16"
  uint32_t blockTokens = 0; // block size in tokens
  /// Token ids from the start of the sequence through the end of the block;
  /// its length is a positive multiple of blockTokens.
  std::span<const int32_t> tokenPrefix;
};

/// Validates the fields and hashes them; a field out of range is an error
/// naming it (an empty model, layerEnd <= layerBegin, shard >= shardCount, a
/// prefix that does not end at a block boundary, a dtype not accepted by
/// isValidDtype).
Result<BlockKey> makeBlockKey(const BlockKeyFields &fields);

/// A dtype name travels in a fixed 16-byte field: 1..15 characters of
/// [a-z0-9_].
bool isValidDtype(const std::string &dtype);

/// XXH3-64 of a block's bytes: the checksum that travels with every block and
/// is verified by the server on put and by the client on get.
uint64_t blockChecksum(const void *data, size_t bytes);

} // namespace llmir::kvstore
