// AMX prefill products (AmxMatmul.h). A tile product C[16 t, 16 n] +=
// A[16 t, 32 k] B[32 k, 16 n] takes A as 16 rows of 32 bf16 (a block of the
// activation terms, 1 KiB contiguous as split() lays them out) and B as 16
// rows of 16 pairs (w[n, k], w[n, k + 1]) for consecutive even k: each
// thread packs its panels of 32 columns of w into that layout (f32 weights:
// one such panel per bf16 term), so C rows are output rows and store
// straight into y.
#include "AmxMatmul.h"

#include "Simd.h"

#include "llmir/engine/ThreadPool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__clang__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LLMIR_AMX 1
#endif

namespace llmir::engine::cpu::amx {

#ifdef LLMIR_AMX
namespace {

#define LLMIR_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw")))

bool cpuHasAmxBf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
    return false;
  constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;
  return (edx & kAmxBf16) && (edx & kAmxTile);
}

// Linux keeps the tiles' 8 KiB of state off by default; a process asks for
// it once (every thread of the process then may use it).
bool grantTileState() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Palette 1, all eight tiles 16 rows of 64 bytes: C(i, j) = 2i + j for row
// block i of x and column block j of the panel, A(i) = 4 + i, B(j) = 6 + j.
struct alignas(64) TileConfig {
  uint8_t palette = 1, startRow = 0;
  uint8_t reserved[14] = {};
  uint16_t bytesPerRow[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) {
      bytesPerRow[i] = 64;
      rows[i] = 16;
    }
  }
};

constexpr int64_t kPanel = 32; // columns of w in a packed panel
constexpr size_t kChunkBytes = size_t{1} << 20; // packed panels run together

// 32-bit words of one bf16 term of a packed panel of K; of the panel with
// its `terms` (1 for bf16 weights, 3 for f32); how many panels make a chunk.
size_t termWords(int64_t K) { return static_cast<size_t>(K / 2 * kPanel); }
size_t panelWords(int64_t K, int terms) { return termWords(K) * static_cast<size_t>(terms); }
size_t panelsPerChunk(int64_t K, int terms) {
  return std::max<size_t>(1, kChunkBytes / (panelWords(K, terms) * 4));
}

// C tile `C` holds rows [first, first + 16) of a 16-column block at y:
// rows past T are padding, so a last partial block goes through `spill`.
template <int C>
LLMIR_AMX_TARGET void storeTile(int64_t T, int64_t first, float *y, int64_t ldy,
                                float *spill) {
  const int64_t rows = std::min<int64_t>(16, T - first);
  float *dst = y + first * ldy;
  if (rows == 16) {
    _tile_stored(C, dst, static_cast<size_t>(ldy) * 4);
    return;
  }
  _tile_stored(C, spill, 64);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * ldy, spill + r * 16, 16 * sizeof(float));
}

// C tiles for `NA` row blocks (t0, t0 + 16) and `NB` column blocks of the
// packed panel, over all K, summed over x's terms times the panel's
// `wTerms`, then stored: rows of full blocks straight into y, a last
// partial block through `spill`.
template <int NA, int NB>
LLMIR_AMX_TARGET void blockProduct(const Activations &x, int64_t t0,
                                   const uint32_t *panel, int wTerms, float *y,
                                   int64_t ldy, float *spill) {
  const int64_t K = x.K;
  constexpr size_t aStride = 64, bStride = kPanel * 4;
  _tile_zero(0);
  if constexpr (NB == 2)
    _tile_zero(1);
  if constexpr (NA == 2) {
    _tile_zero(2);
    if constexpr (NB == 2)
      _tile_zero(3);
  }
  for (int64_t k0 = 0; k0 < K; k0 += 32)
    for (int q = 0; q < wTerms; ++q) {
      const uint32_t *b = panel + q * termWords(K) + k0 / 2 * kPanel;
      _tile_loadd(6, b, bStride);
      if constexpr (NB == 2)
        _tile_loadd(7, b + 16, bStride);
      for (int p = 0; p < x.parts; ++p) {
        _tile_loadd(4, x.tile(p, t0 / 16, k0 / 32), aStride);
        if constexpr (NA == 2)
          _tile_loadd(5, x.tile(p, t0 / 16 + 1, k0 / 32), aStride);
        _tile_dpbf16ps(0, 4, 6);
        if constexpr (NB == 2)
          _tile_dpbf16ps(1, 4, 7);
        if constexpr (NA == 2) {
          _tile_dpbf16ps(2, 5, 6);
          if constexpr (NB == 2)
            _tile_dpbf16ps(3, 5, 7);
        }
      }
    }
  storeTile<0>(x.T, t0, y, ldy, spill);
  if constexpr (NB == 2)
    storeTile<1>(x.T, t0, y + 16, ldy, spill);
  if constexpr (NA == 2) {
    storeTile<2>(x.T, t0 + 16, y, ldy, spill);
    if constexpr (NB == 2)
      storeTile<3>(x.T, t0 + 16, y + 16, ldy, spill);
  }
}

