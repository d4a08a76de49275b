// Host side of the CUDA kernels: argument checks, dtype dispatch, cuBLAS
// for LINEAR, and cudaError_t/cublasStatus_t turned into Status.
#include "CudnnAttention.h"
#include "Launch.h"

#include "llmir/engine/CudaKernels.h"
#include "llmir/proto/shard_program.pb.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace llmir::engine::cuda {

struct Context::State {
  cudaStream_t stream = nullptr;
  /// f32 weights: SGEMM in pedantic f32 (no TF32), to match the CPU.
  cublasHandle_t cublas = nullptr;
  /// bf16 weights: tensor-core GEMMs.
  cublasHandle_t cublas16 = nullptr;
  /// cuBLAS' workspace, given up front: a GEMM captured in a CUDA graph
  /// must not allocate.
  void *workspace = nullptr;
  /// The bf16 halves of x and the [2T, N] f32 product (linear's
  /// tensor-core path); grows, never shrinks.
  void *split = nullptr;
  size_t splitBytes = 0;
  /// Medium matmul precision: x rounded to bf16 for the tensor-core
  /// products (one half, no lo).
  bool bf16Products = false;
  /// cuBLASLt for a prefill's products (gemmBf16Tuned), created at the
  /// first; the algorithm timed fastest per (N, K, bucket of token counts,
  /// kind), and per (N, K, T, kind) the algorithm a product of that very
  /// shape uses (its bucket's, checked once). The kind: 0 plain, 1 adding
  /// the residual, 2 a bf16 product.
  using ProductKey = std::tuple<int64_t, int64_t, int64_t, int>;
  cublasLtHandle_t lt = nullptr;
  std::map<ProductKey, cublasLtMatmulAlgo_t> tunedAlgos, shapeAlgos;
  /// How many times candidates were timed (Context::productTunings).
  int64_t tunings = 0;
  /// A fresh prompt's attention on cuDNN (cudnnAttention), loaded at the
  /// first call.
  std::unique_ptr<CudnnAttention> cudnn;

  ~State() {
    if (lt)
      cublasLtDestroy(lt);
    if (cublas)
      cublasDestroy(cublas);
    if (cublas16)
      cublasDestroy(cublas16);
    cudaFree(workspace);
    cudaFree(split);
    if (stream)
      cudaStreamDestroy(stream);
  }
};

namespace {

constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

Status cudaStatus(int error, const char *what) {
  if (error == cudaSuccess)
    return Status::ok();
  return Status::error(std::string("CUDA ") + what + ": " +
                       cudaGetErrorString(static_cast<cudaError_t>(error)));
}

Status cublasStatus(cublasStatus_t status, const char *what) {
  if (status == CUBLAS_STATUS_SUCCESS)
    return Status::ok();
  return Status::error(std::string("cuBLAS ") + what + ": " +
                       cublasGetStatusString(status));
}

Result<detail::Storage> storageOf(const WeightView &w, const char *op) {
  switch (w.dtype) {
  case proto::F32:
    return detail::Storage::F32;
  case proto::F16:
    return detail::Storage::F16;
  case proto::BF16:
    return detail::Storage::BF16;
  default:
    return Status::error(std::string("CUDA ") + op + ": weight dtype " +
                         dtypeName(w.dtype) + ", expected F32, F16 or BF16");
  }
}

Status createHandle(cublasHandle_t &handle, cudaStream_t stream, void *workspace,
                    cublasMath_t mode) {
  LLMIR_RETURN_IF_ERROR(cublasStatus(cublasCreate(&handle), "create"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(cublasSetStream(handle, stream), "set stream"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasSetWorkspace(handle, workspace, kCublasWorkspaceBytes), "set workspace"));
  return cublasStatus(cublasSetMathMode(handle, mode), "math mode");
}

/// cuBLAS for bf16 weights from this many tokens on (8: measured on an H100,
/// batch-8 decode 1.5x faster than the GEMV; LLMIR_CUDA_GEMM_MIN_TOKENS
/// overrides it, for measuring); fewer go through the GEMV, which reads the
/// weights once for all of them. 2 to 16 tokens now take the tensor-core
/// batched GEMV first (takesMmaGemv).
int64_t tensorCoreMinTokens() {
  static const int64_t tokens = detail::countFromEnv("LLMIR_CUDA_GEMM_MIN_TOKENS", 8);
  return tokens;
}

/// Whether a product of 2 to 16 tokens with bf16 weights runs on the tensor
/// cores' batched GEMV (linearMma; LLMIR_CUDA_MMA_GEMV=0 for measuring). On
/// an H200, 1.1B shape, medium precision, against the GEMV (2, 4 tokens) and
/// cuBLAS (8): batch 2 1.64 -> 1.61 ms a step, batch 4 2.40 -> 1.63, batch 8
/// 2.10 -> 1.71 (1.40 since its precision became a template argument); 8B
/// batch 4 14.15 -> 7.00, batch 8 6.53-6.68 -> 5.97-6.00 (docs/performance.md).
/// Up to 16 tokens: the mma's rows 8-15 carry tokens 8-15 on the same weight
/// loads, where cuBLAS took 9-16 (1.1B, medium, ms a step: batch 12
/// 2.16-2.17 -> 1.63-1.70, batch 16 2.07-2.16 -> 1.74-1.82);
/// LLMIR_CUDA_MMA_MAX_TOKENS=8 keeps 9-16 on cuBLAS.
bool takesMmaGemv(detail::Storage storage, int64_t T, int64_t K) {
  static const bool enabled = !detail::switchedOff("LLMIR_CUDA_MMA_GEMV");
  static const int64_t maxTokens = [] {
    const char *text = std::getenv("LLMIR_CUDA_MMA_MAX_TOKENS");
    return text && std::string(text) == "8" ? int64_t(8) : int64_t(16);
  }();
  return enabled && storage == detail::Storage::BF16 && T >= 2 && T <= maxTokens && K % 8 == 0;
}

/// The segments' products on the batched GEMV (linearMma) where
/// takesMmaGemv says `mma`, else on the GEMV (linear16).
Status launchGemv(const Context::State &state, bool mma, const float *x, int64_t T, int64_t K,
                  detail::Storage storage, const detail::LinearSegments &segments,
                  const char *what) {
  // A producer that wrote only x's bf16 halves (no x) feeds cuBLAS products,
  // never these.
  if (!x && T > 0)
    return Status::error(std::string("CUDA ") + what + ": x was not written (its halves only)");
  return cudaStatus(mma ? detail::linearMma(state.stream, x, T, K, !state.bf16Products, segments)
                        : detail::linear16(state.stream, x, T, K, storage, segments),
                    what);
}

/// Whether a product with weights stored as `storage` over T tokens runs as
/// the GEMV (linear16) rather than on cuBLAS.
bool takesGemv(detail::Storage storage, int64_t T) {
  return storage == detail::Storage::F16 ||
         (storage == detail::Storage::BF16 && T < tensorCoreMinTokens());
}

} // namespace

namespace detail {
bool switchedOff(const char *name) {
  const char *text = std::getenv(name);
  return text && std::string(text) == "0";
}

int64_t countFromEnv(const char *name, int64_t fallback) {
  const char *text = std::getenv(name);
  const long long value = text ? std::atoll(text) : 0;
  return value > 0 ? static_cast<int64_t>(value) : fallback;
}

namespace {
/// Compute capability 9.0 or newer on the current device (dependent launch,
/// thread-block clusters).
bool hopperOrNewer() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError(); // not sticky: clear it
    return false;
  }
  return major >= 9;
}
} // namespace

bool dependentLaunchEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_PDL") && hopperOrNewer();
  return enabled;
}

bool groupDecodeEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_GROUP_ATTENTION");
  return enabled;
}

int64_t mmaDecodeRows() {
  static const int64_t rows = countFromEnv("LLMIR_CUDA_MMA_DECODE_ROWS", 16);
  return rows;
}

bool fusedRopeEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_FUSED_ROPE");
  return enabled;
}

bool prefillRopeEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_PREFILL_ROPE");
  return enabled;
}

bool splitIntoProducersEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_SPLIT_IN_PRODUCERS");
  return enabled;
}

bool loopedNormConsumers() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_LOOPED_CONSUMERS");
  return enabled;
}

