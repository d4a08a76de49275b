// The store's block memory as one shared-memory segment (a sealed memfd),
// so that a client on the same host moves block bytes with one memcpy into or
// out of its own mapping of it (docs/kv-store.md, "Shared memory").
//
// Why a segment the client maps, and not UCX's shared-memory transports: the
// store's endpoints need peer-failure reporting, which UCX 1.13's sysv, posix
// and cma transports do not offer; without it a killed store aborted the
// client inside UCX. Here the control messages stay on the error-handling
// (TCP) endpoint and the bytes never pass through UCX: a store that dies
// leaves the client's mapping valid (the pages live until the client unmaps
// them), and the segment is sealed against shrinking, so touching it can
// never raise SIGBUS.
#pragma once

#include "llmir/support/Status.h"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sys/types.h>

namespace llmir::kvstore {

/// Allocations are aligned to this; offsets travel in these units (a u32
/// "slot" addresses 256 GiB).
constexpr uint64_t kArenaAlignment = 64;
using ArenaNonce = std::array<uint8_t, 16>;

/// The store's side: owns the memfd and a first-fit allocator over it.
/// Thread-safe.
class SharedArena {
public:
  /// A segment of `bytes` (rounded up to the alignment); its first
  /// kArenaAlignment bytes hold a random nonce that a client checks after
  /// mapping it (proof that it mapped this store's segment).
  static Result<std::unique_ptr<SharedArena>> create(uint64_t bytes);
  ~SharedArena();

  uint8_t *base() const { return base_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_; }
  const ArenaNonce &nonce() const { return nonce_; }

  /// Offset of `bytes` free bytes (lowest address first, which keeps the
  /// touched part of the segment compact); nullopt when no free range fits.
  std::optional<uint64_t> allocate(uint64_t bytes);
  void free(uint64_t offset, uint64_t bytes);
  /// From now on free() bumps, before a range can be allocated again, the
  /// u32 generation of every 2^regionShift-byte region of the segment the
  /// range overlaps (a table at `offset` in the segment, one u32 per region;
  /// SharedIndex.h says why).
  void attachGenerations(uint64_t offset, uint32_t regionShift);

private:
  SharedArena() = default;
  int fd_ = -1;
  uint8_t *base_ = nullptr;
  uint64_t size_ = 0;
  ArenaNonce nonce_{};
  std::mutex mu_;
  std::map<uint64_t, uint64_t> free_; // offset -> length, coalesced
  uint32_t *generations_ = nullptr;
  uint32_t regionShift_ = 0;
};

/// The client's side: the store's segment mapped read-write.
class ArenaMapping {
public:
  /// Opens /proc/<pid>/fd/<fd> (works only on the store's host, in its pid
  /// namespace, for the same user), maps `bytes` and checks the nonce. Any
  /// failure is an error (the client then moves bytes in messages).
  static Result<std::unique_ptr<ArenaMapping>> open(pid_t pid, int fd, uint64_t bytes,
                                                    const ArenaNonce &nonce);
  ~ArenaMapping();
  uint8_t *base() const { return base_; }
  uint64_t size() const { return size_; }

private:
  ArenaMapping() = default;
  uint8_t *base_ = nullptr;
  uint64_t size_ = 0;
};

/// Copies `bytes` from `source` to `destination` and returns the XXH3-64 of
/// them (blockChecksum), hashing each chunk right after copying it while it
/// is still in cache: one pass over memory instead of two.
uint64_t copyWithChecksum(void *destination, const void *source, uint64_t bytes);
/// The same (the same value), storing past the caches where the CPU has
/// AVX-512, the block is over 1 KiB and the destination is on a cache line
/// or a multiple of 4 bytes past one (else copyWithChecksum), and fenced:
/// for a destination that is not cached and will not be read soon by this
/// thread (a shared put's room of several MiB, a get's destination of that
/// size).
uint64_t copyWithChecksumStreaming(void *destination, const void *source, uint64_t bytes);

/// The XXH3-64 of a block (the same value as blockChecksum) taken part by
/// part, in order, each part copied to its destination while it is hashed
/// (as copyWithChecksum) unless the destination is null. Parts: every one
/// but the last a multiple of kPartAlignment bytes, the last at least
/// kPartAlignment; the block longer than 2 x kPartAlignment. A block sent in
/// parts over TCP is hashed this way on both sides (docs/kv-store.md,
/// "Blocks in parts").
class PartChecksum {
public:
  static constexpr uint64_t kPartAlignment = 1024;
  PartChecksum();
  ~PartChecksum();
  PartChecksum(const PartChecksum &) = delete;
  PartChecksum &operator=(const PartChecksum &) = delete;
  /// A part that is not the last.
  void add(void *destination, const void *source, uint64_t bytes);
  /// The last part; the block's XXH3 (`total`: the block's bytes).
  uint64_t finish(void *destination, const void *source, uint64_t bytes, uint64_t total);

private:
  alignas(64) uint64_t acc_[8];
  void *state_ = nullptr; // libxxhash's streaming state where AVX2 is absent
};

} // namespace llmir::kvstore
