// Each CPU kernel against a naive double-precision reference.
#include "TestUtil.h"
#include "kernels/cpu/AmxMatmul.h"
#include "kernels/cpu/Simd.h"

#include "llmir/engine/CpuKernels.h"
#include "llmir/engine/HugePages.h"
#include "llmir/engine/ThreadPool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <limits>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

namespace llmir::engine {
namespace {

using namespace testing;

TEST(DTypeConversion, RoundTripsExactValuesAndRoundsToNearestEven) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 0x1p-24f, 0.15625f}) {
    EXPECT_EQ(f16ToF32(f32ToF16(v)), v) << v;
    EXPECT_EQ(bf16ToF32(f32ToBf16(v)), v == 65504.0f ? 65536.0f : v) << v;
  }
  // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: even wins.
  EXPECT_EQ(bf16ToF32(f32ToBf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16ToF32(f32ToBf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(f16ToF32(f32ToF16(1.0f + 0x1p-11f)), 1.0f);
  EXPECT_TRUE(std::isinf(f16ToF32(f32ToF16(1e6f))));
}

// The CPU backend's weight copies: 64-byte aligned, contents kept, small
// copies sharing a region, one larger than a region getting its own; each
// copy stays valid while later ones are made.
TEST(HugePageArena, CopiesKeepContentsAndAlignment) {
  HugePageArena arena;
  std::vector<std::vector<std::byte>> sources;
  std::vector<const std::byte *> copies;
  for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{3} << 20, size_t{70} << 20,
                   size_t{100}}) {
    std::vector<std::byte> bytes(n);
    for (size_t i = 0; i < n; ++i)
      bytes[i] = static_cast<std::byte>((i * 131 + n) & 0xff);
    Result<const std::byte *> copy = arena.copy(bytes.data(), n);
    ASSERT_TRUE(copy.isOk()) << copy.message();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*copy) % 64, 0u) << n;
    sources.push_back(std::move(bytes));
    copies.push_back(*copy);
  }
  for (size_t i = 0; i < sources.size(); ++i)
    EXPECT_TRUE(std::equal(sources[i].begin(), sources[i].end(), copies[i])) << i;
  Result<HugePageRegion> region = HugePageRegion::allocate(5);
  ASSERT_TRUE(region.isOk());
  EXPECT_EQ(region->size(), HugePageRegion::kHugePage);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(region->data()) % HugePageRegion::kHugePage, 0u);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(4);
  for (size_t n : {0u, 1u, 3u, 17u, 1000u}) {
    std::vector<std::atomic<int>> hits(n);
    pool.parallelFor(n, 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i)
        ++hits[i];
    });
    for (size_t i = 0; i < n; ++i)
      EXPECT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

// (dtype, T, K, N, with bias)
class LinearTest
    : public ::testing::TestWithParam<
          std::tuple<proto::DType, int64_t, int64_t, int64_t, bool>> {};

TEST_P(LinearTest, MatchesReference) {
  auto [dtype, T, K, N, withBias] = GetParam();
  std::mt19937 rng(7);
  std::vector<float> x = randomFloats(static_cast<size_t>(T * K), rng);
  WeightTensor w = makeWeight(dtype, {N, K},
                              randomFloats(static_cast<size_t>(N * K), rng));
  std::vector<float> bias = randomFloats(static_cast<size_t>(N), rng);
  ThreadPool pool(3);
  std::vector<float> y(static_cast<size_t>(T * N), -1.0f);
  cpu::linear(x.data(), T, WeightView::of(w), withBias ? bias.data() : nullptr,
              y.data(), pool);
  std::vector<double> ref = refLinear(toDouble(x), T, weightValues(w), N, K);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double expected = ref[t * N + n] + (withBias ? bias[n] : 0.0);
      // Sums of K products of magnitude <= 1: allow f32 accumulation error.
      ASSERT_NEAR(y[t * N + n], expected, 2e-6 * K) << "t=" << t << " n=" << n;
    }
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndShapes, LinearTest,
    ::testing::Values(
        std::make_tuple(proto::F32, 1, 67, 37, false),
        std::make_tuple(proto::F32, 5, 67, 37, true),
        std::make_tuple(proto::BF16, 1, 67, 37, true),
        std::make_tuple(proto::BF16, 1, 256, 300, false),
        std::make_tuple(proto::BF16, 5, 67, 37, false),
        std::make_tuple(proto::F16, 1, 67, 37, false),
        std::make_tuple(proto::F16, 4, 67, 37, true),
        // N larger than one widened tile (1024 rows at K = 4096).
        std::make_tuple(proto::BF16, 3, 4096, 2100, false),
        // Prefill (T > 8: the GEMM): rows not in 8s, K not in 16s (the
        // packing's tail), N not in 32-column panels.
        std::make_tuple(proto::F32, 37, 67, 37, true),
        std::make_tuple(proto::BF16, 37, 67, 37, false),
        std::make_tuple(proto::F16, 20, 67, 70, false),
        std::make_tuple(proto::BF16, 9, 293, 100, true),
        std::make_tuple(proto::F32, 64, 576, 96, false),
        // Tile shapes (K in 32s, N in 16s: AMX where the CPU has it): row
        // blocks in pairs and a partial last one, a 16-column last panel.
        std::make_tuple(proto::BF16, 37, 576, 96, true),
        std::make_tuple(proto::BF16, 9, 64, 48, false),
        std::make_tuple(proto::BF16, 64, 1536, 32, false),
        // Several 1 MiB chunks of packed panels a thread.
        std::make_tuple(proto::BF16, 20, 4096, 400, false),
        // The same with f32 weights (AMX: three terms each, nine products).
        std::make_tuple(proto::F32, 37, 576, 96, true),
        std::make_tuple(proto::F32, 9, 64, 48, false),
        std::make_tuple(proto::F32, 64, 1536, 32, false),
        std::make_tuple(proto::F32, 20, 4096, 400, false)));

