// llmir-linear-bench: the decode products of a model shape, one LINEAR at a
// time, as a decode step runs them: `--reps` launches recorded in one CUDA
// graph (dependent launches overlapping as in a step's graph), each on its
// own copy of the weights so that none comes from L2. Prints microseconds a
// launch and the weight bytes' rate for every (product, tokens). The
// backend's switches (LLMIR_CUDA_MMA_GEMV=0, LLMIR_CUDA_PDL=0) apply, so two
// runs compare two paths on the same shapes (nccl-tests' way: one harness,
// one line per size).
//
//   llmir-linear-bench [--shape 1b|8b|8b-tp2|8b-tp4] [--tokens 1,2,4,8]
//                      [--reps 200] [--matmul-precision highest|medium]
#include "llmir/engine/CudaKernels.h"
#include "llmir/engine/Tensor.h"
#include "llmir/net/Config.h"
#include "llmir/proto/shard_program.pb.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {
using namespace llmir;
using namespace llmir::engine;

struct Product {
  const char *name;
  int64_t n, k;
};

// Rows (N) and columns (K) of a layer's products; QKV and gate/up fused as
// the backend groups them (one launch each).
std::vector<Product> productsOf(const std::string &shape) {
  if (shape == "1b")
    return {{"qkv", 2560, 2048}, {"o", 2048, 2048}, {"gate+up", 11264, 2048},
            {"down", 2048, 5632}, {"lm_head", 32000, 2048}};
  const int tp = shape == "8b-tp2" ? 2 : shape == "8b-tp4" ? 4 : 1;
  if (shape != "8b" && tp == 1)
    return {};
  return {{"qkv", 6144 / tp, 4096},   {"o", 4096, 4096 / tp},
          {"gate+up", 28672 / tp, 4096}, {"down", 4096, 14336 / tp},
          {"lm_head", 128256 / tp, 4096}};
}

bool check(cudaError_t e, const char *what) {
  if (e == cudaSuccess)
    return true;
  std::fprintf(stderr, "llmir-linear-bench: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}
} // namespace

int main(int argc, char **argv) {
  std::string shape = "1b", precision = "medium";
  std::vector<int> tokens = {1, 2, 4, 8};
  int reps = 200;
  net::Config config("llmir-linear-bench");
  config.add("shape", &shape, "1b, 8b, 8b-tp2 or 8b-tp4 (a rank's products at that TP)");
  config.add("tokens", &tokens, "rows of x, comma-separated");
  config.add("reps", &reps, "launches recorded in one graph");
  config.add("matmul-precision", &precision, "highest or medium");
  config.loadOrExit(argc, argv);
  const std::vector<Product> products = productsOf(shape);
  if (products.empty() || reps < 1 || (precision != "highest" && precision != "medium")) {
    std::fprintf(stderr, "usage: llmir-linear-bench [--shape 1b|8b|8b-tp2|8b-tp4] "
                         "[--tokens 1,2,4,8] [--reps N] [--matmul-precision highest|medium]\n");
    return 2;
  }
  Result<cuda::Context> context = cuda::Context::create();
  if (!context) {
    std::fprintf(stderr, "llmir-linear-bench: %s\n", context.message().c_str());
    return 1;
  }
  context->setBf16Products(precision == "medium");
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("# llmir-linear-bench: %s, shape %s, %s precision, %d launches a graph\n", prop.name,
              shape.c_str(), precision.c_str(), reps);
  std::printf("# product  N  K  tokens  us/launch  weight GB/s\n");
  std::mt19937 rng(7);
  for (const Product &p : products) {
    const size_t bytes = static_cast<size_t>(p.n * p.k) * 2;
    // Enough copies that a graph's weights (>= 512 MiB) never sit in L2.
    const int copies = static_cast<int>((512ull << 20) / bytes + 1);
    std::vector<uint16_t> host(static_cast<size_t>(p.n * p.k));
    std::uniform_int_distribution<int> bits(0x3c00, 0x3d00); // bf16 of ~0.008-0.03
    for (uint16_t &b : host)
      b = static_cast<uint16_t>(bits(rng));
    std::vector<void *> weights(static_cast<size_t>(copies), nullptr);
    bool ok = true;
    for (void *&w : weights)
      ok = ok && check(cudaMalloc(&w, bytes), "allocating weights") &&
           check(cudaMemcpy(w, host.data(), bytes, cudaMemcpyHostToDevice), "uploading weights");
    for (const int64_t T : std::vector<int64_t>(tokens.begin(), tokens.end())) {
      float *x = nullptr, *y = nullptr;
      ok = ok && check(cudaMalloc(&x, static_cast<size_t>(T * p.k) * sizeof(float)), "x") &&
           check(cudaMemset(x, 0, static_cast<size_t>(T * p.k) * sizeof(float)), "x") &&
           check(cudaMalloc(&y, static_cast<size_t>(T * p.n) * sizeof(float)), "y");
      auto launch = [&](int i) {
        WeightView w;
        w.dtype = proto::BF16;
        w.data = static_cast<const std::byte *>(weights[static_cast<size_t>(i % copies)]);
        w.rows = p.n;
        w.cols = p.k;
        return cuda::linear(*context, x, T, w, nullptr, y);
      };
      // Eagerly once (first launches set kernel attributes), then recorded.
      Status first = ok ? launch(0) : Status::error("setup failed");
      if (!first || !context->synchronize()) {
        std::fprintf(stderr, "llmir-linear-bench: %s T=%lld: %s\n", p.name,
                     static_cast<long long>(T), first.message().c_str());
        return 1;
      }
      cudaStream_t stream = context->stream();
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      ok = check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
      for (int i = 0; ok && i < reps; ++i)
        ok = launch(i).isOk();
      ok = check(cudaStreamEndCapture(stream, &graph), "end capture") && ok &&
           check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
      cudaEvent_t start = nullptr, stop = nullptr;
      cudaEventCreate(&start);
      cudaEventCreate(&stop);
      float best = 1e30f;
      for (int round = 0; ok && round < 5; ++round) {
        cudaEventRecord(start, stream);
        ok = check(cudaGraphLaunch(exec, stream), "graph launch");
        cudaEventRecord(stop, stream);
        ok = ok && check(cudaEventSynchronize(stop), "graph run");
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, start, stop);
        best = ms < best ? ms : best;
      }
      if (!ok)
        return 1;
      const double us = best * 1000.0 / reps;
      std::printf("%-8s %6lld %6lld %3lld %9.2f %8.0f\n", p.name, static_cast<long long>(p.n),
                  static_cast<long long>(p.k), static_cast<long long>(T), us,
                  static_cast<double>(bytes) / (us * 1e3));
      std::fflush(stdout);
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      cudaFree(x);
      cudaFree(y);
    }
    for (void *w : weights)
      cudaFree(w);
  }
  return 0;
}
