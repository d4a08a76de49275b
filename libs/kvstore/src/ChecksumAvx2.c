/* XXH3-64 of block bytes with AVX2, compiled on its own with -mavx2 and
 * called only when the CPU has AVX2 (Checksum.cpp decides at run time).
 * XXH3 gives the same result whatever vector width computes it; Debian's
 * libxxhash is built for SSE2 only, which made hashing, not copying, the
 * bottleneck of the shared-memory path (docs/performance.md). Plain C, so
 * no inline C++ template is instantiated with AVX2 code. */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

uint64_t llmir_kvstore_checksum_avx2(const void *data, size_t bytes) {
  return XXH3_64bits(data, bytes);
}

/* The copy and the hash in one pass: XXH3's own long-input loop over the
 * source, with an accumulate step that also stores each 64-byte stripe it
 * loaded to the destination. Every byte is read once (not copied, then read
 * again to hash), and the hash is of exactly the values written: the same
 * registers feed both. XXH3 reads its last stripe again (overlapping the one
 * before); storing it again writes the same values. */
static _Thread_local ptrdiff_t copy_offset; /* destination - source */

XXH_FORCE_INLINE void copy_accumulate_512(void *XXH_RESTRICT acc, const void *XXH_RESTRICT input,
                                          const void *XXH_RESTRICT secret) {
  __m256i *const xacc = (__m256i *)acc;
  const __m256i *const xinput = (const __m256i *)input;
  __m256i *const xout = (__m256i *)((unsigned char *)input + copy_offset);
  const __m256i *const xsecret = (const __m256i *)secret;
  for (size_t i = 0; i < XXH_STRIPE_LEN / sizeof(__m256i); i++) {
    __m256i const data_vec = _mm256_loadu_si256(xinput + i);
    _mm256_storeu_si256(xout + i, data_vec);
    __m256i const key_vec = _mm256_loadu_si256(xsecret + i);
    __m256i const data_key = _mm256_xor_si256(data_vec, key_vec);
    __m256i const data_key_lo = _mm256_shuffle_epi32(data_key, _MM_SHUFFLE(0, 3, 0, 1));
    __m256i const product = _mm256_mul_epu32(data_key, data_key_lo);
    __m256i const data_swap = _mm256_shuffle_epi32(data_vec, _MM_SHUFFLE(1, 0, 3, 2));
    __m256i const sum = _mm256_add_epi64(xacc[i], data_swap);
    xacc[i] = _mm256_add_epi64(product, sum);
  }
}

uint64_t llmir_kvstore_copy_checksum_avx2(void *destination, const void *source,
                                          uint64_t bytes) {
  if (bytes <= XXH3_MIDSIZE_MAX) { /* XXH3 hashes short inputs another way */
    memcpy(destination, source, bytes);
    return XXH3_64bits(destination, bytes);
  }
  copy_offset = (const unsigned char *)destination - (const unsigned char *)source;
  /* What XXH3_64bits (seed 0, default secret) computes for a long input. */
  return XXH3_hashLong_64b_internal(source, bytes, XXH3_kSecret, sizeof(XXH3_kSecret),
                                    copy_accumulate_512, XXH3_scrambleAcc_avx2);
}