// Medium matmul precision (bf16 products): with bf16 weights, the product
// of x rounded to bf16 (nearest even), against the double reference on the
// same rounded x; as tight as the f32 test (the products are exact in f32,
// only the f32 sums differ). Covers the `vdpbf16ps` GEMV (K tails under 32:
// masked loads) and pair-packed GEMM (pair counts not in 16s), and the
// rounding fallback (odd K; other ISAs).
class MediumLinearTest
    : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(MediumLinearTest, MatchesReferenceOfRoundedActivations) {
  auto [T, K, N] = GetParam();
  std::mt19937 rng(11);
  std::vector<float> x = randomFloats(static_cast<size_t>(T * K), rng, 2.0f);
  const std::vector<float> values = randomFloats(static_cast<size_t>(N * K), rng);
  WeightTensor w = makeWeight(proto::BF16, {N, K}, values);
  std::vector<float> bias = randomFloats(static_cast<size_t>(N), rng);
  ThreadPool pool(3);
  std::vector<float> y(static_cast<size_t>(T * N), -1.0f);
  cpu::linear(x.data(), T, WeightView::of(w), bias.data(), y.data(), pool, true);
  std::vector<double> rounded(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    rounded[i] = bf16ToF32(f32ToBf16(x[i]));
  std::vector<double> ref = refLinear(rounded, T, weightValues(w), N, K);
  std::vector<double> unrounded = refLinear(toDouble(x), T, weightValues(w), N, K);
  double farthest = 0; // from the reference on unrounded x: the rounding shows
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      const double expected = ref[t * N + n] + bias[n];
      ASSERT_NEAR(y[t * N + n], expected, 2e-6 * K) << "t=" << t << " n=" << n;
      farthest = std::max(farthest, std::fabs(y[t * N + n] - unrounded[t * N + n] - bias[n]));
    }
  EXPECT_GT(farthest, 4e-6 * K) << "x was not rounded to bf16";

  // Other weights are unaffected: f32 weights give the highest-precision result.
  WeightTensor w32 = makeWeight(proto::F32, {N, K}, values);
  std::vector<float> medium(y.size()), highest(y.size());
  cpu::linear(x.data(), T, WeightView::of(w32), nullptr, medium.data(), pool, true);
  cpu::linear(x.data(), T, WeightView::of(w32), nullptr, highest.data(), pool, false);
  EXPECT_EQ(medium, highest);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MediumLinearTest,
    ::testing::Values(std::make_tuple(1, 67, 37), std::make_tuple(1, 256, 300),
                      std::make_tuple(3, 100, 40), std::make_tuple(8, 576, 65),
                      std::make_tuple(9, 293, 100), // odd K: rounded x, f32 GEMM
                      std::make_tuple(12, 576, 64), std::make_tuple(37, 66, 37),
                      std::make_tuple(20, 1536, 70), std::make_tuple(64, 32, 96),
                      std::make_tuple(33, 64, 48), std::make_tuple(16, 576, 96)));

