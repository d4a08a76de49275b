/* XXH3-64 of block bytes with AVX-512, compiled on its own with -mavx512f
 * and called only when the CPU has AVX-512F (Checksum.h decides at run
 * time); the same values as ChecksumAvx2.c and libxxhash.
 *
 * Why not xxhash.h's own AVX-512 loop: it keeps XXH3's eight 64-bit
 * accumulators in one register, so every 64-byte stripe's update waits for
 * the previous one (two dependent adds per stripe). The accumulators only
 * ever receive sums within a 1024-byte block (16 stripes, then a scramble),
 * and 64-bit integer addition is associative, so the loop below spreads a
 * block's 16 stripes over four registers and adds them up before the
 * scramble: bit for bit XXH3, with four independent chains. On the Zen 5
 * machine of docs/performance.md ("branch kv15") hashing alone went from
 * 68-74 to 79-98 GB/s, and the one-pass copy and hash from 46-49 to 48-52,
 * where a plain memcpy of the same bytes ran at 50-54: the pass is then
 * bound by the copy, not the hash. Plain C, like ChecksumAvx2.c. */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX512
#include <xxhash.h>

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { kBlockBytes = 1024, kStripesPerBlock = 16 }; /* XXH3, default secret */

/* One stripe's contribution to the accumulators (XXH3_accumulate_512):
 * (data ^ key) lo32 * hi32, plus the data with its 64-bit lanes swapped. */
XXH_FORCE_INLINE __m512i stripe_sum(__m512i data, const xxh_u8 *secret) {
  __m512i const key = _mm512_loadu_si512((const void *)secret);
  __m512i const data_key = _mm512_xor_si512(data, key);
  __m512i const data_key_hi = _mm512_shuffle_epi32(data_key, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1));
  __m512i const product = _mm512_mul_epu32(data_key, data_key_hi);
  __m512i const data_swap = _mm512_shuffle_epi32(data, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2));
  return _mm512_add_epi64(product, data_swap);
}

/* XXH3_scrambleAcc_avx512, on a register. */
XXH_FORCE_INLINE __m512i scramble(__m512i acc, const xxh_u8 *secret) {
  __m512i const prime32 = _mm512_set1_epi32((int)XXH_PRIME32_1);
  __m512i const shifted = _mm512_srli_epi64(acc, 47);
  __m512i const key = _mm512_loadu_si512((const void *)secret);
  __m512i const data_key = _mm512_ternarylogic_epi32(key, acc, shifted, 0x96); /* a ^ b ^ c */
  __m512i const data_key_hi = _mm512_srli_epi64(data_key, 32);
  __m512i const product_lo = _mm512_mul_epu32(data_key, prime32);
  __m512i const product_hi = _mm512_mul_epu32(data_key_hi, prime32);
  return _mm512_add_epi64(product_lo, _mm512_slli_epi64(product_hi, 32));
}

/* `blocks` whole 1024-byte blocks of `source` into the accumulators, each
 * stripe stored to `destination` as it is loaded when `copy`, with
 * non-temporal stores when `stream` (copy, stream and whether shift is 0
 * constant at every call, so each use compiles to one loop). Streaming,
 * the destination is 64-byte aligned, or `shift` bytes past a cache line
 * (a multiple of 4, 4 to 60): a non-temporal store writes whole aligned
 * lines only, so each is then put together from the two stripes it
 * straddles (vpermt2d: the last `shift` bytes of one, the first 64 - shift
 * of the next), and the destination's bytes are written from its first
 * aligned line to `shift` bytes before the end of the blocks: the caller
 * copies the first 64 - shift and those last `shift` bytes. */
