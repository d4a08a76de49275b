// Run-time choice of the AVX2 XXH3 (ChecksumAvx2.c) for block checksums.
#pragma once

#include <cstddef>
#include <cstdint>

#if LLMIR_KVSTORE_AVX2
extern "C" uint64_t llmir_kvstore_checksum_avx2(const void *data, size_t bytes);
// Copies and hashes in one pass; the XXH3 of the bytes written.
extern "C" uint64_t llmir_kvstore_copy_checksum_avx2(void *destination, const void *source,
                                                     uint64_t bytes);
// A block hashed (and copied, unless destination is null) in parts:
// PartChecksum (SharedArena.h). acc: 8 x u64, 32-byte aligned.
extern "C" void llmir_kvstore_parts_init_avx2(uint64_t *acc);
extern "C" void llmir_kvstore_parts_add_avx2(uint64_t *acc, void *destination,
                                             const void *source, uint64_t bytes);
extern "C" uint64_t llmir_kvstore_parts_finish_avx2(uint64_t *acc, void *destination,
                                                    const void *source, uint64_t bytes,
                                                    uint64_t total);
#endif

namespace llmir::kvstore::detail {
#if LLMIR_KVSTORE_AVX2
inline bool hasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif
} // namespace llmir::kvstore::detail
