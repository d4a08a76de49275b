// Helpers for model tests: a temporary directory and a safetensors writer.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace llmir::model::testing {

class TempDir {
public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "llmir-model-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string &name) const { return (path_ / name).string(); }
  const std::filesystem::path &path() const { return path_; }

private:
  std::filesystem::path path_;
};

inline void writeFile(const std::string &path, const std::string &contents) {
  std::ofstream(path, std::ios::binary) << contents;
}

/// 8-byte little-endian length, then `header`, then `data`.
inline std::string safetensorsBytes(uint64_t headerLength, const std::string &header,
                                    const std::string &data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<char>((headerLength >> (8 * i)) & 0xff);
  return bytes + header + data;
}

inline std::string safetensorsBytes(const std::string &header, const std::string &data) {
  return safetensorsBytes(header.size(), header, data);
}

template <typename T> std::string toBytes(const std::vector<T> &values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

/// Builds a valid file: tensors packed in the order added.
class SafetensorsBuilder {
public:
  SafetensorsBuilder &add(const std::string &name, const std::string &dtype,
                          const std::vector<int64_t> &shape, const std::string &bytes) {
    std::string shapeText;
    for (size_t i = 0; i < shape.size(); ++i)
      shapeText += (i ? "," : "") + std::to_string(shape[i]);
    entries_ += (entries_.empty() ? "" : ",") + std::string("\"") + name +
                "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shapeText +
                "],\"data_offsets\":[" + std::to_string(data_.size()) + "," +
                std::to_string(data_.size() + bytes.size()) + "]}";
    data_ += bytes;
    return *this;
  }
  std::string bytes() const {
    return safetensorsBytes("{\"__metadata__\":{\"format\":\"pt\"}," + entries_ + "}",
                            data_);
  }
  void write(const std::string &path) const { writeFile(path, bytes()); }

private:
  std::string entries_;
  std::string data_;
};

} // namespace llmir::model::testing