XXH_FORCE_INLINE void hash_blocks_to(uint64_t *acc_words, unsigned char *destination,
                                     const unsigned char *source, size_t blocks, int copy,
                                     int stream, unsigned shift) {
  const xxh_u8 *const secret = XXH3_kSecret;
  __m512i acc = _mm512_loadu_si512((const void *)acc_words);
  /* line j of the shifted destination takes source[64 j - shift ..] */
  __m512i const from = _mm512_add_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32((int)(64 - shift) / 4));
  __m512i previous = _mm512_setzero_si512();
  for (size_t b = 0; b < blocks; b++) {
    const unsigned char *in = source + b * kBlockBytes;
    unsigned char *out = destination - shift + b * kBlockBytes;
    __m512i sum1 = _mm512_setzero_si512();
    __m512i sum2 = _mm512_setzero_si512();
    __m512i sum3 = _mm512_setzero_si512();
    for (int s = 0; s < kStripesPerBlock; s += 4) {
      __m512i const d0 = _mm512_loadu_si512((const void *)(in + 64 * s));
      __m512i const d1 = _mm512_loadu_si512((const void *)(in + 64 * s + 64));
      __m512i const d2 = _mm512_loadu_si512((const void *)(in + 64 * s + 128));
      __m512i const d3 = _mm512_loadu_si512((const void *)(in + 64 * s + 192));
      if (copy && stream && shift != 0) {
        if (b != 0 || s != 0) /* line 0 begins before the destination */
          _mm512_stream_si512((void *)(out + 64 * s),
                              _mm512_permutex2var_epi32(previous, from, d0));
        _mm512_stream_si512((void *)(out + 64 * s + 64), _mm512_permutex2var_epi32(d0, from, d1));
        _mm512_stream_si512((void *)(out + 64 * s + 128), _mm512_permutex2var_epi32(d1, from, d2));
        _mm512_stream_si512((void *)(out + 64 * s + 192), _mm512_permutex2var_epi32(d2, from, d3));
        previous = d3;
      } else if (copy && stream) {
        _mm512_stream_si512((void *)(out + 64 * s), d0);
        _mm512_stream_si512((void *)(out + 64 * s + 64), d1);
        _mm512_stream_si512((void *)(out + 64 * s + 128), d2);
        _mm512_stream_si512((void *)(out + 64 * s + 192), d3);
      } else if (copy) {
        _mm512_storeu_si512((void *)(out + 64 * s), d0);
        _mm512_storeu_si512((void *)(out + 64 * s + 64), d1);
        _mm512_storeu_si512((void *)(out + 64 * s + 128), d2);
        _mm512_storeu_si512((void *)(out + 64 * s + 192), d3);
      }
      /* Stripe s uses the secret at 8 * s (XXH_SECRET_CONSUME_RATE). */
      acc = _mm512_add_epi64(acc, stripe_sum(d0, secret + 8 * s));
      sum1 = _mm512_add_epi64(sum1, stripe_sum(d1, secret + 8 * s + 8));
      sum2 = _mm512_add_epi64(sum2, stripe_sum(d2, secret + 8 * s + 16));
      sum3 = _mm512_add_epi64(sum3, stripe_sum(d3, secret + 8 * s + 24));
    }
    acc = _mm512_add_epi64(_mm512_add_epi64(acc, sum1), _mm512_add_epi64(sum2, sum3));
    acc = scramble(acc, secret + sizeof(XXH3_kSecret) - XXH_STRIPE_LEN);
  }
  _mm512_storeu_si512((void *)acc_words, acc);
}

XXH_FORCE_INLINE void hash_blocks(uint64_t *acc_words, unsigned char *destination,
                                  const unsigned char *source, size_t blocks, int copy) {
  hash_blocks_to(acc_words, destination, source, blocks, copy, 0, 0);
}

/* The rest of a long input after its whole blocks (1 to 1024 bytes, but
 * reading its last stripe from the input's last 64 bytes, which may begin
 * in the block before, as XXH3 does): xxhash.h's loop, which then sees no
 * whole block. With a destination each stripe it loads is also stored (the
 * overlapping last one again: the same values). */
static _Thread_local ptrdiff_t copy_offset; /* destination - source */

XXH_FORCE_INLINE void copy_accumulate_512(void *XXH_RESTRICT acc, const void *XXH_RESTRICT input,
                                          const void *XXH_RESTRICT secret) {
  _mm512_storeu_si512((void *)((const unsigned char *)input + copy_offset),
                      _mm512_loadu_si512(input));
  XXH3_accumulate_512_avx512(acc, input, secret);
}

static void hash_rest(uint64_t *acc, unsigned char *destination, const unsigned char *source,
                      size_t bytes) {
  if (destination) {
    copy_offset = destination - source;
    XXH3_hashLong_internal_loop(acc, source, bytes, XXH3_kSecret, sizeof(XXH3_kSecret),
                                copy_accumulate_512, XXH3_scrambleAcc_avx512);
  } else {
    XXH3_hashLong_internal_loop(acc, source, bytes, XXH3_kSecret, sizeof(XXH3_kSecret),
                                XXH3_accumulate_512_avx512, XXH3_scrambleAcc_avx512);
  }
}

/* A long input (more than XXH3_MIDSIZE_MAX bytes) into `acc`, copied when
 * `destination` is not null: its whole blocks but the last (XXH3 treats a
 * last block that ends the input as the rest), then the rest. */
