// Small helpers for reading typed values out of parsed JSON with error
// messages that name the source and key. Private to llmir_model.
#pragma once

#include "llmir/support/Status.h"

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmir::model::json {

/// Reads a whole regular file into memory; a file over `maxBytes` (or a
/// device such as /dev/zero) is refused before it is read.
Result<std::string> readFile(const std::string &path, uint64_t maxBytes);

/// Parses JSON text; the error names `source` and the parser's reason.
Result<boost::json::value> parse(std::string_view text, std::string_view source);

/// "object", "string", "number", ... for messages.
std::string_view kindName(const boost::json::value &value);

/// An integer value (int64 or uint64 that fits); nullopt for anything else.
std::optional<int64_t> asInt64(const boost::json::value &value);

/// A number of any representation as double; nullopt for non-numbers.
std::optional<double> asDouble(const boost::json::value &value);

/// The member `key` or nullptr when absent or null.
const boost::json::value *member(const boost::json::object &object,
                                 std::string_view key);

} // namespace llmir::model::json
