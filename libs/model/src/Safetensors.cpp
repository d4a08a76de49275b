#include "llmir/model/Safetensors.h"

#include "JsonFields.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace llmir::model {
namespace {

// Real headers are a few hundred KiB at most; a larger length means a
// corrupt or hostile file, and parsing it would waste memory.
constexpr uint64_t kMaxHeaderLength = 100ull << 20;

uint64_t readLittleEndian64(const std::byte *bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i)
    value = (value << 8) | static_cast<uint8_t>(bytes[i]);
  return value;
}

/// Parses one tensor entry of the header; `where` is "<file>: tensor 'x'".
Result<TensorInfo> parseTensorEntry(std::string_view name,
                                    const boost::json::value &entry,
                                    uint64_t dataRegionSize,
                                    const std::string &where) {
  if (!entry.is_object())
    return Status::error(where + ": expected an object, got " +
                         std::string(json::kindName(entry)));
  const boost::json::object &fields = entry.get_object();
  TensorInfo info;
  info.name = std::string(name);

  const boost::json::value *dtype = fields.if_contains("dtype");
  if (!dtype || !dtype->is_string())
    return Status::error(where + ": missing string field 'dtype'");
  std::optional<DType> parsed = parseDType(dtype->get_string());
  if (!parsed)
    return Status::error(where + ": unknown dtype '" +
                         std::string(dtype->get_string()) +
                         "' (supported: F32, F16, BF16, F64, I64, I32, I16, "
                         "I8, U64, U32, U16, U8, BOOL)");
  info.dtype = *parsed;

  const boost::json::value *shape = fields.if_contains("shape");
  if (!shape || !shape->is_array())
    return Status::error(where + ": missing array field 'shape'");
  uint64_t elements = 1;
  for (const boost::json::value &dim : shape->get_array()) {
    std::optional<int64_t> size = json::asInt64(dim);
    if (!size)
      return Status::error(where + ": shape entries must be integers, got " +
                           boost::json::serialize(*shape));
    if (*size < 0)
      return Status::error(where + ": negative dimension " +
                           std::to_string(*size) + " in shape " +
                           boost::json::serialize(*shape));
    info.shape.push_back(*size);
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(*size), &elements))
      return Status::error(where + ": shape " + boost::json::serialize(*shape) +
                           " has too many elements");
  }

  const boost::json::value *offsets = fields.if_contains("data_offsets");
  if (!offsets || !offsets->is_array() || offsets->get_array().size() != 2)
    return Status::error(where + ": missing field 'data_offsets' [begin, end]");
  std::optional<int64_t> begin = json::asInt64(offsets->get_array()[0]);
  std::optional<int64_t> end = json::asInt64(offsets->get_array()[1]);
  if (!begin || !end || *begin < 0 || *end < 0)
    return Status::error(where + ": data_offsets must be two non-negative "
                                 "integers, got " +
                         boost::json::serialize(*offsets));
  if (*begin > *end)
    return Status::error(where + ": data_offsets begin " + std::to_string(*begin) +
                         " is after end " + std::to_string(*end));
  if (static_cast<uint64_t>(*end) > dataRegionSize)
    return Status::error(where + ": data_offsets end " + std::to_string(*end) +
                         " is beyond the data region of " +
                         std::to_string(dataRegionSize) + " bytes");
  info.byteOffset = static_cast<uint64_t>(*begin);
  info.byteSize = static_cast<uint64_t>(*end - *begin);

  uint64_t expectedBytes = 0;
  if (__builtin_mul_overflow(elements, dtypeSize(info.dtype), &expectedBytes) ||
      expectedBytes != info.byteSize)
    return Status::error(where + ": data_offsets span " +
                         std::to_string(info.byteSize) + " bytes, but shape " +
                         formatShape(info.shape) + " of " +
                         std::string(dtypeName(info.dtype)) + " needs " +
                         std::to_string(elements) + " x " +
                         std::to_string(dtypeSize(info.dtype)) + " bytes");
  return info;
}

} // namespace