bool warpDecodeEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_WARP_DECODE");
  return enabled;
}

bool clusterMergeEnabled() {
  static const bool enabled = !switchedOff("LLMIR_CUDA_CLUSTER_MERGE") && hopperOrNewer();
  return enabled;
}
} // namespace detail

Context::Context(std::unique_ptr<State> state) : state_(std::move(state)) {}
Context::Context(Context &&) noexcept = default;
Context &Context::operator=(Context &&) noexcept = default;
Context::~Context() = default;

Result<Context> Context::create() {
  int devices = 0;
  LLMIR_RETURN_IF_ERROR(
      cudaStatus(cudaGetDeviceCount(&devices), "device count"));
  if (devices == 0)
    return Status::error("CUDA: no device");
  auto state = std::make_unique<State>();
  // A blocking stream: it orders itself with the legacy default stream, so
  // synchronous copies elsewhere (weight uploads, tests) stay ordered.
  LLMIR_RETURN_IF_ERROR(cudaStatus(cudaStreamCreate(&state->stream), "stream"));
  LLMIR_RETURN_IF_ERROR(cudaStatus(cudaMalloc(&state->workspace, 2 * kCublasWorkspaceBytes),
                                   "cuBLAS workspace"));
  LLMIR_RETURN_IF_ERROR(createHandle(state->cublas, state->stream, state->workspace,
                                     CUBLAS_PEDANTIC_MATH));
  LLMIR_RETURN_IF_ERROR(createHandle(state->cublas16, state->stream,
                                     static_cast<char *>(state->workspace) +
                                         kCublasWorkspaceBytes,
                                     CUBLAS_DEFAULT_MATH));
  return Context(std::move(state));
}

Stream Context::stream() const { return state_->stream; }

const void *Context::scratchAddress() const { return state_->split; }

Status Context::synchronize() {
  return cudaStatus(cudaStreamSynchronize(state_->stream), "synchronize");
}

void Context::setBf16Products(bool bf16) { state_->bf16Products = bf16; }

int64_t Context::productTunings() const { return state_->tunings; }

namespace {

/// From this many tokens the two halves' products are two GEMMs summing
/// into y (beta = 1) instead of one over 2T columns and a join: the GEMMs are
/// compute-bound there, and the join's passes over [2T, N] floats cost more
/// (a 2,048-token prefill: 4.2 of 30 ms). Below it the weights' reads
/// dominate and one GEMM reads them once (at 128 tokens two GEMMs made
/// batch-128 decode 11% slower on an H100).
constexpr int64_t kTwoGemmTokens = 512;

Status gemmBf16(Context::State &state, const void *xHalf, int64_t T, const WeightView &w,
                float beta, float *y) {
  // Column-major: y^T [N, T] = W [N, K] (stored as K x N) ^T * x^T [K, T].
  const float one = 1.0f;
  const int64_t N = w.rows, K = w.cols;
  return cublasStatus(
      cublasGemmEx(state.cublas16, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
                   static_cast<int>(T), static_cast<int>(K), &one, w.data, CUDA_R_16BF,
                   static_cast<int>(K), xHalf, CUDA_R_16BF, static_cast<int>(K), &beta, y,
                   CUDA_R_32F, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "bf16 gemm");
}

/// The bucket of token counts whose products share a tuned algorithm: the
/// power of two at or above T (T = 600 and 1,000 share 1,024's).
int64_t tokenBucket(int64_t T) {
  int64_t bucket = 1;
  while (bucket < T)
    bucket *= 2;
  return bucket;
}

/// y = W x (+ residual, f32 [T, N], which y may not alias) for bf16 x
/// (xHalf, [T, K]) on cuBLASLt: with the residual as C and y as D the
/// residual ADD after a product costs no pass of its own (cublasGemmEx has
/// C = D). The heuristic's first algorithm is not the fastest for these
/// shapes: for C != D it was slower than cublasGemmEx's kernel plus the
/// norm's extra pass (an H200, 1.1B prefill +1.8%), while its third was 22%
/// faster than its first. So at a shape's first product outside a graph
/// capture the candidates are timed on the call's own operands (every one
/// writes the same y: D = W x + C with C untouched) and the fastest kept;
/// in a capture the first is used and nothing kept.
///
/// The choice is kept per bucket of token counts (tokenBucket), as
/// TensorRT-LLM's GEMM profiler keeps its tactics per power-of-two M: a
/// server's prompts have as many lengths as prompts, and timing eight
/// candidates five times for each new length would put milliseconds into
/// the first token of almost every long prompt. A product checks that its
/// bucket's algorithm supports its own shape (cublasLtMatmulAlgoCheck) and
/// takes the heuristic's first where it does not.
///
/// With bf16Out, y is bf16 [T, N] (no residual): a product only a kernel
/// that rounds what it reads anyway takes (medium precision's gate and up).
Status gemmBf16Tuned(Context::State &state, const void *xHalf, int64_t T, const WeightView &w,
                     const float *residual, void *y, bool bf16Out = false) {
  if (residual && bf16Out)
    return Status::error("cuBLASLt product: a residual needs an f32 output");
  const int64_t N = w.rows, K = w.cols;
  if (!state.lt)
    LLMIR_RETURN_IF_ERROR(cublasStatus(cublasLtCreate(&state.lt), "Lt create"));
  struct Descriptors {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t preference = nullptr;
    ~Descriptors() {
      if (preference)
        cublasLtMatmulPreferenceDestroy(preference);
      for (cublasLtMatrixLayout_t l : {a, b, c})
        if (l)
          cublasLtMatrixLayoutDestroy(l);
      if (op)
        cublasLtMatmulDescDestroy(op);
    }
  } d;
  // Column-major, as gemmBf16: y^T [N, T] = W [K x N stored] ^T * x^T [K, T] + residual^T.
  const cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "Lt matmul desc"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &transposed,
                                     sizeof transposed),
      "Lt transa"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof plain),
      "Lt transb"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, static_cast<uint64_t>(K),
                                 static_cast<uint64_t>(N), K),
      "Lt layout"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, static_cast<uint64_t>(K),
                                 static_cast<uint64_t>(T), K),
      "Lt layout"));
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasLtMatrixLayoutCreate(&d.c, bf16Out ? CUDA_R_16BF : CUDA_R_32F,
                                 static_cast<uint64_t>(N), static_cast<uint64_t>(T), N),
      "Lt layout"));
  const float one = 1.0f, beta = residual ? 1.0f : 0.0f;
  // The bf16 handle's half of the workspace: the products are stream-ordered.
  void *workspace = static_cast<char *>(state.workspace) + kCublasWorkspaceBytes;
  const auto multiply = [&](const cublasLtMatmulAlgo_t &algo) {
    return cublasLtMatmul(state.lt, d.op, &one, w.data, d.a, xHalf, d.b, &beta,
                          residual ? residual : y, d.c, y, d.c, &algo, workspace,
                          kCublasWorkspaceBytes, state.stream);
  };
  const int kind = residual ? 1 : bf16Out ? 2 : 0;
  const Context::State::ProductKey exactKey{N, K, T, kind}, bucketKey{N, K, tokenBucket(T), kind};
  if (auto exact = state.shapeAlgos.find(exactKey); exact != state.shapeAlgos.end())
    return cublasStatus(multiply(exact->second), "Lt matmul");
  // Each length's check once: the map is a cache, emptied past a bound (a
  // server sees as many lengths as the context allows).
  if (state.shapeAlgos.size() >= 4096)
    state.shapeAlgos.clear();
  auto found = state.tunedAlgos.find(bucketKey);
  if (found != state.tunedAlgos.end()) {
    cublasLtMatmulHeuristicResult_t check = {};
    if (cublasLtMatmulAlgoCheck(state.lt, d.op, d.a, d.b, d.c, d.c, &found->second, &check) ==
            CUBLAS_STATUS_SUCCESS &&
        check.workspaceSize <= kCublasWorkspaceBytes) {
      state.shapeAlgos.emplace(exactKey, found->second);
      return cublasStatus(multiply(found->second), "Lt matmul");
    }
  }
  {
    LLMIR_RETURN_IF_ERROR(
        cublasStatus(cublasLtMatmulPreferenceCreate(&d.preference), "Lt preference"));
    const uint64_t workspaceBytes = kCublasWorkspaceBytes;
    LLMIR_RETURN_IF_ERROR(cublasStatus(
        cublasLtMatmulPreferenceSetAttribute(d.preference,
                                             CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspaceBytes, sizeof workspaceBytes),
        "Lt workspace"));
    constexpr int kCandidates = 8;
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int count = 0;
    LLMIR_RETURN_IF_ERROR(cublasStatus(
        cublasLtMatmulAlgoGetHeuristic(state.lt, d.op, d.a, d.b, d.c, d.c, d.preference,
                                       kCandidates, results, &count),
        "Lt heuristic"));
    if (count < 1)
      return Status::error("cuBLASLt: no algorithm for this bf16 product");
    int best = 0;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(state.stream, &capture) != cudaSuccess ||
        capture != cudaStreamCaptureStatusNone)
      return cublasStatus(multiply(results[0].algo), "Lt matmul (in a capture)");
    if (found != state.tunedAlgos.end()) { // the bucket's algorithm does not fit this shape
      state.shapeAlgos.emplace(exactKey, results[0].algo);
      return cublasStatus(multiply(results[0].algo), "Lt matmul");
    }
    if (count > 1) {
      cudaEvent_t start = nullptr, stop = nullptr;
      LLMIR_RETURN_IF_ERROR(cudaStatus(cudaEventCreate(&start), "event"));
      LLMIR_RETURN_IF_ERROR(cudaStatus(cudaEventCreate(&stop), "event"));
      // The fastest of four timed runs a candidate, the candidates in turn
      // within each round, each run after a write over twice the L2: its
      // operands come from memory, as in a prefill, and the GPU does not
      // idle between runs. Timed back to back after a synchronisation each,
      // the runs read L2-resident operands at clocks that had dropped, and
      // the choice for a 1.1B prefill's Q/K/V product changed from process
      // to process (33 or 38 us); with the writes the same algorithms won
      // every time (docs/performance.md, twenty-seventh session).
      // LLMIR_CUDA_TUNING_COLD=0 leaves the writes out (measuring).
      constexpr int kTimingRounds = 5;
      static const bool verbose = std::getenv("LLMIR_CUDA_TUNING_VERBOSE") != nullptr;
      static const bool cold = !detail::switchedOff("LLMIR_CUDA_TUNING_COLD");
      void *flush = nullptr;
      size_t flushBytes = 0;
      int l2 = 0, device = 0;
      if (cold && cudaGetDevice(&device) == cudaSuccess &&
          cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device) == cudaSuccess && l2 > 0 &&
          cudaMalloc(&flush, 2 * static_cast<size_t>(l2)) == cudaSuccess)
        flushBytes = 2 * static_cast<size_t>(l2);
      else
        flush = nullptr; // timed without the writes
      std::vector<float> ms(static_cast<size_t>(count), 1e30f);
      std::vector<bool> failed(static_cast<size_t>(count), false);
      for (int round = 0; round < kTimingRounds; ++round) // the first warms up
        for (int i = 0; i < count; ++i) {
          if (failed[i])
            continue;
          if (flush)
            cudaMemsetAsync(flush, round + i, flushBytes, state.stream);
          cudaEventRecord(start, state.stream);
          const cublasStatus_t status = multiply(results[i].algo);
          cudaEventRecord(stop, state.stream);
          float elapsed = 0.0f;
          if (status != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(stop) != cudaSuccess ||
              cudaEventElapsedTime(&elapsed, start, stop) != cudaSuccess) {
            failed[i] = true;
            continue;
          }
          if (round > 0)
            ms[i] = std::min(ms[i], elapsed);
        }
      float fastest = 1e30f;
      for (int i = 0; i < count; ++i) {
        if (verbose)
          std::fprintf(stderr, "%s product N=%lld K=%lld T=%lld: algorithm %d %.1f us\n",
                       residual ? "residual" : bf16Out ? "bf16" : "plain",
                       static_cast<long long>(N), static_cast<long long>(K),
                       static_cast<long long>(T), i, 1e3 * ms[i]);
        if (ms[i] < fastest) {
          fastest = ms[i];
          best = i;
        }
      }
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      cudaFree(flush); // after the synchronisations above: nothing in flight uses it
      cudaGetLastError(); // a candidate that failed is not chosen; not sticky
    }
    ++state.tunings;
    found = state.tunedAlgos.emplace(bucketKey, results[best].algo).first;
    state.shapeAlgos.emplace(exactKey, results[best].algo);
  }
  return cublasStatus(multiply(found->second), "Lt matmul");
}