// AMX's three bf16 terms of an f32 add back to it exactly, each term a bf16
// (its low 16 bits zero); infinities and NaNs go whole into the first.
TEST(Amx, ThreeTermsAddBackToEveryF32Exactly) {
  if (!cpu::amx::available())
    GTEST_SKIP() << "no AMX-BF16 here (or LLMIR_CPU_ISA forces another set)";
  std::mt19937 rng(5);
  std::vector<float> x = randomFloats(20 * 64, rng, 3.0f);
  for (size_t i = 0; i < x.size(); i += 7)
    x[i] *= std::ldexp(1.0f, static_cast<int>(i % 200) - 100);
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 3.0e38f, 1.0e-30f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            std::bit_cast<float>(0x7f800001u)};
  std::copy(std::begin(specials), std::end(specials), x.begin());
  ThreadPool pool(2);
  cpu::amx::Activations terms;
  cpu::amx::split(x.data(), 20, 64, 3, terms, pool);
  ASSERT_EQ(terms.rowBlocks(), 2);
  auto value = [&](int part, size_t i) {
    return bf16ToF32(terms.term(part, static_cast<int64_t>(i / 64), static_cast<int64_t>(i % 64)));
  };
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(value(0, i))) << i;
      EXPECT_EQ(value(1, i), 0.0f);
      continue;
    }
    if (std::isinf(x[i])) {
      EXPECT_EQ(value(0, i), x[i]);
      EXPECT_EQ(value(1, i), 0.0f);
      EXPECT_EQ(value(2, i), 0.0f);
      continue;
    }
    // hi + mid is exact in f32 (mid is the rest of hi's truncation); so is
    // adding lo, the rest of mid's.
    EXPECT_EQ(value(0, i) + value(1, i) + value(2, i), x[i]) << "i=" << i;
  }
  for (int p = 0; p < 3; ++p) // the padding rows are zero
    for (int64_t t = 20; t < 32; ++t)
      for (int64_t k = 0; k < 64; ++k)
        ASSERT_EQ(terms.term(p, t, k), 0) << p << " " << t << " " << k;
}

// Several weights of one input in one split over the pool (the decode
// GEMVs of Q, K, V): each output exactly as linear computes it alone, for
// few tokens (the grouped GEMV) and many (the GEMM), at both precisions.
TEST(LinearGroup, EachOutputAsLinearAlone) {
  std::mt19937 rng(5);
  ThreadPool pool(3);
  for (proto::DType dtype : {proto::F32, proto::BF16})
    for (int64_t T : {1, 3, 20})
      for (bool bf16Products : {false, true}) {
        const int64_t K = 96;
        const std::vector<int64_t> widths = {96, 32, 32, 130};
        std::vector<float> x = randomFloats(static_cast<size_t>(T * K), rng);
        std::vector<WeightTensor> weights;
        std::vector<std::vector<float>> biases, got, want;
        for (int64_t N : widths) {
          weights.push_back(makeWeight(dtype, {N, K}, randomFloats(static_cast<size_t>(N * K), rng)));
          biases.push_back(randomFloats(static_cast<size_t>(N), rng));
          got.emplace_back(static_cast<size_t>(T * N), -1.0f);
          want.emplace_back(static_cast<size_t>(T * N), -2.0f);
        }
        std::vector<cpu::LinearOutput> outputs;
        for (size_t i = 0; i < widths.size(); ++i) {
          const float *bias = i == 1 ? biases[i].data() : nullptr;
          outputs.push_back({WeightView::of(weights[i]), bias, got[i].data()});
          cpu::linear(x.data(), T, WeightView::of(weights[i]), bias, want[i].data(), pool,
                      bf16Products);
        }
        cpu::linearGroup(x.data(), T, outputs, pool, bf16Products);
        for (size_t i = 0; i < widths.size(); ++i)
          EXPECT_EQ(got[i], want[i]) << dtypeName(dtype) << " T=" << T << " output " << i
                                     << (bf16Products ? " medium" : "");
      }
}

