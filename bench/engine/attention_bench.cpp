// llmir-attention-bench: a decode token's attention alone, on the CPU
// engine's own kernel (cpu::attendCached) and thread pool, without the
// executor, against a plain read of the same KV bytes. For a Llama's decode
// (SmolLM-135M's attention shape by default, as the engine bench's model:
// 30 layers, 9 query heads on 3 KV heads, head_dim 64, blocks of 16) after
// --prefill positions, each of --decode tokens attends in every layer over
// its context; between two layers the bench streams --evict-mb of other
// memory (the layer's weights in a real decode, untimed, read by the pool's
// threads), so every layer's attention starts from caches that hold none of
// its rows, as in decode.
// Per thread count it prints, per token:
//
//   attention   ms and GB/s of KV bytes of the 30 attendCached calls
//   read        ms and GB/s of an AVX-512 sum over the same K and V rows
//               (one thread; what the bytes cost without arithmetic), the
//               layer's keys, then its values
//   read-kv     the same sum over keys and values in turn, 256 bytes of
//               each (two streams at once, as a one-pass kernel reads)
//
// Each figure is the best of --repeats.
//
//   llmir-attention-bench [--threads 1,2] [--kv-dtype f32|bf16]
//                         [--prefill 512] [--decode 128] [--repeats 3]
//                         [--evict-mb 9]                        (--help)
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/HugePages.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/Tensor.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/net/Config.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace llmir;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> threads = {1, 2};
  bool bf16 = false;
  int prefill = 512, decode = 128, repeats = 3, evictMb = 9;
  int64_t layers = 30, heads = 9, kvHeads = 3, headDim = 64, blockSize = 16;
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-attention-bench: %s\n", why.c_str());
  std::exit(2);
}

Options parseOptions(int argc, char **argv) {
  Options o;
  std::string dtype = "f32";
  net::Config config("llmir-attention-bench");
  config.add("threads", &o.threads, "thread counts, comma-separated");
  config.add("kv-dtype", &dtype, "f32 or bf16 KV cache");
  config.add("prefill", &o.prefill, "positions cached before the first decode token");
  config.add("decode", &o.decode, "decode tokens timed per repeat");
  config.add("repeats", &o.repeats, "repeats (the best is shown)");
  config.add("evict-mb", &o.evictMb, "MB of other memory read between two layers");
  config.loadOrExit(argc, argv);
  if (dtype != "f32" && dtype != "bf16")
    fail("kv-dtype is f32 or bf16");
  o.bf16 = dtype == "bf16";
  if (o.prefill < 0 || o.decode < 1 || o.repeats < 1 || o.evictMb < 0)
    fail("decode and repeats must be >= 1, prefill and evict-mb >= 0");
  return o;
}

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Four independent 64-byte sums of [data, data + bytes), bytes in 256s.
typedef float v16f __attribute__((vector_size(64)));
__attribute__((target("avx512f"))) float sumAvx512(const std::byte *data, size_t bytes) {
  v16f a[4] = {};
  for (size_t i = 0; i + 256 <= bytes; i += 256)
    for (int j = 0; j < 4; ++j) {
      v16f v;
      std::memcpy(&v, data + i + 64 * j, sizeof v);
      a[j] += v;
    }
  const v16f s = (a[0] + a[1]) + (a[2] + a[3]);
  return s[0] + s[15];
}
// The same over two regions at once, 256 bytes of each in turn.
__attribute__((target("avx512f"))) float sumAvx512Pair(const std::byte *x, const std::byte *y,
                                                       size_t bytes) {
  v16f a[4] = {};
  for (size_t i = 0; i + 256 <= bytes; i += 256)
    for (int j = 0; j < 4; ++j) {
      v16f v, w;
      std::memcpy(&v, x + i + 64 * j, sizeof v);
      std::memcpy(&w, y + i + 64 * j, sizeof w);
      a[j] += v + w;
    }
  const v16f s = (a[0] + a[1]) + (a[2] + a[3]);
  return s[0] + s[15];
}

} // namespace