/// Whether a group's weights lie side by side in one allocation, in the
/// group's order (CudaBackend packs each group's bf16 weights so).
bool sideBySide(std::span<const LinearOutput> outputs) {
  for (size_t i = 1; i < outputs.size(); ++i) {
    const WeightView &before = outputs[i - 1].w;
    if (reinterpret_cast<const char *>(outputs[i].w.data) !=
        reinterpret_cast<const char *>(before.data) + before.rows * before.cols * 2)
      return false;
  }
  return outputs.size() > 1;
}

/// Whether splitGemms multiplies the group as one GEMM and a scatterProduct:
/// weights side by side, below the two-GEMM regime.
bool oneGemm(int64_t T, std::span<const LinearOutput> outputs) {
  return T < kTwoGemmTokens && sideBySide(outputs);
}

/// Where splitGemms puts x's halves and the product in the scratch for
/// `outputs` over T tokens: [hi | lo] (lo at highest precision: 2T columns
/// for the joined GEMM), then the f32 product.
struct SplitLayout {
  size_t halfBytes, halvesBytes, need;
  int64_t totalN; // the group's rows: the packed GEMM's
  bool both, packed, join;
};

SplitLayout splitLayout(const Context::State &state, int64_t T,
                        std::span<const LinearOutput> outputs) {
  const int64_t K = outputs.front().w.cols;
  int64_t maxN = 0, totalN = 0;
  for (const LinearOutput &o : outputs) {
    maxN = std::max(maxN, o.w.rows);
    totalN += o.w.rows;
  }
  SplitLayout l{};
  l.totalN = totalN;
  l.both = !state.bf16Products;
  l.packed = oneGemm(T, outputs);
  l.join = l.both && T < kTwoGemmTokens;
  l.halfBytes = static_cast<size_t>(T * K) * 2;
  l.halvesBytes = (2 * l.halfBytes + 255) / 256 * 256;
  const int64_t productColumns = l.packed ? totalN : l.join ? maxN : 0;
  l.need = l.halvesBytes +
           static_cast<size_t>((l.both ? 2 : 1) * T * productColumns) * sizeof(float);
  return l;
}

/// The scratch grown to `need` bytes (a synchronisation and a new address:
/// a captured graph notices through Context::scratchAddress).
Status reserveSplit(Context::State &state, size_t need) {
  if (need <= state.splitBytes)
    return Status::ok();
  LLMIR_RETURN_IF_ERROR(cudaStatus(cudaStreamSynchronize(state.stream), "synchronize"));
  cudaFree(state.split);
  state.split = nullptr;
  state.splitBytes = 0;
  LLMIR_RETURN_IF_ERROR(cudaStatus(cudaMalloc(&state.split, need), "linear scratch"));
  state.splitBytes = need;
  return Status::ok();
}

/// Where x's halves lie in the scratch laid out as l.
SplitInput halvesIn(const Context::State &state, const SplitLayout &l) {
  char *hi = static_cast<char *>(state.split);
  return SplitInput{hi, l.both ? hi + l.halfBytes : nullptr};
}

/// x's halves in the scratch laid out as l, split from x [T, K] there unless
/// xSplit (its producer wrote them, splitInputFor). A scratch that must
/// grow loses the halves: x is split again then, if its producer wrote it.
Result<SplitInput> halvesOfX(Context::State &state, const float *x, int64_t T, int64_t K,
                             const SplitLayout &l, bool xSplit) {
  xSplit = xSplit && l.need <= state.splitBytes;
  if (!x && !xSplit)
    return Status::error("CUDA linear: x was not written and its halves are lost (the scratch "
                         "grew between its producer and the product)");
  LLMIR_RETURN_IF_ERROR(reserveSplit(state, l.need));
  const SplitInput halves = halvesIn(state, l);
  if (!xSplit)
    LLMIR_RETURN_IF_ERROR(cudaStatus(
        detail::splitBf16(state.stream, x, T * K, halves.hi, halves.lo), "split"));
  return halves;
}

