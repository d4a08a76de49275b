// RMS_NORM as Hugging Face computes it in f32: x * rsqrt(mean(x^2) + eps) * w.
#include "llmir/engine/CpuKernels.h"

#include <cmath>

namespace llmir::engine::cpu {

void rmsNorm(const float *x, int64_t T, int64_t H, const float *weight,
             float eps, float *y) {
  for (int64_t t = 0; t < T; ++t) {
    const float *row = x + t * H;
    double sumSquares = 0.0; // accumulated in double: the mean is then exact to f32
    for (int64_t i = 0; i < H; ++i)
      sumSquares += static_cast<double>(row[i]) * row[i];
    float meanSquare = static_cast<float>(sumSquares / static_cast<double>(H));
    float inverseRms = 1.0f / std::sqrt(meanSquare + eps);
    for (int64_t i = 0; i < H; ++i)
      y[t * H + i] = weight[i] * (row[i] * inverseRms);
  }
}

} // namespace llmir::engine::cpu
