// llmir-gemv-bench: where a decode token's time goes beyond its weight
// reads, on the CPU engine's own kernels and thread pool, without the
// executor. For a Llama's decode GEMVs (the linear layers of every layer and
// the LM head; SmolLM-135M's shapes by default, as the engine bench's model)
// it times, per token and at each thread count:
//
//   probe       the engine bench's bandwidth probe (1 GiB on huge pages,
//               fresh threads, the faster of 256- and 512-bit sums)
//   sum         the same sum over the weights themselves, by the pool: one
//               parallelFor per token, each thread a contiguous share
//   gemv        the decode's calls: cpu::linearGroup per group of one input
//               (Q K V; O; gate up; down; LM head), as the executor runs them
//   gemv-1      the same GEMVs in one parallelFor per token: each thread
//               runs its share of the rows of every weight with no barrier
//               between weights (numerically a token's work, not its
//               dependencies: it bounds what fewer barriers could give)
//   barrier     an empty parallelFor of one chunk per thread (microseconds)
//
// --read-forms instead times plain reads of the same weights on the calling
// thread in four forms (why a read of the weights fell short of the probe,
// docs/performance.md, "Eleventh round"): 256-bit loads (the probe's loop),
// 512-bit loads (`sum`), 512-bit loads with each line prefetched 1 KiB ahead
// into L2, and 512-bit loads of the first and second half side by side.
//
// Each figure is the best of --repeats; GB/s counts the weight bytes read.
//
//   llmir-gemv-bench [--threads 1,2] [--dtype f32|bf16] [--tokens 32]
//                    [--repeats 5] [--medium] [--share] [--passes N]
//                    [--read-forms]                                     (--help)
#include "BandwidthProbe.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/HugePages.h"
#include "llmir/engine/Tensor.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using namespace llmir;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> threads = {1, 2};
  bool bf16 = false;
  bool medium = false;
  bool share = false;
  bool readForms = false;
  int passes = 0;
  int tokens = 32;
  int repeats = 5;
  int64_t hidden = 576, intermediate = 1536, layers = 30, heads = 9, kvHeads = 3,
          vocab = 49152;
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-gemv-bench: %s\n", why.c_str());
  std::exit(2);
}

/// The flags through net::Config, as every service and bench reads its own.
Options parseOptions(int argc, char **argv) {
  Options o;
  std::string dtype = "f32";
  net::Config config("llmir-gemv-bench");
  config.add("threads", &o.threads, "thread counts, comma-separated");
  config.add("dtype", &dtype, "f32 or bf16 weights");
  config.add("tokens", &o.tokens, "decode tokens timed per repeat");
  config.add("repeats", &o.repeats, "repeats (the best is shown)");
  config.add("passes", &o.passes, "also time the probe's passes one by one (0: off)");
  config.add("share", &o.share, "also time one thread's half of every weight");
  config.add("read-forms", &o.readForms, "time plain reads of the weights in four forms instead");
  config.add("medium", &o.medium, "bf16 activations (vdpbf16ps), as --matmul-precision medium");
  config.loadOrExit(argc, argv);
  if (dtype != "f32" && dtype != "bf16")
    fail("dtype is f32 or bf16");
  o.bf16 = dtype == "bf16";
  if (o.tokens < 1 || o.repeats < 1 || o.passes < 0)
    fail("tokens and repeats must be >= 1, passes >= 0");
  return o;
}

// Rows [lo, hi) of `w` as a weight of their own, writing y + lo.
engine::cpu::LinearOutput rowsOf(const engine::WeightView &w, int64_t lo, int64_t hi,
                                 size_t elementBytes, float *y) {
  engine::WeightView share = w;
  share.data += static_cast<size_t>(lo * w.cols) * elementBytes;
  share.rows = hi - lo;
  return {share, nullptr, y + lo};
}

// The decode's linear groups of one layer (and the LM head), in the
// executor's order; each group shares its input.
struct Group {
  std::vector<engine::WeightView> weights;
};

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

// The total of four vector sums (inlined into each form's target).
template <typename V> __attribute__((always_inline)) inline float total(const V (&a)[4]) {
  const V s = a[0] + a[1] + a[2] + a[3];
  float t = 0;
  for (size_t j = 0; j < sizeof(V) / sizeof(float); ++j)
    t += s[j];
  return t;
}

