#include "JsonFields.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace llmir::model::json {

Result<std::string> readFile(const std::string &path, uint64_t maxBytes) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    return Status::error(path + ": cannot open file for reading");
  if (!std::filesystem::is_regular_file(status))
    return Status::error(path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error(path + ": cannot open file for reading");
  // Read at most one byte past the limit: the size on disk may change under us.
  std::string contents(std::min<uint64_t>(std::filesystem::file_size(path, ec), maxBytes) + 1,
                       '\0');
  in.read(contents.data(), static_cast<std::streamsize>(contents.size()));
  if (in.bad())
    return Status::error(path + ": read error");
  contents.resize(static_cast<size_t>(in.gcount()));
  if (contents.size() > maxBytes)
    return Status::error(path + ": larger than the limit of " + std::to_string(maxBytes) +
                         " bytes (docs/reliability.md)");
  return contents;
}

Result<boost::json::value> parse(std::string_view text, std::string_view source) {
  boost::system::error_code error;
  boost::json::value value = boost::json::parse(text, error);
  if (error)
    return Status::error(std::string(source) + ": invalid JSON: " + error.message());
  return value;
}

std::string_view kindName(const boost::json::value &value) {
  switch (value.kind()) {
  case boost::json::kind::null:
    return "null";
  case boost::json::kind::bool_:
    return "boolean";
  case boost::json::kind::int64:
  case boost::json::kind::uint64:
  case boost::json::kind::double_:
    return "number";
  case boost::json::kind::string:
    return "string";
  case boost::json::kind::array:
    return "array";
  case boost::json::kind::object:
    return "object";
  }
  return "unknown";
}

std::optional<int64_t> asInt64(const boost::json::value &value) {
  if (value.is_int64())
    return value.get_int64();
  if (value.is_uint64() &&
      value.get_uint64() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(value.get_uint64());
  return std::nullopt;
}

std::optional<double> asDouble(const boost::json::value &value) {
  if (value.is_double())
    return value.get_double();
  if (value.is_int64())
    return static_cast<double>(value.get_int64());
  if (value.is_uint64())
    return static_cast<double>(value.get_uint64());
  return std::nullopt;
}

const boost::json::value *member(const boost::json::object &object,
                                 std::string_view key) {
  const boost::json::value *found = object.if_contains(key);
  if (!found || found->is_null())
    return nullptr;
  return found;
}

} // namespace llmir::model::json
