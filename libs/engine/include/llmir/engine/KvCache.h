// Paged KV cache of one rank, and a free-list block allocator for drivers
// that own allocation themselves (the mesh scheduler sends block tables).
//
// Layout per layer, for K and for V: [num_blocks][block_size][num_kv_heads]
// [head_dim], f32 or bf16 elements. Physical block b holds block_size
// consecutive positions of whichever sequence's block table points at it.
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

/// Element type of a KV cache. BF16 halves the bytes attention reads per
/// position (keys and values rounded to nearest even when stored; the
/// arithmetic stays f32).
enum class KvElement { F32, BF16 };

class KvCache {
public:
  /// Fails on non-positive dimensions or a size that cannot be allocated.
  static Result<KvCache> create(const KvCacheShape &shape,
                                KvElement element = KvElement::F32);

  const KvCacheShape &shape() const { return shape_; }
  KvElement element() const { return element_; }
  size_t elementSize() const { return element_ == KvElement::BF16 ? 2 : 4; }

  /// Pointer to the [num_kv_heads][head_dim] row of `position % block_size`
  /// in physical block `block` of `layer`. Arguments must be in range; an
  /// f32 cache only.
  float *keyRow(int64_t layer, int32_t block, int64_t slot);
  float *valueRow(int64_t layer, int32_t block, int64_t slot);
  const float *keyRow(int64_t layer, int32_t block, int64_t slot) const;
  const float *valueRow(int64_t layer, int32_t block, int64_t slot) const;
  /// The same row of either element type (uint16_t bf16 bits for BF16).
  void *keyData(int64_t layer, int32_t block, int64_t slot);
  void *valueData(int64_t layer, int32_t block, int64_t slot);
  const void *keyData(int64_t layer, int32_t block, int64_t slot) const;
  const void *valueData(int64_t layer, int32_t block, int64_t slot) const;

private:
  KvCache(const KvCacheShape &shape, KvElement element);
  /// Byte offset of the row.
  size_t offset(int64_t layer, int32_t block, int64_t slot) const;

  KvCacheShape shape_;
  KvElement element_ = KvElement::F32;
  // f32 storage (bf16 elements two to a float), each used from its first
  // 64-byte boundary on (base_ floats in), so that rows of 16 elements do
  // not straddle cache lines.
  std::vector<float> keys_;
  std::vector<float> values_;
  size_t keysBase_ = 0, valuesBase_ = 0;
};

/// Bytes of keys and values that attention reads over `tokens` decode steps
/// of one sequence, one token per step, after `contextBefore` positions are
/// cached: the step at position p attends over p + 1 positions (its own
/// included), and each position holds, in every layer, numKvHeads x headDim
/// keys and as many values of `elementBytes` each. What a decode token reads
/// besides the weights (the bench's bandwidth ceiling counts both).
int64_t decodeKvBytesRead(const KvCacheShape &shape, size_t elementBytes,
                          int64_t contextBefore, int64_t tokens);

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