std::string formatShape(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

int64_t TensorInfo::numElements() const {
  int64_t count = 1;
  for (int64_t dim : shape)
    count *= dim; // validated on open: no overflow, no negatives
  return count;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string &path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::error(path + ": cannot open: " + std::strerror(errno));
  struct stat status {};
  if (::fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(fd);
    return Status::error(path + ": not a regular file");
  }
  const uint64_t fileSize = static_cast<uint64_t>(status.st_size);
  if (fileSize < 8) {
    ::close(fd);
    return Status::error(path + ": file is " + std::to_string(fileSize) +
                         " bytes, shorter than the 8-byte header length");
  }
  void *mapping = ::mmap(nullptr, fileSize, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmapErrno = errno;
  ::close(fd);
  if (mapping == MAP_FAILED)
    return Status::error(path + ": mmap failed: " + std::strerror(mmapErrno));

  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = static_cast<const std::byte *>(mapping);
  file.mappingSize_ = fileSize;
  LLMIR_RETURN_IF_ERROR(file.parseHeader(readLittleEndian64(file.mapping_)));
  return file;
}

Status SafetensorsFile::parseHeader(uint64_t headerLength) {
  if (headerLength > kMaxHeaderLength)
    return Status::error(path_ + ": header length " + std::to_string(headerLength) +
                         " is too large (limit " + std::to_string(kMaxHeaderLength) +
                         " bytes)");
  if (headerLength > mappingSize_ - 8)
    return Status::error(path_ + ": header length " + std::to_string(headerLength) +
                         " exceeds the file size " + std::to_string(mappingSize_) +
                         " (needs at least " + std::to_string(8 + headerLength) +
                         " bytes)");
  const std::string_view headerText(reinterpret_cast<const char *>(mapping_ + 8),
                                    headerLength);
  Result<boost::json::value> header = json::parse(headerText, path_ + ": header");
  if (!header)
    return header.status();
  if (!header->is_object())
    return Status::error(path_ + ": header must be a JSON object, got " +
                         std::string(json::kindName(*header)));
  data_ = mapping_ + 8 + headerLength;
  const uint64_t dataRegionSize = mappingSize_ - 8 - headerLength;

  for (const auto &[key, value] : header->get_object()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        return Status::error(path_ + ": __metadata__ must be an object");
      for (const auto &[metaKey, metaValue] : value.get_object()) {
        if (!metaValue.is_string())
          return Status::error(path_ + ": __metadata__ value '" +
                               std::string(metaKey) + "' must be a string");
        metadata_[std::string(metaKey)] = std::string(metaValue.get_string());
      }
      continue;
    }
    const std::string where = path_ + ": tensor '" + std::string(key) + "'";
    Result<TensorInfo> info = parseTensorEntry(key, value, dataRegionSize, where);
    if (!info)
      return info.status();
    index_.emplace(info->name, tensors_.size());
    tensors_.push_back(std::move(info).value());
  }

  // Tensors may not share bytes; empty tensors occupy none.
  std::vector<const TensorInfo *> byOffset;
  for (const TensorInfo &info : tensors_)
    if (info.byteSize > 0)
      byOffset.push_back(&info);
  std::sort(byOffset.begin(), byOffset.end(),
            [](const TensorInfo *a, const TensorInfo *b) {
              return a->byteOffset < b->byteOffset;
            });
  for (size_t i = 1; i < byOffset.size(); ++i) {
    const TensorInfo &previous = *byOffset[i - 1];
    const TensorInfo &current = *byOffset[i];
    if (current.byteOffset < previous.byteOffset + previous.byteSize)
      return Status::error(
          path_ + ": tensor '" + current.name + "' (bytes [" +
          std::to_string(current.byteOffset) + ", " +
          std::to_string(current.byteOffset + current.byteSize) +
          ")) overlaps tensor '" + previous.name + "' (bytes [" +
          std::to_string(previous.byteOffset) + ", " +
          std::to_string(previous.byteOffset + previous.byteSize) + "))");
  }
  // As the reference implementation: the tensors cover the data region
  // exactly, with no gap. A header length that is off (issue 14: by 7 bytes)
  // shifts every tensor; this is where it shows.
  uint64_t covered = 0;
  for (const TensorInfo *info : byOffset) {
    if (info->byteOffset != covered)
      return Status::error(path_ + ": tensor '" + info->name + "' starts at byte " +
                           std::to_string(info->byteOffset) + " of the data region, expected " +
                           std::to_string(covered) +
                           " (tensors must cover the data region without gaps)");
    covered += info->byteSize;
  }
  if (covered != dataRegionSize)
    return Status::error(path_ + ": the tensors cover " + std::to_string(covered) +
                         " bytes but the data region after the " + std::to_string(headerLength) +
                         "-byte header has " + std::to_string(dataRegionSize) +
                         " (wrong header length or truncated file?)");
  return Status::ok();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile &&other) noexcept
    : path_(std::move(other.path_)), mapping_(std::exchange(other.mapping_, nullptr)),
      mappingSize_(std::exchange(other.mappingSize_, 0)),
      data_(std::exchange(other.data_, nullptr)), tensors_(std::move(other.tensors_)),
      index_(std::move(other.index_)), metadata_(std::move(other.metadata_)) {}

SafetensorsFile &SafetensorsFile::operator=(SafetensorsFile &&other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mappingSize_ = std::exchange(other.mappingSize_, 0);
    data_ = std::exchange(other.data_, nullptr);
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() {
  if (mapping_)
    ::munmap(const_cast<std::byte *>(mapping_), mappingSize_);
  mapping_ = nullptr;
  mappingSize_ = 0;
  data_ = nullptr;
}

const TensorInfo *SafetensorsFile::find(std::string_view name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &tensors_[found->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo &info) const {
  assert(data_ && info.byteOffset + info.byteSize <=
                      mappingSize_ - static_cast<size_t>(data_ - mapping_) &&
         "TensorInfo does not belong to this file");
  return {data_ + info.byteOffset, info.byteSize};
}

Result<std::vector<std::byte>> SafetensorsFile::readSliceRaw(std::string_view name,
                                                             int dim, int64_t offset,
                                                             int64_t length) const {
  const TensorInfo *info = find(name);
  if (!info)
    return Status::error(path_ + ": no tensor named '" + std::string(name) + "'");
  return sliceTensorBytes(*info, bytes(*info), {dim, offset, length}, path_);
}

Result<std::vector<float>> SafetensorsFile::readAsF32(std::string_view name, int dim,
                                                      int64_t offset,
                                                      int64_t length) const {
  const TensorInfo *info = find(name);
  if (!info)
    return Status::error(path_ + ": no tensor named '" + std::string(name) + "'");
  return sliceTensorAsF32(*info, bytes(*info), {dim, offset, length}, path_);
}

} // namespace llmir::model