// Four independent 64-byte sums, as the probe's loop (wider); Prefetch: each
// load's line 1 KiB ahead requested into L2 (a --read-forms form).
template <bool Prefetch>
__attribute__((target("avx512f"))) float sumAvx512(const float *data, size_t n) {
  v16f a[4] = {};
  for (size_t i = 0; i + 64 <= n; i += 64)
    for (int j = 0; j < 4; ++j) {
      if (Prefetch)
        __builtin_prefetch(data + i + 16 * j + 256, 0, 2);
      v16f v;
      std::memcpy(&v, data + i + 16 * j, sizeof v);
      a[j] += v;
    }
  return total(a);
}

// The other read forms of --read-forms, each four independent sums.
__attribute__((target("avx2"))) float sumAvx2(const float *data, size_t n) {
  v8f a[4] = {};
  for (size_t i = 0; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; ++j) {
      v8f v;
      std::memcpy(&v, data + i + 8 * j, sizeof v);
      a[j] += v;
    }
  return total(a);
}
__attribute__((target("avx512f"))) float sumAvx512TwoStreams(const float *data, size_t n) {
  const size_t half = n / 2 / 32 * 32;
  const float *second = data + half;
  v16f a[4] = {};
  for (size_t i = 0; i + 32 <= half; i += 32)
    for (int j = 0; j < 2; ++j) {
      v16f u, v;
      std::memcpy(&u, data + i + 16 * j, sizeof u);
      std::memcpy(&v, second + i + 16 * j, sizeof v);
      a[j] += u;
      a[2 + j] += v;
    }
  return total(a);
}

} // namespace