// The decode GEMVs read a thread's rows as two streams (row i beside row
// i + half of its range, AVX-512): a row's sum must not depend on which row
// it was paired with or whether it was left alone, i.e. on how the pool
// split the rows. Alone on 1 thread, output 0 (37 rows) pairs row i with
// i + 18 and leaves row 36 alone, output 1 (64 rows) pairs i with i + 32;
// grouped on 3 threads (chunks of 64 rows over both) output 1 is split
// into 27 and 37 rows, so its rows 26 and 63 are alone and the rest pair
// otherwise.
TEST(Linear, DecodeRowsIdenticalWhateverThePoolSplit) {
  std::mt19937 rng(9);
  ThreadPool one(1), three(3);
  for (proto::DType dtype : {proto::F32, proto::BF16, proto::F16})
    for (int64_t K : {64, 67, 256, 576})
      for (int64_t T : {1, 3})
        for (bool bf16Products : {false, true}) {
          const std::vector<int64_t> widths = {37, 64};
          std::vector<float> x = randomFloats(static_cast<size_t>(T * K), rng);
          std::vector<WeightTensor> weights;
          std::vector<std::vector<float>> grouped, alone;
          std::vector<cpu::LinearOutput> outputs;
          for (int64_t N : widths) {
            weights.push_back(
                makeWeight(dtype, {N, K}, randomFloats(static_cast<size_t>(N * K), rng)));
            grouped.emplace_back(static_cast<size_t>(T * N), -1.0f);
            alone.emplace_back(static_cast<size_t>(T * N), -2.0f);
          }
          for (size_t i = 0; i < widths.size(); ++i) {
            outputs.push_back({WeightView::of(weights[i]), nullptr, grouped[i].data()});
            cpu::linear(x.data(), T, WeightView::of(weights[i]), nullptr, alone[i].data(),
                        one, bf16Products);
          }
          cpu::linearGroup(x.data(), T, outputs, three, bf16Products);
          for (size_t i = 0; i < widths.size(); ++i)
            EXPECT_EQ(grouped[i], alone[i]) << dtypeName(dtype) << " K=" << K << " T=" << T
                                            << " output " << i
                                            << (bf16Products ? " medium" : "");
        }
}

// Every prefetch form of the decode GEMVs, and the mix gemvKernels picks
// per thread count, computes the same sums in the same order.
TEST(Gemv, EveryPrefetchFormGivesIdenticalRows) {
  std::mt19937 rng(11);
  const int64_t N = 70, K = 576, T = 2;
  std::vector<float> x = randomFloats(static_cast<size_t>(T * K), rng);
  std::vector<uint16_t> xBits(x.size());
  cpu::simd::kernels().toBf16(x.data(), xBits.data(), T * K);
  const cpu::simd::Kernels *sets[] = {
      &cpu::simd::gemvKernelsWith(cpu::simd::kNoPrefetch),
      &cpu::simd::gemvKernelsWith(cpu::simd::kPrefetchL2),
      &cpu::simd::gemvKernelsWith(cpu::simd::kPrefetchNta), &cpu::simd::gemvKernels(1),
      &cpu::simd::gemvKernels(2)};
  for (proto::DType dtype : {proto::F32, proto::BF16, proto::F16})
    for (bool dot : {false, true}) {
      if (dot && (dtype != proto::BF16 || !cpu::simd::kernels().gemvBf16Dot))
        continue;
      const WeightTensor w =
          makeWeight(dtype, {N, K}, randomFloats(static_cast<size_t>(N * K), rng));
      const WeightView view = WeightView::of(w);
      const int kind = dtype == proto::BF16 ? cpu::simd::kBf16
                       : dtype == proto::F16 ? cpu::simd::kF16
                                             : cpu::simd::kF32;
      std::vector<std::vector<float>> ys;
      for (const cpu::simd::Kernels *set : sets) {
        ys.emplace_back(static_cast<size_t>(T * N), -1.0f);
        if (dot)
          set->gemvBf16Dot(xBits.data(), T, view.data, K, 0, N, ys.back().data(), N);
        else
          set->gemv[kind](x.data(), T, view.data, K, 0, N, ys.back().data(), N);
      }
      for (size_t i = 1; i < ys.size(); ++i)
        EXPECT_EQ(ys[i], ys[0]) << dtypeName(dtype) << (dot ? " vdpbf16ps" : "") << " set "
                                << i;
    }
}

