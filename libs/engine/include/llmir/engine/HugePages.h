// Memory on 2 MiB transparent huge pages, for data streamed once per token
// (the CPU backend's weights). With 4 KiB pages a sequential read of weights
// larger than the caches crosses a page every 64 cache lines; the hardware
// prefetchers stop at page boundaries and the TLB misses on each new page,
// which on the Zen 4 host of docs/performance.md held one core to about
// 14 GB/s against 25-30 GB/s for the same GEMV on huge pages.
#pragma once

#include "llmir/support/Status.h"

#include <cstddef>
#include <memory>
#include <vector>

namespace llmir::engine {

/// One anonymous mapping, 2 MiB aligned, advised MADV_HUGEPAGE before any
/// page is touched (Linux; elsewhere plain aligned memory). The kernel
/// backs it with huge pages where it can (THP "madvise" or "always") and
/// with normal pages otherwise: the contents are the same either way.
class HugePageRegion {
public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  /// Fails when `bytes` cannot be mapped.
  static Result<HugePageRegion> allocate(size_t bytes);
  HugePageRegion() = default;
  HugePageRegion(HugePageRegion &&other) noexcept;
  HugePageRegion &operator=(HugePageRegion &&other) noexcept;
  HugePageRegion(const HugePageRegion &) = delete;
  HugePageRegion &operator=(const HugePageRegion &) = delete;
  ~HugePageRegion();

  std::byte *data() const { return data_; }
  size_t size() const { return size_; }

private:
  void release();
  void *mapping_ = nullptr; // what munmap / free takes
  size_t mappedBytes_ = 0;
  std::byte *data_ = nullptr;
  size_t size_ = 0;
};

/// Advises the whole 2 MiB pages inside [data, data + bytes) MADV_HUGEPAGE
/// (Linux; a no-op elsewhere). Pages already touched stay as they are, so
/// call it on fresh memory (a vector's reserve()) before writing it.
void adviseHugePages(void *data, size_t bytes);

/// Bump allocation of read-only copies (weights) from huge-page regions of
/// at least 64 MiB each, so that tensors smaller than a huge page still
/// share them. Copies stay valid until the arena is destroyed.
class HugePageArena {
public:
  /// A 64-byte aligned copy of bytes [data, data + n).
  Result<const std::byte *> copy(const std::byte *data, size_t n);

private:
  std::vector<HugePageRegion> regions_;
  size_t used_ = 0; // bytes taken from regions_.back()
};

} // namespace llmir::engine
