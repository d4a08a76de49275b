// llmir-lt-search: whether the prefill's products could run faster than the
// cuBLASLt algorithm the engine picks. gemmBf16Tuned times the heuristic's
// first eight candidates and keeps the fastest; this times the same eight
// the same way (the fastest of four runs, each after a write over twice the
// L2), then every configuration cuBLASLt accepts for the shape: each
// algorithm id x its tiles x its stages x a cluster shape (auto, 1x1, 2x1,
// 1x2, 2x2), optionally split-K {1, 2, 4} x CTA swizzling {0, 1}; one line a
// shape, nccl-tests' way. Operands are random bf16: constant ones (a memset)
// ran the tensor cores ~15% faster (less switching power, higher clocks) and
// would mislead.
//
//   llmir-lt-search [--split-k]
//
// Shapes (y^T [N, T] = W^T x^T, W [N, K] bf16, x [T, K] bf16; the engine's
// column-major layout): a 2,048-token prefill's Q/K/V (f32 out), O and down
// (f32 out plus the residual as C), gate/up (bf16 out) at the 1.1B and 8B
// bench shapes (scripts/make-bench-model.py).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void check(int status, const char *what) {
  if (status != 0) {
    std::fprintf(stderr, "llmir-lt-search: %s failed (%d)\n", what, status);
    std::exit(1);
  }
}

enum class Output { F32, Residual, Bf16 };

struct Shape {
  const char *name;
  int64_t N, K, T;
  Output output;
};

__global__ void fillRandom(__nv_bfloat16 *p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed; // a hash, not a sequence
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    x *= 3266489917u;
    x ^= x >> 16;
    p[i] = __float2bfloat16((static_cast<float>(x) / 4294967296.0f - 0.5f) * scale);
  }
}

struct Bench {
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  void *workspace = nullptr, *flush = nullptr;
  size_t workspaceBytes = size_t(32) << 20, flushBytes = 0;
};

struct Product {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  void *w = nullptr, *x = nullptr, *residual = nullptr, *y = nullptr;
  float beta = 0.0f;
};

/// The fastest of `runs` timed runs (after one untimed), us; 0 if it failed.
float timeProduct(const Bench &bench, const Product &p, const cublasLtMatmulAlgo_t &algo,
                  int runs) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best = 1e30f;
  const float one = 1.0f;
  for (int r = 0; r <= runs; ++r) {
    cudaMemsetAsync(bench.flush, r, bench.flushBytes, bench.stream);
    cudaEventRecord(start, bench.stream);
    const cublasStatus_t status =
        cublasLtMatmul(bench.lt, p.op, &one, p.w, p.a, p.x, p.b, &p.beta,
                       p.residual ? p.residual : p.y, p.c, p.y, p.c, &algo, bench.workspace,
                       bench.workspaceBytes, bench.stream);
    cudaEventRecord(stop, bench.stream);
    float ms = 0.0f;
    if (status != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(stop) != cudaSuccess ||
        cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) {
      cudaGetLastError();
      best = 0.0f;
      break;
    }
    if (r > 0)
      best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best * 1e3f;
}

template <typename T>
T configOf(const cublasLtMatmulAlgo_t &algo, cublasLtMatmulAlgoConfigAttributes_t attribute) {
  T value{};
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value, sizeof value, &written);
  return value;
}

std::string describe(const cublasLtMatmulAlgo_t &algo) {
  char text[160];
  std::snprintf(text, sizeof text, "id %d tile %u stages %u split-k %d swizzle %u cluster %u",
                configOf<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID),
                configOf<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                configOf<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                configOf<int32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                configOf<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                unsigned(configOf<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)));
  return text;
}

/// A capability array (tile or stages ids); {undefined} where it has none.
std::vector<uint32_t> capabilityIds(const cublasLtMatmulAlgo_t &algo,
                                    cublasLtMatmulAlgoCapAttributes_t attribute) {
  size_t bytes = 0;
  cublasLtMatmulAlgoCapGetAttribute(&algo, attribute, nullptr, 0, &bytes);
  std::vector<uint32_t> ids(std::max<size_t>(1, bytes / sizeof(uint32_t)), 0);
  if (bytes)
    cublasLtMatmulAlgoCapGetAttribute(&algo, attribute, ids.data(), bytes, &bytes);
  return ids;
}

