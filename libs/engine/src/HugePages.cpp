#include "llmir/engine/HugePages.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace llmir::engine {

Result<HugePageRegion> HugePageRegion::allocate(size_t bytes) {
  HugePageRegion region;
  const size_t size = (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage;
#if defined(__linux__)
  // Map one huge page more than needed and start at the first 2 MiB
  // boundary: THP backs only aligned 2 MiB ranges.
  const size_t mapped = size + kHugePage;
  void *mapping = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
  if (mapping == MAP_FAILED)
    return Status::error("cannot map " + std::to_string(bytes) + " bytes: " +
                         std::strerror(errno));
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(mapping) + kHugePage - 1) &
                            ~uintptr_t{kHugePage - 1};
  // Advice only: without THP the region stays on normal pages.
  (void)madvise(reinterpret_cast<void *>(aligned), size, MADV_HUGEPAGE);
  region.mapping_ = mapping;
  region.mappedBytes_ = mapped;
  region.data_ = reinterpret_cast<std::byte *>(aligned);
#else
  void *memory = std::aligned_alloc(kHugePage, size);
  if (!memory)
    return Status::error("cannot allocate " + std::to_string(bytes) + " bytes");
  region.mapping_ = memory;
  region.data_ = static_cast<std::byte *>(memory);
#endif
  region.size_ = size;
  return region;
}

void adviseHugePages(void *data, size_t bytes) {
#if defined(__linux__)
  constexpr uintptr_t kPage = HugePageRegion::kHugePage;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kPage - 1);
  if (end > begin)
    (void)madvise(reinterpret_cast<void *>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

HugePageRegion::HugePageRegion(HugePageRegion &&other) noexcept { *this = std::move(other); }

HugePageRegion &HugePageRegion::operator=(HugePageRegion &&other) noexcept {
  if (this != &other) {
    release();
    mapping_ = std::exchange(other.mapping_, nullptr);
    mappedBytes_ = std::exchange(other.mappedBytes_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

HugePageRegion::~HugePageRegion() { release(); }

void HugePageRegion::release() {
  if (!mapping_)
    return;
#if defined(__linux__)
  munmap(mapping_, mappedBytes_);
#else
  std::free(mapping_);
#endif
  mapping_ = nullptr;
}

Result<const std::byte *> HugePageArena::copy(const std::byte *data, size_t n) {
  constexpr size_t kAlign = 64;
  constexpr size_t kMinRegion = size_t{64} << 20;
  const size_t offset = (used_ + kAlign - 1) / kAlign * kAlign;
  if (regions_.empty() || offset + n > regions_.back().size()) {
    Result<HugePageRegion> region = HugePageRegion::allocate(std::max(n, kMinRegion));
    if (!region)
      return region.status();
    regions_.push_back(std::move(*region));
    used_ = 0;
    return copy(data, n);
  }
  std::byte *out = regions_.back().data() + offset;
  if (n > 0)
    std::memcpy(out, data, n);
  used_ = offset + n;
  return static_cast<const std::byte *>(out);
}

} // namespace llmir::engine
