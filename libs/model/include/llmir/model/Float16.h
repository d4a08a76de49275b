// Conversions between float32 and the two 16-bit float formats found in
// checkpoints: bfloat16 (BF16) and IEEE half (F16). Inline so that the engine's
// hot loops can use them without a call.
#pragma once

#include <bit>
#include <cstdint>

namespace llmir::model {

/// bfloat16 is the upper half of a float32, so widening is exact.
inline float bf16ToF32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

/// IEEE half to float32; exact for every input, including subnormals,
/// infinities and NaNs (the payload is kept).
inline float f16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exactly representable in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f)
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + (127 - 15)) << 23) |
                              (mantissa << 13));
}

/// float32 to bfloat16, rounding to nearest even; NaNs stay (quiet) NaNs.
inline uint16_t f32ToBf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// float32 to IEEE half, rounding to nearest even; values at or beyond the
/// rounding boundary of 65504 become infinity, NaNs stay (quiet) NaNs.
inline uint16_t f32ToF16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  bits &= 0x7fffffffu;
  if (bits > 0x7f800000u)
    return sign | 0x7e00u;
  if (bits >= 0x477ff000u) // >= 65520: rounds to infinity (or is infinity)
    return sign | 0x7c00u;
  if (bits < 0x38800000u) {
    // Result is subnormal or zero: adding 0.5 aligns the half's subnormal
    // mantissa with float32's low bits, and the FPU rounds to nearest even.
    const float aligned = std::bit_cast<float>(bits) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(aligned) -
                                        0x3f000000u);
  }
  const uint32_t mantissaOdd = (bits >> 13) & 1u;
  bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mantissaOdd;
  return sign | static_cast<uint16_t>(bits >> 13);
}

} // namespace llmir::model
