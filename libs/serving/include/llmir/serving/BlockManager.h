// The KV block manager of one replica: fixed-size physical blocks, one block
// table per sequence, reference-counted blocks and automatic prefix caching.
//
// A block becomes cached once it is full and computed: its key is a hash
// chained over every token from the start of the sequence to the block's end,
// so equal keys mean equal prefixes (the tokens are also compared, so a hash
// collision never shares a wrong block). Cached blocks whose last user is gone
// stay reusable in an LRU list and are evicted (deepest block of a chain
// first) only when no never-cached block is free.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace llmir::serving {

/// A sequence's blocks: table[i] holds positions [i*B, (i+1)*B).
struct SequenceBlocks {
  std::vector<int32_t> table;
  /// Chain hash of each full, committed block (a prefix of `table`).
  std::vector<uint64_t> hashes;
};

class BlockManager {
public:
  BlockManager(int32_t numBlocks, int32_t blockSize, bool enablePrefixCaching);

  int32_t blockSize() const { return blockSize_; }
  int32_t numBlocks() const { return static_cast<int32_t>(blocks_.size()); }

  /// For a sequence holding no blocks: takes the cached blocks of the
  /// longest cached prefix of `tokens`, leaving at least the last token to
  /// compute (its logits are needed). Returns the tokens covered.
  int64_t reuseCachedPrefix(std::span<const int32_t> tokens, SequenceBlocks &seq);

  /// Blocks that ensureCapacity(seq, numTokens) would take.
  int32_t blocksNeeded(const SequenceBlocks &seq, int64_t numTokens) const;
  /// Grows `seq` to cover positions [0, numTokens); all or nothing.
  bool ensureCapacity(SequenceBlocks &seq, int64_t numTokens);

  /// Registers the full blocks among the first `numComputed` tokens (whose
  /// KV is now written) in the prefix cache.
  void commitFullBlocks(SequenceBlocks &seq, std::span<const int32_t> tokens,
                        int64_t numComputed);

  /// Drops the sequence's references (cached blocks stay reusable).
  void release(SequenceBlocks &seq);
  /// Drops the references to the sequence's blocks past the first
  /// `keepBlocks` (e.g. blocks taken for a KV-store load that missed).
  void truncate(SequenceBlocks &seq, size_t keepBlocks);

  /// Blocks a new allocation may take (free plus evictable cached ones).
  int32_t numAvailable() const;
  /// Fraction of blocks referenced by some sequence, in [0, 1].
  double usage() const;

  /// Prefix-cache lookups, counted in tokens like vLLM.
  uint64_t prefixQueryTokens() const { return queryTokens_; }
  uint64_t prefixHitTokens() const { return hitTokens_; }

private:
  struct Block {
    int32_t refCount = 0;
    bool cached = false;
    uint64_t hash = 0;
    uint64_t parentHash = 0;
    std::vector<int32_t> tokens; // the block's own tokens, when cached
    std::list<int32_t>::iterator lruPos;
    bool inLru = false;
  };

  static uint64_t chainHash(uint64_t parent, std::span<const int32_t> tokens);
  int32_t takeBlock();
  void uncache(int32_t id);

  int32_t blockSize_;
  bool prefixCaching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> freeList_;       // referenced by nobody, not cached
  std::list<int32_t> evictable_;        // cached, referenced by nobody; LRU first
  std::unordered_map<uint64_t, int32_t> byHash_;
  int32_t numReferenced_ = 0;
  uint64_t queryTokens_ = 0;
  uint64_t hitTokens_ = 0;
};

} // namespace llmir::serving
