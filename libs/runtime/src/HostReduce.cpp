#include "HostReduce.h"

#include <gloo/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace llmir::runtime::detail {

float bf16ToFloat(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

uint16_t floatToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) // NaN: keep it a quiet NaN
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u); // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

namespace {

struct Sum {
  template <typename T> T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T> T operator()(T a, T b) const { return std::max(a, b); }
};
struct Min {
  template <typename T> T operator()(T a, T b) const { return std::min(a, b); }
};

/// Storage type T, computed in Compute through the two conversions.
template <typename T, typename Compute, Compute (*load)(T), T (*store)(Compute),
          typename Op>
void reduce(void *out, const void *a, const void *b, size_t count) {
  auto *o = static_cast<T *>(out);
  auto *x = static_cast<const T *>(a);
  auto *y = static_cast<const T *>(b);
  Op op;
  for (size_t i = 0; i < count; ++i)
    o[i] = store(op(load(x[i]), load(y[i])));
}

template <typename T> T identity(T v) { return v; }
float halfToFloat(uint16_t bits) {
  gloo::float16 h;
  h.x = bits;
  return gloo::cpu_half2float(h);
}
uint16_t floatToHalf(float v) { return gloo::cpu_float2half_rn(v).x; }

template <typename Op> HostReduceFn forOp(DataType type) {
  switch (type) {
  case DataType::F32:
    return &reduce<float, float, identity<float>, identity<float>, Op>;
  case DataType::I32:
    return &reduce<int32_t, int32_t, identity<int32_t>, identity<int32_t>, Op>;
  case DataType::F16:
    return &reduce<uint16_t, float, halfToFloat, floatToHalf, Op>;
  case DataType::BF16:
    return &reduce<uint16_t, float, bf16ToFloat, floatToBf16, Op>;
  }
  return nullptr;
}

} // namespace

HostReduceFn hostReduceFunction(DataType type, ReduceOp op) {
  switch (op) {
  case ReduceOp::Sum:
    return forOp<Sum>(type);
  case ReduceOp::Max:
    return forOp<Max>(type);
  case ReduceOp::Min:
    return forOp<Min>(type);
  }
  return nullptr;
}

} // namespace llmir::runtime::detail
