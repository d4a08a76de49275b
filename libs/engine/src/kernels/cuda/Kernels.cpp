// Host side of the CUDA kernels: argument checks, dtype dispatch, cuBLAS
// for LINEAR, and cudaError_t/cublasStatus_t turned into Status.
#include "Launch.h"

#include "llmir/engine/CudaKernels.h"
#include "llmir/proto/shard_program.pb.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>

namespace llmir::engine::cuda {

struct Context::State {
  cublasHandle_t cublas = nullptr;
  ~State() {
    if (cublas)
      cublasDestroy(cublas);
  }
};

namespace {

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

} // namespace

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
  LLMIR_RETURN_IF_ERROR(cublasStatus(cublasCreate(&state->cublas), "create"));
  // Plain f32 arithmetic (no TF32), so results match the CPU kernels.
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasSetMathMode(state->cublas, CUBLAS_PEDANTIC_MATH), "math mode"));
  return Context(std::move(state));
}

Status Context::synchronize() {
  return cudaStatus(cudaDeviceSynchronize(), "synchronize");
}

Status linear(Context &context, const float *x, int64_t T, const WeightView &w,
              const float *bias, float *y) {
  Result<detail::Storage> storage = storageOf(w, "linear");
  LLMIR_RETURN_IF_ERROR(storage.status());
  Context::State &state = context.state();
  const int64_t N = w.rows, K = w.cols;
  if (*storage != detail::Storage::F32) {
    LLMIR_RETURN_IF_ERROR(cudaStatus(
        detail::linear16(x, T, w.data, *storage, N, K, y), "linear (16-bit)"));
    if (bias)
      return cudaStatus(detail::addBias(y, bias, T, N), "bias");
    return Status::ok();
  }
  const float *weights = reinterpret_cast<const float *>(w.data);
  // Column-major view: y^T [N, T] = W [N, K] (stored as K x N) ^T * x^T [K, T].
  const float one = 1.0f, zero = 0.0f;
  LLMIR_RETURN_IF_ERROR(cublasStatus(
      cublasSgemm(state.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
                  static_cast<int>(T), static_cast<int>(K), &one, weights,
                  static_cast<int>(K), x, static_cast<int>(K), &zero, y,
                  static_cast<int>(N)),
      "sgemm"));
  if (bias)
    return cudaStatus(detail::addBias(y, bias, T, N), "bias");
  return Status::ok();
}

Status rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
               float eps, float *y) {
  return cudaStatus(detail::rmsNorm(x, T, H, weight, eps, y), "rms_norm");
}

Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, float theta) {
  return cudaStatus(detail::rope(x, T, numHeads, headDim, positions, theta),
                    "rope");
}

Status rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
            const int32_t *positions, const float *inverseFrequencies) {
  return cudaStatus(detail::ropeWithFrequencies(x, T, numHeads, headDim, positions,
                                                inverseFrequencies),
                    "rope");
}

Status swiglu(const float *gate, const float *up, float *y, int64_t n) {
  return cudaStatus(detail::swiglu(gate, up, y, n), "swiglu");
}

Status add(const float *a, const float *b, float *y, int64_t n) {
  return cudaStatus(detail::add(a, b, y, n), "add");
}

Status embedding(const int32_t *ids, int64_t T, const WeightView &table,
                 int64_t vocabOffset, float *y) {
  Result<detail::Storage> storage = storageOf(table, "embedding");
  LLMIR_RETURN_IF_ERROR(storage.status());
  return cudaStatus(detail::embedding(ids, T, table.data, *storage, table.rows,
                                      table.cols, vocabOffset, y),
                    "embedding");
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
  g.firstQuery = 0;
  g.numQueries = step.numTokens;
  g.partial = false;
  g.slidingWindow = params.slidingWindow;
  g.kvGroup = params.kvGroup;
  g.headOffset = params.headOffset;
  return g;
}

Status checkHeadDim(const cpu::AttentionParams &params) {
  if (params.headDim > detail::kMaxHeadDim)
    return Status::error(
        "CUDA attention: head dim " + std::to_string(params.headDim) +
        ", expected at most " + std::to_string(detail::kMaxHeadDim));
  return Status::ok();
}

} // namespace

Status pagedAttention(const float *q, const float *k, const float *v,
                      const DeviceStep &step,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  const detail::AttentionGeometry g = geometryOf(step, params, cache);
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(k, v, g),
                                   "store keys and values"));
  return cudaStatus(detail::attend(q, g, out), "attention");
}

Status partialAttention(const float *q, const float *k, const float *v,
                        const DeviceStep &step,
                        const cpu::AttentionParams &params,
                        DeviceKvCache &cache, float *out) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  detail::AttentionGeometry g = geometryOf(step, params, cache);
  g.partial = true;
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(k, v, g),
                                   "store keys and values"));
  return cudaStatus(detail::attend(q, g, out), "partial attention");
}

Status sliceAttention(const float *q, const float *kv, const DeviceStep &step,
                      int64_t firstRow, int64_t numRows,
                      const cpu::AttentionParams &params, DeviceKvCache &cache,
                      float *out) {
  LLMIR_RETURN_IF_ERROR(checkHeadDim(params));
  cpu::AttentionParams everyBlock = params;
  everyBlock.kvShards = 1;
  everyBlock.kvShard = 0;
  detail::AttentionGeometry g = geometryOf(step, everyBlock, cache);
  const int64_t width = params.numKvHeads * params.headDim;
  g.kvRowStride = 2 * width;
  LLMIR_RETURN_IF_ERROR(cudaStatus(detail::storeKeysAndValues(kv, kv + width, g),
                                   "store keys and values"));
  g.firstQuery = firstRow;
  g.numQueries = numRows;
  return cudaStatus(detail::attend(q, g, out), "slice attention");
}

Status mergeAttention(const float *gathered, int64_t T, int64_t shards,
                      int64_t numHeads, int64_t headDim, float *out) {
  return cudaStatus(
      detail::mergeAttention(gathered, T, shards, numHeads, headDim, out),
      "attention merge");
}

} // namespace llmir::engine::cuda
