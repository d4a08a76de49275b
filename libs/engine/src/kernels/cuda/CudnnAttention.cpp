// cuDNN's fused flash attention for a prefill (CudnnAttention.h), through
// cuDNN's backend API: the graph cuDNN's frontend builds for its SDPA node
// (Q K^T, the scale, a causal mask, softmax, P V), whose pattern cuDNN's
// fused-attention engines take. The library is opened with dlopen so that
// only machines that run this path need it; its header gives the types.
#include "CudnnAttention.h"
#include "Launch.h"

#include <cuda_runtime_api.h>
#include <cudnn_graph.h>
#include <dlfcn.h>

#include <array>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace llmir::engine::cuda {
namespace {

/// The entry points used, from libcudnn.so.9.
struct Api {
  size_t (*getVersion)();
  cudnnStatus_t (*create)(cudnnHandle_t *);
  cudnnStatus_t (*destroy)(cudnnHandle_t);
  cudnnStatus_t (*setStream)(cudnnHandle_t, cudaStream_t);
  const char *(*getErrorString)(cudnnStatus_t);
  void (*getLastErrorString)(char *, size_t);
  cudnnStatus_t (*createDescriptor)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
  cudnnStatus_t (*destroyDescriptor)(cudnnBackendDescriptor_t);
  cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t);
  cudnnStatus_t (*setAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, const void *);
  cudnnStatus_t (*getAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, int64_t *, void *);
  cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
};

/// Loads the library once a process; null with `why` when it cannot.
const Api *loadApi(std::string &why) {
  static Api api;
  static std::string failure;
  static const bool loaded = [] {
    void *library = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      const char *error = dlerror();
      failure = std::string("libcudnn.so.9 not loaded: ") + (error ? error : "unknown");
      return false;
    }
    bool all = true;
    const auto bind = [&](auto &fn, const char *name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(library, name));
      if (!fn) {
        all = false;
        failure = std::string("libcudnn.so.9 has no ") + name;
      }
    };
    bind(api.getVersion, "cudnnGetVersion");
    bind(api.create, "cudnnCreate");
    bind(api.destroy, "cudnnDestroy");
    bind(api.setStream, "cudnnSetStream");
    bind(api.getErrorString, "cudnnGetErrorString");
    bind(api.getLastErrorString, "cudnnGetLastErrorString");
    bind(api.createDescriptor, "cudnnBackendCreateDescriptor");
    bind(api.destroyDescriptor, "cudnnBackendDestroyDescriptor");
    bind(api.finalize, "cudnnBackendFinalize");
    bind(api.setAttribute, "cudnnBackendSetAttribute");
    bind(api.getAttribute, "cudnnBackendGetAttribute");
    bind(api.execute, "cudnnBackendExecute");
    return all;
  }();
  why = failure;
  return loaded ? &api : nullptr;
}

/// The variant pack's tensors (the graph's other tensors are virtual).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kScale, kMasked, kRows };

/// Builds one execution plan's descriptors. Every call after the first
/// failure does nothing, so the graph reads as a list; status() says what
/// failed first. Descriptors live in `owned` (destroyed with the plan).
class PlanBuilder {
public:
  PlanBuilder(const Api &api, std::vector<cudnnBackendDescriptor_t> &owned)
      : api_(api), owned_(owned) {}