int main(int argc, char **argv) {
  const Options o = parseOptions(argc, argv);
  const int64_t positions = o.prefill + o.decode;
  const int64_t numBlocks = (positions + o.blockSize - 1) / o.blockSize;
  const engine::KvCacheShape shape{o.layers, o.kvHeads, o.headDim, o.blockSize, numBlocks};
  Result<engine::KvCache> cache =
      engine::KvCache::create(shape, o.bf16 ? engine::KvElement::BF16 : engine::KvElement::F32);
  if (!cache)
    fail(cache.message());
  std::vector<int32_t> table(static_cast<size_t>(numBlocks));
  for (int32_t b = 0; b < numBlocks; ++b)
    table[static_cast<size_t>(b)] = b;

  // Every position's keys and values, random, stored by the engine.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t kvWidth = o.kvHeads * o.headDim, qWidth = o.heads * o.headDim;
  engine::ThreadPool single(1);
  {
    engine::StepInput all;
    all.blockTables = {table};
    for (int64_t p = 0; p < positions; ++p) {
      all.tokenIds.push_back(0);
      all.positions.push_back(static_cast<int32_t>(p));
      all.tokenSeq.push_back(0);
    }
    std::vector<float> k(static_cast<size_t>(positions * kvWidth)), v(k.size());
    for (int64_t l = 0; l < o.layers; ++l) {
      for (float &x : k)
        x = normal(rng);
      for (float &x : v)
        x = normal(rng);
      engine::cpu::AttentionParams params{l, o.heads, o.kvHeads, o.headDim, 0.125f};
      engine::cpu::storeKeysAndValues(k.data(), v.data(), kvWidth, all, params, *cache);
    }
  }
  // Queries: one per layer and decode token (the same for every repeat).
  std::vector<float> q(static_cast<size_t>(o.layers * o.decode * qWidth));
  for (float &x : q)
    x = normal(rng);
  std::vector<float> out(static_cast<size_t>(qWidth));

  // The memory read between layers: a rotating window of a region larger
  // than the last-level cache.
  const size_t evictBytes = static_cast<size_t>(o.evictMb) << 20;
  const size_t regionBytes = std::max<size_t>(size_t{256} << 20, 4 * evictBytes);
  Result<engine::HugePageRegion> region = engine::HugePageRegion::allocate(regionBytes);
  if (!region)
    fail(region.message());
  std::memset(region->data(), 1, regionBytes);
  size_t evictAt = 0;
  float sink = 0;
  // With a pool, its threads read the window between them, as a decode's
  // GEMVs read a layer's weights: the pool's worker then spins between two
  // attention calls as in the engine, where a window read by the caller
  // alone let the worker fall asleep before every call and charged its
  // wake-up to attention (2 threads: 1.24-1.44 ms a token so, 0.91-1.05
  // with the pool reading; docs/performance.md, "Seventeenth round").
  auto evict = [&](engine::ThreadPool *pool = nullptr) {
    if (evictBytes == 0)
      return;
    if (evictAt + evictBytes > regionBytes)
      evictAt = 0;
    const std::byte *window = region->data() + evictAt;
    if (pool == nullptr || pool->numThreads() == 1) {
      sink += sumAvx512(window, evictBytes);
    } else {
      constexpr size_t kPieces = 64;
      const size_t piece = evictBytes / kPieces / 256 * 256;
      float sums[kPieces] = {};
      pool->parallelFor(kPieces, 1, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i)
          sums[i] = sumAvx512(window + i * piece, piece);
      });
      for (float x : sums)
        sink += x;
    }
    evictAt += evictBytes;
  };

  const size_t element = cache->elementSize();
  const double kvBytesPerToken =
      static_cast<double>(engine::decodeKvBytesRead(shape, element, o.prefill, o.decode)) /
      o.decode;
  std::printf("# llmir-attention-bench: %s KV cache, %lld layers, %lld heads on %lld KV "
              "heads, head_dim %lld, decode %d after %d, %.1f MB of KV per token, "
              "%d MB read between layers, best of %d\n",
              o.bf16 ? "bf16" : "f32", static_cast<long long>(o.layers),
              static_cast<long long>(o.heads), static_cast<long long>(o.kvHeads),
              static_cast<long long>(o.headDim), o.decode, o.prefill, kvBytesPerToken / 1e6,
              o.evictMb, o.repeats);
  std::printf("# %7s %12s %12s %10s %10s %10s %10s\n", "threads", "attention", "attention",
              "read", "read", "read-kv", "read-kv");
  std::printf("# %7s %12s %12s %10s %10s %10s %10s\n", "", "(ms/tok)", "(GB/s)", "(ms/tok)",
              "(GB/s)", "(ms/tok)", "(GB/s)");
  const size_t rowBytes = static_cast<size_t>(kvWidth) * element;
  for (const unsigned threads : o.threads) { // positive: Config checks
    engine::ThreadPool pool(threads);
    double attentionBest = 1e30, readBest = 1e30, pairedBest = 1e30;
    for (int r = 0; r < o.repeats; ++r) {
      double attention = 0, read = 0, paired = 0;
      for (int t = 0; t < o.decode; ++t) {
        const int32_t position = static_cast<int32_t>(o.prefill + t);
        engine::StepInput step;
        step.blockTables = {table};
        step.tokenIds = {0};
        step.positions = {position};
        step.tokenSeq = {0};
        for (int64_t l = 0; l < o.layers; ++l) {
          evict(&pool);
          engine::cpu::AttentionParams params{l, o.heads, o.kvHeads, o.headDim, 0.125f};
          const float *ql = q.data() + (l * o.decode + t) * qWidth;
          auto start = Clock::now();
          engine::cpu::attendCached(ql, step, {0, 1}, params, *cache, out.data(), pool);
          attention += seconds(start);
          sink += out[0];
        }
        // The same rows read plainly: a layer's positions are contiguous
        // (blocks in order); keys then values, and both together.
        auto timeReads = [&](auto &&readLayer) {
          double total = 0;
          for (int64_t l = 0; l < o.layers; ++l) {
            evict();
            const auto *keys = static_cast<const std::byte *>(cache->keyData(l, 0, 0));
            const auto *values = static_cast<const std::byte *>(cache->valueData(l, 0, 0));
            const size_t bytes = static_cast<size_t>(position + 1) * rowBytes / 256 * 256;
            auto start = Clock::now();
            sink += readLayer(keys, values, bytes);
            total += seconds(start);
          }
          return total;
        };
        read += timeReads([](const std::byte *keys, const std::byte *values, size_t bytes) {
          return sumAvx512(keys, bytes) + sumAvx512(values, bytes);
        });
        paired += timeReads([](const std::byte *keys, const std::byte *values, size_t bytes) {
          return sumAvx512Pair(keys, values, bytes);
        });
      }
      attentionBest = std::min(attentionBest, attention / o.decode);
      readBest = std::min(readBest, read / o.decode);
      pairedBest = std::min(pairedBest, paired / o.decode);
    }
    std::printf("  %7u %12.3f %12.1f %10.3f %10.1f %10.3f %10.1f\n", threads,
                attentionBest * 1e3, kvBytesPerToken / attentionBest / 1e9, readBest * 1e3,
                kvBytesPerToken / readBest / 1e9, pairedBest * 1e3,
                kvBytesPerToken / pairedBest / 1e9);
    std::fflush(stdout);
  }
  volatile float keep = sink;
  (void)keep;
  return 0;
}
