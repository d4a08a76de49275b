// llmir-gemm-bench: a prefill's products alone, on the CPU engine's own
// kernels and pool. For one Llama layer's linear groups (Q K V; O; gate up;
// down; SmolLM-135M's shapes by default, as the engine bench's model) at T
// tokens it times cpu::linearGroup per group, as the executor calls it, and
// prints each group's best of --repeats in microseconds and GFLOP/s (2 T N K
// a weight), then the layer's total. The kernels are those the engine picks
// (AMX tiles for bf16 weights where the CPU has them; LLMIR_CPU_ISA forces
// another set, docs/performance.md "CPU engine: how to reproduce").
//
//   llmir-gemm-bench [--threads 1,2] [--dtype bf16|f32] [--tokens 512]
//                    [--repeats 20] [--medium]                        (--help)
#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/Tensor.h"
#include "llmir/engine/ThreadPool.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace llmir;
using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> threads = {1, 2};
  bool bf16 = true;
  bool medium = false;
  int tokens = 512;
  int repeats = 20;
  int64_t hidden = 576, intermediate = 1536, heads = 9, kvHeads = 3;
};

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "llmir-gemm-bench: %s\n", why.c_str());
  std::exit(2);
}

Options parseOptions(int argc, char **argv) {
  Options o;
  std::string dtype = "bf16";
  net::Config config("llmir-gemm-bench");
  config.add("threads", &o.threads, "thread counts, comma-separated");
  config.add("dtype", &dtype, "bf16 or f32 weights");
  config.add("tokens", &o.tokens, "prefill tokens (rows of x)");
  config.add("repeats", &o.repeats, "repeats (the best is shown)");
  config.add("medium", &o.medium, "bf16 activations, as --matmul-precision medium");
  config.loadOrExit(argc, argv);
  if (dtype != "f32" && dtype != "bf16")
    fail("dtype is bf16 or f32");
  o.bf16 = dtype == "bf16";
  if (o.tokens < 1 || o.repeats < 1)
    fail("tokens and repeats must be >= 1");
  return o;
}

} // namespace

int main(int argc, char **argv) {
  const Options o = parseOptions(argc, argv);
  const int64_t H = o.hidden, D = o.hidden / o.heads, I = o.intermediate, T = o.tokens;
  struct Group {
    const char *name;
    int64_t K;
    std::vector<int64_t> rows;
  };
  const std::vector<Group> groups = {{"q k v", H, {o.heads * D, o.kvHeads * D, o.kvHeads * D}},
                                     {"o", o.heads * D, {H}},
                                     {"gate up", H, {I, I}},
                                     {"down", I, {H}}};
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto randoms = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float &f : v)
      f = uniform(rng);
    return v;
  };
  const proto::DType dtype = o.bf16 ? proto::BF16 : proto::F32;
  std::vector<std::vector<engine::WeightTensor>> weights(groups.size());
  std::vector<std::vector<float>> inputs, outputs;
  for (size_t g = 0; g < groups.size(); ++g) {
    inputs.push_back(randoms(T * groups[g].K));
    for (int64_t rows : groups[g].rows) {
      std::vector<float> values = randoms(rows * groups[g].K);
      engine::WeightTensor w;
      w.dtype = dtype;
      w.shape = {rows, groups[g].K};
      w.data.resize(static_cast<size_t>(rows * groups[g].K) * (o.bf16 ? 2 : 4));
      if (o.bf16) {
        auto *bits = reinterpret_cast<uint16_t *>(w.data.data());
        for (size_t i = 0; i < values.size(); ++i)
          bits[i] = engine::f32ToBf16(values[i]);
      } else {
        std::copy(values.begin(), values.end(), reinterpret_cast<float *>(w.data.data()));
      }
      weights[g].push_back(std::move(w));
      outputs.emplace_back(static_cast<size_t>(T * rows));
    }
  }
  std::printf("# llmir-gemm-bench: one layer's prefill products at %lld tokens, %s weights, "
              "%s precision; best of %d\n",
              static_cast<long long>(T), o.bf16 ? "bf16" : "f32",
              o.medium ? "medium" : "highest", o.repeats);
  std::printf("# threads  group       us      GFLOP/s\n");
  for (int threads : o.threads) {
    engine::ThreadPool pool(static_cast<unsigned>(threads));
    double layer = 0;
    size_t out = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      std::vector<engine::cpu::LinearOutput> group;
      double flops = 0;
      for (size_t m = 0; m < weights[g].size(); ++m) {
        group.push_back({engine::WeightView::of(weights[g][m]), nullptr, outputs[out + m].data()});
        flops += 2.0 * static_cast<double>(T * groups[g].rows[m] * groups[g].K);
      }
      out += weights[g].size();
      double best = 1e30;
      for (int r = 0; r < o.repeats; ++r) {
        const auto start = Clock::now();
        engine::cpu::linearGroup(inputs[g].data(), T, group, pool, o.medium);
        best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
      }
      layer += best;
      std::printf("  %7d  %-8s %8.1f %10.1f\n", threads, groups[g].name, best * 1e6,
                  flops / best * 1e-9);
    }
    std::printf("  %7d  %-8s %8.1f\n", threads, "layer", layer * 1e6);
  }
  return 0;
}
