// The store's block index in its shared-memory segment, so that a client on
// the same host serves a get itself: it looks the key up, copies the block
// out of the segment (hashing as it copies) and then proves that the bytes
// it copied were not replaced meanwhile (docs/kv-store.md, "Gets served by
// the client"). No request, no wake-up of the store, none of the client.
//
// Layout (offsets in the segment; the store writes, clients read):
//   [16, 20)   u32: offset / 64 of the store's liveness lock (0: none), a
//              process-shared robust mutex that the store's progress thread
//              holds while it runs. When that thread ends (the process
//              killed included) the kernel marks the lock's owner dead, so
//              a client learns that the store is alive with one atomic
//              operation instead of a system call (docs/kv-store.md, "Gets
//              served by the client").
//   [40, 64)   SegmentDirectory: where the index and the generations are,
//              and whether the store still serves this segment.
//   generations: one u32 per 2^kRegionShift bytes of the segment, bumped
//              by SharedArena::free before a freed range can be handed out
//              again (seq_cst), so any later write into the range happens
//              after the bump.
//   index:     `buckets` x kWays IndexEntry; a key lives in the bucket of its
//              first 8 bytes (keys are SHA-256), in any way of it. A key
//              that finds no free way is not indexed (counted in the
//              bucket's first entry): a key found in no way of a bucket
//              that counts none is Missing without asking the store, else
//              the store is asked.
//
// A client's get: read the entry (its sequence number even and unchanged
// around the read, seqlock style), sum the generations of the block's
// regions, read the entry's sequence number again (the block was not
// withdrawn before that sum: the store withdraws an entry before it frees
// the block's range), copy and hash, then sum the generations again. Equal
// sums prove that no range of the block was freed during the copy, so no
// other block's bytes can have been written there; a different sum sends
// the block to the store through the request channel. The checksum is still
// verified: the store never hashes a shared-memory put (its client did) and
// any process mapping the segment can write into it, so only the reader's
// hash proves the bytes are the block's.
#pragma once

#include "llmir/kvstore/BlockPool.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmir::kvstore {

class SharedArena;

namespace index {

constexpr uint32_t kDirectoryMagic = 0x58444e49; // "INDX"
constexpr uint32_t kVersion = 1;
constexpr uint64_t kDirectoryOffset = 40;
constexpr uint64_t kLivenessSlotOffset = 16; // after the 16-byte nonce
constexpr uint32_t kWays = 8;
constexpr uint32_t kRegionShift = 16; // 64 KiB regions

struct SegmentDirectory {
  uint32_t magic;            // kDirectoryMagic once the index is published
  uint32_t version;          // kVersion
  uint32_t generationsSlot;  // offset / 64 of the u32 per region
  uint32_t indexSlot;        // offset / 64 of the entries
  uint32_t buckets;          // a power of two
  uint32_t closed;           // non-zero once the store stopped serving the segment
};
static_assert(sizeof(SegmentDirectory) == 24);
static_assert(kDirectoryOffset + sizeof(SegmentDirectory) <= 64);

struct IndexEntry {
  uint32_t seq;      // odd while the store rewrites the entry
  uint32_t slot;     // the block's offset / 64; 0: empty
  uint64_t bytes;
  uint64_t checksum; // XXH3-64 the block was stored under
  uint8_t key[32];
  char dtype[16];    // NUL-padded
  // Written by clients: non-zero after a client's get found the block (only
  // when it was zero, so a hot block's line is not written on every get);
  // the store clears it when it looks at the block for eviction and then
  // keeps the block as recently used.
  uint32_t touched;
  // In a bucket's first entry only: how many keys of the bucket the store
  // holds without an entry (the bucket was full, or the block is not in the
  // segment). While 0, a key found in none of the bucket's ways is not held.
  uint32_t unindexed;
  uint32_t pad[12];
};
static_assert(sizeof(IndexEntry) == 128);
static_assert(offsetof(IndexEntry, touched) == 72);

/// Regions of the segment covered by [offset, offset + bytes).
inline uint64_t firstRegion(uint64_t offset) { return offset >> kRegionShift; }
inline uint64_t lastRegion(uint64_t offset, uint64_t bytes) {
  return (offset + bytes - 1) >> kRegionShift;
}
inline uint64_t regionsOf(uint64_t segmentBytes) {
  return (segmentBytes >> kRegionShift) + 1;
}

/// The store's side: publishes and withdraws blocks. Used on the store's
/// progress thread only (the pool's hooks run there, under its lock); it
/// never reads the entries back (clients can write the segment), only the
/// clients' `touched` words.
class Writer {
public:
  /// Allocates the generations and the entries from `arena` (sized for
  /// about one block per 16 KiB of `capacityBytes`), attaches the
  /// generations to it and publishes the directory. nullopt when the
  /// segment has no room (the store then serves every get itself).
  static std::optional<Writer> create(SharedArena &arena, uint64_t capacityBytes);

