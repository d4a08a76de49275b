// SWIGLU (vectorised, see Simd.h) and ADD.
#include "Simd.h"

#include "llmir/engine/CpuKernels.h"

namespace llmir::engine::cpu {

void swiglu(const float *gate, const float *up, float *y, int64_t n) {
  simd::kernels().swiglu(gate, up, y, n);
}

void add(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = a[i] + b[i];
}

} // namespace llmir::engine::cpu