/// x [T, K] f32 times bf16 weights [N, K] on tensor cores, for every output
/// of a group (x split once). Highest precision: x as two bf16 halves, hi +
/// lo (see Matmul.cu), so the result stays within f32 rounding; medium: x
/// rounded to bf16 (hi only), as bf16 models compute. A group whose weights
/// lie side by side below kTwoGemmTokens is one GEMM and one scatterProduct
/// (at 32 tokens, Q, K and V were three cuBLAS launches, K's and V's 6.6 us
/// each for 1 MB of weights); with swigluY (gate and up) the scatter writes
/// silu(gate) * up there instead of the two outputs.
/// With xSplit, x's halves are already in the scratch (splitInputFor, written
/// by x's producer) and are not split again.
Status splitGemms(Context::State &state, const float *x, int64_t T,
                  std::span<const LinearOutput> outputs, float *swigluY = nullptr,
                  bool xSplit = false, const float *residual = nullptr) {
  const int64_t K = outputs.front().w.cols;
  const SplitLayout l = splitLayout(state, T, outputs);
  const bool both = l.both, packed = l.packed, join = l.join;
  if (residual && (packed || join || outputs.size() != 1))
    return Status::error("CUDA linear adding the residual: one product of at least " +
                         std::to_string(kTwoGemmTokens) + " tokens");
  Result<SplitInput> halves = halvesOfX(state, x, T, K, l, xSplit);
  LLMIR_RETURN_IF_ERROR(halves.status());
  // [hi; lo]: 2T columns for the joined GEMM.
  char *hi = static_cast<char *>(halves->hi), *lo = static_cast<char *>(halves->lo);
  float *product = reinterpret_cast<float *>(hi + l.halvesBytes);
  if (packed) {
    WeightView all = outputs.front().w;
    all.rows = l.totalN;
    LLMIR_RETURN_IF_ERROR(gemmBf16(state, hi, both ? 2 * T : T, all, 0.0f, product));
    detail::LinearSegments segments{};
    for (const LinearOutput &o : outputs)
      segments.segment[segments.count++] = {o.w.data, o.w.rows, o.bias, o.y};
    if (swigluY) {
      segments.segment[0].y = swigluY;
      segments.pairedSwiglu = true;
    }
    return cudaStatus(detail::scatterProduct(state.stream, product, T, both, segments),
                      "scatter");
  }
  for (const LinearOutput &o : outputs) {
    const int64_t N = o.w.rows;
    if (join) {
      LLMIR_RETURN_IF_ERROR(gemmBf16(state, hi, 2 * T, o.w, 0.0f, product));
      LLMIR_RETURN_IF_ERROR(
          cudaStatus(detail::joinHalves(state.stream, product, T, N, o.bias, o.y), "join"));
      continue;
    }
    // From kTwoGemmTokens (a prefill's products: no decode graph captures
    // them) on cuBLASLt with the timed algorithm; LLMIR_CUDA_TUNED_GEMMS=0
    // keeps cublasGemmEx for the products without a residual (measuring).
    static const bool tuned = !detail::switchedOff("LLMIR_CUDA_TUNED_GEMMS");
    LLMIR_RETURN_IF_ERROR(residual || (tuned && T >= kTwoGemmTokens)
                              ? gemmBf16Tuned(state, hi, T, o.w, residual, o.y)
                              : gemmBf16(state, hi, T, o.w, 0.0f, o.y));
    if (both)
      LLMIR_RETURN_IF_ERROR(gemmBf16(state, lo, T, o.w, 1.0f, o.y));
    if (o.bias)
      LLMIR_RETURN_IF_ERROR(
          cudaStatus(detail::addBias(state.stream, o.y, o.bias, T, N), "bias"));
  }
  return Status::ok();
}

/// Whether linearGroup / linearSwiglu multiply x on cuBLAS through
/// splitGemms (bf16 weights, more tokens than the GEMVs take).
bool takesSplitGemms(const WeightView &w, int64_t T) {
  Result<detail::Storage> storage = storageOf(w, "linear");
  return storage.isOk() && *storage == detail::Storage::BF16 &&
         !takesMmaGemv(*storage, T, w.cols) && !takesGemv(*storage, T);
}

} // namespace

Result<SplitInput> splitInputFor(Context &context, int64_t T,
                                 std::span<const LinearOutput> outputs) {
  Context::State &state = context.state();
  if (outputs.empty() || T <= 0 || !takesSplitGemms(outputs.front().w, T) ||
      !detail::splitIntoProducersEnabled())
    return SplitInput{};
  const SplitLayout l = splitLayout(state, T, outputs);
  LLMIR_RETURN_IF_ERROR(reserveSplit(state, l.need));
  return halvesIn(state, l);
}

