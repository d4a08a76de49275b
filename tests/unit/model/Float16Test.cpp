#include "llmir/model/Float16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace llmir::model {
namespace {

TEST(Float16, HalfKnownValues) {
  EXPECT_EQ(f16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(f16ToF32(0xc000), -2.0f);
  EXPECT_EQ(f16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(f16ToF32(0x0001), std::ldexp(1.0f, -24)); // smallest subnormal
  EXPECT_EQ(f16ToF32(0x03ff), 1023 * std::ldexp(1.0f, -24)); // largest subnormal
  EXPECT_EQ(f16ToF32(0x0400), std::ldexp(1.0f, -14)); // smallest normal
  EXPECT_TRUE(std::signbit(f16ToF32(0x8000)));
  EXPECT_EQ(f16ToF32(0x8000), 0.0f);
  EXPECT_EQ(f16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16ToF32(0x7c01)));
}

TEST(Float16, HalfRoundTripsEveryValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t half = static_cast<uint16_t>(bits);
    const float widened = f16ToF32(half);
    if (std::isnan(widened)) {
      EXPECT_TRUE(std::isnan(f16ToF32(f32ToF16(widened)))) << std::hex << bits;
      continue;
    }
    ASSERT_EQ(f32ToF16(widened), half) << std::hex << bits;
  }
}

TEST(Float16, HalfRoundsToNearestEven) {
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to even (1).
  EXPECT_EQ(f32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3*2^-11 is halfway between odd 0x3c01 and even 0x3c02.
  EXPECT_EQ(f32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32ToF16(65519.0f), 0x7bff);
  EXPECT_EQ(f32ToF16(65520.0f), 0x7c00);
  EXPECT_EQ(f32ToF16(1e-10f), 0x0000);
  EXPECT_EQ(f32ToF16(-1e-10f), 0x8000);
  EXPECT_EQ(f32ToF16(std::ldexp(1.0f, -25)), 0x0000); // tie to even (0)
  EXPECT_EQ(f32ToF16(std::ldexp(3.0f, -25)), 0x0002); // tie to even (2)
}

TEST(Float16, BFloat16) {
  EXPECT_EQ(bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(bf16ToF32(0xc040), -3.0f);
  EXPECT_EQ(bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16ToF32(0x7fc0)));
  EXPECT_EQ(bf16ToF32(0x0001), std::ldexp(1.0f, -133)); // subnormal
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float widened = bf16ToF32(static_cast<uint16_t>(bits));
    if (!std::isnan(widened))
      ASSERT_EQ(f32ToBf16(widened), bits) << std::hex << bits;
  }
  // 1 + 2^-8 is halfway between 1 and the next bf16: ties go to even.
  EXPECT_EQ(f32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16ToF32(f32ToBf16(std::nanf("")))));
}

} // namespace
} // namespace llmir::model
