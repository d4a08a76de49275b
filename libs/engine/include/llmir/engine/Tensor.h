// Activation tensors (always f32) and weight tensors (f32, bf16 or f16 kept
// in their checkpoint encoding and widened to f32 when used).
#pragma once

#include "llmir/engine/ProtoFwd.h"
#include "llmir/model/Float16.h"
#include "llmir/support/Status.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace llmir::engine {

/// Row-major f32 tensor. Activations are [T, ...] with T the step's tokens.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape);

  int64_t numel() const;
  /// First dimension (1 for a scalar shape).
  int64_t rows() const { return shape.empty() ? 1 : shape.front(); }
  /// Product of every dimension after the first.
  int64_t rowSize() const;
  /// Reshape, growing or shrinking the storage (capacity is kept across steps).
  void reshape(std::vector<int64_t> newShape);
};

/// A weight as loaded from a checkpoint slice.
struct WeightTensor {
  proto::DType dtype{};
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

/// Returns the weight for one ShardProgram.weights entry.
using WeightProvider =
    std::function<Result<WeightTensor>(const proto::WeightSlice &)>;

/// Bytes per element of a weight dtype; 0 for dtypes weights cannot have.
size_t weightElementSize(proto::DType dtype);
const char *dtypeName(proto::DType dtype);

// 16-bit float conversions, shared with the checkpoint reader.
using model::bf16ToF32;
using model::f16ToF32;
using model::f32ToBf16; // round to nearest even
using model::f32ToF16;  // round to nearest even

/// Non-owning 2-D view of a weight: `rows` x `cols` elements, row-major.
/// A 1-D weight is one row.
struct WeightView {
  proto::DType dtype{};
  const std::byte *data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;

  static WeightView of(const WeightTensor &w);
  /// Widens row `row` into out[0, cols).
  void widenRow(int64_t row, float *out) const;
  /// Widens rows [row, row + count) into out (count * cols floats).
  void widenRows(int64_t row, int64_t count, float *out) const;
};

} // namespace llmir::engine