Status linearGroup(Context &context, const float *x, int64_t T,
                   std::span<const LinearOutput> outputs, bool xSplit) {
  Context::State &state = context.state();
  if (outputs.empty())
    return Status::ok();
  const int64_t K = outputs.front().w.cols;
  Result<detail::Storage> storage = storageOf(outputs.front().w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  for (const LinearOutput &o : outputs)
    if (o.w.cols != K || o.w.dtype != outputs.front().w.dtype)
      return Status::error("CUDA linear group: weights differ in K or dtype");
  const bool mma = takesMmaGemv(*storage, T, K);
  if (mma || takesGemv(*storage, T)) {
    for (size_t first = 0; first < outputs.size(); first += detail::kMaxLinearSegments) {
      detail::LinearSegments segments{};
      for (size_t i = first; i < outputs.size() && segments.count < detail::kMaxLinearSegments;
           ++i)
        segments.segment[segments.count++] = {outputs[i].w.data, outputs[i].w.rows,
                                              outputs[i].bias, outputs[i].y};
      LLMIR_RETURN_IF_ERROR(
          launchGemv(state, mma, x, T, K, *storage, segments, "linear (16-bit)"));
    }
    return Status::ok();
  }
  if (*storage == detail::Storage::BF16)
    return splitGemms(state, x, T, outputs, nullptr, xSplit);
  const float one = 1.0f, zero = 0.0f;
  for (const LinearOutput &o : outputs) {
    const int64_t N = o.w.rows;
    // Column-major view: y^T [N, T] = W [N, K] (stored as K x N) ^T * x^T [K, T].
    LLMIR_RETURN_IF_ERROR(cublasStatus(
        cublasSgemm(state.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
                    static_cast<int>(T), static_cast<int>(K), &one,
                    reinterpret_cast<const float *>(o.w.data), static_cast<int>(K), x,
                    static_cast<int>(K), &zero, o.y, static_cast<int>(N)),
        "sgemm"));
    if (o.bias)
      LLMIR_RETURN_IF_ERROR(
          cudaStatus(detail::addBias(state.stream, o.y, o.bias, T, N), "bias"));
  }
  return Status::ok();
}

bool takesPackedGroup(int64_t T, std::span<const LinearOutput> outputs) {
  if (T < kTwoGemmTokens || outputs.size() < 2 || !takesSplitGemms(outputs.front().w, T) ||
      !sideBySide(outputs))
    return false;
  for (const LinearOutput &o : outputs)
    if (o.bias || o.w.cols != outputs.front().w.cols)
      return false;
  return true;
}

Status linearGroupPacked(Context &context, const float *x, int64_t T,
                         std::span<const LinearOutput> outputs, bool xSplit, float *packed) {
  if (!takesPackedGroup(T, outputs))
    return Status::error("CUDA packed linear group: bf16 weights side by side without biases "
                         "and at least " + std::to_string(kTwoGemmTokens) + " tokens");
  Context::State &state = context.state();
  // x's halves where splitInputFor(T, outputs) put them, as splitGemms.
  const SplitLayout l = splitLayout(state, T, outputs);
  Result<SplitInput> halves = halvesOfX(state, x, T, outputs.front().w.cols, l, xSplit);
  LLMIR_RETURN_IF_ERROR(halves.status());
  WeightView all = outputs.front().w; // the group's weights as one [totalN, K] matrix
  all.rows = l.totalN;
  LLMIR_RETURN_IF_ERROR(gemmBf16Tuned(state, halves->hi, T, all, nullptr, packed));
  if (l.both)
    LLMIR_RETURN_IF_ERROR(gemmBf16(state, halves->lo, T, all, 1.0f, packed));
  return Status::ok();
}

namespace {
detail::ResidualNormDevice onDevice(const ResidualNorm &n, int count) {
  // Off since the thirty-third session: at main's code a 1.1B batch-1 step
  // was 1.1% faster without (0.940 -> 0.930 ms on an H200, the 8B the same;
  // docs/performance.md), where it had paid 0.45% when it landed.
  static const bool earlyX = detail::countFromEnv("LLMIR_CUDA_NORM_EARLY_X", 0) > 0;
  return {n.residual, n.sum, n.partials, count, n.weight, n.eps, n.normed, earlyX};
}

bool sixteenBit(const WeightView &w) {
  return w.dtype == proto::BF16 || w.dtype == proto::F16;
}
} // namespace

bool takesResidualNorm(const WeightView &producer, const WeightView &consumer, int64_t T) {
  const int64_t H = producer.rows;
  // One token on the GEMV (linear16) both sides, the consumer staging x.
  return T == 1 && sixteenBit(producer) && sixteenBit(consumer) && consumer.cols == H &&
         H % 8 == 0 && detail::oneTokenStagesX(H);
}

bool residualNormConsumerPays(int64_t H, int64_t rows, bool paired) {
  // Looped (one wave, detail::loopedNormConsumers), every block normalises
  // once whatever the rows; otherwise each wave pays it again.
  return detail::loopedNormConsumers() || detail::oneTokenWaves(H, rows, paired) <= 2.0;
}

int64_t residualNormPartials(int64_t producerK, int64_t H) {
  return detail::oneTokenBlocks(producerK, H);
}

bool takesResidualInProduct(const WeightView &w, int64_t T) {
  return T >= kTwoGemmTokens && takesSplitGemms(w, T);
}

Status linearAddResidual(Context &context, const float *x, int64_t T, const LinearOutput &output,
                         const float *residual, bool xSplit) {
  if (!takesResidualInProduct(output.w, T))
    return Status::error("CUDA linear adding the residual: bf16 weights and at least " +
                         std::to_string(kTwoGemmTokens) + " tokens (takesResidualInProduct)");
  if (!residual || residual == output.y)
    return Status::error("CUDA linear adding the residual: a residual apart from y");
  return splitGemms(context.state(), x, T, std::span<const LinearOutput>(&output, 1), nullptr,
                    xSplit, residual);
}

namespace {
/// One segment an output, every output of the first's K and dtype.
Result<detail::LinearSegments> groupSegments(std::span<const LinearOutput> outputs) {
  const WeightView &w = outputs.front().w;
  detail::LinearSegments segments{};
  for (const LinearOutput &o : outputs) {
    if (o.w.cols != w.cols || o.w.dtype != w.dtype)
      return Status::error("CUDA linear group: weights differ in K or dtype");
    segments.segment[segments.count++] = {o.w.data, o.w.rows, o.bias, o.y};
  }
  return segments;
}
} // namespace

Status linearGroupWithNorm(Context &context, const float *x, int64_t T,
                           std::span<const LinearOutput> outputs, const ResidualNorm *produces,
                           const ResidualNorm *consumes) {
  Context::State &state = context.state();
  // Both at once would have blocks read the partials other blocks rewrite.
  if ((produces == nullptr) == (consumes == nullptr))
    return Status::error("CUDA linear with the residual norm: one side, producer or consumer");
  if (outputs.empty() || outputs.size() > detail::kMaxLinearSegments ||
      (produces && outputs.size() != 1))
    return Status::error("CUDA linear with the residual norm: one product (producer) or at "
                         "most " + std::to_string(detail::kMaxLinearSegments) + " (consumer)");
  const WeightView &w = outputs.front().w;
  if (T != 1 || !sixteenBit(w) || (consumes && !detail::oneTokenStagesX(w.cols)))
    return Status::error("CUDA linear with the residual norm: one token, 16-bit weights");
  Result<detail::Storage> storage = storageOf(w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  Result<detail::LinearSegments> group = groupSegments(outputs);
  LLMIR_RETURN_IF_ERROR(group.status());
  detail::LinearSegments &segments = *group;
  if (produces) {
    if (produces->partialCount != detail::oneTokenBlocks(w.cols, w.rows))
      return Status::error("CUDA linear with the residual norm: partialCount is not "
                           "residualNormPartials(K, N)");
    segments.produce = onDevice(*produces, static_cast<int>(produces->partialCount));
  }
  if (consumes)
    segments.consume = onDevice(*consumes, static_cast<int>(consumes->partialCount));
  return cudaStatus(detail::linear16(state.stream, x, T, w.cols, *storage, segments),
                    "linear (16-bit) with the residual norm");
}

namespace {
/// Gate and up as one paired GEMV launch writing silu(gate) * up to y, or
/// the error when their weights do not pair.
Result<detail::LinearSegments> swigluSegments(const LinearOutput &gate, const LinearOutput &up,
                                              float *y) {
  const int64_t N = gate.w.rows;
  if (up.w.cols != gate.w.cols || up.w.rows != N || up.w.dtype != gate.w.dtype)
    return Status::error("CUDA linear + swiglu: gate and up weights differ in shape or dtype");
  detail::LinearSegments segments{};
  segments.segment[0] = {gate.w.data, N, gate.bias, y};
  segments.segment[1] = {up.w.data, N, up.bias, nullptr};
  segments.count = 2;
  segments.pairedSwiglu = true;
  return segments;
}
} // namespace

namespace {
/// Whether linearSwiglu multiplies gate and up with bf16 products
/// (swigluBf16): medium precision, a prefill's token count, no biases, and
/// the f32 buffers aligned for the SWIGLU's 16-byte reads.
/// LLMIR_CUDA_BF16_GATE_UP=0 keeps two f32 products (measuring).
bool takesBf16GateUp(const Context::State &state, int64_t T, std::span<const LinearOutput> both) {
  static const bool enabled = !detail::switchedOff("LLMIR_CUDA_BF16_GATE_UP");
  const LinearOutput &gate = both[0], &up = both[1];
  return enabled && state.bf16Products && T >= kTwoGemmTokens &&
         !gate.bias && !up.bias && gate.w.rows % 8 == 0 &&
         reinterpret_cast<uintptr_t>(gate.y) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(up.y) % 16 == 0;
}
} // namespace

Status linearSwiglu(Context &context, const float *x, int64_t T, const LinearOutput &gate,
                    const LinearOutput &up, float *y, bool xSplit, NextProduct *next) {
  Context::State &state = context.state();
  if (next)
    next->split = false;
  const int64_t K = gate.w.cols, N = gate.w.rows;
  Result<detail::LinearSegments> segments = swigluSegments(gate, up, y);
  LLMIR_RETURN_IF_ERROR(segments.status());
  Result<detail::Storage> storage = storageOf(gate.w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  const bool mma = takesMmaGemv(*storage, T, K);
  if (!mma && !takesGemv(*storage, T)) {
    const LinearOutput both[2] = {gate, up};
    if (*storage == detail::Storage::BF16 && oneGemm(T, both))
      return splitGemms(state, x, T, both, y, xSplit);
    const bool bf16GateUp = *storage == detail::Storage::BF16 && takesBf16GateUp(state, T, both);
    const bool onePair = bf16GateUp && sideBySide(both);
    if (bf16GateUp) {
      // Medium precision: gate and up products in bf16 (into the first half
      // of their f32 buffers), which the SWIGLU reads. f32 products cost the
      // GEMMs' stores and the SWIGLU's reads twice the bytes, for values
      // that medium precision rounds to bf16 at the down product anyway.
      const SplitLayout l = splitLayout(state, T, both);
      Result<SplitInput> xHalves = halvesOfX(state, x, T, K, l, xSplit);
      LLMIR_RETURN_IF_ERROR(xHalves.status());
      // Weights side by side: one product of 2 N rows, [T, 2 N] into gate's
      // buffer (its T N floats hold it exactly). In a 1.1B prefill on an
      // H200 that was 8.59 ms against 8.68 with two products of N.
      if (onePair) {
        WeightView pair = gate.w;
        pair.rows = 2 * N;
        LLMIR_RETURN_IF_ERROR(gemmBf16Tuned(state, xHalves->hi, T, pair, nullptr, gate.y, true));
      } else {
        LLMIR_RETURN_IF_ERROR(gemmBf16Tuned(state, xHalves->hi, T, gate.w, nullptr, gate.y, true));
        LLMIR_RETURN_IF_ERROR(gemmBf16Tuned(state, xHalves->hi, T, up.w, nullptr, up.y, true));
      }
    } else {
      LLMIR_RETURN_IF_ERROR(linearGroup(context, x, T, both, xSplit));
    }
    // After gate and up are enqueued: growing the scratch frees the halves
    // they read (reserveSplit synchronises first).
    SplitInput halves;
    if (next && !next->outputs.empty()) {
      Result<SplitInput> into = splitInputFor(context, T, next->outputs);
      LLMIR_RETURN_IF_ERROR(into.status());
      halves = *into;
      next->split = halves.hi != nullptr;
    }
    float *out = next && next->split && next->halvesOnly ? nullptr : y;
    if (bf16GateUp) {
      const auto *g = reinterpret_cast<const uint16_t *>(gate.y);
      const void *u = onePair ? static_cast<const void *>(g + N) : up.y;
      return cudaStatus(detail::swigluBf16(state.stream, g, u, onePair ? 2 * N : N, T, N, out,
                                           halves.hi, halves.lo),
                        "swiglu (bf16 products)");
    }
    return swiglu(gate.y, up.y, out, T * N, state.stream, halves);
  }
  if (T <= 0)
    return Status::ok();
  return launchGemv(state, mma, x, T, K, *storage, *segments, "linear + swiglu (16-bit)");
}

Status linearSwigluWithNorm(Context &context, const float *x, int64_t T,
                            const LinearOutput &gate, const LinearOutput &up, float *y,
                            const ResidualNorm &consumes) {
  Context::State &state = context.state();
  const int64_t K = gate.w.cols;
  Result<detail::LinearSegments> segments = swigluSegments(gate, up, y);
  LLMIR_RETURN_IF_ERROR(segments.status());
  if (T != 1 || !sixteenBit(gate.w) || !detail::oneTokenStagesX(K))
    return Status::error("CUDA linear + swiglu with the residual norm: one token, 16-bit weights");
  Result<detail::Storage> storage = storageOf(gate.w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  segments->consume = onDevice(consumes, static_cast<int>(consumes.partialCount));
  return cudaStatus(detail::linear16(state.stream, x, T, K, *storage, *segments),
                    "linear + swiglu (16-bit) with the residual norm");
}

namespace {
/// Site `e.site` of the exchange as the kernels see it; `consumer` adds the
/// ADD and norm operands.
detail::ExchangeDevice exchangeOnDevice(const ExchangedNorm &e, bool consumer) {
  const PeerExchange &x = e.exchange;
  detail::ExchangeDevice d{};
  for (int q = 0; q < x.ranks; ++q)
    d.slots[q] = exchangeSlots(x.buffers[q], x.ranks, x.width, e.site);
  d.arrivals = exchangeArrivals(x.buffers[x.rank], x.ranks, x.width, e.site);
  d.timedOut = x.timedOut;
  d.timeoutNs = x.timeoutNs;
  d.rank = x.rank;
  d.ranks = x.ranks;
  d.width = x.width;
  if (consumer) {
    d.residual = e.residual;
    d.sum = e.sum;
    d.weight = e.weight;
    d.eps = e.eps;
    d.normed = e.normed;
  }
  return d;
}

/// consumer: the ADD's and norm's operands are needed too.
Status checkExchange(const ExchangedNorm &e, int64_t H, const char *what, bool consumer) {
  const PeerExchange &x = e.exchange;
  if (consumer && (!e.residual || !e.sum || !e.weight || !e.normed))
    return Status::error(std::string("CUDA ") + what +
                         ": the residual, sum, norm weight and normed row are all needed");
  if (x.ranks < 1 || x.ranks > kMaxExchangeRanks || x.rank < 0 || x.rank >= x.ranks ||
      e.site < 0 || e.site >= x.sites || H > x.width || H % 4 != 0)
    return Status::error(std::string("CUDA ") + what + ": site " + std::to_string(e.site) +
                         " of " + std::to_string(x.sites) + ", row of " + std::to_string(H) +
                         " in an exchange of rows of " + std::to_string(x.width) + " (rank " +
                         std::to_string(x.rank) + " of " + std::to_string(x.ranks) + ")");
  for (int q = 0; q < x.ranks; ++q)
    if (!x.buffers[q])
      return Status::error(std::string("CUDA ") + what + ": rank " + std::to_string(q) +
                           "'s exchange buffer is not mapped");
  return Status::ok();
}
} // namespace

bool takesExchangedNorm(const WeightView &producer, const WeightView &consumer,
                        const PeerExchange &exchange) {
  const int64_t H = producer.rows;
  return exchange.ranks > 0 && takesResidualNorm(producer, consumer, 1) && H % 4 == 0 &&
         H <= exchange.width;
}

Status linearExchanging(Context &context, const float *x, const LinearOutput &output,
                        const ExchangedNorm &to) {
  Context::State &state = context.state();
  const WeightView &w = output.w;
  if (!sixteenBit(w))
    return Status::error("CUDA linear into an exchange: 16-bit weights");
  LLMIR_RETURN_IF_ERROR(checkExchange(to, w.rows, "linear into an exchange", false));
  Result<detail::Storage> storage = storageOf(w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  detail::LinearSegments segments{};
  segments.segment[segments.count++] = {w.data, w.rows, output.bias, output.y};
  segments.exchangeOut = exchangeOnDevice(to, false);
  return cudaStatus(detail::linear16(state.stream, x, 1, w.cols, *storage, segments),
                    "linear (16-bit) into an exchange");
}

Status linearGroupExchanged(Context &context, std::span<const LinearOutput> outputs,
                            const ExchangedNorm &from) {
  Context::State &state = context.state();
  if (outputs.empty() || outputs.size() > detail::kMaxLinearSegments)
    return Status::error("CUDA linear after an exchange: 1 to " +
                         std::to_string(detail::kMaxLinearSegments) + " products");
  const WeightView &w = outputs.front().w;
  if (!sixteenBit(w) || !detail::oneTokenStagesX(w.cols))
    return Status::error("CUDA linear after an exchange: 16-bit weights, x staged");
  LLMIR_RETURN_IF_ERROR(checkExchange(from, w.cols, "linear after an exchange", true));
  Result<detail::Storage> storage = storageOf(w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  Result<detail::LinearSegments> segments = groupSegments(outputs);
  LLMIR_RETURN_IF_ERROR(segments.status());
  segments->exchangeIn = exchangeOnDevice(from, true);
  // x is not read: the staging takes the exchange's rows (any pointer will do).
  return cudaStatus(detail::linear16(state.stream, from.residual, 1, w.cols, *storage, *segments),
                    "linear (16-bit) after an exchange");
}

Status linearSwigluExchanged(Context &context, const LinearOutput &gate, const LinearOutput &up,
                             float *y, const ExchangedNorm &from) {
  Context::State &state = context.state();
  const int64_t K = gate.w.cols;
  Result<detail::LinearSegments> segments = swigluSegments(gate, up, y);
  LLMIR_RETURN_IF_ERROR(segments.status());
  if (!sixteenBit(gate.w) || !detail::oneTokenStagesX(K))
    return Status::error("CUDA linear + swiglu after an exchange: 16-bit weights, x staged");
  LLMIR_RETURN_IF_ERROR(checkExchange(from, K, "linear + swiglu after an exchange", true));
  Result<detail::Storage> storage = storageOf(gate.w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  segments->exchangeIn = exchangeOnDevice(from, true);
  return cudaStatus(detail::linear16(state.stream, from.residual, 1, K, *storage, *segments),
                    "linear + swiglu (16-bit) after an exchange");
}

Status linear(Context &context, const float *x, int64_t T, const WeightView &w,
              const float *bias, float *y) {
  const LinearOutput output{w, bias, y};
  return linearGroup(context, x, T, std::span<const LinearOutput>(&output, 1));
}

std::vector<int32_t> prefillTiles(const std::vector<int32_t> &tokenSeq) {
  std::vector<int32_t> tiles;
  bool longRun = false;
  for (size_t t = 0; t < tokenSeq.size();) {
    size_t end = t + 1;
    while (end < tokenSeq.size() && tokenSeq[end] == tokenSeq[t] &&
           end - t < static_cast<size_t>(detail::kPrefillTileRows))
      ++end;
    longRun |= end - t > 1;
    tiles.push_back(static_cast<int32_t>(t));
    tiles.push_back(static_cast<int32_t>(end - t));
    t = end;
  }
  if (!longRun)
    tiles.clear();
  return tiles;
}

Status argmaxRows(Stream stream, const float *logits, int64_t rows, int64_t V,
                  int32_t *ids, int32_t *hostIds) {
  return cudaStatus(detail::argmaxRows(stream, logits, rows, V, ids, hostIds), "argmax");
}

// The public row and the launcher's are one layout (the device reads it).
static_assert(sizeof(SamplingRow) == sizeof(detail::RowSampling) &&
              offsetof(SamplingRow, topK) == offsetof(detail::RowSampling, topK) &&
              offsetof(SamplingRow, uniform) == offsetof(detail::RowSampling, uniform));

Status sampleRows(Stream stream, const float *logits, int64_t rows, int64_t V,
                  const SamplingRow *params, int32_t *ids, float *logprobs, int32_t *hostIds,
                  float *hostLogprobs, void *scratch, size_t scratchBytes) {
  return cudaStatus(detail::sampleRows(stream, logits, rows, V,
                                       reinterpret_cast<const detail::RowSampling *>(params),
                                       ids, logprobs, hostIds, hostLogprobs, scratch,
                                       scratchBytes),
                    "sampling");
}

size_t samplingScratchBytes(int64_t rows) { return detail::samplingScratchBytes(rows); }

Status rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
               float eps, float *y, Stream stream) {
  return cudaStatus(detail::rmsNorm(stream, x, T, H, weight, eps, y), "rms_norm");
}

Status addRmsNorm(const float *a, const float *b, float *sum, int64_t T, int64_t H,
                  const float *weight, float eps, float *y, Stream stream, SplitInput split) {
  if (!y && !split.hi)
    return Status::error("CUDA add + rms_norm: no output (neither y nor its halves)");
  return cudaStatus(detail::addRmsNorm(stream, a, b, sum, T, H, weight, eps, y, split.hi,
                                       split.lo),
                    "add + rms_norm");
}

Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, float theta, Stream stream) {
  return cudaStatus(detail::rope(stream, x, T, numHeads, headDim, positions, theta),
                    "rope");
}

Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies, Stream stream) {
  return rope(x, x, T, numHeads, headDim, positions, inverseFrequencies, stream);
}

Status rope(const float *x, float *y, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies, Stream stream) {
  return cudaStatus(detail::ropeWithFrequencies(stream, x, y, T, numHeads, headDim, positions,
                                                inverseFrequencies),
                    "rope");
}

Status swiglu(const float *gate, const float *up, float *y, int64_t n, Stream stream,
              SplitInput split) {
  if (!y && !split.hi)
    return Status::error("CUDA swiglu: no output (neither y nor its halves)");
  return cudaStatus(detail::swiglu(stream, gate, up, y, n, split.hi, split.lo), "swiglu");
}

Status add(const float *a, const float *b, float *y, int64_t n, Stream stream) {
  return cudaStatus(detail::add(stream, a, b, y, n), "add");
}

Status embedding(const int32_t *ids, int64_t T, const WeightView &table,
                 int64_t vocabOffset, float *y, Stream stream, IdsInstead instead) {
  Result<detail::Storage> storage = storageOf(table, "embedding");
  LLMIR_RETURN_IF_ERROR(storage.status());
  return cudaStatus(detail::embedding(stream, ids, T, table.data, *storage, table.rows,
                                      table.cols, vocabOffset, y, instead.ids, instead.when),
                    "embedding");
}

Status selectRows(const float *x, int64_t rows, int64_t width, const int32_t *selected,
                  int64_t count, float *y, Stream stream, int64_t rowStride) {
  if (rowStride > 0 && rowStride < width)
    return Status::error("select rows: x's rows " + std::to_string(rowStride) +
                         " floats apart, fewer than their width " + std::to_string(width));
  const int64_t stride = rowStride > 0 ? rowStride : width;
  // The embedding's gather, over an f32 table of the step's rows.
  return cudaStatus(detail::embedding(stream, selected, count, x, detail::Storage::F32, rows,
                                      width, 0, y, nullptr, nullptr, stride),
                    "select rows");
}

namespace {

detail::AttentionGeometry geometryOf(const DeviceStep &step,
                                     const cpu::AttentionParams &params,
                                     DeviceKvCache &cache) {
  const KvCacheShape &shape = cache.shape;
  const size_t layerFloats = static_cast<size_t>(
      shape.numBlocks * shape.blockSize * shape.numKvHeads * shape.headDim);
  const size_t layerOffset = static_cast<size_t>(params.layer) * layerFloats *
                             (cache.bf16 ? 2 : sizeof(float));
  detail::AttentionGeometry g{};
  g.numTokens = step.numTokens;
  g.numHeads = params.numHeads;
  g.numKvHeads = params.numKvHeads;
  g.headDim = params.headDim;
  g.scale = params.scale;
  g.kvShards = params.kvShards;
  g.kvShard = params.kvShard;
  g.blockSize = shape.blockSize;
  g.positions = step.positions;
  g.tokenSeq = step.tokenSeq;
  g.blockTables = step.blockTables;
  g.blockTableStride = step.blockTableStride;
  g.keys = static_cast<char *>(cache.keys) + layerOffset;
  g.values = static_cast<char *>(cache.values) + layerOffset;
  g.bf16Cache = cache.bf16;
  g.kvRowStride = params.numKvHeads * params.headDim;
  g.qRowStride = params.numHeads * params.headDim;
  g.firstQuery = 0;
  g.numQueries = step.numTokens;
  g.partial = false;
  g.splits = 1;
  g.slidingWindow = params.slidingWindow;
  g.kvGroup = params.kvGroup;
  g.headOffset = params.headOffset;
  g.bf16Queries = step.bf16Queries;
  return g;
}

/// A caller's row stride (> 0: rows `given` floats apart, columns of a wider
/// packed product) in place of `stride`, the rows' width; fewer floats than
/// the width is an error. 0 keeps the width.
Status takeRowStride(int64_t &stride, int64_t given, const char *rows) {
  if (given <= 0)
    return Status::ok();
  if (given < stride)
    return Status::error(std::string(rows) + " of " + std::to_string(given) +
                         " floats, fewer than their width");
  stride = given;
  return Status::ok();
}

Status checkHeadDim(const cpu::AttentionParams &params) {
  if (params.headDim > detail::kMaxHeadDim)
    return Status::error(
        "CUDA attention: head dim " + std::to_string(params.headDim) +
        ", expected at most " + std::to_string(detail::kMaxHeadDim));
  return Status::ok();
}

} // namespace

Status ropeAndStore(const float *q, float *qOut, const float *qFrequencies, const float *k,
                    float *kOut, const float *kFrequencies, const float *v,
                    const DeviceStep &step, const cpu::AttentionParams &params,
                    DeviceKvCache &cache, Stream stream, float *queryRotations,
                    int64_t kvRowStride) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  detail::AttentionGeometry g = geometryOf(step, params, cache);
  LLMIR_RETURN_IF_ERROR(
      takeRowStride(g.kvRowStride, kvRowStride, "rope + store: k and v rows"));
  if ((q == nullptr) != (qOut == nullptr) || (q && queryRotations))
    return Status::error("rope + store: q and qOut go together, and the queries' rotations "
                         "are written only in their place (q and qOut null)");
  return cudaStatus(detail::ropeAndStore(stream, q, qOut, q ? params.numHeads : 0, qFrequencies,
                                         k, kOut, kFrequencies, v, g, queryRotations),
                    "rope + store keys and values");
}

Status ropeStoreDense(const float *q, const float *qFrequencies, const float *k, float *kOut,
                      const float *kFrequencies, const float *v, const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache, void *dense,
                      float *queryRotations, Stream stream, int64_t qRowStride,
                      int64_t kvRowStride) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  detail::AttentionGeometry g = geometryOf(step, params, cache);
  LLMIR_RETURN_IF_ERROR(takeRowStride(g.kvRowStride, kvRowStride, "rope + store: k and v rows"));
  LLMIR_RETURN_IF_ERROR(takeRowStride(g.qRowStride, qRowStride, "rope + store: q rows"));
  if (!q || !dense || params.kvShards != 1)
    return Status::error("rope + store dense: q and the dense rows are needed, and every key "
                         "of the step (no sequence-parallel shards)");
  return cudaStatus(detail::ropeAndStore(stream, q, nullptr, params.numHeads, qFrequencies, k,
                                         kOut, kFrequencies, v, g, queryRotations, dense),
                    "rope + store keys and values (dense rows)");
}

namespace {
CudnnAttention &cudnnOf(Context &context) {
  Context::State &state = context.state();
  if (!state.cudnn)
    state.cudnn = std::make_unique<CudnnAttention>();
  return *state.cudnn;
}
} // namespace

int64_t cudnnAttentionRows(int64_t T) {
  if (T < 4)
    return T;
  int64_t quarter = 1; // a quarter of the power of two at or below T
  while (quarter * 8 <= T)
    quarter *= 2;
  return (T + quarter - 1) / quarter * quarter;
}

bool cudnnAttentionTakes(Context &context, const DenseAttention &shape) {
  if (detail::switchedOff("LLMIR_CUDA_CUDNN_ATTENTION"))
    return false;
  return cudnnOf(context).takes(shape);
}

Status cudnnAttention(Context &context, const DenseAttention &attention) {
  return cudnnOf(context).run(attention, context.stream());
}

std::string cudnnAttentionDescription(Context &context) {
  if (detail::switchedOff("LLMIR_CUDA_CUDNN_ATTENTION"))
    return "off (LLMIR_CUDA_CUDNN_ATTENTION=0)";
  return cudnnOf(context).describe();
}

namespace {
/// How attend() runs a decode (non-tiled) step's attention into `out`:
/// flash-decoding's splits where the step has them, attending into the
/// scratch and merged in the kernel (split counters) or by mergeAttention
/// after it (mergeAfter).
struct DecodeAttend {
  detail::AttentionGeometry g;
  float *attendOut;
  bool mergeAfter;
};
DecodeAttend decodeAttend(const DeviceStep &step, const detail::AttentionGeometry &g,
                          float *out) {
  DecodeAttend d{g, out, false};
  if (step.decodeSplits > 1 && step.attentionScratch) {
    d.g.splits = step.decodeSplits;
    d.attendOut = step.attentionScratch;
    if (step.splitCounters) { // the last split block of each (token, head) merges
      d.g.mergedOut = out;
      d.g.splitCounters = step.splitCounters;
    } else {
      d.mergeAfter = true;
    }
  }
  return d;
}

Status mergeSplits(const DeviceStep &step, const DecodeAttend &d, float *out, Stream stream) {
  if (!d.mergeAfter)
    return Status::ok();
  return cudaStatus(detail::mergeAttention(stream, step.attentionScratch, d.g.numQueries,
                                           step.decodeSplits, d.g.numHeads, d.g.headDim, out),
                    "split attention merge");
}
} // namespace

Status pagedAttention(const float *q, const float *k, const float *v,
                      const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out, Stream stream, bool keysStored) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  const detail::AttentionGeometry g = geometryOf(step, params, cache);
  if (!keysStored)
    LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(stream, k, v, g),
                                     "store keys and values"));
  if (step.numPrefillTiles > 0 && detail::prefillAttendApplies(g))
    return cudaStatus(detail::prefillAttend(stream, q, g, step.prefillTiles,
                                            step.numPrefillTiles, out),
                      "prefill attention");
  const DecodeAttend d = decodeAttend(step, g, out);
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::attend(stream, q, d.g, d.attendOut), "attention"));
  return mergeSplits(step, d, out, stream);
}

