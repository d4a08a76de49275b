/* XXH3-64 of block bytes with AVX2, compiled on its own with -mavx2 and
 * called only when the CPU has AVX2 (Checksum.cpp decides at run time).
 * XXH3 gives the same result whatever vector width computes it; Debian's
 * libxxhash is built for SSE2 only, which made hashing, not copying, the
 * bottleneck of the shared-memory path (docs/performance.md). Plain C, so
 * no inline C++ template is instantiated with AVX2 code. */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include <stdint.h>
#include <string.h>

uint64_t llmir_kvstore_checksum_avx2(const void *data, size_t bytes) {
  return XXH3_64bits(data, bytes);
}

uint64_t llmir_kvstore_copy_checksum_avx2(void *destination, const void *source,
                                          uint64_t bytes, uint64_t chunk) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  unsigned char *out = (unsigned char *)destination;
  const unsigned char *in = (const unsigned char *)source;
  for (uint64_t done = 0; done < bytes; done += chunk) {
    uint64_t n = bytes - done < chunk ? bytes - done : chunk;
    memcpy(out + done, in + done, n);
    XXH3_64bits_update(&state, out + done, n);
  }
  return XXH3_64bits_digest(&state);
}
