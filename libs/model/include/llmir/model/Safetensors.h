// Read-only, memory-mapped access to one .safetensors file.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON describing
// each tensor (dtype, shape, [begin, end) byte offsets into the data region),
// then the data region. Everything in the header is bounds-checked on open,
// so later reads cannot leave the mapping.
#pragma once

#include "llmir/model/DType.h"
#include "llmir/support/Status.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmir::model {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Byte offset from the start of the data region.
  uint64_t byteOffset = 0;
  uint64_t byteSize = 0;

  int64_t numElements() const;
};

/// "[128, 128]", for messages.
std::string formatShape(const std::vector<int64_t> &shape);

/// The part of a tensor selected by `readSliceRaw` / `readAsF32`:
/// [offset, offset + length) along `dim`, every index along the other dims.
/// dim = -1 selects the whole tensor; length = -1 means "to the end".
struct SliceSpec {
  int dim = -1;
  int64_t offset = 0;
  int64_t length = -1;
};

/// Copies a slice out of `data` (the tensor's bytes, row-major) keeping its
/// dtype, or converts it to float32. Shared by SafetensorsFile and Checkpoint.
/// `where` names the file for error messages.
Result<std::vector<std::byte>> sliceTensorBytes(const TensorInfo &info,
                                                std::span<const std::byte> data,
                                                SliceSpec slice,
                                                std::string_view where);
Result<std::vector<float>> sliceTensorAsF32(const TensorInfo &info,
                                            std::span<const std::byte> data,
                                            SliceSpec slice,
                                            std::string_view where);
/// The shape of a slice (the sliced dim replaced by the slice length);
/// fails with the same messages as the readers.
Result<std::vector<int64_t>> sliceShape(const TensorInfo &info, SliceSpec slice,
                                        std::string_view where);

class SafetensorsFile {
public:
  /// Maps `path` read-only and validates its header. Only the header is
  /// read; tensor data pages are touched when first accessed.
  static Result<SafetensorsFile> open(const std::string &path);

  SafetensorsFile(SafetensorsFile &&other) noexcept;
  SafetensorsFile &operator=(SafetensorsFile &&other) noexcept;
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;
  ~SafetensorsFile();

  const std::string &path() const { return path_; }
  /// Tensors in the order the header lists them.
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  /// nullptr when the file has no tensor of that name.
  const TensorInfo *find(std::string_view name) const;
  /// The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string> &metadata() const { return metadata_; }

  /// The tensor's bytes inside the mapping. `info` must come from this file.
  std::span<const std::byte> bytes(const TensorInfo &info) const;

  /// Slice in the stored dtype (bf16 stays bf16), row-major.
  Result<std::vector<std::byte>> readSliceRaw(std::string_view name, int dim = -1,
                                              int64_t offset = 0,
                                              int64_t length = -1) const;
  /// Slice converted to float32; fails for non-float dtypes.
  Result<std::vector<float>> readAsF32(std::string_view name, int dim = -1,
                                       int64_t offset = 0,
                                       int64_t length = -1) const;

private:
  SafetensorsFile() = default;
  Status parseHeader(uint64_t headerLength);
  void unmap();

  std::string path_;
  const std::byte *mapping_ = nullptr;
  size_t mappingSize_ = 0;
  const std::byte *data_ = nullptr; // start of the data region
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

} // namespace llmir::model