namespace {
bool prefillRopeApplies(const DeviceStep &step, const detail::AttentionGeometry &g) {
  return detail::prefillRopeEnabled() && step.numPrefillTiles > 0 &&
         detail::prefillRotatesQueries(g);
}
} // namespace

bool prefillRopeAttentionApplies(const DeviceStep &step, const cpu::AttentionParams &params,
                                 DeviceKvCache &cache) {
  return prefillRopeApplies(step, geometryOf(step, params, cache));
}

Status prefillRopeAttention(const float *q, const float *queryRotations, const DeviceStep &step,
                            const cpu::AttentionParams &params, DeviceKvCache &cache,
                            float *out, Stream stream, SplitInput outHalves,
                            int64_t qRowStride) {
  detail::AttentionGeometry g = geometryOf(step, params, cache);
  LLMIR_RETURN_IF_ERROR(
      takeRowStride(g.qRowStride, qRowStride, "rope + prefill attention: q rows"));
  if (!prefillRopeApplies(step, g))
    return Status::error("rope + prefill attention: not a step of the tensor-core prefill "
                         "kernel with a head dimension a multiple of 32");
  if (!out && !outHalves.hi)
    return Status::error("rope + prefill attention: neither an output nor its halves");
  g.queryRotations = queryRotations;
  g.outHi = outHalves.hi;
  g.outLo = outHalves.lo;
  return cudaStatus(
      detail::prefillAttend(stream, q, g, step.prefillTiles, step.numPrefillTiles, out),
      "rope + prefill attention");
}