int main(int argc, char **argv) {
  const Options o = parseOptions(argc, argv);
  const proto::DType dtype = o.bf16 ? proto::BF16 : proto::F32;
  const size_t elem = o.bf16 ? 2 : 4;
  const int64_t H = o.hidden, D = o.hidden / o.heads, I = o.intermediate;
  // Rows of each weight: q k v | o | gate up | down, then the LM head.
  const std::vector<std::vector<int64_t>> layerGroups = {
      {o.heads * D, o.kvHeads * D, o.kvHeads * D}, {H}, {I, I}, {H}};
  const std::vector<std::vector<int64_t>> layerCols = {{H, H, H}, {o.heads * D}, {H, H}, {I}};
  size_t bytes = 0;
  for (int64_t l = 0; l < o.layers; ++l)
    for (size_t g = 0; g < layerGroups.size(); ++g)
      for (size_t m = 0; m < layerGroups[g].size(); ++m)
        bytes += static_cast<size_t>(layerGroups[g][m] * layerCols[g][m]) * elem;
  bytes += static_cast<size_t>(o.vocab * H) * elem;
  // 64-byte aligned weights, back to back, as the backend's arena lays them.
  const size_t padded = bytes + 4096 * 64;
  Result<engine::HugePageRegion> region = engine::HugePageRegion::allocate(padded);
  if (!region) {
    std::fprintf(stderr, "llmir-gemv-bench: %s\n", region.message().c_str());
    return 1;
  }
  // Small values (1/64 as f32 or bf16): sums stay finite.
  if (o.bf16) {
    uint16_t *p = reinterpret_cast<uint16_t *>(region->data());
    std::fill(p, p + padded / 2, uint16_t{0x3c80});
  } else {
    float *p = reinterpret_cast<float *>(region->data());
    std::fill(p, p + padded / 4, 1.0f / 64);
  }
  std::vector<Group> groups;
  size_t used = 0;
  auto take = [&](int64_t rows, int64_t cols) {
    engine::WeightView w{dtype, region->data() + used, rows, cols};
    used += (static_cast<size_t>(rows * cols) * elem + 63) / 64 * 64;
    return w;
  };
  for (int64_t l = 0; l < o.layers; ++l)
    for (size_t g = 0; g < layerGroups.size(); ++g) {
      Group group;
      for (size_t m = 0; m < layerGroups[g].size(); ++m)
        group.weights.push_back(take(layerGroups[g][m], layerCols[g][m]));
      groups.push_back(group);
    }
  groups.push_back({{take(o.vocab, H)}});
  const size_t widest = static_cast<size_t>(std::max({o.vocab, I, H}));
  // 64-byte aligned, as the executor's activations: a vector load of x that
  // splits two cache lines costs the GEMV loops two L1 accesses.
  struct alignas(64) Line {
    float v[16];
  };
  std::vector<Line> xLines((widest + 15) / 16, Line{}), yLines((2 * I + o.vocab + 15) / 16);
  float *const xData = xLines.front().v;
  std::fill(xData, xData + widest, 0.01f);
  float *const yData = yLines.front().v;

  Result<bench::ReadBandwidthProbe> probe =
      bench::ReadBandwidthProbe::create(size_t{1} << 30);
  if (!probe) {
    std::fprintf(stderr, "llmir-gemv-bench: %s\n", probe.message().c_str());
    return 1;
  }
  std::printf("# llmir-gemv-bench: %s weights, %.1f MB per token (%lld layers + LM head), "
              "%zu parallelFor per token in `gemv`, %d tokens, best of %d%s\n",
              o.bf16 ? "bf16" : "f32", static_cast<double>(bytes) / 1e6,
              static_cast<long long>(o.layers), groups.size(), o.tokens, o.repeats,
              o.medium ? ", medium precision" : "");
  if (o.passes > 0) {
    // The probe's passes one by one: the engine bench's ceiling takes the
    // best pass, a decode runs for seconds.
    for (const unsigned threads : o.threads) { // positive: Config checks
      std::vector<double> v;
      for (int i = 0; i < o.passes; ++i)
        v.push_back(probe->measure(threads, 1) / 1e9);
      std::printf("# probe, %u threads, %d passes of 1 GiB (GB/s):", threads, o.passes);
      for (double g : v)
        std::printf(" %.0f", g);
      std::sort(v.begin(), v.end());
      std::printf("\n#   min %.1f median %.1f max %.1f\n", v.front(), v[v.size() / 2],
                  v.back());
    }
    return 0;
  }
  if (o.readForms) {
    // Alternated within each repeat, so each form sees the same minutes.
    const float *all = reinterpret_cast<const float *>(region->data());
    const size_t words = bytes / 4;
    struct Form {
      const char *name;
      float (*sum)(const float *, size_t);
      double best = 0;
    };
    Form forms[] = {{"256-bit loads", sumAvx2},
                    {"512-bit loads", sumAvx512<false>},
                    {"512-bit, prefetch 1 KiB", sumAvx512<true>},
                    {"512-bit, two streams", sumAvx512TwoStreams}};
    volatile float keep = 0;
    double probeBest = 0;
    for (int r = 0; r < o.repeats; ++r) {
      for (Form &f : forms) {
        const auto start = Clock::now();
        for (int t = 0; t < o.tokens; ++t)
          keep = keep + f.sum(all, words);
        f.best = std::max(f.best, static_cast<double>(bytes) * o.tokens / seconds(start));
      }
      probeBest = std::max(probeBest, probe->measure(1, 3));
    }
    std::printf("# one thread, plain reads of the weights (GB/s), best of %d; probe %.1f\n",
                o.repeats, probeBest / 1e9);
    for (const Form &f : forms)
      std::printf("  %-26s %6.1f\n", f.name, f.best / 1e9);
    return 0;
  }
  if (o.share) {
    // One thread reads what thread 0 of a 2-thread pool reads: the
    // contiguous first half of every weight, or the chunks 0, 2, 4, 6 of 8
    // (the pool's claims when both threads take turns), for `--repeats`.
    engine::ThreadPool single(1);
    auto run = [&](bool alternate) {
      double best = 1e30;
      for (int r = 0; r < o.repeats; ++r) {
        auto start = Clock::now();
        for (int t = 0; t < o.tokens; ++t)
          for (const Group &g : groups) {
            std::vector<engine::cpu::LinearOutput> outs;
            size_t offset = 0;
            for (const engine::WeightView &w : g.weights) {
              const int64_t parts = alternate ? 8 : 2;
              for (int64_t c = 0; c < parts; c += 2) {
                outs.push_back(rowsOf(w, w.rows * c / parts, w.rows * (c + 1) / parts, elem,
                                      yData + offset));
              }
              offset += static_cast<size_t>(w.rows);
            }
            engine::cpu::linearGroup(xData, 1, outs, single, o.medium);
          }
        best = std::min(best, seconds(start) / o.tokens);
      }
      return best;
    };
    for (int r = 0; r < 3; ++r) {
      const double contiguous = run(false), alternate = run(true);
      std::printf("# one thread, half of every weight: contiguous %.1f GB/s (%.2f ms), "
                  "chunks 0,2,4,6 of 8 %.1f GB/s (%.2f ms); probe 1 thread %.1f GB/s\n",
                  static_cast<double>(bytes) / 2 / contiguous / 1e9, contiguous * 1e3,
                  static_cast<double>(bytes) / 2 / alternate / 1e9, alternate * 1e3,
                  probe->measure(1, 3) / 1e9);
    }
    return 0;
  }
  std::printf("# %7s %8s %8s %8s %8s %8s %10s %10s\n", "threads", "probe", "sum",
              "gemv", "gemv-1", "gemv", "gemv-1", "barrier");
  std::printf("# %7s %8s %8s %8s %8s %8s %10s %10s\n", "", "(GB/s)", "(GB/s)", "(GB/s)",
              "(GB/s)", "(ms/tok)", "(ms/tok)", "(us)");
  volatile float sink = 0;
  for (const unsigned threads : o.threads) { // positive: Config checks
    engine::ThreadPool pool(threads);
    engine::ThreadPool single(1);
    double probeBest = 0, sumBest = 0, gemvBest = 1e30, oneBest = 1e30, barrierBest = 1e30;
    for (int r = 0; r < o.repeats; ++r) {
      probeBest = std::max(probeBest, probe->measure(threads, 3));

      // The weights summed by the pool, one contiguous share per thread.
      const float *all = reinterpret_cast<const float *>(region->data());
      const size_t words = bytes / 4;
      std::vector<float> partial(threads);
      auto start = Clock::now();
      for (int t = 0; t < o.tokens; ++t)
        pool.parallelFor(threads, 1, [&](size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) {
            const size_t lo = words * i / threads / 64 * 64;
            const size_t hi = i + 1 == threads ? words : words * (i + 1) / threads / 64 * 64;
            partial[i] += sumAvx512<false>(all + lo, hi - lo);
          }
        });
      sumBest = std::max(sumBest, static_cast<double>(bytes) * o.tokens / seconds(start));
      for (float p : partial)
        sink = sink + p;

      start = Clock::now();
      for (int t = 0; t < o.tokens; ++t)
        for (const Group &g : groups) {
          std::vector<engine::cpu::LinearOutput> outs;
          size_t offset = 0;
          for (const engine::WeightView &w : g.weights) {
            outs.push_back({w, nullptr, yData + offset});
            offset += static_cast<size_t>(w.rows);
          }
          engine::cpu::linearGroup(xData, 1, outs, pool, o.medium);
        }
      gemvBest = std::min(gemvBest, seconds(start) / o.tokens);

      start = Clock::now();
      for (int t = 0; t < o.tokens; ++t)
        pool.parallelFor(threads, 1, [&](size_t b, size_t e) {
          for (size_t i = b; i < e; ++i)
            for (const Group &g : groups) {
              std::vector<engine::cpu::LinearOutput> outs;
              size_t offset = 0;
              for (const engine::WeightView &w : g.weights) {
                outs.push_back(rowsOf(w, w.rows * static_cast<int64_t>(i) / threads,
                                      w.rows * static_cast<int64_t>(i + 1) / threads, elem,
                                      yData + offset));
                offset += static_cast<size_t>(w.rows);
              }
              engine::cpu::linearGroup(xData, 1, outs, single, o.medium);
            }
        });
      oneBest = std::min(oneBest, seconds(start) / o.tokens);

      const int calls = 20000;
      start = Clock::now();
      for (int c = 0; c < calls; ++c)
        pool.parallelFor(threads, 1, [&](size_t, size_t) {});
      barrierBest = std::min(barrierBest, seconds(start) / calls);
    }
    const double mb = static_cast<double>(bytes);
    std::printf("  %7u %8.1f %8.1f %8.1f %8.1f %8.2f %10.2f %10.2f\n", threads,
                probeBest / 1e9, sumBest / 1e9, mb / gemvBest / 1e9, mb / oneBest / 1e9,
                gemvBest * 1e3, oneBest * 1e3, barrierBest * 1e6);
    std::fflush(stdout);
  }
  return 0;
}