// hi / mid / lo of one f32 (AmxMatmul.h): each subtraction is exact (the
// rest of a truncation); infinities and NaNs go whole into hi (a NaN kept
// quiet), their rests zero.
LLMIR_AMX_TARGET void splitChunk(const float *x, uint16_t *hi, uint16_t *mid,
                                 uint16_t *lo) {
  constexpr int64_t K = 32;
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x00400000);
  for (int64_t k = 0; k < K; k += 16) {
    const __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(x + k));
    const __mmask16 special = _mm512_cmpeq_epi32_mask(
        _mm512_and_si512(bits, exponent), exponent);
    const __mmask16 nan = special & _mm512_cmpneq_epi32_mask(
        _mm512_slli_epi32(bits, 9), _mm512_setzero_si512());
    const __m512i truncated = _mm512_and_si512(bits, top);
    const __m512i h = _mm512_mask_or_epi32(truncated, nan, truncated, quiet);
    const __m512 r = _mm512_maskz_sub_ps(static_cast<__mmask16>(~special),
                                         _mm512_castsi512_ps(bits),
                                         _mm512_castsi512_ps(h));
    const __m512i m = _mm512_and_si512(_mm512_castps_si512(r), top);
    const __m512 l = _mm512_sub_ps(r, _mm512_castsi512_ps(m));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(hi + k),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(mid + k),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(m, 16)));
    _mm256_storeu_si256(
        reinterpret_cast<__m256i *>(lo + k),
        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(l), 16)));
  }
}

// Rows r[i] of 16 pairs each, transposed (16 rows by 16 pairs) into the
// tiles' layout: pair m of the 16 rows to dst + m * kPanel.
LLMIR_AMX_TARGET inline void storeTransposedPairs(__m512i *r, uint32_t *dst) {
  // 16 x 16 transpose of 32-bit pairs: 32-, 64-bit interleaves, then
  // 128-bit lanes twice.
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
  for (int m = 0; m < 16; ++m)
    _mm512_store_si512(dst + m * kPanel, r[m]);
}

// panel[kp * 32 + j] = (w[n0 + j, 2kp], w[n0 + j, 2kp + 1]) for j < cols
// (16 or 32): bf16 w's rows as pairs, 16 rows by 16 pairs at a time.
LLMIR_AMX_TARGET void packPanel(const uint16_t *w, int64_t K, int64_t n0, int64_t cols,
                                uint32_t *panel) {
  for (int64_t j0 = 0; j0 < cols; j0 += 16)
    for (int64_t kp = 0; kp < K / 2; kp += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_loadu_si512(w + (n0 + j0 + i) * K + 2 * kp);
      storeTransposedPairs(r, panel + kp * kPanel + j0);
    }
}

// The same for f32 w, split into three exact bf16 terms (splitChunk), term
// q's panel at panel + q * termWords(K).
LLMIR_AMX_TARGET void packPanel(const float *w, int64_t K, int64_t n0, int64_t cols,
                                uint32_t *panel) {
  alignas(64) uint16_t terms[3][16][32];
  for (int64_t j0 = 0; j0 < cols; j0 += 16)
    for (int64_t kp = 0; kp < K / 2; kp += 16) {
      for (int i = 0; i < 16; ++i)
        splitChunk(w + (n0 + j0 + i) * K + 2 * kp, terms[0][i], terms[1][i], terms[2][i]);
      for (int q = 0; q < 3; ++q) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = _mm512_load_si512(terms[q][i]);
        storeTransposedPairs(r, panel + q * termWords(K) + kp * kPanel + j0);
      }
    }
}

// bf16 terms of an output's weights as packed: f32 weights split in three.
int weightTerms(const Output &o) { return o.f32Weights ? 3 : 1; }

// A panel of 32 (or a last 16) columns of one output.
struct Panel {
  const Output *output;
  int64_t n0, cols;
};

