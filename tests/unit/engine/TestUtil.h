// Helpers shared by the engine tests: random data, weights in every dtype,
// and naive double-precision reference math.
#pragma once

#include "llmir/engine/Tensor.h"
#include "llmir/proto/shard_program.pb.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace llmir::engine::testing {

inline std::vector<float> randomFloats(size_t n, std::mt19937 &rng,
                                       float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

/// A weight in `dtype` holding `values` (rounded to the dtype).
inline WeightTensor makeWeight(proto::DType dtype, std::vector<int64_t> shape,
                               const std::vector<float> &values) {
  WeightTensor w;
  w.dtype = dtype;
  w.shape = std::move(shape);
  if (dtype == proto::F32) {
    w.data.resize(values.size() * 4);
    std::memcpy(w.data.data(), values.data(), w.data.size());
  } else {
    w.data.resize(values.size() * 2);
    auto *out = reinterpret_cast<uint16_t *>(w.data.data());
    for (size_t i = 0; i < values.size(); ++i)
      out[i] = dtype == proto::BF16 ? f32ToBf16(values[i]) : f32ToF16(values[i]);
  }
  return w;
}

/// The weight's values as f32 (what the kernels compute with).
inline std::vector<float> weightValues(const WeightTensor &w) {
  WeightView view = WeightView::of(w);
  std::vector<float> out(static_cast<size_t>(view.rows * view.cols));
  view.widenRows(0, view.rows, out.data());
  return out;
}

/// y[T, N] = x[T, K] w[N, K]^T in double.
inline std::vector<double> refLinear(const std::vector<double> &x, int64_t T,
                                     const std::vector<float> &w, int64_t N,
                                     int64_t K) {
  std::vector<double> y(static_cast<size_t>(T * N), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k)
        sum += x[t * K + k] * static_cast<double>(w[n * K + k]);
      y[t * N + n] = sum;
    }
  return y;
}

inline void refRmsNorm(std::vector<double> &x, int64_t H,
                       const std::vector<float> &w, double eps) {
  for (size_t row = 0; row < x.size() / H; ++row) {
    double ss = 0.0;
    for (int64_t i = 0; i < H; ++i)
      ss += x[row * H + i] * x[row * H + i];
    double inv = 1.0 / std::sqrt(ss / H + eps);
    for (int64_t i = 0; i < H; ++i)
      x[row * H + i] *= inv * w[i];
  }
}

/// HF rotate_half RoPE, in place, for x[T, heads * D].
inline void refRope(std::vector<double> &x, int64_t heads, int64_t D,
                    const std::vector<int32_t> &positions, double theta) {
  for (size_t t = 0; t < positions.size(); ++t)
    for (int64_t h = 0; h < heads; ++h) {
      double *head = x.data() + (t * heads + h) * D;
      for (int64_t i = 0; i < D / 2; ++i) {
        double angle = positions[t] * std::pow(theta, -2.0 * i / D);
        double a = head[i], b = head[i + D / 2];
        head[i] = a * std::cos(angle) - b * std::sin(angle);
        head[i + D / 2] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
}

/// Causal GQA attention over one whole sequence: q [L, Hq*D], k, v
/// [L, Hkv*D] -> [L, Hq*D].
inline std::vector<double> refAttention(const std::vector<double> &q,
                                        const std::vector<double> &k,
                                        const std::vector<double> &v,
                                        int64_t L, int64_t Hq, int64_t Hkv,
                                        int64_t D, double scale,
                                        int64_t window = 0) {
  std::vector<double> out(static_cast<size_t>(L * Hq * D), 0.0);
  for (int64_t t = 0; t < L; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      int64_t kvh = h / (Hq / Hkv);
      std::vector<double> s(static_cast<size_t>(t + 1));
      double mx = -1e300, total = 0.0;
      // Keys outside a sliding window (j <= t - window) get zero weight.
      const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
      for (int64_t j = 0; j < first; ++j)
        s[j] = -1e300;
      for (int64_t j = first; j <= t; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d)
          dot += q[(t * Hq + h) * D + d] * k[(j * Hkv + kvh) * D + d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (double &e : s)
        total += (e = e == -1e300 ? 0.0 : std::exp(e - mx));
      for (int64_t j = 0; j <= t; ++j)
        for (int64_t d = 0; d < D; ++d)
          out[(t * Hq + h) * D + d] +=
              s[j] / total * v[(j * Hkv + kvh) * D + d];
    }
  return out;
}

inline std::vector<double> toDouble(const std::vector<float> &v) {
  return {v.begin(), v.end()};
}

/// Tolerance for f32 results against a double reference.
inline double tolerance(double reference) {
  return 1e-4 * (1.0 + std::fabs(reference));
}

} // namespace llmir::engine::testing
