// An f32 value as the bf16 halves the tensor-core products take (x = hi +
// lo; medium precision keeps hi only). One definition for every kernel that
// writes them (splitBf16, and the norm and SWIGLU that write their output's
// halves for the product after them), so all give the same bits.
#pragma once

#include <cuda_bf16.h>

namespace llmir::engine::cuda::detail {

__device__ __forceinline__ void splitOne(float v, __nv_bfloat16 &hi, __nv_bfloat16 *lo) {
  hi = __float2bfloat16_rn(v);
  if (lo)
    *lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}

// Four consecutive values' halves, stored with one 8-byte store each
// (hi + 4 q and lo + 4 q 8-byte aligned).
__device__ __forceinline__ void splitFour(float4 v, __nv_bfloat16 *hi, __nv_bfloat16 *lo,
                                          int64_t q) {
  __align__(8) __nv_bfloat16 h[4], l[4];
  splitOne(v.x, h[0], lo ? &l[0] : nullptr);
  splitOne(v.y, h[1], lo ? &l[1] : nullptr);
  splitOne(v.z, h[2], lo ? &l[2] : nullptr);
  splitOne(v.w, h[3], lo ? &l[3] : nullptr);
  reinterpret_cast<uint2 *>(hi)[q] = *reinterpret_cast<const uint2 *>(h);
  if (lo)
    reinterpret_cast<uint2 *>(lo)[q] = *reinterpret_cast<const uint2 *>(l);
}

} // namespace llmir::engine::cuda::detail
