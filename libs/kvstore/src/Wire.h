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

// Ops 4-7 move block bytes through the store's shared-memory segment
// (docs/kv-store.md, "Shared memory"); their messages carry no payload.
//  Hello:      count 0; the reply carries an ArenaOffer after the header, or
//              nothing when the store has no segment.
//  GetShared:  as Get, but a Found record's `slot` names the block in the
//              segment; the store keeps those blocks alive until the next
//              request on the same endpoint (the client copies them out
//              before it sends anything else).
//  PutReserve: records as Put (checksum unused); a Reserved record's `slot`
//              is room for it in the segment, held for this endpoint.
//  PutCommit:  records with key, dtype, bytes, checksum and the slot the
//              client filled; Stored under that checksum when they match
//              the reservation (the bytes are not hashed again: every
//              reader verifies them against it).
//  PutCommitAhead: as PutCommit, and each reply record's `slot` is room of
//              the record's size reserved ahead for the endpoint's next put
//              (0: none), so that put needs no PutReserve: it commits into
//              those slots directly. Held until the endpoint's next commit
//              (which frees those it does not name) or until it goes away;
//              not counted against the budget until committed.
enum class Op : uint16_t {
  Put = 1, Get = 2, Exists = 3,
  Hello = 4, GetShared = 5, PutReserve = 6, PutCommit = 7, PutCommitAhead = 8,
};

// Per-block outcome in a reply.
enum class Code : uint32_t {
  None = 0,     // (requests)
  Stored = 1,   // put: held by the store
  Found = 2,    // get/exists: present with the requested dtype and size
  Missing = 3,  // get/exists: not held (never stored, or evicted)
  Rejected = 4, // dtype, size or checksum did not match: not stored / not returned
  NoSpace = 5,  // put: larger than the store, or the budget is held by puts in flight
  Reserved = 6, // put-reserve: room held in the segment at `slot`
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
  uint32_t slot;     // shared-memory ops: offset in the segment / 64; else 0
};
static_assert(sizeof(BlockMeta) == 72);

// The reply to Hello from a store with a shared-memory segment: a client on
// the same host maps /proc/<pid>/fd/<fd> (`bytes` long) and checks that it
// starts with `nonce`.
struct ArenaOffer {
  uint32_t pid;
  int32_t fd;
  uint64_t bytes;
  uint8_t nonce[16];
};
static_assert(sizeof(ArenaOffer) == 32);

inline std::string dtypeOf(const BlockMeta &m) {
  return std::string(m.dtype, strnlen(m.dtype, sizeof m.dtype));
}
inline void setDtype(BlockMeta &m, const std::string &dtype) {
  std::memset(m.dtype, 0, sizeof m.dtype);
  std::memcpy(m.dtype, dtype.data(), std::min(dtype.size(), sizeof m.dtype - 1));
}

} // namespace llmir::kvstore::wire
