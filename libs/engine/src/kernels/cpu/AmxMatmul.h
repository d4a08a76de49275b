// Prefill products on AMX tiles (Intel Sapphire Rapids and later): bf16 or
// f32 weights against the activations as bf16 terms, f32 accumulation.
//
// AMX multiplies bf16 by bf16 only. Medium precision rounds x to bf16 (one
// term), as the `vdpbf16ps` kernels do. Highest precision splits each f32 x
// exactly into three bf16 terms (hi: x truncated to 8 significant bits,
// mid: the rest truncated likewise, lo: the last at most 8 bits), so
// w * x = w * hi + w * mid + w * lo with every product exact in f32: only
// the order of the f32 additions differs from the f32 kernels. f32 weights
// are split the same way as they are packed, and all nine products of the
// two sets of terms are taken, so their products are exact too (x always
// in three terms). (AMX reads bf16 denormals as zero: a term below 2^-126,
// from a value under ~2^-110, is lost.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llmir::engine {
class ThreadPool;
} // namespace llmir::engine

namespace llmir::engine::cpu::amx {

/// True where the CPU has AMX-BF16, Linux granted this process the tile
/// state (asked once), and LLMIR_CPU_ISA does not force a set without it
/// (any value but `amx` turns these kernels off, so tests can cover the
/// others on an AMX machine).
bool available();

/// Whether `gemm` takes this shape: K in 32s (a tile's depth), N in 16s.
inline bool fits(int64_t K, int64_t N) { return K > 0 && K % 32 == 0 && N % 16 == 0; }

/// v's elements from its first 64-byte boundary (v holds 64 bytes more than
/// it is used for).
template <class T> T *from64ByteBoundary(std::vector<T> &v) {
  const auto address = reinterpret_cast<std::uintptr_t>(v.data());
  return reinterpret_cast<T *>((address + 63) / 64 * 64);
}

/// x[T, K] as `parts` bf16 terms (parts 1 rounds to nearest even, parts 3
/// splits exactly), laid out as the tiles load them: per term, blocks of 16
/// rows by 32 columns, each 1 KiB contiguous and 64-byte aligned (row r of
/// a block at element 32 r), ordered (term, row block, column block); the
/// rows past T are zero.
struct Activations {
  int64_t T = 0, K = 0;
  int parts = 0;
  std::vector<uint16_t> storage; // the blocks, from its first 64-byte boundary
  int64_t rowBlocks() const { return (T + 15) / 16; }
  uint16_t *tile(int p, int64_t rowBlock, int64_t columnBlock) {
    return from64ByteBoundary(storage) +
           ((p * rowBlocks() + rowBlock) * (K / 32) + columnBlock) * 512;
  }
  const uint16_t *tile(int p, int64_t rowBlock, int64_t columnBlock) const {
    return const_cast<Activations *>(this)->tile(p, rowBlock, columnBlock);
  }
  /// Term p of x[t, k].
  uint16_t term(int p, int64_t t, int64_t k) const {
    return tile(p, t / 16, k / 32)[t % 16 * 32 + k % 32];
  }
};
void split(const float *x, int64_t T, int64_t K, int parts, Activations &out,
           ThreadPool &pool);

/// One product of a group: y[t * ldy + n] = sum_k x[t, k] w[n, k] for n
/// in [0, N), t in [0, T); w [N, K] with fits(K, N), bf16 or (f32Weights)
/// f32, which needs x in three terms.
struct Output {
  const void *w;
  bool f32Weights;
  int64_t N;
  float *y;
  int64_t ldy;
};

/// Every output of a group of one input x. The outputs' panels of 32
/// columns count as one range, in units of about 1 MiB packed that the
/// pool's threads claim: a thread packs a unit's panels into the tiles'
/// pair layout and runs every row block of x over them (so x's terms are
/// read once a unit, for all the outputs it spans).
void gemm(const Activations &x, const std::vector<Output> &outputs, ThreadPool &pool);

} // namespace llmir::engine::cpu::amx
