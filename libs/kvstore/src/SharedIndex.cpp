#include "SharedIndex.h"

#include "SharedArena.h"
#include "Wire.h"

#include <bit>
#include <cerrno>
#include <cstring>
#include <pthread.h>

namespace llmir::kvstore::index {

namespace {

uint32_t bucketOf(const uint8_t *key, uint32_t buckets) {
  uint64_t h;
  std::memcpy(&h, key, sizeof h); // keys are SHA-256: any 8 bytes are uniform
  return static_cast<uint32_t>(h & (buckets - 1));
}

template <typename T> T loadRelaxed(const T *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
template <typename T> T loadAcquire(const T *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
template <typename T> void storeRelaxed(T *p, T v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
template <typename T> void storeRelease(T *p, T v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

SegmentDirectory *directoryOf(uint8_t *base) {
  return reinterpret_cast<SegmentDirectory *>(base + kDirectoryOffset);
}

uint32_t *livenessSlotOf(uint8_t *base) {
  return reinterpret_cast<uint32_t *>(base + kLivenessSlotOffset);
}

static_assert(sizeof(pthread_mutex_t) <= kArenaAlignment);

} // namespace

std::optional<Writer> Writer::create(SharedArena &arena, uint64_t capacityBytes) {
  uint64_t generationBytes = regionsOf(arena.size()) * sizeof(uint32_t);
  // About one entry per 16 KiB of budget, at least 64, at most 512 Ki
  // (64 MiB of the segment's slack; a store of 1 GiB: 64 Ki entries, 8 MiB).
  uint64_t entries = std::bit_ceil(std::max<uint64_t>(capacityBytes >> 14, 64));
  entries = std::min<uint64_t>(entries, 512 * 1024);
  uint64_t indexBytes = entries * sizeof(IndexEntry);
  auto generations = arena.allocate(generationBytes);
  if (!generations)
    return std::nullopt;
  auto entriesAt = arena.allocate(indexBytes);
  if (!entriesAt) {
    arena.free(*generations, generationBytes);
    return std::nullopt;
  }
  // The memfd's pages start zeroed: every generation 0, every entry empty.
  arena.attachGenerations(*generations, kRegionShift);
  Writer w;
  w.base_ = arena.base();
  w.entries_ = reinterpret_cast<IndexEntry *>(arena.base() + *entriesAt);
  w.buckets_ = static_cast<uint32_t>(entries / kWays);
  w.used_.assign(entries, false);
  w.unindexedCount_.assign(entries / kWays, 0);
  w.seqs_.assign(entries, 0);
  // The liveness lock (holdLivenessLock takes it on the progress thread).
  // Without room for it clients poll the store's pidfd instead.
  if (auto at = arena.allocate(kArenaAlignment)) {
    auto *lock = reinterpret_cast<pthread_mutex_t *>(arena.base() + *at);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    bool made = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) == 0 &&
                pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) == 0 &&
                pthread_mutex_init(lock, &attr) == 0;
    pthread_mutexattr_destroy(&attr);
    if (made)
      w.livenessAt_ = *at;
    else
      arena.free(*at, kArenaAlignment);
  }
  SegmentDirectory *d = directoryOf(arena.base());
  d->version = kVersion;
  d->generationsSlot = static_cast<uint32_t>(*generations / kArenaAlignment);
  d->indexSlot = static_cast<uint32_t>(*entriesAt / kArenaAlignment);
  d->buckets = w.buckets_;
  d->closed = 0;
  storeRelease(&d->magic, kDirectoryMagic); // the rest is visible before it
  return w;
}

void Writer::write(uint32_t i, const StoredBlock *block) {
  IndexEntry *e = entries_ + i;
  // Seqlock: odd while rewriting. The store keeps its own copy of the
  // number: a client writing the segment cannot make it skip one.
  uint32_t seq = seqs_[i];
  storeRelaxed(&e->seq, seq + 1);
  std::atomic_thread_fence(std::memory_order_release);
  if (block) {
    storeRelaxed(&e->slot, static_cast<uint32_t>(block->arenaOffset / kArenaAlignment));
    storeRelaxed(&e->bytes, block->bytes);
    storeRelaxed(&e->checksum, block->checksum);
    std::memcpy(e->key, block->key.bytes.data(), sizeof e->key);
    std::memset(e->dtype, 0, sizeof e->dtype);
    std::memcpy(e->dtype, block->dtype.data(), std::min(block->dtype.size(), sizeof e->dtype - 1));
  } else {
    storeRelaxed(&e->slot, 0u);
    storeRelaxed(&e->bytes, uint64_t(0));
    std::memset(e->key, 0, sizeof e->key);
  }
  storeRelaxed(&e->touched, 0u);
  seqs_[i] = seq + 2;
  storeRelease(&e->seq, seq + 2);
}

void Writer::countUnindexed(uint32_t bucket, int delta) {
  unindexedCount_[bucket] += delta;
  // Raised before a held key goes without an entry (publish), lowered after
  // it stops being held (withdraw): a client never sees 0 while such a key
  // is held.
  __atomic_store_n(&entries_[bucket * kWays].unindexed, unindexedCount_[bucket],
                   __ATOMIC_SEQ_CST);
}

void Writer::publish(const StoredBlock &block) {
  uint32_t bucket = bucketOf(block.key.bytes.data(), buckets_);
  bool indexable = block.arenaOffset != 0 && block.arenaOffset / kArenaAlignment <= UINT32_MAX;
  if (auto it = where_.find(block.key); it != where_.end()) {
    if (indexable)
      return write(it->second, &block); // replaced under the same key
    // Counted before its entry goes: never neither.
    unindexed_.emplace(block.key, bucket);
    countUnindexed(bucket, +1);
    write(it->second, nullptr);
    used_[it->second] = false;
    where_.erase(it);
    return;
  }
  if (indexable && !unindexed_.count(block.key)) {
    uint32_t first = bucket * kWays;
    for (uint32_t i = first; i < first + kWays; ++i) {
      if (used_[i])
        continue;
      used_[i] = true;
      where_.emplace(block.key, i);
      return write(i, &block);
    }
  }
  // No free way (or not in the segment): held without an entry; clients
  // ask the store for keys of this bucket they do not find.
  if (unindexed_.emplace(block.key, bucket).second)
    countUnindexed(bucket, +1);
}

void Writer::withdraw(const BlockKey &key) {
  if (auto u = unindexed_.find(key); u != unindexed_.end()) {
    uint32_t bucket = u->second;
    unindexed_.erase(u);
    countUnindexed(bucket, -1);
    return;
  }
  auto it = where_.find(key);
  if (it == where_.end())
    return;
  write(it->second, nullptr);
  used_[it->second] = false;
  where_.erase(it);
}

bool Writer::takeTouched(const BlockKey &key) {
  auto it = where_.find(key);
  if (it == where_.end())
    return false;
  return __atomic_exchange_n(&entries_[it->second].touched, 0u, __ATOMIC_RELAXED) != 0;
}

void Writer::close() {
  __atomic_store_n(&directoryOf(base_)->closed, 1u, __ATOMIC_SEQ_CST);
}

void Writer::holdLivenessLock() {
  if (livenessAt_ == 0)
    return;
  if (pthread_mutex_lock(reinterpret_cast<pthread_mutex_t *>(base_ + livenessAt_)) != 0)
    return; // not published: clients poll the pidfd
  storeRelease(livenessSlotOf(base_), static_cast<uint32_t>(livenessAt_ / kArenaAlignment));
}

// ---------------------------------------------------------------------------

std::optional<Reader> Reader::open(uint8_t *base, uint64_t segmentBytes) {
  if (segmentBytes < 64)
    return std::nullopt;
  const SegmentDirectory *d = directoryOf(base);
  if (loadAcquire(&d->magic) != kDirectoryMagic || d->version != kVersion)
    return std::nullopt;
  uint64_t generations = uint64_t(d->generationsSlot) * kArenaAlignment;
  uint64_t entries = uint64_t(d->indexSlot) * kArenaAlignment;
  uint32_t buckets = d->buckets;
  if (generations < 64 || generations + regionsOf(segmentBytes) * sizeof(uint32_t) > segmentBytes ||
      entries < 64 || buckets == 0 || (buckets & (buckets - 1)) != 0 ||
      entries + uint64_t(buckets) * kWays * sizeof(IndexEntry) > segmentBytes)
    return std::nullopt;
  Reader r;
  r.base_ = base;
  r.size_ = segmentBytes;
  r.generations_ = reinterpret_cast<const uint32_t *>(base + generations);
  r.entries_ = reinterpret_cast<IndexEntry *>(base + entries);
  r.buckets_ = buckets;
  uint64_t liveness = uint64_t(loadAcquire(livenessSlotOf(base))) * kArenaAlignment;
  if (liveness >= 64 && liveness + kArenaAlignment <= segmentBytes)
    r.liveness_ = base + liveness;
  return r;
}

bool Reader::closed() const {
  return __atomic_load_n(&directoryOf(base_)->closed, __ATOMIC_SEQ_CST) != 0;
}

bool Reader::storeHoldsLivenessLock() const {
  if (!liveness_)
    return false;
  auto *lock = static_cast<pthread_mutex_t *>(liveness_);
  // Held by a live thread: EBUSY, without a system call (nor a write: the
  // compare-and-swap fails). Held by a thread that ended: EOWNERDEAD, and
  // this thread holds it now: it is made consistent and let go at once
  // (never kept: it would stay on this thread's robust list after the
  // segment is unmapped), and so tells every later look nothing, as does a
  // lock nobody holds (0; the store never lets go, so a writer of the
  // segment cleared it) or one left unrecoverable (ENOTRECOVERABLE, which
  // glibc returns holding it). "Nothing" sends the caller to the pidfd.
  // (Any client can write any byte of the segment: at worst it makes this
  // say "no", or "yes" for a store that died, whose blocks are still
  // verified byte by byte by every reader.)
  int held = pthread_mutex_trylock(lock);
  if (held == EBUSY)
    return true;
  if (held == EOWNERDEAD)
    pthread_mutex_consistent(lock);
  if (held == 0 || held == EOWNERDEAD || held == ENOTRECOVERABLE)
    pthread_mutex_unlock(lock);
  return false;
}

uint64_t Reader::generationSum(uint64_t offset, uint64_t bytes) const {
  // Generations only grow, so an equal sum means every one is unchanged.
  uint64_t sum = 0;
  for (uint64_t r = firstRegion(offset); r <= lastRegion(offset, bytes); ++r)
    sum += loadRelaxed(generations_ + r);
  return sum;
}

LocalGet Reader::get(const BlockKey &key, const std::string &dtype, void *destination,
                     uint64_t bytes, bool streaming) {
  uint32_t first = bucketOf(key.bytes.data(), buckets_) * kWays;
  uint32_t seqs[kWays];
  for (uint32_t i = first; i < first + kWays; ++i) {
    IndexEntry *e = entries_ + i;
    uint32_t seq = loadAcquire(&e->seq);
    seqs[i - first] = seq;
    if (seq & 1)
      return LocalGet::AskTheStore; // being rewritten (perhaps ours)
    uint32_t slot = loadRelaxed(&e->slot);
    if (slot == 0)
      continue;
    uint8_t entryKey[32];
    std::memcpy(entryKey, e->key, sizeof entryKey);
    if (std::memcmp(entryKey, key.bytes.data(), sizeof entryKey) != 0)
      continue; // another key (or torn: then the store is asked)
    uint64_t entryBytes = loadRelaxed(&e->bytes);
    uint64_t checksum = loadRelaxed(&e->checksum);
    char entryDtype[16];
    std::memcpy(entryDtype, e->dtype, sizeof entryDtype);
    uint64_t at = uint64_t(slot) * kArenaAlignment;
    if (entryBytes == 0 || at + entryBytes > size_ || at + entryBytes < at)
      return LocalGet::AskTheStore;
    // The generations before the copy, read while the entry still names
    // the block: the store withdraws the entry before it frees the range,
    // so a free that this sum already counts shows as a changed seq below.
    uint64_t before = generationSum(at, entryBytes);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (loadRelaxed(&e->seq) != seq)
      return LocalGet::AskTheStore;
    entryDtype[sizeof entryDtype - 1] = 0;
    if (entryBytes != bytes || dtype != entryDtype)
      return LocalGet::Rejected; // as the store answers: never handed out
    uint64_t sum = streaming ? copyWithChecksumStreaming(destination, base_ + at, bytes)
                             : copyWithChecksum(destination, base_ + at, bytes);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (generationSum(at, bytes) != before)
      return LocalGet::AskTheStore; // freed (and maybe reused) meanwhile
    if (sum != checksum)
      return LocalGet::Rejected; // bytes that are not the block's
    if (loadRelaxed(&e->touched) == 0)
      storeRelaxed(&e->touched, 1u);
    return LocalGet::Found;
  }
  // In no way. Missing if no way changed during the scan (a torn key cannot
  // have hidden ours) and the bucket holds no key without an entry.
  if (__atomic_load_n(&entries_[first].unindexed, __ATOMIC_SEQ_CST) != 0)
    return LocalGet::AskTheStore;
  std::atomic_thread_fence(std::memory_order_acquire);
  for (uint32_t i = first; i < first + kWays; ++i)
    if (loadRelaxed(&entries_[i].seq) != seqs[i - first])
      return LocalGet::AskTheStore;
  return LocalGet::Missing;
}

} // namespace llmir::kvstore::index
