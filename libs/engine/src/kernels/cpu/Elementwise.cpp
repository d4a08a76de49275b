// SWIGLU and ADD.
#include "llmir/engine/CpuKernels.h"

#include <cmath>

namespace llmir::engine::cpu {

void swiglu(const float *gate, const float *up, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = a[i] + b[i];
}

} // namespace llmir::engine::cpu