  const Status &status() const { return status_; }

  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char *what) {
    if (!status_.isOk())
      return nullptr;
    cudnnBackendDescriptor_t d = nullptr;
    if (check(api_.createDescriptor(type, &d), what))
      owned_.push_back(d);
    return d;
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
           cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what) {
    if (status_.isOk())
      check(api_.setAttribute(d, name, type, count, value), what);
  }
  void setDescriptor(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                     cudnnBackendDescriptor_t value, const char *what) {
    set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
  }
  void finalize(cudnnBackendDescriptor_t d, const char *what) {
    if (status_.isOk())
      check(api_.finalize(d), what);
  }

  using Dims = std::array<int64_t, 4>;
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, Dims dims, Dims strides,
                                  bool isVirtual, bool byValue = false) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "a tensor");
    const int64_t alignment = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "a tensor's type");
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data(), "a tensor's dims");
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data(), "a tensor's strides");
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "a tensor's id");
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment,
        "a tensor's alignment");
    if (isVirtual) {
      const bool yes = true;
      set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes, "a virtual tensor");
    }
    if (byValue) {
      const bool yes = true;
      set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, "a scalar");
    }
    finalize(t, "a tensor");
    return t;
  }

  /// y = mode(x[, b[, t]]) elementwise in `precision`; axis for GEN_INDEX.
  cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t precision,
                                     cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                                     cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y,
                                     int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "a pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "a pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision,
        "a pointwise precision");
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
      set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "an index's axis");
    finalize(pw, "a pointwise mode");
    cudnnBackendDescriptor_t op =
        make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "a pointwise operation");
    setDescriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "a pointwise operation");
    setDescriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "a pointwise x");
    if (b)
      setDescriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "a pointwise b");
    if (t)
      setDescriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "a pointwise t");
    setDescriptor(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "a pointwise y");
    finalize(op, "a pointwise operation");
    return op;
  }

  /// y = the reduction of x over the axes where y's dims are 1, in f32.
  cudnnBackendDescriptor_t reduction(cudnnReduceTensorOp_t op, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "a reduction");
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &op,
        "a reduction's operator");
    set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32,
        "a reduction's precision");
    finalize(r, "a reduction");
    cudnnBackendDescriptor_t o =
        make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "a reduction operation");
    setDescriptor(o, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r, "a reduction operation");
    setDescriptor(o, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "a reduction's x");
    setDescriptor(o, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "a reduction's y");
    finalize(o, "a reduction operation");
    return o;
  }

  /// c = a b (batched over the leading dims), accumulated in f32; the
  /// overrides (int32 tensors, null: none) bound m, n or k per batch.
  cudnnBackendDescriptor_t matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                                  cudnnBackendDescriptor_t c,
                                  cudnnBackendDescriptor_t mOverride = nullptr,
                                  cudnnBackendDescriptor_t nOverride = nullptr,
                                  cudnnBackendDescriptor_t kOverride = nullptr) {
    cudnnBackendDescriptor_t m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "a matmul");
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, "a matmul's precision");
    finalize(m, "a matmul");
    cudnnBackendDescriptor_t o =
        make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "a matmul operation");
    setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_DESC, m, "a matmul operation");
    setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "a matmul's a");
    setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "a matmul's b");
    setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "a matmul's c");
    if (mOverride)
      setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, mOverride, "a matmul's m");
    if (nOverride)
      setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, nOverride, "a matmul's n");
    if (kOverride)
      setDescriptor(o, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, kOverride, "a matmul's k");
    finalize(o, "a matmul operation");
    return o;
  }

  void fail(std::string message) {
    if (status_.isOk())
      status_ = Status::error(std::move(message));
  }

private:
  bool check(cudnnStatus_t s, const char *what) {
    if (s == CUDNN_STATUS_SUCCESS)
      return true;
    char detail[512] = {};
    api_.getLastErrorString(detail, sizeof(detail));
    fail(std::string("cudnn: ") + what + ": " + api_.getErrorString(s) +
         (detail[0] ? std::string(" (") + detail + ")" : std::string()));
    return false;
  }

  const Api &api_;
  std::vector<cudnnBackendDescriptor_t> &owned_;
  Status status_ = Status::ok();
};

} // namespace

struct CudnnAttention::Impl {
  struct Plan {
    std::vector<cudnnBackendDescriptor_t> owned;
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t workspaceBytes = 0;
    bool overrides = false; // the products bounded by the prompt's rows
    Status refused = Status::ok(); // why this shape is not taken
    Status boundedRefused = Status::ok(); // why not with the overrides
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;

  std::mutex mutex;
  bool started = false;
  const Api *api = nullptr;
  cudnnHandle_t handle = nullptr;
  std::string unavailable; // why no plan can be built at all
  std::map<Key, Plan> plans;
  void *workspace = nullptr;
  size_t workspaceBytes = 0;
  /// The prompt's rows for the plans' overrides, on the device; `rows` the
  /// count last written there.
  int32_t *deviceRows = nullptr;
  int64_t rows = -1;

  /// Destroys a plan's descriptors, the last made first.
  void release(Plan &plan) {
    for (auto it = plan.owned.rbegin(); it != plan.owned.rend(); ++it)
      api->destroyDescriptor(*it);
    plan.owned.clear();
    plan.plan = nullptr;
  }

