#include "llmir/kvstore/BlockPool.h"

namespace llmir::kvstore {

bool BlockPool::evictOneLocked() {
  if (lru_.empty())
    return false;
  // A block a client found since the pool last looked at it counts as
  // used now (a second chance, at most once per block and eviction).
  if (hooks_.touched)
    for (size_t chances = lru_.size(); chances > 0 && hooks_.touched(lru_.back()); --chances)
      lru_.splice(lru_.begin(), lru_, std::prev(lru_.end()));
  auto it = blocks_.find(lru_.back());
  if (hooks_.dropped)
    hooks_.dropped(it->first);
  stats_.bytesHeld -= it->second.block->bytes;
  stats_.blocks -= 1;
  stats_.evictions += 1;
  blocks_.erase(it);
  lru_.pop_back();
  return true;
}

Status BlockPool::reserve(uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (bytes > stats_.capacityBytes)
    return Status::error("block of " + std::to_string(bytes) +
                         " bytes exceeds the store's capacity of " +
                         std::to_string(stats_.capacityBytes) + " bytes");
  if (stats_.bytesReserved + bytes > stats_.capacityBytes) // evicting cannot help
    return Status::error("store is full: " + std::to_string(stats_.bytesReserved) +
                         " bytes are reserved by puts in flight");
  while (stats_.bytesHeld + stats_.bytesReserved + bytes > stats_.capacityBytes)
    evictOneLocked();
  stats_.bytesReserved += bytes;
  return Status::ok();
}

void BlockPool::release(uint64_t bytes) {
  std::lock_guard lock(mu_);
  stats_.bytesReserved -= bytes;
}

void BlockPool::insert(std::shared_ptr<StoredBlock> block) {
  std::lock_guard lock(mu_);
  stats_.bytesReserved -= block->bytes;
  auto it = blocks_.find(block->key);
  if (it != blocks_.end()) {
    if (hooks_.dropped)
      hooks_.dropped(it->first);
    stats_.bytesHeld -= it->second.block->bytes;
    stats_.blocks -= 1;
    lru_.erase(it->second.lru);
    blocks_.erase(it);
  }
  stats_.bytesHeld += block->bytes;
  stats_.blocks += 1;
  stats_.stored += 1;
  lru_.push_front(block->key);
  BlockKey key = block->key;
  auto placed = blocks_.emplace(key, Entry{std::move(block), lru_.begin()}).first;
  if (hooks_.held)
    hooks_.held(*placed->second.block);
}

void BlockPool::setIndexHooks(IndexHooks hooks) {
  std::lock_guard lock(mu_);
  hooks_ = std::move(hooks);
}

std::shared_ptr<const StoredBlock> BlockPool::find(const BlockKey &key) {
  std::lock_guard lock(mu_);
  auto it = blocks_.find(key);
  if (it == blocks_.end()) {
    stats_.misses += 1;
    return nullptr;
  }
  stats_.hits += 1;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.block;
}

std::shared_ptr<const StoredBlock> BlockPool::peek(const BlockKey &key) {
  std::lock_guard lock(mu_);
  auto it = blocks_.find(key);
  return it == blocks_.end() ? nullptr : it->second.block;
}

bool BlockPool::evictOne() {
  std::lock_guard lock(mu_);
  return evictOneLocked();
}

void BlockPool::countRejected(uint64_t n) {
  std::lock_guard lock(mu_);
  stats_.rejected += n;
}

PoolStats BlockPool::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

} // namespace llmir::kvstore
