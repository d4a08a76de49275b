#include "llmir/engine/KvCache.h"
#include "llmir/engine/HugePages.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

namespace llmir::engine {

Result<KvCache> KvCache::create(const KvCacheShape &shape, KvElement element) {
  if (shape.numLayers <= 0 || shape.numKvHeads <= 0 || shape.headDim <= 0 ||
      shape.blockSize <= 0 || shape.numBlocks <= 0)
    return Status::error(
        "KV cache shape must be positive in every dimension, got layers=" +
        std::to_string(shape.numLayers) +
        " kv_heads=" + std::to_string(shape.numKvHeads) +
        " head_dim=" + std::to_string(shape.headDim) +
        " block_size=" + std::to_string(shape.blockSize) +
        " blocks=" + std::to_string(shape.numBlocks));
  if (shape.numBlocks > std::numeric_limits<int32_t>::max())
    return Status::error("KV cache has " + std::to_string(shape.numBlocks) +
                         " blocks; block ids are int32");
  try {
    return KvCache(shape, element);
  } catch (const std::bad_alloc &) {
    return Status::error("cannot allocate the KV cache of " +
                         std::to_string(shape.numBlocks) + " blocks");
  } catch (const std::length_error &) {
    return Status::error("KV cache of " + std::to_string(shape.numBlocks) +
                         " blocks is too large");
  }
}

KvCache::KvCache(const KvCacheShape &shape, KvElement element)
    : shape_(shape), element_(element) {
  size_t total = static_cast<size_t>(shape.numLayers * shape.numBlocks *
                                     shape.blockSize * shape.numKvHeads *
                                     shape.headDim);
  const size_t floats = (total * elementSize() + sizeof(float) - 1) / sizeof(float);
  constexpr size_t kLine = 64;
  auto base = [](const std::vector<float> &v) {
    const auto address = reinterpret_cast<uintptr_t>(v.data());
    return ((kLine - address % kLine) % kLine) / sizeof(float);
  };
  // Huge pages where the cache spans them: decode attention reads a KV
  // head's rows strided over the whole layer while the weight stream evicts
  // the TLB (reserve maps without touching; assign then fills in place).
  for (std::vector<float> *v : {&keys_, &values_}) {
    v->reserve(floats + kLine / sizeof(float));
    adviseHugePages(v->data(), v->capacity() * sizeof(float));
    v->assign(floats + kLine / sizeof(float), 0.0f);
  }
  keysBase_ = base(keys_);
  valuesBase_ = base(values_);
}

int64_t decodeKvBytesRead(const KvCacheShape &shape, size_t elementBytes,
                          int64_t contextBefore, int64_t tokens) {
  // Positions attended, summed over the steps: (c+1) + ... + (c+tokens).
  const int64_t positions = tokens * contextBefore + tokens * (tokens + 1) / 2;
  return positions * shape.numLayers * shape.numKvHeads * shape.headDim * 2 *
         static_cast<int64_t>(elementBytes);
}

size_t KvCache::offset(int64_t layer, int32_t block, int64_t slot) const {
  assert(layer >= 0 && layer < shape_.numLayers);
  assert(block >= 0 && block < shape_.numBlocks);
  assert(slot >= 0 && slot < shape_.blockSize);
  int64_t row = (layer * shape_.numBlocks + block) * shape_.blockSize + slot;
  return static_cast<size_t>(row * shape_.numKvHeads * shape_.headDim) *
         elementSize();
}

void *KvCache::keyData(int64_t layer, int32_t block, int64_t slot) {
  return reinterpret_cast<char *>(keys_.data() + keysBase_) +
         offset(layer, block, slot);
}
void *KvCache::valueData(int64_t layer, int32_t block, int64_t slot) {
  return reinterpret_cast<char *>(values_.data() + valuesBase_) +
         offset(layer, block, slot);
}
const void *KvCache::keyData(int64_t layer, int32_t block, int64_t slot) const {
  return reinterpret_cast<const char *>(keys_.data() + keysBase_) +
         offset(layer, block, slot);
}
const void *KvCache::valueData(int64_t layer, int32_t block,
                               int64_t slot) const {
  return reinterpret_cast<const char *>(values_.data() + valuesBase_) +
         offset(layer, block, slot);
}

float *KvCache::keyRow(int64_t layer, int32_t block, int64_t slot) {
  assert(element_ == KvElement::F32);
  return static_cast<float *>(keyData(layer, block, slot));
}
float *KvCache::valueRow(int64_t layer, int32_t block, int64_t slot) {
  assert(element_ == KvElement::F32);
  return static_cast<float *>(valueData(layer, block, slot));
}
const float *KvCache::keyRow(int64_t layer, int32_t block,
                             int64_t slot) const {
  assert(element_ == KvElement::F32);
  return static_cast<const float *>(keyData(layer, block, slot));
}
const float *KvCache::valueRow(int64_t layer, int32_t block,
                               int64_t slot) const {
  assert(element_ == KvElement::F32);
  return static_cast<const float *>(valueData(layer, block, slot));
}

BlockAllocator::BlockAllocator(int32_t numBlocks)
    : allocated_(static_cast<size_t>(std::max(numBlocks, 0)), false) {
  // Hand out low ids first: pop from the back of a descending list.
  for (int32_t id = numBlocks - 1; id >= 0; --id)
    freeList_.push_back(id);
}

Result<std::vector<int32_t>> BlockAllocator::allocate(int32_t count) {
  if (count < 0 || count > numFree())
    return Status::error("cannot allocate " + std::to_string(count) +
                         " KV blocks: " + std::to_string(numFree()) + " of " +
                         std::to_string(numBlocks()) + " are free");
  std::vector<int32_t> blocks(freeList_.end() - count, freeList_.end());
  freeList_.resize(freeList_.size() - static_cast<size_t>(count));
  for (int32_t id : blocks)
    allocated_[static_cast<size_t>(id)] = true;
  return blocks;
}

Status BlockAllocator::free(const std::vector<int32_t> &blocks) {
  std::vector<bool> seen(allocated_.size(), false);
  for (int32_t id : blocks) {
    if (id < 0 || id >= numBlocks() || !allocated_[static_cast<size_t>(id)] ||
        seen[static_cast<size_t>(id)])
      return Status::error("cannot free KV block " + std::to_string(id) +
                           ": not an allocated block of [0, " +
                           std::to_string(numBlocks()) + ")");
    seen[static_cast<size_t>(id)] = true;
  }
  for (int32_t id : blocks) {
    allocated_[static_cast<size_t>(id)] = false;
    freeList_.push_back(id);
  }
  return Status::ok();
}

} // namespace llmir::engine
