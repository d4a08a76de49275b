// Slicing a row-major tensor along one dimension, and widening to float32.
#include "llmir/model/Float16.h"
#include "llmir/model/Safetensors.h"

#include <cstring>

namespace llmir::model {
namespace {

struct SliceLayout {
  std::vector<int64_t> shape; // of the slice
  int64_t outer = 1;          // product of dims before the sliced one
  int64_t chunkBytes = 0;     // contiguous bytes copied per outer index
  int64_t strideBytes = 0;    // bytes between outer indices in the source
  int64_t startBytes = 0;     // first byte of the slice in each outer block
};

Result<SliceLayout> layoutFor(const TensorInfo &info, SliceSpec slice,
                              std::string_view where) {
  const std::string context =
      std::string(where) + ": tensor '" + info.name + "'";
  const int rank = static_cast<int>(info.shape.size());
  const int64_t elementSize = static_cast<int64_t>(dtypeSize(info.dtype));
  SliceLayout layout;
  layout.shape = info.shape;
  if (slice.dim == -1) {
    if (slice.offset != 0 || slice.length != -1)
      return Status::error(context + ": offset/length need a dimension (dim is -1)");
    layout.chunkBytes = static_cast<int64_t>(info.byteSize);
    layout.strideBytes = layout.chunkBytes;
    return layout;
  }
  if (slice.dim < 0 || slice.dim >= rank)
    return Status::error(context + ": slice dimension " + std::to_string(slice.dim) +
                         " is out of range for rank " + std::to_string(rank));
  const int64_t extent = info.shape[slice.dim];
  const int64_t length = slice.length == -1 ? extent - slice.offset : slice.length;
  if (slice.offset < 0 || length < 0 || slice.offset > extent ||
      length > extent - slice.offset)
    return Status::error(context + ": slice [" + std::to_string(slice.offset) + ", " +
                         std::to_string(slice.offset) + "+" +
                         std::to_string(slice.length) + ") along dimension " +
                         std::to_string(slice.dim) + " is outside [0, " +
                         std::to_string(extent) + ")");
  int64_t inner = 1;
  for (int d = slice.dim + 1; d < rank; ++d)
    inner *= info.shape[d];
  for (int d = 0; d < slice.dim; ++d)
    layout.outer *= info.shape[d];
  layout.shape[slice.dim] = length;
  layout.chunkBytes = length * inner * elementSize;
  layout.strideBytes = extent * inner * elementSize;
  layout.startBytes = slice.offset * inner * elementSize;
  return layout;
}

} // namespace

Result<std::vector<int64_t>> sliceShape(const TensorInfo &info, SliceSpec slice,
                                        std::string_view where) {
  Result<SliceLayout> layout = layoutFor(info, slice, where);
  if (!layout)
    return layout.status();
  return std::move(layout->shape);
}

Result<std::vector<std::byte>> sliceTensorBytes(const TensorInfo &info,
                                                std::span<const std::byte> data,
                                                SliceSpec slice,
                                                std::string_view where) {
  Result<SliceLayout> layout = layoutFor(info, slice, where);
  if (!layout)
    return layout.status();
  std::vector<std::byte> out(static_cast<size_t>(layout->outer * layout->chunkBytes));
  if (out.empty()) // an empty slice: memcpy from/to null is undefined even for 0 bytes (UBSan)
    return out;
  for (int64_t o = 0; o < layout->outer; ++o)
    std::memcpy(out.data() + o * layout->chunkBytes,
                data.data() + o * layout->strideBytes + layout->startBytes,
                static_cast<size_t>(layout->chunkBytes));
  return out;
}

Result<std::vector<float>> sliceTensorAsF32(const TensorInfo &info,
                                            std::span<const std::byte> data,
                                            SliceSpec slice,
                                            std::string_view where) {
  if (!isFloatDType(info.dtype))
    return Status::error(std::string(where) + ": tensor '" + info.name +
                         "' has dtype " + std::string(dtypeName(info.dtype)) +
                         "; only F32, F16 and BF16 can be read as float32");
  Result<std::vector<std::byte>> raw = sliceTensorBytes(info, data, slice, where);
  if (!raw)
    return raw.status();
  const std::byte *source = raw->data();
  const size_t count = raw->size() / dtypeSize(info.dtype);
  std::vector<float> out(count);
  if (count == 0)
    return out;
  switch (info.dtype) {
  case DType::F32:
    std::memcpy(out.data(), source, count * sizeof(float));
    break;
  case DType::F16:
  case DType::BF16:
    for (size_t i = 0; i < count; ++i) {
      uint16_t bits;
      std::memcpy(&bits, source + 2 * i, sizeof(bits));
      out[i] = info.dtype == DType::F16 ? f16ToF32(bits) : bf16ToF32(bits);
    }
    break;
  default:
    break; // excluded by isFloatDType above
  }
  return out;
}

} // namespace llmir::model