  ~Impl() {
    for (auto &[key, plan] : plans)
      release(plan);
    if (handle)
      api->destroy(handle);
    cudaFree(workspace);
    cudaFree(deviceRows);
  }

  bool start() {
    if (started)
      return api && handle;
    started = true;
    std::string why;
    api = loadApi(why);
    if (!api) {
      unavailable = why;
      return false;
    }
    // The fused attention engines of cuDNN 9 (the backend API's numbering
    // of types and attributes is stable within a major version).
    if (api->getVersion() < 90000 || api->getVersion() >= 100000) {
      unavailable = "cudnn " + std::to_string(api->getVersion()) + " is not cuDNN 9";
      return false;
    }
    if (const cudnnStatus_t s = api->create(&handle); s != CUDNN_STATUS_SUCCESS) {
      unavailable = std::string("cudnnCreate: ") + api->getErrorString(s);
      handle = nullptr;
      return false;
    }
    return true;
  }

  /// A plan for prompts of up to `T` rows (cudnnAttentionRows). The causal
  /// mask alone keeps a prompt's rows off the padded keys (row r sees keys
  /// up to r). `overrides`: the matrix products bounded by the prompt's own
  /// rows (its device row count), so the padded rows cost nothing; without,
  /// they are attended too and written to out.
  Plan build(const DenseAttention &a, int64_t T, bool overrides) {
    Plan plan;
    plan.overrides = overrides;
    PlanBuilder b(*api, plan.owned);
    const int64_t H = a.heads, Hkv = a.kvHeads, D = a.headDim, S = a.rowStride;
    const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT,
                          i32 = CUDNN_DATA_INT32, boolean = CUDNN_DATA_BOOLEAN;
    using Dims = PlanBuilder::Dims;
    // q, k, v: [1, heads, T, D] over rows S elements apart; K^T swaps the
    // last two dims. out: [T, H * D].
    auto q = b.tensor(kQ, bf16, {1, H, T, D}, {T * S, D, S, 1}, false);
    auto kT = b.tensor(kK, bf16, {1, Hkv, D, T}, {T * S, D, 1, S}, false);
    auto v = b.tensor(kV, bf16, {1, Hkv, T, D}, {T * S, D, S, 1}, false);
    auto o = b.tensor(kO, bf16, {1, H, T, D}, {T * H * D, D, H * D, 1}, false);
    const Dims one = {1, 1, 1, 1};
    auto scale = b.tensor(kScale, f32, one, one, false, true);
    auto masked = b.tensor(kMasked, f32, one, one, false, true);
    auto rowCount = overrides ? b.tensor(kRows, i32, one, one, false) : nullptr;
    // The virtual tensors: scores [1, H, T, T] and per-row [1, H, T, 1].
    const Dims scores = {1, H, T, T}, scoreStrides = {H * T * T, T * T, T, 1};
    const Dims rows = {1, H, T, 1}, rowStrides = {H * T, T, 1, 1};
    int64_t uid = 100;
    const auto scoreTensor = [&](cudnnDataType_t type) {
      return b.tensor(uid++, type, scores, scoreStrides, true);
    };
    auto s = scoreTensor(f32), scaled = scoreTensor(f32);
    auto row = scoreTensor(i32), column = scoreTensor(i32), causal = scoreTensor(boolean),
         kept = scoreTensor(f32);
    auto maximum = b.tensor(uid++, f32, rows, rowStrides, true);
    auto shifted = scoreTensor(f32), exponent = scoreTensor(f32);
    auto sum = b.tensor(uid++, f32, rows, rowStrides, true);
    // The softmax's statistics, max + log(sum): unread, but part of the
    // pattern the fused engines match (cuDNN's frontend always adds them).
    auto logSum = b.tensor(uid++, f32, rows, rowStrides, true);
    auto stats = b.tensor(uid++, f32, rows, rowStrides, true);
    auto p = scoreTensor(bf16); // P V's a in the inputs' type, as cuDNN's frontend has it
    std::vector<cudnnBackendDescriptor_t> ops = {
        b.matmul(q, kT, s, rowCount, rowCount),
        b.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, nullptr, scaled),
        // The causal mask (indices computed in f32 into int32 tensors, as
        // cuDNN's frontend builds it).
        b.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, scaled, nullptr, nullptr, row, 2),
        b.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, scaled, nullptr, nullptr, column, 3),
        b.pointwise(CUDNN_POINTWISE_CMP_GE, boolean, row, column, nullptr, causal),
        b.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, scaled, masked, causal, kept),
        b.reduction(CUDNN_REDUCE_TENSOR_MAX, kept, maximum),
        b.pointwise(CUDNN_POINTWISE_SUB, f32, kept, maximum, nullptr, shifted),
        b.pointwise(CUDNN_POINTWISE_EXP, f32, shifted, nullptr, nullptr, exponent),
        b.reduction(CUDNN_REDUCE_TENSOR_ADD, exponent, sum),
        b.pointwise(CUDNN_POINTWISE_LOG, f32, sum, nullptr, nullptr, logSum),
        b.pointwise(CUDNN_POINTWISE_ADD, f32, maximum, logSum, nullptr, stats),
        b.pointwise(CUDNN_POINTWISE_DIV, f32, exponent, sum, nullptr, p),
        b.matmul(p, v, o, rowCount, nullptr, rowCount),
    };
    auto graph = b.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "the operation graph");
    b.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle,
          "the graph's handle");
    b.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
          static_cast<int64_t>(ops.size()), ops.data(), "the graph's operations");
    b.finalize(graph, "the operation graph");
    // The engines heuristics mode A ranks, else the fallback list.
    cudnnBackendDescriptor_t heuristics = nullptr;
    int64_t count = 0;
    for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      if (count > 0 || !b.status().isOk())
        break;
      heuristics = b.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "the heuristics");
      b.setDescriptor(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "the heuristics");
      b.set(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode,
            "the heuristics' mode");
      b.finalize(heuristics, "the heuristics");
      if (b.status().isOk() && api->getAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                                 nullptr) != CUDNN_STATUS_SUCCESS)
        b.fail("cudnn: the heuristics' results");
    }
    if (b.status().isOk() && count == 0)
      b.fail("cudnn: no engine for the attention graph (heuristics A and fallback)");
    std::vector<cudnnBackendDescriptor_t> configs;
    for (int64_t c = 0; c < count && b.status().isOk(); ++c)
      configs.push_back(b.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "an engine configuration"));
    int64_t returned = 0;
    if (b.status().isOk() &&
        api->getAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                          count, &returned, configs.data()) != CUDNN_STATUS_SUCCESS)
      b.fail("cudnn: the heuristics' results");
    // The first configuration whose plan finalizes (heuristics' order).
    std::string refusals;
    for (int64_t c = 0; c < returned && b.status().isOk() && !plan.plan; ++c) {
      cudnnBackendDescriptor_t candidate = nullptr;
      if (api->createDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &candidate) !=
          CUDNN_STATUS_SUCCESS)
        break;
      cudnnBackendDescriptor_t config = configs[static_cast<size_t>(c)];
      cudnnStatus_t st = api->setAttribute(candidate, CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                                           CUDNN_TYPE_HANDLE, 1, &handle);
      if (st == CUDNN_STATUS_SUCCESS)
        st = api->setAttribute(candidate, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config);
      if (st == CUDNN_STATUS_SUCCESS)
        st = api->finalize(candidate);
      if (st != CUDNN_STATUS_SUCCESS) {
        char detail[256] = {};
        api->getLastErrorString(detail, sizeof(detail));
        refusals += std::string(refusals.empty() ? "" : "; ") + api->getErrorString(st) +
                    (detail[0] ? std::string(" (") + detail + ")" : std::string());
        api->destroyDescriptor(candidate);
        continue;
      }
      plan.owned.push_back(candidate);
      plan.plan = candidate;
      int64_t got = 0;
      api->getAttribute(candidate, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                        &got, &plan.workspaceBytes);
    }
    if (b.status().isOk() && !plan.plan)
      b.fail("cudnn: none of " + std::to_string(returned) +
             " engine configurations built a plan: " + refusals);
    plan.refused = b.status();
    return plan;
  }
};