bool ropeStoreAttentionApplies(const DeviceStep &step, const cpu::AttentionParams &params,
                               DeviceKvCache &cache) {
  if (params.headDim > detail::kMaxHeadDim || step.numPrefillTiles > 0)
    return false;
  return detail::ropeStoreAttendApplies(
      decodeAttend(step, geometryOf(step, params, cache), nullptr).g);
}

Status ropeStoreAttention(const float *q, float *qOut, const float *qFrequencies, const float *k,
                          float *kOut, const float *kFrequencies, const float *v,
                          const DeviceStep &step, const cpu::AttentionParams &params,
                          DeviceKvCache &cache, float *out, Stream stream,
                          ReaderShape reader) {
  if (!ropeStoreAttentionApplies(step, params, cache))
    return Status::error("rope + store + attention: not a decode step of the "
                         "group decode kernel");
  DecodeAttend d = decodeAttend(step, geometryOf(step, params, cache), out);
  if (reader.N > 0 && d.g.numQueries == 1) {
    const int64_t blocks = d.g.numKvHeads * std::max<int64_t>(d.g.splits, 1); // its grid
    d.g.wholeMultiprocessors = detail::oneTokenGemvFitsBeside(reader.K, reader.N, blocks);
  }
  const detail::FusedRope rope{q, qOut, qFrequencies, k, kOut, kFrequencies, v};
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::ropeStoreAttend(stream, rope, d.g, d.attendOut),
                                   "rope + store + attention"));
  return mergeSplits(step, d, out, stream);
}

