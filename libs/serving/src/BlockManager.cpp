#include "llmir/serving/BlockManager.h"

#include <algorithm>
#include <cassert>

namespace llmir::serving {

namespace {
constexpr uint64_t kRootHash = 0x9e3779b97f4a7c15ULL;

uint64_t mix(uint64_t x) { // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
} // namespace

BlockManager::BlockManager(int32_t numBlocks, int32_t blockSize,
                           bool enablePrefixCaching)
    : blockSize_(blockSize), prefixCaching_(enablePrefixCaching),
      blocks_(static_cast<size_t>(numBlocks)) {
  assert(numBlocks > 0 && blockSize > 0);
  // Hand out low ids first (pop_back).
  for (int32_t id = numBlocks - 1; id >= 0; --id)
    freeList_.push_back(id);
}

uint64_t BlockManager::chainHash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = mix(parent);
  for (int32_t t : tokens)
    h = mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + kRootHash));
  return h;
}

int64_t BlockManager::reuseCachedPrefix(std::span<const int32_t> tokens,
                                        SequenceBlocks &seq) {
  assert(seq.table.empty() && "only a sequence without blocks reuses a prefix");
  if (!prefixCaching_ || tokens.empty())
    return 0;
  const int64_t fullBlocks = static_cast<int64_t>(tokens.size() - 1) / blockSize_;
  queryTokens_ += tokens.size();
  uint64_t parent = kRootHash;
  for (int64_t i = 0; i < fullBlocks; ++i) {
    auto blockTokens = tokens.subspan(static_cast<size_t>(i * blockSize_),
                                      static_cast<size_t>(blockSize_));
    const uint64_t hash = chainHash(parent, blockTokens);
    auto it = byHash_.find(hash);
    if (it == byHash_.end())
      break;
    Block &b = blocks_[static_cast<size_t>(it->second)];
    if (b.parentHash != parent ||
        !std::equal(blockTokens.begin(), blockTokens.end(), b.tokens.begin(),
                    b.tokens.end()))
      break; // a hash collision: not our prefix
    if (b.inLru) {
      evictable_.erase(b.lruPos);
      b.inLru = false;
    }
    if (b.refCount++ == 0)
      ++numReferenced_;
    seq.table.push_back(it->second);
    seq.hashes.push_back(hash);
    parent = hash;
  }
  const int64_t hit = static_cast<int64_t>(seq.table.size()) * blockSize_;
  hitTokens_ += static_cast<uint64_t>(hit);
  return hit;
}

int32_t BlockManager::blocksNeeded(const SequenceBlocks &seq, int64_t numTokens) const {
  const int64_t want = (numTokens + blockSize_ - 1) / blockSize_;
  return static_cast<int32_t>(
      std::max<int64_t>(0, want - static_cast<int64_t>(seq.table.size())));
}

int32_t BlockManager::numAvailable() const {
  return static_cast<int32_t>(freeList_.size() + evictable_.size());
}

void BlockManager::uncache(int32_t id) {
  Block &b = blocks_[static_cast<size_t>(id)];
  if (!b.cached)
    return;
  auto it = byHash_.find(b.hash);
  if (it != byHash_.end() && it->second == id)
    byHash_.erase(it);
  b.cached = false;
  b.tokens.clear();
}

int32_t BlockManager::takeBlock() {
  int32_t id;
  if (!freeList_.empty()) {
    id = freeList_.back();
    freeList_.pop_back();
  } else {
    assert(!evictable_.empty());
    id = evictable_.front();
    evictable_.pop_front();
    blocks_[static_cast<size_t>(id)].inLru = false;
    uncache(id);
  }
  Block &b = blocks_[static_cast<size_t>(id)];
  b.refCount = 1;
  ++numReferenced_;
  return id;
}

bool BlockManager::ensureCapacity(SequenceBlocks &seq, int64_t numTokens) {
  const int32_t need = blocksNeeded(seq, numTokens);
  if (need > numAvailable())
    return false;
  for (int32_t i = 0; i < need; ++i)
    seq.table.push_back(takeBlock());
  return true;
}

void BlockManager::commitFullBlocks(SequenceBlocks &seq,
                                    std::span<const int32_t> tokens,
                                    int64_t numComputed) {
  const int64_t full = std::min<int64_t>(numComputed / blockSize_,
                                         static_cast<int64_t>(seq.table.size()));
  for (int64_t i = static_cast<int64_t>(seq.hashes.size()); i < full; ++i) {
    const uint64_t parent = i == 0 ? kRootHash : seq.hashes[static_cast<size_t>(i - 1)];
    auto blockTokens = tokens.subspan(static_cast<size_t>(i * blockSize_),
                                      static_cast<size_t>(blockSize_));
    const uint64_t hash = chainHash(parent, blockTokens);
    seq.hashes.push_back(hash);
    if (!prefixCaching_ || byHash_.count(hash))
      continue; // another sequence cached the same prefix first
    const int32_t id = seq.table[static_cast<size_t>(i)];
    Block &b = blocks_[static_cast<size_t>(id)];
    b.cached = true;
    b.hash = hash;
    b.parentHash = parent;
    b.tokens.assign(blockTokens.begin(), blockTokens.end());
    byHash_[hash] = id;
  }
}

void BlockManager::release(SequenceBlocks &seq) { truncate(seq, 0); }

void BlockManager::truncate(SequenceBlocks &seq, size_t keepBlocks) {
  if (keepBlocks >= seq.table.size())
    return;
  // Deepest block first, so the LRU evicts the ends of chains before their
  // shared beginnings.
  for (auto it = seq.table.rbegin(); it != seq.table.rend() - static_cast<std::ptrdiff_t>(keepBlocks);
       ++it) {
    Block &b = blocks_[static_cast<size_t>(*it)];
    assert(b.refCount > 0);
    if (--b.refCount > 0)
      continue;
    --numReferenced_;
    if (b.cached) {
      b.lruPos = evictable_.insert(evictable_.end(), *it);
      b.inLru = true;
    } else {
      freeList_.push_back(*it);
    }
  }
  seq.table.resize(keepBlocks);
  if (seq.hashes.size() > keepBlocks)
    seq.hashes.resize(keepBlocks);
}

double BlockManager::usage() const {
  return static_cast<double>(numReferenced_) / static_cast<double>(blocks_.size());
}

} // namespace llmir::serving
