// Paged KV cache of one rank, and a free-list block allocator for drivers
// that own allocation themselves (the mesh scheduler sends block tables).
//
// Layout per layer, for K and for V: [num_blocks][block_size][num_kv_heads]
// [head_dim] f32. Physical block b holds block_size consecutive positions of
// whichever sequence's block table points at it.
#pragma once

#include "llmir/support/Status.h"

#include <cstdint>
#include <vector>

namespace llmir::engine {

struct KvCacheShape {
  int64_t numLayers = 0;
  int64_t numKvHeads = 0;
  int64_t headDim = 0;
  int64_t blockSize = 0;
  int64_t numBlocks = 0;
};

class KvCache {
public:
  /// Fails on non-positive dimensions or a size that cannot be allocated.
  static Result<KvCache> create(const KvCacheShape &shape);

  const KvCacheShape &shape() const { return shape_; }

  /// Pointer to the [num_kv_heads][head_dim] row of `position % block_size`
  /// in physical block `block` of `layer`. Arguments must be in range.
  float *keyRow(int64_t layer, int32_t block, int64_t slot);
  float *valueRow(int64_t layer, int32_t block, int64_t slot);
  const float *keyRow(int64_t layer, int32_t block, int64_t slot) const;
  const float *valueRow(int64_t layer, int32_t block, int64_t slot) const;

private:
  explicit KvCache(const KvCacheShape &shape);
  size_t offset(int64_t layer, int32_t block, int64_t slot) const;

  KvCacheShape shape_;
  std::vector<float> keys_;
  std::vector<float> values_;
};

/// Free list of physical block ids [0, numBlocks).
class BlockAllocator {
public:
  explicit BlockAllocator(int32_t numBlocks);

  /// `count` distinct free blocks, or an error (and nothing taken) when fewer
  /// than `count` are free.
  Result<std::vector<int32_t>> allocate(int32_t count);
  /// Returns blocks to the free list; fails on an id out of range or not
  /// currently allocated (nothing is freed then).
  Status free(const std::vector<int32_t> &blocks);

  int32_t numBlocks() const { return static_cast<int32_t>(allocated_.size()); }
  int32_t numFree() const { return static_cast<int32_t>(freeList_.size()); }
  int32_t numAllocated() const { return numBlocks() - numFree(); }

private:
  std::vector<int32_t> freeList_;
  std::vector<bool> allocated_;
};

} // namespace llmir::engine
