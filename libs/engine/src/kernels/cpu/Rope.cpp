// ROPE, Hugging Face rotate_half convention: for head dimension D the pairs
// are (i, i + D/2) with inv_freq[i] = theta^(-2i/D), optionally scaled
// (linear, llama3). The frequencies and angles are formed in f32 exactly as
// HF does (f32 inv_freq times f32 position) so that long positions round the
// same way.
#include "llmir/engine/CpuKernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace llmir::engine::cpu {

std::vector<float> ropeInverseFrequencies(int64_t headDim, float theta,
                                          const RopeScaling &scaling) {
  const int64_t half = headDim / 2;
  std::vector<float> inverseFrequency(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(headDim);
    float power = static_cast<float>(std::pow(static_cast<double>(theta),
                                              static_cast<double>(exponent)));
    inverseFrequency[static_cast<size_t>(i)] = 1.0f / power;
  }
  if (scaling.type == RopeScaling::Linear) {
    for (float &f : inverseFrequency)
      f /= scaling.factor;
  } else if (scaling.type == RopeScaling::Llama3) {
    // transformers' _compute_llama3_parameters, in f32 like its tensors:
    // long wavelengths are divided by factor, short ones kept, and those in
    // between blended by (context / wavelength - low) / (high - low).
    const float context = static_cast<float>(scaling.originalMaxPosition);
    const float lowFreqWavelength = static_cast<float>(
        static_cast<double>(scaling.originalMaxPosition) / scaling.lowFreqFactor);
    const float highFreqWavelength = static_cast<float>(
        static_cast<double>(scaling.originalMaxPosition) / scaling.highFreqFactor);
    const float twoPi = static_cast<float>(2.0 * M_PI);
    for (float &f : inverseFrequency) {
      const float wavelength = twoPi / f;
      if (wavelength > lowFreqWavelength) {
        f = f / scaling.factor;
      } else if (!(wavelength < highFreqWavelength)) {
        const float smooth = (context / wavelength - scaling.lowFreqFactor) /
                             (scaling.highFreqFactor - scaling.lowFreqFactor);
        f = (1.0f - smooth) * f / scaling.factor + smooth * f;
      }
    }
  }
  return inverseFrequency;
}

namespace {

// The cosines and sines of one step's angles ([T][half] each). Every layer
// rotates Q and K at the same positions with the same frequencies, so a
// step computes them once instead of twice per layer (a decode token's 60
// calls spent as long in cos/sin as in its norms). Kept per thread: the
// last positions and frequencies, compared by value, so a different step,
// model or sequence recomputes.
struct RopeTable {
  std::vector<int32_t> positions;
  std::vector<float> inverseFrequency;
  std::vector<float> cosines, sines;

  void prepare(int64_t T, int64_t half, const int32_t *pos, const float *frequency) {
    if (static_cast<int64_t>(positions.size()) == T &&
        static_cast<int64_t>(inverseFrequency.size()) == half &&
        std::equal(pos, pos + T, positions.begin()) &&
        std::equal(frequency, frequency + half, inverseFrequency.begin(),
                   [](float a, float b) { // bit patterns: NaN or -0 never match loosely
                     return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
                   }))
      return;
    positions.assign(pos, pos + T);
    inverseFrequency.assign(frequency, frequency + half);
    cosines.resize(static_cast<size_t>(T * half));
    sines.resize(static_cast<size_t>(T * half));
    for (int64_t t = 0; t < T; ++t) {
      const float position = static_cast<float>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        float angle = position * frequency[i];
        cosines[static_cast<size_t>(t * half + i)] =
            static_cast<float>(std::cos(static_cast<double>(angle)));
        sines[static_cast<size_t>(t * half + i)] =
            static_cast<float>(std::sin(static_cast<double>(angle)));
      }
    }
  }
};

} // namespace

void rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, const float *inverseFrequency) {
  rope(x, x, T, numHeads, headDim, positions, inverseFrequency);
}

void rope(const float *x, float *y, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, const float *inverseFrequency) {
  const int64_t half = headDim / 2;
  thread_local RopeTable table;
  table.prepare(T, half, positions, inverseFrequency);
  for (int64_t t = 0; t < T; ++t) {
    const float *cosines = table.cosines.data() + t * half;
    const float *sines = table.sines.data() + t * half;
    for (int64_t h = 0; h < numHeads; ++h) {
      const float *in = x + (t * numHeads + h) * headDim;
      float *out = y + (t * numHeads + h) * headDim;
      for (int64_t i = 0; i < half; ++i) {
        float a = in[i], b = in[i + half];
        float c = cosines[i];
        float s = sines[i];
        out[i] = a * c - b * s;
        out[i + half] = b * c + a * s;
      }
      if (headDim % 2 != 0) // an odd last element has no pair: unrotated
        out[headDim - 1] = in[headDim - 1];
    }
  }
}

void rope(float *x, int64_t T, int64_t numHeads, int64_t headDim,
          const int32_t *positions, float theta) {
  const std::vector<float> inverseFrequency =
      ropeInverseFrequencies(headDim, theta, RopeScaling{});
  rope(x, T, numHeads, headDim, positions, inverseFrequency.data());
}

} // namespace llmir::engine::cpu