// Decode attention walks a token's rows with every block for all groups of
// query heads, or with every group over all blocks (DecodeAttentionOrder),
// each prefetching its own way: the sums are the same in the same order,
// so both give identical outputs and log-sum-exps, for f32 and bf16 rows,
// lengths around the key blocks and the prefetch distances (16, 24), groups
// of 1-4 heads, and rows in runs of 16 (cache blocks) that are not
// contiguous with each other.
TEST(DecodeAttention, EveryOrderGivesIdenticalRows) {
  std::mt19937 rng(5);
  const cpu::simd::Kernels &k = cpu::simd::kernels();
  const int64_t D = 64;
  for (const std::vector<int64_t> &counts :
       {std::vector<int64_t>{3, 3, 3}, std::vector<int64_t>{4, 2}, std::vector<int64_t>{1},
        std::vector<int64_t>{4, 4, 1, 2}})
    for (int64_t L : {1, 7, 16, 17, 33, 40, 41, 100, 300})
      for (int kind : {cpu::simd::kF32, cpu::simd::kBf16}) {
        const int64_t groups = static_cast<int64_t>(counts.size());
        const int64_t rowElements = groups * D, blockRows = 16, gapElements = 64;
        const size_t element = kind == cpu::simd::kF32 ? 4 : 2;
        const int64_t blocks = (L + blockRows - 1) / blockRows;
        const size_t rowBytes = static_cast<size_t>(rowElements) * element;
        const size_t blockBytes = static_cast<size_t>(blockRows) * rowBytes +
                                  static_cast<size_t>(gapElements) * element;
        std::vector<std::byte> keyBytes(static_cast<size_t>(blocks) * blockBytes);
        std::vector<std::byte> valueBytes(keyBytes.size());
        for (std::vector<std::byte> *bytes : {&keyBytes, &valueBytes}) {
          const size_t n = bytes->size() / element;
          const std::vector<float> x = randomFloats(n, rng);
          if (kind == cpu::simd::kF32) {
            std::memcpy(bytes->data(), x.data(), n * 4);
          } else {
            std::vector<uint16_t> bits(n);
            k.toBf16(x.data(), bits.data(), static_cast<int64_t>(n));
            std::memcpy(bytes->data(), bits.data(), n * 2);
          }
        }
        std::vector<const void *> keys, values;
        for (int64_t j = 0; j < L; ++j) {
          const size_t at = static_cast<size_t>(j / blockRows) * blockBytes +
                            static_cast<size_t>(j % blockRows) * rowBytes;
          keys.push_back(keyBytes.data() + at);
          values.push_back(valueBytes.data() + at);
        }
        std::vector<int64_t> offsets;
        for (int64_t g = 0; g < groups; ++g)
          offsets.push_back(g * D);
        const std::vector<float> queryData =
            randomFloats(static_cast<size_t>(groups * 4 * D), rng);
        std::vector<const float *> queries(static_cast<size_t>(groups * 4), nullptr);
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t r = 0; r < counts[static_cast<size_t>(g)]; ++r)
            queries[static_cast<size_t>(g * 4 + r)] = queryData.data() + (g * 4 + r) * D;
        std::vector<std::vector<float>> outs, lses;
        for (int order : {cpu::simd::kPositionsOuter, cpu::simd::kGroupsOuter}) {
          outs.emplace_back(static_cast<size_t>(groups * 4 * D), 0.0f);
          lses.emplace_back(static_cast<size_t>(groups * 4), 0.0f);
          std::vector<float *> outputs(static_cast<size_t>(groups * 4), nullptr);
          for (int64_t g = 0; g < groups; ++g)
            for (int64_t r = 0; r < counts[static_cast<size_t>(g)]; ++r)
              outputs[static_cast<size_t>(g * 4 + r)] = outs.back().data() + (g * 4 + r) * D;
          k.decodeAttention[order][kind](queries.data(), counts.data(), offsets.data(), groups,
                                         keys.data(), values.data(), L, D, 0.125f,
                                         outputs.data(), lses.back().data());
        }
        const std::string what = std::string(kind == cpu::simd::kF32 ? "f32" : "bf16") +
                                 " L=" + std::to_string(L) + " groups=" +
                                 std::to_string(groups);
        EXPECT_EQ(outs[1], outs[0]) << what;
        EXPECT_EQ(lses[1], lses[0]) << what;
        EXPECT_TRUE(std::all_of(lses[0].begin(), lses[0].end(),
                                [](float x) { return std::isfinite(x); }))
            << what;
      }
}

TEST(Rope, MatchesRotateHalfReference) {
  std::mt19937 rng(2);
  const int64_t T = 4, heads = 3, D = 16;
  std::vector<int32_t> positions = {0, 1, 17, 300};
  std::vector<float> x = randomFloats(T * heads * D, rng);
  std::vector<double> ref = toDouble(x);
  cpu::rope(x.data(), T, heads, D, positions.data(), 10000.0f);
  refRope(ref, heads, D, positions, 10000.0);
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(x[i], ref[i], 1e-5) << i;
}