// Panels [begin, end) of the group, a chunk of them at a time: the chunk
// packed into `packed` (about kChunkBytes: it stays in L2; each panel
// `wTerms` terms apart, the most any of the group's weights take), then
// every pair of row blocks of x over each of its panels.
LLMIR_AMX_TARGET void panels(const Activations &x, const Panel *begin, const Panel *end,
                             int wTerms, uint32_t *packed) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  const size_t stride = panelWords(x.K, wTerms);
  const auto perChunk = static_cast<ptrdiff_t>(panelsPerChunk(x.K, wTerms));
  alignas(64) float spill[16 * 16];
  const int64_t rows = x.rowBlocks() * 16;
  for (const Panel *first = begin; first < end; first += perChunk) {
    const Panel *last = std::min(end, first + perChunk);
    for (const Panel *p = first; p < last; ++p) {
      uint32_t *panel = packed + (p - first) * stride;
      if (p->output->f32Weights)
        packPanel(static_cast<const float *>(p->output->w), x.K, p->n0, p->cols, panel);
      else
        packPanel(static_cast<const uint16_t *>(p->output->w), x.K, p->n0, p->cols, panel);
    }
    for (int64_t t0 = 0; t0 < rows; t0 += 32)
      for (const Panel *p = first; p < last; ++p) {
        const uint32_t *panel = packed + (p - first) * stride;
        const int terms = weightTerms(*p->output);
        float *y = p->output->y + p->n0;
        const int64_t ldy = p->output->ldy;
        const bool full = p->cols == kPanel, pair = t0 + 32 <= rows;
        if (full && pair)
          blockProduct<2, 2>(x, t0, panel, terms, y, ldy, spill);
        else if (full)
          blockProduct<1, 2>(x, t0, panel, terms, y, ldy, spill);
        else if (pair)
          blockProduct<2, 1>(x, t0, panel, terms, y, ldy, spill);
        else
          blockProduct<1, 1>(x, t0, panel, terms, y, ldy, spill);
      }
  }
  _tile_release(); // the thread's context switches carry no tile state
}

bool forcedOff() {
  const char *forced = std::getenv("LLMIR_CPU_ISA");
  return forced && *forced && std::strcmp(forced, "amx") != 0;
}

} // namespace

bool available() {
  static const bool usable = !forcedOff() && cpuHasAmxBf16() && grantTileState();
  return usable;
}

void split(const float *x, int64_t T, int64_t K, int parts, Activations &out,
           ThreadPool &pool) {
  out.T = T;
  out.K = K;
  out.parts = parts;
  const int64_t blocks = out.rowBlocks(), columnBlocks = K / 32;
  out.storage.resize(static_cast<size_t>(parts * blocks * 16 * K + 32));
  if (T % 16) // the last row block's padding rows
    for (int p = 0; p < parts; ++p)
      for (int64_t c = 0; c < columnBlocks; ++c)
        std::fill(out.tile(p, blocks - 1, c) + T % 16 * 32, out.tile(p, blocks - 1, c) + 512,
                  uint16_t{0});
  const auto &kernels = simd::kernels();
  pool.parallelFor(static_cast<size_t>(T), 8, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t)
      for (int64_t c = 0; c < columnBlocks; ++c) {
        const float *chunk = x + t * K + c * 32;
        const int64_t block = static_cast<int64_t>(t) / 16, row = static_cast<int64_t>(t) % 16;
        uint16_t *hi = out.tile(0, block, c) + row * 32;
        if (parts == 1)
          kernels.toBf16(chunk, hi, 32);
        else
          splitChunk(chunk, hi, out.tile(1, block, c) + row * 32,
                     out.tile(2, block, c) + row * 32);
      }
  });
}

void gemm(const Activations &x, const std::vector<Output> &outputs, ThreadPool &pool) {
  std::vector<Panel> all;
  for (const Output &o : outputs)
    for (int64_t n0 = 0; n0 < o.N; n0 += kPanel)
      all.push_back({&o, n0, std::min(kPanel, o.N - n0)});
  // The panels in units of one chunk (fewer panels where the group has
  // less than a chunk a thread), claimed through the pool: a thread through
  // with its own units takes the other's, so a core slowed by its
  // neighbours on a shared host is not waited for (a static half a thread
  // gave 2 threads 0.96-1.9x one in the engine's f32 prefill, minute by
  // minute; docs/performance.md, "Twentieth round"). Units are whole
  // chunks where the group has enough panels, because each chunk reads all
  // of x's terms once (pieces of 1-4 panels gave 2 threads ~1.0x one:
  // "Nineteenth round").
  const size_t count = all.size();
  int wTerms = 1; // the most any output takes: every panel is packed that far apart
  for (const Output &o : outputs)
    wTerms = std::max(wTerms, weightTerms(o));
  const size_t threads = pool.numThreads();
  const size_t unit = std::min(panelsPerChunk(x.K, wTerms), (count + threads - 1) / threads);
  const size_t units = (count + unit - 1) / unit;
  pool.parallelFor(units, 1, [&](size_t b, size_t e) {
    thread_local std::vector<uint32_t> packed;
    packed.resize(panelWords(x.K, wTerms) * panelsPerChunk(x.K, wTerms) + 16);
    panels(x, all.data() + b * unit, all.data() + std::min(count, e * unit), wTerms,
           from64ByteBoundary(packed));
  });
}

#else

bool available() { return false; }
void split(const float *, int64_t, int64_t, int, Activations &, ThreadPool &) {}
void gemm(const Activations &, const std::vector<Output> &, ThreadPool &) {}

#endif

} // namespace llmir::engine::cpu::amx
