#include "SharedArena.h"

#include "Checksum.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <openssl/rand.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY // XXH3_state_t on the stack
#include <xxhash.h>

namespace llmir::kvstore {

namespace {
std::string errnoText() { return std::strerror(errno); }
uint64_t alignUp(uint64_t n) { return (n + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }
} // namespace

Result<std::unique_ptr<SharedArena>> SharedArena::create(uint64_t bytes) {
  std::unique_ptr<SharedArena> arena(new SharedArena());
  arena->size_ = alignUp(bytes) + kArenaAlignment; // + the nonce header
  arena->fd_ = memfd_create("llmir-kv-store", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (arena->fd_ < 0)
    return Status::error("kv store shared memory: memfd_create: " + errnoText());
  // Sparse: pages exist only once a block is written into them.
  if (ftruncate(arena->fd_, static_cast<off_t>(arena->size_)) != 0)
    return Status::error("kv store shared memory: ftruncate to " +
                         std::to_string(arena->size_) + " bytes: " + errnoText());
  // A client's mapping can then never lose pages under it (no SIGBUS).
  if (fcntl(arena->fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return Status::error("kv store shared memory: sealing: " + errnoText());
  void *base = mmap(nullptr, arena->size_, PROT_READ | PROT_WRITE, MAP_SHARED, arena->fd_, 0);
  if (base == MAP_FAILED)
    return Status::error("kv store shared memory: mmap of " + std::to_string(arena->size_) +
                         " bytes: " + errnoText());
  arena->base_ = static_cast<uint8_t *>(base);
  if (RAND_bytes(arena->nonce_.data(), static_cast<int>(arena->nonce_.size())) != 1)
    return Status::error("kv store shared memory: no random bytes for the nonce");
  std::memcpy(arena->base_, arena->nonce_.data(), arena->nonce_.size());
  arena->free_.emplace(kArenaAlignment, arena->size_ - kArenaAlignment);
  return arena;
}

SharedArena::~SharedArena() {
  if (base_)
    munmap(base_, size_);
  if (fd_ >= 0)
    close(fd_);
}

std::optional<uint64_t> SharedArena::allocate(uint64_t bytes) {
  bytes = alignUp(bytes);
  std::lock_guard lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes)
      continue;
    uint64_t offset = it->first;
    uint64_t rest = it->second - bytes;
    free_.erase(it);
    if (rest)
      free_.emplace(offset + bytes, rest);
    return offset;
  }
  return std::nullopt;
}

void SharedArena::attachGenerations(uint64_t offset, uint32_t regionShift) {
  std::lock_guard lock(mu_);
  generations_ = reinterpret_cast<uint32_t *>(base_ + offset);
  regionShift_ = regionShift;
}

void SharedArena::free(uint64_t offset, uint64_t bytes) {
  bytes = alignUp(bytes);
  std::lock_guard lock(mu_);
  if (generations_ && bytes > 0) {
    // Before the range can be handed out again (allocate takes this lock):
    // a client that copied from it sees the bump once it could have seen
    // any byte written there later.
    for (uint64_t r = offset >> regionShift_; r <= (offset + bytes - 1) >> regionShift_; ++r)
      std::atomic_ref<uint32_t>(generations_[r]).fetch_add(1, std::memory_order_seq_cst);
  }
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + bytes == next->first) { // merge with the next
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) { // merge with the previous
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += bytes;
      return;
    }
  }
  free_.emplace(offset, bytes);
}

Result<std::unique_ptr<ArenaMapping>> ArenaMapping::open(pid_t pid, int fd, uint64_t bytes,
                                                         const ArenaNonce &nonce) {
  if (bytes < kArenaAlignment)
    return Status::error("shared memory segment of " + std::to_string(bytes) + " bytes");
  std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  int local = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (local < 0)
    return Status::error("cannot open " + path + ": " + errnoText());
  struct stat st{};
  if (fstat(local, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
    ::close(local);
    return Status::error(path + " is not a segment of " + std::to_string(bytes) + " bytes");
  }
  // Only a segment sealed against shrinking is safe to touch (no SIGBUS).
  int seals = fcntl(local, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    ::close(local);
    return Status::error(path + " is not sealed against shrinking");
  }
  void *base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, local, 0);
  ::close(local);
  if (base == MAP_FAILED)
    return Status::error("cannot map " + path + ": " + errnoText());
  std::unique_ptr<ArenaMapping> mapping(new ArenaMapping());
  mapping->base_ = static_cast<uint8_t *>(base);
  mapping->size_ = bytes;
  if (std::memcmp(mapping->base_, nonce.data(), nonce.size()) != 0)
    return Status::error(path + " is not the store's segment (nonce differs)");
  return mapping;
}

ArenaMapping::~ArenaMapping() {
  if (base_)
    munmap(base_, size_);
}

uint64_t copyWithChecksumStreaming(void *destination, const void *source, uint64_t bytes) {
#if LLMIR_KVSTORE_AVX2
  if (detail::hasAvx512())
    return llmir_kvstore_copy_checksum_stream_avx512(destination, source, bytes);
#endif
  return copyWithChecksum(destination, source, bytes);
}

uint64_t copyWithChecksum(void *destination, const void *source, uint64_t bytes) {
#if LLMIR_KVSTORE_AVX2
  if (detail::hasAvx512()) // one pass: each stripe loaded once, stored and hashed
    return llmir_kvstore_copy_checksum_avx512(destination, source, bytes);
  if (detail::hasAvx2())
    return llmir_kvstore_copy_checksum_avx2(destination, source, bytes);
#endif
  constexpr uint64_t kChunk = 64 << 10; // stays in L2 between copy and hash
  if (bytes <= kChunk) {
    std::memcpy(destination, source, bytes);
    return XXH3_64bits(destination, bytes);
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  auto *out = static_cast<uint8_t *>(destination);
  const auto *in = static_cast<const uint8_t *>(source);
  for (uint64_t done = 0; done < bytes; done += kChunk) {
    uint64_t n = std::min(kChunk, bytes - done);
    std::memcpy(out + done, in + done, n);
    XXH3_64bits_update(&state, out + done, n);
  }
  return XXH3_64bits_digest(&state);
}

PartChecksum::PartChecksum() {
#if LLMIR_KVSTORE_AVX2
  if (detail::hasAvx2()) {
    llmir_kvstore_parts_init_avx2(acc_);
    return;
  }
#endif
  auto *state = XXH3_createState();
  XXH3_64bits_reset(state);
  state_ = state;
}

PartChecksum::~PartChecksum() {
  if (state_)
    XXH3_freeState(static_cast<XXH3_state_t *>(state_));
}

void PartChecksum::add(void *destination, const void *source, uint64_t bytes) {
  if (!state_) {
#if LLMIR_KVSTORE_AVX2
    if (detail::hasAvx512())
      llmir_kvstore_parts_add_avx512(acc_, destination, source, bytes);
    else
      llmir_kvstore_parts_add_avx2(acc_, destination, source, bytes);
#endif
    return;
  }
  auto *state = static_cast<XXH3_state_t *>(state_);
  if (destination) {
    std::memcpy(destination, source, bytes);
    source = destination;
  }
  XXH3_64bits_update(state, source, bytes);
}

uint64_t PartChecksum::finish(void *destination, const void *source, uint64_t bytes,
                              uint64_t total) {
  if (!state_) {
#if LLMIR_KVSTORE_AVX2
    if (detail::hasAvx512())
      return llmir_kvstore_parts_finish_avx512(acc_, destination, source, bytes, total);
    return llmir_kvstore_parts_finish_avx2(acc_, destination, source, bytes, total);
#endif
  }
  add(destination, source, bytes);
  return XXH3_64bits_digest(static_cast<XXH3_state_t *>(state_));
}

} // namespace llmir::kvstore
