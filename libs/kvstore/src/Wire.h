// The store's messages (docs/kv-store.md): one ucp active message per
// request (id kAmRequest) and one per reply (id kAmReply). The AM header
// carries a MessageHeader and `count` BlockMeta records; the AM payload
// carries the blocks' bytes back to back, in record order (put: every block;
// get reply: the blocks whose code is Found). Little-endian hosts only.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace llmir::kvstore::wire {

constexpr uint16_t kAmRequest = 1;
constexpr uint16_t kAmReply = 2;
// The cluster handshake (llmir/support/ClusterAuth.h), carried in AM
// headers without payload: the client's hello and then its proof go as
// kAmAuth; the server's answer and then its accept byte come back as
// kAmAuthReply. A store without a secret answers a hello with the single
// byte kNoSecret (a client holding a secret refuses such a store). Until the
// handshake succeeds a store with a secret serves nothing: any other message
// closes the endpoint unanswered.
constexpr uint16_t kAmAuth = 3;
constexpr uint16_t kAmAuthReply = 4;
constexpr char kNoSecret = 0x00;
constexpr uint32_t kMagic = 0x4b56534c; // "LSVK"
constexpr uint16_t kVersion = 1;

enum class Op : uint16_t { Put = 1, Get = 2, Exists = 3 };

// Per-block outcome in a reply.
enum class Code : uint32_t {
  None = 0,     // (requests)
  Stored = 1,   // put: held by the store
  Found = 2,    // get/exists: present with the requested dtype and size
  Missing = 3,  // get/exists: not held (never stored, or evicted)
  Rejected = 4, // dtype, size or checksum did not match: not stored / not returned
  NoSpace = 5,  // put: larger than the store, or the budget is held by puts in flight
};

struct MessageHeader {
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t op = 0;
  uint64_t requestId = 0;
  uint32_t count = 0;
  // Replies: 0, or the length of an error text that follows the header in
  // place of the records (the whole request was refused).
  uint32_t errorLength = 0;
};
static_assert(sizeof(MessageHeader) == 24);

struct BlockMeta {
  uint8_t key[32];
  char dtype[16]; // NUL-padded
  uint64_t bytes;
  uint64_t checksum; // XXH3-64 of the bytes (put requests, get replies)
  uint32_t code;     // Code (replies)
  uint32_t reserved;
};
static_assert(sizeof(BlockMeta) == 72);

inline std::string dtypeOf(const BlockMeta &m) {
  return std::string(m.dtype, strnlen(m.dtype, sizeof m.dtype));
}
inline void setDtype(BlockMeta &m, const std::string &dtype) {
  std::memset(m.dtype, 0, sizeof m.dtype);
  std::memcpy(m.dtype, dtype.data(), std::min(dtype.size(), sizeof m.dtype - 1));
}

} // namespace llmir::kvstore::wire
