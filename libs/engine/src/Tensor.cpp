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
