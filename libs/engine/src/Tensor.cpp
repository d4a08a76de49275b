#include "llmir/engine/Tensor.h"

#include "llmir/proto/shard_program.pb.h"

#include <bit>
#include <cassert>
#include <cmath>
#include <cstring>

namespace llmir::engine {

Tensor::Tensor(std::vector<int64_t> newShape) { reshape(std::move(newShape)); }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

int64_t Tensor::rowSize() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i)
    n *= shape[i];
  return n;
}

void Tensor::reshape(std::vector<int64_t> newShape) {
  shape = std::move(newShape);
  data.resize(static_cast<size_t>(numel()));
}

size_t weightElementSize(proto::DType dtype) {
  switch (dtype) {
  case proto::F32:
    return 4;
  case proto::F16:
  case proto::BF16:
    return 2;
  default:
    return 0;
  }
}

const char *dtypeName(proto::DType dtype) {
  switch (dtype) {
  case proto::F32:
    return "F32";
  case proto::F16:
    return "F16";
  case proto::BF16:
    return "BF16";
  case proto::I32:
    return "I32";
  default:
    return "UNSPECIFIED";
  }
}

float bf16ToF32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t f32ToBf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value))
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t roundingBias = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + roundingBias) >> 16);
}

float f16ToF32(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t exponent = (bits >> 10) & 0x1f;
  uint32_t mantissa = bits & 0x3ff;
  uint32_t out;
  if (exponent == 0x1f) { // inf / nan
    out = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent != 0) { // normal
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) { // zero
    out = sign;
  } else { // subnormal: value = mantissa * 2^-24
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    out = sign | std::bit_cast<uint32_t>(magnitude);
  }
  return std::bit_cast<float>(out);
}

uint16_t f32ToF16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  float magnitude = std::fabs(value);
  if (std::isnan(value))
    return sign | 0x7e00;
  if (magnitude >= 65520.0f) // rounds to infinity
    return sign | 0x7c00;
  if (magnitude < 0x1p-14f) { // subnormal or zero: multiples of 2^-24
    float scaled = std::nearbyint(magnitude * 0x1p24f); // ties to even
    return sign | static_cast<uint16_t>(scaled);
  }
  uint32_t m = std::bit_cast<uint32_t>(magnitude);
  uint32_t roundingBias = 0xfff + ((m >> 13) & 1);
  m += roundingBias;
  uint32_t exponent = (m >> 23) - 112;
  return sign | static_cast<uint16_t>((exponent << 10) | ((m >> 13) & 0x3ff));
}

WeightView WeightView::of(const WeightTensor &w) {
  WeightView view;
  view.dtype = w.dtype;
  view.data = w.data.data();
  view.cols = w.shape.empty() ? 1 : w.shape.back();
  int64_t numel = 1;
  for (int64_t d : w.shape)
    numel *= d;
  view.rows = view.cols == 0 ? 0 : numel / view.cols;
  return view;
}

void WeightView::widenRow(int64_t row, float *out) const {
  widenRows(row, 1, out);
}

void WeightView::widenRows(int64_t row, int64_t count, float *out) const {
  size_t n = static_cast<size_t>(count * cols);
  size_t first = static_cast<size_t>(row * cols);
  switch (dtype) {
  case proto::F32:
    std::memcpy(out, data + first * 4, n * 4);
    return;
  case proto::BF16: {
    const auto *src = reinterpret_cast<const uint16_t *>(data) + first;
    for (size_t i = 0; i < n; ++i)
      out[i] = bf16ToF32(src[i]);
    return;
  }
  case proto::F16: {
    const auto *src = reinterpret_cast<const uint16_t *>(data) + first;
    for (size_t i = 0; i < n; ++i)
      out[i] = f16ToF32(src[i]);
    return;
  }
  default:
    assert(false && "weights are validated to be F32, BF16 or F16");
  }
}

} // namespace llmir::engine
