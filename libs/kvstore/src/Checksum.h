// Run-time choice of the AVX-512 or AVX2 XXH3 (ChecksumAvx512.c,
// ChecksumAvx2.c) for block checksums; both give libxxhash's values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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
// The same with AVX-512F (four accumulator chains per block: ChecksumAvx512.c).
extern "C" uint64_t llmir_kvstore_checksum_avx512(const void *data, size_t bytes);
extern "C" uint64_t llmir_kvstore_copy_checksum_avx512(void *destination, const void *source,
                                                       uint64_t bytes);
// The one-pass copy with non-temporal stores (a 64-byte aligned destination;
// else as llmir_kvstore_copy_checksum_avx512), fenced.
extern "C" uint64_t llmir_kvstore_copy_checksum_stream_avx512(void *destination,
                                                              const void *source, uint64_t bytes);
extern "C" void llmir_kvstore_parts_add_avx512(uint64_t *acc, void *destination,
                                               const void *source, uint64_t bytes);
extern "C" uint64_t llmir_kvstore_parts_finish_avx512(uint64_t *acc, void *destination,
                                                      const void *source, uint64_t bytes,
                                                      uint64_t total);
#endif

namespace llmir::kvstore::detail {
#if LLMIR_KVSTORE_AVX2
inline bool hasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
// The AVX-512 forms, unless LLMIR_KVSTORE_CHECKSUM=avx2 asks for the AVX2
// ones (to compare the two on one machine).
inline bool hasAvx512() {
  static const bool has = [] {
    const char *forced = std::getenv("LLMIR_KVSTORE_CHECKSUM");
    if (forced && std::strcmp(forced, "avx2") == 0)
      return false;
    return hasAvx2() && __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}
#endif
} // namespace llmir::kvstore::detail