  /// Indexes a held block (replacing the entry of the same key), or
  /// withdraws the key when no way of its bucket is free.
  void publish(const StoredBlock &block);
  void withdraw(const BlockKey &key);
  /// Whether a client found the block since the last call (then cleared).
  bool takeTouched(const BlockKey &key);
  /// Clients stop serving gets from this segment.
  void close();
  /// Takes the liveness lock and publishes it; on the thread whose end
  /// means the store's end (the progress thread), before it serves anyone.
  /// It is never released: the kernel marks its owner dead when the thread
  /// ends.
  void holdLivenessLock();
  uint32_t buckets() const { return buckets_; }

private:
  Writer() = default;
  void write(uint32_t entry, const StoredBlock *block); // null: empty
  uint8_t *base_ = nullptr;
  IndexEntry *entries_ = nullptr;
  uint32_t buckets_ = 0;
  uint64_t livenessAt_ = 0; // the lock's offset in the segment; 0: none
  void countUnindexed(uint32_t bucket, int delta);
  std::unordered_map<BlockKey, uint32_t, BlockKeyHash> where_; // key -> entry
  std::unordered_map<BlockKey, uint32_t, BlockKeyHash> unindexed_; // key -> bucket
  std::vector<uint32_t> unindexedCount_; // per bucket
  std::vector<bool> used_;
  std::vector<uint32_t> seqs_; // the store's own copy of each entry's seq
};

enum class LocalGet { Found, Missing, Rejected, AskTheStore };

/// A client's side, over its mapping of the segment.
class Reader {
public:
  /// nullopt when the segment publishes no index (a store without one, or
  /// a directory pointing outside the segment).
  static std::optional<Reader> open(uint8_t *base, uint64_t segmentBytes);

  /// Copies the block under `key` into `destination` if the index holds it
  /// with this dtype and size and its bytes hash to the entry's checksum
  /// (Found); Missing when no way of the key's bucket held it while the
  /// bucket counted no unindexed key; Rejected when it holds the key with
  /// another dtype or size, or bytes that do not match (a corrupted block);
  /// AskTheStore when the key may be held without an entry, an entry
  /// changed under the read, or the block was withdrawn, replaced or freed
  /// around the copy. The destination's contents are unspecified unless
  /// Found. `streaming`: the copy stores past the caches
  /// (copyWithChecksumStreaming).
  LocalGet get(const BlockKey &key, const std::string &dtype, void *destination,
               uint64_t bytes, bool streaming = false);
  /// The store stopped serving this segment (it stopped or restarted).
  bool closed() const;
  /// True when the store's progress thread holds its liveness lock: the
  /// store runs (or is stopped by a signal). False when the lock shows no
  /// live holder, or the store published none: then only a system call
  /// (the client's pidfd) can tell.
  bool storeHoldsLivenessLock() const;

private:
  Reader() = default;
  uint64_t generationSum(uint64_t offset, uint64_t bytes) const;
  uint8_t *base_ = nullptr;
  uint64_t size_ = 0;
  const uint32_t *generations_ = nullptr;
  IndexEntry *entries_ = nullptr;
  uint32_t buckets_ = 0;
  void *liveness_ = nullptr; // pthread_mutex_t in the segment; null: none
};

} // namespace index
} // namespace llmir::kvstore