void search(const Bench &bench, const Shape &s, bool splitK) {
  const cudaDataType_t outType = s.output == Output::Bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const size_t outBytes = s.output == Output::Bf16 ? 2 : 4;
  Product p;
  check(cudaMalloc(&p.w, s.N * s.K * 2), "cudaMalloc");
  check(cudaMalloc(&p.x, s.K * s.T * 2), "cudaMalloc");
  check(cudaMalloc(&p.y, s.N * s.T * outBytes), "cudaMalloc");
  fillRandom<<<1024, 256, 0, bench.stream>>>(static_cast<__nv_bfloat16 *>(p.w), s.N * s.K, 17u,
                                             0.04f);
  fillRandom<<<1024, 256, 0, bench.stream>>>(static_cast<__nv_bfloat16 *>(p.x), s.K * s.T, 29u,
                                             2.0f);
  if (s.output == Output::Residual) {
    check(cudaMalloc(&p.residual, s.N * s.T * 4), "cudaMalloc");
    check(cudaMemsetAsync(p.residual, 0, s.N * s.T * 4, bench.stream), "cudaMemset");
    p.beta = 1.0f;
  }
  const cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
  check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &transposed,
                                       sizeof transposed),
        "transa");
  check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof plain),
        "transb");
  check(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, s.K, s.N, s.K), "layout");
  check(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, s.K, s.T, s.K), "layout");
  check(cublasLtMatrixLayoutCreate(&p.c, outType, s.N, s.T, s.N), "layout");
  const double flop = 2.0 * s.N * s.K * s.T;

  // The engine's candidates.
  cublasLtMatmulPreference_t preference;
  check(cublasLtMatmulPreferenceCreate(&preference), "preference");
  const uint64_t workspaceBytes = bench.workspaceBytes;
  check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspaceBytes, sizeof workspaceBytes),
        "workspace");
  cublasLtMatmulHeuristicResult_t results[8] = {};
  int count = 0;
  check(cublasLtMatmulAlgoGetHeuristic(bench.lt, p.op, p.a, p.b, p.c, p.c, preference, 8, results,
                                       &count),
        "heuristic");
  cublasLtMatmulPreferenceDestroy(preference);
  float heuristicBest = 1e30f;
  std::string heuristicWhat;
  for (int i = 0; i < count; ++i)
    if (const float us = timeProduct(bench, p, results[i].algo, 4); us > 0 && us < heuristicBest) {
      heuristicBest = us;
      heuristicWhat = describe(results[i].algo);
    }

  // Every configuration cuBLASLt accepts.
  int ids[256];
  int idCount = 0;
  check(cublasLtMatmulAlgoGetIds(bench.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF,
                                 CUDA_R_16BF, outType, outType, 256, ids, &idCount),
        "algorithm ids");
  float best = 1e30f;
  std::string bestWhat;
  int tried = 0;
  for (int k = 0; k < idCount; ++k) {
    cublasLtMatmulAlgo_t algo;
    if (cublasLtMatmulAlgoInit(bench.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF,
                               CUDA_R_16BF, outType, outType, ids[k],
                               &algo) != CUBLAS_STATUS_SUCCESS)
      continue;
    int32_t splitSupport = 0;
    uint32_t swizzleSupport = 0;
    size_t written = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitSupport,
                                      sizeof splitSupport, &written);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT,
                                      &swizzleSupport, sizeof swizzleSupport, &written);
    const std::vector<int32_t> splits =
        splitK && splitSupport ? std::vector<int32_t>{1, 2, 4} : std::vector<int32_t>{1};
    const uint32_t lastSwizzle = splitK && swizzleSupport ? 1 : 0;
    const uint16_t clusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                 CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1,
                                 CUBLASLT_CLUSTER_SHAPE_2x2x1};
    for (uint32_t tile : capabilityIds(algo, CUBLASLT_ALGO_CAP_TILE_IDS))
      for (uint32_t stages : capabilityIds(algo, CUBLASLT_ALGO_CAP_STAGES_IDS))
        for (int32_t split : splits)
          for (uint32_t swizzle = 0; swizzle <= lastSwizzle; ++swizzle)
            for (uint16_t cluster : clusters) {
              cublasLtMatmulAlgo_t a = algo;
              const uint32_t reduction = split == 1 ? CUBLASLT_REDUCTION_SCHEME_NONE
                                        : s.output == Output::Bf16
                                            ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                            : CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                                   sizeof tile);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages,
                                                   sizeof stages);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split,
                                                   sizeof split);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                                   &reduction, sizeof reduction);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
                                                   &swizzle, sizeof swizzle);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                                   &cluster, sizeof cluster);
              cublasLtMatmulHeuristicResult_t accepted = {};
              if (cublasLtMatmulAlgoCheck(bench.lt, p.op, p.a, p.b, p.c, p.c, &a, &accepted) !=
                      CUBLAS_STATUS_SUCCESS ||
                  accepted.workspaceSize > bench.workspaceBytes)
                continue;
              ++tried;
              // Two runs to sort, four more for a configuration near the best.
              float us = timeProduct(bench, p, a, 2);
              if (us > 0 && us < best * 1.03f)
                us = std::min(us, timeProduct(bench, p, a, 4));
              if (us > 0 && us < best) {
                best = us;
                bestWhat = describe(a);
              }
            }
  }
  std::printf("%-10s heuristic's %d: %7.1f us %4.0f TFLOP/s [%s]\n", s.name, count,
              heuristicBest, flop / heuristicBest * 1e-6, heuristicWhat.c_str());
  std::printf("%-10s all %5d:      %7.1f us %4.0f TFLOP/s [%s] (%d ids)\n", s.name, tried, best,
              flop / best * 1e-6, bestWhat.c_str(), idCount);
  std::fflush(stdout);
  cublasLtMatrixLayoutDestroy(p.a);
  cublasLtMatrixLayoutDestroy(p.b);
  cublasLtMatrixLayoutDestroy(p.c);
  cublasLtMatmulDescDestroy(p.op);
  for (void *buffer : {p.w, p.x, p.y, p.residual})
    cudaFree(buffer);
}

} // namespace

