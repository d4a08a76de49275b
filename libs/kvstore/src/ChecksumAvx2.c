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

/* A block hashed in parts, in order (PutPart over TCP, docs/kv-store.md
 * "Blocks in parts"): XXH3's long-input loop cut at part boundaries. Every
 * part but the last is a multiple of 1024 bytes (XXH3's block with the
 * default secret: 16 stripes, then a scramble), so its blocks are full
 * blocks of the whole input and it leaves no stripe behind; the last part
 * (at least 64 bytes, so its last stripe lies inside it) goes through the
 * loop as XXH3 runs it over a whole input, which is the same arithmetic:
 * (total - 1) / 1024 = earlier blocks + (last - 1) / 1024. The value equals
 * XXH3_64bits over the whole block (longer than 240 bytes). `destination`
 * null: hash only. */
void llmir_kvstore_parts_init_avx2(uint64_t *acc) {
  static const uint64_t init[XXH_ACC_NB] = XXH3_INIT_ACC;
  memcpy(acc, init, sizeof init);
}

void llmir_kvstore_parts_add_avx2(uint64_t *acc, void *destination, const void *source,
                                  uint64_t bytes) {
  const size_t perBlock = (sizeof(XXH3_kSecret) - XXH_STRIPE_LEN) / XXH_SECRET_CONSUME_RATE;
  const size_t blockLen = XXH_STRIPE_LEN * perBlock;
  const xxh_u8 *in = (const xxh_u8 *)source;
  const xxh_u8 *secret = XXH3_kSecret;
  if (destination)
    copy_offset = (const unsigned char *)destination - (const unsigned char *)source;
  for (size_t n = 0; n < bytes / blockLen; n++) {
    if (destination)
      XXH3_accumulate(acc, in + n * blockLen, secret, perBlock, copy_accumulate_512);
    else
      XXH3_accumulate(acc, in + n * blockLen, secret, perBlock, XXH3_accumulate_512_avx2);
    XXH3_scrambleAcc_avx2(acc, secret + sizeof(XXH3_kSecret) - XXH_STRIPE_LEN);
  }
}

uint64_t llmir_kvstore_parts_finish_avx2(uint64_t *acc, void *destination, const void *source,
                                         uint64_t bytes, uint64_t total) {
  if (destination) {
    copy_offset = (const unsigned char *)destination - (const unsigned char *)source;
    XXH3_hashLong_internal_loop(acc, (const xxh_u8 *)source, bytes, XXH3_kSecret,
                                sizeof(XXH3_kSecret), copy_accumulate_512,
                                XXH3_scrambleAcc_avx2);
  } else {
    XXH3_hashLong_internal_loop(acc, (const xxh_u8 *)source, bytes, XXH3_kSecret,
                                sizeof(XXH3_kSecret), XXH3_accumulate_512_avx2,
                                XXH3_scrambleAcc_avx2);
  }
  return XXH3_mergeAccs(acc, XXH3_kSecret + XXH_SECRET_MERGEACCS_START,
                        (xxh_u64)total * XXH_PRIME64_1);
}
