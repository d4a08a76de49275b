// The store's memory: blocks by key under a byte budget, least recently used
// evicted first. Thread-safe (the UCX progress thread writes, the metrics
// endpoint reads).
//
// The budget covers blocks held plus space reserved for blocks still being
// received, so a burst of puts cannot overshoot it. A block evicted while a
// reply is still sending it stays alive (shared_ptr) until the send ends;
// that memory is no longer counted.
#pragma once

#include "llmir/kvstore/BlockKey.h"

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace llmir::kvstore {

/// Frees a block's bytes: delete[] for heap memory, or `release` (which
/// returns a range of the store's shared-memory segment).
struct BlockMemory {
  std::function<void(uint8_t *)> release;
  void operator()(uint8_t *p) const {
    if (release)
      release(p);
    else
      delete[] p;
  }
};

struct StoredBlock {
  BlockKey key;
  std::string dtype;
  uint64_t checksum = 0;
  uint64_t bytes = 0;
  std::unique_ptr<uint8_t[], BlockMemory> data; // `bytes` bytes
  /// Offset in the store's shared-memory segment; 0 when on the heap.
  uint64_t arenaOffset = 0;
};

struct PoolStats {
  uint64_t capacityBytes = 0;
  uint64_t bytesHeld = 0;
  uint64_t bytesReserved = 0;
  uint64_t blocks = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t stored = 0;
  uint64_t rejected = 0;
  /// Of the hits: bytes of the blocks that same-host clients found in the
  /// store's index and copied out of its segment themselves (Server::stats;
  /// no request reached the store for them).
  uint64_t clientServedBytes = 0;
};

class BlockPool {
public:
  explicit BlockPool(uint64_t capacityBytes) { stats_.capacityBytes = capacityBytes; }

  /// Makes room for `bytes` (evicting least recently used blocks) and counts
  /// them as reserved. Fails when `bytes` exceeds the whole budget, or when
  /// other reservations hold the room.
  Status reserve(uint64_t bytes);
  /// Returns a reservation that will not be used (a failed receive).
  void release(uint64_t bytes);
  /// Turns a reservation of block->bytes into a held block, replacing a block
  /// with the same key.
  void insert(std::shared_ptr<StoredBlock> block);

  /// The block under `key`, most recently used from now on; null when absent
  /// (a miss).
  std::shared_ptr<const StoredBlock> find(const BlockKey &key);
  /// The block under `key` without counting a hit or miss or touching its
  /// recency (exists requests).
  std::shared_ptr<const StoredBlock> peek(const BlockKey &key);

  /// Evicts the least recently used block (room in the shared-memory
  /// segment is fragmented); false when none is held.
  bool evictOne();

  void countRejected(uint64_t n = 1);
  PoolStats stats() const;

  /// What a store that lets clients serve gets themselves (its index in the
  /// shared-memory segment) needs from the pool. Each runs under the pool's
  /// lock, on the thread that changed the pool.
  struct IndexHooks {
    /// A block is held under its key from now on (new or replacing).
    std::function<void(const StoredBlock &)> held;
    /// The key's block is no longer held (evicted or replaced; replacement
    /// calls `held` with the new block after this).
    std::function<void(const BlockKey &)> dropped;
    /// Whether a client found the block since it was last asked: the
    /// eviction then moves it to the most recent end instead (clients'
    /// hits do not reach the pool when they happen).
    std::function<bool(const BlockKey &)> touched;
  };
  void setIndexHooks(IndexHooks hooks);

private:
  struct Entry {
    std::shared_ptr<StoredBlock> block;
    std::list<BlockKey>::iterator lru;
  };
  bool evictOneLocked();

  mutable std::mutex mu_;
  std::unordered_map<BlockKey, Entry, BlockKeyHash> blocks_;
  std::list<BlockKey> lru_; // front: most recently used
  PoolStats stats_;
  IndexHooks hooks_;
};

} // namespace llmir::kvstore
