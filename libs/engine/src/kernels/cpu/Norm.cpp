// RMS_NORM as Hugging Face computes it in f32: x * rsqrt(mean(x^2) + eps) * w.
#include "llmir/engine/CpuKernels.h"

#include <cmath>

namespace llmir::engine::cpu {

void rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
             float eps, float *y) {
  for (int64_t t = 0; t < T; ++t) {
    const float *row = x + t * H;
    // Accumulated in double: the mean is then exact to f32. Eight partial
    // sums, not one chain of H dependent adds (a decode token's 61 norms
    // spent 0.1 ms on the chain's latency; the double rounding of the
    // partial sums is far below f32's).
    double partial[8] = {};
    int64_t i = 0;
    for (; i + 8 <= H; i += 8)
      for (int j = 0; j < 8; ++j)
        partial[j] += static_cast<double>(row[i + j]) * row[i + j];
    for (; i < H; ++i)
      partial[0] += static_cast<double>(row[i]) * row[i];
    const double sumSquares = ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
                              ((partial[4] + partial[5]) + (partial[6] + partial[7]));
    float meanSquare = static_cast<float>(sumSquares / static_cast<double>(H));
    float inverseRms = 1.0f / std::sqrt(meanSquare + eps);
    for (int64_t i = 0; i < H; ++i)
      y[t * H + i] = weight[i] * (row[i] * inverseRms);
  }
}

} // namespace llmir::engine::cpu
