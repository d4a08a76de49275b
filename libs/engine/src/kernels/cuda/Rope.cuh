// The rotation of ROPE, shared by its own kernel (Norm.cu) and the fused
// RoPE + KV-store kernel (Attention.cu) so both give the same bits.
#pragma once

#include <cstdint>

namespace llmir::engine::cuda::detail {

// cos and sin of a rotation angle, in double as the CPU kernel, rounded.
struct Rotation {
  float c, s;
};
__device__ __forceinline__ Rotation rotationBy(float angle) {
  double sine, cosine;
  sincos(static_cast<double>(angle), &sine, &cosine);
  return {static_cast<float>(cosine), static_cast<float>(sine)};
}

// HF rotate_half's arithmetic on one pair (a, b) = (x[i], x[i + D/2]).
struct RotatedPair {
  float first, second;
};
__device__ __forceinline__ RotatedPair rotate(float a, float b, Rotation r) {
  return {a * r.c - b * r.s, b * r.c + a * r.s};
}

// HF rotate_half of the pair (i, i + D/2) of one head.
__device__ __forceinline__ void rotatePair(const float *head, float *rotated, int64_t i,
                                           int64_t half, Rotation r) {
  const RotatedPair p = rotate(head[i], head[i + half], r);
  rotated[i] = p.first;
  rotated[i + half] = p.second;
}
__device__ __forceinline__ void rotatePair(const float *head, float *rotated, int64_t i,
                                           int64_t half, float angle) {
  rotatePair(head, rotated, i, half, rotationBy(angle));
}

} // namespace llmir::engine::cuda::detail