Status partialAttention(const float *q, const float *k, const float *v,
                        const DeviceStep &step,
                        const cpu::AttentionParams &params,
                        DeviceKvCache &cache, float *out, Stream stream) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  detail::AttentionGeometry g = geometryOf(step, params, cache);
  g.partial = true;
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(stream, k, v, g),
                                   "store keys and values"));
  return cudaStatus(detail::attend(stream, q, g, out), "partial attention");
}

Status sliceAttention(const float *q, const float *kv, const DeviceStep &step,
                      int64_t firstRow, int64_t numRows,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out, Stream stream) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  cpu::AttentionParams everyBlock = params;
  everyBlock.kvShards = 1;
  everyBlock.kvShard = 0;
  detail::AttentionGeometry g = geometryOf(step, everyBlock, cache);
  const int64_t width = params.numKvHeads * params.headDim;
  g.kvRowStride = 2 * width;
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(stream, kv, kv + width, g),
                                   "store keys and values"));
  g.firstQuery = firstRow;
  g.numQueries = numRows;
  return cudaStatus(detail::attend(stream, q, g, out), "slice attention");
}

Status mergeAttention(const float *gathered, int64_t T, int64_t shards,
                      int64_t numHeads, int64_t headDim, float *out, Stream stream) {
  return cudaStatus(
      detail::mergeAttention(stream, gathered, T, shards, numHeads, headDim, out),
      "attention merge");
}

} // namespace llmir::engine::cuda
