// ROPE, Hugging Face rotate_half convention: for head dimension D the pairs
// are (i, i + D/2) with inv_freq[i] = theta^(-2i/D). The angles are formed in
// f32 exactly as HF does (f32 inv_freq times f32 position) so that long
// positions round the same way.
#include "llmir/engine/CpuKernels.h"

#include <cmath>
#include <vector>

namespace llmir::engine::cpu {

void rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, float theta) {
  const int64_t half = headDim / 2;
  std::vector<float> inverseFrequency(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(headDim);
    float power = static_cast<float>(std::pow(static_cast<double>(theta),
                                              static_cast<double>(exponent)));
    inverseFrequency[static_cast<size_t>(i)] = 1.0f / power;
  }
  std::vector<float> cosines(static_cast<size_t>(half));
  std::vector<float> sines(static_cast<size_t>(half));
  for (int64_t t = 0; t < T; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      float angle = position * inverseFrequency[static_cast<size_t>(i)];
      cosines[static_cast<size_t>(i)] =
          static_cast<float>(std::cos(static_cast<double>(angle)));
      sines[static_cast<size_t>(i)] =
          static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (int64_t h = 0; h < numHeads; ++h) {
      float *head = x + (t * numHeads + h) * headDim;
      for (int64_t i = 0; i < half; ++i) {
        float a = head[i], b = head[i + half];
        float c = cosines[static_cast<size_t>(i)];
        float s = sines[static_cast<size_t>(i)];
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
      }
    }
  }
}

} // namespace llmir::engine::cpu