static void hash_long(uint64_t *acc, unsigned char *destination, const unsigned char *source,
                      size_t bytes) {
  size_t const blocks = (bytes - 1) / kBlockBytes;
  if (destination)
    hash_blocks(acc, destination, source, blocks, 1);
  else
    hash_blocks(acc, NULL, source, blocks, 0);
  size_t const done = blocks * kBlockBytes;
  hash_rest(acc, destination ? destination + done : NULL, source + done, bytes - done);
}

static uint64_t merge(const uint64_t *acc, uint64_t total) {
  return XXH3_mergeAccs(acc, XXH3_kSecret + XXH_SECRET_MERGEACCS_START,
                        (xxh_u64)total * XXH_PRIME64_1);
}

uint64_t llmir_kvstore_checksum_avx512(const void *data, size_t bytes) {
  if (bytes <= XXH3_MIDSIZE_MAX) /* XXH3 hashes short inputs another way */
    return XXH3_64bits(data, bytes);
  XXH_ALIGN(64) uint64_t acc[XXH_ACC_NB] = XXH3_INIT_ACC;
  hash_long(acc, NULL, (const unsigned char *)data, bytes);
  return merge(acc, bytes);
}

uint64_t llmir_kvstore_copy_checksum_avx512(void *destination, const void *source,
                                            uint64_t bytes) {
  if (bytes <= XXH3_MIDSIZE_MAX) {
    memcpy(destination, source, bytes);
    return XXH3_64bits(destination, bytes);
  }
  XXH_ALIGN(64) uint64_t acc[XXH_ACC_NB] = XXH3_INIT_ACC;
  hash_long(acc, (unsigned char *)destination, (const unsigned char *)source, bytes);
  return merge(acc, bytes);
}

/* copy_checksum with non-temporal stores for the whole blocks (a
 * destination of more than 1024 bytes on a cache line or a multiple of 4
 * bytes past one; the rest, under 1 KiB, and a shifted destination's first
 * and last partial lines go through the cache), fenced before returning so
 * that whoever learns of the block afterwards (a commit posted in the
 * channel, another thread) sees its bytes. For a destination that is not in
 * the caches or should not evict what is: the rooms of shared puts of
 * several MiB, which take turns (docs/performance.md "kv16"), and the
 * destinations of gets of that size ("kv17"). */
uint64_t llmir_kvstore_copy_checksum_stream_avx512(void *destination, const void *source,
                                                   uint64_t bytes) {
  unsigned const shift = (unsigned)((uintptr_t)destination & 63);
  if (bytes <= kBlockBytes || (shift & 3) != 0)
    return llmir_kvstore_copy_checksum_avx512(destination, source, bytes);
  XXH_ALIGN(64) uint64_t acc[XXH_ACC_NB] = XXH3_INIT_ACC;
  size_t const blocks = (bytes - 1) / kBlockBytes;
  size_t const done = blocks * kBlockBytes;
  if (shift == 0) {
    hash_blocks_to(acc, (unsigned char *)destination, (const unsigned char *)source, blocks, 1, 1,
                   0);
  } else {
    hash_blocks_to(acc, (unsigned char *)destination, (const unsigned char *)source, blocks, 1, 1,
                   shift);
    memcpy(destination, source, 64 - shift);
    memcpy((unsigned char *)destination + done - shift,
           (const unsigned char *)source + done - shift, shift);
  }
  hash_rest(acc, (unsigned char *)destination + done, (const unsigned char *)source + done,
            bytes - done);
  _mm_sfence();
  return merge(acc, bytes);
}

/* Parts (PartChecksum; see ChecksumAvx2.c): every part but the last a
 * multiple of 1024 bytes, so each is whole blocks; the last (at least 1024
 * bytes) as the end of a long input. The accumulators are XXH3's, whatever
 * vector width updates them. */
void llmir_kvstore_parts_add_avx512(uint64_t *acc, void *destination, const void *source,
                                    uint64_t bytes) {
  if (destination)
    hash_blocks(acc, (unsigned char *)destination, (const unsigned char *)source,
                bytes / kBlockBytes, 1);
  else
    hash_blocks(acc, NULL, (const unsigned char *)source, bytes / kBlockBytes, 0);
}

uint64_t llmir_kvstore_parts_finish_avx512(uint64_t *acc, void *destination, const void *source,
                                           uint64_t bytes, uint64_t total) {
  hash_long(acc, (unsigned char *)destination, (const unsigned char *)source, bytes);
  return merge(acc, total);
}
