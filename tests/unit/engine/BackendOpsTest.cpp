// Every CUDA kernel against its CPU kernel, in the manner of llama.cpp's
// test-backend-ops: random inputs of several shapes (one token and many,
// MHA and GQA, f32/bf16/f16 weights), both backends run, and the largest
// error relative to the largest CPU value must stay under a per-op limit.
// The suite prints one table row per case and skips without a CUDA device.
#include "TestUtil.h"

#include "llmir/engine/CudaKernels.h"
#include "llmir/engine/KvCache.h"
#include "llmir/engine/Sampler.h"
#include "llmir/engine/Step.h"
#include "llmir/engine/ThreadPool.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>

namespace llmir::engine {
namespace {

using testing::makeWeight;
using testing::randomFloats;

constexpr double kElementwiseLimit = 1e-5;
constexpr double kMatmulLimit = 1e-4;
/// Products of operands rounded to bf16 (medium matmul precision).
constexpr double kMediumLimit = 1e-2;

// bf16 bits of x rounded to nearest even (as the device's KV store rounds),
// and back.
uint16_t bf16Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf16Value(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

template <typename T> class DeviceArray {
public:
  explicit DeviceArray(const std::vector<T> &host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void **>(&data_),
                         std::max<size_t>(1, size_) * sizeof(T)),
              cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  explicit DeviceArray(size_t size) : DeviceArray(std::vector<T>(size)) {}
  DeviceArray(const DeviceArray &) = delete;
  DeviceArray &operator=(const DeviceArray &) = delete;
  ~DeviceArray() { cudaFree(data_); }
  T *get() const { return data_; }
  std::vector<T> download() const {
    std::vector<T> host(size_);
    EXPECT_EQ(cudaMemcpy(host.data(), data_, size_ * sizeof(T),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    return host;
  }

private:
  T *data_ = nullptr;
  size_t size_;
};

/// A weight's bytes on the device, viewed as the CPU view is.
struct DeviceWeight {
  DeviceArray<std::byte> bytes;
  WeightView view;
  explicit DeviceWeight(const WeightTensor &w)
      : bytes(w.data), view(WeightView::of(w)) {
    view.data = bytes.get();
  }
};

// A group's random bf16 weights [N, K] for each width, side by side in one
// device allocation as CudaBackend packs a group, and a view of each.
struct PackedBf16Weights {
  std::vector<WeightTensor> weights;
  std::vector<std::byte> packed;
  DeviceArray<std::byte> bytes;
  std::vector<WeightView> views;
  PackedBf16Weights(const std::vector<int64_t> &widths, int64_t K, std::mt19937 &rng)
      : weights(make(widths, K, rng)), packed(concatenated(weights)), bytes(packed) {
    size_t at = 0;
    for (const WeightTensor &w : weights) {
      views.push_back(WeightView::of(w));
      views.back().data = bytes.get() + at;
      at += w.data.size();
    }
  }
  static std::vector<WeightTensor> make(const std::vector<int64_t> &widths, int64_t K,
                                        std::mt19937 &rng) {
    std::vector<WeightTensor> weights;
    for (int64_t N : widths)
      weights.push_back(makeWeight(proto::BF16, {N, K}, randomFloats(size_t(N * K), rng, 0.1f)));
    return weights;
  }
  static std::vector<std::byte> concatenated(const std::vector<WeightTensor> &weights) {
    std::vector<std::byte> all;
    for (const WeightTensor &w : weights)
      all.insert(all.end(), w.data.begin(), w.data.end());
    return all;
  }
};

double relativeError(const std::vector<float> &got,
                     const std::vector<float> &want) {
  EXPECT_EQ(got.size(), want.size());
  double maxDiff = 0.0, maxWant = 1e-30;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    if (!std::isfinite(got[i]))
      return INFINITY;
    maxDiff = std::max(maxDiff, std::abs(double(got[i]) - double(want[i])));
    maxWant = std::max(maxWant, std::abs(double(want[i])));
  }
  return maxDiff / maxWant;
}

struct Row {
  std::string op, shape;
  double error, limit;
};

const char *weightName(proto::DType dtype) {
  return dtype == proto::F32 ? "f32" : dtype == proto::BF16 ? "bf16" : "f16";
}

class BackendOps : public ::testing::Test {
protected:
  static void TearDownTestSuite() {
    if (rows().empty())
      return;
    std::printf("\n  %-14s %-44s %10s %8s  %s\n", "op", "shape", "max err",
                "limit", "result");
    for (const Row &r : rows())
      std::printf("  %-14s %-44s %10.2e %8.0e  %s\n", r.op.c_str(),
                  r.shape.c_str(), r.error, r.limit,
                  r.error <= r.limit ? "OK" : "FAIL");
    rows().clear();
  }

  void SetUp() override {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      GTEST_SKIP() << "no CUDA device: the CUDA kernels are not compared";
    Result<cuda::Context> context = cuda::Context::create();
    ASSERT_TRUE(context.isOk()) << context.message();
    context_.emplace(std::move(*context));
  }

  /// Waits for the device, then records and checks one comparison.
  void compare(const std::string &op, const std::string &shape,
               const std::vector<float> &got, const std::vector<float> &want,
               double limit) {
    Status synced = context_->synchronize();
    ASSERT_TRUE(synced.isOk()) << synced.message();
    const double error = relativeError(got, want);
    rows().push_back({op, shape, error, limit});
    EXPECT_LE(error, limit) << op << " " << shape;
  }

  static std::vector<Row> &rows() {
    static std::vector<Row> all;
    return all;
  }

  std::optional<cuda::Context> context_;
  std::mt19937 rng_{1234};
  ThreadPool pool_;
};

TEST_F(BackendOps, Linear) {
  struct Shape {
    int64_t T, K, N;
    bool bias;
  };
  for (proto::DType dtype : {proto::F32, proto::BF16, proto::F16})
    for (Shape s : {Shape{1, 256, 384, false}, Shape{2, 256, 64, true},
                    Shape{3, 1000, 40, false}, Shape{7, 512, 320, true}, Shape{9, 2048, 64, false},
                    Shape{1, 5632, 72, true}, Shape{1, 14336, 40, true},
                    // One token, 16-row blocks of two rows a warp: the last block's
                    // second rows only for three of its warps.
                    Shape{1, 4096, 1003, false},
                    // One token, a grid of over four waves of 8-row blocks (an
                    // LM head's): two rows a warp at K = 256 too.
                    Shape{1, 256, 17003, false},
                    // One token, two rows a warp over four rounds of loads.
                    Shape{1, 8192, 300, false},
                    Shape{2, 8192, 24, false},
                    Shape{16, 2048, 256, true}, Shape{33, 1024, 96, false},
                    Shape{130, 512, 1000, true}}) {
      const WeightTensor w = makeWeight(
          dtype, {s.N, s.K}, randomFloats(size_t(s.N * s.K), rng_, 0.1f));
      const std::vector<float> x = randomFloats(size_t(s.T * s.K), rng_);
      const std::vector<float> bias = randomFloats(size_t(s.N), rng_);
      std::vector<float> want(size_t(s.T * s.N));
      cpu::linear(x.data(), s.T, WeightView::of(w),
                  s.bias ? bias.data() : nullptr, want.data(), pool_);

      DeviceWeight dw(w);
      DeviceArray<float> dx(x), dbias(bias), dy(want.size());
      Status status = cuda::linear(*context_, dx.get(), s.T, dw.view,
                                   s.bias ? dbias.get() : nullptr, dy.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      const std::string shapeText = "T=" + std::to_string(s.T) + " K=" + std::to_string(s.K) +
                                    " N=" + std::to_string(s.N) + " " + weightName(dtype) +
                                    (s.bias ? " bias" : "");
      compare("LINEAR", shapeText, dy.download(), want, kMatmulLimit);
      // Medium precision on tensor cores (bf16 weights from 2 tokens: the
      // batched GEMV, then cuBLAS): the product of x rounded to bf16, against
      // the CPU's on the same rounded x.
      if (dtype == proto::BF16 && s.T >= 2) {
        std::vector<float> rounded(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          rounded[i] = bf16Value(bf16Bits(x[i]));
        cpu::linear(rounded.data(), s.T, WeightView::of(w), s.bias ? bias.data() : nullptr,
                    want.data(), pool_);
        context_->setBf16Products(true);
        status = cuda::linear(*context_, dx.get(), s.T, dw.view, s.bias ? dbias.get() : nullptr,
                              dy.get());
        context_->setBf16Products(false);
        ASSERT_TRUE(status.isOk()) << status.message();
        compare("LINEAR medium", shapeText, dy.download(), want, kMatmulLimit);
      }
    }
}

// Q, K, V-like products of one input in one launch (few tokens) or one after
// the other (many), against the CPU's one by one.
TEST_F(BackendOps, LinearGroup) {
  for (proto::DType dtype : {proto::BF16, proto::F16})
    for (int64_t T : {1, 5, 16, 24}) {
      const int64_t K = 768;
      const std::vector<int64_t> widths = {768, 256, 256, 40};
      const std::vector<float> x = randomFloats(size_t(T * K), rng_);
      DeviceArray<float> dx(x);
      std::vector<WeightTensor> weights;
      std::vector<std::unique_ptr<DeviceWeight>> deviceWeights;
      std::vector<std::unique_ptr<DeviceArray<float>>> outputs, biases;
      std::vector<std::vector<float>> wants;
      std::vector<cuda::LinearOutput> group;
      for (size_t i = 0; i < widths.size(); ++i) {
        const int64_t N = widths[i];
        weights.push_back(makeWeight(dtype, {N, K}, randomFloats(size_t(N * K), rng_, 0.1f)));
        const std::vector<float> bias = randomFloats(size_t(N), rng_);
        const bool withBias = i == 1;
        std::vector<float> want(size_t(T * N));
        cpu::linear(x.data(), T, WeightView::of(weights.back()),
                    withBias ? bias.data() : nullptr, want.data(), pool_);
        wants.push_back(want);
        deviceWeights.push_back(std::make_unique<DeviceWeight>(weights.back()));
        biases.push_back(std::make_unique<DeviceArray<float>>(bias));
        outputs.push_back(std::make_unique<DeviceArray<float>>(want.size()));
        group.push_back({deviceWeights.back()->view, withBias ? biases.back()->get() : nullptr,
                         outputs.back()->get()});
      }
      Status status = cuda::linearGroup(*context_, dx.get(), T, group);
      ASSERT_TRUE(status.isOk()) << status.message();
      for (size_t i = 0; i < widths.size(); ++i)
        compare("LINEAR group", "T=" + std::to_string(T) + " N=" + std::to_string(widths[i]) +
                                    " " + weightName(dtype),
                outputs[i]->download(), wants[i], kMatmulLimit);
    }
}

// Gate and up products and the SWIGLU after them in one GEMV launch (few
// tokens) or through linearGroup (many): against the CPU's three
// instructions, and bit-equal to the device's own unfused kernels.
TEST_F(BackendOps, LinearSwiglu) {
  struct Shape {
    int64_t T, K;
  };
  const int64_t N = 320;
  for (proto::DType dtype : {proto::BF16, proto::F16})
    // K = 4,096 at one token: the paired GEMV of 16 loads a lane (an 8B
    // shape's gate/up), which K = 768 does not reach.
    for (const Shape s : {Shape{1, 768}, Shape{3, 768}, Shape{8, 768}, Shape{12, 768},
                          Shape{24, 768}, Shape{1, 4096}}) {
      const int64_t T = s.T, K = s.K;
      const std::vector<float> x = randomFloats(size_t(T * K), rng_);
      const WeightTensor gate =
          makeWeight(dtype, {N, K}, randomFloats(size_t(N * K), rng_, 0.1f));
      const WeightTensor up = makeWeight(dtype, {N, K}, randomFloats(size_t(N * K), rng_, 0.1f));
      const std::vector<float> upBias = randomFloats(size_t(N), rng_);
      std::vector<float> g(size_t(T * N)), u(size_t(T * N)), want(size_t(T * N));
      cpu::linear(x.data(), T, WeightView::of(gate), nullptr, g.data(), pool_);
      cpu::linear(x.data(), T, WeightView::of(up), upBias.data(), u.data(), pool_);
      cpu::swiglu(g.data(), u.data(), want.data(), T * N);

      DeviceWeight dgate(gate), dup(up);
      DeviceArray<float> dx(x), dbias(upBias), dg(g.size()), du(u.size()), dy(want.size()),
          unfused(want.size());
      const cuda::LinearOutput gateOut{dgate.view, nullptr, dg.get()};
      const cuda::LinearOutput upOut{dup.view, dbias.get(), du.get()};
      Status status = cuda::linearSwiglu(*context_, dx.get(), T, gateOut, upOut, dy.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      const std::string shape = "T=" + std::to_string(T) + " K=" + std::to_string(K) + " N=320 " +
                                weightName(dtype);
      compare("LINEAR+SWIGLU", shape, dy.download(), want, kMatmulLimit);
      const cuda::LinearOutput both[2] = {gateOut, upOut};
      ASSERT_TRUE(cuda::linearGroup(*context_, dx.get(), T, both).isOk());
      ASSERT_TRUE(cuda::swiglu(dg.get(), du.get(), unfused.get(), T * N).isOk());
      compare("LINEAR+SWIGLU vs unfused", shape, dy.download(), unfused.download(), 0.0);
    }
}

// A group whose bf16 weights lie side by side in one allocation (as
// CudaBackend packs them) is one GEMM and a scatter from 17 tokens up to
// the two-GEMM regime (512); Q, K, V-like outputs with a bias, and gate+up
// with the SWIGLU written by the scatter, at both precisions, against the
// CPU (medium: on x rounded to bf16).
TEST_F(BackendOps, LinearGroupSideBySide) {
  for (bool medium : {false, true})
    for (int64_t T : {24, 64, 600}) {
      const int64_t K = 512;
      const std::vector<int64_t> widths = {512, 128, 128, 320, 320};
      const std::vector<float> x = randomFloats(size_t(T * K), rng_);
      std::vector<float> xUsed = x;
      if (medium)
        for (float &v : xUsed)
          v = bf16Value(bf16Bits(v));
      const PackedBf16Weights packed(widths, K, rng_);
      const std::vector<WeightTensor> &weights = packed.weights;
      const std::vector<WeightView> &views = packed.views;
      const std::vector<float> bias = randomFloats(size_t(widths[1]), rng_);
      DeviceArray<float> dx(x), dbias(bias);
      context_->setBf16Products(medium);
      const std::string precision = medium ? " medium" : " highest";
      // Q, K (with a bias), V.
      std::vector<std::unique_ptr<DeviceArray<float>>> outputs;
      std::vector<cuda::LinearOutput> group;
      for (size_t i = 0; i < 3; ++i) {
        outputs.push_back(std::make_unique<DeviceArray<float>>(size_t(T * widths[i])));
        group.push_back({views[i], i == 1 ? dbias.get() : nullptr, outputs.back()->get()});
      }
      Status status = cuda::linearGroup(*context_, dx.get(), T, group);
      ASSERT_TRUE(status.isOk()) << status.message();
      for (size_t i = 0; i < 3; ++i) {
        std::vector<float> want(size_t(T * widths[i]));
        cpu::linear(xUsed.data(), T, WeightView::of(weights[i]), i == 1 ? bias.data() : nullptr,
                    want.data(), pool_);
        compare("LINEAR packed", "T=" + std::to_string(T) + " N=" + std::to_string(widths[i]) +
                                     precision,
                outputs[i]->download(), want, kMatmulLimit);
      }
      // The group as one product into [T, 768] (linearGroupPacked): from 512
      // tokens, without biases; each output's columns against the CPU's.
      group[1].bias = nullptr;
      EXPECT_EQ(cuda::takesPackedGroup(T, group), T >= 512);
      if (T >= 512) {
        DeviceArray<float> dpacked(size_t(T * 768));
        status = cuda::linearGroupPacked(*context_, dx.get(), T, group, false, dpacked.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        const std::vector<float> packedY = dpacked.download();
        for (size_t i = 0, column = 0; i < 3; column += size_t(widths[i]), ++i) {
          std::vector<float> want(size_t(T * widths[i])), got(want.size());
          cpu::linear(xUsed.data(), T, WeightView::of(weights[i]), nullptr, want.data(), pool_);
          for (int64_t t = 0; t < T; ++t)
            std::copy_n(packedY.begin() + t * 768 + int64_t(column), widths[i],
                        got.begin() + t * widths[i]);
          compare("LINEAR one product", "T=" + std::to_string(T) + " columns of N=" +
                                            std::to_string(widths[i]) + precision,
                  got, want, kMatmulLimit);
        }
        group[1].bias = dbias.get(); // a bias: not one product
        EXPECT_FALSE(cuda::takesPackedGroup(T, group));
        EXPECT_FALSE(
            cuda::linearGroupPacked(*context_, dx.get(), T, group, false, dpacked.get()).isOk());
      }
      // Gate and up (weights 3 and 4) and the SWIGLU.
      const int64_t N = widths[3];
      std::vector<float> g(size_t(T * N)), u(size_t(T * N)), want(size_t(T * N));
      cpu::linear(xUsed.data(), T, WeightView::of(weights[3]), nullptr, g.data(), pool_);
      cpu::linear(xUsed.data(), T, WeightView::of(weights[4]), nullptr, u.data(), pool_);
      if (medium && T >= 512) // one GEMM writing gate and up as bf16 (swigluPacked)
        for (std::vector<float> *product : {&g, &u})
          for (float &v : *product)
            v = bf16Value(bf16Bits(v));
      cpu::swiglu(g.data(), u.data(), want.data(), T * N);
      DeviceArray<float> dg(g.size()), du(u.size()), dy(want.size());
      status = cuda::linearSwiglu(*context_, dx.get(), T, {views[3], nullptr, dg.get()},
                                  {views[4], nullptr, du.get()}, dy.get());
      context_->setBf16Products(false);
      ASSERT_TRUE(status.isOk()) << status.message();
      // The bf16 gate and up: where the device's f32 sum and the CPU's lie
      // on either side of a rounding boundary, they round one bf16 step
      // (2^-8 of the value) apart, and the largest outputs can be among them.
      compare("LINEAR+SWIGLU packed", "T=" + std::to_string(T) + " N=320" + precision,
              dy.download(), want, medium && T >= 512 ? 1.0 / 128 : kMatmulLimit);
    }
}

// Medium precision from kTwoGemmTokens: gate and up as bf16 products read by
// the SWIGLU (swigluBf16), one product of 2N where the weights lie side by
// side, two where they do not; against the CPU's f32 products rounded to
// bf16 (an element whose two sums fall either side of a rounding boundary
// rounds one bf16 step apart). Rows of N = 328 (41 octets: a partial block
// of the SWIGLU's threads) and an odd token count.
TEST_F(BackendOps, LinearSwigluBf16Products) {
  const int64_t K = 256, N = 328, T = 601;
  const PackedBf16Weights sideBySide({N, N}, K, rng_), gateApart({N}, K, rng_),
      upApart({64, N}, K, rng_);
  const std::vector<float> x = randomFloats(size_t(T * K), rng_);
  std::vector<float> xUsed = x;
  for (float &v : xUsed)
    v = bf16Value(bf16Bits(v));
  DeviceArray<float> dx(x);
  context_->setBf16Products(true);
  for (bool apart : {false, true}) {
    const WeightView gateView = apart ? gateApart.views[0] : sideBySide.views[0];
    const WeightView upView = apart ? upApart.views[1] : sideBySide.views[1];
    std::vector<float> g(size_t(T * N)), u(size_t(T * N)), want(size_t(T * N));
    const WeightTensor &gateWeight = apart ? gateApart.weights[0] : sideBySide.weights[0];
    const WeightTensor &upWeight = apart ? upApart.weights[1] : sideBySide.weights[1];
    cpu::linear(xUsed.data(), T, WeightView::of(gateWeight), nullptr, g.data(), pool_);
    cpu::linear(xUsed.data(), T, WeightView::of(upWeight), nullptr, u.data(), pool_);
    for (std::vector<float> *product : {&g, &u})
      for (float &v : *product)
        v = bf16Value(bf16Bits(v));
    cpu::swiglu(g.data(), u.data(), want.data(), T * N);
    DeviceArray<float> dg(g.size()), du(u.size()), dy(want.size());
    const Status status = cuda::linearSwiglu(*context_, dx.get(), T, {gateView, nullptr, dg.get()},
                                             {upView, nullptr, du.get()}, dy.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("LINEAR+SWIGLU bf16 products", apart ? "apart" : "side by side", dy.download(), want,
            1.0 / 128);
  }
  context_->setBf16Products(false);
}

// The norm before a group of cuBLAS products writes x's bf16 halves where the
// products read them (splitInputFor), so they skip their own split: the
// same bits as splitting x, on the packed one-GEMM path (24 tokens) and the
// two-GEMM path (600), both precisions, Q/K/V and gate+up. The products
// read the producer's halves, not x: given zeros for x they still give the
// norm's products. One token (the GEMV) takes no halves.
// The residual ADD and RMS_NORM between two one-token products, done by
// their GEMVs (cuda::ResidualNorm): the producer's y and the sum as the
// ADD's, the normed row and the consumer's products (a Q/K/V-like group,
// and gate/up with the SWIGLU) as after ADD+RMS_NORM's own launch. The
// squares are summed in another order, in double: within a float's
// rounding of the norm.
TEST_F(BackendOps, ResidualNormBetweenProducts) {
  struct Shape {
    int64_t H, K; // the producer: [H, K]; the consumers read H
    int64_t gateUp = 0; // the gate/up consumer's rows (0: 3H / 4)
  };
  // The 1.1B shape's O (K = H) and down (K = 5,632); the 8B down (K =
  // 14,336: 16-row blocks) and its gate/up (14,336 rows a side: past one
  // wave, the looped consumer); a small one; a wide row whose staging takes
  // several batches a thread and a partial last one (H = 8,704).
  for (const Shape s : {Shape{2048, 2048}, Shape{2048, 5632}, Shape{4096, 14336, 14336},
                        Shape{96, 40}, Shape{8704, 64}}) {
    const std::string shape = "H=" + std::to_string(s.H) + " K=" + std::to_string(s.K);
    const int64_t gateUp = s.gateUp > 0 ? s.gateUp : 3 * s.H / 4;
    const PackedBf16Weights producer({s.H}, s.K, rng_);
    const PackedBf16Weights consumer({s.H / 2, 32, 32, gateUp, gateUp}, s.H, rng_);
    const std::vector<float> x = randomFloats(size_t(s.K), rng_);
    const std::vector<float> residual = randomFloats(size_t(s.H), rng_, 3.0f);
    const std::vector<float> normWeight = randomFloats(size_t(s.H), rng_);
    DeviceArray<float> dx(x), dr(residual), dw(normWeight);
    ASSERT_TRUE(cuda::takesResidualNorm(producer.views[0], consumer.views[0], 1)) << shape;
    EXPECT_FALSE(cuda::takesResidualNorm(producer.views[0], consumer.views[0], 2)) << shape;
    const int64_t count = cuda::residualNormPartials(s.K, s.H);
    DeviceArray<double> partials(std::vector<double>(size_t(count), -1.0));
    for (bool swiglu : {false, true}) {
      const std::string what = shape + (swiglu ? " gate/up" : " q/k/v");
      const size_t first = swiglu ? 3 : 0, count3 = swiglu ? 2 : 3;
      // Reference: three launches.
      DeviceArray<float> y(size_t(s.H)), sum(size_t(s.H)), normed(size_t(s.H));
      const cuda::LinearOutput p{producer.views[0], nullptr, y.get()};
      ASSERT_TRUE(cuda::linearGroup(*context_, dx.get(), 1, std::span(&p, 1)).isOk());
      ASSERT_TRUE(cuda::addRmsNorm(dr.get(), y.get(), sum.get(), 1, s.H, dw.get(), 1e-5f,
                                   normed.get(), context_->stream())
                      .isOk());
      std::vector<std::unique_ptr<DeviceArray<float>>> want, got;
      std::vector<cuda::LinearOutput> wantGroup, gotGroup;
      for (size_t i = first; i < first + count3; ++i) {
        want.push_back(std::make_unique<DeviceArray<float>>(size_t(consumer.views[i].rows)));
        got.push_back(std::make_unique<DeviceArray<float>>(size_t(consumer.views[i].rows)));
        wantGroup.push_back({consumer.views[i], nullptr, want.back()->get()});
        gotGroup.push_back({consumer.views[i], nullptr, got.back()->get()});
      }
      DeviceArray<float> wantY(size_t(consumer.views[3].rows)),
          gotY(size_t(consumer.views[3].rows));
      ASSERT_TRUE((swiglu ? cuda::linearSwiglu(*context_, normed.get(), 1, wantGroup[0],
                                               wantGroup[1], wantY.get())
                          : cuda::linearGroup(*context_, normed.get(), 1, wantGroup))
                      .isOk());
      // Fused: the producer, then the consumer reading the sum.
      DeviceArray<float> y2(size_t(s.H)), sum2(size_t(s.H)), normed2(size_t(s.H));
      cuda::ResidualNorm n;
      n.residual = dr.get();
      n.sum = sum2.get();
      n.partials = partials.get();
      n.partialCount = count;
      n.weight = dw.get();
      n.eps = 1e-5f;
      n.normed = normed2.get();
      const cuda::LinearOutput p2{producer.views[0], nullptr, y2.get()};
      Status status =
          cuda::linearGroupWithNorm(*context_, dx.get(), 1, std::span(&p2, 1), &n, nullptr);
      ASSERT_TRUE(status.isOk()) << status.message();
      status = swiglu ? cuda::linearSwigluWithNorm(*context_, sum2.get(), 1, gotGroup[0],
                                                   gotGroup[1], gotY.get(), n)
                      : cuda::linearGroupWithNorm(*context_, sum2.get(), 1, gotGroup, nullptr, &n);
      ASSERT_TRUE(status.isOk()) << status.message();
      compare("ResidualNorm producer", what + " y", y2.download(), y.download(), 0.0);
      compare("ResidualNorm producer", what + " sum", sum2.download(), sum.download(), 0.0);
      compare("ResidualNorm consumer", what + " normed", normed2.download(), normed.download(),
              1e-7);
      if (swiglu)
        compare("ResidualNorm consumer", what + " swiglu", gotY.download(), wantY.download(),
                1e-6);
      else
        for (size_t i = 0; i < count3; ++i)
          compare("ResidualNorm consumer", what + " N=" + std::to_string(wantGroup[i].w.rows),
                  got[i]->download(), want[i]->download(), 1e-6);
    }
    // A partial count that is not the producer's blocks: an error, nothing launched.
    cuda::ResidualNorm bad;
    bad.partialCount = count + 1;
    DeviceArray<float> y3(size_t(s.H));
    const cuda::LinearOutput p3{producer.views[0], nullptr, y3.get()};
    EXPECT_FALSE(
        cuda::linearGroupWithNorm(*context_, dx.get(), 1, std::span(&p3, 1), &bad, nullptr)
            .isOk());
    // Both sides in one launch (blocks would read partials others rewrite), or none.
    EXPECT_FALSE(
        cuda::linearGroupWithNorm(*context_, dx.get(), 1, std::span(&p3, 1), &bad, &bad).isOk());
    EXPECT_FALSE(
        cuda::linearGroupWithNorm(*context_, dx.get(), 1, std::span(&p3, 1), nullptr, nullptr)
            .isOk());
  }
}

// The ALL_REDUCE, ADD and RMS_NORM between two one-token products of a
// tensor-parallel layer through a PeerExchange (cuda::ExchangedNorm), two
// ranks on this one GPU: each rank's buffer is an allocation here, the
// producers of both ranks run, then both consumers. The sum is the
// all-reduce's plus the residual bit for bit (ranks summed in rank order),
// the normed row and the consumers' products (a Q/K/V-like group, gate/up
// with the SWIGLU) within a float's rounding of ADD+RMS_NORM's. Two steps
// over two sites: each consumer empties its site for the next; then a
// consumer that waits for a peer's rows launched after it.
TEST_F(BackendOps, ExchangedNormBetweenProducts) {
  struct Shape {
    int64_t H, K; // the producer: [H, K] on each rank
  };
  // The 1.1B O at TP=2 (K = 1,024), the 8B down at TP=2 (K = 7,168), a small one.
  for (const Shape s : {Shape{2048, 1024}, Shape{4096, 7168}, Shape{96, 40}}) {
    const std::string shape = "H=" + std::to_string(s.H) + " K=" + std::to_string(s.K);
    constexpr int kRanks = 2, kSites = 2;
    std::vector<std::unique_ptr<PackedBf16Weights>> producers;
    std::vector<std::unique_ptr<DeviceArray<float>>> xs;
    for (int r = 0; r < kRanks; ++r) {
      producers.push_back(std::make_unique<PackedBf16Weights>(std::vector<int64_t>{s.H}, s.K, rng_));
      xs.push_back(std::make_unique<DeviceArray<float>>(randomFloats(size_t(s.K), rng_)));
    }
    const int64_t gateUp = 3 * s.H / 4;
    const PackedBf16Weights consumer({s.H / 2, 32, 32, gateUp, gateUp}, s.H, rng_);
    ASSERT_TRUE(cuda::takesResidualNorm(producers[0]->views[0], consumer.views[0], 1)) << shape;
    const std::vector<float> residual = randomFloats(size_t(s.H), rng_, 3.0f);
    const std::vector<float> normWeight = randomFloats(size_t(s.H), rng_);
    DeviceArray<float> dr(residual), dw(normWeight);
    const size_t bytes = exchangeBufferBytes(kRanks, s.H, kSites);
    // A new buffer as the runtime makes it: rows empty, counters 0.
    std::vector<std::byte> fresh(bytes, std::byte{0});
    for (int site = 0; site < kSites; ++site)
      std::fill_n(fresh.begin() + ptrdiff_t(exchangeSiteBytes(kRanks, s.H) * size_t(site)),
                  exchangeRowsBytes(kRanks, s.H), std::byte{0xff});
    std::vector<std::unique_ptr<DeviceArray<std::byte>>> buffers;
    for (int r = 0; r < kRanks; ++r)
      buffers.push_back(std::make_unique<DeviceArray<std::byte>>(fresh));
    DeviceArray<int> timedOut{size_t(kRanks)};
    const auto exchangeOf = [&](int rank) {
      PeerExchange e;
      e.rank = rank;
      e.ranks = kRanks;
      for (int q = 0; q < kRanks; ++q)
        e.buffers[q] = buffers[size_t(q)]->get();
      e.width = s.H;
      e.sites = kSites;
      e.timedOut = timedOut.get() + rank;
      return e;
    };
    ASSERT_TRUE(cuda::takesExchangedNorm(producers[0]->views[0], consumer.views[0], exchangeOf(0)))
        << shape;
    // The reference: each rank's product into ys, their sum in rank order
    // (the all-reduce's), then ADD+RMS_NORM into sum and normed.
    const auto reference = [&](std::vector<std::unique_ptr<DeviceArray<float>>> &ys,
                               DeviceArray<float> &sum, DeviceArray<float> &normed) {
      std::vector<float> reduced(size_t(s.H), 0.0f);
      for (int r = 0; r < kRanks; ++r) {
        ys.push_back(std::make_unique<DeviceArray<float>>(size_t(s.H)));
        const cuda::LinearOutput p{producers[size_t(r)]->views[0], nullptr, ys.back()->get()};
        ASSERT_TRUE(cuda::linearGroup(*context_, xs[size_t(r)]->get(), 1, std::span(&p, 1)).isOk());
        const std::vector<float> y = ys.back()->download();
        for (int64_t i = 0; i < s.H; ++i)
          reduced[size_t(i)] = r == 0 ? y[size_t(i)] : reduced[size_t(i)] + y[size_t(i)];
      }
      DeviceArray<float> dReduced(reduced);
      ASSERT_TRUE(cuda::addRmsNorm(dReduced.get(), dr.get(), sum.get(), 1, s.H, dw.get(), 1e-5f,
                                   normed.get(), context_->stream())
                      .isOk());
    };
    for (int step = 0; step < 2; ++step)
      for (int site = 0; site < kSites; ++site)
        for (bool swiglu : {false, true}) {
          const std::string what = shape + " step " + std::to_string(step) + " site " +
                                   std::to_string(site) + (swiglu ? " gate/up" : " q/k/v");
          // The reference, then the consumers on its normed row.
          std::vector<std::unique_ptr<DeviceArray<float>>> ys;
          DeviceArray<float> sum(size_t(s.H)), normed(size_t(s.H));
          reference(ys, sum, normed);
          if (HasFatalFailure())
            return;
          const size_t first = swiglu ? 3 : 0, count = swiglu ? 2 : 3;
          std::vector<cuda::LinearOutput> wantGroup;
          std::vector<std::unique_ptr<DeviceArray<float>>> want;
          for (size_t i = first; i < first + count; ++i) {
            want.push_back(std::make_unique<DeviceArray<float>>(size_t(consumer.views[i].rows)));
            wantGroup.push_back({consumer.views[i], nullptr, want.back()->get()});
          }
          DeviceArray<float> wantY{size_t(gateUp)};
          ASSERT_TRUE((swiglu ? cuda::linearSwiglu(*context_, normed.get(), 1, wantGroup[0],
                                                   wantGroup[1], wantY.get())
                              : cuda::linearGroup(*context_, normed.get(), 1, wantGroup))
                          .isOk());
          // Exchanged: both producers, then both consumers.
          for (int r = 0; r < kRanks; ++r) {
            cuda::ExchangedNorm to;
            to.exchange = exchangeOf(r);
            to.site = site;
            DeviceArray<float> y(size_t(s.H));
            const cuda::LinearOutput p{producers[size_t(r)]->views[0], nullptr, y.get()};
            Status status = cuda::linearExchanging(*context_, xs[size_t(r)]->get(), p, to);
            ASSERT_TRUE(status.isOk()) << status.message();
            compare("ExchangedNorm producer", what + " y", y.download(), ys[size_t(r)]->download(), 0.0);
          }
          for (int r = 0; r < kRanks; ++r) {
            DeviceArray<float> sum2{size_t(s.H)}, normed2{size_t(s.H)}, gotY{size_t(gateUp)};
            cuda::ExchangedNorm from;
            from.exchange = exchangeOf(r);
            from.site = site;
            from.residual = dr.get();
            from.sum = sum2.get();
            from.weight = dw.get();
            from.eps = 1e-5f;
            from.normed = normed2.get();
            std::vector<cuda::LinearOutput> gotGroup;
            std::vector<std::unique_ptr<DeviceArray<float>>> got;
            for (size_t i = first; i < first + count; ++i) {
              got.push_back(std::make_unique<DeviceArray<float>>(size_t(consumer.views[i].rows)));
              gotGroup.push_back({consumer.views[i], nullptr, got.back()->get()});
            }
            Status status =
                swiglu ? cuda::linearSwigluExchanged(*context_, gotGroup[0], gotGroup[1], gotY.get(), from)
                       : cuda::linearGroupExchanged(*context_, gotGroup, from);
            ASSERT_TRUE(status.isOk()) << status.message();
            const std::string who = what + " rank " + std::to_string(r);
            compare("ExchangedNorm consumer", who + " sum", sum2.download(), sum.download(), 0.0);
            compare("ExchangedNorm consumer", who + " normed", normed2.download(), normed.download(),
                    1e-7);
            if (swiglu)
              compare("ExchangedNorm consumer", who + " swiglu", gotY.download(), wantY.download(), 1e-6);
            else
              for (size_t i = 0; i < count; ++i)
                compare("ExchangedNorm consumer", who + " N=" + std::to_string(wantGroup[i].w.rows),
                        got[i]->download(), want[i]->download(), 1e-6);
          }
          // Each rank's consumer emptied its site for the next call.
          for (int r = 0; r < kRanks; ++r) {
            const std::vector<std::byte> after = buffers[size_t(r)]->download();
            const size_t at = exchangeSiteBytes(kRanks, s.H) * size_t(site);
            EXPECT_TRUE(std::all_of(after.begin() + ptrdiff_t(at),
                                    after.begin() + ptrdiff_t(at + exchangeRowsBytes(kRanks, s.H)),
                                    [](std::byte b) { return b == std::byte{0xff}; }))
                << what << " rank " << r << ": the site's rows not emptied";
            uint32_t count = 0;
            std::memcpy(&count, after.data() + at + exchangeRowsBytes(kRanks, s.H), sizeof count);
            EXPECT_EQ(count, 0u) << what << " rank " << r << ": the consumer's counter not reset";
          }
        }
    // A consumer that starts before its peer's rows exist: rank 0's (a
    // 32-row product: a few blocks, so the peer's producer finds room on
    // this one GPU) waits on this context's stream while rank 1's producer
    // is launched on another's 50 ms later. Everything is allocated first:
    // a synchronous copy would wait for the waiting consumer.
    {
      Result<cuda::Context> other = cuda::Context::create();
      ASSERT_TRUE(other.isOk()) << other.status().message();
      std::vector<std::unique_ptr<DeviceArray<float>>> ys;
      DeviceArray<float> sum(size_t(s.H)), normed(size_t(s.H));
      reference(ys, sum, normed);
      if (HasFatalFailure())
        return;
      DeviceArray<float> want(size_t(consumer.views[1].rows)), got(size_t(consumer.views[1].rows));
      const cuda::LinearOutput wantOut{consumer.views[1], nullptr, want.get()};
      ASSERT_TRUE(cuda::linearGroup(*context_, normed.get(), 1, std::span(&wantOut, 1)).isOk());
      DeviceArray<float> y0(size_t(s.H)), y1(size_t(s.H)), sum2(size_t(s.H)), normed2(size_t(s.H));
      ASSERT_TRUE(context_->synchronize().isOk());
      const auto exchanging = [&](int rank, cuda::Context &on, float *y) {
        cuda::ExchangedNorm to;
        to.exchange = exchangeOf(rank);
        const cuda::LinearOutput p{producers[size_t(rank)]->views[0], nullptr, y};
        return cuda::linearExchanging(on, xs[size_t(rank)]->get(), p, to);
      };
      cuda::ExchangedNorm from;
      from.exchange = exchangeOf(0);
      from.residual = dr.get();
      from.sum = sum2.get();
      from.weight = dw.get();
      from.eps = 1e-5f;
      from.normed = normed2.get();
      const cuda::LinearOutput gotOut{consumer.views[1], nullptr, got.get()};
      ASSERT_TRUE(exchanging(0, *context_, y0.get()).isOk());
      ASSERT_TRUE(cuda::linearGroupExchanged(*context_, std::span(&gotOut, 1), from).isOk());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ASSERT_TRUE(exchanging(1, *other, y1.get()).isOk());
      ASSERT_TRUE(other->synchronize().isOk());
      ASSERT_TRUE(context_->synchronize().isOk());
      compare("ExchangedNorm waiting", shape + " sum", sum2.download(), sum.download(), 0.0);
      compare("ExchangedNorm waiting", shape + " product", got.download(), want.download(), 1e-6);
      // Rank 1's consumer, so that its site is empty again too.
      from.exchange = exchangeOf(1);
      ASSERT_TRUE(cuda::linearGroupExchanged(*context_, std::span(&gotOut, 1), from).isOk());
      ASSERT_TRUE(context_->synchronize().isOk());
      compare("ExchangedNorm waiting", shape + " rank 1 product", got.download(), want.download(),
              1e-6);
    }
    EXPECT_EQ(timedOut.download(), std::vector<int>(size_t(kRanks), 0)) << shape;
    // A site past the buffer's, or a row wider than its rows: an error, nothing launched.
    cuda::ExchangedNorm bad;
    bad.exchange = exchangeOf(0);
    bad.site = kSites;
    DeviceArray<float> y(size_t(s.H));
    const cuda::LinearOutput p{producers[0]->views[0], nullptr, y.get()};
    EXPECT_FALSE(cuda::linearExchanging(*context_, xs[0]->get(), p, bad).isOk());
    bad.site = 0;
    bad.exchange.width = s.H - 4;
    EXPECT_FALSE(cuda::linearExchanging(*context_, xs[0]->get(), p, bad).isOk());
    // A consumer without the ADD's and norm's operands: an error, nothing launched.
    bad.exchange.width = s.H;
    DeviceArray<float> q(size_t(consumer.views[1].rows));
    const cuda::LinearOutput qOut{consumer.views[1], nullptr, q.get()};
    const Status missing = cuda::linearGroupExchanged(*context_, std::span(&qOut, 1), bad);
    EXPECT_FALSE(missing.isOk());
    EXPECT_NE(missing.message().find("residual"), std::string::npos) << missing.message();
  }
}

// A prefill's O or down projection adding the residual itself (cuBLASLt's
// C != D) and the norm after it reading the sum (addRmsNorm without b):
// against the product, then the fused ADD+RMS_NORM. The sum may differ from
// the product's plus the residual in the last bits only (the GEMM kernel
// may differ); the norm of the same sum is the fused pass's, bit for bit.
// N = 322: rows the norm cannot read four floats at a time.
TEST_F(BackendOps, ProductAddsTheResidual) {
  const int64_t K = 384;
  for (const int64_t N : {int64_t(320), int64_t(322)}) {
    const PackedBf16Weights weight({N}, K, rng_);
    const std::vector<float> normWeight = randomFloats(size_t(N), rng_);
    const std::vector<float> bias = randomFloats(size_t(N), rng_);
    DeviceArray<float> dw(normWeight), dbias(bias);
    for (bool medium : {false, true})
      for (int64_t T : {512, 600}) {
        context_->setBf16Products(medium);
        const std::string what = std::string(medium ? "medium" : "highest") + " T=" +
                                 std::to_string(T) + " N=" + std::to_string(N);
        ASSERT_TRUE(cuda::takesResidualInProduct(weight.views[0], T)) << what;
        const std::vector<float> x = randomFloats(size_t(T * K), rng_);
        const std::vector<float> residual = randomFloats(size_t(T * N), rng_, 3.0f);
        DeviceArray<float> dx(x), dr(residual), y(size_t(T * N)), wantSum(size_t(T * N)),
            wantNormed(size_t(T * N)), sum(size_t(T * N)), normed(size_t(T * N)),
            normedOfSum(size_t(T * N));
        const cuda::LinearOutput plain{weight.views[0], dbias.get(), y.get()};
        ASSERT_TRUE(cuda::linearGroup(*context_, dx.get(), T, std::span(&plain, 1)).isOk());
        ASSERT_TRUE(cuda::addRmsNorm(y.get(), dr.get(), wantSum.get(), T, N, dw.get(), 1e-5f,
                                     wantNormed.get(), context_->stream())
                        .isOk());
        const cuda::LinearOutput into{weight.views[0], dbias.get(), sum.get()};
        Status status = cuda::linearAddResidual(*context_, dx.get(), T, into, dr.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        ASSERT_TRUE(cuda::addRmsNorm(sum.get(), nullptr, nullptr, T, N, dw.get(), 1e-5f,
                                     normed.get(), context_->stream())
                        .isOk());
        compare("LINEAR + residual", what + " sum", sum.download(), wantSum.download(), 1e-6);
        compare("LINEAR + residual", what + " normed", normed.download(), wantNormed.download(),
                1e-6);
        // The norm alone over the fused pass's own sum: the same bits.
        ASSERT_TRUE(cuda::addRmsNorm(wantSum.get(), nullptr, nullptr, T, N, dw.get(), 1e-5f,
                                     normedOfSum.get(), context_->stream())
                        .isOk());
        compare("RMS_NORM of a sum", what, normedOfSum.download(), wantNormed.download(), 0.0);
        // Where it does not apply: fewer tokens, or y over the residual.
        EXPECT_FALSE(cuda::takesResidualInProduct(weight.views[0], 100));
        EXPECT_FALSE(cuda::linearAddResidual(*context_, dx.get(), 100, into, dr.get()).isOk());
        const cuda::LinearOutput over{weight.views[0], nullptr, dr.get()};
        EXPECT_FALSE(cuda::linearAddResidual(*context_, dx.get(), T, over, dr.get()).isOk());
      }
  }
  context_->setBf16Products(false);
}

// A prefill product's timed cuBLASLt algorithm serves every token count of
// its bucket (the power of two at or above T): T = 600, 700 and 1,000 time
// the candidates once, 1,100 again; each product against the CPU's.
TEST_F(BackendOps, TunedProductsShareATokenBucket) {
  const int64_t K = 256, N = 192;
  const WeightTensor w =
      makeWeight(proto::BF16, {N, K}, randomFloats(size_t(N * K), rng_, 0.1f));
  DeviceWeight dw(w);
  context_->setBf16Products(true);
  const int64_t before = context_->productTunings();
  for (const auto &[T, tunings] : std::vector<std::pair<int64_t, int64_t>>{
           {600, 1}, {700, 1}, {1000, 1}, {1100, 2}, {2048, 2}, {600, 2}}) {
    std::vector<float> x = randomFloats(size_t(T * K), rng_);
    for (float &v : x)
      v = bf16Value(bf16Bits(v)); // medium: the product of x rounded to bf16
    std::vector<float> want(size_t(T * N));
    cpu::linear(x.data(), T, WeightView::of(w), nullptr, want.data(), pool_);
    DeviceArray<float> dx(x), dy(want.size());
    Status status = cuda::linear(*context_, dx.get(), T, dw.view, nullptr, dy.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("LINEAR tuned", "T=" + std::to_string(T), dy.download(), want, kMatmulLimit);
    EXPECT_EQ(context_->productTunings() - before, tunings) << "T=" << T;
  }
  context_->setBf16Products(false);
}

TEST_F(BackendOps, AddNormWritesTheProductsHalves) {
  const int64_t K = 512;
  const std::vector<int64_t> widths = {512, 128, 128, 320, 320};
  const PackedBf16Weights packed(widths, K, rng_);
  const std::vector<WeightView> &views = packed.views;
  const std::vector<float> normWeight = randomFloats(size_t(K), rng_);
  DeviceArray<float> dw(normWeight);
  for (bool medium : {false, true})
    for (int64_t T : {1, 24, 600}) {
      const std::vector<float> a = randomFloats(size_t(T * K), rng_, 3.0f);
      const std::vector<float> b = randomFloats(size_t(T * K), rng_, 3.0f);
      DeviceArray<float> da(a), db(b), sum(a.size()), normed(a.size()),
          zeros(std::vector<float>(a.size(), 0.0f));
      context_->setBf16Products(medium);
      const std::string shape =
          "T=" + std::to_string(T) + (medium ? " medium" : " highest");
      const cuda::Stream stream = context_->stream();
      auto norm = [&](cuda::SplitInput split) {
        ASSERT_TRUE(cuda::addRmsNorm(da.get(), db.get(), sum.get(), T, K, dw.get(), 1e-5f,
                                     normed.get(), stream, split)
                        .isOk());
      };
      for (bool swiglu : {false, true}) {
        std::vector<std::unique_ptr<DeviceArray<float>>> want, got;
        std::vector<cuda::LinearOutput> wantGroup, gotGroup;
        const size_t first = swiglu ? 3 : 0, count = swiglu ? 2 : 3;
        for (size_t i = first; i < first + count; ++i) {
          want.push_back(std::make_unique<DeviceArray<float>>(size_t(T * widths[i])));
          got.push_back(std::make_unique<DeviceArray<float>>(size_t(T * widths[i])));
          wantGroup.push_back({views[i], nullptr, want.back()->get()});
          gotGroup.push_back({views[i], nullptr, got.back()->get()});
        }
        DeviceArray<float> wantY(size_t(T * widths[3])), gotY(size_t(T * widths[3]));
        norm({});
        ASSERT_TRUE((swiglu ? cuda::linearSwiglu(*context_, normed.get(), T, wantGroup[0],
                                                 wantGroup[1], wantY.get())
                            : cuda::linearGroup(*context_, normed.get(), T, wantGroup))
                        .isOk());
        Result<cuda::SplitInput> split = cuda::splitInputFor(*context_, T, gotGroup);
        ASSERT_TRUE(split.isOk()) << split.message();
        EXPECT_EQ(split->hi == nullptr, T == 1) << shape;
        EXPECT_EQ(split->lo == nullptr, T == 1 || medium) << shape;
        for (bool halvesOnly : {false, true}) {
          if (halvesOnly && !split->hi)
            continue;
          // Halves only: the norm writes no normed row, the product gets no x.
          const std::string variant = shape + (halvesOnly ? ", halves only" : "");
          ASSERT_TRUE(cuda::addRmsNorm(da.get(), db.get(), sum.get(), T, K, dw.get(), 1e-5f,
                                       halvesOnly ? nullptr : normed.get(), stream, *split)
                          .isOk());
          // x given as zeros: only the halves the norm wrote hold its values.
          const float *x = halvesOnly ? nullptr : split->hi ? zeros.get() : normed.get();
          const Status status =
              swiglu ? cuda::linearSwiglu(*context_, x, T, gotGroup[0], gotGroup[1], gotY.get(),
                                          split->hi != nullptr)
                     : cuda::linearGroup(*context_, x, T, gotGroup, split->hi != nullptr);
          ASSERT_TRUE(status.isOk()) << status.message();
          if (swiglu)
            compare("LINEAR+SWIGLU on the norm's halves", variant, gotY.download(),
                    wantY.download(), 0.0);
          else
            for (size_t i = 0; i < count; ++i)
              compare("LINEAR on the norm's halves", variant + " N=" + std::to_string(widths[i]),
                      got[i]->download(), want[i]->download(), 0.0);
        }
      }
    }
  context_->setBf16Products(false);
}

// A plain RMS_NORM before a product (the first layer's) writes the
// product's halves with the fused norm's kernel, b and the sum absent: the
// product on them is the product on rmsNorm's rows, bit for bit.
TEST_F(BackendOps, PlainNormWritesTheProductsHalves) {
  const int64_t K = 512;
  const std::vector<int64_t> widths = {512, 128, 128};
  const PackedBf16Weights packed(widths, K, rng_);
  const std::vector<float> normWeight = randomFloats(size_t(K), rng_);
  DeviceArray<float> dw(normWeight);
  for (bool medium : {false, true})
    for (int64_t T : {24, 600}) {
      const std::vector<float> a = randomFloats(size_t(T * K), rng_, 3.0f);
      DeviceArray<float> da(a), normed(a.size()), zeros(std::vector<float>(a.size(), 0.0f));
      context_->setBf16Products(medium);
      const std::string shape = "T=" + std::to_string(T) + (medium ? " medium" : " highest");
      const cuda::Stream stream = context_->stream();
      std::vector<std::unique_ptr<DeviceArray<float>>> want, got;
      std::vector<cuda::LinearOutput> wantGroup, gotGroup;
      for (size_t i = 0; i < widths.size(); ++i) {
        want.push_back(std::make_unique<DeviceArray<float>>(size_t(T * widths[i])));
        got.push_back(std::make_unique<DeviceArray<float>>(size_t(T * widths[i])));
        wantGroup.push_back({packed.views[i], nullptr, want.back()->get()});
        gotGroup.push_back({packed.views[i], nullptr, got.back()->get()});
      }
      ASSERT_TRUE(cuda::rmsNorm(da.get(), T, K, dw.get(), 1e-5f, normed.get(), stream).isOk());
      const std::vector<float> wantNormed = normed.download();
      ASSERT_TRUE(cuda::linearGroup(*context_, normed.get(), T, wantGroup).isOk());
      Result<cuda::SplitInput> split = cuda::splitInputFor(*context_, T, gotGroup);
      ASSERT_TRUE(split.isOk()) << split.message();
      ASSERT_NE(split->hi, nullptr) << shape;
      for (bool halvesOnly : {false, true}) {
        const std::string variant = shape + (halvesOnly ? ", halves only" : "");
        DeviceArray<float> gotNormed(std::vector<float>(a.size(), 0.0f));
        ASSERT_TRUE(cuda::addRmsNorm(da.get(), nullptr, nullptr, T, K, dw.get(), 1e-5f,
                                     halvesOnly ? nullptr : gotNormed.get(), stream, *split)
                        .isOk());
        if (!halvesOnly)
          compare("RMS_NORM by the fused kernel", variant, gotNormed.download(), wantNormed,
                  0.0);
        // x given as zeros: only the halves the norm wrote hold its values.
        const Status status = cuda::linearGroup(*context_, halvesOnly ? nullptr : zeros.get(),
                                                T, gotGroup, true);
        ASSERT_TRUE(status.isOk()) << status.message();
        for (size_t i = 0; i < widths.size(); ++i)
          compare("LINEAR on the plain norm's halves", variant + " N=" + std::to_string(widths[i]),
                  got[i]->download(), want[i]->download(), 0.0);
      }
    }
  context_->setBf16Products(false);
}

// The residual norm goes to every one-token consumer, whose blocks loop
// over its rows in one wave (each block pays the norm's staging once);
// with LLMIR_CUDA_LOOPED_CONSUMERS=0 only to consumers of at most two waves
// of blocks: a small grid does, one of a million rows does not, paired or
// not, on any device.
TEST_F(BackendOps, ResidualNormConsumerPays) {
  const char *looped = std::getenv("LLMIR_CUDA_LOOPED_CONSUMERS");
  const bool loops = looped == nullptr || std::string(looped) != "0";
  for (bool paired : {false, true}) {
    EXPECT_TRUE(cuda::residualNormConsumerPays(2048, 64, paired)) << paired;
    EXPECT_EQ(cuda::residualNormConsumerPays(4096, int64_t(1) << 20, paired), loops) << paired;
  }
}

// The SWIGLU of a gate/up pair writes the down projection's bf16 halves
// when that product runs on cuBLAS (linearSwiglu's NextProduct): given no x
// (halvesOnly: y itself not written) or zeros, the down product gives what
// it gives on its own split. Gate and up side by side below kTwoGemmTokens
// are one GEMM whose scatter applies the SiLU (no SWIGLU kernel, no
// halves); apart, the SWIGLU kernel runs from 17 tokens.
TEST_F(BackendOps, SwigluWritesTheDownProductsHalves) {
  const int64_t K = 512, N = 320, down = 256;
  // upApart's first weight keeps its second from following gateApart's in
  // device memory (two allocations may be adjacent: side by side again).
  const PackedBf16Weights sideBySide({N, N}, K, rng_), gateApart({N}, K, rng_),
      upApart({64, N}, K, rng_), downWeight({down}, N, rng_);
  for (bool medium : {false, true})
    for (bool apart : {false, true})
      for (bool halvesOnly : {false, true})
        for (int64_t T : {1, 24, 600}) {
          context_->setBf16Products(medium);
          const std::string shape =
              "T=" + std::to_string(T) + (medium ? " medium" : " highest") +
              (apart ? ", gate and up apart" : ", side by side") + (halvesOnly ? ", halves only" : "");
          const std::vector<float> x = randomFloats(size_t(T * K), rng_, 2.0f);
          const std::vector<float> untouched(size_t(T * N), 7.0f);
          DeviceArray<float> dx(x), gate(size_t(T * N)), up(size_t(T * N)), wantY(size_t(T * N)),
              gotY(untouched), wantD(size_t(T * down)), gotD(size_t(T * down)),
              zeros(std::vector<float>(size_t(T * N), 0.0f));
          const WeightView gateView = apart ? gateApart.views[0] : sideBySide.views[0];
          const WeightView upView = apart ? upApart.views[1] : sideBySide.views[1];
          const cuda::LinearOutput g{gateView, nullptr, gate.get()}, u{upView, nullptr, up.get()};
          const cuda::LinearOutput wantDown[1] = {{downWeight.views[0], nullptr, wantD.get()}};
          const cuda::LinearOutput gotDown[1] = {{downWeight.views[0], nullptr, gotD.get()}};
          ASSERT_TRUE(cuda::linearSwiglu(*context_, dx.get(), T, g, u, wantY.get()).isOk());
          ASSERT_TRUE(cuda::linearGroup(*context_, wantY.get(), T, wantDown).isOk());
          cuda::NextProduct next{gotDown, halvesOnly};
          next.split = T != 1; // must be cleared where no halves are written
          const Status status =
              cuda::linearSwiglu(*context_, dx.get(), T, g, u, gotY.get(), false, &next);
          ASSERT_TRUE(status.isOk()) << status.message();
          EXPECT_EQ(next.split, T == 600 || (apart && T == 24)) << shape;
          if (next.split && halvesOnly)
            compare("LINEAR+SWIGLU writing the halves only: y untouched", shape, gotY.download(),
                    untouched, 0.0);
          else
            compare("LINEAR+SWIGLU writing the halves", shape, gotY.download(), wantY.download(),
                    0.0);
          // x given as zeros or not at all: only the halves the SWIGLU wrote
          // hold its values.
          const float *downX = !next.split ? gotY.get() : halvesOnly ? nullptr : zeros.get();
          ASSERT_TRUE(cuda::linearGroup(*context_, downX, T, gotDown, next.split).isOk());
          compare("LINEAR on the SWIGLU's halves", shape, gotD.download(), wantD.download(), 0.0);
        }
  context_->setBf16Products(false);
}

// A product given no x (its producer wrote the halves only) where the
// halves cannot be used: a clear error, nothing computed from garbage.
TEST_F(BackendOps, ProductWithoutXNeedsItsHalves) {
  const PackedBf16Weights w({256}, 512, rng_);
  for (int64_t T : {1, 600}) {
    DeviceArray<float> y(size_t(T * 256));
    const cuda::LinearOutput out[1] = {{w.views[0], nullptr, y.get()}};
    const Status status = cuda::linearGroup(*context_, nullptr, T, out, false);
    EXPECT_FALSE(status.isOk()) << "T=" << T;
    EXPECT_NE(status.message().find("not written"), std::string::npos) << status.message();
  }
  DeviceArray<float> a(size_t(64)), b(size_t(64)), sum(size_t(64));
  EXPECT_FALSE(cuda::addRmsNorm(a.get(), b.get(), sum.get(), 1, 64, a.get(), 1e-5f, nullptr).isOk());
  EXPECT_FALSE(cuda::swiglu(a.get(), b.get(), nullptr, 64).isOk());
}

// Greedy ids on the device: engine::argmax's choice, ties to the lowest id;
// a 32,001-entry row in one block (scalar loads), an 8B shape's 128,256 in
// a cluster of blocks a row (ties across their slices).
TEST_F(BackendOps, ArgmaxRows) {
  for (const int64_t V : {int64_t{32001}, int64_t{128256}}) {
    const int64_t rows = 5;
    std::vector<float> logits = randomFloats(size_t(rows * V), rng_, 4.0f);
    logits[size_t(1 * V + 7)] = 50.0f; // a tie: the lower id wins
    logits[size_t(1 * V + V - 9000)] = 50.0f;
    logits[size_t(2 * V + V - 1)] = 60.0f; // the last id
    std::fill(logits.begin() + 3 * V, logits.begin() + 4 * V, -3.0f); // all equal
    logits[size_t(4 * V + V / 2 + 1)] = 70.0f; // in a middle slice
    DeviceArray<float> dlogits(logits);
    DeviceArray<int32_t> dids(static_cast<size_t>(rows));
    // The ids into pinned host memory too, written by the kernel itself.
    int32_t *hostIds = nullptr;
    ASSERT_EQ(cudaMallocHost(reinterpret_cast<void **>(&hostIds), size_t(rows) * sizeof(int32_t)),
              cudaSuccess);
    std::fill(hostIds, hostIds + rows, -1);
    Status status =
        cuda::argmaxRows(context_->stream(), dlogits.get(), rows, V, dids.get(), hostIds);
    ASSERT_TRUE(status.isOk()) << status.message();
    ASSERT_TRUE(context_->synchronize().isOk());
    const std::vector<int32_t> got = dids.download();
    EXPECT_EQ(std::vector<int32_t>(hostIds, hostIds + rows), got) << "V " << V;
    cudaFreeHost(hostIds);
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_EQ(got[size_t(r)], argmax(std::span<const float>(logits.data() + r * V, size_t(V))))
          << "V " << V << " row " << r;
    EXPECT_EQ(got[1], 7) << "V " << V;
    EXPECT_EQ(got[2], V - 1) << "V " << V;
    EXPECT_EQ(got[3], 0) << "V " << V;
    EXPECT_EQ(got[4], V / 2 + 1) << "V " << V;
  }
}

// Temperature / top-k / top-p sampling on the device: the CPU Sampler's
// token for the same uniform draw, on random rows, rows with many equal
// logits (ties at the cuts, taken by lower id) and one-id rows; the
// logprob of the token as the log-softmax of the raw logits. Each row on
// one block (no scratch) and split over several (1, 3 and 24 rows: up to
// 64 blocks a row of 151,936 ids, fewer where more rows share the device).
TEST_F(BackendOps, SampleRows) {
  struct Case {
    float temperature, topP;
    int32_t topK;
  };
  const std::vector<Case> cases = {{0.8f, 0.9f, 0}, {1.0f, 1.0f, 0},  {0.7f, 0.95f, 20},
                                   {1.3f, 1.0f, 50}, {0.0f, 1.0f, 0}, {1.0f, 1.0f, 1},
                                   {0.5f, 0.5f, 0},  {2.0f, 0.99f, 3}};
  int mismatches = 0, compared = 0;
  double worstLogprob = 0;
  for (int64_t V : {int64_t(1), int64_t(17), int64_t(1000), int64_t(2500), int64_t(32000),
                    int64_t(151936)}) {
    for (int quantised = 0; quantised < 2; ++quantised) {
      for (int64_t rows : {int64_t(1), int64_t(3), int64_t(24)}) {
        std::vector<float> logits = randomFloats(size_t(rows * V), rng_, 6.0f);
        if (quantised) // few distinct values: ties at every cut
          for (float &v : logits)
            v = std::round(v);
        std::vector<cuda::SamplingRow> params(static_cast<size_t>(rows));
        std::mt19937_64 seeds(static_cast<uint64_t>(V * 2 + quantised + 7 * rows));
        for (int64_t r = 0; r < rows; ++r) {
          const Case &c = cases[size_t(r + rows) % cases.size()];
          Sampler draw({c.temperature, c.topP, c.topK, seeds()});
          params[size_t(r)] = {c.temperature, c.topP, c.topK, 0, draw.nextUniform()};
        }
        DeviceArray<float> dlogits(logits);
        DeviceArray<cuda::SamplingRow> dparams(params);
        DeviceArray<std::byte> scratch(cuda::samplingScratchBytes(rows));
        for (bool split : {false, true}) {
          DeviceArray<int32_t> dids(static_cast<size_t>(rows));
          DeviceArray<float> dlogprobs(static_cast<size_t>(rows));
          Status status = cuda::sampleRows(
              context_->stream(), dlogits.get(), rows, V, dparams.get(), dids.get(),
              dlogprobs.get(), nullptr, nullptr, split ? scratch.get() : nullptr,
              split ? cuda::samplingScratchBytes(rows) : 0);
          ASSERT_TRUE(status.isOk()) << status.message();
          ASSERT_TRUE(context_->synchronize().isOk());
          const std::vector<int32_t> got = dids.download();
          const std::vector<float> logprobs = dlogprobs.download();
          for (int64_t r = 0; r < rows; ++r) {
            std::span<const float> row(logits.data() + r * V, size_t(V));
            const cuda::SamplingRow &p = params[size_t(r)];
            const int32_t want =
                Sampler({p.temperature, p.topP, p.topK, 0}).sample(row, p.uniform);
            ++compared;
            if (got[size_t(r)] != want) {
              ++mismatches;
              ADD_FAILURE() << "V=" << V << (quantised ? " quantised" : "") << " rows " << rows
                            << (split ? " split" : " one block") << " row " << r
                            << " T=" << p.temperature << " top-p=" << p.topP
                            << " top-k=" << p.topK << " u=" << p.uniform << ": device "
                            << got[size_t(r)] << ", CPU " << want;
              continue;
            }
            const double lp = double(row[size_t(want)]) - logNormalizer(row);
            worstLogprob = std::max(worstLogprob, std::abs(lp - double(logprobs[size_t(r)])));
          }
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << compared;
  rows().push_back({"SAMPLE", std::to_string(compared) + " rows, ids equal; logprob abs err",
                    worstLogprob, 1e-5});
  EXPECT_LE(worstLogprob, 1e-5);
}

// Few rows (1,024-thread blocks) and many (a prefill: blocks sized to the
// row, 128 to 1,024 threads, in registers, four floats a load where H is a
// multiple of 4, or, past 8 a thread, the loop); ADD+RMS_NORM against the
// CPU's add then norm.
TEST_F(BackendOps, RmsNorm) {
  for (auto [T, H] : {std::pair<int64_t, int64_t>{1, 4096}, {5, 1000}, {100, 2048}, {70, 5000},
                      {64, 300}, {80, 1002}, {65, 12000}}) {
    const std::vector<float> x = randomFloats(size_t(T * H), rng_, 3.0f);
    const std::vector<float> residual = randomFloats(size_t(T * H), rng_, 3.0f);
    const std::vector<float> weight = randomFloats(size_t(H), rng_);
    const std::string shape = "T=" + std::to_string(T) + " H=" + std::to_string(H);
    std::vector<float> want(x.size()), sum(x.size()), wantAdded(x.size());
    cpu::rmsNorm(x.data(), T, H, weight.data(), 1e-6f, want.data());
    cpu::add(x.data(), residual.data(), sum.data(), T * H);
    cpu::rmsNorm(sum.data(), T, H, weight.data(), 1e-6f, wantAdded.data());

    DeviceArray<float> dx(x), dr(residual), dw(weight), dy(x.size()), dsum(x.size());
    Status status = cuda::rmsNorm(dx.get(), T, H, dw.get(), 1e-6f, dy.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("RMS_NORM", shape, dy.download(), want, kElementwiseLimit);
    status = cuda::addRmsNorm(dx.get(), dr.get(), dsum.get(), T, H, dw.get(), 1e-6f, dy.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("ADD+RMS_NORM sum", shape, dsum.download(), sum, kElementwiseLimit);
    compare("ADD+RMS_NORM", shape, dy.download(), wantAdded, kElementwiseLimit);
  }
}

TEST_F(BackendOps, Rope) {
  struct Shape {
    int64_t heads, headDim;
    std::vector<int32_t> positions;
    float theta;
  };
  for (const Shape &s : {Shape{8, 128, {1234}, 10000.0f},
                         Shape{4, 64, {0, 1, 2, 3, 4, 5}, 10000.0f},
                         Shape{2, 128, {100000, 500000, 7}, 500000.0f}}) {
    const int64_t T = int64_t(s.positions.size());
    std::vector<float> want =
        randomFloats(size_t(T * s.heads * s.headDim), rng_);
    DeviceArray<float> dx(want);
    DeviceArray<int32_t> dpos(s.positions);
    cpu::rope(want.data(), T, s.heads, s.headDim, s.positions.data(), s.theta);
    Status status =
        cuda::rope(dx.get(), T, s.heads, s.headDim, dpos.get(), s.theta);
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("ROPE",
            "T=" + std::to_string(T) + " heads=" + std::to_string(s.heads) +
                " D=" + std::to_string(s.headDim) + " max pos=" +
                std::to_string(
                    *std::max_element(s.positions.begin(), s.positions.end())),
            dx.download(), want, kElementwiseLimit);
  }
}

TEST_F(BackendOps, SwigluAndAdd) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{100003}}) {
    const std::vector<float> a = randomFloats(size_t(n), rng_, 8.0f);
    const std::vector<float> b = randomFloats(size_t(n), rng_, 8.0f);
    std::vector<float> wantSwiglu(static_cast<size_t>(n)),
        wantAdd(static_cast<size_t>(n));
    cpu::swiglu(a.data(), b.data(), wantSwiglu.data(), n);
    cpu::add(a.data(), b.data(), wantAdd.data(), n);

    DeviceArray<float> da(a), db(b), dy(static_cast<size_t>(n));
    ASSERT_TRUE(cuda::swiglu(da.get(), db.get(), dy.get(), n).isOk());
    compare("SWIGLU", "n=" + std::to_string(n), dy.download(), wantSwiglu,
            kElementwiseLimit);
    ASSERT_TRUE(cuda::add(da.get(), db.get(), dy.get(), n).isOk());
    compare("ADD", "n=" + std::to_string(n), dy.download(), wantAdd,
            kElementwiseLimit);
  }
}

TEST_F(BackendOps, Embedding) {
  const int64_t vocab = 50, offset = 100;
  // In range, below, at both edges and past this rank's vocabulary slice.
  const std::vector<int32_t> ids = {120, 5, 99, 100, 149, 150, 131};
  // One block's columns, and rows of three parts, the last partial and
  // ending within a thread's four columns.
  for (int64_t H : {96, 2050})
    for (proto::DType dtype : {proto::F32, proto::BF16, proto::F16}) {
      const WeightTensor table =
          makeWeight(dtype, {vocab, H}, randomFloats(size_t(vocab * H), rng_));
      std::vector<float> want(ids.size() * size_t(H));
      cpu::embedding(ids.data(), int64_t(ids.size()), WeightView::of(table), offset,
                     want.data());

      DeviceWeight dtable(table);
      DeviceArray<int32_t> dids(ids);
      DeviceArray<float> dy(want.size());
      Status status =
          cuda::embedding(dids.get(), int64_t(ids.size()), dtable.view, offset, dy.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      compare("EMBEDDING",
              "T=7 V=50 H=" + std::to_string(H) + " offset=100 " +
                  std::string(weightName(dtype)),
              dy.download(), want, kElementwiseLimit);
      // The ids instead, where the device flag says so (a step whose tokens
      // the last argmax left on the device); not where it is 0.
      const std::vector<int32_t> instead(ids.rbegin(), ids.rend());
      DeviceArray<int32_t> dinstead(instead);
      DeviceArray<float> dyInstead(want.size());
      status = cuda::embedding(dinstead.get(), int64_t(instead.size()), dtable.view, offset,
                               dyInstead.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      const std::vector<float> wantInstead = dyInstead.download();
      EXPECT_NE(wantInstead, dy.download());
      for (int32_t flag : {1, 0}) {
        DeviceArray<int32_t> dflag(std::vector<int32_t>{flag});
        DeviceArray<float> dz(want.size());
        status = cuda::embedding(dids.get(), int64_t(ids.size()), dtable.view, offset, dz.get(),
                                 nullptr, {dinstead.get(), dflag.get()});
        ASSERT_TRUE(status.isOk()) << status.message();
        EXPECT_EQ(dz.download(), flag ? wantInstead : dy.download()) << "flag " << flag;
      }
    }
}

// SELECT_ROWS' gather: rows out of order and repeated, one outside the
// input (a zero row), widths of one block's columns and of several parts
// ending within a thread's four columns; the same bits as the host's copy.
TEST_F(BackendOps, SelectRows) {
  const int64_t rows = 37;
  const std::vector<int32_t> selected = {36, 0, 5, 5, 20, 37};
  for (int64_t width : {70, 2050}) {
    const std::vector<float> x = randomFloats(size_t(rows * width), rng_);
    std::vector<float> want(selected.size() * size_t(width), 0.0f);
    for (size_t i = 0; i + 1 < selected.size(); ++i)
      std::copy_n(x.begin() + selected[i] * width, width, want.begin() + int64_t(i) * width);
    DeviceArray<float> dx(x);
    DeviceArray<int32_t> dselected(selected);
    DeviceArray<float> dy(want.size());
    Status status = cuda::selectRows(dx.get(), rows, width, dselected.get(),
                                     int64_t(selected.size()), dy.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    EXPECT_EQ(dy.download(), want) << "width " << width;
  }
}

struct AttentionCase {
  std::string name;
  int64_t heads, kvHeads, headDim, blockSize, layer;
  std::vector<int32_t> positions, tokenSeq;
  std::vector<std::vector<int32_t>> blockTables;
  int64_t slidingWindow = 0;
  // Scores that grow along the keys: every query element + 1 and every
  // step key element + growth x its position, so each 64-key tile's
  // maximum passes the last one's by ~8 growth x 64 (the prefill kernel's
  // lazy rescale moves its reference maximum several times a row).
  float growth = 0.0f;
};

// The cache blocks a case's tables name (at least 8).
int64_t blocksOf(const AttentionCase &c) {
  int64_t blocks = 8;
  for (const auto &table : c.blockTables)
    for (int32_t b : table)
      blocks = std::max<int64_t>(blocks, b + 1);
  return blocks;
}

// A decode step of `rows` sequences, one query row each, at positions
// 3 + 7 r % 40 over blocks of 16 (each sequence its own blocks): enough
// rows for the group kernel's tensor-core path (mmaDecodeRows).
AttentionCase batchedDecode(std::string name, int64_t heads, int64_t kvHeads, int64_t headDim,
                            int rows) {
  AttentionCase c{std::move(name), heads, kvHeads, headDim, 16, 1, {}, {}, {}};
  int32_t next = 0;
  for (int r = 0; r < rows; ++r) {
    const int32_t position = 3 + (7 * r) % 40;
    c.positions.push_back(position);
    c.tokenSeq.push_back(r);
    std::vector<int32_t> table;
    for (int32_t b = 0; b <= position / 16; ++b)
      table.push_back(next++);
    c.blockTables.push_back(table);
  }
  return c;
}

cpu::AttentionParams paramsOf(const AttentionCase &c) {
  cpu::AttentionParams params;
  params.layer = c.layer;
  params.numHeads = c.heads;
  params.numKvHeads = c.kvHeads;
  params.headDim = c.headDim;
  params.scale = 1.0f / std::sqrt(float(c.headDim));
  params.slidingWindow = c.slidingWindow;
  return params;
}


TEST_F(BackendOps, PagedAttention) {
  auto range = [](int32_t begin, int32_t end) {
    std::vector<int32_t> v(size_t(end - begin));
    std::iota(v.begin(), v.end(), begin);
    return v;
  };
  // Blocks 0 .. n - 1 out of order (n odd).
  auto scattered = [](int32_t n) {
    std::vector<int32_t> v(size_t(n), 0);
    for (int32_t b = 0; b < n; ++b)
      v[size_t(b)] = (b * 8) % n;
    return v;
  };
  const std::vector<AttentionCase> cases = {
      {"MHA decode", 4, 4, 64, 16, 0, {40}, {0}, {{5, 2, 7}}},
      // One query row takes the group kernel (a block per KV head): groups
      // of 4 and 8 heads, keys over several chunks, a sliding window.
      {"GQA decode", 8, 2, 128, 16, 1, {100}, {0}, {{5, 2, 7, 0, 6, 1, 3}}},
      {"GQA decode group of 8", 16, 2, 64, 32, 0, {150}, {0}, {{3, 6, 1, 7, 0}}},
      {"GQA windowed decode", 4, 2, 32, 16, 0, {90}, {0}, {{6, 1, 5, 2, 7, 0}}, 40},
      // Batched decode (a row per sequence) on the group kernel too.
      {"GQA batched decode", 16, 2, 64, 16, 0, {40, 60, 9}, {0, 1, 2},
       {{5, 2, 7}, {0, 6, 1, 3}, {4}}},
      {"GQA batched windowed decode", 8, 2, 128, 16, 1, {70, 33}, {0, 1},
       {{3, 0, 6, 1, 7}, {2, 5, 4}}, 24},
      // From 16 rows the group kernel scores on tensor cores.
      batchedDecode("GQA batched decode, 16 rows", 16, 2, 64, 16),
      batchedDecode("GQA batched decode, 17 rows", 8, 2, 128, 17),
      {"GQA prefill",
       8,
       2,
       128,
       8,
       1,
       range(0, 20),
       std::vector<int32_t>(20, 0),
       {{3, 0, 6}}},
      // 70 rows over 30 cached positions: several query and key tiles.
      {"GQA long chunk",
       8,
       2,
       64,
       16,
       1,
       range(30, 100),
       std::vector<int32_t>(70, 0),
       {{7, 1, 6, 0, 5, 2, 4, 3}}},
      // A prefill chunk over cached history, then another sequence's decode.
      {"GQA mixed",
       12,
       4,
       96,
       8,
       0,
       [&] {
         auto p = range(10, 16);
         p.push_back(33);
         return p;
       }(),
       {0, 0, 0, 0, 0, 0, 1},
       {{1, 4}, {0, 2, 3, 5, 7}}},
      // Tiles of 64 rows (two full, one partial) over three key tiles.
      {"GQA long prefill",
       8,
       2,
       128,
       32,
       1,
       range(0, 150),
       std::vector<int32_t>(150, 0),
       {{7, 1, 6, 0, 5}}},
      // Mistral's sliding window inside and across key tiles.
      {"GQA windowed prefill",
       4,
       2,
       32,
       16,
       0,
       range(0, 100),
       std::vector<int32_t>(100, 0),
       {{3, 5, 1, 7, 2, 0, 4}},
       40},
      {"GQA head dim 16", 8, 2, 16, 16, 1, range(5, 70), std::vector<int32_t>(65, 0),
       {{4, 0, 3, 1, 2}}},
      // Blocks of 24 rows (not a power of two) under whole key tiles: the
      // tensor-core kernel's table lookups by division.
      {"GQA prefill, blocks of 24", 8, 2, 64, 24, 1, range(0, 150),
       std::vector<int32_t>(150, 0), {{6, 2, 5, 0, 3, 1, 4}}},
      // Up to six key tiles a query tile at head dim 64 (even and odd
      // counts), over cache blocks of 32 and 64 rows (the tile copies'
      // hoisted offsets at medium precision), and a window that starts past
      // the first tile.
      {"GQA long prefill, head dim 64", 8, 2, 64, 32, 1, range(0, 330),
       std::vector<int32_t>(330, 0), {scattered(11)}},
      {"GQA windowed long prefill, head dim 64", 8, 2, 64, 64, 0, range(0, 330),
       std::vector<int32_t>(330, 0), {scattered(7)}, 100},
      {"GQA prefill, scores growing along the keys", 8, 2, 64, 32, 1, range(0, 330),
       std::vector<int32_t>(330, 0), {scattered(11)}, 0, 0.03f},
  };
  for (const AttentionCase &c : cases) {
    const int64_t T = int64_t(c.positions.size());
    const int64_t width = c.kvHeads * c.headDim;
    const KvCacheShape shape{2, c.kvHeads, c.headDim, c.blockSize, blocksOf(c)};
    const size_t cacheFloats =
        size_t(shape.numLayers * shape.numBlocks * shape.blockSize * width);
    // The same random history in both caches (cached positions before the
    // step).
    const std::vector<float> keys = randomFloats(cacheFloats, rng_);
    const std::vector<float> values = randomFloats(cacheFloats, rng_);
    Result<KvCache> cpuCache = KvCache::create(shape);
    ASSERT_TRUE(cpuCache.isOk()) << cpuCache.message();
    auto rowOffset = [&](int64_t layer, int32_t block, int64_t slot) {
      return size_t(
          ((layer * shape.numBlocks + block) * shape.blockSize + slot) * width);
    };
    // A CPU cache holding these keys and values, laid out as the device's.
    auto fill = [&](KvCache &cache, const std::vector<float> &k, const std::vector<float> &v) {
      for (int64_t layer = 0; layer < shape.numLayers; ++layer)
        for (int32_t block = 0; block < shape.numBlocks; ++block)
          for (int64_t slot = 0; slot < shape.blockSize; ++slot) {
            const size_t at = rowOffset(layer, block, slot);
            std::copy_n(k.begin() + at, width, cache.keyRow(layer, block, slot));
            std::copy_n(v.begin() + at, width, cache.valueRow(layer, block, slot));
          }
    };
    fill(*cpuCache, keys, values);

    StepInput step;
    step.tokenIds.assign(size_t(T), 0);
    step.positions = c.positions;
    step.tokenSeq = c.tokenSeq;
    step.blockTables = c.blockTables;
    ASSERT_TRUE(validateStepInput(step, shape).isOk()) << c.name;
    const cpu::AttentionParams params = paramsOf(c);

    std::vector<float> q = randomFloats(size_t(T * c.heads * c.headDim), rng_);
    std::vector<float> k = randomFloats(size_t(T * width), rng_);
    const std::vector<float> v = randomFloats(size_t(T * width), rng_);
    if (c.growth > 0.0f) {
      for (float &x : q)
        x += 1.0f;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < width; ++i)
          k[size_t(t * width + i)] += c.growth * float(c.positions[size_t(t)]);
    }
    std::vector<float> want(q.size());
    cpu::pagedAttention(q.data(), k.data(), v.data(), step, params, *cpuCache,
                        want.data(), pool_);

    int64_t stride = 0;
    for (const auto &table : c.blockTables)
      stride = std::max<int64_t>(stride, int64_t(table.size()));
    std::vector<int32_t> tables(c.blockTables.size() * size_t(stride), 0);
    for (size_t s = 0; s < c.blockTables.size(); ++s)
      std::copy(c.blockTables[s].begin(), c.blockTables[s].end(),
                tables.begin() + s * size_t(stride));
    DeviceArray<int32_t> dpos(c.positions), dseq(c.tokenSeq), dtables(tables);
    DeviceArray<float> dq(q), dk(k), dv(v), dout(q.size()), dkeys(keys),
        dvalues(values);
    const cuda::DeviceStep deviceStep{T, dpos.get(), dseq.get(), dtables.get(),
                                      stride};
    cuda::DeviceKvCache deviceCache{shape, dkeys.get(), dvalues.get()};
    Status status =
        cuda::pagedAttention(dq.get(), dk.get(), dv.get(), deviceStep, params,
                             deviceCache, dout.get());
    ASSERT_TRUE(status.isOk()) << status.message();

    const std::string shapeText =
        c.name + " T=" + std::to_string(T) + " Hq=" + std::to_string(c.heads) +
        " Hkv=" + std::to_string(c.kvHeads) + " D=" + std::to_string(c.headDim);
    compare("ATTENTION", shapeText, dout.download(), want, kMatmulLimit);
    // The tiled prefill kernel on the same step (it stores the same keys and
    // values again), when the step has runs of one sequence.
    const std::vector<int32_t> tiles = cuda::prefillTiles(c.tokenSeq);
    if (!tiles.empty() && c.headDim <= 128) {
      DeviceArray<int32_t> dtiles(tiles);
      DeviceArray<float> tiledOut(q.size());
      cuda::DeviceStep tiledStep = deviceStep;
      tiledStep.prefillTiles = dtiles.get();
      tiledStep.numPrefillTiles = int64_t(tiles.size() / 2);
      status = cuda::pagedAttention(dq.get(), dk.get(), dv.get(), tiledStep, params,
                                    deviceCache, tiledOut.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      compare("ATTN_TILED", shapeText, tiledOut.download(), want, kMatmulLimit);
    }
    // The same step over a bf16 cache (prefill runs on tensor cores), against
    // the CPU on the same bf16-rounded history and step rows.
    {
      auto rounded = [](const std::vector<float> &x) {
        std::vector<float> r(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          r[i] = bf16Value(bf16Bits(x[i]));
        return r;
      };
      auto bits = [](const std::vector<float> &x) {
        std::vector<uint16_t> b(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          b[i] = bf16Bits(x[i]);
        return b;
      };
      const std::vector<float> roundedKeys = rounded(keys), roundedValues = rounded(values);
      Result<KvCache> roundedCache = KvCache::create(shape);
      ASSERT_TRUE(roundedCache.isOk());
      fill(*roundedCache, roundedKeys, roundedValues);
      const std::vector<float> roundedK = rounded(k), roundedV = rounded(v);
      std::vector<float> roundedWant(q.size());
      cpu::pagedAttention(q.data(), roundedK.data(), roundedV.data(), step, params,
                          *roundedCache, roundedWant.data(), pool_);
      DeviceArray<uint16_t> bkeys(bits(keys)), bvalues(bits(values));
      DeviceArray<int32_t> dtiles(tiles.empty() ? std::vector<int32_t>{0} : tiles);
      cuda::DeviceKvCache bf16Cache{shape, bkeys.get(), bvalues.get(), true};
      cuda::DeviceStep bf16Step = deviceStep;
      if (!tiles.empty() && c.headDim <= 128) {
        bf16Step.prefillTiles = dtiles.get();
        bf16Step.numPrefillTiles = int64_t(tiles.size() / 2);
      }
      DeviceArray<float> bf16Out(q.size());
      status = cuda::pagedAttention(dq.get(), dk.get(), dv.get(), bf16Step, params, bf16Cache,
                                    bf16Out.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      compare(bf16Step.numPrefillTiles > 0 ? "ATTN_TILED_BF16" : "ATTN_BF16",
              shapeText + " bf16 cache", bf16Out.download(), roundedWant, kMatmulLimit);
      // Medium precision: queries and probabilities rounded to bf16 on the
      // tensor cores, bf16-level agreement.
      if (bf16Step.numPrefillTiles > 0) {
        bf16Step.bf16Queries = true;
        status = cuda::pagedAttention(dq.get(), dk.get(), dv.get(), bf16Step, params, bf16Cache,
                                      bf16Out.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        compare("ATTN_TILED_BF16", shapeText + " medium", bf16Out.download(), roundedWant,
                kMediumLimit);
      }
      // RoPE folded into the tensor-core prefill (prefillRopeAttention, by
      // the rotations the keys' ROPE launch writes): the same rows as the
      // queries rotated first by the ROPE kernel (Rope.cuh's rotation in
      // both), at both precisions. A wrong pair or angle is off by order 1;
      // a rotated query may differ in its last bit (each kernel's compiler
      // contracts a c - b s into an FMA its own way: ~1e-6 at highest), and
      // at medium that bit may move the query's bf16 rounding.
      if (bf16Step.numPrefillTiles > 0 && c.headDim % 32 == 0) {
        std::vector<float> frequencies(size_t(c.headDim / 2));
        for (size_t i = 0; i < frequencies.size(); ++i)
          frequencies[i] = std::pow(10000.0f, -2.0f * float(i) / float(c.headDim));
        DeviceArray<float> dfrequencies(frequencies), rotated(q.size()), rotatedK(k.size()),
            rotations(size_t(T * c.headDim)), separate(q.size()), folded(q.size());
        status = cuda::rope(dq.get(), rotated.get(), T, c.heads, c.headDim, dpos.get(),
                            dfrequencies.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        // The rotations are written only in place of the rotated queries.
        EXPECT_FALSE(cuda::ropeAndStore(dq.get(), rotated.get(), dfrequencies.get(), dk.get(),
                                        rotatedK.get(), dfrequencies.get(), dv.get(), bf16Step,
                                        params, bf16Cache, nullptr, rotations.get())
                         .isOk());
        status = cuda::ropeAndStore(nullptr, nullptr, dfrequencies.get(), dk.get(),
                                    rotatedK.get(), dfrequencies.get(), dv.get(), bf16Step,
                                    params, bf16Cache, nullptr, rotations.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        // The same operands as columns of one packed product [T, q | k | v]
        // (linearGroupPacked's): the keys rotated in place there, the same
        // cache rows stored again, the same bits everywhere below.
        const int64_t qWidth = c.heads * c.headDim, packedWidth = qWidth + 2 * width;
        std::vector<float> packedRows(size_t(T * packedWidth));
        for (int64_t t = 0; t < T; ++t) {
          std::copy_n(q.begin() + t * qWidth, qWidth, packedRows.begin() + t * packedWidth);
          std::copy_n(k.begin() + t * width, width,
                      packedRows.begin() + t * packedWidth + qWidth);
          std::copy_n(v.begin() + t * width, width,
                      packedRows.begin() + t * packedWidth + qWidth + width);
        }
        DeviceArray<float> dpacked(packedRows), packedRotations(size_t(T * c.headDim)),
            packedOut(q.size());
        float *packedK = dpacked.get() + qWidth;
        status = cuda::ropeAndStore(nullptr, nullptr, dfrequencies.get(), packedK, packedK,
                                    dfrequencies.get(), packedK + width, bf16Step, params,
                                    bf16Cache, nullptr, packedRotations.get(), packedWidth);
        ASSERT_TRUE(status.isOk()) << status.message();
        {
          const std::vector<float> rotatedPacked = dpacked.download(), want = rotatedK.download();
          size_t wrong = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < width; ++i)
              wrong += rotatedPacked[size_t(t * packedWidth + qWidth + i)] != want[size_t(t * width + i)];
          EXPECT_EQ(wrong, 0u) << "keys rotated in the packed product " << shapeText;
        }
        EXPECT_FALSE(cuda::ropeAndStore(nullptr, nullptr, dfrequencies.get(), packedK, packedK,
                                        dfrequencies.get(), packedK + width, bf16Step, params,
                                        bf16Cache, nullptr, packedRotations.get(), width - 1)
                         .isOk());
        for (const bool medium : {false, true}) {
          bf16Step.bf16Queries = medium;
          ASSERT_TRUE(cuda::prefillRopeAttentionApplies(bf16Step, params, bf16Cache)) << shapeText;
          status = cuda::pagedAttention(rotated.get(), rotatedK.get(), dv.get(), bf16Step, params,
                                        bf16Cache, separate.get(), nullptr, true);
          ASSERT_TRUE(status.isOk()) << status.message();
          status = cuda::prefillRopeAttention(dq.get(), rotations.get(), bf16Step, params,
                                              bf16Cache, folded.get());
          ASSERT_TRUE(status.isOk()) << status.message();
          compare("ROPE_PREFILL_ATTN", shapeText + (medium ? " medium" : " highest"),
                  folded.download(), separate.download(), medium ? 1e-3 : 1e-5);
          // The O projection's halves from the same launch, alone (null
          // out): the split of the f32 rows above, bit for bit (hi, and lo
          // at highest precision).
          DeviceArray<uint16_t> dhi(q.size()), dlo(q.size());
          const cuda::SplitInput halves{dhi.get(), medium ? nullptr : dlo.get()};
          status = cuda::prefillRopeAttention(dq.get(), rotations.get(), bf16Step, params,
                                              bf16Cache, nullptr, nullptr, halves);
          ASSERT_TRUE(status.isOk()) << status.message();
          const std::vector<float> rows = folded.download();
          const std::vector<uint16_t> hi = dhi.download(), lo = dlo.download();
          size_t wrong = 0;
          for (size_t i = 0; i < rows.size(); ++i) {
            const uint16_t wantHi = bf16Bits(rows[i]);
            wrong += hi[i] != wantHi;
            if (!medium)
              wrong += lo[i] != bf16Bits(rows[i] - bf16Value(wantHi));
          }
          EXPECT_EQ(wrong, 0u) << "ROPE_PREFILL_ATTN halves " << shapeText
                               << (medium ? " medium" : " highest");
          // q read as the packed product's first columns: the same bits.
          status = cuda::prefillRopeAttention(dpacked.get(), packedRotations.get(), bf16Step,
                                              params, bf16Cache, packedOut.get(), nullptr, {},
                                              packedWidth);
          ASSERT_TRUE(status.isOk()) << status.message();
          compare("ROPE_PREFILL_ATTN packed", shapeText + (medium ? " medium" : " highest"),
                  packedOut.download(), rows, 0.0);
        }
        // Neither rows nor halves to write: refused.
        EXPECT_FALSE(cuda::prefillRopeAttention(dq.get(), rotations.get(), bf16Step, params,
                                                bf16Cache, nullptr)
                         .isOk());
      } else if (bf16Step.numPrefillTiles == 0) {
        EXPECT_FALSE(cuda::prefillRopeAttentionApplies(bf16Step, params, bf16Cache)) << shapeText;
      }
    }
    // Flash-decoding: every (token, head)'s keys over 3 blocks, merged.
    {
      const int64_t splits = 3;
      DeviceArray<float> scratch(size_t(T * splits * (c.heads * c.headDim + c.heads)));
      DeviceArray<float> splitOut(q.size());
      cuda::DeviceStep splitStep = deviceStep;
      splitStep.decodeSplits = splits;
      splitStep.attentionScratch = scratch.get();
      status = cuda::pagedAttention(dq.get(), dk.get(), dv.get(), splitStep, params,
                                    deviceCache, splitOut.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      compare("ATTN_SPLIT", shapeText + " 3 splits", splitOut.download(), want, kMatmulLimit);
      // The last split block of each (token, head) merging in place of the
      // merge launch: the same values, and the counters left at zero (the
      // second call reuses them).
      DeviceArray<unsigned> counters(size_t(T * c.heads));
      DeviceArray<float> fusedOut(q.size());
      splitStep.splitCounters = counters.get();
      for (int call = 0; call < 2; ++call) {
        status = cuda::pagedAttention(dq.get(), dk.get(), dv.get(), splitStep, params,
                                      deviceCache, fusedOut.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        compare("ATTN_SPLIT", shapeText + " 3 splits merged in-kernel", fusedOut.download(),
                splitOut.download(), 0.0);
      }
      const std::vector<unsigned> left = counters.download();
      EXPECT_TRUE(std::all_of(left.begin(), left.end(), [](unsigned n) { return n == 0; }));
    }
    // The stored keys and values: the whole cache must match.
    std::vector<float> cpuKeys(cacheFloats), cpuValues(cacheFloats);
    for (int64_t layer = 0; layer < shape.numLayers; ++layer)
      for (int32_t block = 0; block < shape.numBlocks; ++block)
        for (int64_t slot = 0; slot < shape.blockSize; ++slot) {
          const size_t at = rowOffset(layer, block, slot);
          std::copy_n(cpuCache->keyRow(layer, block, slot), width,
                      cpuKeys.begin() + at);
          std::copy_n(cpuCache->valueRow(layer, block, slot), width,
                      cpuValues.begin() + at);
        }
    compare("KV_STORE", shapeText + " keys", dkeys.download(), cpuKeys, 0.0);
    compare("KV_STORE", shapeText + " values", dvalues.download(), cpuValues,
            0.0);

    // Sequence parallelism's key split: each of two shards attends its own
    // blocks (ATTENTION_PARTIAL), and the merge of both (ATTENTION_MERGE)
    // is the attention above.
    const int64_t row = c.heads * c.headDim + c.heads;
    std::vector<float> gathered(size_t(T * 2 * row));
    for (int64_t shard = 0; shard < 2; ++shard) {
      Result<KvCache> shardCache = KvCache::create(shape);
      ASSERT_TRUE(shardCache.isOk());
      fill(*shardCache, keys, values);
      cpu::AttentionParams shardParams = params;
      shardParams.kvShards = 2;
      shardParams.kvShard = shard;
      std::vector<float> partial(size_t(T * row));
      cpu::partialAttention(q.data(), k.data(), v.data(), step, shardParams, *shardCache,
                            partial.data(), pool_);
      DeviceArray<float> skeys(keys), svalues(values), dpartial(partial.size());
      cuda::DeviceKvCache shardDeviceCache{shape, skeys.get(), svalues.get()};
      status = cuda::partialAttention(dq.get(), dk.get(), dv.get(), deviceStep, shardParams,
                                      shardDeviceCache, dpartial.get());
      ASSERT_TRUE(status.isOk()) << status.message();
      std::vector<float> got = dpartial.download();
      for (int64_t t = 0; t < T; ++t)
        std::copy_n(got.begin() + t * row, row,
                    gathered.begin() + (t * 2 + shard) * row);
      // A shard that owns no visible position gives -inf on both backends;
      // compare them as equal finite numbers.
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(std::isinf(got[i]), std::isinf(partial[i])) << c.name << " shard " << shard;
        if (std::isinf(got[i]) && std::isinf(partial[i]))
          got[i] = partial[i] = -1.0f;
      }
      compare("ATTN_PARTIAL", shapeText + " shard " + std::to_string(shard) + "/2", got,
              partial, kMatmulLimit);
    }
    DeviceArray<float> dgathered(gathered);
    DeviceArray<float> dmerged(q.size());
    status = cuda::mergeAttention(dgathered.get(), T, 2, c.heads, c.headDim, dmerged.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    compare("ATTN_MERGE", shapeText + " 2 shards", dmerged.download(), want, kMatmulLimit);
  }
}

// A one-token decode step's ROPEs, KV store and attention in the group
// decode kernel (ropeStoreAttention) against the two launches it replaces
// (ropeAndStore, then pagedAttention with the keys stored): the rotated
// queries and keys, every cache row, the attention's output. The step's
// row lands in the last key chunk of one split, of a later chunk, or (a
// sliding window) after the window's start; f32 and bf16 caches; one and
// three splits merged in the kernel; one and two rows (the warp decode
// kernel's two builds).
// The rows of cuDNN's attention plans: quarter octaves, so that a handful of
// plans serve every prompt length with at most a quarter of padding (no
// device needed).
TEST(CudnnAttentionRows, QuarterOctaves) {
  const std::vector<std::pair<int64_t, int64_t>> expected = {
      {256, 256},   {257, 320},   {300, 320},   {320, 320},   {321, 384},  {449, 512},
      {512, 512},   {513, 640},   {1024, 1024}, {1100, 1280}, {1500, 1536}, {2048, 2048},
      {2049, 2560}, {5000, 5120}};
  for (const auto &[T, rows] : expected)
    EXPECT_EQ(cuda::cudnnAttentionRows(T), rows) << T;
  std::set<int64_t> plans;
  for (int64_t T = 256; T <= 8192; ++T) {
    const int64_t rows = cuda::cudnnAttentionRows(T);
    ASSERT_GE(rows, T);
    ASSERT_LE(4 * rows, 5 * T) << T; // at most a quarter more
    plans.insert(rows);
  }
  EXPECT_EQ(plans.size(), 21u); // 256 .. 8192 in quarter octaves
}

// A prompt's attention on cuDNN (cuda::cudnnAttention, as the backend runs
// it at medium precision): ropeStoreDense stores the same cache rows as
// ropeAndStore and writes the rotated bf16 rows cuDNN reads; cuDNN's causal
// attention over them against the paged kernel's over the f32 rows (290
// and 300 share the plan for 320 rows). Skips where cuDNN is not loaded (no
// libcudnn.so.9), saying why.
TEST_F(BackendOps, CudnnAttention) {
  struct Case {
    int64_t tokens, heads, kvHeads, headDim;
  };
  for (const Case &c : {Case{300, 8, 2, 64}, Case{290, 8, 2, 64}, Case{512, 32, 4, 64},
                        Case{260, 8, 2, 128}}) {
    const int64_t T = c.tokens, D = c.headDim, half = D / 2, blockSize = 16;
    const int64_t width = c.kvHeads * D, qWidth = c.heads * D;
    const int64_t blocks = (T + blockSize - 1) / blockSize;
    cpu::AttentionParams params;
    params.numHeads = c.heads;
    params.numKvHeads = c.kvHeads;
    params.headDim = D;
    params.scale = 1.0f / std::sqrt(float(D));
    cuda::DenseAttention shape;
    shape.tokens = T;
    shape.heads = c.heads;
    shape.kvHeads = c.kvHeads;
    shape.headDim = D;
    shape.scale = params.scale;
    shape.rowStride = qWidth + 2 * width;
    // A shape's first call builds its execution plan (once a process).
    const auto began = std::chrono::steady_clock::now();
    if (!cuda::cudnnAttentionTakes(*context_, shape))
      GTEST_SKIP() << "cuDNN takes no attention here: "
                   << cuda::cudnnAttentionDescription(*context_);
    std::printf("  %s: T=%ld plan built in %.1f ms\n",
                cuda::cudnnAttentionDescription(*context_).c_str(), long(c.tokens),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began)
                    .count());
    std::vector<float> qFrequencies(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      qFrequencies[size_t(i)] = std::pow(10000.0f, -2.0f * float(i) / float(D));
    const std::vector<float> q = randomFloats(size_t(T * qWidth), rng_);
    const std::vector<float> k = randomFloats(size_t(T * width), rng_);
    const std::vector<float> v = randomFloats(size_t(T * width), rng_);
    std::vector<int32_t> positions(static_cast<size_t>(T)), seqs(static_cast<size_t>(T), 0);
    std::iota(positions.begin(), positions.end(), 0);
    std::vector<int32_t> table(static_cast<size_t>(blocks)); // blocks out of order
    for (int64_t b = 0; b < blocks; ++b)
      table[size_t(b)] = int32_t(blocks - 1 - b);
    const KvCacheShape cacheShape{1, c.kvHeads, D, blockSize, blocks};
    const size_t cacheElements = size_t(blocks * blockSize * width);
    DeviceArray<int32_t> dpos(positions), dseq(seqs), dtable(table);
    DeviceArray<float> dq(q), dk(k), dv(v), dqf(qFrequencies);
    DeviceArray<float> qOut(q.size()), kOut(k.size()), want(q.size()), keys(cacheElements),
        values(cacheElements), rotations(size_t(T * D));
    const int64_t rows = cuda::cudnnAttentionRows(T);
    DeviceArray<uint16_t> keyBits(cacheElements), valueBits(cacheElements),
        denseRows(size_t(rows * shape.rowStride)), out(size_t(rows * qWidth));
    const cuda::DeviceStep step{T, dpos.get(), dseq.get(), dtable.get(), blocks};
    cuda::DeviceKvCache f32Cache{cacheShape, keys.get(), values.get()};
    cuda::DeviceKvCache bf16Cache{cacheShape, keyBits.get(), valueBits.get(), true};
    const std::string label = "T=" + std::to_string(T) + " " + std::to_string(c.heads) + "/" +
                              std::to_string(c.kvHeads) + " heads D=" + std::to_string(D);
    Status status = cuda::ropeAndStore(dq.get(), qOut.get(), dqf.get(), dk.get(), kOut.get(),
                                       dqf.get(), dv.get(), step, params, f32Cache);
    ASSERT_TRUE(status.isOk()) << status.message();
    status = cuda::pagedAttention(qOut.get(), kOut.get(), dv.get(), step, params, f32Cache,
                                  want.get(), nullptr, true);
    ASSERT_TRUE(status.isOk()) << status.message();
    status = cuda::ropeStoreDense(dq.get(), dqf.get(), dk.get(), nullptr, dqf.get(), dv.get(),
                                  step, params, bf16Cache, denseRows.get(), rotations.get());
    ASSERT_TRUE(status.isOk()) << status.message();
    shape.q = denseRows.get();
    shape.k = denseRows.get() + qWidth;
    shape.v = denseRows.get() + qWidth + width;
    shape.out = out.get();
    status = cuda::cudnnAttention(*context_, shape);
    ASSERT_TRUE(status.isOk()) << status.message();
    const auto widened = [](const std::vector<uint16_t> &bits) {
      std::vector<float> x(bits.size());
      for (size_t i = 0; i < bits.size(); ++i)
        x[i] = bf16Value(bits[i]);
      return x;
    };
    const auto rounded = [](const std::vector<float> &x) {
      std::vector<float> y(x.size());
      for (size_t i = 0; i < x.size(); ++i)
        y[i] = bf16Value(bf16Bits(x[i]));
      return y;
    };
    // The cache as ropeAndStore stores it (bf16 of the same f32 rotations).
    compare("CUDNN_ATTN", label + " cached keys", widened(keyBits.download()),
            rounded(keys.download()), 0.0);
    compare("CUDNN_ATTN", label + " cached values", widened(valueBits.download()),
            rounded(values.download()), 0.0);
    // The dense rows: [rotated q | rotated k | v] a token, in bf16.
    std::vector<float> dense = widened(denseRows.download());
    dense.resize(size_t(T * shape.rowStride));
    const std::vector<float> qs = qOut.download(), ks = kOut.download();
    std::vector<float> expected(dense.size());
    for (int64_t t = 0; t < T; ++t) {
      float *row = expected.data() + t * shape.rowStride;
      std::copy_n(qs.begin() + t * qWidth, qWidth, row);
      std::copy_n(ks.begin() + t * width, width, row + qWidth);
      std::copy_n(v.begin() + t * width, width, row + qWidth + width);
    }
    std::vector<float> written = widened(out.download());
    written.resize(size_t(T * qWidth)); // the padded rows' may be written too
    compare("CUDNN_ATTN", label + " dense rows", dense, rounded(expected), 0.0);
    compare("CUDNN_ATTN", label + " (" + std::to_string(rows) + " rows' plan)", written,
            want.download(), kMediumLimit);
  }
}

TEST_F(BackendOps, RopeStoreAttention) {
  const std::vector<AttentionCase> cases = {
      {"MHA", 4, 4, 64, 16, 0, {40}, {0}, {{5, 2, 7}}},
      {"GQA group of 4", 8, 2, 128, 16, 1, {100}, {0}, {{5, 2, 7, 0, 6, 1, 3}}},
      {"GQA group of 8", 16, 2, 64, 32, 0, {150}, {0}, {{3, 6, 1, 7, 0}}},
      // Groups of 4 at D = 64 (Llama 3.2 1B's shape): the warp decode with
      // half its warps idle.
      {"GQA group of 4 D=64", 8, 2, 64, 16, 1, {70}, {0}, {{4, 1, 6, 0, 3}}},
      {"GQA windowed", 4, 2, 32, 16, 0, {90}, {0}, {{6, 1, 5, 2, 7, 0}}, 40},
      {"GQA D=96", 12, 4, 96, 8, 1, {33}, {0}, {{0, 2, 3, 5, 7}}},
      // A batched decode step: a row per sequence, each rotating and
      // storing its own row.
      {"GQA batched", 16, 2, 64, 16, 0, {40, 60, 9}, {0, 1, 2}, {{5, 2, 7}, {0, 6, 1, 3}, {4}}},
      // Two rows (the warp decode's many-row build), one of them past two
      // key chunks: the chunks copied a chunk ahead, the step's row in the
      // third.
      {"GQA batched, a row past two chunks", 16, 2, 64, 16, 1, {140, 9}, {0, 1},
       {{5, 2, 7, 0, 6, 1, 3, 8, 4}, {9}}},
      // The same at head dim 128 in groups of 4 (the 8B's shape; two rows
      // take the group kernel, one row the warp kernel with two warps a
      // head: "GQA group of 4").
      {"GQA batched D=128, a row past two chunks", 8, 2, 128, 16, 0, {140, 9}, {0, 1},
       {{5, 2, 7, 0, 6, 1, 3, 8, 4}, {9}}},
      batchedDecode("GQA batched, 16 rows", 16, 2, 64, 16),
      batchedDecode("GQA batched, 16 rows D=128", 8, 2, 128, 16),
  };
  for (const AttentionCase &c : cases)
    for (const bool bf16 : {false, true})
      for (const int64_t splits : {int64_t(1), int64_t(3)}) {
        const int64_t width = c.kvHeads * c.headDim, half = c.headDim / 2;
        const KvCacheShape shape{2, c.kvHeads, c.headDim, c.blockSize, blocksOf(c)};
        const size_t cacheElements =
            size_t(shape.numLayers * shape.numBlocks * shape.blockSize * width);
        std::vector<float> qFrequencies(static_cast<size_t>(half)),
            kFrequencies(static_cast<size_t>(half));
        for (int64_t i = 0; i < half; ++i) {
          qFrequencies[size_t(i)] = std::pow(10000.0f, -2.0f * float(i) / float(c.headDim));
          kFrequencies[size_t(i)] = std::pow(500000.0f, -2.0f * float(i) / float(c.headDim));
        }
        const int64_t T = int64_t(c.positions.size());
        const std::vector<float> q = randomFloats(size_t(T * c.heads * c.headDim), rng_);
        const std::vector<float> k = randomFloats(size_t(T * width), rng_);
        const std::vector<float> v = randomFloats(size_t(T * width), rng_);
        const std::vector<float> history = randomFloats(cacheElements, rng_);
        std::vector<uint16_t> historyBits(cacheElements);
        for (size_t i = 0; i < cacheElements; ++i)
          historyBits[i] = bf16Bits(history[i]);
        const cpu::AttentionParams params = paramsOf(c);
        size_t stride = 0;
        for (const auto &table : c.blockTables)
          stride = std::max(stride, table.size());
        std::vector<int32_t> tables(c.blockTables.size() * stride, 0);
        for (size_t r = 0; r < c.blockTables.size(); ++r)
          std::copy(c.blockTables[r].begin(), c.blockTables[r].end(), tables.begin() + r * stride);
        DeviceArray<int32_t> dpos(c.positions), dseq(c.tokenSeq), dtable(tables);
        DeviceArray<float> dq(q), dk(k), dv(v), dqf(qFrequencies), dkf(kFrequencies);
        DeviceArray<float> scratch(size_t(T * splits * (c.heads * c.headDim + c.heads)));
        DeviceArray<unsigned> counters(size_t(T * c.heads));
        cuda::DeviceStep step{T, dpos.get(), dseq.get(), dtable.get(), int64_t(stride)};
        if (splits > 1) {
          step.decodeSplits = splits;
          step.attentionScratch = scratch.get();
          step.splitCounters = counters.get();
        }
        struct Run {
          DeviceArray<float> keys, values, qOut, kOut, out;
          DeviceArray<uint16_t> keyBits, valueBits;
        };
        auto makeRun = [&] {
          return Run{DeviceArray<float>(history), DeviceArray<float>(history),
                     DeviceArray<float>(q.size()), DeviceArray<float>(k.size()),
                     DeviceArray<float>(q.size()), DeviceArray<uint16_t>(historyBits),
                     DeviceArray<uint16_t>(historyBits)};
        };
        Run separate = makeRun(), fused = makeRun(), whole = makeRun();
        auto cacheOf = [&](Run &run) {
          return bf16 ? cuda::DeviceKvCache{shape, run.keyBits.get(), run.valueBits.get(), true}
                      : cuda::DeviceKvCache{shape, run.keys.get(), run.values.get()};
        };
        cuda::DeviceKvCache separateCache = cacheOf(separate), fusedCache = cacheOf(fused),
                            wholeCache = cacheOf(whole);
        const std::string label = c.name + " D=" + std::to_string(c.headDim) +
                                  (bf16 ? " bf16" : " f32") + " splits=" +
                                  std::to_string(splits);
        ASSERT_TRUE(cuda::ropeStoreAttentionApplies(step, params, fusedCache)) << label;
        Status status = cuda::ropeAndStore(dq.get(), separate.qOut.get(), dqf.get(), dk.get(),
                                           separate.kOut.get(), dkf.get(), dv.get(), step,
                                           params, separateCache);
        ASSERT_TRUE(status.isOk()) << status.message();
        status = cuda::pagedAttention(separate.qOut.get(), separate.kOut.get(), dv.get(), step,
                                      params, separateCache, separate.out.get(), nullptr, true);
        ASSERT_TRUE(status.isOk()) << status.message();
        status = cuda::ropeStoreAttention(dq.get(), fused.qOut.get(), dqf.get(), dk.get(),
                                          fused.kOut.get(), dkf.get(), dv.get(), step, params,
                                          fusedCache, fused.out.get());
        ASSERT_TRUE(status.isOk()) << status.message();
        compare("ROPE_STORE_ATTN", label + " queries", fused.qOut.download(),
                separate.qOut.download(), 1e-6);
        compare("ROPE_STORE_ATTN", label + " keys", fused.kOut.download(),
                separate.kOut.download(), 1e-6);
        auto cacheFloats = [&](Run &run, bool keys) {
          if (!bf16)
            return keys ? run.keys.download() : run.values.download();
          const std::vector<uint16_t> bits = keys ? run.keyBits.download() : run.valueBits.download();
          std::vector<float> x(bits.size());
          for (size_t i = 0; i < bits.size(); ++i)
            x[i] = bf16Value(bits[i]);
          return x;
        };
        // One bf16 step where a key's rotation differs in the last f32 bit.
        const double cacheLimit = bf16 ? 1e-3 : 1e-6;
        compare("ROPE_STORE_ATTN", label + " cached keys", cacheFloats(fused, true),
                cacheFloats(separate, true), cacheLimit);
        compare("ROPE_STORE_ATTN", label + " cached values", cacheFloats(fused, false),
                cacheFloats(separate, false), 0.0);
        compare("ROPE_STORE_ATTN", label, fused.out.download(), separate.out.download(), 1e-5);
        // A small product reading the output: a one-row step's blocks then
        // take their multiprocessors whole (padded shared memory), the same
        // bits.
        status = cuda::ropeStoreAttention(dq.get(), whole.qOut.get(), dqf.get(), dk.get(),
                                          whole.kOut.get(), dkf.get(), dv.get(), step, params,
                                          wholeCache, whole.out.get(), nullptr,
                                          cuda::ReaderShape{64, c.heads * c.headDim});
        ASSERT_TRUE(status.isOk()) << status.message();
        compare("ROPE_STORE_ATTN", label + " multiprocessors whole", whole.out.download(),
                fused.out.download(), 0.0);
        compare("ROPE_STORE_ATTN", label + " multiprocessors whole, cached values",
                cacheFloats(whole, false), cacheFloats(fused, false), 0.0);
      }
}

} // namespace
} // namespace llmir::engine