CudnnAttention::CudnnAttention() : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::takes(const DenseAttention &shape) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (!impl_->start())
    return false;
  if (shape.tokens <= 0 || shape.heads <= 0 || shape.kvHeads <= 0 ||
      shape.heads % shape.kvHeads != 0 || shape.headDim % 8 != 0 || shape.headDim > 128 ||
      shape.rowStride % 8 != 0)
    return false;
  const int64_t rows = cudnnAttentionRows(shape.tokens);
  const Impl::Key key{rows, shape.heads, shape.kvHeads, shape.headDim, shape.rowStride};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    // Bounded by the prompt's rows where an engine takes that graph.
    Impl::Plan plan = impl_->build(shape, rows, true);
    if (!plan.refused.isOk()) {
      Status bounded = plan.refused;
      impl_->release(plan);
      plan = impl_->build(shape, rows, false);
      plan.boundedRefused = bounded;
    }
    it = impl_->plans.emplace(key, std::move(plan)).first;
  }
  return it->second.refused.isOk();
}

Status CudnnAttention::run(const DenseAttention &a, void *stream) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const Impl::Key key{cudnnAttentionRows(a.tokens), a.heads, a.kvHeads, a.headDim, a.rowStride};
  const auto it = impl_->plans.find(key);
  if (it == impl_->plans.end() || !it->second.refused.isOk())
    return Status::error("cudnn attention: no plan for this shape (takes() first)");
  const Impl::Plan &plan = it->second;
  const Api &api = *impl_->api;
  if (static_cast<size_t>(plan.workspaceBytes) > impl_->workspaceBytes) {
    // Grows at a new shape's first run, outside any graph capture (prefill
    // steps run eagerly).
    cudaFree(impl_->workspace);
    impl_->workspace = nullptr;
    impl_->workspaceBytes = 0;
    if (cudaMalloc(&impl_->workspace, static_cast<size_t>(plan.workspaceBytes)) != cudaSuccess)
      return Status::error("cudnn attention: no device memory for its workspace");
    impl_->workspaceBytes = static_cast<size_t>(plan.workspaceBytes);
  }
  if (!impl_->deviceRows &&
      cudaMalloc(reinterpret_cast<void **>(&impl_->deviceRows), sizeof(int32_t)) != cudaSuccess)
    return Status::error("cudnn attention: no device memory for its row count");
  if (plan.overrides && a.tokens != impl_->rows) { // in stream order, after earlier readers
    if (detail::setWord(static_cast<Stream>(stream), impl_->deviceRows,
                        static_cast<int32_t>(a.tokens)) != cudaSuccess)
      return Status::error("cudnn attention: writing its row count");
    impl_->rows = a.tokens;
  }
  // The scalars are read from host memory at execution.
  float scale = a.scale, masked = -std::numeric_limits<float>::infinity();
  std::array<int64_t, 7> uids = {kQ, kK, kV, kO, kScale, kMasked, kRows};
  std::array<void *, 7> pointers = {const_cast<void *>(a.q), const_cast<void *>(a.k),
                                    const_cast<void *>(a.v), a.out, &scale, &masked,
                                    impl_->deviceRows};
  const int64_t used = plan.overrides ? 7 : 6;
  std::vector<cudnnBackendDescriptor_t> pack;
  PlanBuilder b(api, pack);
  auto variants = b.make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "the variant pack");
  b.set(variants, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, used, uids.data(),
        "the variant pack's ids");
  b.set(variants, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, used,
        pointers.data(), "the variant pack's pointers");
  b.set(variants, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &impl_->workspace,
        "the variant pack's workspace");
  b.finalize(variants, "the variant pack");
  Status status = b.status();
  if (status.isOk()) {
    if (api.setStream(impl_->handle, static_cast<cudaStream_t>(stream)) != CUDNN_STATUS_SUCCESS)
      status = Status::error("cudnn attention: cudnnSetStream failed");
    else if (const cudnnStatus_t s = api.execute(impl_->handle, plan.plan, variants);
             s != CUDNN_STATUS_SUCCESS)
      status = Status::error(std::string("cudnn attention: ") + api.getErrorString(s));
  }
  for (auto d : pack)
    api.destroyDescriptor(d);
  return status;
}

std::string CudnnAttention::describe() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (!impl_->start())
    return impl_->unavailable;
  std::string text = "cudnn " + std::to_string(impl_->api->getVersion());
  for (const auto &[key, plan] : impl_->plans) {
    const std::string rows = std::to_string(std::get<0>(key));
    if (!plan.refused.isOk())
      text += "; refused " + rows + " rows: " + plan.refused.message();
    else if (plan.overrides)
      text += "; " + rows + " rows bounded by the prompt's";
    else
      text += "; " + rows + " rows, padded rows attended (bounded: " +
              plan.boundedRefused.message() + ")";
  }
  return text;
}

} // namespace llmir::engine::cuda
