// The rotation of ROPE, shared by its own kernel (Norm.cu) and the fused
// RoPE + KV-store kernel (Attention.cu) so both give the same bits.
#pragma once

#include <cstdint>

namespace llmir::engine::cuda::detail {

// HF rotate_half of the pair (i, i + D/2) of one head by `angle` (cos and
// sin in double, as the CPU kernel).
__device__ __forceinline__ void rotatePair(const float *head, float *rotated, int64_t i,
                                           int64_t half, float angle) {
  double sine, cosine;
  sincos(static_cast<double>(angle), &sine, &cosine);
  const float c = static_cast<float>(cosine), s = static_cast<float>(sine);
  const float a = head[i], b = head[i + half];
  rotated[i] = a * c - b * s;
  rotated[i + half] = b * c + a * s;
}

} // namespace llmir::engine::cuda::detail
