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

// Ops 4-8 move block bytes through the store's shared-memory segment
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
//  PutPipelined (channel only): two kinds of record. One with a slot commits
//              the block the client wrote into that room (a room this
//              endpoint got from an earlier PutPipelined: its budget is
//              already counted, so the commit cannot fail for room): Stored,
//              or Rejected when the room is not held or another size. One
//              with slot 0 asks for a room of `bytes`: its budget reserved
//              now (evicting), the range allocated: Reserved with the slot,
//              or NoSpace (also past the endpoint's share, kPipelinedShare).
//              One with a slot and 0 bytes gives that room back (Missing).
//              The client sends commits without waiting for the reply
//              (docs/kv-store.md, "Pipelined puts").
//  OpenChannel: count 0; the reply carries a ChannelOffer after the header:
//              a request/reply channel in the segment for this endpoint
//              (below), or an error when the store has no segment.
//  PutPart (over UCX only): one block in several messages, so that the
//              store copies and hashes part k while part k+1 travels and
//              the client hashes part k+1 while part k travels
//              (docs/kv-store.md, "Blocks in parts"). Each message: count 1,
//              the record of the whole block (key, dtype, bytes), `slot` the
//              part's offset / kPartAlignment, `checksum` the block's XXH3
//              in the last part (0 in the others); the payload the part's
//              bytes, eagerly. Every part but the last is a multiple of
//              kPartAlignment bytes, the last at least kPartAlignment; the
//              parts of a block share the requestId and come in order. One
//              reply (op PutPart, the record with its code) after the last
//              part; a part out of order or unlike the first is refused
//              with an error reply and the block dropped.
enum class Op : uint16_t {
  Put = 1, Get = 2, Exists = 3,
  Hello = 4, GetShared = 5, PutReserve = 6, PutCommit = 7, PutCommitAhead = 8,
  OpenChannel = 9, PutPipelined = 10, PutPart = 11, GetParts = 12,
};
//  GetParts (over UCX only): as Get, but a reply of one Found block larger
//              than twice the store's part size (ServerOptions::partBytes)
//              may come as several messages, as PutPart's: op GetParts,
//              count 1, the block's record (code Found, its checksum) with
//              `slot` the part's offset / kPartAlignment, the part's bytes
//              as payload, in order. Any other reply is one message, as for
//              Get. Clients that cannot take parts send Get.
constexpr uint64_t kPartAlignment = 1024; // PartChecksum's (Client.cpp asserts it)
constexpr uint64_t kMaxPartBytes = 1 << 20;
// Whether `partBytes` is a part size a client or store may be given
// (ClientOptions / ServerOptions::partBytes; 0: whole blocks).
inline bool validPartBytes(uint64_t partBytes) {
  return partBytes % kPartAlignment == 0 && partBytes <= kMaxPartBytes;
}
// Blocks one endpoint may have begun in parts and not finished: the first
// part of one more is refused (a peer cannot grow the store's state
// without bound; a client's put call sends its blocks' parts one block
// after another, so only a call of more blocks than this above 1 MiB
// could meet it).
constexpr size_t kMaxBlocksInParts = 4096;
// An endpoint's rooms for pipelined puts hold at most this share of the
// store's budget (1/16): beyond it PutPipelined answers NoSpace and the
// client puts with a round trip, so small stores keep their budget for
// blocks.
constexpr uint64_t kPipelinedShareDivisor = 16;

// Whether a request of `op` may travel through the channel: those whose
// request and reply carry no block bytes, except the connection's setup.
inline bool carriedByChannel(uint16_t op) {
  return op == uint16_t(Op::Exists) || op == uint16_t(Op::PutPipelined) ||
         (op >= uint16_t(Op::GetShared) && op <= uint16_t(Op::PutCommitAhead));
}

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

// A same-host client's request/reply channel (docs/kv-store.md, "Request
// channel"): ChannelHeader at the channel's offset in the segment, then the
// request area and the reply area, `messageBytes` each. A request or reply
// is a MessageHeader with its records, exactly as in an active message.
// The client writes the request, sets requestLength and then increments
// requestSeq; the store copies the request out, handles it, writes the reply
// and replyLength and sets replySeq to the request's requestSeq. A side that
// sleeps says so first (clientWaiting here; the store's word at
// kStoreSleepingOffset of the segment), so the other wakes it: the store
// wakes the client with FUTEX_WAKE on replySeq, the client the store with a
// byte into the store's wake pipe. The client sends one request at a time.
struct ChannelHeader {
  uint32_t requestSeq;   // client -> store
  uint32_t requestLength;
  uint32_t clientWaiting; // 1 while the client may sleep on replySeq
  uint32_t pad0;
  // Gets the client served itself from the store's index (SharedIndex.h),
  // cumulative: blocks found, their bytes, blocks rejected (dtype, size or
  // checksum), blocks missing. The store adds them to its own counters
  // (its metrics).
  uint64_t localHits;
  uint64_t localBytes;
  uint64_t localRejected;
  uint64_t localMisses;
  uint32_t pad1[4];
  uint32_t replySeq;      // store -> client (own cache line)
  uint32_t replyLength;
  uint32_t pad2[14];
};
static_assert(sizeof(ChannelHeader) == 128);
// In the segment's first 64 bytes (after the 16-byte nonce): non-zero while
// the store's progress thread sleeps (or is about to).
constexpr uint64_t kStoreSleepingOffset = 32;
// Each of the request and reply areas.
constexpr uint32_t kChannelMessageBytes = 16 << 10;

// A spin-wait hint to the core (its sibling thread, or the hypervisor).
inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct ChannelOffer {
  uint32_t slot;         // the ChannelHeader's offset / 64
  int32_t wakeFd;        // the store's wake pipe (write end), /proc/<pid>/fd/<wakeFd>
  uint32_t messageBytes; // each area
  uint32_t reserved;
};
static_assert(sizeof(ChannelOffer) == 16);

inline std::string dtypeOf(const BlockMeta &m) {
  return std::string(m.dtype, strnlen(m.dtype, sizeof m.dtype));
}
inline void setDtype(BlockMeta &m, const std::string &dtype) {
  std::memset(m.dtype, 0, sizeof m.dtype);
  std::memcpy(m.dtype, dtype.data(), std::min(dtype.size(), sizeof m.dtype - 1));
}

} // namespace llmir::kvstore::wire