int main(int argc, char **argv) {
  bool splitK = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--split-k") == 0) {
      splitK = true;
    } else {
      std::fprintf(stderr, "usage: llmir-lt-search [--split-k]\n");
      return 2;
    }
  }
  const Shape shapes[] = {
      {"1.1B qkv", 2560, 2048, 2048, Output::F32},
      {"1.1B o", 2048, 2048, 2048, Output::Residual},
      {"1.1B gate/up", 11264, 2048, 2048, Output::Bf16},
      {"1.1B down", 2048, 5632, 2048, Output::Residual},
      {"8B qkv", 6144, 4096, 2048, Output::F32},
      {"8B o", 4096, 4096, 2048, Output::Residual},
      {"8B gate/up", 28672, 4096, 2048, Output::Bf16},
      {"8B down", 4096, 14336, 2048, Output::Residual},
  };
  Bench bench;
  check(cudaStreamCreate(&bench.stream), "stream");
  check(cublasLtCreate(&bench.lt), "cublasLtCreate");
  check(cudaMalloc(&bench.workspace, bench.workspaceBytes), "cudaMalloc");
  int l2 = 0;
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0), "L2 size");
  bench.flushBytes = 2 * static_cast<size_t>(l2);
  check(cudaMalloc(&bench.flush, bench.flushBytes), "cudaMalloc");
  cudaDeviceProp properties{};
  cudaGetDeviceProperties(&properties, 0);
  std::printf("%s, cuBLASLt %zu\n", properties.name, cublasLtGetVersion());
  for (const Shape &s : shapes)
    search(bench, s, splitK);
  return 0;
}