// rope keeps the last step's cosines and sines per thread: calls with other
// positions, other frequencies or another count of tokens must not reuse them.
TEST(Rope, EachCallFollowsItsOwnPositionsAndFrequencies) {
  std::mt19937 rng(5);
  const int64_t heads = 2, D = 8;
  struct Call {
    std::vector<int32_t> positions;
    double theta;
  };
  const std::vector<Call> calls = {{{5, 6}, 10000.0}, {{5, 6}, 10000.0}, {{5, 7}, 10000.0},
                                   {{5}, 10000.0},    {{5}, 500000.0},   {{5, 6}, 10000.0}};
  for (size_t c = 0; c < calls.size(); ++c) {
    const int64_t T = static_cast<int64_t>(calls[c].positions.size());
    std::vector<float> x = randomFloats(T * heads * D, rng);
    std::vector<double> ref = toDouble(x);
    const std::vector<float> frequencies =
        cpu::ropeInverseFrequencies(D, static_cast<float>(calls[c].theta), {});
    cpu::rope(x.data(), T, heads, D, calls[c].positions.data(), frequencies.data());
    refRope(ref, heads, D, calls[c].positions, calls[c].theta);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(x[i], ref[i], 1e-5) << "call " << c << ", element " << i;
  }
}

// Out of place (ROPE's kernel writes its output slot from the input): the
// same values as in place, the input untouched, odd last elements copied.
TEST(Rope, OutOfPlaceMatchesInPlace) {
  std::mt19937 rng(7);
  const std::vector<int32_t> positions = {3, 40};
  for (int64_t D : {8, 7}) {
    const int64_t T = 2, heads = 3;
    const std::vector<float> frequencies = cpu::ropeInverseFrequencies(D, 10000.0f, {});
    const std::vector<float> x = randomFloats(T * heads * D, rng);
    std::vector<float> inPlace = x, y(x.size(), -7.0f);
    cpu::rope(inPlace.data(), T, heads, D, positions.data(), frequencies.data());
    cpu::rope(x.data(), y.data(), T, heads, D, positions.data(), frequencies.data());
    EXPECT_EQ(y, inPlace) << "D " << D;
    if (D % 2 != 0)
      EXPECT_EQ(y[D - 1], x[D - 1]);
  }
}

TEST(RmsNorm, RowsOfEveryWidthMatchReference) {
  std::mt19937 rng(6);
  for (int64_t H : {1, 7, 8, 9, 64, 96, 577}) {
    const int64_t T = 3;
    std::vector<float> x = randomFloats(T * H, rng, 3.0f);
    std::vector<float> w = randomFloats(H, rng);
    std::vector<float> y(T * H);
    cpu::rmsNorm(x.data(), T, H, w.data(), 1e-5f, y.data());
    std::vector<double> ref = toDouble(x);
    refRmsNorm(ref, H, w, 1e-5);
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(y[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << "H " << H << ", " << i;
  }
}

TEST(Elementwise, SwigluAndAdd) {
  std::mt19937 rng(3);
  std::vector<float> a = randomFloats(50, rng, 4.0f), b = randomFloats(50, rng);
  std::vector<float> y(50);
  cpu::swiglu(a.data(), b.data(), y.data(), 50);
  for (size_t i = 0; i < y.size(); ++i) {
    double g = a[i];
    EXPECT_NEAR(y[i], g / (1 + std::exp(-g)) * b[i], 1e-6) << i;
  }
  cpu::add(a.data(), b.data(), y.data(), 50);
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_FLOAT_EQ(y[i], a[i] + b[i]);
}

TEST(Embedding, LooksUpLocalRowsAndZeroesOthers) {
  std::mt19937 rng(4);
  const int64_t localVocab = 5, H = 6, offset = 10;
  for (proto::DType dtype : {proto::F32, proto::BF16}) {
    WeightTensor table =
        makeWeight(dtype, {localVocab, H}, randomFloats(localVocab * H, rng));
    std::vector<float> values = weightValues(table);
    std::vector<int32_t> ids = {10, 14, 9, 15, 12};
    std::vector<float> y(ids.size() * H, -1.0f);
    cpu::embedding(ids.data(), static_cast<int64_t>(ids.size()),
                   WeightView::of(table), offset, y.data());
    for (size_t t = 0; t < ids.size(); ++t) {
      int64_t row = ids[t] - offset;
      bool local = row >= 0 && row < localVocab;
      for (int64_t i = 0; i < H; ++i)
        EXPECT_EQ(y[t * H + i], local ? values[row * H + i] : 0.0f)
            << "token " << t;
    }
  }
}

} // namespace
} // namespace llmir::engine
