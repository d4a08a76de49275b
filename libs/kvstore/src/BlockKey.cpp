#include "llmir/kvstore/BlockKey.h"

#include <openssl/evp.h>
#include <xxhash.h>

#include "Checksum.h"

#include <cstring>

namespace llmir::kvstore {

namespace {

// Little-endian, length-prefixed: no two distinct field sets encode alike.
void appendU32(std::string &out, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void appendString(std::string &out, const std::string &s) {
  appendU32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

} // namespace

std::string BlockKey::hex() const {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (uint8_t b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

size_t BlockKeyHash::operator()(const BlockKey &key) const {
  size_t h;
  std::memcpy(&h, key.bytes.data(), sizeof h); // already a uniform hash
  return h;
}

bool isValidDtype(const std::string &dtype) {
  if (dtype.empty() || dtype.size() > 15)
    return false;
  for (char c : dtype)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

Result<BlockKey> makeBlockKey(const BlockKeyFields &f) {
  if (f.model.empty())
    return Status::error("block key: model must not be empty");
  if (f.layerEnd <= f.layerBegin)
    return Status::error("block key: layer range [" + std::to_string(f.layerBegin) +
                         ", " + std::to_string(f.layerEnd) + ") is empty");
  if (f.shardCount == 0 || f.shard >= f.shardCount)
    return Status::error("block key: shard " + std::to_string(f.shard) +
                         " is not below shard count " + std::to_string(f.shardCount));
  if (!isValidDtype(f.dtype))
    return Status::error("block key: dtype '" + f.dtype +
                         "' must be 1-15 characters of [a-z0-9_]");
  if (f.blockTokens == 0)
    return Status::error("block key: block size must be at least one token");
  if (f.tokenPrefix.empty() || f.tokenPrefix.size() % f.blockTokens != 0)
    return Status::error("block key: token prefix of " +
                         std::to_string(f.tokenPrefix.size()) +
                         " tokens does not end at a block boundary (block size " +
                         std::to_string(f.blockTokens) + ")");
  std::string encoded = "llmir-kv-block-v1";
  appendString(encoded, f.model);
  appendU32(encoded, f.layerBegin);
  appendU32(encoded, f.layerEnd);
  appendU32(encoded, f.shard);
  appendU32(encoded, f.shardCount);
  appendString(encoded, f.dtype);
  appendU32(encoded, f.blockTokens);
  appendU32(encoded, static_cast<uint32_t>(f.tokenPrefix.size()));
  for (int32_t t : f.tokenPrefix)
    appendU32(encoded, static_cast<uint32_t>(t));
  BlockKey key;
  unsigned int length = 0;
  if (EVP_Digest(encoded.data(), encoded.size(), key.bytes.data(), &length,
                 EVP_sha256(), nullptr) != 1 ||
      length != key.bytes.size())
    return Status::error("block key: SHA-256 failed");
  return key;
}

uint64_t blockChecksum(const void *data, size_t bytes) {
#if LLMIR_KVSTORE_AVX2
  if (detail::hasAvx512())
    return llmir_kvstore_checksum_avx512(data, bytes);
  if (detail::hasAvx2())
    return llmir_kvstore_checksum_avx2(data, bytes);
#endif
  return XXH3_64bits(data, bytes);
}

} // namespace llmir::kvstore
